"""The demo's pieces: the adherence evaluation (against rendered ground truth) and a tiny run."""
import json

import numpy as np
import pytest
import torch

from vidiff.data.shapes import DEMO_HELD_OUT, MovingShapes
from vidiff.eval.adherence import format_report, shapes_adherence
from vidiff.eval.shapes import parse_caption
from vidiff.models.registry import build_from_config, resolve_config
from vidiff.video import Video


class RenderingPipe:
    """Stands in for a model: renders each prompt's clip, optionally with the colour wrong."""

    def __init__(self, wrong_color=False):
        self.wrong_color, self.calls = wrong_color, []

    def generate(self, prompts, steps, guidance, sampler, seed, samples):
        self.calls.append(len(prompts) * samples)
        videos = []
        for prompt in prompts:
            color, shape, direction = parse_caption(prompt)
            if self.wrong_color:
                color = "white" if color != "white" else "red"
            for k in range(samples):
                frames = MovingShapes.render(color, shape, direction, frames=16, size=32)
                videos.append(Video(frames))
        return videos


def test_adherence_counts_every_triple_and_separates_held_out():
    report = shapes_adherence(RenderingPipe(), DEMO_HELD_OUT, samples=2, progress=False)
    assert report["seen"]["count"] == 2 * (84 - len(DEMO_HELD_OUT))
    assert report["held_out"]["count"] == 2 * len(DEMO_HELD_OUT)
    assert report["seen"]["adherence"] == 1.0 and report["held_out"]["adherence"] == 1.0
    wrong = shapes_adherence(RenderingPipe(wrong_color=True), DEMO_HELD_OUT, samples=1, progress=False)
    assert wrong["seen"]["color_accuracy"] == 0.0 and wrong["seen"]["adherence"] == 0.0
    assert wrong["seen"]["shape_accuracy"] == 1.0 and wrong["seen"]["direction_accuracy"] == 1.0
    assert "held_out" in format_report(report)
    # a subset of triples: only those are drawn, still split into seen and held out
    pipe = RenderingPipe()
    some = shapes_adherence(pipe, DEMO_HELD_OUT, samples=3, progress=False,
                            triples=[("red", "circle", "right"), ("cyan", "square", "up"), DEMO_HELD_OUT[0]])
    assert (some["seen"]["count"], some["held_out"]["count"], sum(pipe.calls)) == (6, 3, 9)


def test_patch_stem_keeps_output_size_and_residual_shapes():
    cfg = resolve_config("unet-tiny", {"patch": 2})
    net = build_from_config("unet", cfg)
    x, t = torch.randn(2, 3, 3, 16, 16), torch.rand(2)
    assert net(x, t).shape == x.shape
    assert [tuple(r.shape) for r in net.encode(x, t)] == net.residual_shapes(x.shape)
    with pytest.raises(ValueError, match="divisible by 4 \\(patch 2"):
        net(torch.randn(1, 3, 2, 18, 18), torch.rand(1))


def test_tiny_demo_run(tmp_path, capsys):
    from vidiff.apps.demo import run_demo
    # a 4-step warm-up: the demo trains steps 1-4 (the probe is cut to the warm-up; 1-2
    # untimed, 3-4 timed), plans again (capped at 5 by train.steps) and goes on
    report = run_demo(str(tmp_path / "demo"), ["model.size=unet-tiny", "train.steps=5", "data.frames=4",
                                               "train.warmup_steps=4", "sample.steps=2", "text.dim=32",
                                               "text.depth=1"],
                      samples=1, progress=False)
    saved = json.loads((tmp_path / "demo" / "adherence.json").read_text())
    assert saved["seen"]["count"] == 84 - len(DEMO_HELD_OUT) == report["seen"]["count"]
    assert saved["train_steps"] == 5
    assert Video.load(tmp_path / "demo" / "held_out.mp4").num_frames == 4
    out = capsys.readouterr().out
    assert "steps 3-4 took" in out and "5 steps in all" in out and "adherence" in out
