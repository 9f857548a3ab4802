"""``Video``: the boundary type for clips going in and out of vidiff.

Inside the library a clip is a float tensor ``(C, T, H, W)`` in ``[-1, 1]``; at the boundary it
is a :class:`Video` of ``uint8 (T, H, W, 3)`` frames and a frame rate, read and written with
PyAV (H.264 mp4, VP9 webm, any format FFmpeg decodes) and Pillow (GIF, PNG frames).
Every write goes to a temporary name first and is renamed into place, so an interrupted save
never leaves a truncated file where a complete one is expected.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

VIDEO_EXTENSIONS = (".mp4", ".webm", ".gif")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
_FRAME_PATTERN = "frame_{:05d}.png"


class Video:
    """A clip of RGB frames.

    Attributes:
        frames: ``uint8`` array ``(T, H, W, 3)``.
        fps: frames per second (float > 0).
    """

    def __init__(self, frames: np.ndarray, fps: float = 8.0):
        frames = np.asarray(frames)
        if frames.dtype != np.uint8:
            raise ValueError(f"Video frames must be uint8, got {frames.dtype}; "
                             "use Video.from_tensor for float data in [-1, 1]")
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
            raise ValueError(f"Video frames must have shape (T >= 1, H, W, 3), got {frames.shape}")
        if not (isinstance(fps, (int, float, Fraction)) and fps > 0):
            raise ValueError(f"fps must be a number > 0, got {fps!r}")
        self.frames, self.fps = np.ascontiguousarray(frames), float(fps)

    # ------------------------------------------------------------------ shape
    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]

    @property
    def height(self) -> int:
        return self.frames.shape[1]

    @property
    def width(self) -> int:
        return self.frames.shape[2]

    def __len__(self) -> int:
        return self.num_frames

    def __repr__(self) -> str:
        return f"Video({self.num_frames} frames, {self.width}x{self.height}, {self.fps:g} fps)"

    # ------------------------------------------------------------------ tensors
    def to_tensor(self) -> torch.Tensor:
        """``(3, T, H, W)`` float32 in ``[-1, 1]`` (``pixel / 127.5 - 1``)."""
        x = torch.from_numpy(self.frames).permute(3, 0, 1, 2).float()
        return x / 127.5 - 1.0

    @classmethod
    def from_tensor(cls, x: torch.Tensor, fps: float = 8.0) -> "Video":
        """From ``(3, T, H, W)`` (or a batch of one ``(1, 3, T, H, W)``) float in ``[-1, 1]``;
        values are clamped and rounded to the nearest 8-bit level."""
        if x.ndim == 5 and x.shape[0] == 1:
            x = x[0]
        if x.ndim != 4 or x.shape[0] != 3:
            raise ValueError(f"expected a (3, T, H, W) tensor, got shape {tuple(x.shape)}")
        pixels = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return cls(pixels.permute(1, 2, 3, 0).numpy(), fps)

    @staticmethod
    def grid(videos: Sequence["Video"], cols: int = 4, gutter: int = 2) -> "Video":
        """Tile same-size videos into one, row-major, with a black ``gutter`` in pixels.
        Shorter clips hold their last frame."""
        if not videos:
            raise ValueError("Video.grid needs at least one video")
        h, w = videos[0].height, videos[0].width
        if any((v.height, v.width) != (h, w) for v in videos):
            raise ValueError("Video.grid needs videos of one size, got "
                             f"{sorted({(v.height, v.width) for v in videos})}")
        cols = max(1, min(cols, len(videos)))
        rows = -(-len(videos) // cols)
        T = max(v.num_frames for v in videos)
        canvas = np.zeros((T, rows * h + (rows - 1) * gutter, cols * w + (cols - 1) * gutter, 3), np.uint8)
        for i, v in enumerate(videos):
            r, c = divmod(i, cols)
            frames = v.frames[np.minimum(np.arange(T), v.num_frames - 1)]
            canvas[:, r * (h + gutter):r * (h + gutter) + h, c * (w + gutter):c * (w + gutter) + w] = frames
        return Video(canvas, videos[0].fps)

    # ------------------------------------------------------------------ writing
    def save(self, path: Union[str, Path], quality: int = 12) -> Path:
        """Write to ``path``; the extension picks the container.

        ``.mp4``: H.264, yuv420p (yuv444p when a side is odd, which 4:2:0 cannot hold);
        ``.webm``: VP9 yuv420p; ``.gif``: an adaptive palette per frame; a path with no
        extension (or ending in ``/``): a folder of ``frame_00000.png``… plus ``fps.txt``.
        ``quality`` is the codecs' constant rate factor (lower is better; 0 is lossless H.264).
        """
        path = Path(path)
        ext = path.suffix.lower()
        if str(path).endswith(("/", os.sep)) or ext == "":
            return self._save_png_folder(path)
        if ext not in VIDEO_EXTENSIONS:
            raise ValueError(f"cannot write {str(path)!r}: unknown extension {ext!r}; accepted: "
                             f"{', '.join(VIDEO_EXTENSIONS)} or a folder path (PNG frames)")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.stem}-", suffix=ext, dir=path.parent)
        os.close(fd)
        try:
            if ext == ".gif":
                self._write_gif(tmp)
            else:
                self._write_av(tmp, ext, quality)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path

    def _write_av(self, path: str, ext: str, quality: int) -> None:
        import av

        odd = self.height % 2 or self.width % 2
        codec, options = ("libx264", {"crf": str(quality), "preset": "medium"}) if ext == ".mp4" else \
            ("libvpx-vp9", {"crf": str(quality + 10), "b": "0", "row-mt": "1"})
        pix_fmt = "yuv444p" if (odd and ext == ".mp4") else "yuv420p"
        with av.open(path, "w", format="mp4" if ext == ".mp4" else "webm") as container:
            stream = container.add_stream(codec, rate=Fraction(self.fps).limit_denominator(1001),
                                          options=options)
            stream.width, stream.height, stream.pix_fmt = self.width, self.height, pix_fmt
            for frame in self.frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)

    def _write_gif(self, path: str) -> None:
        from PIL import Image

        images = [Image.fromarray(f).quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=0)
                  for f in self.frames]
        duration = max(20, round(1000 / self.fps / 10) * 10)  # GIF delays are in 10 ms units
        images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=duration,
                       loop=0, disposal=1, optimize=False)

    def _save_png_folder(self, path: Path) -> Path:
        from PIL import Image

        path = Path(str(path).rstrip("/" + os.sep))
        if path.exists() and (not path.is_dir() or any(
                not (p.name.startswith("frame_") and p.suffix == ".png") and p.name != "fps.txt"
                for p in path.iterdir())):
            raise ValueError(f"refusing to replace {str(path)!r}: it is not a folder of vidiff frames")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
        try:
            for i, frame in enumerate(self.frames):
                Image.fromarray(frame).save(tmp / _FRAME_PATTERN.format(i), format="PNG")
            (tmp / "fps.txt").write_text(f"{self.fps!r}\n")
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    # ------------------------------------------------------------------ reading
    @classmethod
    def load(cls, path: Union[str, Path], max_frames: Optional[int] = None) -> "Video":
        """Read a video file (anything PyAV decodes) or a folder of image frames (sorted by name).

        The frame rate comes from the stream (8 if it declares none) or, for a folder, from
        its ``fps.txt`` (8 if absent). ``max_frames`` stops decoding early.
        """
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"video {str(path)!r} does not exist")
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        if path.is_dir():
            return cls._load_folder(path, max_frames)
        import av

        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    raise ValueError(f"{str(path)!r} has no video stream")
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate
                frames = []
                for frame in container.decode(stream):
                    frames.append(frame.to_ndarray(format="rgb24"))
                    if max_frames is not None and len(frames) >= max_frames:
                        break
        except av.error.FFmpegError as e:
            raise ValueError(f"cannot read video {str(path)!r}: {e}") from None
        if not frames:
            raise ValueError(f"video {str(path)!r} has no frames")
        return cls(np.stack(frames), float(rate) if rate else 8.0)

    @classmethod
    def _load_folder(cls, path: Path, max_frames: Optional[int]) -> "Video":
        from PIL import Image

        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise ValueError(f"folder {str(path)!r} has no image frames ({', '.join(IMAGE_EXTENSIONS)})")
        files = files[:max_frames] if max_frames else files
        frames = []
        for f in files:
            try:
                with Image.open(f) as im:
                    frames.append(np.asarray(im.convert("RGB")))
            except OSError as e:
                raise ValueError(f"cannot read frame {str(f)!r}: {e}") from None
        if len({fr.shape for fr in frames}) > 1:
            raise ValueError(f"frames in {str(path)!r} differ in size: {sorted({fr.shape for fr in frames})}")
        fps_file = path / "fps.txt"
        fps = float(fps_file.read_text().strip()) if fps_file.is_file() else 8.0
        return cls(np.stack(frames), fps)
