"""Commands about the installation itself: ``models``, ``check``, ``schedule``, ``convert``."""
from __future__ import annotations

import torch

from vidiff.cli.common import (add_video_out, csv_list, existing_path, int_at_least, json_out, one_of, positive_float,
                               positive_int, seed_type, write_json)
from vidiff.diffusion import SAMPLERS, SCHEDULES, Schedule
from vidiff.diffusion.gaussian import check_samplers
from vidiff.models.registry import describe_sizes
from vidiff.pipelines.shipped import BUDGET_BYTES, MB, shipped_dir, shipped_models
from vidiff.video import Video

SHOWN_SCORES = 6            # scores listed per shipped model; card.json holds them all


# ----------------------------------------------------------------------------- models
def add_models(sub) -> None:
    p = sub.add_parser("models", help="list the named model sizes, or the shipped models (--pretrained)",
                       description="Lists every registry size: architecture, parameter count and "
                                   "GFLOP of one forward pass on an unconditional clip. With "
                                   "--pretrained, the trained models shipped with vidiff instead.")
    p.add_argument("--frames", type=positive_int, default=16)
    p.add_argument("--size", type=positive_int, default=32, help="frame side in pixels (default 32)")
    p.add_argument("--pretrained", action="store_true",
                   help="list the shipped models: training data, size, train command and scores")
    p.set_defaults(run=run_models)


def run_models(args) -> int:
    if args.pretrained:
        print(format_shipped(shipped_models(), shipped_dir()))
        return 0
    print(f"{'name':<12}{'arch':<6}{'parameters':>14}{f'GFLOP ({args.frames}x{args.size}x{args.size})':>22}")
    for row in describe_sizes(args.frames, args.size):
        print(f"{row['name']:<12}{row['arch']:<6}{row['parameters']:>14,}{row['gflop']:>22.1f}")
    return 0


def format_shipped(rows: list[dict], folder) -> str:
    """``vidiff models --pretrained``: a block per shipped model (one line when there are none)."""
    if not rows:
        return f"no shipped models are installed in this build of vidiff ({str(folder)!r} holds none)"
    lines = []
    for row in rows:
        card = row["card"]
        if card is None:
            lines += [f"{row['name']}: damaged", f"  {row['problem']}"]
            continue
        lines += [f"{row['name']}: {card['description'] or '(no description)'}",
                  f"  model        {card['model']} {card['kind']}, " +
                  (f"over the base {card['base']!r} (its text encoder)" if card.get("base")
                   else f"text encoder: {card['text']}"),
                  f"  trained on   {_trained_on(card['trained_on'] or {})}",
                  f"  size         {card['parameters']:,} parameters, {row['bytes'] / MB:.1f} MB on disk "
                  f"({card['dtype']})",
                  f"  trained by   {card['command']}  ({card['steps']:,} steps of batch {card['batch_size']})",
                  f"  scores       {_scores(card['scores'])}"]
    total = sum(row["bytes"] for row in rows)
    lines.append(f"{len(rows)} shipped model{'s' * (len(rows) != 1)}, {total / MB:.1f} MB of the "
                 f"{BUDGET_BYTES / MB:g} MB budget, in {str(folder)!r}")
    return "\n".join(lines)


def _trained_on(data: dict) -> str:
    text = f"{data.get('name')}, {data.get('frames')} frames of {data.get('size')}x{data.get('size')}"
    held_out = data.get("held_out")
    if isinstance(held_out, list) and held_out:
        held_out = f"{len(held_out)} triples"
    return text + (f", held out: {held_out}" if held_out else "")


