"""``vidiff demo``: train a small text-to-video model on MovingShapes, sample it, score it.

Runs on a 2-core CPU within 15 minutes: training is capped by wall time as well as steps, and
the network computes at a quarter of the pixel resolution (a 4x4 space-to-depth stem), which
keeps a clip's forward pass near one GFLOP while the shapes stay resolvable.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import torch

from vidiff.checkpoint import write_json_atomic
from vidiff.data.shapes import DEMO_HELD_OUT, caption
from vidiff.eval.adherence import format_report, shapes_adherence
from vidiff.pipelines.video import load
from vidiff.train.config import load_run_config
from vidiff.train.run import build_trainer, plot_loss
from vidiff.video import Video

TOTAL_MINUTES = 14.0      # the demo's wall-time budget (the hard limit is 15 minutes)
SAFETY_MINUTES = 0.5      # checkpoint, reload, grid video, slack
PROBE_STEPS = 20          # real training steps before the final plan (inside the LR warm-up) ...
UNTIMED_STEPS = 5         # ... of which the first ones, which also set things up, are not timed
PLAN_MARGIN = 1.05        # the final plan's slack: checkpoints, jitter

DEMO_CONFIG = {
    "model": {"size": "unet-demo", "overrides": {"frame_embedding": True}},
    # x0 prediction: the network computes on a 4x4-coarser grid, and a clean frame of flat
    # shapes is easier to produce from there than the per-pixel noise that eps and v targets
    # ask for (measured after 700 steps: shape accuracy 81% with x0 against 33% with v).
    # Training times lean a little towards high noise (logit-normal, median t = 0.59; 28% of
    # the draws above t = 0.8 against uniform's 20%, 25% below t = 0.3 against 30%): only
    # at high noise does the prompt alone decide where the shape goes, so that is where
    # direction is learned, and with uniform times some seeds never learn it in this budget
    # (direction 47% on one seed, 93% on another). Leaning further (mean 0.7) made direction
    # certain but starved the low noise levels where shapes get their corners (shape 78-80%
    # against 88-90%); docs/benchmarks.md, "The demo".
    "diffusion": {"schedule": "cosine", "parameterization": "x0", "loss_weighting": "uniform",
                  "time_distribution": "logit_normal", "logit_mean": 0.35, "logit_std": 1.8},
    "text": {"kind": "builtin", "dim": 128, "depth": 2, "heads": 4},
    # 6 frames: a step costs 0.82 of an 8-frame one, and the fewer the frames, the higher the
    # noise up to which the clip itself still shows its motion, so the band of times that
    # teaches direction widens (direction 100% against 82% at equal time); the shape still
    # travels 0.45 of the frame.
    "data": {"name": "shapes", "frames": 6, "size": 32, "held_out": "demo"},
    # Batch 8: at equal time, twice the steps of half the batch learn more.
    "train": {"steps": 8000, "batch_size": 8, "lr": 2e-3, "warmup_steps": 100, "ema_decay": 0.99,
              "checkpoint_every": 1000, "log_every": 25, "max_minutes": 0.0, "text_dropout": 0.1},
    # Guidance 3, not 5: on a model this young, 5 over-saturates and moves the hue of small
    # shapes (two runs at 1,200 steps: colour 84-100% at 4, 100% at 3, direction 97.5% at
    # both; docs/benchmarks.md, "The demo").
    "sample": {"sampler": "dpmpp_2m", "steps": 20, "guidance": 3.0},
}


def _time(fn) -> float:
    fn()                                     # warm-up: first-call allocations and kernels
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measured_costs(trainer, steps: int, batch: int = 64) -> tuple[float, float]:
    """``(seconds per training step, seconds per sampled clip)`` of this machine for the
    demo's network: one timed forward+backward of a training batch, and one timed
    guidance-doubled forward of ``batch`` clips times the ``steps`` calls a clip needs."""
    network, encoder = trainer.objective.network, trainer.objective.text_encoder
    shape = trainer.dataset[0]["video"].shape
    device = trainer.dist.device

    def inputs(n):
        with torch.no_grad():   # the text encoder's own cost is negligible here
            cond = encoder.conditioning(["a red circle moving right"] * n).to(device) if encoder else None
        return torch.randn(n, *shape, device=device), torch.rand(n, device=device), cond

    x, t, cond = inputs(trainer.cfg.batch_size)

    def train_pass():
        network(x, t, cond).square().mean().backward()
    per_step = _time(train_pass)
    network.zero_grad(set_to_none=True)
    x, t, cond = inputs(2 * batch)
    with torch.no_grad():
        per_call = _time(lambda: network(x, t, cond))
    return per_step, per_call * steps / batch


def run_demo(out_dir: str = "runs/demo", overrides: Optional[list[str]] = None, samples: int = 1,
             progress: bool = True, budget_minutes: float = TOTAL_MINUTES) -> dict:
    """Train, write held-out samples and print the adherence report; returns the report.

    Training stops at ``train.steps``, at ``train.max_minutes``, or when the time left in
    ``budget_minutes`` (the whole command's wall time) is what scoring will need, measured
    before training starts, whichever comes first.
    """

    started = time.perf_counter()
    run = load_run_config(None, [f"train.out_dir={out_dir}", *(overrides or [])], base=DEMO_CONFIG)
    trainer = build_trainer(run, progress=progress)
    held_out = [tuple(t) for t in DEMO_HELD_OUT]
    clips = 84 * samples                                     # the score (its held-out part is the grid)
    per_step, per_clip = measured_costs(trainer, run.sample.steps)
    scoring = 1.15 * clips * per_clip                        # + detection and writing
    left = budget_minutes - (time.perf_counter() - started) / 60 - scoring / 60 - SAFETY_MINUTES
    cap = min(run.train.max_minutes or float("inf"), max(left, 0.5))

    def plan(minutes: float, seconds_per_step: float, margin: float, done: int = 0) -> int:
        """Steps in all: ``done`` plus as many as ``minutes`` allow, within ``train.steps``."""
        return max(done, 1, min(run.train.steps, done + int(60 * minutes / (margin * seconds_per_step))))

    # Plan as many steps as the time allows (the LR schedule spans them) from one timed
    # forward+backward; a real step also draws its batch and updates the optimizer and the
    # EMA, hence the wide margin. The time cap stops a run that turns out slower than planned.
    trainer.set_total_steps(plan(cap, per_step, 1.25))
    trainer.cfg.max_minutes = cap
    print(f"training a text-to-video model on MovingShapes ({run.model.size}, about "
          f"{trainer.cfg.steps} steps, at most {cap:.1f} minutes; scoring will take about "
          f"{scoring / 60:.1f} minutes) in {out_dir}")
    # Then plan again from the first real steps (the very first ones also set things up, so
    # they are not timed), still inside the LR warm-up, where the schedule does not depend on
    # the total: one timed pass missed a real step by 1.3x either way (too short on a quiet
    # machine, too long beside another busy process), which cut one run short of its
    # schedule and left a third of another's budget unused.
    probe = min(PROBE_STEPS, trainer.cfg.warmup_steps, trainer.cfg.steps)
    skip = min(UNTIMED_STEPS, probe // 2)
    if skip < probe < trainer.cfg.steps:
        probe_start = time.perf_counter()
        trainer.fit(until=skip)
        timed_start = time.perf_counter()
        trainer.fit(until=probe)
        real = (time.perf_counter() - timed_start) / (probe - skip)
        cap -= (time.perf_counter() - probe_start) / 60
        trainer.set_total_steps(plan(cap, real, PLAN_MARGIN, done=probe))
        trainer.cfg.max_minutes = max(cap, 0.1)
        print(f"\nsteps {skip + 1}-{probe} took {real:.2f} s each: {trainer.cfg.steps} steps in all")
    trainer.fit()
    plot_loss(trainer.history, Path(out_dir) / "loss.png")
    pipe = load(out_dir)
    s = run.sample
    shown = {}      # the held-out samples of the score become the grid: nothing is drawn twice
    report = shapes_adherence(pipe, held_out, samples=samples, steps=s.steps, sampler=s.sampler,
                              guidance=s.guidance, progress=progress,
                              on_videos=lambda part, videos: shown.setdefault(part, videos))
    grid = Path(out_dir) / "held_out.mp4"
    Video.grid(shown["held_out"], cols=samples).save(grid)
    report["train_steps"] = trainer.step
    report["wall_minutes"] = (time.perf_counter() - started) / 60
    write_json_atomic(Path(out_dir) / "adherence.json", report)
    prompts = ", ".join(caption(*t) for t in held_out)
    print(f"\nsamples of the held-out prompts ({prompts}), one row each: {grid}")
    print(format_report(report))
    print(f"{trainer.step} training steps; {report['wall_minutes']:.1f} minutes in all")
    return report
