"""Datasets: synthetic benchmarks and folders of your own videos, plus batching.

Every dataset is map-style and returns ``{"video": (3, T, H, W) float in [-1, 1], "caption":
str, "frame_stride": float, "index": int, ...metadata}``; item ``i`` depends only on
``(seed, i)``. See ``docs/data.md``.

>>> from vidiff.data import build_dataset, make_loader
>>> dataset = build_dataset({"name": "shapes", "frames": 8, "size": 32})
>>> batch = next(iter(make_loader(dataset, batch_size=4)))
>>> batch["video"].shape
torch.Size([4, 3, 8, 32, 32])
"""
from vidiff.data.common import INFINITE, DatasetError, item_rng
from vidiff.data.config import BUILTIN, DataConfig, build_dataset
from vidiff.data.digits import MovingDigits
from vidiff.data.folder import VideoFolder
from vidiff.data.loader import BucketBatchSampler, BucketPlan, InfiniteSampler, SeededSampler, collate, make_loader
from vidiff.data.photopan import MOTIONS, PHOTOS, PhotoPan, available_photos
from vidiff.data.shapes import (COLORS, DEMO_HELD_OUT, DIRECTIONS, SHAPES, MovingShapes, all_triples,
                                caption)

__all__ = [
    "DataConfig", "build_dataset", "BUILTIN", "DatasetError", "INFINITE", "item_rng",
    "MovingShapes", "COLORS", "SHAPES", "DIRECTIONS", "DEMO_HELD_OUT", "all_triples", "caption",
    "MovingDigits", "PhotoPan", "PHOTOS", "MOTIONS", "available_photos", "VideoFolder",
    "collate", "make_loader", "BucketBatchSampler", "BucketPlan", "SeededSampler", "InfiniteSampler",
]
