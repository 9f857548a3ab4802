"""VideoFolder: training clips from a folder of your own videos.

The folder is scanned once, when the dataset is built: every video file (``.mp4``, ``.webm``,
``.gif``, ``.mov``, ``.mkv``, ``.avi``, ``.m4v``) and every sub-folder of image frames (a
directory holding ``.png``/``.jpg`` files, with an optional ``fps.txt``) anywhere below the root
becomes one clip; other sub-folders are searched recursively. Each is probed for its frame
count, frame rate and size. A file that does not decode, and a clip too short for the
requested frames, is skipped with a logged warning and listed in ``dataset.skipped`` as
``(path, reason)``; it never stops a run. A file that passes the probe but fails later, while
a worker decodes it, is reported the same way and replaced by the next clip.

Captions come from ``captions.jsonl`` (``{"file": "a.mp4", "caption": "..."}`` per line) or
``captions.csv`` (``file,caption``, header optional) in the root, or from the file named by
``captions``; files are named relative to the root. Without a caption file, captions are
empty. A caption file that names videos the folder does not hold is an error listing them.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path, PurePosixPath
from statistics import median
from typing import Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from vidiff.data.common import DatasetError, check_buckets, item_rng, logger, resize_crop
from vidiff.data.videoio import (IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, ClipInfo, ProbeError,
                                 is_frame_folder, probe, read_frames)

CAPTION_FILES = ("captions.jsonl", "captions.csv")


def _key(text: str) -> str:
    """A caption file's name for a clip, normalised to a '/'-separated path relative to the root."""
    key = PurePosixPath(text.strip().replace("\\", "/")).as_posix()
    while key.startswith("./"):
        key = key[2:]
    return key.rstrip("/")


def find_clips(root: Path) -> list[Path]:
    """Video files and frame folders below ``root``, in sorted order (hidden names skipped)."""
    found: list[Path] = []

    def visit(folder: Path) -> None:
        for p in sorted(folder.iterdir()):
            if p.name.startswith("."):
                continue
            if p.is_dir():
                found.append(p) if is_frame_folder(p) else visit(p)
            elif p.suffix.lower() in VIDEO_EXTENSIONS:
                found.append(p)

    visit(root)
    return found


def read_captions(path: Path) -> dict[str, str]:
    """``{relative file: caption}`` from a ``.jsonl`` or ``.csv`` caption file."""
    captions: dict[str, str] = {}
    if path.suffix.lower() == ".jsonl":
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                captions[_key(entry["file"])] = str(entry["caption"])
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                raise DatasetError(f"{path}:{n}: expected a JSON object with 'file' and 'caption', "
                                   f"got {line[:80]!r}") from None
    elif path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            for n, row in enumerate(csv.reader(f), 1):
                if not row or (n == 1 and [c.strip().lower() for c in row] == ["file", "caption"]):
                    continue
                if len(row) != 2:
                    raise DatasetError(f"{path}:{n}: expected 2 columns (file,caption), got {row}")
                captions[_key(row[0])] = row[1]
    else:
        raise DatasetError(f"caption file {str(path)!r}: expected .jsonl or .csv")
    return captions


def clip_span(frames: int, stride: float) -> int:
    """Source frames a clip of ``frames`` frames at ``stride`` covers, first to last."""
    return int(math.floor((frames - 1) * stride + 0.5)) + 1


def choose_bucket(info: ClipInfo, stride: float, buckets) -> Optional[tuple[int, int, int]]:
    """The bucket for a clip: among those whose frame count it can supply, the closest aspect
    ratio, then the most frames, then the largest area; ``None`` if none fits."""
    fitting = [b for b in buckets if info.frames >= clip_span(b[0], stride)]
    if not fitting:
        return None
    aspect = math.log(info.width / info.height)
    return min(fitting, key=lambda b: (round(abs(math.log(b[2] / b[1]) - aspect), 6), -b[0], -b[1] * b[2]))


