"""Denoiser wrappers: a network and its parameterization become ``denoiser(x_t, t, cond) -> x0_hat``,
classifier-free guidance wraps any denoiser, and known frames condition any denoiser by
replacement or reconstruction guidance.

Samplers only ever see these callables, so a new network or an external model is one adapter.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

import torch
from torch import Tensor

from vidiff.diffusion.objectives import PARAMETERIZATIONS, prediction_to_x0
from vidiff.diffusion.schedule import Schedule, broadcast

if TYPE_CHECKING:  # for annotations only: the diffusion core calls Conditioning's methods, never builds one
    from vidiff.conditioning import Conditioning


class NetworkDenoiser:
    """``network(x_t, t, cond) -> prediction`` plus its parameterization, as a denoiser.

    Args:
        network: any callable taking ``(x_t (B, ...), t (B,), cond)`` and returning a
            ``(B, ...)`` prediction of kind ``parameterization``.
        schedule: the schedule the network was trained with.
        parameterization: ``"eps"``, ``"v"``, ``"x0"`` or ``"flow"``.
    """

    def __init__(self, network: Callable, schedule: Schedule, parameterization: str):
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r}; "
                             f"accepted: {list(PARAMETERIZATIONS)}")
        self.network, self.schedule, self.parameterization = network, schedule, parameterization

    def __call__(self, x: Tensor, t: Tensor, cond=None) -> Tensor:
        # x: (B, C, T, H, W), t: (B,) -> x0_hat (B, C, T, H, W)
        pred = self.network(x, t, cond)
        return prediction_to_x0(self.parameterization, pred, x, t, self.schedule)

    @property
    def combines_passes(self) -> bool:
        """Whether the network combines guidance passes itself (``network(..., combine=w)``:
        a U-Net with a pixel head combines before the head)."""
        return bool(getattr(self.network, "combines_passes", False))

    def combined(self, x: Tensor, t: Tensor, cond, weights: list[float]) -> Tensor:
        """The guided ``x0_hat (B, ...)`` of ``n = len(weights)`` stacked passes of ``B`` rows
        (``x (n*B, ...)``, ``t (n*B,)``, every pass at the same ``x_t`` and ``t``, the fully
        conditioned one first), combined by the network itself (``network(..., combine=
        weights)``, see :meth:`UNet3D.forward`). The conversion to ``x0_hat`` is affine in the
        prediction with coefficients set by ``(x_t, t)`` and the weights sum to 1, so it
        applies to the combined prediction as it would to each pass's."""
        b = x.shape[0] // len(weights)
        pred = self.network(x, t, cond, combine=weights)                       # (B, ...)
        return prediction_to_x0(self.parameterization, pred, x[:b], t[:b], self.schedule)


