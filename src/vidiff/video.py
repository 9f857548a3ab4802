"""``Video``: the boundary type for clips going in and out of vidiff.

Inside the library a clip is a float tensor ``(C=3, T, H, W)`` in ``[-1, 1]``; at the boundary it
is a :class:`Video`: ``uint8 (T, H, W, 3)`` RGB frames plus a frame rate. All reading and writing
goes through PyAV: H.264 ``.mp4``, VP9 ``.webm``, ``.gif`` and folders of PNG frames out; anything
FFmpeg decodes (and folders of PNG/JPEG frames) in. A clip also goes to and from ``bytes`` and
binary file objects (for serving over HTTP). Saves to a path are atomic
(:func:`vidiff.checkpoint.write_file_atomic` / :func:`~vidiff.checkpoint.write_atomic_dir`): a
failed or interrupted save never leaves a truncated file where a complete one is expected.
"""
from __future__ import annotations

import io
import math
import numbers
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Iterator, Optional, Sequence, Union

import av
import numpy as np
import torch
from av.video.reformatter import Interpolation

from vidiff.checkpoint import write_atomic_dir, write_file_atomic

FORMATS = ("mp4", "webm", "gif")  # one-file formats: a path's extension, or format= for bytes
SAVE_EXTENSIONS = tuple(f".{name}" for name in FORMATS)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")  # frame folders (also vidiff.data)
DEFAULT_FPS = 8.0  # vidiff's one default frame rate: new clips, datasets, files that declare none
CRF = {"libx264": 15, "libvpx-vp9": 20, "libvpx": 4}  # constant-quality factors: lower is better
_CODECS = {".mp4": ("libx264",), ".webm": ("libvpx-vp9", "libvpx")}  # first available wins
_FRAME_NAME = "frame_{:05d}.png"
_SIZE_TAG = re.compile(r"vidiff:size=(\d+)x(\d+)")  # true W x H of an mp4 padded to even size
_READABLE = ("a video file FFmpeg decodes (mp4, webm, gif, mov, mkv, avi, ...) given as a path, "
             "bytes or a readable binary file object, or a folder of image frames")
PathLike = Union[str, os.PathLike]
# RGB <-> YUV 4:2:0 conversions: area filter and full chroma interpolation (swscale's default
# takes the nearest chroma sample: about 5x the error on smooth gradients)
_SWS = (Interpolation.AREA | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
        | Interpolation.FULL_CHR_H_INP)


def frame_to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """One decoded PyAV frame as ``uint8 (H, W, 3)`` RGB, read in the colour range it is tagged
    with and converted with :data:`_SWS`: the one conversion every reader in vidiff uses, so a
    clip decodes to the same pixels for training as for :meth:`Video.load`."""
    return frame.to_ndarray(format="rgb24", interpolation=_SWS, src_color_range=frame.color_range or None)


def _to_av_frame(rgb: np.ndarray) -> av.VideoFrame:
    """One ``uint8 (H, W, 3)`` RGB array as a PyAV frame (a function so tests can break it)."""
    return av.VideoFrame.from_ndarray(rgb, format="rgb24")


