"""``VideoPipeline``: text encoder + (optional autoencoder) + denoiser + schedule, one method per task.

``vidiff.load(DIR)`` rebuilds a pipeline from a checkpoint directory alone (its config.json
names the architecture and every setting; the built-in text encoder's vocabulary travels with
it; EMA weights are used when present).

Every task builds a :class:`~vidiff.conditioning.Conditioning` and a noise shape and calls the
one sampling core, :meth:`VideoPipeline.sample`: per-sample noise streams, guidance, the
sampler, an optional start time and start state (SDEdit, inversion) and a progress callback.
:meth:`VideoPipeline.decode` turns what it returns into videos.

The seed promise: sample ``k`` of a prompt uses its own generator seeded ``seed + k``, for
its initial noise and for every noise draw of a stochastic sampler, so it does not depend on
the other prompts in the batch. The *result* is equal across batch compositions up to float
rounding (a convolution may take another code path for another batch size): within
``SEED_TOLERANCE`` in ``[-1, 1]`` units before the 8-bit rounding.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from vidiff.compose import load_denoiser
from vidiff.compose.config import SampleConfig
from vidiff.conditioning import Conditioning
from vidiff.diffusion import (
    DEFAULT_GUIDANCE_WEIGHT, FRAME_METHODS, SAMPLERS, GuidedDenoiser, KnownFramesDenoiser, NetworkDenoiser, Schedule, sample,
)
from vidiff.models.controlnet import ControlledNetwork
from vidiff.models.layers import sampling_step, set_sampling_step
from vidiff.pipelines.control import ControlNetLike, ControlTasks
from vidiff.pipelines.editing import EditingTasks
from vidiff.pipelines.frames import FrameTasks, clip_tensor
from vidiff.pipelines.shipped import DEFAULT_MODEL, resolve_model
from vidiff.pipelines.upscale import UpscaleTasks
from vidiff.video import DEFAULT_FPS, Video

# Largest difference (in [-1, 1] units) between a sample drawn alone and the same sample drawn
# inside a batch of other prompts; measured ~1e-6 on CPU builds of torch 2.13 and 2.14.
SEED_TOLERANCE = 1e-4
DEFAULTS = SampleConfig()   # the one source of the sampling defaults (steps, sampler, guidance)
Callback = Callable[[dict], None]


def check_sampling(steps: int, sampler: str, guidance: float, guidance_rescale: float = 0.0,
                   frame_guidance: Optional[float] = None) -> None:
    """Validate sampling options once, before any work; ValueError names the bad value."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; accepted: {sorted(SAMPLERS)}")
    for name, value in (("guidance", guidance), ("frame guidance", frame_guidance)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0 (1 = off), got {value!r}")
    if not (isinstance(guidance_rescale, (int, float)) and 0.0 <= guidance_rescale <= 1.0):
        raise ValueError(f"guidance rescale must be in [0, 1], got {guidance_rescale!r}")


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


class VideoPipeline(FrameTasks, EditingTasks, ControlTasks, UpscaleTasks):
    """Generates videos with a trained denoiser.

    Args:
        network: ``network(x_t, t, cond) -> prediction`` of kind ``parameterization``.
        schedule: the schedule it was trained with.
        parameterization: ``"eps"``, ``"v"``, ``"x0"`` or ``"flow"``.
        text_encoder: encodes prompts into a :class:`Conditioning` (None: unconditional).
        frames, height, width: the default clip size in pixels (the training size).
        fps: frame rate of written videos.
        vae: for a latent model, the autoencoder whose latents the network denoises; videos
            are sampled as latents and decoded chunk by chunk (constant memory in length).
    """

    def __init__(self, network: nn.Module, schedule: Schedule, parameterization: str,
                 text_encoder=None, frames: int = 16, height: int = 32, width: int = 32,
                 channels: int = 3, fps: float = DEFAULT_FPS, run_config=None, vae=None):
        self.network, self.schedule, self.parameterization = network, schedule, parameterization
        self.text_encoder, self.vae = text_encoder, vae
        self.frames, self.height, self.width, self.channels, self.fps = frames, height, width, channels, fps
        self.run_config = run_config
        if run_config is not None:
            self.sample_defaults = run_config.sample
        self.device = next(network.parameters()).device
        self.source: Optional[str] = None      # the checkpoint it was loaded from, for messages

    # How this model samples when a caller does not say: its run config's ``sample`` section
    # (where a loaded model's card was measured; set in __init__), else the global defaults.
    # They differ where a model's guidance was tuned: classifier-free guidance of 5 pushes a
    # latent model's colours off (docs/benchmarks.md, "shapes-latent").
    sample_defaults: SampleConfig = DEFAULTS

    def sampling(self, steps: Optional[int], sampler: Optional[str],
                 guidance: Optional[float]) -> tuple[int, str, float]:
        """``(steps, sampler, guidance)`` with each one left None taken from :attr:`sample_defaults`."""
        d = self.sample_defaults
        return (d.steps if steps is None else steps, d.sampler if sampler is None else sampler,
                d.guidance if guidance is None else guidance)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: Union[str, Path], device=None, ema: bool = True,
                        text_encoder_path: Optional[str] = None,
                        reference_encoder_path: Optional[str] = None) -> "VideoPipeline":
        """Rebuild a pipeline from a checkpoint (or a run directory: its newest checkpoint).

        ``text_encoder_path`` re-points a frozen CLIP/T5 encoder at a new local directory,
        ``reference_encoder_path`` a CLIP vision reference encoder.
        """
        parts = load_denoiser(path, device=device, ema=ema, text_encoder_path=text_encoder_path,
                              reference_encoder_path=reference_encoder_path)
        run, vae = parts.run, parts.vae
        channels = vae.config.in_channels if vae is not None else parts.config["network"].get("in_channels", 3)
        pipe = cls(parts.network, run.diffusion.make_schedule(), run.diffusion.parameterization,
                   parts.text_encoder, frames=run.data.frames, height=run.data.size, width=run.data.size,
                   channels=channels, fps=float(parts.config.get("fps", DEFAULT_FPS)), run_config=run, vae=vae)
        pipe.source = str(parts.path)
        return pipe

    # ------------------------------------------------------------------ conditioning
    def encode(self, prompts: list[str]) -> Optional[Conditioning]:
        """Text conditioning for ``prompts`` (None for an unconditional model)."""
        if self.text_encoder is None:
            return None
        for p in prompts:
            if not isinstance(p, str) or not p.strip():
                raise ValueError(f"prompts must be non-empty strings, got {p!r}")
        with torch.no_grad():
            return self.text_encoder.conditioning(prompts).to(self.device)

    def prompt_for(self, prompt: Optional[str]) -> Optional[str]:
        """``prompt`` if this model reads text, else None: what to hand a model when one prompt
        goes to several (a cascade's stages, a stage's samples), some of which have no text."""
        return prompt if self.text_encoder is not None else None

    def denoiser(self, guidance: float = 1.0, negative: Optional[Conditioning] = None,
                 rescale: float = 0.0, frame_guidance: Optional[float] = None,
                 network: Optional[nn.Module] = None):
        """The network (or ``network``, e.g. it steered by a ControlNet) as a denoiser, with
        classifier-free guidance: ``guidance`` on the text, ``frame_guidance`` on known frames
        (None: frames are kept in every pass)."""
        base = NetworkDenoiser(self.network if network is None else network, self.schedule,
                               self.parameterization)
        if self.text_encoder is None:
            guidance = 1.0
        if guidance == 1.0 and frame_guidance in (None, 1.0):
            return base
        return GuidedDenoiser(base, guidance, rescale=rescale, negative=negative, frame_scale=frame_guidance)

    @property
    def mask_trained(self) -> bool:
        """Whether the network takes known frames as input (trained on the frame-task mix)."""
        return bool(getattr(getattr(self.network, "config", None), "known_frames", False))

    def check_method(self, method: Optional[str]) -> str:
        """The frame method to use (``None``: ``"mask"`` for a mask-trained model, else
        ``"guidance"``); ValueError for an unknown one, or ``"mask"`` on a model without inputs."""
        if method is None:
            return "mask" if self.mask_trained else "guidance"
        if method not in FRAME_METHODS:
            raise ValueError(f"unknown frame method {method!r}; accepted: {list(FRAME_METHODS)}")
        if method == "mask" and not self.mask_trained:
            raise ValueError("method 'mask' needs a model trained with known-frame masks "
                             "(known_frames: true); this one was not: use 'guidance' or 'replace'")
        return method

    def clip_shape(self, frames: Optional[int] = None, height: Optional[int] = None,
                   width: Optional[int] = None) -> tuple[int, int, int, int]:
        """The ``(C, T, H, W)`` the sampler works in for a clip of ``frames`` x ``height`` x
        ``width`` pixels (default: the training size): latents for a latent model. Raises a
        ValueError naming the size when the model cannot take it."""
        T = self.frames if frames is None else _check_count("frames", frames)
        H = self.height if height is None else _check_count("height", height)
        W = self.width if width is None else _check_count("width", width)
        shape = self.vae.latent_shape(T, H, W) if self.vae is not None else (self.channels, T, H, W)
        self.network.check_shape((1, *shape))
        return tuple(shape)

    # ------------------------------------------------------------------ the sampling core
    def sample(self, cond: Optional[Conditioning], shape: Sequence[int], seeds: Sequence[int],
               steps: int = DEFAULTS.steps, sampler: str = DEFAULTS.sampler,
               guidance: float = DEFAULTS.guidance, frame_guidance: Optional[float] = None,
               negative: Optional[Conditioning] = None, guidance_rescale: float = 0.0,
               start_t: Optional[float] = None, start: Optional[Tensor] = None, start_noised: bool = False,
               callback: Optional[Callback] = None, method: Optional[str] = None,
               guidance_weight: float = DEFAULT_GUIDANCE_WEIGHT,
               wrap: Optional[Callable[[Callable], Callable]] = None, controlnet=None,
               control_scale: float = 1.0, control_range: Sequence[float] = (0.0, 1.0), **options) -> Tensor:
        """The one sampling loop every task calls.

        Args:
            cond: conditioning for the whole batch (None: unconditional). Known frames travel
                in ``cond.known`` / ``cond.mask``.
            method: how known frames condition the sample (:data:`FRAME_METHODS`): ``"mask"``
                (the network consumes them; the default for a mask-trained model),
                ``"guidance"`` (reconstruction guidance with ``guidance_weight``; the default
                otherwise) or ``"replace"``.
            shape: ``(C, T, H, W)`` of one sample in the sampler's units (see :meth:`clip_shape`).
            seeds: one seed per sample; sample ``i`` draws all its noise from its own generator.
            start_t, start: SDEdit / inversion: begin at diffusion time ``start_t`` from
                ``start (B, C, T, H, W)``, noised to ``start_t`` with the seeds' noise unless
                ``start_t`` is None (then ``start`` is the noise itself). ``start_noised``:
                ``start`` already is the state at ``start_t`` (a partial inversion's output).
            wrap: ``wrap(denoiser) -> denoiser`` around the guided denoiser, before known
                frames (a guidance that changes with the step, as null-text inversion's).
            controlnet, control_scale, control_range: a ControlNet that reads ``cond.control``,
                the weight of its residuals and the part of the run it acts in (fractions from
                noise, 0, to clean, 1; see :class:`~vidiff.models.controlnet.ControlledNetwork`).
            callback: called after every step with ``{"step", "steps", "t", "x", "x0"}``.
                Attention processors see the step index through
                :func:`vidiff.models.layers.current_sampling_step` (0 for the first step).

        Returns:
            ``x0 (B, C, T, H, W)`` in the sampler's units (latents for a latent model).
        """
        check_sampling(steps, sampler, guidance, guidance_rescale, frame_guidance)
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        noise = torch.stack([torch.randn(tuple(shape), generator=g) for g in generators]).to(self.device)
        if cond is not None:
            cond.check_batch(len(generators), "the seeds")
        x, t_max = noise, None
        if start is not None:
            if tuple(start.shape) != tuple(noise.shape):
                raise ValueError(f"start must have shape {tuple(noise.shape)}, got {tuple(start.shape)}")
            x = start.to(self.device, noise.dtype)
            if start_t is not None:
                if not 0.0 < start_t <= 1.0:
                    raise ValueError(f"start time must be in (0, 1], got {start_t!r}")
                t_max = min(float(start_t), self.schedule.t_max)
                t = torch.full((x.shape[0],), t_max, dtype=x.dtype, device=x.device)
                x = x if start_noised else self.schedule.add_noise(x, noise, t)
        network = None
        if controlnet is not None:
            network = ControlledNetwork(self.network, controlnet, control_scale, control_range)
        elif cond is not None and cond.control is not None:
            raise ValueError("cond.control is set but no ControlNet is given to read it")
        denoiser = self.denoiser(guidance, negative, guidance_rescale, frame_guidance, network)
        if wrap is not None:
            denoiser = wrap(denoiser)
        method = self.check_method(method)
        if cond is not None and cond.mask is not None and method != "mask":
            denoiser = KnownFramesDenoiser(denoiser, self.schedule, method, noise, guidance_weight)

        def advance(info: dict) -> None:
            set_sampling_step(info["step"] + 1)        # what attention processors see next
            if callback is not None:
                callback(info)
        with sampling_step(0):
            return sample(denoiser, x, schedule=self.schedule, sampler=sampler, steps=steps, cond=cond,
                          generator=generators, callback=advance, t_max=t_max, **options)

    def decode(self, x0: Tensor) -> list[Video]:
        """Sampled clips ``(B, C, T, H, W)`` (latents for a latent model) as videos."""
        if self.vae is not None:
            # Latents are sampled in diffusion units: undo the scaling before decoding, a few
            # latent frames at a time (constant memory in the clip length).
            return [Video(self.vae.decode_to_uint8(self.vae.unscale(z), chunk=2), fps=self.fps)
                    for z in x0.float()]
        return [Video.from_tensor(clip.float().cpu(), fps=self.fps) for clip in x0]

    # ------------------------------------------------------------------ tasks
    @torch.no_grad()
    def generate(self, prompt: Union[str, list[str], None] = None, num_frames: Optional[int] = None,
                 steps: Optional[int] = None, guidance: Optional[float] = None, seed: int = 0,
                 sampler: Optional[str] = None, negative_prompt: Optional[str] = None,
                 samples: int = 1, height: Optional[int] = None, width: Optional[int] = None,
                 guidance_rescale: float = 0.0, progress: bool = False,
                 callback: Optional[Callback] = None,
                 prompt_schedule: Optional[Sequence[tuple[int, str]]] = None,
                 scheme: str = "autoregressive", overlap: Optional[int] = None, stride: int = 4,
                 method: Optional[str] = None, guidance_weight: float = DEFAULT_GUIDANCE_WEIGHT,
                 control=None, control_from=None, control_type: Optional[str] = None,
                 controlnet: ControlNetLike = None, control_scale: float = 1.0,
                 control_range: Sequence[float] = (0.0, 1.0), extractor=None, reference=None):
        """Text to video, of any length.

        Args:
            prompt: one prompt or a list (None for an unconditional model).
            num_frames, height, width: clip size in pixels (default: the training size).
                Longer than the training length, the clip is built window by window
                (:meth:`long`, with ``scheme``, ``overlap`` and keyframe ``stride``).
            prompt_schedule: ``[(frame, prompt)]``: the prompt changes at those frames
                (``prompt`` holds before the first; see :func:`parse_prompt_schedule`).
            method, guidance_weight: how each window after the first is conditioned on the
                frames it shares with the one before (see :meth:`sample`).
            steps, sampler: sampling budget and method (see ``vidiff.diffusion.SAMPLERS``).
            guidance: classifier-free guidance scale (1 = off).
                These three default to the model's own (:attr:`sample_defaults`).
            seed: sample ``k`` of every prompt uses the noise streams of seed ``seed + k``.
            negative_prompt: its text replaces the null text in the unconditional pass.
            samples: variations per prompt.
            progress: draw a progress bar; ``callback`` receives every step as well.
            control, control_from: per-frame structure maps the clip follows (a map video, its
                path, or a ``(C, T, H, W)`` tensor in [0, 1]), or a video to extract them from
                (``extractor``: the TorchScript file ``depth`` and ``custom`` need); the same
                maps serve every prompt and sample. See :mod:`vidiff.pipelines.control`.
            control_type, controlnet: the kind of maps, and the ControlNet that reads them (a
                shipped name, a directory or a loaded one; None: the shipped one of the type).
            control_scale, control_range: the weight of the control, and the part of the run
                (fractions from noise, 0, to clean, 1) in which it acts.
            reference: an image (a one-frame :class:`Video`, a uint8 ``(H, W, 3)`` array or a
                ``(3, 1, H, W)`` tensor in [-1, 1], any size) whose subject and style every clip
                shows, for a model with a reference pathway; the prompt may then name only the
                motion ("a moving up"). It is part of the prompt: guidance drops it with the text.

        Returns:
            a :class:`Video` for one prompt and one sample, else a list ordered prompt-major.
        """
        samples = _check_count("samples", samples)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        steps, sampler, guidance = self.sampling(steps, sampler, guidance)
        check_sampling(steps, sampler, guidance, guidance_rescale)
        single = prompt is None or isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        if not prompts:
            raise ValueError("no prompts given")
        if self.text_encoder is None and any(p is not None for p in prompts):
            raise ValueError("this model is unconditional: generate it without a prompt")
        if negative_prompt is not None and self.text_encoder is None:
            raise ValueError("this model is unconditional: a negative prompt has no effect")
        T = self.frames if num_frames is None else _check_count("frames", num_frames)
        H, W = self.height if height is None else height, self.width if width is None else width
        window_by_window = T > self.frames or bool(prompt_schedule) or scheme != "autoregressive"
        net = None
        if control is not None or control_from is not None:
            if window_by_window:
                raise ValueError(f"control maps steer one clip of at most the training length "
                                 f"({self.frames} frames), without a prompt schedule")
            net = self.controlnet(controlnet, control_type)
        elif controlnet is not None or control_type is not None:
            raise ValueError("a ControlNet or control type needs control maps (control=...) or a "
                             "video to extract them from (control_from=...)")
        if reference is not None:
            if not getattr(getattr(self.network, "config", None), "reference_tokens", 0):
                raise ValueError(f"this model ({self.source or 'in memory'}) has no reference pathway: "
                                 "use one trained with reference_tokens (the shipped shapes-reference)")
            if self.text_encoder is None or window_by_window:
                raise ValueError(f"a reference image conditions one text-conditioned clip of at most the "
                                 f"training length ({self.frames} frames), without a prompt schedule")
            image = clip_tensor(reference, "reference image")
            if image.shape[1] != 1:
                raise ValueError(f"the reference must be one image, got {image.shape[1]} frames")
        if window_by_window:
            empty = torch.zeros(self.channels, T, H, W), torch.zeros(1, T, H, W)
            clips = torch.cat([self.long(*empty, p, scheme=scheme, stride=stride, samples=samples, seed=seed,
                                         steps=steps, sampler=sampler, guidance=guidance,
                                         negative_prompt=negative_prompt, prompt_schedule=prompt_schedule,
                                         overlap=overlap, progress=progress, callback=callback,
                                         method=method, guidance_weight=guidance_weight)
                               for p in prompts])
            return self._one_or_list(self._videos(clips), single)          # clips: uint8 levels
        shape = self.clip_shape(num_frames, height, width)
        cond = negative = None
        if self.text_encoder is not None:
            expanded = [p for p in prompts for _ in range(samples)]
            cond = self.encode(expanded)
            if negative_prompt is not None:
                negative = self.encode([negative_prompt])      # one row serves every sample
        seeds = [seed + k for _ in prompts for k in range(samples)]
        extra = {}
        if reference is not None:
            images = image[:, 0][None].expand(len(seeds), -1, -1, -1).to(self.device)   # (B, 3, H_r, W_r)
            cond = cond.replace(reference=images)
        if net is not None:
            maps = self.control_conditioning(control, control_from, net, T, H, W, extractor)
            batch = maps[None].expand(len(seeds), *maps.shape)                 # (B, C_ctrl, T, H, W)
            cond = Conditioning(control=batch) if cond is None else cond.replace(control=batch)
            extra = dict(controlnet=net, control_scale=control_scale, control_range=control_range)
        x0 = self._run(cond, shape, seeds, progress, callback, steps=steps, sampler=sampler,
                       guidance=guidance, negative=negative, guidance_rescale=guidance_rescale, **extra)
        videos = self.decode(x0)
        return self._one_or_list(videos, single)

    def _run(self, cond, shape, seeds, progress: bool, callback: Optional[Callback], **options) -> Tensor:
        """:meth:`sample` with a tqdm bar as one more consumer of the step callback."""
        bar = tqdm(total=options["steps"], desc="sampling", leave=False, disable=not progress)

        def report(info: dict) -> None:
            bar.update(1)
            bar.set_postfix(t=f"{info['t']:.3f}")
            if callback is not None:
                callback(info)
        try:
            return self.sample(cond, shape, seeds, callback=report, **options)
        finally:
            bar.close()


def load(model: Union[str, Path, None] = DEFAULT_MODEL, device=None, ema: bool = True,
         text_encoder_path: Optional[str] = None, reference_encoder_path: Optional[str] = None) -> VideoPipeline:
    """``vidiff.load(NAME_OR_DIR)``: a :class:`VideoPipeline` from a shipped model's name
    (default ``"shapes"``; see :mod:`vidiff.pipelines.shipped`) or a checkpoint or run
    directory. A path that exists wins over a name. ``text_encoder_path`` and
    ``reference_encoder_path`` re-point a frozen CLIP/T5 text encoder and a CLIP vision
    reference encoder that have moved."""
    return VideoPipeline.from_pretrained(resolve_model(model), device=device, ema=ema,
                                         text_encoder_path=text_encoder_path,
                                         reference_encoder_path=reference_encoder_path)
