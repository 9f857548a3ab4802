"""``vidiff synth``: a labelled synthetic MovingShapes dataset made by a model (see docs/synth.md)."""
from __future__ import annotations

import os

import torch

from vidiff.apps.synth import CLIP_FORMATS, HELD_OUT, format_report, model_identity, shard_from_env, synthesize
from vidiff.cli.common import (add_model_option, device_type, nonnegative_float, one_of, output_dir,
                               positive_int, seed_type)
from vidiff.diffusion import SAMPLERS
from vidiff.pipelines.video import DEFAULTS, load


def add_synth(sub) -> None:
    p = sub.add_parser(
        "synth", help="a labelled synthetic dataset from a model, every label verified",
        description="Generates N MovingShapes clips with a text-to-video model, reads each back with "
                    "the MovingShapes detector, regenerates (new seed) any clip that disagrees with "
                    "its prompt, and writes the clips with labels.jsonl and captions.jsonl: a folder "
                    "that trains as a VideoFolder. Reproducible from --seed, resumable (run the same "
                    "command again), and sharded under torchrun (each rank takes indices "
                    "i = RANK mod WORLD_SIZE). See docs/synth.md.")
    add_model_option(p)
    # -n as well: under torchrun, whose own parser takes --n for an abbreviation of --nnodes & co.
    p.add_argument("--n", "-n", type=positive_int, required=True, dest="n",
                   help="number of clips (indices 0 .. N-1); write -n N under torchrun")
    p.add_argument("--out", type=output_dir, required=True, metavar="DIR",
                   help="dataset folder: new, empty, or one this command began with the same settings")
    p.add_argument("--seed", type=seed_type, default=0, help="the dataset's seed: prompts and clip seeds")
    p.add_argument("--held-out", type=one_of("held-out mode", HELD_OUT), default="include",
                   help="the model's held-out triples: include them (default: all 84 triples), "
                        "exclude them, or only them")
    p.add_argument("--frames", type=positive_int, help="clip length (default: the model's training length)")
    own = "the model's own, {} unless its config says otherwise"
    p.add_argument("--steps", type=positive_int, help=f"default: {own.format(DEFAULTS.steps)}")
    p.add_argument("--sampler", type=one_of("sampler", SAMPLERS), help=f"default: {own.format(DEFAULTS.sampler)}")
    p.add_argument("--guidance", type=nonnegative_float, help=f"1 = off (default: {own.format(f'{DEFAULTS.guidance:g}')})")
    p.add_argument("--max-attempts", type=positive_int, default=8,
                   help="samples tried per clip before it is recorded as failed (default 8)")
    p.add_argument("--batch", type=positive_int, default=16, help="clips sampled per call (default 16)")
    p.add_argument("--format", type=one_of("clip format", CLIP_FORMATS), default="mp4",
                   help="mp4 (default), webm, gif, or png (a lossless folder of frames per clip)")
    p.add_argument("--device", type=device_type,
                   help="cpu, cuda, ... (default: cuda:LOCAL_RANK if available, else cpu)")
    p.set_defaults(run=run_synth)


def run_synth(args) -> int:
    rank, world = shard_from_env()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = args.device or (f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    pipe = load(args.model, device=device)
    steps, sampler, guidance = pipe.sampling(args.steps, args.sampler, args.guidance)   # unset: the model's own
    report = synthesize(pipe, args.out, args.n, model_identity(args.model), seed=args.seed,
                        held_out=args.held_out, steps=steps, sampler=sampler,
                        guidance=guidance, frames=args.frames, max_attempts=args.max_attempts,
                        batch=args.batch, format=args.format, rank=rank, world_size=world,
                        progress=local == 0)       # one bar per machine, not one per process
    print(format_report(report, args.out))
    return 0
