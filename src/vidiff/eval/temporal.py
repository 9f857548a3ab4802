"""Weight-free temporal metrics of a clip: flickering, motion smoothness, dynamic degree, PSNR/SSIM.

Every function takes ``uint8 (T, H, W, 3)`` frames. Definitions (also in ``docs/eval.md``):

- **temporal flickering** (VBench): ``1 - mean |f[t+1] - f[t]| / 255`` over all consecutive
  pairs, pixels and channels. 1 for a frozen clip, 0 for a clip alternating black and white.
  It means "no flicker" only on static content: motion lowers it too, so VBench computes it
  on clips of static scenes.
- **motion smoothness**: every odd frame ``f[i]`` (with ``i + 1 < T``) is reconstructed from
  its even neighbours by motion-compensated interpolation, and the score is
  ``1 - mean |f_hat[i] - f[i]| / 255``. The interpolation is weight-free symmetric block
  matching: for each pixel ``p`` the displacement ``d`` (integers, ``|d| <= radius``) that
  minimises ``sum over a window of |f[i-1](q - d) - f[i+1](q + d)|^2`` (plus a tiny
  ``|d|^2`` tie-break towards no motion) is chosen, and
  ``f_hat[i](p) = (f[i-1](p - d) + f[i+1](p + d)) / 2``. Constant-velocity motion of up to
  ``radius`` pixels per frame is reconstructed exactly (score 1); jerky motion and noise are not.
- **dynamic degree**: the optical flow between consecutive frames (OpenCV Farneback if
  ``cv2`` is installed; otherwise the block-matching flow of :func:`block_flow`); per pair,
  the mean of the largest 5% of flow magnitudes; the clip's ``flow`` is the mean over pairs
  (pixels per frame), and it is *dynamic* when at least a quarter of the pairs (at least one)
  exceed ``6 * min(H, W) / 256`` pixels, VBench's threshold scaled to the frame size. Over a
  set of clips, the dynamic degree is the fraction of dynamic clips.
- **PSNR / SSIM** per frame against a reference clip of the same shape: PSNR
  ``10 log10(255^2 / MSE)`` in dB (capped at 100 dB for identical frames), SSIM from
  scikit-image (Gaussian-free 7x7 window, all channels, data range 255).

Frames larger than 128 pixels on their short side are averaged down by an integer factor to
at most 128 before block matching (flow is scaled back to full-resolution pixels).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from scipy.ndimage import uniform_filter
from skimage.metrics import structural_similarity

from vidiff.eval.features import iter_clips, list_clips
from vidiff.video import Video

PSNR_CAP = 100.0
WORK_SIDE = 128
TOP_FRACTION = 0.05


def _check(frames: np.ndarray, min_frames: int, what: str) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if frames.shape[0] < min_frames:
        raise ValueError(f"{what} needs at least {min_frames} frames, got {frames.shape[0]}")
    return frames


def temporal_flickering(frames: np.ndarray) -> float:
    """VBench temporal flickering in [0, 1] (1: identical consecutive frames); T >= 2."""
    x = _check(frames, 2, "temporal flickering").astype(np.float64)
    return float(1.0 - np.abs(np.diff(x, axis=0)).mean() / 255.0)


def _downscale(frames: np.ndarray) -> tuple[np.ndarray, int]:
    """float64 frames averaged down by the integer factor that brings the short side to <= 128."""
    x = frames.astype(np.float64)
    factor = -(-min(x.shape[1:3]) // WORK_SIDE)
    if factor == 1:
        return x, 1
    T, H, W, C = x.shape
    h, w = H // factor, W // factor
    x = x[:, :h * factor, :w * factor].reshape(T, h, factor, w, factor, C).mean(axis=(2, 4))
    return x, factor


def _match(a: np.ndarray, b: np.ndarray, radius: int, window: int, symmetric: bool):
    """Per-pixel best integer displacement between ``(N, H, W, C)`` image batches.

    Non-symmetric: ``a(p) ~ b(p + d)`` (flow from a to b). Symmetric: ``a(p - d) ~ b(p + d)``.
    The cost of ``d`` at ``p`` is the squared difference summed over channels and a
    ``window x window`` neighbourhood, plus ``1e-3 |d|^2`` so that ties go to the smallest
    motion; images are edge-padded. Returns ``(d: (N, H, W, 2) as (dy, dx), blend:
    (N, H, W, C) mean of the two matched pixels)``.
    """
    N, H, W, C = a.shape
    r = radius
    pad = ((0, 0), (r, r), (r, r), (0, 0))
    a_pad, b_pad = np.pad(a, pad, mode="edge"), np.pad(b, pad, mode="edge")
    best = np.full((N, H, W), np.inf)
    disp = np.zeros((N, H, W, 2))
    blend = (a + b) / 2
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            first = a_pad[:, r - dy:r - dy + H, r - dx:r - dx + W] if symmetric else a
            second = b_pad[:, r + dy:r + dy + H, r + dx:r + dx + W]
            cost = uniform_filter(((first - second) ** 2).sum(axis=-1), size=(1, window, window),
                                  mode="nearest") + 1e-3 * (dy * dy + dx * dx)
            better = cost < best
            np.copyto(best, cost, where=better)
            np.copyto(disp[..., 0], dy, where=better)
            np.copyto(disp[..., 1], dx, where=better)
            if symmetric:
                np.copyto(blend, (first + second) / 2, where=better[..., None])
    return disp, blend


def motion_smoothness(frames: np.ndarray, radius: int = 4, window: int = 7) -> float:
    """Motion smoothness in [0, 1]: 1 - mean abs error / 255 of odd frames interpolated from
    even ones (see the module docstring); T >= 3."""
    x, _ = _downscale(_check(frames, 3, "motion smoothness"))
    odd = np.arange(1, x.shape[0] - 1, 2)
    _, predicted = _match(x[odd - 1], x[odd + 1], radius, window, symmetric=True)  # (N, H, W, 3)
    return float(1.0 - np.abs(predicted - x[odd]).mean() / 255.0)


def _gray(frames: np.ndarray) -> np.ndarray:
    return frames @ np.array([0.299, 0.587, 0.114])


def block_flow(frames: np.ndarray, radius: int = 8, window: int = 7) -> np.ndarray:
    """Integer block-matching optical flow ``(T - 1, H', W', 2)`` as ``(dx, dy)`` in pixels
    from each of ``uint8 (T, H, W, 3)`` frames to the next (at the working resolution
    ``H' x W'``, values scaled to pixels of the input)."""
    x, factor = _downscale(frames)
    gray = _gray(x)[..., None]                                  # (T, H', W', 1)
    disp, _ = _match(gray[:-1], gray[1:], radius, window, symmetric=False)
    return disp[..., ::-1] * factor


def optical_flow(frames: np.ndarray) -> tuple[np.ndarray, str]:
    """Flow ``(T - 1, H, W, 2)`` (dx, dy) between consecutive frames, and the method's name:
    ``farneback`` (OpenCV, when installed) or ``block-matching`` (:func:`block_flow`)."""
    try:  # OpenCV is optional (not a dependency): imported only when flow is computed
        import cv2
    except ImportError:
        return block_flow(frames), "block-matching"
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    return np.stack([cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
                     for a, b in zip(gray[:-1], gray[1:])]), "farneback"


def dynamic_degree(frames: np.ndarray) -> dict:
    """``{"flow": mean over pairs of the top-5% flow magnitude (pixels per frame),
    "dynamic": bool, "threshold": pixels per frame, "method": flow method}``; T >= 2."""
    frames = _check(frames, 2, "dynamic degree")
    T, H, W, _ = frames.shape
    flow, method = optical_flow(frames)                          # (T - 1, H', W', 2)
    magnitude = np.sort(np.hypot(flow[..., 0], flow[..., 1]).reshape(T - 1, -1), axis=1)
    top = max(1, int(round(TOP_FRACTION * magnitude.shape[1])))
    scores = magnitude[:, -top:].mean(axis=1).tolist()
    threshold = 6.0 * min(H, W) / 256.0
    needed = max(1, int(round(0.25 * (T - 1))))
    return {"flow": float(np.mean(scores)), "dynamic": sum(s > threshold for s in scores) >= needed,
            "threshold": threshold, "method": method}


def psnr_ssim(frames: np.ndarray, reference: np.ndarray) -> dict:
    """Per-frame ``{"psnr": [dB, ...], "ssim": [...]}`` of ``frames`` against ``reference``
    (both ``uint8 (T, H, W, 3)`` of the same shape)."""
    frames, reference = _check(frames, 1, "PSNR"), _check(reference, 1, "PSNR")
    if frames.shape != reference.shape:
        raise ValueError(f"clip and reference differ in shape: {frames.shape} vs {reference.shape} (T, H, W, 3)")
    win = min(7, *frames.shape[1:3])
    win -= 1 - win % 2                                           # odd, as SSIM needs
    psnr, ssim = [], []
    for a, b in zip(frames.astype(np.float64), reference.astype(np.float64)):
        mse = float(np.mean((a - b) ** 2))
        psnr.append(PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * np.log10(255.0 ** 2 / mse)))
        ssim.append(float(structural_similarity(a, b, channel_axis=-1, data_range=255.0, win_size=win)))
    return {"psnr": psnr, "ssim": ssim}


def pooled_psnr(frames: np.ndarray, reference: np.ndarray) -> float:
    """PSNR (dB, peak 255) of the squared error pooled over every value of two uint8 arrays of
    the same shape: a whole clip ``(T, H, W, 3)``, or the pixels a mask selects. Unlike the
    mean of :func:`psnr_ssim`'s per-frame PSNRs, a frame weighs by its error, not its decibels,
    so a few failed frames cannot hide behind many exact ones. ``PSNR_CAP`` when identical."""
    frames, reference = np.asarray(frames), np.asarray(reference)
    if frames.shape != reference.shape:
        raise ValueError(f"arrays to compare differ in shape: {frames.shape} vs {reference.shape}")
    mse = float(np.mean((frames.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, float(10 * np.log10(255.0 ** 2 / mse)))


def clip_metrics(frames: np.ndarray, reference: Optional[np.ndarray] = None) -> dict:
    """Every metric of one clip: ``flickering``, ``smoothness`` (None when T < 3), ``flow``,
    ``dynamic``, and with a reference ``psnr``/``ssim`` (per frame) and their means."""
    frames = _check(frames, 2, "temporal metrics")
    motion = dynamic_degree(frames)
    out = {"frames": int(frames.shape[0]), "flickering": temporal_flickering(frames),
           "smoothness": motion_smoothness(frames) if frames.shape[0] >= 3 else None,
           "flow": motion["flow"], "dynamic": motion["dynamic"], "flow_method": motion["method"]}
    if reference is not None:
        scores = psnr_ssim(frames, reference)
        out.update(scores, psnr_mean=float(np.mean(scores["psnr"])), ssim_mean=float(np.mean(scores["ssim"])))
    return out


def summarize(rows: list[dict]) -> dict:
    """Means over clips of the numeric metrics; ``dynamic_degree`` = fraction of dynamic clips."""
    if not rows:
        raise ValueError("no clips to summarize")
    mean = {}
    for key in ("flickering", "smoothness", "flow", "psnr_mean", "ssim_mean"):
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            mean[key] = float(np.mean(values))
    mean["dynamic_degree"] = float(np.mean([bool(r["dynamic"]) for r in rows]))
    return mean


def _reference_for(path: str, source_root: str, reference_root: str):
    """The reference clip with the same relative path as ``path`` (any extension)."""
    relative = Path(path).relative_to(Path(source_root).expanduser())
    wanted = relative.with_suffix("").as_posix()
    for candidate in list_clips(reference_root):
        if candidate.relative_to(Path(reference_root).expanduser()).with_suffix("").as_posix() == wanted:
            return Video.load(candidate).frames
    raise ValueError(f"no reference for {str(relative)!r} in {reference_root!r}; references are matched "
                     "by relative path without extension")


def temporal_report(source: str, reference: Optional[str] = None, count: Optional[int] = None) -> dict:
    """Metrics of every clip in the folder ``source`` (or the first ``count``), per clip and on
    average: ``{"clips": [{"name", ...clip_metrics}], "mean": summarize(...), "count"}``.
    ``reference``: a folder holding a clip of the same relative path (and shape) for each."""
    rows = []
    for name, frames in iter_clips(source, count):
        ref = _reference_for(name, source, reference) if reference is not None else None
        rows.append({"name": name, **clip_metrics(frames, ref)})
    return {"source": source, "reference": reference, "count": len(rows), "clips": rows, "mean": summarize(rows)}


def format_temporal(report: dict) -> str:
    """A readable table of :func:`temporal_report`'s result."""
    refs = report.get("reference") is not None
    head = f"{'clip':<32}{'flicker':>9}{'smooth':>9}{'flow px':>9}{'dynamic':>9}"
    lines = [head + (f"{'PSNR dB':>9}{'SSIM':>7}" if refs else "")]

    def row(name, r, dynamic):
        smooth = "-" if r.get("smoothness") is None else f"{r['smoothness']:.4f}"
        text = f"{name[-32:]:<32}{r['flickering']:>9.4f}{smooth:>9}{r['flow']:>9.2f}{dynamic:>9}"
        return text + (f"{r['psnr_mean']:>9.2f}{r['ssim_mean']:>7.3f}" if refs else "")

    for r in report["clips"]:
        lines.append(row(r["name"], r, "yes" if r["dynamic"] else "no"))
    lines.append(row(f"mean of {report['count']}", report["mean"], f"{report['mean']['dynamic_degree']:.0%}"))
    return "\n".join(lines)