def to_levels(x: torch.Tensor) -> torch.Tensor:
    """Float pixels in ``[-1, 1]`` (any shape) as uint8 levels: clamped, then rounded to the
    nearest of 256 levels, ``round((x + 1) * 127.5)``. The inverse of :func:`from_levels` on
    its values."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_levels(x: torch.Tensor) -> torch.Tensor:
    """uint8 levels (any shape) as float32 pixels in ``[-1, 1]``: ``level / 127.5 - 1``."""
    return x.float() / 127.5 - 1.0


@dataclass(eq=False, repr=False)
class Video:
    """A clip of RGB frames.

    Attributes:
        frames: ``uint8`` array ``(T, H, W, 3)``: T frames of H rows by W columns, RGB order.
        fps: frames per second (a finite number > 0; default 8).
    """

    frames: np.ndarray
    fps: float = DEFAULT_FPS

    def __post_init__(self):
        frames = self.frames
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
            kind = frames.dtype if isinstance(frames, np.ndarray) else type(frames).__name__
            raise ValueError(f"Video frames must be a uint8 numpy array, got {kind}; "
                             "use Video.from_tensor for float data in [-1, 1]")
        if frames.ndim != 4 or frames.shape[-1] != 3 or 0 in frames.shape:
            raise ValueError(f"Video frames must have shape (T, H, W, 3) with T, H, W >= 1, "
                             f"got {frames.shape}")
        if not (isinstance(self.fps, numbers.Real) and math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"Video fps must be a finite number > 0, got {self.fps!r}")
        self.frames, self.fps = np.ascontiguousarray(frames), float(self.fps)

    # ------------------------------------------------------------------ shape
    num_frames = property(lambda self: self.frames.shape[0], doc="T: the number of frames.")
    height = property(lambda self: self.frames.shape[1], doc="H: frame height in pixels.")
    width = property(lambda self: self.frames.shape[2], doc="W: frame width in pixels.")

    def __len__(self) -> int:
        return self.num_frames

    def __repr__(self) -> str:
        return f"Video({self.num_frames} frames, {self.width}x{self.height}, {self.fps:g} fps)"

    # ------------------------------------------------------------------ tensors
    def to_tensor(self) -> torch.Tensor:
        """The library layout: float32 ``(3, T, H, W)`` in ``[-1, 1]``, ``pixel / 127.5 - 1``."""
        return from_levels(torch.from_numpy(self.frames).permute(3, 0, 1, 2))

    @classmethod
    def from_tensor(cls, x: torch.Tensor, fps: float = DEFAULT_FPS) -> "Video":
        """From a float tensor ``(3, T, H, W)`` (or a batch of one, ``(1, 3, T, H, W)``) in
        ``[-1, 1]``: values are clamped to the range and rounded to the nearest 8-bit level, so
        ``Video.from_tensor(v.to_tensor())`` gives back ``v``'s frames exactly."""
        x = torch.as_tensor(x)
        if x.ndim == 5 and x.shape[0] == 1:
            x = x[0]
        if x.ndim != 4 or x.shape[0] != 3:
            raise ValueError(f"Video.from_tensor expects (3, T, H, W) or (1, 3, T, H, W), "
                             f"got shape {tuple(x.shape)}")
        x = x.detach().float().cpu()
        if torch.isnan(x).any():
            raise ValueError("Video.from_tensor got a tensor containing NaN")
        pixels = to_levels(x)
        return cls(pixels.permute(1, 2, 3, 0).contiguous().numpy(), fps)

    @staticmethod
    def grid(videos: Sequence["Video"], cols: int = 4, gutter: int = 2) -> "Video":
        """Tile same-size videos row-major into one, ``cols`` per row, separated by a black
        ``gutter`` (pixels). Clips shorter than the longest hold their last frame; the result
        takes the first video's fps. Empty cells of the last row stay black."""
        if not videos:
            raise ValueError("Video.grid needs at least one video")
        h, w = videos[0].height, videos[0].width
        sizes = sorted({(v.height, v.width) for v in videos})
        if len(sizes) > 1:
            raise ValueError(f"Video.grid needs videos of one size (H, W), got {sizes}")
        cols = max(1, min(int(cols), len(videos)))
        rows = -(-len(videos) // cols)
        T = max(v.num_frames for v in videos)
        out = np.zeros((T, rows * (h + gutter) - gutter, cols * (w + gutter) - gutter, 3), np.uint8)
        for i, v in enumerate(videos):
            top, left = (i // cols) * (h + gutter), (i % cols) * (w + gutter)
            out[:, top:top + h, left:left + w] = v.frames[np.minimum(np.arange(T), v.num_frames - 1)]
        return Video(out, videos[0].fps)

    # ------------------------------------------------------------------ writing
    def save(self, target: Union[PathLike, BinaryIO], format: Optional[str] = None,
             crf: Optional[int] = None) -> Union[Path, BinaryIO]:
        """Write the clip to a path or a writable binary file object; returns ``target`` (a path
        as a :class:`~pathlib.Path`).

        A path's extension picks the format (``format``, if given, must agree with it):

        * ``.mp4``: H.264 (libx264, yuv420p, BT.709, crf 15), index first (faststart), on one
          encoder thread (threaded x264 gave visibly different encodes of one clip on a loaded
          machine). 4:2:0
          needs even sides, so an odd height/width is padded by repeating the last row/column;
          the true size is stored in the file's comment tag and :meth:`load` crops back to it
          (other players show the pad).
        * ``.webm``: VP9 (libvpx-vp9, yuv420p, crf 20), or VP8 where this PyAV lacks VP9.
        * ``.gif``: one 256-colour palette per frame (FFmpeg palettegen/paletteuse, ordered
          dithering); the frame delay is ``1/fps`` rounded to GIF's 10 ms steps (at least 20 ms).
        * no extension, or a trailing ``/``: a folder of ``frame_00000.png``, ... (lossless) and
          ``fps.txt``. An existing folder is replaced only if it holds nothing but such files.

        A file object (a socket, an HTTP response, ``io.BytesIO``; it need not be seekable)
        needs ``format``: ``"mp4"``, ``"webm"`` or ``"gif"``; the file is encoded in memory and
        written to it in one piece, so a failed encoding writes nothing.

        ``crf`` overrides the codec's constant-quality factor (lower is better; 0 is lossless
        for H.264 up to the colour conversion).
        """
        if isinstance(target, (str, os.PathLike)):
            return self._save_path(os.fspath(target), format, crf)
        ext = _extension_of(format, "Video.save to a file object")
        if not _is_binary_file(target, "write"):
            raise ValueError(f"cannot save to a {type(target).__name__}: expected a path (str or "
                             "os.PathLike) or a writable binary file object")
        target.write(self._encode(ext, crf).getbuffer())
        return target

    def to_bytes(self, format: str = "mp4", crf: Optional[int] = None) -> bytes:
        """The clip encoded as one ``"mp4"``, ``"webm"`` or ``"gif"`` file, in memory, as
        :meth:`save` encodes it to a path with that extension (see there for ``crf``)."""
        return self._encode(_extension_of(format, "Video.to_bytes"), crf).getvalue()

    def _save_path(self, text: str, format: Optional[str], crf: Optional[int]) -> Path:
        path = Path(text)
        folder = text.endswith(("/", os.sep)) or path.suffix == ""
        ext = path.suffix.lower()
        if format is not None and (folder or f".{str(format).lower()}" != ext):
            raise ValueError(f"format={format!r} does not match {text!r}: a path's extension "
                             "picks the format (format= is for file objects)")
        if folder:
            return self._save_png_folder(path)
        if ext not in SAVE_EXTENSIONS:
            raise ValueError(f"cannot save {text!r}: unknown extension {ext!r}; accepted: "
                             f"{', '.join(SAVE_EXTENSIONS)}, or a folder path (no extension) for PNGs")
        return write_file_atomic(path, lambda tmp: self._write(str(tmp), ext, crf))

    def _encode(self, ext: str, crf: Optional[int]) -> io.BytesIO:
        buffer = io.BytesIO()  # seekable, as muxers go back to fill in indexes and durations
        self._write(buffer, ext, crf)
        return buffer

    def _write(self, target: Union[str, io.BytesIO], ext: str, crf: Optional[int]) -> None:
        """Encode to a file name or an in-memory buffer; ``ext`` is one of SAVE_EXTENSIONS."""
        if ext == ".gif":
            self._write_gif(target)
        else:
            self._write_video(target, ext, crf)

    def _write_video(self, target: Union[str, io.BytesIO], ext: str, crf: Optional[int]) -> None:
        codec = next((c for c in _CODECS[ext] if c in av.codecs_available), None)
        if codec is None:
            raise ValueError(f"cannot write {ext}: this PyAV build has none of {_CODECS[ext]}")
        crf = CRF[codec] if crf is None else int(crf)
        # chroma sited at the centre of each 2x2 block, as swscale subsamples it (H.264 decoders
        # otherwise assume left siting and shift chroma by half a pixel)
        options = {"crf": str(crf), "chroma_sample_location": "center",
                   # threaded x264 was seen to encode the same clip to different frames on a
                   # loaded machine; on one thread a quiet machine repeats an encode exactly
                   **{"libx264": {"preset": "medium", "threads": "1"},
                      "libvpx-vp9": {"b": "0", "row-mt": "1", "cpu-used": "2"},
                      "libvpx": {"b": "20M"}}[codec]}  # VP8's crf needs a bitrate cap
        frames, h, w = self.frames, self.height, self.width
        if codec == "libx264" and (h % 2 or w % 2):
            frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        rate = Fraction(self.fps).limit_denominator(1001)
        with _open_output(target, ext) as out:
            out.metadata["comment"] = f"vidiff:size={w}x{h}"
            stream = out.add_stream(codec, rate=rate, options=options)
            stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            stream.time_base = 1 / rate
            # BT.709 (VP8 can only signal BT.601), limited range, tagged so that players agree
            space, tag = ("ITU601", 5) if codec == "libvpx" else ("ITU709", 1)
            cc = stream.codec_context  # AVCOL_* codes: 1 = BT.709, 5 = BT.470BG (a BT.601)
            cc.colorspace = cc.color_primaries = tag
            cc.color_trc = cc.color_range = 1  # BT.709 transfer (BT.601's is the same); MPEG range
            for i, rgb in enumerate(frames):
                frame = _to_av_frame(rgb).reformat(format="yuv420p", dst_colorspace=space,
                                                   dst_color_range="MPEG", interpolation=_SWS)
                frame.pts = i
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))

    def _write_gif(self, target: Union[str, io.BytesIO]) -> None:
        delay = max(2, round(100 / self.fps))  # centiseconds; browsers treat < 2 as 10
        with _open_output(target, ".gif") as out:
            stream = out.add_stream("gif", rate=Fraction(100, delay))
            stream.width, stream.height, stream.pix_fmt = self.width, self.height, "pal8"
            stream.time_base = Fraction(1, 100)
            for i, frame in enumerate(self._palettized()):
                frame.pts, frame.time_base = i * delay, Fraction(1, 100)
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))

    def _palettized(self) -> Iterator[av.VideoFrame]:
        """The frames as ``pal8``, each with its own 256-colour palette (FFmpeg filters)."""
        graph = av.filter.Graph()
        src = graph.add_buffer(width=self.width, height=self.height, format="rgb24",
                               time_base=Fraction(1, 100))
        split, sink = graph.add("split"), graph.add("buffersink")
        gen = graph.add("palettegen", "stats_mode=single:reserve_transparent=0")
        use = graph.add("paletteuse", "dither=bayer:bayer_scale=3:new=1")
        src.link_to(split)
        split.link_to(use, 0, 0)
        split.link_to(gen, 1, 0)
        gen.link_to(use, 0, 1)
        use.link_to(sink)
        graph.configure()
        for i, rgb in enumerate([*self.frames, None]):
            frame = None if rgb is None else _to_av_frame(rgb)
            if frame is not None:
                frame.pts, frame.time_base = i, Fraction(1, 100)
            graph.push(frame)
            while True:
                try:
                    yield graph.pull()
                except (av.error.BlockingIOError, av.error.EOFError):
                    break

    def _save_png_folder(self, path: Path) -> Path:
        if path.exists() and not (path.is_dir() and all(
                (p.name.startswith("frame_") and p.suffix == ".png") or p.name == "fps.txt"
                for p in path.iterdir())):
            raise ValueError(f"refusing to replace {str(path)!r}: only a folder holding nothing but "
                             "frame_*.png (and fps.txt) files is replaced")

        def fill(folder: Path) -> None:
            encoder = av.CodecContext.create("png", "w")
            encoder.width, encoder.height, encoder.pix_fmt = self.width, self.height, "rgb24"
            for i, rgb in enumerate(self.frames):
                data = b"".join(bytes(p) for p in encoder.encode(_to_av_frame(rgb)))
                (folder / _FRAME_NAME.format(i)).write_bytes(data)
            (folder / "fps.txt").write_text(f"{self.fps!r}\n")
        return write_atomic_dir(path, fill)

    # ------------------------------------------------------------------ reading
    @classmethod
    def load(cls, source: Union[PathLike, bytes, bytearray, memoryview, BinaryIO],
             max_frames: Optional[int] = None) -> "Video":
        """Read a clip as RGB ``uint8`` from a path, from ``bytes`` (``bytearray``,
        ``memoryview``), or from a readable binary file object (one that cannot seek is read
        into memory first). A path names a video file or a folder of image frames (PNG, JPEG,
        BMP, WebP, in name order); a video is anything PyAV decodes (mp4, webm, gif, mov, avi,
        ...). Only the first video stream is read; ``max_frames`` stops decoding after that
        many frames.

        fps comes from the stream's average (else guessed) rate, 8 if it has neither; for a
        folder from its ``fps.txt`` (written by :meth:`save`), else 8.
        """
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be >= 1 or None, got {max_frames!r}")
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            name = repr(str(path))
            if not path.exists():
                raise FileNotFoundError(f"no video at {name}")
            if path.is_dir():
                frames, fps = _read_folder(path, max_frames)
            else:
                frames, fps = _decode(str(path), name, max_frames)
        else:
            if isinstance(source, (bytes, bytearray, memoryview)):
                name, source = f"<{memoryview(source).nbytes} bytes>", io.BytesIO(source)
            elif _is_binary_file(source, "read"):
                name, seekable = _file_name(source), getattr(source, "seekable", None)
                if not (callable(seekable) and seekable()):  # FFmpeg seeks, e.g. to an mp4's index
                    source = io.BytesIO(source.read())
            else:
                raise ValueError(f"cannot load a {type(source).__name__}: expected {_READABLE}")
            frames, fps = _decode(source, name, max_frames)
        shapes = sorted({f.shape for f in frames})
        if len(shapes) > 1:
            raise ValueError(f"frames of {name} differ in size: {shapes}")
        return cls(np.stack(frames), fps)


