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
from vidiff.eval.commands import add_eval


def _csv(kind):
    def parse(text: str):
        try:
            return [kind(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, got {text!r}")
    return parse


# ----------------------------------------------------------------------------- demo
def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="train a small text-to-video model on MovingShapes and score it",
                       description="Trains a small text-to-video model on the built-in MovingShapes "
                                   "data (about 12 minutes on 2 CPU cores), writes samples of "
                                   "held-out prompts and prints its prompt adherence.")
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--samples", type=int, default=4, help="samples per triple when scoring (default 4)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the demo config")
    p.set_defaults(run=run_demo_command)


def run_demo_command(args) -> int:
    from vidiff.train.demo import run_demo
    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    run_demo(args.out, args.overrides, samples=args.samples)
    return 0


# ----------------------------------------------------------------------------- models
def add_models(sub) -> None:
    p = sub.add_parser("models", help="list the named model sizes with parameters and FLOPs",
                       description="Lists every registry size: architecture, parameter count and "
                                   "GFLOP of one forward pass on an unconditional clip.")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=32, help="frame side in pixels (default 32)")
    p.set_defaults(run=run_models)


def run_models(args) -> int:
    from vidiff.models.registry import describe_sizes
    if args.frames < 1 or args.size < 1:
        raise ValueError(f"--frames and --size must be >= 1, got {args.frames}, {args.size}")
    print(f"{'name':<12}{'arch':<6}{'parameters':>14}{f'GFLOP ({args.frames}x{args.size}x{args.size})':>22}")
    for row in describe_sizes(args.frames, args.size):
        print(f"{row['name']:<12}{row['arch']:<6}{row['parameters']:>14,}{row['gflop']:>22.1f}")
    return 0


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
    """Write JSON atomically (a temporary file, then a rename)."""
    from pathlib import Path
    from vidiff.train.checkpoint import write_json_atomic
    write_json_atomic(Path(path), data)


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


# ----------------------------------------------------------------------------- train
def add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="train a model from a config (YAML/JSON) with key=value overrides",
        description="Trains what the config describes. Under torchrun (or with --nproc N) it "
                    "trains with DistributedDataParallel (or FSDP with train.fsdp=true).")
    p.add_argument("config", nargs="?", help="YAML or JSON run config (omit with --resume)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.steps=500")
    p.add_argument("--resume", metavar="DIR", help="continue a run from its checkpoint or run directory")
    p.add_argument("--nproc", type=int, default=1, help="processes on this machine (launches torchrun)")
    p.add_argument("--no-samples", action="store_true", help="skip the samples written at the end")
    p.set_defaults(run=run_train)


def run_train(args) -> int:
    import os
    if args.config and "=" in args.config and not os.path.exists(args.config):
        args.overrides.insert(0, args.config)  # only overrides were given (with --resume)
        args.config = None
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _launch_torchrun(args.nproc, args.argv)
    from vidiff.train.config import load_run_config
    from vidiff.train.run import resume_config, train

    if args.resume:
        if args.config:
            raise ValueError(f"--resume takes its config from the checkpoint; give only key=value "
                             f"overrides, not {args.config!r}")
        run = resume_config(args.resume, args.overrides)
    elif args.config:
        run = load_run_config(args.config, args.overrides)
    else:
        raise ValueError("give a CONFIG file, or --resume DIR")
    trainer = train(run, resume=args.resume, samples=not args.no_samples)
    if trainer.dist.main:
        print(f"checkpoints in {os.path.join(run.train.out_dir, 'checkpoints')}")
    return 0


def _launch_torchrun(nproc: int, original: list[str]) -> int:
    """Re-run this command under torch.distributed.run with ``nproc`` processes."""
    import subprocess
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


# ----------------------------------------------------------------------------- generate
def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="text (or nothing) to video with a trained model",
                       description="Samples videos from a trained model. Sample k of each prompt "
                                   "uses seed + k.")
    p.add_argument("--model", required=True, metavar="DIR", help="checkpoint or run directory")
    p.add_argument("--prompt", help="the text prompt")
    p.add_argument("--prompts", metavar="FILE", help="a file with one prompt per line")
    p.add_argument("--negative-prompt", help="steer away from this text")
    p.add_argument("--frames", type=int, help="length of the video written (default: training length)")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sampler", default="dpmpp_2m")
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--guidance-rescale", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--samples", type=int, default=1, help="variations per prompt")
    p.add_argument("--grid", action="store_true", help="write all videos as one grid")
    p.add_argument("--out", required=True, help="output path; the extension picks the container")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    p.set_defaults(run=run_generate)


def run_generate(args) -> int:
    from pathlib import Path
    import vidiff
    from vidiff.video import Video

    if args.prompt is not None and args.prompts is not None:
        raise ValueError("give --prompt or --prompts, not both")
    prompts = [args.prompt] if args.prompt is not None else None
    if args.prompts is not None:
        path = Path(args.prompts)
        if not path.is_file():
            raise FileNotFoundError(f"prompts file {args.prompts!r} does not exist")
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not prompts:
            raise ValueError(f"prompts file {args.prompts!r} has no prompts")
    pipe = vidiff.load(args.model, device=args.device)
    videos = pipe.generate(prompts if prompts is not None else None, num_frames=args.frames,
                           steps=args.steps, guidance=args.guidance, seed=args.seed,
                           sampler=args.sampler, negative_prompt=args.negative_prompt,
                           samples=args.samples, height=args.height, width=args.width,
                           guidance_rescale=args.guidance_rescale, progress=True)
    videos = videos if isinstance(videos, list) else [videos]
    out = Path(args.out)
    if args.grid or len(videos) == 1:
        Video.grid(videos, cols=args.samples if len(videos) > 1 else 1).save(out)
        print(f"wrote {out}")
    else:
        for i, video in enumerate(videos):
            target = out.with_name(f"{out.stem}_{i}{out.suffix}")
            video.save(target)
            print(f"wrote {target}")
    return 0


