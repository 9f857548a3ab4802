"""``vidiff generate``: text (or nothing) to video with a trained model."""
from __future__ import annotations

from pathlib import Path

from vidiff.cli.common import (add_model_option, device_type, existing_file, nonnegative_float, one_of,
                               positive_int, seed_type, text_type, unit_interval, video_out)
from vidiff.diffusion import SAMPLERS
from vidiff.pipelines.video import DEFAULTS, load
from vidiff.video import Video


# ----------------------------------------------------------------------------- generate
def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="text (or nothing) to video with a trained model",
                       description="Samples videos from a trained model. Sample k of each prompt "
                                   "uses seed + k.")
    add_model_option(p)
    p.add_argument("--prompt", type=text_type, action="append",
                   help="the text prompt; repeat it for several prompts (one video each, or one --grid)")
    p.add_argument("--prompts", type=existing_file, metavar="FILE", help="a file with one prompt per line")
    p.add_argument("--negative-prompt", type=text_type, help="steer away from this text")
    p.add_argument("--frames", type=positive_int, help="length of the video written (default: training length)")
    p.add_argument("--height", type=positive_int, help="frame height in pixels (default: training size)")
    p.add_argument("--width", type=positive_int, help="frame width in pixels (default: training size)")
    p.add_argument("--steps", type=positive_int, default=DEFAULTS.steps)
    p.add_argument("--sampler", type=one_of("sampler", SAMPLERS), default=DEFAULTS.sampler)
    p.add_argument("--guidance", type=nonnegative_float, default=DEFAULTS.guidance, help="1 = off")
    p.add_argument("--guidance-rescale", type=unit_interval, default=0.0)
    p.add_argument("--seed", type=seed_type, default=0)
    p.add_argument("--samples", type=positive_int, default=1, help="variations per prompt")
    p.add_argument("--grid", action="store_true", help="write all videos as one grid")
    p.add_argument("--out", type=video_out, required=True,
                   help="output path; the extension picks the container (.mp4, .webm, .gif; none: PNG folder)")
    p.add_argument("--device", type=device_type, help="cpu, cuda, ... (default: cuda if available)")
    p.set_defaults(run=run_generate)


def run_generate(args) -> int:

    if args.prompt is not None and args.prompts is not None:
        raise ValueError("give --prompt or --prompts, not both")
    prompts = args.prompt
    if args.prompts is not None:
        prompts = [line.strip() for line in Path(args.prompts).read_text().splitlines() if line.strip()]
        if not prompts:
            raise ValueError(f"prompts file {args.prompts!r} has no prompts")
    pipe = load(args.model, device=args.device)
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
