"""What a network predicts, how that becomes ``x0_hat``, and how training weighs ``t``.

Four parameterizations of the same denoiser, for ``x_t = alpha x0 + sigma eps``:

* ``"eps"``: the noise ``eps`` (Ho et al. 2020);
* ``"v"``: ``v = alpha eps - sigma x0`` (Salimans & Ho 2022);
* ``"x0"``: the clean sample itself;
* ``"flow"``: the velocity ``u = d x_t / dt = alpha'(t) x0 + sigma'(t) eps`` (Lipman et al.
  2023; for the flow schedule ``u = eps - x0``).

Each is an invertible linear map of ``(x0, eps)`` given ``x_t``, so the conversions below are
exact; they are written for any schedule, variance preserving or not.
"""
from __future__ import annotations

import torch
from torch import Tensor

from vidiff.diffusion.schedule import Schedule, broadcast

PARAMETERIZATIONS = ("eps", "v", "x0", "flow")
LOSS_WEIGHTINGS = ("uniform", "min_snr")
# Training-time distributions the run config accepts; the draws themselves are per-sample
# streams of the trainer (``vidiff.train.objective.SampleDraws.times``).
TIME_DISTRIBUTIONS = ("uniform", "logit_normal")


def _check_kind(kind: str) -> None:
    if kind not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {kind!r}; accepted: {list(PARAMETERIZATIONS)}")


def _coefs(schedule: Schedule, t: Tensor, like: Tensor, derivatives: bool = False):
    alpha, sigma = schedule.alpha_sigma(t.to(torch.float64))
    out = [alpha, sigma]
    if derivatives:
        out += list(schedule.derivatives(t.to(torch.float64)))
    return [broadcast(c, like) for c in out]


def prediction_target(kind: str, x0: Tensor, noise: Tensor, t: Tensor, schedule: Schedule) -> Tensor:
    """The value a ``kind`` network should output for ``x_t = add_noise(x0, noise, t)``.

    ``x0, noise: (B, ...)``, ``t: (B,)`` -> ``(B, ...)``.
    """
    _check_kind(kind)
    if kind == "eps":
        return noise
    if kind == "x0":
        return x0
    if kind == "v":
        alpha, sigma = _coefs(schedule, t, x0)
        return alpha * noise - sigma * x0
    alpha, sigma, d_alpha, d_sigma = _coefs(schedule, t, x0, derivatives=True)
    return d_alpha * x0 + d_sigma * noise


def prediction_to_x0(kind: str, pred: Tensor, x_t: Tensor, t: Tensor, schedule: Schedule) -> Tensor:
    """``x0_hat`` from a ``kind`` prediction at ``(x_t, t)``: ``(B, ...)`` -> ``(B, ...)``."""
    _check_kind(kind)
    if kind == "x0":
        return pred
    if kind == "eps":
        alpha, sigma = _coefs(schedule, t, x_t)
        return (x_t - sigma * pred) / alpha
    if kind == "v":
        # [x_t; v] = [[a, s], [-s, a]] [x0; eps]  =>  x0 = (a x_t - s v) / (a^2 + s^2)
        alpha, sigma = _coefs(schedule, t, x_t)
        return (alpha * x_t - sigma * pred) / (alpha**2 + sigma**2)
    # [x_t; u] = [[a, s], [a', s']] [x0; eps]  =>  x0 = (s' x_t - s u) / (a s' - s a')
    alpha, sigma, d_alpha, d_sigma = _coefs(schedule, t, x_t, derivatives=True)
    return (d_sigma * x_t - sigma * pred) / (alpha * d_sigma - sigma * d_alpha)


def x0_to_prediction(kind: str, x0: Tensor, x_t: Tensor, t: Tensor, schedule: Schedule) -> Tensor:
    """Inverse of :func:`prediction_to_x0`: the ``kind`` prediction that yields ``x0``."""
    _check_kind(kind)
    if kind == "x0":
        return x0
    alpha, sigma = _coefs(schedule, t, x_t)
    eps = (x_t - alpha * x0) / sigma
    return prediction_target(kind, x0, eps, t, schedule)


def _x0_error_scale(kind: str, t: Tensor, schedule: Schedule) -> Tensor:
    """``c(t)`` with ``|x0_hat - x0| = c(t) |pred - target|``, for ``t: (B,)`` (float64)."""
    t64 = t.to(torch.float64)
    alpha, sigma = schedule.alpha_sigma(t64)
    if kind == "x0":
        return torch.ones_like(alpha)
    if kind == "eps":
        return sigma / alpha
    if kind == "v":
        return sigma / (alpha**2 + sigma**2)
    d_alpha, d_sigma = schedule.derivatives(t64)
    return sigma / (alpha * d_sigma - sigma * d_alpha).abs()


def loss_weight(kind: str, t: Tensor, schedule: Schedule, weighting: str = "uniform",
                gamma: float = 5.0) -> Tensor:
    """Per-sample weight ``(B,)`` of the mean-squared ``kind`` loss.

    * ``"uniform"``: 1 — the plain loss of the chosen parameterization.
    * ``"min_snr"``: Min-SNR-gamma (Hang et al. 2023): the loss measured in ``x0`` space,
      weighted by ``min(SNR, gamma)``, then expressed in the parameterization's own units,
      i.e. ``min(SNR, gamma) * c(t)^2`` with ``c`` the factor from prediction to ``x0``
      error (for eps this is ``min(SNR, gamma) / SNR``, for VP-v ``min(SNR, gamma) / (SNR + 1)``).
    """
    _check_kind(kind)
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"unknown loss weighting {weighting!r}; accepted: {list(LOSS_WEIGHTINGS)}")
    if weighting == "uniform":
        return torch.ones_like(t, dtype=torch.float32)
    if not gamma > 0:
        raise ValueError(f"min_snr gamma must be > 0, got {gamma}")
    snr = schedule.log_snr(t.to(torch.float64)).exp()
    weight = snr.clamp(max=gamma) * _x0_error_scale(kind, t, schedule) ** 2
    return weight.to(torch.float32)


def diffusion_loss(pred: Tensor, x0: Tensor, noise: Tensor, t: Tensor, schedule: Schedule,
                   kind: str, weighting: str = "uniform", gamma: float = 5.0,
                   known: Tensor | None = None, known_weight: float = 0.0) -> Tensor:
    """Weighted mean-squared error of a ``kind`` prediction ``pred (B, C, ...)``: a scalar.

    With a known-frame mask ``known (B, 1, ...)`` (1 = known), a sample's error is its mean
    over the unknown elements plus ``known_weight`` times its mean over the known ones: the
    network is trained on what it has to generate, not rewarded for copying what it is given.
    """
    target = prediction_target(kind, x0, noise, t, schedule)
    error = (pred.float() - target.float()).pow(2)
    if known is None:
        per_sample = error.flatten(1).mean(dim=1)                                 # (B,)
    else:
        k = known.float().expand_as(error).flatten(1)                             # (B, N)
        e = error.flatten(1)
        per_sample = ((e * (1 - k)).sum(1) / (1 - k).sum(1).clamp(min=1)
                      + known_weight * (e * k).sum(1) / k.sum(1).clamp(min=1))    # (B,)
    weight = loss_weight(kind, t, schedule, weighting, gamma).to(per_sample.device)
    return (weight * per_sample).mean()
