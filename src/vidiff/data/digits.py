"""MovingDigits: Stochastic-Moving-MNIST-style clips from scikit-learn's bundled digits.

The glyphs are the 1,797 8x8 handwritten digits that ship inside scikit-learn
(``sklearn.datasets.load_digits``; nothing is downloaded), upscaled bilinearly to a square of
side ``0.4 * S``. One to ``max_digits`` digits start at uniform positions with uniform random
velocities (speed between 3% and 8% of the frame side per frame, any heading) and bounce off
the walls (a perfect reflection: the glyph's box never leaves the frame). White on black;
overlapping digits combine by maximum. Captions: ``digit 3``, ``digits 3 and 7``,
``digits 3, 5 and 7`` (in drawing order).
"""
from __future__ import annotations

import functools
import itertools
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from vidiff.data.common import DatasetError, SyntheticDataset, reflect
from vidiff.video import DEFAULT_FPS

SCALE = 0.4                # glyph side as a fraction of the frame's shorter side
SPEED = (0.03, 0.08)       # pixels per frame, as a fraction of the frame's shorter side
NAMES = "0123456789"


@functools.lru_cache(maxsize=1)
def load_glyphs() -> tuple[np.ndarray, np.ndarray]:
    """``(float32 (1797, 8, 8) in [0, 1], int labels (1797,))`` from scikit-learn."""
    # Imported here for start-up time: sklearn.datasets adds about a second to every
    # `vidiff` command (all of which import vidiff.data), and only MovingDigits needs it.
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int64)


def digits_caption(labels) -> str:
    labels = [str(int(d)) for d in labels]
    if len(labels) == 1:
        return f"digit {labels[0]}"
    return f"digits {', '.join(labels[:-1])} and {labels[-1]}"


class MovingDigits(SyntheticDataset):
    """One to ``max_digits`` handwritten digits bouncing around a black frame.

    Args:
        frames, size, seed, length, buckets, fps, stretch, frame_strides: as for every
            synthetic dataset (:class:`~vidiff.data.common.SyntheticDataset`).
        max_digits: each clip holds 1 to ``max_digits`` digits (uniformly), at most 4.

    Items carry ``digits`` (labels, drawing order) and ``positions``: float tensor
    ``(n, T, 2)``, the top-left corner ``(x, y)`` of each glyph's box in each frame, in
    pixels before rounding (glyphs are pasted at the rounded position).
    """

    frame_axes = {"positions": 1}   # (n, T, 2)

    def __init__(self, frames: int = 16, size: int = 32, seed: int = 0, length: Optional[int] = None,
                 max_digits: int = 2, buckets=None, fps: float = DEFAULT_FPS,
                 stretch: float = 1.0, frame_strides=()):
        super().__init__(frames, size, seed, length, buckets, fps, stretch, frame_strides)
        if not 1 <= max_digits <= 4:
            raise DatasetError(f"max_digits must be between 1 and 4, got {max_digits}")
        self.max_digits = int(max_digits)
        load_glyphs()  # fail early, and share the array with forked workers

    def _make(self, rng: np.random.Generator, frames: int, height: int, width: int,
              step: float = 1.0) -> dict:
        # step: the time between frames (1: the speeds above per frame); the draws do not
        # depend on it, so one item at two steps shows one scene at two frame rates.
        images, labels = load_glyphs()
        n = int(rng.integers(1, self.max_digits + 1))
        ids = rng.integers(len(images), size=n)
        side = max(4, round(SCALE * min(height, width)))
        glyphs = F.interpolate(torch.from_numpy(images[ids])[:, None], size=(side, side),
                               mode="bilinear", align_corners=False)[:, 0].clamp(0, 1).numpy()
        room = np.array([width - side, height - side], np.float64)
        start = rng.uniform(0, 1, size=(n, 2)) * room
        speed = rng.uniform(*SPEED, size=n) * min(height, width)
        heading = rng.uniform(0, 2 * np.pi, size=n)
        velocity = np.stack([np.cos(heading), np.sin(heading)], axis=1) * speed[:, None]
        steps = np.arange(frames, dtype=np.float64) * step
        path = start[:, None, :] + velocity[:, None, :] * steps[None, :, None]   # (n, T, 2)
        positions = np.stack([reflect(path[..., 0], room[0]), reflect(path[..., 1], room[1])], axis=-1)
        canvas = np.zeros((frames, height, width), np.float32)
        corners = np.rint(positions).astype(np.int64)
        for k in range(n):
            for t in range(frames):
                x, y = corners[k, t]
                region = canvas[t, y:y + side, x:x + side]
                np.maximum(region, glyphs[k], out=region)
        gray = np.rint(canvas * 255).astype(np.uint8)
        digits = [int(labels[i]) for i in ids]
        return {"frames": np.repeat(gray[..., None], 3, axis=-1), "caption": digits_caption(digits),
                "digits": digits, "positions": torch.from_numpy(positions).float()}

    def captions(self) -> list[str]:
        """Every caption this dataset can produce (10 + 100 + ... for up to ``max_digits``)."""
        return [digits_caption(c) for n in range(1, self.max_digits + 1)
                for c in itertools.product(range(10), repeat=n)]
