"""Exponential moving average of model weights, kept in float32."""
from __future__ import annotations

import torch
from torch import nn


class EMA:
    """An averaged copy of a module's trainable parameters (and its buffers).

    ``decay`` is the target; with ``warmup`` the effective decay is
    ``min(decay, (1 + step) / (10 + step))`` so early, untrained weights fade quickly instead
    of dominating the average for thousands of steps.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup = decay, warmup
        self.shadow = {name: p.detach().float().clone()
                       for name, p in model.named_parameters() if p.requires_grad}

    def current_decay(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = self.current_decay(step)
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(p.detach().float(), 1.0 - decay)

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """A full state dict of ``model`` with averaged parameters (frozen ones as they are)."""
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        for name, value in self.shadow.items():
            state[name] = value.to(state[name].dtype)
        return state

    def load_shadow(self, state: dict[str, torch.Tensor]) -> None:
        for name in self.shadow:
            if name not in state:
                raise KeyError(f"EMA state is missing parameter {name!r}")
            value = state[name].detach().float().clone()
            current = self.shadow[name]
            if hasattr(current, "device_mesh"):  # FSDP: keep this rank's shard of the full tensor
                # Imported here for start-up time: torch.distributed.tensor adds about a second
                # to every `vidiff` command, and only FSDP runs (which already loaded it) get here.
                from torch.distributed.tensor import distribute_tensor
                value = distribute_tensor(value.to(current.device), current.device_mesh, current.placements)
            self.shadow[name] = value
