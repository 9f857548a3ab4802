"""Layers shared by every vidiff network: embeddings, rotary positions, attention, MLPs.

One place for each: UNet3D, VideoDiT, the video autoencoder and ControlNet all build from
these, so a fix or a faster kernel lands everywhere at once.
"""
from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Iterator, Mapping, Optional, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vidiff.models.pretrained import frozen_prefixes

#################################################################################
#                          Diffusion-time embeddings                            #
#################################################################################


def sinusoidal_embedding(values: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal features of scalars: ``(B,) -> (B, dim)``.

    Diffusion time ``t`` in ``[0, 1]`` is scaled by 1000 by the caller (``TimestepEmbedder``)
    so the fastest frequency still resolves the small time differences samplers use.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=values.device,
                                                           dtype=torch.float32) / half)
    args = values.float()[:, None] * freqs[None]                      # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)        # (B, 2*half)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedder(nn.Module):
    """Embeds a scalar per sample (diffusion time, noise level, frame stride) into a vector."""

    def __init__(self, dim: int, freq_dim: int = 256, scale: float = 1000.0):
        super().__init__()
        self.freq_dim, self.scale = freq_dim, scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, values: Tensor) -> Tensor:
        # values: (B,) -> (B, dim)
        freqs = sinusoidal_embedding(values * self.scale, self.freq_dim)
        return self.mlp(freqs.to(self.mlp[0].weight.dtype))


#################################################################################
#                              Rotary positions                                 #
#################################################################################


def rotary_cos_sin(positions: Tensor, dim: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """Rotary tables for integer or fractional positions: ``(L,) -> cos, sin`` each ``(L, dim)``.

    Rotary encodings depend only on position differences inside attention, so a model trained
    on 16 frames runs on 32 (positions beyond training are new angles, not missing rows).
    """
    if dim % 2:
        raise ValueError(f"rotary dimension must be even, got {dim}")
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, device=positions.device,
                                            dtype=torch.float32) / dim))
    angles = positions.float()[:, None] * inv_freq[None]               # (L, dim/2)
    angles = torch.cat([angles, angles], dim=-1)                        # (L, dim)
    return angles.cos(), angles.sin()


