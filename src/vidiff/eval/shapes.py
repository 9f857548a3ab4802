"""The MovingShapes judge: read colour, shape and direction back from a generated clip.

A text-to-video model trained on :class:`vidiff.data.MovingShapes` is scored by how often its
clip for ``a {color} {shape} moving {direction}`` shows exactly that. Generated clips are
imperfect (blurry edges, noise, a slightly wrong size), so the detector uses measures that
survive this and do not depend on the shape's exact size:

- **foreground**: pixels whose brightest channel is above halfway between the background
  level (the median) and the shape's level (the 99.5th percentile); per frame, the largest
  connected region. Frames where it is tiny (< 30% of the median area) are ignored, and so
  are frames where it touches the border, unless every frame does.
- **colour**: the mean foreground colour minus the background, scaled so its brightest
  channel is 1, then the nearest palette colour. Blur mixes the shape with black, which
  scales the colour but keeps its hue, and noise averages out over the region.
- **shape**: per frame, in the region's bounding box: *taper*, the mean row width of the top
  third over that of the bottom third (triangle ~0.2, circle and square ~1); *corners*, the
  filled fraction of the four corner cells, each a quarter of the box's sides (square ~1,
  circle ~0.3, triangle ~0.45); *fill*, the filled fraction of the box (circle pi/4, square 1,
  triangle 1/2). Averaged over frames, the nearest of the three prototypes wins.
- **direction**: the least-squares velocity of the region's centroid over frames; the axis
  with the larger speed and its sign give left/right (x) or up/down (y, pointing down).

An undetectable clip (blank, or no foreground) gets ``None`` for each attribute, which
:func:`score` counts as wrong.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
from scipy import ndimage

from vidiff.data.shapes import COLORS, DIRECTIONS, SHAPES

# Shape prototypes in (fill, taper, corners), measured on clean rendered clips, and the scale
# of each feature (the spread between prototypes) used to weigh distances.
_PROTOTYPES = {"circle": (0.785, 1.0, 0.30), "square": (1.0, 1.0, 1.0), "triangle": (0.53, 0.22, 0.42)}
_SCALES = (0.47, 0.78, 0.70)
_MIN_CONTRAST = 32.0  # the shape must be this many levels brighter than the background


class CaptionError(ValueError):
    """A caption is not of the form ``a {color} {shape} moving {direction}``."""


def parse_caption(caption: str) -> tuple[str, str, str]:
    """``"a red circle moving right"`` -> ``("red", "circle", "right")`` (case and spacing free)."""
    if not isinstance(caption, str):
        raise CaptionError(f"expected a caption string, got {caption!r}")
    words = caption.strip().lower().rstrip(".").split()
    if len(words) != 5 or words[0] != "a" or words[3] != "moving":
        raise CaptionError(f"{caption!r} is not of the form 'a {{color}} {{shape}} moving {{direction}}'")
    color, shape, direction = words[1], words[2], words[4]
    for value, accepted, name in ((color, tuple(COLORS), "color"), (shape, SHAPES, "shape"),
                                  (direction, DIRECTIONS, "direction")):
        if value not in accepted:
            raise CaptionError(f"{caption!r}: {name} {value!r} is not one of {list(accepted)}")
    return color, shape, direction


def to_frames(video) -> np.ndarray:
    """``float64 (T, H, W, 3)`` in [0, 255] from a ``Video``, a ``uint8 (T, H, W, 3)`` array or
    a ``(3, T, H, W)`` (or ``(1, 3, T, H, W)``) tensor in [-1, 1]."""
    if hasattr(video, "frames") and hasattr(video, "fps"):
        video = video.frames
    if isinstance(video, torch.Tensor):
        x = video.detach().float().cpu()
        if x.ndim == 5 and x.shape[0] == 1:
            x = x[0]
        if x.ndim != 4 or x.shape[0] != 3:
            raise ValueError(f"expected a (3, T, H, W) tensor in [-1, 1], got shape {tuple(x.shape)}")
        return ((x.clamp(-1, 1) + 1) * 127.5).permute(1, 2, 3, 0).double().numpy()
    array = np.asarray(video)
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {array.dtype} {array.shape}")
    return array.astype(np.float64)


def _foreground(frames: np.ndarray) -> Optional[np.ndarray]:
    """``bool (T, H, W)`` by the module's foreground rule, None when the clip has no contrast."""
    level = frames.max(axis=-1)                                 # (T, H, W) brightest channel
    background, peak = float(np.median(level)), float(np.percentile(level, 99.5))
    if peak - background < _MIN_CONTRAST:
        return None
    return level > background + 0.5 * (peak - background)


def foreground(video) -> np.ndarray:
    """``bool (T, H, W)``: each frame's largest foreground region by the detector's rule (all
    False for a clip without contrast): the shape's silhouette as the judge sees it."""
    frames = to_frames(video)
    mask = _foreground(frames)
    if mask is None:
        return np.zeros(frames.shape[:3], bool)
    regions = [_largest_region(m) for m in mask]
    return np.stack([r if r is not None else np.zeros_like(m) for r, m in zip(regions, mask)])


def centroids(video) -> np.ndarray:
    """``float (T, 2)``: the ``(x, y)`` centroid of each frame's :func:`foreground` in pixel
    units (the centre of pixel ``(i, j)`` is ``(j, i)``), NaN for a frame without one."""
    out = np.full((0, 2), np.nan)
    rows = []
    for mask in foreground(video):
        ys, xs = np.nonzero(mask)
        rows.append((xs.mean(), ys.mean()) if len(xs) else (np.nan, np.nan))
    return np.array(rows, np.float64) if rows else out


