"""``vidiff train``: from a run config to a trained checkpoint and a loss curve.

What a run trains is its run kind's business (:mod:`vidiff.train.kinds`); this module builds
the dataset, asks the kind for a trainer, restores it, and runs it. Samples written during
and after training come from a ``sample_writer`` the caller passes (the pipelines layer
provides :func:`vidiff.pipelines.samples.write_samples`), because sampling sits above training.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch
from matplotlib.figure import Figure

from vidiff.checkpoint import write_file_atomic
from vidiff.compose import RunConfig
from vidiff.compose.shipped import resolve_model
from vidiff.data import build_dataset
from vidiff.train.kinds import run_kind
from vidiff.train.trainer import Trainer

SampleWriter = Callable[[RunConfig, Trainer], Optional[Path]]


def build_trainer(run: RunConfig, resume: Optional[str] = None, progress: bool = True) -> Trainer:
    """Dataset, model, objective and trainer for ``run``, by its run kind.

    With ``resume``, all training state (and the text encoder's vocabulary) comes from that
    checkpoint, so the run continues exactly where it stopped; else ``train.init_from``
    provides starting weights.
    """
    kind = run_kind(run)
    torch.manual_seed(run.train.seed)
    dataset = build_dataset(run.data)
    trainer = kind.build(run, dataset, resume, progress)
    if resume is not None:
        trainer.resume(resume)
    elif run.train.init_from:       # a checkpoint or run directory, or a shipped model's name
        trainer.load_weights(resolve_model(run.train.init_from), ema=True)
    return trainer


def train(run: RunConfig, resume: Optional[str] = None, progress: bool = True,
          sample_writer: Optional[SampleWriter] = None) -> Trainer:
    """Train ``run`` (or continue it from ``resume``) to ``train.steps``, or to ``train.stop_at``
    when set, then write the loss curve and, with a ``sample_writer``, samples every
    ``train.sample_every`` steps and at the end."""
    trainer = build_trainer(run, resume, progress)
    if 0 < run.train.stop_at <= trainer.step:
        raise ValueError(f"this run is at step {trainer.step}, at or past train.stop_at="
                         f"{run.train.stop_at}: resume with train.stop_at=0 (on to train.steps="
                         f"{run.train.steps}) or a later step")
    if sample_writer is not None:
        trainer.sample_hook = lambda t: sample_writer(run, t)
    trainer.fit(until=run.train.stop_at or None)
    if trainer.dist.main:
        plot_loss(trainer.history, Path(run.train.out_dir) / "loss.png")
        if sample_writer is not None:
            sample_writer(run, trainer)
    return trainer


def plot_loss(history: list[dict], path: Path) -> None:
    """The loss curve (raw and smoothed) as a PNG, written atomically."""
    if not history:
        return
    steps = [h["step"] for h in history]
    losses = [h["loss"] for h in history]
    smooth, value = [], losses[0]
    for loss in losses:  # exponential smoothing shows the trend under the noise
        value = 0.95 * value + 0.05 * loss
        smooth.append(value)
    # A bare Figure (no pyplot): no global backend or figure registry is touched.
    fig = Figure(figsize=(6, 3.5), dpi=120)
    ax = fig.subplots()
    ax.plot(steps, losses, alpha=0.3, label="loss")
    ax.plot(steps, smooth, label="smoothed")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    write_file_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
