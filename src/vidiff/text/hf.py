"""Frozen CLIP and T5 text encoders, loaded from a local directory through ``transformers``.

Nothing is downloaded: the directory must hold what ``save_pretrained`` writes (or a model
snapshot copied from the Hugging Face Hub). ``transformers`` is an optional extra, imported
only when one of these encoders is built, so ``import vidiff`` works without it.

Both are frozen: parameters do not require grad, the wrapped model stays in eval mode even
when a parent module calls ``.train()`` (T5 has dropout), and ``forward`` runs under
``torch.no_grad``. Parameters may be kept in half precision (``dtype``); outputs are float32.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor

# The loading rules that every frozen pretrained model follows (the CLIP vision reference
# encoder too) live with the models; import_transformers is re-exported from here.
from vidiff.models.pretrained import (
    FrozenModel, check_dtype, has_projection, import_transformers, load_frozen, loading_errors,
    read_model_directory,
)
from vidiff.text.base import TextEncoder, TextEncoderConfig, masked_mean

__all__ = ["CLIPTextEncoder", "T5TextEncoder", "import_transformers"]


class _FrozenEncoder(TextEncoder, FrozenModel):
    """Shared loading and tokenization for text encoders from ``transformers``; frozen and
    kept in eval mode by :class:`~vidiff.models.pretrained.FrozenModel`."""

    trainable = False
    kind: str = ""
    model_types: tuple[str, ...] = ()
    tokenizer_files: tuple[tuple[str, ...], ...] = ()   # any one of these sets will do

    def __init__(self, path, max_length: Optional[int] = None, dtype: str = "float32"):
        super().__init__()
        check_dtype(dtype)
        path = Path(path).expanduser().resolve()
        model_config, tokenizer_dir = self._check_directory(path)
        transformers = import_transformers()
        with loading_errors(f"{self.kind.upper()} text encoder", path):
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(
                str(tokenizer_dir), local_files_only=True)
            self.model = self._load_model(transformers, path, model_config, dtype)
        self.max_length = self._resolve_max_length(max_length)
        self.config = TextEncoderConfig(kind=self.kind, path=str(path),
                                        max_length=self.max_length, dtype=dtype)

    # ------------------------------------------------------------------ loading
    def _check_directory(self, path: Path) -> tuple[dict, Path]:
        """The model's config.json and the tokenizer's folder, or one clear error."""
        # a diffusers-style layout keeps the tokenizer next to the model: text_encoder/ + tokenizer/
        candidates = [path, path / "tokenizer", path.parent / "tokenizer"]
        tokenizer_dir = next((d for d in candidates for files in self.tokenizer_files
                              if all((d / f).is_file() for f in files)), None)
        needs = f"tokenizer files ({' or '.join(' + '.join(s) for s in self.tokenizer_files)})"
        config = read_model_directory(path, f"{self.kind.upper()} text encoder", self.model_types, "text.kind",
                                      needs=needs, lacking=["tokenizer files"] if tokenizer_dir is None else [])
        return config, tokenizer_dir

    def _load_model(self, transformers, path: Path, config: dict, dtype: str):
        raise NotImplementedError

    def _resolve_max_length(self, max_length: Optional[int]) -> int:
        raise NotImplementedError

    # ------------------------------------------------------------------ encoding
    def tokenize(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        batch = self.tokenizer(list(prompts), padding="longest", truncation=True,
                               max_length=self.max_length, return_tensors="pt")
        return batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device, torch.bool)

    @torch.no_grad()
    def forward(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``ids (B, L)``, ``mask (B, L)`` -> ``tokens (B, L, dim)``, ``pooled (B, pooled_dim)``."""
        return self._run(ids, mask.to(torch.bool))

    def _run(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class CLIPTextEncoder(_FrozenEncoder):
    """Frozen CLIP text tower: tokens are the last hidden state; pooled is the projected
    end-of-text feature (``text_embeds``) when the checkpoint has a projection, else
    ``pooler_output``.

    Accepts a text-only directory (``CLIPTextModel`` / ``CLIPTextModelWithProjection``) or a
    full ``CLIPModel`` one (its vision tower is not loaded).
    """

    kind = "clip"
    model_types = ("clip", "clip_text_model")
    tokenizer_files = (("tokenizer.json",), ("vocab.json", "merges.txt"))

    def _load_model(self, transformers, path, config, dtype):
        self.has_projection = has_projection(path, config, "CLIPTextModelWithProjection", "text_projection.weight")
        cls = transformers.CLIPTextModelWithProjection if self.has_projection else transformers.CLIPTextModel
        model = load_frozen(cls, path, dtype)
        self.dim = model.config.hidden_size
        self.pooled_dim = model.config.projection_dim if self.has_projection else self.dim
        return model

    def _resolve_max_length(self, max_length):
        limit = self.model.config.max_position_embeddings
        if max_length is not None and max_length > limit:
            raise ValueError(f"text.max_length={max_length} exceeds this CLIP model's "
                             f"{limit} positions")
        return max_length or limit

    def _run(self, ids, mask):
        out = self.model(input_ids=ids, attention_mask=mask.long())
        pooled = out.text_embeds if self.has_projection else out.pooler_output
        return out.last_hidden_state, pooled                    # (B, L, dim), (B, pooled_dim)


class T5TextEncoder(_FrozenEncoder):
    """Frozen T5 (or mT5) encoder: tokens are the last hidden state; pooled is their mean
    over real tokens. Prefer ``bfloat16`` to ``float16`` for half precision: T5's
    activations overflow float16."""

    kind = "t5"
    model_types = ("t5", "mt5")
    tokenizer_files = (("tokenizer.json",), ("spiece.model",))

    def _load_model(self, transformers, path, config, dtype):
        cls = transformers.MT5EncoderModel if config["model_type"] == "mt5" else transformers.T5EncoderModel
        model = load_frozen(cls, path, dtype)
        self.dim = self.pooled_dim = model.config.d_model
        return model

    def _resolve_max_length(self, max_length):
        # T5 positions are relative buckets: no hard limit, only the tokenizer's declared one
        declared = getattr(self.tokenizer, "model_max_length", None)
        return max_length or (declared if declared and declared < 1_000_000 else 512)

    def _run(self, ids, mask):
        hidden = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        return hidden, masked_mean(hidden.float(), mask)        # (B, L, dim), (B, dim)

