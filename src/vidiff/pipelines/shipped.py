"""Shipped models: small trained checkpoints inside the package, found by name.

``vidiff.load("shapes")``, ``vidiff generate --model shapes`` and every other ``--model``
take a shipped model's name or a checkpoint / run directory; a path that exists wins over a
name. Each shipped model is one folder of the package's ``vidiff/shipped/`` (or of the folder
named by ``$VIDIFF_SHIPPED_DIR``, which tests and private builds use)::

    vidiff/shipped/shapes/
        config.json          the checkpoint's config (architecture, run config, step)
        ema.safetensors      the EMA weights, stored in float16 (loaded into float32 networks)
        text_encoder/        the built-in text encoder's config, vocabulary and float16 weights
        vae/                 a latent model's autoencoder (config and float16 weights)
        train.yaml           the run config it was trained with
        card.json            name, description, what it was trained on, size, the train
                             command, measured scores, and the size and SHA-256 of every file

Whatever folder sits there is found (no list to update); a folder is checked against its
card's file list each time it loads, so a damaged install is reported by name with the way to
repair it instead of failing somewhere inside ``safetensors``. :func:`ship` writes such a
folder from a training run (``vidiff ship``), atomically, and keeps all shipped models
together under :data:`BUDGET_BYTES` so that ``pip install vidiff`` stays small.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import torch
import yaml
from safetensors.torch import load_file, save_file

from vidiff import __version__
from vidiff.checkpoint import read_config, resolve_checkpoint, write_atomic_dir
# Finding shipped models sits in the composition layer (training starts from them by name);
# it is re-exported here, where shipping and listing them live.
from vidiff.compose.shipped import (
    CARD, CARD_FORMAT, DEFAULT_MODEL, NAME_PATTERN, PACKAGE_DIR, REGISTERED, REINSTALL, SHIPPED_DIR_ENV,
    PathLike, ShippedModelError, check_model, check_name, read_card, resolve_model, sha256_file, shipped_dir,
    shipped_names, verify,
)

BUDGET_BYTES = 60_000_000                   # all shipped models together: 60 MB
MB = 1e6
DROPPED = ("model.safetensors", "trainer_state.pt")   # raw weights (beside EMA ones) and resume state

__all__ = [
    "BUDGET_BYTES", "MB", "CARD", "CARD_FORMAT", "DEFAULT_MODEL", "NAME_PATTERN", "PACKAGE_DIR", "REGISTERED",
    "REINSTALL", "SHIPPED_DIR_ENV", "ShippedModelError", "check_model", "check_name", "read_card",
    "resolve_model", "shipped_dir", "shipped_names", "verify", "folder_bytes", "total_bytes",
    "shipped_models", "ship", "half_precision",
]


def folder_bytes(folder: Path) -> int:
    """Bytes on disk of every file below ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def total_bytes(root: Optional[PathLike] = None, skip: Optional[str] = None) -> int:
    """Bytes of all shipped models together (without the one named ``skip``)."""
    return sum(folder_bytes(shipped_dir(root) / n) for n in shipped_names(root) if n != skip)


def shipped_models(root: Optional[PathLike] = None) -> list[dict]:
    """One row per shipped model: its card (``card``, None when damaged), ``bytes`` on disk
    and ``problem`` (None, or the damaged-install message)."""
    rows = []
    for name in shipped_names(root):
        folder = shipped_dir(root) / name
        card, problem = None, None
        try:
            card = verify(folder)
        except ShippedModelError as e:
            problem = str(e)
        rows.append({"name": name, "card": card, "bytes": folder_bytes(folder), "problem": problem})
    return rows


