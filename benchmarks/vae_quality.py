"""Autoencoder quality: train the default autoencoder on CPU within a time budget, then measure
reconstruction PSNR/SSIM on held-out clips of MovingShapes and PhotoPan.

For each dataset this trains ``--size`` (default ``vae-s``: 4x spatial, 4x temporal) with
the trainer of ``vidiff train`` (EMA, checkpoints, samples) for at most ``--minutes``, the
step count planned from a measured step time so the LR schedule ends with the budget. It
trains on ``--frames``-frame clips (9: half the cost of 17), then reconstructs ``--clips``
``--eval-frames``-frame clips the run never saw (another data seed) with the EMA weights and
the chunked path, and reports mean PSNR (dB) and SSIM per frame on uint8 frames.
The last line is the headline::

    headline: PSNR shapes X9 / X17 dB on 9 / 17-frame clips (aim 32), photopan ... (aim 27)

Usage::

    python benchmarks/vae_quality.py                      # 30 minutes per dataset
    python benchmarks/vae_quality.py --minutes 5 --datasets shapes
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

AIMS = {"shapes": 32.0, "photopan": 27.0}


def seconds_per_step(run, steps: int = 12, warmup: int = 3) -> float:
    """Seconds per training step of ``run`` on this machine, from a throwaway short run."""
    import copy
    import shutil

    from vidiff.train.run import build_trainer

    trial = copy.deepcopy(run)
    trial.train.out_dir = str(Path(run.train.out_dir) / "calibration")
    trial.train.steps, trial.train.max_minutes = steps, 0.0
    trainer = build_trainer(trial, progress=False)
    trainer.fit(until=warmup)
    start = time.perf_counter()
    trainer.fit()
    per_step = (time.perf_counter() - start) / (steps - warmup)
    shutil.rmtree(trial.train.out_dir, ignore_errors=True)
    return per_step


def train_and_measure(name: str, args) -> dict:
    from vidiff.checkpoint import read_config, resolve_checkpoint
    from vidiff.train.config import load_run_config
    from vidiff.pipelines.samples import write_samples
    from vidiff.train.run import build_trainer, plot_loss

    out = Path(args.out) / name
    data = [f"data.name={name}", f"data.frames={args.frames}", f"data.size={args.frame_size}",
            f"data.stretch={args.stretch}"]
    run = load_run_config(None, [
        "kind=autoencoder", f"model.size={args.size}", *data, f"train.out_dir={out}", f"train.steps={args.max_steps}",
        f"train.batch_size={args.batch_size}", f"train.lr={args.lr}", "train.warmup_steps=100",
        f"train.max_minutes={args.minutes}", "train.ema_decay=0.999", "train.checkpoint_every=1000",
        "train.log_every=50", f"autoencoder.reconstruction={args.loss}", "autoencoder.kl_weight=1e-6",
        "autoencoder.temporal_weight=0.5",
        *args.set])
    if args.eval_only:
        steps = int(read_config(resolve_checkpoint(out))["step"])
        return {"dataset": name, "steps": steps, "minutes": float("nan"), **score(out, name, args)}
    started = time.perf_counter()
    if args.steps:      # a fixed step count: runs compare at equal steps whatever the machine's load
        trainer = build_trainer(run, progress=not args.quiet)
        trainer.set_total_steps(args.steps)
    else:
        # Plan the step count from this machine's measured speed, so the cosine LR schedule
        # ends (near zero) when the budget does: a schedule planned for far more steps than the
        # time allows would stop at its peak LR.
        per_step = seconds_per_step(run)
        trainer = build_trainer(run, progress=not args.quiet)
        left = args.minutes - (time.perf_counter() - started) / 60     # the calibration counts
        trainer.cfg.max_minutes = left
        trainer.set_total_steps(max(1, min(args.max_steps, int(60 * left / (1.04 * per_step)))))
    trainer.sample_hook = lambda t: write_samples(run, t)
    trainer.fit()
    plot_loss(trainer.history, out / "loss.png")
    write_samples(run, trainer)
    minutes = (time.perf_counter() - started) / 60
    return {"dataset": name, "steps": trainer.step, "minutes": minutes, **score(out, name, args)}


def score(out: Path, name: str, args) -> dict:
    """PSNR/SSIM of ``--clips`` held-out clips (data seed 10000) of each length in
    ``--eval-frames``, reconstructed by the EMA weights in ``out``, chunked: the means over
    frames and clips, and the per-frame PSNR profile (mean over clips, dB per frame index)."""
    from vidiff.data import build_dataset
    from vidiff.compose import load_autoencoder
    from vidiff.eval.temporal import psnr_ssim
    from vidiff.pipelines.autoencoder import reconstruct
    from vidiff.video import Video

    vae = load_autoencoder(out)
    result, profiles = {}, {}
    for frames in (int(f) for f in str(args.eval_frames).split(",")):
        held_out = build_dataset({"name": name, "frames": frames, "size": args.frame_size,
                                  "seed": 10_000})          # clips the run never drew
        psnr, ssim = [], []
        for i in range(args.clips):
            clip = Video.from_tensor(held_out[i]["video"])
            rebuilt = reconstruct(vae, clip, chunk=2)[0]
            per_frame = psnr_ssim(rebuilt.frames, clip.frames)
            psnr.append(per_frame["psnr"])
            ssim.append(per_frame["ssim"])
        result[frames] = (float(np.mean(psnr)), float(np.mean(ssim)))
        profiles[frames] = np.mean(psnr, axis=0).tolist()
    return {"scores": result, "profiles": profiles}


def plot_profiles(rows: list[dict], path: Path) -> None:
    """Per-frame PSNR against frame index, a line per dataset and clip length, with each
    dataset's aim; the first latent group (frame 0) and the later groups of ``tf`` frames show
    whether quality holds along the clip."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.8), dpi=120)
    ax = fig.subplots()
    for r in rows:
        for frames, profile in r["profiles"].items():
            ax.plot(range(len(profile)), profile, marker=".", label=f"{r['dataset']}, {frames} frames")
        if r["dataset"] in AIMS:
            ax.axhline(AIMS[r["dataset"]], ls=":", lw=1, color="grey")
    ax.set_xlabel("frame")
    ax.set_ylabel("PSNR (dB), mean over held-out clips")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default="shapes,photopan")
    p.add_argument("--size", default="vae-s", help="autoencoder registry size")
    p.add_argument("--minutes", type=float, default=30.0, help="training budget per dataset")
    p.add_argument("--max-steps", type=int, default=100_000, help="at most this many steps in the budget")
    p.add_argument("--steps", type=int, default=0,
                   help="train exactly this many steps (0: plan them from the measured step time and "
                        "--minutes, which still caps the run)")
    # Training on 9-frame clips halves a step's cost. Scores are taken on held-out clips of the
    # training length and of 17 frames: MovingShapes moves half as far per frame in 17-frame
    # clips, and a model trained on 9 frames does not carry over to them (see benchmarks.md).
    p.add_argument("--frames", type=int, default=9, help="frames of a training clip")
    p.add_argument("--stretch", type=float, default=4.0,
                   help="training clips are windows of clips up to this many times longer (data.stretch)")
    p.add_argument("--eval-frames", default="9,17", help="held-out clip lengths, comma-separated")
    p.add_argument("--eval-only", action="store_true", help="score the runs already in --out")
    p.add_argument("--loss", default="l2", choices=("l1", "l2"), help="reconstruction loss (PSNR is L2)")
    p.add_argument("--frame-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--clips", type=int, default=32, help="held-out clips to reconstruct")
    p.add_argument("--out", default="runs/bench-vae")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra run-config override, e.g. model.overrides.channels=[16,64,128]")
    p.add_argument("--plot", metavar="PNG", help="write the per-frame PSNR profiles here")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    rows = [train_and_measure(name, args) for name in args.datasets.split(",")]
    print(f"\n{'dataset':<10}{'steps':>8}{'minutes':>9}{'frames':>8}{'PSNR dB':>9}{'SSIM':>8}{'aim dB':>8}")
    for r in rows:
        for frames, (psnr, ssim) in r["scores"].items():
            print(f"{r['dataset']:<10}{r['steps']:>8}{r['minutes']:>9.1f}{frames:>8}{psnr:>9.2f}{ssim:>8.4f}"
                  f"{AIMS.get(r['dataset'], float('nan')):>8.1f}")
    for r in rows:
        for frames, profile in r["profiles"].items():
            print(f"per-frame PSNR, {r['dataset']} {frames} frames: " + " ".join(f"{v:.1f}" for v in profile))
    if args.plot:
        plot_profiles(rows, Path(args.plot))
    print("headline: PSNR " + ", ".join(
        f"{r['dataset']} " + " / ".join(f"{p:.2f}" for p, _ in r["scores"].values())
        + f" dB on {' / '.join(map(str, r['scores']))}-frame clips (aim {AIMS.get(r['dataset'], 0):g})"
        for r in rows))


if __name__ == "__main__":
    main()
