"""Denoiser speed: vidiff's UNet3D against diffusers' UNet3DConditionModel at matched FLOPs.

Measures this machine's matmul peak, then times, in one process:

1. the forward pass (``torch.no_grad``) at a matched configuration: latent input
   ``(1, 4, 16, 32, 32)``, channels ``(64, 128, 256, 256)``, two residual blocks per level, 16
   text tokens of width 256, spatial/cross/temporal attention at levels 0-2 and in the middle;
2. a training step (forward + backward) of the CPU-demo size ``unet-demo`` at
   ``(8, 3, 16, 32, 32)`` against a diffusers model of matched FLOPs (given the same
   space-to-depth stem as ``unet-demo``'s ``patch``).

FLOPs come from ``vidiff.models.flops.count_flops`` (attention included) for both models; a
pair whose FLOPs differ by more than 10% is reported as a failed match. Times are the median
of ``--runs`` forward runs (``--train-runs`` training steps) after ``--warmup`` runs. The
last line is the headline::

    headline: vidiff/diffusers throughput ratio X.XX (time ratio Y.YY)

Usage::

    python benchmarks/denoiser_speed.py                                  # CPU, float32
    python benchmarks/denoiser_speed.py --device cuda --dtype bfloat16   # MFU on a GPU
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from vidiff.conditioning import Conditioning
from vidiff.models.flops import count_flops
from vidiff.models.unet import UNET_MODELS, UNet3D, UNetConfig
from vidiff.train.process import keep_freed_memory

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# The forward comparison. diffusers' blocks are heavier per level (a ResNet block plus four
# (3,1,1) temporal convs, GEGLU MLPs, in/out projections, two temporal attentions), so vidiff
# matches its FLOPs with full 3D convs and an MLP ratio of 2 (see docs/benchmarks.md). Heads
# are vidiff's default 64 wide (1, 2, 4, 4 heads by level); a further row uses diffusers' 8
# heads at every level (8 wide at full resolution), which CPU attention runs far slower.
FORWARD_VIDIFF = UNetConfig(in_channels=4, channels=(64, 128, 256, 256), blocks_per_level=2,
                            spatial_attention=(0, 1, 2), cross_attention=(0, 1, 2),
                            temporal_attention=(0, 1, 2), text_dim=256, conv3d=True, ff_mult=2.0)
FORWARD_DIFFUSERS = dict(in_channels=4, channels=(64, 128, 256, 256), layers=2, cross_levels=(0, 1, 2),
                         groups=32)
# The training comparison: unet-demo, and the diffusers layout closest to it in FLOPs. unet-demo
# folds 4x4 pixel blocks into channels (patch = 4); diffusers gets the same space-to-depth
# around its call, so both networks work on the same 8x8 grid.
TRAIN_VIDIFF = dataclasses.replace(UNET_MODELS["unet-demo"], text_dim=256)
TRAIN_DIFFUSERS = dict(in_channels=3, channels=(32, 64), layers=2, cross_levels=(1,), groups=8,
                       patch=TRAIN_VIDIFF.patch)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype) -> tuple[float, int]:
    """Best of 5 square matmuls, in FLOP/s (2048 on CPU; 8192 saturates a GPU)."""
    n = 2048 if device.type == "cpu" else 8192
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    sync(device)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best, n


# CPU seconds this process got per wall second per thread while timing (1.0 = all cores were
# ours). The machine may be shared; a low share means the times are not to be trusted.
CPU_SHARE: list[float] = []


def median_time(fn: Callable[[], object], device: torch.device, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times, cpu0 = [], os.times()
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    cpu1 = os.times()
    busy = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    CPU_SHARE.append(busy / (sum(times) * torch.get_num_threads()))
    return statistics.median(times)


def diffusers_unet(in_channels, channels, layers, cross_levels, groups, patch=1):
    from diffusers import UNet3DConditionModel
    levels = range(len(channels))
    return UNet3DConditionModel(
        sample_size=32 // patch, in_channels=in_channels * patch ** 2, out_channels=in_channels * patch ** 2,
        block_out_channels=tuple(channels), layers_per_block=layers, norm_num_groups=groups,
        down_block_types=tuple("CrossAttnDownBlock3D" if i in cross_levels else "DownBlock3D" for i in levels),
        up_block_types=tuple("CrossAttnUpBlock3D" if i in cross_levels else "UpBlock3D" for i in reversed(levels)),
        cross_attention_dim=256, attention_head_dim=8)  # attention_head_dim is the head count


def inputs(shape, device, dtype):
    """Shared inputs: x, diffusion time t in [0, 1], 16 text tokens of width 256."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(device, dtype)
    text = torch.randn(shape[0], 16, 256, generator=g).to(device, dtype)
    return x, torch.full((shape[0],), 0.5, device=device), text


def vidiff_runner(cfg: UNetConfig, shape, train: bool, device, dtype):
    x, t, text = inputs(shape, device, dtype)
    model = UNet3D(cfg).to(device)
    model = model.to(dtype).train(train) if dtype != torch.float32 else model.train(train)
    cond = Conditioning(text=text)
    return model, lambda: model(x, t, cond)


