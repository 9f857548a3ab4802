"""Frozen pretrained models from a local directory, through ``transformers``: the rules every
such model follows (the CLIP and T5 text encoders of :mod:`vidiff.text.hf`, the CLIP vision
reference encoder of :mod:`vidiff.models.reference_clip`).

Nothing is downloaded: a directory holds what ``save_pretrained`` writes (or a model snapshot
copied from the Hugging Face Hub), and it is checked before ``transformers`` sees it, so a
mistake gets one error naming the folder. ``transformers`` is an optional extra, imported only
when such a model is built, so ``import vidiff`` works without it.

A wrapper of a frozen model (:class:`FrozenModel`) holds it as ``self.model`` with no parameter
requiring grad, keeps it in eval mode when a parent module calls ``.train()`` (T5 has dropout,
which would make training and sampling differ), and has ``trainable = False``: a checkpoint
leaves out everything under it (:func:`frozen_prefixes`) and records the directory instead.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import torch
from safetensors import safe_open
from torch import nn

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "pytorch_model.bin.index.json")


def import_transformers(what: str = "CLIP and T5 text encoders"):
    """The ``transformers`` module, or an ImportError that says how to install it."""
    try:  # transformers is optional (the "text" extra), so it is imported only when needed
        import transformers
    except ImportError as e:
        raise ImportError(f'{what} need the optional dependency transformers: '
                          'pip install "vidiff[text]"') from e
    return transformers


def check_dtype(dtype: str) -> torch.dtype:
    """The torch dtype named ``dtype`` (a key of :data:`DTYPES`), or a ValueError."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {list(DTYPES)}")
    return DTYPES[dtype]


def read_model_directory(path: Path, what: str, model_types: Sequence[str], setting: str,
                         needs: str = "", lacking: Sequence[str] = ()) -> dict:
    """The ``config.json`` of the model folder ``path``, after checking that it holds one,
    weights of a known format and the model type ``model_types`` names.

    Args:
        path: the folder (absolute).
        what: the model, for messages (``"CLIP text encoder"``).
        setting: the config key that chose the model's kind, named when the folder holds
            another type of model (``"text.kind"``).
        needs: other files the model needs, for messages (``"tokenizer files (...)"``).
        lacking: which of those the caller found missing.

    Raises:
        FileNotFoundError: naming the folder and every missing file.
        ValueError: the folder holds another type of model.
    """
    files = ["config.json", f"weights ({' or '.join(WEIGHT_FILES[::2])})"] + ([needs] if needs else [])
    expected = f"{', '.join(files[:-1])} and {files[-1]}, as written by save_pretrained"
    if not path.is_dir():
        raise FileNotFoundError(f"{what} directory {str(path)!r} does not exist or is not a directory; "
                                f"expected a folder with {expected}")
    missing = [n for n in ("config.json",) if not (path / n).is_file()]
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        missing.append("model weights")
    missing += list(lacking)
    if missing:
        raise FileNotFoundError(f"{str(path)!r} is not a {what} directory: missing {', '.join(missing)}; "
                                f"expected {expected}")
    config = json.loads((path / "config.json").read_text())
    if config.get("model_type") not in model_types:
        raise ValueError(f"{str(path)!r} holds a model of type {config.get('model_type')!r}, "
                         f"not {' or '.join(map(repr, model_types))}: is {setting} right?")
    return config


@contextmanager
def loading_errors(what: str, path: Path):
    """Turns ``transformers``' OSError while loading from ``path`` into a FileNotFoundError
    naming the folder (its own message names Hub ids)."""
    try:
        yield
    except OSError as e:
        raise FileNotFoundError(f"could not load a {what} from {str(path)!r}: {e}") from e


def load_frozen(cls, path: Path, dtype: str, **config) -> nn.Module:
    """``cls.from_pretrained`` from the local folder ``path`` (never the Hub), parameters in
    ``dtype``, ``config`` overriding fields of its config, frozen and in eval mode.

    Raises:
        ValueError: the folder lacks weights the model needs (``transformers`` would fill them
            with random values, and a frozen model never learns them).
    """
    model, info = cls.from_pretrained(str(path), local_files_only=True, dtype=DTYPES[dtype],
                                      output_loading_info=True, **config)
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise ValueError(f"{str(path)!r} lacks weights of the {cls.__name__} it holds: "
                         f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    model.requires_grad_(False)
    return model.eval()


def has_projection(path: Path, config: dict, with_projection: str, weight: str) -> bool:
    """Whether a CLIP directory carries a tower's projection: a full CLIP model always does; a
    one-tower folder when its architectures name ``with_projection`` (e.g.
    ``CLIPVisionModelWithProjection``) or, when it names none, its weights hold ``weight``."""
    if config.get("model_type") == "clip":
        return True
    architectures = config.get("architectures") or []
    if architectures:
        return with_projection in architectures
    file = path / "model.safetensors"
    if file.is_file():
        with safe_open(str(file), framework="pt") as f:
            return weight in f.keys()
    return False


class FrozenModel(nn.Module):
    """Base of the wrappers of a frozen pretrained ``self.model``: it stays in eval mode and
    out of checkpoints (``trainable = False``)."""

    trainable = False

    def train(self, mode: bool = True) -> "FrozenModel":
        # A trainer calls .train() on everything it holds; a frozen model must not switch on
        # dropout, or its outputs would differ between training and sampling.
        super().train(mode)
        self.model.eval()
        return self


def frozen_prefixes(module: nn.Module) -> tuple[str, ...]:
    """Name prefixes (``"text_encoder."``, ``"network.cond.reference.clip."``) of the frozen
    pretrained models inside ``module`` (submodules with ``trainable = False``): checkpoints
    leave their weights out, loaders do not expect them, initialisers do not touch them."""
    return tuple(f"{name}." for name, m in module.named_modules()
                 if name and getattr(m, "trainable", True) is False)
