"""Editing a given video: ``vidiff invert``, ``vidiff edit``, ``vidiff restyle``.

Each reads its video, checks every option before the model loads, and writes its output
only after all sampling is done, atomically (the noise file through
:func:`vidiff.checkpoint.write_file_atomic`, videos through :meth:`vidiff.Video.save`).
``vidiff generate --from-noise FILE`` (in :mod:`vidiff.cli.generate`) maps a noise file back.
"""
from __future__ import annotations

from vidiff.cli.common import (add_model_option, add_video_out, add_sampling_options, device_type, existing_path, int_at_least,
                               nonnegative_float, one_of, output_file, positive_int, read_video, sampling_kwargs,
                               text_type, unit_interval, write_videos)
from vidiff.pipelines.editing import DEFAULT_INJECT, DEFAULT_INJECTION, EDIT_CFG_INVERSION, EDIT_GUIDANCE, INVERT_STEPS
from vidiff.pipelines.injection import INJECT_MODES
from vidiff.pipelines.inversion import CFG_INVERSIONS, NTI_ITERATIONS
from vidiff.pipelines.video import load

noise_out = output_file((".safetensors",))
CFG_HELP = ("how the inversion deals with guidance > 1: none (invert the guided prediction; drifts), "
            "negative (negative-prompt inversion, free), nti (null-text optimisation, ~15x the cost)")


def _add_inversion_options(p, guidance: float, cfg_inversion: str) -> None:
    """What ``invert`` and ``edit`` share: the DDIM grid and how guidance is inverted."""
    add_model_option(p)
    p.add_argument("--steps", type=positive_int, default=INVERT_STEPS, help="DDIM steps of the inversion")
    p.add_argument("--refine", type=int_at_least(0), default=0,
                   help="fixed-point iterations per inverse step (one more model call each)")
    p.add_argument("--guidance", type=nonnegative_float, default=guidance, help="1 = off")
    p.add_argument("--cfg-inversion", type=one_of("cfg inversion", CFG_INVERSIONS), default=cfg_inversion,
                   help=CFG_HELP)
    p.add_argument("--nti-iterations", type=positive_int, default=NTI_ITERATIONS,
                   help="optimiser steps per sampling step of --cfg-inversion nti")
    p.add_argument("--device", type=device_type, help="cpu, cuda, ... (default: cuda if available)")


# ----------------------------------------------------------------------------- invert
def add_invert(sub) -> None:
    p = sub.add_parser("invert", help="find the noise that reproduces a video (a noise file)",
                       description="DDIM inversion: writes the noise that `vidiff generate --from-noise` maps "
                                   "back onto VIDEO, with the prompt, steps, guidance and model it needs.")
    p.add_argument("video", type=existing_path)
    p.add_argument("--prompt", type=text_type, help="what the video shows (left out: unconditional model)")
    p.add_argument("--out", type=noise_out, required=True, help="the noise file to write (.safetensors)")
    _add_inversion_options(p, guidance=1.0, cfg_inversion="none")
    p.set_defaults(run=run_invert)


def run_invert(args) -> int:
    video = read_video(args.video)
    pipe = load(args.model, device=args.device)
    inversion = pipe.invert(video, args.prompt, steps=args.steps, refine=args.refine, guidance=args.guidance,
                            cfg_inversion=args.cfg_inversion, nti_iterations=args.nti_iterations, progress=True)
    inversion.save(args.out)
    print(f"wrote {args.out}")
    return 0


# ----------------------------------------------------------------------------- edit
def add_edit(sub) -> None:
    p = sub.add_parser("edit", help="change a video's content by its prompt, keeping the rest",
                       description="Inverts VIDEO under --source-prompt and regenerates it under --prompt, "
                                   "replaying the source's attention for the first --inject of the steps.")
    p.add_argument("video", type=existing_path)
    p.add_argument("--source-prompt", type=text_type, required=True, help="what the video shows")
    p.add_argument("--prompt", type=text_type, required=True, help="what it should show")
    add_video_out(p)
    p.add_argument("--strength", type=unit_interval, default=1.0,
                   help="how far to invert, in [0, 1]: 1 = to pure noise (largest edits), lower keeps more")
    p.add_argument("--inject", type=unit_interval, default=DEFAULT_INJECT, metavar="TAU",
                   help="fraction of the steps, in [0, 1], that replay the source run's attention")
    p.add_argument("--injection", type=one_of("injection", INJECT_MODES), default=DEFAULT_INJECTION,
                   help="kv: self-attention keys/values and cross-attention maps; maps: attention maps only")
    _add_inversion_options(p, guidance=EDIT_GUIDANCE, cfg_inversion=EDIT_CFG_INVERSION)
    p.set_defaults(run=run_edit)


def run_edit(args) -> int:
    video = read_video(args.video)
    pipe = load(args.model, device=args.device)
    write_videos(pipe.edit(video, args.source_prompt, args.prompt, strength=args.strength, inject=args.inject,
                           steps=args.steps, guidance=args.guidance, cfg_inversion=args.cfg_inversion,
                           refine=args.refine, injection=args.injection, nti_iterations=args.nti_iterations,
                           progress=True), args.out)
    return 0


# ----------------------------------------------------------------------------- restyle
def add_restyle(sub) -> None:
    p = sub.add_parser("restyle", help="SDEdit: noise a video part way, then denoise it under a new prompt")
    p.add_argument("video", type=existing_path)
    p.add_argument("--prompt", type=text_type, help="the new description (left out: unconditional model)")
    p.add_argument("--strength", type=unit_interval, default=0.6,
                   help="diffusion time the video is noised to, in [0, 1]: 0 keeps it, 1 is pure noise")
    add_sampling_options(p)
    p.set_defaults(run=run_restyle)


def run_restyle(args) -> int:
    video = read_video(args.video)
    pipe = load(args.model, device=args.device)
    write_videos(pipe.restyle(video, args.prompt, strength=args.strength, samples=args.samples,
                              **sampling_kwargs(args)), args.out)
    return 0


EDITING_COMMANDS = [add_invert, add_edit, add_restyle]
