"""Known-frame masks: which pixels (or latents) of a clip are given, for every frame task.

One mechanism serves image-to-video, forecasting, interpolation, inpainting, outpainting and
long-video extension: a mask ``(1, T, H, W)`` (1 = known) next to the known clip. The builders
below make the mask of each task at sampling time; :func:`draw_task_mask` draws the random
masks of the training task mix from one generator, so a sample's mask is a pure function of
its seed; :func:`latent_mask` carries a pixel mask into an autoencoder's latent grid.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

# The training task mix, in the order of a config's ``tasks:`` weights.
TASKS = ("text", "first_frame", "first_frames", "last_frames", "keyframes", "box", "border")
# Keyframe spacings the mix draws (interpolation by 2, 3, 4 and 8 in one model).
KEYFRAME_STRIDES = (2, 3, 4, 8)


def frames_mask(num_frames: int, height: int, width: int, known: Sequence[int]) -> Tensor:
    """``(1, T, H, W)`` float mask with the whole of frames ``known`` set to 1."""
    mask = torch.zeros(1, num_frames, height, width)
    for f in known:
        if not 0 <= f < num_frames:
            raise ValueError(f"known frame {f} is outside the clip's frames 0..{num_frames - 1}")
        mask[:, f] = 1.0
    return mask


def keyframe_mask(num_frames: int, height: int, width: int, stride: int, offset: int = 0) -> Tensor:
    """``(1, T, H, W)``: frames ``offset, offset + stride, ...`` known (interpolation)."""
    if stride < 1:
        raise ValueError(f"keyframe stride must be >= 1, got {stride}")
    return frames_mask(num_frames, height, width, range(offset, num_frames, stride))


def box_mask(num_frames: int, height: int, width: int, box: Sequence[int],
             frame_range: Sequence[int] | None = None) -> Tensor:
    """``(1, T, H, W)``: everything known except the box ``x0, y0, x1, y1`` (pixels, x1 and y1
    exclusive) over frames ``f0..f1`` inclusive (all frames when ``frame_range`` is None)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"box {x0},{y0},{x1},{y1} must satisfy 0 <= x0 < x1 <= {width} and "
                         f"0 <= y0 < y1 <= {height} (the frame is {width}x{height})")
    f0, f1 = (0, num_frames - 1) if frame_range is None else (int(v) for v in frame_range)
    if not 0 <= f0 <= f1 < num_frames:
        raise ValueError(f"frame range {f0},{f1} must satisfy 0 <= f0 <= f1 <= {num_frames - 1}")
    mask = torch.ones(1, num_frames, height, width)
    mask[:, f0:f1 + 1, y0:y1, x0:x1] = 0.0
    return mask


def border_mask(num_frames: int, height: int, width: int, left: int = 0, right: int = 0,
                top: int = 0, bottom: int = 0) -> Tensor:
    """``(1, T, H, W)``: the centre known, a border of the given widths (pixels) unknown (outpainting)."""
    if min(left, right, top, bottom) < 0 or left + right >= width or top + bottom >= height:
        raise ValueError(f"border left={left}, right={right}, top={top}, bottom={bottom} must be "
                         f">= 0 and leave part of the {width}x{height} frame known")
    mask = torch.zeros(1, num_frames, height, width)
    mask[:, :, top:height - bottom, left:width - right] = 1.0
    return mask


def _randint(low: int, high: int, g: torch.Generator) -> int:
    """A uniform integer in ``[low, high]`` (both inclusive)."""
    return int(torch.randint(low, high + 1, (), generator=g))


