"""Replacement and reconstruction guidance, checked against the exact Gaussian denoiser."""
import pytest
import torch

from vidiff.conditioning import Conditioning
from vidiff.diffusion import KnownFramesDenoiser, Schedule

T = 6                          # a "video" of 6 one-pixel frames, correlated in time
SCHEDULE = Schedule.from_name("cosine")


def _prior() -> torch.Tensor:
    f = torch.arange(T, dtype=torch.float64)
    return 0.25 * 0.9 ** (f[:, None] - f[None]).abs()           # Cov(x0), (T, T)


def _exact_denoiser(sigma_x: torch.Tensor):
    """E[x0 | x_t] for x0 ~ N(0, sigma_x): alpha S (alpha^2 S + sigma^2 I)^-1 x_t."""
    def denoise(x, t, cond=None):
        alpha, sigma = (float(v) for v in SCHEDULE.alpha_sigma(t[:1].double()))
        A = alpha * sigma_x @ torch.linalg.inv(alpha ** 2 * sigma_x + sigma ** 2 * torch.eye(T, dtype=torch.float64))
        return (x.reshape(x.shape[0], T) @ A.T).reshape(x.shape)
    return denoise


def _posterior_cov(sigma_x, t):
    alpha, sigma = (float(v) for v in SCHEDULE.alpha_sigma(torch.tensor([t], dtype=torch.float64)))
    inv = torch.linalg.inv(alpha ** 2 * sigma_x + sigma ** 2 * torch.eye(T, dtype=torch.float64))
    return sigma_x - alpha ** 2 * sigma_x @ inv @ sigma_x


def _setup(t: float, known: list[int], seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sigma_x = _prior()
    x0 = (torch.linalg.cholesky(sigma_x) @ torch.randn(T, generator=g, dtype=torch.float64)).reshape(1, 1, T, 1, 1)
    noise = torch.randn(1, 1, T, 1, 1, generator=g, dtype=torch.float64)
    tt = torch.tensor([t], dtype=torch.float64)
    x_t = SCHEDULE.add_noise(x0, torch.randn(1, 1, T, 1, 1, generator=g, dtype=torch.float64), tt)
    mask = torch.zeros(1, 1, T, 1, 1, dtype=torch.float64)
    mask[:, :, known] = 1.0
    return sigma_x, x0, noise, tt, x_t, Conditioning(known=x0 * mask, mask=mask)


def _exact_conditional(sigma_x, x_t_replaced, tt, x0, known):
    """E[x0 | x_t, x0_known]: the posterior of x0 given x_t, conditioned on its known part."""
    t = float(tt)
    post_mean = _exact_denoiser(sigma_x)(x_t_replaced, tt).reshape(T)
    P = _posterior_cov(sigma_x, t)
    u = [i for i in range(T) if i not in known]
    a = x0.reshape(T)[known]
    gain = P[u][:, known] @ torch.linalg.inv(P[known][:, known])
    return post_mean[u] + gain @ (a - post_mean[known]), u


@pytest.mark.parametrize("t", [0.3, 0.5, 0.7])
def test_one_known_frame_weighted_by_its_posterior_variance_gives_the_exact_conditional_mean(t):
    sigma_x, x0, noise, tt, x_t, cond = _setup(t, [2])
    denoise = _exact_denoiser(sigma_x)
    P = _posterior_cov(sigma_x, t)
    # With one known value the exact update is P_uk / P_kk times the residual; the wrapper's
    # step is weight * P_uk * (alpha^2 + sigma^2) / sigma^2 times it, which fixes the weight.
    alpha, sigma = (float(v) for v in SCHEDULE.alpha_sigma(tt))
    weight = sigma ** 2 / (float(P[2, 2]) * (alpha ** 2 + sigma ** 2))
    guided = KnownFramesDenoiser(denoise, SCHEDULE, "guidance", noise, weight=weight)(x_t, tt, cond)
    replaced = cond.mask * SCHEDULE.add_noise(x0, noise, tt) + (1 - cond.mask) * x_t
    exact, u = _exact_conditional(sigma_x, replaced, tt, x0, [2])
    assert torch.allclose(guided.reshape(T)[u], exact, atol=1e-9)
    assert guided.reshape(T)[2] == x0.reshape(T)[2]                 # the known value, pasted


@pytest.mark.parametrize("t", [0.3, 0.6, 0.9])
def test_guidance_moves_the_unknown_mean_towards_the_exact_conditional_mean(t):
    known = [0, 1]
    errors = {"replace": 0.0, "guidance": 0.0}
    for seed in range(20):
        sigma_x, x0, noise, tt, x_t, cond = _setup(t, known, seed)
        replaced = cond.mask * SCHEDULE.add_noise(x0, noise, tt) + (1 - cond.mask) * x_t
        exact, u = _exact_conditional(sigma_x, replaced, tt, x0, known)
        for method in errors:
            out = KnownFramesDenoiser(_exact_denoiser(sigma_x), SCHEDULE, method, noise, weight=1.0)(x_t, tt, cond)
            errors[method] += float((out.reshape(T)[u] - exact).pow(2).sum())
    assert errors["guidance"] < 0.5 * errors["replace"], errors


def test_replacement_noises_the_known_part_and_pastes_it_back():
    seen = {}

    def record(x, t, cond=None):
        seen["x"], seen["cond"] = x.clone(), cond
        return torch.zeros_like(x)
    sigma_x, x0, noise, tt, x_t, cond = _setup(0.5, [0, 3])
    out = KnownFramesDenoiser(record, SCHEDULE, "replace", noise)(x_t, tt, cond)
    expected_x = torch.where(cond.mask > 0, SCHEDULE.add_noise(x0, noise, tt), x_t)
    assert torch.allclose(seen["x"], expected_x)
    assert seen["cond"] is None                   # the inner denoiser never sees known frames
    assert torch.equal(out, cond.known)           # known pasted, zeros elsewhere


def test_guidance_weight_zero_is_replacement_and_negative_is_refused():
    sigma_x, x0, noise, tt, x_t, cond = _setup(0.5, [1])
    a = KnownFramesDenoiser(_exact_denoiser(sigma_x), SCHEDULE, "guidance", noise, weight=0.0)(x_t, tt, cond)
    b = KnownFramesDenoiser(_exact_denoiser(sigma_x), SCHEDULE, "replace", noise)(x_t, tt, cond)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match=">= 0"):
        KnownFramesDenoiser(_exact_denoiser(sigma_x), SCHEDULE, "guidance", noise, weight=-1.0)
    with pytest.raises(ValueError, match="'replace' or 'guidance'"):
        KnownFramesDenoiser(_exact_denoiser(sigma_x), SCHEDULE, "mask", noise)
