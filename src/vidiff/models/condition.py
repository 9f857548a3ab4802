"""From a :class:`~vidiff.Conditioning` to what a network consumes, shared by every backbone.

A network sees conditions in three ways:

* extra input channels: known frames (``known * mask`` and ``mask``) and an upsampled
  low-resolution clip, concatenated to ``x_t``;
* one embedding vector per sample: diffusion time, plus the noise level of known frames, the
  frame stride, the low-resolution noise level and the pooled text vector, each with its own
  embedder, summed;
* a token sequence for cross-attention: the text embeddings, projected to the network width,
  with a learned null sequence for rows that drop their text (classifier-free guidance), and,
  for a network built with a reference pathway, a few tokens of a reference image appended,
  made by :class:`ReferenceEncoder` (trained with the network) or by a frozen CLIP vision model
  and a trained projection (:class:`~vidiff.models.reference_clip.CLIPReferenceEncoder`).

UNet3D and VideoDiT both own one :class:`ConditionEmbedder`, so the two backbones accept
exactly the same conditions in exactly the same way.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidiff.conditioning import Conditioning
from vidiff.config import ConfigError
from vidiff.models.layers import TimestepEmbedder
from vidiff.models.pretrained import DTYPES
from vidiff.models.reference_clip import CLIPReferenceEncoder

# Where a network's reference tokens come from: the small encoder trained with it, or a frozen
# CLIP vision model from a local folder with a trained projection.
REFERENCE_ENCODERS = ("builtin", "clip")


def check_reference_fields(config, where: str) -> None:
    """ConfigError unless a network config's reference fields (``reference_tokens``,
    ``reference_encoder``, ``reference_encoder_path``, ``reference_encoder_dtype``) agree; the
    path is made absolute, so a checkpoint's config names the folder from anywhere."""
    path = config.reference_encoder_path
    if config.reference_tokens < 0:
        raise ConfigError(f"{where}.reference_tokens must be >= 0, got {config.reference_tokens}")
    if config.reference_encoder not in REFERENCE_ENCODERS:
        raise ConfigError(f"{where}.reference_encoder: {config.reference_encoder!r} is not one of "
                          f"{list(REFERENCE_ENCODERS)}")
    if config.reference_encoder_dtype not in DTYPES:
        raise ConfigError(f"{where}.reference_encoder_dtype: {config.reference_encoder_dtype!r} is not one "
                          f"of {list(DTYPES)}")
    if config.reference_encoder == "clip":
        if not config.reference_tokens:
            raise ConfigError(f"{where}.reference_encoder: clip makes reference tokens: set "
                              "reference_tokens > 0 (e.g. 4)")
        if not path:
            raise ConfigError(f"{where}.reference_encoder_path is required for reference_encoder: clip "
                              "(a local folder holding a CLIP vision model)")
        config.reference_encoder_path = str(Path(path).expanduser().resolve())
    elif path:
        raise ConfigError(f"{where}.reference_encoder_path is set but reference_encoder is "
                          f"{config.reference_encoder!r}: set reference_encoder: clip to use it")


def reference_options(config) -> dict:
    """A network config's reference fields as :class:`ConditionEmbedder` keyword arguments."""
    return dict(reference_tokens=config.reference_tokens, reference_encoder=config.reference_encoder,
                reference_path=config.reference_encoder_path, reference_dtype=config.reference_encoder_dtype)


