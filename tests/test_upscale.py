"""Super-resolution stages: the training pairs, the low-resolution input and its noise level,
tiled sampling, and the ``upscale`` task's checks."""
import pytest
import torch
import torch.nn.functional as F

from vidiff.compose import build_network_for
from vidiff.compose.config import RunConfig, UpscaleConfig
from vidiff.conditioning import Conditioning
from vidiff.config import ConfigError, from_dict
from vidiff.data import collate
from vidiff.data.common import box_downsample
from vidiff.diffusion import TiledDenoiser, blend_weights, tile_starts
from vidiff.pipelines.samples import write_samples
from vidiff.pipelines.video import VideoPipeline
from vidiff.train.objective import DiffusionObjective, SampleDraws
from vidiff.train.run import build_trainer, train
from vidiff.video import Video

SMALL = {"channels": [8, 16], "norm_groups": 4, "patch": 2, "spatial_attention": [],
         "temporal_attention": [], "mid_attention": False}


def _run(**changes) -> RunConfig:
    data = {"kind": "upscale", "model": {"size": "unet-tiny", "overrides": {**SMALL, "low_res": True}},
            "text": {"kind": "none"}, "data": {"name": "shapes", "frames": 4, "size": 16},
            "diffusion": {"parameterization": "x0"},
            "train": {"steps": 1, "batch_size": 2, "warmup_steps": 1}}
    data.update(changes)
    return from_dict(RunConfig, data)


def _pipe(run: RunConfig) -> VideoPipeline:
    network = build_network_for(run, None)
    return VideoPipeline(network.eval(), run.diffusion.make_schedule(), "x0", None, frames=run.data.frames,
                         height=run.data.size, width=run.data.size, run_config=run)


# ----------------------------------------------------------------------------- training pairs
def test_box_downsample_is_the_block_mean():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 1, 4, 4)   # (B=2, C=1, T=1, H, W)
    low = box_downsample(x, 2)
    assert low.shape == (2, 1, 1, 2, 2)
    # Block (0, 0) of clip 0 holds 0, 1, 4, 5.
    assert low[0, 0, 0, 0, 0] == pytest.approx((0 + 1 + 4 + 5) / 4)
    assert low[1, 0, 0, 1, 1] == pytest.approx((26 + 27 + 30 + 31) / 4)
    with pytest.raises(ValueError, match="multiples of 3"):
        box_downsample(x, 3)


def test_objective_makes_box_downsampled_inputs_with_deterministic_noise_levels():
    run = _run()
    network = build_network_for(run, None)
    clean = DiffusionObjective(network, None, run.diffusion, 0.0, upscale=UpscaleConfig(noise_prob=0.0))
    x0 = torch.rand(4, 3, 4, 16, 16) * 2 - 1
    low, level = clean.low_resolution(x0, SampleDraws(0, 3, [0, 1, 2, 3], 4))
    assert torch.equal(low, box_downsample(x0, 2)) and torch.all(level == 0)

    noisy = DiffusionObjective(network, None, run.diffusion, 0.0,
                               upscale=UpscaleConfig(noise_prob=1.0, noise_max=0.4))
    low_a, level_a = noisy.low_resolution(x0, SampleDraws(0, 3, [0, 1, 2, 3], 4))
    assert torch.all((level_a > 0) & (level_a <= 0.4))
    # Sample 2's draws are its own: alone (on another process) it gets the same level and noise.
    low_b, level_b = noisy.low_resolution(x0[2:3], SampleDraws(0, 3, [2], 4))
    assert level_b[0] == level_a[2] and torch.allclose(low_b[0], low_a[2])
    # ... and they follow the add_noise formula at that level.
    eps = SampleDraws(0, 3, [2], 4).normal(tuple(low_b.shape[1:]), "low_res_eps")
    expected = noisy.schedule.add_noise(box_downsample(x0[2:3], 2), eps, level_b)
    assert torch.allclose(low_b, expected, atol=1e-6)
    _, level_c = noisy.low_resolution(x0, SampleDraws(0, 4, [0, 1, 2, 3], 4))
    assert not torch.equal(level_a, level_c)                       # another step, other draws


