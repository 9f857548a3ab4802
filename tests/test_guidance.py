"""Classifier-free guidance: the two-scale (text, frames) formula in closed form, the passes it
runs, negative prompts that replace only the text, and real networks (UNet3D, VideoDiT with the
built-in text encoder) that give padded and batched conditionings the same output."""
import dataclasses

import pytest
import torch

from vidiff.conditioning import Conditioning
from vidiff.diffusion import GuidedDenoiser, NetworkDenoiser, Schedule
from vidiff.models.dit import DIT_MODELS, VideoDiT
from vidiff.models.unet import UNET_MODELS, UNet3D
from vidiff.text import TextEncoderConfig, build_text_encoder

pytestmark = pytest.mark.usefixtures("one_thread")

B = 2


def frame_cond(B: int = B, known_fraction=(0.5, 0.25), text: bool = True) -> Conditioning:
    """Known frames whose mask mean per row is ``known_fraction``; 4 cells a row."""
    mask = torch.zeros(B, 1, 1, 1, 4)
    for b, f in enumerate(known_fraction[:B]):
        mask[b, ..., :round(4 * f)] = 1
    fields = dict(known=torch.randn(B, 1, 1, 1, 4), mask=mask, frame_stride=torch.full((B,), 2.0))
    if text:
        fields["text"] = torch.randn(B, 3, 4)
    return Conditioning(**fields)


def linear_denoiser(x, t, cond):
    """x0_hat = 1 + 2 k + 3 m + 5 k m per row, with k = 1 where the text is kept and m the
    mean of the frame mask: an affine, known function of the two conditions."""
    k = (~cond.text_dropped(x.shape[0], x.device)).float()              # (B,)
    m = cond.mask.mean(dim=(1, 2, 3, 4)) if cond.mask is not None else torch.zeros(x.shape[0])
    return (1 + 2 * k + 3 * m + 5 * k * m)[:, None].expand_as(x).clone()


class CombiningDenoiser:
    """``linear_denoiser`` with ``combines_passes``: it is handed the guidance weights and sums
    the stacked passes itself, as a network with a pixel head does."""
    combines_passes = True

    def __init__(self):
        self.weights = []

    def __call__(self, x, t, cond):
        return linear_denoiser(x, t, cond)

    def combined(self, x, t, cond, weights):
        self.weights.append(list(weights))
        groups = linear_denoiser(x, t, cond).chunk(len(weights))
        return sum(w * g for w, g in zip(weights, groups))


# --------------------------------------------------------------------------- closed form
def test_guidance_weights_handed_to_a_combining_denoiser_give_the_formula():
    # Every pass layout (three passes, two with text, two without text, text only) gives
    # the closed form of the plain path, through one call with weights that sum to 1.
    x, t = torch.zeros(B, 3), torch.full((B,), 0.5)
    cases = [(frame_cond(), 3.0, 2.0, 3), (frame_cond(), 7.5, None, 2), (frame_cond(text=False), 3.0, 2.0, 2),
             (Conditioning(text=torch.randn(B, 3, 4)), 3.0, 2.0, 2)]
    for cond, scale, frame_scale, passes in cases:
        combining = CombiningDenoiser()
        out = GuidedDenoiser(combining, scale, frame_scale=frame_scale)(x, t, cond)
        expected = GuidedDenoiser(linear_denoiser, scale, frame_scale=frame_scale)(x, t, cond)
        assert torch.allclose(out, expected), (scale, frame_scale)
        (weights,) = combining.weights
        assert len(weights) == passes and abs(sum(weights) - 1) < 1e-9
    # rescale needs x_full by itself: the plain path runs, and hands over no weights
    combining = CombiningDenoiser()
    out = GuidedDenoiser(combining, 3.0, rescale=0.5)(x + 1, t, frame_cond())
    assert combining.weights == [] and torch.allclose(
        out, GuidedDenoiser(linear_denoiser, 3.0, rescale=0.5)(x + 1, t, frame_cond()))


def test_two_scale_guidance_in_closed_form():
    x, t = torch.zeros(B, 3), torch.full((B,), 0.5)
    m = torch.tensor([0.5, 0.25])
    cond = frame_cond()
    # full = 1 + 2 + 8m, frames only (text dropped) = 1 + 3m, none = 1, hence
    # none + fs (frames - none) + s (full - frames) = 1 + 3 m fs + (2 + 5 m) s
    for scale, frame_scale in [(3.0, 2.0), (1.0, 4.0), (7.5, 0.0)]:
        out = GuidedDenoiser(linear_denoiser, scale, frame_scale=frame_scale)(x, t, cond)
        expected = 1 + 3 * m * frame_scale + (2 + 5 * m) * scale
        assert torch.allclose(out, expected[:, None].expand(B, 3)), (scale, frame_scale)
    # frames kept in every pass (frame_scale None or 1): frames + s (full - frames) = 1 + 3m + (2 + 5m) s
    for frame_scale in (None, 1.0):
        out = GuidedDenoiser(linear_denoiser, 3.0, frame_scale=frame_scale)(x, t, cond)
        assert torch.allclose(out, (1 + 3 * m + (2 + 5 * m) * 3.0)[:, None].expand(B, 3))
    # without text every pass uses the null text (k = 0): full = frames = 1 + 3m, so
    # none + fs (full - none) = 1 + 3 m fs
    out = GuidedDenoiser(linear_denoiser, 3.0, frame_scale=2.0)(x, t, frame_cond(text=False))
    assert torch.allclose(out, (1 + 3 * m * 2.0)[:, None].expand(B, 3))
    # without frames only the text is guided: 1 + 2 s
    out = GuidedDenoiser(linear_denoiser, 3.0, frame_scale=2.0)(x, t, Conditioning(text=torch.randn(B, 3, 4)))
    assert torch.allclose(out, torch.full((B, 3), 1 + 2 * 3.0))


