"""Known-frame masks, the training task mix, the masked loss, and growing a checkpoint's inputs."""
import pytest
import torch

from vidiff.checkpoint import grow_input_channels
from vidiff.compose.config import DiffusionConfig, TasksConfig
from vidiff.config import ConfigError
from vidiff.diffusion import Schedule, diffusion_loss
from vidiff.diffusion.masks import (
    TASKS, border_mask, box_mask, draw_task_mask, frames_mask, keyframe_mask, latent_mask,
)
from vidiff.models.unet import UNET_MODELS, UNet3D
from vidiff.models.vae import VAE_MODELS, VideoVAE
from vidiff.train.objective import DiffusionObjective, SampleDraws


# ----------------------------------------------------------------------------- builders
def test_builders_mark_the_known_pixels():
    assert frames_mask(5, 2, 2, [0, 3])[0, :, 0, 0].tolist() == [1, 0, 0, 1, 0]
    assert keyframe_mask(9, 1, 1, 4)[0, :, 0, 0].tolist() == [1, 0, 0, 0, 1, 0, 0, 0, 1]
    m = box_mask(4, 6, 8, (2, 1, 5, 3), (1, 2))
    hidden = (m == 0).nonzero().tolist()
    assert {(f, y, x) for _, f, y, x in hidden} == {(f, y, x) for f in (1, 2) for y in (1, 2) for x in (2, 3, 4)}
    b = border_mask(2, 6, 8, left=1, right=2, top=0, bottom=3)
    assert b[0, 0].sum() == (8 - 3) * (6 - 3) and b[0, 0, 0, 1] == 1 and b[0, 0, 0, 0] == 0 and b[0, 0, 3, 1] == 0


@pytest.mark.parametrize("call, words", [
    (lambda: box_mask(4, 8, 8, (0, 0, 9, 4)), "x1 <= 8"),
    (lambda: box_mask(4, 8, 8, (3, 0, 3, 4)), "x0 < x1"),
    (lambda: box_mask(4, 8, 8, (0, 0, 4, 4), (2, 4)), "f1 <= 3"),
    (lambda: border_mask(1, 8, 8, left=-1), ">= 0"),
    (lambda: border_mask(1, 8, 8, left=4, right=4), "leave part"),
    (lambda: frames_mask(4, 2, 2, [4]), "outside"),
    (lambda: draw_task_mask("forecast", 4, 2, 2, torch.Generator()), "accepted"),
])
def test_bad_masks_are_refused(call, words):
    with pytest.raises(ValueError, match=words):
        call()


def test_each_task_hides_what_it_names():
    g = torch.Generator().manual_seed(3)
    T, H, W = 16, 16, 16
    for _ in range(20):
        per_frame = {task: draw_task_mask(task, T, H, W, g)[0].flatten(1).mean(1) for task in TASKS}
        assert per_frame["text"].sum() == 0
        assert per_frame["first_frame"].tolist() == [1.0] + [0.0] * (T - 1)
        first = per_frame["first_frames"].tolist()
        k = int(sum(first))
        assert 1 <= k < T and first == [1.0] * k + [0.0] * (T - k)
        last = per_frame["last_frames"].tolist()
        k = int(sum(last))
        assert 1 <= k < T and last == [0.0] * (T - k) + [1.0] * k
        keys = [f for f, v in enumerate(per_frame["keyframes"].tolist()) if v == 1.0]
        steps = {b - a for a, b in zip(keys, keys[1:])}
        assert len(steps) == 1 and steps.pop() in (2, 3, 4, 8) and keys[0] < 8
        box = draw_task_mask("box", T, H, W, g)[0]
        hidden = (box == 0).nonzero()
        frames, ys, xs = (hidden[:, i].unique() for i in range(3))
        assert len(hidden) == len(frames) * len(ys) * len(xs)           # one solid box
        border = draw_task_mask("border", T, H, W, g)[0]
        assert torch.equal(border, border[:1].expand_as(border))         # the same in every frame
        known = border[0].nonzero()
        assert len(known) == (known[:, 0].max() - known[:, 0].min() + 1) * (known[:, 1].max() - known[:, 1].min() + 1)
        assert border.min() == 0


def test_latent_mask_follows_the_causal_autoencoders_cells():
    cfg = VAE_MODELS["vae-s"]
    vae = VideoVAE(cfg)
    tf, sf = vae.temporal_factor, vae.spatial_factor
    T, H, W = 1 + 2 * tf, 4 * sf, 4 * sf
    assert vae.latent_shape(T, H, W)[1:] == latent_mask(torch.ones(1, 1, T, H, W), tf, sf).shape[2:]
    # Frame 0 is coded alone; latent frame j codes frames 1 + (j - 1) tf .. j tf.
    cases = {1: [1, 0, 0], tf: [1, 0, 0], 1 + tf: [1, 1, 0], T: [1, 1, 1]}
    for known_frames, expected in cases.items():
        m = frames_mask(T, H, W, range(known_frames))[None]
        assert latent_mask(m, tf, sf)[0, 0, :, 0, 0].tolist() == expected, known_frames
    # One unknown pixel makes its whole cell unknown, and only that cell.
    m = torch.ones(1, 1, T, H, W)
    m[0, 0, 2, sf + 1, 2 * sf] = 0
    lm = latent_mask(m, tf, sf)
    assert lm.sum() == lm.numel() - 1 and lm[0, 0, 1, 1, 2] == 0
    with pytest.raises(ValueError, match="1 \\+ k"):
        latent_mask(torch.ones(1, 1, tf, H, W), tf, sf)


