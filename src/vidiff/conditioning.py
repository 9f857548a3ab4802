"""The one object through which every condition reaches a denoiser.

Text, known frames (image-to-video, forecasting, interpolation, inpainting, outpainting,
extension), frame rate, a low-resolution clip (super-resolution) and control maps all travel
in a :class:`Conditioning`. Unset parts are ``None`` and cost nothing. Samplers pass it through
untouched; classifier-free guidance uses :meth:`Conditioning.null` and :meth:`Conditioning.cat`
to run the conditional and unconditional passes as one batched call.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

# Fields that hold a batch-first tensor, in declaration order.
_TENSOR_FIELDS = (
    "text", "text_mask", "text_pooled", "drop_text",
    "known", "mask", "known_noise",
    "frame_stride",
    "low_res", "low_res_noise",
    "control",
)


@dataclass
class Conditioning:
    """Everything a denoiser is conditioned on, batch-first; every field is optional.

    Attributes:
        text: ``(B, L, D)`` token embeddings from a text encoder.
        text_mask: ``(B, L)`` bool, True for real tokens, False for padding.
        text_pooled: ``(B, D_pooled)`` one vector per prompt.
        drop_text: ``(B,)`` bool, True where the network must use its learned null text
            embedding instead of ``text`` (classifier-free guidance, text dropout in training).
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

    # ------------------------------------------------------------------ queries
    @property
    def batch_size(self) -> Optional[int]:
        """The batch size, or None when no field is set."""
        for name in _TENSOR_FIELDS:
            value = getattr(self, name)
            if value is not None:
                return value.shape[0]
        return None

    def fields_set(self) -> tuple[str, ...]:
        return tuple(n for n in _TENSOR_FIELDS if getattr(self, n) is not None)

    def text_dropped(self, batch: int, device) -> Tensor:
        """``(B,)`` bool: rows that use the null text embedding (all rows when there is no text)."""
        if self.drop_text is not None:
            return self.drop_text.to(device=device, dtype=torch.bool)
        if self.text is None:
            return torch.ones(batch, dtype=torch.bool, device=device)
        return torch.zeros(batch, dtype=torch.bool, device=device)

    # ------------------------------------------------------------------ transforms
    def replace(self, **changes) -> "Conditioning":
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

    def repeat_interleave(self, n: int) -> "Conditioning":
        """Repeat every row ``n`` times: ``(B, ...) -> (B * n, ...)`` (for ``samples=n``)."""
        return self.map(lambda x: x.repeat_interleave(n, dim=0))

    def null(self, text: bool = True, frames: bool = False) -> "Conditioning":
        """The unconditional version used by classifier-free guidance.

        ``text=True`` marks every row to use the network's learned null text embedding;
        ``frames=True`` also forgets known frames (mask set to 0). Other parts are kept, so
        guidance by default strengthens the text and leaves frame conditioning in both passes.
        """
        batch = self.batch_size
        if batch is None:
            return self
        changes = {}
        if text:
            device = next(getattr(self, n) for n in self.fields_set()).device
            changes["drop_text"] = torch.ones(batch, dtype=torch.bool, device=device)
        if frames and self.mask is not None:
            changes["mask"] = torch.zeros_like(self.mask)
            changes["known"] = torch.zeros_like(self.known)
        return self.replace(**changes)

    def with_text_dropout(self, p: float, generator: Optional[torch.Generator] = None) -> "Conditioning":
        """Training-time text dropout: each row uses the null text with probability ``p``."""
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"text dropout probability must be in [0, 1], got {p}")
        batch = self.batch_size
        if batch is None or p == 0.0:
            return self
        device = next(getattr(self, n) for n in self.fields_set()).device
        drop = torch.rand(batch, generator=generator, device="cpu").to(device) < p
        return self.replace(drop_text=drop | self.text_dropped(batch, device))

    def cat(self, other: "Conditioning") -> "Conditioning":
        """Concatenate two conditionings along the batch: ``(B1, ...) + (B2, ...) -> (B1 + B2, ...)``."""
        b1, b2 = self.batch_size, other.batch_size
        if b1 is None and b2 is None:
            return self
        names = set(self.fields_set()) | set(other.fields_set())
        # drop_text may be implicit on one side: make it explicit on both.
        a = self.replace(drop_text=self.text_dropped(b1, _device(self)) if b1 else None)
        b = other.replace(drop_text=other.text_dropped(b2, _device(other)) if b2 else None)
        names.add("drop_text")
        out = {}
        for name in names:
            x, y = getattr(a, name), getattr(b, name)
            if x is None or y is None:
                raise ValueError(
                    f"Conditioning.cat: field {name!r} is set on one side only; "
                    "both sides must carry the same fields"
                )
            out[name] = torch.cat([x, y], dim=0)
        return Conditioning(**out)


def _device(cond: Conditioning):
    return next(getattr(cond, n) for n in cond.fields_set()).device


def cat_conditionings(a: Optional[Conditioning], b: Optional[Conditioning]) -> Optional[Conditioning]:
    """``a.cat(b)`` that also accepts ``None`` on both sides (no conditioning at all)."""
    if a is None and b is None:
        return None
    if a is None or b is None:
        raise ValueError("cannot concatenate a Conditioning with None")
    return a.cat(b)
