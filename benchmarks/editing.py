"""Inversion, prompt edits and restyling on MovingShapes, with the shipped ``shapes`` model.

Clips are rendered fresh (``tasks.clips``: every colour/shape/direction triple in turn, start
positions from a fixed seed), so no clip is one the model trained on. Figures (uint8 PSNR,
peak 255; pixel distances on the 32 x 32 frame):

* inversion: ``vidiff invert`` then ``generate --from-noise``; PSNR of the reconstruction
  against the clip over DDIM steps (default 10, 20, 50, 100) at guidance 1, and at guidance 5
  and 50 steps with ``--cfg-inversion`` none / negative / nti, with seconds per clip. The
  model's own ceiling is printed beside: the PSNR of its clean prediction ``x0_hat(x0, t)`` at
  the last grid time, which no inversion of a DDIM run can beat (its last step returns it).
* colour edits: ``a {c} ...`` -> ``a {c'} ...`` (``c'`` the next palette colour), by ``edit``
  at guidance 1 without injection and with it at the default tau (attention maps, keys and
  values), and at guidance 5 with negative-prompt inversion and keys/values; success = the detector reads ``c'``, shape kept = it reads the
  source's shape; trajectory error = mean over frames of the distance between the source's
  and the edit's foreground centroids; untouched-region PSNR = PSNR over the pixels that are
  background in both the source and the edit (the PIE-Bench "background PSNR" footing).
* restyle: SDEdit to the same target prompt at strengths 0.1..1.0 (20 dpmpp_2m steps):
  trajectory error and edit success per strength, saved as a plot (``--plot``).

The last line is the headline. Usage::

    python benchmarks/editing.py --clips 24 --plot editing.png --json editing.json
    python benchmarks/editing.py --clips 2 --steps 10,20 --strengths 0.5,1.0 --quick    # a smoke run
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from tasks import centroid, clips, foreground, psnr     # the same fresh clips and measures as the task benchmark

GUIDANCE = 5.0         # the guided inversions and the guided edit variant


def next_colour(colour: str) -> str:
    from vidiff.data.shapes import COLORS
    names = list(COLORS)
    return names[(names.index(colour) + 1) % len(names)]


def trajectory_error(a: np.ndarray, b: np.ndarray) -> float:
    """Mean distance (pixels) between the foreground centroids of two clips, over the frames
    where both have one (inf when none do)."""
    distances = [np.linalg.norm(ca - cb) for ca, cb in ((centroid(foreground(fa)), centroid(foreground(fb)))
                                                       for fa, fb in zip(a, b)) if ca is not None and cb is not None]
    return float(np.mean(distances)) if distances else float("inf")


def untouched_psnr(source: np.ndarray, edit: np.ndarray) -> float:
    """PSNR over the pixels that are background in both clips."""
    keep = ~(foreground(source) | foreground(edit))                     # (T, H, W)
    return psnr(source[keep], edit[keep]) if keep.any() else float("nan")


def ceiling(pipe, clip: np.ndarray, text: str, steps: int) -> float:
    """PSNR of the model's clean prediction at the last time of a ``steps``-step DDIM grid."""
    import torch
    from vidiff.diffusion import timesteps
    from vidiff.video import Video
    x0 = Video(clip).to_tensor()[None].to(pipe.device)
    t = float(timesteps(pipe.schedule, steps, "trailing")[-2])
    with torch.no_grad():
        out = pipe.denoiser(1.0)(x0, torch.full((1,), t, device=pipe.device), pipe.encode([text]))
    return psnr(Video.from_tensor(out[0].cpu()).frames, clip)


def run_inversion(pipe, data, steps: list[int], nti_iterations: int) -> dict:
    from vidiff.video import Video
    out = {"psnr": {n: [] for n in steps}, "seconds": {n: [] for n in steps}, "ceiling": [],
           "guided": {m: [] for m in ("none", "negative", "nti")}, "guided_seconds": {m: [] for m in ("none", "negative", "nti")}}
    guided_steps = 50 if 50 in steps else max(steps)
    for text, _, clip in data:
        video = Video(clip)
        out["ceiling"].append(ceiling(pipe, clip, text, guided_steps))
        for n in steps:
            start = time.perf_counter()
            rec = pipe.generate_from_noise(pipe.invert(video, text, steps=n))
            out["seconds"][n].append(time.perf_counter() - start)
            out["psnr"][n].append(psnr(rec.frames, clip))
        for mode in out["guided"]:
            start = time.perf_counter()
            inversion = pipe.invert(video, text, steps=guided_steps, guidance=GUIDANCE, cfg_inversion=mode,
                                    nti_iterations=nti_iterations)
            rec = pipe.generate_from_noise(inversion)
            out["guided_seconds"][mode].append(time.perf_counter() - start)
            out["guided"][mode].append(psnr(rec.frames, clip))
        print(f"  inverted {text!r}: " + ", ".join(f"{n}: {out['psnr'][n][-1]:.1f}" for n in steps), flush=True)
    out["guided_steps"] = guided_steps
    return out


def run_edits(pipe, data, steps: int, variants: dict) -> dict:
    """``variants``: name -> options of ``pipe.edit``."""
    from vidiff.eval.shapes import detect
    from vidiff.video import Video
    out = {name: {k: [] for k in ("success", "shape_kept", "trajectory", "untouched", "seconds")} for name in variants}
    for text, (colour, shape, direction), clip in data:
        target = f"a {next_colour(colour)} {shape} moving {direction}"
        for name, options in variants.items():
            start = time.perf_counter()
            edited = pipe.edit(Video(clip), text, target, steps=steps, **options).frames
            r = out[name]
            r["seconds"].append(time.perf_counter() - start)
            found = detect(edited)
            r["success"].append(found["color"] == next_colour(colour))
            r["shape_kept"].append(found["shape"] == shape)
            r["trajectory"].append(trajectory_error(clip, edited))
            r["untouched"].append(untouched_psnr(clip, edited))
        print(f"  edited {text!r} -> {target!r}", flush=True)
    return out


