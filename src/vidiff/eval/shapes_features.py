"""``vidiff-shapes``: a small video feature network for offline Fréchet distances.

FVD needs I3D weights, which are a download. For offline work vidiff ships its own feature
network, trained by vidiff on MovingShapes (:func:`train_shapes_features`, the command
``vidiff eval train-features``) to classify each clip's colour, shape and direction; its
64-dimensional pooled activations are the features. Its weights are small (< 1 MB) and ship
inside the package (``vidiff/eval/weights/vidiff-shapes.safetensors``), so distances
computed with it compare across users and machines, but **not** with published FVD.

The trainer is deterministic: fixed seed, items ``0, 1, 2, ...`` of MovingShapes in order,
``torch.use_deterministic_algorithms`` on, a fixed number of CPU threads; the same torch
version and thread count give the same weights bit for bit.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from vidiff.checkpoint import write_file_atomic
from vidiff.data.shapes import COLORS, DIRECTIONS, SHAPES, MovingShapes

INPUT_SIZE = 32        # frame side the network sees
FEATURE_DIM = 64
WEIGHTS = Path(__file__).parent / "weights" / "vidiff-shapes.safetensors"
LABELS = {"color": tuple(COLORS), "shape": SHAPES, "direction": DIRECTIONS}


class ShapesFeatureNet(nn.Module):
    """Three strided 3D convolutions, global average pooling, one linear head per attribute.

    ``forward(x)``: ``(B, 3, T, 32, 32)`` in ``[-1, 1]`` -> features ``(B, 64)``;
    :meth:`logits` adds the per-attribute class scores used for training.
    """

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv3d(3, w, 3, stride=(1, 2, 2), padding=1), nn.GroupNorm(4, w), nn.GELU(),
            nn.Conv3d(w, 2 * w, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * w), nn.GELU(),
            nn.Conv3d(2 * w, FEATURE_DIM, 3, stride=2, padding=1), nn.GroupNorm(8, FEATURE_DIM), nn.GELU(),
        )
        self.heads = nn.ModuleDict({k: nn.Linear(FEATURE_DIM, len(v)) for k, v in LABELS.items()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, T, 32, 32)
        h = self.body(x)                       # (B, 64, T/4, 4, 4)
        return h.mean(dim=(2, 3, 4))           # (B, 64)

    def logits(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self(x)                     # (B, 64)
        return {k: head(features) for k, head in self.heads.items()}  # (B, classes) each


def load_shapes_features(path: Optional[os.PathLike] = None) -> ShapesFeatureNet:
    """The trained network (eval mode) from ``path`` (default: the shipped weights)."""
    path = Path(path) if path is not None else WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"vidiff-shapes weights {str(path)!r} are missing; train them with "
                                "`vidiff eval train-features --out PATH`")
    net = ShapesFeatureNet()
    net.load_state_dict(load_file(str(path)))
    return net.eval()


def _batch(dataset, start: int, size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    items = [dataset[i] for i in range(start, start + size)]
    video = torch.stack([it["video"] for it in items])                     # (B, 3, T, 32, 32)
    labels = {k: torch.tensor([v.index(it[k]) for it in items]) for k, v in LABELS.items()}
    return video, labels


def _accuracy(net: ShapesFeatureNet, dataset, count: int) -> dict[str, float]:
    video, labels = _batch(dataset, 0, count)
    with torch.no_grad():
        logits = net.logits(video)
    return {k: float((logits[k].argmax(1) == labels[k]).float().mean()) for k in LABELS}


def train_shapes_features(out: os.PathLike, steps: int = 400, batch: int = 32, lr: float = 3e-3,
                          seed: int = 0, threads: int = 1, frames: int = 16, check: int = 256,
                          progress: bool = True) -> dict:
    """Train :class:`ShapesFeatureNet` on MovingShapes and write its weights to ``out``.

    Deterministic: step ``s`` uses items ``s * batch .. (s + 1) * batch - 1`` of
    ``MovingShapes(frames, 32, seed)``; AdamW with cosine decay; ``threads`` CPU threads.
    Returns ``{"steps", "seconds", "accuracy": {...}}``, accuracy measured on ``check`` clips
    of another seed. The file is written atomically (temporary name, then rename).
    """
    if steps < 1 or batch < 1 or threads < 1:
        raise ValueError(f"steps, batch and threads must be >= 1, got {steps}, {batch}, {threads}")
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors, got {str(out)!r}")
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(seed)
        net = ShapesFeatureNet()
        data = MovingShapes(frames=frames, size=INPUT_SIZE, seed=seed)
        optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        loss_fn = nn.CrossEntropyLoss()
        start, bar = time.perf_counter(), None
        if progress:
            bar = tqdm(total=steps, desc="training vidiff-shapes", unit="step")
        for step in range(steps):
            video, labels = _batch(data, step * batch, batch)
            logits = net.logits(video)
            loss = sum(loss_fn(logits[k], labels[k]) for k in LABELS)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
        if bar is not None:
            bar.close()
        net.eval()
        accuracy = _accuracy(net, MovingShapes(frames=frames, size=INPUT_SIZE, seed=seed + 1), check)
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)
    meta = {"steps": str(steps), "batch": str(batch), "lr": str(lr), "seed": str(seed),
            "threads": str(threads), "frames": str(frames), "torch": torch.__version__}

    def write(tmp: Path) -> None:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp), metadata=meta)
        os.chmod(tmp, 0o644)  # shipped with the package: readable by everyone
    write_file_atomic(out, write)
    return {"steps": steps, "seconds": time.perf_counter() - start, "accuracy": accuracy, "out": str(out)}
