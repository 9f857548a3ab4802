"""``DataConfig`` and ``build_dataset``: from a config section to a dataset.

``name`` is a built-in dataset (``shapes``, ``digits``, ``photopan``) or the path of a video
folder. Options that do not apply to the chosen dataset are an error rather than silently
ignored, so a typo'd run fails at once.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional, Union

from vidiff.config import ConfigError, from_dict
from vidiff.data.common import DatasetError
from vidiff.data.digits import MovingDigits
from vidiff.data.folder import VideoFolder
from vidiff.data.latents import LatentCache, is_latent_cache
from vidiff.data.photopan import PhotoPan
from vidiff.data.shapes import DEMO_HELD_OUT, MovingShapes, check_triple
from vidiff.video import DEFAULT_FPS

BUILTIN = ("shapes", "digits", "photopan")

# Options beyond the common ones (name, frames, size, seed, length, buckets, num_workers, fps)
# and the datasets they apply to.
_SPECIFIC = {
    "held_out": ("shapes",),
    "max_digits": ("digits",),
    "photos": ("photopan",),
    "stride": ("folder",),
    "captions": ("folder",),
    "crop": ("folder",),
    "stretch": BUILTIN,
    "frame_strides": ("digits",),
}


@dataclass
class DataConfig:
    """What to train on.

    Attributes:
        name: ``shapes``, ``digits``, ``photopan`` or the path of a folder of videos.
        frames: clip length ``T``.
        size: frame side in pixels (square clips; see ``buckets`` for others).
        seed: item ``i`` depends only on ``(seed, i)``.
        length: number of items; ``None``: endless for the synthetic datasets, one item per
            clip for a folder.
        fps: folder: target frame rate (each video's stride follows from its own rate);
            synthetic: the frame rate recorded for playback (default 8).
        buckets: ``[[frames, height, width], ...]``: clips of several shapes in one run,
            batched by shape.
        num_workers: DataLoader worker processes (0: decode in the main process).
        held_out: shapes: ``[[color, shape, direction], ...]`` (or captions) never trained
            on, or ``"demo"`` for :data:`vidiff.data.DEMO_HELD_OUT`; a latent cache of
            shapes: the triples its source held out (checked).
        max_digits: digits: 1 to this many digits per clip.
        photos: photopan: photo names to use (default all available).
        stride: folder: take every ``stride``-th frame (exclusive with ``fps``).
        captions: folder: caption file, ``None`` to look for ``captions.jsonl``/``.csv``,
            ``"none"`` for empty captions.
        crop: folder: ``center`` or ``random``.
        stretch: synthetic: each clip a random window of ``frames`` out of one drawn up to
            ``stretch`` times longer, so whole-clip motions move up to that much slower: the
            speeds of longer clips (what a causal autoencoder needs to hold at every length).
        frame_strides: digits: each clip rendered at one of these time steps between frames
            (0.25: four frames where a stride-1 clip has one), recorded as its ``frame_stride``
            (a temporal-interpolation stage learns every listed rate in one model).
    """

    name: str = "shapes"
    frames: int = 16
    size: int = 32
    seed: int = 0
    length: Optional[int] = None
    fps: Optional[float] = None
    buckets: list[list[int]] = field(default_factory=list)
    num_workers: int = 0
    held_out: Union[str, list[list[str]]] = field(default_factory=list)
    max_digits: int = 2
    photos: list[str] = field(default_factory=list)
    stride: int = 1
    captions: Optional[str] = None
    crop: str = "center"
    stretch: float = 1.0
    frame_strides: list[float] = field(default_factory=list)

    def __post_init__(self):
        checks = [
            (isinstance(self.name, str) and self.name.strip() != "", "data.name must be a dataset name or a path"),
            (self.frames >= 1, f"data.frames must be >= 1, got {self.frames}"),
            (self.size >= 4, f"data.size must be >= 4, got {self.size}"),
            (self.seed >= 0, f"data.seed must be >= 0, got {self.seed}"),
            (self.length is None or self.length >= 1, f"data.length must be >= 1 or null, got {self.length}"),
            (self.fps is None or self.fps > 0, f"data.fps must be > 0, got {self.fps}"),
            (self.num_workers >= 0, f"data.num_workers must be >= 0, got {self.num_workers}"),
            (1 <= self.max_digits <= 4, f"data.max_digits must be between 1 and 4, got {self.max_digits}"),
            (self.stride >= 1, f"data.stride must be >= 1, got {self.stride}"),
            (self.crop in ("center", "random"), f"data.crop: {self.crop!r} is not one of ['center', 'random']"),
            (self.stretch >= 1, f"data.stretch must be >= 1 (1: no stretching), got {self.stretch}"),
            (all(v > 0 for v in self.frame_strides), f"data.frame_strides must be positive, got {self.frame_strides}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        for k, b in enumerate(self.buckets):
            if len(b) != 3 or any(v < 1 for v in b):
                raise ConfigError(f"data.buckets[{k}]: expected [frames, height, width] of positive "
                                  f"integers, got {b}")
        self.held_out = self._held_out_triples()

    def _held_out_triples(self) -> list[list[str]]:
        value = self.held_out
        if isinstance(value, str):
            if value.strip().lower() == "demo":
                return [list(t) for t in DEMO_HELD_OUT]
            if value.strip().lower() in ("", "none"):
                return []
            raise ConfigError(f"data.held_out: {value!r} is not 'demo', 'none' or a list of "
                              "[color, shape, direction]")
        out = []
        for k, triple in enumerate(value):
            # A one-element entry may be a whole caption: "a red circle moving left".
            entry = triple[0] if len(triple) == 1 else triple
            try:
                out.append(list(check_triple(entry, where=f"data.held_out[{k}]")))
            except DatasetError as e:
                raise ConfigError(str(e)) from None
        return out

    @property
    def kind(self) -> str:
        """``shapes``, ``digits``, ``photopan`` or ``folder``."""
        return self.name if self.name in BUILTIN else "folder"

    @classmethod
    def from_dict(cls, data: dict) -> "DataConfig":
        return from_dict(cls, data, "data")


def _check_applicable(config: DataConfig, skip: tuple[str, ...] = ()) -> None:
    defaults = DataConfig()
    kind = config.kind
    for key, kinds in _SPECIFIC.items():
        if key not in skip and kind not in kinds and getattr(config, key) != getattr(defaults, key):
            where = " and ".join("video folders" if k == "folder" else repr(k) for k in kinds)
            raise ConfigError(f"data.{key} applies only to {where}, not to {config.name!r}")


def build_dataset(config: Union[DataConfig, dict, str]):
    """The dataset a :class:`DataConfig` (or a dict of its fields, or just a name) describes;
    a path to a latent cache (``vidiff cache-latents``) gives a :class:`LatentCache`."""
    if isinstance(config, str):
        config = DataConfig(name=config)
    elif isinstance(config, dict):
        config = DataConfig.from_dict(config)
    elif not isinstance(config, DataConfig):
        raise TypeError(f"build_dataset expects a DataConfig, dict or name, got {type(config).__name__}")
    kind = config.kind
    if kind == "folder" and not Path(config.name).expanduser().exists():
        raise ConfigError(f"data.name: {config.name!r} is neither a built-in dataset "
                          f"({', '.join(BUILTIN)}) nor an existing path to a folder of videos")
    if kind == "folder" and is_latent_cache(Path(config.name).expanduser()):
        return _latent_cache(config)
    _check_applicable(config)
    common = dict(frames=config.frames, size=config.size, seed=config.seed, length=config.length,
                  buckets=config.buckets)
    synthetic = dict(fps=config.fps if config.fps is not None else DEFAULT_FPS, stretch=config.stretch)
    try:
        if kind == "shapes":
            return MovingShapes(**common, held_out=config.held_out, **synthetic)
        if kind == "digits":
            return MovingDigits(**common, max_digits=config.max_digits, frame_strides=config.frame_strides,
                                **synthetic)
        if kind == "photopan":
            return PhotoPan(**common, photos=config.photos, **synthetic)
        return VideoFolder(config.name, **common, stride=config.stride, fps=config.fps,
                           captions=config.captions, crop=config.crop)
    except DatasetError as e:
        raise ConfigError(f"data: {e}") from None


def _latent_cache(config: DataConfig) -> LatentCache:
    """The latent cache at ``config.name``, checked against the config: its clips' ``frames``
    and ``size``, and ``held_out``, which must name the triples its source held out (so the
    run's config records what the model never saw, and ``vidiff eval shapes`` scores them
    apart; the cache itself cannot hold out more than its source did)."""
    _check_applicable(config, skip=("held_out",))
    try:
        cache = LatentCache(Path(config.name).expanduser())
    except DatasetError as e:
        raise ConfigError(f"data: {e}") from None
    source = cache.index.get("source") or {}
    for key in ("frames", "size"):
        if key in source and source[key] != getattr(config, key):
            raise ConfigError(f"data.{key}={getattr(config, key)} but the latent cache "
                              f"{config.name!r} holds clips of {key} {source[key]}: set "
                              f"data.{key}={source[key]}")
    held = sorted(map(tuple, source.get("held_out") or []))
    if sorted(map(tuple, config.held_out)) != held:
        named = "none" if not held else ("demo" if held == sorted(DEMO_HELD_OUT) else str([list(t) for t in held]))
        raise ConfigError(f"data.held_out lists {len(config.held_out)} triples but the latent cache "
                          f"{config.name!r} was written holding out {len(held)}: set data.held_out={named}")
    return cache


def config_fields() -> list[str]:
    """The accepted keys of the ``data`` section."""
    return [f.name for f in fields(DataConfig)]
