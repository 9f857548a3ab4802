"""UNet3D: shapes, input checks, identity temporal layers at init, training signal, conditioning
paths, checkpoints, frame extrapolation and the residuals extension point."""
import dataclasses

import pytest
import torch
from safetensors.torch import load_file, save_file

from vidiff.conditioning import Conditioning
from vidiff.config import ConfigError, from_dict, to_dict
from vidiff.models.flops import count_parameters
from vidiff.models.unet import UNET_MODELS, AttentionBlock, SpatioTemporalConv, UNet3D, UNetConfig

TINY = UNET_MODELS["unet-tiny"]
TEXT_DIM = 12


pytestmark = pytest.mark.usefixtures("one_thread")


def make(seed: int = 0, **overrides) -> UNet3D:
    torch.manual_seed(seed)
    return UNet3D(dataclasses.replace(TINY, **overrides)).eval()


def text_cond(B: int = 2, L: int = 5, seed: int = 1, **fields) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    return Conditioning(text=torch.randn(B, L, TEXT_DIM, generator=g), **fields)


def clip(B=2, C=3, T=4, H=16, W=16, seed=2) -> torch.Tensor:
    return torch.randn(B, C, T, H, W, generator=torch.Generator().manual_seed(seed))


def perturb(model: torch.nn.Module, which=lambda name: True, scale: float = 0.05, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if which(name):
                p.add_(torch.randn(p.shape, generator=g) * scale)


def is_temporal(name: str) -> bool:
    return ".attn_t." in name or ".temporal." in name


# --------------------------------------------------------------------------- shapes & checks
@pytest.mark.parametrize("conv3d", [False, True])
def test_output_shapes_images_and_videos(conv3d):
    model = make(conv3d=conv3d, text_dim=TEXT_DIM, out_channels=6)
    t = torch.rand(2)
    with torch.no_grad():
        for T in (1, 5):
            out = model(clip(T=T), t, text_cond())
            assert out.shape == (2, 6, T, 16, 16)
            assert out.is_contiguous() and torch.isfinite(out).all()
        # No conditioning at all, and a non-square size.
        assert model(clip(B=1, T=3, H=8, W=24), torch.rand(1)).shape == (1, 6, 3, 8, 24)


def test_space_to_depth_stem():
    # patch = 2: the network runs on an 8x8 grid for 16x16 clips, output at full resolution.
    model = make(text_dim=TEXT_DIM, patch=2)
    x, t = clip(), torch.rand(2)
    with torch.no_grad():
        out = model(x, t, text_cond())
        assert out.shape == x.shape and torch.isfinite(out).all()
        assert [tuple(e.shape) for e in model.encode(x, t, text_cond())] == model.residual_shapes(x.shape)
    assert model.residual_shapes(x.shape)[0] == (2, 16, 4, 8, 8)
    with pytest.raises(ValueError, match=r"divisible by 4 \(patch 2"):
        model(clip(H=18), t)
    with pytest.raises(ConfigError, match="patch must be >= 1"):
        UNetConfig(patch=0)


def test_bad_inputs_rejected_with_clear_messages():
    model = make(text_dim=TEXT_DIM)
    t = torch.rand(2)
    with pytest.raises(ValueError, match=r"C=3.*divisible by 2"):
        model(clip(C=4), t)
    with pytest.raises(ValueError, match=r"divisible by 2.*\(2, 3, 4, 15, 16\)"):
        model(clip(H=15), t)
    with pytest.raises(ValueError, match=r"x of shape"):
        model(clip()[:, :, 0], t)
    with pytest.raises(ValueError, match=r"t of shape \(B,\) = \(2,\)"):
        model(clip(), torch.rand(3))
    bad_text = Conditioning(text=torch.randn(2, 5, TEXT_DIM + 1))
    with pytest.raises(ValueError, match=rf"must be \(B=2, L, {TEXT_DIM}\)"):
        model(clip(), t, bad_text)
    with pytest.raises(ValueError, match="known_frames=false"):
        model(clip(), t, Conditioning(known=clip(), mask=torch.ones(2, 1, 4, 16, 16)))


def test_config_validation():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['chanels'\].*'channels'"):
        from_dict(UNetConfig, {"chanels": [32, 64]})
    with pytest.raises(ConfigError, match=r"divisible by norm_groups=32; \[48\]"):
        UNetConfig(channels=(64, 48))
    with pytest.raises(ConfigError, match=r"temporal_attention: levels \[3\] do not exist.*0\.\.1"):
        UNetConfig(channels=(32, 64), temporal_attention=(3,))
    for kernel in (2, -1):
        with pytest.raises(ConfigError, match="temporal_kernel must be odd"):
            UNetConfig(temporal_kernel=kernel)
    with pytest.raises(ConfigError, match="out_channels must be positive"):
        UNetConfig(out_channels=0)
    with pytest.raises(ConfigError, match=r"head_dim: width 96 at level 1 .* head_dim=64"):
        UNetConfig(channels=(32, 96), norm_groups=32)
    with pytest.raises(ConfigError, match=r"num_heads: width 32 at level 0 .* num_heads=5"):
        UNetConfig(channels=(32, 96), num_heads=5)
    assert UNetConfig(channels=(64, 128), num_heads=8).heads(128) == 8
    # Negative levels count from the lowest resolution, so shrinking channels keeps working.
    demo = UNET_MODELS["unet-demo"]
    cfg = from_dict(UNetConfig, {**to_dict(demo), "channels": [demo.head_dim * k for k in (1, 2, 4)]})
    assert cfg.attends(2) == (True, False, True) and cfg.attends(1) == (False, False, False)
    assert from_dict(UNetConfig, to_dict(cfg)) == cfg


def test_registry_sizes_and_parameter_counts():
    assert {"unet-tiny", "unet-demo", "unet-s", "unet-b"} <= set(UNET_MODELS)
    counts = {}
    for name, cfg in UNET_MODELS.items():
        with torch.device("meta"):
            counts[name] = count_parameters(UNet3D(dataclasses.replace(cfg, text_dim=256)))
    assert counts["unet-tiny"] < counts["unet-demo"] < counts["unet-s"] < counts["unet-b"]


# --------------------------------------------------------------------------- temporal identity
@pytest.mark.parametrize("conv3d", [False, True])
def test_temporal_layers_are_identity_at_init(conv3d):
    model = make(conv3d=conv3d, text_dim=TEXT_DIM)
    assert any(isinstance(m, AttentionBlock) and m.attn_t is not None for m in model.modules())
    assert any(isinstance(m, SpatioTemporalConv) for m in model.modules())
    t, cond = torch.rand(2), text_cond()
    with torch.no_grad():
        # A video of identical frames gives identical output frames (boundaries included).
        still = clip(T=1).expand(-1, -1, 5, -1, -1).contiguous()
        out = model(still, t, cond)
        assert torch.allclose(out, out[:, :, :1].expand_as(out), atol=1e-5)
        # Each frame of a video gives what it gives as a T = 1 clip (image path).
        video = clip(T=5)
        out = model(video, t, cond)
        per_frame = torch.cat([model(video[:, :, i:i + 1], t, cond) for i in range(5)], dim=2)
        assert torch.allclose(out, per_frame, atol=1e-5)
        # Once the temporal layers have learned something, frames interact in a video, while
        # a T = 1 clip skips every temporal op and is unchanged.
        perturb(model, is_temporal)
        assert torch.equal(model(video[:, :, :1], t, cond), per_frame[:, :, :1])
        perturb(model, lambda n: is_temporal(n) or (conv3d and ".conv." in n))
        assert not torch.allclose(model(video, t, cond), per_frame, atol=1e-3)


def test_temporal_attention_knows_frame_order():
    # Without positions, attention across frames would commute with reversing the clip;
    # rotary frame positions make the order (and relative offsets) matter.
    model = make(temporal_kernel=1)
    perturb(model, is_temporal, scale=0.3)
    x, t = clip(T=6), torch.rand(2)
    with torch.no_grad():
        forward = model(x, t)
        backward = model(x.flip(2), t).flip(2)
    assert not torch.allclose(forward, backward, atol=1e-4)


def test_frame_embedding_gives_absolute_positions():
    # Identical frames stay identical through the identity temporal layers unless each frame
    # knows its index; T = 1 (images) skips the embedding like every temporal op.
    plain, indexed = make(), make(frame_embedding=True)
    still, t = clip(T=1).expand(-1, -1, 4, -1, -1).contiguous(), torch.rand(2)
    with torch.no_grad():
        out = plain(still, t)
        assert torch.allclose(out, out[:, :, :1].expand_as(out), atol=1e-5)
        out = indexed(still, t)
        assert not torch.allclose(out[:, :, 0], out[:, :, 3], atol=1e-3)
        same = {k: v for k, v in indexed.state_dict().items() if not k.startswith("frame_embed.")}
        plain.load_state_dict(same)          # identical weights but the frame embedding
        assert torch.equal(indexed(still[:, :, :1], t), plain(still[:, :, :1], t))


def test_frame_conditioning_lets_the_condition_differ_per_frame():
    # At init the per-frame FiLM equals the per-clip one (its last layer is zero); once that
    # layer is non-zero, identical frames come out different, and how they differ depends on
    # the diffusion time (the condition), which a frame-only embedding cannot do.
    plain, per_frame = make(), make(frame_conditioning=True)
    per_frame.load_state_dict({**per_frame.state_dict(), **plain.state_dict()})
    still, t = clip(T=1).expand(-1, -1, 4, -1, -1).contiguous(), torch.tensor([0.3, 0.8])
    with torch.no_grad():
        assert torch.allclose(per_frame(still, t), plain(still, t), atol=1e-5)
        perturb(per_frame, lambda n: n.startswith("frame_cond.mix.2"), scale=0.5)
        out = per_frame(still, t)
        assert not torch.allclose(out[:, :, 0], out[:, :, 3], atol=1e-3)
        gap = lambda y: y[:, :, 3] - y[:, :, 0]                     # noqa: E731
        other = per_frame(still, torch.tensor([0.8, 0.3]))
        assert not torch.allclose(gap(out)[0], gap(other)[1], atol=1e-4)


def test_position_embedding_breaks_translation_equivariance_inside_the_frame():
    # A constant clip gives the same output at every pixel far from the borders (zero
    # padding only reaches so far); with a position embedding those pixels differ.
    small = dict(channels=(8,), spatial_attention=(), cross_attention=(), temporal_attention=(),
                 mid_attention=False, norm_groups=4)
    flat, t = torch.full((1, 3, 2, 48, 48), 0.3), torch.rand(1)
    with torch.no_grad():
        out = make(**small)(flat, t)
        assert torch.allclose(out[..., 22, 22], out[..., 25, 26], atol=1e-5)
        out = make(position_embedding=True, **small)(flat, t)
        assert not torch.allclose(out[..., 22, 22], out[..., 25, 26], atol=1e-3)


# --------------------------------------------------------------------------- training signal
def full_cond(B: int = 2, T: int = 4) -> Conditioning:
    mask = torch.zeros(B, 1, T, 16, 16)
    mask[:, :, 0] = 1
    return text_cond(B=B, text_pooled=torch.randn(B, 7), drop_text=torch.tensor([True, False]),
                     known=clip(B=B, T=T, seed=5), mask=mask, known_noise=torch.rand(B),
                     frame_stride=torch.tensor([1.0, 2.0]), low_res=torch.randn(B, 3, T, 8, 8),
                     low_res_noise=torch.rand(B))


def test_gradients_reach_every_parameter_after_a_few_steps():
    model = make(text_dim=TEXT_DIM, pooled_dim=7, known_frames=True, frame_stride=True,
                 low_res=True, frame_embedding=True, dropout=0.1).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, t, cond = clip(), torch.rand(2), full_cond()
    for _ in range(4):
        opt.zero_grad()
        model(x, t, cond).square().mean().backward()
        opt.step()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"parameters without gradient: {dead}"


def test_tiny_model_overfits_one_clip():
    model = make(text_dim=TEXT_DIM).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x0 = clip(B=1, T=8, seed=7).clamp(-1, 1)
    noise = clip(B=1, T=8, seed=8)
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


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for flag in (False, True):
        model = make(text_dim=TEXT_DIM, grad_checkpoint=flag).train()
        perturb(model, is_temporal)
        model(clip(), torch.rand(2, generator=torch.Generator().manual_seed(0)),
              text_cond()).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


# --------------------------------------------------------------------------- conditioning paths
@pytest.mark.parametrize("pooled", [False, True])
def test_null_condition_and_dropped_rows(pooled):
    model = make(text_dim=TEXT_DIM, pooled_dim=7 if pooled else None)
    x, t = clip(), torch.rand(2)
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


def test_known_frames_and_low_res_inputs_are_used():
    model = make(known_frames=True, low_res=True)
    x, t = clip(), torch.rand(2)
    mask = torch.zeros(2, 1, 4, 16, 16)
    mask[:, :, :2] = 1                                       # first two frames known
    known, low = clip(seed=5), torch.randn(2, 3, 4, 8, 8)
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
def test_safetensors_round_trip(tmp_path):
    model = make(text_dim=TEXT_DIM, conv3d=True)
    perturb(model)
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    other = make(seed=9, text_dim=TEXT_DIM, conv3d=True)
    other.load_state_dict(load_file(str(tmp_path / "model.safetensors")))
    x, t, cond = clip(), torch.rand(2), text_cond()
    with torch.no_grad():
        assert torch.equal(model(x, t, cond), other(x, t, cond))


def test_runs_on_more_frames_than_trained():
    model = make(text_dim=TEXT_DIM).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):                                       # "trained" on 16 frames
        opt.zero_grad()
        model(clip(B=1, T=16, H=8, W=8), torch.rand(1), text_cond(B=1)).square().mean().backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        out = model(clip(B=1, T=32, H=8, W=8), torch.rand(1), text_cond(B=1))
    assert out.shape == (1, 3, 32, 8, 8) and torch.isfinite(out).all()


