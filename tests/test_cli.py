"""The vidiff command: help, errors, and the jobs available so far."""
import json
import subprocess
import sys

import pytest

from vidiff.cli import build_parser, main


def test_help_lists_only_working_commands():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in sub.choices:  # every listed command parses its own --help
        assert main([name, "--help"]) == 0


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "vidiff", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "check" in out.stdout


def test_check_reports_measured_orders(tmp_path, capsys):
    path = tmp_path / "check.json"
    assert main(["check", "--schedules", "cosine", "--samplers", "ddim,heun,dpmpp_2m",
                 "--steps", "20,100", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["cosine"]
    order = {r["sampler"]: r["order"] for r in rows}
    assert 0.8 < order["ddim"] < 1.3 and 1.7 < order["heun"] < 2.4 and 1.6 < order["dpmpp_2m"] < 2.4
    for name in ("ddim", "heun", "dpmpp_2m"):
        errors = [r["max_error"] for r in rows if r["sampler"] == name]
        assert errors[1] < errors[0]  # more steps, closer to the exact answer
    assert "dpmpp_2m" in capsys.readouterr().out


def test_schedule_table(capsys):
    assert main(["schedule", "flow", "--points", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split() == ["0.250", "0.750000", "0.250000", "2.197"]  # 2 log 3


def test_bad_input_is_one_clear_line(capsys):
    assert main(["check", "--samplers", "dpm"]) == 2
    err = capsys.readouterr().err
    assert "unknown sampler 'dpm'" in err and "dpmpp_2m" in err and "Traceback" not in err
    assert main(["schedule", "cosin"]) == 2
    assert "unknown schedule 'cosin'" in capsys.readouterr().err


def test_convert_writes_the_requested_container(tmp_path, capsys):
    import numpy as np
    from vidiff.video import Video
    frames = np.zeros((6, 16, 20, 3), np.uint8)
    frames[:, 4:8, 4:8] = 255
    Video(frames, fps=10).save(tmp_path / "in.mp4")
    assert main(["convert", str(tmp_path / "in.mp4"), "--out", str(tmp_path / "out"), "--frames", "4",
                 "--fps", "5"]) == 0
    back = Video.load(tmp_path / "out")
    assert back.num_frames == 4 and back.fps == 5.0 and (back.height, back.width) == (16, 20)
    assert main(["convert", str(tmp_path / "in.mp4"), "--out", str(tmp_path / "x.avi")]) == 2
    assert "unknown extension '.avi'" in capsys.readouterr().err


def test_models_table_matches_real_counts(capsys, monkeypatch):
    import torch
    import vidiff.cli.info
    from vidiff.models.flops import count_flops, count_parameters
    from vidiff.models.registry import MODELS, build_from_config, describe_sizes
    table = describe_sizes(frames=4, size=16)     # every size on the meta device: the slow part
    rows = {r["name"]: r for r in table}
    assert set(rows) == set(MODELS)
    net = build_from_config("unet", MODELS["unet-tiny"])  # the same count on a real CPU model
    flops = count_flops(lambda: net(torch.randn(1, 3, 4, 16, 16), torch.rand(1), None))
    assert rows["unet-tiny"]["gflop"] == pytest.approx(flops / 1e9, rel=1e-9)
    assert rows["unet-tiny"]["parameters"] == count_parameters(net)
    assert rows["dit-1b/2"]["parameters"] > 0.9e9
    # The command prints those rows (computed once above, not again).
    monkeypatch.setattr(vidiff.cli.info, "describe_sizes", lambda frames, size: table)
    assert main(["models", "--frames", "4", "--size", "16"]) == 0
    out = capsys.readouterr().out
    assert f"{rows['dit-1b/2']['parameters']:,}" in out and f"{rows['unet-tiny']['parameters']:,}" in out
