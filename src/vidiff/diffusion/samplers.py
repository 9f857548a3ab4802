"""Samplers: pure functions over a denoiser ``denoiser(x_t, t, cond) -> x0_hat``.

Every sampler has one signature::

    sampler(denoiser, x, timesteps, schedule, cond=None, callback=None, generator=None, **options)

``x`` is the state at ``timesteps[0]``; ``timesteps`` is a falling 1-D grid of diffusion times
(usually ending at 0, which returns the clean sample); ``schedule`` gives ``alpha`` and
``sigma``. A sampler never sees a network, never switches gradients off (reconstruction
guidance differentiates through it), and passes ``cond`` to the denoiser untouched.
All step coefficients are computed in float64 from the schedule and applied as scalars.

``sample(denoiser, noise, schedule=..., sampler="dpmpp_2m", steps=20)`` picks the time grid
each sampler does best with and dispatches by name.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

from vidiff.diffusion.schedule import Schedule

Denoiser = Callable[[Tensor, Tensor, object], Tensor]
SPACINGS = ("uniform", "trailing", "logsnr", "karras")
DEFAULT_T_MIN = 1e-3


#################################################################################
#                                 Time grids                                    #
#################################################################################


def timesteps(schedule: Schedule, steps: int, spacing: str = "trailing",
              t_max: Optional[float] = None, t_min: float = DEFAULT_T_MIN,
              rho: float = 7.0) -> Tensor:
    """A falling grid of ``steps + 1`` diffusion times (float64), from ``t_max`` to 0.

    * ``"trailing"``: ``steps + 1`` points evenly spaced from ``t_max`` down to 0 (Lin et al.
      2023), so the first step starts at the noisiest time.
    * ``"uniform"``: ``steps`` points evenly spaced from ``t_max`` to ``t_min``, then 0.
    * ``"logsnr"``: ``steps`` points evenly spaced in log-SNR from ``t_max`` to ``t_min``,
      then 0 — the natural grid of the exponential integrators (DPM-Solver).
    * ``"karras"``: ``steps`` points with ``sigma / alpha`` spaced as in Karras et al. 2022
      (``rho = 7``) between ``t_max`` and ``t_min``, then 0 — good for Euler and Heun.

    ``t_max`` defaults to ``schedule.t_max`` (below 1 where alpha(1) = 0).
    """
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; accepted: {list(SPACINGS)}")
    t_max = schedule.t_max if t_max is None else float(t_max)
    if not 0 < t_min < t_max <= 1:
        raise ValueError(f"need 0 < t_min < t_max <= 1, got t_min={t_min}, t_max={t_max}")
    zero = torch.zeros(1, dtype=torch.float64)
    if spacing == "trailing":
        return torch.linspace(t_max, 0.0, steps + 1, dtype=torch.float64)
    if steps == 1:
        return torch.cat([torch.tensor([t_max], dtype=torch.float64), zero])
    if spacing == "uniform":
        grid = torch.linspace(t_max, t_min, steps, dtype=torch.float64)
    elif spacing == "logsnr":
        grid = log_snr_grid(schedule, steps - 1, t_max, t_min)
    else:
        grid = _karras_grid(schedule, steps, t_max, t_min, rho)
    return torch.cat([grid, zero])


def log_snr_grid(schedule: Schedule, intervals: int, t_max: float, t_min: float) -> Tensor:
    """``intervals + 1`` times from ``t_max`` to ``t_min``, evenly spaced in log-SNR (float64)."""
    bounds = schedule.log_snr(torch.tensor([t_max, t_min], dtype=torch.float64))
    if not torch.isfinite(bounds).all():
        raise ValueError(f"log-SNR is not finite at t_max={t_max} or t_min={t_min}; "
                         "choose t_max < 1 for schedules with alpha(1) = 0")
    lam = torch.linspace(float(bounds[0]), float(bounds[1]), intervals + 1, dtype=torch.float64)
    grid = schedule.t_from_log_snr(lam)
    grid[0], grid[-1] = t_max, t_min  # exact end points (bisection is accurate to ~1e-16)
    return grid


def _karras_grid(schedule: Schedule, steps: int, t_max: float, t_min: float, rho: float) -> Tensor:
    lam = schedule.log_snr(torch.tensor([t_max, t_min], dtype=torch.float64))
    if not torch.isfinite(lam).all():
        raise ValueError(f"karras spacing needs a finite log-SNR at t_max={t_max}, t_min={t_min}")
    s_max, s_min = torch.exp(-lam / 2)  # sigma / alpha
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    k = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    grid = schedule.t_from_log_snr(-2 * torch.log(k))
    grid[0], grid[-1] = t_max, t_min
    return grid


#################################################################################
#                                  Helpers                                      #
#################################################################################


def _check_grid(x: Tensor, ts: Tensor) -> Tensor:
    ts = torch.as_tensor(ts, dtype=torch.float64).flatten().cpu()
    if ts.numel() < 2:
        raise ValueError(f"a timestep grid needs at least 2 points, got {ts.numel()}")
    if (ts < 0).any() or (ts > 1).any():
        raise ValueError(f"timesteps must lie in [0, 1], got {ts.tolist()}")
    if x.ndim < 1:
        raise ValueError("the state x must have a batch dimension")
    return ts


def _scalars(schedule: Schedule, t: float) -> tuple[float, float]:
    alpha, sigma = schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64))
    return float(alpha), float(sigma)


def _step(schedule: Schedule, ts: Tensor, i: int) -> tuple[float, float, float, float, float, float]:
    """``(t, s, alpha_t, sigma_t, alpha_s, sigma_s)`` of the step from ``ts[i]`` to ``ts[i + 1]``."""
    t, s = float(ts[i]), float(ts[i + 1])
    return (t, s, *_scalars(schedule, t), *_scalars(schedule, s))


def _call(denoiser: Denoiser, x: Tensor, t: float, cond) -> Tensor:
    t_batch = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
    x0 = denoiser(x, t_batch, cond)
    if x0.shape != x.shape:
        raise ValueError(f"the denoiser returned shape {tuple(x0.shape)} for input {tuple(x.shape)}; "
                         "it must return x0_hat of the input's shape")
    return x0


def _report(callback, i: int, n: int, t: float, x: Tensor, x0: Tensor) -> None:
    if callback is not None:
        callback({"step": i, "steps": n, "t": t, "x": x, "x0": x0})


def _noise_like(x: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    # Drawn on the generator's device (CPU by default) so a seed gives the same video on any device.
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


#################################################################################
#                                  Samplers                                     #
#################################################################################


def sample_ddim(denoiser: Denoiser, x: Tensor, timesteps: Tensor, schedule: Schedule, cond=None,
                callback=None, generator: Optional[torch.Generator] = None, eta: float = 0.0) -> Tensor:
    """DDIM (Song et al. 2021). ``eta = 0``: deterministic; ``eta = 1``: DDPM ancestral.

    Each step ``t -> s`` moves to ``alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z`` with
    ``c^2 = eta^2`` times the variance of the forward posterior ``q(x_s | x_t, x0)``
    (written for any schedule, so it also serves flow schedules).
    """
    ts = _check_grid(x, timesteps)
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    n = len(ts) - 1
    for i in range(n):
        t, s, a_t, s_t, a_s, s_s = _step(schedule, ts, i)
        x0 = _call(denoiser, x, t, cond)
        if s_s == 0.0:
            x = x0
        else:
            eps = (x - a_t * x0) / s_t
            c = 0.0
            if eta > 0:
                a_ts = a_t / a_s
                var_ts = max(s_t**2 - a_ts**2 * s_s**2, 0.0)      # variance of q(x_t | x_s)
                c = eta * math.sqrt(s_s**2 * var_ts / s_t**2)      # eta * posterior std
            x = a_s * x0 + math.sqrt(max(s_s**2 - c**2, 0.0)) * eps
            if c > 0:
                x = x + c * _noise_like(x, generator)
        _report(callback, i, n, t, x, x0)
    return x


def sample_ddpm(denoiser: Denoiser, x: Tensor, timesteps: Tensor, schedule: Schedule, cond=None,
                callback=None, generator: Optional[torch.Generator] = None) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020): each step samples the forward posterior
    ``q(x_s | x_t, x0 = x0_hat)``; equal to DDIM with ``eta = 1``."""
    return sample_ddim(denoiser, x, timesteps, schedule, cond, callback, generator, eta=1.0)