class VideoFolder(Dataset):
    """Clips from a folder of videos, decoded with PyAV (in DataLoader workers when used there).

    Args:
        root: the folder.
        frames: clip length ``T``.
        size: output side: the shorter side is resized to cover it, then cropped square.
        seed: item ``i`` depends only on ``(seed, i)`` (its start frame and random crop).
        length: number of items; default one per clip. A larger ``length`` cycles through the
            clips (item ``i`` reads clip ``i % n``), each item with its own start and crop.
        stride: take every ``stride``-th source frame.
        fps: instead of ``stride``, a target frame rate: each video's stride is its own frame
            rate divided by ``fps`` (fractional strides pick the nearest frames; a video slower
            than ``fps`` uses every frame). ``frame_stride`` in each item is the stride used.
        captions: a caption file (relative to the root or absolute); ``None`` looks for
            ``captions.jsonl`` then ``captions.csv`` in the root; ``"none"`` ignores them.
        crop: ``"center"`` or ``"random"``.
        buckets: optional ``[(frames, height, width), ...]``: each clip goes to the bucket of
            closest aspect ratio that it is long enough for (see :class:`BucketBatchSampler`).

    Attributes:
        skipped: ``[(path, reason)]`` of clips not used.
        fps: the frame rate of the clips produced (target ``fps``, or the median source rate
            divided by ``stride``).
    """

    def __init__(self, root: Union[str, Path], frames: int = 16, size: int = 32, seed: int = 0,
                 length: Optional[int] = None, stride: int = 1, fps: Optional[float] = None,
                 captions: Optional[str] = None, crop: str = "center", buckets=None):
        root = Path(root).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"video folder {str(root)!r} does not exist")
        if not root.is_dir():
            raise DatasetError(f"{str(root)!r} is not a folder; VideoFolder reads a folder of videos")
        if frames < 1 or size < 1:
            raise DatasetError(f"frames and size must be >= 1, got frames={frames}, size={size}")
        if int(stride) != stride or stride < 1:
            raise DatasetError(f"stride must be an integer >= 1, got {stride}")
        if fps is not None and not fps > 0:
            raise DatasetError(f"fps must be > 0, got {fps}")
        if fps is not None and stride != 1:
            raise DatasetError("set either stride or fps, not both (fps sets each video's stride)")
        if crop not in ("center", "random"):
            raise DatasetError(f"crop {crop!r} is not one of ['center', 'random']")
        if seed < 0 or (length is not None and length < 1):
            raise DatasetError(f"seed must be >= 0 and length >= 1, got seed={seed}, length={length}")
        self.root, self.frames, self.size, self.seed = root, int(frames), int(size), int(seed)
        self.stride, self.target_fps, self.crop = int(stride), fps, crop
        self.buckets = check_buckets(buckets)
        self.skipped: list[tuple[str, str]] = []
        self._failed: set[int] = set()

        infos = []
        for path in find_clips(root):
            try:
                infos.append(probe(path, path.relative_to(root).as_posix()))
            except ProbeError as e:
                self._skip(str(path), str(e))
        caption_map = self._read_caption_file(captions, {i.key for i in infos} | {k for k, _ in self._skipped_keys()})
        self.clips: list[ClipInfo] = []
        self.strides: list[float] = []
        self.shapes: list[tuple[int, int, int]] = []
        slow = 0
        for info in infos:
            stride = self.stride if fps is None else info.fps / fps
            if stride < 1:
                slow, stride = slow + 1, 1.0
            shape = choose_bucket(info, stride, self.buckets) if self.buckets else (self.frames, self.size, self.size)
            need = clip_span(min(b[0] for b in self.buckets) if self.buckets else self.frames, stride)
            if shape is None or info.frames < clip_span(shape[0], stride):
                self._skip(info.path, f"too short: {info.frames} frames, needs {need} "
                                      f"({'the shortest bucket' if self.buckets else f'{self.frames} frames'} "
                                      f"at stride {stride:g})")
                continue
            self.clips.append(info)
            self.strides.append(float(stride))
            self.shapes.append(shape)
        if slow:
            logger.warning("VideoFolder: %d video(s) have a frame rate below fps=%g; they use every "
                           "frame (frame_stride 1)", slow, fps)
        if not self.clips:
            reasons = "; ".join(f"{Path(p).name}: {r}" for p, r in self.skipped[:10])
            raise DatasetError(f"no readable videos in {str(root)!r} (looked for "
                               f"{', '.join(VIDEO_EXTENSIONS)} and sub-folders of "
                               f"{', '.join(IMAGE_EXTENSIONS)} frames)" + (f"; skipped: {reasons}" if reasons else ""))
        self.caption_list = [caption_map.get(info.key, "") for info in self.clips]
        uncaptioned = sum(1 for c in self.caption_list if not c)
        if caption_map and uncaptioned:
            logger.warning("VideoFolder: %d of %d clips have no caption (they train with an empty one)",
                           uncaptioned, len(self.clips))
        self.length = length
        rate = fps if fps is not None else median(i.fps for i in self.clips) / self.stride
        self.fps = float(rate)

    # ------------------------------------------------------------------ index
    def _skip(self, path: str, reason: str) -> None:
        logger.warning("VideoFolder: skipping %s: %s", path, reason)
        self.skipped.append((path, reason))

    def _skipped_keys(self):
        for path, reason in self.skipped:
            try:
                yield Path(path).relative_to(self.root).as_posix(), reason
            except ValueError:
                continue

    def _read_caption_file(self, captions: Optional[str], keys: set[str]) -> dict[str, str]:
        if captions is not None and captions.lower() == "none":
            return {}
        if captions is None:
            path = next((self.root / n for n in CAPTION_FILES if (self.root / n).is_file()), None)
            if path is None:
                return {}
        else:
            path = Path(captions).expanduser()
            path = path if path.is_absolute() else self.root / path
            if not path.is_file():
                raise FileNotFoundError(f"caption file {str(path)!r} does not exist")
        mapping = read_captions(path)
        missing = sorted(k for k in mapping if k not in keys)
        if missing:
            shown = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
            raise DatasetError(f"caption file {str(path)!r} names {len(missing)} video(s) that are not in "
                               f"{str(self.root)!r}: {shown}")
        return mapping

    # ------------------------------------------------------------------ items
    @property
    def infinite(self) -> bool:
        return False

    def __len__(self) -> int:
        return self.length if self.length is not None else len(self.clips)

    def item_shape(self, index: int) -> tuple[int, int, int]:
        """``(frames, height, width)`` of item ``index``."""
        return self.shapes[int(index) % len(self.clips)]

    def captions(self) -> list[str]:
        """The distinct non-empty captions, sorted."""
        return sorted({c for c in self.caption_list if c})

    def __getitem__(self, index) -> dict:
        if isinstance(index, torch.Tensor):
            index = index.item()
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for VideoFolder of length {len(self)}")
        rng = item_rng(self.seed, index)
        n = len(self.clips)
        for attempt in range(n):
            clip = (index + attempt) % n
            if clip in self._failed:
                continue
            try:
                return self._load(index, clip, rng)
            except ProbeError as e:
                # Per process: a worker that finds a bad file reports it and moves on.
                self._failed.add(clip)
                self._skip(self.clips[clip].path, f"failed while reading: {e}")
        raise DatasetError(f"no clip in {str(self.root)!r} could be decoded; see .skipped")

    def frame_indices(self, index: int, clip: Optional[int] = None,
                      rng: Optional[np.random.Generator] = None) -> list[int]:
        """The source frames item ``index`` reads (start drawn from the item's generator)."""
        clip = int(index) % len(self.clips) if clip is None else clip
        rng = item_rng(self.seed, index) if rng is None else rng
        T, stride = self.shapes[clip][0], self.strides[clip]
        # The last frame, floor(start + (T - 1) * stride + 0.5), must stay below the frame count.
        last_start = int(math.ceil(self.clips[clip].frames - 0.5 - (T - 1) * stride - 1e-9)) - 1
        start = int(rng.integers(0, last_start + 1))
        return [int(math.floor(start + k * stride + 0.5)) for k in range(T)]

    def _load(self, index: int, clip: int, rng: np.random.Generator) -> dict:
        info = self.clips[clip]
        T, H, W = self.shapes[clip]
        indices = self.frame_indices(index, clip, rng)
        frames = read_frames(info, indices)                               # (T, h, w, 3) uint8
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0  # (T, 3, h, w)
        x = resize_crop(x, H, W, self.crop, rng)                          # (T, 3, H, W)
        video = (x.permute(1, 0, 2, 3) * 2 - 1).clamp(-1, 1).contiguous()  # (3, T, H, W)
        return {"video": video, "caption": self.caption_list[clip], "frame_stride": self.strides[clip],
                "index": index, "path": info.key, "frame_indices": torch.tensor(indices)}

    def __repr__(self) -> str:
        return (f"VideoFolder({str(self.root)!r}, {len(self.clips)} clips, {len(self.skipped)} skipped, "
                f"frames={self.frames}, size={self.size})")
