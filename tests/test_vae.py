"""VideoVAE: shapes, causality, exact chunking, tiling, overfitting, latent scaling, errors, save/load."""
import dataclasses
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from vidiff.config import ConfigError, from_dict, to_dict
from vidiff.models import VAE_MODELS, VAEConfig, VideoVAE
from vidiff.diffusion.tiled import tile_starts
from vidiff.models.vae import _to_uint8
from vidiff.models.vae_blocks import ChannelRMSNorm
from vidiff.models.vae_losses import (PatchDiscriminator, VAELossConfig, autoencoder_loss,
                                      discriminator_loss, hinge_d_loss, temporal_difference_loss)

TINY = VAE_MODELS["vae-tiny"]          # 4x spatial, 4x temporal, 4 latent channels


pytestmark = pytest.mark.usefixtures("one_thread")


def make(kind="3d", tf=4, **kw) -> VideoVAE:
    torch.manual_seed(0)
    return VideoVAE(dataclasses.replace(TINY, kind=kind, temporal_factor=tf, **kw)).eval()


def smooth_clip(T, H, W, seed=0) -> torch.Tensor:
    """A clip of moving low-frequency colour waves, ``(1, 3, T, H, W)`` in [-0.8, 0.8]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
    freq, phase = torch.rand(3, 2, generator=g) * 2 + 1, torch.rand(3, generator=g) * 6
    frames = [torch.stack([torch.sin(freq[c, 0] * 4 * xx + freq[c, 1] * 3 * yy + phase[c] + 0.5 * t)
                           for c in range(3)]) for t in range(T)]
    return 0.8 * torch.stack(frames, 1)[None]


KINDS = [("3d", 1), ("3d", 4), ("2d", 1), ("2d", 4)]


@pytest.mark.parametrize("kind,tf", KINDS)
def test_shapes_and_single_image(kind, tf):
    vae = make(kind, tf)
    for T in (1, 1 + 2 * tf):
        x = torch.rand(2, 3, T, 16, 24) * 2 - 1
        recon, post = vae(x, generator=torch.Generator().manual_seed(0))
        t = 1 + (T - 1) // tf
        assert post.mean.shape == post.logvar.shape == (2, 4, t, 4, 6)
        assert vae.latent_shape(T, 16, 24) == (4, t, 4, 6)
        assert recon.shape == x.shape and post.kl().shape == (2,)
        assert vae.decode(post.mean).shape == x.shape


@pytest.mark.parametrize("kind", ["3d", "2d"])
def test_encoder_and_decoder_are_causal(kind):
    vae = make(kind, 4)
    x = torch.rand(1, 3, 13, 16, 16) * 2 - 1
    with torch.no_grad():
        base = vae.encode(x).mean                                        # (1, 4, 4, 4, 4)
        for k in (1, 4, 5, 9):
            y = x.clone()
            y[:, :, k] += 0.5
            mean = vae.encode(y).mean
            first = math.ceil(k / 4)           # latent j codes frames 4j-3..4j
            assert torch.equal(mean[:, :, :first], base[:, :, :first]), k
            assert not torch.allclose(mean[:, :, first], base[:, :, first]), k
        z = torch.randn(1, 4, 4, 4, 4)
        out = vae.decode(z)                                              # (1, 3, 13, 16, 16)
        for j in (1, 2, 3):
            w = z.clone()
            w[:, :, j] += 1.0
            changed = vae.decode(w)
            start = 4 * j - 3                  # the first frame latent j codes
            assert torch.equal(changed[:, :, :start], out[:, :, :start]), j
            assert not torch.allclose(changed[:, :, start], out[:, :, start]), j


@pytest.mark.parametrize("kind,tf", KINDS)
def test_chunked_decoding_and_encoding_equal_whole_clip(kind, tf):
    vae = make(kind, tf)
    z = torch.randn(1, 4, 7, 4, 4)
    with torch.no_grad():
        whole = vae.decode(z)
        for chunk in (1, 2, 3, 5):
            torch.testing.assert_close(vae.decode(z, chunk=chunk), whole, rtol=1e-5, atol=1e-6)
        streamed = np.concatenate(list(vae.decode_stream(z[0], chunk=3)), axis=0)  # (T, H, W, 3)
        assert streamed.dtype == np.uint8 and streamed.shape == (1 + 6 * tf, 16, 16, 3)
        assert np.abs(streamed.astype(int) - _to_uint8(whole)[0].astype(int)).max() <= 1
        # A stream decoded piece by piece, its cache carried between calls, is the whole clip.
        caches, cuts = {}, [(0, 2), (2, 3), (3, 7)]
        pieces = [vae.decode_continue(z[:, :, a:b], caches) for a, b in cuts]
        assert [p.shape[2] for p in pieces] == [1 + tf, tf, 4 * tf]
        torch.testing.assert_close(torch.cat(pieces, 2), whole, rtol=1e-5, atol=1e-6)
        buf = torch.zeros(1, 1 + 6 * tf, 16, 16, 3, dtype=torch.uint8)
        assert vae.decode_to_uint8(z, out=buf, chunk=2) is buf
        assert np.array_equal(buf.numpy(), vae.decode_to_uint8(z, chunk=4))

        x = torch.rand(1, 3, 1 + 6 * tf, 16, 16) * 2 - 1
        full = vae.encode(x)
        for chunk in (1, 2, 4):
            part = vae.encode(x, chunk=chunk)
            torch.testing.assert_close(part.mean, full.mean, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(part.logvar, full.logvar, rtol=1e-5, atol=1e-6)
        # An iterator of uint8 pieces cut anywhere in time encodes like the whole clip.
        frames = ((x[0].permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
        cuts = np.cumsum([3, 5, 1])
        pieces = iter(np.split(frames, cuts[cuts < len(frames)]))
        from_pieces = vae.encode_chunked(pieces, chunk=2)
        exact = vae.encode(torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1)
        torch.testing.assert_close(from_pieces.mean, exact.mean, rtol=1e-5, atol=1e-6)


# vae-tiny's 3-tap temporal convs per level (blocks_per_level=1). Encoder: conv_in + one ResBlock
# at level 0 (3), one ResBlock at level 1 (2), one ResBlock + two middle ResBlocks + conv_out at
# level 2 (7). Decoder: conv_in + middle + two ResBlocks at level 2 (9), the upsampling conv +
# two ResBlocks at level 1 (5), the upsampling conv + two ResBlocks + conv_out at level 0 (6).
# A tap at level l spans 2**l frames (level 0 at full rate, 4 at the latent rate).
ENCODER_TAPS, DECODER_TAPS = (3, 2, 7), (6, 5, 9)


def _first_input_frame(j: int, levels) -> int:
    """The earliest input frame latent ``j`` of the encoder sees: its group 4j-3..4j, then
    two frames back for each temporal conv, in frames of that conv's level."""
    n = [taps if levels is None or level < levels else 0 for level, taps in enumerate(ENCODER_TAPS)]
    return 4 * j - 3 - 2 * n[0] - 4 * n[1] - 8 * n[2]


