"""Noise schedules in continuous time.

A schedule maps diffusion time ``t`` in ``[0, 1]`` (``t = 0`` clean, ``t = 1`` noise) to the
signal and noise scales of ``x_t = alpha(t) * x0 + sigma(t) * noise``. Everything else in
``vidiff.diffusion`` (objectives, samplers, guidance) is written against ``alpha`` and
``sigma`` alone, so any schedule works with any sampler and any parameterization.

All schedule arithmetic runs in float64 and is cast back to the caller's dtype: near
``t = 0`` the noise scale is tiny and float32 would lose the digits that samplers divide by.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

SCHEDULES = ("linear", "cosine", "sigmoid", "flow")

# Where a schedule's alpha reaches 0 at t = 1, sampling starts at the t where the log-SNR
# equals this: alpha ~ 5.5e-4, a signal far below one step of 8-bit video.
LOG_SNR_MIN = -15.0


@dataclass(frozen=True)
class Schedule:
    """A continuous-time noise schedule: ``alpha(t)``, ``sigma(t)``, ``log_snr(t)``.

    Args:
        name: ``"linear"`` (DDPM's linear betas as the continuous VP-SDE with
            ``beta(t) = beta_min + t (beta_max - beta_min)``), ``"cosine"`` (Nichol & Dhariwal
            2021), ``"sigmoid"`` (Jabri et al. 2023) or ``"flow"`` (rectified flow,
            ``alpha = 1 - t, sigma = t``). All but flow are variance preserving
            (``alpha^2 + sigma^2 = 1``).
        shift: SD3-style resolution/length shift of the time axis,
            ``t -> shift t / (1 + (shift - 1) t)``; ``shift > 1`` spends more time at high
            noise, which larger or longer videos need (their redundancy survives more noise).
        zero_terminal_snr: rescale alpha so that ``alpha(1) = 0`` exactly (Lin et al. 2023),
            so training sees pure noise at ``t = 1`` as sampling does.
        beta_min, beta_max: the linear schedule's betas in continuous units (DDPM's 1e-4 and
            0.02 over 1000 steps are 0.1 and 20).
        cosine_offset: the cosine schedule's ``s``.
        sigmoid_start, sigmoid_end, sigmoid_tau: the sigmoid schedule's range and temperature.
    """

    name: str = "cosine"
    shift: float = 1.0
    zero_terminal_snr: bool = False
    beta_min: float = 0.1
    beta_max: float = 20.0
    cosine_offset: float = 0.008
    sigmoid_start: float = -3.0
    sigmoid_end: float = 3.0
    sigmoid_tau: float = 1.0

    def __post_init__(self):
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.name!r}; accepted: {list(SCHEDULES)}")
        if not self.shift > 0:
            raise ValueError(f"schedule shift must be > 0, got {self.shift}")
        if not 0 <= self.beta_min < self.beta_max:
            raise ValueError(f"linear schedule needs 0 <= beta_min < beta_max, "
                             f"got {self.beta_min}, {self.beta_max}")
        if not self.sigmoid_start < self.sigmoid_end or not self.sigmoid_tau > 0:
            raise ValueError("sigmoid schedule needs sigmoid_start < sigmoid_end and sigmoid_tau > 0")

    @classmethod
    def from_name(cls, name: str, **options) -> "Schedule":
        """``Schedule.from_name("cosine", shift=3.0)``; names are listed in ``SCHEDULES``."""
        return cls(name=name, **options)

    @property
    def variance_preserving(self) -> bool:
        return self.name != "flow"

    # ------------------------------------------------------------------ core maps
    def _warp(self, t: Tensor) -> Tensor:
        if self.shift == 1.0:
            return t
        return self.shift * t / (1 + (self.shift - 1) * t)

    def _base_alpha(self, t: Tensor) -> Tensor:
        """alpha of the unshifted, unrescaled schedule (float64)."""
        if self.name == "linear":
            log_alpha = -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min
            return torch.exp(log_alpha)
        if self.name == "cosine":
            s = self.cosine_offset
            alpha = torch.cos(0.5 * math.pi * (t + s) / (1 + s)) / math.cos(0.5 * math.pi * s / (1 + s))
            return alpha.clamp(0.0, 1.0)
        if self.name == "sigmoid":
            lo, hi, tau = self.sigmoid_start, self.sigmoid_end, self.sigmoid_tau
            v = torch.sigmoid((t * (hi - lo) + lo) / tau)
            v0, v1 = 1 / (1 + math.exp(-lo / tau)), 1 / (1 + math.exp(-hi / tau))
            return ((v1 - v) / (v1 - v0)).clamp(0.0, 1.0).sqrt()
        return 1.0 - t  # flow

    def _alpha_sigma64(self, t: Tensor) -> tuple[Tensor, Tensor]:
        u = self._warp(t.to(torch.float64))
        alpha = self._base_alpha(u)
        if self.zero_terminal_snr and self.variance_preserving:
            a1 = float(self._base_alpha(torch.ones((), dtype=torch.float64)))
            alpha = ((alpha - a1) / (1.0 - a1)).clamp(min=0.0)
        if self.variance_preserving:
            # sqrt(1 - alpha^2) written to keep digits when alpha is close to 1.
            sigma = torch.sqrt(((1 - alpha) * (1 + alpha)).clamp(min=0.0))
        else:
            sigma = u
        return alpha, sigma

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(alpha(t), sigma(t))`` in ``t``'s dtype (float64 inside)."""
        t = _as_time(t)
        alpha, sigma = self._alpha_sigma64(t)
        dtype = t.dtype if t.is_floating_point() else torch.float32
        return alpha.to(dtype), sigma.to(dtype)

    def alpha(self, t: Tensor) -> Tensor:
        """Signal scale ``alpha(t)``, same shape as ``t``."""
        return self.alpha_sigma(t)[0]

    def sigma(self, t: Tensor) -> Tensor:
        """Noise scale ``sigma(t)``, same shape as ``t``."""
        return self.alpha_sigma(t)[1]

    def log_snr(self, t: Tensor) -> Tensor:
        """``log(alpha^2 / sigma^2)``: +inf at ``t = 0``, falling with ``t``."""
        t = _as_time(t)
        alpha, sigma = self._alpha_sigma64(t)
        out = 2 * (torch.log(alpha) - torch.log(sigma))
        return out.to(t.dtype if t.is_floating_point() else torch.float32)

    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(d alpha / dt, d sigma / dt)`` by exact automatic differentiation (float64)."""
        t = _as_time(t)
        with torch.enable_grad():
            t64 = t.detach().to(torch.float64).requires_grad_(True)
            alpha, sigma = self._alpha_sigma64(t64)
            d_alpha, = torch.autograd.grad(alpha.sum(), t64, retain_graph=True)
            d_sigma, = torch.autograd.grad(sigma.sum(), t64)
        dtype = t.dtype if t.is_floating_point() else torch.float32
        return d_alpha.to(dtype), d_sigma.to(dtype)

    # ------------------------------------------------------------------ noising
    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """``x_t = alpha(t) x0 + sigma(t) noise`` for ``x0, noise (B, ...)`` and ``t (B,)``."""
        if x0.shape != noise.shape:
            raise ValueError(f"add_noise: x0 {tuple(x0.shape)} and noise {tuple(noise.shape)} differ")
        if t.ndim != 1 or t.shape[0] != x0.shape[0]:
            raise ValueError(f"add_noise: t must have shape (B,) = ({x0.shape[0]},), got {tuple(t.shape)}")
        alpha, sigma = self.alpha_sigma(t.to(x0.dtype))
        return broadcast(alpha, x0) * x0 + broadcast(sigma, x0) * noise

    # ------------------------------------------------------------------ time grid helpers
    def t_from_log_snr(self, log_snr: Tensor) -> Tensor:
        """Inverse of ``log_snr`` by bisection (float64); log-SNR falls monotonically in ``t``."""
        target = torch.as_tensor(log_snr, dtype=torch.float64)
        lo = torch.zeros_like(target)
        hi = torch.ones_like(target)
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            above = self.log_snr(mid) > target
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return 0.5 * (lo + hi)

    @property
    def t_max(self) -> float:
        """Default first sampling time: 1, or where log-SNR = ``LOG_SNR_MIN`` if alpha(1) ~ 0.

        Schedules whose alpha reaches 0 (cosine, sigmoid, flow, zero-terminal-SNR) are
        clamped below 1 because an eps-parameterized denoiser divides by alpha and the
        log-SNR samplers need a finite log-SNR. Pass ``t_max=1.0`` to samplers that allow it.
        """
        one = torch.ones((), dtype=torch.float64)
        if float(self.log_snr(one)) >= LOG_SNR_MIN:
            return 1.0
        return float(self.t_from_log_snr(torch.tensor(LOG_SNR_MIN)))


def _as_time(t) -> Tensor:
    t = torch.as_tensor(t)
    if not t.is_floating_point():
        t = t.to(torch.float32)
    if t.numel() and (bool((t < 0).any()) or bool((t > 1).any()) or bool(t.isnan().any())):
        bad = t[(t < 0) | (t > 1) | t.isnan()].flatten()[0].item()
        raise ValueError(f"diffusion time t must lie in [0, 1], got {bad}")
    return t


def broadcast(coef: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample ``(B,)`` coefficient to broadcast against ``like (B, ...)``."""
    return coef.to(like.dtype).reshape(coef.shape + (1,) * (like.ndim - coef.ndim))
