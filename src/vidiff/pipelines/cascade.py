"""Cascades: a base model, then stages that raise the frame rate and the resolution.

A cascade (Imagen Video's recipe) makes a small, low-frame-rate clip with a base model and
hands it to stages, each a diffusion model trained for its step: ``interpolate`` (a model
trained with known-frame masks fills ``factor - 1`` frames between each pair) and ``upscale``
(a super-resolution stage, ``kind: upscale``). A cascade file is a YAML list of stages::

    - {model: shapes, task: base, steps: 20, guidance: 5.0}
    - {model: shapes-sr, task: upscale, noise_level: 0.1, steps: 10}

Any subset of the tasks, in any order, with at most one ``base`` and that one first (a cascade
without one starts from a given video). :meth:`Cascade.plan` checks the whole chain (every
model found, every task known, each stage's input the size it takes) from the models' config
files alone, before any weights load or any stage runs. Shipped cascades are files
``vidiff/shipped/NAME.cascade.yaml``, found by name like the shipped models.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import yaml

from vidiff.checkpoint import read_config
from vidiff.compose.config import RunConfig
from vidiff.config import ConfigError, from_dict
from vidiff.pipelines.shipped import resolve_model, shipped_dir
from vidiff.pipelines.upscale import DEFAULT_NOISE_LEVEL, check_stage_options
from vidiff.pipelines.video import DEFAULTS, VideoPipeline, check_sampling
from vidiff.video import DEFAULT_FPS, Video

CASCADE_TASKS = ("base", "interpolate", "upscale")
CASCADE_SUFFIX = ".cascade.yaml"
DEFAULT_CASCADE = "shapes"


@dataclass
class Stage:
    """One stage of a cascade: a ``model`` (shipped name or directory) doing ``task``.

    ``steps``, ``sampler``, ``guidance``: sampling (None: the pipeline's defaults for ``base``
    and ``interpolate``, the stage's recorded ones for ``upscale``). ``frames``: the base
    clip's length (None: the base model's). ``factor``: an interpolation stage's frame-rate
    factor. ``scale``, ``noise_level``, ``tile``: an upscale stage's factor (None: the one it
    was trained for), its input's noise augmentation and its tile side in input pixels.
    """
    model: str
    task: str
    steps: Optional[int] = None
    sampler: Optional[str] = None
    guidance: Optional[float] = None
    frames: Optional[int] = None
    factor: int = 2
    scale: Optional[int] = None
    noise_level: float = DEFAULT_NOISE_LEVEL
    tile: Optional[int] = None


@dataclass(frozen=True)
class StagePlan:
    """What :meth:`Cascade.plan` found for a stage: its model directory, and the clip it makes
    (frames, height, width) with its frame rate."""
    stage: Stage
    path: Path
    frames: int
    height: int
    width: int
    fps: float


def _stage_error(index: int, stage: Stage, message: str) -> ConfigError:
    return ConfigError(f"cascade stage {index + 1} ({stage.model}, {stage.task}): {message}")


def parse_stages(data, where: str = "cascade") -> list[Stage]:
    """Stages from a cascade file's content: a list of stage mappings (or ``{stages: [...]}``)."""
    if isinstance(data, dict) and set(data) == {"stages"}:
        data = data["stages"]
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{where}: expected a non-empty list of stages ({{model, task, ...}}), "
                          f"got {type(data).__name__}")
    stages = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: stage {i + 1} must be a mapping with model and task, got {item!r}")
        stages.append(from_dict(Stage, item, where=f"{where} stage {i + 1}"))
    return stages


def resolve_cascade(cascade: Union[str, Path], root=None) -> Path:
    """The file of ``cascade``: an existing path, else the shipped cascade of that name."""
    path = Path(cascade).expanduser()
    if path.is_file():
        return path
    folder = shipped_dir(root)
    shipped = folder / f"{cascade}{CASCADE_SUFFIX}"
    if isinstance(cascade, str) and "/" not in cascade and shipped.is_file():
        return shipped
    names = sorted(p.name[:-len(CASCADE_SUFFIX)] for p in folder.glob(f"*{CASCADE_SUFFIX}"))
    raise ConfigError(f"cascade {str(cascade)!r} is neither a cascade file nor a shipped cascade "
                      f"(shipped: {', '.join(names) or 'none'})")


