"""Latent caches: a dataset's clips encoded once by a frozen autoencoder, trained on many times.

``vidiff cache-latents --vae DIR DATASET --out CACHE`` writes::

    CACHE/index.json                 what made the cache and what it holds (written last)
    CACHE/shard_00000.safetensors    latents (N, Cz, t, h, w) float32, index (N,), and text:
    CACHE/shard_00001.safetensors    token_ids/token_mask (built-in encoder) or text,
    ...                              text_mask, text_pooled (a frozen CLIP/T5)

Latents are the autoencoder's scaled posterior means, exactly what a latent denoiser trained
on the fly encodes (:meth:`~vidiff.models.VideoVAE.to_latent`), so training on the cache gives
the same run. Every shard records the fingerprint of the autoencoder that made it (a hash of
its config and weights) in its metadata; a denoiser whose ``model.vae`` has another
fingerprint refuses the cache. Shards are written atomically one by one, so an interrupted
run keeps its finished shards and a rerun continues from them. Captions travel with the
shards; the built-in text encoder's vocabulary is rebuilt from them (deterministically), so
the cached token ids are the ids training uses.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load, save
from tqdm.auto import tqdm

from vidiff.checkpoint import write_file_atomic, write_json_atomic
from vidiff.data.common import DatasetError, vocabulary_captions
from vidiff.data.loader import collate
from vidiff.text.tokenizer import WordTokenizer
from vidiff.video import DEFAULT_FPS

FORMAT = "vidiff-latent-cache"
INDEX = "index.json"


def is_latent_cache(path) -> bool:
    """True when ``path`` is a folder holding a latent cache's ``index.json``."""
    index = Path(path) / INDEX
    if not index.is_file():
        return False
    try:
        return json.loads(index.read_text()).get("format") == FORMAT
    except (json.JSONDecodeError, OSError):
        return False


def _shard_name(k: int) -> str:
    return f"shard_{k:05d}.safetensors"


@torch.no_grad()
def cache_latents(vae, fingerprint: str, dataset, out, count: Optional[int] = None,
                  batch_size: int = 8, shard_size: int = 256, text_encoder=None,
                  source: Optional[dict] = None, progress: bool = False) -> Path:
    """Encode the first ``count`` items of ``dataset`` (all of a finite one by default) into a
    cache folder ``out``; returns its path.

    Args:
        vae: a trained :class:`~vidiff.models.VideoVAE` (eval mode); ``fingerprint`` names it
            (:func:`~vidiff.pipelines.autoencoder.autoencoder_fingerprint`).
        text_encoder: a frozen CLIP/T5 encoder whose embeddings are cached too; None caches
            the built-in encoder's token ids (vocabulary built from the cached captions).
        source: the data config the clips came from, recorded in the index.
    """
    if count is None:
        if getattr(dataset, "infinite", False):
            raise ValueError("this dataset is endless: give the number of clips to cache (--count)")
        count = len(dataset)
    if count < 1 or batch_size < 1 or shard_size < 1:
        raise ValueError(f"count, batch size and shard size must be >= 1, got {count}, {batch_size}, {shard_size}")
    count = min(count, len(dataset))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / INDEX).is_file():
        (out / INDEX).unlink()                 # the index returns only when every shard is done
    # The built-in encoder's vocabulary comes from the same captions an on-the-fly run would
    # build it from, so the cached ids are the ids that run would use.
    vocabulary = vocabulary_captions(dataset)
    tokenizer = WordTokenizer.build(vocabulary) if text_encoder is None else None
    device = next(vae.parameters()).device
    shards, latent_shape = [], None
    bar = None
    if progress:
        bar = tqdm(total=count, desc="caching", unit="clip")
    for k, start in enumerate(range(0, count, shard_size)):
        stop = min(start + shard_size, count)
        path = out / _shard_name(k)
        existing = _reusable(path, fingerprint, start, stop)
        if existing is not None:
            shards.append(existing)
            latent_shape = latent_shape or existing["latent_shape"]
            if bar is not None:
                bar.update(stop - start)
            continue
        latents, part = [], []
        for b in range(start, stop, batch_size):
            batch = collate([dataset[i] for i in range(b, min(b + batch_size, stop))])
            latents.append(vae.to_latent(batch["video"].to(device)).float().cpu())   # (b, Cz, t, h, w)
            part += batch["caption"]
            if bar is not None:
                bar.update(len(batch["caption"]))
        tensors = {"latents": torch.cat(latents), "index": torch.arange(start, stop)}
        if tokenizer is not None:
            ids, mask = tokenizer(part)
            tensors.update(token_ids=ids, token_mask=mask)
        else:
            text, mask, pooled = text_encoder.encode(part)
            tensors.update(text=text.cpu(), text_mask=mask.cpu(), text_pooled=pooled.cpu())
        metadata = {"vae": fingerprint, "start": str(start), "stop": str(stop),
                    "captions": json.dumps(part)}
        data = save({k_: v.contiguous() for k_, v in tensors.items()}, metadata=metadata)
        write_file_atomic(path, lambda tmp: tmp.write_bytes(data))
        latent_shape = list(tensors["latents"].shape[1:])
        shards.append({"file": path.name, "start": start, "stop": stop,
                       "sha256": hashlib.sha256(data).hexdigest(), "latent_shape": latent_shape})
    if bar is not None:
        bar.close()
    index = {"format": FORMAT, "vae": fingerprint, "count": count, "latent_shape": latent_shape,
             "text": "token_ids" if text_encoder is None else {
                 "kind": text_encoder.config.kind, "dim": text_encoder.dim},
             "vocabulary": vocabulary, "source": source or {}, "fps": float(getattr(dataset, "fps", DEFAULT_FPS)), "shards": shards}
    write_json_atomic(out / INDEX, index)
    return out


