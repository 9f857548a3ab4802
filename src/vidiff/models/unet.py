"""UNet3D: the spatiotemporal U-Net denoiser.

The network maps ``x_t (B, C, T, H, W)``, diffusion time ``t (B,)`` in ``[0, 1]`` and an
optional :class:`~vidiff.Conditioning` to a prediction ``(B, out_channels, T, H, W)`` (eps, v,
x0 or flow velocity: the parameterization lives outside, in ``vidiff.diffusion``).

Design, and why:

* **Pseudo-3D residual blocks**: each convolution is a 3x3 spatial conv followed by a temporal
  conv of ``temporal_kernel`` taps, initialised to the identity (dirac kernel), so an image
  network's behaviour is the starting point. ``conv3d=True`` uses full ``k x 3 x 3`` convs
  instead, initialised "inflated" (only the centre frame tap is non-zero).
* **Attention per level**, each part switched on by config: spatial self-attention within a
  frame, cross-attention to the text tokens, temporal self-attention across frames at each
  pixel with rotary frame positions (so 16 training frames extrapolate to 32), and an MLP. The
  temporal output projection is zero-initialised: temporal layers are exactly the identity at
  initialisation.
* **T = 1 skips every temporal op**, and every other op works per frame (per-frame GroupNorm,
  per-frame spatial attention), so images and videos train the same weights jointly.
* **Diffusion time** (and every other per-sample condition) enters by FiLM: the
  :class:`~vidiff.models.condition.ConditionEmbedder` embedding gives a scale and shift per
  residual block.
* **Speed**: activations live as ``(B*T, C, H, W)`` in channels-last memory, one
  ``(B, T, H, W, C)`` buffer that is also, without copies, the input of the temporal conv (a
  ``(k, 1)`` conv2d on ``(B, C, T, H*W)``) and the token sequences of spatial attention and
  cross-attention; only temporal attention transposes.

Extension point: ``forward(x, t, cond, residuals)`` adds ``residuals[i]`` to the ``i``-th skip
connection (in the order the encoder produces them, see :meth:`UNet3D.residual_shapes`) and
the last one to the middle block's output: how a ControlNet injects its control signal;
:meth:`UNet3D.encode` returns exactly those tensors, for a ControlNet built as a copy (its
``hint`` is the control maps' features, added to the stem's output).
Every attention layer is a shared :class:`~vidiff.models.layers.Attention` of kind
``"spatial"``, ``"cross"`` or ``"temporal"`` (the names VideoDiT uses), whose processor
:func:`~vidiff.models.layers.attention_processors` replaces for a scope; it sees the layout
``(B, T, H_i, W_i)`` of its level. ``cond.control`` is refused: control maps reach a U-Net
only through a :class:`~vidiff.models.controlnet.ControlNet`'s residuals.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidiff.config import ConfigError
from vidiff.conditioning import Conditioning
from vidiff.models.condition import ConditionEmbedder, check_reference_fields, reference_options
from vidiff.models.layers import (Attention, FeedForward, TimestepEmbedder, checkpoint_scoped,
                                 rotary_cos_sin, sinusoidal_embedding, xavier_linears, zero_module)

#################################################################################
#                                    Config                                     #
#################################################################################


@dataclass
class UNetConfig:
    """Architecture of a :class:`UNet3D`.

    Attention levels are tuples of level indices (0 = full resolution); negative indices
    count from the lowest resolution (``-1``), so ``(-1,)`` survives a change of ``channels``.
    Cross-attention layers exist only when ``text_dim`` is set (None = unconditional).
    """
    in_channels: int = 3
    out_channels: Optional[int] = None        # None: same as in_channels
    channels: tuple[int, ...] = (64, 128, 256, 256)
    blocks_per_level: int = 2
    spatial_attention: tuple[int, ...] = (-2, -1)
    cross_attention: tuple[int, ...] = (-2, -1)
    temporal_attention: tuple[int, ...] = (-2, -1)
    mid_attention: bool = True                # attention (every enabled kind) in the middle block
    head_dim: int = 64                        # heads = channels // head_dim (at least 1)
    num_heads: Optional[int] = None           # instead: this many heads at every level
    ff_mult: float = 4.0                      # MLP width of attention blocks (0: no MLP)
    text_dim: Optional[int] = None
    pooled_dim: Optional[int] = None
    known_frames: bool = False                # known/mask as extra input channels
    known_in_place: bool = False              # known pixels also replace x_t where known
    frame_stride: bool = False                # embed cond.frame_stride
    frame_embedding: bool = False             # add an absolute frame-index embedding at the input
    frame_conditioning: bool = False          # per-frame FiLM: condition x frame index through an MLP
    position_embedding: bool = False          # add a 2D sinusoidal pixel-position embedding at the input
    low_res: bool = False                     # super-resolution: upsampled low-res clip as input
    reference_tokens: int = 0                 # > 0: a reference image adds this many cross-attention tokens
    reference_encoder: str = "builtin"        # which makes them: "builtin" (trained) or "clip" (frozen + projection)
    reference_encoder_path: Optional[str] = None   # clip: a local CLIP vision model folder
    reference_encoder_dtype: str = "float32"  # clip: its parameter dtype
    patch: int = 1                            # space-to-depth stem: compute at H/patch x W/patch
    pixel_head: int = 0                       # > 0: width of a full-resolution output head (for patch > 1)
    conv3d: bool = False                      # full k x 3 x 3 convs instead of pseudo-3D
    temporal_kernel: int = 3
    norm_groups: int = 32
    emb_dim: Optional[int] = None             # None: 4 * channels[0]
    dropout: float = 0.0
    grad_checkpoint: bool = False

    def __post_init__(self):
        self.channels = tuple(self.channels)
        levels = len(self.channels)
        for ok, msg in (
            (levels > 0 and min(self.channels) >= 1, f"channels: expected one positive width per "
                                                     f"level, got {self.channels}"),
            (self.in_channels >= 1 and (self.out_channels is None or self.out_channels >= 1),
             f"in_channels/out_channels must be positive, got {self.in_channels}/{self.out_channels}"),
            (self.blocks_per_level >= 1, f"blocks_per_level must be >= 1, got {self.blocks_per_level}"),
            (self.patch >= 1, f"patch must be >= 1, got {self.patch}"),
            (self.pixel_head >= 0, f"pixel_head must be >= 0 (0: none), got {self.pixel_head}"),
            (self.temporal_kernel >= 1 and self.temporal_kernel % 2 == 1,
             f"temporal_kernel must be odd and >= 1, got {self.temporal_kernel}"),
            (0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}"),
            (self.ff_mult >= 0, f"ff_mult must be >= 0, got {self.ff_mult}"),
            (min(self.head_dim, self.norm_groups, self.num_heads or 1) >= 1 and self.num_heads != 0,
             "head_dim, num_heads and norm_groups must be >= 1"),
            *((getattr(self, n) is None or getattr(self, n) >= 1,
               f"{n} must be positive or null, got {getattr(self, n)}") for n in ("text_dim", "pooled_dim", "emb_dim")),
        ):
            if not ok:
                raise ConfigError(f"UNetConfig.{msg}")
        check_reference_fields(self, "UNetConfig")
        bad = [c for c in self.channels if c % self.norm_groups]
        if bad:
            raise ConfigError(f"UNetConfig.channels: every width must be divisible by "
                              f"norm_groups={self.norm_groups}; {bad} are not")
        for name in ("spatial_attention", "cross_attention", "temporal_attention"):
            setattr(self, name, tuple(getattr(self, name)))
            out = [v for v in getattr(self, name) if not -levels <= v < levels]
            if out:
                raise ConfigError(f"UNetConfig.{name}: levels {out} do not exist; with {levels} "
                                  f"levels use 0..{levels - 1} or -{levels}..-1")
        by = f"num_heads={self.num_heads}" if self.num_heads else f"head_dim={self.head_dim}"
        for level, c in enumerate(self.channels):
            mid = self.mid_attention and level == levels - 1
            uneven = c % self.num_heads if self.num_heads else c >= self.head_dim and c % self.head_dim
            if (any(self.attends(level)) or mid) and uneven:
                raise ConfigError(f"UNetConfig.{by.split('=')[0]}: width {c} at level {level} does "
                                  f"not split into heads of equal width by {by}")
            if (self.attends(level)[2] or mid) and (c // self.heads(c)) % 2:
                raise ConfigError(f"UNetConfig.{by.split('=')[0]}: temporal attention at level {level} "
                                  f"needs an even head width for rotary positions, got {c // self.heads(c)}")

    @property
    def levels(self) -> int:
        return len(self.channels)

    @property
    def outputs(self) -> int:
        return self.out_channels or self.in_channels

    def heads(self, width: int) -> int:
        return self.num_heads or max(1, width // self.head_dim)

    def attends(self, level: int) -> tuple[bool, bool, bool]:
        """(spatial, cross, temporal) attention at ``level`` (cross only with text)."""
        def has(levels):
            return any(v % self.levels == level for v in levels)
        return (has(self.spatial_attention), has(self.cross_attention) and self.text_dim is not None,
                has(self.temporal_attention))


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
            v = _to_video(h, B)                                              # (B, C_in, T, H, W)
            if v.device.type == "cpu" and v.dtype == torch.float32 and torch.backends.mkldnn.enabled:
                # torch sends batch-1 conv3d on small frames to a reference kernel 3-8x slower
                # than oneDNN's; call oneDNN directly (same maths, counted by models.flops).
                pad = (self.kernel // 2, 1, 1)
                v = torch.mkldnn_convolution(v, self.conv.weight, self.conv.bias, pad,
                                             (1, 1, 1), (1, 1, 1), 1)        # (B, C_out, T, H, W)
            else:
                v = self.conv(v)                                             # (B, C_out, T, H, W)
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
    """Spatial self-attention, cross-attention to text, temporal self-attention, MLP.

    Pre-LayerNorm residual sublayers on ``(B*T, C, H, W) -> (B*T, C, H, W)``. Temporal
    attention runs over the frames at each pixel with rotary frame positions, and its output
    projection starts at zero. Attention kinds: ``attn_s`` "spatial", ``attn_c`` "cross",
    ``attn_t`` "temporal".
    """
    fsdp_unit = True

    def __init__(self, dim: int, cfg: UNetConfig, spatial: bool, cross: bool, temporal: bool,
                 context_dim: int):
        super().__init__()
        heads = cfg.heads(dim)

        def sub(on: bool, kind: str, **kw):
            return (nn.LayerNorm(dim), Attention(dim, heads, kind=kind, **kw)) if on else (None, None)
        self.norm_s, self.attn_s = sub(spatial, "spatial")
        self.norm_c, self.attn_c = sub(cross, "cross", context_dim=context_dim)
        self.norm_t, self.attn_t = sub(temporal, "temporal", zero_init=True)
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


#################################################################################
#                                    UNet3D                                     #
#################################################################################


def _grid_positions(H: int, W: int, device) -> Tensor:
    """2D sinusoidal features of each cell's (row, column): ``-> (H, W, 64)``, 32 per axis."""
    rows = sinusoidal_embedding(torch.arange(H, device=device), 32, max_period=100.0)   # (H, 32)
    cols = sinusoidal_embedding(torch.arange(W, device=device), 32, max_period=100.0)   # (W, 32)
    return torch.cat([rows[:, None].expand(-1, W, -1), cols[None].expand(H, -1, -1)], -1)


