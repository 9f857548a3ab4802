"""Bad input at the command line: every subcommand, every kind of bad value.

Each bad value must give exit status 2, one line on stderr (``vidiff CMD: error: ...`` naming
the value and what is accepted), no traceback, and no file written (not even a temporary one).
Values are checked when the command line is parsed; what only a model or a file can tell (a
checkpoint of another kind, a size the network cannot take, a corrupt video) is checked by the
library before its work starts.
"""
import shlex
import subprocess
import sys

import numpy as np
import pytest
import yaml

from vidiff.cli import build_parser, main
from vidiff.pipelines.shipped import SHIPPED_DIR_ENV
from vidiff.train.config import load_run_config
from vidiff.train.run import train
from vidiff.video import Video

# One-step runs: the checks under test never depend on what the weights learned.
DENOISER = {"model": {"size": "unet-tiny", "overrides": {"channels": [8, 16], "norm_groups": 4, "patch": 2,
                                                         "spatial_attention": [], "temporal_attention": [],
                                                         "mid_attention": False}},
            "data": {"name": "shapes", "frames": 4, "size": 16, "held_out": "demo"},  # H, W: multiples of 4
            "text": {"dim": 16, "depth": 1, "heads": 2},
            "train": {"steps": 1, "batch_size": 2, "warmup_steps": 1, "checkpoint_every": 1}}
AUTOENCODER = {"kind": "autoencoder", "model": {"size": "vae-tiny"},       # codes 1 + 4k frames
               "data": {"name": "shapes", "frames": 5, "size": 16, "length": 4},
               "autoencoder": {"scaling_batches": 1},
               "train": {"steps": 1, "batch_size": 2, "warmup_steps": 0, "checkpoint_every": 1}}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, one_thread):
    """Every input the bad commands read, built once: a denoiser and an autoencoder checkpoint,
    a good clip, a corrupt one, folders of each, a run config and a broken one."""
    root = tmp_path_factory.mktemp("inputs")
    train(load_run_config(None, [f"train.out_dir={root / 'den'}"], base=DENOISER), progress=False)
    train(load_run_config(None, [f"train.out_dir={root / 'vae'}"], base=AUTOENCODER), progress=False)
    clip = Video(np.zeros((5, 16, 16, 3), np.uint8))
    clip.save(root / "clip.mp4")
    (root / "clips").mkdir()
    clip.save(root / "clips" / "a.mp4")
    (root / "corrupt.mp4").write_bytes(b"these bytes are not a video" * 8)
    (root / "bad_clips").mkdir()
    (root / "bad_clips" / "a.mp4").write_bytes(b"these bytes are not a video" * 8)
    (root / "run.yaml").write_text(yaml.safe_dump(DENOISER))
    (root / "broken.yaml").write_text("model: [unclosed\n")
    return root


