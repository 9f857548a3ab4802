"""Finding shipped models by name: the lookup that loading, training and commands share.

A shipped model is a folder of the package's ``vidiff/shipped/`` (or of ``$VIDIFF_SHIPPED_DIR``)
with a ``card.json`` listing every file's size and SHA-256 (see :mod:`vidiff.pipelines.shipped`,
which writes them). Finding one sits here, below training, so that a run can start from a
shipped model by name (a ControlNet's ``base``, a fine-tune's ``train.init_from``).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Optional, Union

from vidiff.checkpoint import CheckpointError, update_digest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "shipped"
SHIPPED_DIR_ENV = "VIDIFF_SHIPPED_DIR"      # another folder of shipped models (tests, private builds)
DEFAULT_MODEL = "shapes"
# The names the design promises (docs/models-shipped.md); a build may not carry all of them yet.
REGISTERED = ("shapes", "digits", "shapes-latent", "shapes-sr", "shapes-silhouette", "shapes-edges",
              "shapes-reference")
CARD = "card.json"
CARD_FORMAT = "vidiff-shipped-model"
REINSTALL = "pip install --force-reinstall vidiff"
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

PathLike = Union[str, Path]


class ShippedModelError(CheckpointError):
    """A shipped model is unknown, not installed, or damaged; the message says which and what to do."""



# ----------------------------------------------------------------------------- finding
def shipped_dir(root: Optional[PathLike] = None) -> Path:
    """The folder of shipped models: ``root``, else ``$VIDIFF_SHIPPED_DIR``, else the package's."""
    if root is not None:
        return Path(root)
    env = os.environ.get(SHIPPED_DIR_ENV)
    return Path(env) if env else PACKAGE_DIR


def shipped_names(root: Optional[PathLike] = None) -> list[str]:
    """The shipped models present, sorted: every subfolder with a model's name (hidden and
    temporary folders, such as a half-written one, are not models)."""
    folder = shipped_dir(root)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and NAME_PATTERN.match(p.name))


def check_name(name: str) -> str:
    """``name`` if it can name a shipped model, else a ValueError saying what is accepted."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError(f"model name {name!r} is not accepted: lower-case letters, digits, '.', '_' "
                         "and '-', starting with a letter or digit, at most 64 characters")
    return name


def _listed(names: list[str]) -> str:
    return f"shipped models: {', '.join(names)}" if names else "no shipped models are installed"


def check_model(model: PathLike, root: Optional[PathLike] = None) -> None:
    """Cheap check (no file is read) that ``model`` is an existing path or the name of an
    installed shipped model; ShippedModelError names the value and lists the shipped ones."""
    path = Path(model).expanduser()
    if path.exists():
        return
    names = shipped_names(root)
    text = str(model)
    if isinstance(model, str) and NAME_PATTERN.match(text):
        if text in names:
            return
        if text in REGISTERED:
            raise ShippedModelError(f"shipped model {text!r} is not installed in this build of vidiff "
                                    f"({_listed(names)}); give a checkpoint or run directory, or "
                                    "train one and ship it (vidiff ship --help)")
        raise ShippedModelError(f"unknown model {text!r}: neither a shipped model ({_listed(names)}) "
                                "nor an existing checkpoint or run directory")
    raise ShippedModelError(f"checkpoint path {text!r} does not exist, and it is not a shipped model "
                            f"name ({_listed(names)})")


def resolve_model(model: Optional[PathLike] = None, root: Optional[PathLike] = None) -> Path:
    """The directory to load for ``model``: an existing path as it is, else the folder of the
    shipped model of that name after checking it against its card (default: ``shapes``).

    Raises:
        ShippedModelError: unknown name (the message lists the shipped ones), a registered
            model this build lacks, or a damaged install (named, with the reinstall command).
    """
    model = DEFAULT_MODEL if model is None else model
    check_model(model, root)
    path = Path(model).expanduser()
    if path.exists():
        return path
    folder = shipped_dir(root) / str(model)
    verify(folder)
    return folder


def _damaged(folder: Path, what: str) -> ShippedModelError:
    return ShippedModelError(f"shipped model {folder.name!r} is damaged ({what}, in {str(folder)!r}): "
                             f"reinstall vidiff with `{REINSTALL}`")


def read_card(folder: Path) -> dict:
    """A shipped model's card.json (ShippedModelError when it is missing or not a card)."""
    file = Path(folder) / CARD
    if not file.is_file():
        raise _damaged(folder, f"{CARD} is missing")
    try:
        card = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _damaged(folder, f"{CARD} is not valid JSON") from None
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT or not isinstance(card.get("files"), dict):
        raise _damaged(folder, f"{CARD} is not a vidiff model card")
    return card


def verify(folder: Path) -> dict:
    """Check every file a shipped model's card lists (present, same size, same SHA-256) and
    return the card; ShippedModelError names the first file that is missing or altered."""
    card = read_card(folder)
    for name in ("config.json", "ema.safetensors"):
        if name not in card["files"]:
            raise _damaged(folder, f"{CARD} does not list {name}")
    for name, expected in sorted(card["files"].items()):
        file = folder / name
        if not file.is_file():
            raise _damaged(folder, f"{name} is missing")
        if file.stat().st_size != expected["bytes"] or sha256_file(file) != expected["sha256"]:
            raise _damaged(folder, f"{name} differs from the file that was shipped")
    return card


def sha256_file(file: Path) -> str:
    digest = hashlib.sha256()
    update_digest(digest, file)
    return digest.hexdigest()