def run_restyle(pipe, data, strengths: list[float], steps: int) -> dict:
    from vidiff.eval.shapes import detect
    from vidiff.video import Video
    out = {s: {"success": [], "trajectory": []} for s in strengths}
    for i, (text, (colour, shape, direction), clip) in enumerate(data):
        target = f"a {next_colour(colour)} {shape} moving {direction}"
        for s in strengths:
            styled = pipe.restyle(Video(clip), target, strength=s, steps=steps, guidance=GUIDANCE, seed=i).frames
            out[s]["success"].append(detect(styled)["color"] == next_colour(colour))
            out[s]["trajectory"].append(trajectory_error(clip, styled))
    return out


def mean(values) -> float:
    finite = [float(v) for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def summarise(inv: dict, edits: dict, restyle: dict) -> dict:
    return {
        "inversion_psnr": {n: mean(v) for n, v in inv["psnr"].items()},
        "inversion_seconds": {n: mean(v) for n, v in inv["seconds"].items()},
        "ceiling_psnr": mean(inv["ceiling"]),
        f"guidance_{GUIDANCE:g}_psnr": {m: mean(v) for m, v in inv["guided"].items()},
        f"guidance_{GUIDANCE:g}_seconds": {m: mean(v) for m, v in inv["guided_seconds"].items()},
        "guided_steps": inv["guided_steps"],
        "edits": {name: {k: mean(v) for k, v in r.items()} for name, r in edits.items()},
        "restyle": {s: {k: mean(v) for k, v in r.items()} for s, r in restyle.items()},
    }


def plot(restyle: dict, path: str) -> None:
    import matplotlib        # optional: only the plot needs it
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    strengths = sorted(restyle)
    fig, left = plt.subplots(figsize=(5, 3.2))
    left.plot(strengths, [restyle[s]["trajectory"] for s in strengths], "o-", color="tab:blue")
    left.set_xlabel("restyle strength (diffusion time)")
    left.set_ylabel("trajectory error (px)", color="tab:blue")
    right = left.twinx()
    right.plot(strengths, [100 * restyle[s]["success"] for s in strengths], "s--", color="tab:red")
    right.set_ylabel("colour edit success (%)", color="tab:red")
    left.set_title("vidiff restyle on MovingShapes (shapes model)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--steps", default="10,20,50,100", help="inversion steps to measure")
    parser.add_argument("--edit-steps", type=int, default=50)
    parser.add_argument("--strengths", default="0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1.0")
    parser.add_argument("--restyle-steps", type=int, default=20)
    parser.add_argument("--nti-iterations", type=int, default=None, help="default: the library's")
    parser.add_argument("--quick", action="store_true", help="only two edit variants (none, kv)")
    parser.add_argument("--plot", help="write the restyle curve here (.png)")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    import torch
    import vidiff
    from vidiff.pipelines.editing import DEFAULT_INJECT
    from vidiff.pipelines.inversion import NTI_ITERATIONS
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = vidiff.load(args.model)
    data = clips(args.clips)
    steps = [int(s) for s in args.steps.split(",")]
    strengths = [float(s) for s in args.strengths.split(",")]
    variants = {"no injection": dict(inject=0.0), f"kv tau={DEFAULT_INJECT}": dict(inject=DEFAULT_INJECT, injection="kv")}
    if not args.quick:
        variants[f"maps tau={DEFAULT_INJECT}"] = dict(inject=DEFAULT_INJECT, injection="maps")
        variants[f"kv tau={DEFAULT_INJECT} guidance {GUIDANCE:g}"] = dict(inject=DEFAULT_INJECT, injection="kv",
                                                                         guidance=GUIDANCE, cfg_inversion="negative")
    start = time.perf_counter()
    inv = run_inversion(pipe, data, steps, args.nti_iterations or NTI_ITERATIONS)
    edits = run_edits(pipe, data, args.edit_steps, variants)
    restyle = run_restyle(pipe, data, strengths, args.restyle_steps)
    s = summarise(inv, edits, restyle)
    s.update(clips=args.clips, model=args.model, seconds=time.perf_counter() - start)
    print(json.dumps(s, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(s, f, indent=1)
    if args.plot:
        plot(s["restyle"], args.plot)
        print(f"wrote {args.plot}")
    n50 = 50 if 50 in s["inversion_psnr"] else max(s["inversion_psnr"])
    g = s[f"guidance_{GUIDANCE:g}_psnr"]
    best = f"kv tau={DEFAULT_INJECT}"                  # the default edit, against no injection
    e, plain = s["edits"][best], s["edits"]["no injection"]
    half = min(s["restyle"], key=lambda k: abs(k - 0.5))
    print(f"headline: inversion {s['inversion_psnr'][n50]:.1f} dB at {n50} steps (model ceiling "
          f"{s['ceiling_psnr']:.1f}); guidance {GUIDANCE:g}: none {g['none']:.1f} / negative {g['negative']:.1f} / "
          f"nti {g['nti']:.1f} dB; colour edit ({best}) {100 * e['success']:.0f}% success, shape kept "
          f"{100 * e['shape_kept']:.0f}%, trajectory {e['trajectory']:.2f} px (no injection {plain['trajectory']:.2f}), "
          f"untouched {e['untouched']:.1f} dB; "
          f"restyle at {half:g}: trajectory {s['restyle'][half]['trajectory']:.2f} px, success "
          f"{100 * s['restyle'][half]['success']:.0f}% ({args.clips} clips)")


if __name__ == "__main__":
    main()