# (command, a fragment of the one error line). {out} is the test's empty output folder (and the
# working directory); {missing} a path that does not exist; the rest are files of `inputs`.
G = "generate --model {den} --out {out}/o.mp4"
R = "reconstruct {clip} --vae {vae} --out {out}/r.mp4"
C = "cache-latents shapes --vae {vae} --out {out}/cache"
FVD = "eval fvd --real {clips} --fake {clips} --features {clip}"
FD = "eval fd --real shapes --fake {clips}"
S = "eval shapes --model {den}"
CASES = [
    ("demo --samples 0", "argument --samples: must be an integer >= 1, got '0'"),
    ("demo --samples two", "argument --samples: expected an integer >= 1, got 'two'"),
    ("demo --out {corrupt}", "is a file, expected a folder"),
    ("demo --out {out}/d train.steps=abc", "train.steps: expected an integer, got 'abc'"),
    ("demo --out {out}/d train.lr=nan", "train.lr must be > 0, got nan"),
    ("train {missing}.yaml", "does not exist"),
    ("train {broken}", "is not valid YAML"),
    ("train {cfg} train.out_dir={out}/run train.steps=-1", "train.steps must be >= 1, got -1"),
    ("train {cfg} --nproc 0", "argument --nproc: must be an integer >= 1, got '0'"),
    ("train {cfg} train.out_dir={out}/run model.overrides.reference_tokens=2 reference.prob=0.5 "
     "model.overrides.reference_encoder=clip model.overrides.reference_encoder_path={missing}",
     "CLIP vision model directory"),     # a reference encoder's folder that does not exist
    # checked once here, before torchrun starts two processes that would each fail
    ("train {cfg} --nproc 2 train.out_dir={out}/run train.steps=0", "train.steps must be >= 1, got 0"),
    ("train --resume {missing}", "argument --resume: no such file or folder"),
    ("train --resume {clip}", "is neither a checkpoint"),
    (G + " --frames 0", "argument --frames: must be an integer >= 1, got '0'"),       # not the default
    (G + " --frames -3", "argument --frames: must be an integer >= 1, got '-3'"),
    (G + " --steps 2.5", "argument --steps: expected an integer >= 1, got '2.5'"),
    (G + " --guidance nan", "argument --guidance: must be a finite number >= 0, got 'nan'"),
    (G + " --guidance -1", "argument --guidance: must be a finite number >= 0, got '-1'"),
    (G + " --guidance-rescale 2", "argument --guidance-rescale: must be a finite number in [0, 1], got '2'"),
    (G + " --seed -1", "argument --seed: a seed must be an integer in [0, 4294967296), got '-1'"),
    (G + " --samples 0", "argument --samples: must be an integer >= 1, got '0'"),
    (G + " --sampler dpm", "argument --sampler: unknown sampler 'dpm'; accepted: ddpm, ddim"),
    (G + " --device abacus", "argument --device: unknown device 'abacus'"),
    (G + " --device cuda:99", "argument --device: device 'cuda:99'"),              # with or without CUDA
    (G + " --prompt ''", "argument --prompt: expected non-blank text"),
    (G + " --prompts {missing}.txt", "argument --prompts: no such file"),
    ("generate --model {den} --out {out}/o.xyz", "unknown extension '.xyz'; accepted: .mp4"),
    ("generate --model {den} --out {corrupt}/o.mp4", "is a file, not a folder"),
    ("generate --model {missing} --out {out}/o.mp4", "does not exist"),
    ("generate --model {vae} --out {out}/o.mp4", "holds a model of kind 'autoencoder', not the 'denoiser'"),
    # shipped models are looked up in {out}/shipped, which holds none
    ("generate --model nosuch --out {out}/o.mp4", "argument --model: unknown model 'nosuch': neither a "
                                                  "shipped model (no shipped models are installed)"),
    ("generate --out {out}/o.mp4", "shipped model 'shapes' is not installed in this build"),   # when it loads
    ("eval shapes --model digits", "argument --model: shipped model 'digits' is not installed"),
    (G + " --height 17", "divisible by 4"),                                          # after loading
    (G + " --width 6", "divisible by 4"),
    (R.replace("{clip}", "{corrupt}"), "cannot read"),
    (R.replace("{clip}", "{missing}.mp4"), "argument VIDEO: no such file or folder"),
    ("reconstruct {clip} --vae {den} --out {out}/r.mp4", "holds a model of kind 'denoiser', not the 'autoencoder'"),
    (R + " --chunk 0", "argument --chunk: must be an integer >= 1, got '0'"),
    (R + " --tile -4", "argument --tile: must be an integer >= 1, got '-4'"),
    ("reconstruct {clip} --vae {vae} --out {out}/r.avi", "unknown extension '.avi'"),
    (R + " --json {out}/", "is a folder, expected a file path"),
    ("cache-latents {missing} --vae {vae} --out {out}/cache", "neither a built-in dataset"),
    ("cache-latents shapes --vae {den} --out {out}/cache", "holds a model of kind 'denoiser', not the 'autoencoder'"),
    (C + " --count 0", "argument --count: must be an integer >= 1, got '0'"),
    (C + " --batch-size -1", "argument --batch-size: must be an integer >= 1, got '-1'"),
    (C + " --shard-size many", "argument --shard-size: expected an integer >= 1, got 'many'"),
    (C + " length=4 frames=6", "accepted lengths are 1 + 4k"),                      # after loading
    (C + " frames=abc", "data.frames: expected an integer, got 'abc'"),
    ("cache-latents shapes --vae {vae} --out {corrupt}", "is a file, expected a folder"),
    (C + " --text-kind clip --text-path {missing}", "argument --text-path: no such folder"),
    (FVD.replace("{clip}", "{missing}.pt"), "feature network"),
    (FVD.replace("{clip}", "{corrupt}"), "is not a TorchScript file"),
    (FVD + " --fake {missing}", "argument --fake: no such folder"),
    (FVD + " --clips 0", "argument --clips: must be an integer >= 2, got '0'"),
    (FVD + " --frames 1", "argument --frames: must be an integer >= 2, got '1'"),
    (FVD + " --batch nan", "argument --batch: expected an integer >= 1, got 'nan'"),
    ("eval fd --real {missing} --fake {clips}", "neither a built-in dataset"),
    (FD + " --metrics frechet,fid", "argument --metrics: unknown metric 'fid'; accepted: frechet, kernel"),
    (FD + " --dataset-size 0", "argument --dataset-size: must be an integer >= 1, got '0'"),
    (FD + " --seed x", "argument --seed: a seed must be an integer"),
    (FD + " --json {corrupt}/r.json", "is a file, not a folder"),
    ("eval temporal {missing}", "argument DIR: no such folder"),
    ("eval temporal {bad_clips}", "cannot read"),
    ("eval temporal {clips} --count 0", "argument --count: must be an integer >= 1, got '0'"),
    ("eval temporal {clips} --reference {clip}", "clip.mp4' is a file, expected a folder"),
    ("eval shapes --model {vae}", "holds a model of kind 'autoencoder', not the 'denoiser'"),
    (S + " --samples 0", "argument --samples: must be an integer >= 1, got '0'"),
    (S + " --steps 10,0", "argument --steps: must be an integer >= 1, got '0'"),
    (S + " --samplers ddim,eulr", "argument --samplers: unknown sampler 'eulr'"),
    (S + " --guidance inf", "argument --guidance: must be a finite number >= 0, got 'inf'"),
    (S + " --plot {out}/p.svg", "unknown extension '.svg'; accepted: .png"),
    (S + " --sampler ddim --samplers euler", "give --sampler or --samplers, not both"),
    ("eval clip {missing} --clip-dir {clips}", "argument DIR: no such folder"),
    ("eval clip {clips} --clip-dir {missing}", "argument --clip-dir: no such folder"),
    ("eval clip {clips} --clip-dir {clips} --prompts {missing}", "argument --prompts: no such file"),
    ("eval train-features --out {out}/f.pt", "unknown extension '.pt'; accepted: .safetensors"),
    ("eval train-features --out {out}/f.safetensors --steps 0", "argument --steps: must be an integer >= 1"),
    ("eval train-features --out {out}/f.safetensors --threads -1", "argument --threads: must be an integer >= 1"),
    ("ship {missing} --name x", "argument RUN_OR_CHECKPOINT: no such file or folder"),
    ("ship {clip} --name x", "is neither a checkpoint"),
    ("ship {den} --name ../x", "argument --name: model name '../x' is not accepted"),
    ("ship {den} --name x --scores {missing}.json", "argument --scores: no such file"),
    ("ship {den} --name x --scores {broken}", "is not valid JSON"),
    ("ship {den} --name x --description ''", "argument --description: expected non-blank text"),
    ("ship {vae} --name x --command ' '", "argument --command: expected non-blank text"),
    ("synth --model {den} --n 0 --out {out}/s", "argument --n/-n: must be an integer >= 1, got '0'"),
    ("synth --model {den} -n 2 --out {corrupt}", "argument --out: '"),
    ("synth --model {den} -n 2 --out {out}/s --held-out some", "argument --held-out: unknown held-out mode 'some'"),
    ("synth --model {den} -n 2 --out {out}/s --format avi", "argument --format: unknown clip format 'avi'"),
    ("synth --model {vae} -n 2 --out {out}/s", "holds a model of kind 'autoencoder', not the 'denoiser'"),
    ("synth --model {den} -n 2 --out {clips}", "is not empty and holds no synth.json"),   # after loading
    ("models --frames 0", "argument --frames: must be an integer >= 1, got '0'"),
    ("models --size 1.5", "argument --size: expected an integer >= 1, got '1.5'"),
    ("check --samplers dpm", "unknown sampler 'dpm'; accepted: ddpm, ddim, euler, heun, dpmpp_2m"),
    ("check --steps 0", "argument --steps: must be an integer >= 1, got '0'"),
    ("check --shift nan", "argument --shift: must be a finite number > 0, got 'nan'"),
    ("check --shift 0", "argument --shift: must be a finite number > 0, got '0'"),
    ("check --schedules ,", "argument --schedules: expected one or more comma-separated values"),
    ("check --json {out}/", "is a folder, expected a file path"),
    ("schedule cosin", "unknown schedule 'cosin'; accepted: linear, cosine"),
    ("schedule cosine --points 1", "argument --points: must be an integer >= 2, got '1'"),
    ("schedule flow --shift -1", "argument --shift: must be a finite number > 0, got '-1'"),
    ("animate {missing}.png --out {out}/a.mp4", "argument image: no such file or folder"),
    ("predict {clip} --context 0 --frames 4 --out {out}/p.mp4", "argument --context: must be an integer >= 1, got '0'"),
    ("interpolate {clip} --factor 1 --model {den} --out {out}/i.mp4", "--factor must be >= 2"),
    ("upscale {clip} --noise-level 2 --out {out}/u.mp4", "--noise-level"),
    ("upscale {clip} --model {den} --out {out}/u.mp4", "not a super-resolution stage"),
    ("inpaint {clip} --box 1,2,3 --out {out}/b.mp4", "box x0,y0,x1,y1 takes 4 comma-separated integers"),
    ("outpaint {clip} --pad left=-4 --out {out}/o.mp4", "pad left=-4 is negative"),
    ("extend {clip} --frames 8 --scheme spiral --out {out}/e.mp4", "unknown scheme 'spiral'"),
    ("invert {clip} --model {den} --out {out}/n.pt", "unknown extension '.pt'; accepted: .safetensors"),
    ("invert {clip} --model {den} --prompt 'a red circle moving right' --out {out}/n.safetensors",
     "the video has 5 frames and this model edits at most 4"),                      # after loading
    ("edit {clip} --source-prompt a --prompt b --inject 2 --out {out}/e.mp4",
     "argument --inject: must be a finite number in [0, 1], got '2'"),
    ("restyle {clip} --strength 1.5 --out {out}/r.mp4", "argument --strength: must be a finite number in [0, 1], got '1.5'"),
    (G + " --from-noise {corrupt}", "is not a readable noise file"),
    ("convert {corrupt} --out {out}/c.mp4", "cannot read"),
    ("convert {missing}.mp4 --out {out}/c.mp4", "argument input: no such file or folder"),
    ("convert {clip} --out {out}/c.xyz", "unknown extension '.xyz'"),
    ("convert {clip} --out {out}/c.mp4 --fps 0", "argument --fps: must be a finite number > 0, got '0'"),
    ("convert {clip} --out {out}/c.mp4 --fps nan", "argument --fps: must be a finite number > 0, got 'nan'"),
    ("convert {clip} --out {out}/c.mp4 --frames 0", "argument --frames: must be an integer >= 1, got '0'"),
]


