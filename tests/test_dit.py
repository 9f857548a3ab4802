"""VideoDiT beyond the backbone contract (tests/test_backbones.py): input and config checks,
documented parameter counts, rotary tables, first-frame patching, where temporal attention
mixes tokens, and the shapes of the residuals extension point."""
import dataclasses
import re

import pytest
import torch

from test_backbones import DIT, TEXT_DIM, perturb
from vidiff.config import ConfigError, from_dict, to_dict
from vidiff.models import dit as dit_module
from vidiff.models.dit import DIT_MODELS, DiTConfig, VideoDiT
from vidiff.models.flops import count_parameters
from vidiff.models.layers import apply_rotary, rotary_cos_sin_3d, rotary_cos_sin_axes

TINY = DIT_MODELS["dit-tiny"]
make, clip = DIT.make, DIT.clip

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- shapes & checks
def test_residual_shapes_follow_the_patch_grid():
    # (B, T' * H' * W', hidden) per block, T' = 1 + (T - 1) / patch_t. (The contract checks
    # that every residual reaches the output and receives a gradient.)
    for patch_t in (1, 2):
        assert make(patch_t=patch_t).residual_shapes((2, 3, 5, 8, 12)) == \
            [(2, (1 + 4 // patch_t) * 4 * 6, 32)] * TINY.depth
    model, x = make(), clip()
    assert model.residual_shapes(x.shape) == [(2, 4 * 4 * 4, 32)] * TINY.depth
    with pytest.raises(ValueError, match=r"residuals must be 1 to 2 tensors of shape \(2, 64, 32\)"):
        model(x, torch.rand(2), residuals=[torch.zeros(2, 64, 33)])
    with pytest.raises(ValueError, match=r"residuals must be 1 to 2 tensors"):
        model(x, torch.rand(2), residuals=[torch.zeros(2, 64, 32)] * 3)


def test_size_errors_name_the_constraint():
    # The contract checks the shapes in the messages; here the constraint the sizes break.
    model, t = make(text_dim=TEXT_DIM), torch.rand(2)
    with pytest.raises(ValueError, match=r"C=3.*divisible by patch=2"):
        model(clip(C=4), t)
    with pytest.raises(ValueError, match=r"divisible by patch=2.*\(2, 3, 4, 7, 8\)"):
        model(clip(H=7, W=8), t)
    with pytest.raises(ValueError, match=r"T = 1 \+ k \* patch_t \(patch_t=2: T in 1, 3, 5"):
        make(patch_t=2)(clip(T=4), t)


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


# --------------------------------------------------------------------------- patches & temporal mixing
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
    perturb(model, DIT.temporal)
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
