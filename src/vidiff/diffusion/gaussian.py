"""Data whose optimal denoiser is known in closed form: x0 ~ N(mean, std^2) per element.

Used by ``vidiff check`` to measure every sampler against the exact probability-flow ODE
solution on this machine, and useful whenever a sampler change needs a ground truth. The
denoiser is elementwise, so rows (and elements) of a batch never interact.
"""
from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from vidiff.diffusion.samplers import SAMPLERS, log_snr_grid, sample
from vidiff.diffusion.schedule import Schedule, broadcast


class GaussianDenoiser:
    """The optimal denoiser for x0 ~ N(mean, std^2):
    ``D(x_t, t) = mean + alpha std^2 / (alpha^2 std^2 + sigma^2) (x_t - alpha mean)``."""

    def __init__(self, schedule: Schedule, mean: float = 0.5, std: float = 0.5):
        self.schedule, self.mean, self.std = schedule, mean, std

    def __call__(self, x: Tensor, t: Tensor, cond=None) -> Tensor:
        alpha, sigma = self.schedule.alpha_sigma(t.to(torch.float64))
        gain = alpha * self.std**2 / (alpha**2 * self.std**2 + sigma**2)
        return self.mean + broadcast(gain, x) * (x - broadcast(alpha, x) * self.mean)

    def ode_state(self, t: float, z: Tensor) -> Tensor:
        """Exact probability-flow ODE state at time ``t`` for standardized coordinates ``z``:
        the ODE keeps ``(x_t - alpha mean) / sqrt(alpha^2 std^2 + sigma^2)`` constant."""
        alpha, sigma = self.schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64))
        return alpha * self.mean + z * torch.sqrt(alpha**2 * self.std**2 + sigma**2)

    def standardize(self, t: float, x: Tensor) -> Tensor:
        """Inverse of :meth:`ode_state`: the ODE's invariant ``z`` of a state ``x`` at time ``t``."""
        alpha, sigma = self.schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64))
        return (x - alpha * self.mean) / torch.sqrt(alpha**2 * self.std**2 + sigma**2)

    def ode_solution(self, x: Tensor, t: float, s: float = 0.0) -> Tensor:
        """The exact probability-flow ODE solution at time ``s`` started from ``x`` at time ``t``
        (any shape, elementwise); ``s = 0`` gives the endpoint a deterministic sampler whose
        grid starts at ``t`` should land on."""
        return self.ode_state(s, self.standardize(t, x))


def relative_l2(out: Tensor, exact: Tensor) -> float:
    """``||out - exact|| / ||exact||`` over all elements."""
    return float((out - exact).norm() / exact.norm())


def check_samplers(schedule: Schedule, samplers: list[str], steps: list[int], n: int = 4096,
                   seed: int = 0) -> list[dict]:
    """Each sampler at ``sample()``'s default settings against the exact answer, and its order.

    Every sampler starts from the same standard normal noise ``(n, 1)`` at the schedule's
    ``t_max`` (the first time of every default grid). Returns one row per (sampler, steps):
    ``rel_l2``, the relative L2 error ``||out - exact|| / ||exact||`` against the exact
    probability-flow endpoint of that noise (nan for ddpm, which is stochastic); ``max_error``,
    the largest absolute error (for ddpm the error of the sample standard deviation instead);
    ``std_error``, the relative error of the samples' standard deviation against the data's;
    ``std`` of the samples; ``seconds``; plus per sampler the empirical convergence ``order``
    on a log-SNR grid between t = 0.9 and t = 0.05.
    """
    denoiser = GaussianDenoiser(schedule)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 1, dtype=torch.float64, generator=g)
    exact = denoiser.ode_solution(noise, schedule.t_max)
    rows = []
    for name in samplers:
        order = _order(denoiser, name, denoiser.standardize(schedule.t_max, noise[:256]))
        for count in steps:
            start = time.perf_counter()
            out = sample(denoiser, noise, schedule=schedule, sampler=name, steps=count, generator=g)
            seconds = time.perf_counter() - start
            std = float(out.std())
            stochastic = name == "ddpm"
            rows.append({"sampler": name, "steps": count,
                         "rel_l2": float("nan") if stochastic else relative_l2(out, exact),
                         "max_error": abs(std - denoiser.std) if stochastic else
                         float((out - exact).abs().max()),
                         "std_error": abs(std / denoiser.std - 1), "std": std, "order": order,
                         "seconds": seconds})
    return rows


def _order(denoiser: GaussianDenoiser, sampler: str, z: Tensor) -> float:
    if sampler == "ddpm":
        return float("nan")  # stochastic: its error is a distributional one
    counts = [32, 64, 128]
    exact = denoiser.ode_state(0.05, z)
    errors = []
    for count in counts:
        grid = log_snr_grid(denoiser.schedule, count, 0.9, 0.05)
        out = SAMPLERS[sampler](denoiser, denoiser.ode_state(0.9, z), grid, denoiser.schedule)
        errors.append(float((out - exact).abs().max()))
    return math.log(errors[0] / errors[-1]) / math.log(counts[-1] / counts[0])
