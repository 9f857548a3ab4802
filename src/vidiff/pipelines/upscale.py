"""Spatial super-resolution: the ``upscale`` task of a super-resolution stage.

A stage (``kind: upscale``, e.g. the shipped ``shapes-sr``) is a denoiser whose network also
reads a low-resolution clip (``Conditioning.low_res``), upsampled to its output grid. It was
trained on clips box-downsampled by its ``scale`` with the input noise-augmented to a random
diffusion time told to the network (``low_res_noise``). At sampling the caller picks that
time, ``noise_level``: 0 trusts the input exactly; a little (the default 0.1) lets the stage
repair what an earlier stage got wrong instead of copying it.

Memory stays flat: clips longer than the stage's training length are sampled window by window,
and with ``tile`` large frames tile by tile, through one :class:`~vidiff.diffusion.TiledDenoiser`
that blends the overlapping predictions at every step (so no seams), inside the pipeline's one
sampling core.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from vidiff.conditioning import Conditioning
from vidiff.diffusion import TiledDenoiser
from vidiff.pipelines.frames import Clip, clip_tensor
from vidiff.video import Video

DEFAULT_NOISE_LEVEL = 0.1       # diffusion time of the input's noise augmentation at sampling
LOW_RES_NOISE_SEED = 104_729    # the input's augmentation noise draws from seed + this


def check_stage_options(trained: int, scale: Optional[int], noise_level, what: str) -> None:
    """ValueError unless ``scale`` (None: the trained one) is the stage's ``trained`` scale and
    ``noise_level`` is a diffusion time in [0, 1]; ``what`` names the stage in the message."""
    if scale is not None and scale != trained:
        raise ValueError(f"scale {scale!r}: {what} was trained for x{trained} only")
    if not (isinstance(noise_level, (int, float)) and 0.0 <= noise_level <= 1.0):
        raise ValueError(f"noise level must be a diffusion time in [0, 1], got {noise_level!r}")


class UpscaleTasks:
    """The super-resolution task of :class:`~vidiff.pipelines.VideoPipeline` (mixed into it)."""

    @property
    def upscale_factor(self) -> Optional[int]:
        """The scale this model was trained to upscale by (None: not a super-resolution stage)."""
        if not getattr(getattr(self.network, "config", None), "low_res", False):
            return None
        return int(self.run_config.upscale.scale)

    def check_upscale(self, scale: Optional[int], noise_level: float) -> int:
        """The scale to use (None: the trained one); ValueError for a model that is not a stage,
        another scale, or a noise level outside [0, 1]."""
        trained = self.upscale_factor
        if trained is None:
            raise ValueError(f"{self.source or 'this model'} is not a super-resolution stage (it has no "
                             "low-resolution input): use one trained with kind: upscale, e.g. shapes-sr")
        check_stage_options(trained, scale, noise_level, self.source or "this stage")
        return trained

    @torch.no_grad()
    def upscale(self, video: Clip, scale: Optional[int] = None, noise_level: float = DEFAULT_NOISE_LEVEL,
                prompt: Optional[str] = None, seed: int = 0, steps: Optional[int] = None,
                sampler: Optional[str] = None, guidance: Optional[float] = None, tile: Optional[int] = None,
                progress: bool = False, callback=None) -> Video:
        """``video`` at ``scale`` times its width and height, the same frames and frame rate.

        Args:
            video: a :class:`Video`, uint8 ``(T, h, w, 3)`` array or float ``(3, T, h, w)`` in
                [-1, 1]; any length (longer than the stage's window: window by window).
            scale: the factor (None: the stage's; another one is refused).
            noise_level: diffusion time ``[0, 1]`` of the noise added to the input before the
                stage sees it (noise-conditioning augmentation).
            prompt: the video's prompt, for a text-conditioned stage (required there, refused
                by a stage without text).
            seed: the seed of the sample's noise and of the input's augmentation noise.
            steps, sampler, guidance: sampling (None: what the stage's run config records).
            tile: tile side in *input* pixels for frames larger than the stage's training input
                (None: the whole frame, which is refused above the training size).

        Returns:
            the upscaled :class:`Video`.
        """
        factor = self.check_upscale(scale, noise_level)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        low = clip_tensor(video, "the video to upscale").to(self.device)           # (3, T, h, w)
        _, T, h, w = low.shape
        H, W = h * factor, w * factor
        most = (self.height // factor, self.width // factor)
        # Tiles start on whole low-resolution pixels and on the network's coarsest grid.
        patch = math.lcm(factor, getattr(self.network, "size_multiple", 1))
        if tile is None:
            if h > most[0] or w > most[1]:
                raise ValueError(f"a {w}x{h} video is larger than {self.source or 'this stage'} takes in one "
                                 f"piece ({most[1]}x{most[0]}): pass tile={min(most)} (--tile) to upscale it "
                                 "tile by tile")
            out_tile, overlap = None, 0
        else:
            if isinstance(tile, bool) or not isinstance(tile, int) or not 1 <= tile <= min(most) \
                    or (tile * factor) % patch:
                raise ValueError(f"tile must be a whole number of input pixels in [1, {min(most)}] (the "
                                 f"stage's training input) that makes a multiple of {patch} output pixels, "
                                 f"got {tile!r}")
            out_tile = tile * factor
            overlap = patch * (out_tile // (4 * patch))        # a quarter of the tile, on whole patches
        window = self.frames if T > self.frames else None
        # The network sees one window of one tile at a time: that piece must fit it.
        self.network.check_shape((1, self.channels, min(T, self.frames), min(H, out_tile or H), min(W, out_tile or W)))
        steps, sampler, guidance = self.sampling(steps, sampler, guidance)     # None: the stage's own
        level = torch.tensor([float(noise_level)], device=self.device)
        if noise_level > 0:
            g = torch.Generator().manual_seed(seed + LOW_RES_NOISE_SEED)
            eps = torch.randn(low[None].shape, generator=g).to(self.device)
            low = self.schedule.add_noise(low[None], eps, level)[0]
        cond = Conditioning(low_res=low[None], low_res_noise=level)            # (1, 3, T, h, w)
        if self.text_encoder is not None:
            if prompt is None:
                raise ValueError("this stage is text-conditioned: give the prompt the video was made from")
            cond = self.encode([prompt]).replace(low_res=cond.low_res, low_res_noise=level)
        elif prompt is not None:
            raise ValueError("this stage is not text-conditioned: upscale without a prompt")

        def wrap(denoiser):
            return TiledDenoiser(denoiser, frames=window, frame_overlap=self.frames // 4 if window else 0,
                                 tile=out_tile, tile_overlap=overlap, multiple=patch)
        x0 = self._run(cond, (self.channels, T, H, W), [seed], progress, callback, steps=steps, sampler=sampler,
                       guidance=guidance, wrap=wrap)
        return Video.from_tensor(x0[0].float().cpu(), fps=video.fps if isinstance(video, Video) else self.fps)
