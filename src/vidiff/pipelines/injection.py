"""Attention injection: record one sampling run's attention, replay it in another.

Inversion-based editing (Prompt-to-Prompt, Hertz et al. 2022; FateZero, Qi et al. 2023)
keeps a video's structure by making the edited run attend the way the source run did during
its first steps. A source reconstruction pass runs under :meth:`AttentionStore.recording`,
which keeps, per attention layer and sampling step, what the layer attended:

* ``"maps"``: the attention probabilities ``softmax(q k^T / sqrt(d))`` of every injected
  layer (self- and cross-attention). Replayed, the edited run uses the source's maps with
  its own values, ``P_source v_edit``: where each token looks comes from the source, what
  it reads comes from the edit (a new colour word's value, for a cross-attention layer).
* ``"kv"``: self-attention keys and values (replayed as ``sdpa(q_edit, k_source,
  v_source)``, which also carries the source's appearance) and cross-attention maps.

The edited run then samples under :meth:`AttentionStore.replaying`, for the steps the
store holds (the first fraction ``tau`` of them). Both are scopes of
:func:`vidiff.models.layers.attention_processors`, so the network's own processors come back
when they close, also after an exception. The two runs must have the same batch layout
(guidance passes, prompt token counts); a cross-attention map whose shape differs is an error,
so an editor with prompts of other lengths leaves ``"cross"`` out of ``kinds``.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

from torch import Tensor, nn

from vidiff.models.layers import Attention, AttentionCall, attention_processors, sdpa_processor

INJECT_MODES = ("maps", "kv")
SELF_KINDS = ("spatial", "temporal", "full")      # self-attention among video tokens
INJECT_KINDS = SELF_KINDS + ("cross",)


def attention_probabilities(q: Tensor, k: Tensor, mask: Optional[Tensor]) -> Tensor:
    """``softmax(q k^T / sqrt(d))``: ``q (B', h, Lq, d)``, ``k (B', h, Lk, d)`` and a boolean
    ``mask`` broadcastable to ``(B', h, Lq, Lk)`` (True = attend) -> ``(B', h, Lq, Lk)``."""
    logits = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])            # (B', h, Lq, Lk)
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return logits.softmax(dim=-1)


class AttentionStore:
    """The attention of one sampling run's first ``steps`` steps, by (layer name, step).

    Args:
        steps: record steps ``0 .. steps - 1`` (the sampling step the processors see).
        kinds: layer kinds to record and replay (of :data:`INJECT_KINDS`).
        mode: ``"maps"`` or ``"kv"`` (see the module docstring).
    """

    def __init__(self, steps: int, kinds: Sequence[str] = INJECT_KINDS, mode: str = "maps"):
        if mode not in INJECT_MODES:
            raise ValueError(f"unknown injection mode {mode!r}; accepted: {list(INJECT_MODES)}")
        unknown = set(kinds) - set(INJECT_KINDS)
        if unknown:
            raise ValueError(f"unknown attention kinds {sorted(unknown)}; accepted: {list(INJECT_KINDS)}")
        self.steps, self.kinds, self.mode = int(steps), tuple(kinds), mode
        self.saved: dict[tuple[str, int], tuple[Tensor, ...]] = {}

    def _wants(self, call: AttentionCall) -> bool:
        return call.kind in self.kinds and call.step is not None and call.step < self.steps

    def _saves_kv(self, kind: str) -> bool:
        return self.mode == "kv" and kind in SELF_KINDS

    # ------------------------------------------------------------------ processors
    def _record(self, attn: Attention, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor],
                call: AttentionCall) -> Tensor:
        # q: (B', h, Lq, d), k, v: (B', h, Lk, d) -> (B', h, Lq, d)
        if not self._wants(call):
            return sdpa_processor(attn, q, k, v, mask)
        if self._saves_kv(call.kind):
            self.saved[call.name, call.step] = (k.detach(), v.detach())
            return sdpa_processor(attn, q, k, v, mask)
        probs = attention_probabilities(q, k, mask)                           # (B', h, Lq, Lk)
        self.saved[call.name, call.step] = (probs.detach(),)
        return probs @ v                     # the recorded run computes what its replay will

    def _replay(self, attn: Attention, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor],
                call: AttentionCall) -> Tensor:
        # q: (B', h, Lq, d), k, v: (B', h, Lk, d) -> (B', h, Lq, d)
        saved = self.saved.get((call.name, call.step)) if self._wants(call) else None
        if saved is None:
            return sdpa_processor(attn, q, k, v, mask)
        if self._saves_kv(call.kind):
            k_src, v_src = saved
            if k_src.shape[:2] != q.shape[:2]:
                raise ValueError(f"attention injection: layer {call.name} recorded keys {tuple(k_src.shape)} "
                                 f"but the edited run has queries {tuple(q.shape)} (another batch layout)")
            return sdpa_processor(attn, q, k_src, v_src, None)
        (probs,) = saved
        if probs.shape[:3] != q.shape[:3] or probs.shape[-1] != v.shape[-2]:
            raise ValueError(f"attention injection: layer {call.name} recorded maps {tuple(probs.shape)} "
                             f"but the edited run has queries {tuple(q.shape)} and values {tuple(v.shape)}: "
                             "the runs differ in batch layout or prompt length")
        return probs.to(v.dtype) @ v

    # ------------------------------------------------------------------ scopes
    @contextmanager
    def recording(self, model: nn.Module) -> Iterator["AttentionStore"]:
        """Record ``model``'s attention inside the ``with`` block (its processors come back on exit)."""
        with attention_processors(model, lambda name, module: self._record if module.kind in self.kinds else None):
            yield self

    @contextmanager
    def replaying(self, model: nn.Module) -> Iterator["AttentionStore"]:
        """Replay the recorded attention inside the ``with`` block (restored on exit)."""
        with attention_processors(model, lambda name, module: self._replay if module.kind in self.kinds else None):
            yield self

    def __len__(self) -> int:
        return len(self.saved)


def injected_steps(tau: float, steps: int) -> int:
    """The steps of a ``steps``-step run that replay attention: the first ``round(tau steps)``;
    ValueError unless ``tau`` is in [0, 1]."""
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0.0 <= tau <= 1.0:
        raise ValueError(f"inject (tau) must be a fraction of the steps in [0, 1], got {tau!r}")
    return int(round(tau * steps))


def count_kinds(model: nn.Module) -> dict[str, int]:
    """How many attention layers of each kind ``model`` has (an editor checks for any)."""
    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, Attention):
            counts[module.kind] = counts.get(module.kind, 0) + 1
    return counts


__all__ = ["AttentionStore", "INJECT_MODES", "INJECT_KINDS", "attention_probabilities",
           "injected_steps", "count_kinds"]
