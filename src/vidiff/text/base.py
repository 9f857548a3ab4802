"""The text-encoder interface, its config, and the on-disk format every encoder shares.

Every encoder turns a batch of prompts into the three text fields of a
:class:`~vidiff.Conditioning`::

    embeddings, mask, pooled = encoder.encode(["a red circle", "two squares"])
    # embeddings (B, L, D) float32, mask (B, L) bool (True = real token), pooled (B, Dp)

``L`` is the longest prompt of the batch in tokens (never more than ``max_length``); padded
positions hold zeros and ``mask == False``, so a network that honours the mask sees the same
thing whether a prompt is encoded alone or next to a longer one.

A saved encoder is a directory holding ``config.json`` (this module's format) and, for the
built-in encoder, its vocabulary and weights. A frozen CLIP/T5 is recorded by its local path
only: the multi-gigabyte weights stay where the user keeps them.
"""
from __future__ import annotations

import abc
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from vidiff.conditioning import Conditioning
from vidiff.config import ConfigError, from_dict, to_dict
from vidiff.models.pretrained import DTYPES

FORMAT = "vidiff-text-encoder"
FORMAT_VERSION = 1
KINDS = ("builtin", "clip", "t5", "none")


@dataclass
class TextEncoderConfig:
    """Which text encoder a model uses and how it is built.

    Attributes:
        kind: ``"builtin"`` (small transformer trained with the denoiser, own word
            vocabulary), ``"clip"`` or ``"t5"`` (frozen, from a local directory), or
            ``"none"`` (unconditional model).
        path: local directory of a CLIP/T5 model saved with ``save_pretrained``; required
            for ``clip`` and ``t5``, unused otherwise.
        dim, depth, heads: width, number of blocks and attention heads of the built-in
            encoder (a frozen encoder's sizes come from its own config).
        max_length: longest prompt in tokens; longer prompts are truncated. ``None`` picks
            the encoder's own limit: 16 for ``builtin`` (its start token included), the
            position-table size for ``clip`` (77 for released CLIP models), the tokenizer's
            declared limit (else 512) for ``t5``.
        min_count: a word enters the built-in vocabulary when it occurs at least this often
            in the training captions (rarer words map to the unknown token).
        pooling: the built-in encoder's pooled vector (the one FiLM reads): ``"words"`` (the
            default), the sum of the prompt's word embeddings over the square root of their
            count, or ``"mean"``, the mean of the transformer's output tokens. Word pooling
            keeps every word's own direction in the pooled vector from the first step;
            after the transformer, a one-word change ("left" for "right") starts out nearly
            invisible, and a jointly trained denoiser never learns to read it.
        dtype: parameter dtype of a frozen encoder (``"float32"``, ``"float16"`` or
            ``"bfloat16"``); outputs are always returned as float32. The built-in encoder
            trains in float32 (mixed precision is the trainer's business).
    """

    kind: str = "builtin"
    path: Optional[str] = None
    dim: int = 128
    depth: int = 2
    heads: int = 4
    max_length: Optional[int] = None
    min_count: int = 1
    pooling: str = "words"
    dtype: str = "float32"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"text.kind: {self.kind!r} is not one of {list(KINDS)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"text.dtype: {self.dtype!r} is not one of {list(DTYPES)}")
        if self.max_length is not None and self.max_length < 1:
            raise ConfigError(f"text.max_length must be >= 1 (or null for the encoder's own "
                              f"limit), got {self.max_length}")
        if self.kind in ("clip", "t5") and not self.path:
            raise ConfigError(f"text.path is required for text.kind={self.kind!r}: the local "
                              f"directory of a {self.kind.upper()} model saved with save_pretrained")
        if self.kind == "builtin":
            checks = [
                (self.dim >= 1 and self.depth >= 1 and self.heads >= 1,
                 f"text.dim, text.depth and text.heads must be >= 1, got "
                 f"{self.dim}, {self.depth}, {self.heads}"),
                (self.dim % self.heads == 0,
                 f"text.dim {self.dim} is not divisible by text.heads {self.heads}"),
                # rotary positions rotate pairs of channels, so a head needs an even width
                ((self.dim // max(self.heads, 1)) % 2 == 0,
                 f"text.dim / text.heads = {self.dim // max(self.heads, 1)} must be even "
                 "(rotary positions)"),
                (self.min_count >= 1, f"text.min_count must be >= 1, got {self.min_count}"),
                (self.pooling in POOLINGS, f"text.pooling: {self.pooling!r} is not one of {list(POOLINGS)}"),
                (self.dtype == "float32",
                 f"text.dtype={self.dtype!r} applies to frozen encoders only; the built-in "
                 "encoder trains in float32 (use train.precision for mixed precision)"),
            ]
            for ok, message in checks:
                if not ok:
                    raise ConfigError(message)


POOLINGS = ("words", "mean")


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over real tokens: ``x (B, L, D)``, ``mask (B, L)`` bool -> ``(B, D)``.

    Rows without any real token give zeros rather than NaN.
    """
    weights = mask.to(x.dtype).unsqueeze(-1)                              # (B, L, 1)
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def as_prompt_list(prompts: Union[str, Sequence[str]]) -> list[str]:
    """Validate prompts; a single string is a batch of one."""
    if isinstance(prompts, str):
        return [prompts]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("encode() needs at least one prompt")
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise TypeError(f"prompts must be strings, got {bad[0]!r}")
    return prompts


class TextEncoder(nn.Module, abc.ABC):
    """Prompts -> token embeddings, mask and pooled vector, behind one interface.

    Attributes:
        dim: ``D``, width of the token embeddings.
        pooled_dim: ``Dp``, width of the pooled vector.
        max_length: longest token sequence; longer prompts are truncated.
        trainable: True when the encoder trains with the denoiser (its weights are saved
            in the checkpoint), False for a frozen encoder (recorded by path only).
        config: the resolved :class:`TextEncoderConfig` that rebuilds this encoder.
    """

    dim: int
    pooled_dim: int
    max_length: int
    trainable: bool
    config: TextEncoderConfig

    @abc.abstractmethod
    def tokenize(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Prompts -> ``ids (B, L)`` long and ``mask (B, L)`` bool, on the encoder's device."""

    @abc.abstractmethod
    def forward(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``ids (B, L)``, ``mask (B, L)`` -> ``embeddings (B, L, D)``, ``pooled (B, Dp)``."""

    def encode(self, prompts: Union[str, Sequence[str]]) -> tuple[Tensor, Tensor, Tensor]:
        """Prompts -> ``embeddings (B, L, D)`` float32 (zeros at padding),
        ``mask (B, L)`` bool (True = real token), ``pooled (B, Dp)`` float32."""
        ids, mask = self.tokenize(as_prompt_list(prompts))
        embeddings, pooled = self(ids, mask)
        embeddings = embeddings.float() * mask.unsqueeze(-1)               # (B, L, D)
        return embeddings, mask, pooled.float()

    def unknown_words(self, prompt: str) -> list[str]:
        """Words of ``prompt`` this encoder has no embedding for (none for an open-vocabulary
        encoder such as CLIP or T5; the built-in one knows its training captions' words)."""
        return []

    def conditioning(self, prompts: Union[str, Sequence[str]]) -> Conditioning:
        """A :class:`Conditioning` with ``text``, ``text_mask`` and ``text_pooled`` filled in."""
        embeddings, mask, pooled = self.encode(prompts)
        return Conditioning(text=embeddings, text_mask=mask, text_pooled=pooled)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ storage
    def save(self, directory: Union[str, Path], state: Optional[dict] = None) -> Path:
        """Write ``config.json`` (and, for the built-in encoder, vocabulary and weights).

        ``state`` replaces the module's own weights (e.g. EMA weights, or weights gathered
        from shards under FSDP)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        data = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": to_dict(self.config)}
        (directory / "config.json").write_text(json.dumps(data, indent=2) + "\n")
        self._save_files(directory, state)
        return directory

    def _save_files(self, directory: Path, state: Optional[dict] = None) -> None:
        """Files besides config.json; frozen encoders write none (their path is the record)."""

    def extra_repr(self) -> str:
        return (f"kind={self.config.kind!r}, dim={self.dim}, pooled_dim={self.pooled_dim}, "
                f"max_length={self.max_length}, trainable={self.trainable}")


def read_saved_config(directory: Union[str, Path]) -> TextEncoderConfig:
    """The :class:`TextEncoderConfig` stored in a saved encoder's ``config.json``."""
    directory = Path(directory)
    file = directory / "config.json"
    if not directory.is_dir():
        raise FileNotFoundError(f"saved text encoder {str(directory)!r} is not a directory "
                                "(expected a folder with config.json written by TextEncoder.save)")
    if not file.is_file():
        raise FileNotFoundError(f"saved text encoder {str(directory)!r} has no config.json "
                                "(expected the files written by TextEncoder.save)")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{str(file)!r} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{str(file)!r} is not a vidiff text-encoder config "
                          f"(no format {FORMAT!r})")
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise ConfigError(f"{str(file)!r} has format version {data['format_version']}; this "
                          f"vidiff reads up to {FORMAT_VERSION}: upgrade vidiff")
    return from_dict(TextEncoderConfig, data.get("config", {}), where="text")
