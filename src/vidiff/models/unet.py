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

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidiff.conditioning import Conditioning
from vidiff.models.condition import ConditionEmbedder, reference_options
from vidiff.models.layers import (TimestepEmbedder, checkpoint_scoped, rotary_cos_sin,
                                 sinusoidal_embedding, xavier_linears, zero_module)
from vidiff.models.unet_blocks import (AttentionBlock, Layer, PixelHead, ResBlock, Resample,
                                       SpatioTemporalConv, _Context, _from_video, _to_video)
from vidiff.models.unet_config import UNetConfig

__all__ = ["UNET_MODELS", "UNet3D", "UNetConfig", "AttentionBlock", "ResBlock"]

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
            s, c, t, full = cfg.attends(level)
            attn = AttentionBlock(c_out, cfg, s, c, t, context_dim, full) if (s or c or t or full) else None
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
        mid_attn = AttentionBlock(c, cfg, True, cfg.text_dim is not None, True, context_dim,
                                  cfg.attends(cfg.levels - 1)[3]) if cfg.mid_attention else None
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
        """Xavier linears; identity temporal layers (dirac convs, zero temporal and full
        out-projections)."""
        xavier_linears(self)
        for module in self.modules():
            if isinstance(module, AttentionBlock):
                for attn in (module.attn_t, module.attn_full):
                    if attn is not None:
                        zero_module(attn.to_out)
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

    @property
    def combines_passes(self) -> bool:
        """Whether :meth:`forward` takes ``combine``: a network with a pixel head does."""
        return self.pixel_head is not None

    def forward(self, x: Tensor, t: Tensor, cond: Optional[Conditioning] = None,
                residuals: Optional[Sequence[Tensor]] = None,
                combine: Optional[Sequence[float]] = None) -> Tensor:
        """Predict from ``x (B, C, T, H, W)``, ``t (B,)``; ``residuals`` as :meth:`residual_shapes`.

        ``combine`` (a network with a pixel head only): ``n`` weights, classifier-free
        guidance's. The batch is then ``n`` stacked groups of ``B / n`` rows (one per guidance
        pass, the fully conditioned one first) and the output is one group, ``(B / n, C_out, T,
        H, W)``: the weights combine the trunk's coarse predictions, and the pixel head's
        correction of the first group (as a plain forward computes it) is added once.

        Why (docs/benchmarks.md, "The full-resolution head"): guidance on the finished
        predictions scales the difference of two heads' corrections, detail that is in neither
        (a 32-wide head's stripes cost 11 points of adherence at guidance 5); the head run on
        the guided prediction instead meets an input it never saw in training (a 16-wide head
        lost 7 points).
        """
        self._check(x, t)
        if combine is not None and (not self.combines_passes or x.shape[0] % len(combine)):
            raise ValueError(f"combine needs a network with a pixel head (pixel_head is "
                             f"{self.config.pixel_head}) and a batch of whole groups (got "
                             f"{x.shape[0]} rows for {len(combine)} weights)")
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
        guided = None
        if combine is not None:
            weights = torch.as_tensor(combine, dtype=h.dtype, device=h.device)
            groups = h.unflatten(0, (len(weights), -1))                         # (n, B/n*T, C_out, H, W)
            h, ctx = groups[0], ctx.first_rows(ctx.B // len(weights))          # the fully conditioned pass
            guided = torch.einsum("n,n...->...", weights, groups) - h          # (B/n*T, C_out, H, W)
        if self.pixel_head is not None:
            h = self.pixel_head(h, ctx)                                         # (B*T, C_out, H, W)
        if guided is not None:
            h = h + guided                                                      # guidance on the coarse prediction
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