def _sigma_over_alpha(a: float, s: float) -> float:
    if a == 0.0:
        raise ValueError("euler/heun integrate in sigma/alpha, which is infinite where alpha = 0; "
                         "start below t = 1 (the default t_max does)")
    return s / a


def sample_euler(denoiser: Denoiser, x: Tensor, timesteps: Tensor, schedule: Schedule, cond=None,
                 callback=None, generator: Optional[torch.Generator] = None) -> Tensor:
    """Euler's method on the probability-flow ODE (Karras et al. 2022).

    The ODE is integrated in ``y = x / alpha`` over ``k = sigma / alpha``, where it reads
    ``dy/dk = eps_hat``: nearly straight paths, and any schedule (flow included) maps onto it.
    First order; algebraically the same update as deterministic DDIM.
    """
    ts = _check_grid(x, timesteps)
    n = len(ts) - 1
    for i in range(n):
        t, s, a_t, s_t, a_s, s_s = _step(schedule, ts, i)
        k_t = _sigma_over_alpha(a_t, s_t)
        x0 = _call(denoiser, x, t, cond)
        eps = (x - a_t * x0) / s_t                                     # dy/dk at (x, t)
        x = a_s * (x / a_t + (s_s / a_s - k_t) * eps)
        _report(callback, i, n, t, x, x0)
    return x


