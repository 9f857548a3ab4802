"""Reading a run config for ``vidiff train``: defaults, then layers, then overrides.

A YAML file names only what differs from the defaults::

    kind: denoiser
    model: {size: unet-demo}
    diffusion: {schedule: cosine, parameterization: v}
    data: {name: shapes, frames: 16, size: 32}
    train: {steps: 2000, batch_size: 16, lr: 1e-3}

and ``vidiff train run.yaml train.steps=500 model.overrides.channels=[32,64]`` overrides any
key. The dataclasses themselves live in :mod:`vidiff.compose.config`.
"""
from __future__ import annotations

import copy
import logging
from typing import Optional

from vidiff.checkpoint import read_config
from vidiff.compose import RunConfig
from vidiff.config import apply_overrides, from_dict, load_file
from vidiff.train.kinds import RUN_KINDS, run_kind

logger = logging.getLogger("vidiff.train")


def load_run_config(path: Optional[str] = None, overrides: Optional[list[str]] = None,
                    base: Optional[dict] = None) -> RunConfig:
    """Defaults <- ``base`` <- the file at ``path`` <- ``key.sub=value`` overrides, checked
    against its run kind.

    Where no layer sets ``data.frames``, the run kind may choose the clip length (autoencoder
    runs and latent denoisers take 17 frames, ``1 + 4k``, what a 4x temporal autoencoder
    codes); the choice is logged, never silent.
    """
    data: dict = {}
    for layer in (base or {}), (load_file(path) if path else {}):
        _merge(data, copy.deepcopy(layer))
    apply_overrides(data, overrides or [])
    kind = RUN_KINDS.get(data.get("kind", RunConfig.kind))
    frames = kind.default_frames(data) if kind is not None else None
    section = data.setdefault("data", {})
    if frames is not None and isinstance(section, dict) and "frames" not in section:
        section["frames"] = frames
        logger.warning("data.frames is not set: a %s run uses %d-frame clips (set data.frames to "
                       "choose)", kind.name + (" (latent)" if kind.name == "denoiser" else ""), frames)
    run = from_dict(RunConfig, data)
    run_kind(run)
    return run


def resume_config(path: str, overrides: Optional[list[str]] = None) -> RunConfig:
    """The run config stored in a checkpoint, with ``key=value`` overrides (e.g. more steps)."""
    data = read_config(path, required=("run",))["run"]
    apply_overrides(data, overrides or [])
    run = from_dict(RunConfig, data)
    run_kind(run)
    return run


def _merge(into: dict, new: dict) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
