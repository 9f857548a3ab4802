"""MovingShapes: one coloured shape crossing a black frame; the benchmark for prompt adherence.

The spec is fixed so results stay comparable between runs and papers:

- black background; one filled shape, no anti-aliasing: a ``circle`` of radius ``r``, a
  ``square`` of side ``2r`` or a ``triangle`` (isosceles, apex up, base ``2r``, height ``2r``),
  with ``r = 0.15 * S`` for a frame of side ``S`` (``min(H, W)`` for a non-square bucket);
- colour one of :data:`COLORS` (exact 8-bit values);
- it moves ``left``, ``right``, ``up`` or ``down`` at constant speed, its centre travelling
  ``0.45 * S`` (``0.45 * W`` horizontally, ``0.45 * H`` vertically) over the ``T - 1`` frame
  steps, from a start drawn uniformly among those that keep the shape inside every frame;
- caption exactly ``a {color} {shape} moving {direction}``.

Geometry (pixel-centre sampling): pixel ``(i, j)`` (row ``i``, column ``j``) has centre
``(x, y) = (j + 0.5, i + 0.5)`` in continuous coordinates where the frame spans
``[0, W] x [0, H]`` and ``y`` points down. A pixel is the shape's colour when its centre lies
inside the exact shape or on its boundary. The shape's *centre* is the centre of its bounding
box ``[cx - r, cx + r] x [cy - r, cy + r]`` (for the triangle: apex ``(cx, cy - r)``, base from
``(cx - r, cy + r)`` to ``(cx + r, cy + r)``), so "inside the frame" means
``r <= cx <= W - r`` and ``r <= cy <= H - r`` in every frame.
"""
from __future__ import annotations

import itertools
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch

from vidiff.data.common import DatasetError, SyntheticDataset
from vidiff.video import DEFAULT_FPS

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
    "white": (255, 255, 255),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
RADIUS = 0.15   # r as a fraction of the frame side
TRAVEL = 0.45   # distance the centre travels over the clip, as a fraction of the frame side

# Unit velocity of each direction in (x, y), y down.
VELOCITY: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}

# Held out from training in the demo: every colour, shape and direction still appears in
# training (with the other values), only these combinations are new at test time.
DEMO_HELD_OUT: list[tuple[str, str, str]] = [
    ("red", "triangle", "left"),
    ("green", "circle", "down"),
    ("blue", "square", "up"),
    ("white", "circle", "right"),
]

Triple = tuple[str, str, str]
Size = Union[int, Sequence[int]]


def all_triples() -> list[Triple]:
    """All 84 ``(color, shape, direction)`` combinations, in a fixed order."""
    return list(itertools.product(COLORS, SHAPES, DIRECTIONS))


def caption(color: str, shape: str, direction: str) -> str:
    """The caption of a clip: ``a {color} {shape} moving {direction}``."""
    return f"a {color} {shape} moving {direction}"


def check_triple(triple: Sequence[str], where: str = "triple") -> Triple:
    """Validate a ``(color, shape, direction)`` triple (or a caption) and return it as a tuple."""
    if isinstance(triple, str):
        words = triple.split()
        if len(words) != 5 or words[0] != "a" or words[3] != "moving":
            raise DatasetError(f"{where}: {triple!r} is not of the form "
                               "'a {color} {shape} moving {direction}'")
        triple = (words[1], words[2], words[4])
    triple = tuple(str(v).strip().lower() for v in triple)
    if len(triple) != 3:
        raise DatasetError(f"{where}: expected [color, shape, direction], got {list(triple)}")
    for value, accepted, name in zip(triple, (tuple(COLORS), SHAPES, DIRECTIONS),
                                     ("color", "shape", "direction")):
        if value not in accepted:
            raise DatasetError(f"{where}: {name} {value!r} is not one of {list(accepted)}")
    return triple  # type: ignore[return-value]


