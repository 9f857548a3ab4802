"""The layers of :class:`~vidiff.models.vae.VideoVAE`: causal convolutions, per-frame norms,
residual blocks, per-frame attention, causal down/upsampling, and the encoder and decoder.

Every temporal op is causal and carries its state across chunks in ``cache`` (a dict keyed by
module; None runs the whole clip in one pass), which is what makes chunked coding exact.
Configs are :class:`~vidiff.models.vae_config.VAEConfig`.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidiff.models.layers import Attention, checkpoint_scoped, conv3d
from vidiff.models.vae_config import VAEConfig

Cache = Optional[dict]   # module -> carried state; None = the whole clip in one pass

#################################################################################
#                                    Layers                                     #
#################################################################################


class CausalConv3d(nn.Module):
    """``(B, C_in, T, H, W) -> (B, C_out, T, H', W')``: a ``(kt, k, k)`` conv whose output frame
    ``t`` sees input frames ``t - kt + 1 .. t``; the past is padded by repeating frame 0, or,
    in a later chunk, taken from the cache. Spatial padding is zeros, spatial stride optional."""

    def __init__(self, c_in: int, c_out: int, kernel: int = 3, temporal_kernel: int = 3, stride: int = 1):
        super().__init__()
        self.kt = temporal_kernel
        self.conv = nn.Conv3d(c_in, c_out, (temporal_kernel, kernel, kernel), stride=(1, stride, stride),
                              padding=(0, kernel // 2, kernel // 2))

    def forward(self, x: Tensor, cache: Cache = None) -> Tensor:
        if self.kt > 1:
            past = cache.get(self) if cache is not None else None
            if past is None:
                past = x[:, :, :1].expand(-1, -1, self.kt - 1, -1, -1)       # (B, C, kt-1, H, W)
            x = torch.cat([past, x], dim=2)                                   # (B, C, kt-1+T, H, W)
            if cache is not None:  # a copy, so the cache does not pin the whole chunk
                cache[self] = x[:, :, -(self.kt - 1):].clone()
        return conv3d(x, self.conv)                                          # (B, C_out, T, H', W')


class FactorizedCausalConv(nn.Module):
    """A 3x3 per-frame conv, then a causal temporal conv initialised to the identity (dirac),
    so a decoder built from it starts as an image decoder: ``(B, C_in, T, H, W) -> (B, C_out, T, H, W)``."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.spatial = CausalConv3d(c_in, c_out, 3, temporal_kernel=1)
        self.temporal = CausalConv3d(c_out, c_out, 1, temporal_kernel=3)
        nn.init.zeros_(self.temporal.conv.weight)
        nn.init.zeros_(self.temporal.conv.bias)
        with torch.no_grad():  # only the current-frame tap of each channel is 1
            self.temporal.conv.weight[:, :, -1, 0, 0] = torch.eye(c_out)

    def forward(self, x: Tensor, cache: Cache = None) -> Tensor:
        return self.temporal(self.spatial(x), cache)                         # (B, C_out, T, H, W)


