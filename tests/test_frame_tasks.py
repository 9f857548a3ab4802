"""Frame tasks through the pipeline: where known pixels go, window structure, prompt schedules.

A network whose right answer is known by construction (it returns the known pixels where the
mask says known and a constant elsewhere) shows that every task puts the given pixels in the
right place of the raw output, that long clips are built from windows no longer than the
model's, and that a prompt schedule switches at its frame. The trained model's quality is
measured in benchmarks/tasks.py.
"""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from vidiff.diffusion import Schedule
from vidiff.pipelines.frames import parse_prompt_schedule
from vidiff.pipelines.video import VideoPipeline
from vidiff.text import TextEncoderConfig, build_text_encoder
from vidiff.video import Video

W, H = 16, 16
WINDOW = 8
FILL = -0.5          # what the oracle writes where nothing is known


class CopyKnown(nn.Module):
    """``x0`` prediction: ``known`` where ``mask`` is 1, ``FILL`` elsewhere; records each call."""

    def __init__(self, frame_stride: bool = False):
        super().__init__()
        self.config = SimpleNamespace(known_frames=True, frame_stride=frame_stride, in_channels=3)
        self.anchor = nn.Parameter(torch.zeros(()))
        self.calls = []

    def check_shape(self, shape):
        if shape[3] % 4 or shape[4] % 4:
            raise ValueError(f"H and W must be divisible by 4, got {shape}")

    def forward(self, x, t, cond):
        # x: (B, C, T, H, W) -> (B, C, T, H, W)
        self.calls.append((x.shape[2], cond))
        out = torch.full_like(x, FILL)
        if cond is not None and cond.mask is not None:
            out = torch.where(cond.mask > 0.5, cond.known, out)
        return out


@pytest.fixture
def pipe():
    return VideoPipeline(CopyKnown(), Schedule.from_name("cosine"), "x0", frames=WINDOW, height=H, width=W)


def _video(frames: int, seed: int = 0) -> Video:
    return Video(np.random.default_rng(seed).integers(0, 256, (frames, H, W, 3), dtype=np.uint8), fps=10)


FAST = dict(steps=2, sampler="ddim")


def test_animate_puts_the_image_at_its_frame(pipe):
    image = _video(1)
    out = pipe.animate(image, num_frames=6, frame_index=2, **FAST)
    assert out.num_frames == 6 and np.array_equal(out.frames[2], image.frames[0])
    _, raw = pipe.fill(*_animate_pair(image, 6, 2), **FAST)
    assert torch.allclose(raw[0, :, 2], image.to_tensor()[:, 0], atol=1e-6)   # the raw output honours it
    # elsewhere the network's own output, on the 8-bit grid the clip is held on (half a level away)
    assert torch.allclose(raw[0, :, 3], torch.full((3, H, W), FILL), atol=0.5 / 127.5 + 1e-6)


def _animate_pair(image, frames, index):
    known = torch.zeros(3, frames, H, W)
    known[:, index] = image.to_tensor()[:, 0]
    mask = torch.zeros(1, frames, H, W)
    mask[:, index] = 1
    return known, mask


def test_predict_starts_from_the_last_context_frames(pipe):
    video = _video(10)
    futures = pipe.predict(video, context=3, num_frames=7, samples=2, **FAST)
    assert len(futures) == 2
    for f in futures:
        assert f.num_frames == 7 and f.fps == 10
        assert np.array_equal(f.frames[:3], video.frames[-3:])
        assert np.abs(f.frames[3:].astype(int) - round((FILL + 1) * 127.5)).max() <= 1


def test_interpolate_keeps_every_factor_th_frame_and_multiplies_the_fps(pipe):
    video = _video(6)
    out = pipe.interpolate(video, factor=3, **FAST)
    assert out.num_frames == (6 - 1) * 3 + 1 and out.fps == 30
    assert np.array_equal(out.frames[::3], video.frames)
    # Windows hold whole keyframe gaps (7 frames of the 8-frame window) and end on a keyframe.
    assert {T for T, _ in pipe.network.calls} <= {7}


def test_inpaint_box_keeps_everything_outside_it(pipe):
    video = _video(5)
    out = pipe.inpaint(video, box=(4, 0, 12, 8), frame_range=(1, 3), **FAST)
    changed = np.any(out.frames != video.frames, axis=-1)              # (T, H, W)
    assert not changed[0].any() and not changed[4].any()
    assert not changed[1:4, 8:].any() and not changed[1:4, :, :4].any() and changed[1:4, :8, 4:12].all()


