"""UNet3D beyond the backbone contract (tests/test_backbones.py): input and config checks, the
space-to-depth stem, absolute frame and pixel positions, per-frame conditioning, parameter
counts and the shapes of the residuals extension point."""
import dataclasses

import pytest
import torch

from test_backbones import TEXT_DIM, UNET, perturb, text_cond
from vidiff.config import ConfigError, from_dict, to_dict
from vidiff.models.flops import count_parameters
from vidiff.models.layers import rotary_cos_sin_3d
from vidiff.models.unet import UNET_MODELS, UNet3D, UNetConfig
from vidiff.models.unet_blocks import AttentionBlock, _Context, _from_video, _to_video

make, clip = UNET.make, UNET.clip

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- shapes & checks
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


def test_size_errors_name_the_factor():
    # The contract checks the shapes in the messages; here the factor the sizes must divide.
    model, t = make(text_dim=TEXT_DIM), torch.rand(2)
    with pytest.raises(ValueError, match=r"C=3.*divisible by 2"):
        model(clip(C=4), t)
    with pytest.raises(ValueError, match=r"divisible by 2.*\(2, 3, 4, 15, 16\)"):
        model(clip(H=15, W=16), t)


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
    assert cfg.attends(2) == (True, False, True, False) and cfg.attends(1) == (False,) * 4
    assert from_dict(UNetConfig, to_dict(cfg)) == cfg


def test_registry_sizes_and_parameter_counts():
    assert {"unet-tiny", "unet-demo", "unet-s", "unet-b"} <= set(UNET_MODELS)
    counts = {}
    for name, cfg in UNET_MODELS.items():
        with torch.device("meta"):
            counts[name] = count_parameters(UNet3D(dataclasses.replace(cfg, text_dim=256)))
    assert counts["unet-tiny"] < counts["unet-demo"] < counts["unet-s"] < counts["unet-b"]


# --------------------------------------------------------------------------- positions & per-frame
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


# --------------------------------------------------------------------------- full attention
def test_full_attention_starts_as_the_identity():
    # A trained network gains full attention without changing its function: the checkpoint
    # lacks only the added layers (AttentionBlock.ADDABLE), whose out-projections start at zero.
    plain, full = make(), make(full_attention=(-1,))
    missing, unexpected = full.load_state_dict(plain.state_dict(), strict=False)
    added = tuple(f".{a}." for a in AttentionBlock.ADDABLE)
    assert not unexpected and missing and all(any(a in m for a in added) for m in missing)
    x, t = clip(), torch.rand(2)
    with torch.no_grad():
        assert torch.equal(full(x, t), plain(x, t))
        perturb(full, lambda n: ".attn_full.to_out." in n, scale=0.5)
        assert not torch.allclose(full(x, t), plain(x, t), atol=1e-4)


def test_full_attention_reads_every_frame_and_place_in_token_order():
    # The reference, built from the video axes directly: one (B, T*H*W, C) sequence per clip,
    # tokens in (frame, row, column) order to match the 3D rotary table. A wrong token order
    # would pair a token with another token's rotary position and change the result.
    cfg = UNetConfig(channels=(16,), spatial_attention=(0,), cross_attention=(0,), temporal_attention=(0,),
                     full_attention=(0,), head_dim=8, norm_groups=4, ff_mult=0)
    B, C, T, H, W = 2, 16, 3, 4, 5
    block = AttentionBlock(C, cfg, False, False, False, context_dim=16, full=True)
    perturb(block, lambda n: "to_out" in n, scale=0.5)
    video = torch.randn(B, C, T, H, W)
    ctx = _Context(B, T, torch.zeros(B, 1, 4), None, None, {})
    with torch.no_grad():
        out = _to_video(block(_from_video(video), ctx), B)                    # (B, C, T, H, W)
        tokens = video.permute(0, 2, 3, 4, 1).reshape(B, T * H * W, C)
        rope = rotary_cos_sin_3d(T, H, W, block.attn_full.head_dim)
        ref = tokens + block.attn_full(block.norm_full(tokens), rope=rope)
        assert torch.allclose(out.permute(0, 2, 3, 4, 1).reshape(B, T * H * W, C), ref, atol=1e-5)
        # One layer links a place at the first frame to another place at the last frame,
        # which spatial (same frame) or temporal (same place) attention alone cannot.
        moved = video.clone()
        moved[:, :, 0, 0, 0] += torch.randn(B, C)          # (a constant would be normalised away)
        changed = _to_video(block(_from_video(moved), ctx), B)
        assert (changed - out)[:, :, -1, -1, -1].abs().max() > 1e-4