class ConditionEmbedder(nn.Module):
    """Conditioning -> (input channels, embedding, cross-attention context).

    The optional embedders (:attr:`OPTIONAL_EMBEDDERS`) end in a zero layer and extra input
    channels meet zero weights when a fine-tune adds them (``Trainer.load_weights``), so a
    network that gains a condition starts out computing exactly what its checkpoint did.

    Args:
        in_channels: channels of ``x_t`` (and of ``known`` / ``low_res``).
        emb_dim: width of the per-sample embedding.
        text_dim: width of the text encoder's token embeddings (None: no text).
        context_dim: width the network's cross-attention expects.
        pooled_dim: width of the pooled text vector (None: not used).
        known_frames: accept ``known``/``mask`` as extra input channels.
        known_in_place: also put the known pixels into ``x_t`` itself where the mask is 1
            (Open-Sora's condition frames, which it keeps at ``t = 0``). Why: through the
            extra channels alone, a network whose first layer is narrower than its input (a
            space-to-depth stem) cannot carry both ``x_t`` and the known pixels, and its raw
            output blurs what it was given; in place, a known pixel takes the path a clean
            input takes, which the network already reproduces.
        frame_stride: embed ``frame_stride``.
        low_res: accept a low-resolution clip as extra input channels.
        reference_tokens: append this many tokens of ``cond.reference`` to the cross-attention
            context (0: no reference pathway; needs text).
        reference_encoder: what makes them: ``"builtin"`` (:class:`ReferenceEncoder`) or
            ``"clip"`` (a frozen CLIP vision model from ``reference_path``, its parameters in
            ``reference_dtype``, and a trained projection).
    """

    # Embedders a fine-tune may add to a checkpoint that lacks them (zeroed: no effect at first),
    # and every part a fine-tune may add (the reference encoder acts only where a reference is given).
    OPTIONAL_EMBEDDERS = ("known_noise", "stride", "low_res_noise")
    ADDABLE = OPTIONAL_EMBEDDERS + ("reference",)

    def __init__(self, in_channels: int, emb_dim: int, text_dim: Optional[int] = None,
                 context_dim: Optional[int] = None, pooled_dim: Optional[int] = None,
                 known_frames: bool = False, frame_stride: bool = False, low_res: bool = False,
                 known_in_place: bool = False, reference_tokens: int = 0, reference_encoder: str = "builtin",
                 reference_path: Optional[str] = None, reference_dtype: str = "float32"):
        super().__init__()
        if known_in_place and not known_frames:
            raise ValueError("known_in_place needs known_frames: true")
        if reference_tokens < 0:
            raise ValueError(f"reference_tokens must be >= 0, got {reference_tokens}")
        if reference_encoder not in REFERENCE_ENCODERS:
            raise ValueError(f"reference_encoder {reference_encoder!r} is not one of {list(REFERENCE_ENCODERS)}")
        if reference_tokens and text_dim is None:
            raise ValueError("a reference pathway adds cross-attention tokens: it needs text (text_dim)")
        if reference_tokens and reference_encoder == "clip" and not reference_path:
            raise ValueError("reference_encoder 'clip' needs reference_path: a local CLIP vision model folder")
        self.known_in_place = known_in_place
        self.in_channels, self.text_dim = in_channels, text_dim
        self.known_frames, self.low_res = known_frames, low_res
        self.time = TimestepEmbedder(emb_dim)
        self.known_noise = TimestepEmbedder(emb_dim) if known_frames else None
        self.stride = TimestepEmbedder(emb_dim, scale=1.0) if frame_stride else None
        self.low_res_noise = TimestepEmbedder(emb_dim) if low_res else None
        if text_dim is not None:
            # A learned null token replaces the text of dropped rows; one token suffices
            # because attention over identical keys returns that token's value.
            self.null_text = nn.Parameter(torch.randn(1, 1, text_dim) * 0.02)
            self.text_proj = nn.Linear(text_dim, context_dim or text_dim)
        self.reference = None
        if reference_tokens and reference_encoder == "clip":
            self.reference = CLIPReferenceEncoder(reference_path, context_dim or text_dim, reference_tokens,
                                                  emb_dim, dtype=reference_dtype)
        elif reference_tokens:
            self.reference = ReferenceEncoder(context_dim or text_dim, reference_tokens, emb_dim)
        self.pooled_proj = None
        if pooled_dim is not None:
            self.null_pooled = nn.Parameter(torch.zeros(1, pooled_dim))
            self.pooled_proj = nn.Linear(pooled_dim, emb_dim)

    def zero_optional_embedders(self) -> None:
        """Zero the last layer of each optional embedder: a new condition starts with no effect
        (networks call this at the end of their weight initialisation)."""
        for name in self.OPTIONAL_EMBEDDERS:
            embedder = getattr(self, name)
            if embedder is not None:
                nn.init.zeros_(embedder.mlp[-1].weight)
                nn.init.zeros_(embedder.mlp[-1].bias)
        if self.reference is not None:
            nn.init.zeros_(self.reference.to_embedding[-1].weight)
            nn.init.zeros_(self.reference.to_embedding[-1].bias)

    @property
    def extra_channels(self) -> int:
        """Channels concatenated to ``x_t`` before the first layer."""
        return (self.in_channels + 1) * self.known_frames + self.in_channels * self.low_res

    # ------------------------------------------------------------------ inputs
    def input(self, x: Tensor, cond: Optional[Conditioning]) -> Tensor:
        # x: (B, C, T, H, W) -> (B, C + extra_channels, T, H, W)
        B, C, T, H, W = x.shape
        parts = [x]
        if cond is not None and cond.control is not None:
            # Refused rather than ignored: a caller passing control maps expects them to steer
            # the output, and a silently unchanged result would look like a weak ControlNet.
            raise ValueError(f"cond.control {tuple(cond.control.shape)}: a denoiser does not read "
                             "control maps itself; run it with a ControlNet (vidiff.models.ControlledNetwork)")
        if cond is not None and cond.known is not None and not self.known_frames:
            raise ValueError("this network was built without known-frame inputs "
                             "(known_frames=false); condition it by reconstruction guidance instead")
        if cond is not None and cond.low_res is not None and not self.low_res:
            raise ValueError("this network was built without a low-resolution input (low_res=false)")
        if self.known_frames:
            if cond is not None and cond.known is not None:
                if cond.known.shape != x.shape or cond.mask.shape != (B, 1, T, H, W):
                    raise ValueError(f"known frames {tuple(cond.known.shape)} / mask "
                                     f"{tuple(cond.mask.shape)} must be {tuple(x.shape)} / {(B, 1, T, H, W)}")
                mask = cond.mask.to(x.dtype)
                if self.known_in_place:
                    parts[0] = x = mask * cond.known.to(x.dtype) + (1 - mask) * x   # (B, C, T, H, W)
                parts += [cond.known.to(x.dtype) * mask, mask]
            else:
                parts += [x.new_zeros(B, C + 1, T, H, W)]
        if self.low_res:
            if cond is None or cond.low_res is None:
                raise ValueError("a super-resolution network needs cond.low_res (B, C, T, h, w)")
            low = cond.low_res.to(x.dtype)
            if low.shape[:3] != (B, C, T):
                raise ValueError(f"low_res {tuple(low.shape)} must be (B={B}, C={C}, T={T}, h, w)")
            # Upsample each frame to the output size (trilinear with T fixed = bilinear per frame).
            parts.append(F.interpolate(low, size=(T, H, W), mode="trilinear", align_corners=False))
        return torch.cat(parts, dim=1) if len(parts) > 1 else x

    def forward(self, t: Tensor, cond: Optional[Conditioning], device) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        """The per-sample embedding ``(B, emb_dim)`` and the cross-attention tokens
        ``(B, L, context_dim)`` with their mask ``(B, L)`` (None, None without text), a
        reference image encoded once for both."""
        reference = self.encode_reference(cond)
        return self.embedding(t, cond, reference), *self.context(cond, t.shape[0], device, reference)

    def encode_reference(self, cond: Optional[Conditioning]) -> Optional[tuple[Tensor, Tensor]]:
        """``cond.reference`` through the reference encoder: ``(tokens (B, K, C), vector (B, emb_dim))``,
        or None without a reference; refused by a network built without the pathway."""
        if cond is None or cond.reference is None:
            return None
        if self.reference is None:
            raise ValueError(f"cond.reference {tuple(cond.reference.shape)}: this network was built without "
                             "a reference pathway (reference: true); remove the reference image")
        # Both encoders end in to_tokens/to_embedding MLPs: the image takes their dtype.
        return self.reference(cond.reference.to(self.reference.to_tokens[0].weight.dtype))

    def embedding(self, t: Tensor, cond: Optional[Conditioning],
                  reference: Optional[tuple[Tensor, Tensor]] = None) -> Tensor:
        # t: (B,) in [0, 1] -> (B, emb_dim); reference: encode_reference(cond)
        emb = self.time(t)
        B = t.shape[0]
        zeros = t.new_zeros(B)
        if self.known_noise is not None:
            level = cond.known_noise if cond is not None and cond.known_noise is not None else zeros
            emb = emb + self.known_noise(level)
        if self.stride is not None:
            stride = cond.frame_stride if cond is not None and cond.frame_stride is not None else zeros + 1
            emb = emb + self.stride(stride)
        if self.low_res_noise is not None:
            level = cond.low_res_noise if cond is not None and cond.low_res_noise is not None else zeros
            emb = emb + self.low_res_noise(level)
        if reference is not None:
            # The reference's vector joins the per-sample embedding as the pooled prompt does
            # (FiLM reaches every layer; the tokens reach only the cross-attention levels).
            vector = reference[1]                                                 # (B, emb_dim)
            emb = emb + vector.to(emb.dtype) * self._reference_kept(cond, B, t.device)[:, None].to(emb.dtype)
        if self.pooled_proj is not None:
            pooled = self.null_pooled.expand(B, -1)
            if cond is not None and cond.text_pooled is not None:
                keep = ~cond.text_dropped(B, t.device)
                pooled = torch.where(keep[:, None], cond.text_pooled.to(pooled.dtype), pooled)
            emb = emb + self.pooled_proj(pooled)
        return emb

    def explicit_null(self, batch: int = 1) -> Conditioning:
        """The learned null text written out as text fields: ``text (batch, 1, text_dim)``,
        its mask and ``text_pooled (batch, pooled_dim)``. A row conditioned on it computes
        exactly what a text-dropped row does, but its text is a tensor one can optimise
        (null-text inversion starts from it)."""
        if self.text_dim is None:
            raise ValueError("this network takes no text: it has no null text to write out")
        text = self.null_text.detach().expand(batch, -1, -1).clone()          # (batch, 1, text_dim)
        pooled = None if self.pooled_proj is None else self.null_pooled.detach().expand(batch, -1).clone()
        return Conditioning(text=text, text_mask=torch.ones(batch, 1, dtype=torch.bool, device=text.device),
                            text_pooled=pooled)

    def context(self, cond: Optional[Conditioning], batch: int, device,
                reference: Optional[tuple[Tensor, Tensor]] = None) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """Cross-attention tokens ``(B, L, context_dim)`` and mask ``(B, L)``; (None, None) without
        text. ``reference``: :meth:`encode_reference` of ``cond``, whose tokens are appended."""
        if self.text_dim is None:
            return None, None
        context, mask = self._text_context(cond, batch, device)               # (B, L, C), (B, L)
        if reference is not None:
            tokens = reference[0]                                               # (B, K, C)
            keep = self._reference_kept(cond, batch, device)
            context = torch.cat([context, tokens.to(context.dtype)], 1)         # (B, L + K, C)
            mask = torch.cat([mask, keep[:, None].expand(-1, tokens.shape[1])], 1)
        return context, mask

    @staticmethod
    def _reference_kept(cond: Conditioning, batch: int, device) -> Tensor:
        """``(B,)`` bool: rows whose reference counts. A row that drops its prompt drops its
        reference too (one null for guidance), and ``reference_mask`` hides placeholders."""
        keep = ~cond.text_dropped(batch, device)
        if cond.reference_mask is not None:
            keep = keep & cond.reference_mask.to(device=device, dtype=torch.bool)
        return keep

    def _text_context(self, cond: Optional[Conditioning], batch: int, device) -> tuple[Tensor, Tensor]:
        null = self.null_text.expand(batch, -1, -1)                          # (B, 1, text_dim)
        if cond is None or cond.text is None:
            return self.text_proj(null), torch.ones(batch, 1, dtype=torch.bool, device=device)
        text = cond.text
        if text.shape[0] != batch or text.shape[-1] != self.text_dim:
            raise ValueError(f"text embeddings {tuple(text.shape)} must be (B={batch}, L, {self.text_dim})")
        L = text.shape[1]
        mask = cond.text_mask.to(torch.bool) if cond.text_mask is not None else \
            torch.ones(batch, L, dtype=torch.bool, device=device)
        drop = cond.text_dropped(batch, device)                              # (B,)
        text = torch.where(drop[:, None, None], null.to(text.dtype).expand(-1, L, -1), text)
        mask = mask | drop[:, None]
        return self.text_proj(text.to(self.text_proj.weight.dtype)), mask


