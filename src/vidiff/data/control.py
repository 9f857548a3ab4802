"""Control maps from videos: the built-in extractors a ControlNet trains and samples with.

Every extractor takes clips ``(B, 3, T, H, W)`` in ``[-1, 1]`` and returns per-frame maps
``(B, C_ctrl, T, H, W)`` in ``[0, 1]``; none needs downloaded weights:

* ``silhouette``: 1 where a pixel differs from the frame's background colour, else 0. The
  background is the per-channel median of the frame's border pixels (the subject is assumed
  not to cover most of the border), and a pixel is foreground when any channel differs from
  it by more than ``threshold`` (in ``[0, 1]`` units).
* ``edges``: Canny edges (Canny, 1986) of the colour image: Gaussian smoothing, Sobel gradients
  of the channel that changes most at each pixel, thinning to one pixel by non-maximum suppression along the gradient direction, and
  hysteresis (weak edges kept only where they connect to strong ones).
* ``depth`` and ``custom``: a user-supplied TorchScript model (``--extractor FILE``) run on
  each frame ``(N, 3, H, W)`` in ``[0, 1]``. Depth maps are rescaled to ``[0, 1]`` per clip
  (near = 1); custom maps are clamped to ``[0, 1]``.

A map video the user already has (``--control MAPS``) becomes maps by :func:`maps_from_video`.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

# The types whose maps come from a built-in extractor, and those that need a model file.
BUILT_IN = ("silhouette", "edges")
NEEDS_EXTRACTOR = ("depth", "custom")
SILHOUETTE_THRESHOLD = 0.2
EDGE_THRESHOLDS = (0.1, 0.2)    # (low, high) gradient magnitude, in [0, 1] units per pixel
EDGE_SIGMA = 0.8                # Gaussian smoothing before the gradients, in pixels


class ControlError(ValueError):
    """Control maps or their extractor cannot be made; the message says why and what is accepted."""


def _frames(clips: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """``(B, C, T, H, W)`` -> ``(B*T, C, H, W)`` and ``(B, T)``."""
    if clips.ndim != 5:
        raise ControlError(f"clips must be (B, C, T, H, W), got shape {tuple(clips.shape)}")
    B, C, T, H, W = clips.shape
    return clips.transpose(1, 2).reshape(B * T, C, H, W), (B, T)


def _clips(frames: Tensor, bt: tuple[int, int]) -> Tensor:
    """``(B*T, C, H, W)`` -> ``(B, C, T, H, W)``."""
    B, T = bt
    return frames.reshape(B, T, *frames.shape[1:]).transpose(1, 2)


def silhouette(clips: Tensor, threshold: float = SILHOUETTE_THRESHOLD) -> Tensor:
    """Binary foreground maps: ``(B, 3, T, H, W)`` in [-1, 1] -> ``(B, 1, T, H, W)`` in {0, 1}."""
    frames, bt = _frames(clips.float())
    x = (frames + 1) / 2                                                      # (N, 3, H, W) in [0, 1]
    border = torch.cat([x[:, :, 0], x[:, :, -1], x[:, :, 1:-1, 0], x[:, :, 1:-1, -1]], dim=-1)  # (N, 3, P)
    background = border.median(dim=-1).values[:, :, None, None]              # (N, 3, 1, 1)
    foreground = (x - background).abs().amax(dim=1, keepdim=True) > threshold  # (N, 1, H, W)
    return _clips(foreground.float(), bt)


def _gaussian(sigma: float) -> Tensor:
    radius = max(1, int(round(2.5 * sigma)))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-taps ** 2 / (2 * sigma ** 2))
    return kernel / kernel.sum()


def edges(clips: Tensor, low: float = EDGE_THRESHOLDS[0], high: float = EDGE_THRESHOLDS[1],
          sigma: float = EDGE_SIGMA) -> Tensor:
    """Canny edge maps: ``(B, 3, T, H, W)`` in [-1, 1] -> ``(B, 1, T, H, W)`` in {0, 1}.

    ``low`` and ``high`` are the hysteresis thresholds on the gradient magnitude of the
    ``[0, 1]`` colour channels (a sharp step of height 1 reads about 1 before smoothing).
    """
    if not 0 <= low <= high:
        raise ControlError(f"edge thresholds must satisfy 0 <= low <= high, got {low}, {high}")
    frames, bt = _frames(clips.float())
    x = ((frames + 1) / 2).reshape(-1, 1, *frames.shape[-2:])                 # (N*3, 1, H, W) in [0, 1]
    if sigma > 0:
        g = _gaussian(sigma).to(x)
        r = g.numel() // 2
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), g.view(1, 1, 1, -1))
        x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), g.view(1, 1, -1, 1))
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device) / 4
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    N, C, H, W = frames.shape
    gx = F.conv2d(padded, sobel.view(1, 1, 3, 3)).view(N, C, H, W)           # (N, 3, H, W)
    gy = F.conv2d(padded, sobel.t().contiguous().view(1, 1, 3, 3)).view(N, C, H, W)
    # Colour edges: each pixel takes the gradient of the channel that changes most there, so a
    # blue shape on black (a luminance step of only 0.11) has edges as strong as a white one.
    magnitude, channel = torch.hypot(gx, gy).max(dim=1, keepdim=True)       # (N, 1, H, W)
    gx, gy = gx.gather(1, channel), gy.gather(1, channel)
    # Non-maximum suppression: keep a pixel only if it is the largest of itself and its two
    # neighbours along the gradient, with the direction rounded to 0, 45, 90 or 135 degrees.
    angle = torch.rad2deg(torch.atan2(gy, gx)) % 180
    sector = ((angle + 22.5) // 45).long() % 4                                # (N, 1, H, W) in 0..3
    m = F.pad(magnitude, (1, 1, 1, 1))

    def shifted(dy: int, dx: int) -> Tensor:
        return m[..., 1 + dy:1 + dy + H, 1 + dx:1 + dx + W]
    # Sector k's neighbours (rows grow downwards, so +45 degrees points to the upper right).
    pairs = [((0, 1), (0, -1)), ((-1, 1), (1, -1)), ((1, 0), (-1, 0)), ((-1, -1), (1, 1))]
    keep = torch.zeros_like(magnitude, dtype=torch.bool)
    for k, (a, b) in enumerate(pairs):
        local = (magnitude >= shifted(*a)) & (magnitude >= shifted(*b))
        keep |= (sector == k) & local
    thin = magnitude * keep
    strong, weak = thin >= high, thin >= low
    # Hysteresis: grow the strong edges through 8-connected weak pixels until nothing changes.
    edge = strong
    for _ in range(H * W):
        grown = (F.max_pool2d(edge.float(), 3, stride=1, padding=1) > 0) & weak
        if torch.equal(grown, edge):
            break
        edge = grown
    return _clips(edge.float(), bt)


def load_extractor(path):
    """A user-supplied map model from ``path`` (CPU, eval mode): a TorchScript file
    (``torch.jit.save``) or an exported program (``torch.export.save``, a ``.pt2`` file).
    ControlError names the file when it is missing or neither."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ControlError(f"extractor {str(path)!r} does not exist (give a TorchScript file saved "
                           "with torch.jit.save, or a torch.export.save program)")
    with warnings.catch_warnings():
        # TorchScript is deprecated in favour of torch.export, and both are accepted here.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return torch.jit.load(str(path), map_location="cpu").eval()
        except (RuntimeError, ValueError) as e:
            problem = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    try:
        return torch.export.load(str(path)).module()
    except Exception:       # noqa: BLE001 - any failure means the same thing: not a program
        raise ControlError(f"extractor {str(path)!r} is not a TorchScript model ({problem}) nor a "
                           "torch.export program") from None


