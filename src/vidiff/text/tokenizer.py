"""A word-level tokenizer whose vocabulary comes from the training captions.

The built-in text encoder learns from a few thousand captions over a small vocabulary
("a red circle moving left"), so whole words are the right unit: no download, no merges,
and a caption outside the vocabulary degrades gracefully to the unknown token.

Rules: text is lowercased and split on every character that is not a letter or a digit
(``"Red-circle, 2x!"`` -> ``["red", "circle", "2x"]``; letters outside ASCII count as
letters). Every sequence starts with ``<bos>``, so an empty prompt still has one real token
(its own embedding, and a well-defined mean). Sequences longer than ``max_length`` tokens
(``<bos>`` included) are cut at the end.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import torch
from torch import Tensor

FORMAT = "vidiff-word-tokenizer"
# Letters and digits of any script; "\w" minus the underscore.
_WORD = re.compile(r"[^\W_]+")


class WordTokenizer:
    """Maps words to ids: ``PAD = 0``, ``UNK = 1``, ``BOS = 2``, then the vocabulary.

    Args:
        words: the vocabulary in id order, *without* the special tokens.
    """

    PAD, UNK, BOS = 0, 1, 2
    SPECIALS = ("<pad>", "<unk>", "<bos>")

    def __init__(self, words: Sequence[str]):
        words = list(words)
        clash = [w for w in words if w in self.SPECIALS or self.split(w) != [w]]
        if clash:
            raise ValueError(f"vocabulary entries must be single lowercase words, got {clash[:5]}")
        if len(set(words)) != len(words):
            raise ValueError("vocabulary has duplicate words")
        self.tokens: list[str] = list(self.SPECIALS) + words
        self.ids: dict[str, int] = {w: i for i, w in enumerate(self.tokens)}

    # ------------------------------------------------------------------ building
    @staticmethod
    def split(text: str) -> list[str]:
        """Lowercase ``text`` and split it on non-alphanumerics: ``str -> list[str]``."""
        return _WORD.findall(text.lower())

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1,
              max_size: Optional[int] = None) -> "WordTokenizer":
        """Vocabulary of every word seen at least ``min_count`` times in ``captions``.

        Words are ordered by falling count, ties alphabetically, so the same captions give
        the same ids in any order. ``max_size`` keeps only that many most frequent words.
        """
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        counts: Counter = Counter()
        for caption in captions:
            if not isinstance(caption, str):
                raise TypeError(f"captions must be strings, got {caption!r}")
            counts.update(cls.split(caption))
        words = sorted((w for w, n in counts.items() if n >= min_count),
                       key=lambda w: (-counts[w], w))
        return cls(words[:max_size] if max_size is not None else words)

    def __len__(self) -> int:
        """Vocabulary size, special tokens included (the embedding table's row count)."""
        return len(self.tokens)

    # ------------------------------------------------------------------ encoding
    def token_ids(self, text: str, max_length: Optional[int] = None) -> list[int]:
        """``<bos>`` followed by the ids of the words of ``text``, cut to ``max_length``."""
        ids = [self.BOS] + [self.ids.get(w, self.UNK) for w in self.split(text)]
        return ids[:max_length] if max_length is not None else ids

    def __call__(self, texts: Sequence[str], max_length: Optional[int] = None) -> tuple[Tensor, Tensor]:
        """Pad a batch to its longest sequence: ``ids (B, L)`` long, ``mask (B, L)`` bool."""
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        rows = [self.token_ids(t, max_length) for t in texts]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.PAD, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        return ids, ids != self.PAD

    def decode(self, ids: Iterable[int]) -> str:
        """Ids back to words, skipping padding and ``<bos>`` (unknown words read ``<unk>``)."""
        return " ".join(self.tokens[i] for i in ids if i not in (self.PAD, self.BOS))

    # ------------------------------------------------------------------ storage
    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": 1, "specials": list(self.SPECIALS),
                "words": self.tokens[len(self.SPECIALS):]}

    def save(self, path: Union[str, Path]) -> None:
        """Write the vocabulary as JSON (``vocab.json``)."""
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n",
                              encoding="utf-8")

    @classmethod
    def load(cls, path: Union[str, Path]) -> "WordTokenizer":
        """Read a vocabulary written by :meth:`save`; ids come back exactly."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"vocabulary file {str(path)!r} does not exist")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{str(path)!r} is not valid JSON: {e}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{str(path)!r} is not a vidiff word vocabulary (no format {FORMAT!r})")
        if tuple(data.get("specials", ())) != cls.SPECIALS:
            raise ValueError(f"{str(path)!r} has special tokens {data.get('specials')}, "
                             f"expected {list(cls.SPECIALS)}")
        return cls(data["words"])

    def __eq__(self, other) -> bool:
        return isinstance(other, WordTokenizer) and self.tokens == other.tokens

    def __repr__(self) -> str:
        return f"WordTokenizer(size={len(self)})"
