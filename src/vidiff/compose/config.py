"""The run config: one dataclass per concern, nested into :class:`RunConfig`.

A YAML file names only what differs from the defaults::

    model: {size: unet-demo}
    diffusion: {schedule: cosine, parameterization: v}
    data: {name: shapes, frames: 16, size: 32}
    train: {steps: 2000, batch_size: 16, lr: 1e-3}

(``vidiff.train.config.load_run_config`` reads it; ``vidiff train run.yaml train.steps=500`` overrides any key).
The resolved config is stored in every checkpoint, so a model reloads with no other file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from vidiff.config import ConfigError
from vidiff.data import DataConfig
from vidiff.diffusion import (
    TASKS, DEFAULT_SAMPLER, DEFAULT_STEPS, LOSS_WEIGHTINGS, PARAMETERIZATIONS, SAMPLERS, TIME_DISTRIBUTIONS, Schedule,
)
from vidiff.models.vae_losses import VAELossConfig
from vidiff.text import TextEncoderConfig


@dataclass
class ModelConfig:
    """A registry size plus overrides of its architecture config's fields.

    ``size`` names a denoiser (``unet-demo``, ``dit-s/2``, ...) or an autoencoder (``vae-s``,
    ...: the run then trains the autoencoder). ``vae`` makes a denoiser latent: the path of a
    trained autoencoder checkpoint, frozen, whose latents the denoiser learns.
    """
    size: str = "unet-demo"
    overrides: dict[str, Any] = field(default_factory=dict)
    vae: Optional[str] = None


@dataclass
class AutoencoderConfig(VAELossConfig):
    """An autoencoder run's losses (see :class:`~vidiff.models.vae_losses.VAELossConfig`) plus
    the discriminator's learning rate and how many batches measure the latent scale."""
    disc_lr_ratio: float = 1.0
    scaling_batches: int = 8            # batches that estimate the latent scale at each save

    def __post_init__(self):
        super().__post_init__()
        if self.disc_lr_ratio <= 0 or self.scaling_batches < 1 or self.gan_start < 0:
            raise ConfigError(f"autoencoder: disc_lr_ratio must be > 0, scaling_batches >= 1 and "
                              f"gan_start >= 0, got {self.disc_lr_ratio}, {self.scaling_batches}, "
                              f"{self.gan_start}")


@dataclass
class DiffusionConfig:
    """Schedule, parameterization and how training draws and weighs diffusion times."""
    # What fixes the meaning of each t and of the network's output: a fine-tune or a ControlNet
    # keeps its base's. How a run spends its steps over t is its own (a later stage may train
    # where its new part has something to learn).
    SCHEDULE_FIELDS: ClassVar[tuple[str, ...]] = ("schedule", "shift", "zero_terminal_snr", "parameterization")
    TRAINING_TIME_FIELDS: ClassVar[tuple[str, ...]] = ("loss_weighting", "min_snr_gamma", "time_distribution",
                                                       "logit_mean", "logit_std")
    schedule: str = "cosine"
    shift: float = 1.0
    zero_terminal_snr: bool = False
    parameterization: str = "v"
    loss_weighting: str = "min_snr"
    min_snr_gamma: float = 5.0
    time_distribution: str = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0

    def __post_init__(self):
        for value, accepted, name in ((self.parameterization, PARAMETERIZATIONS, "parameterization"),
                                      (self.loss_weighting, LOSS_WEIGHTINGS, "loss_weighting"),
                                      (self.time_distribution, TIME_DISTRIBUTIONS, "time_distribution")):
            if value not in accepted:
                raise ConfigError(f"diffusion.{name}: {value!r} is not one of {list(accepted)}")
        self.make_schedule()  # validates the schedule fields

    def make_schedule(self) -> Schedule:
        try:
            return Schedule.from_name(self.schedule, shift=self.shift,
                                      zero_terminal_snr=self.zero_terminal_snr)
        except ValueError as e:
            raise ConfigError(f"diffusion: {e}") from None