def test_a_stage_trains_through_its_low_resolution_input(tmp_path):
    trainer = build_trainer(_run(train={"steps": 1, "batch_size": 2, "out_dir": str(tmp_path)}), progress=False)
    network = trainer.objective.network
    assert network.config.low_res
    batch = collate([trainer.dataset[i] for i in range(2)])
    loss, _ = trainer.objective(batch, SampleDraws(0, 0, [0, 1], 2))
    loss.backward()
    # conv_in reads x_t (3 channels) then the upsampled low-resolution clip (3), each
    # space-to-depth'd into patch^2 channels: the clip's channels must get gradient.
    p2 = network.config.patch ** 2
    grad = network.conv_in.weight.grad.abs().sum(dim=(0, 2, 3))               # (6 p^2,)
    assert grad.shape == (6 * p2,) and torch.all(grad[3 * p2:] > 0)


def test_a_text_conditioned_stage_trains_and_writes_its_samples(tmp_path):
    """A stage that reads the prompt samples each clip under its own caption at the end of
    training (without one, upscale refuses a text-conditioned stage)."""
    run = _run(text={"kind": "builtin", "dim": 16, "depth": 1, "heads": 2},
               train={"steps": 1, "batch_size": 2, "warmup_steps": 1, "out_dir": str(tmp_path)},
               sample={"steps": 1})
    train(run, progress=False, sample_writer=write_samples)
    grids = list((tmp_path / "samples").glob("*.mp4"))
    assert len(grids) == 1 and Video.load(grids[0]).frames.shape == (4, 3 * 16 + 2 * 2, 4 * 16 + 3 * 2, 3)


def test_upscale_kind_is_checked():
    with pytest.raises(ConfigError, match="multiple of upscale.scale"):
        build_trainer(_run(upscale={"scale": 3}), progress=False)
    with pytest.raises(ConfigError, match="kind: upscale"):
        build_trainer(_run(kind="denoiser", model={"size": "unet-tiny", "overrides": {**SMALL, "low_res": True}}),
                      progress=False)
    with pytest.raises(ConfigError, match="upscale.scale"):
        UpscaleConfig(scale=1)


def test_the_noise_level_is_embedded():
    run = _run()
    network = build_network_for(run, None).eval()
    torch.manual_seed(0)
    for p in network.parameters():             # zero-initialised outputs would hide any input
        p.data.normal_(0, 0.1)
    x, t = torch.randn(1, 3, 4, 16, 16), torch.tensor([0.5])
    low = torch.randn(1, 3, 4, 8, 8)
    outs = [network(x, t, Conditioning(low_res=low, low_res_noise=torch.tensor([level]))) for level in (0.0, 0.3)]
    assert not torch.allclose(outs[0], outs[1])
    other = build_network_for(_run(kind="denoiser", model={"size": "unet-tiny", "overrides": SMALL}), None)
    with pytest.raises(ValueError, match="low_res=false"):
        other(x, t, Conditioning(low_res=low))


# ----------------------------------------------------------------------------- tiles
def test_blend_weights_sum_to_one():
    starts = tile_starts(20, 8, 3)
    assert starts[0] == 0 and starts[-1] == 12
    total = torch.zeros(20)
    for s, w in zip(starts, blend_weights(20, starts, 8, 3)):
        total[s:s + len(w)] += w
    assert torch.allclose(total, torch.ones(20))


