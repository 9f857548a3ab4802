"""Probing and frame-accurate reading of video files and frame folders, with PyAV.

``probe(path)`` reads a clip's metadata once (frame count, frame rate, size) and checks that
its first frame decodes, raising :class:`ProbeError` with a short reason otherwise.
``read_frames(info, indices)`` decodes just the frames named by source-frame indices: files
are seeked to the keyframe before the first wanted frame and each decoded frame is placed by
its presentation timestamp, so a clip from the end of a long video does not decode it all.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Sequence

import av
import numpy as np
from PIL import Image

# IMAGE_EXTENSIONS: the frame files of a folder; DEFAULT_FPS: for a frame folder without
# fps.txt, or a stream that declares no rate
from vidiff.video import DEFAULT_FPS, IMAGE_EXTENSIONS, frame_to_rgb

VIDEO_EXTENSIONS = (".mp4", ".webm", ".gif", ".mov", ".mkv", ".avi", ".m4v")


class ProbeError(Exception):
    """A clip cannot be used; the message is the reason shown in ``skipped``."""


@dataclasses.dataclass
class ClipInfo:
    """Metadata of one clip found in a folder."""
    path: str                      # absolute path
    key: str                       # path relative to the dataset root, '/'-separated
    frames: int
    fps: float
    height: int
    width: int
    files: Optional[list] = None   # frame folders: the image files, in order

    @property
    def is_folder(self) -> bool:
        return self.files is not None


def is_frame_folder(path: Path) -> bool:
    return path.is_dir() and any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.iterdir())


def probe(path: Path, key: str) -> ClipInfo:
    """Metadata of a video file or frame folder; :class:`ProbeError` if it is not readable."""
    return _probe_folder(path, key) if path.is_dir() else _probe_file(path, key)


def _probe_folder(path: Path, key: str) -> ClipInfo:
    files = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ProbeError("folder holds no image frames")
    try:
        with Image.open(files[0]) as im:
            im.load()
            width, height = im.size
    except OSError as e:
        raise ProbeError(f"cannot read frame {Path(files[0]).name}: {e}") from None
    fps = DEFAULT_FPS
    fps_file = path / "fps.txt"
    if fps_file.is_file():
        try:
            fps = float(fps_file.read_text().strip())
        except ValueError:
            raise ProbeError(f"fps.txt does not hold a number: {fps_file.read_text()[:40]!r}") from None
        if not fps > 0:
            raise ProbeError(f"fps.txt holds {fps}, not a positive frame rate")
    return ClipInfo(str(path), key, len(files), fps, height, width, files)


def _probe_file(path: Path, key: str) -> ClipInfo:
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ProbeError("no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            fps = float(rate) if rate else DEFAULT_FPS
            count = int(stream.frames or 0)
            width, height = stream.codec_context.width, stream.codec_context.height
            if count <= 0:  # webm and gif often declare no count: count the packets instead
                count = sum(1 for packet in container.demux(stream) if packet.size)
                container.seek(0)
            first = next(iter(container.decode(stream)), None)
            if first is None:
                raise ProbeError("no decodable frames")
            width, height = width or first.width, height or first.height
    except ProbeError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, StopIteration) as e:
        raise ProbeError(f"cannot decode: {e}") from None
    if count <= 0 or not width or not height:
        raise ProbeError(f"no frames (count {count}, size {width}x{height})")
    return ClipInfo(str(path), key, count, fps, height, width)


def read_frames(info: ClipInfo, indices: Sequence[int]) -> np.ndarray:
    """``uint8 (len(indices), H, W, 3)``: the source frames ``indices`` (ascending, repeats
    allowed). Raises :class:`ProbeError` if a wanted frame cannot be decoded."""
    wanted = sorted(set(int(i) for i in indices))
    if info.is_folder:
        got = {i: _read_image(info.files[i]) for i in wanted}
    else:
        got = _decode(info, wanted)
    missing = [i for i in wanted if i not in got]
    if missing:
        raise ProbeError(f"frames {missing[:5]}{'...' if len(missing) > 5 else ''} could not be "
                         f"decoded (the file holds fewer frames than its header says?)")
    if len({got[i].shape for i in wanted}) > 1:
        raise ProbeError(f"frames differ in size: {sorted({got[i].shape for i in wanted})}")
    return np.stack([got[int(i)] for i in indices])


def _read_image(file: str) -> np.ndarray:
    try:
        with Image.open(file) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as e:
        raise ProbeError(f"cannot read frame {Path(file).name}: {e}") from None


def _decode(info: ClipInfo, wanted: list[int]) -> dict[int, np.ndarray]:
    first, last = wanted[0], wanted[-1]
    want = set(wanted)
    try:
        with av.open(info.path) as container:
            stream = container.streams.video[0]
            seekable = first > 0 and stream.time_base is not None and not info.path.lower().endswith(".gif")
            if seekable:
                got = _decode_seeking(container, stream, info.fps, first, last, want)
                if got is not None:
                    return got
                container.seek(0)
            got = {}
            for k, frame in enumerate(container.decode(stream)):  # sequential: count frames
                if k in want:
                    got[k] = frame_to_rgb(frame)
                if k >= last:
                    break
            return got
    except av.error.FFmpegError as e:
        raise ProbeError(f"cannot decode: {e}") from None


def _decode_seeking(container, stream, fps: float, first: int, last: int, want: set) -> Optional[dict]:
    """Seek near ``first`` and place frames by timestamp; ``None`` if timestamps are unusable
    (missing, or the seek landed after ``first``), in which case the caller decodes from 0."""
    time_base = float(stream.time_base)
    origin = stream.start_time or 0
    target = origin + int(first / fps / time_base)
    container.seek(max(origin, target - 1), stream=stream, backward=True, any_frame=False)
    got: dict[int, np.ndarray] = {}
    checked = False
    for frame in container.decode(stream):
        if frame.pts is None:
            return None
        index = int(np.floor((frame.pts - origin) * time_base * fps + 0.5))
        if not checked:
            if index > first:
                return None
            checked = True
        if index in want:
            got[index] = frame_to_rgb(frame)
        if index >= last:
            break
    return got
