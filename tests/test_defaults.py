"""Every default has one source: the places that use one must agree with it."""
import inspect

import vidiff
from vidiff.cli import build_parser
from vidiff.cli.common import fill_sampling_defaults
from vidiff.compose import RunConfig, SampleConfig
from vidiff.diffusion import DEFAULT_SAMPLER, DEFAULT_STEPS, sample
from vidiff.eval.adherence import shapes_adherence
from vidiff.eval.study import steps_study
from vidiff.pipelines.video import VideoPipeline
from vidiff.train.objective import DiffusionObjective


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
    for fn in (VideoPipeline.generate, VideoPipeline.sample, shapes_adherence):
        got = defaults(fn)
        assert {k: got[k] for k in expected if k in got} == {k: v for k, v in expected.items() if k in got}, fn
    assert defaults(sample)["sampler"] == config.sampler and defaults(sample)["steps"] == config.steps
    assert defaults(steps_study)["guidance"] == config.guidance
    # generate leaves them unset until it knows whether a cascade or noise file sets them,
    # then fills them in from the same place
    generate = subparser("generate").parse_args(["--model", ".", "--out", "o.mp4"])   # any existing path
    assert (generate.steps, generate.sampler, generate.guidance) == (None, None, None)
    fill_sampling_defaults(generate)
    assert (generate.steps, generate.sampler, generate.guidance) == (config.steps, config.sampler, config.guidance)
    shapes = subparser("eval", "shapes").parse_args(["--model", "."])
    assert shapes.steps == [config.steps] and shapes.guidance == config.guidance


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
