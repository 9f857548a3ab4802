"""Inversions: the noise that reproduces a clip, null-text optimisation, and the noise file.

An :class:`Inversion` is what :meth:`~vidiff.pipelines.editing.EditingTasks.invert` returns:
the DDIM state at the start time of a grid (pure noise for ``strength = 1``) plus everything
needed to map it back onto the clip (prompt, steps, guidance and how the inversion dealt with
it, the refinement count) and the fingerprint of the model it belongs to. Saved, it is one
safetensors file: tensors ``noise (1, C, T, H, W)`` (sampler units: latents for a latent
model) and, after null-text optimisation, ``null_text (steps, 1, D)`` and ``null_pooled
(steps, Dp)``; the record in the metadata (``format``, ``record``: JSON).

Guidance-aware inversion (``cfg_inversion``). Plain DDIM inversion under classifier-free
guidance ``w > 1`` drifts: each inverse step assumes the guided prediction at the next point
equals the one at this point, and guidance amplifies the error. Two remedies:

* ``"negative"`` (negative-prompt inversion, Miyake et al. 2023): invert with the conditional
  prediction alone, and sample with the source prompt's own embedding as the negative. The
  guided prediction ``x_neg + w (x_cond - x_neg)`` then equals ``x_cond`` under the source
  prompt, so the reconstruction is that of guidance 1; an edit moves by ``w`` times the change
  from the source to the target prompt. Costs nothing.
* ``"nti"`` (null-text inversion, Mokady et al. 2023): invert with the conditional prediction,
  then, step by step, optimise the unconditional branch's text (one token and the pooled
  vector, starting from the network's learned null) so that the guided DDIM step lands on the
  guidance-1 trajectory. ``NTI_ITERATIONS`` Adam steps of ``NTI_LR`` per sampling step, each a
  forward and backward pass of the two guidance passes: about ``3 * NTI_ITERATIONS`` times the
  cost of the inversion itself (the paper uses 10 iterations on Stable Diffusion; 5 bring the
  shapes model's trajectory error down most of the way).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from vidiff.checkpoint import write_file_atomic
from vidiff.conditioning import Conditioning
from vidiff.diffusion import GuidedDenoiser, Schedule, sample_ddim
from vidiff.models.layers import current_sampling_step

FORMAT = "vidiff-noise"
FORMAT_VERSION = 1
CFG_INVERSIONS = ("none", "negative", "nti")
NTI_ITERATIONS = 5      # Adam steps per sampling step (see the module docstring)
NTI_LR = 1e-2           # on embeddings of unit-ish scale: moves them a few percent per step
NTI_TOLERANCE = 1e-7    # mean squared state error at which a step stops early
# The inversion grid: evenly spaced from its start time down to a floor, then 0. Up to 20
# steps that is the evenly spaced grid down to 0 ("trailing"); more steps refine it above the
# floor the 20-step grid has (t = 0.05) instead of reaching below it. Inversion's first step
# takes the clean clip for the state at the grid's lowest time and each later step is first
# order in the change of noise level, so a trailing grid of n steps evaluates the network on
# off-distribution states at t = 1/n, 2/n, ..., each step doubling or so the noise level. A
# network that sharpens at low noise (the shipped `shapes`, with its pixel head) turns those
# steps' errors into structure that the rest of the inversion amplifies: at 100 steps 4 of 17
# clips came back at 12-23 dB, against 34-37 dB on the floored grid (docs/benchmarks.md,
# "Editing"). Evenly spaced in log-SNR down to 0.001 fails the same way.
INVERT_SPACING = "uniform"
INVERT_T_MIN = 0.05


def inversion_floor(t_max: float, steps: int) -> float:
    """The lowest nonzero time of a ``steps``-step inversion grid from ``t_max``: ``t_max /
    steps`` (the trailing grid) while that is above :data:`INVERT_T_MIN`, else that floor (half
    of ``t_max`` for a partial inversion that starts below twice it)."""
    return max(t_max / steps, min(INVERT_T_MIN, t_max / 2))


@dataclass
class Inversion:
    """The noise that reproduces a clip, and how.

    Attributes:
        noise: ``(1, C, T, H, W)`` the DDIM state at diffusion time ``min(strength, t_max)``.
        prompt: the prompt it was inverted under (None: unconditional model).
        steps: DDIM steps of the grid (``sampler`` is always ``"ddim"``).
        guidance: classifier-free guidance scale it reproduces the clip at.
        refine: fixed-point refinement iterations per inverse step.
        cfg_inversion: ``"none"``, ``"negative"`` or ``"nti"`` (see the module docstring).
        strength: start time of the grid (1: from pure noise).
        model: fingerprint of the model's weights (:func:`vidiff.compose.weights_fingerprint`).
        model_name: where that model was loaded from (for messages only).
        frames, height, width, fps: the clip, in pixels and frames per second.
        null_text, null_pooled: per-step unconditional text ``(steps, 1, D)`` and pooled
            vector ``(steps, Dp)`` found by null-text optimisation (``"nti"`` only).
        spacing, t_min: the grid (:func:`vidiff.diffusion.timesteps`); a file written before
            they were recorded was inverted on the ``"trailing"`` grid, which ignores ``t_min``.
    """
    noise: Tensor
    prompt: Optional[str]
    steps: int
    guidance: float
    refine: int
    cfg_inversion: str
    strength: float
    model: str
    model_name: str
    frames: int
    height: int
    width: int
    fps: float
    sampler: str = "ddim"
    spacing: str = "trailing"
    t_min: float = INVERT_T_MIN
    null_text: Optional[Tensor] = field(default=None, repr=False)
    null_pooled: Optional[Tensor] = field(default=None, repr=False)

    # ------------------------------------------------------------------ the file
    def _record(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("noise", "null_text", "null_pooled")}

    def save(self, path: Union[str, Path]) -> Path:
        """Write the noise file atomically (a temporary name, then a rename)."""
        tensors = {"noise": self.noise.detach().float().cpu().contiguous()}
        for name in ("null_text", "null_pooled"):
            value = getattr(self, name)
            if value is not None:
                tensors[name] = value.detach().float().cpu().contiguous()
        metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "record": json.dumps(self._record())}
        return write_file_atomic(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata=metadata))

    @classmethod
    def load(cls, path: Union[str, Path]) -> "Inversion":
        """Read a noise file; ValueError naming the file when it is not a complete one."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"noise file {str(path)!r} does not exist")
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}
        except (SafetensorError, OSError) as e:
            raise ValueError(f"{str(path)!r} is not a readable noise file (corrupt or truncated: {e})") from None
        if metadata.get("format") != FORMAT or "noise" not in tensors:
            raise ValueError(f"{str(path)!r} is a safetensors file but no vidiff noise file "
                             f"(no format {FORMAT!r}; write one with `vidiff invert`)")
        if metadata.get("format_version") != str(FORMAT_VERSION):
            raise ValueError(f"{str(path)!r} has noise-file version {metadata.get('format_version')!r}; "
                             f"this vidiff reads version {FORMAT_VERSION}")
        try:
            record = json.loads(metadata["record"])
            names = {f.name for f in fields(cls)} - {"noise", "null_text", "null_pooled"}
            missing = sorted(n for n in names if n not in record and n not in ("sampler", "spacing", "t_min"))
            if missing:
                raise KeyError(", ".join(missing))
            inversion = cls(noise=tensors["noise"], null_text=tensors.get("null_text"),
                            null_pooled=tensors.get("null_pooled"), **{n: record[n] for n in names if n in record})
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"{str(path)!r}: the noise file's record is incomplete or damaged ({e})") from None
        if inversion.noise.ndim != 5 or inversion.noise.shape[0] != 1:
            raise ValueError(f"{str(path)!r}: noise of shape {tuple(inversion.noise.shape)}, expected (1, C, T, H, W)")
        return inversion

    # ------------------------------------------------------------------ use
    def check_model(self, fingerprint: str, name: Optional[str]) -> None:
        """Refuse a model other than the one this noise came from, naming both."""
        if fingerprint != self.model:
            raise ValueError(f"this noise was inverted with model {self.model_name!r} (fingerprint {self.model}) "
                             f"and cannot be used with model {name!r} (fingerprint {fingerprint}): "
                             "a noise file only reproduces its clip with the model that made it")

    def negatives(self, device=None) -> Optional[list[Conditioning]]:
        """The per-step unconditional conditionings of null-text optimisation (None otherwise)."""
        if self.null_text is None:
            return None
        text = self.null_text.to(device)
        pooled = None if self.null_pooled is None else self.null_pooled.to(device)
        mask = torch.ones(1, text.shape[1], dtype=torch.bool, device=text.device)
        return [Conditioning(text=text[i:i + 1], text_mask=mask,
                             text_pooled=None if pooled is None else pooled[i:i + 1]) for i in range(len(text))]