class GuidedDenoiser:
    """Classifier-free guidance (Ho & Salimans 2022) around any denoiser, with separate scales
    for the text and for the known frames (image-to-video wants both).

    Write ``x_full``, ``x_frames`` and ``x_none`` for the denoiser's ``x0_hat`` on the full
    condition ``c``, on ``c`` without its text (``c.null(text=True)``) and on ``c`` without text
    nor known frames (``c.null(text=True, frames=True)``). The guided prediction is::

        x_none + frame_scale * (x_frames - x_none) + scale * (x_full - x_frames)

    Why: the score of ``p(x | frames, text)`` telescopes exactly into
    ``grad log p(x) + [grad log p(x | frames) - grad log p(x)]
    + [grad log p(x | frames, text) - grad log p(x | frames)]``: an unconditional score, what
    the frames add, and what the text adds on top of the frames. Guidance multiplies the two
    differences by their own scales (the image-and-text guidance of InstructPix2Pix). At a
    fixed ``x_t`` the score is ``(alpha x0_hat - x_t) / sigma**2``, affine in ``x0_hat``, and
    the three weights ``1 - frame_scale``, ``frame_scale - scale`` and ``scale`` sum to 1, so
    the ``x_t`` terms cancel and the same combination applies to ``x0_hat`` (or ``eps``, ``v``).

    Passes, all run as one batched call on ``Conditioning.cat`` (rows stacked in the order
    full, frames-only, none):

    * ``frame_scale`` None (the default) or 1, or ``cond`` without known frames: the frames
      stay in every pass and the formula is the two-pass ``x_frames + scale * (x_full -
      x_frames)``; a single pass when ``scale == 1`` too (or ``cond`` is None).
    * otherwise three passes. A ``cond`` without text (no ``text`` nor ``text_pooled``) and no
      ``negative`` has ``x_frames == x_full``, and that pass is skipped.

    ``negative`` (a Conditioning from a negative prompt, of batch ``B`` or 1) stands in for the
    null text wherever a pass has no text: those passes are ``cond.with_text_of(negative)``
    (and its ``.null(text=False, frames=True)``), so known frames, frame stride, low-resolution
    clip and control stay in them.

    A denoiser with ``combines_passes`` (a network with a pixel head, see
    :meth:`UNet3D.forward`) is handed the formula's weights and sums the passes itself
    (:meth:`NetworkDenoiser.combined`), except under ``rescale``, which needs ``x_full``.

    ``rescale`` (phi, Lin et al. 2023) pulls the guided prediction's per-sample standard
    deviation back towards that of ``x_full``, ``phi * x_cfg * std(x_full) / std(x_cfg) +
    (1 - phi) * x_cfg``, which undoes the over-saturation that large scales cause.

    Args:
        denoiser: ``denoiser(x_t (B, ...), t (B,), cond) -> x0_hat (B, ...)``.
        scale: text guidance scale (1 = no text guidance).
        frame_scale: known-frame guidance scale (None = no frame guidance).
        rescale: guidance rescale phi in ``[0, 1]``.
        negative: negative-prompt conditioning (None = the network's null text).
    """

    def __init__(self, denoiser: Callable, scale: float, *, frame_scale: Optional[float] = None,
                 rescale: float = 0.0, negative: Optional[Conditioning] = None):
        if not 0.0 <= rescale <= 1.0:
            raise ValueError(f"guidance rescale must be in [0, 1], got {rescale}")
        self.denoiser, self.scale, self.rescale = denoiser, float(scale), float(rescale)
        self.frame_scale = None if frame_scale is None else float(frame_scale)
        self.negative = negative

    def passes(self, cond: Optional[Conditioning]) -> dict[str, Optional[Conditioning]]:
        """The conditionings this guidance evaluates for ``cond``, by role, in batch order:
        ``"full"`` always, then ``"frames"`` (no text) and ``"none"`` (no text, no frames)
        where the formula needs them."""
        if cond is None:
            return {"full": None}
        frames = self.frame_scale not in (None, 1.0) and cond.mask is not None
        has_text = self.negative is not None or cond.text is not None or cond.text_pooled is not None
        no_text = cond.with_text_of(self.negative) if self.negative is not None else cond.null(text=True)
        passes = {"full": cond}
        if has_text and (frames or self.scale != 1.0):
            passes["frames"] = no_text
        if frames:
            passes["none"] = no_text.null(text=False, frames=True)
        return passes

    def weights(self, passes: dict) -> list[float]:
        """The formula's weight on each of :meth:`passes` (in its order); they sum to 1."""
        w = {"full": self.scale, "frames": 1.0 - self.scale, "none": 0.0}
        if "none" in passes:
            w["frames"] -= 1.0 - self.frame_scale
            w["none"] = 1.0 - self.frame_scale
        if "frames" not in passes:   # no text pass: x_frames is x_full, the text changes nothing
            w["full"] += w["frames"]
        return [w[role] for role in passes]

    def __call__(self, x: Tensor, t: Tensor, cond: Optional[Conditioning] = None) -> Tensor:
        # x: (B, ...), t: (B,) -> guided x0_hat (B, ...)
        if cond is not None:
            cond.check_batch(x.shape[0])
        passes = self.passes(cond)
        if len(passes) == 1:
            return self.denoiser(x, t, cond)
        n, (first, *rest) = len(passes), passes.values()
        weights = self.weights(passes)
        if self.rescale == 0 and getattr(self.denoiser, "combines_passes", False):
            return self.denoiser.combined(torch.cat([x] * n), torch.cat([t] * n), first.cat(*rest),
                                          weights)                                # (B, ...)
        out = self.denoiser(torch.cat([x] * n), torch.cat([t] * n), first.cat(*rest)).chunk(n)  # n x (B, ...)
        guided = sum(w * pass_ for w, pass_ in zip(weights, out))
        if self.rescale > 0:
            dims = tuple(range(1, x.ndim))
            ratio = out[0].std(dim=dims) / guided.std(dim=dims).clamp(min=1e-12)  # x_full's std / guided's (B,)
            guided = self.rescale * guided * broadcast(ratio, guided) + (1 - self.rescale) * guided
        return guided