def draw_task_mask(task: str, num_frames: int, height: int, width: int, g: torch.Generator) -> Tensor:
    """A random ``(1, T, H, W)`` mask of the training task ``task`` (one of :data:`TASKS`),
    drawn from ``g`` only.

    * ``text``: nothing known (text-to-video);
    * ``first_frame``: frame 0 (image-to-video);
    * ``first_frames`` / ``last_frames``: the first / last ``k`` frames, ``k`` uniform in
      ``1..T-1`` (forecasting forwards / backwards);
    * ``keyframes``: every ``n``-th frame from a random offset below ``n``, ``n`` in
      :data:`KEYFRAME_STRIDES` (interpolation);
    * ``box``: a box of 1/4 to 3/4 of each side hidden over a random frame range (inpainting);
    * ``border``: a random border, up to 3/8 of each side, hidden in every frame (outpainting).

    A task that needs more than one frame (``first_frames``, ``last_frames``, ``keyframes``)
    on a single-frame clip falls back to ``text``.
    """
    if task not in TASKS:
        raise ValueError(f"unknown frame task {task!r}; accepted: {list(TASKS)}")
    T, H, W = num_frames, height, width
    if task == "text" or (T == 1 and task in ("first_frames", "last_frames", "keyframes")):
        return torch.zeros(1, T, H, W)
    if task == "first_frame":
        return frames_mask(T, H, W, [0])
    if task in ("first_frames", "last_frames"):
        k = _randint(1, T - 1, g)
        return frames_mask(T, H, W, range(k) if task == "first_frames" else range(T - k, T))
    if task == "keyframes":
        stride = KEYFRAME_STRIDES[_randint(0, len(KEYFRAME_STRIDES) - 1, g)]
        return keyframe_mask(T, H, W, stride, _randint(0, min(stride, T) - 1, g))
    if task == "box":
        bw, bh = _randint(max(1, W // 4), max(1, 3 * W // 4), g), _randint(max(1, H // 4), max(1, 3 * H // 4), g)
        x0, y0 = _randint(0, W - bw, g), _randint(0, H - bh, g)
        f0 = _randint(0, T - 1, g)
        return box_mask(T, H, W, (x0, y0, x0 + bw, y0 + bh), (f0, _randint(f0, T - 1, g)))
    sides = [_randint(0, 3 * n // 8, g) for n in (W, W, H, H)]
    if not any(sides):                       # at least one pixel of border
        sides[_randint(0, 3, g)] = 1
    return border_mask(T, H, W, *sides)


def latent_mask(mask: Tensor, time_factor: int, space_factor: int, causal: bool = True) -> Tensor:
    """A pixel mask ``(B, 1, T, H, W)`` as the latent mask of an autoencoder that codes
    ``space_factor`` x ``space_factor`` pixels and ``time_factor`` frames per latent cell:
    ``(B, 1, t, h, w)``.

    The rule: a latent cell is known only if every pixel it codes is known (a cell that mixes
    known and unknown pixels must be generated). A causal autoencoder codes frame 0 alone in
    latent frame 0 and frames ``1 + (j - 1) f .. j f`` in latent frame ``j``, so it takes
    ``1 + k f`` frames; a non-causal one codes frames ``j f .. (j + 1) f - 1``.
    """
    B, _, T, H, W = mask.shape
    if H % space_factor or W % space_factor:
        raise ValueError(f"mask frames {H}x{W} are not a multiple of the latent cell {space_factor}")
    known = mask >= 0.5
    if causal:
        if (T - 1) % time_factor:
            raise ValueError(f"a causal autoencoder takes 1 + k*{time_factor} frames, the mask has {T}")
        groups = [known[:, :, :1]] + [known[:, :, 1 + j * time_factor:1 + (j + 1) * time_factor]
                                      for j in range((T - 1) // time_factor)]
    else:
        if T % time_factor:
            raise ValueError(f"the autoencoder takes a multiple of {time_factor} frames, the mask has {T}")
        groups = [known[:, :, j * time_factor:(j + 1) * time_factor] for j in range(T // time_factor)]
    per_frame = torch.cat([g.all(dim=2, keepdim=True) for g in groups], dim=2)      # (B, 1, t, H, W)
    h, w = H // space_factor, W // space_factor
    cells = per_frame.reshape(B, 1, per_frame.shape[2], h, space_factor, w, space_factor)
    return cells.all(dim=6).all(dim=4).to(mask.dtype)                               # (B, 1, t, h, w)
