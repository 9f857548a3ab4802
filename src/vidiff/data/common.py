"""What every dataset shares: the item format, per-item random generators, resizing.

Every dataset is map-style and returns items of one format::

    {"video": FloatTensor (3, T, H, W) in [-1, 1], "caption": str,
     "frame_stride": float, "index": int, ...dataset-specific metadata}

Item ``i`` depends only on ``(seed, i)``: each item draws from its own
``numpy.random.Generator(PCG64([seed, i]))``, so a clip is the same whatever the worker count,
the access order or the process that reads it.
"""
from __future__ import annotations

import functools
import logging
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from vidiff.video import DEFAULT_FPS, Video

logger = logging.getLogger("vidiff.data")

# The virtual length of an "infinite" dataset: any index below it is a fresh clip.
INFINITE = 2**31 - 1


class DatasetError(ValueError):
    """A dataset cannot be built or read; the message names the file or value at fault."""


def item_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """The generator of item ``index``; ``stream`` separates independent draws of one item
    (stream 0: the clip itself, stream 1: its bucket)."""
    key = [int(seed), int(index)] if stream == 0 else [int(seed), int(index), int(stream)]
    return np.random.Generator(np.random.PCG64(key))


def check_buckets(buckets: Optional[Sequence[Sequence[int]]]) -> list[tuple[int, int, int]]:
    """Validate a list of ``(frames, height, width)`` buckets; returns tuples."""
    out = []
    for b in buckets or []:
        if len(b) != 3 or any(int(v) != v or v < 1 for v in b):
            raise DatasetError(f"a bucket is [frames, height, width] of positive integers, got {list(b)}")
        out.append((int(b[0]), int(b[1]), int(b[2])))
    return out


def resize_crop(x: torch.Tensor, height: int, width: int, crop: str = "center",
                rng: Optional[np.random.Generator] = None) -> torch.Tensor:
    """Scale ``(T, C, H, W)`` so it covers ``height x width`` (antialiased bilinear), then crop.

    ``crop`` is ``"center"`` or ``"random"`` (offsets drawn from ``rng``).
    """
    T, C, H, W = x.shape
    scale = max(height / H, width / W)
    new_h, new_w = max(height, round(H * scale)), max(width, round(W * scale))
    if (new_h, new_w) != (H, W):
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False,
                          antialias=scale < 1)
    if crop == "random" and rng is not None:
        top = int(rng.integers(0, new_h - height + 1))
        left = int(rng.integers(0, new_w - width + 1))
    else:
        top, left = (new_h - height) // 2, (new_w - width) // 2
    return x[:, :, top:top + height, left:left + width]