def _first_latent(f: int, levels) -> int:
    """The earliest latent frame output frame ``f`` of the decoder sees, level by level back."""
    n = [taps if levels is None or level < levels else 0 for level, taps in enumerate(DECODER_TAPS)]
    at_half = math.ceil((f - 2 * n[0]) / 2)                # a level-1 frame m makes frames 2m-1, 2m
    at_latent = math.ceil((at_half - 2 * n[1]) / 2)
    return max(0, at_latent - 2 * n[2])


@pytest.mark.parametrize("levels", [None, 0, 1, 2])
def test_temporal_levels_bound_the_receptive_field(levels):
    vae = make("3d", 4, temporal_levels=levels)
    x = torch.randn(1, 3, 77, 8, 8, requires_grad=True)
    vae.encode(x).mean[:, :, 19].sum().backward()
    seen = (x.grad.abs().sum((0, 1, 3, 4)) > 0).nonzero().flatten().tolist()
    assert seen == list(range(_first_input_frame(19, levels), 77))
    z = torch.randn(1, 4, 20, 2, 2, requires_grad=True)
    vae.decode(z)[:, :, 60].sum().backward()
    seen = (z.grad.abs().sum((0, 1, 3, 4)) > 0).nonzero().flatten().tolist()
    assert seen == list(range(_first_latent(60, levels), 16))
    # Chunked coding stays exact with per-frame deep levels.
    with torch.no_grad():
        z = torch.randn(1, 4, 7, 4, 4)
        torch.testing.assert_close(vae.decode(z, chunk=3), vae.decode(z), rtol=1e-5, atol=1e-6)
        x = torch.rand(1, 3, 25, 16, 16) * 2 - 1
        torch.testing.assert_close(vae.encode(x, chunk=2).mean, vae.encode(x).mean, rtol=1e-5, atol=1e-6)