def _paths(inputs, out) -> dict:
    return {"den": inputs / "den", "vae": inputs / "vae", "clip": inputs / "clip.mp4",
            "corrupt": inputs / "corrupt.mp4", "clips": inputs / "clips", "bad_clips": inputs / "bad_clips",
            "cfg": inputs / "run.yaml", "broken": inputs / "broken.yaml", "out": out, "missing": out / "missing"}


def _listing(folder) -> list:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))     # hidden files too


def _command(argv: list) -> str:
    return " ".join(argv[:2] if argv[0] == "eval" else argv[:1])


def test_the_walk_covers_every_subcommand():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    metrics = next(a for a in sub.choices["eval"]._actions if a.dest == "metric")
    commands = {name for name in sub.choices if name != "eval"} | {f"eval {m}" for m in metrics.choices}
    assert commands <= {_command(command.split()) for command, _ in CASES}


@pytest.mark.parametrize("command, message", CASES, ids=[c for c, _ in CASES])
def test_bad_value_is_one_line_exit_2_and_writes_nothing(command, message, inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)          # default outputs (eval-*.json, runs/) would land here too
    monkeypatch.setenv(SHIPPED_DIR_ENV, str(tmp_path / "shipped"))   # and what `vidiff ship` writes
    before = _listing(inputs)
    argv = shlex.split(command.format(**_paths(inputs, tmp_path)))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vidiff {_command(argv)}: error: "), err
    assert message in lines[0]
    assert _listing(tmp_path) == []      # no output, no partial or temporary file
    assert _listing(inputs) == before    # and no input touched


