"""Where a training step of a denoiser spends its time: torch.profiler, grouped by kind of op.

Builds a registry size (default ``unet-demo``, as the demo and the shipped ``shapes`` model
train it: frame-index embedding, 128-wide text), runs ``--steps`` profiled training steps
(forward, MSE loss, backward, no optimizer) after a warm-up, and prints each group's share
of the op time, then the top ops. Groups: convolution (forward and backward), matmul
(linears, attention projections), attention kernels, normalisation, elementwise
(activations, FiLM, adds), layout copies, and the rest. Compared between two machines, the
group whose share grows is where the slower one loses its speed. The last line is the
headline::

    headline: unet-demo training step X ms, Y GFLOP/s, Z% of the matmul peak

Usage::

    python benchmarks/train_step_profile.py                        # (8, 3, 6, 32, 32): the demo's batch
    python benchmarks/train_step_profile.py --batch 16 --frames 8  # the demo's batch before 2026-12-06
    python benchmarks/train_step_profile.py --batch 16 --frames 16 # the shipped model's
    python benchmarks/train_step_profile.py --no-tune-malloc       # glibc malloc left as it is
"""
from __future__ import annotations

import argparse
import collections
import os
import platform
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from vidiff.apps.demo import DEMO_CONFIG
from vidiff.conditioning import Conditioning
from vidiff.models.flops import count_flops
from vidiff.models.registry import build_from_config, resolve_config
from vidiff.train.process import keep_freed_memory

# Op-name fragments of each group, checked in order (the first match wins).
GROUPS = (
    ("convolution", ("conv", "mkldnn_convolution")),
    ("attention", ("attention", "sdpa", "flash")),
    ("matmul", ("addmm", "mm", "bmm", "linear", "matmul")),
    ("normalisation", ("norm",)),
    ("elementwise", ("silu", "gelu", "add", "mul", "sub", "div", "addcmul", "threshold", "sigmoid",
                     "tanh", "exp", "pow", "neg", "rsqrt", "sqrt", "where", "fill", "zero", "sum", "mean")),
    ("layout", ("copy", "clone", "contiguous", "cat", "permute", "transpose", "reshape", "view", "index",
                "pixel_shuffle", "pixel_unshuffle", "pad", "upsample", "expand", "empty", "stack")),
)


def group_of(name: str) -> str:
    low = name.lower()
    for group, fragments in GROUPS:
        if any(f in low for f in fragments):
            return group
    return "other"


def matmul_peak() -> float:
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return 2 * n ** 3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="unet-demo")
    p.add_argument("--batch", type=int, default=DEMO_CONFIG["train"]["batch_size"])
    p.add_argument("--frames", type=int, default=DEMO_CONFIG["data"]["frames"])
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--no-tune-malloc", action="store_true")
    args = p.parse_args()
    tuned = False if args.no_tune_malloc else keep_freed_memory()

    torch.manual_seed(0)
    net = build_from_config("unet", resolve_config(args.size, {"text_dim": 128, "pooled_dim": 128,
                                                             "frame_embedding": True}))
    shape = (args.batch, 3, args.frames, args.resolution, args.resolution)
    x, t = torch.randn(shape), torch.rand(args.batch)
    cond = Conditioning(text=torch.randn(args.batch, 8, 128), text_mask=torch.ones(args.batch, 8, dtype=torch.bool),
                        text_pooled=torch.randn(args.batch, 128))

    def step():
        net.zero_grad(set_to_none=True)
        (net(x, t, cond) - x).square().mean().backward()

    flops = count_flops(lambda: (net(x, t, cond) - x).square().mean(), backward=True)
    for _ in range(2):
        step()
    times = [_timed(step) for _ in range(args.steps)]
    ms = 1e3 * statistics.median(times)
    peak = matmul_peak()

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    by_group = collections.Counter()
    for e in events:
        by_group[group_of(e.key)] += e.self_cpu_time_total

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, malloc tuned: {tuned}")
    print(f"{args.size} at {shape}: {flops / 1e9:.1f} GFLOP per training step; matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(f"\n{'group':<15}{'share of op time':>18}")
    for group, us in by_group.most_common():
        print(f"{group:<15}{us / total:>17.1%}")
    print(f"\n{'op':<48}{'self ms/step':>13}{'share':>8}")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]:
        print(f"{e.key[:47]:<48}{e.self_cpu_time_total / 1e3 / args.steps:>13.1f}"
              f"{e.self_cpu_time_total / total:>8.1%}")
    rate = flops / (ms / 1e3)
    print(f"\nheadline: {args.size} training step {ms:.0f} ms, {rate / 1e9:.1f} GFLOP/s, "
          f"{rate / peak:.1%} of the matmul peak")


if __name__ == "__main__":
    main()