def _largest_region(mask: np.ndarray) -> Optional[np.ndarray]:
    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def _shape_features(region: np.ndarray) -> tuple[float, float, float]:
    ys, xs = np.nonzero(region)
    box = region[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = box.shape
    rows = box.sum(axis=1)
    third = max(1, h // 3)
    taper = rows[:third].mean() / max(rows[-third:].mean(), 1e-6)
    ch, cw = max(1, round(h / 4)), max(1, round(w / 4))
    corners = np.mean([box[:ch, :cw].mean(), box[:ch, -cw:].mean(),
                       box[-ch:, :cw].mean(), box[-ch:, -cw:].mean()])
    return float(box.mean()), float(min(taper, 2.0)), float(corners)


def _nearest(palette: dict, value: Sequence[float], scales=None) -> str:
    v = np.asarray(value, np.float64)
    s = np.ones_like(v) if scales is None else np.asarray(scales, np.float64)
    return min(palette, key=lambda k: float(np.sum(((np.asarray(palette[k]) - v) / s) ** 2)))


def detect(video, details: bool = False) -> dict:
    """``{"color", "shape", "direction"}`` read from one clip (``None`` where undetectable).

    ``details=True`` adds ``"features"``: the averaged (fill, taper, corners), the mean
    colour, the velocity ``(vx, vy)`` in pixels per frame and the number of frames used.
    """
    frames = to_frames(video)                                   # (T, H, W, 3) in [0, 255]
    T, H, W, _ = frames.shape
    result = {"color": None, "shape": None, "direction": None}
    foreground = _foreground(frames)
    if foreground is None:
        return {**result, "features": None} if details else result
    regions = [_largest_region(foreground[t]) for t in range(T)]
    areas = np.array([r.sum() if r is not None else 0 for r in regions], np.float64)
    found = areas > 0
    if not found.any():
        return {**result, "features": None} if details else result
    keep = found & (areas >= 0.3 * np.median(areas[found]))
    inside = np.array([k and not (regions[t][0].any() or regions[t][-1].any() or regions[t][:, 0].any()
                                  or regions[t][:, -1].any()) for t, k in enumerate(keep)])
    use = inside if inside.any() else keep
    times = np.nonzero(use)[0]

    # Colour: mean over the regions, background removed, brightest channel scaled to 1.
    pixels = np.concatenate([frames[t][regions[t]] for t in times])
    back = np.median(frames[~foreground], axis=0) if (~foreground).any() else np.zeros(3)
    mean = np.clip(pixels.mean(axis=0) - back, 0, None)
    rgb = mean / max(mean.max(), 1e-6)
    result["color"] = _nearest({k: np.array(v) / 255.0 for k, v in COLORS.items()}, rgb)

    features = np.mean([_shape_features(regions[t]) for t in times], axis=0)
    result["shape"] = _nearest(_PROTOTYPES, features, _SCALES)

    velocity = (0.0, 0.0)
    if len(times) >= 2:
        ys, xs = zip(*[np.nonzero(regions[t]) for t in times])
        cx = np.array([x.mean() for x in xs])
        cy = np.array([y.mean() for y in ys])
        vx, vy = np.polyfit(times, cx, 1)[0], np.polyfit(times, cy, 1)[0]
        velocity = (float(vx), float(vy))
        if max(abs(vx), abs(vy)) > 1e-6:
            if abs(vx) >= abs(vy):
                result["direction"] = "right" if vx > 0 else "left"
            else:
                result["direction"] = "down" if vy > 0 else "up"
    if details:
        result["features"] = {"fill": features[0], "taper": features[1], "corners": features[2],
                              "color": rgb.tolist(), "velocity": velocity, "frames_used": len(times)}
    return result


Target = Union[str, Sequence[str]]


def _target(target: Target) -> tuple[str, str, str]:
    if isinstance(target, str):
        return parse_caption(target)
    if len(target) != 3:
        raise CaptionError(f"expected a caption or a (color, shape, direction) triple, got {target!r}")
    return parse_caption(f"a {target[0]} {target[1]} moving {target[2]}")


def score(videos, targets: Sequence[Target]) -> dict:
    """Prompt adherence of generated clips.

    Args:
        videos: a sequence of clips (anything :func:`detect` reads) or one ``(B, 3, T, H, W)``
            tensor in [-1, 1].
        targets: the prompt of each clip, as a caption or a ``(color, shape, direction)`` triple.

    Returns ``{"count", "adherence"}`` (fraction with all three attributes right),
    ``"color_accuracy"``, ``"shape_accuracy"``, ``"direction_accuracy"``, ``"correct"``
    (counts: ``all``, ``color``, ``shape``, ``direction``) and ``"detections"`` (one dict per clip).
    """
    if isinstance(videos, torch.Tensor) and videos.ndim == 5:
        videos = list(videos)
    videos, wanted = list(videos), [_target(t) for t in targets]
    if len(videos) != len(wanted):
        raise ValueError(f"score got {len(videos)} videos but {len(wanted)} targets")
    if not videos:
        raise ValueError("score needs at least one video")
    detections = [detect(v) for v in videos]
    correct = {"all": 0, "color": 0, "shape": 0, "direction": 0}
    for d, (color, shape, direction) in zip(detections, wanted):
        hits = {"color": d["color"] == color, "shape": d["shape"] == shape,
                "direction": d["direction"] == direction}
        for key, hit in hits.items():
            correct[key] += int(hit)
        correct["all"] += int(all(hits.values()))
    n = len(videos)
    return {"count": n, "adherence": correct["all"] / n,
            "color_accuracy": correct["color"] / n, "shape_accuracy": correct["shape"] / n,
            "direction_accuracy": correct["direction"] / n, "correct": correct,
            "detections": detections}
