"""ControlNet for video: per-frame structure maps steer a frozen denoiser through its skips.

Following ControlNet (Zhang et al., 2023), the control branch is a trainable copy of the
base denoiser's encoder, started from the base's weights, whose outputs return to the base
through projections initialised to zero:

* **UNet3D base**: the copy is the whole encoder and middle block. Its skip tensors and middle
  output go through zero ``1x1x1`` convolutions and are added to the base's skips and middle
  output (:meth:`UNet3D.forward`'s ``residuals``), so control enters the decoder only.
* **VideoDiT base**: the copy is the first ``blocks`` transformer blocks (the CogVideoX
  control recipe: a transformer has no encoder, and its early blocks carry the layout). Each
  copied block's output goes through a zero linear layer and is added to the output of the
  same block of the base.

The maps ``(B, C_ctrl, T, H, W)`` in ``[-1, 1]`` enter the copy through a small per-frame
stem (the "hint" network) that brings them to the copy's first feature grid, itself ending in
zero. Why zeros at both ends: at initialisation a ControlNet adds exactly nothing, so the
controlled model *is* the base model, and training starts from its quality instead of from a
damaged copy; gradients still reach every layer because the zero layers' own gradients are not
zero.

:class:`ControlledNetwork` is the base and a ControlNet as one network with the base's
interface ``(x_t, t, cond) -> prediction``: it reads ``cond.control``, scales the residuals by
``scale`` and applies them only for diffusion times inside its sampling range, so samplers,
guidance and pipelines need nothing new.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from vidiff.config import ConfigError
from vidiff.conditioning import Conditioning
from vidiff.models.dit import VideoDiT, patchify
from vidiff.models.layers import zero_module
from vidiff.models.unet import UNet3D

# Control types and the channels of their maps (None: set by the run, ``control_channels``).
CONTROL_TYPES: dict[str, Optional[int]] = {"silhouette": 1, "edges": 1, "depth": 1, "custom": None}


@dataclass
class ControlNetConfig:
    """Architecture of a :class:`ControlNet`.

    ``base_arch`` and ``base`` are the base denoiser's architecture name and config (filled in
    from the base when a run builds the ControlNet): the copy has exactly the base's layers.
    ``control`` is the kind of maps it was trained on (:data:`CONTROL_TYPES`), with
    ``control_channels`` channels; ``hint_channels`` the width of the maps' stem; ``blocks``
    how many blocks a DiT copy takes (None: half the base's depth).
    """
    base_arch: str = "unet"
    base: dict = field(default_factory=dict)
    control: str = "silhouette"
    control_channels: int = 1
    hint_channels: int = 32
    blocks: Optional[int] = None

    def __post_init__(self):
        if self.control not in CONTROL_TYPES:
            raise ConfigError(f"control type {self.control!r} is not one of {list(CONTROL_TYPES)}")
        wanted = CONTROL_TYPES[self.control]
        if wanted is not None and self.control_channels != wanted:
            raise ConfigError(f"control type {self.control!r} has {wanted}-channel maps, "
                              f"not control_channels={self.control_channels}")
        if self.control_channels < 1 or self.hint_channels < 1:
            raise ConfigError(f"control_channels and hint_channels must be >= 1, got "
                              f"{self.control_channels}, {self.hint_channels}")
        if self.base_arch not in ("unet", "dit"):
            raise ConfigError(f"a ControlNet copies a 'unet' or 'dit' base, not {self.base_arch!r}")
        if self.blocks is not None and self.blocks < 1:
            raise ConfigError(f"blocks must be >= 1 (or unset: half the base's depth), got {self.blocks}")


class ControlNet(nn.Module):
    """``(x (B, C, T, H, W), t (B,), cond with cond.control) -> residuals`` for the base.

    Args:
        config: its :class:`ControlNetConfig`.
        backbone: a freshly built network of the base's architecture and config; the ControlNet
            keeps the part it copies (:func:`vidiff.models.registry.build_controlnet` builds it).
    """

    def __init__(self, config: ControlNetConfig, backbone: nn.Module):
        super().__init__()
        self.config = cfg = config
        c_in = cfg.control_channels
        if isinstance(backbone, UNet3D):
            # Only the encoder and middle block are copied: the decoder would go unused.
            backbone.up, backbone.norm_out, backbone.conv_out = nn.ModuleList(), None, None
            backbone.pixel_head = None
            p = backbone.config.patch
            self.hint = nn.Sequential(
                nn.Conv2d(c_in * p * p, cfg.hint_channels, 3, padding=1), nn.SiLU(),
                nn.Conv2d(cfg.hint_channels, cfg.hint_channels, 3, padding=1), nn.SiLU(),
                zero_module(nn.Conv2d(cfg.hint_channels, backbone.skip_channels[0], 3, padding=1)))
            widths = list(backbone.skip_channels) + [backbone.skip_channels[-1]]
            self.zeros = nn.ModuleList(zero_module(nn.Conv3d(c, c, 1)) for c in widths)
        elif isinstance(backbone, VideoDiT):
            depth = backbone.config.depth
            blocks = cfg.blocks or max(1, depth // 2)
            if blocks > depth:
                raise ConfigError(f"blocks={blocks} is more than the base's depth {depth}")
            backbone.blocks, backbone.final = backbone.blocks[:blocks], None
            c = backbone.config
            D = c.hidden
            self.hint = nn.Sequential(
                nn.Linear(c_in * c.patch_t * c.patch * c.patch, cfg.hint_channels), nn.SiLU(),
                zero_module(nn.Linear(cfg.hint_channels, D)))
            self.zeros = nn.ModuleList(zero_module(nn.Linear(D, D)) for _ in range(blocks))
        else:
            raise ConfigError(f"a ControlNet copies a UNet3D or a VideoDiT, not {type(backbone).__name__}")
        self.copy = backbone

    def load_base(self, base: nn.Module) -> None:
        """Start the copy from the base's weights (what it does not copy is skipped)."""
        own = self.copy.state_dict()
        self.copy.load_state_dict({k: v for k, v in base.state_dict().items() if k in own}, strict=True)

    def check_control(self, x: Tensor, control: Optional[Tensor]) -> None:
        """ValueError unless ``control`` is ``(B, C_ctrl, T, H, W)`` for ``x (B, C, T, H, W)``."""
        B, _, T, H, W = x.shape
        expected = (B, self.config.control_channels, T, H, W)
        if control is None:
            raise ValueError(f"a ControlNet needs cond.control {expected}")
        if tuple(control.shape) != expected:
            raise ValueError(f"control maps {tuple(control.shape)} must be {expected} "
                             f"({self.config.control} maps with {self.config.control_channels} channel(s), "
                             "one per frame of the clip)")

    def forward(self, x: Tensor, t: Tensor, cond: Conditioning) -> list[Tensor]:
        """Residuals for the base: as :meth:`UNet3D.residual_shapes` (``(B, C_i, T, H_i, W_i)``)
        or the first ``blocks`` of :meth:`VideoDiT.residual_shapes` (``(B, N, D)``)."""
        control = cond.control if cond is not None else None
        self.check_control(x, control)
        plain = cond.replace(control=None)
        control = control.to(x.dtype)                                           # (B, Cc, T, H, W)
        if isinstance(self.copy, UNet3D):
            B, Cc, T, H, W = control.shape
            maps = control.transpose(1, 2).reshape(B * T, Cc, H, W)             # (B*T, Cc, H, W)
            if self.copy.config.patch > 1:
                maps = F.pixel_unshuffle(maps, self.copy.config.patch)          # (B*T, Cc p^2, H/p, W/p)
            hint = self.hint(maps)                                              # (B*T, C0, H/p, W/p)
        else:
            c = self.copy.config
            hint = self.hint(patchify(control, c.patch, c.patch_t))            # (B, N, D)
        features = self.copy.encode(x, t, plain, hint=hint)
        return [zero(f) for zero, f in zip(self.zeros, features)]


def check_span(span: Sequence[float], text=None) -> tuple[float, float]:
    """A control range ``(start, end)`` as floats; ValueError unless ``0 <= start < end <= 1``
    (``text``: how the user wrote it, for the message)."""
    start, end = (float(v) for v in span)
    if not 0.0 <= start < end <= 1.0:
        shown = text if text is not None else f"{start:g},{end:g}"
        raise ValueError(f"control range {shown!r} must satisfy 0 <= START < END <= 1 (e.g. 0,0.6)")
    return start, end


class ControlledNetwork(nn.Module):
    """A base denoiser steered by a ControlNet, with the base's interface.

    ``forward(x, t, cond)`` adds ``scale`` times the ControlNet's residuals for the rows whose
    diffusion time lies in the sampling range ``span = (start, end)``: fractions of the way
    from noise to clean, so ``(0, 0.6)`` applies control for ``t`` from 1 down to 0.4 (the
    first 60% of a sampling run) and lets the base finish the details alone. A call without
    ``cond.control`` is the base alone.
    """

    def __init__(self, base: nn.Module, controlnet: ControlNet, scale: float = 1.0,
                 span: Sequence[float] = (0.0, 1.0)):
        super().__init__()
        if isinstance(scale, bool) or not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale >= 0):
            raise ValueError(f"control scale must be a finite number >= 0, got {scale!r}")
        self.base, self.controlnet, self.scale, self.span = base, controlnet, float(scale), check_span(span)

    @property
    def combines_passes(self) -> bool:
        """Whether :meth:`forward` takes ``combine`` (the base's, see :meth:`UNet3D.forward`)."""
        return bool(getattr(self.base, "combines_passes", False))

    def forward(self, x: Tensor, t: Tensor, cond: Optional[Conditioning] = None,
                combine: Optional[Sequence[float]] = None) -> Tensor:
        # x: (B, C, T, H, W), t: (B,) -> (B, C_out, T, H, W), or (B / n, ...) with n weights to combine
        extra = {} if combine is None else {"combine": combine}
        if cond is None or cond.control is None:
            return self.base(x, t, cond, **extra)
        plain = cond.replace(control=None)
        progress = 1.0 - t
        on = (progress >= self.span[0] - 1e-6) & (progress <= self.span[1] + 1e-6)   # (B,)
        if self.scale == 0.0 or not bool(on.any()):
            return self.base(x, t, plain, **extra)
        weight = on.to(x.dtype) * self.scale                                    # (B,)
        residuals = [r * weight.view(-1, *([1] * (r.ndim - 1))) for r in self.controlnet(x, t, cond)]
        return self.base(x, t, plain, residuals, **extra)


CONTROLNET_MODELS: dict[str, ControlNetConfig] = {
    # The ControlNet recipe: a full copy of a U-Net's encoder, half of a DiT's blocks.
    "controlnet": ControlNetConfig(),
}
