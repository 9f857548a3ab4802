"""``vidiff ship``: a trained run becomes a shipped model, found by name (``--model NAME``)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from vidiff.cli.common import existing_file, existing_path, text_type
from vidiff.pipelines.shipped import (BUDGET_BYTES, MB, SHIPPED_DIR_ENV, check_name, shipped_dir, ship,
                                      total_bytes)


def add_ship(sub) -> None:
    p = sub.add_parser(
        "ship", help="put a trained model into the package as a shipped model",
        description="Writes vidiff/shipped/NAME/ (or $" + SHIPPED_DIR_ENV + "/NAME/) from a run or "
                    "checkpoint directory: its config, EMA weights in float16, text encoder, "
                    "autoencoder, run config and a card (training data, size, train command, "
                    "scores). Replaces an older version of NAME atomically; refuses a checkpoint "
                    f"without EMA weights and shipped models over {BUDGET_BYTES / MB:g} MB in all.")
    p.add_argument("source", type=existing_path, metavar="RUN_OR_CHECKPOINT",
                   help="run directory (its newest checkpoint) or checkpoint directory")
    p.add_argument("--name", type=name_type, required=True, help="the name users load it by, e.g. shapes")
    p.add_argument("--scores", type=existing_file, metavar="FILE.json",
                   help="measured scores to keep in the card (e.g. a vidiff eval shapes --json report)")
    p.add_argument("--description", type=text_type, help="one line saying what the model does")
    p.add_argument("--command", type=text_type, dest="train_command",   # `command` names the subcommand
                   help="the command that trained it (default: vidiff train and its run config)")
    p.set_defaults(run=run_ship)


def name_type(text: str) -> str:
    """An argparse type: a name a shipped model can have (``shapes``, ``shapes-latent``)."""
    try:
        return check_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def run_ship(args) -> int:
    scores = None
    if args.scores is not None:
        try:
            scores = json.loads(Path(args.scores).read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"scores file {args.scores!r} is not valid JSON: {e}") from None
    card = ship(args.source, args.name, scores=scores, description=args.description, command=args.train_command)
    folder = shipped_dir() / args.name
    print(f"shipped {args.name!r} to {str(folder)!r}: {card['parameters']:,} parameters, "
          f"{card['bytes'] / MB:.1f} MB; all shipped models: {total_bytes() / MB:.1f} MB of "
          f"{BUDGET_BYTES / MB:g} MB")
    return 0