def diffusers_runner(kw: dict, shape, train: bool, device, dtype):
    x, t, text = inputs(shape, device, dtype)
    model = diffusers_unet(**kw).to(device)
    model = model.to(dtype).train(train) if dtype != torch.float32 else model.train(train)
    steps = (t * 1000).long()                      # diffusers counts time in integer steps
    p = kw.get("patch", 1)
    if p == 1:
        return model, lambda: model(x, steps, text).sample
    B, C, T, H, W = x.shape

    def call():  # the same space-to-depth stem as UNet3D's patch, per frame
        frames = F.pixel_unshuffle(x.transpose(1, 2).reshape(B * T, C, H, W), p)
        y = model(frames.view(B, T, -1, H // p, W // p).transpose(1, 2), steps, text).sample
        y = F.pixel_shuffle(y.transpose(1, 2).reshape(B * T, -1, H // p, W // p), p)
        return y.view(B, T, C, H, W).transpose(1, 2)
    return model, call


def measure(model, call, train: bool, device, runs: int, warmup: int) -> tuple[float, int]:
    """(seconds, FLOPs) of one forward (no_grad) or one forward + backward."""
    if train:
        def step():
            model.zero_grad(set_to_none=True)
            call().float().square().mean().backward()
        flops = count_flops(call, backward=True)
        return median_time(step, device, runs, warmup), flops
    with torch.no_grad():
        flops = count_flops(call)
        return median_time(call, device, runs, warmup), flops


def report(title: str, rows: list[tuple[str, float, int]], peak: float) -> None:
    print(f"\n== {title}")
    print(f"{'model':52s} {'ms':>9s} {'GFLOP':>8s} {'GFLOP/s':>8s} {'% peak':>7s}")
    for name, seconds, flops in rows:
        rate = flops / seconds
        print(f"{name:52s} {seconds * 1e3:9.1f} {flops / 1e9:8.1f} {rate / 1e9:8.1f} {100 * rate / peak:6.1f}%")


def compare(title, vidiff_cfg, diffusers_kw, shape, train, args, device, dtype, peak,
            extra: dict | None = None) -> tuple[float, float]:
    rows, runs = [], args.train_runs if train else args.runs
    for name, (model, call) in (("vidiff UNet3D", vidiff_runner(vidiff_cfg, shape, train, device, dtype)),
                                ("diffusers UNet3DConditionModel",
                                 diffusers_runner(diffusers_kw, shape, train, device, dtype))):
        seconds, flops = measure(model, call, train, device, runs, args.warmup)
        rows.append((name, seconds, flops))
    for label, cfg in (extra or {}).items():  # further vidiff variants, not FLOP-matched
        model, call = vidiff_runner(cfg, shape, train, device, dtype)
        seconds, flops = measure(model, call, train, device, runs, args.warmup)
        rows.append((f"vidiff UNet3D {label}", seconds, flops))
    report(title, rows, peak)
    (_, t_ours, f_ours), (_, t_theirs, f_theirs) = rows[:2]
    match = f_ours / f_theirs
    verdict = "ok" if abs(match - 1) <= 0.10 else "FAILED: FLOPs differ by more than 10%"
    print(f"FLOP match vidiff/diffusers {match:.3f}: {verdict}")
    throughput = (f_ours / t_ours) / (f_theirs / t_theirs)
    return throughput, t_theirs / t_ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--runs", type=int, default=5, help="timed forward runs (median reported)")
    parser.add_argument("--train-runs", type=int, default=3, help="timed training steps (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default, all)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc malloc's thresholds alone (see vidiff.train.process.keep_freed_memory)")
    parser.add_argument("--skip-train", action="store_true", help="only the forward comparison")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)

    tuned = device.type == "cpu" and not args.default_malloc and keep_freed_memory()
    peak, n = matmul_peak(device, dtype)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}, {args.dtype}")
    print(f"malloc: {'mmap/trim thresholds raised to 1 GiB (both models)' if tuned else 'default'}")
    print(f"matmul peak ({n}x{n} {args.dtype}, best of 5): {peak / 1e9:.1f} GFLOP/s "
          f"(% peak below = FLOP utilisation against it, the MFU on a GPU)")

    fwd = compare("forward, latent (1, 4, 16, 32, 32), channels (64, 128, 256, 256), 2 blocks/level, "
                  "16 text tokens x 256, attention at levels 0-2 + middle",
                  FORWARD_VIDIFF, FORWARD_DIFFUSERS, (1, 4, 16, 32, 32), False, args, device, dtype, peak,
                  extra={"with diffusers' heads (8 at every level)":
                         dataclasses.replace(FORWARD_VIDIFF, num_heads=8),
                         "pseudo-3D default (not FLOP-matched)":
                         dataclasses.replace(FORWARD_VIDIFF, conv3d=False, ff_mult=4.0)})
    print(f"forward: vidiff/diffusers throughput ratio {fwd[0]:.2f} (time ratio {fwd[1]:.2f})")
    if not args.skip_train:
        train = compare(f"training step (forward + backward), unet-demo at (8, 3, 16, 32, 32), 16 text tokens "
                        f"x 256, both with a {TRAIN_VIDIFF.patch}x{TRAIN_VIDIFF.patch} space-to-depth stem",
                        TRAIN_VIDIFF, TRAIN_DIFFUSERS, (8, 3, 16, 32, 32), True, args, device, dtype, peak)
        print(f"training step: vidiff/diffusers throughput ratio {train[0]:.2f} (time ratio {train[1]:.2f})")
    if device.type == "cpu":
        share = min(CPU_SHARE)
        note = "" if share > 0.9 else "  WARNING: the machine was busy, these times are not reliable"
        print(f"lowest CPU share of this process while timing: {100 * share:.0f}% of {torch.get_num_threads()} "
              f"threads{note}")
    print(f"headline: vidiff/diffusers throughput ratio {fwd[0]:.2f} (time ratio {fwd[1]:.2f})")


if __name__ == "__main__":
    main()
