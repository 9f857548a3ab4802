"""The ``vidiff`` command: one subcommand per job.

Each subcommand is registered by a small ``add_*`` function that builds its parser and
points it at a ``run_*`` function; errors the user can fix (a bad name, a missing file)
print one line and exit with status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional

from vidiff import __version__


def _csv(kind):
    def parse(text: str):
        try:
            return [kind(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, got {text!r}")
    return parse


# ----------------------------------------------------------------------------- check
def add_check(sub) -> None:
    from vidiff.diffusion import SAMPLERS, SCHEDULES
    p = sub.add_parser(
        "check", help="measure every sampler against an exact solution on this machine",
        description="Samples Gaussian data, whose optimal denoiser and probability-flow ODE are "
                    "known in closed form, with each sampler and schedule, and prints each "
                    "sampler's error against the exact answer and its measured convergence order.")
    p.add_argument("--schedules", type=_csv(str), default=["cosine", "linear", "flow"],
                   help=f"comma-separated, from {', '.join(SCHEDULES)} (default: cosine,linear,flow)")
    p.add_argument("--samplers", type=_csv(str), default=list(SAMPLERS),
                   help=f"comma-separated, from {', '.join(SAMPLERS)} (default: all)")
    p.add_argument("--steps", type=_csv(int), default=[10, 20, 50], help="step counts (default: 10,20,50)")
    p.add_argument("--shift", type=float, default=1.0, help="schedule time shift (default: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    p.set_defaults(run=run_check)


def run_check(args) -> int:
    from vidiff.diffusion import SAMPLERS, Schedule
    from vidiff.diffusion.gaussian import check_samplers

    for name in args.samplers:
        if name not in SAMPLERS:
            raise ValueError(f"unknown sampler {name!r}; accepted: {sorted(SAMPLERS)}")
    if any(s < 1 for s in args.steps):
        raise ValueError(f"steps must be >= 1, got {args.steps}")
    report = {}
    print("Gaussian data x0 ~ N(0.5, 0.5^2): error against the exact solution "
          "(ddpm: error of the sample std)")
    for schedule_name in args.schedules:
        schedule = Schedule.from_name(schedule_name, shift=args.shift)
        rows = check_samplers(schedule, args.samplers, args.steps, seed=args.seed)
        report[schedule_name] = rows
        print(f"\nschedule {schedule_name} (shift {args.shift:g}, t_max {schedule.t_max:.5f})")
        print(f"{'sampler':<10}{'order':>7}" + "".join(f"{f'{n} steps':>13}" for n in args.steps))
        for name in args.samplers:
            mine = [r for r in rows if r["sampler"] == name]
            order = "-" if mine[0]["order"] != mine[0]["order"] else f"{mine[0]['order']:.2f}"
            print(f"{name:<10}{order:>7}" + "".join(f"{r['max_error']:>13.2e}" for r in mine))
    if args.json:
        _write_json(args.json, report)
    return 0


def _write_json(path: str, data) -> None:
    """Write JSON atomically: a temporary file in the same folder, then rename."""
    import os
    import tempfile
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------- schedule
def add_schedule(sub) -> None:
    from vidiff.diffusion import SCHEDULES
    p = sub.add_parser("schedule", help="print a noise schedule's alpha, sigma and log-SNR",
                       description="Tabulates alpha(t), sigma(t) and log-SNR(t) of a schedule.")
    p.add_argument("name", help=f"one of {', '.join(SCHEDULES)}")
    p.add_argument("--shift", type=float, default=1.0)
    p.add_argument("--zero-terminal-snr", action="store_true")
    p.add_argument("--points", type=int, default=11, help="rows, evenly spaced in t (default 11)")
    p.set_defaults(run=run_schedule)


def run_schedule(args) -> int:
    import torch
    from vidiff.diffusion import Schedule

    if args.points < 2:
        raise ValueError(f"--points must be >= 2, got {args.points}")
    schedule = Schedule.from_name(args.name, shift=args.shift, zero_terminal_snr=args.zero_terminal_snr)
    t = torch.linspace(0, 1, args.points, dtype=torch.float64)
    alpha, sigma = schedule.alpha_sigma(t)
    lam = schedule.log_snr(t)
    print(f"{'t':>8}{'alpha':>12}{'sigma':>12}{'log-SNR':>12}")
    for row in zip(t.tolist(), alpha.tolist(), sigma.tolist(), lam.tolist()):
        print(f"{row[0]:>8.3f}{row[1]:>12.6f}{row[2]:>12.6f}{row[3]:>12.3f}")
    print(f"default first sampling time t_max = {schedule.t_max:.6f}")
    return 0


# ----------------------------------------------------------------------------- convert
def add_convert(sub) -> None:
    p = sub.add_parser("convert", help="convert a video between containers (mp4, webm, gif, png folder)",
                       description="Reads any video PyAV decodes (or a folder of frames) and writes "
                                   "it as .mp4 (H.264), .webm, .gif or a folder of PNGs.")
    p.add_argument("input", help="video file or folder of frames")
    p.add_argument("--out", required=True, help="output path; the extension picks the container")
    p.add_argument("--fps", type=float, help="override the frame rate")
    p.add_argument("--frames", type=int, help="keep only the first N frames")
    p.set_defaults(run=run_convert)


def run_convert(args) -> int:
    from vidiff.video import Video

    video = Video.load(args.input, max_frames=args.frames)
    if args.fps is not None:
        if not args.fps > 0:
            raise ValueError(f"--fps must be > 0, got {args.fps}")
        video = Video(video.frames, fps=args.fps)
    video.save(args.out)
    print(f"wrote {args.out}: {video.num_frames} frames of {video.width}x{video.height} at {video.fps:g} fps")
    return 0


# ----------------------------------------------------------------------------- main
COMMANDS = [add_check, add_schedule, add_convert]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vidiff", description="vidiff: video diffusion models — train, generate, evaluate.")
    parser.add_argument("--version", action="version", version=f"vidiff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 0
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"vidiff {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