def test_unknown_commands_and_missing_options_are_one_line(capsys):
    for argv, message in ((["render"], "vidiff: error: argument COMMAND: invalid choice: 'render'"),
                          (["eval", "fid"], "vidiff eval: error: argument METRIC: invalid choice: 'fid'"),
                          (["generate"], "vidiff generate: error: the following arguments are required: "
                                         "--out"),          # --model defaults to the shipped `shapes`
                          (["models", "--colour", "red"], "vidiff: error: unrecognized arguments: --colour red")):
        assert main(argv) == 2
        lines = capsys.readouterr().err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(message), lines


def test_boundary_values_are_accepted():
    args = build_parser().parse_args(
        ["generate", "--model", ".", "--out", "frames/", "--frames", "1", "--height", "1", "--guidance", "0",
         "--guidance-rescale", "1", "--seed", str(2 ** 32 - 1), "--steps", "1", "--device", "cpu"])
    assert (args.frames, args.height, args.guidance, args.guidance_rescale, args.seed, args.steps) == \
        (1, 1, 0.0, 1.0, 2 ** 32 - 1, 1)
    assert build_parser().parse_args(["convert", ".", "--out", "x.GIF", "--fps", "0.5"]).fps == 0.5
    assert build_parser().parse_args(["schedule", "flow", "--points", "2"]).points == 2
    assert build_parser().parse_args(["check", "--steps", "4, 8,"]).steps == [4, 8]


