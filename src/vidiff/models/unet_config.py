"""``UNetConfig``: the architecture of a :class:`~vidiff.models.unet.UNet3D`.

A module of its own because both the network (``unet.py``) and its blocks
(``unet_blocks.py``) read it, and the blocks must not import the network they build.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from vidiff.config import ConfigError
from vidiff.models.condition import check_reference_fields


#################################################################################
#                                    Config                                     #
#################################################################################


@dataclass
class UNetConfig:
    """Architecture of a :class:`UNet3D`.

    Attention levels are tuples of level indices (0 = full resolution); negative indices
    count from the lowest resolution (``-1``), so ``(-1,)`` survives a change of ``channels``.
    Cross-attention layers exist only when ``text_dim`` is set (None = unconditional).
    """
    in_channels: int = 3
    out_channels: Optional[int] = None        # None: same as in_channels
    channels: tuple[int, ...] = (64, 128, 256, 256)
    blocks_per_level: int = 2
    spatial_attention: tuple[int, ...] = (-2, -1)
    cross_attention: tuple[int, ...] = (-2, -1)
    temporal_attention: tuple[int, ...] = (-2, -1)
    # Levels whose attention block also attends over every token of the clip at once (all
    # frames and positions, 3D rotary positions), after the factorized layers. It starts as
    # the identity (zero out-projection), so `train.init_from` can add it to a trained network
    # at a level that already has an attention block (elsewhere the block's MLP is new too).
    full_attention: tuple[int, ...] = ()
    mid_attention: bool = True                # attention (every enabled kind) in the middle block
    head_dim: int = 64                        # heads = channels // head_dim (at least 1)
    num_heads: Optional[int] = None           # instead: this many heads at every level
    ff_mult: float = 4.0                      # MLP width of attention blocks (0: no MLP)
    text_dim: Optional[int] = None
    pooled_dim: Optional[int] = None
    known_frames: bool = False                # known/mask as extra input channels
    known_in_place: bool = False              # known pixels also replace x_t where known
    frame_stride: bool = False                # embed cond.frame_stride
    frame_embedding: bool = False             # add an absolute frame-index embedding at the input
    frame_conditioning: bool = False          # per-frame FiLM: condition x frame index through an MLP
    position_embedding: bool = False          # add a 2D sinusoidal pixel-position embedding at the input
    low_res: bool = False                     # super-resolution: upsampled low-res clip as input
    reference_tokens: int = 0                 # > 0: a reference image adds this many cross-attention tokens
    reference_encoder: str = "builtin"        # which makes them: "builtin" (trained) or "clip" (frozen + projection)
    reference_encoder_path: Optional[str] = None   # clip: a local CLIP vision model folder
    reference_encoder_dtype: str = "float32"  # clip: its parameter dtype
    patch: int = 1                            # space-to-depth stem: compute at H/patch x W/patch
    pixel_head: int = 0                       # > 0: width of a full-resolution output head (for patch > 1)
    conv3d: bool = False                      # full k x 3 x 3 convs instead of pseudo-3D
    temporal_kernel: int = 3
    norm_groups: int = 32
    emb_dim: Optional[int] = None             # None: 4 * channels[0]
    dropout: float = 0.0
    grad_checkpoint: bool = False

    def __post_init__(self):
        self.channels = tuple(self.channels)
        levels = len(self.channels)
        for ok, msg in (
            (levels > 0 and min(self.channels) >= 1, f"channels: expected one positive width per "
                                                     f"level, got {self.channels}"),
            (self.in_channels >= 1 and (self.out_channels is None or self.out_channels >= 1),
             f"in_channels/out_channels must be positive, got {self.in_channels}/{self.out_channels}"),
            (self.blocks_per_level >= 1, f"blocks_per_level must be >= 1, got {self.blocks_per_level}"),
            (self.patch >= 1, f"patch must be >= 1, got {self.patch}"),
            (self.pixel_head >= 0, f"pixel_head must be >= 0 (0: none), got {self.pixel_head}"),
            (self.temporal_kernel >= 1 and self.temporal_kernel % 2 == 1,
             f"temporal_kernel must be odd and >= 1, got {self.temporal_kernel}"),
            (0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}"),
            (self.ff_mult >= 0, f"ff_mult must be >= 0, got {self.ff_mult}"),
            (min(self.head_dim, self.norm_groups, self.num_heads or 1) >= 1 and self.num_heads != 0,
             "head_dim, num_heads and norm_groups must be >= 1"),
            *((getattr(self, n) is None or getattr(self, n) >= 1,
               f"{n} must be positive or null, got {getattr(self, n)}") for n in ("text_dim", "pooled_dim", "emb_dim")),
        ):
            if not ok:
                raise ConfigError(f"UNetConfig.{msg}")
        check_reference_fields(self, "UNetConfig")
        bad = [c for c in self.channels if c % self.norm_groups]
        if bad:
            raise ConfigError(f"UNetConfig.channels: every width must be divisible by "
                              f"norm_groups={self.norm_groups}; {bad} are not")
        for name in ("spatial_attention", "cross_attention", "temporal_attention", "full_attention"):
            setattr(self, name, tuple(getattr(self, name)))
            out = [v for v in getattr(self, name) if not -levels <= v < levels]
            if out:
                raise ConfigError(f"UNetConfig.{name}: levels {out} do not exist; with {levels} "
                                  f"levels use 0..{levels - 1} or -{levels}..-1")
        by = f"num_heads={self.num_heads}" if self.num_heads else f"head_dim={self.head_dim}"
        for level, c in enumerate(self.channels):
            mid = self.mid_attention and level == levels - 1
            uneven = c % self.num_heads if self.num_heads else c >= self.head_dim and c % self.head_dim
            if (any(self.attends(level)) or mid) and uneven:
                raise ConfigError(f"UNetConfig.{by.split('=')[0]}: width {c} at level {level} does "
                                  f"not split into heads of equal width by {by}")
            if (any(self.attends(level)[2:]) or mid) and (c // self.heads(c)) % 2:
                raise ConfigError(f"UNetConfig.{by.split('=')[0]}: temporal or full attention at level {level} "
                                  f"needs an even head width for rotary positions, got {c // self.heads(c)}")

    @property
    def levels(self) -> int:
        return len(self.channels)

    @property
    def outputs(self) -> int:
        return self.out_channels or self.in_channels

    def heads(self, width: int) -> int:
        return self.num_heads or max(1, width // self.head_dim)

    def attends(self, level: int) -> tuple[bool, bool, bool, bool]:
        """(spatial, cross, temporal, full) attention at ``level`` (cross only with text)."""
        def has(levels):
            return any(v % self.levels == level for v in levels)
        return (has(self.spatial_attention), has(self.cross_attention) and self.text_dim is not None,
                has(self.temporal_attention), has(self.full_attention))