def make_conv(c_in: int, c_out: int, mode: str) -> nn.Module:
    """3x3 spatial conv of a given temporal ``mode``: "3d" (3x3x3 causal), "2d" (per frame),
    "2d+t" (per frame, then a causal temporal conv)."""
    if mode == "2d+t":
        return FactorizedCausalConv(c_in, c_out)
    return CausalConv3d(c_in, c_out, 3, temporal_kernel=3 if mode == "3d" else 1)


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm with statistics per frame: ``(B, C, T, H, W) -> (B, C, T, H, W)``.

    Statistics over ``(C/G, H, W)`` of each frame, never across time, so a frame's output
    does not depend on other frames (causality and chunking stay exact).
    """

    def forward(self, x: Tensor) -> Tensor:
        B, C, T, H, W = x.shape
        # Frames as the batch of torch's fused group_norm: 2-3x faster (forward and backward)
        # than composing var_mean and a multiply-add, copies included.
        frames = x.transpose(1, 2).reshape(B * T, C, H, W)                  # (B*T, C, H, W)
        y = F.group_norm(frames, self.num_groups, self.weight, self.bias, self.eps)
        return y.view(B, T, C, H, W).transpose(1, 2).contiguous()           # (B, C, T, H, W)


class ChannelRMSNorm(nn.Module):
    """RMS normalisation over the channels of each pixel, with a learned gain and bias:
    ``(B, C, T, H, W) -> (B, C, T, H, W)``.

    No statistic spans pixels, let alone frames: causality and chunking stay exact, and a
    spatial tile normalises exactly as it would inside the whole frame, so tiled decoding only
    differs from whole-frame decoding by the conv padding at tile borders (and the middle
    attention, when enabled), which the blend hides.
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps, self.scale = eps, channels ** 0.5
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        # ||x|| / sqrt(C) is the RMS; the norm is clamped at eps, so zeros stay finite. Not
        # F.normalize: torch's vector norm over the channel dim of a (B, C, T, H, W) tensor is
        # a slow strided reduction on CPU (a quarter of a vae-s training step;
        # benchmarks/vae_speed.py times both).
        y = _RMSNormalize.apply(x, self.eps ** 2) * self.scale               # (B, C, T, H, W)
        return torch.addcmul(self.bias.view(shape), y, self.weight.view(shape))


class _RMSNormalize(torch.autograd.Function):
    """``x / max(||x||, sqrt(eps2))`` over dim 1: ``(B, C, ...) -> (B, C, ...)``.

    The forward sums the squares channel by channel, in float32 and in a fixed order, so a
    pixel's result does not depend on how many frames share the call: chunked coding equals
    whole-clip coding to the last bit (``x.square().sum(1)`` takes another summation order for
    some clip lengths, and ``F.normalize`` is slow). The backward is the closed form
    ``r g - r^3 x <g, x>`` (``r = 1 / ||x||``; the clamped pixels' norm is a constant).
    """

    @staticmethod
    def forward(ctx, x: Tensor, eps2: float) -> Tensor:
        total = x[:, :1].to(torch.promote_types(x.dtype, torch.float32)).square()   # (B, 1, ...)
        for c in range(1, x.shape[1]):
            total.addcmul_(x[:, c:c + 1], x[:, c:c + 1])
        unclamped = total > eps2
        inv = torch.rsqrt(total.clamp_min_(eps2)).to(x.dtype)                # (B, 1, ...)
        ctx.save_for_backward(x, inv, unclamped)
        return x * inv

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, inv, unclamped = ctx.saved_tensors
        dot = (grad * x).sum(1, keepdim=True)                                # (B, 1, ...)
        return grad * inv - x * (inv.pow(3) * dot * unclamped), None


def make_norm(channels: int, cfg: VAEConfig) -> nn.Module:
    """The config's per-frame normalisation: "channel" (per pixel) or "group" (per frame)."""
    return ChannelRMSNorm(channels) if cfg.norm == "channel" else FrameGroupNorm(cfg.norm_groups, channels)


class ResBlock(nn.Module):
    """Norm-SiLU-conv twice, plus a (1x1x1 when the width changes) skip:
    ``(B, C_in, T, H, W) -> (B, C_out, T, H, W)``."""
    fsdp_unit = True   # the trainer's FSDP shards (all-gathers, frees) each block on its own

    def __init__(self, c_in: int, c_out: int, mode: str, cfg: VAEConfig):
        super().__init__()
        self.norm1 = make_norm(c_in, cfg)
        self.conv1 = make_conv(c_in, c_out, mode)
        self.norm2 = make_norm(c_out, cfg)
        self.conv2 = make_conv(c_out, c_out, mode)
        self.skip = CausalConv3d(c_in, c_out, 1, temporal_kernel=1) if c_in != c_out else None

    def forward(self, x: Tensor, cache: Cache = None) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)), cache)                          # (B, C_out, T, H, W)
        h = self.conv2(F.silu(self.norm2(h)), cache)                          # (B, C_out, T, H, W)
        return (x if self.skip is None else self.skip(x)) + h


