"""Data whose optimal denoiser is known in closed form: x0 ~ N(mean, std^2) per element.

Used by ``vidiff check`` to measure every sampler against the exact probability-flow ODE
solution on this machine, and useful whenever a sampler change needs a ground truth.
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


def check_samplers(schedule: Schedule, samplers: list[str], steps: list[int], n: int = 4096,
                   seed: int = 0) -> list[dict]:
    """Each sampler's error against the exact ODE solution, and its measured order.

    Returns one row per (sampler, steps): ``max_error`` of the final samples (deterministic
    samplers; for ddpm the error of the sample standard deviation instead), ``std`` of the
    samples (exact: the data std), ``seconds``; plus per sampler the empirical convergence
    ``order`` on a log-SNR grid between t = 0.9 and t = 0.05.
    """
    denoiser = GaussianDenoiser(schedule)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 1, dtype=torch.float64, generator=g)
    exact = denoiser.mean + denoiser.std * z
    rows = []
    for name in samplers:
        order = _order(denoiser, name, z[:256])
        for count in steps:
            start = time.perf_counter()
            out = sample(denoiser, denoiser.ode_state(schedule.t_max, z), schedule=schedule,
                         sampler=name, steps=count, generator=g)
            seconds = time.perf_counter() - start
            error = abs(float(out.std()) - denoiser.std) if name == "ddpm" else \
                float((out - exact).abs().max())
            rows.append({"sampler": name, "steps": count, "max_error": error,
                         "std": float(out.std()), "order": order, "seconds": seconds})
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