def test_inpaint_mask_image_white_regenerates(pipe):
    video = _video(4)
    white = np.zeros((1, H, W, 3), dtype=np.uint8)
    white[0, :4, :4] = 255
    out = pipe.inpaint(video, mask=Video(white), **FAST)
    changed = np.any(out.frames != video.frames, axis=-1)
    assert changed[:, :4, :4].all() and changed.sum() == 4 * 16
    for bad in (np.zeros_like(white), np.full_like(white, 255)):
        with pytest.raises(ValueError, match="all black .* or all white"):
            pipe.inpaint(video, mask=Video(bad), **FAST)


def test_outpaint_keeps_the_original_in_place(pipe):
    video = Video(np.random.default_rng(1).integers(0, 256, (4, H, 8, 3), dtype=np.uint8))
    out = pipe.outpaint(video, {"left": 4, "right": 4}, **FAST)
    assert (out.height, out.width) == (H, 16)
    assert np.array_equal(out.frames[:, :, 4:12], video.frames)
    with pytest.raises(ValueError, match="does not fit the model"):
        pipe.outpaint(video, {"left": 3}, **FAST)
    with pytest.raises(ValueError, match=">= 0"):
        pipe.outpaint(video, {"left": -4}, **FAST)


def test_extension_never_hands_the_network_more_than_one_window(pipe):
    video = _video(5)
    out = pipe.extend(video, 40, **FAST)
    assert out.num_frames == 40 and np.array_equal(out.frames[:5], video.frames)
    lengths = [T for T, _ in pipe.network.calls]
    assert max(lengths) == WINDOW
    # Each window after the first starts with overlap = WINDOW // 4 known frames, so it adds
    # WINDOW - 2 new frames: the call count grows linearly with the length.
    assert len(lengths) == 2 * len(range(5, 40, WINDOW - WINDOW // 4))


def test_generate_long_from_text_only(pipe):
    out = pipe.generate(None, num_frames=20, **FAST)
    assert out.num_frames == 20 and max(T for T, _ in pipe.network.calls) == WINDOW


def test_prompt_schedule_switches_at_its_frame():
    encoder = build_text_encoder(TextEncoderConfig(dim=16, depth=1, heads=2),
                                 captions=["a red circle", "a blue square"])
    pipe = VideoPipeline(CopyKnown(), Schedule.from_name("cosine"), "x0", text_encoder=encoder,
                         frames=WINDOW, height=H, width=W)
    schedule = parse_prompt_schedule(["0 a red circle", "", "# then", "11 a blue square"])
    windows = []
    pipe.generate("a red circle", num_frames=24, prompt_schedule=schedule, guidance=1.0,
                  callback=lambda info: windows.append(info) if "window" in info else None, **FAST)
    for info in windows:
        start, end = info["frames"]
        assert not start < 11 < end                                    # no window straddles frame 11
        new = "a blue square" if start >= 11 else "a red circle"
        assert info["prompt"] == new
    assert any(info["frames"][0] == 11 for info in windows)
    # The text that reached the network is the window's prompt.
    red, blue = (encoder.conditioning([p]).text for p in ("a red circle", "a blue square"))
    texts = [cond.text for _, cond in pipe.network.calls]
    assert torch.allclose(texts[0][:1, :red.shape[1]], red) and torch.allclose(texts[-1][:1, :blue.shape[1]], blue)


@pytest.mark.parametrize("lines, words", [
    (["0 red", "0 blue"], "does not increase"),
    (["4 red", "2 blue"], "does not increase"),
    (["red circle"], "is not 'FRAME PROMPT'"),
    (["-1 red"], "is not 'FRAME PROMPT'"),
    (["# nothing"], "no 'FRAME PROMPT' lines"),
])
def test_bad_prompt_schedules_are_refused(lines, words):
    with pytest.raises(ValueError, match=words):
        parse_prompt_schedule(lines)


def test_hierarchical_makes_keyframes_at_the_stride_first():
    net = CopyKnown(frame_stride=True)
    pipe = VideoPipeline(net, Schedule.from_name("cosine"), "x0", frames=WINDOW, height=H, width=W)
    out = pipe.extend(_video(4), 33, scheme="hierarchical", stride=4, **FAST)
    assert out.num_frames == 33
    strides = [None if c.frame_stride is None else float(c.frame_stride[0]) for _, c in net.calls]
    first_fill = strides.index(None)
    assert set(strides[:first_fill]) == {4.0} and set(strides[first_fill:]) == {None}
    assert max(T for T, _ in net.calls) == WINDOW
    # Without frame-stride conditioning the keyframe clip would move at the wrong speed.
    with pytest.raises(ValueError, match="frame_stride"):
        VideoPipeline(CopyKnown(), Schedule.from_name("cosine"), "x0", frames=WINDOW, height=H,
                      width=W).extend(_video(4), 33, scheme="hierarchical", **FAST)


def test_interpolation_tells_a_stride_model_the_output_rate():
    """A temporal-interpolation stage (conditioned on frame stride) is told the rate of the
    clip it fills: 1 / factor of the input's by default, or the stride asked for; a model
    without that conditioning is told nothing."""
    net = CopyKnown(frame_stride=True)
    pipe = VideoPipeline(net, Schedule.from_name("cosine"), "x0", frames=WINDOW, height=H, width=W)
    video = _video(3)
    for factor, asked, told in ((2, None, 0.5), (4, None, 0.25), (2, 0.125, 0.125)):
        net.calls.clear()
        out = pipe.interpolate(video, factor, **FAST, **({} if asked is None else {"frame_stride": asked}))
        assert np.array_equal(out.frames[::factor], video.frames)
        assert {float(v) for _, c in net.calls for v in c.frame_stride} == {told}
    plain = CopyKnown()
    VideoPipeline(plain, Schedule.from_name("cosine"), "x0", frames=WINDOW, height=H, width=W).interpolate(
        video, 2, **FAST)
    assert plain.calls and all(c.frame_stride is None for _, c in plain.calls)


@pytest.mark.parametrize("call, words", [
    (lambda p: p.interpolate(_video(3), factor=1), ">= 2"),
    (lambda p: p.interpolate(_video(3), factor=WINDOW), "largest factor"),
    (lambda p: p.predict(_video(9), context=WINDOW, num_frames=12), "not shorter"),
    (lambda p: p.predict(_video(9), context=4, num_frames=4), "must exceed"),
    (lambda p: p.animate(Video(np.zeros((1, 12, 12, 3), np.uint8))), "do not fit"),
    (lambda p: p.animate(_video(1), num_frames=4, frame_index=4), "outside"),
    (lambda p: p.inpaint(_video(3), box=(0, 0, 17, 4)), "x1 <= 16"),
    (lambda p: p.extend(_video(6), 6), "must exceed"),
    (lambda p: p.predict(_video(6), context=2, num_frames=8, method="bogus"), "accepted"),
    (lambda p: p.fill(torch.zeros(3, 4, H, W), torch.zeros(1, 5, H, W)), "mask must have shape"),
])
def test_bad_task_input_is_refused(pipe, call, words):
    with pytest.raises(ValueError, match=words):
        call(pipe)
    assert pipe.network.calls == []                                    # refused before any sampling


def test_mask_method_needs_a_mask_trained_model():
    net = CopyKnown()
    net.config.known_frames = False
    plain = VideoPipeline(net, Schedule.from_name("cosine"), "x0", frames=WINDOW, height=H, width=W)
    with pytest.raises(ValueError, match="trained with known-frame masks"):
        plain.predict(_video(6), context=2, num_frames=8, method="mask", **FAST)
    assert plain.check_method(None) == "guidance"


def test_known_noise_reaches_the_network_with_its_level(pipe):
    video = _video(4)
    pipe.predict(video, context=2, num_frames=6, known_noise=0.3, **FAST)
    _, cond = pipe.network.calls[0]
    assert torch.allclose(cond.known_noise, torch.tensor([0.3]))
    given = video.to_tensor()[:, -2:]
    alpha, sigma = (float(v) for v in pipe.schedule.alpha_sigma(torch.tensor([0.3])))
    residual = (cond.known[0, :, :2] - alpha * given) / sigma                   # the noise that was added
    assert abs(float(residual.std()) - 1.0) < 0.1 and abs(float(residual.mean())) < 0.1
    with pytest.raises(ValueError, match="known noise"):
        pipe.predict(video, context=2, num_frames=6, known_noise=1.0, **FAST)


# A network whose activations dominate the working memory (a wide 1x1x1 convolution: about
# 16 MiB per activation for a window of 8 frames of 32x32), so a pipeline that kept one
# window's activations alive into the next, or ran the whole clip at once, shows up in the
# peak; the clip buffers themselves (3 x 128 x 32 x 32 floats, 1.5 MiB) are small beside it.
_MEMORY_WORKER = r"""
import json, sys, types, torch
from torch import nn
from vidiff.diffusion import Schedule
from vidiff.pipelines.video import VideoPipeline

class Wide(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = types.SimpleNamespace(known_frames=True, frame_stride=False, in_channels=3)
        self.inp, self.out = nn.Conv3d(7, 512, 1), nn.Conv3d(512, 3, 1)
    def check_shape(self, shape):
        pass
    def forward(self, x, t, cond):
        # x: (B, 3, T, H, W) -> (B, 3, T, H, W)
        return self.out(torch.relu(self.inp(torch.cat([x, cond.known, cond.mask], 1))))

def kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

torch.set_num_threads(1)
pipe = VideoPipeline(Wide(), Schedule.from_name("cosine"), "x0", frames=8, height=32, width=32)
known, mask = torch.zeros(3, 4, 32, 32), torch.ones(1, 4, 32, 32)
frames = int(sys.argv[1])
grow = lambda T: (torch.cat([known, torch.zeros(3, T - 4, 32, 32)], 1), torch.cat([mask, torch.zeros(1, T - 4, 32, 32)], 1))
pipe.fill(*grow(12), steps=2, sampler="ddim", method="mask")        # first-call allocations
baseline = kib("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")                                                     # reset the peak-RSS mark
pipe.fill(*grow(frames), steps=2, sampler="ddim", method="mask")
print(json.dumps((kib("VmHWM") - baseline) / 1024))
"""


def _peaks(worker: str, lengths) -> dict:
    """What ``worker`` prints (a peak working memory) for each clip length, each in a fresh
    process, with glibc returning freed buffers so that RSS follows the live set."""
    import json
    import os
    import subprocess
    import sys
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    peaks = {}
    for frames in lengths:
        result = subprocess.run([sys.executable, "-c", worker, str(frames)], capture_output=True,
                                text=True, env=env, check=True)
        peaks[frames] = json.loads(result.stdout.strip().splitlines()[-1])
    return peaks


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_long_clip_working_memory_stays_flat():
    """Peak working memory (peak RSS minus the resident set before the call, each length in a
    fresh process) filling 128 frames is at most 1.25x that of 32 frames."""
    mib = _peaks(_MEMORY_WORKER, (32, 128))
    assert mib[32] > 16, mib                         # the activations are measured at all
    assert mib[128] <= 1.25 * mib[32], mib


# A network with next to no activations, so what grows with the clip is the clip itself: the
# buffers extend and fill hold for it. 64x64 frames, 12,288 values each.
_CLIP_WORKER = r"""
import json, sys, types, numpy as np, torch
from torch import nn
from vidiff.diffusion import Schedule
from vidiff.pipelines.video import VideoPipeline
from vidiff.video import Video

class Copy(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = types.SimpleNamespace(known_frames=True, frame_stride=False, in_channels=3)
        self.scale = nn.Parameter(torch.ones(1))
    def check_shape(self, shape):
        pass
    def forward(self, x, t, cond):
        # x: (B, 3, T, H, W) -> (B, 3, T, H, W): the known frames where given, else x scaled
        return torch.where(cond.mask > 0.5, cond.known, x * self.scale)

def kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

torch.set_num_threads(1)
pipe = VideoPipeline(Copy(), Schedule.from_name("cosine"), "x0", frames=8, height=64, width=64)
video = Video(np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8))
pipe.extend(video, 12, steps=1, sampler="ddim", method="mask")         # first-call allocations
baseline = kib("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")                                                     # reset the peak-RSS mark
pipe.extend(video, int(sys.argv[1]), steps=1, sampler="ddim", method="mask")
print(json.dumps((kib("VmHWM") - baseline) * 1024))
"""


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_a_long_clip_is_held_once_in_eight_bits():
    """Extending to 256 frames instead of 32 (64x64, a network with no activations to speak of)
    grows the peak working memory by at most 4 bytes a value of the extra frames: the clip is
    held once as uint8 levels (1 byte) with a boolean mask, and converted to float only a
    window at a time (measured 2.1; 18.6 when the clip was held in float32 copies)."""
    peak = _peaks(_CLIP_WORKER, (32, 256))
    per_value = (peak[256] - peak[32]) / (224 * 3 * 64 * 64)
    assert per_value <= 4.0, (peak, per_value)