class ReferenceEncoder(nn.Module):
    """A reference image ``(B, 3, H, W)`` in [-1, 1] -> ``tokens (B, K, dim)`` for cross-attention
    and ``vector (B, emb_dim)`` for the per-sample embedding (its last layer starts at zero).

    A small convolutional encoder at a fixed working size (the image is resized to
    :attr:`SIZE` first, so any size is accepted), pooled over the whole image (mean and max of
    every channel) before the tokens are made: they say *what* the image shows (colour, shape,
    texture), not *where*, so a reference sets the subject without pinning a position. Its
    convolutions are group-normalised, and the raw image's per-channel mean and extremes join
    the pooled features: a small subject on a plain background is a few pixels of the image,
    and without both its features vanish in the pooling (a first version without them learned
    a constant in 500 steps).
    """

    SIZE = 32

    def __init__(self, dim: int, tokens: int, emb_dim: int, width: int = 64):
        super().__init__()
        self.tokens, self.dim = tokens, dim

        def block(c_in: int, c_out: int, stride: int) -> list:
            return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(8, c_out), nn.SiLU()]
        self.convs = nn.Sequential(*block(3, width // 2, 1), *block(width // 2, width, 2),
                                   *block(width, width, 2), nn.Conv2d(width, width, 3, padding=1))
        features = 2 * width + 9
        self.to_tokens = nn.Sequential(nn.Linear(features, dim), nn.SiLU(), nn.Linear(dim, tokens * dim))
        self.to_embedding = nn.Sequential(nn.Linear(features, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        # image: (B, 3, H, W) -> (B, K, dim), (B, emb_dim)
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"cond.reference must be (B, 3, H, W) in [-1, 1], got {tuple(image.shape)}")
        x = F.interpolate(image, size=(self.SIZE, self.SIZE), mode="bilinear", antialias=True,
                          align_corners=False)                                 # (B, 3, S, S)
        h = self.convs(x)                                                       # (B, W, S/4, S/4)
        colour = torch.cat([x.mean((2, 3)), x.amax((2, 3)), x.amin((2, 3))], 1)  # (B, 9)
        pooled = torch.cat([h.mean((2, 3)), h.amax((2, 3)), colour], 1)         # (B, 2W + 9)
        return self.to_tokens(pooled).view(-1, self.tokens, self.dim), self.to_embedding(pooled)
