"""``VAEConfig``: the architecture and latent normalisation of a :class:`~vidiff.models.vae.VideoVAE`.

A module of its own because both the autoencoder (``vae.py``) and its layers
(``vae_blocks.py``) read it, and the layers must not import the model they build.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

from vidiff.config import ConfigError


@dataclass
class VAEConfig:
    """Architecture and latent normalisation of a :class:`VideoVAE`.

    ``channels`` holds one width per level; each level after the first halves height and
    width, so the spatial factor is ``2 ** (len(channels) - 1)``. The ``log2(temporal_factor)``
    temporal halvings happen at the first levels (where they save the most compute).
    ``scaling_factor`` and ``shift_factor`` map posterior means to unit-variance latents:
    ``z = (mean - shift_factor) * scaling_factor`` (see :meth:`VideoVAE.estimate_latent_scaling`).

    ``temporal_levels`` bounds how far back in time the coders see. Every 3-tap causal temporal
    conv adds two frames of its level's rate to the receptive field, and at the deep levels a
    frame is 2 or 4 input frames, so with every level temporal the last latent of a long clip
    depends on some 70 frames of history (``vae-s``). A model trained on 9-frame windows has
    never seen that much real history, and its later frames degrade on longer clips. With
    ``temporal_levels=N`` only the first ``N`` levels (full resolution first) convolve across
    frames; deeper levels, the middle blocks and the latent convs work frame by frame, and the
    frames of one latent group still meet in the temporal fold of the down/upsampling. None:
    every level is temporal.
    """
    kind: Literal["3d", "2d"] = "3d"
    in_channels: int = 3
    latent_channels: int = 8
    channels: tuple[int, ...] = (64, 128, 256)
    blocks_per_level: int = 2
    temporal_factor: int = 4                  # 1, 2, 4, ... (a power of two)
    mid_attention: bool = True                # per-frame self-attention in the middle blocks
    head_dim: int = 64
    norm: Literal["channel", "group"] = "channel"   # RMS per pixel, or GroupNorm per frame
    norm_groups: int = 32                     # for norm="group"
    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    grad_checkpoint: bool = False
    temporal_levels: Optional[int] = None     # levels with 3-tap causal temporal convs; None = all

    def __post_init__(self):
        self.channels = tuple(self.channels)
        levels = len(self.channels)
        halvings = int(math.log2(self.temporal_factor)) if self.temporal_factor >= 1 else -1
        for ok, msg in (
            (self.kind in ("3d", "2d"), f"kind must be '3d' or '2d', got {self.kind!r}"),
            (levels >= 1 and min(self.channels) >= 1, f"channels: expected positive widths, got {self.channels}"),
            (min(self.in_channels, self.latent_channels, self.blocks_per_level, self.head_dim,
                 self.norm_groups) >= 1, "in_channels, latent_channels, blocks_per_level, head_dim "
                                         "and norm_groups must be >= 1"),
            (halvings >= 0 and 2 ** halvings == self.temporal_factor,
             f"temporal_factor must be a power of two, got {self.temporal_factor}"),
            (halvings <= levels - 1, f"temporal_factor={self.temporal_factor} needs at least "
                                     f"{halvings + 1} levels of channels, got {levels}"),
            (self.temporal_levels is None or 0 <= self.temporal_levels <= levels,
             f"temporal_levels must be None or 0..{levels} (the number of levels), got {self.temporal_levels}"),
            (self.scaling_factor > 0, f"scaling_factor must be positive, got {self.scaling_factor}"),
            (self.norm in ("channel", "group"), f"norm must be 'channel' or 'group', got {self.norm!r}"),
            (self.norm != "group" or all(c % self.norm_groups == 0 for c in self.channels),
             f"every width in channels={self.channels} must be divisible by norm_groups={self.norm_groups}"),
        ):
            if not ok:
                raise ConfigError(f"VAEConfig.{msg}")

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.channels) - 1)

    def mixes_frames(self, level: int) -> bool:
        """Whether the convs of ``level`` (0 = full resolution) convolve across frames."""
        return self.temporal_levels is None or level < self.temporal_levels

    def heads(self, width: int) -> int:
        return max(1, width // self.head_dim)
