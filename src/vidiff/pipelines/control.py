"""Control: generation that follows per-frame structure maps, through a ControlNet.

``pipe.generate(prompt, control=MAPS, control_type="silhouette")`` samples a clip whose layout
follows one map per frame. The maps come as a map video (or a ``(C, T, H, W)`` tensor in
``[0, 1]``), or are extracted from a video (``control_from=``) by the built-in extractors of
:mod:`vidiff.data.control`. A :class:`~vidiff.models.controlnet.ControlledNetwork` joins the
pipeline's network and the ControlNet for the run, so sampling goes through the pipeline's one
sampling core with nothing else changed.

A ControlNet is tied to the base it was trained over: its checkpoint records the base's weight
fingerprint, and a ControlNet for another base is refused (its residuals would be corrections
to a function this model does not compute).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor

from vidiff.compose import load_controlnet
from vidiff.compose.shipped import resolve_model
from vidiff.data.control import ControlError, extract, maps_from_video
from vidiff.models.controlnet import CONTROL_TYPES, ControlNet, check_span
from vidiff.pipelines.frames import clip_tensor
from vidiff.video import Video

# The shipped ControlNet each control type uses when none is named (docs/models-shipped.md).
DEFAULT_CONTROLNETS = {"silhouette": "shapes-silhouette", "edges": "shapes-edges"}
ControlNetLike = Union[str, Path, ControlNet, None]


def parse_control_range(text: str) -> tuple[float, float]:
    """``"START,END"`` (fractions of the sampling run, 0 = pure noise, 1 = clean) as a pair;
    ValueError names the text unless ``0 <= START < END <= 1``."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        span = [float(p) for p in parts]
        if len(span) != 2:
            raise ValueError
    except ValueError:
        raise ValueError(f"control range {text!r} must be START,END, two numbers with "
                         "0 <= START < END <= 1 (e.g. 0,0.6)") from None
    return check_span(span, text)


class ControlTasks:
    """Methods :class:`~vidiff.pipelines.video.VideoPipeline` gains for ControlNet control."""

    def controlnet(self, controlnet: ControlNetLike = None, control_type: Optional[str] = None) -> ControlNet:
        """The ControlNet to use: a loaded one, a checkpoint directory or a shipped name, or
        (None) the shipped default of ``control_type``. Checked against this model's weights
        and against ``control_type``; ValueError names what does not match."""
        if control_type is not None and control_type not in CONTROL_TYPES:
            raise ValueError(f"unknown control type {control_type!r}; accepted: {list(CONTROL_TYPES)}")
        if controlnet is None:
            if control_type is None:
                raise ValueError("give a control type (silhouette, edges, depth, custom) or a ControlNet")
            if control_type not in DEFAULT_CONTROLNETS:
                raise ValueError(f"no shipped ControlNet for control type {control_type!r}: name one "
                                 "(--controlnet NAME_OR_DIR), trained with vidiff train over this model")
            controlnet = DEFAULT_CONTROLNETS[control_type]
        if not isinstance(controlnet, ControlNet):
            cache = self.__dict__.setdefault("_controlnets", {})
            key = str(controlnet)
            if key not in cache:
                cache[key] = load_controlnet(resolve_model(controlnet), device=self.device)
            controlnet = cache[key]
        trained = controlnet.config.control
        if control_type is not None and control_type != trained:
            raise ValueError(f"ControlNet {getattr(controlnet, 'source', '')!r} follows {trained} maps, "
                             f"not {control_type}")
        wanted = getattr(controlnet, "base_fingerprint", None)
        if wanted is not None and wanted != self.fingerprint():
            raise ValueError(f"ControlNet {getattr(controlnet, 'source', '')!r} was trained over "
                             f"{getattr(controlnet, 'base_model', None)!r} (weights {wanted}); this model "
                             f"({self.source or 'in memory'}) has weights {self.fingerprint()}: "
                             "use a ControlNet trained over it")
        return controlnet

    def control_maps(self, video, control_type: str, extractor=None,
                     channels: Optional[int] = None) -> Tensor:
        """Maps ``(C_ctrl, T, H, W)`` in [0, 1] extracted from ``video`` (a :class:`Video`, a
        uint8 array or a ``(3, T, H, W)`` tensor in [-1, 1]) by the extractor of ``control_type``
        (``extractor``: a TorchScript file or module, for ``depth`` and ``custom``)."""
        clip = clip_tensor(video, "control video")
        return extract(control_type, clip[None], extractor, channels)[0]

    def control_conditioning(self, control, control_from, controlnet: ControlNet, frames: int,
                             height: int, width: int, extractor=None) -> Tensor:
        """One clip's maps ``(C_ctrl, T, H, W)`` on the pipeline's device, from ``control`` (a map
        video, a path to one, or a tensor of maps in [0, 1]) or extracted from ``control_from``;
        ControlError unless their frame count and size are the request's."""
        if (control is None) == (control_from is None):
            raise ValueError("give control maps (control=...) or a video to extract them from "
                             "(control_from=...), exactly one")
        cfg = controlnet.config
        if control_from is not None:
            if isinstance(control_from, (str, Path)):
                control_from = Video.load(control_from)
            maps = self.control_maps(control_from, cfg.control, extractor, cfg.control_channels)
            what = "the control video"
        else:
            if extractor is not None:
                raise ValueError("an extractor makes maps from a video (control_from); control maps need none")
            if isinstance(control, (str, Path)):
                control = Video.load(control)
            if isinstance(control, Tensor) and control.ndim == 4 and control.shape[0] == cfg.control_channels:
                maps = control.float()
            else:
                maps = maps_from_video(clip_tensor(control, "control maps"), cfg.control_channels)
            what = "the control maps"
        C, T, H, W = maps.shape
        if (T, H, W) != (frames, height, width):
            raise ControlError(f"{what} have {T} frames of {W}x{H}; the request is {frames} frames of "
                               f"{width}x{height} (give maps for every frame at the output size)")
        return maps.clamp(0, 1).to(self.device)


def maps_video(maps: Tensor, fps: float) -> Video:
    """Maps ``(C_ctrl, T, H, W)`` in [0, 1] as a video to look at: grey for one channel, the
    first three channels as colours otherwise."""
    x = maps.float().cpu()
    x = x.expand(3, *x.shape[1:]) if x.shape[0] == 1 else torch.cat([x, x.new_zeros(3, *x.shape[1:])])[:3]
    return Video.from_tensor(x * 2 - 1, fps=fps)