def _scores(scores: dict) -> str:
    """Numeric scores as ``key value`` (nested keys dotted, run settings left out)."""
    flat = []

    def walk(value, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k != "settings":
                    walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat.append(f"{key} {value:.4g}")
    walk(scores, "")
    if not flat:
        return "(none measured)"
    more = len(flat) - SHOWN_SCORES
    return ", ".join(flat[:SHOWN_SCORES]) + (f" (and {more} more in card.json)" if more > 0 else "")


# ----------------------------------------------------------------------------- check
def add_check(sub) -> None:
    p = sub.add_parser(
        "check", help="measure every sampler against an exact solution on this machine",
        description="Samples Gaussian data, whose optimal denoiser and probability-flow ODE are "
                    "known in closed form, with each sampler and schedule, and prints each "
                    "sampler's error against the exact answer and its measured convergence order.")
    p.add_argument("--schedules", type=csv_list(one_of("schedule", SCHEDULES)), default=["cosine", "linear", "flow"],
                   help=f"comma-separated, from {', '.join(SCHEDULES)} (default: cosine,linear,flow)")
    p.add_argument("--samplers", type=csv_list(one_of("sampler", SAMPLERS)), default=list(SAMPLERS),
                   help=f"comma-separated, from {', '.join(SAMPLERS)} (default: all)")
    p.add_argument("--steps", type=csv_list(positive_int), default=[10, 20, 50],
                   help="step counts (default: 10,20,50)")
    p.add_argument("--shift", type=positive_float, default=1.0, help="schedule time shift (default: 1)")
    p.add_argument("--seed", type=seed_type, default=0)
    p.add_argument("--json", type=json_out, metavar="PATH", help="also write the rows as JSON")
    p.set_defaults(run=run_check)


def run_check(args) -> int:

    report = {}
    print("Gaussian data x0 ~ N(0.5, 0.5^2), sample() defaults: relative L2 error "
          "||out - exact|| / ||exact||\nagainst the exact ODE endpoint (ddpm: relative error of the sample std)")
    for schedule_name in args.schedules:
        schedule = Schedule.from_name(schedule_name, shift=args.shift)
        rows = check_samplers(schedule, args.samplers, args.steps, seed=args.seed)
        report[schedule_name] = rows
        print(f"\nschedule {schedule_name} (shift {args.shift:g}, t_max {schedule.t_max:.5f})")
        print(f"{'sampler':<10}{'order':>7}" + "".join(f"{f'{n} steps':>13}" for n in args.steps))
        for name in args.samplers:
            mine = [r for r in rows if r["sampler"] == name]
            order = "-" if mine[0]["order"] != mine[0]["order"] else f"{mine[0]['order']:.2f}"
            errors = [r["std_error"] if name == "ddpm" else r["rel_l2"] for r in mine]
            print(f"{name:<10}{order:>7}" + "".join(f"{e:>13.2%}" for e in errors))
    if args.json:
        write_json(args.json, report)
    return 0


# ----------------------------------------------------------------------------- schedule
def add_schedule(sub) -> None:
    p = sub.add_parser("schedule", help="print a noise schedule's alpha, sigma and log-SNR",
                       description="Tabulates alpha(t), sigma(t) and log-SNR(t) of a schedule.")
    p.add_argument("name", type=one_of("schedule", SCHEDULES), help=f"one of {', '.join(SCHEDULES)}")
    p.add_argument("--shift", type=positive_float, default=1.0)
    p.add_argument("--zero-terminal-snr", action="store_true")
    p.add_argument("--points", type=int_at_least(2), default=11, help="rows, evenly spaced in t (default 11)")
    p.set_defaults(run=run_schedule)


def run_schedule(args) -> int:

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
    p.add_argument("input", type=existing_path, help="video file or folder of frames")
    add_video_out(p)
    p.add_argument("--fps", type=positive_float, help="override the frame rate")
    p.add_argument("--frames", type=positive_int, help="keep only the first N frames")
    p.set_defaults(run=run_convert)


def run_convert(args) -> int:

    video = Video.load(args.input, max_frames=args.frames)
    if args.fps is not None:
        video = Video(video.frames, fps=args.fps)
    video.save(args.out)
    print(f"wrote {args.out}: {video.num_frames} frames of {video.width}x{video.height} at {video.fps:g} fps")
    return 0