def box_downsample(video: torch.Tensor, factor: int) -> torch.Tensor:
    """Each frame of ``video (..., C, T, H, W)`` shrunk by ``factor``: the mean of every
    ``factor x factor`` block, as a camera sensor integrates the light over a larger pixel.

    This is how a super-resolution stage's training inputs are made and how its consistency is
    checked (an upscaled clip box-downsampled again should give back its input). ``H`` and
    ``W`` must be multiples of ``factor``; ValueError otherwise.
    """
    *lead, C, T, H, W = video.shape
    if H % factor or W % factor:
        raise ValueError(f"a {H}x{W} frame does not box-downsample by {factor}: "
                         f"height and width must be multiples of {factor}")
    blocks = video.reshape(*lead, C, T, H // factor, factor, W // factor, factor)
    return blocks.mean(dim=(-3, -1))


class SyntheticDataset(Dataset):
    """Base of the procedurally generated datasets: infinite or ``length`` items, optional buckets.

    Subclasses implement ``_make(rng, frames, height, width) -> dict`` (at least ``frames``
    as ``uint8 (T, H, W, 3)`` and ``caption``) and ``captions()``, and name in ``frame_axes``
    the per-frame tensors of an item with the axis that counts frames.

    ``stretch`` (>= 1) makes each clip a random window of ``T`` consecutive frames out of one
    drawn ``L`` frames long, ``L`` uniform in ``[T, 1 + floor(stretch * (T - 1))]``. A motion
    that spans the whole clip (MovingShapes' travel, PhotoPan's pan or zoom) then moves up to
    ``stretch`` times slower per frame: the speeds of clips ``stretch`` times longer. A causal
    video autoencoder trained on one clip length otherwise learns that length's speed as a
    prior and fails on longer clips, which move slower (docs/benchmarks.md, "Reconstruction
    quality"). ``L`` and the window come from their own stream of the item's generator.

    ``frame_strides`` (for a subclass whose ``_make`` takes ``step=``: motion with a speed of
    its own, not one set by the clip's length, as MovingDigits has) renders each clip at one of
    these time steps, drawn per item from a third stream: a stride ``s`` shows the scene at
    times ``0, s, 2s, ...`` (``s < 1``:
    slow motion, the frames between those of a stride-1 clip) and is the item's
    ``frame_stride``. What a temporal-interpolation stage trains on: the frame rates it must
    produce, labelled, so one model serves several factors.
    """

    min_frames = 1
    frame_axes: dict[str, int] = {}

    def __init__(self, frames: int = 16, size: int = 32, seed: int = 0,
                 length: Optional[int] = None, buckets=None, fps: float = DEFAULT_FPS,
                 stretch: float = 1.0, frame_strides: Sequence[float] = ()):
        if frames < self.min_frames:
            raise DatasetError(f"{type(self).__name__} needs frames >= {self.min_frames}, got {frames}")
        if size < 4:
            raise DatasetError(f"{type(self).__name__} needs size >= 4, got {size}")
        if seed < 0:
            raise DatasetError(f"seed must be >= 0, got {seed}")
        if length is not None and length < 1:
            raise DatasetError(f"length must be >= 1 (or None for infinite), got {length}")
        if fps <= 0:
            raise DatasetError(f"fps must be > 0, got {fps}")
        if not stretch >= 1:
            raise DatasetError(f"stretch must be >= 1 (1: no stretching), got {stretch}")
        self.frame_strides = tuple(float(v) for v in frame_strides)
        if not all(v > 0 for v in self.frame_strides):
            raise DatasetError(f"frame_strides must be positive, got {list(self.frame_strides)}")
        self.frames, self.size, self.seed, self.length = int(frames), int(size), int(seed), length
        self.fps, self.stretch = float(fps), float(stretch)
        self.buckets = check_buckets(buckets)
        for b in self.buckets:
            if b[0] < self.min_frames or min(b[1:]) < 4:
                raise DatasetError(f"{type(self).__name__}: bucket {list(b)} needs frames >= "
                                   f"{self.min_frames} and sides >= 4")

    @property
    def infinite(self) -> bool:
        return self.length is None

    def __len__(self) -> int:
        return INFINITE if self.length is None else self.length

    def _check_index(self, index) -> int:
        if isinstance(index, torch.Tensor):
            index = index.item()
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {type(self).__name__} of length {len(self)}")
        return index

    def item_shape(self, index: int) -> tuple[int, int, int]:
        """``(frames, height, width)`` of item ``index`` (drawn among the buckets, when set)."""
        if not self.buckets:
            return self.frames, self.size, self.size
        k = int(item_rng(self.seed, index, stream=1).integers(len(self.buckets)))
        return self.buckets[k]

    def __getitem__(self, index) -> dict:
        index = self._check_index(index)
        T, H, W = self.item_shape(index)
        stride, make = 1.0, self._make
        if self.frame_strides:
            stride = self.frame_strides[int(item_rng(self.seed, index, stream=3).integers(len(self.frame_strides)))]
            make = functools.partial(self._make, step=stride)
        if self.stretch > 1 and T > 1:
            draw = item_rng(self.seed, index, stream=2)
            L = int(draw.integers(T, 2 + int(self.stretch * (T - 1))))      # T .. 1 + floor(s(T-1))
            offset = int(draw.integers(0, L - T + 1))
            item = self._window(make(item_rng(self.seed, index), L, H, W), offset, T)
        else:
            item = make(item_rng(self.seed, index), T, H, W)
        frames = item.pop("frames")
        return {"video": Video(frames, self.fps).to_tensor(), "caption": item.pop("caption"),
                "frame_stride": stride, "index": index, **item}

    def _make(self, rng: np.random.Generator, frames: int, height: int, width: int) -> dict:
        raise NotImplementedError

    def _window(self, item: dict, offset: int, frames: int) -> dict:
        """Frames ``offset .. offset + frames - 1`` of a made item: its ``frames`` and every
        per-frame tensor named in ``frame_axes`` cut along their frame axis."""
        out = dict(item, frames=item["frames"][offset:offset + frames])
        for key, axis in self.frame_axes.items():
            out[key] = item[key].narrow(axis, offset, frames)
        return out

    def captions(self) -> list[str]:
        raise NotImplementedError

    def __repr__(self) -> str:
        n = "infinite" if self.infinite else str(self.length)
        return f"{type(self).__name__}(frames={self.frames}, size={self.size}, seed={self.seed}, length={n})"


def reflect(x: np.ndarray, limit: float) -> np.ndarray:
    """Positions bouncing between 0 and ``limit``: the triangle wave of an unbounded path."""
    if limit <= 0:
        return np.zeros_like(x)
    m = np.mod(x, 2 * limit)
    return np.where(m <= limit, m, 2 * limit - m)


def geometric(a: float, b: float, frames: int) -> np.ndarray:
    """``frames`` values from ``a`` to ``b`` at a constant ratio (a constant zoom rate)."""
    if frames == 1:
        return np.array([a], dtype=np.float64)
    return a * (b / a) ** (np.arange(frames) / (frames - 1))


def vocabulary_captions(dataset, limit: int = 4096) -> list[str]:
    """Captions a built-in tokenizer's vocabulary is built from: the dataset's own list when
    it has one (``captions()``), else the captions of its first ``limit`` items."""
    if hasattr(dataset, "captions"):
        captions = dataset.captions() if callable(dataset.captions) else dataset.captions
        return list(captions)
    return [str(dataset[i].get("caption", "")) for i in range(min(limit, len(dataset)))]
