"""How far a mask-trained model carries what its context frames show: the reach of a forecast.

Fresh MovingDigits clips (``MovingDigits(seed=4321)``, the frame-task benchmark's), frames
0..3 known. Two measurements:

* **one denoiser call.** The future frames are noised to diffusion time ``t`` and the
  network predicts the clean clip twice: with the context frames as known inputs, and with
  nothing known. Per future frame, the mean squared error (values in [-1, 1]) of both, and
  the share of the no-context error the context removes (``1 - ctx / none``). Near 1: the
  context tells the network that frame; 0: the frame gets nothing from it. At high ``t`` the
  noised frames hold almost nothing, so this is what the network reads from the context.
* **the sampled forecast** (``pipe.predict``, 20 dpmpp_2m steps, guidance 1): per future frame,
  the distance in pixels between the foreground centroid of the forecast and of the truth,
  next to that of copying frame 3, and the PSNR of both (uint8, peak 255; of the squared
  error pooled over the clips, since a clip whose digits sit still for a frame would give
  copy-last an unbounded PSNR).

The last line is the headline: the context's share at frames 4, 8 and 15 at ``t = 0.8``, and the
mean centroid error over the 12 future frames. Usage::

    python benchmarks/context_reach.py --model runs/digits --clips 16
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from tasks import CONTEXT, FRAMES, centroid, foreground

TIMES = (0.5, 0.8, 0.95)
SHOWN = (4, 8, 15)                        # frames of the headline


def denoiser_reach(pipe, clips: torch.Tensor, times=TIMES, seed: int = 0) -> dict:
    """``clips (B, 3, T, H, W)`` in [-1, 1] -> ``{t: {"ctx": [...], "none": [...]}}``: the x0
    MSE of each future frame (frames ``CONTEXT..T-1``) with and without the known context."""
    from vidiff.diffusion.masks import frames_mask
    from vidiff.models.condition import Conditioning
    B, _, T, H, W = clips.shape
    known = frames_mask(T, H, W, range(CONTEXT)).expand(B, -1, -1, -1, -1).float()   # (B, 1, T, H, W)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for t in times:
        eps = torch.randn(clips.shape, generator=g)
        tt = torch.full((B,), float(t))
        xt = pipe.schedule.add_noise(clips, eps, tt)
        row = {}
        for name, mask in (("ctx", known), ("none", torch.zeros_like(known))):
            cond = Conditioning(known=clips * mask, mask=mask, known_noise=torch.zeros(B))
            with torch.no_grad():
                pred = pipe.network(xt, tt, cond)                                    # (B, 3, T, H, W)
            row[name] = ((pred - clips) ** 2)[:, :, CONTEXT:].mean(dim=(0, 1, 3, 4)).tolist()
        out[t] = row
    return out


def forecast_drift(pipe, clips: np.ndarray, steps: int = 20) -> dict:
    """``clips (B, T, H, W, 3)`` uint8 -> per future frame: centroid error of the forecast and
    of copy-last (pixels, over clips where both have a foreground), PSNR of both."""
    from vidiff.video import Video
    err = {"forecast": [], "copy": []}
    level = {"forecast": [], "copy": []}
    for i, clip in enumerate(clips):
        pred = pipe.predict(Video(clip[:CONTEXT]), CONTEXT, FRAMES, seed=i, guidance=1.0, steps=steps).frames
        for name, frames in (("forecast", pred), ("copy", np.repeat(clip[CONTEXT - 1:CONTEXT], FRAMES, 0))):
            e, p = [], []
            for f in range(CONTEXT, FRAMES):
                a, b = centroid(foreground(frames[f])), centroid(foreground(clip[f]))
                e.append(np.nan if a is None or b is None else float(np.linalg.norm(a - b)))
                p.append(np.mean((frames[f].astype(np.float64) - clip[f]) ** 2))
            err[name].append(e)
            level[name].append(p)
    return {name: {"centroid_px": np.nanmean(np.array(err[name]), 0).tolist(),
                   "psnr": (10 * np.log10(255.0 ** 2 / np.mean(np.array(level[name]), 0))).tolist()}
            for name in err}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="digits")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    import vidiff
    from vidiff.data.digits import MovingDigits
    from vidiff.video import Video
    print(f"{args.clips} fresh MovingDigits clips; {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    start = time.perf_counter()
    pipe = vidiff.load(args.model)
    pipe.network.eval()
    data = MovingDigits(frames=FRAMES, size=32, seed=4321)
    video = torch.stack([data[i]["video"] for i in range(args.clips)]).float()      # (B, 3, T, H, W)
    reach = denoiser_reach(pipe, video)
    drift = forecast_drift(pipe, np.stack([Video.from_tensor(v).frames for v in video]))
    print(f"{'frame':>5} " + " ".join(f"{'ctx share t=' + str(t):>16}" for t in TIMES)
          + f" {'centroid px':>11} {'copy px':>8} {'psnr':>6} {'copy':>6}")
    for k, f in enumerate(range(CONTEXT, FRAMES)):
        shares = [1 - reach[t]["ctx"][k] / reach[t]["none"][k] for t in TIMES]
        print(f"{f:>5} " + " ".join(f"{s:16.2f}" for s in shares)
              + f" {drift['forecast']['centroid_px'][k]:11.2f} {drift['copy']['centroid_px'][k]:8.2f}"
              f" {drift['forecast']['psnr'][k]:6.2f} {drift['copy']['psnr'][k]:6.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"reach": {str(t): r for t, r in reach.items()}, "drift": drift,
                       "seconds": time.perf_counter() - start}, f, indent=1)
    share = {f: 1 - reach[0.8]["ctx"][f - CONTEXT] / reach[0.8]["none"][f - CONTEXT] for f in SHOWN}
    print(f"headline: at t = 0.8 the context removes {', '.join(f'{100 * s:.0f}%' for s in share.values())} "
          f"of the error at frames {', '.join(map(str, SHOWN))}; forecast centroid error "
          f"{np.nanmean(drift['forecast']['centroid_px']):.2f} px (copy-last "
          f"{np.nanmean(drift['copy']['centroid_px']):.2f} px) over frames {CONTEXT}-{FRAMES - 1}")


if __name__ == "__main__":
    main()
