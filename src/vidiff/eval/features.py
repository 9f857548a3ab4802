"""Video feature extractors for distribution metrics, and the clips they read.

A :class:`FeatureExtractor` turns ``uint8`` clips ``(B, T, H, W, 3)`` into ``(B, D)`` features.
vidiff prepares the input itself, always the same way: the first ``frames`` frames of each
clip (16 by default), each frame resized to ``size x size`` (bilinear, no antialiasing, which
is what a trilinear resize that keeps ``T`` does), values scaled from ``[0, 255]`` to
``[-1, 1]``, layout ``(B, 3, T, size, size)`` float32.

**The I3D call convention.** The widely used TorchScript export of I3D for FVD
(``i3d_torchscript.pt``) has the signature ``forward(x, rescale, resize, return_features)``:
with ``rescale=True`` it maps ``[0, 255]`` to ``[-1, 1]`` itself and with ``resize=True`` it
resizes to 224 itself. Since vidiff has already done both, it calls
``model(x, rescale=False, resize=False, return_features=True)`` so that each happens exactly
once, and reads the returned ``(B, 400)`` features. Any other TorchScript module (a forward
without those keywords) is called as ``model(x)`` on the same input and must return
``(B, D)``. Nothing is downloaded: the file is given by path.

Clips come from a folder (every video file and frame folder below it, sorted by path; see
:func:`vidiff.data.folder.find_clips`) or from a built-in dataset (``shapes``, ``digits``,
``photopan``; items ``0 .. count - 1`` with ``seed``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F

from vidiff.data import BUILTIN, build_dataset
from vidiff.data.folder import find_clips
from vidiff.data.videoio import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from vidiff.eval.shapes_features import INPUT_SIZE, load_shapes_features
from vidiff.video import Video

I3D_KEYWORDS = ("rescale", "resize", "return_features")
I3D_SIZE = 224
DEFAULT_FRAMES = 16


# ----------------------------------------------------------------------------- extractors
def accepts_i3d_keywords(module) -> bool:
    """Whether a TorchScript module's ``forward`` takes ``rescale``, ``resize`` and ``return_features``."""
    try:
        names = {a.name for a in module.forward.schema.arguments}
    except (AttributeError, RuntimeError):
        return False
    return all(k in names for k in I3D_KEYWORDS)


def preprocess(clips: np.ndarray, frames: int, size: int) -> torch.Tensor:
    """``uint8 (B, T', H, W, 3)`` with ``T' >= frames`` -> float32 ``(B, 3, frames, size, size)``
    in ``[-1, 1]``: the first ``frames`` frames, bilinear resize (no antialiasing), ``p / 127.5 - 1``."""
    if clips.ndim != 5 or clips.shape[-1] != 3 or clips.dtype != np.uint8:
        raise ValueError(f"expected uint8 clips (B, T, H, W, 3), got {clips.dtype} {clips.shape}")
    if clips.shape[1] < frames:
        raise ValueError(f"clips have {clips.shape[1]} frames, the protocol needs at least {frames}")
    B, _, H, W, _ = clips.shape
    x = torch.from_numpy(np.ascontiguousarray(clips[:, :frames])).float()   # (B, T, H, W, 3)
    x = x.reshape(B * frames, H, W, 3).permute(0, 3, 1, 2)                  # (B*T, 3, H, W)
    if (H, W) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    x = x / 127.5 - 1.0
    return x.reshape(B, frames, 3, size, size).permute(0, 2, 1, 3, 4).contiguous()  # (B, 3, T, S, S)


@dataclass
class FeatureExtractor:
    """A network mapping prepared clips to features, with its input protocol.

    Attributes:
        module: called on ``(B, 3, frames, size, size)`` in ``[-1, 1]`` (see the module docstring).
        name: ``vidiff-shapes`` or the TorchScript file's path.
        frames, size: clip length and frame side fed to the network.
        i3d_call: call with ``rescale=False, resize=False, return_features=True``.
        comparable: whether the scores follow the published FVD protocol (an I3D-style export).
    """

    module: torch.nn.Module
    name: str
    frames: int = DEFAULT_FRAMES
    size: int = I3D_SIZE
    i3d_call: bool = False
    comparable: bool = False
    device: str = "cpu"

    @torch.no_grad()
    def __call__(self, clips: np.ndarray) -> np.ndarray:
        """``uint8 (B, T, H, W, 3)`` -> float64 ``(B, D)`` features."""
        x = preprocess(clips, self.frames, self.size).to(self.device)          # (B, 3, T, S, S)
        try:
            if self.i3d_call:
                out = self.module(x, rescale=False, resize=False, return_features=True)
            else:
                out = self.module(x)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"feature extractor {self.name!r} failed on input of shape "
                             f"{tuple(x.shape)} (B, 3, T, H, W): {first}") from None
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"feature extractor {self.name!r} returned {got} for a batch of "
                             f"{x.shape[0]} clips; expected a (batch, features) tensor of shape "
                             f"({x.shape[0]}, D)")
        return out.detach().double().cpu().numpy()


