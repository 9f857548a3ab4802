"""What latent diffusion saves: the same denoiser on pixels and on an autoencoder's latents.

For each frame size (``--sizes``, default 64 and 128) and ``--frames`` frames, the denoiser
``--model`` (default ``unet-s``, the size of configs/latent-t2v.yaml) is built twice: on pixel
clips ``(3, T, S, S)`` and on the latents of ``--vae`` (default ``vae-s``: 4x spatial, 4x
temporal, 8 channels), ``(8, 1 + (T-1)/4, S/4, S/4)``. Reported per clip:

* **FLOPs** (``vidiff.models.flops``, counted on the meta device, so no time is spent): a
  training step (forward and backward), one guided sampling step (two forwards), and for the
  latent model the autoencoder's encode (when latents are not cached) and decode;
* **wall time** of a training step (median of ``--runs`` after one warm-up, AdamW included),
  and of a sampled clip: ``--sample-steps`` guided steps, timed as one guided forward times the
  step count (a 128x128 pixel clip would otherwise take an hour on a CPU), plus the decode;
* **peak working memory** of a training step: peak RSS minus the RSS after model, optimizer
  and inputs exist, in a fresh subprocess (as ``vae_memory.py`` measures); ``--grad-checkpoint
  128`` times the training steps of that size with gradient checkpointing (both models), which
  a 128x128 pixel step needs to fit in 24 GiB;

Steps to reach the same adherence need two trained models and are not measured here (see
docs/benchmarks.md). The autoencoder is untrained: cost does not depend on its weights.

The last line is the headline::

    headline: latent/pixel training FLOPs at 64x64 1/R64, at 128x128 1/R128

Usage::

    python benchmarks/latent_vs_pixel.py                        # both sizes, timed (slow on a CPU)
    python benchmarks/latent_vs_pixel.py --no-time              # FLOPs only, seconds
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vae_memory import ALLOCATORS, start_peak, working_mib  # noqa: E402  (benchmarks are scripts, not a package)

from vidiff.conditioning import Conditioning  # noqa: E402
from vidiff.models import VAE_MODELS, VideoVAE  # noqa: E402
from vidiff.models.flops import count_flops  # noqa: E402
from vidiff.models.registry import resolve_config, build_from_config, architecture_of  # noqa: E402

TEXT_TOKENS, TEXT_DIM = 16, 256


def parts(args, size: int, mode: str, device: str, grad_checkpoint: bool = False):
    """``(network, vae, input shape (C, t, h, w))`` for one mode on ``device``."""
    with torch.device(device):
        torch.manual_seed(0)
        vae = VideoVAE(VAE_MODELS[args.vae]).eval()
        shape = vae.latent_shape(args.frames, size, size) if mode == "latent" else (3, args.frames, size, size)
        config = dataclasses.replace(resolve_config(args.model, {}), in_channels=shape[0], text_dim=TEXT_DIM,
                                     grad_checkpoint=grad_checkpoint)
        network = build_from_config(architecture_of(config), config)
    return network, vae, shape


def inputs(shape, batch: int, device: str):
    with torch.device(device):
        x = torch.randn(batch, *shape)
        t = torch.full((batch,), 0.5)
        cond = Conditioning(text=torch.randn(batch, TEXT_TOKENS, TEXT_DIM))
    return x, t, cond


def flops(args, size: int, mode: str) -> dict:
    network, vae, shape = parts(args, size, mode, "meta")
    x, t, cond = inputs(shape, 1, "meta")
    out = {"train_gflop": count_flops(lambda: network(x, t, cond), backward=True) / 1e9}
    x2, t2, cond2 = inputs(shape, 2, "meta")
    out["sample_step_gflop"] = count_flops(lambda: network(x2, t2, cond2)) / 1e9
    if mode == "latent":
        with torch.no_grad():
            video = torch.randn(1, 3, args.frames, size, size, device="meta")
            out["encode_gflop"] = count_flops(lambda: vae.encode(video).mean) / 1e9
            z = torch.randn(1, *shape, device="meta")
            out["decode_gflop"] = count_flops(lambda: vae.decode(z)) / 1e9
    return out


def worker(args, size: int, mode: str) -> dict:
    """Times and peak memory of one mode, in this (fresh) process."""
    network, vae, shape = parts(args, size, mode, "cpu", grad_checkpoint=size in args.checkpointed)
    network.train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    x, t, cond = inputs(shape, args.batch, "cpu")

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        loss = (network(x, t, cond) - x).pow(2).mean()
        loss.backward()
        optimizer.step()

    train_step()                                         # warm-up; optimizer state now exists
    baseline = start_peak()
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        train_step()
        times.append(time.perf_counter() - start)
    out = {"train_s": statistics.median(times) / args.batch, "train_mib": working_mib(baseline)}
    network.eval()
    x2, t2, cond2 = inputs(shape, 2, "cpu")
    with torch.no_grad():
        start = time.perf_counter()
        network(x2, t2, cond2)
        step = time.perf_counter() - start
        decode = 0.0
        if mode == "latent":
            start = time.perf_counter()
            vae.decode_to_uint8(torch.randn(*shape), chunk=2)
            decode = time.perf_counter() - start
    out["sample_s"] = step * args.sample_steps + decode
    out["decode_s"] = decode
    return out


def measure(args, size: int, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", f"{size}:{mode}", "--model", args.model, "--vae", args.vae,
           "--frames", str(args.frames), "--batch", str(args.batch), "--runs", str(args.runs),
           "--sample-steps", str(args.sample_steps), "--grad-checkpoint", args.grad_checkpoint]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **ALLOCATORS["fixed"]})
    if result.returncode:
        raise RuntimeError(f"worker {size}:{mode} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="64,128", help="frame sides, comma-separated")
    p.add_argument("--frames", type=int, default=17, help="pixel frames (1 + 4k)")
    p.add_argument("--model", default="unet-s", help="denoiser registry size")
    p.add_argument("--vae", default="vae-s", help="autoencoder registry size")
    p.add_argument("--batch", type=int, default=1, help="clips per timed training step")
    p.add_argument("--runs", type=int, default=2, help="timed training steps (median)")
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--no-time", action="store_true", help="FLOPs only")
    p.add_argument("--time-sizes", help="time only these sizes (default: all of --sizes); the rest get FLOPs")
    p.add_argument("--grad-checkpoint", default="", metavar="SIZES",
                   help="sizes whose timed training steps recompute each block's activations in the "
                        "backward (gradient checkpointing), e.g. 128: a 128x128 pixel step needs more "
                        "memory than a 24 GiB machine has without it")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.checkpointed = {int(s) for s in args.grad_checkpoint.split(",") if s}
    if args.worker:
        size, mode = args.worker.split(":")
        print(json.dumps(worker(args, int(size), mode)))
        return
    print(f"{args.model} on pixels vs on {args.vae} latents, {args.frames} frames, batch {args.batch}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'size':>5} {'mode':>7} {'shape':>16} {'train GFLOP':>12} {'sample-step GFLOP':>18} "
          f"{'enc/dec GFLOP':>14} {'train s':>8} {'train MiB':>10} {'clip s':>8}")
    ratios = {}
    timed_sizes = args.sizes if args.time_sizes is None else args.time_sizes
    timed_sizes = set() if args.no_time else {int(s) for s in timed_sizes.split(",")}
    for size in (int(s) for s in args.sizes.split(",")):
        rows, timed = {}, size in timed_sizes
        for mode in ("pixel", "latent"):
            row = flops(args, size, mode)
            if timed:
                row.update(measure(args, size, mode))
            rows[mode] = row
            shape = "x".join(map(str, parts(args, size, mode, "meta")[2]))
            coder = f"{row['encode_gflop']:.1f}/{row['decode_gflop']:.1f}" if mode == "latent" else "-"
            times = (f"{row['train_s']:>8.2f} {row['train_mib']:>10.0f} {row['sample_s']:>8.1f}"
                     if timed else f"{'-':>8} {'-':>10} {'-':>8}")
            print(f"{size:>5}{'*' if timed and size in args.checkpointed else ' '}{mode:>7} {shape:>16} {row['train_gflop']:>12.1f} {row['sample_step_gflop']:>18.1f} "
                  f"{coder:>14} {times}", flush=True)
        pixel, latent = rows["pixel"], rows["latent"]
        ratios[size] = pixel["train_gflop"] / latent["train_gflop"]
        on_the_fly = pixel["train_gflop"] / (latent["train_gflop"] + latent["encode_gflop"])
        print(f"{size}x{size}: training FLOPs / {ratios[size]:.0f} with cached latents, / {on_the_fly:.0f} "
              f"encoding on the fly" + ("" if not timed else
                                        f"; step time / {pixel['train_s'] / latent['train_s']:.1f}, "
                                        f"clip time / {pixel['sample_s'] / latent['sample_s']:.1f}, "
                                        f"training memory / {pixel['train_mib'] / max(latent['train_mib'], 1):.1f}"))
    if args.checkpointed & timed_sizes:
        print("* timed with gradient checkpointing: a training step recomputes the forward of each "
              "block (the FLOPs are the plain step's)")
    print("headline: latent/pixel training FLOPs " + ", ".join(f"at {s}x{s} 1/{r:.0f}" for s, r in ratios.items()))


if __name__ == "__main__":
    main()
