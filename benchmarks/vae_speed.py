"""Autoencoder training speed: seconds per ``vae-s`` training step in fp32 and under bf16
autocast, and the per-pixel RMS norm against ``F.normalize`` (what it was written with before,
also timed inside a whole fp32 step).

One training step is the encoder, a posterior sample, the decoder, an L2 loss, the backward
pass and an AdamW update, on a random batch of ``--batch`` clips of ``--frames`` frames at
``--size`` x ``--size``. Variants alternate, repeat by repeat, so load on a shared machine
falls on each alike; the median is reported. The last line is the headline::

    headline: vae-s step W s fp32 with F.normalize, X s fp32, Y s bf16 (Zx in all); RMS norm ...

Usage::

    python benchmarks/vae_speed.py                          # 9 frames, 64x64, batch 4
    python benchmarks/vae_speed.py --frames 17 --threads 1
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from vidiff.models.registry import build_from_config, resolve_config
from vidiff.models.vae_blocks import ChannelRMSNorm


def normalize_reference(norm: ChannelRMSNorm, x: torch.Tensor) -> torch.Tensor:
    """The same norm through ``F.normalize`` (a vector norm over dim 1)."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    y = F.normalize(x, dim=1, eps=norm.eps) * norm.scale
    return torch.addcmul(norm.bias.view(shape), y, norm.weight.view(shape))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=64, help="frame height and width")
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vae = build_from_config("vae", resolve_config("vae-s"))
    optimizer = torch.optim.AdamW(vae.parameters(), lr=1e-4)
    clips = torch.rand(args.batch, 3, args.frames, args.size, args.size) * 2 - 1   # (B, 3, T, H, W)
    fast_forward = ChannelRMSNorm.forward

    def step(bf16: bool, reference_norm: bool = False):
        def run():
            # the step as it was, every RMS norm through F.normalize (same maths, same weights)
            ChannelRMSNorm.forward = normalize_reference if reference_norm else fast_forward
            try:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    rebuilt, _ = vae(clips)
                    loss = (rebuilt.float() - clips).square().mean()
                loss.backward()
            finally:
                ChannelRMSNorm.forward = fast_forward
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return run

    norm = ChannelRMSNorm(16)                 # the first level's width in vae-s
    x = torch.randn(args.batch, 16, args.frames, args.size, args.size, requires_grad=True)

    def norm_pass(fn):
        def run():
            fn(x).sum().backward()
            x.grad = None
        return run

    variants = {"fp32 step, F.normalize": step(False, reference_norm=True),
                "fp32 step": step(False), "bf16 step": step(True),
                "RMS norm": norm_pass(norm), "F.normalize": norm_pass(lambda v: normalize_reference(norm, v))}
    for fn in variants.values():              # warm-up: allocations, oneDNN primitive caches
        fn()
    times = {name: [] for name in variants}
    for _ in range(args.repeats):             # interleaved: each variant sees the same load
        for name, fn in variants.items():
            times[name].append(timed(fn))
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} thread(s); batch {args.batch} x {args.frames} frames x {args.size}x{args.size}")
    for name, t in med.items():
        unit, scale = ("s", 1) if "step" in name else ("ms", 1e3)
        print(f"{name:23s} {t * scale:9.3f} {unit}   (runs: {', '.join(f'{v * scale:.3f}' for v in times[name])})")
    old = med["fp32 step, F.normalize"]
    print(f"headline: vae-s step {old:.3f} s fp32 with F.normalize, {med['fp32 step']:.3f} s fp32, "
          f"{med['bf16 step']:.3f} s bf16 ({old / med['bf16 step']:.2f}x in all); RMS norm fwd+bwd {med['RMS norm'] * 1e3:.1f} ms, "
          f"F.normalize {med['F.normalize'] * 1e3:.1f} ms ({med['F.normalize'] / med['RMS norm']:.1f}x)")


if __name__ == "__main__":
    main()
