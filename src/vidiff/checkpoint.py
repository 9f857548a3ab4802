"""Checkpoint directories, written atomically.

A checkpoint is a directory::

    config.json          what to build: network architecture and config, the run config, step
    model.safetensors    trainable weights (network.*, and text_encoder.* when it trains)
    ema.safetensors      their exponential moving average, when kept
    text_encoder/        the text encoder's own config and vocabulary (a frozen CLIP/T5 is
                         recorded by its local path only)
    trainer_state.pt     optimizer, LR schedule, step and RNG states, for --resume

It is first written under a temporary name in the same folder and then renamed, so an
interrupted save never leaves a half-written checkpoint where a complete one is expected.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Callable, Optional

import torch
from safetensors.torch import load_file, save_file

FORMAT = "vidiff-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A path is not a usable vidiff checkpoint; the message says what is wrong."""


def temporary_sibling(path: Path) -> Path:
    """An unused hidden name beside ``path``, for writing before a rename. (Not ``tempfile``:
    its files are private, mode 0600, and a saved video or checkpoint should not be.)"""
    path = Path(path)
    return path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"


def write_atomic_dir(dest: Path, fill: Callable[[Path], None]) -> Path:
    """Create directory ``dest`` by calling ``fill(tmp_dir)`` then renaming it into place.

    An existing ``dest`` is moved aside first and put back if the rename fails, so ``dest``
    is at every moment either the old complete directory or the new one.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = temporary_sibling(dest), None
    tmp.mkdir()
    try:
        fill(tmp)
        if dest.exists():   # a directory cannot replace a non-empty one: move the old one aside
            old = temporary_sibling(dest)
            os.replace(dest, old)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not dest.exists():
            os.replace(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def write_file_atomic(path, write: Callable[[Path], None]) -> Path:
    """Create file ``path`` by ``write(tmp)`` on a temporary name in the same folder, then a
    rename, so a reader never sees a half-written file; the temporary goes on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    return path


def update_digest(digest, file: Path) -> None:
    """Feed ``file``'s bytes to a hashlib ``digest``, a megabyte at a time (constant memory)."""
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)


def write_json_atomic(path: Path, data) -> None:
    """Write JSON to ``path`` through a temporary file and a rename."""
    write_file_atomic(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2)))


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_checkpoint(dest: Path, config: dict, model_state: dict, ema_state: Optional[dict] = None,
                    trainer_state: Optional[dict] = None,
                    extra: Optional[Callable[[Path], None]] = None) -> Path:
    """Write a checkpoint directory atomically; ``extra(tmp_dir)`` adds more files (text encoder)."""
    def fill(tmp: Path) -> None:
        (tmp / "config.json").write_text(json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION,
                                                    **config}, indent=2))
        save_file(_contiguous(model_state), str(tmp / "model.safetensors"))
        if ema_state is not None:
            save_file(_contiguous(ema_state), str(tmp / "ema.safetensors"))
        if trainer_state is not None:
            torch.save(trainer_state, tmp / "trainer_state.pt")
        if extra is not None:
            extra(tmp)
    return write_atomic_dir(dest, fill)


def resolve_checkpoint(path) -> Path:
    """A checkpoint directory from itself or from a run directory (its newest checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path {str(path)!r} does not exist")
    if (path / "config.json").is_file():
        return path
    candidates = sorted((path / "checkpoints").glob("step_*")) if (path / "checkpoints").is_dir() else []
    candidates = [c for c in candidates if (c / "config.json").is_file()]
    if not candidates:
        raise CheckpointError(f"{str(path)!r} is neither a checkpoint (no config.json) nor a run "
                              "directory with checkpoints/step_*")
    return candidates[-1]


def read_config(path, kind: Optional[str] = None, required: tuple[str, ...] = ()) -> dict:
    """The config.json of a checkpoint; checks the format, the model kind if given, and that
    the ``required`` keys are there."""
    path = resolve_checkpoint(path)
    try:
        config = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{str(path / 'config.json')!r} is not valid JSON: {e}") from None
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a vidiff checkpoint (config.json has no "
                              f"format {FORMAT!r})")
    if kind is not None and config.get("kind") != kind:
        raise CheckpointError(f"{str(path)!r} holds a model of kind {config.get('kind')!r}, not the "
                              f"{kind!r} this needs")
    missing = [key for key in required if key not in config]
    if missing:
        raise CheckpointError(f"{str(path / 'config.json')!r} lacks {missing}: it was not written by "
                              "vidiff, or is damaged")
    return config


def submodule_state(weights: dict, prefix: str) -> dict:
    """The entries of ``weights`` under ``prefix`` (e.g. ``"network."``), with it removed."""
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def read_weights(path, ema: bool = True) -> dict[str, torch.Tensor]:
    """The checkpoint's weights: EMA when present and asked for, else the raw ones."""
    path = resolve_checkpoint(path)
    name = "ema.safetensors" if ema and (path / "ema.safetensors").is_file() else "model.safetensors"
    if not (path / name).is_file():
        raise CheckpointError(f"{str(path)!r} has no {name}")
    return load_file(str(path / name))


def grow_input_channels(state: dict[str, torch.Tensor],
                        target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with every tensor whose dimension 1 (input channels or features) is smaller
    than in ``target`` zero-padded at the end of that dimension; other mismatches are left for
    ``load_state_dict`` to refuse. Networks concatenate new condition channels after ``x_t``,
    so the checkpoint's channels keep their meaning and the new ones start with no effect."""
    out = dict(state)
    for name, old in state.items():
        new = target.get(name)
        if new is None or new.shape == old.shape or new.ndim != old.ndim or old.ndim < 2:
            continue
        if new.shape[0] == old.shape[0] and new.shape[2:] == old.shape[2:] and new.shape[1] > old.shape[1]:
            grown = torch.zeros(new.shape, dtype=old.dtype)
            grown[:, :old.shape[1]] = old
            out[name] = grown
    return out


def read_trainer_state(path) -> dict:
    path = resolve_checkpoint(path)
    file = path / "trainer_state.pt"
    if not file.is_file():
        raise CheckpointError(f"{str(path)!r} has no trainer_state.pt: it cannot be resumed")
    return torch.load(file, map_location="cpu", weights_only=True)


def prune_checkpoints(run_dir: Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints of a run (0 keeps all)."""
    if keep_last <= 0:
        return
    folder = Path(run_dir) / "checkpoints"
    done = sorted(c for c in folder.glob("step_*") if (c / "config.json").is_file())
    for old in done[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