def _extension_of(format: Optional[str], what: str) -> str:
    """``".mp4"`` for ``format="mp4"`` (any case); ValueError naming the accepted formats."""
    name = format.lower() if isinstance(format, str) else format
    if name not in FORMATS:
        hint = " (a folder of PNG frames needs a path)" if name == "png" else ""
        raise ValueError(f"{what} needs format= one of {', '.join(map(repr, FORMATS))}, "
                         f"got {format!r}{hint}")
    return f".{name}"


def _is_binary_file(obj, method: str) -> bool:
    """Whether ``obj`` has a ``read``/``write`` method (``method``) for bytes: not a text
    stream, and not one that says it cannot (``readable()`` / ``writable()`` false)."""
    able = getattr(obj, {"read": "readable", "write": "writable"}[method], None)
    return (callable(getattr(obj, method, None)) and not isinstance(obj, io.TextIOBase)
            and not (callable(able) and not able()))


def _file_name(obj) -> str:
    """A file object as error messages name it: its path if it has one, else its type."""
    name = getattr(obj, "name", None)
    return f"file object {name!r}" if isinstance(name, str) else f"a {type(obj).__name__}"


def _open_output(target: Union[str, io.BytesIO], ext: str) -> av.container.OutputContainer:
    """A PyAV container writing format ``ext`` to a file name or an in-memory buffer."""
    if ext != ".mp4":
        return av.open(target, "w", format=ext[1:])

    def reopen(url, flags, options):
        # faststart moves the index to the front in a second pass that reopens the output for
        # reading; a buffer has no name to reopen, so FFmpeg reads a copy of what it wrote
        return io.BytesIO(target.getvalue())

    faststart = {"movflags": "+faststart"}  # the index first, so that playback can start early
    return av.open(target, "w", format="mp4", options=faststart,
                   io_open=reopen if isinstance(target, io.BytesIO) else None)