def test_tiled_denoiser_equals_the_whole_clip_for_a_local_denoiser():
    # A pointwise denoiser that also reads its conditioning's low-resolution clip (nearest
    # upsampled): tiles and windows, blended, must give exactly what the whole clip gives.
    def local(x, t, cond):
        up = cond.low_res.repeat_interleave(2, -2).repeat_interleave(2, -1)
        return torch.tanh(x) * t.view(-1, 1, 1, 1, 1) + up + cond.mask

    x = torch.randn(2, 3, 11, 24, 20)
    cond = Conditioning(low_res=torch.randn(2, 3, 11, 12, 10), mask=torch.rand(2, 1, 11, 24, 20),
                        known=torch.randn(2, 3, 11, 24, 20))
    t = torch.tensor([0.3, 0.7])
    calls = []
    tiled = TiledDenoiser(lambda *a: calls.append(a[0].shape) or local(*a), frames=4, frame_overlap=1,
                          tile=8, tile_overlap=4, multiple=2)
    assert torch.allclose(tiled(x, t, cond), local(x, t, cond), atol=1e-6)
    assert max(s[2] for s in calls) == 4 and max(s[3] for s in calls) == 8 and len(calls) > 10


def test_tiles_must_fall_on_low_resolution_pixels():
    cond = Conditioning(low_res=torch.randn(1, 3, 2, 4, 4))
    with pytest.raises(ValueError, match="low_res pixels"):
        cond.crop(slice(0, 2), slice(1, 5), slice(0, 4), (8, 8))
    with pytest.raises(ValueError, match="multiples of 4"):
        TiledDenoiser(lambda x, t, c: x, tile=6, tile_overlap=2, multiple=4)


# ----------------------------------------------------------------------------- the task
def test_upscale_checks_and_sizes():
    pipe = _pipe(_run())
    low = torch.rand(3, 4, 8, 8) * 2 - 1
    video = pipe.upscale(low, steps=2, sampler="ddim")
    assert (video.num_frames, video.height, video.width) == (4, 16, 16)
    again = pipe.upscale(low, steps=2, sampler="ddim")
    assert (video.frames == again.frames).all()                       # seeded
    longer = pipe.upscale(torch.rand(3, 10, 8, 8) * 2 - 1, steps=2, sampler="ddim")
    assert longer.num_frames == 10                                    # window by window
    big = pipe.upscale(torch.rand(3, 4, 12, 20) * 2 - 1, steps=2, sampler="ddim", tile=8)
    assert (big.height, big.width) == (24, 40)
    for kwargs, words in (({"scale": 3}, "trained for x2 only"), ({"noise_level": 1.5}, "noise level"),
                          ({"prompt": "a red circle"}, "not text-conditioned")):
        with pytest.raises(ValueError, match=words):
            pipe.upscale(low, steps=2, **kwargs)
    with pytest.raises(ValueError, match="larger than .* in one piece"):
        pipe.upscale(torch.rand(3, 4, 12, 12) * 2 - 1, steps=2)
    with pytest.raises(ValueError, match="tile must be"):
        pipe.upscale(torch.rand(3, 4, 12, 12) * 2 - 1, steps=2, tile=3)
    plain = _run(kind="denoiser", model={"size": "unet-tiny", "overrides": SMALL})
    with pytest.raises(ValueError, match="not a super-resolution stage"):
        _pipe(plain).upscale(low)


def test_window_by_window_memory_sees_one_window():
    pipe = _pipe(_run())
    seen = []
    forward = pipe.network.forward
    pipe.network.forward = lambda x, t, cond=None: seen.append(tuple(x.shape)) or forward(x, t, cond)
    pipe.upscale(torch.rand(3, 9, 16, 16) * 2 - 1, steps=1, sampler="ddim", tile=8)
    assert max(s[2] for s in seen) == 4 and max(s[3] for s in seen) == 16 and max(s[4] for s in seen) == 16


def test_upscale_noise_level_changes_only_through_the_input():
    pipe = _pipe(_run())
    for p in pipe.network.parameters():
        p.data.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    low = torch.rand(3, 4, 8, 8) * 2 - 1
    a = pipe.upscale(low, noise_level=0.0, steps=2, sampler="ddim").to_tensor()
    b = pipe.upscale(low, noise_level=0.5, steps=2, sampler="ddim").to_tensor()
    assert not torch.equal(a, b)
    assert F.mse_loss(a, pipe.upscale(low, noise_level=0.0, steps=2, sampler="ddim").to_tensor()) == 0