# --------------------------------------------------------------------------- residuals
def test_residuals_extension_point():
    model = make(text_dim=TEXT_DIM)
    perturb(model, is_temporal)
    x, t, cond = clip(), torch.rand(2), text_cond()
    shapes = model.residual_shapes(x.shape)
    # conv_in + one per encoder block + one per downsampler, then the middle block.
    cfg = model.config
    assert len(shapes) == 1 + cfg.levels * cfg.blocks_per_level + (cfg.levels - 1) + 1
    assert shapes[0] == (2, 16, 4, 16, 16) and shapes[-1] == (2, 32, 4, 8, 8)
    with torch.no_grad():
        out = model(x, t, cond)
        zeros = [torch.zeros(s) for s in shapes]
        assert torch.equal(model(x, t, cond, residuals=zeros), out)
        for i in (0, len(shapes) - 1):                       # a skip, and the middle block
            bumped = list(zeros)
            bumped[i] = torch.ones(shapes[i])
            assert not torch.allclose(model(x, t, cond, residuals=bumped), out, atol=1e-4)
    with pytest.raises(ValueError, match="residuals must have shapes"):
        model(x, t, cond, residuals=zeros[:-1])
    # encode() returns tensors of exactly those shapes (what a ControlNet copy would emit).
    with torch.no_grad():
        assert [tuple(e.shape) for e in model.encode(x, t, cond)] == shapes
    # A ControlNet trains through them: every residual receives a gradient.
    res = [torch.zeros(s, requires_grad=True) for s in shapes]
    model(x, t, cond, residuals=res).square().mean().backward()
    assert all(r.grad is not None and r.grad.abs().sum() > 0 for r in res)
