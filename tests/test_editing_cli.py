"""``vidiff invert``, ``generate --from-noise``, ``edit`` and ``restyle`` end to end on a tiny
model, and each one's bad input: one line, exit status 2, nothing written."""
import numpy as np
import pytest

import vidiff
from vidiff.cli import main
from vidiff.data.shapes import render
from vidiff.pipelines.inversion import Inversion
from vidiff.train.config import load_run_config
from vidiff.train.run import train
from vidiff.video import Video

pytestmark = pytest.mark.usefixtures("one_thread")
RED, BLUE = "a red circle moving right", "a blue circle moving right"
FAST = ["--steps", "3"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_editor, tiny_model):
    """Clips (good, too long, a size the network cannot take), an unconditional model, a noise
    file of another model and a corrupt one."""
    root = tmp_path_factory.mktemp("editing-inputs")
    Video(render("red", "circle", "right", frames=4, size=16, start=(5.0, 8.0)), fps=8).save(root / "clip")
    Video(np.zeros((6, 16, 16, 3), np.uint8)).save(root / "long")
    Video(np.zeros((4, 18, 18, 3), np.uint8)).save(root / "odd")
    base = {"model": {"size": "unet-tiny", "overrides": {"channels": [8, 16], "norm_groups": 4, "patch": 2,
                                                         "spatial_attention": [], "temporal_attention": [],
                                                         "mid_attention": False}},
            "data": {"name": "shapes", "frames": 4, "size": 16}, "text": {"kind": "none"},
            "train": {"steps": 1, "batch_size": 2, "warmup_steps": 1, "checkpoint_every": 1}}
    train(load_run_config(None, [f"train.out_dir={root / 'uncond'}"], base=base), progress=False)
    other = vidiff.load(tiny_model, device="cpu")
    other.invert(Video.load(root / "clip"), RED, steps=2).save(root / "other.safetensors")
    (root / "corrupt.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken" * 3)
    return root


def test_every_editing_command_runs_end_to_end(tiny_editor, inputs, tmp_path, capsys):
    m, clip = ["--model", str(tiny_editor)], str(inputs / "clip")
    noise = tmp_path / "noise.safetensors"
    assert main(["invert", clip, "--prompt", RED, "--out", str(noise), "--refine", "1", "--guidance", "2",
                 "--cfg-inversion", "nti", "--nti-iterations", "1", *m, *FAST]) == 0
    inversion = Inversion.load(noise)
    assert (inversion.prompt, inversion.steps, inversion.refine, inversion.guidance, inversion.cfg_inversion) == \
           (RED, 3, 1, 2.0, "nti")
    assert inversion.model == vidiff.load(tiny_editor, device="cpu").fingerprint()
    assert main(["generate", "--from-noise", str(noise), "--out", str(tmp_path / "rec"), *m]) == 0
    rec = Video.load(tmp_path / "rec")
    assert rec.num_frames == 4 and rec.fps == 8
    assert main(["edit", clip, "--source-prompt", RED, "--prompt", BLUE, "--inject", "0.5", "--strength", "0.8",
                 "--out", str(tmp_path / "edited.mp4"), *m, *FAST]) == 0
    assert Video.load(tmp_path / "edited.mp4").num_frames == 4
    assert main(["restyle", clip, "--prompt", BLUE, "--strength", "0.6", "--samples", "2",
                 "--out", str(tmp_path / "styled.gif"), *m, *FAST]) == 0
    assert Video.load(tmp_path / "styled_1.gif").num_frames == 4
    assert main(["restyle", clip, "--model", str(inputs / "uncond"), "--out", str(tmp_path / "u.mp4"), *FAST]) == 0
    assert "wrote" in capsys.readouterr().out


E = ["edit", "{clip}", "--source-prompt", RED, "--prompt", BLUE]


@pytest.mark.parametrize("args, words", [
    (["restyle", "{clip}", "--prompt", BLUE, "--strength", "1.5"], "argument --strength: must be a finite number in [0, 1]"),
    (["restyle", "{clip}", "--prompt", BLUE, "--strength", "-0.1"], "argument --strength: must be a finite number in [0, 1]"),
    (E + ["--strength", "2"], "argument --strength: must be a finite number in [0, 1]"),
    (E + ["--inject", "1.2"], "argument --inject: must be a finite number in [0, 1]"),
    (E + ["--inject", "-1"], "argument --inject: must be a finite number in [0, 1]"),
    (["edit", "{clip}", "--source-prompt", "a purple blob moving right", "--prompt", BLUE],
     "the source prompt 'a purple blob moving right' has words the text encoder does not know: purple, blob"),
    (E + ["--model", "{uncond}"], "this model is unconditional"),
    (["restyle", "{clip}", "--prompt", BLUE, "--model", "{uncond}"], "this model is unconditional"),
    (["edit", "{long}", "--source-prompt", RED, "--prompt", BLUE], "the video has 6 frames and this model edits at most 4"),
    (["invert", "{odd}", "--prompt", RED], "a video of 4 frames of 18x18 does not fit this model"),
    (["restyle", "{odd}", "--prompt", RED], "does not fit this model"),
    (["invert", "{clip}", "--prompt", RED, "--cfg-inversion", "exact"], "argument --cfg-inversion: unknown cfg inversion"),
    (["invert", "{clip}", "--prompt", RED, "--refine", "-1"], "argument --refine: must be an integer >= 0"),
    (["generate", "--from-noise", "{other}"], "cannot be used with model"),
    (["generate", "--from-noise", "{corrupt}"], "is not a readable noise file"),
    (["generate", "--from-noise", "{other}", "--prompt", RED], "--from-noise reproduces the noise file's own prompt"),
    (["generate", "--from-noise", "{other}", "--sampler", "ddim"], "drop --sampler"),
])
def test_bad_input_is_one_line_and_writes_nothing(tiny_editor, inputs, tmp_path, capsys, args, words):
    paths = {name: str(inputs / name) for name in ("clip", "long", "odd", "uncond")}
    paths |= {"other": str(inputs / "other.safetensors"), "corrupt": str(inputs / "corrupt.safetensors")}
    out = tmp_path / ("noise.safetensors" if args[0] == "invert" else "out.mp4")
    argv = [a.format(**paths) for a in args] + ["--out", str(out), *FAST[:2 if args[0] != "generate" else 0]]
    if "--model" not in argv:
        argv += ["--model", str(tiny_editor)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"vidiff {args[0]}: error: ") and words in err, err
    assert not list(tmp_path.iterdir())


def test_the_refusal_of_another_models_noise_names_both_models(tiny_editor, tiny_model, inputs, tmp_path, capsys):
    ours, theirs = vidiff.load(tiny_editor, device="cpu"), vidiff.load(tiny_model, device="cpu")
    assert main(["generate", "--from-noise", str(inputs / "other.safetensors"), "--model", str(tiny_editor),
                 "--out", str(tmp_path / "o.mp4")]) == 2
    err = capsys.readouterr().err
    assert theirs.fingerprint() in err and ours.fingerprint() in err and str(theirs.source) in err
