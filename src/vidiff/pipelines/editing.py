"""Editing a given video: inversion, inversion-based prompt edits, and SDEdit restyling.

Mixed into :class:`~vidiff.pipelines.video.VideoPipeline`; every method calls the one sampling
core, :meth:`VideoPipeline.sample`, and inversion is the library's
:func:`vidiff.diffusion.invert` (DDIM run backwards, with fixed-point ``refine``).

* :meth:`EditingTasks.invert` finds the DDIM noise that reproduces a clip under a prompt
  (an :class:`~vidiff.pipelines.inversion.Inversion`, which saves to a noise file);
  :meth:`EditingTasks.generate_from_noise` maps it back.
* :meth:`EditingTasks.edit` inverts under the source prompt and regenerates from that noise
  under the target prompt. For the first fraction ``inject`` of the steps the regeneration
  replays the attention a source reconstruction pass recorded (:mod:`.injection`), which
  keeps the structure, position and motion the prompt does not change.
* :meth:`EditingTasks.restyle` is SDEdit (Meng et al. 2022): the clip noised to diffusion time
  ``strength`` with the seed's noise, then denoised under the new prompt.

Clips are at most the model's training length (one window) and of a size its network takes.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor
from tqdm.auto import tqdm

from vidiff.compose import weights_fingerprint
from vidiff.conditioning import Conditioning
from vidiff.diffusion import invert, timesteps
from vidiff.models.condition import ConditionEmbedder
from vidiff.pipelines.frames import Clip, clip_tensor
from vidiff.pipelines.injection import INJECT_MODES, SELF_KINDS, AttentionStore, injected_steps
from vidiff.pipelines.inversion import (
    CFG_INVERSIONS, INVERT_SPACING, NTI_ITERATIONS, Inversion, StepGuidance, check_strength, inversion_floor,
    null_text_optimisation,
)
from vidiff.video import Video

INVERT_STEPS = 50          # DDIM inversion needs more steps than sampling: its error is first order
# Edit defaults, from the shapes model (benchmarks/editing.py, 2 clips, 20 steps): at guidance 1
# red -> blue edits succeeded with a centroid trajectory error of 0.3-0.5 px under keys/values
# injection for the first 60% of the steps (0.6-1.7 px without injection); at guidance 5 the
# negative-prompt edit, x_src + 5 (x_tgt - x_src), also moved the shape (trajectory 5-7 px).
DEFAULT_INJECT = 0.6       # the share of steps that replay the source's attention
DEFAULT_INJECTION = "kv"
EDIT_GUIDANCE = 1.0
EDIT_CFG_INVERSION = "negative"   # exact reconstruction at any guidance, and free


class EditingTasks:
    """Inversion, prompt edits and restyling for :class:`~vidiff.pipelines.video.VideoPipeline`."""

    # ------------------------------------------------------------------ identity
    def fingerprint(self) -> str:
        """A hash of this pipeline's weights (network, text encoder, autoencoder): what a noise
        file records, so that it is refused by any other model."""
        return weights_fingerprint(self.network, self.text_encoder, self.vae)

    # ------------------------------------------------------------------ inversion
    @torch.no_grad()
    def invert(self, video: Clip, prompt: Optional[str] = None, steps: int = INVERT_STEPS, refine: int = 0,
               guidance: float = 1.0, cfg_inversion: str = "none", strength: float = 1.0,
               nti_iterations: int = NTI_ITERATIONS, progress: bool = False) -> Inversion:
        """The DDIM noise that reproduces ``video`` under ``prompt``.

        Args:
            video: a :class:`Video`, uint8 ``(T, H, W, 3)`` or float ``(3, T, H, W)`` in [-1, 1],
                at most the model's training length.
            prompt: what the clip shows (None for an unconditional model).
            steps, refine: DDIM steps and fixed-point iterations per step (``refine`` more
                denoiser calls each; exact inversion of every sampling step as they grow).
            guidance: the classifier-free guidance scale the noise is to be sampled at.
            cfg_inversion: ``"none"`` (invert the guided prediction: drifts at guidance > 1),
                ``"negative"`` or ``"nti"`` (see :mod:`vidiff.pipelines.inversion`).
            strength: invert up to diffusion time ``strength`` only (1: to pure noise).
            nti_iterations: optimiser steps per sampling step of ``"nti"``.

        Returns:
            an :class:`Inversion`; :meth:`generate_from_noise` maps it back onto the clip.
        """
        _check_steps(steps, refine)
        if cfg_inversion not in CFG_INVERSIONS:
            raise ValueError(f"unknown cfg inversion {cfg_inversion!r}; accepted: {list(CFG_INVERSIONS)}")
        if not (isinstance(guidance, (int, float)) and guidance >= 0 and guidance == guidance):
            raise ValueError(f"guidance must be a finite number >= 0 (1 = off), got {guidance!r}")
        strength = check_strength(strength)
        if strength == 0:
            raise ValueError("an inversion needs a strength > 0 (0 keeps the clean clip: nothing to invert)")
        if self.text_encoder is None and (guidance != 1.0 or cfg_inversion != "none"):
            raise ValueError("this model is unconditional: invert it at guidance 1 with --cfg-inversion none")
        if prompt is None and cfg_inversion != "none":
            raise ValueError(f"cfg inversion {cfg_inversion!r} inverts the guidance of a prompt: give the prompt")
        clip = clip_tensor(video)
        x0 = self._editing_units(clip)
        cond = self._prompt(prompt, "prompt")
        grid_t_max = min(strength, self.schedule.t_max)
        conditional = self.denoiser(1.0)
        inverting = self.denoiser(guidance) if cfg_inversion == "none" else conditional
        states = []
        bar = _progress(steps, "inverting", progress)
        on_grid = dict(spacing=INVERT_SPACING, t_max=grid_t_max, t_min=inversion_floor(grid_t_max, steps))
        noise = invert(inverting, x0, self.schedule, steps=steps, cond=cond, refine=refine,
                       callback=lambda info: (states.append(info["x"]), bar()), **on_grid)
        null_text = null_pooled = None
        if cfg_inversion == "nti" and guidance != 1.0:
            grid = timesteps(self.schedule, steps, **on_grid)
            trajectory = states[::-1] + [x0]                  # the states at grid's falling times
            null_text, null_pooled = null_text_optimisation(conditional, cond, self._explicit_null(), trajectory,
                                                            grid, self.schedule, guidance, iterations=nti_iterations)
        fps = video.fps if isinstance(video, Video) else self.fps
        return Inversion(noise=noise.cpu(), prompt=prompt, steps=steps, guidance=float(guidance), refine=refine,
                         cfg_inversion=cfg_inversion, strength=strength, model=self.fingerprint(),
                         model_name=self._model_name(), frames=clip.shape[1], height=clip.shape[2],
                         width=clip.shape[3], fps=float(fps), null_text=null_text, null_pooled=null_pooled,
                         spacing=on_grid["spacing"], t_min=on_grid["t_min"])

    def load_noise(self, path: Union[str, Path]) -> Inversion:
        """A noise file, refused (ValueError naming both models) unless this model made it."""
        inversion = Inversion.load(path)
        inversion.check_model(self.fingerprint(), self._model_name())
        return inversion

    @torch.no_grad()
    def generate_from_noise(self, noise: Union[Inversion, str, Path], progress: bool = False) -> Video:
        """The clip an inversion (or a noise file) reproduces: its recorded prompt, steps and
        guidance, sampled with DDIM from its noise."""
        inversion = noise if isinstance(noise, Inversion) else self.load_noise(noise)
        inversion.check_model(self.fingerprint(), self._model_name())
        cond = self._prompt(inversion.prompt, "recorded prompt")
        return self._video(self._regenerate(inversion, cond, cond, progress), inversion.fps)

    # ------------------------------------------------------------------ editing
    @torch.no_grad()
    def edit(self, video: Clip, source_prompt: str, prompt: str, strength: float = 1.0,
             inject: float = DEFAULT_INJECT, steps: int = INVERT_STEPS, guidance: float = EDIT_GUIDANCE,
             cfg_inversion: str = EDIT_CFG_INVERSION, refine: int = 0, injection: str = DEFAULT_INJECTION,
             nti_iterations: int = NTI_ITERATIONS, progress: bool = False) -> Video:
        """``video`` (which shows ``source_prompt``) changed to show ``prompt``, keeping what
        the prompts share (position, motion, timing, background).

        Args:
            strength: how far to invert, a diffusion time in [0, 1] (1: to pure noise, the
                largest edits; lower keeps more of the clip; 0 returns it unchanged).
            inject: the fraction ``tau`` in [0, 1] of the steps that replay the source run's
                attention (0: none; 1: all, which with equal prompts gives the source back).
            injection: ``"maps"`` (self- and cross-attention maps) or ``"kv"`` (self-attention
                keys and values, cross-attention maps); see :mod:`vidiff.pipelines.injection`.
            steps, guidance, cfg_inversion, refine, nti_iterations: as for :meth:`invert`.
        """
        strength = check_strength(strength)
        tau_steps = injected_steps(inject, steps) if isinstance(steps, int) else 0
        if injection not in INJECT_MODES:
            raise ValueError(f"unknown injection {injection!r}; accepted: {list(INJECT_MODES)}")
        if self.text_encoder is None:
            raise ValueError("editing changes a clip by its prompt, and this model is unconditional "
                             "(no text encoder): use a text-to-video model, or restyle without a prompt")
        source, target = self._prompt(source_prompt, "source prompt"), self._prompt(prompt, "prompt")
        if strength == 0:
            self._editing_units(clip_tensor(video))
            return video if isinstance(video, Video) else Video.from_tensor(clip_tensor(video), fps=self.fps)
        inversion = self.invert(video, source_prompt, steps=steps, refine=refine, guidance=guidance,
                                cfg_inversion=cfg_inversion, strength=strength, nti_iterations=nti_iterations,
                                progress=progress)
        store = None
        if tau_steps:
            same_length = source.text.shape[1] == target.text.shape[1]
            store = AttentionStore(tau_steps, SELF_KINDS + (("cross",) if same_length else ()), injection)
            with store.recording(self.network):
                self._regenerate(inversion, source, source, progress)
        with store.replaying(self.network) if store is not None else nullcontext():
            x0 = self._regenerate(inversion, target, source, progress)
        return self._video(x0, inversion.fps)

    @torch.no_grad()
    def restyle(self, video: Clip, prompt: Optional[str] = None, strength: float = 0.6,
                steps: Optional[int] = None, sampler: Optional[str] = None, guidance: Optional[float] = None,
                seed: int = 0, negative_prompt: Optional[str] = None, samples: int = 1,
                progress: bool = False, callback=None):
        """SDEdit: ``video`` noised to diffusion time ``strength`` (0 keeps it, 1 is pure
        noise) with seed ``seed + k``'s noise, then denoised under ``prompt`` by ``steps``
        steps of ``sampler`` over ``[0, strength]`` (None: the sampling defaults). Returns a
        Video (a list for ``samples > 1``)."""
        steps, sampler, guidance = self.sampling(steps, sampler, guidance)
        strength = check_strength(strength)
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
        if self.text_encoder is None and (prompt is not None or negative_prompt is not None):
            raise ValueError("this model is unconditional: restyle it without a prompt")
        clip = clip_tensor(video)
        x0 = self._editing_units(clip)
        cond = self._prompt(prompt, "prompt")
        negative = self._prompt(negative_prompt, "negative prompt")
        fps = video.fps if isinstance(video, Video) else self.fps
        if strength == 0:
            return self._one_or_list([Video.from_tensor(clip, fps=fps)] * samples)
        if cond is not None:
            cond = cond.cat(*[cond] * (samples - 1))
        x0 = self._run(cond, x0.shape[1:], [seed + k for k in range(samples)], progress, callback, steps=steps,
                       sampler=sampler, guidance=guidance, negative=negative, start=x0.expand(samples, *x0.shape[1:]),
                       start_t=strength)
        return self._one_or_list([Video(v.frames, fps=fps) for v in self.decode(x0)])

    # ------------------------------------------------------------------ helpers
    def _regenerate(self, inversion: Inversion, cond: Optional[Conditioning], source: Optional[Conditioning],
                    progress: bool) -> Tensor:
        """DDIM from the inversion's noise under ``cond``, with the inversion's guidance
        scheme (``source``: the source prompt's conditioning, the negative of ``"negative"``)."""
        options = dict(steps=inversion.steps, sampler="ddim", guidance=inversion.guidance,
                       spacing=inversion.spacing, t_min=inversion.t_min)
        if inversion.cfg_inversion == "negative" and inversion.guidance != 1.0:
            options["negative"] = source
        negatives = inversion.negatives(self.device)
        if negatives is not None:
            if len(negatives) != inversion.steps:
                raise ValueError(f"the noise file holds {len(negatives)} null-text steps for {inversion.steps} steps")
            options.update(guidance=1.0, wrap=lambda base: StepGuidance(base, inversion.guidance, negatives))
        noise = inversion.noise.to(self.device)
        return self._run(cond, noise.shape[1:], [0], progress, None, start=noise,
                         start_t=inversion.strength, start_noised=True, **options)

    def _editing_units(self, clip: Tensor) -> Tensor:
        """``clip (3, T, H, W)`` as one sample ``(1, C, T', H', W')`` in the sampler's units;
        ValueError unless it is one window of a size the model takes."""
        _, T, H, W = clip.shape
        if T > self.frames:
            raise ValueError(f"the video has {T} frames and this model edits at most {self.frames} "
                             "(its training length) at once: cut the video to that length")
        try:
            shape = self.clip_shape(T, H, W)
        except ValueError as e:
            raise ValueError(f"a video of {T} frames of {W}x{H} does not fit this model ({e})") from None
        if self.vae is None:
            return clip[None].to(self.device)
        z = self.vae.to_latent(clip[None].to(self.device))
        if tuple(z.shape[1:]) != tuple(shape):
            raise ValueError(f"latents of shape {tuple(z.shape[1:])} do not match the model's {shape}")
        return z

    def _prompt(self, prompt: Optional[str], what: str) -> Optional[Conditioning]:
        """The conditioning of one prompt, refused (ValueError naming it) when the text encoder
        cannot encode it: blank, or with words it has no embedding for."""
        if prompt is None:
            return None
        if self.text_encoder is None:
            raise ValueError(f"this model is unconditional: it takes no {what}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"the {what} must be non-blank text, got {prompt!r}")
        unknown = self.text_encoder.unknown_words(prompt)
        if unknown:
            raise ValueError(f"the {what} {prompt!r} has words the text encoder does not know: "
                             f"{', '.join(unknown)} (it knows only the words of its training captions)")
        return self.encode([prompt])

    def _explicit_null(self) -> Conditioning:
        embedder = getattr(self.network, "cond", None)
        if not isinstance(embedder, ConditionEmbedder):
            raise ValueError("null-text inversion needs a network with a ConditionEmbedder (UNet3D, VideoDiT)")
        return embedder.explicit_null(1)

    def _model_name(self) -> str:
        return getattr(self, "source", None) or type(self.network).__name__

    def _video(self, x0: Tensor, fps: float) -> Video:
        return Video(self.decode(x0)[0].frames, fps=fps)


def _check_steps(steps, refine) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if isinstance(refine, bool) or not isinstance(refine, int) or refine < 0:
        raise ValueError(f"refine must be an integer >= 0, got {refine!r}")


def _progress(total: int, what: str, show: bool):
    """A step counter for a loop that is no sampling run (the inversion)."""
    bar = tqdm(total=total, desc=what, leave=False, disable=not show)

    def advance() -> None:
        bar.update(1)
        if bar.n >= total:
            bar.close()
    return advance
