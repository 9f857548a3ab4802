"""VideoDiT: the spatiotemporal diffusion transformer.

The network maps ``x_t (B, C, T, H, W)``, diffusion time ``t (B,)`` in ``[0, 1]`` and an
optional :class:`~vidiff.Conditioning` to a prediction ``(B, out_channels, T, H, W)`` (eps, v,
x0 or flow velocity: the parameterization lives outside, in ``vidiff.diffusion``).

Design, and why:

* **3D patches**: ``patch x patch`` pixels (or latents) by ``patch_t`` frames make one token.
  With ``patch_t > 1`` the first frame is patched on its own (it is front-padded with
  ``patch_t - 1`` copies of itself), so a one-frame clip is valid and images train the same
  weights as videos; ``T`` must then be ``1 + k * patch_t``. Tokens are laid out
  ``(B, T' * H' * W', hidden)`` in (frame, row, column) order.
* **Blocks**, each ``"factorized"`` (spatial attention over the ``H' * W'`` tokens of a frame,
  then temporal attention over the ``T'`` frames at each location) or ``"full"`` (one 3D
  attention over all tokens), chosen per block; then cross-attention to the text tokens and
  an MLP. Factorized attention costs ``O(N * (H'W' + T'))`` instead of ``O(N^2)``.
* **adaLN-zero**: the :class:`~vidiff.models.condition.ConditionEmbedder` embedding (time,
  plus every other per-sample condition) gives a shift, scale and gate for every sub-layer;
  gates start at zero, so every block starts as the identity (Peebles & Xie, 2023). By
  default (``adaln="single"``, PixArt-alpha) one linear layer computes the modulation for all
  blocks, each block adding a learned offset: per-block linears (``adaln="block"``, DiT's
  recipe) would hold ~40% of a factorized block's weights.
* **Rotary positions** only: 2D (row, column) in spatial attention, 1D (frame) in temporal
  attention, 3D in full attention. They depend on position differences alone, so a model
  trained on 16 frames samples 32.
* **Temporal attention is exactly the identity at init** (zero output projection; its gate
  is ``1 + g`` so it is not a product of two zeros that could never learn) and a clip with
  ``T' = 1`` skips it: with factorized blocks every other op works per frame, so images and
  videos train one network jointly.

Extension points: ``forward(x, t, cond, residuals)`` adds ``residuals[i]``, shape
``(B, N_tokens, hidden)`` (see :meth:`VideoDiT.residual_shapes`), to the output of block
``i`` (a shorter list: to the first blocks only): how a ControlNet injects its control
signal; :meth:`VideoDiT.encode` returns those outputs, for a ControlNet built as a copy of
the first blocks. Every attention layer is a shared
:class:`~vidiff.models.layers.Attention` of kind ``"spatial"`` (``blocks.i.attn`` of a
factorized block), ``"temporal"`` (``attn_t``), ``"full"`` (``attn`` of a full block) or
``"cross"``, whose processor :func:`~vidiff.models.layers.attention_processors` replaces for a
scope; it sees the layout ``(B, T', H', W')`` of the patch grid. ``cond.control`` is refused:
control maps reach a DiT only through a :class:`~vidiff.models.controlnet.ControlNet`'s residuals.

Parameter counts (``count_parameters``, registry configs as written, i.e. no text;
``+text`` with ``text_dim=768``):

=========== ====== ===== ===== ========== ==========
size        hidden depth heads params     +text
=========== ====== ===== ===== ========== ==========
dit-tiny    32     2     2     0.0555 M   0.0925 M
dit-demo    128    6     4     1.82 M     2.36 M
dit-s/2     384    12    6     30.3 M     38.1 M
dit-b/2     768    12    12    121 M      151 M
dit-l/2     1024   24    16    416 M      521 M
dit-xl/2    1152   28    16    611 M      765 M
dit-1b/2    1536   26    24    1.01 B     1.26 B
=========== ====== ===== ===== ========== ==========
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidiff.conditioning import Conditioning
from vidiff.config import ConfigError
from vidiff.models.condition import ConditionEmbedder, check_reference_fields, reference_options
from vidiff.models.layers import (Attention, FeedForward, TimestepEmbedder, checkpoint_scoped,
                                  modulate, rotary_cos_sin, rotary_cos_sin_3d, rotary_cos_sin_axes,
                                  xavier_linears)

#################################################################################
#                                    Config                                     #
#################################################################################

ATTENTION_MODES = ("factorized", "full")
# Sub-layers that take a (shift, scale, gate) from adaLN, in a fixed order.
SLOTS = ("attn", "temporal", "cross", "mlp")


def _slots(temporal: bool, cross: bool) -> tuple[str, ...]:
    """The adaLN slots of a block (or model) with/without temporal and cross-attention."""
    return tuple(s for s in SLOTS if (s != "temporal" or temporal) and (s != "cross" or cross))


@dataclass
class DiTConfig:
    """Architecture of a :class:`VideoDiT`.

    ``attention`` is ``"factorized"``, ``"full"`` or one of them per block (a list of
    ``depth`` names). Cross-attention layers exist only when ``text_dim`` is set (None =
    unconditional).
    """
    in_channels: int = 3
    out_channels: Optional[int] = None        # None: same as in_channels
    hidden: int = 384
    depth: int = 12
    heads: int = 6
    patch: int = 2                            # spatial patch size
    patch_t: int = 1                          # frames per patch (the first frame alone)
    mlp_ratio: float = 4.0
    attention: Union[str, tuple[str, ...]] = "factorized"
    adaln: str = "single"                     # "single": one shared modulation; "block": DiT's
    text_dim: Optional[int] = None
    pooled_dim: Optional[int] = None
    known_frames: bool = False                # known/mask as extra input channels
    known_in_place: bool = False              # known pixels also replace x_t where known
    frame_stride: bool = False                # embed cond.frame_stride
    low_res: bool = False                     # super-resolution: upsampled low-res clip as input
    reference_tokens: int = 0                 # > 0: a reference image adds this many cross-attention tokens
    reference_encoder: str = "builtin"        # which makes them: "builtin" (trained) or "clip" (frozen + projection)
    reference_encoder_path: Optional[str] = None   # clip: a local CLIP vision model folder
    reference_encoder_dtype: str = "float32"  # clip: its parameter dtype
    qk_norm: bool = True
    grad_checkpoint: bool = False

    def __post_init__(self):
        def fail(msg: str):
            raise ConfigError(f"DiTConfig.{msg}")
        if self.in_channels < 1 or (self.out_channels is not None and self.out_channels < 1):
            fail(f"in_channels/out_channels must be positive, got {self.in_channels}/{self.out_channels}")
        for name in ("hidden", "depth", "heads", "patch", "patch_t"):
            if getattr(self, name) < 1:
                fail(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden % self.heads:
            fail(f"hidden: {self.hidden} is not divisible by heads={self.heads}")
        if self.head_dim % 2:
            fail(f"heads: rotary positions need an even head width, got hidden / heads = "
                 f"{self.hidden} / {self.heads} = {self.head_dim}")
        if self.mlp_ratio <= 0:
            fail(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if isinstance(self.attention, str) and "," in self.attention:  # "full,factorized" from a CLI
            self.attention = tuple(m.strip() for m in self.attention.split(","))
        modes = (self.attention,) * self.depth if isinstance(self.attention, str) else tuple(self.attention)
        bad = [m for m in modes if m not in ATTENTION_MODES]
        if bad:
            fail(f"attention: {bad[0]!r} is not one of {list(ATTENTION_MODES)}")
        if len(modes) != self.depth:
            fail(f"attention: a list needs one mode per block (depth={self.depth}), got {len(modes)}")
        if not isinstance(self.attention, str):
            self.attention = modes
        if self.adaln not in ("single", "block"):
            fail(f"adaln: {self.adaln!r} is not one of ['single', 'block']")
        for name in ("text_dim", "pooled_dim"):
            value = getattr(self, name)
            if value is not None and value < 1:
                fail(f"{name} must be positive or null, got {value}")
        check_reference_fields(self, "DiTConfig")

    @property
    def outputs(self) -> int:
        return self.out_channels or self.in_channels

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def modes(self) -> tuple[str, ...]:
        """The attention mode of each block."""
        return (self.attention,) * self.depth if isinstance(self.attention, str) else self.attention


#################################################################################
#                                    Patches                                    #
#################################################################################


def patchify(x: Tensor, p: int, pt: int) -> Tensor:
    # (B, C, T, H, W) -> (B, T' * H' * W', C * pt * p * p), T' = 1 + (T - 1) / pt
    if pt > 1:  # the first frame makes a patch of its own: pad it with copies of itself
        x = torch.cat([x[:, :, :1].expand(-1, -1, pt - 1, -1, -1), x], dim=2)   # (B, C, T+pt-1, H, W)
    B, C, T, H, W = x.shape
    x = x.reshape(B, C, T // pt, pt, H // p, p, W // p, p)
    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7)                                      # (B, T', H', W', C, pt, p, p)
    return x.reshape(B, -1, C * pt * p * p)


def unpatchify(x: Tensor, grid: tuple[int, int, int], p: int, pt: int) -> Tensor:
    # (B, N, C * pt * p * p) -> (B, C, T, H, W), the inverse of patchify
    B, (Tt, Ht, Wt) = x.shape[0], grid
    C = x.shape[-1] // (pt * p * p)
    x = x.reshape(B, Tt, Ht, Wt, C, pt, p, p).permute(0, 4, 1, 5, 2, 6, 3, 7)  # (B, C, T', pt, H', p, W', p)
    x = x.reshape(B, C, Tt * pt, Ht * p, Wt * p)                               # (B, C, T+pt-1, H, W)
    # Drop the padding copies; with pt = 1 return x itself, not a view of it (FSDP warns when
    # a root module returns a view, which an in-place op would detach from its backward hook).
    return x[:, :, pt - 1:].contiguous() if pt > 1 else x


@dataclass
class _Context:
    """What every block needs besides the tokens, computed once per forward."""
    grid: tuple[int, int, int]           # (T', H', W') token grid
    emb: Tensor                          # (B, hidden), already through SiLU
    shared: Optional[Tensor]             # (B, len(slots), 3, hidden) adaLN-single modulation
    text: Optional[Tensor]               # (B, S, hidden)
    text_mask: Optional[Tensor]          # (B, S) bool
    rope_hw: Optional[tuple]             # (H'W', head_dim) cos, sin: spatial attention
    rope_t: Optional[tuple]              # (T', head_dim): temporal attention
    rope_3d: Optional[tuple]             # (N, head_dim): full attention


#################################################################################
#                                    Blocks                                     #
#################################################################################


class DiTBlock(nn.Module):
    """Self-attention (factorized or full), cross-attention to text, MLP; each adaLN-modulated.

    ``(B, N, hidden) -> (B, N, hidden)`` with ``N = T' * H' * W'``.
    """
    fsdp_unit = True   # the trainer's FSDP shards (all-gathers, frees) each block on its own

    def __init__(self, cfg: DiTConfig, mode: str, slots: tuple[str, ...]):
        super().__init__()
        D, heads = cfg.hidden, cfg.heads
        self.factorized = mode == "factorized"
        self.slots = _slots(self.factorized, cfg.text_dim is not None)
        # The norms have no weights (adaLN supplies scale and shift), so one serves every sub-layer.
        self.norm = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(D, heads, qk_norm=cfg.qk_norm, kind="spatial" if self.factorized else "full")
        self.attn_t = Attention(D, heads, qk_norm=cfg.qk_norm, zero_init=True, kind="temporal") \
            if self.factorized else None
        self.cross = Attention(D, heads, context_dim=D, qk_norm=cfg.qk_norm, kind="cross") \
            if cfg.text_dim is not None else None
        self.mlp = FeedForward(D, cfg.mlp_ratio)
        n = len(self.slots)
        self.ada = self.table = None
        if cfg.adaln == "block":
            self.ada = nn.Linear(D, 3 * n * D)
        else:  # a learned offset on the shared modulation, so blocks still differ
            self.table = nn.Parameter(torch.zeros(n, 3, D))
        self.shared_index = [slots.index(s) for s in self.slots]     # this block's rows of it

    def modulation(self, ctx: _Context) -> dict[str, list[Tensor]]:
        """``{slot: [shift, scale, gate]}``, each ``(B, hidden)``."""
        if self.ada is not None:
            B, D = ctx.emb.shape
            m = self.ada(ctx.emb).view(B, len(self.slots), 3, D)                  # (B, n, 3, D)
        else:
            m = ctx.shared[:, self.shared_index] + self.table                   # (B, n, 3, D)
        return {s: m[:, i].unbind(1) for i, s in enumerate(self.slots)}

    def forward(self, x: Tensor, ctx: _Context) -> Tensor:
        B, N, D = x.shape
        T, H, W = ctx.grid
        L, layout = H * W, (B, T, H, W)                                         # layout: for processors
        mod = self.modulation(ctx)                                              # slot -> 3 x (B, D)
        shift, scale, gate = mod["attn"]                                        # (B, D) each
        h = modulate(self.norm(x), shift, scale)                                # (B, N, D)
        if self.factorized:
            h = self.attn(h.reshape(B * T, L, D), rope=ctx.rope_hw, layout=layout).view(B, N, D)  # per frame
        else:
            h = self.attn(h, rope=ctx.rope_3d, layout=layout)                   # (B, N, D)
        x = x + gate.unsqueeze(1) * h                                           # (B, N, D)
        if self.attn_t is not None and T > 1:
            shift, scale, gate = mod["temporal"]
            h = modulate(self.norm(x), shift, scale)                            # (B, N, D)
            h = h.view(B, T, L, D).transpose(1, 2).reshape(B * L, T, D)         # (B*L, T, D)
            h = self.attn_t(h, rope=ctx.rope_t, layout=layout)                  # (B*L, T, D)
            h = h.view(B, L, T, D).transpose(1, 2).reshape(B, N, D)             # (B, N, D)
            x = x + (1 + gate).unsqueeze(1) * h     # (B, N, D); gate 1 + g: to_out starts at 0
        if self.cross is not None:
            shift, scale, gate = mod["cross"]
            h = self.cross(modulate(self.norm(x), shift, scale), ctx.text, ctx.text_mask,
                           layout=layout)                                       # (B, N, D)
            x = x + gate.unsqueeze(1) * h                                       # (B, N, D)
        shift, scale, gate = mod["mlp"]
        return x + gate.unsqueeze(1) * self.mlp(modulate(self.norm(x), shift, scale))  # (B, N, D)


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a linear map to patches: ``(B, N, D) -> (B, N, out)``."""

    def __init__(self, hidden: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Linear(hidden, 2 * hidden)
        self.linear = nn.Linear(hidden, out_dim)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        shift, scale = self.ada(emb).chunk(2, dim=-1)                           # (B, D) each
        return self.linear(modulate(self.norm(x), shift, scale))                # (B, N, out)


#################################################################################
#                                   VideoDiT                                    #
#################################################################################


class VideoDiT(nn.Module):
    """The video diffusion transformer: ``(x (B, C, T, H, W), t (B,), cond) -> (B, C_out, T, H, W)``."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = cfg = config
        D, p, pt = cfg.hidden, cfg.patch, cfg.patch_t
        self.cond = ConditionEmbedder(cfg.in_channels, D, cfg.text_dim, D, cfg.pooled_dim,
                                      cfg.known_frames, cfg.frame_stride, cfg.low_res,
                                      known_in_place=cfg.known_in_place, **reference_options(cfg))
        self.x_embed = nn.Linear((cfg.in_channels + self.cond.extra_channels) * pt * p * p, D)
        self.slots = _slots("factorized" in cfg.modes, cfg.text_dim is not None)
        self.adaln = nn.Linear(D, len(self.slots) * 3 * D) if cfg.adaln == "single" else None
        self.blocks = nn.ModuleList([DiTBlock(cfg, mode, self.slots) for mode in cfg.modes])
        self.final = FinalLayer(D, cfg.outputs * pt * p * p)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier linears; zero adaLN (every block the identity), output layer and temporal
        output projections (temporal attention the identity, whatever adaLN learns)."""
        xavier_linears(self)
        for module in self.cond.modules():
            if isinstance(module, TimestepEmbedder):  # as DiT: small init of the time MLPs
                nn.init.normal_(module.mlp[0].weight, std=0.02)
                nn.init.normal_(module.mlp[2].weight, std=0.02)
        zeros = [self.adaln, self.final.ada, self.final.linear]
        for block in self.blocks:
            zeros += [block.ada, block.attn_t.to_out if block.attn_t is not None else None]
            if block.table is not None:
                nn.init.zeros_(block.table)
        for module in zeros:
            if module is not None:
                nn.init.zeros_(module.weight)
                nn.init.zeros_(module.bias)
        self.cond.zero_optional_embedders()

    # ------------------------------------------------------------------ shapes
    def token_grid(self, x_shape: Sequence[int]) -> tuple[int, int, int]:
        """``(T', H', W')`` tokens for an input of shape ``(B, C, T, H, W)``."""
        _, _, T, H, W = x_shape
        p, pt = self.config.patch, self.config.patch_t
        return 1 + (T - 1) // pt, H // p, W // p

    def residual_shapes(self, x_shape: Sequence[int]) -> list[tuple[int, int, int]]:
        """Shapes of ``forward``'s ``residuals``: ``depth`` times ``(B, N_tokens, hidden)``,
        tokens in (frame, row, column) order of the patch grid (:meth:`token_grid`)."""
        T, H, W = self.token_grid(x_shape)
        return [(x_shape[0], T * H * W, self.config.hidden)] * self.config.depth

    @property
    def size_multiple(self) -> int:
        """Frame height and width must be multiples of this: the patch side."""
        return self.config.patch

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """Raise a ValueError naming the size unless the network takes inputs ``(B, C, T, H, W)``
        of ``shape`` (so a pipeline can refuse a size before any sampling work)."""
        cfg = self.config
        p, pt = cfg.patch, cfg.patch_t
        if len(shape) != 5 or shape[1] != cfg.in_channels or shape[3] % p or shape[4] % p \
                or (shape[2] - 1) % pt:
            frames = f" and T = 1 + k * patch_t (patch_t={pt}: T in 1, {1 + pt}, {1 + 2 * pt}, ...)" \
                if pt > 1 else ""
            raise ValueError(f"VideoDiT expects x of shape (B, C={cfg.in_channels}, T, H, W) with H "
                             f"and W divisible by patch={p}{frames}; got {tuple(shape)}")

    def _check(self, x: Tensor, t: Tensor) -> None:
        self.check_shape(tuple(x.shape))
        if t.shape != (x.shape[0],):
            raise ValueError(f"VideoDiT expects t of shape (B,) = ({x.shape[0]},), got {tuple(t.shape)}")

    # ------------------------------------------------------------------ forward
    def _rope(self, grid: tuple[int, int, int], device) -> dict:
        T, H, W = grid
        d, modes = self.config.head_dim, self.config.modes
        rope = {"rope_hw": None, "rope_t": None, "rope_3d": None}
        if "factorized" in modes:
            rows, cols = torch.meshgrid(torch.arange(H, device=device), torch.arange(W, device=device),
                                        indexing="ij")
            d_h = d // 2 // 2 * 2
            rope["rope_hw"] = rotary_cos_sin_axes([rows.reshape(-1), cols.reshape(-1)], [d_h, d - d_h])
            if T > 1:
                rope["rope_t"] = rotary_cos_sin(torch.arange(T, device=device), d)   # (T', d) each
        if "full" in modes:
            rope["rope_3d"] = rotary_cos_sin_3d(T, H, W, d, device=device)          # (N, d) each
        return rope

    def _run(self, block: nn.Module, x: Tensor, ctx: _Context) -> Tensor:
        if self.config.grad_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint_scoped(block, x, ctx)
        return block(x, ctx)

    def forward(self, x: Tensor, t: Tensor, cond: Optional[Conditioning] = None,
                residuals: Optional[Sequence[Tensor]] = None) -> Tensor:
        """Predict from ``x (B, C, T, H, W)``, ``t (B,)``; ``residuals`` as :meth:`residual_shapes`."""
        self._check(x, t)
        cfg = self.config
        if residuals is not None:
            expected, got = self.residual_shapes(x.shape), [tuple(r.shape) for r in residuals]
            if not got or got != expected[:len(got)]:
                raise ValueError(f"VideoDiT residuals must be 1 to {cfg.depth} tensors of shape "
                                 f"{expected[0]} (B, N_tokens, hidden), got {got}")
        h, ctx = self._embed(x, t, cond)                                        # (B, N, D)
        for i, block in enumerate(self.blocks):
            h = self._run(block, h, ctx)                                        # (B, N, D)
            if residuals is not None and i < len(residuals):
                h = h + residuals[i].to(h.dtype)                                # (B, N, D)
        h = self.final(h, ctx.emb)                                              # (B, N, C_out * pt * p * p)
        return unpatchify(h, ctx.grid, cfg.patch, cfg.patch_t)                  # (B, C_out, T, H, W)

    def _embed(self, x: Tensor, t: Tensor, cond: Optional[Conditioning], hint: Optional[Tensor] = None):
        """Tokens ``(B, N, D)`` and the blocks' context; ``hint (B, N, D)`` is added to the tokens."""
        cfg, B = self.config, x.shape[0]
        grid = self.token_grid(x.shape)
        emb, text, text_mask = self.cond(t, cond, x.device)                     # (B, D), (B, S, D), (B, S)
        emb = F.silu(emb)
        shared = None
        if self.adaln is not None:
            shared = self.adaln(emb).view(B, len(self.slots), 3, cfg.hidden)     # (B, slots, 3, D)
        ctx = _Context(grid, emb, shared, text, text_mask, **self._rope(grid, x.device))  # rotary: (L, d)
        h = patchify(self.cond.input(x, cond), cfg.patch, cfg.patch_t)          # (B, N, C' * pt * p * p)
        h = self.x_embed(h.to(self.x_embed.weight.dtype))                       # (B, N, D)
        if hint is not None:
            h = h + hint.to(h.dtype)                                            # (B, N, D)
        return h, ctx

    def encode(self, x: Tensor, t: Tensor, cond: Optional[Conditioning] = None,
               hint: Optional[Tensor] = None) -> list[Tensor]:
        """The output of every block, ``(B, N, D)`` each, in :meth:`residual_shapes` order.

        A ControlNet built as a copy of this network's first blocks returns these (through zero
        projections) as the ``residuals`` of the original's first blocks; ``hint (B, N, D)``,
        its control features, is added to the patch tokens.
        """
        self._check(x, t)
        h, ctx = self._embed(x, t, cond, hint)
        outputs = []
        for block in self.blocks:
            h = self._run(block, h, ctx)                                        # (B, N, D)
            outputs.append(h)
        return outputs


#################################################################################
#                                 Named sizes                                   #
#################################################################################
# Parameter counts: see the module docstring's table.

DIT_MODELS: dict[str, DiTConfig] = {
    # Seconds-fast, for tests.
    "dit-tiny": DiTConfig(hidden=32, depth=2, heads=2),
    # The CPU demo (16x32x32 pixel clips: 4096 tokens, 256 per frame).
    "dit-demo": DiTConfig(hidden=128, depth=6, heads=4),
    # DiT's widths and depths (Peebles & Xie, 2023), factorized space-time attention.
    "dit-s/2": DiTConfig(hidden=384, depth=12, heads=6),
    "dit-b/2": DiTConfig(hidden=768, depth=12, heads=12),
    "dit-l/2": DiTConfig(hidden=1024, depth=24, heads=16),
    "dit-xl/2": DiTConfig(hidden=1152, depth=28, heads=16),
    "dit-1b/2": DiTConfig(hidden=1536, depth=26, heads=24),
}