# ----------------------------------------------------------------------------- reconstruct
def add_reconstruct(sub) -> None:
    p = sub.add_parser("reconstruct", help="encode and decode a video with an autoencoder; PSNR/SSIM",
                       description="Encodes and decodes VIDEO (any length and size) with a trained "
                                   "video autoencoder, chunk by chunk, writes the reconstruction "
                                   "and prints its PSNR and SSIM against the input.")
    p.add_argument("video", metavar="VIDEO")
    p.add_argument("--vae", required=True, metavar="DIR", help="autoencoder checkpoint or run directory")
    p.add_argument("--out", required=True, metavar="PATH", help="where to write the reconstruction")
    p.add_argument("--chunk", type=int, default=2, help="latent frames decoded at a time (default 2)")
    p.add_argument("--tile", type=int, help="spatial tile side in pixels for large frames")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    p.add_argument("--device")
    p.set_defaults(run=run_reconstruct)


def run_reconstruct(args) -> int:
    from vidiff.pipelines.autoencoder import load_autoencoder, reconstruct
    from vidiff.video import Video
    if args.chunk < 1:
        raise ValueError(f"--chunk must be >= 1, got {args.chunk}")
    vae = load_autoencoder(args.vae, device=args.device)
    video = Video.load(args.video)
    rebuilt, psnr, ssim = reconstruct(vae, video, chunk=args.chunk, tile=args.tile)
    rebuilt.save(args.out)
    report = {"video": args.video, "frames": video.num_frames, "height": video.height,
              "width": video.width, "psnr_db": psnr, "ssim": ssim, "out": args.out}
    print(f"{args.video}: {video.num_frames} frames {video.width}x{video.height} -> {args.out}")
    print(f"PSNR {psnr:.2f} dB   SSIM {ssim:.4f}")
    if args.json:
        _write_json(args.json, report)
    return 0


# ----------------------------------------------------------------------------- cache-latents
def add_cache_latents(sub) -> None:
    p = sub.add_parser("cache-latents", help="precompute a dataset's latents (and text) for latent training",
                       description="Encodes DATASET (shapes, digits, photopan or a video folder) "
                                   "with a trained autoencoder into safetensors shards; a latent "
                                   "denoiser then trains on CACHE (data.name=CACHE) without "
                                   "running the encoder. Data options default to the "
                                   "autoencoder's training data (frames, size) and are set as "
                                   "key=value (e.g. length=512 frames=17).")
    p.add_argument("dataset", metavar="DATASET")
    p.add_argument("--vae", required=True, metavar="DIR", help="autoencoder checkpoint or run directory")
    p.add_argument("--out", required=True, metavar="CACHE", help="cache folder to write")
    p.add_argument("--count", type=int, help="clips to cache (default: all of a finite dataset)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--shard-size", type=int, default=256, help="clips per shard (default 256)")
    p.add_argument("--text-kind", choices=["builtin", "clip", "t5"], default="builtin",
                   help="builtin: cache token ids; clip/t5: cache the frozen encoder's embeddings")
    p.add_argument("--text-path", metavar="DIR", help="local CLIP/T5 directory for --text-kind clip/t5")
    p.add_argument("--device")
    p.add_argument("overrides", nargs="*", help="data options as key=value")
    p.set_defaults(run=run_cache_latents)


def run_cache_latents(args) -> int:
    from vidiff.config import apply_overrides, to_dict
    from vidiff.data import DataConfig, build_dataset
    from vidiff.data.latents import cache_latents
    from vidiff.pipelines.autoencoder import autoencoder_fingerprint, load_autoencoder
    from vidiff.train.checkpoint import read_config

    vae = load_autoencoder(args.vae, device=args.device)
    trained_on = read_config(args.vae, kind="autoencoder").get("run", {}).get("data", {})
    data = {"name": args.dataset, "frames": trained_on.get("frames", 17), "size": trained_on.get("size", 32)}
    apply_overrides(data, [o[len("data."):] if o.startswith("data.") else o for o in args.overrides])
    config = DataConfig.from_dict(data)
    vae.latent_shape(config.frames, config.size, config.size)      # a clip size it can code
    text_encoder = None
    if args.text_kind != "builtin":
        from vidiff.text import TextEncoderConfig, build_text_encoder
        if not args.text_path:
            raise ValueError(f"--text-kind {args.text_kind} needs --text-path DIR (a local model directory)")
        text_encoder = build_text_encoder(TextEncoderConfig(kind=args.text_kind, path=args.text_path))
    out = cache_latents(vae, autoencoder_fingerprint(args.vae), build_dataset(config), args.out,
                        count=args.count, batch_size=args.batch_size, shard_size=args.shard_size,
                        text_encoder=text_encoder, source=to_dict(config), progress=True)
    print(f"wrote a latent cache in {out}: train on it with data.name={out} model.vae={args.vae} "
          f"data.frames={config.frames} data.size={config.size}")
    return 0


# ----------------------------------------------------------------------------- main
COMMANDS = [add_demo, add_train, add_generate, add_reconstruct, add_cache_latents, add_eval, add_models,
            add_check, add_schedule, add_convert]


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
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may follow options: `train CONFIG --nproc 2 train.steps=5`
        if getattr(args, "overrides", None) is not None and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.argv = argv
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