def _hw(size: Size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def geometry(direction: str, frames: int, size: Size) -> dict:
    """Radius, per-step displacement and the start bounds for a clip of ``size`` (S or (H, W)).

    Returns ``{"radius", "step": (dx, dy), "x": (lo, hi), "y": (lo, hi)}``: the centre at
    frame 0 may be anywhere in ``[x_lo, x_hi] x [y_lo, y_hi]``.
    """
    if frames < 2:
        raise DatasetError(f"MovingShapes needs frames >= 2 (the motion is over T - 1 steps), got {frames}")
    H, W = _hw(size)
    r = RADIUS * min(H, W)
    vx, vy = VELOCITY[direction]
    travel = TRAVEL * (W if vx else H)
    dx, dy = vx * travel / (frames - 1), vy * travel / (frames - 1)
    x_lo, x_hi, y_lo, y_hi = r, W - r, r, H - r
    # The path covers [start, start + travel] (or the reverse) along its axis.
    if vx > 0:
        x_hi -= travel
    elif vx < 0:
        x_lo += travel
    if vy > 0:
        y_hi -= travel
    elif vy < 0:
        y_lo += travel
    return {"radius": r, "step": (dx, dy), "x": (x_lo, x_hi), "y": (y_lo, y_hi)}


def shape_masks(shape: str, cx: np.ndarray, cy: np.ndarray, r: float, height: int, width: int) -> np.ndarray:
    """``bool (T, H, W)``: pixels whose centre lies in the shape centred at ``(cx[t], cy[t])``."""
    x = (np.arange(width) + 0.5)[None, None, :] - np.asarray(cx, np.float64)[:, None, None]
    y = (np.arange(height) + 0.5)[None, :, None] - np.asarray(cy, np.float64)[:, None, None]
    if shape == "circle":
        return x * x + y * y <= r * r
    if shape == "square":
        return (np.abs(x) <= r) & (np.abs(y) <= r)
    if shape == "triangle":
        # Apex at y = -r, base at y = +r; half-width grows from 0 to r: |x| <= (y + r) / 2.
        return (y <= r) & (2 * np.abs(x) <= y + r)
    raise DatasetError(f"shape {shape!r} is not one of {list(SHAPES)}")


def render(color: str, shape: str, direction: str, frames: int = 16, size: Size = 32,
           start: Optional[Sequence[float]] = None) -> np.ndarray:
    """Render one clip as ``uint8 (T, H, W, 3)``.

    ``start`` is the shape's centre ``(x, y)`` at frame 0 in pixels (see the module docstring
    for the convention); ``None`` centres the path in the frame. A start that would take the
    shape outside the frame is an error.
    """
    color, shape, direction = check_triple((color, shape, direction))
    H, W = _hw(size)
    g = geometry(direction, frames, (H, W))
    if start is None:
        start = (sum(g["x"]) / 2, sum(g["y"]) / 2)
    x0, y0 = float(start[0]), float(start[1])
    eps = 1e-9
    if not (g["x"][0] - eps <= x0 <= g["x"][1] + eps and g["y"][0] - eps <= y0 <= g["y"][1] + eps):
        raise DatasetError(f"start {(x0, y0)} takes a {shape} moving {direction} outside a {W}x{H} "
                           f"frame; the centre at frame 0 must lie in x {g['x']}, y {g['y']}")
    steps = np.arange(frames)
    cx, cy = x0 + g["step"][0] * steps, y0 + g["step"][1] * steps
    mask = shape_masks(shape, cx, cy, g["radius"], H, W)
    out = np.zeros((frames, H, W, 3), np.uint8)
    out[mask] = COLORS[color]
    return out


class MovingShapes(SyntheticDataset):
    """One coloured shape moving across a black frame, captioned ``a {color} {shape} moving {dir}``.

    Args:
        frames: clip length ``T`` (>= 2).
        size: frame side ``S`` in pixels.
        seed: item ``i`` depends only on ``(seed, i)``.
        length: number of items; ``None`` for an endless stream (any index below 2**31 - 1).
        held_out: ``(color, shape, direction)`` triples (or captions) never drawn; each item
            draws uniformly among the remaining triples.
        buckets: optional ``[(frames, height, width), ...]``; each item draws one.
        fps: the frame rate recorded with the clips (for playback only).
        stretch: each clip a window of one up to ``stretch`` times longer, so the shape moves
            up to that much slower (see :class:`~vidiff.data.common.SyntheticDataset`).

    Items carry ``color``, ``shape``, ``direction`` and ``start`` (the centre ``(x, y)`` at
    frame 0, a float tensor) besides the common keys.
    """

    min_frames = 2
    COLORS, SHAPES, DIRECTIONS = COLORS, SHAPES, DIRECTIONS

    def __init__(self, frames: int = 16, size: int = 32, seed: int = 0, length: Optional[int] = None,
                 held_out: Iterable[Sequence[str]] = (), buckets=None, fps: float = DEFAULT_FPS,
                 stretch: float = 1.0):
        super().__init__(frames, size, seed, length, buckets, fps, stretch)
        self.held_out = []
        for k, triple in enumerate(held_out or ()):
            triple = check_triple(triple, where=f"held_out[{k}]")
            if triple not in self.held_out:
                self.held_out.append(triple)
        held = set(self.held_out)
        self.triples = [t for t in all_triples() if t not in held]
        if not self.triples:
            raise DatasetError("held_out holds all 84 triples: nothing is left to train on")

    render = staticmethod(render)
    geometry = staticmethod(geometry)

    def _make(self, rng: np.random.Generator, frames: int, height: int, width: int) -> dict:
        color, shape, direction = self.triples[int(rng.integers(len(self.triples)))]
        g = geometry(direction, frames, (height, width))
        start = (float(rng.uniform(*g["x"])), float(rng.uniform(*g["y"])))
        clip = render(color, shape, direction, frames, (height, width), start)
        return {"frames": clip, "caption": caption(color, shape, direction), "color": color,
                "shape": shape, "direction": direction,
                "start": torch.tensor(start, dtype=torch.float32)}

    def _window(self, item: dict, offset: int, frames: int) -> dict:
        """A window of a longer clip (see ``stretch``): ``start`` moves to the window's frame 0."""
        T, H, W = item["frames"].shape[:3]
        dx, dy = geometry(item["direction"], T, (H, W))["step"]
        start = item["start"] + torch.tensor([dx * offset, dy * offset], dtype=torch.float32)
        return dict(super()._window(item, offset, frames), start=start)

    def captions(self) -> list[str]:
        """Captions of every triple this dataset draws (the held-out ones excluded)."""
        return [caption(*t) for t in self.triples]
