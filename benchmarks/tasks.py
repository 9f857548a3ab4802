"""Frame tasks on MovingShapes: forecasting, interpolation, image-to-video, inpainting,
outpainting, and what long clips cost.

Every clip is rendered fresh (``vidiff.data.shapes.render``, every colour/shape/direction
triple in turn, start positions from a fixed seed), so no clip is one the model trained on.
Three ways of conditioning on the known pixels are measured side by side:

* ``mask``: the mask-trained model (``--model``), known frames as network inputs;
* ``guidance``: reconstruction guidance on the text-to-video-only checkpoint (``--t2v``);
* ``replace``: plain replacement on that same checkpoint.

Tasks and figures (uint8 PSNR, peak 255; 20 dpmpp_2m steps):

* forecast: the first 4 frames of a 16-frame clip are given, no prompt (``--forecast-prompt``:
  the caption, at ``--forecast-guidance``, default 1); PSNR over the 12 future frames against the truth, minus that of
  repeating frame 3 (copy-last); and the share of clips whose forecast keeps the true
  direction (the shapes detector).
* interpolate x4: frames 0, 4, 8, 12 given, no prompt; PSNR over the 9 generated frames minus
  that of blending the neighbouring keyframes linearly.
* animate: frame 0 given with the clip's caption; PSNR of the raw model output's frame 0
  against the image (before the known pixels are pasted back) and the share of clips where
  colour, shape and direction are all right.
* inpaint: a box over the shape's path during frames 5-10 is hidden, with the caption; the
  centroid error (pixels) of what is generated inside the hole, and the share of the right colour.
* outpaint: shapes moving left or right lose the 8 columns they move into, which come back
  as padding, with the caption; raw-output PSNR on the original region, and the centroid
  error over the frames where the true shape reaches into the padding.
* cost (``mask`` model): working memory (peak RSS minus the loaded model's) and seconds per
  frame of extending a 16-frame clip to 32 and to 128 frames, each in a fresh subprocess.

With ``--dataset digits`` (a MovingDigits model, ``mask`` method): forecasting 4 -> 16 frames
(PSNR over the 12 future frames against copy-last, and SSIM), and long videos: 16 true frames
extended to 128. A long clip passes when every frame's foreground area (pixels above half
brightness) stays within 0.5-2x of the 16 given frames' mean area (no digit lost, duplicated
or smeared) and the digits still move over its last 16 frames (mean centroid speed of at
least a quarter of the given frames'). The area test does not see a digit that turns into
another, so for the clips of one digit a reader (logistic regression on glyph crops, fitted on
MovingDigits clips of its own seed) reports the share of generated frames it reads as the
clip's digit, next to its share on the given frames. ``--forecast-prompt`` tells both the
forecast and the extension each clip's caption, which names its digits (at ``--forecast-guidance``);
``--overlap K`` starts every extension window with K known frames (default: the pipeline's,
a quarter window); ``--known-noise T`` noises the known frames to diffusion time T when
sampling, as training does half the time (noise augmentation), so that a window conditioned on
frames the model made itself sees them as it saw noisy ones in training. ``--best-of N`` also
draws N more forecasts of every clip and reports the best PSNR and the best SSIM among them,
each picked on its own: the protocol of published stochastic moving-digit predictors (SVG
and MCVD report the best of 100 samples a test clip), so their figures compare. It says
how close some drawn future comes to the truth, not what one forecast is worth.

The last line is the headline. Usage::

    python benchmarks/tasks.py --model shapes --t2v runs/shapes --clips 24
    python benchmarks/tasks.py --dataset digits --model digits --clips 16
    python benchmarks/tasks.py --dataset digits --model digits --clips 16 --forecast-prompt
    python benchmarks/tasks.py --dataset digits --model digits --clips 16 --forecast-prompt --overlap 12
    python benchmarks/tasks.py --dataset digits --model digits --clips 16 --best-of 100
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import Optional

import numpy as np

from vidiff.eval.temporal import pooled_psnr
from vae_memory import ALLOCATORS, start_peak, working_mib      # the autoencoder benchmark's peak-RSS reading

CONTEXT, FRAMES, FACTOR = 4, 16, 4
HOLE = (5, 10)                      # inpainting hides the shape over these frames (inclusive)
PAD = 8                             # outpainting columns


def foreground(frame: np.ndarray) -> np.ndarray:
    return frame.max(axis=-1) > 127                   # shapes are saturated colours on black


def centroid(mask: np.ndarray):
    ys, xs = np.nonzero(mask)
    return None if len(xs) == 0 else np.array([xs.mean(), ys.mean()])


def clips(n: int, size: int = 32):
    """``n`` fresh clips: (caption, triple, uint8 (T, H, W, 3)), triples in turn, random starts."""
    from vidiff.data.shapes import all_triples, caption, geometry, render
    rng = np.random.default_rng(1234)
    triples = all_triples()
    out = []
    for i in range(n):
        triple = triples[(i * 7) % len(triples)]                # spread over colours, shapes, directions
        g = geometry(triple[2], FRAMES, size)
        start = (rng.uniform(*g["x"]), rng.uniform(*g["y"]))
        out.append((caption(*triple), triple, render(*triple, frames=FRAMES, size=size, start=start)))
    return out


def outpaint_clip(triple, size: int = 32):
    """A left/right mover that starts well inside the kept columns and ends in the padding."""
    from vidiff.data.shapes import geometry, render
    g = geometry(triple[2], FRAMES, size)
    x0 = g["x"][1] if triple[2] == "right" else g["x"][0]
    return render(*triple, frames=FRAMES, size=size, start=(x0, sum(g["y"]) / 2))


def run_tasks(pipe, method: str, data, steps: int, weight: float, forecast_guidance=None, guidance=None) -> dict:
    import torch
    from vidiff.data.shapes import COLORS
    from vidiff.diffusion.masks import box_mask, frames_mask
    from vidiff.eval.shapes import detect
    from vidiff.video import Video
    opts = dict(steps=steps, method=method)
    if guidance is not None:          # the prompted tasks' (animate, inpaint, outpaint) text guidance
        opts["guidance"] = guidance
    if weight is not None:
        opts["guidance_weight"] = weight
    r = {k: [] for k in ("forecast", "copy_last", "direction", "interp", "blend", "i2v_psnr",
                         "i2v_right", "inpaint_err", "inpaint_color", "outpaint_psnr", "outpaint_err")}
    start = time.perf_counter()
    for i, (text, triple, clip) in enumerate(data):
        video = Video(clip)
        # Forecast.
        told = dict(guidance=1.0) if forecast_guidance is None else dict(prompt=text, guidance=forecast_guidance)
        pred = pipe.predict(Video(clip[:CONTEXT]), CONTEXT, FRAMES, seed=i, **{**opts, **told}).frames
        r["forecast"].append(pooled_psnr(pred[CONTEXT:], clip[CONTEXT:]))
        r["copy_last"].append(pooled_psnr(np.repeat(clip[CONTEXT - 1:CONTEXT], FRAMES - CONTEXT, 0), clip[CONTEXT:]))
        r["direction"].append(detect(pred)["direction"] == triple[2])
        # Interpolate x4 over frames 0..12.
        keys = clip[0:13:FACTOR]
        out = pipe.interpolate(Video(keys), FACTOR, seed=i, **{**opts, "guidance": 1.0}).frames
        between = [f for f in range(13) if f % FACTOR]
        blend = np.stack([(1 - (f % FACTOR) / FACTOR) * keys[f // FACTOR].astype(np.float64)
                          + (f % FACTOR) / FACTOR * keys[f // FACTOR + 1] for f in between])
        r["interp"].append(pooled_psnr(out[between], clip[between]))
        r["blend"].append(pooled_psnr(np.round(blend).astype(np.uint8), clip[between]))
        # Animate: raw output of frame 0.
        known = torch.zeros(3, FRAMES, 32, 32)
        known[:, 0] = video.to_tensor()[:, 0]
        filled, raw = pipe.fill(known, frames_mask(FRAMES, 32, 32, [0]), text, seed=i, **opts)
        raw_frames = Video.from_tensor(raw[0]).frames
        r["i2v_psnr"].append(pooled_psnr(raw_frames[0], clip[0]))
        found = detect(Video.from_tensor(filled[0]))
        r["i2v_right"].append((found["color"], found["shape"], found["direction"]) == tuple(triple))
        # Inpaint: the shape's path over HOLE, plus one pixel.
        f0, f1 = HOLE
        ys, xs = np.nonzero(np.any([foreground(clip[f]) for f in range(f0, f1 + 1)], axis=0))
        box = (max(0, xs.min() - 1), max(0, ys.min() - 1), min(32, xs.max() + 2), min(32, ys.max() + 2))
        filled, _ = pipe.fill(video.to_tensor(), box_mask(FRAMES, 32, 32, box, HOLE), text, seed=i, **opts)
        out = Video.from_tensor(filled[0]).frames
        x0, y0, x1, y1 = box
        errors, colours = [], []
        for f in range(f0, f1 + 1):
            hole_out = np.zeros((32, 32), bool)
            hole_out[y0:y1, x0:x1] = foreground(out[f])[y0:y1, x0:x1]
            c_out, c_true = centroid(hole_out), centroid(foreground(clip[f]))
            errors.append(np.inf if c_out is None else float(np.linalg.norm(c_out - c_true)))
            if c_out is not None:
                colours.append(out[f][hole_out].mean(axis=0))
        r["inpaint_err"].append(float(np.mean(errors)))
        mean = np.mean(colours, axis=0) if colours else np.zeros(3)
        nearest = min(COLORS, key=lambda c: np.linalg.norm(np.array(COLORS[c]) - mean))
        r["inpaint_color"].append(bool(colours) and nearest == triple[0])
        # Outpaint (left/right movers only).
        if triple[2] in ("left", "right"):
            full = outpaint_clip(triple)
            side = "right" if triple[2] == "right" else "left"
            kept = full[:, :, :32 - PAD] if side == "right" else full[:, :, PAD:]
            pad = {side: PAD}
            canvas = torch.zeros(3, FRAMES, 32, 32)
            keep = torch.ones(1, FRAMES, 32, 32)
            if side == "right":
                canvas[:, :, :, :32 - PAD] = Video(kept).to_tensor()
                keep[..., 32 - PAD:] = 0
            else:
                canvas[:, :, :, PAD:] = Video(kept).to_tensor()
                keep[..., :PAD] = 0
            pipe.outpaint(Video(kept), pad, text, seed=i, **opts)   # the command path runs too
            filled, raw = pipe.fill(canvas, keep, text, seed=i, **opts)
            out, raw_frames = Video.from_tensor(filled[0]).frames, Video.from_tensor(raw[0]).frames
            region = slice(0, 32 - PAD) if side == "right" else slice(PAD, 32)
            r["outpaint_psnr"].append(pooled_psnr(raw_frames[:, :, region], kept))
            errs = []
            for f in range(FRAMES):
                true = foreground(full[f])
                reaches = true[:, 32 - PAD:].any() if side == "right" else true[:, :PAD].any()
                if reaches:
                    c_out = centroid(foreground(out[f]))
                    errs.append(np.inf if c_out is None else float(np.linalg.norm(c_out - centroid(true))))
            if errs:
                r["outpaint_err"].append(float(np.mean(errs)))
    summary = {k: float(np.mean(v)) for k, v in r.items() if v}
    summary["seconds"] = time.perf_counter() - start
    return summary


# ----------------------------------------------------------------------------- digits
GLYPH = 13                          # a MovingDigits glyph's side at 32x32 (0.4 of the frame)


def glyph_crop(frame: np.ndarray) -> Optional[np.ndarray]:
    """The ``GLYPH x GLYPH`` window centred on the bright strokes of a one-digit frame, flat
    in [0, 1]; None for an empty frame."""
    ys, xs = np.nonzero(foreground(frame))
    if len(xs) == 0:
        return None
    y0 = int(round((ys.min() + ys.max()) / 2 - GLYPH / 2)) + GLYPH
    x0 = int(round((xs.min() + xs.max()) / 2 - GLYPH / 2)) + GLYPH
    gray = frame.max(axis=-1).astype(np.float32) / 255.0
    return np.pad(gray, GLYPH)[y0:y0 + GLYPH, x0:x0 + GLYPH].reshape(-1)


def digit_reader():
    """A logistic-regression reader of one-digit frames, fitted on 600 MovingDigits clips of one
    digit (every third frame) drawn with a seed of its own. How often it reads a true frame
    right is reported beside every reading (``identity_truth``: the given frames)."""
    from sklearn.linear_model import LogisticRegression
    from vidiff.data.digits import MovingDigits
    from vidiff.video import Video
    data = MovingDigits(frames=FRAMES, size=32, seed=777, max_digits=1)
    X, y = [], []
    for i in range(600):
        item = data[i]
        for frame in Video.from_tensor(item["video"]).frames[::3]:
            crop = glyph_crop(frame)
            if crop is not None:
                X.append(crop)
                y.append(item["digits"][0])
    return LogisticRegression(max_iter=2000).fit(np.array(X), np.array(y))


def read_share(reader, frames: np.ndarray, digit: int) -> float:
    """The share of ``frames (T, H, W, 3)`` the reader reads as ``digit`` (an empty frame: wrong)."""
    crops = [glyph_crop(f) for f in frames]
    found = np.array([c for c in crops if c is not None])
    right = (reader.predict(found) == digit).sum() if len(found) else 0
    return float(right) / len(frames)


def digits_tasks(pipe, n: int, steps: int, long_frames: int = 128,
                 told_guidance: Optional[float] = None, overlap: Optional[int] = None,
                 known_noise: float = 0.0, best_of: int = 1) -> dict:
    """Forecast and long extension of fresh MovingDigits clips, from the frames alone, or told
    each clip's caption (which names its digits) at ``told_guidance``; ``overlap``: the known
    frames each extension window starts with (None: the pipeline's default); ``known_noise``:
    the diffusion time of noise put on the known frames (noise augmentation at sampling);
    ``best_of``: also draw that many forecasts of each clip and keep the best PSNR and the
    best SSIM among them (each chosen on its own), the stochastic-prediction protocol."""
    from vidiff.data.digits import MovingDigits
    from vidiff.eval.temporal import psnr_ssim
    from vidiff.video import Video
    data = MovingDigits(frames=FRAMES, size=32, seed=4321)          # a seed training never used
    reader = digit_reader()
    r = {k: [] for k in ("forecast", "copy_last", "ssim", "copy_ssim", "long_ok", "area_min",
                         "area_max", "speed_ratio")}
    if best_of > 1:
        r.update(best_forecast=[], best_ssim=[])
    identity, identity_truth = [], []     # one-digit clips: frames read as their digit
    start = time.perf_counter()
    for i in range(n):
        item = data[i]
        clip = Video.from_tensor(item["video"]).frames                         # (T, H, W, 3) uint8
        prompt = None if told_guidance is None else item["caption"]
        guidance = 1.0 if told_guidance is None else told_guidance
        pred = pipe.predict(Video(clip[:CONTEXT]), CONTEXT, FRAMES, prompt, seed=i, guidance=guidance,
                            steps=steps, known_noise=known_noise).frames
        copy = np.repeat(clip[CONTEXT - 1:CONTEXT], FRAMES - CONTEXT, 0)
        r["forecast"].append(pooled_psnr(pred[CONTEXT:], clip[CONTEXT:]))
        r["copy_last"].append(pooled_psnr(copy, clip[CONTEXT:]))
        r["ssim"].append(float(np.mean(psnr_ssim(pred[CONTEXT:], clip[CONTEXT:])["ssim"])))
        r["copy_ssim"].append(float(np.mean(psnr_ssim(copy, clip[CONTEXT:])["ssim"])))
        if best_of > 1:
            # seeds 1000 + i: other draws than the single forecast's, so that one is not a free pick
            futures = pipe.predict(Video(clip[:CONTEXT]), CONTEXT, FRAMES, prompt, samples=best_of,
                                   seed=1000 + i, guidance=guidance, steps=steps, known_noise=known_noise)
            futures = [v.frames[CONTEXT:] for v in futures]
            r["best_forecast"].append(max(pooled_psnr(f, clip[CONTEXT:]) for f in futures))
            r["best_ssim"].append(max(float(np.mean(psnr_ssim(f, clip[CONTEXT:])["ssim"])) for f in futures))
        long = pipe.extend(Video(clip), long_frames, prompt, seed=i, guidance=guidance, steps=steps,
                           overlap=overlap, known_noise=known_noise).frames
        areas = np.array([foreground(f).sum() for f in long], np.float64)
        ratio = areas / max(areas[:FRAMES].mean(), 1.0)
        centres = [centroid(foreground(f)) for f in long]

        def speed(frames):
            pts = [centres[f] for f in frames if centres[f] is not None]
            return float(np.mean([np.linalg.norm(b - a) for a, b in zip(pts, pts[1:])])) if len(pts) > 1 else 0.0
        moving = speed(range(long_frames - FRAMES, long_frames)) / max(speed(range(FRAMES)), 1e-6)
        r["area_min"].append(float(ratio.min()))
        r["area_max"].append(float(ratio.max()))
        r["speed_ratio"].append(moving)
        r["long_ok"].append(bool(ratio.min() >= 0.5 and ratio.max() <= 2.0 and moving >= 0.25))
        if len(item["digits"]) == 1:
            identity.append(read_share(reader, long[FRAMES:], item["digits"][0]))
            identity_truth.append(read_share(reader, clip, item["digits"][0]))
        if i == 0:
            Video(long).save(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "runs", "digits_long_0.mp4"))
    summary = {k: float(np.mean(v)) for k, v in r.items()}
    gains = np.array(r["forecast"]) - np.array(r["copy_last"])
    # per-clip spread of the forecast's gain: what a re-measurement on fewer clips is held to
    summary.update(area_min=float(np.min(r["area_min"])), area_max=float(np.max(r["area_max"])),
                   gain_std=float(gains.std(ddof=1)) if n > 1 else 0.0, seconds=time.perf_counter() - start)
    if identity:
        summary.update(identity=float(np.mean(identity)), identity_truth=float(np.mean(identity_truth)),
                       one_digit_clips=len(identity))
    return summary


# ----------------------------------------------------------------------------- cost of long clips
def cost_worker(model: str, frames: int, steps: int) -> dict:
    import vidiff
    from vidiff.data.shapes import render
    pipe = vidiff.load(model)
    video = vidiff.Video(render("red", "circle", "right", frames=FRAMES, size=32))
    pipe.extend(video, FRAMES + 4, steps=1)                 # warm up: first-call allocations
    baseline = start_peak()
    start = time.perf_counter()
    pipe.extend(video, frames, steps=steps)
    seconds = time.perf_counter() - start
    return {"frames": frames, "working_mib": working_mib(baseline),
            "seconds_per_frame": seconds / (frames - FRAMES)}


def cost(model: str, steps: int) -> dict:
    out = {}
    for frames in (32, 128):
        cmd = [sys.executable, __file__, "--cost-worker", str(frames), "--model", model, "--steps", str(steps)]
        env = {**os.environ, **ALLOCATORS["fixed"]}              # RSS follows the live set (vae_memory.py)
        result = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if result.returncode:
            raise RuntimeError(f"cost worker {frames} failed:\n{result.stderr}")
        out[frames] = json.loads(result.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="shapes", choices=("shapes", "digits"))
    parser.add_argument("--model", default="shapes", help="the mask-trained model")
    parser.add_argument("--t2v", default="runs/shapes", help="the text-to-video-only checkpoint")
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance-weight", type=float, default=None, help="default: vidiff's")
    parser.add_argument("--methods", default="mask,guidance,replace")
    parser.add_argument("--guidance", type=float, default=None,
                        help="text guidance of the prompted tasks: animate, inpaint, outpaint (default: the model's)")
    parser.add_argument("--forecast-prompt", action="store_true",
                        help="forecast with the clip's caption instead of from the frames alone")
    parser.add_argument("--forecast-guidance", type=float, default=1.0,
                        help="guidance of a forecast told its caption (1: none, the measured best)")
    parser.add_argument("--overlap", type=int, default=None,
                        help="digits: known frames each extension window starts with (default: the pipeline's)")
    parser.add_argument("--known-noise", type=float, default=0.0,
                        help="digits: diffusion time of noise on the known frames when sampling (training draws 0-0.05)")
    parser.add_argument("--best-of", type=int, default=1, metavar="N",
                        help="digits: also report the best PSNR and SSIM of N forecasts per clip")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--cost-worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cost_worker is not None:
        print(json.dumps(cost_worker(args.model, args.cost_worker, args.steps)))
        return
    import torch
    import vidiff
    dataset = "MovingDigits" if args.dataset == "digits" else "MovingShapes"
    print(f"{args.clips} fresh {dataset} clips, {args.steps} steps; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    if args.dataset == "digits":
        s = digits_tasks(vidiff.load(args.model), args.clips, args.steps,
                         told_guidance=args.forecast_guidance if args.forecast_prompt else None,
                         overlap=args.overlap, known_noise=args.known_noise, best_of=args.best_of)
        print(json.dumps({k: round(v, 3) for k, v in s.items()}))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(s, f, indent=1)
        print(f"headline: digits forecast {s['forecast'] - s['copy_last']:+.2f} dB over copy-last, SSIM "
              f"{s['ssim']:.3f} (copy-last {s['copy_ssim']:.3f}); 16 -> 128 frames: {100 * s['long_ok']:.0f}% of "
              f"clips keep every frame's area in 0.5-2x (range {s['area_min']:.2f}-{s['area_max']:.2f}) and moving"
              + (f"; one-digit clips: {100 * s['identity']:.0f}% of generated frames read as their digit "
                 f"(given frames: {100 * s['identity_truth']:.0f}%)" if "identity" in s else "")
              + (f"; best of {args.best_of} forecasts: {s['best_forecast'] - s['copy_last']:+.2f} dB over copy-last, "
                 f"SSIM {s['best_ssim']:.3f}" if "best_forecast" in s else ""))
        return
    data = clips(args.clips)
    results = {}
    for method in args.methods.split(","):
        pipe = vidiff.load(args.model if method == "mask" else args.t2v)
        results[method] = run_tasks(pipe, method, data, args.steps, args.guidance_weight,
                                    args.forecast_guidance if args.forecast_prompt else None, args.guidance)
        print(method, json.dumps({k: round(v, 3) for k, v in results[method].items()}), flush=True)
    print(f"\n{'method':>9} {'forecast dB':>12} {'vs copy':>8} {'dir %':>6} {'interp dB':>10} {'vs blend':>9} "
          f"{'i2v f0 dB':>10} {'i2v ok %':>9} {'inpaint px':>11} {'colour %':>9} {'outpaint dB':>12} {'pad px':>7}")
    for method, s in results.items():
        print(f"{method:>9} {s['forecast']:12.2f} {s['forecast'] - s['copy_last']:+8.2f} {100 * s['direction']:6.1f} "
              f"{s['interp']:10.2f} {s['interp'] - s['blend']:+9.2f} {s['i2v_psnr']:10.2f} {100 * s['i2v_right']:9.1f} "
              f"{s['inpaint_err']:11.2f} {100 * s['inpaint_color']:9.1f} {s['outpaint_psnr']:12.2f} "
              f"{s['outpaint_err']:7.2f}")
    if "mask" in results:
        costs = cost(args.model, args.steps)
        results["cost"] = costs
        for frames, c in costs.items():
            print(f"extend to {frames} frames: working memory {c['working_mib']:.1f} MiB, "
                  f"{c['seconds_per_frame']:.3f} s per generated frame")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    s = results.get("mask") or next(iter(results.values()))
    line = (f"headline: forecast {s['forecast'] - s['copy_last']:+.2f} dB over copy-last (direction "
            f"{100 * s['direction']:.0f}%), interpolation {s['interp'] - s['blend']:+.2f} dB over blending, "
            f"image-to-video frame 0 {s['i2v_psnr']:.1f} dB raw / {100 * s['i2v_right']:.0f}% right, inpaint "
            f"{s['inpaint_err']:.2f} px")
    if "cost" in results:
        line += f", memory 128/32 frames {results['cost'][128]['working_mib'] / max(results['cost'][32]['working_mib'], 1e-3):.2f}"
    print(line)


if __name__ == "__main__":
    main()