class Cascade:
    """Runs a list of :class:`Stage`\\ s; each stage's pipeline loads on first use.

    >>> cascade = Cascade.load("shapes")           # the shipped 32x32 base -> 64x64 cascade
    >>> video = cascade("a red circle moving right", seed=0)
    """

    def __init__(self, stages: Sequence[Stage], device=None, root=None):
        self.stages, self.device, self.root = list(stages), device, root
        self._pipes: dict[Path, VideoPipeline] = {}
        self.plans = self.plan()

    @classmethod
    def load(cls, cascade: Union[str, Path] = DEFAULT_CASCADE, device=None, root=None) -> "Cascade":
        """A cascade from a YAML file or a shipped cascade's name, checked (:meth:`plan`)."""
        path = resolve_cascade(cascade, root)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"cascade file {str(path)!r} is not valid YAML: {e}") from None
        return cls(parse_stages(data, where=f"cascade {str(cascade)!r}"), device=device, root=root)

    # ------------------------------------------------------------------ checking
    def plan(self, frames: Optional[int] = None, height: Optional[int] = None,
             width: Optional[int] = None, fps: Optional[float] = None) -> list[StagePlan]:
        """Check the chain from the models' config files (no weights load) and return what each
        stage makes; ``frames``/``height``/``width``/``fps`` describe the input video of a
        cascade without a base (not given: its sizes are checked when it runs, the models and
        tasks now). ConfigError names the stage and what does not fit."""
        plans: list[StagePlan] = []
        clip = None if frames is None else (frames, height, width, fps)
        for i, stage in enumerate(self.stages):
            if stage.task not in CASCADE_TASKS:
                raise _stage_error(i, stage, f"unknown task {stage.task!r}; accepted: {list(CASCADE_TASKS)}")
            try:
                path = resolve_model(stage.model, self.root)
                config = read_config(path, kind="denoiser", required=("network", "run"))
                check_sampling(1 if stage.steps is None else stage.steps, stage.sampler or DEFAULTS.sampler,
                               1.0 if stage.guidance is None else stage.guidance)
            except ValueError as e:
                raise _stage_error(i, stage, str(e)) from None
            run, network = from_dict(RunConfig, config["run"]), config["network"]
            size, model_fps = run.data.size, float(config.get("fps", DEFAULT_FPS))
            if stage.task == "base":
                if i > 0:
                    raise _stage_error(i, stage, "a base stage makes the first clip: it must be the first stage")
                if stage.frames is not None and (isinstance(stage.frames, bool) or stage.frames < 1):
                    raise _stage_error(i, stage, f"frames must be >= 1, got {stage.frames!r}")
                clip = (stage.frames or run.data.frames, size, size, model_fps)
            elif stage.task == "interpolate":
                if not network.get("known_frames"):
                    raise _stage_error(i, stage, "an interpolation stage needs a model trained with known-frame "
                                                 "masks (known_frames: true)")
                if isinstance(stage.factor, bool) or not 2 <= stage.factor < run.data.frames:
                    raise _stage_error(i, stage, f"factor must be an integer in [2, {run.data.frames - 1}], "
                                                 f"got {stage.factor!r}")
                if clip is not None and clip[1:3] != (size, size):
                    raise _stage_error(i, stage, f"its input is {clip[2]}x{clip[1]} but the model makes "
                                                 f"{size}x{size} frames")
                if clip is not None:
                    clip = ((clip[0] - 1) * stage.factor + 1, clip[1], clip[2], clip[3] * stage.factor)
            else:
                if not network.get("low_res"):
                    raise _stage_error(i, stage, "not a super-resolution stage (no low-resolution input; "
                                                 "train one with kind: upscale)")
                scale = run.upscale.scale
                try:
                    check_stage_options(scale, stage.scale, stage.noise_level, "the model")
                except ValueError as e:
                    raise _stage_error(i, stage, str(e)) from None
                most = size // scale
                if clip is not None and stage.tile is None and (clip[1] > most or clip[2] > most):
                    raise _stage_error(i, stage, f"its input is {clip[2]}x{clip[1]} but the stage takes at "
                                                 f"most {most}x{most} without tiling (set tile: {most})")
                if clip is not None:
                    clip = (clip[0], clip[1] * scale, clip[2] * scale, clip[3])
            plans.append(StagePlan(stage, path, *(clip or (None, None, None, None))))
        return plans

    # ------------------------------------------------------------------ running
    def pipeline(self, path: Path) -> VideoPipeline:
        """The loaded pipeline of a stage's model directory (loaded once, shared by stages)."""
        if path not in self._pipes:
            self._pipes[path] = VideoPipeline.from_pretrained(path, device=self.device)
        return self._pipes[path]

    def __call__(self, prompt: Optional[str] = None, seed: int = 0, video: Optional[Video] = None,
                 progress: bool = False, return_stages: bool = False):
        """Run every stage: the base from ``prompt`` (or start from ``video``), each stage on the
        one before. Stage ``i`` samples with seed ``seed + i``. Returns the last stage's
        :class:`Video` (with ``return_stages``: every stage's, in order)."""
        plans = self.plans
        if video is not None:
            if plans and plans[0].stage.task == "base":
                raise ValueError("this cascade starts with a base stage: give a prompt, not a video")
            plans = self.plan(video.num_frames, video.height, video.width, video.fps)
        elif not plans or plans[0].stage.task != "base":
            raise ValueError("this cascade has no base stage: give it a video to start from")
        outputs, current = [], video
        for i, plan in enumerate(plans):
            stage, pipe = plan.stage, self.pipeline(plan.path)
            text = pipe.prompt_for(prompt)
            sampling = {k: v for k, v in dataclasses.asdict(stage).items()
                        if k in ("steps", "sampler", "guidance") and v is not None}
            if stage.task == "base":
                current = pipe.generate(text, num_frames=stage.frames, seed=seed + i, progress=progress, **sampling)
            elif stage.task == "interpolate":
                current = pipe.interpolate(current, stage.factor, text, seed=seed + i, progress=progress, **sampling)
            else:
                current = pipe.upscale(current, stage.scale, stage.noise_level, text, seed=seed + i,
                                       tile=stage.tile, progress=progress, **sampling)
            outputs.append(current)
        return outputs if return_stages else current