def test_temporal_levels_out_of_range_is_refused():
    with pytest.raises(ConfigError, match="temporal_levels must be None or 0..3"):
        dataclasses.replace(TINY, temporal_levels=4)


def test_tiled_decoding_is_close_and_seamless():
    vae = make("3d", 4)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 16), torch.linspace(0, 1, 16), indexing="ij")
    waves = torch.stack([torch.sin(3 * xx + 2 * yy + c) for c in range(4)])   # (4, 16, 16) smooth
    z = torch.stack([waves + 0.1 * t for t in range(3)], 1)[None]              # (1, 4, 3, 16, 16)
    with torch.no_grad():
        whole = vae.decode(z)                                                  # (1, 3, 9, 64, 64)
        assert torch.equal(vae.decode(z, tile=16), whole)   # one tile is no tiling
        tiled = vae.decode(z, tile=8, overlap=4, chunk=2)
    # Stated bound: the mean error is under 0.3 output standard deviations (conv padding and
    # the middle attention see only the tile, even untrained).
    assert (tiled - whole).abs().mean() < 0.3 * whole.std()
    # No seam: the mean horizontal gradient across each column where a tile starts or ends is
    # at most 1.5x that of the columns around it, inside the tiles (a hard paste gives 2x).
    starts = tile_starts(16, 8, 4)
    edges = sorted({4 * s for s in starts[1:]} | {4 * (s + 8) for s in starts[:-1]})
    grad = (tiled[..., 1:] - tiled[..., :-1]).abs().mean(dim=(0, 1, 2, 3))    # (63,): col c -> c+1
    for e in edges:
        around = torch.cat([grad[e - 4:e - 2], grad[e + 1:e + 3]]).mean()
        assert grad[e - 1] <= 1.5 * around, (e, grad[e - 1], around)


def test_channel_rms_norm_closed_form():
    # y = x / max(RMS over channels, eps/sqrt(C)) * gain + bias, pixel by pixel; an all-zero
    # pixel stays finite (its output is the bias) and so does its gradient.
    torch.manual_seed(0)
    norm = ChannelRMSNorm(6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 6, 3, 4, 5, dtype=torch.float64)
    x[0, :, 1, 2, 3] = 0
    x.requires_grad_(True)
    y = norm.double()(x)
    rms = x.detach().pow(2).mean(1, keepdim=True).sqrt()
    expected = x.detach() / rms.clamp_min(norm.eps / 6 ** 0.5) * norm.weight.view(1, -1, 1, 1, 1) \
        + norm.bias.view(1, -1, 1, 1, 1)
    assert torch.allclose(y, expected, atol=1e-12)
    assert torch.equal(y[0, :, 1, 2, 3], norm.bias.detach())
    y.square().sum().backward()
    assert torch.isfinite(x.grad).all()
    # its hand-written backward against finite differences, a zero pixel included
    assert torch.autograd.gradcheck(norm, (x.detach()[:, :, :2].clone().requires_grad_(True),))


def test_bf16_autocast_reaches_the_convolutions():
    # Under CPU autocast the convolutions run in bf16 (the direct oneDNN call is for fp32 only),
    # which is what makes train.precision=bf16 faster; the output stays close to fp32.
    vae = make()
    clip = smooth_clip(5, 16, 16)
    with torch.no_grad():
        ref = vae.decoder(vae.encode(clip).mean)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = vae.decoder(vae.encode(clip).mean)
    assert low.dtype == torch.bfloat16
    err = (low.float() - ref).abs().max().item()
    assert 0 < err < 0.1 * ref.abs().max().item()


