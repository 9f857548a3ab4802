"""Training commands: ``train`` (any run kind, any number of processes) and ``demo``."""
from __future__ import annotations

import os
import subprocess
import sys

from vidiff.apps.demo import TOTAL_MINUTES, run_demo
from vidiff.cli.common import existing_path, output_dir, positive_int
from vidiff.pipelines.samples import write_samples
from vidiff.train.config import load_run_config, resume_config
from vidiff.train.run import train


# ----------------------------------------------------------------------------- demo
def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="train a small text-to-video model on MovingShapes and score it",
                       description="Trains a small text-to-video model on the built-in MovingShapes "
                                   "data (planned from this machine's measured speed to finish within "
                                   f"{TOTAL_MINUTES:g} minutes), writes samples of held-out prompts and "
                                   "prints its prompt adherence.")
    p.add_argument("--out", type=output_dir, default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--samples", type=positive_int, default=1,
                   help="samples per triple when scoring (default 1; the held-out ones make the grid)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the demo config")
    p.set_defaults(run=run_demo_command)


def run_demo_command(args) -> int:
    run_demo(args.out, args.overrides, samples=args.samples)
    return 0


# ----------------------------------------------------------------------------- train
def add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="train a model from a config (YAML/JSON) with key=value overrides",
        description="Trains what the config describes. Under torchrun (or with --nproc N) it "
                    "trains with DistributedDataParallel (or FSDP with train.fsdp=true).")
    p.add_argument("config", nargs="?", help="YAML or JSON run config (omit with --resume)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.steps=500")
    p.add_argument("--resume", type=existing_path, metavar="DIR",
                   help="continue a run from its checkpoint or run directory")
    p.add_argument("--nproc", type=positive_int, default=1, help="processes on this machine (launches torchrun)")
    p.add_argument("--no-samples", action="store_true", help="skip the samples written at the end")
    p.set_defaults(run=run_train)


def run_train(args) -> int:
    if args.config and "=" in args.config and not os.path.exists(args.config):
        args.overrides.insert(0, args.config)  # only overrides were given (with --resume)
        args.config = None
    # the config is checked here, once, before torchrun starts processes that would each
    # report the same mistake behind a launcher traceback
    if args.resume:
        if args.config:
            raise ValueError(f"--resume takes its config from the checkpoint; give only key=value "
                             f"overrides, not {args.config!r}")
        run = resume_config(args.resume, args.overrides)
    elif args.config:
        run = load_run_config(args.config, args.overrides)
    else:
        raise ValueError("give a CONFIG file, or --resume DIR")
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _launch_torchrun(args.nproc, args.argv)
    trainer = train(run, resume=args.resume, sample_writer=None if args.no_samples else write_samples)
    trainer.dist.close()
    if trainer.dist.main:
        print(f"checkpoints in {os.path.join(run.train.out_dir, 'checkpoints')}")
    return 0


def _launch_torchrun(nproc: int, original: list[str]) -> int:
    """Re-run this command under torch.distributed.run with ``nproc`` processes."""
    argv, skip = [], False
    for arg in original:
        if skip or arg.startswith("--nproc="):
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        argv.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "vidiff", *argv]
    return subprocess.call(command)