def sample_heun(denoiser: Denoiser, x: Tensor, timesteps: Tensor, schedule: Schedule, cond=None,
                callback=None, generator: Optional[torch.Generator] = None) -> Tensor:
    """Heun's second-order method on the probability-flow ODE (Karras et al. 2022, Alg. 1).

    Same variables as :func:`sample_euler`; the slope is averaged with a second evaluation at
    the end of the step (two denoiser calls per step, one on the last step into t = 0).
    """
    ts = _check_grid(x, timesteps)
    n = len(ts) - 1
    for i in range(n):
        t, s, a_t, s_t, a_s, s_s = _step(schedule, ts, i)
        k_t = _sigma_over_alpha(a_t, s_t)
        x0 = _call(denoiser, x, t, cond)
        eps = (x - a_t * x0) / s_t
        if s_s == 0.0:
            x_next = x0
        else:
            k_s = s_s / a_s
            x_euler = a_s * (x / a_t + (k_s - k_t) * eps)
            eps_s = (x_euler - a_s * _call(denoiser, x_euler, s, cond)) / s_s
            x_next = a_s * (x / a_t + (k_s - k_t) * 0.5 * (eps + eps_s))
        x = x_next
        _report(callback, i, n, t, x, x0)
    return x


def sample_dpmpp_2m(denoiser: Denoiser, x: Tensor, timesteps: Tensor, schedule: Schedule, cond=None,
                    callback=None, generator: Optional[torch.Generator] = None) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022): a second-order multistep exponential integrator in
    data prediction, over ``lambda = log(alpha / sigma)``. The first step is first order; the
    step into ``sigma = 0`` returns ``x0_hat``."""
    ts = _check_grid(x, timesteps)
    n = len(ts) - 1
    x0_prev, h_prev = None, None
    for i in range(n):
        t, s, a_t, s_t, a_s, s_s = _step(schedule, ts, i)
        x0 = _call(denoiser, x, t, cond)
        if s_s == 0.0:
            x = x0
        else:
            if a_t == 0.0:
                raise ValueError("dpmpp_2m needs a finite log-SNR: start below t = 1 "
                                 "(the default t_max does)")
            h = math.log(a_s / s_s) - math.log(a_t / s_t)
            if x0_prev is None:
                d = x0
            else:
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            x = (s_s / s_t) * x - a_s * math.expm1(-h) * d
            x0_prev, h_prev = x0, h
        _report(callback, i, n, t, x, x0)
    return x


def ddim_invert(denoiser: Denoiser, x: Tensor, timesteps: Tensor, schedule: Schedule, cond=None,
                callback=None, generator: Optional[torch.Generator] = None, refine: int = 0) -> Tensor:
    """DDIM inversion: runs deterministic DDIM backwards, clean ``x`` -> noise at ``timesteps[0]``.

    ``timesteps`` is the falling grid the matching :func:`sample_ddim` call would use; it is
    walked from its end to its start. Each step ``t -> s`` (``s > t``) first evaluates the
    denoiser at the current, less noisy point (the usual approximation of the implicit
    backward step); ``refine`` fixed-point iterations then re-evaluate it at the new point
    ``y`` until ``sample_ddim``'s step ``s -> t`` maps ``y`` back onto ``x`` (Pan et al. 2023),
    at one denoiser call each. From ``t = 0`` the clean input cannot be denoised, so the first
    step starts from ``y = x`` and refinement solves ``x0_hat(y, s) = x``.
    """
    ts = _check_grid(x, timesteps).flip(0)                    # rising
    if refine < 0:
        raise ValueError(f"refine must be >= 0, got {refine}")
    n = len(ts) - 1
    for i in range(n):
        t, s, a_t, s_t, a_s, s_s = _step(schedule, ts, i)
        if s_t == 0.0:
            y, x0 = x, x
            for _ in range(refine):
                y = y + a_s * (x - _call(denoiser, y, s, cond))
        else:
            x0 = _call(denoiser, x, t, cond)
            y = a_s * x0 + s_s * (x - a_t * x0) / s_t
            for _ in range(refine):
                d = _call(denoiser, y, s, cond)
                y = a_s * d + s_s * (x - a_t * d) / s_t
        x = y
        _report(callback, i, n, t, x, x0)
    return x


SAMPLERS: dict[str, Callable] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler": sample_euler,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
}

# The grid each sampler does best with when the caller gives none.
DEFAULT_SPACING = {
    "ddpm": "trailing",
    "ddim": "trailing",
    "euler": "karras",
    "heun": "karras",
    "dpmpp_2m": "logsnr",
}


#################################################################################
#                                Entry points                                   #
#################################################################################


def _resolve(sampler: str) -> Callable:
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; accepted: {sorted(SAMPLERS)}")
    return SAMPLERS[sampler]


def sample(denoiser: Denoiser, noise: Tensor, schedule: Schedule, sampler: str = "dpmpp_2m",
           steps: int = 20, cond=None, generator: Optional[torch.Generator] = None,
           callback=None, spacing: Optional[str] = None, t_max: Optional[float] = None,
           t_min: float = DEFAULT_T_MIN, **options) -> Tensor:
    """Draw clean samples: ``noise (B, ...)`` is the state at the first time of the grid.

    For schedules whose alpha reaches ~0 at ``t_max`` that state is standard normal noise.
    ``spacing`` defaults to the sampler's own (``DEFAULT_SPACING``); ``options`` go to the
    sampler (``eta`` for ddim). Heun makes two denoiser calls per step but the last.
    Returns ``x0 (B, ...)`` in ``noise``'s dtype.
    """
    fn = _resolve(sampler)
    grid = timesteps(schedule, steps, spacing or DEFAULT_SPACING[sampler], t_max=t_max, t_min=t_min)
    return fn(denoiser, noise, grid, schedule, cond=cond, callback=callback, generator=generator,
              **options)


def invert(denoiser: Denoiser, x0: Tensor, schedule: Schedule, steps: int = 50, cond=None,
           callback=None, spacing: str = "trailing", t_max: Optional[float] = None,
           t_min: float = DEFAULT_T_MIN, refine: int = 0) -> Tensor:
    """Clean ``x0 (B, ...)`` -> the noise that ``sample(..., sampler="ddim")`` on the same grid
    maps back to it: approximately, or to the precision of ``refine`` fixed-point iterations
    per step (see :func:`ddim_invert`)."""
    grid = timesteps(schedule, steps, spacing, t_max=t_max, t_min=t_min)
    return ddim_invert(denoiser, x0, grid, schedule, cond=cond, callback=callback, refine=refine)


def progress_callback(total: int, desc: str = "sampling", disable: bool = False):
    """A sampler callback that draws a tqdm progress bar; call ``.close()`` when done."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, disable=disable, leave=False)

    def callback(info: dict) -> None:
        bar.update(1)
        bar.set_postfix(t=f"{info['t']:.3f}")

    callback.close = bar.close
    return callback