def test_rescale_with_three_passes_restores_the_conditional_std():
    def denoiser(x, t, cond):
        k = (~cond.text_dropped(x.shape[0], x.device)).float()[:, None]    # (B, 1)
        m = cond.mask.mean(dim=(1, 2, 3, 4))[:, None]                       # (B, 1)
        base = torch.linspace(-1, 1, x.shape[1]).expand_as(x)
        return base * (1 + k + m)
    x, t, cond = torch.zeros(B, 10), torch.full((B,), 0.5), frame_cond()
    full = GuidedDenoiser(denoiser, 4.0, frame_scale=2.0, rescale=1.0)(x, t, cond)
    plain = GuidedDenoiser(denoiser, 4.0, frame_scale=2.0)(x, t, cond)
    m = torch.tensor([0.5, 0.25])[:, None]
    cond_std = torch.linspace(-1, 1, 10).std() * (2 + m[:, 0])
    assert torch.allclose(full.std(dim=1), cond_std, atol=1e-6)
    assert not torch.allclose(plain.std(dim=1), cond_std, atol=1e-2)


# --------------------------------------------------------------------------- passes
class Recorder:
    """A denoiser that records the batched conditioning of every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t, cond):
        assert t.shape == (x.shape[0],)
        self.calls.append(cond)
        return linear_denoiser(x, t, cond) if cond is not None else x.clone()

    def rows(self):
        return [x.batch_size if x is not None else None for x in self.calls]


@pytest.mark.parametrize("scale, frame_scale, cond, passes", [
    (5.0, 2.0, None, 1),
    (1.0, None, "text", 1),
    (5.0, None, "text", 2),
    (5.0, 2.0, "text", 2),          # no frames to guide
    (5.0, None, "text+frames", 2),  # frames kept in both passes
    (5.0, 1.0, "text+frames", 2),
    (1.0, None, "text+frames", 1),
    (1.0, 1.0, "text+frames", 1),
    (5.0, 2.0, "text+frames", 3),
    (1.0, 2.0, "text+frames", 3),   # text at scale 1 still needs x_full - x_frames
    (5.0, 2.0, "frames", 2),        # no text: frames-only pass equals the full one
    (5.0, None, "frames", 1),
])
def test_pass_count(scale, frame_scale, cond, passes):
    conds = {None: None, "text": Conditioning(text=torch.randn(B, 3, 4)),
             "text+frames": frame_cond(), "frames": frame_cond(text=False)}
    record = Recorder()
    x = torch.zeros(B, 3)
    GuidedDenoiser(record, scale, frame_scale=frame_scale)(x, torch.full((B,), 0.5), conds[cond])
    expected = None if cond is None else passes * B
    assert record.rows() == [expected]


def test_three_passes_are_full_frames_only_and_none():
    record, cond = Recorder(), frame_cond()
    GuidedDenoiser(record, 5.0, frame_scale=2.0)(torch.zeros(B, 3), torch.full((B,), 0.5), cond)
    (batched,) = record.calls
    assert batched.drop_text.tolist() == [False] * B + [True] * 2 * B
    assert torch.equal(batched.mask, torch.cat([cond.mask, cond.mask, torch.zeros_like(cond.mask)]))
    assert torch.equal(batched.known[:2 * B], torch.cat([cond.known] * 2))
    assert torch.equal(batched.frame_stride, torch.full((3 * B,), 2.0))   # never guided away


def test_negative_prompt_replaces_only_the_text():
    cond = frame_cond()
    negative = Conditioning(text=torch.randn(1, 5, 4), text_mask=torch.ones(1, 5, dtype=torch.bool))
    record = Recorder()
    GuidedDenoiser(record, 5.0, negative=negative)(torch.zeros(B, 3), torch.full((B,), 0.5), cond)
    (batched,) = record.calls
    assert batched.batch_size == 2 * B
    # known frames and frame stride are in both halves
    assert torch.equal(batched.known, torch.cat([cond.known] * 2))
    assert torch.equal(batched.mask, torch.cat([cond.mask] * 2))
    assert torch.equal(batched.frame_stride, torch.cat([cond.frame_stride] * 2))
    # the conditional half has its 3 tokens padded to 5; the other half is the negative prompt
    assert torch.equal(batched.text[:B, :3], cond.text) and not batched.text[:B, 3:].any()
    assert batched.text_mask[:B].tolist() == [[True] * 3 + [False] * 2] * B
    assert torch.equal(batched.text[B:], negative.text.expand(B, 5, 4))
    assert batched.drop_text.tolist() == [False] * 2 * B     # the negative text is used, not dropped
    # with frame guidance, the "none" pass also carries the negative text, without frames
    record = Recorder()
    GuidedDenoiser(record, 5.0, frame_scale=2.0, negative=negative)(torch.zeros(B, 3), torch.full((B,), 0.5), cond)
    (batched,) = record.calls
    assert torch.equal(batched.text[2 * B:], negative.text.expand(B, 5, 4))
    assert not batched.mask[2 * B:].any() and torch.equal(batched.mask[B:2 * B], cond.mask)


def test_bad_input():
    cond = Conditioning(text=torch.randn(3, 2, 4))
    with pytest.raises(ValueError, match="batch size 3.*x_t has 2"):
        GuidedDenoiser(Recorder(), 5.0)(torch.zeros(2, 3), torch.full((2,), 0.5), cond)
    with pytest.raises(ValueError, match=r"rescale must be in \[0, 1\], got 2"):
        GuidedDenoiser(Recorder(), 5.0, rescale=2.0)


# --------------------------------------------------------------------------- real networks
PROMPTS = ["a blue square moving up", "a red square"]


def encoder():
    torch.manual_seed(0)
    return build_text_encoder(TextEncoderConfig(dim=16, depth=1, heads=2), captions=PROMPTS).eval()


def network(kind: str, text, **options):
    """A tiny network with every weight moved off its (partly zero) initialisation, so that
    text, pooled vector and known frames all reach the output."""
    torch.manual_seed(1)
    if kind == "unet":
        net = UNet3D(dataclasses.replace(UNET_MODELS["unet-tiny"], text_dim=text.dim,
                                         pooled_dim=text.pooled_dim, **options))
    else:
        net = VideoDiT(dataclasses.replace(DIT_MODELS["dit-tiny"], text_dim=text.dim,
                                           pooled_dim=text.pooled_dim, **options))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return net.eval()


def video(B: int = 1, seed: int = 3) -> torch.Tensor:
    return torch.randn(B, 3, 2, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_padding_with_masked_tokens_leaves_the_output_unchanged(kind):
    text = encoder()
    net = network(kind, text)
    with torch.no_grad():
        short, long = text.conditioning(PROMPTS[1]), text.conditioning(PROMPTS[0])
        assert short.text.shape[1] < long.text.shape[1]
        x, t = video(), torch.tensor([0.4])
        alone = net(x, t, short)
        padded = short.cat(long).map(lambda v: v[:1])           # the short prompt, padded with masked zeros
        assert padded.text.shape[1] == long.text.shape[1]
        assert torch.allclose(net(x, t, padded), alone, atol=1e-5)
        # the padding is reachable: unmasking it changes the output, so the mask is what hides it
        unmasked = padded.replace(text_mask=torch.ones_like(padded.text_mask))
        assert not torch.allclose(net(x, t, unmasked), alone, atol=1e-4)


@pytest.mark.parametrize("frame_scale", [None, 1.5])
@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_guided_network_with_negative_prompt_and_frames_matches_separate_passes(kind, frame_scale):
    text = encoder()
    net = network(kind, text, known_frames=True)
    schedule = Schedule.from_name("cosine")
    base = NetworkDenoiser(net, schedule, "v")
    x, t = video(B=2), torch.tensor([0.3, 0.7])
    mask = torch.zeros(2, 1, 2, 8, 8)
    mask[:, :, 0] = 1                                          # first frame known (image to video)
    cond = text.conditioning([PROMPTS[0]] * 2).replace(known=video(B=2, seed=4), mask=mask)
    negative = text.conditioning(PROMPTS[1])                 # shorter: padded inside the batched call
    scale = 4.0
    with torch.no_grad():
        options = {} if frame_scale is None else {"frame_scale": frame_scale}   # None: the old call
        guided = GuidedDenoiser(base, scale, negative=negative, **options)(x, t, cond)
        x_full = base(x, t, cond)
        x_frames = base(x, t, cond.with_text_of(negative))
        x_none = base(x, t, Conditioning(text=negative.text.expand(2, -1, -1),
                                         text_pooled=negative.text_pooled.expand(2, -1)))
    assert (x_full - x_frames).abs().amax() > 1e-3 and (x_frames - x_none).abs().amax() > 1e-3
    if frame_scale is None:                                   # known frames in both passes
        expected = x_frames + scale * (x_full - x_frames)
    else:
        expected = x_none + frame_scale * (x_frames - x_none) + scale * (x_full - x_frames)
    assert torch.allclose(guided, expected, atol=1e-4)
