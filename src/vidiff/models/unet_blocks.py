"""The blocks of :class:`~vidiff.models.unet.UNet3D` and the layout they share.

Inside the network a clip is ``h (B*T, C, H, W)`` in channels-last memory: one
``(B, T, H, W, C)`` buffer that the temporal conv and the token sequences of attention read
without copies. Every block maps ``(h, ctx) -> h`` with :class:`_Context` holding what the
whole forward shares (batch and frame counts, the condition embedding, text, rotary tables).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidiff.models.layers import Attention, FeedForward, conv3d, rotary_cos_sin_3d, zero_module
from vidiff.models.unet_config import UNetConfig


#################################################################################
#                      Layout helpers (views, not copies)                       #
#################################################################################
# Inside the network a clip is h: (B*T, C, H, W) in channels-last memory, a (B, T, H, W, C)
# buffer. `reshape` is a free view whenever that holds and a (correct) copy otherwise.

def _tokens(h: Tensor) -> Tensor:
    # (N, C, H, W) channels-last -> (N, H*W, C)
    N, C, H, W = h.shape
    return h.permute(0, 2, 3, 1).reshape(N, H * W, C)


def _frames(x: Tensor, H: int, W: int) -> Tensor:
    # (N, H*W, C) -> (N, C, H, W) channels-last
    return x.reshape(x.shape[0], H, W, x.shape[-1]).permute(0, 3, 1, 2)


def _to_video(h: Tensor, B: int) -> Tensor:
    # (B*T, C, H, W) -> (B, C, T, H, W) channels-last-3d
    N, C, H, W = h.shape
    return h.permute(0, 2, 3, 1).reshape(B, N // B, H, W, C).permute(0, 4, 1, 2, 3)


def _from_video(v: Tensor) -> Tensor:
    # (B, C, T, H, W) -> (B*T, C, H, W) channels-last (a copy when v is plain contiguous)
    B, C, T, H, W = v.shape
    return v.permute(0, 2, 3, 4, 1).reshape(B * T, H, W, C).permute(0, 3, 1, 2)


@dataclass
class _Context:
    """What every block needs besides the activations, computed once per forward."""
    B: int
    T: int
    emb: Tensor                          # (B, 1 or T, emb_dim), already through SiLU
    text: Optional[Tensor]               # (B, S, context_dim)
    text_mask: Optional[Tensor]          # (B, S) bool
    rope: dict                           # head width -> (cos, sin) each (T, head width)
    pixels: Optional[Tensor] = None      # (B*T, C_in', H, W): the input at full resolution
    rope_full: dict = field(default_factory=dict)   # (head width, H, W) -> (cos, sin) each (T*H*W, d)

    def first_rows(self, b: int) -> "_Context":
        """The context of the first ``b`` clips of the batch."""
        return _Context(b, self.T, self.emb[:b], None if self.text is None else self.text[:b],
                        None if self.text_mask is None else self.text_mask[:b], self.rope,
                        None if self.pixels is None else self.pixels[:b * self.T], self.rope_full)

    def rope_3d(self, dim: int, H: int, W: int, device) -> tuple[Tensor, Tensor]:
        """Full attention's 3D rotary tables for an ``H x W`` grid, made once per forward and
        shared by every block on that grid (the down, middle and up blocks of a level)."""
        key = (dim, H, W)
        if key not in self.rope_full:
            self.rope_full[key] = rotary_cos_sin_3d(self.T, H, W, dim, device=device)
        return self.rope_full[key]


#################################################################################
#                                    Blocks                                     #
#################################################################################


class SpatioTemporalConv(nn.Module):
    """A 3x3 spatial conv then a temporal conv (identity at init), or one full 3D conv.

    ``(B*T, C_in, H, W) -> (B*T, C_out, H, W)``; with ``T == 1`` only the spatial part runs
    (for a full 3D conv: its centre frame taps, which is what zero padding would compute).
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, full3d: bool):
        super().__init__()
        self.kernel, self.full3d = kernel, full3d
        if full3d:
            self.conv = nn.Conv3d(c_in, c_out, (kernel, 3, 3), padding=(kernel // 2, 1, 1))
            with torch.no_grad():  # inflate: the other frame taps start at zero
                centre = self.conv.weight[:, :, kernel // 2].clone()
                self.conv.weight.zero_()
                self.conv.weight[:, :, kernel // 2] = centre
        else:
            self.spatial = nn.Conv2d(c_in, c_out, 3, padding=1)
            self.temporal = nn.Conv2d(c_out, c_out, (kernel, 1), padding=(kernel // 2, 0)) \
                if kernel > 1 else None
            self.reset_temporal()

    def reset_temporal(self) -> None:
        if not self.full3d and self.temporal is not None:
            nn.init.dirac_(self.temporal.weight)
            nn.init.zeros_(self.temporal.bias)

    def forward(self, h: Tensor, B: int) -> Tensor:
        _, _, H, W = h.shape
        T = h.shape[0] // B
        if self.full3d:
            if T == 1:
                return F.conv2d(h, self.conv.weight[:, :, self.kernel // 2], self.conv.bias, padding=1)
            v = conv3d(_to_video(h, B), self.conv)                           # (B, C_out, T, H, W)
            return _from_video(v)                                            # (B*T, C_out, H, W)
        h = self.spatial(h)                                                  # (B*T, C_out, H, W)
        if T > 1 and self.temporal is not None:
            # A (k, 1) conv2d on the same buffer seen as a channels-last (B, C, T, H*W) image.
            y = self.temporal(_to_video(h, B).flatten(3))                    # (B, C_out, T, H*W)
            h = _from_video(y.unflatten(3, (H, W)))                          # (B*T, C_out, H, W)
        return h


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, GroupNorm-FiLM-SiLU-(dropout)-conv, plus a (1x1) skip.

    ``(B*T, C_in, H, W), emb (B, E) -> (B*T, C_out, H, W)``. Norms are per frame, so frames
    are independent wherever the temporal convs are the identity.
    """
    fsdp_unit = True   # the trainer's FSDP shards (all-gathers, frees) each block on its own

    def __init__(self, c_in: int, c_out: int, emb_dim: int, cfg: UNetConfig):
        super().__init__()
        self.norm1 = nn.GroupNorm(cfg.norm_groups, c_in)
        self.conv1 = SpatioTemporalConv(c_in, c_out, cfg.temporal_kernel, cfg.conv3d)
        # The FiLM scale/shift replaces norm2's affine, saving a pass over the activations.
        self.norm2 = nn.GroupNorm(cfg.norm_groups, c_out, affine=False)
        self.film = nn.Linear(emb_dim, 2 * c_out)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv2 = SpatioTemporalConv(c_out, c_out, cfg.temporal_kernel, cfg.conv3d)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, h: Tensor, ctx: _Context) -> Tensor:
        N, _, H, W = h.shape
        x = self.conv1(F.silu(self.norm1(h)), ctx.B)                       # (B*T, C, H, W)
        C = x.shape[1]
        scale, shift = self.film(ctx.emb)[:, :, None, :].chunk(2, -1)     # (B, 1|T, 1, C) each
        x = _tokens(self.norm2(x)).view(ctx.B, ctx.T, H * W, C)            # (B, T, H*W, C)
        x = F.silu(torch.addcmul(shift, x, scale + 1))                     # (B, T, H*W, C)
        x = self.dropout(_frames(x.view(N, H * W, C), H, W))               # (B*T, C, H, W)
        return self.skip(h) + self.conv2(x, ctx.B)                         # (B*T, C, H, W)


class AttentionBlock(nn.Module):
    """Spatial self-attention, cross-attention to text, temporal self-attention, full
    self-attention (optional), MLP.

    Pre-LayerNorm residual sublayers on ``(B*T, C, H, W) -> (B*T, C, H, W)``. Temporal
    attention runs over the frames at each pixel with rotary frame positions; full attention
    runs over every token of the clip with 3D rotary positions. Both output projections start
    at zero. Attention kinds: ``attn_s`` "spatial", ``attn_c`` "cross", ``attn_t``
    "temporal", ``attn_full`` "full".

    Why full attention: factorized layers reach another place at another frame only in two
    hops (a spatial, then a temporal layer), and a temporal layer sees one cell through time.
    An object that crosses cells while it moves is then hard to follow, and a forecast loses
    its velocity (docs/benchmarks.md, "digits").
    """
    fsdp_unit = True
    # A checkpoint without full attention initialises a block with it (train.init_from): the
    # zero out-projection makes the added layer the identity.
    ADDABLE = ("norm_full", "attn_full")

    def __init__(self, dim: int, cfg: UNetConfig, spatial: bool, cross: bool, temporal: bool,
                 context_dim: int, full: bool = False):
        super().__init__()
        heads = cfg.heads(dim)

        def sub(on: bool, kind: str, **kw):
            return (nn.LayerNorm(dim), Attention(dim, heads, kind=kind, **kw)) if on else (None, None)
        self.norm_s, self.attn_s = sub(spatial, "spatial")
        self.norm_c, self.attn_c = sub(cross, "cross", context_dim=context_dim)
        self.norm_t, self.attn_t = sub(temporal, "temporal", zero_init=True)
        self.norm_full, self.attn_full = sub(full, "full", zero_init=True)
        self.norm_f = nn.LayerNorm(dim) if cfg.ff_mult > 0 else None
        self.ff = FeedForward(dim, cfg.ff_mult) if cfg.ff_mult > 0 else None

    def forward(self, h: Tensor, ctx: _Context) -> Tensor:
        N, C, H, W = h.shape
        B, T, L = ctx.B, ctx.T, H * W
        layout = (B, T, H, W)                                                   # for processors
        x = _tokens(h)                                                          # (B*T, L, C)
        if self.attn_s is not None:
            x = x + self.attn_s(self.norm_s(x), layout=layout)                  # (B*T, L, C)
        if self.attn_c is not None:
            # Cross-attention treats queries independently: one (B, T*L) sequence per clip
            # shares the text keys and values across frames instead of repeating them T times.
            xb = x.reshape(B, T * L, C)                                         # (B, T*L, C)
            a = self.attn_c(self.norm_c(xb), ctx.text, ctx.text_mask, layout=layout)   # (B, T*L, C)
            x = (xb + a).view(N, L, C)
        if self.attn_t is not None and T > 1:
            xt = x.reshape(B, T, L, C).transpose(1, 2).reshape(B * L, T, C)        # (B*L, T, C)
            a = self.attn_t(self.norm_t(xt), rope=ctx.rope[self.attn_t.head_dim],
                            layout=layout)                                      # (B*L, T, C)
            x = (x.reshape(B, T, L, C) + a.view(B, L, T, C).transpose(1, 2)).view(N, L, C)
        if self.attn_full is not None:
            # (B*T, L, C) is already one (B, T*L, C) sequence per clip, frame-major as the
            # 3D rotary table is laid out.
            rope = ctx.rope_3d(self.attn_full.head_dim, H, W, x.device)        # (T*L, d) x 2
            a = self.attn_full(self.norm_full(x.reshape(B, T * L, C)), rope=rope, layout=layout)
            x = x + a.view(N, L, C)                                             # (B*T, L, C)
        if self.ff is not None:
            x = x + self.ff(self.norm_f(x))                                     # (B*T, L, C)
        return _frames(x, H, W)                                                 # (B*T, C, H, W)


class Layer(nn.Module):
    """One U-Net stage step: a ResBlock, then an AttentionBlock where the level has one."""

    def __init__(self, res: ResBlock, attn: Optional[AttentionBlock]):
        super().__init__()
        self.res, self.attn = res, attn

    def forward(self, h: Tensor, ctx: _Context) -> Tensor:
        h = self.res(h, ctx)                                                    # (B*T, C, H, W)
        return self.attn(h, ctx) if self.attn is not None else h


class Resample(nn.Module):
    """Per-frame resize: stride-2 3x3 conv ``(B*T, C, H, W) -> (B*T, C, H/2, W/2)``, or
    nearest 2x then a 3x3 conv ``-> (B*T, C, 2H, 2W)``."""

    def __init__(self, channels: int, up: bool):
        super().__init__()
        self.up = up
        self.conv = nn.Conv2d(channels, channels, 3, stride=1 if up else 2, padding=1)

    def forward(self, h: Tensor, ctx: _Context) -> Tensor:
        if self.up:
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")               # (B*T, C, 2H, 2W)
        return self.conv(h)                                                      # (B*T, C, H', W')


class PixelHead(nn.Module):
    """A full-resolution correction after a space-to-depth stem.

    ``(B*T, C_in', H, W)`` input pixels and the coarse prediction ``(B*T, C_out, H, W)`` ->
    the prediction plus a correction from two 3x3 convs at full resolution (FiLM by the
    condition embedding between them, so the head knows the noise level). A network on a
    ``p x p`` stem rebuilds each block from coarse features: at low noise, where the answer is
    nearly its input, it blurs what it is given. The head sees the input pixels themselves.
    Its last conv starts at zero: a trained network gains the head without changing.
    """

    def __init__(self, c_in: int, c_out: int, width: int, emb_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in + c_out, width, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * width)
        self.conv2 = zero_module(nn.Conv2d(width, c_out, 3, padding=1))

    def forward(self, coarse: Tensor, ctx: _Context) -> Tensor:
        N, _, H, W = coarse.shape
        x = self.conv1(torch.cat([ctx.pixels.to(coarse.dtype), coarse], 1))     # (B*T, w, H, W)
        w = x.shape[1]
        scale, shift = self.film(ctx.emb)[:, :, None, :].chunk(2, -1)          # (B, 1|T, 1, w) each
        x = _tokens(x).view(ctx.B, ctx.T, H * W, w)                            # (B, T, H*W, w)
        x = F.silu(torch.addcmul(shift, x, scale + 1))                         # (B, T, H*W, w)
        return coarse + self.conv2(_frames(x.view(N, H * W, w), H, W))         # (B*T, C_out, H, W)
