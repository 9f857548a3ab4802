"""Parameterizations and loss weighting."""
import pytest
import torch

from vidiff.diffusion import (
    PARAMETERIZATIONS, SCHEDULES, Schedule, diffusion_loss, loss_weight, prediction_target,
    prediction_to_x0, x0_to_prediction,
)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("kind", PARAMETERIZATIONS)
def test_conversions_round_trip_float64(name, kind):
    schedule = Schedule.from_name(name)
    g = torch.Generator().manual_seed(0)
    t = torch.linspace(1e-3, 1 - 1e-3, 64, dtype=torch.float64)
    x0 = torch.randn(64, 3, 2, 4, 4, dtype=torch.float64, generator=g)
    noise = torch.randn(64, 3, 2, 4, 4, dtype=torch.float64, generator=g)
    x_t = schedule.add_noise(x0, noise, t)
    pred = prediction_target(kind, x0, noise, t, schedule)
    back = prediction_to_x0(kind, pred, x_t, t, schedule)
    assert ((back - x0).abs() / x0.abs().clamp(min=1e-3)).max() < 1e-6
    again = x0_to_prediction(kind, back, x_t, t, schedule)
    assert ((again - pred).abs() / pred.abs().clamp(min=1e-3)).max() < 1e-6


def test_targets_closed_forms():
    x0, noise = torch.randn(4, 8, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)
    t = torch.tensor([0.1, 0.3, 0.6, 0.9], dtype=torch.float64)
    flow = Schedule.from_name("flow")
    assert torch.allclose(prediction_target("flow", x0, noise, t, flow), noise - x0)
    # For the cosine schedule alpha' and sigma' are known in closed form.
    cos = Schedule.from_name("cosine", cosine_offset=0.0)
    phi = 0.5 * torch.pi * t
    u = prediction_target("flow", x0, noise, t, cos)
    expected = (-0.5 * torch.pi * torch.sin(phi))[:, None] * x0 + (0.5 * torch.pi * torch.cos(phi))[:, None] * noise
    assert torch.allclose(u, expected, atol=1e-10)
    v = prediction_target("v", x0, noise, t, cos)
    assert torch.allclose(v, torch.cos(phi)[:, None] * noise - torch.sin(phi)[:, None] * x0, atol=1e-12)


def test_min_snr_weights_match_paper():
    s = Schedule.from_name("cosine")
    t = torch.linspace(0.02, 0.98, 25, dtype=torch.float64)
    snr = s.log_snr(t).exp()
    gamma = 5.0
    w_eps = loss_weight("eps", t, s, "min_snr", gamma).double()
    w_v = loss_weight("v", t, s, "min_snr", gamma).double()
    w_x0 = loss_weight("x0", t, s, "min_snr", gamma).double()
    assert torch.allclose(w_eps, snr.clamp(max=gamma) / snr, rtol=1e-5)
    assert torch.allclose(w_v, snr.clamp(max=gamma) / (snr + 1), rtol=1e-5)
    assert torch.allclose(w_x0, snr.clamp(max=gamma), rtol=1e-5)
    # flow on the flow schedule: |x0 err| = t |u err|, so the weight is min(SNR, gamma) t^2.
    f = Schedule.from_name("flow")
    w_f = loss_weight("flow", t, f, "min_snr", gamma).double()
    assert torch.allclose(w_f, f.log_snr(t).exp().clamp(max=gamma) * t**2, rtol=1e-5)
    assert torch.equal(loss_weight("eps", t, s), torch.ones(25))


def test_diffusion_loss_is_weighted_mse():
    s = Schedule.from_name("cosine")
    x0, noise = torch.randn(3, 4, 2, 4, 4), torch.randn(3, 4, 2, 4, 4)
    t = torch.tensor([0.2, 0.5, 0.8])
    target = prediction_target("v", x0, noise, t, s)
    assert float(diffusion_loss(target, x0, noise, t, s, "v")) == pytest.approx(0.0, abs=1e-12)
    off = target + 0.5
    assert float(diffusion_loss(off, x0, noise, t, s, "v")) == pytest.approx(0.25, rel=1e-5)
    w = loss_weight("v", t, s, "min_snr")
    assert float(diffusion_loss(off, x0, noise, t, s, "v", "min_snr")) == pytest.approx(
        float(0.25 * w.mean()), rel=1e-5)


def test_bad_names():
    s = Schedule.from_name("flow")
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="'epsilon'.*'eps'"):
        prediction_to_x0("epsilon", x, x, torch.tensor([0.5]), s)
    with pytest.raises(ValueError, match="'snr'.*min_snr"):
        loss_weight("eps", torch.tensor([0.5]), s, "snr")
