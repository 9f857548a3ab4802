"""``vidiff upscale``: spatial super-resolution with a stage model (e.g. the shipped ``shapes-sr``).

Options are checked and the video is read before the model loads; the output is written only
after all sampling is done (atomically, by :meth:`vidiff.Video.save`).
"""
from __future__ import annotations

from vidiff.cli.common import (add_model_option, add_video_out, device_type, existing_path, one_of, positive_int,
                               read_video, seed_type, text_type, unit_interval)
from vidiff.diffusion import SAMPLERS
from vidiff.pipelines.upscale import DEFAULT_NOISE_LEVEL
from vidiff.pipelines.video import load

DEFAULT_STAGE = "shapes-sr"


def add_upscale(sub) -> None:
    p = sub.add_parser("upscale", help="spatial super-resolution: the video at --scale times its size",
                       description="Runs a super-resolution stage conditioned on the (upsampled) video: "
                                   "the same frames and frame rate, each frame --scale times larger. Long "
                                   "videos go window by window; large frames need --tile.")
    p.add_argument("video", type=existing_path)
    p.add_argument("--scale", type=positive_int, help="the factor (default: the stage's; others are refused)")
    p.add_argument("--noise-level", type=unit_interval, default=DEFAULT_NOISE_LEVEL,
                   help="diffusion time of the noise put on the input first (0 = trust it exactly; "
                        "a little lets the stage repair an earlier stage's artefacts)")
    p.add_argument("--prompt", type=text_type, help="for a text-conditioned stage: the video's prompt")
    p.add_argument("--tile", type=positive_int, metavar="PIXELS",
                   help="tile side in input pixels, for frames larger than the stage's training input")
    add_model_option(p, default=DEFAULT_STAGE)
    p.add_argument("--steps", type=positive_int, help="sampling steps (default: the stage's recorded ones)")
    p.add_argument("--sampler", type=one_of("sampler", SAMPLERS))
    p.add_argument("--seed", type=seed_type, default=0)
    add_video_out(p)
    p.add_argument("--device", type=device_type, help="cpu, cuda, ... (default: cuda if available)")
    p.set_defaults(run=run_upscale)


def run_upscale(args) -> int:
    video = read_video(args.video)
    pipe = load(args.model or DEFAULT_STAGE, device=args.device)
    out = pipe.upscale(video, args.scale, args.noise_level, args.prompt, seed=args.seed, steps=args.steps,
                       sampler=args.sampler, tile=args.tile, progress=True)
    out.save(args.out)
    print(f"wrote {args.out} ({out.width}x{out.height}, {out.num_frames} frames)")
    return 0