def test_values_are_refused_before_a_model_loads(inputs, monkeypatch, tmp_path, capsys):
    loaded = []
    monkeypatch.setattr("vidiff.cli.generate.load", lambda *args, **kwargs: loaded.append(args))
    monkeypatch.setattr("vidiff.cli.latent.load_autoencoder", lambda *args, **kwargs: loaded.append(args))
    den = str(inputs / "den")        # a real model: only the value under test is wrong
    for argv in (["generate", "--model", den, "--out", str(tmp_path / "o.xyz")],
                 ["generate", "--model", den, "--out", str(tmp_path / "o.mp4"), "--guidance", "nan"],
                 ["generate", "--model", den, "--out", str(tmp_path / "o.mp4"), "--frames", "0"],
                 ["reconstruct", str(inputs / "corrupt.mp4"), "--vae", "m", "--out", str(tmp_path / "r.mp4")]):
        assert main(argv) == 2
    assert loaded == [] and _listing(tmp_path) == []
    capsys.readouterr()


def test_interrupt_is_one_line_and_status_130(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr("vidiff.cli.info.check_samplers", interrupted)
    assert main(["check", "--schedules", "cosine"]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["vidiff check: interrupted"]


def test_a_multi_line_error_is_printed_on_one_line_and_a_bug_keeps_its_traceback(monkeypatch, capsys):
    def bad_value(*args, **kwargs):
        raise ValueError("first line\n  second line\n")
    monkeypatch.setattr("vidiff.cli.info.check_samplers", bad_value)
    assert main(["check", "--schedules", "cosine"]) == 2
    assert capsys.readouterr().err.splitlines() == ["vidiff check: error: first line; second line"]

    def bug(*args, **kwargs):
        raise RuntimeError("an internal mistake")
    monkeypatch.setattr("vidiff.cli.info.check_samplers", bug)
    with pytest.raises(RuntimeError, match="an internal mistake"):    # not turned into exit 2
        main(["check", "--schedules", "cosine"])


def test_a_real_terminal_sees_one_line_for_an_error_found_after_loading(inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run([sys.executable, "-m", "vidiff", "generate", "--model", str(inputs / "den"),
                             "--height", "18", "--out", str(out / "o.mp4"), "--steps", "1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("vidiff generate: error: ") and "divisible by 4" in result.stderr
    assert _listing(out) == []
