"""``vidiff generate``: text (or nothing) to video with a trained model."""
from __future__ import annotations

from pathlib import Path

from vidiff.cli.common import (add_frame_options, add_long_options, add_sampling_options, existing_file, long_kwargs,
                               positive_int, sampling_kwargs, text_type, unit_interval)
from vidiff.pipelines.video import load
from vidiff.video import Video


# ----------------------------------------------------------------------------- generate
def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="text (or nothing) to video with a trained model",
                       description="Samples videos from a trained model. Sample k of each prompt "
                                   "uses seed + k.")
    p.add_argument("--prompt", type=text_type, action="append",
                   help="the text prompt; repeat it for several prompts (one video each, or one --grid)")
    p.add_argument("--prompts", type=existing_file, metavar="FILE", help="a file with one prompt per line")
    p.add_argument("--frames", type=positive_int,
                   help="length of the video written (default: training length; longer: window by window)")
    p.add_argument("--height", type=positive_int, help="frame height in pixels (default: training size)")
    p.add_argument("--width", type=positive_int, help="frame width in pixels (default: training size)")
    p.add_argument("--guidance-rescale", type=unit_interval, default=0.0)
    p.add_argument("--grid", action="store_true", help="write all videos as one grid")
    p.add_argument("--from-noise", type=existing_file, metavar="FILE",
                   help="a noise file of `vidiff invert`: reproduce its clip (its prompt, steps, guidance)")
    add_sampling_options(p)
    add_frame_options(p)
    add_long_options(p)
    p.set_defaults(run=run_generate)


def run_generate(args) -> int:
    if args.from_noise is not None:
        return _from_noise(args)
    if args.prompt is not None and args.prompts is not None:
        raise ValueError("give --prompt or --prompts, not both")
    prompts = args.prompt
    if args.prompts is not None:
        prompts = [line.strip() for line in Path(args.prompts).read_text().splitlines() if line.strip()]
        if not prompts:
            raise ValueError(f"prompts file {args.prompts!r} has no prompts")
    options = long_kwargs(args)      # a bad schedule file is refused before the model loads
    if options["prompt_schedule"] is not None and prompts is not None and len(prompts) > 1:
        raise ValueError("--prompt-schedule goes with at most one --prompt (the prompt before its first frame)")
    pipe = load(args.model, device=args.device)
    videos = pipe.generate(prompts if prompts is not None else None, num_frames=args.frames,
                           samples=args.samples, height=args.height, width=args.width,
                           guidance_rescale=args.guidance_rescale, **options, **sampling_kwargs(args))
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


# Options a noise file fixes itself (its prompt and clip size), refused beside --from-noise.
NOISE_FIXES = ("prompt", "prompts", "frames", "height", "width", "prompt_schedule", "negative_prompt")


def _from_noise(args) -> int:
    given = [f"--{name.replace('_', '-')}" for name in NOISE_FIXES if getattr(args, name) is not None]
    if given:
        raise ValueError(f"--from-noise reproduces the noise file's own prompt and size: drop {', '.join(given)}")
    if args.samples != 1:
        raise ValueError("--from-noise reproduces one clip: drop --samples")
    pipe = load(args.model, device=args.device)
    video = pipe.generate_from_noise(args.from_noise, progress=True)
    video.save(args.out)
    print(f"wrote {args.out}")
    return 0