class FrameAttention(nn.Module):
    """Residual self-attention among the pixels of each frame (per frame, so causal):
    ``(B, C, T, H, W) -> (B, C, T, H, W)``; the output projection starts at zero. The
    attention's kind is ``"spatial"`` and its processors see the layout ``(B, T, H, W)``."""
    fsdp_unit = True

    def __init__(self, dim: int, cfg: VAEConfig):
        super().__init__()
        self.norm = make_norm(dim, cfg)
        heads = cfg.heads(dim)
        self.attn = Attention(dim, heads, zero_init=True, kind="spatial")

    def forward(self, x: Tensor, cache: Cache = None) -> Tensor:
        B, C, T, H, W = x.shape
        tokens = self.norm(x).permute(0, 2, 3, 4, 1).reshape(B * T, H * W, C)   # (B*T, H*W, C)
        out = self.attn(tokens, layout=(B, T, H, W)).view(B, T, H, W, C)       # (B, T, H, W, C)
        out = out.permute(0, 4, 1, 2, 3)                                       # (B, C, T, H, W)
        return x + out


def _first_chunk(module: nn.Module, cache: Cache) -> bool:
    """Whether this call sees frame 0 (always in whole-clip mode); marks the cache."""
    if cache is None:
        return True
    first = module not in cache
    cache[module] = True
    return first


