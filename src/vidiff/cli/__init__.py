"""The ``vidiff`` command: one subcommand per job, one module per command family.

Each family module registers its subcommands with ``add_*(sub)`` functions that build a
parser and point it at a ``run_*(args) -> exit status`` function.

Errors the user can fix print one line, ``vidiff CMD: error: ...``, and exit with status 2,
never a traceback, and before anything is written: option values are checked as the command
line is parsed (the types in :mod:`vidiff.cli.common`), and what only a loaded model or file can
tell (a checkpoint of another kind, a size the network cannot take, a corrupt video) is raised
by the library as ``ValueError`` (``ConfigError``, ``CheckpointError``, ``DatasetError``) or
``OSError`` before its work starts. Ctrl-C prints one line and exits with status 130. Anything
else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from vidiff import __version__
from vidiff.cli.common import Parser
from vidiff.cli.editing import EDITING_COMMANDS
from vidiff.cli.eval import add_eval
from vidiff.cli.frames import FRAME_COMMANDS
from vidiff.cli.generate import add_generate
from vidiff.cli.info import add_check, add_convert, add_models, add_schedule
from vidiff.cli.latent import add_cache_latents, add_reconstruct
from vidiff.cli.ship import add_ship
from vidiff.cli.synth import add_synth
from vidiff.cli.train import add_demo, add_train
from vidiff.cli.upscale import add_upscale


# ----------------------------------------------------------------------------- main
COMMANDS = [add_demo, add_train, add_generate, *FRAME_COMMANDS, add_upscale, *EDITING_COMMANDS, add_synth, add_reconstruct, add_cache_latents, add_eval,
            add_models, add_ship, add_check, add_schedule, add_convert]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="vidiff", description="vidiff: video diffusion models — train, generate, evaluate.")
    parser.add_argument("--version", action="version", version=f"vidiff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # key=value overrides may follow options: `train CONFIG --nproc 2 train.steps=5`
            if getattr(args, "overrides", None) is not None and all("=" in e and not e.startswith("-") for e in extra):
                args.overrides += extra
            else:
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as e:  # --help, --version, or a bad value (its one line already printed)
        return e.code
    args.argv = argv
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    name = " ".join(["vidiff", args.command] + ([args.metric] if getattr(args, "metric", None) else []))
    try:
        return args.run(args)
    except (ValueError, OSError) as e:   # a bad value, a file that is missing or cannot be written
        print(f"{name}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130                       # 128 + SIGINT, as a shell reports it


def one_line(error: BaseException) -> str:
    """An exception's message on one line (its lines joined by '; '), or its type's name."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__
