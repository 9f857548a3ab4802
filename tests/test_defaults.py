"""Every default has one source: the places that use one must agree with it."""
import inspect

import numpy as np

import vidiff
from vidiff.cli import build_parser, main
from vidiff.compose import RunConfig, SampleConfig
from vidiff.diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS, sample
from vidiff.eval.adherence import shapes_adherence
from vidiff.eval.study import steps_study
from vidiff.pipelines.video import VideoPipeline
from vidiff.train.config import load_run_config
from vidiff.train.objective import DiffusionObjective
from vidiff.train.run import train


def defaults(fn) -> dict:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


def subparser(*names):
    parser = build_parser()
    for name in names:
        action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = action.choices[name]
    return parser


def test_sampling_defaults_come_from_one_place():
    config = SampleConfig()
    assert (config.sampler, config.steps) == (DEFAULT_SAMPLER, DEFAULT_STEPS)
    expected = {"steps": config.steps, "sampler": config.sampler, "guidance": config.guidance}
    for fn in (VideoPipeline.sample, shapes_adherence):
        got = defaults(fn)
        assert {k: got[k] for k in expected if k in got} == {k: v for k, v in expected.items() if k in got}, fn
    assert defaults(sample)["sampler"] == config.sampler and defaults(sample)["steps"] == config.steps
    assert defaults(steps_study)["guidance"] == config.guidance
    # the commands and the pipeline leave them unset: a loaded model samples as its own config
    # says (VideoPipeline.sample_defaults), which is the one source unless that config differs
    assert VideoPipeline.sample_defaults == config
    assert {k: defaults(VideoPipeline.generate)[k] for k in expected} == dict.fromkeys(expected)
    for command in (["generate"], ["restyle", "."], ["predict", ".", "--context", "2", "--frames", "8"]):
        args = subparser(*command[:1]).parse_args([*command[1:], "--model", ".", "--out", "o.mp4"])
        assert (args.steps, args.sampler, args.guidance) == (None, None, None), command
    shapes = subparser("eval", "shapes").parse_args(["--model", "."])
    assert (shapes.steps, shapes.sampler, shapes.guidance) == (None, None, None)


def test_training_defaults_live_in_the_run_config_only():
    # The objective takes the run's DiffusionConfig: it has no loss weighting (or schedule,
    # parameterization, time distribution) default of its own that could disagree with it.
    own = defaults(DiffusionObjective)
    for name in ("loss_weighting", "parameterization", "time_distribution", "min_snr_gamma", "text_dropout"):
        assert name not in own
    assert RunConfig().diffusion.loss_weighting == "min_snr"
    assert RunConfig().kind == "denoiser"


def test_one_default_frame_rate():
    fps = vidiff.video.DEFAULT_FPS
    assert defaults(vidiff.Video.from_tensor)["fps"] == fps
    assert defaults(VideoPipeline)["fps"] == fps


def test_a_loaded_model_samples_as_its_config_says(tmp_path, one_thread):
    # A model whose sample section differs from the global defaults (as shapes-latent's
    # guidance does): the pipeline and the command line both sample as it says when not told.
    out = tmp_path / "run"
    smaller = {"channels": [8, 16], "norm_groups": 4, "patch": 2, "spatial_attention": [],
               "temporal_attention": [], "mid_attention": False}
    base = {"model": {"size": "unet-tiny", "overrides": smaller},
            "data": {"name": "shapes", "frames": 4, "size": 16},
            "text": {"dim": 16, "depth": 1, "heads": 2},
            "train": {"steps": 1, "batch_size": 2, "warmup_steps": 1, "checkpoint_every": 1},
            "sample": {"steps": 3, "sampler": "euler", "guidance": 1.5}}
    train(load_run_config(None, [f"train.out_dir={out}"], base=base), progress=False)
    pipe = vidiff.load(out)
    assert pipe.sample_defaults == pipe.run_config.sample == SampleConfig(steps=3, sampler="euler", guidance=1.5)
    prompt = "a red circle moving right"
    own = pipe.generate(prompt).frames
    assert np.array_equal(own, pipe.generate(prompt, steps=3, sampler="euler", guidance=1.5).frames)
    for other in ({"steps": 4}, {"sampler": "ddim"}, {"guidance": 5.0}):
        assert not np.array_equal(own, pipe.generate(prompt, **other).frames), other
    assert main(["generate", "--model", str(out), "--prompt", prompt, "--out", str(tmp_path / "frames")]) == 0
    assert np.array_equal(vidiff.Video.load(tmp_path / "frames").frames, own)