def rotary_cos_sin_axes(positions: list[Tensor], dims: list[int],
                        base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """Rotary tables over several position axes at once: ``positions[i] (L,)`` rotates
    ``dims[i]`` (even) channels; returns cos, sin each ``(L, sum(dims))``.

    ``apply_rotary`` pairs channel ``j`` with ``j + dim/2`` (rotate-half), so both halves of
    the table list the axes' frequencies in the same order; concatenating whole per-axis
    tables would pair channels of different axes and the map would not be a rotation.
    """
    tables = [rotary_cos_sin(p, d, base) for p, d in zip(positions, dims)]
    cos = torch.cat([c[:, :d // 2] for (c, _), d in zip(tables, dims)], -1)   # (L, sum/2)
    sin = torch.cat([s[:, :d // 2] for (_, s), d in zip(tables, dims)], -1)   # (L, sum/2)
    return torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)


def rotary_cos_sin_3d(frames: int, height: int, width: int, dim: int,
                      device=None, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """3D rotary tables over a (frames, height, width) token grid, flattened in that order.

    The head dimension is split into three even parts (time gets the remainder), each rotated
    by its own axis: returns cos, sin each ``(frames * height * width, dim)``.
    """
    d_hw = (dim // 3) // 2 * 2
    d_t = dim - 2 * d_hw
    grids = torch.meshgrid(torch.arange(frames, device=device), torch.arange(height, device=device),
                           torch.arange(width, device=device), indexing="ij")
    return rotary_cos_sin_axes([g.reshape(-1) for g in grids], [d_t, d_hw, d_hw], base)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x (B, heads, L, dim)`` by tables ``(L, dim)`` (rotate-half convention).

    The tables broadcast against ``x``: ``(L, 1, dim)`` rotates ``x (B, L, heads, dim)``.
    """
    half = x.shape[-1] // 2
    # rotate_half(x) * sin == roll(x, half) * [-sin_1, sin_2]: the sign moves to the table,
    # which saves a pass over x (and one in backward).
    signed_sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1).to(x.dtype)
    return torch.addcmul(x * cos.to(x.dtype), x.roll(half, dims=-1), signed_sin)


#################################################################################
#                                  Attention                                    #
#################################################################################
# Kinds of attention layer, by what their tokens are (sequences, tokens per sequence). UNet3D
# and VideoDiT give the same kind the same name, so one processor serves both.
ATTENTION_KINDS = (
    "spatial",    # self-attention among the tokens of one frame          (B*T, H*W)
    "temporal",   # self-attention among the frames at one token position  (B*H*W, T)
    "cross",      # video tokens attending to the text tokens              (B, T*H*W)
    "full",       # self-attention among every token of the clip (VideoDiT "full" blocks)
    "self",       # self-attention on a sequence that is no video grid (the built-in text encoder)
)

Layout = tuple[int, int, int, int]


@dataclass(frozen=True)
class AttentionCall:
    """What an attention processor is told about the call it serves.

    Attributes:
        name: the layer's module name inside the model given to :func:`attention_processors`
            (``"blocks.0.attn_t"``).
        kind: one of :data:`ATTENTION_KINDS`.
        layout: ``(B, T, H, W)`` of the video token grid the layer works on (for a UNet3D level,
            that level's resolution; for VideoDiT, the patch grid ``(B, T', H', W')``); None for
            a sequence that is no video (the text encoder).
        step: the sampling step set by :func:`sampling_step` / :func:`set_sampling_step`
            (an int counted from 0), None outside a sampling loop.
    """
    name: str
    kind: str
    layout: Optional[Layout]
    step: Optional[int]


class AttentionProcessor(Protocol):
    """``processor(attn, q, k, v, mask, call) -> (B', heads, Lq, d)``.

    ``q (B', heads, Lq, d)``, ``k`` and ``v (B', heads, Lk, d)`` are already projected,
    normalised and rotated; ``mask`` is None or boolean, broadcastable to
    ``(B', heads, Lq, Lk)`` (True = attend); ``attn`` is the calling :class:`Attention`
    (``attn.kind``, ``attn.heads``); ``call`` is an :class:`AttentionCall`.
    """

    def __call__(self, attn: "Attention", q: Tensor, k: Tensor, v: Tensor,
                 mask: Optional[Tensor], call: AttentionCall) -> Tensor: ...


def sdpa_processor(attn: "Attention", q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor],
                   call: Optional[AttentionCall] = None) -> Tensor:
    """The default kernel, ``scaled_dot_product_attention``; processors may delegate to it."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


# The processors of the current scope, {Attention module: (its name, processor)}, and the
# sampling step. Context variables, not module attributes: each thread (and each asyncio task)
# sees its own, so two requests sharing one model never see each other's processors.
_PROCESSORS: ContextVar[Mapping["Attention", tuple[str, AttentionProcessor]]] = \
    ContextVar("vidiff_attention_processors", default=MappingProxyType({}))
_STEP: ContextVar[Optional[int]] = ContextVar("vidiff_sampling_step", default=None)
# How many processor scopes are open in any thread. Only a shortcut: while it is 0 forward
# skips the ContextVar lookup, which torch.compile cannot trace (a graph break per layer);
# compiled code guards on this value and recompiles when a scope opens.
_open_scopes = 0
_open_scopes_lock = threading.Lock()


def _count_scope(change: int) -> None:
    global _open_scopes
    with _open_scopes_lock:
        _open_scopes += change


class Attention(nn.Module):
    """Multi-head self- or cross-attention on token sequences, through a scoped processor.

    ``kind`` (one of :data:`ATTENTION_KINDS`; default ``"cross"`` with ``context_dim``, else
    ``"self"``) tells processors what the tokens are. The kernel is :func:`sdpa_processor`
    unless :func:`attention_processors` installs another for the current scope.
    ``zero_init=True`` zeroes the output projection, so a residual attention layer starts as
    the identity (how temporal layers are added to an image network without changing it).
    """

    def __init__(self, dim: int, heads: int, context_dim: Optional[int] = None,
                 qk_norm: bool = True, zero_init: bool = False, kind: Optional[str] = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        kind = kind or ("cross" if context_dim is not None else "self")
        if kind not in ATTENTION_KINDS:
            raise ValueError(f"attention kind {kind!r} is not one of {list(ATTENTION_KINDS)}")
        self.kind = kind
        self.heads, self.head_dim = heads, dim // heads
        self.is_cross = context_dim is not None
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(context_dim or dim, 2 * dim, bias=False)
        # QK-norm keeps attention logits bounded, which lets a higher learning rate train stably.
        self.q_norm = nn.LayerNorm(self.head_dim, elementwise_affine=False) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, elementwise_affine=False) if qk_norm else nn.Identity()
        self.to_out = nn.Linear(dim, dim)
        if zero_init:
            nn.init.zeros_(self.to_out.weight)
            nn.init.zeros_(self.to_out.bias)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, heads={self.heads}, head_dim={self.head_dim}"

    def forward(self, x: Tensor, context: Optional[Tensor] = None,
                context_mask: Optional[Tensor] = None,
                rope: Optional[tuple[Tensor, Tensor]] = None,
                layout: Optional[Layout] = None) -> Tensor:
        # x: (B', L, dim); context: (B', S, context_dim); context_mask: (B', S) bool, True = keep;
        # layout: (B, T, H, W) of the video token grid x comes from (for processors only)
        B, L, _ = x.shape
        source = x if context is None else context
        # Norms and rotary act in the projections' own (B', L, h, d) layout and the kernel gets
        # transposed views: no copy of q, k or v (SDPA takes strided inputs).
        q = self.to_q(x).view(B, L, self.heads, self.head_dim)                       # (B', L, h, d)
        k, v = self.to_kv(source).view(B, source.shape[1], 2, self.heads,
                                       self.head_dim).unbind(2)                      # 2 x (B', S, h, d)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:  # positions only make sense for self-attention
            cos, sin = rope[0][:, None], rope[1][:, None]                             # (L, 1, d) each
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)             # (B', h, L|S, d)
        mask = None
        if context_mask is not None:
            mask = context_mask[:, None, None, :].to(torch.bool)                      # (B', 1, 1, S)
        scoped = _PROCESSORS.get().get(self) if _open_scopes else None
        if scoped is None:
            out = sdpa_processor(self, q, k, v, mask)                                 # (B', h, L, d)
        else:
            name, processor = scoped
            out = processor(self, q, k, v, mask, AttentionCall(name, self.kind, layout, _STEP.get()))
        out = out.transpose(1, 2).reshape(B, L, self.heads * self.head_dim)           # (B', L, dim)
        return self.to_out(out)


@contextmanager
def attention_processors(model: nn.Module,
                         processor_for: Callable[[str, Attention], Optional[AttentionProcessor]]
                         ) -> Iterator[dict[str, AttentionProcessor]]:
    """Run the ``with`` block with ``processor_for(name, module)`` as the processor of every
    :class:`Attention` in ``model`` (None: keep the current one); restored on exit.

    The scope belongs to the current thread / asyncio task (a ``ContextVar``): another thread
    running the same model meanwhile keeps its own processors. Scopes nest; an inner one
    overrides the outer one's layers it names. Yields ``{name: processor}`` as installed.

    .. code-block:: python

        def zero_cross(attn, q, k, v, mask, call):
            return torch.zeros_like(q)
        with attention_processors(net, lambda name, m: zero_cross if m.kind == "cross" else None):
            out = net(x, t, cond)
    """
    active = dict(_PROCESSORS.get())
    installed = {}
    for name, module in model.named_modules():
        if isinstance(module, Attention):
            processor = processor_for(name, module)
            if processor is not None:
                active[module] = (name, processor)
                installed[name] = processor
    token = _PROCESSORS.set(MappingProxyType(active))
    _count_scope(+1)
    try:
        yield installed
    finally:
        _count_scope(-1)
        _PROCESSORS.reset(token)


@contextmanager
def sampling_step(step: Optional[int]) -> Iterator[None]:
    """Run the ``with`` block with ``step`` as the sampling step processors see (restored on
    exit, per thread / asyncio task like :func:`attention_processors`). A sampling loop opens
    one scope and advances it with :func:`set_sampling_step`."""
    token = _STEP.set(step)
    try:
        yield
    finally:
        _STEP.reset(token)


def set_sampling_step(step: Optional[int]) -> Token:
    """Set the sampling step processors see, e.g. from a sampler's progress callback. Inside a
    :func:`sampling_step` scope the previous value comes back when the scope exits; elsewhere
    pass the returned token to :func:`reset_sampling_step`."""
    return _STEP.set(step)


def reset_sampling_step(token: Token) -> None:
    """Undo the :func:`set_sampling_step` that returned ``token``."""
    _STEP.reset(token)


def current_sampling_step() -> Optional[int]:
    """The sampling step of the current scope (None outside sampling)."""
    return _STEP.get()


def checkpoint_scoped(fn: Callable[..., Tensor], *args) -> Tensor:
    """``fn(*args)`` under activation checkpointing (non-reentrant), recomputed in backward
    with the attention processors and sampling step of this call.

    Backward may run after the scope has closed, or on autograd's own thread (GPU); without
    this the recomputation would use the default processors and disagree with the forward.
    """
    if not _open_scopes:  # no processors anywhere: nothing to carry (nor to hide from compile)
        return checkpoint(fn, *args, use_reentrant=False)
    processors, step = _PROCESSORS.get(), _STEP.get()

    def run(*inputs):
        tokens = _PROCESSORS.set(processors), _STEP.set(step)
        _count_scope(+1)
        try:
            return fn(*inputs)
        finally:
            _count_scope(-1)
            _STEP.reset(tokens[1])
            _PROCESSORS.reset(tokens[0])
    return checkpoint(run, *args, use_reentrant=False)


#################################################################################
#                                  Blocks                                       #
#################################################################################


class FeedForward(nn.Module):
    """Transformer MLP: ``(..., dim) -> (..., dim)`` with a GELU hidden layer."""

    def __init__(self, dim: int, mult: float = 4.0, zero_init: bool = False):
        super().__init__()
        hidden = int(dim * mult)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"),
                                 nn.Linear(hidden, dim))
        if zero_init:
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN / FiLM: ``x * (1 + scale) + shift`` with per-sample ``shift, scale (B, dim)``
    broadcast over the token axis of ``x (B, L, dim)``."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def xavier_linears(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every ``nn.Linear`` inside ``module``, so the
    residual stream neither explodes nor vanishes with depth. A frozen pretrained model inside
    it (a CLIP vision reference encoder) keeps its weights."""
    frozen = frozen_prefixes(module)
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear) and not f"{name}.".startswith(frozen):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def conv3d(x: Tensor, conv: nn.Conv3d) -> Tensor:
    """``conv`` on ``x (B, C_in, T, H, W) -> (B, C_out, T', H', W')``, with its own stride and
    padding. On a CPU in float32 it calls oneDNN directly: torch sends small-batch conv3d on
    small frames to a reference kernel 2-8x slower (same maths; counted by models.flops).
    Under autocast it stays the module call, so the convolution runs in bf16."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.enabled \
            and not torch.is_autocast_enabled("cpu"):
        return torch.mkldnn_convolution(x, conv.weight, conv.bias, conv.padding, conv.stride,
                                        conv.dilation, conv.groups)
    return conv(x)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter of ``module`` and return it (identity-at-init residual branches)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module
