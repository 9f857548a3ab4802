"""Prompt adherence along a training run, and the compute it took to reach a target.

For each run directory given, every ``--every``-th kept checkpoint (``train.keep_last: 0``
keeps them all) is scored with vidiff's MovingShapes detector: ``--samples`` clips of every
triple (dpmpp_2m, 20 steps and the run's own guidance unless ``--guidance`` says, as
``vidiff eval shapes``), seen and held-out triples
reported apart. The training FLOPs of one real step of the run's own config (its data as it
trained: a latent cache costs no encoding) are counted by ``vidiff.models.flops`` as
``benchmarks/cascade.py compute`` counts them, so each checkpoint's cumulative compute is
``step x FLOPs a step``. ``--extra-pflop RUN=P`` adds compute spent before the run (for a latent
model: training its autoencoder and encoding its cache), and ``--target`` reports the first
checkpoint whose seen adherence reaches it: the steps and compute to reach that adherence.

    python benchmarks/adherence_curve.py runs/shapes-latent runs/shapes-latent-dit --every 2 \\
        --target 0.762 --json curve.json

The last line is the headline::

    headline: RUN reaches TARGET seen adherence at step S (P PFLOP); ...
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from vidiff.checkpoint import read_config
from vidiff.data import DEMO_HELD_OUT
from vidiff.eval.adherence import shapes_adherence
from vidiff.models.flops import count_flops
from vidiff.pipelines.video import load
from vidiff.train.config import load_run_config
from vidiff.train.run import build_trainer


def step_tflop(checkpoint: Path) -> float:
    """FLOPs (TFLOP) of one training step of the run that wrote ``checkpoint``, counted on a
    fresh trainer of the same config (its weights do not change the cost)."""
    with tempfile.TemporaryDirectory() as scratch:
        run = load_run_config(None, [f"train.out_dir={scratch}", "train.init_from=null"],
                              base=read_config(checkpoint)["run"])
        trainer = build_trainer(run, progress=False)
        return count_flops(trainer.train_step) / 1e12


def curve(run_dir: Path, args) -> dict:
    checkpoints = sorted((run_dir / "checkpoints").glob("step_*"))
    checkpoints = [c for c in checkpoints if (c / "config.json").is_file()]
    chosen = checkpoints[args.every - 1::args.every]
    if checkpoints and checkpoints[-1] not in chosen:
        chosen.append(checkpoints[-1])                     # the run's end is always scored
    if not chosen:
        raise SystemExit(f"{run_dir}: no checkpoints under {run_dir / 'checkpoints'}")
    per_step = step_tflop(chosen[-1])
    extra = args.extra.get(str(run_dir), 0.0)
    rows = []
    for checkpoint in chosen:
        step = int(read_config(checkpoint)["step"])
        start = time.perf_counter()
        pipe = load(checkpoint)
        guidance = pipe.sampling(None, None, args.guidance)[2]     # unset: the run's own
        report = shapes_adherence(pipe, held_out=DEMO_HELD_OUT, samples=args.samples,
                                  steps=args.steps, guidance=guidance, seed=args.seed, progress=False)
        row = {"step": step, "pflop": extra + step * per_step / 1e3, "seen": report["seen"]["adherence"],
               "held_out": report["held_out"]["adherence"], "seconds": time.perf_counter() - start}
        rows.append(row)
        print(f"{str(run_dir):32s} step {step:6d}  {row['pflop']:8.4f} PFLOP  seen {row['seen']:6.1%}  "
              f"held out {row['held_out']:6.1%}  ({row['seconds']:.0f} s)", flush=True)
    reached = next((r for r in rows if r["seen"] >= args.target), None) if args.target else None
    return {"step_tflop": per_step, "extra_pflop": extra, "rows": rows, "reached": reached}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories")
    p.add_argument("--every", type=int, default=1, help="score every k-th kept checkpoint (and the last)")
    p.add_argument("--samples", type=int, default=1, help="clips per triple")
    p.add_argument("--steps", type=int, default=20, help="sampling steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, help="classifier-free guidance (default: each run's own sample.guidance)")
    p.add_argument("--target", type=float, help="seen adherence to reach (0-1)")
    p.add_argument("--extra-pflop", action="append", default=[], metavar="RUN=P",
                   help="compute spent before RUN (PFLOP), e.g. its autoencoder and latent cache")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    args.extra = {k: float(v) for k, v in (item.split("=", 1) for item in args.extra_pflop)}
    guidance = "each run's own guidance" if args.guidance is None else f"guidance {args.guidance:g}"
    print(f"adherence along training: {args.samples} sample(s) per triple, {args.steps} steps, {guidance}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    result = {str(run): curve(run, args) for run in args.runs}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    heads = []
    for run, r in result.items():
        hit, last = r["reached"], r["rows"][-1]
        if hit:
            heads.append(f"{run} reaches {args.target:.1%} seen adherence at step {hit['step']} "
                         f"({hit['pflop']:.3f} PFLOP)")
        elif args.target:
            heads.append(f"{run} does not reach {args.target:.1%} by step {last['step']}")
        else:
            heads.append(f"{run} ends at {last['seen']:.1%} seen")
    print("headline: " + "; ".join(heads))


if __name__ == "__main__":
    main()
