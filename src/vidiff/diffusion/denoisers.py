"""Denoiser wrappers: a network and its parameterization become ``denoiser(x_t, t, cond) -> x0_hat``,
and classifier-free guidance wraps any denoiser.

Samplers only ever see these callables, so a new network or an external model is one adapter.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from vidiff.diffusion.objectives import PARAMETERIZATIONS, prediction_to_x0
from vidiff.diffusion.schedule import Schedule, broadcast


class NetworkDenoiser:
    """``network(x_t, t, cond) -> prediction`` plus its parameterization, as a denoiser.

    Args:
        network: any callable taking ``(x_t (B, ...), t (B,), cond)`` and returning a
            ``(B, ...)`` prediction of kind ``parameterization``.
        schedule: the schedule the network was trained with.
        parameterization: ``"eps"``, ``"v"``, ``"x0"`` or ``"flow"``.
    """

    def __init__(self, network: Callable, schedule: Schedule, parameterization: str):
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r}; "
                             f"accepted: {list(PARAMETERIZATIONS)}")
        self.network, self.schedule, self.parameterization = network, schedule, parameterization

    def __call__(self, x: Tensor, t: Tensor, cond=None) -> Tensor:
        # x: (B, C, T, H, W), t: (B,) -> x0_hat (B, C, T, H, W)
        pred = self.network(x, t, cond)
        return prediction_to_x0(self.parameterization, pred, x, t, self.schedule)


class GuidedDenoiser:
    """Classifier-free guidance (Ho & Salimans 2022) around any denoiser.

    The conditional and unconditional passes run as one batched call on
    ``cond.cat(cond.null(**null_options))``; the result is
    ``x0_u + scale * (x0_c - x0_u)`` (guiding ``x0_hat`` is the same as guiding ``eps``: both
    are affine in the prediction with the same coefficients at fixed ``x_t``).

    ``rescale`` (phi, Lin et al. 2023) pulls the guided prediction's per-sample standard
    deviation back towards the conditional one, ``phi * x_cfg * std(x_c) / std(x_cfg) +
    (1 - phi) * x_cfg``, which undoes the over-saturation that large scales cause.
    ``scale = 1`` or ``cond = None`` skip guidance entirely (one pass, no extra cost).
    ``negative`` (a Conditioning of the same batch size, e.g. a negative prompt) replaces
    the null condition in the unconditional pass.
    """

    def __init__(self, denoiser: Callable, scale: float, rescale: float = 0.0,
                 null_options: Optional[dict] = None, negative=None):
        if not 0.0 <= rescale <= 1.0:
            raise ValueError(f"guidance rescale must be in [0, 1], got {rescale}")
        self.denoiser, self.scale, self.rescale = denoiser, float(scale), float(rescale)
        self.null_options, self.negative = null_options or {}, negative

    def __call__(self, x: Tensor, t: Tensor, cond=None) -> Tensor:
        if cond is None or self.scale == 1.0:
            return self.denoiser(x, t, cond)
        uncond = self.negative if self.negative is not None else cond.null(**self.null_options)
        both = cond.cat(uncond)
        out = self.denoiser(torch.cat([x, x]), torch.cat([t, t]), both)      # (2B, ...)
        x_c, x_u = out.chunk(2)
        guided = x_u + self.scale * (x_c - x_u)
        if self.rescale > 0:
            dims = tuple(range(1, x.ndim))
            ratio = x_c.std(dim=dims) / guided.std(dim=dims).clamp(min=1e-12)  # (B,)
            guided = self.rescale * guided * broadcast(ratio, guided) + (1 - self.rescale) * guided
        return guided
