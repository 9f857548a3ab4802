"""The one object through which every condition reaches a denoiser.

Text (and a reference image of the subject), known frames (image-to-video, forecasting,
interpolation, inpainting, outpainting, extension), frame rate, a low-resolution clip
(super-resolution) and control maps all travel in a :class:`Conditioning`. Unset parts are ``None`` and cost nothing. Samplers pass it through
untouched; classifier-free guidance builds its unconditional passes with
:meth:`Conditioning.null` (or :meth:`Conditioning.with_text_of` for a negative prompt) and runs
every pass as one batched call on :meth:`Conditioning.cat`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

# Fields that hold a batch-first tensor, in declaration order.
_TENSOR_FIELDS = (
    "text", "text_mask", "text_pooled", "drop_text", "reference", "reference_mask",
    "known", "mask", "known_noise",
    "frame_stride",
    "low_res", "low_res_noise",
    "control",
)
# Fields laid out like the clip, (B, C, T, H, W), that a window or tile of it crops.
_SPACETIME_FIELDS = ("known", "mask", "control")
# What a prompt sets: a negative prompt replaces exactly these (see ``with_text_of``).
TEXT_FIELDS = ("text", "text_mask", "text_pooled", "drop_text")


@dataclass
class Conditioning:
    """Everything a denoiser is conditioned on, batch-first; every field is optional.

    Attributes:
        text: ``(B, L, D)`` token embeddings from a text encoder.
        text_mask: ``(B, L)`` bool, True for real tokens, False for padding (absent: every
            token is real).
        text_pooled: ``(B, D_pooled)`` one vector per prompt.
        drop_text: ``(B,)`` bool, True where the network must use its learned null text
            embedding instead of ``text`` (classifier-free guidance, text dropout in training);
            such a row ignores its ``reference`` too (the reference is part of the prompt).
        reference: ``(B, 3, H_r, W_r)`` in ``[-1, 1]``: an image whose subject and style the
            clip should show (extra cross-attention tokens of a network built with
            ``reference_tokens``), not pinned to any frame.
        reference_mask: ``(B,)`` bool, True where ``reference`` is a real image (absent: every
            row's is); other rows carry a placeholder the network ignores, so that one batch can
            mix rows with and without a reference.
        known: ``(B, C, T, H, W)`` known pixels or latents; values where ``mask == 0`` are
            ignored (networks zero them, so the content there never leaks).
        mask: ``(B, 1, T, H, W)`` float, 1 where ``known`` is known, 0 elsewhere.
        known_noise: ``(B,)`` diffusion time in ``[0, 1]`` of the noise added to ``known``
            (noise augmentation of conditioning frames); 0 means clean.
        frame_stride: ``(B,)`` float, source-video frames between consecutive frames of the
            clip (1 = every frame), so one model learns several frame rates.
        low_res: ``(B, C, T, h, w)`` low-resolution clip for a super-resolution model.
        low_res_noise: ``(B,)`` diffusion time of the noise augmentation on ``low_res``.
        control: ``(B, C_ctrl, T, H, W)`` per-frame control maps (ControlNet).
    """

    text: Optional[Tensor] = None
    text_mask: Optional[Tensor] = None
    text_pooled: Optional[Tensor] = None
    drop_text: Optional[Tensor] = None
    reference: Optional[Tensor] = None
    reference_mask: Optional[Tensor] = None
    known: Optional[Tensor] = None
    mask: Optional[Tensor] = None
    known_noise: Optional[Tensor] = None
    frame_stride: Optional[Tensor] = None
    low_res: Optional[Tensor] = None
    low_res_noise: Optional[Tensor] = None
    control: Optional[Tensor] = None

    def __post_init__(self):
        if (self.known is None) != (self.mask is None):
            raise ValueError("Conditioning: 'known' and 'mask' must be given together")
        sizes = {name: getattr(self, name).shape[0] for name in _TENSOR_FIELDS
                 if getattr(self, name) is not None}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"Conditioning: fields disagree on the batch size: {sizes}")
        if self.reference_mask is not None and self.reference is None:
            raise ValueError("Conditioning: 'reference_mask' needs 'reference'")
        if self.text_mask is not None and (self.text is None or self.text_mask.shape != self.text.shape[:2]):
            shape = None if self.text is None else tuple(self.text.shape)
            raise ValueError(f"Conditioning: text_mask {tuple(self.text_mask.shape)} must be (B, L) "
                             f"of text (B, L, D) = {shape}")

    # ------------------------------------------------------------------ queries
    @property
    def batch_size(self) -> Optional[int]:
        """The batch size, or None when no field is set."""
        for name in _TENSOR_FIELDS:
            value = getattr(self, name)
            if value is not None:
                return value.shape[0]
        return None

    @property
    def device(self) -> Optional[torch.device]:
        """The device of the first set field, or None when no field is set."""
        names = self.fields_set()
        return getattr(self, names[0]).device if names else None

    def fields_set(self) -> tuple[str, ...]:
        """Names of the fields that are not None, in declaration order."""
        return tuple(n for n in _TENSOR_FIELDS if getattr(self, n) is not None)

    def check_batch(self, batch: int, what: str = "x_t") -> None:
        """Raise a ValueError unless this conditioning fits a batch of ``batch`` samples of
        ``what`` (a conditioning with no field set fits any batch)."""
        if self.batch_size not in (None, batch):
            raise ValueError(f"the conditioning has batch size {self.batch_size} "
                             f"(fields {list(self.fields_set())}) but {what} has {batch}")

    def text_dropped(self, batch: int, device) -> Tensor:
        """``(B,)`` bool: rows that use the null text embedding (all rows when there is no text)."""
        if self.drop_text is not None:
            return self.drop_text.to(device=device, dtype=torch.bool)
        if self.text is None:
            return torch.ones(batch, dtype=torch.bool, device=device)
        return torch.zeros(batch, dtype=torch.bool, device=device)

    # ------------------------------------------------------------------ transforms
    def replace(self, **changes) -> "Conditioning":
        """A copy with the given fields changed (checked again like a new Conditioning)."""
        return dataclasses.replace(self, **changes)

    def map(self, fn) -> "Conditioning":
        """Apply ``fn`` to every set tensor field (e.g. indexing, ``.to(device)``)."""
        return self.replace(**{n: fn(getattr(self, n)) for n in self.fields_set()})

    def to(self, device=None, dtype=None) -> "Conditioning":
        """Move to ``device``; floating fields (not masks or flags) also take ``dtype``."""
        def move(x: Tensor) -> Tensor:
            if dtype is not None and x.is_floating_point():
                return x.to(device=device, dtype=dtype)
            return x.to(device=device)
        return self.map(move)

    def crop(self, frames: slice, rows: slice, cols: slice, size: tuple[int, int]) -> "Conditioning":
        """The conditioning of one window and tile of a clip whose frames are ``size = (H, W)``:
        the per-frame fields (``known``, ``mask``, ``control``) sliced to ``[frames, rows, cols]``,
        ``low_res`` to the same region of its own grid (its tile must cover whole low-resolution
        pixels); per-sample fields (text, reference, noise levels, stride) unchanged."""
        changes = {n: getattr(self, n)[:, :, frames, rows, cols] for n in _SPACETIME_FIELDS
                   if getattr(self, n) is not None}
        if self.low_res is not None:
            H, W = size
            h, w = self.low_res.shape[-2:]
            if H % h or W % w:
                raise ValueError(f"Conditioning.crop: low_res {h}x{w} is not a whole fraction of {H}x{W}")
            sy, sx = H // h, W // w
            bounds = [rows.start, rows.stop, cols.start, cols.stop]
            if bounds[0] % sy or bounds[1] % sy or bounds[2] % sx or bounds[3] % sx:
                raise ValueError(f"Conditioning.crop: rows {rows.start}:{rows.stop}, cols "
                                 f"{cols.start}:{cols.stop} do not fall on low_res pixels ({sy}x{sx} each)")
            changes["low_res"] = self.low_res[:, :, frames, rows.start // sy:rows.stop // sy,
                                              cols.start // sx:cols.stop // sx]
        return self.replace(**changes)

    def null(self, text: bool = True, frames: bool = False) -> "Conditioning":
        """The unconditional version used by classifier-free guidance.

        ``text=True`` marks every row to use the network's learned null text embedding;
        ``frames=True`` forgets known frames: ``known`` and ``mask`` become zeros and
        ``known_noise`` (when set) 0, which is exactly what a network sees for a
        conditioning without known frames. Everything else (frame stride, low-resolution
        clip, control) is kept.
        """
        batch = self.batch_size
        if batch is None:
            return self
        changes = {}
        if text:
            changes["drop_text"] = torch.ones(batch, dtype=torch.bool, device=self.device)
        if frames and self.mask is not None:
            changes["mask"] = torch.zeros_like(self.mask)
            changes["known"] = torch.zeros_like(self.known)
            if self.known_noise is not None:
                changes["known_noise"] = torch.zeros_like(self.known_noise)
        return self.replace(**changes)

    def with_text_of(self, other: "Conditioning") -> "Conditioning":
        """This conditioning with its text fields (``text``, ``text_mask``, ``text_pooled``,
        ``drop_text``) taken from ``other``: the unconditional pass of a negative prompt,
        which keeps known frames, frame stride, low-resolution clip and control.

        ``other`` has this batch size, or 1 (one negative prompt for every row). An ``other``
        without text (no ``text`` nor ``text_pooled``) means the null text: ``self.null()``.
        """
        if other.text is None and other.text_pooled is None:
            return self.null(text=True)
        batch, b_other = self.batch_size, other.batch_size
        if b_other is not None and batch is not None and b_other not in (1, batch):
            raise ValueError(f"with_text_of: the other conditioning has batch size {b_other}; "
                             f"expected 1 or {batch}")
        texts = {n: getattr(other, n) for n in TEXT_FIELDS}
        if b_other == 1 and batch is not None:
            texts = {n: None if x is None else x.expand(batch, *x.shape[1:]) for n, x in texts.items()}
        return self.replace(**texts)

    def cat(self, *others: "Conditioning") -> "Conditioning":
        """Concatenate conditionings along the batch: ``(B1, ...) + (B2, ...) -> (B1 + B2, ...)``.

        Token sequences of different lengths are padded to the longest ``L``: ``text`` with
        zeros and ``text_mask`` with False, so networks that honour the mask (UNet3D and
        VideoDiT do) give every row the output it would have alone. Two fields may be
        implicit on one side: ``drop_text`` (False where text is set, else True) and, where
        text is set, ``text_mask`` (all True). Any other field set on one side only is an error.
        """
        parts = (self,) + others
        if all(p.batch_size is None for p in parts):
            return self
        names = set().union(*(p.fields_set() for p in parts)) | {"drop_text"}
        if "text" in names:
            names.add("text_mask")
        parts = [_explicit(p, "text_mask" in names) for p in parts]
        lengths = [p.text.shape[1] for p in parts if p.text is not None]
        if lengths and len(set(lengths)) > 1:
            parts = [_pad_text(p, max(lengths)) for p in parts]
        out = {}
        for name in sorted(names, key=_TENSOR_FIELDS.index):
            values = [getattr(p, name) for p in parts]
            if any(v is None for v in values):
                raise ValueError(f"Conditioning.cat: field {name!r} is set on some sides only; "
                                 "every side must carry the same fields")
            shapes = {tuple(v.shape[1:]) for v in values}
            if len(shapes) > 1:
                raise ValueError(f"Conditioning.cat: field {name!r} has different per-sample "
                                 f"shapes {sorted(shapes)}")
            out[name] = torch.cat(values, dim=0)
        return Conditioning(**out)


def _explicit(cond: Conditioning, with_mask: bool) -> Conditioning:
    """``cond`` with its implicit ``drop_text`` (and, where text is set and ``with_mask``, its
    implicit all-True ``text_mask``) written out, so that it concatenates with any other side."""
    batch = cond.batch_size
    if batch is None:
        return cond
    changes = {"drop_text": cond.text_dropped(batch, cond.device)}
    if with_mask and cond.text is not None and cond.text_mask is None:
        changes["text_mask"] = torch.ones(cond.text.shape[:2], dtype=torch.bool, device=cond.text.device)
    return cond.replace(**changes)


def _pad_text(cond: Conditioning, length: int) -> Conditioning:
    """Pad ``text (B, L, D)`` with zeros and ``text_mask (B, L)`` with False to ``length`` tokens."""
    if cond.text is None or cond.text.shape[1] == length:
        return cond
    extra = length - cond.text.shape[1]
    return cond.replace(text=F.pad(cond.text, (0, 0, 0, extra)),                  # (B, length, D)
                        text_mask=F.pad(cond.text_mask, (0, extra), value=False))  # (B, length)