# ----------------------------------------------------------------------------- shipping
def ship(source: PathLike, name: str, root: Optional[PathLike] = None, scores: Optional[dict] = None,
         description: Optional[str] = None, command: Optional[str] = None) -> dict:
    """Write the shipped model ``name`` from a checkpoint or run directory (its newest checkpoint).

    The folder gets the checkpoint's config, its EMA weights in float16, its text encoder and
    autoencoder (weights in float16), the run config as ``train.yaml`` and ``card.json``. It is
    written under a temporary name and renamed, replacing an older version of ``name``, so a
    failed ship leaves what was there. Refused (ValueError) before anything is replaced: a
    checkpoint without EMA weights, a text encoder that lives in a local folder (CLIP/T5),
    a weight beyond float16's range, or shipped models that would together exceed
    :data:`BUDGET_BYTES`.

    Args:
        scores: measured scores (e.g. an ``vidiff eval shapes`` report), kept in the card.
        description: one line saying what the model does.
        command: the command that trained it (default: ``vidiff train`` and the run config's file).

    Returns:
        the card written.
    """
    check_name(name)
    if scores is not None and not isinstance(scores, dict):
        raise ValueError(f"scores must be a JSON object (name -> value), got {type(scores).__name__}")
    checkpoint = resolve_checkpoint(source)
    config = read_config(checkpoint, required=("run",))
    if not (checkpoint / "ema.safetensors").is_file():
        raise ValueError(f"checkpoint {str(checkpoint)!r} has no EMA weights (ema.safetensors): a shipped "
                         "model carries EMA weights only; train with train.ema_decay > 0")
    run = config["run"]
    if (run.get("text") or {}).get("path"):
        raise ValueError(f"checkpoint {str(checkpoint)!r} uses a {run['text'].get('kind')} text encoder "
                         f"from the local folder {run['text']['path']!r}, which does not travel with a "
                         "package: a shipped model needs the built-in text encoder (or none)")
    dest = shipped_dir(root) / name
    others = total_bytes(root, skip=name)
    card: dict = {}

    def fill(tmp: Path) -> None:
        _copy_half(checkpoint, tmp)
        (tmp / "train.yaml").write_text(yaml.safe_dump(run, sort_keys=False))
        card.update(_card(name, tmp, config, scores, description,
                          command or f"vidiff train {_config_path(config, dest)}"))
        (tmp / CARD).write_text(json.dumps(card, indent=2))
        for file in tmp.rglob("*"):     # safetensors writes private files; a package's are readable
            file.chmod(0o755 if file.is_dir() else 0o644)
        size = folder_bytes(tmp)
        if others + size > BUDGET_BYTES:
            raise ValueError(f"shipping {name!r} ({size / MB:.1f} MB) would bring the shipped models to "
                             f"{(others + size) / MB:.1f} MB, over the {BUDGET_BYTES / MB:g} MB budget of "
                             f"the package; ship a smaller model or remove one from {str(dest.parent)!r}")
    write_atomic_dir(dest, fill)
    return card


def _copy_half(source: Path, dest: Path) -> None:
    """Copy a checkpoint's files without its raw weights (where EMA weights sit beside them)
    and trainer state, every safetensors file converted to float16."""
    for file in sorted(source.rglob("*")):
        target = dest / file.relative_to(source)
        if file.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        if file.name == "trainer_state.pt" or (file.name == "model.safetensors"
                                               and (file.parent / "ema.safetensors").is_file()):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if file.suffix == ".safetensors":
            save_file(half_precision(load_file(str(file)), file), str(target))
        else:
            shutil.copy2(file, target)


def half_precision(state: dict[str, torch.Tensor], where: PathLike = "weights") -> dict[str, torch.Tensor]:
    """Floating tensors as float16 (others as they are). A finite value that float16 cannot
    hold (|x| > 65504) is refused rather than stored as inf."""
    out = {}
    for key, value in state.items():
        if value.is_floating_point():
            half = value.to(torch.float16)
            if (torch.isfinite(value) & ~torch.isfinite(half)).any():
                raise ValueError(f"{str(where)!r}: tensor {key!r} holds values beyond float16's range "
                                 "(|x| > 65504): it cannot ship in float16")
            value = half
        out[key] = value.contiguous()
    return out


def _parameters(folder: Path) -> dict[str, int]:
    """Parameter counts: the EMA file (network and trained text encoder) and the autoencoder."""
    def count(file: Path) -> int:
        return sum(t.numel() for t in load_file(str(file)).values()) if file.is_file() else 0
    vae = folder / "vae" / "ema.safetensors"
    return {"denoiser": count(folder / "ema.safetensors"),
            "autoencoder": count(vae if vae.is_file() else folder / "vae" / "model.safetensors")}


def _card(name: str, folder: Path, config: dict, scores: Optional[dict], description: Optional[str],
          command: str) -> dict:
    files = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
             for p in sorted(folder.rglob("*")) if p.is_file()}
    run, parts = config["run"], _parameters(folder)
    return {"format": CARD_FORMAT, "format_version": 1, "name": name,
            "description": description or "", "kind": config.get("kind"),
            "model": (run.get("model") or {}).get("size"), "text": (run.get("text") or {}).get("kind"),
            "trained_on": run.get("data"), "steps": config.get("step"),
            "batch_size": (run.get("train") or {}).get("batch_size"), "command": command,
            "parameters": sum(parts.values()), "parameters_by_part": parts, "dtype": "float16",
            "bytes": sum(f["bytes"] for f in files.values()), "scores": scores or {},
            "base": (config.get("base") or {}).get("model"), "vidiff_version": __version__, "files": files}


def _config_path(config: dict, dest: Path) -> str:
    """The config file a run was trained from when its checkpoint records one, else the
    ``train.yaml`` shipped beside the model, as a path from here (absolute when outside)."""
    if config.get("config_path"):
        return str(config["config_path"])
    target = (dest / "train.yaml").absolute()
    try:
        return str(target.relative_to(Path.cwd()))
    except ValueError:
        return str(target)
