"""Frame tasks: ``vidiff animate``, ``predict``, ``interpolate``, ``inpaint``, ``outpaint``, ``extend``.

Each reads its input, builds the known clip and mask, and calls the pipeline's task method
(:mod:`vidiff.pipelines.frames`); every option is checked before the model loads, and every
output is written only after all sampling is done (atomically, by :meth:`vidiff.Video.save`).
"""
from __future__ import annotations

import argparse

from vidiff.cli.common import (add_frame_options, add_long_options, add_sampling_options, csv_list,
                               existing_path, long_kwargs, positive_int, read_video, sampling_kwargs, text_type,
                               write_videos)
from vidiff.pipelines.video import DEFAULTS, load


# Frame commands leave --steps, --sampler and --guidance unset, so the model's own frame-task
# defaults apply: its sample.known_guidance (1) for a mask-trained model (SampleConfig).
FRAME_GUIDANCE_HELP = (f"classifier-free guidance scale, 1 = off (default: the model's own, {DEFAULTS.known_guidance:g} "
                       f"for a model trained with known frames, else {DEFAULTS.guidance:g}, unless its config says "
                       "otherwise)")


# ----------------------------------------------------------------------------- value types
def pad_type(text: str) -> dict:
    """``left=8,right=8,top=0,bottom=0`` (sides left out are 0)."""
    sides = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, value = part.partition("=")
        if name not in ("left", "right", "top", "bottom") or not value.strip().lstrip("-").isdigit():
            raise argparse.ArgumentTypeError(f"expected SIDE=PIXELS pairs with sides left, right, top, "
                                             f"bottom (e.g. left=8,right=8), got {text!r}")
        if int(value) < 0:
            raise argparse.ArgumentTypeError(f"pad {name}={value} is negative; pads are >= 0 pixels")
        sides[name] = int(value)
    if not any(sides.values()):
        raise argparse.ArgumentTypeError(f"the pad {text!r} grows nothing: give one side > 0")
    return sides


def int_tuple(count: int, what: str):
    parse_list = csv_list(int)

    def parse(text: str) -> tuple[int, ...]:
        values = parse_list(text)
        if len(values) != count:
            raise argparse.ArgumentTypeError(f"{what} takes {count} comma-separated integers, got {text!r}")
        return tuple(values)
    parse.__name__ = what
    return parse


# ----------------------------------------------------------------------------- commands
def add_animate(sub) -> None:
    p = sub.add_parser("animate", help="image to video: the image becomes one frame of a clip")
    p.add_argument("image", type=existing_path, help="an image file (png, jpg) at the model's frame size")
    p.add_argument("--prompt", type=text_type)
    p.add_argument("--frames", type=positive_int, help="length of the video written (default: training length)")
    p.add_argument("--frame-index", type=int, default=0, help="the frame the image becomes (default 0)")
    add_sampling_options(p, guidance_help=FRAME_GUIDANCE_HELP)
    add_frame_options(p)
    p.set_defaults(run=run_animate)


def run_animate(args) -> int:
    image = read_video(args.image, "image")
    if image.num_frames != 1:
        raise ValueError(f"{args.image!r} has {image.num_frames} frames; animate takes one image")
    pipe = load(args.model, device=args.device)
    write_videos(pipe.animate(image, args.prompt, num_frames=args.frames, frame_index=args.frame_index,
                              samples=args.samples, **sampling_kwargs(args)), args.out)
    return 0


def add_predict(sub) -> None:
    p = sub.add_parser("predict", help="forecast: continue the last --context frames of a video")
    p.add_argument("video", type=existing_path)
    p.add_argument("--context", type=positive_int, required=True, help="frames of the video's end to start from")
    p.add_argument("--frames", type=positive_int, required=True, help="length of the clip written, context included")
    p.add_argument("--prompt", type=text_type)
    add_sampling_options(p, guidance_help=FRAME_GUIDANCE_HELP)
    add_frame_options(p)
    p.set_defaults(run=run_predict)


def run_predict(args) -> int:
    video = read_video(args.video)
    pipe = load(args.model, device=args.device)
    write_videos(pipe.predict(video, args.context, args.frames, args.prompt, samples=args.samples,
                              **sampling_kwargs(args)), args.out)
    return 0