def load_extractor(spec: str, frames: int = DEFAULT_FRAMES, size: Optional[int] = None,
                   device: str = "cpu") -> FeatureExtractor:
    """``vidiff-shapes`` (the shipped network, 32x32 input) or the path of a TorchScript file
    (``size`` default 224). Raises ``FileNotFoundError`` / ``ValueError`` with one clear line."""
    if frames < 2:
        raise ValueError(f"the clip length must be >= 2 frames, got {frames}")
    if spec == "vidiff-shapes":
        return FeatureExtractor(load_shapes_features().to(device), spec, frames, size or INPUT_SIZE,
                                device=device)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"feature network {spec!r} is not a file; accepted: 'vidiff-shapes' "
                                "or the path of a TorchScript file (e.g. i3d_torchscript.pt)")
    try:
        module = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"{spec!r} is not a TorchScript file (torch.jit.load failed: {first[:200]}); "
                         "export the feature network with torch.jit.script or torch.jit.trace") from None
    module.eval()
    i3d = accepts_i3d_keywords(module)
    return FeatureExtractor(module, str(path), frames, size or I3D_SIZE, i3d_call=i3d, comparable=i3d,
                            device=device)


# ----------------------------------------------------------------------------- clips
def _dataset_clips(name: str, count: int, frames: int, size: int, seed: int) -> Iterator[tuple[str, np.ndarray]]:
    dataset = build_dataset({"name": name, "frames": frames, "size": size, "seed": seed, "length": count})
    for i in range(count):
        yield f"{name}[{i}]", Video.from_tensor(dataset[i]["video"]).frames


def list_clips(folder: str) -> list[Path]:
    """Video files and frame folders below ``folder`` (sorted), or a clear error."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{folder!r} is not a folder of videos (nor a built-in dataset: "
                                "shapes, digits, photopan)")
    paths = find_clips(root)
    if not paths:
        raise ValueError(f"{folder!r} holds no clips; accepted: video files "
                         f"({', '.join(VIDEO_EXTENSIONS)}) or folders of frames ({', '.join(IMAGE_EXTENSIONS)})")
    return paths


def iter_clips(source: str, count: Optional[int] = None, frames: Optional[int] = None,
               dataset_size: int = 32, seed: int = 0) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, uint8 (T, H, W, 3))`` for the first ``count`` clips of ``source`` (all when None).

    ``source`` is a folder or a built-in dataset name (which needs ``count`` and ``frames``;
    rendered at ``dataset_size``). With ``frames``, every clip must have at least that many
    and is cut to its first ``frames``. All clips must share one frame size; a folder with
    fewer than ``count`` clips, a clip too short or of another size raise ``ValueError``.
    """
    if source in BUILTIN:
        if count is None or frames is None:
            raise ValueError(f"dataset {source!r} needs a clip count and a clip length")
        clips = _dataset_clips(source, count, frames, dataset_size, seed)
    else:
        paths = list_clips(source)
        if count is not None and len(paths) < count:
            raise ValueError(f"{source!r} holds {len(paths)} clips, fewer than the {count} requested; "
                             f"ask for at most {len(paths)} clips")
        clips = ((str(p), Video.load(p, max_frames=frames).frames) for p in paths[:count])
    first = None
    for name, clip in clips:
        if frames is not None and clip.shape[0] < frames:
            raise ValueError(f"clip {name!r} has {clip.shape[0]} frames, fewer than the {frames} required")
        if first is None:
            first = (name, clip.shape[1:3])
        elif clip.shape[1:3] != first[1]:
            raise ValueError(f"clips of mixed sizes: {name!r} is {clip.shape[2]}x{clip.shape[1]} but "
                             f"{first[0]!r} is {first[1][1]}x{first[1][0]} (W x H); resize them to one size")
        yield name, clip


def extract_features(extractor: FeatureExtractor, clips: Iterator[tuple[str, np.ndarray]],
                     batch: int = 16) -> np.ndarray:
    """Features ``(N, D)`` float64 of every clip from :func:`iter_clips`, ``batch`` clips per call."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    out, pending = [], []
    for _, clip in clips:
        pending.append(clip[:extractor.frames])
        if len(pending) == batch:
            out.append(extractor(np.stack(pending)))
            pending = []
    if pending:
        out.append(extractor(np.stack(pending)))
    if not out:
        raise ValueError("no clips to extract features from")
    return np.concatenate(out)