# ----------------------------------------------------------------------------- the task mix in training
def _objective(**tasks):
    cfg = UNET_MODELS["unet-tiny"]
    network = UNet3D(cfg.__class__(**{**cfg.__dict__, "known_frames": True}))
    return DiffusionObjective(network, None, DiffusionConfig(parameterization="x0"), 0.0,
                              tasks=TasksConfig(**tasks))


def test_task_masks_are_fixed_by_seed_step_and_sample():
    objective = _objective()
    x0 = torch.randn(3, 3, 8, 16, 16)
    a = objective.frame_task(x0, SampleDraws(0, 5, [10, 11, 12], 16))
    b = objective.frame_task(x0[1:], SampleDraws(0, 5, [11, 12], 16))     # same samples, other batch
    for full, part in zip(a, b):
        assert torch.equal(full[1:], part)
    c = objective.frame_task(x0, SampleDraws(0, 6, [10, 11, 12], 16))     # next step: new draws
    assert not torch.equal(a[1], c[1])


def test_known_frames_carry_their_own_noise_level():
    objective = _objective(known_noise_prob=1.0, known_noise_max=0.5, text=1.0, first_frame=1.0)
    x0 = torch.rand(8, 3, 4, 16, 16)
    known, mask, level = objective.frame_task(x0, SampleDraws(1, 0, list(range(8)), 8))
    assert (level > 0).all() and (level <= 0.5).all()
    noise_scale = (known - objective.schedule.alpha(level).view(-1, 1, 1, 1, 1) * x0).flatten(1).std(1)
    assert torch.allclose(noise_scale, objective.schedule.sigma(level), rtol=0.1)


def test_loss_counts_the_unknown_part_and_weights_the_known_part():
    schedule = Schedule.from_name("cosine")
    x0, noise, t = torch.randn(2, 3, 4, 8, 8), torch.randn(2, 3, 4, 8, 8), torch.tensor([0.3, 0.7])
    mask = frames_mask(4, 8, 8, [0, 1])[None].expand(2, -1, -1, -1, -1)
    pred = x0 + 3.0 * mask                      # exact where unknown, off by 3 where known
    assert diffusion_loss(pred, x0, noise, t, schedule, "x0", known=mask, known_weight=0.0) == 0
    assert diffusion_loss(pred, x0, noise, t, schedule, "x0", known=mask, known_weight=0.1) == pytest.approx(0.9)
    assert diffusion_loss(pred, x0, noise, t, schedule, "x0") == pytest.approx(4.5)  # no mask: all of it


def test_task_weights_are_validated():
    with pytest.raises(ConfigError, match="weights"):
        TasksConfig(text=-1.0)
    with pytest.raises(ConfigError, match="not all 0"):
        TasksConfig(**{name: 0.0 for name in TASKS})
    with pytest.raises(ConfigError, match="known_noise_max"):
        TasksConfig(known_noise_max=2.0)


# ----------------------------------------------------------------------------- growing inputs
def test_a_network_that_gains_known_frames_starts_as_its_checkpoint():
    torch.manual_seed(0)
    cfg = UNET_MODELS["unet-tiny"]
    old = UNet3D(cfg).eval()
    new = UNet3D(cfg.__class__(**{**cfg.__dict__, "known_frames": True})).eval()
    state = grow_input_channels(old.state_dict(), new.state_dict())
    missing, unexpected = new.load_state_dict(state, strict=False)
    assert not unexpected and missing and all("cond.known_noise." in m for m in missing)
    x, t = torch.randn(2, 3, 4, 16, 16), torch.tensor([0.2, 0.9])
    with torch.no_grad():
        assert torch.allclose(old(x, t, None), new(x, t, None), atol=1e-6)
    # The grown weight keeps the old channels and adds zeros.
    name = next(n for n, p in old.state_dict().items() if p.shape != new.state_dict()[n].shape)
    assert torch.equal(state[name][:, :old.state_dict()[name].shape[1]], old.state_dict()[name])
    assert state[name][:, old.state_dict()[name].shape[1]:].abs().sum() == 0


def test_known_in_place_puts_the_known_pixels_into_x_t():
    from vidiff.conditioning import Conditioning
    from vidiff.models.condition import ConditionEmbedder
    embed = ConditionEmbedder(3, 8, known_frames=True, known_in_place=True)
    x, known = torch.randn(2, 3, 4, 8, 8), torch.randn(2, 3, 4, 8, 8)
    mask = frames_mask(4, 8, 8, [0])[None].expand(2, -1, -1, -1, -1)
    out = embed.input(x, Conditioning(known=known, mask=mask))                 # (B, 3 + 4, T, H, W)
    assert torch.equal(out[:, :3, 0], known[:, :, 0]) and torch.equal(out[:, :3, 1:], x[:, :, 1:])
    assert torch.equal(out[:, 3:6], known * mask) and torch.equal(out[:, 6:], mask)
    assert torch.equal(ConditionEmbedder(3, 8, known_frames=True).input(x, Conditioning(known=known, mask=mask))[:, :3], x)
    with pytest.raises(ValueError, match="needs known_frames"):
        ConditionEmbedder(3, 8, known_in_place=True)
