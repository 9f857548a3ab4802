"""Schedules against their closed forms."""
import math

import pytest
import torch

from vidiff.diffusion import SCHEDULES, Schedule

T = torch.linspace(0, 1, 101, dtype=torch.float64)


def test_flow_is_rectified_flow():
    s = Schedule.from_name("flow")
    alpha, sigma = s.alpha_sigma(T)
    assert torch.allclose(alpha, 1 - T) and torch.allclose(sigma, T)


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
def test_variance_preserving(name):
    alpha, sigma = Schedule.from_name(name).alpha_sigma(T)
    assert torch.allclose(alpha**2 + sigma**2, torch.ones_like(T), atol=1e-12)
    assert float(alpha[0]) == pytest.approx(1.0) and float(sigma[0]) == pytest.approx(0.0)


def test_linear_matches_discrete_ddpm_betas():
    # DDPM: betas linspace(1e-4, 0.02, 1000), alpha_bar_i = prod_{j<=i}(1 - beta_j).
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    alpha = Schedule.from_name("linear").alpha(t)
    assert torch.allclose(alpha**2, alpha_bar, atol=2e-3)
    # The continuous SDE integrates beta where the chain multiplies (1 - beta): the terminal
    # alpha_bar (~4e-5) differs by exp(sum beta^2 / 2) ~ 7%, not more.
    assert float((alpha[-1] ** 2 / alpha_bar[-1]).log().abs()) < 0.08


def test_cosine_closed_form_midpoint():
    s = 0.008
    t_mid = torch.tensor(0.5 * (1 + s) - s, dtype=torch.float64)  # (t + s) / (1 + s) = 1/2
    expected = math.cos(math.pi / 4) ** 2 / math.cos(0.5 * math.pi * s / (1 + s)) ** 2
    assert float(Schedule.from_name("cosine").alpha(t_mid) ** 2) == pytest.approx(expected, rel=1e-12)


def test_sigmoid_end_points_and_monotone():
    alpha = Schedule.from_name("sigmoid").alpha(T)
    assert float(alpha[0]) == pytest.approx(1.0) and float(alpha[-1]) == pytest.approx(0.0, abs=1e-12)
    assert (alpha[1:] <= alpha[:-1]).all()


@pytest.mark.parametrize("name", SCHEDULES)
def test_log_snr_falls_and_inverts(name):
    s = Schedule.from_name(name)
    inner = T[1:-1]
    lam = s.log_snr(inner)
    assert (lam[1:] < lam[:-1]).all()
    assert torch.allclose(s.t_from_log_snr(lam), inner, atol=1e-9)
    alpha, sigma = s.alpha_sigma(inner)
    assert torch.allclose(lam, torch.log(alpha**2 / sigma**2), atol=1e-9)


def test_shift_warps_time_sd3_style():
    base, shifted = Schedule.from_name("flow"), Schedule.from_name("flow", shift=3.0)
    # SD3: sigma_shifted(t) = shift t / (1 + (shift - 1) t)
    assert torch.allclose(shifted.sigma(T), 3 * T / (1 + 2 * T))
    cos, cos3 = Schedule.from_name("cosine"), Schedule.from_name("cosine", shift=3.0)
    assert torch.allclose(cos3.alpha(T), cos.alpha(3 * T / (1 + 2 * T)))
    assert (shifted.sigma(T[1:-1]) > base.sigma(T[1:-1])).all()


def test_zero_terminal_snr():
    plain = Schedule.from_name("linear")
    zt = Schedule.from_name("linear", zero_terminal_snr=True)
    a1 = float(plain.alpha(torch.tensor(1.0, dtype=torch.float64)))
    assert a1 > 1e-3  # the plain linear schedule leaves signal at t = 1
    assert float(zt.alpha(torch.tensor(1.0))) == 0.0
    assert float(zt.alpha(torch.tensor(0.0))) == pytest.approx(1.0)
    assert torch.allclose(zt.alpha(T), (plain.alpha(T) - a1) / (1 - a1))
    assert zt.t_max < 1.0 and plain.t_max == 1.0


@pytest.mark.parametrize("name", SCHEDULES)
def test_derivatives_match_finite_differences(name):
    s = Schedule.from_name(name, shift=2.0)
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-6
    d_alpha, d_sigma = s.derivatives(t)
    assert torch.allclose(d_alpha, (s.alpha(t + h) - s.alpha(t - h)) / (2 * h), rtol=1e-5, atol=1e-6)
    assert torch.allclose(d_sigma, (s.sigma(t + h) - s.sigma(t - h)) / (2 * h), rtol=1e-5, atol=1e-6)


def test_t_max_clamps_where_alpha_vanishes():
    for name in ("cosine", "sigmoid", "flow"):
        s = Schedule.from_name(name)
        assert 0.99 < s.t_max < 1.0
        assert float(s.log_snr(torch.tensor(s.t_max, dtype=torch.float64))) == pytest.approx(-15.0, abs=1e-6)


def test_add_noise_is_alpha_x0_plus_sigma_noise():
    s = Schedule.from_name("cosine")
    x0, noise = torch.randn(3, 2, 4, 5, 5), torch.randn(3, 2, 4, 5, 5)
    t = torch.tensor([0.1, 0.5, 0.9])
    alpha, sigma = s.alpha_sigma(t)
    expected = torch.stack([alpha[i] * x0[i] + sigma[i] * noise[i] for i in range(3)])
    assert torch.allclose(s.add_noise(x0, noise, t), expected, atol=1e-6)


def test_bad_input():
    with pytest.raises(ValueError, match="unknown schedule 'cosin'.*cosine"):
        Schedule.from_name("cosin")
    s = Schedule.from_name("cosine")
    with pytest.raises(ValueError, match=r"\[0, 1\].*1.5"):
        s.alpha(torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="-0.1"):
        s.add_noise(torch.zeros(1, 3), torch.zeros(1, 3), torch.tensor([-0.1]))
    with pytest.raises(ValueError, match=r"\(B,\)"):
        s.add_noise(torch.zeros(2, 3), torch.zeros(2, 3), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="shift"):
        Schedule.from_name("flow", shift=0.0)
