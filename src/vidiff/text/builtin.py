"""The built-in text encoder: a small transformer over a word vocabulary, trained with the denoiser.

It needs nothing from the network: the vocabulary is built from the training captions
(:class:`~vidiff.text.tokenizer.WordTokenizer`) and the weights start random and learn with
the denoiser's loss. It is saved inside every checkpoint (``vocab.json`` and
``model.safetensors`` next to its ``config.json``), so sampling uses exactly the encoder
training used.

Architecture: token embedding -> ``depth`` pre-LayerNorm blocks (self-attention with rotary
positions, then an MLP; the shared :class:`~vidiff.models.layers.Attention` and
:class:`~vidiff.models.layers.FeedForward`) -> final LayerNorm. Padding is masked out of
every attention, and positions are rotary (relative), so a prompt's real tokens come out the
same whether it is padded or not. The pooled vector is, by default (``pooling="words"``), the
sum of the real tokens' word embeddings over the square root of their count; with
``pooling="mean"`` it is the mean of the output tokens.

Why word pooling, and embeddings drawn at unit scale: the encoder trains from scratch with
the denoiser, so a word matters only once the denoiser reads it, and the denoiser reads only
what differs. After attention has mixed a prompt's tokens, one changed word ("left" for
"right") moves the mean output very little, and the denoiser never picks it up. On
MovingShapes such a model learns colour and shape but stays at chance on direction. In a bag
of unit-scale word vectors every word moves the pooled vector as much as any other.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from vidiff.models.layers import Attention, FeedForward, rotary_cos_sin, xavier_linears
from vidiff.text.base import TextEncoder, TextEncoderConfig, masked_mean, read_saved_config
from vidiff.text.tokenizer import WordTokenizer

DEFAULT_MAX_LENGTH = 16


class _Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim)

    def forward(self, x: Tensor, mask: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        # x: (B, L, dim); mask: (B, L) bool, keys that may be attended to
        x = x + self.attn(self.norm1(x), context_mask=mask, rope=rope)        # (B, L, dim)
        return x + self.mlp(self.norm2(x))                                    # (B, L, dim)


class BuiltinTextEncoder(TextEncoder):
    """Word-level transformer text encoder, trainable, fully offline.

    Args:
        tokenizer: the vocabulary (usually ``WordTokenizer.build(training_captions)``).
        dim, depth, heads: width, number of blocks, attention heads.
        max_length: longest sequence in tokens, ``<bos>`` included; longer prompts are cut.
    """

    trainable = True

    def __init__(self, tokenizer: WordTokenizer, dim: int = 128, depth: int = 2, heads: int = 4,
                 max_length: int = DEFAULT_MAX_LENGTH, min_count: int = 1, pooling: str = "words"):
        super().__init__()
        # the config validates sizes with the same messages a YAML file would get
        self.config = TextEncoderConfig(kind="builtin", dim=dim, depth=depth, heads=heads,
                                        max_length=max_length, min_count=min_count, pooling=pooling)
        self.tokenizer = tokenizer
        self.dim = self.pooled_dim = dim
        self.max_length = max_length
        self.head_dim = dim // heads
        self.token_embedding = nn.Embedding(len(tokenizer), dim, padding_idx=WordTokenizer.PAD)
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.initialize_weights()

    @classmethod
    def from_config(cls, config: TextEncoderConfig, tokenizer: WordTokenizer) -> "BuiltinTextEncoder":
        return cls(tokenizer, dim=config.dim, depth=config.depth, heads=config.heads,
                   max_length=config.max_length or DEFAULT_MAX_LENGTH, min_count=config.min_count,
                   pooling=config.pooling)

    def initialize_weights(self) -> None:
        # Unit-scale embeddings: distinct words start distinct, in the pooled vector and in
        # the residual stream (each block normalises its input, so attention logits stay
        # moderate). Linears get Xavier so the stream neither explodes nor vanishes.
        xavier_linears(self)
        nn.init.normal_(self.token_embedding.weight, std=1.0)
        with torch.no_grad():
            self.token_embedding.weight[WordTokenizer.PAD].zero_()

    # ------------------------------------------------------------------ encoding
    def tokenize(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        ids, mask = self.tokenizer(prompts, max_length=self.max_length)    # (B, L), (B, L)
        return ids.to(self.device), mask.to(self.device)

    def unknown_words(self, prompt: str) -> list[str]:
        return [w for w in self.tokenizer.split(prompt) if w not in self.tokenizer.ids]

    def forward(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``ids (B, L)`` long, ``mask (B, L)`` bool -> ``tokens (B, L, dim)``, ``pooled (B, dim)``."""
        mask = mask.to(torch.bool)
        positions = torch.arange(ids.shape[1], device=ids.device)
        rope = rotary_cos_sin(positions, self.head_dim)                    # 2 x (L, head_dim)
        words = self.token_embedding(ids)                                  # (B, L, dim)
        x = words
        for block in self.blocks:
            x = block(x, mask, rope)                                       # (B, L, dim)
        x = self.norm(x)                                                   # (B, L, dim)
        if self.config.pooling == "mean":
            return x, masked_mean(x, mask)                                 # (B, L, dim), (B, dim)
        count = mask.sum(1, keepdim=True).clamp(min=1).to(words.dtype)    # (B, 1)
        pooled = (words * mask.unsqueeze(-1)).sum(1) / count.sqrt()        # (B, dim)
        return x, pooled

    # ------------------------------------------------------------------ storage
    def _save_files(self, directory: Path, state: Optional[dict] = None) -> None:
        self.tokenizer.save(directory / "vocab.json")
        state = {k: v.detach().contiguous().cpu() for k, v in (state or self.state_dict()).items()}
        save_file(state, str(directory / "model.safetensors"))

    @classmethod
    def load(cls, directory, config: Optional[TextEncoderConfig] = None) -> "BuiltinTextEncoder":
        """Rebuild from a directory written by :meth:`save` (config, vocabulary, weights)."""
        directory = Path(directory)
        config = config or read_saved_config(directory)
        missing = [n for n in ("vocab.json", "model.safetensors") if not (directory / n).is_file()]
        if missing:
            raise FileNotFoundError(f"saved built-in text encoder {str(directory)!r} lacks "
                                    f"{missing}; expected config.json, vocab.json and model.safetensors")
        encoder = cls.from_config(config, WordTokenizer.load(directory / "vocab.json"))
        state = load_file(str(directory / "model.safetensors"))
        try:
            encoder.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f"weights in {str(directory / 'model.safetensors')!r} do not match "
                             f"its config.json and vocab.json: {e}") from None
        return encoder
