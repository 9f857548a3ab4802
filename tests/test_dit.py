"""VideoDiT: shapes, input and config checks, identity temporal attention at init, training
signal, conditioning paths, checkpoints, frame extrapolation and the extension points."""
import dataclasses
import re

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from vidiff.conditioning import Conditioning
from vidiff.config import ConfigError, from_dict, to_dict
from vidiff.models import dit as dit_module
from vidiff.models.dit import DIT_MODELS, DiTConfig, VideoDiT
from vidiff.models.flops import count_parameters
from vidiff.models.layers import (Attention, apply_rotary, rotary_cos_sin_3d, rotary_cos_sin_axes,
                                  set_attention_processor)

TINY = DIT_MODELS["dit-tiny"]
TEXT_DIM = 12


pytestmark = pytest.mark.usefixtures("one_thread")


def is_temporal_out(name: str) -> bool:
    return ".attn_t.to_out." in name


def perturb(model: torch.nn.Module, which=lambda name: True, scale: float = 0.05, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if which(name):
                p.add_(torch.randn(p.shape, generator=g) * scale)


def make(seed: int = 0, trained: bool = True, **overrides) -> VideoDiT:
    """A tiny model; ``trained`` moves every weight off its zero init except the temporal
    output projections (at init the output is exactly zero, which would prove nothing)."""
    torch.manual_seed(seed)
    model = VideoDiT(dataclasses.replace(TINY, **overrides)).eval()
    if trained:
        perturb(model, lambda n: not is_temporal_out(n))
    return model


def text_cond(B: int = 2, L: int = 5, seed: int = 1, **fields) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    return Conditioning(text=torch.randn(B, L, TEXT_DIM, generator=g), **fields)


def clip(B=2, C=3, T=4, H=8, W=8, seed=2) -> torch.Tensor:
    return torch.randn(B, C, T, H, W, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- shapes & checks
@pytest.mark.parametrize("attention", ["factorized", "full"])
@pytest.mark.parametrize("patch_t", [1, 2])
def test_output_shapes_images_and_videos(attention, patch_t):
    model = make(attention=attention, patch_t=patch_t, text_dim=TEXT_DIM, out_channels=6)
    t = torch.rand(2)
    with torch.no_grad():
        for T in (1, 5):                                     # an image, and 1 + 2 * patch_t
            out = model(clip(T=T), t, text_cond())
            assert out.shape == (2, 6, T, 8, 8)
            assert out.is_contiguous() and torch.isfinite(out).all() and out.abs().amax() > 0
        # No conditioning at all, and a non-square size.
        assert model(clip(B=1, T=3, H=4, W=12), torch.rand(1)).shape == (1, 6, 3, 4, 12)
    assert model.residual_shapes((2, 3, 5, 8, 12)) == [(2, (1 + 4 // patch_t) * 4 * 6, 32)] * 2


def test_bad_inputs_rejected_with_clear_messages():
    model = make(text_dim=TEXT_DIM)
    t = torch.rand(2)
    with pytest.raises(ValueError, match=r"C=3.*divisible by patch=2"):
        model(clip(C=4), t)
    with pytest.raises(ValueError, match=r"divisible by patch=2.*\(2, 3, 4, 7, 8\)"):
        model(clip(H=7), t)
    with pytest.raises(ValueError, match=r"x of shape"):
        model(clip()[:, :, 0], t)
    with pytest.raises(ValueError, match=r"t of shape \(B,\) = \(2,\)"):
        model(clip(), torch.rand(3))
    with pytest.raises(ValueError, match=r"T = 1 \+ k \* patch_t \(patch_t=2: T in 1, 3, 5"):
        make(patch_t=2)(clip(T=4), t)
    with pytest.raises(ValueError, match=rf"must be \(B=2, L, {TEXT_DIM}\)"):
        model(clip(), t, Conditioning(text=torch.randn(2, 5, TEXT_DIM + 1)))
    with pytest.raises(ValueError, match="known_frames=false"):
        model(clip(), t, Conditioning(known=clip(), mask=torch.ones(2, 1, 4, 8, 8)))


def test_config_validation():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['hiden'\].*'hidden'"):
        from_dict(DiTConfig, {"hiden": 64})
    with pytest.raises(ConfigError, match=r"hidden: 100 is not divisible by heads=3"):
        DiTConfig(hidden=100, heads=3)
    with pytest.raises(ConfigError, match=r"even head width.*= 3"):
        DiTConfig(hidden=30, heads=10)
    with pytest.raises(ConfigError, match=r"attention: 'spatial' is not one of \['factorized', 'full'\]"):
        DiTConfig(attention="spatial")
    with pytest.raises(ConfigError, match=r"one mode per block \(depth=2\), got 3"):
        DiTConfig(depth=2, attention=("full",) * 3)
    with pytest.raises(ConfigError, match=r"patch_t must be >= 1"):
        DiTConfig(patch_t=0)
    with pytest.raises(ConfigError, match=r"adaln: 'layer'"):
        DiTConfig(adaln="layer")
    # A per-block list from YAML/JSON round-trips through the checkpoint form.
    cfg = from_dict(DiTConfig, {**to_dict(TINY), "attention": ["full", "factorized"]})
    assert cfg.modes == ("full", "factorized") and from_dict(DiTConfig, to_dict(cfg)) == cfg


def test_registry_sizes_and_documented_parameter_counts():
    assert {"dit-tiny", "dit-demo", "dit-s/2", "dit-b/2", "dit-l/2", "dit-xl/2", "dit-1b/2"} <= set(DIT_MODELS)
    table = {m[0]: m[1:] for m in re.findall(r"^(dit-\S+)\s+\d+\s+\d+\s+\d+\s+([\d.]+ [MB])\s+([\d.]+ [MB])",
                                             dit_module.__doc__, re.M)}
    assert set(table) == set(DIT_MODELS)
    counts = []
    for name, cfg in DIT_MODELS.items():
        for text_dim, written in zip((None, 768), table[name]):
            with torch.device("meta"):
                n = count_parameters(VideoDiT(dataclasses.replace(cfg, text_dim=text_dim)))
            value, unit = written.split()
            assert f"{n / (1e6 if unit == 'M' else 1e9):.3g}" == value, (name, text_dim, n, written)
            if text_dim is None:
                counts.append(n)
    assert counts == sorted(counts) and 0.95e9 < counts[-1] < 1.05e9


def test_rotary_tables_rotate_by_relative_position():
    # 2D and 3D tables must be true rotations: norms kept, q.k a function of the offset only.
    g = torch.Generator().manual_seed(0)
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    for cos, sin, shift in [(*rotary_cos_sin_axes([rows.flatten(), cols.flatten()], [6, 6]), 5),
                            (*rotary_cos_sin_3d(3, 4, 4, 12), 21)]:
        q, k = torch.randn(2, 12, generator=g)
        Q = apply_rotary(q.expand(1, 1, len(cos), 12), cos, sin)[0, 0]
        K = apply_rotary(k.expand(1, 1, len(cos), 12), cos, sin)[0, 0]
        assert torch.allclose(Q.norm(dim=-1), q.norm().expand(len(cos)), atol=1e-5)
        assert torch.allclose(Q[0] @ K[1], Q[shift] @ K[shift + 1], atol=1e-4)


# --------------------------------------------------------------------------- temporal identity
def test_temporal_attention_is_identity_at_init():
    model = make(text_dim=TEXT_DIM)
    assert sum(b.attn_t is not None for b in model.blocks) == TINY.depth
    t, cond = torch.rand(2), text_cond()
    with torch.no_grad():
        # A video of identical frames gives identical output frames.
        still = clip(T=1).expand(-1, -1, 5, -1, -1).contiguous()
        out = model(still, t, cond)
        assert torch.allclose(out, out[:, :, :1].expand_as(out), atol=1e-5)
        # Each frame of a video gives what it gives as a T = 1 clip (the image path).
        video = clip(T=5)
        out = model(video, t, cond)
        per_frame = torch.cat([model(video[:, :, i:i + 1], t, cond) for i in range(5)], dim=2)
        assert torch.allclose(out, per_frame, atol=1e-5)
        # Once temporal attention has learned something, frames interact in a video, while
        # a T = 1 clip skips it and is unchanged.
        perturb(model, is_temporal_out)
        assert torch.equal(model(video[:, :, :1], t, cond), per_frame[:, :, :1])
        assert not torch.allclose(model(video, t, cond), per_frame, atol=1e-3)


def test_first_frame_is_patched_alone_with_patch_t():
    model = make(patch_t=2)
    video, t = clip(T=5), torch.rand(2)
    with torch.no_grad():
        out = model(video, t)
        # Patches are frames (0), (1, 2), (3, 4): at init (no temporal mixing) frame 0 gives
        # what it gives as an image, and a change in frame 3 reaches frames 3 and 4 only.
        assert torch.allclose(out[:, :, :1], model(video[:, :, :1], t), atol=1e-5)
        changed = video.clone()
        changed[:, :, 3] += 1.0
        diff = (model(changed, t) - out).abs().amax(dim=(0, 1, 3, 4))
        assert (diff[:3] < 1e-5).all() and (diff[3:] > 1e-3).all()


def test_temporal_attention_mixes_frames_at_each_location_only():
    # One factorized block whose spatial attention is switched off: tokens then meet only
    # through temporal attention, i.e. across frames at the same patch location.
    model = make(depth=1)
    perturb(model, is_temporal_out)
    with torch.no_grad():
        model.blocks[0].attn.to_out.weight.zero_()
        model.blocks[0].attn.to_out.bias.zero_()
        video, t = clip(T=4), torch.rand(2)
        changed = video.clone()
        changed[:, :, 2, 2:4, 4:6] += 1.0                  # the patch at (1, 2) of frame 2
        diff = (model(changed, t) - model(video, t)).abs().amax(dim=(0, 1))   # (T, H, W)
    assert (diff[:, 2:4, 4:6] > 1e-4).all()                 # every frame at that location
    diff[:, 2:4, 4:6] = 0
    assert diff.amax() < 1e-6                               # nothing anywhere else


@pytest.mark.parametrize("attention", ["factorized", "full"])
def test_attention_knows_frame_order(attention):
    # Without positions, attention across frames commutes with reversing the clip.
    model = make(attention=attention)
    perturb(model, is_temporal_out, scale=0.3)
    x, t = clip(T=6), torch.rand(2)
    with torch.no_grad():
        assert not torch.allclose(model(x, t), model(x.flip(2), t).flip(2), atol=1e-4)


# --------------------------------------------------------------------------- training signal
def full_cond(B: int = 2, T: int = 5) -> Conditioning:
    mask = torch.zeros(B, 1, T, 8, 8)
    mask[:, :, 0] = 1
    return text_cond(B=B, text_pooled=torch.randn(B, 7), drop_text=torch.tensor([True, False]),
                     known=clip(B=B, T=T, seed=5), mask=mask, known_noise=torch.rand(B),
                     frame_stride=torch.tensor([1.0, 2.0]), low_res=torch.randn(B, 3, T, 4, 4),
                     low_res_noise=torch.rand(B))


@pytest.mark.parametrize("adaln", ["single", "block"])
def test_gradients_reach_every_parameter_after_a_few_steps(adaln):
    model = make(trained=False, adaln=adaln, attention=("factorized", "full"), patch_t=2,
                 text_dim=TEXT_DIM, pooled_dim=7, known_frames=True, frame_stride=True,
                 low_res=True).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, t, cond = clip(T=5), torch.rand(2), full_cond()
    for _ in range(4):                                       # (a zero output has no gradient
        opt.zero_grad()                                      # towards zero: regress onto x)
        (model(x, t, cond) - x).square().mean().backward()
        opt.step()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"parameters without gradient: {dead}"


def test_tiny_model_overfits_one_clip():
    model = make(trained=False, text_dim=TEXT_DIM).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x0 = clip(B=1, T=4, seed=7).clamp(-1, 1)
    noise = clip(B=1, T=4, seed=8)
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
        perturb(model, is_temporal_out)
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
    mask = torch.zeros(2, 1, 4, 8, 8)
    mask[:, :, :2] = 1                                       # first two frames known
    known, low = clip(seed=5), torch.randn(2, 3, 4, 4, 4)
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
    model = make(text_dim=TEXT_DIM, attention=("full", "factorized"))
    perturb(model, is_temporal_out)
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    other = make(seed=9, trained=False, text_dim=TEXT_DIM, attention=("full", "factorized"))
    other.load_state_dict(load_file(str(tmp_path / "model.safetensors")))
    x, t, cond = clip(), torch.rand(2), text_cond()
    with torch.no_grad():
        assert torch.equal(model(x, t, cond), other(x, t, cond))


@pytest.mark.parametrize("attention", ["factorized", "full"])
def test_runs_on_more_frames_than_trained(attention):
    model = make(trained=False, attention=attention, text_dim=TEXT_DIM).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):                                       # "trained" on 16 frames
        opt.zero_grad()
        x = clip(B=1, T=16, H=4, W=4)
        (model(x, torch.rand(1), text_cond(B=1)) - x).square().mean().backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        out = model(clip(B=1, T=32, H=4, W=4), torch.rand(1), text_cond(B=1))
    assert out.shape == (1, 3, 32, 4, 4) and torch.isfinite(out).all()


# --------------------------------------------------------------------------- extension points
def test_residuals_extension_point():
    model = make(text_dim=TEXT_DIM)
    perturb(model, is_temporal_out)
    x, t, cond = clip(), torch.rand(2), text_cond()
    shapes = model.residual_shapes(x.shape)
    assert shapes == [(2, 4 * 4 * 4, 32)] * TINY.depth       # (B, T' * H' * W', hidden) per block
    with torch.no_grad():
        out = model(x, t, cond)
        zeros = [torch.zeros(s) for s in shapes]
        assert torch.equal(model(x, t, cond, residuals=zeros), out)
        for i in range(len(shapes)):
            bumped = list(zeros)
            bumped[i] = torch.randn(shapes[i])  # not a constant: LayerNorm removes those
            assert not torch.allclose(model(x, t, cond, residuals=bumped), out, atol=1e-4)
    with pytest.raises(ValueError, match=r"residuals must be 2 tensors of shape \(2, 64, 32\)"):
        model(x, t, cond, residuals=zeros[:-1])
    # A ControlNet trains through them: every residual receives a gradient.
    res = [torch.zeros(s, requires_grad=True) for s in shapes]
    model(x, t, cond, residuals=res).square().mean().backward()
    assert all(r.grad is not None and r.grad.abs().sum() > 0 for r in res)


def test_swapped_attention_processor_sees_every_attention_layer():
    model = make(text_dim=TEXT_DIM, attention=("factorized", "full"))
    perturb(model, is_temporal_out)
    x, t, cond = clip(T=3), torch.rand(2), text_cond()
    with torch.no_grad():
        reference = model(x, t, cond)
    keys = {}

    def recorder(name, module):
        def process(attn, q, k, v, mask):
            keys[name] = tuple(k.shape)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return process

    set_attention_processor(model, recorder)
    with torch.no_grad():
        out = model(x, t, cond)
    names = {n for n, m in model.named_modules() if isinstance(m, Attention)}
    assert len(names) == 5 and set(keys) == names            # spatial, temporal, 2 cross, full
    assert torch.allclose(out, reference, atol=1e-6)
    assert keys["blocks.0.attn"] == (2 * 3, 2, 16, 16)       # (B*T, heads, H'W', head_dim)
    assert keys["blocks.0.attn_t"] == (2 * 16, 2, 3, 16)     # (B*H'W', heads, T, head_dim)
    assert keys["blocks.1.attn"] == (2, 2, 3 * 16, 16)       # (B, heads, N, head_dim)
    assert keys["blocks.1.cross"] == (2, 2, 5, 16)           # (B, heads, text tokens, head_dim)
