"""CLIP similarity between prompts and frames, with a CLIP model from a local directory.

For each clip and each of its frames, the cosine similarity between CLIP's image embedding of
the frame and its text embedding of the clip's prompt; a clip's ``similarity`` is the mean
over frames and its ``clip_score`` the mean of ``100 * max(cos, 0)`` (the CLIPScore-style
scale that video benchmarks report as CLIPSIM). Frames go through the directory's own image
processor (``preprocessor_config.json``), prompts through its tokenizer (truncated to the
model's context). Nothing is downloaded: the directory holds what ``save_pretrained`` writes
for a ``CLIPModel``, its tokenizer and its image processor (or a Hub snapshot of one).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from vidiff.data.folder import CAPTION_FILES, read_captions
from vidiff.eval.features import iter_clips, list_clips
from vidiff.text.hf import import_transformers


class ClipScorer:
    """A frozen CLIP model, tokenizer and image processor from ``path``.

    ``scorer(frames, prompt)``: ``uint8 (T, H, W, 3)`` and a string -> cosine per frame ``(T,)``.
    """

    def __init__(self, path, device: str = "cpu"):
        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"CLIP directory {str(path)!r} has no config.json; expected a folder "
                                    "written by CLIPModel.save_pretrained plus its tokenizer and image processor")
        kind = json.loads((path / "config.json").read_text()).get("model_type")
        if kind != "clip":
            raise ValueError(f"{str(path)!r} holds a model of type {kind!r}, not 'clip' (a full CLIPModel "
                             "with text and vision towers)")
        if not (path / "preprocessor_config.json").is_file():
            raise FileNotFoundError(f"CLIP directory {str(path)!r} has no preprocessor_config.json (the "
                                    "image processor); save it with CLIPImageProcessor.save_pretrained")
        hf = import_transformers()
        try:
            self.model = hf.CLIPModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
            self.tokenizer = hf.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            self.processor = hf.CLIPImageProcessor.from_pretrained(str(path), local_files_only=True)
        except OSError as e:
            raise FileNotFoundError(f"could not load CLIP from {str(path)!r}: {e}") from None
        self.device = device
        self.max_length = int(self.model.config.text_config.max_position_embeddings)

    @torch.no_grad()
    def text_embedding(self, prompt: str) -> torch.Tensor:
        """Unit-norm text embedding ``(E,)``."""
        tokens = self.tokenizer([prompt], padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(self.device)
        e = self.model.get_text_features(**tokens)
        e = e if isinstance(e, torch.Tensor) else e.pooler_output
        return torch.nn.functional.normalize(e.float(), dim=-1)[0]

    @torch.no_grad()
    def image_embeddings(self, frames: np.ndarray, batch: int = 32) -> torch.Tensor:
        """Unit-norm image embeddings ``(T, E)`` of ``uint8 (T, H, W, 3)`` frames."""
        out = []
        for i in range(0, len(frames), batch):
            pixels = self.processor(images=list(frames[i:i + batch]), return_tensors="pt")["pixel_values"]
            e = self.model.get_image_features(pixel_values=pixels.to(self.device))
            e = e if isinstance(e, torch.Tensor) else e.pooler_output
            out.append(torch.nn.functional.normalize(e.float(), dim=-1))
        return torch.cat(out)

    def __call__(self, frames: np.ndarray, prompt: str) -> np.ndarray:
        return (self.image_embeddings(frames) @ self.text_embedding(prompt)).cpu().double().numpy()


def prompts_for(source: str, names: Sequence[str], prompt: Optional[str] = None,
                prompts_file: Optional[str] = None) -> list[str]:
    """One prompt per clip: ``prompt`` for all, the lines of ``prompts_file`` in clip order, or
    the folder's ``captions.jsonl``/``captions.csv`` (matched by relative path)."""
    if prompt is not None and prompts_file is not None:
        raise ValueError("give --prompt or --prompts, not both")
    if prompt is not None:
        if not prompt.strip():
            raise ValueError("--prompt is empty")
        return [prompt] * len(names)
    if prompts_file is not None:
        path = Path(prompts_file)
        if not path.is_file():
            raise FileNotFoundError(f"prompts file {prompts_file!r} does not exist")
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if len(lines) != len(names):
            raise ValueError(f"prompts file {prompts_file!r} has {len(lines)} prompts for {len(names)} clips; "
                             "give one line per clip, in sorted clip order")
        return lines
    root = Path(source).expanduser()
    found = next((root / n for n in CAPTION_FILES if (root / n).is_file()), None)
    if found is None:
        raise ValueError(f"no prompts: give --prompt, --prompts FILE, or put {' or '.join(CAPTION_FILES)} in {source!r}")
    captions = read_captions(found)
    out = []
    for name in names:
        key = Path(name).relative_to(root).as_posix()
        if key not in captions:
            raise ValueError(f"{str(found)!r} has no caption for {key!r}")
        out.append(captions[key])
    return out


def clip_report(source: str, clip_dir: str, prompt: Optional[str] = None, prompts_file: Optional[str] = None,
                device: str = "cpu") -> dict:
    """``{"clips": [{"name", "prompt", "similarity", "clip_score", "per_frame"}], "mean": {...}}``
    for every clip in the folder ``source``."""
    names = [str(p) for p in list_clips(source)]
    texts = prompts_for(source, names, prompt, prompts_file)
    scorer = ClipScorer(clip_dir, device=device)
    rows = []
    for (name, frames), text in zip(iter_clips(source), texts):
        cos = scorer(frames, text)
        rows.append({"name": name, "prompt": text, "similarity": float(cos.mean()),
                     "clip_score": float((100 * np.clip(cos, 0, None)).mean()), "per_frame": cos.tolist()})
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("similarity", "clip_score")}
    return {"source": source, "clip_dir": str(clip_dir), "count": len(rows), "clips": rows, "mean": mean}


def format_clip(report: dict) -> str:
    """A readable table of :func:`clip_report`'s result."""
    lines = [f"{'clip':<32}{'cosine':>9}{'CLIPSIM':>9}  prompt"]
    for r in report["clips"]:
        lines.append(f"{r['name'][-32:]:<32}{r['similarity']:>9.4f}{r['clip_score']:>9.2f}  {r['prompt']}")
    m = report["mean"]
    lines.append(f"{'mean of ' + str(report['count']):<32}{m['similarity']:>9.4f}{m['clip_score']:>9.2f}")
    return "\n".join(lines)