@dataclass
class TrainConfig:
    """The optimisation loop. ``batch_size`` is the global batch per optimizer step."""
    steps: int = 1000
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    lr_schedule: str = "cosine"         # "cosine" or "constant", after linear warm-up
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    text_dropout: float = 0.1           # classifier-free guidance needs this > 0
    image_ratio: float = 0.0            # fraction of steps that train on single frames (T = 1)
    precision: str = "fp32"             # "fp32" or "bf16" (autocast)
    compile: bool = False               # torch.compile the model (first steps compile)
    compile_backend: str = "inductor"   # any torch.compile backend ("aot_eager": no codegen)
    fsdp: bool = False
    seed: int = 0
    num_workers: int = 0
    log_every: int = 10
    sample_every: int = 0               # 0: only at the end
    checkpoint_every: int = 500
    keep_last: int = 2
    out_dir: str = "runs/vidiff"
    init_from: Optional[str] = None
    trainable: list[str] = field(default_factory=list)  # parameter-name prefixes that train; [] = all
    max_minutes: float = 0.0            # > 0: stop (with a checkpoint) after this wall time
    stop_at: int = 0                    # > 0: stop (with a checkpoint) at this step, the LR schedule
                                        # still planned to `steps`: a stage, resumed with other data

    def __post_init__(self):
        checks = [
            (self.steps >= 1, f"train.steps must be >= 1, got {self.steps}"),
            (self.batch_size >= 1, f"train.batch_size must be >= 1, got {self.batch_size}"),
            (self.grad_accum >= 1, f"train.grad_accum must be >= 1, got {self.grad_accum}"),
            (self.lr > 0, f"train.lr must be > 0, got {self.lr}"),
            (self.lr_schedule in ("cosine", "constant"),
             f"train.lr_schedule: {self.lr_schedule!r} is not one of ['cosine', 'constant']"),
            (self.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {self.warmup_steps}"),
            (0 <= self.text_dropout < 1, f"train.text_dropout must be in [0, 1), got {self.text_dropout}"),
            (0 <= self.image_ratio <= 1, f"train.image_ratio must be in [0, 1], got {self.image_ratio}"),
            (self.precision in ("fp32", "bf16"),
             f"train.precision: {self.precision!r} is not one of ['fp32', 'bf16']"),
            (0 <= self.ema_decay < 1, f"train.ema_decay must be in [0, 1), got {self.ema_decay}"),
            (self.max_minutes >= 0, f"train.max_minutes must be >= 0, got {self.max_minutes}"),
            (self.stop_at == 0 or 0 < self.stop_at < self.steps,
             f"train.stop_at must be 0 (off) or a step in 1..{self.steps - 1} (train.steps - 1), "
             f"got {self.stop_at}"),
            (self.checkpoint_every >= 1, f"train.checkpoint_every must be >= 1, got {self.checkpoint_every}"),
            (all(isinstance(p, str) and p for p in self.trainable),
             f"train.trainable must list parameter-name prefixes, got {self.trainable!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


@dataclass
class TasksConfig:
    """The frame-task mix of a denoiser with known-frame inputs (``model.overrides.known_frames``).

    Each training sample draws one task with these weights (normalised; see
    :func:`vidiff.diffusion.masks.draw_task_mask` for what each one hides). The defaults
    keep text-to-video the largest share, so a fine-tuned text-to-video model keeps following
    prompts, and give forecasting, image-to-video and interpolation most of the rest (the
    frame tasks long videos and the cascade are built from); MCVD's lesson is that one model
    learns all of them at once when past and future frames are masked at random.

    Known frames carry noise (noise augmentation) with probability ``known_noise_prob``, at
    a diffusion time uniform in ``[0, known_noise_max]``, so a model conditioned on its own
    generated frames (long videos) tolerates their small errors. The loss is the mean over
    the unknown part plus ``known_weight`` times the mean over the known part: the unknown
    part is the task; the small known term keeps the raw output equal to the given pixels.
    """
    text: float = 0.3
    first_frame: float = 0.15
    first_frames: float = 0.2
    last_frames: float = 0.05
    keyframes: float = 0.15
    box: float = 0.1
    border: float = 0.05
    known_noise_prob: float = 0.5
    known_noise_max: float = 0.05
    known_weight: float = 0.1

    def __post_init__(self):
        weights = self.weights()
        if any(not (math.isfinite(w) and w >= 0) for w in weights.values()) or sum(weights.values()) <= 0:
            raise ConfigError(f"tasks: weights must be finite, >= 0 and not all 0, got {weights}")
        for name in ("known_noise_prob", "known_noise_max"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"tasks.{name} must be in [0, 1], got {getattr(self, name)}")
        if not self.known_weight >= 0:
            raise ConfigError(f"tasks.known_weight must be >= 0, got {self.known_weight}")

    def weights(self) -> dict[str, float]:
        """Task name -> weight, in the order of :data:`vidiff.diffusion.masks.TASKS`."""
        return {name: float(getattr(self, name)) for name in TASKS}


@dataclass
class ReferenceConfig:
    """How a network with a reference pathway (``model.overrides.reference_tokens``) learns it.

    A share ``prob`` of the training samples gets a reference image: one frame of its own clip,
    at a random frame, circularly shifted by a random offset (so the reference says what the
    subject looks like, never where it is or when). Of those, a share ``drop_prob`` loses
    every word of ``drop_words`` from its caption ("a red circle moving right" with the colours
    and shapes dropped is "a moving right"), so the reference alone must carry the subject and
    a prompt can name only the motion.
    """
    prob: float = 0.0
    drop_prob: float = 0.5
    drop_words: list[str] = field(default_factory=list)

    def __post_init__(self):
        for name in ("prob", "drop_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"reference.{name} must be in [0, 1], got {getattr(self, name)}")
        self.drop_words = [str(w).lower() for w in self.drop_words]


@dataclass
class UpscaleConfig:
    """How a super-resolution stage (``kind: upscale``) makes its training pairs.

    Each clip of ``data.size`` is box-filtered down by ``scale`` (the mean of each
    ``scale x scale`` block, as a sensor integrates light) to make its low-resolution input.
    Noise-conditioning augmentation (Ho et al., cascaded diffusion models): a share
    ``noise_prob`` of the samples get their low-resolution input noised to a diffusion time
    uniform in ``[0, noise_max]`` (under the run's schedule), and the network is told the
    time (``Conditioning.low_res_noise``). At sampling the caller picks the time: a little
    noise lets the stage repair an earlier stage's artefacts instead of copying them.
    """
    scale: int = 2
    noise_prob: float = 0.75
    noise_max: float = 0.5

    def __post_init__(self):
        if isinstance(self.scale, bool) or not isinstance(self.scale, int) or self.scale < 2:
            raise ConfigError(f"upscale.scale must be an integer >= 2, got {self.scale!r}")
        for name in ("noise_prob", "noise_max"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"upscale.{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class SampleConfig:
    """How samples are drawn: the one source of the sampling defaults that the pipeline, the
    commands and the samples written during training share.

    ``frames`` is the clip length (None: the training length); ``prompts`` the prompts of
    the samples written during training (empty: the dataset's held-out ones).
    ``known_guidance`` is the text guidance of a frame task (known frames entering a
    mask-trained network) when none is given: there the unconditional branch sees the known
    frames but not the text, so it is wrong about the subject, and guiding away from it drew
    dark rings around the shipped ``shapes``' subjects and cost 5-6 dB (docs/benchmarks.md,
    "Frame tasks"); 1 turns guidance off.
    """
    prompts: list[str] = field(default_factory=list)
    sampler: str = DEFAULT_SAMPLER
    steps: int = DEFAULT_STEPS
    guidance: float = 5.0
    known_guidance: float = 1.0
    frames: Optional[int] = None

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sample.sampler: {self.sampler!r} is not one of {sorted(SAMPLERS)}")
        if isinstance(self.steps, bool) or self.steps < 1:
            raise ConfigError(f"sample.steps must be >= 1, got {self.steps}")
        for name in ("guidance", "known_guidance"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"sample.{name} must be a finite number >= 0, got {value}")
        if self.frames is not None and self.frames < 1:
            raise ConfigError(f"sample.frames must be >= 1 (or unset: the training length), got {self.frames}")


@dataclass
class RunConfig:
    """Everything a run needs, one dataclass per concern.

    ``kind`` names the run kind (``vidiff.train.kinds.RUN_KINDS``: ``"denoiser"``,
    ``"autoencoder"``, ``"controlnet"``, ...): what is trained, by which objective, stored as
    which checkpoint kind. It is stated, never guessed from ``model.size``.

    A ControlNet run also names its frozen ``base`` (a shipped model's name or a denoiser
    checkpoint or run directory), the ``control`` type of its maps (``silhouette``, ``edges``,
    ``depth``, ``custom``) and, for ``depth`` and ``custom``, the TorchScript ``extractor``
    file that makes them from the training clips. A super-resolution stage (``kind: upscale``)
    reads ``upscale``.
    """
    kind: str = "denoiser"
    base: Optional[str] = None
    control: Optional[str] = None
    extractor: Optional[str] = None
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    upscale: UpscaleConfig = field(default_factory=UpscaleConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)

