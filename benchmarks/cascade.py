"""Super-resolution and cascade figures (docs/benchmarks.md "Cascade").

``sr``: held-out clips at 64x64 (MovingShapes of the base's four held-out triples, rendered
fresh; PhotoPan clips of items far past any training index) are box-downsampled to 32x32 and
brought back by the stage and by bicubic upscaling; PSNR and SSIM against the originals, and
the stage's consistency (its output box-downsampled again against its input, in 8-bit levels).

``cascade``: the shipped base makes ``--samples`` clips per triple at 32x32; the detector
scores them at 32x32, after bicubic upscaling to 64x64 and after the stage (the cascade), with
the time per clip of each step. ``--direct MODEL`` adds a model that generates 64x64 itself,
on the same prompts and seeds.

``interp``: the frame-rate stage. Fresh MovingDigits clips (indices far past any training
item) rendered at frame stride ``1 / factor``; every ``factor``-th frame is kept and the frames
between are brought back by each model in ``--models`` (``pipe.interpolate``, no prompt,
guidance 1) and by blending the two neighbouring keyframes linearly. PSNR and SSIM over the
generated frames only, for factors 2 and 4.

    python benchmarks/cascade.py sr --clips 12
    python benchmarks/cascade.py cascade --triples 12 --samples 4
    python benchmarks/cascade.py cascade --triples 12 --samples 4 --direct runs/shapes-64
    python benchmarks/cascade.py interp --models runs/digits-interp runs/digits --clips 12

``compute``: the training compute of a chain of run configs (``--configs``; a stage that starts
from an earlier one is listed after it): each config's trainer is built as ``vidiff train``
builds it (no starting weights: they do not change the cost) and one real training step is
counted by ``vidiff.models.flops`` (matmuls, convolutions and attention, forward and backward,
a frozen part's backward excluded), times ``train.steps``. ``--against`` counts a second chain
and prints its share of the first, e.g. a 64x64 pixel model against the cascade's stages:

    python benchmarks/cascade.py compute --configs configs/shapes-t2v-8f.yaml \
        configs/shapes-t2v.yaml configs/shapes-tasks.yaml configs/shapes-pixel-head.yaml \
        configs/shapes-sr.yaml --against configs/shapes-64-8f.yaml configs/shapes-64.yaml
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from control import held_out_clips   # benchmarks/control.py: fresh clips of the held-out triples

from vidiff.data import DEMO_HELD_OUT, all_triples, build_dataset
from vidiff.data.common import box_downsample
from vidiff.data.shapes import caption
from vidiff.eval.shapes import score
from vidiff.eval.temporal import psnr_ssim
from vidiff.models.flops import count_flops
from vidiff.pipelines.video import load
from vidiff.train.config import load_run_config
from vidiff.train.run import build_trainer
from vidiff.video import Video


def shapes_clips(n: int, size: int = 64, frames: int = 16, seed: int = 2468) -> list[tuple[str, torch.Tensor]]:
    return [(caption(*triple), Video(frames).to_tensor())
            for triple, frames in held_out_clips(n, frames=frames, size=size, seed=seed)]


def photopan_clips(n: int, size: int = 64, frames: int = 16) -> list[tuple[str, torch.Tensor]]:
    data = build_dataset({"name": "photopan", "frames": frames, "size": size})
    return [(item["caption"], item["video"]) for item in (data[1_000_000 + i] for i in range(n))]


def bicubic(low: torch.Tensor, scale: int) -> torch.Tensor:
    # (3, T, h, w) -> (3, T, h*s, w*s), each frame bicubic, clamped to the pixel range
    frames = low.permute(1, 0, 2, 3)
    up = F.interpolate(frames, scale_factor=scale, mode="bicubic", align_corners=False)
    return up.clamp(-1, 1).permute(1, 0, 2, 3)


def quality(video: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    m = psnr_ssim(Video.from_tensor(video).frames, Video.from_tensor(truth).frames)
    return float(np.mean(m["psnr"])), float(np.mean(m["ssim"]))


def run_sr(models: list[str], clips: int, levels: list[float]) -> dict:
    results = {}
    for name, data in (("shapes", shapes_clips(clips)), ("photopan", photopan_clips(clips))):
        rows = {"bicubic": [quality(bicubic(box_downsample(c, 2), 2), c) for _, c in data]}
        for model in models:
            pipe = load(model)
            for level in levels:
                scores, consistency, seconds = [], [], 0.0
                for k, (text, clip) in enumerate(data):
                    low = box_downsample(clip, 2)
                    start = time.perf_counter()
                    out = pipe.upscale(low, noise_level=level, seed=k, prompt=pipe.prompt_for(text)).to_tensor()
                    seconds += time.perf_counter() - start
                    scores.append(quality(out, clip))
                    consistency.append(float((box_downsample(out, 2) - low).abs().mean()) * 127.5)
                rows[f"{model} @ {level}"] = scores
                rows[f"{model} @ {level} consistency"] = [(float(np.mean(consistency)), seconds / len(data))]
        results[name] = {k: [float(np.mean([s[0] for s in v])), float(np.mean([s[1] for s in v]))]
                         for k, v in rows.items()}
        for k, (a, b) in results[name].items():
            what = "mean |down(out) - in| (8-bit), s/clip" if "consistency" in k else "PSNR dB, SSIM"
            print(f"{name:9s} {k:34s} {a:8.3f} {b:7.4f}   ({what})")
    return results


def generated(model: str, prompts: list[str], samples: int, steps: int) -> tuple[list[Video], float]:
    """``samples`` clips of each prompt from ``model`` (its own sampler and guidance) and the
    seconds a clip took."""
    pipe, clips = load(model), []
    start = time.perf_counter()
    for p in prompts:
        videos = pipe.generate(p, samples=samples, steps=steps, seed=0)
        clips += videos if isinstance(videos, list) else [videos]
    return clips, (time.perf_counter() - start) / len(clips)


def run_cascade(base: str, stage: str, triples: int, samples: int, level: float, steps: int,
                direct: Optional[str] = None) -> dict:
    chosen = list(DEMO_HELD_OUT) + [t for t in all_triples() if t not in DEMO_HELD_OUT][:max(0, triples - 4)]
    prompts = [caption(*t) for t in chosen]
    sr = load(stage)
    low, base_seconds = generated(base, prompts, samples, steps)
    targets = [t for t in chosen for _ in range(samples)]
    start = time.perf_counter()
    high = [sr.upscale(v, noise_level=level, seed=k, prompt=sr.prompt_for(prompts[k // samples]))
            for k, v in enumerate(low)]
    sr_seconds = (time.perf_counter() - start) / len(low)
    cubic = [Video.from_tensor(bicubic(v.to_tensor(), 2)) for v in low]
    held = len(DEMO_HELD_OUT) * samples
    out = {"clips": len(low), "held_out_clips": held, "base_s_per_clip": base_seconds, "sr_s_per_clip": sr_seconds}
    rows = [("base 32x32", low), ("base + bicubic 64x64", cubic), ("cascade 64x64", high)]
    if direct:  # a model that generates 64x64 itself (e.g. configs/shapes-64.yaml)
        clips, out["direct_s_per_clip"] = generated(direct, prompts, samples, steps)
        rows.append(("direct 64x64", clips))
        Video.grid(clips[:8], cols=4).save("runs/cascade_direct.mp4")
    for name, videos in rows:
        seen, unseen = score(videos[held:], targets[held:]) if len(videos) > held else None, score(videos[:held], targets[:held])
        out[name] = {"seen": seen["adherence"] if seen else None, "held_out": unseen["adherence"]}
        print(f"{name:22s} adherence seen {out[name]['seen']}, held out {out[name]['held_out']:.3f}")
    print(f"time per clip: base {base_seconds:.2f} s, stage {sr_seconds:.2f} s"
          + (f", direct {out['direct_s_per_clip']:.2f} s" if direct else ""))
    Video.grid(low[:8], cols=4).save("runs/cascade_base.mp4")
    Video.grid(high[:8], cols=4).save("runs/cascade_sr.mp4")
    Video.grid(cubic[:8], cols=4).save("runs/cascade_bicubic.mp4")
    return out


def run_interp(models: list[str], clips: int, steps: int, keyframes: int = 5) -> dict:
    results = {}
    pipes = {m: load(m) for m in models}
    for factor in (2, 4):
        frames = (keyframes - 1) * factor + 1
        data = build_dataset({"name": "digits", "frames": frames, "size": 32, "frame_strides": [1 / factor]})
        truths = [data[1_000_000 + i]["video"] for i in range(clips)]
        between = [f for f in range(frames) if f % factor]
        rows = {"blend": []}
        for truth in truths:
            keys = truth[:, ::factor]
            w = torch.tensor([(f % factor) / factor for f in between])[None, :, None, None]
            lo, hi = keys[:, [f // factor for f in between]], keys[:, [f // factor + 1 for f in between]]
            rows["blend"].append(quality((1 - w) * lo + w * hi, truth[:, between]))
        for name, pipe in pipes.items():
            rows[name], start = [], time.perf_counter()
            for k, truth in enumerate(truths):
                out = pipe.interpolate(truth[:, ::factor], factor, steps=steps, guidance=1.0, seed=k).to_tensor()
                rows[name].append(quality(out[:, between], truth[:, between]))
            print(f"x{factor} {name}: {(time.perf_counter() - start) / clips:.2f} s a clip", flush=True)
        results[f"x{factor}"] = {k: [float(np.mean([s[0] for s in v])), float(np.mean([s[1] for s in v]))]
                                 for k, v in rows.items()}
        for k, (a, b) in results[f"x{factor}"].items():
            print(f"x{factor} {k:30s} PSNR {a:6.2f} dB  SSIM {b:.4f}  ({a - results[f'x{factor}']['blend'][0]:+.2f} dB "
                  f"over blending)")
    return results


def run_compute(configs: list[str]) -> dict:
    """``{config: {"step_tflop", "steps", "pflop"}}`` and the chain's ``total_pflop``."""
    out, total = {}, 0.0
    for path in configs:
        run = load_run_config(path, ["train.init_from=null"])
        trainer = build_trainer(run, progress=False)
        step = count_flops(trainer.train_step) / 1e12
        pflop = step * run.train.steps / 1e3
        total += pflop
        out[path] = {"step_tflop": step, "steps": run.train.steps, "pflop": pflop}
        print(f"{path:40s} {step:8.3f} TFLOP a step x {run.train.steps:5d} steps = {pflop:8.4f} PFLOP", flush=True)
    out["total_pflop"] = total
    print(f"{'total':40s} {total:8.4f} PFLOP")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("sr", "cascade", "interp", "compute"))
    parser.add_argument("--configs", nargs="+", default=[])
    parser.add_argument("--against", nargs="+", default=[])
    parser.add_argument("--models", nargs="+", default=["shapes-sr"])
    parser.add_argument("--levels", nargs="+", type=float, default=[0.0, 0.1])
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--base", default="shapes")
    parser.add_argument("--direct", help="cascade: also score this 64x64 model's own clips")
    parser.add_argument("--triples", type=int, default=12)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.part == "sr":
        result = run_sr(args.models, args.clips, args.levels)
        head = result["shapes"]
        best = max(v[0] for k, v in head.items() if k != "bicubic" and "consistency" not in k)
        print(f"shapes x2: stage {best:.2f} dB vs bicubic {head['bicubic'][0]:.2f} dB "
              f"(+{best - head['bicubic'][0]:.2f} dB)")
    elif args.part == "compute":
        result = {"chain": run_compute(args.configs)}
        if args.against:
            result["against"] = run_compute(args.against)
            print(f"against/chain training compute {result['against']['total_pflop'] / result['chain']['total_pflop']:.3f}")
    elif args.part == "interp":
        result = run_interp(args.models, args.clips, args.steps)
        first = args.models[0]
        print(f"frame-rate stage {first}: x2 {result['x2'][first][0] - result['x2']['blend'][0]:+.2f} dB, "
              f"x4 {result['x4'][first][0] - result['x4']['blend'][0]:+.2f} dB over blending")
    else:
        result = run_cascade(args.base, args.models[0], args.triples, args.samples, args.levels[-1], args.steps,
                             args.direct)
        print(f"cascade adherence held out {result['cascade 64x64']['held_out']:.3f} vs base "
              f"{result['base 32x32']['held_out']:.3f}; seen {result['cascade 64x64']['seen']} vs "
              f"{result['base 32x32']['seen']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