class Downsample(nn.Module):
    """Halves H and W (stride-2 3x3 conv) and, with ``temporal=2``, time: frame 0 alone (repeated
    to fill a group), then each pair of frames, folded into channels before the conv.
    ``(B, C, T, H, W) -> (B, C, 1 + (T-1)/2 or T, H/2, W/2)``; a later chunk has no frame 0, so
    there ``T -> T/2``."""

    def __init__(self, channels: int, temporal: int):
        super().__init__()
        self.temporal = temporal
        self.conv = CausalConv3d(channels * temporal, channels, 3, temporal_kernel=1, stride=2)

    def forward(self, x: Tensor, cache: Cache = None) -> Tensor:
        s = self.temporal
        if s > 1:
            if _first_chunk(self, cache):
                x = torch.cat([x[:, :, :1].expand(-1, -1, s, -1, -1), x[:, :, 1:]], 2)  # (B, C, s*T', H, W)
            B, C, T, H, W = x.shape
            x = x.view(B, C, T // s, s, H, W).transpose(2, 3).reshape(B, C * s, T // s, H, W)
        return self.conv(x)                                                   # (B, C, T', H/2, W/2)


class Upsample(nn.Module):
    """Mirror of :class:`Downsample`: with ``temporal=2`` a 1x1x1 conv makes two frames of each
    latent frame, of which latent frame 0 keeps only the last; then nearest 2x and a 3x3 conv
    to the next level's width (narrower, so the conv at the larger size costs less).
    ``(B, C_in, t, H, W) -> (B, C_out, 1 + 2(t-1) or t, 2H, 2W)`` (a later chunk: ``t -> 2t``)."""

    def __init__(self, c_in: int, c_out: int, temporal: int, mode: str):
        super().__init__()
        self.temporal = temporal
        self.time = CausalConv3d(c_in, c_in * temporal, 1, temporal_kernel=1) if temporal > 1 else None
        self.conv = make_conv(c_in, c_out, mode)

    def forward(self, x: Tensor, cache: Cache = None) -> Tensor:
        s = self.temporal
        if s > 1:
            first = _first_chunk(self, cache)
            B, C, t, H, W = x.shape
            x = self.time(x).view(B, C, s, t, H, W).transpose(2, 3).reshape(B, C, t * s, H, W)
            if first:
                x = x[:, :, s - 1:]                                          # (B, C, 1 + s(t-1), H, W)
        x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")    # (B, C_in, T, 2H, 2W)
        return self.conv(x, cache)                                           # (B, C_out, T, 2H, 2W)


class _Coder(nn.Module):
    """conv_in, a list of blocks (each ``block(x, cache)``), norm, SiLU, conv_out."""

    def _run(self, x: Tensor, cache: Cache) -> Tensor:
        h = self.conv_in(x, cache)
        for block in self.blocks:
            if self.grad_checkpoint and cache is None and self.training and torch.is_grad_enabled():
                h = checkpoint_scoped(block, h)
            else:
                h = block(h, cache)
        return self.conv_out(F.silu(self.norm_out(h)), cache)


def _level_mode(cfg: VAEConfig, level: int, temporal_mode: str) -> str:
    """The conv mode at ``level``: ``temporal_mode`` where the level mixes frames, else per frame."""
    return temporal_mode if cfg.mixes_frames(level) else "2d"


def _middle(width: int, mode: str, cfg: VAEConfig) -> list[nn.Module]:
    attn = [FrameAttention(width, cfg)] if cfg.mid_attention else []
    return [ResBlock(width, width, mode, cfg), *attn, ResBlock(width, width, mode, cfg)]


class Encoder(_Coder):
    """``(B, in_channels, T, H, W) -> (B, 2 * latent_channels, 1 + (T-1)/tf, H/sf, W/sf)`` (mean, logvar)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        temporal, halvings = ("3d" if cfg.kind == "3d" else "2d"), int(math.log2(cfg.temporal_factor))
        deepest = _level_mode(cfg, len(cfg.channels) - 1, temporal)
        self.grad_checkpoint = cfg.grad_checkpoint
        self.conv_in = make_conv(cfg.in_channels, cfg.channels[0], _level_mode(cfg, 0, temporal))
        blocks, c = [], cfg.channels[0]
        for level, width in enumerate(cfg.channels):
            for _ in range(cfg.blocks_per_level):
                blocks.append(ResBlock(c, width, _level_mode(cfg, level, temporal), cfg))
                c = width
            if level < len(cfg.channels) - 1:
                blocks.append(Downsample(c, 2 if level < halvings else 1))
        self.blocks = nn.ModuleList(blocks + _middle(c, deepest, cfg))
        self.norm_out = make_norm(c, cfg)
        self.conv_out = make_conv(c, 2 * cfg.latent_channels, deepest)

    def forward(self, x: Tensor, cache: Cache = None) -> Tensor:
        return self._run(x, cache)                                           # (B, 2*Cz, t, h, w)


class Decoder(_Coder):
    """``(B, latent_channels, t, h, w) -> (B, in_channels, 1 + tf(t-1), h*sf, w*sf)``."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        temporal, halvings = ("3d" if cfg.kind == "3d" else "2d+t"), int(math.log2(cfg.temporal_factor))
        deepest = _level_mode(cfg, len(cfg.channels) - 1, temporal)
        self.grad_checkpoint = cfg.grad_checkpoint
        c = cfg.channels[-1]
        self.conv_in = make_conv(cfg.latent_channels, c, deepest)
        blocks = _middle(c, deepest, cfg)
        for level in reversed(range(len(cfg.channels))):
            for _ in range(cfg.blocks_per_level + 1):
                blocks.append(ResBlock(c, cfg.channels[level], _level_mode(cfg, level, temporal), cfg))
                c = cfg.channels[level]
            if level > 0:   # the upsampling conv runs at the next level's size, in its mode
                blocks.append(Upsample(c, cfg.channels[level - 1], 2 if level - 1 < halvings else 1,
                                       _level_mode(cfg, level - 1, temporal)))
                c = cfg.channels[level - 1]
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = make_norm(c, cfg)
        self.conv_out = make_conv(c, cfg.in_channels, _level_mode(cfg, 0, temporal))

    def forward(self, z: Tensor, cache: Cache = None) -> Tensor:
        return self._run(z, cache)                                           # (B, C, T, H, W)