def add_interpolate(sub) -> None:
    p = sub.add_parser("interpolate", help="in-between frames: (T-1)*factor+1 frames at factor x the fps")
    p.add_argument("video", type=existing_path)
    p.add_argument("--factor", type=positive_int, required=True, help="frame-rate multiplier, >= 2")
    p.add_argument("--prompt", type=text_type)
    add_sampling_options(p, samples=False, guidance_help=FRAME_GUIDANCE_HELP)
    add_frame_options(p)
    p.set_defaults(run=run_interpolate)


def run_interpolate(args) -> int:
    if args.factor < 2:
        raise ValueError(f"--factor must be >= 2 (1 would add no frames), got {args.factor}")
    video = read_video(args.video)
    pipe = load(args.model, device=args.device)
    write_videos(pipe.interpolate(video, args.factor, args.prompt, **sampling_kwargs(args)), args.out)
    return 0


def add_inpaint(sub) -> None:
    p = sub.add_parser("inpaint", help="regenerate a region of a video (--mask or --box)")
    p.add_argument("video", type=existing_path)
    p.add_argument("--prompt", type=text_type)
    p.add_argument("--mask", type=existing_path, help="an image (every frame) or a video of masks; white = regenerate")
    p.add_argument("--box", type=int_tuple(4, "box x0,y0,x1,y1"), help="pixels, x1 and y1 exclusive")
    p.add_argument("--frame-range", type=int_tuple(2, "frame range f0,f1"), help="frames of --box (inclusive)")
    add_sampling_options(p, guidance_help=FRAME_GUIDANCE_HELP)
    add_frame_options(p)
    p.set_defaults(run=run_inpaint)


def run_inpaint(args) -> int:
    if (args.mask is None) == (args.box is None):
        raise ValueError("give exactly one of --mask and --box")
    if args.frame_range is not None and args.box is None:
        raise ValueError("--frame-range goes with --box (a mask video sets its frames itself)")
    video = read_video(args.video)
    mask = read_video(args.mask, "mask") if args.mask is not None else None
    pipe = load(args.model, device=args.device)
    write_videos(pipe.inpaint(video, args.prompt, mask=mask, box=args.box, frame_range=args.frame_range,
                              samples=args.samples, **sampling_kwargs(args)), args.out)
    return 0


def add_outpaint(sub) -> None:
    p = sub.add_parser("outpaint", help="grow the frame by --pad; the original pixels stay in place")
    p.add_argument("video", type=existing_path)
    p.add_argument("--pad", type=pad_type, required=True, help="left=8,right=8,top=0,bottom=0 (pixels)")
    p.add_argument("--prompt", type=text_type)
    add_sampling_options(p, guidance_help=FRAME_GUIDANCE_HELP)
    add_frame_options(p)
    p.set_defaults(run=run_outpaint)


def run_outpaint(args) -> int:
    video = read_video(args.video)
    pipe = load(args.model, device=args.device)
    write_videos(pipe.outpaint(video, args.pad, args.prompt, samples=args.samples, **sampling_kwargs(args)),
                 args.out)
    return 0


def add_extend(sub) -> None:
    p = sub.add_parser("extend", help="continue a video to --frames frames, window by window")
    p.add_argument("video", type=existing_path)
    p.add_argument("--frames", type=positive_int, required=True, help="length of the video written")
    p.add_argument("--prompt", type=text_type)
    add_sampling_options(p, guidance_help=FRAME_GUIDANCE_HELP)
    add_frame_options(p)
    add_long_options(p)
    p.set_defaults(run=run_extend)


def run_extend(args) -> int:
    options = long_kwargs(args)       # a bad schedule file is refused before the model loads
    video = read_video(args.video)
    pipe = load(args.model, device=args.device)
    write_videos(pipe.extend(video, args.frames, args.prompt, samples=args.samples,
                             **options, **sampling_kwargs(args)), args.out)
    return 0


FRAME_COMMANDS = [add_animate, add_predict, add_interpolate, add_inpaint, add_outpaint, add_extend]