def _reusable(path: Path, fingerprint: str, start: int, stop: int) -> Optional[dict]:
    """The record of an already written shard of this cache, or None to (re)write it."""
    if not path.is_file():
        return None
    try:
        data = path.read_bytes()
        tensors = load(data)
        meta = _metadata(path)
    except (SafetensorError, OSError, ValueError):
        return None
    if meta.get("vae") != fingerprint or meta.get("start") != str(start) or meta.get("stop") != str(stop):
        return None
    return {"file": path.name, "start": start, "stop": stop, "sha256": hashlib.sha256(data).hexdigest(),
            "latent_shape": list(tensors["latents"].shape[1:])}


def _metadata(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


class LatentCache(torch.utils.data.Dataset):
    """A latent cache as a dataset: item ``i`` is ``{"latents": (Cz, t, h, w), "caption",
    "index"}`` plus the cached text (``token_ids``/``token_mask`` or ``text``/``text_mask``/
    ``text_pooled``).

    Every shard is checked when the cache opens (present, readable, made by the same
    autoencoder) and verified against its recorded SHA-256 when first read; problems are
    reported by shard name. ``vae`` (a fingerprint), when given, must match the cache's.
    """

    def __init__(self, path, vae: Optional[str] = None):
        self.path = Path(path)
        index_file = self.path / INDEX
        if not index_file.is_file():
            raise DatasetError(f"{str(self.path)!r} is not a latent cache (no {INDEX}; an "
                               "interrupted vidiff cache-latents leaves none: run it again)")
        try:
            self.index = json.loads(index_file.read_text())
        except json.JSONDecodeError as e:
            raise DatasetError(f"{str(index_file)!r} is not valid JSON: {e}") from None
        if self.index.get("format") != FORMAT:
            raise DatasetError(f"{str(self.path)!r} is not a vidiff latent cache")
        self.fingerprint = self.index["vae"]
        if vae is not None and vae != self.fingerprint:
            raise DatasetError(f"latent cache {str(self.path)!r} was made by autoencoder {self.fingerprint}, "
                               f"not by this run's model.vae ({vae}): rebuild it with vidiff cache-latents")
        self.shards = self.index["shards"]
        for shard in self.shards:
            file = self.path / shard["file"]
            if not file.is_file():
                raise DatasetError(f"latent cache shard {shard['file']!r} is missing from {str(self.path)!r}")
            try:
                meta = _metadata(file)
            except (SafetensorError, OSError) as e:
                raise DatasetError(f"latent cache shard {shard['file']!r} is corrupt: {e}") from None
            if meta.get("vae") != self.fingerprint:
                raise DatasetError(f"latent cache shard {shard['file']!r} was made by another "
                                   f"autoencoder ({meta.get('vae')}, the cache's is {self.fingerprint})")
        self.fps = float(self.index.get("fps", DEFAULT_FPS))
        self.cached_text = True      # False: items carry captions only (another text encoder)
        self._loaded: tuple = (None, None)

    def __len__(self) -> int:
        return int(self.index["count"])

    def captions(self) -> list[str]:
        """The captions the built-in tokenizer's vocabulary is built from (those of the
        source dataset, so the cached token ids stay valid)."""
        return list(self.index["vocabulary"])

    def _shard(self, k: int) -> tuple[dict, list[str]]:
        if self._loaded[0] != k:
            shard = self.shards[k]
            data = (self.path / shard["file"]).read_bytes()
            if hashlib.sha256(data).hexdigest() != shard["sha256"]:
                raise DatasetError(f"latent cache shard {shard['file']!r} is corrupt (its SHA-256 "
                                   "differs from the index): rebuild the cache")
            try:
                tensors = load(data)
            except SafetensorError as e:
                raise DatasetError(f"latent cache shard {shard['file']!r} is corrupt: {e}") from None
            self._loaded = (k, (tensors, json.loads(_metadata(self.path / shard["file"])["captions"])))
        return self._loaded[1]

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"latent cache index {i} out of range [0, {len(self)})")
        k = next(j for j, s in enumerate(self.shards) if s["start"] <= i < s["stop"])
        tensors, captions = self._shard(k)
        row = i - self.shards[k]["start"]
        item = {key: value[row] for key, value in tensors.items()
                if key == "latents" or (self.cached_text and key != "index")}
        item.update(caption=captions[row], index=i)
        return item