class StepGuidance:
    """Classifier-free guidance whose negative changes with the sampling step: step ``i``
    (:func:`~vidiff.models.layers.current_sampling_step`) guides away from ``negatives[i]``.
    What a null-text inversion samples with; wrap a guidance-free denoiser in it."""

    def __init__(self, denoiser: Callable, scale: float, negatives: Sequence[Conditioning]):
        self.denoiser, self.scale, self.negatives = denoiser, float(scale), list(negatives)

    def __call__(self, x: Tensor, t: Tensor, cond: Optional[Conditioning] = None) -> Tensor:
        # x: (B, C, T, H, W), t: (B,) -> guided x0_hat (B, C, T, H, W)
        step = min(current_sampling_step() or 0, len(self.negatives) - 1)
        return GuidedDenoiser(self.denoiser, self.scale, negative=self.negatives[step])(x, t, cond)


def null_text_optimisation(denoiser: Callable, cond: Conditioning, null: Conditioning,
                           trajectory: Sequence[Tensor], grid: Tensor, schedule: Schedule, scale: float,
                           iterations: int = NTI_ITERATIONS, lr: float = NTI_LR) -> tuple[Tensor, Optional[Tensor]]:
    """Per-step unconditional text under which guided DDIM follows ``trajectory``.

    Args:
        denoiser: the guidance-free denoiser (``x_t (B, ...), t (B,), cond -> x0_hat``).
        cond: the source prompt's conditioning (batch 1).
        null: the starting unconditional text (``ConditionEmbedder.explicit_null()``).
        trajectory: ``len(grid)`` states of the guidance-1 inversion, at ``grid``'s falling
            times (``trajectory[0]`` the noise, ``trajectory[-1]`` the clean clip).
        grid: the falling DDIM grid (float64).
        scale: the guidance scale to sample at.

    Returns:
        ``null_text (steps, 1, D)`` and ``null_pooled (steps, Dp)`` (None without pooled text).
    """
    text = null.text.detach().clone()
    pooled = None if null.text_pooled is None else null.text_pooled.detach().clone()
    z = trajectory[0]
    texts, pooleds = [], []
    for i in range(len(grid) - 1):
        step = grid[i:i + 2]
        params = [p.requires_grad_(True) for p in (text, pooled) if p is not None]
        optimiser = torch.optim.Adam(params, lr=lr)
        with torch.enable_grad():
            for _ in range(iterations):
                guided = GuidedDenoiser(denoiser, scale, negative=null.replace(text=text, text_pooled=pooled))
                loss = (sample_ddim(guided, z, step, schedule, cond=cond) - trajectory[i + 1]).pow(2).mean()
                if float(loss.detach()) < NTI_TOLERANCE:
                    break
                grads = torch.autograd.grad(loss, params)      # not into the network's .grad
                for p, g in zip(params, grads):
                    p.grad = g
                optimiser.step()
        text, pooled = text.detach(), None if pooled is None else pooled.detach()
        with torch.no_grad():
            guided = GuidedDenoiser(denoiser, scale, negative=null.replace(text=text, text_pooled=pooled))
            z = sample_ddim(guided, z, step, schedule, cond=cond)
        texts.append(text[0].clone())
        if pooled is not None:
            pooleds.append(pooled[0].clone())
    return torch.stack(texts), (torch.stack(pooleds) if pooleds else None)


def check_strength(strength, what: str = "strength") -> float:
    """A strength (a diffusion time) in [0, 1]; ValueError naming the value otherwise."""
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not (
            math.isfinite(strength) and 0.0 <= strength <= 1.0):
        raise ValueError(f"{what} must be in [0, 1] (0 = keep the clip, 1 = from pure noise), got {strength!r}")
    return float(strength)