def test_tiny_autoencoder_overfits_one_clip():
    torch.manual_seed(0)
    vae = VideoVAE(TINY)
    x = smooth_clip(5, 16, 16)
    opt = torch.optim.Adam(vae.parameters(), lr=5e-3)

    def psnr():
        with torch.no_grad():
            mse = (vae.decode(vae.encode(x).mean).clamp(-1, 1) - x).pow(2).mean().item()
        return 10 * math.log10(4.0 / mse)
    before = psnr()
    for step in range(150):
        recon, post = vae(x, generator=torch.Generator().manual_seed(step))
        loss = (recon - x).abs().mean() + 1e-6 * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = psnr()
    assert before < 14 and after > 22, (before, after)


def test_latent_scaling_gives_unit_variance():
    vae = make("3d", 4)
    batches = [torch.rand(2, 3, 5, 16, 16) * 2 - 1 for _ in range(3)]
    shift, scale = vae.estimate_latent_scaling(iter(batches))
    assert (vae.config.shift_factor, vae.config.scaling_factor) == (shift, scale)
    z = torch.cat([vae.to_latent(b) for b in batches])
    assert abs(z.mean().item()) < 1e-4 and abs(z.var(correction=0).item() - 1) < 1e-3
    with torch.no_grad():
        torch.testing.assert_close(vae.from_latent(z[:2]), vae.decode(vae.encode(batches[0]).mean))
    sampled = vae.to_latent(batches[0], sample=True, generator=torch.Generator().manual_seed(1))
    assert sampled.shape == z[:2].shape and not torch.equal(sampled, z[:2])


def test_bad_input_errors():
    vae = make("3d", 4)
    with pytest.raises(ValueError, match=r"T=6 .*1 \+ 4k.*nearest are 5 and 9"):
        vae.encode(torch.zeros(1, 3, 6, 16, 16))
    with pytest.raises(ValueError, match="T=12"):
        vae.encode_chunked(iter([torch.zeros(1, 3, 5, 16, 16), torch.zeros(1, 3, 7, 16, 16)]))
    with pytest.raises(ValueError, match="18x16 is not divisible by the spatial factor 4"):
        vae.encode(torch.zeros(1, 3, 5, 18, 16))
    with pytest.raises(ValueError, match=r"expected a video \(B, 3"):
        vae.encode(torch.zeros(1, 1, 5, 16, 16))
    with pytest.raises(ValueError, match=r"expected latents \(B, 4"):
        vae.decode(torch.zeros(1, 3, 2, 4, 4))
    with pytest.raises(ValueError, match="out must be uint8"):
        vae.decode_to_uint8(torch.zeros(1, 4, 2, 4, 4), out=np.zeros((1, 4, 16, 16, 3), np.uint8))
    with pytest.raises(ConfigError, match="power of two"):
        VAEConfig(temporal_factor=3)
    with pytest.raises(ConfigError, match="needs at least 3 levels"):
        VAEConfig(channels=(8, 16), temporal_factor=4)


def test_safetensors_round_trip(tmp_path):
    vae = make("2d", 4, norm="group")
    vae.config.scaling_factor = 0.5
    save_file(vae.state_dict(), str(tmp_path / "vae.safetensors"))
    config = from_dict(VAEConfig, to_dict(vae.config))
    assert config == vae.config
    again = VideoVAE(config).eval()
    again.load_state_dict(load_file(str(tmp_path / "vae.safetensors")))
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(again.to_latent(x), vae.to_latent(x))


def test_losses():
    vae = make("3d", 4)
    x = smooth_clip(5, 16, 16)
    recon, post = vae(x)
    assert temporal_difference_loss(x + 0.3, x) < 1e-6           # a constant offset does not flicker
    assert temporal_difference_loss(x[:, :, :1], x[:, :, :1]) == 0
    assert hinge_d_loss(torch.full((4,), 2.0), torch.full((4,), -2.0)) == 0
    for kind in ("2d", "3d"):
        disc = PatchDiscriminator(channels=8, layers=2, kind=kind)
        assert disc(x).shape[:3] == (1, 1, 5)
    cfg = VAELossConfig(gan_weight=0.5)
    disc = PatchDiscriminator(channels=8, layers=2)
    total, terms = autoencoder_loss(recon, x, post, cfg, disc(recon), vae.last_layer)
    total.backward()
    assert vae.last_layer.grad is not None and set(terms) == {"rec", "kl", "tdiff", "g", "loss"}
    d, _ = discriminator_loss(disc(x), disc(recon.detach()), cfg)
    assert d.ndim == 0 and d > 0
