"""Build a text encoder from its config, or reload one saved in a checkpoint."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Union

from vidiff.config import ConfigError
from vidiff.text.base import TextEncoder, TextEncoderConfig, read_saved_config
from vidiff.text.builtin import BuiltinTextEncoder
from vidiff.text.hf import CLIPTextEncoder, T5TextEncoder
from vidiff.text.tokenizer import WordTokenizer


def build_text_encoder(config: TextEncoderConfig,
                       captions: Optional[Iterable[str]] = None) -> Optional[TextEncoder]:
    """A new text encoder as ``config`` describes it (None for ``kind="none"``).

    The built-in encoder builds its vocabulary from ``captions`` (the training captions)
    and starts from random weights; CLIP and T5 load frozen from ``config.path``.
    """
    if config.kind == "none":
        return None
    if config.kind == "builtin":
        if captions is None:
            raise ValueError("the built-in text encoder builds its vocabulary from the training "
                             "captions: pass captions=[...] (or reload a saved encoder with "
                             "load_text_encoder)")
        tokenizer = WordTokenizer.build(captions, min_count=config.min_count)
        return BuiltinTextEncoder.from_config(config, tokenizer)
    if not config.path:
        raise ConfigError(f"text.path is required for text.kind={config.kind!r}")
    cls = CLIPTextEncoder if config.kind == "clip" else T5TextEncoder
    return cls(config.path, max_length=config.max_length, dtype=config.dtype)


def load_text_encoder(directory: Union[str, Path],
                      path_override: Optional[str] = None) -> Optional[TextEncoder]:
    """Reload an encoder written by :meth:`TextEncoder.save` (a checkpoint's ``text_encoder/``).

    The built-in encoder comes back with its vocabulary and weights. A frozen CLIP/T5 is
    reloaded from the local path it was recorded with, or from ``path_override`` when the
    model has moved (another machine, another folder); ``path_override`` is ignored for the
    built-in encoder, which has no external files.
    """
    config = read_saved_config(directory)
    if config.kind == "none":
        return None
    if config.kind == "builtin":
        return BuiltinTextEncoder.load(directory, config)
    if path_override is not None:
        config.path = str(path_override)
    return build_text_encoder(config)
