"""``vidiff generate``: text (or nothing) to video with a trained model."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from vidiff.cli.common import (SAMPLING_OPTIONS, add_frame_options, add_long_options, add_sampling_options,
                               existing_file, existing_path, long_kwargs, model_type,
                               nonnegative_float, one_of, positive_int, read_video, sampling_kwargs, text_type,
                               unit_interval)
from vidiff.models.controlnet import CONTROL_TYPES
from vidiff.pipelines.cascade import Cascade
from vidiff.pipelines.control import parse_control_range
from vidiff.pipelines.video import load
from vidiff.video import Video


def control_range_type(text: str) -> tuple[float, float]:
    try:
        return parse_control_range(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


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
    p.add_argument("--cascade", metavar="FILE_OR_NAME",
                   help="run a cascade instead of one model: a YAML list of stages (base, interpolate, "
                        "upscale) or a shipped cascade's name (shapes: 32x32 base -> 64x64); "
                        "its stages set models and sampling")
    p.add_argument("--reference", type=existing_path, metavar="IMAGE",
                   help="an image whose subject and style the video shows (a model with a reference "
                        "pathway, e.g. shapes-reference); the prompt may name only the motion")
    control = p.add_argument_group("control (ControlNet: docs/control.md)")
    control.add_argument("--control", type=existing_path, metavar="MAPS",
                         help="per-frame structure maps to follow: a map video or a folder of frames")
    control.add_argument("--control-from", type=existing_path, metavar="VIDEO",
                         help="extract the maps from this video with the built-in extractor of --control-type")
    control.add_argument("--control-type", type=one_of("control type", CONTROL_TYPES),
                         help="what the maps are: silhouette, edges, depth, custom "
                              "(default: the ControlNet's own)")
    control.add_argument("--controlnet", type=model_type, metavar="NAME_OR_DIR",
                         help="the ControlNet (default: the shipped one of --control-type)")
    control.add_argument("--control-scale", type=nonnegative_float, default=1.0,
                         help="weight of the control (0 = off)")
    control.add_argument("--control-range", type=control_range_type, default=(0.0, 1.0), metavar="START,END",
                         help="the part of the sampling run the control acts in, 0 = pure noise, 1 = clean "
                              "(default 0,1; 0,0.6 sets the layout and leaves the details to the model)")
    control.add_argument("--extractor", type=existing_file, metavar="FILE",
                         help="a TorchScript model that makes depth or custom maps for --control-from")
    add_sampling_options(p)      # unset: the model's own, unless a cascade's stages or a noise file set them
    add_frame_options(p)
    add_long_options(p)
    p.set_defaults(run=run_generate)


def run_generate(args) -> int:
    if args.from_noise is not None:
        return _from_noise(args)
    if args.cascade is not None:
        return _cascade(args)
    prompts = _prompts(args)
    options = long_kwargs(args)      # a bad schedule file is refused before the model loads
    if options["prompt_schedule"] is not None and prompts is not None and len(prompts) > 1:
        raise ValueError("--prompt-schedule goes with at most one --prompt (the prompt before its first frame)")
    control = _control_kwargs(args)     # bad maps or a missing extractor: refused before the model loads
    if args.reference is not None:
        image = read_video(args.reference, "reference image")
        if image.num_frames != 1:
            raise ValueError(f"--reference {args.reference!r} has {image.num_frames} frames; give one image")
        control["reference"] = image
    pipe = load(args.model, device=args.device)
    videos = pipe.generate(prompts if prompts is not None else None, num_frames=args.frames,
                           samples=args.samples, height=args.height, width=args.width,
                           guidance_rescale=args.guidance_rescale, **options, **control, **sampling_kwargs(args))
    videos = videos if isinstance(videos, list) else [videos]
    _write(videos, args)
    return 0


def _prompts(args) -> Optional[list[str]]:
    """The prompts of ``--prompt`` (repeated) or ``--prompts FILE`` (None: neither)."""
    if args.prompt is not None and args.prompts is not None:
        raise ValueError("give --prompt or --prompts, not both")
    prompts = args.prompt
    if args.prompts is not None:
        prompts = [line.strip() for line in Path(args.prompts).read_text().splitlines() if line.strip()]
        if not prompts:
            raise ValueError(f"prompts file {args.prompts!r} has no prompts")
    return prompts


def _write(videos: list[Video], args) -> None:
    """One video (or ``--grid``, all of them) to ``--out``; else OUT_0, OUT_1, ..."""
    out = Path(args.out)
    if args.grid or len(videos) == 1:
        Video.grid(videos, cols=args.samples if len(videos) > 1 else 1).save(out)
        print(f"wrote {out}")
    else:
        for i, video in enumerate(videos):
            target = out.with_name(f"{out.stem}_{i}{out.suffix}")
            video.save(target)
            print(f"wrote {target}")


def _control_kwargs(args) -> dict:
    """``generate``'s control arguments from the options, the videos read (one clear error for
    a file that is not a video) and the combinations checked."""
    if args.control is not None and args.control_from is not None:
        raise ValueError("give --control MAPS or --control-from VIDEO, not both")
    given = args.control is not None or args.control_from is not None
    if not given:
        others = [f for f, v in (("--control-type", args.control_type), ("--controlnet", args.controlnet),
                                 ("--extractor", args.extractor)) if v is not None]
        if others:
            raise ValueError(f"{', '.join(others)} need control maps: --control MAPS or --control-from VIDEO")
        return {}
    if args.control_type in ("depth", "custom") and args.control_from is not None and args.extractor is None:
        raise ValueError(f"--control-type {args.control_type} extracts its maps with a model you give: "
                         "add --extractor FILE (a TorchScript file), or pass ready maps with --control")
    if args.extractor is not None and args.control_from is None:
        raise ValueError("--extractor makes maps from --control-from VIDEO; --control maps need none")
    kwargs = {"control_type": args.control_type, "controlnet": args.controlnet,
              "control_scale": args.control_scale, "control_range": args.control_range,
              "extractor": args.extractor}
    if args.control is not None:
        kwargs["control"] = read_video(args.control, "control maps")
    else:
        kwargs["control_from"] = read_video(args.control_from, "control video")
    return kwargs


# Options a cascade's stages set themselves (and options no stage reads), refused beside --cascade.
CASCADE_FIXES = ("model", "frames", "height", "width", "negative_prompt", "prompt_schedule", "reference",
                 "control", "control_from", "control_type", "controlnet", "extractor", "method", "overlap",
                 *SAMPLING_OPTIONS)


def _cascade(args) -> int:
    given = [f"--{name.replace('_', '-')}" for name in CASCADE_FIXES if getattr(args, name) is not None]
    if given:
        raise ValueError(f"--cascade takes its models, sizes and sampling from its stages: drop {', '.join(given)}")
    cascade = Cascade.load(args.cascade, device=args.device)       # checked before any model loads
    prompts = _prompts(args) or [None]
    videos = [cascade(p, seed=args.seed + k, progress=True) for p in prompts for k in range(args.samples)]
    _write(videos, args)
    return 0


# Options a noise file fixes itself (its prompt, clip size and sampling), refused beside --from-noise.
NOISE_FIXES = ("cascade", "prompt", "prompts", "frames", "height", "width", "prompt_schedule", "negative_prompt",
               *SAMPLING_OPTIONS)


def _from_noise(args) -> int:
    given = [f"--{name.replace('_', '-')}" for name in NOISE_FIXES if getattr(args, name) is not None]
    if given:
        raise ValueError(f"--from-noise reproduces the noise file's own prompt, size and sampling: "
                         f"drop {', '.join(given)}")
    if args.samples != 1:
        raise ValueError("--from-noise reproduces one clip: drop --samples")
    pipe = load(args.model, device=args.device)
    video = pipe.generate_from_noise(args.from_noise, progress=True)
    video.save(args.out)
    print(f"wrote {args.out}")
    return 0