def _read_folder(path: Path, max_frames: Optional[int]) -> tuple[list, float]:
    """The image frames of folder ``path`` in name order (at most ``max_frames``) and its fps."""
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"folder {str(path)!r} has no image frames ({', '.join(IMAGE_EXTENSIONS)})")
    frames = [_decode(str(f), repr(str(f)), 1)[0][0] for f in files[:max_frames]]
    fps_file = path / "fps.txt"
    try:
        fps = float(fps_file.read_text().strip()) if fps_file.is_file() else DEFAULT_FPS
    except ValueError:
        raise ValueError(f"{str(fps_file)!r} does not hold a frame rate") from None
    return frames, fps


def _decode(source: Union[str, BinaryIO], name: str, max_frames: Optional[int]) -> tuple[list, float]:
    """Decoded RGB frames (at most ``max_frames``) of the first video stream of ``source`` (a
    file name or a seekable binary file object; ``name`` says which in errors), and its fps."""
    frames = []
    try:
        with av.open(source) as container:
            if not container.streams.video:
                raise ValueError(f"{name} has no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            tags = {k.lower(): v for k, v in container.metadata.items()}
            size = _SIZE_TAG.fullmatch(tags.get("comment", ""))
            for frame in container.decode(stream):
                frames.append(frame_to_rgb(frame))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except (av.error.FFmpegError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {name} as video ({e}); accepted: {_READABLE}") from None
    if not frames:
        raise ValueError(f"{name} has a video stream but no decodable frames")
    if size:  # an mp4 that save() padded to even sides: crop back to the stored size
        w, h = int(size[1]), int(size[2])
        frames = [f[:h, :w] for f in frames]
    return frames, float(rate) if rate else DEFAULT_FPS
