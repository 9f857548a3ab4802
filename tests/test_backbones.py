"""The contract every denoising backbone keeps, present and future.

A backbone is a network called as ``net(x (B, C, T, H, W), t (B,), cond, residuals)`` with a
:class:`~vidiff.models.condition.ConditionEmbedder`. Each test below runs on every entry of
``BACKBONES``: adding a backbone is one entry (a factory for a tiny config, the clip size, which
parameters are temporal, and optional config variants per test). What is specific to one
network stays in its own test file (``test_unet.py``, ``test_dit.py``), which imports the
helpers here.
"""
import dataclasses
import re
from dataclasses import dataclass, field
from typing import Callable, Optional

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vidiff.conditioning import Conditioning
from vidiff.models.dit import DIT_MODELS, VideoDiT
from vidiff.models.layers import Attention
from vidiff.models.unet import UNET_MODELS, UNet3D

TEXT_DIM = 12

pytestmark = pytest.mark.usefixtures("one_thread")


#################################################################################
#                                   Helpers                                     #
#################################################################################


def perturb(model: nn.Module, which=lambda name: True, scale: float = 0.05, seed: int = 3) -> None:
    """Add seeded Gaussian noise of std ``scale`` to the parameters whose name ``which`` accepts."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if which(name):
                p.add_(torch.randn(p.shape, generator=g) * scale)


def text_cond(B: int = 2, L: int = 5, seed: int = 1, **fields) -> Conditioning:
    """Random text embeddings ``(B, L, TEXT_DIM)`` plus any other ``Conditioning`` fields."""
    g = torch.Generator().manual_seed(seed)
    return Conditioning(text=torch.randn(B, L, TEXT_DIM, generator=g), **fields)


@dataclass(frozen=True)
class Backbone:
    """One network family under the contract.

    Attributes:
        name: the test id.
        build: ``build(**config_overrides) -> nn.Module`` from the family's tiny config.
        size: height = width of the test clips (a valid size for every variant).
        temporal: whether a parameter name belongs to a temporal layer (identity at init:
            perturbing it leaves a one-frame clip unchanged).
        zero_output_at_init: the output is exactly 0 at init (adaLN-zero), so tests that need
            a generic network move every non-temporal weight first (see :meth:`make`).
        variants: config overrides per test name (missing: the tiny config alone).
        overfit_frames: frames of the clip the overfitting test memorises.
    """
    name: str
    build: Callable[..., nn.Module]
    size: int
    temporal: Callable[[str], bool]
    zero_output_at_init: bool = False
    variants: dict = field(default_factory=dict)
    overfit_frames: int = 4

    def make(self, seed: int = 0, trained: bool = True, **overrides) -> nn.Module:
        """A seeded tiny network in eval mode; ``trained`` moves it off a zero-output init
        (temporal layers stay the identity), as training would."""
        torch.manual_seed(seed)
        model = self.build(**overrides).eval()
        if trained and self.zero_output_at_init:
            perturb(model, lambda n: not self.temporal(n))
        return model

    def clip(self, B: int = 2, C: int = 3, T: int = 4, H: Optional[int] = None,
             W: Optional[int] = None, seed: int = 2) -> torch.Tensor:
        """A seeded Gaussian clip ``(B, C, T, H, W)``, ``size x size`` unless given."""
        H = H or self.size
        return torch.randn(B, C, T, H, W or H, generator=torch.Generator().manual_seed(seed))


UNET = Backbone(
    "unet", lambda **kw: UNet3D(dataclasses.replace(UNET_MODELS["unet-tiny"], **kw)), size=16,
    temporal=lambda n: ".attn_t." in n or ".temporal." in n, overfit_frames=8,
    variants={"shapes": [{}, {"conv3d": True}], "identity": [{}, {"conv3d": True}],
              "frame_order": [{"temporal_kernel": 1}], "round_trip": [{"conv3d": True}],
              "rich": [{"frame_embedding": True, "dropout": 0.1}]})
DIT = Backbone(
    "dit", lambda **kw: VideoDiT(dataclasses.replace(DIT_MODELS["dit-tiny"], **kw)), size=8,
    temporal=lambda n: ".attn_t.to_out." in n, zero_output_at_init=True,
    variants={"shapes": [{"attention": a, "patch_t": p} for a in ("factorized", "full") for p in (1, 2)],
              "frame_order": [{"attention": "factorized"}, {"attention": "full"}],
              "length": [{"attention": "factorized"}, {"attention": "full"}],
              "round_trip": [{"attention": ("full", "factorized")}],
              "rich": [{"adaln": a, "attention": ("factorized", "full"), "patch_t": 2}
                       for a in ("single", "block")]})
BACKBONES = [UNET, DIT]


def cases(test: str) -> list:
    """``(backbone, config overrides)`` for every backbone and each of its variants of ``test``."""
    def name(b, v):
        return "-".join([b.name, *(f"{k}={v[k]}" for k in v)])
    return [pytest.param(b, v, id=name(b, v)) for b in BACKBONES for v in b.variants.get(test, [{}])]


def one_per_backbone() -> list:
    return [pytest.param(b, id=b.name) for b in BACKBONES]


def frames_as_images(model: nn.Module, video: torch.Tensor, t, cond) -> torch.Tensor:
    """Each frame of ``video`` run as a ``T = 1`` clip, stacked back: ``(B, C_out, T, H, W)``."""
    return torch.cat([model(video[:, :, i:i + 1], t, cond) for i in range(video.shape[2])], dim=2)


def full_cond(b: Backbone, B: int = 2, T: int = 3) -> Conditioning:
    """Every condition a backbone can take: text, pooled text with one row dropped, a known
    first frame with its noise level, frame stride and a half-size low-resolution clip."""
    S = b.size
    mask = torch.zeros(B, 1, T, S, S)
    mask[:, :, 0] = 1
    return text_cond(B=B, text_pooled=torch.randn(B, 7), drop_text=torch.tensor([True, False]),
                     known=b.clip(B=B, T=T, seed=5), mask=mask, known_noise=torch.rand(B),
                     frame_stride=torch.tensor([1.0, 2.0]), low_res=torch.randn(B, 3, T, S // 2, S // 2),
                     low_res_noise=torch.rand(B))


#################################################################################
#                                 The contract                                  #
#################################################################################


@pytest.mark.parametrize("b, variant", cases("shapes"))
def test_output_shapes_images_and_videos(b, variant):
    model = b.make(text_dim=TEXT_DIM, out_channels=6, **variant)
    S, t = b.size, torch.rand(2)
    with torch.no_grad():
        for T in (1, 5):                                     # an image, and a valid video length
            out = model(b.clip(T=T), t, text_cond())
            assert out.shape == (2, 6, T, S, S)
            assert out.is_contiguous() and torch.isfinite(out).all() and out.abs().amax() > 0
        # No conditioning at all, and a non-square size.
        out = model(b.clip(B=1, T=3, H=S // 2, W=3 * S // 2), torch.rand(1))
        assert out.shape == (1, 6, 3, S // 2, 3 * S // 2)


@pytest.mark.parametrize("b", one_per_backbone())
def test_bad_inputs_rejected_with_clear_messages(b):
    model = b.make(text_dim=TEXT_DIM)
    t = torch.rand(2)
    for x in (b.clip(C=4), b.clip(H=b.size - 1, W=b.size)):     # wrong channels, indivisible height
        with pytest.raises(ValueError, match=rf"C=3.*{re.escape(str(tuple(x.shape)))}"):
            model(x, t)
    with pytest.raises(ValueError, match=r"x of shape"):
        model(b.clip()[:, :, 0], t)
    with pytest.raises(ValueError, match=r"t of shape \(B,\) = \(2,\)"):
        model(b.clip(), torch.rand(3))
    with pytest.raises(ValueError, match=rf"must be \(B=2, L, {TEXT_DIM}\)"):
        model(b.clip(), t, Conditioning(text=torch.randn(2, 5, TEXT_DIM + 1)))
    S = b.size
    with pytest.raises(ValueError, match="known_frames=false"):
        model(b.clip(), t, Conditioning(known=b.clip(), mask=torch.ones(2, 1, 4, S, S)))
    # size_multiple is the rule check_shape holds: multiples pass, anything between is refused
    m = model.size_multiple
    assert m >= 2
    model.check_shape((1, 3, 1, m, 3 * m))
    for side in range(m + 1, 2 * m):
        with pytest.raises(ValueError, match=f"divisible by (patch=)?{m}"):
            model.check_shape((1, 3, 1, side, m))


@pytest.mark.parametrize("b", one_per_backbone())
def test_control_maps_given_to_a_bare_denoiser_are_refused(b):
    # Accepting control maps and ignoring them would return the unconditioned output: they
    # reach a denoiser only through a ControlNet's residuals.
    model = b.make(text_dim=TEXT_DIM)
    x, t = b.clip(), torch.rand(2)
    control = torch.randn(2, 3, 4, b.size, b.size)
    for cond in (Conditioning(control=control), text_cond(control=control)):
        with pytest.raises(ValueError, match=r"does not read control maps itself; run it with a ControlNet"):
            model(x, t, cond)
    with torch.no_grad():                                    # the same call without them runs
        assert model(x, t, text_cond()).shape == x.shape


@pytest.mark.parametrize("b, variant", cases("identity"))
def test_temporal_layers_are_identity_at_init(b, variant):
    model = b.make(text_dim=TEXT_DIM, **variant)
    assert any(isinstance(m, Attention) and m.kind == "temporal" for m in model.modules())
    assert any(b.temporal(n) for n, _ in model.named_parameters())
    t, cond = torch.rand(2), text_cond()
    with torch.no_grad():
        # A video of identical frames gives identical output frames (boundaries included).
        still = b.clip(T=1).expand(-1, -1, 5, -1, -1).contiguous()
        out = model(still, t, cond)
        assert torch.allclose(out, out[:, :, :1].expand_as(out), atol=1e-5)
        # Each frame of a video gives what it gives as a T = 1 clip (the image path).
        video = b.clip(T=5)
        per_frame = frames_as_images(model, video, t, cond)
        assert torch.allclose(model(video, t, cond), per_frame, atol=1e-5)
        # Once the temporal layers have learned something a T = 1 clip, which skips every
        # temporal op, is unchanged ...
        perturb(model, b.temporal)
        assert torch.equal(model(video[:, :, :1], t, cond), per_frame[:, :, :1])
        # ... while frames interact in a video (every weight moved: full 3D convs' frame taps too).
        perturb(model, seed=4)
        assert not torch.allclose(model(video, t, cond), frames_as_images(model, video, t, cond), atol=1e-3)


@pytest.mark.parametrize("b, variant", cases("frame_order"))
def test_attention_knows_frame_order(b, variant):
    # Without positions, attention across frames would commute with reversing the clip;
    # rotary frame positions make the order (and relative offsets) matter.
    model = b.make(**variant)
    perturb(model, b.temporal, scale=0.3)
    x, t = b.clip(T=6), torch.rand(2)
    with torch.no_grad():
        assert not torch.allclose(model(x, t), model(x.flip(2), t).flip(2), atol=1e-4)


# --------------------------------------------------------------------------- training signal
@pytest.mark.parametrize("b, variant", cases("rich"))
def test_gradients_reach_every_parameter_after_a_few_steps(b, variant):
    model = b.make(trained=False, text_dim=TEXT_DIM, pooled_dim=7, known_frames=True,
                   frame_stride=True, low_res=True, **variant).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, t, cond = b.clip(T=3), torch.rand(2), full_cond(b)     # T = 3: two frame patches at patch_t = 2
    for _ in range(4):                                       # (a zero output has no gradient
        opt.zero_grad()                                      # towards zero: regress onto x)
        (model(x, t, cond) - x).square().mean().backward()
        opt.step()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"parameters without gradient: {dead}"


@pytest.mark.parametrize("b", one_per_backbone())
def test_tiny_model_overfits_one_clip(b):
    model = b.make(trained=False, text_dim=TEXT_DIM).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x0 = b.clip(B=1, T=b.overfit_frames, seed=7).clamp(-1, 1)
    noise = b.clip(B=1, T=b.overfit_frames, seed=8)
    cond = text_cond(B=1)
    losses = []
    for step in range(150):
        t = torch.rand(1, generator=torch.Generator().manual_seed(step)) * 0.5
        x_t = (1 - t) * x0 + t * noise                       # rectified-flow interpolation
        loss = (model(x_t, t, cond) - x0).square().mean()    # x0-prediction
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.1 * sum(losses[:5]) / 5, losses[::10]


@pytest.mark.parametrize("b", one_per_backbone())
def test_gradient_checkpointing_gives_the_same_gradients(b):
    grads = []
    for flag in (False, True):
        model = b.make(text_dim=TEXT_DIM, grad_checkpoint=flag).train()
        perturb(model, b.temporal)
        model(b.clip(), torch.rand(2, generator=torch.Generator().manual_seed(0)),
              text_cond()).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


# --------------------------------------------------------------------------- conditioning paths
@pytest.mark.parametrize("pooled", [False, True])
@pytest.mark.parametrize("b", one_per_backbone())
def test_null_condition_and_dropped_rows(b, pooled):
    model = b.make(text_dim=TEXT_DIM, pooled_dim=7 if pooled else None)
    x, t = b.clip(), torch.rand(2)
    cond = text_cond(text_pooled=torch.randn(2, 7) if pooled else None)
    with torch.no_grad():
        out = model(x, t, cond)
        null = model(x, t, cond.null())
        assert (out - null).abs().amax(dim=(1, 2, 3, 4)).min() > 1e-3
        no_text = model(x, t, None)
        assert torch.allclose(null, no_text, atol=1e-5)
        mixed = model(x, t, cond.replace(drop_text=torch.tensor([True, False])))
        assert torch.allclose(mixed[0], no_text[0], atol=1e-5)
        assert torch.allclose(mixed[1], out[1], atol=1e-5)


@pytest.mark.parametrize("b", one_per_backbone())
def test_known_frames_and_low_res_inputs_are_used(b):
    model = b.make(known_frames=True, low_res=True)
    S, x, t = b.size, b.clip(), torch.rand(2)
    mask = torch.zeros(2, 1, 4, S, S)
    mask[:, :, :2] = 1                                       # first two frames known
    known, low = b.clip(seed=5), torch.randn(2, 3, 4, S // 2, S // 2)
    base = Conditioning(known=known, mask=mask, low_res=low)
    with torch.no_grad():
        out = model(x, t, base)
        changed_known = known.clone()
        changed_known[:, :, 0] += 1.0                        # where mask = 1
        assert not torch.allclose(model(x, t, base.replace(known=changed_known)), out, atol=1e-4)
        changed_unknown = known.clone()
        changed_unknown[:, :, 3] += 1.0                      # where mask = 0
        assert torch.equal(model(x, t, base.replace(known=changed_unknown)), out)
        assert not torch.allclose(model(x, t, base.replace(low_res=low + 1.0)), out, atol=1e-4)
        with pytest.raises(ValueError, match="needs cond.low_res"):
            model(x, t, Conditioning(known=known, mask=mask))


# --------------------------------------------------------------------------- persistence & length
@pytest.mark.parametrize("b, variant", cases("round_trip"))
def test_safetensors_round_trip(b, variant, tmp_path):
    model = b.make(text_dim=TEXT_DIM, **variant)
    perturb(model)
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    other = b.make(seed=9, trained=False, text_dim=TEXT_DIM, **variant)
    other.load_state_dict(load_file(str(tmp_path / "model.safetensors")))
    x, t, cond = b.clip(), torch.rand(2), text_cond()
    with torch.no_grad():
        assert torch.equal(model(x, t, cond), other(x, t, cond))


@pytest.mark.parametrize("b, variant", cases("length"))
def test_runs_on_more_frames_than_trained(b, variant):
    model = b.make(trained=False, text_dim=TEXT_DIM, **variant).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    S = b.size // 2
    for _ in range(2):                                       # "trained" on 16 frames
        opt.zero_grad()
        x = b.clip(B=1, T=16, H=S)
        (model(x, torch.rand(1), text_cond(B=1)) - x).square().mean().backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        out = model(b.clip(B=1, T=32, H=S), torch.rand(1), text_cond(B=1))
    assert out.shape == (1, 3, 32, S, S) and torch.isfinite(out).all()


# --------------------------------------------------------------------------- residuals
@pytest.mark.parametrize("b", one_per_backbone())
def test_residuals_extension_point(b):
    # How a ControlNet injects its signal: one tensor per entry of residual_shapes(x.shape).
    model = b.make(text_dim=TEXT_DIM)
    perturb(model, b.temporal)
    x, t, cond = b.clip(), torch.rand(2), text_cond()
    shapes = model.residual_shapes(x.shape)
    with torch.no_grad():
        out = model(x, t, cond)
        zeros = [torch.zeros(s) for s in shapes]
        assert torch.equal(model(x, t, cond, residuals=zeros), out)
        for i in range(len(shapes)):                         # every residual reaches the output
            bumped = list(zeros)
            bumped[i] = torch.randn(shapes[i])  # not a constant: LayerNorm removes those
            assert not torch.allclose(model(x, t, cond, residuals=bumped), out, atol=1e-4), i
    # A U-Net takes one residual per skip; a DiT also takes a prefix (the first blocks only,
    # what a ControlNet copying the first blocks returns), but not an empty or wrong-shaped list.
    short = zeros[:-1]
    if isinstance(model, UNet3D):
        with pytest.raises(ValueError, match="residuals must"):
            model(x, t, cond, residuals=short)
    else:
        with torch.no_grad():
            assert torch.equal(model(x, t, cond, residuals=short), out)
        with pytest.raises(ValueError, match="residuals must"):
            model(x, t, cond, residuals=[])
    with pytest.raises(ValueError, match="residuals must"):
        model(x, t, cond, residuals=[torch.zeros(s[:-1] + (s[-1] + 1,)) for s in shapes])
    # A ControlNet trains through them: every residual receives a gradient.
    res = [torch.zeros(s, requires_grad=True) for s in shapes]
    model(x, t, cond, residuals=res).square().mean().backward()
    assert all(r.grad is not None and r.grad.abs().sum() > 0 for r in res)