# --------------------------------------------------------------------------- residuals
def test_residual_shapes_follow_the_skips():
    # (The contract checks that every residual reaches the output and receives a gradient.)
    model = make(text_dim=TEXT_DIM)
    perturb(model, UNET.temporal)
    x, t, cond = clip(), torch.rand(2), text_cond()
    shapes = model.residual_shapes(x.shape)
    # conv_in + one per encoder block + one per downsampler, then the middle block.
    cfg = model.config
    assert len(shapes) == 1 + cfg.levels * cfg.blocks_per_level + (cfg.levels - 1) + 1
    assert shapes[0] == (2, 16, 4, 16, 16) and shapes[-1] == (2, 32, 4, 8, 8)
    with pytest.raises(ValueError, match="residuals must have shapes"):
        model(x, t, cond, residuals=[torch.zeros(s) for s in shapes[:-1]])
    # encode() returns tensors of exactly those shapes (what a ControlNet copy would emit).
    with torch.no_grad():
        assert [tuple(e.shape) for e in model.encode(x, t, cond)] == shapes


# --------------------------------------------------------------------------- pixel head
def test_pixel_head_starts_as_the_identity():
    # A trained network gains the head without changing its function (the head's last conv
    # starts at zero, the checkpoint lacks only the head's weights, which init_from allows).
    plain, headed = make(patch=2), make(patch=2, pixel_head=8)
    missing, unexpected = headed.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(m.startswith(tuple(f"{a}." for a in UNet3D.ADDABLE)) for m in missing)
    x, t = clip(), torch.rand(2)
    with torch.no_grad():
        assert torch.equal(headed(x, t), plain(x, t))
        perturb(headed, lambda n: n.startswith("pixel_head.conv2"), scale=0.5)
        assert not torch.allclose(headed(x, t), plain(x, t), atol=1e-4)
    with pytest.raises(ConfigError, match="pixel_head must be >= 0"):
        UNetConfig(pixel_head=-1)


def test_combined_passes_guide_the_coarse_prediction_and_add_one_head_correction():
    # Two groups of B = 2 rows (one text, another); weights w. The reference, by hand: each
    # group's coarse prediction captured at the head's input, and group 0's own output (its
    # head's correction included): out = plain_0 + sum_k w_k coarse_k - coarse_0.
    model = make(text_dim=TEXT_DIM, patch=2, pixel_head=8)
    perturb(model, lambda n: n.startswith("pixel_head."), scale=0.5)
    x, t = clip(), torch.rand(2)
    conds = [text_cond(seed=1), text_cond(seed=5)]
    both = (torch.cat([x, x]), torch.cat([t, t]), conds[0].cat(conds[1]))
    coarse = []
    capture = model.pixel_head.register_forward_pre_hook(lambda m, args: coarse.append(
        args[0].unflatten(0, (2, -1)).transpose(1, 2)))   # (B*T, C, H, W) -> (B, C, T, H, W)
    with torch.no_grad():
        plain = [model(x, t, c) for c in conds]
    capture.remove()
    for w in ([1.0, 0.0], [5.0, -4.0]):
        with torch.no_grad():
            out = model(*both, combine=w)
        expected = plain[0] + w[0] * coarse[0] + w[1] * coarse[1] - coarse[0]
        assert out.shape == x.shape and torch.allclose(out, expected, rtol=1e-5, atol=1e-4), w
    # combining the finished predictions differs: the heads' corrections are not scaled
    assert not torch.allclose(out, 5.0 * plain[0] - 4.0 * plain[1], atol=1e-3)
    with pytest.raises(ValueError, match="pixel head"):
        make(text_dim=TEXT_DIM, patch=2)(*both, combine=[1.0, 0.0])
    with pytest.raises(ValueError, match="whole groups"):
        model(x[:1].repeat(3, 1, 1, 1, 1), t[:1].repeat(3), text_cond(B=3), combine=[0.5, 0.5])


def test_pixel_head_gives_back_full_resolution_detail_a_stem_blurs():
    # Asked to return its input (what an x0 network must do at low noise), a network on a
    # 4x4 stem rebuilds each 4x4 block from coarse features; the head sees the pixels. Same
    # seed, fresh random clips every step (nothing to memorise), 80 Adam steps; the error on
    # an unseen clip is far smaller with the head.
    t = torch.full((2,), 0.01)

    def held_out_error(**head):
        model = make(patch=4, trained=False, **head).train()
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for step in range(80):
            x = clip(T=2, seed=100 + step)
            opt.zero_grad()
            (model(x, t) - x).square().mean().backward()
            opt.step()
        with torch.no_grad():
            x = clip(T=2, seed=7)
            return float((model.eval()(x, t) - x).square().mean())

    plain, headed = held_out_error(), held_out_error(pixel_head=8)
    assert headed < 0.25 * plain, (headed, plain)
