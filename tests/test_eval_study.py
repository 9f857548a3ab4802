"""The steps-versus-quality study: known answers with a rendering pipeline, then the CLI on a tiny model."""
import json

import numpy as np
import pytest

from vidiff.cli import main
from vidiff.data.shapes import all_triples, render
from vidiff.eval.adherence import shapes_adherence
from vidiff.eval.shapes import parse_caption
from vidiff.eval.study import plot_study, steps_study
from vidiff.eval.temporal import temporal_flickering
from vidiff.video import Video

SWAP = {"red": "blue", "blue": "red", "green": "yellow", "yellow": "green", "cyan": "magenta",
        "magenta": "cyan", "white": "red"}


class RenderingPipe:
    """Stands in for a VideoPipeline: draws the prompt exactly, except that ``euler`` with
    fewer than 3 steps draws the wrong colour. So adherence is 1 or 0 by construction."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, steps, guidance, sampler, seed, samples):
        self.calls.append((sampler, steps))
        out = []
        for p in prompts:
            color, shape, direction = parse_caption(p)
            if sampler == "euler" and steps < 3:
                color = SWAP[color]
            out += [Video(render(color, shape, direction, frames=5, size=20))] * samples
        return out


def test_study_reports_every_setting_with_known_adherence(tmp_path):
    held = [("red", "triangle", "left"), ("blue", "square", "up")]
    report = steps_study(RenderingPipe(), [1, 4], ["ddim", "euler"], held, samples=1, progress=False)
    rows = {(r["sampler"], r["steps"]): r for r in report["rows"]}
    assert list(rows) == [("ddim", 1), ("ddim", 4), ("euler", 1), ("euler", 4)]
    expected = {("ddim", 1): 1.0, ("ddim", 4): 1.0, ("euler", 1): 0.0, ("euler", 4): 1.0}
    for key, value in expected.items():
        assert rows[key]["adherence"] == value and rows[key]["held_out_adherence"] == value
        assert rows[key]["seen"]["count"] == 82 and rows[key]["held_out"]["count"] == 2
        assert rows[key]["seconds_per_clip"] > 0
    # the temporal summary is that of exactly the clips generated for the setting
    flicker = np.mean([temporal_flickering(render(*t, frames=5, size=20)) for t in all_triples()])
    assert rows[("ddim", 4)]["temporal"]["flickering"] == pytest.approx(flicker)
    assert rows[("ddim", 4)]["temporal"]["dynamic_degree"] == 1.0  # 9 px over 4 steps > 0.47 px per frame
    path = plot_study(report, tmp_path / "plots" / "study.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(path.parent.glob(".*"))


def test_bad_grid_fails_before_generating():
    pipe = RenderingPipe()
    with pytest.raises(ValueError, match="unknown sampler 'eulr'.*euler"):
        steps_study(pipe, [1], ["ddim", "eulr"], progress=False)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        steps_study(pipe, [0, 2], ["ddim"], progress=False)
    assert pipe.calls == []


def test_cli_study_and_single_setting_on_a_tiny_model(tiny_model, tmp_path, capsys):
    import vidiff
    study = tmp_path / "study.json"
    assert main(["eval", "shapes", "--model", str(tiny_model), "--steps", "1,2", "--samplers", "ddim,euler",
                 "--samples", "1", "--guidance", "1", "--json", str(study)]) == 0
    report = json.loads(study.read_text())
    assert [(r["sampler"], r["steps"]) for r in report["rows"]] == [("ddim", 1), ("ddim", 2), ("euler", 1),
                                                                   ("euler", 2)]
    assert study.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert all(r["seconds_per_clip"] > 0 and r["held_out"]["count"] == 4 for r in report["rows"])
    assert "held-out" in capsys.readouterr().out
    # the same numbers as shapes_adherence for one setting, and the single-setting command
    pipe = vidiff.load(tiny_model)
    from vidiff.data import DEMO_HELD_OUT
    direct = shapes_adherence(pipe, DEMO_HELD_OUT, samples=1, steps=2, sampler="euler", guidance=1.0,
                              progress=False)
    row = report["rows"][3]
    assert row["seen"] == direct["seen"] and row["held_out"] == direct["held_out"]
    single = tmp_path / "single.json"
    assert main(["eval", "shapes", "--model", str(tiny_model), "--steps", "2", "--sampler", "euler",
                 "--samples", "1", "--guidance", "1", "--json", str(single)]) == 0
    assert json.loads(single.read_text())["seen"] == direct["seen"]
    assert main(["eval", "shapes", "--model", str(tiny_model), "--sampler", "ddim", "--samplers", "euler",
                 "--json", str(tmp_path / "x.json")]) == 2
    assert "not both" in capsys.readouterr().err and not (tmp_path / "x.json").exists()