# How known frames (``cond.known`` where ``cond.mask == 1``) condition sampling.
FRAME_METHODS = ("mask", "guidance", "replace")
# Reconstruction guidance weight: measured best of 0.3 / 1 / 3 on the shapes model's frame tasks
# (docs/benchmarks.md, "Frame tasks"); the value exact for white unit-variance data is 1.
DEFAULT_GUIDANCE_WEIGHT = 0.3


class KnownFramesDenoiser:
    """Known frames for any denoiser, also one trained without masks.

    Both methods first overwrite the known part of ``x_t`` with the known clip noised to
    ``t``, ``alpha(t) known + sigma(t) noise`` (``noise``: the sample's initial noise, fixed, so
    the known part stays on one forward trajectory), and paste ``known`` into the returned
    ``x0_hat``, so the sampler's next state agrees with the known pixels.

    * ``"replace"``: that alone, the replacement baseline (Song et al. 2021). The unknown part
      only sees the known part through the noisy ``x_t``, so it drifts from it at low noise.
    * ``"guidance"``: reconstruction guidance (Ho et al. 2022). The unknown part of ``x0_hat``
      also moves against the gradient of the known part's error,
      ``x0_hat - weight * (alpha^2 + sigma^2) / alpha * grad_{x_t} 1/2 ||mask (known - x0_hat)||^2``.
      Why this scale: by Tweedie, ``(sigma^2 / alpha) d x0_hat / d x_t`` is the posterior
      covariance ``P`` of ``x0`` given ``x_t``, and the exact Gaussian conditional mean moves
      the unknown part by ``P_uk P_kk^-1`` times the known residual. The gradient step gives
      ``P_uk`` times it; for data of unit variance and no correlation ``P_kk`` is
      ``sigma^2 / (alpha^2 + sigma^2)``, so ``weight = 1`` is the exact step there. Data of
      lower variance or correlated known pixels need a larger weight (Ho et al. use large
      ones); ``tests/test_frame_guidance.py`` checks the formula against the exact
      conditional mean of Gaussian data.

    The inner denoiser gets ``cond`` without ``known``/``mask``/``known_noise``, so it needs no
    known-frame inputs. (The ``"mask"`` method is no wrapper: a mask-trained network consumes
    ``cond.known`` itself.)

    Args:
        denoiser: ``denoiser(x_t (B, ...), t (B,), cond) -> x0_hat (B, ...)``.
        schedule: the denoiser's schedule.
        method: ``"replace"`` or ``"guidance"``.
        noise: ``(B, ...)`` the noise of the known part's forward trajectory.
        weight: reconstruction guidance weight (``"guidance"`` only).
    """

    def __init__(self, denoiser: Callable, schedule: Schedule, method: str, noise: Tensor,
                 weight: float = DEFAULT_GUIDANCE_WEIGHT):
        if method not in ("replace", "guidance"):
            raise ValueError(f"KnownFramesDenoiser: method must be 'replace' or 'guidance', got {method!r}")
        if not weight >= 0:
            raise ValueError(f"reconstruction guidance weight must be >= 0, got {weight!r}")
        self.denoiser, self.schedule, self.method = denoiser, schedule, method
        self.noise, self.weight = noise, float(weight)

    def __call__(self, x: Tensor, t: Tensor, cond: Optional[Conditioning] = None) -> Tensor:
        # x: (B, C, T, H, W), t: (B,) -> x0_hat (B, C, T, H, W) with the known part pasted in
        if cond is None or cond.mask is None:
            return self.denoiser(x, t, cond)
        known, mask = cond.known.to(x.dtype), cond.mask.to(x.dtype)              # (B, C, ...), (B, 1, ...)
        inner = cond.replace(known=None, mask=None, known_noise=None)
        inner = inner if inner.batch_size is not None else None
        alpha, sigma = (broadcast(c, x) for c in self.schedule.alpha_sigma(t.to(x.dtype)))
        x = mask * (alpha * known + sigma * self.noise.to(x.dtype)) + (1 - mask) * x
        if self.method == "replace" or self.weight == 0:
            x0 = self.denoiser(x, t, inner)
        else:
            with torch.enable_grad():
                x_in = x.detach().requires_grad_(True)
                x0 = self.denoiser(x_in, t, inner)
                error = 0.5 * (mask * (known - x0)).pow(2).sum()
                grad, = torch.autograd.grad(error, x_in)
            scale = (alpha.pow(2) + sigma.pow(2)) / alpha.clamp(min=1e-4)
            x0 = x0.detach() - self.weight * scale * grad
        return mask * known + (1 - mask) * x0