class UNet3D(nn.Module):
    """The spatiotemporal U-Net: ``(x (B, C, T, H, W), t (B,), cond) -> (B, C_out, T, H, W)``."""

    # Parts a checkpoint may lack when it initialises a network that has them (fine-tuning):
    # each starts as the identity, so the network starts as the checkpoint's function.
    ADDABLE = ("pixel_head",)

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        ch = cfg.channels
        emb_dim = cfg.emb_dim or 4 * ch[0]
        context_dim = ch[-1]
        self.cond = ConditionEmbedder(cfg.in_channels, emb_dim, cfg.text_dim, context_dim,
                                      cfg.pooled_dim, cfg.known_frames, cfg.frame_stride, cfg.low_res,
                                      known_in_place=cfg.known_in_place, **reference_options(cfg))
        # A patch > 1 folds each patch x patch pixel block into channels (pixel_unshuffle), so
        # the whole network runs at a coarser grid: the cheapest way to give small clips the
        # "right resolution inside the network" without losing a pixel of the output.
        p2 = cfg.patch ** 2
        self.conv_in = nn.Conv2d((cfg.in_channels + self.cond.extra_channels) * p2, ch[0], 3, padding=1)
        # Absolute frame positions (sinusoids of the frame index through an MLP), added to every
        # pixel of each frame: where an object is at frame k follows directly from k, which a
        # small model learns far sooner than from relative (rotary) positions alone. It ties
        # the model to the trained length; rotary temporal attention stays for the rest.
        self.frame_embed = TimestepEmbedder(ch[0], freq_dim=64, scale=1.0) if cfg.frame_embedding else None
        # Per-frame conditioning: FiLM sees an MLP of (condition, frame index), so a prompt
        # can ask different frames for different things ("moving right": left early, right
        # late). With one embedding per clip, FiLM is the same for every frame and the text
        # can steer motion only through cross-attention. The last layer starts at zero.
        self.frame_cond = None
        if cfg.frame_conditioning:
            self.frame_cond = nn.ModuleDict({
                "frame": TimestepEmbedder(emb_dim, freq_dim=64, scale=1.0),
                "mix": nn.Sequential(nn.Linear(2 * emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))})
        # Absolute pixel positions (2D sinusoids of the row and column at the network's grid,
        # through a linear map): where "left half" is, without inferring it from zero padding.
        self.pos_embed = nn.Linear(64, ch[0]) if cfg.position_embedding else None

        def layer(c_in: int, c_out: int, level: int) -> Layer:
            s, c, t = cfg.attends(level)
            attn = AttentionBlock(c_out, cfg, s, c, t, context_dim) if (s or c or t) else None
            return Layer(ResBlock(c_in, c_out, emb_dim, cfg), attn)

        # Encoder: every module's output is a skip connection (conv_in's too).
        self.down = nn.ModuleList()
        skips, c = [ch[0]], ch[0]
        for level, width in enumerate(ch):
            for _ in range(cfg.blocks_per_level):
                self.down.append(layer(c, width, level))
                c = width
                skips.append(c)
            if level < cfg.levels - 1:
                self.down.append(Resample(c, up=False))
                skips.append(c)
        self.skip_channels = tuple(skips)
        mid_attn = AttentionBlock(c, cfg, True, cfg.text_dim is not None, True, context_dim) \
            if cfg.mid_attention else None
        self.mid = nn.ModuleList([Layer(ResBlock(c, c, emb_dim, cfg), mid_attn),
                                  Layer(ResBlock(c, c, emb_dim, cfg), None)])
        # Decoder: one more block per level than the encoder, each eating one skip.
        self.up = nn.ModuleList()
        for level in reversed(range(cfg.levels)):
            for _ in range(cfg.blocks_per_level + 1):
                self.up.append(layer(c + skips.pop(), ch[level], level))
                c = ch[level]
            if level > 0:
                self.up.append(Resample(c, up=True))
        self.norm_out = nn.GroupNorm(cfg.norm_groups, c)
        self.conv_out = nn.Conv2d(c, cfg.outputs * p2, 3, padding=1)
        self.pixel_head = PixelHead(cfg.in_channels + self.cond.extra_channels, cfg.outputs,
                                    cfg.pixel_head, emb_dim) if cfg.pixel_head else None
        # Head widths of temporal attention: one rotary table each per forward.
        self.rope_dims = sorted({m.attn_t.head_dim for m in self.modules()
                                 if isinstance(m, AttentionBlock) and m.attn_t is not None})
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier linears; identity temporal layers (dirac convs, zero temporal out-projections)."""
        xavier_linears(self)
        for module in self.modules():
            if isinstance(module, AttentionBlock) and module.attn_t is not None:
                zero_module(module.attn_t.to_out)
            if isinstance(module, SpatioTemporalConv):
                module.reset_temporal()
        if self.frame_cond is not None:    # per-frame FiLM starts as the per-clip one
            zero_module(self.frame_cond["mix"][-1])
        self.cond.zero_optional_embedders()

    # ------------------------------------------------------------------ extension point
    def residual_shapes(self, x_shape: Sequence[int]) -> list[tuple[int, ...]]:
        """Shapes of ``forward``'s ``residuals`` for an input of shape ``(B, C, T, H, W)``.

        One ``(B, C_i, T, H_i, W_i)`` per skip connection in the order the encoder makes them
        (``conv_in``, then each encoder block and downsampler from full resolution down), and
        last one for the middle block's output.
        """
        B, _, T, H, W = x_shape
        H, W = H // self.config.patch, W // self.config.patch
        shapes, level = [(B, self.skip_channels[0], T, H, W)], 0
        for module, c in zip(self.down, self.skip_channels[1:]):
            level += isinstance(module, Resample)
            shapes.append((B, c, T, H >> level, W >> level))
        return shapes + [(B, self.skip_channels[-1], T, H >> level, W >> level)]

    # ------------------------------------------------------------------ forward
    @property
    def size_multiple(self) -> int:
        """Frame height and width must be multiples of this: the patch times one halving per
        level after the first."""
        return self.config.patch * 2 ** (self.config.levels - 1)

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """Raise a ValueError naming the size unless the network takes inputs ``(B, C, T, H, W)``
        of ``shape`` (so a pipeline can refuse a size before any sampling work)."""
        cfg = self.config
        factor = self.size_multiple
        if len(shape) != 5 or shape[1] != cfg.in_channels or shape[3] % factor or shape[4] % factor:
            raise ValueError(f"UNet3D expects x of shape (B, C={cfg.in_channels}, T, H, W) with H "
                             f"and W divisible by {factor} (patch {cfg.patch}, {cfg.levels - 1} "
                             f"downsamplings); got {tuple(shape)}")

    def _check(self, x: Tensor, t: Tensor) -> None:
        self.check_shape(tuple(x.shape))
        if t.shape != (x.shape[0],):
            raise ValueError(f"UNet3D expects t of shape (B,) = ({x.shape[0]},), got {tuple(t.shape)}")

    def _run(self, module: nn.Module, h: Tensor, ctx: _Context) -> Tensor:
        if self.config.grad_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint_scoped(module, h, ctx)
        return module(h, ctx)

    def _encode(self, x: Tensor, t: Tensor, cond: Optional[Conditioning], hint: Optional[Tensor] = None):
        """Encoder and middle block: (skips, h, ctx), activations as (B*T, C, H, W); ``hint``
        ``(B*T, C0, H/p, W/p)`` is added to the stem's output (a ControlNet's control features)."""
        B, _, T, H, W = x.shape
        emb, text, text_mask = self.cond(t, cond, x.device)                    # (B, E), (B, S, D), (B, S)
        emb = emb[:, None]                                                      # (B, 1, E)
        frames = torch.arange(T, device=x.device)
        rope = {d: rotary_cos_sin(frames, d) for d in self.rope_dims} if T > 1 else {}  # (T, d) each
        if self.frame_cond is not None:
            f = self.frame_cond["frame"](frames.float())[None].expand(B, -1, -1)  # (B, T, E)
            mixed = self.frame_cond["mix"](torch.cat([emb.expand(-1, T, -1), f], -1))
            emb = emb + mixed                                                   # (B, T, E)
        h = _from_video(self.cond.input(x, cond))                               # (B*T, C_in', H, W)
        ctx = _Context(B, T, F.silu(emb), text, text_mask, rope,
                       h if self.pixel_head is not None else None)
        if self.config.patch > 1:
            h = F.pixel_unshuffle(h, self.config.patch)                         # (B*T, C_in' p^2, H/p, W/p)
        h = self.conv_in(h)                                                     # (B*T, C0, H/p, W/p)
        if hint is not None:
            h = h + hint.to(h.dtype)                                            # (B*T, C0, H/p, W/p)
        if self.frame_embed is not None and T > 1:
            h = h + self.frame_embed(frames.float()).repeat(B, 1)[:, :, None, None]  # + (B*T, C0, 1, 1)
        if self.pos_embed is not None:
            h = h + self.pos_embed(_grid_positions(*h.shape[-2:], h.device)).permute(2, 0, 1)  # + (C0, H', W')
        skips = [h]
        for module in self.down:
            h = self._run(module, h, ctx)                                       # (B*T, C_i, H_i, W_i)
            skips.append(h)
        for module in self.mid:
            h = self._run(module, h, ctx)                                       # (B*T, C_L, H_L, W_L)
        return skips, h, ctx

    def encode(self, x: Tensor, t: Tensor, cond: Optional[Conditioning] = None,
               hint: Optional[Tensor] = None) -> list[Tensor]:
        """The skip tensors and the middle block's output, in :meth:`residual_shapes` order.

        A ControlNet built as a copy of this network returns these (through zero convs) as the
        ``residuals`` of the original; ``hint (B*T, C0, H/p, W/p)``, its control features, is
        added to the stem's output.
        """
        self._check(x, t)
        skips, h, ctx = self._encode(x, t, cond, hint)
        return [_to_video(s, ctx.B) for s in skips + [h]]                       # (B, C_i, T, H_i, W_i)

    def forward(self, x: Tensor, t: Tensor, cond: Optional[Conditioning] = None,
                residuals: Optional[Sequence[Tensor]] = None) -> Tensor:
        """Predict from ``x (B, C, T, H, W)``, ``t (B,)``; ``residuals`` as :meth:`residual_shapes`."""
        self._check(x, t)
        if residuals is not None:
            expected = self.residual_shapes(x.shape)
            got = [tuple(r.shape) for r in residuals]
            if got != expected:
                raise ValueError(f"UNet3D residuals must have shapes {expected}, got {got}")
        skips, h, ctx = self._encode(x, t, cond)
        if residuals is not None:
            # Residuals reach the decoder only: the encoder path below a skip is unchanged.
            skips = [s + _from_video(r.to(s.dtype)) for s, r in zip(skips, residuals)]
            h = h + _from_video(residuals[-1].to(h.dtype))
        for module in self.up:
            if isinstance(module, Layer):
                h = torch.cat([h, skips.pop()], dim=1)                          # (B*T, C + C_skip, H, W)
            h = self._run(module, h, ctx)                                       # (B*T, C_i, H_i, W_i)
        h = self.conv_out(F.silu(self.norm_out(h)))                             # (B*T, C_out p^2, H/p, W/p)
        if self.config.patch > 1:
            h = F.pixel_shuffle(h, self.config.patch)                           # (B*T, C_out, H, W)
        if self.pixel_head is not None:
            h = self.pixel_head(h, ctx)                                         # (B*T, C_out, H, W)
        return _to_video(h, ctx.B).contiguous()                                 # (B, C_out, T, H, W)


#################################################################################
#                                 Named sizes                                   #
#################################################################################

UNET_MODELS: dict[str, UNetConfig] = {
    # Seconds-fast, for tests.
    "unet-tiny": UNetConfig(channels=(16, 32), blocks_per_level=1, spatial_attention=(-1,),
                            cross_attention=(-1,), temporal_attention=(-1,), head_dim=16,
                            norm_groups=8),
    # The CPU demo (16x32x32 pixel clips on 2 cores): a 4x4 space-to-depth stem puts the whole
    # network on an 8x8 grid (4x4 below), 1.7 GFLOP a clip, so training and the 13,440 sampling
    # passes of the demo's evaluation both fit in minutes; attention at the 4x4 level.
    "unet-demo": UNetConfig(channels=(48, 96), patch=4, blocks_per_level=1, spatial_attention=(-1,),
                            cross_attention=(-1,), temporal_attention=(-1,), head_dim=24,
                            norm_groups=8),
    # A super-resolution stage: the low-resolution clip already holds the layout, so the stage
    # needs local detail more than context. A 2x2 stem (16x16 compute grid for a 32x32 output
    # tile, 32x32 for 64x64) keeps edges within a pixel; no spatial attention; temporal
    # attention at the coarse level keeps the detail consistent from frame to frame.
    "unet-sr": UNetConfig(channels=(32, 64), patch=2, blocks_per_level=1, spatial_attention=(),
                          cross_attention=(-1,), temporal_attention=(-1,), head_dim=32,
                          norm_groups=8),
    "unet-s": UNetConfig(channels=(128, 256, 384), blocks_per_level=2, spatial_attention=(1, 2),
                         cross_attention=(1, 2), temporal_attention=(1, 2)),
    "unet-b": UNetConfig(channels=(192, 384, 768, 768), blocks_per_level=2,
                         spatial_attention=(1, 2, 3), cross_attention=(1, 2, 3),
                         temporal_attention=(1, 2, 3)),
}