def _run_model(model, clips: Tensor, channels: Optional[int], what: str) -> Tensor:
    frames, bt = _frames(clips.float())
    with torch.no_grad():
        out = model(((frames + 1) / 2).to(next(iter(model.parameters()), frames).device))
    if not isinstance(out, Tensor):
        raise ControlError(f"the {what} extractor returned {type(out).__name__}, not a tensor")
    out = out.float().cpu()
    if out.ndim == 3:
        out = out[:, None]
    N, _, H, W = frames.shape
    if out.ndim != 4 or out.shape[0] != N or tuple(out.shape[-2:]) != (H, W) or \
            (channels is not None and out.shape[1] != channels):
        want = f"(N, {channels}, {H}, {W})" if channels else f"(N, C, {H}, {W})"
        raise ControlError(f"the {what} extractor returned shape {tuple(out.shape)} for {N} frames "
                           f"of {H}x{W}; expected {want} (or (N, {H}, {W}))")
    return _clips(out, bt)


def depth(clips: Tensor, model) -> Tensor:
    """Depth maps from a TorchScript ``model``: ``(B, 3, T, H, W)`` -> ``(B, 1, T, H, W)`` in
    [0, 1], rescaled per clip so that its nearest point is 1 and its farthest 0 (the model's
    output is read as larger = nearer, as MiDaS-style inverse depth is)."""
    maps = _run_model(model, clips, 1, "depth")
    flat = maps.flatten(1)
    lo, hi = flat.min(1).values.view(-1, 1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1, 1)
    return (maps - lo) / (hi - lo).clamp_min(1e-8)


def custom(clips: Tensor, model, channels: Optional[int] = None) -> Tensor:
    """Maps from a TorchScript ``model``: ``(B, 3, T, H, W)`` -> ``(B, C, T, H, W)``, clamped to [0, 1]."""
    return _run_model(model, clips, channels, "custom").clamp(0, 1)


def extract(kind: str, clips: Tensor, extractor=None, channels: Optional[int] = None) -> Tensor:
    """Maps of ``kind`` for ``clips (B, 3, T, H, W)`` in [-1, 1]: ``(B, C_ctrl, T, H, W)`` in [0, 1].

    ``extractor`` is a TorchScript model or its path, required for ``depth`` and ``custom``
    (and refused for the built-in kinds, whose maps need none).
    """
    if kind not in BUILT_IN + NEEDS_EXTRACTOR:
        raise ControlError(f"unknown control type {kind!r}; accepted: {list(BUILT_IN + NEEDS_EXTRACTOR)}")
    if kind in BUILT_IN:
        if extractor is not None:
            raise ControlError(f"control type {kind!r} has a built-in extractor: drop the extractor file")
        return silhouette(clips) if kind == "silhouette" else edges(clips)
    if extractor is None:
        raise ControlError(f"control type {kind!r} needs an extractor: a TorchScript model file "
                           "(--extractor FILE), since vidiff downloads no weights")
    model = load_extractor(extractor) if isinstance(extractor, (str, Path)) else extractor
    return depth(clips, model) if kind == "depth" else custom(clips, model, channels)


def maps_from_video(clip: Tensor, channels: int) -> Tensor:
    """A map video the user made, ``(3, T, H, W)`` in [-1, 1], as maps ``(channels, T, H, W)`` in
    [0, 1]: the grey level for 1-channel maps, the first ``channels`` colour channels otherwise."""
    x = (clip.float() + 1) / 2
    if channels == 1:
        return x.mean(0, keepdim=True)
    if channels > x.shape[0]:
        raise ControlError(f"a map video has {x.shape[0]} colour channels; this ControlNet takes {channels}")
    return x[:channels]
