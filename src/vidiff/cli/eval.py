"""``vidiff eval``: fvd, fd, temporal, shapes, clip and train-features.

Each metric command prints a table and writes a JSON report. Option values are checked as the
command line is parsed (``vidiff.cli.common``); what only the clips can tell (too few, mixed
sizes) raises ``ValueError`` before a report is written, which ``vidiff.cli.main`` prints as one
line.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from vidiff.cli.common import (add_model_option, csv_list, dataset_type, device_type, existing_dir, existing_file,
                               int_at_least, json_out, nonnegative_float, one_of, output_file, positive_int,
                               seed_type, text_type, write_json)
from vidiff.diffusion import SAMPLERS
from vidiff.eval.adherence import format_report, shapes_adherence
from vidiff.eval.clip_score import clip_report, format_clip
from vidiff.eval.distance import METRICS, format_distance, video_distance
from vidiff.eval.shapes_features import train_shapes_features
from vidiff.eval.study import check_grid, format_study, plot_study, steps_study
from vidiff.eval.temporal import format_temporal, temporal_report
from vidiff.pipelines.video import DEFAULTS, load

SHAPES_FEATURES = "vidiff-shapes"     # the shipped feature network (vidiff.eval.features)


def _json_option(parser, metric: str) -> None:
    parser.add_argument("--json", type=json_out, metavar="PATH", default=f"eval-{metric}.json",
                        help=f"where to write the JSON report (default eval-{metric}.json)")


def add_eval(sub) -> None:

    p = sub.add_parser("eval", help="measure models and videos: fvd, fd, temporal, shapes, clip",
                       description="Metrics of generated video. Each command prints a table and "
                                   "writes a JSON report. See docs/eval.md.")
    kinds = p.add_subparsers(dest="metric", metavar="METRIC")
    for name, required in (("fvd", True), ("fd", False)):
        d = kinds.add_parser(
            name, help="Fréchet Video Distance with I3D (TorchScript file)" if required else
            "Fréchet distance in vidiff-shapes (offline) or any TorchScript features",
            description="Fréchet distance and polynomial-kernel MMD between the features of real "
                        "and generated clips. " + ("--features is the I3D TorchScript export (FVD/KVD)."
                                                   if required else "Default features: vidiff-shapes, "
                                                   "not comparable with published FVD."))
        d.add_argument("--real", type=dataset_type, required=True, metavar="DIR_OR_DATASET",
                       help="folder of clips, or shapes, digits, photopan")
        d.add_argument("--fake", type=existing_dir, required=True, metavar="DIR", help="folder of generated clips")
        d.add_argument("--features", type=feature_network, required=required,
                       default=None if required else SHAPES_FEATURES,
                       metavar="FILE" if required else "NAME_OR_FILE",
                       help="TorchScript feature network" + ("" if required else " or vidiff-shapes (default)"))
        d.add_argument("--clips", type=int_at_least(2), default=2048, help="clips per set (default 2048)")
        d.add_argument("--frames", type=int_at_least(2), default=16, help="clip length (default 16)")
        d.add_argument("--metrics", type=csv_list(one_of("metric", METRICS)), default=list(METRICS),
                       help="frechet, kernel or both (default both)")
        d.add_argument("--dataset-size", type=positive_int, help="frame side of a built-in --real dataset "
                                                                 "(default: the generated clips' height)")
        d.add_argument("--batch", type=positive_int, default=16)
        d.add_argument("--seed", type=seed_type, default=0, help="seed of a built-in --real dataset")
        d.add_argument("--device", type=device_type, default="cpu")
        _json_option(d, name)
        d.set_defaults(run=run_eval_distance)

    t = kinds.add_parser("temporal", help="flickering, motion smoothness, dynamic degree, PSNR/SSIM",
                         description="Weight-free temporal metrics of every clip in a folder, per clip "
                                     "and on average.")
    t.add_argument("clips", type=existing_dir, metavar="DIR", help="folder of clips")
    t.add_argument("--reference", type=existing_dir, metavar="DIR",
                   help="reference clips (same relative names) for PSNR/SSIM")
    t.add_argument("--count", type=positive_int, help="only the first N clips")
    _json_option(t, "temporal")
    t.set_defaults(run=run_eval_temporal)

    shapes = kinds.add_parser("shapes", help="prompt adherence on MovingShapes; a steps x samplers study",
                              description="Generates samples of every colour/shape/direction triple, "
                                          "reads them back with the MovingShapes detector and prints "
                                          "adherence and per-attribute accuracy. Several --steps or "
                                          "--samplers run the steps-versus-quality study (JSON + PNG).")
    add_model_option(shapes)
    shapes.add_argument("--samples", type=positive_int, default=4)
    shapes.add_argument("--steps", type=csv_list(positive_int),
                        help=f"step counts, e.g. 10,20,50 (default: the model's own, {DEFAULTS.steps} unless its "
                             "config says otherwise)")
    shapes.add_argument("--sampler", type=one_of("sampler", SAMPLERS),
                        help=f"one sampler (default: the model's own, {DEFAULTS.sampler} unless its config says otherwise)")
    shapes.add_argument("--samplers", type=csv_list(one_of("sampler", SAMPLERS)),
                        help="several samplers, e.g. ddim,dpmpp_2m,euler")
    shapes.add_argument("--guidance", type=nonnegative_float,
                        help=f"1 = off (default: the model's own, {DEFAULTS.guidance:g} unless its config says otherwise)")
    shapes.add_argument("--seed", type=seed_type, default=0)
    shapes.add_argument("--plot", type=output_file([".png"]), metavar="PATH",
                        help="study plot (default: the JSON path with .png)")
    shapes.add_argument("--device", type=device_type)
    _json_option(shapes, "shapes")
    shapes.set_defaults(run=run_eval_shapes)

    c = kinds.add_parser("clip", help="CLIP similarity between prompts and frames (local CLIP)",
                         description="Cosine similarity between CLIP embeddings of each frame and of "
                                     "its clip's prompt, with a CLIP model from a local directory.")
    c.add_argument("clips", type=existing_dir, metavar="DIR", help="folder of clips")
    c.add_argument("--clip-dir", type=existing_dir, required=True, metavar="DIR", help="local CLIPModel directory")
    c.add_argument("--prompt", type=text_type, help="one prompt for every clip")
    c.add_argument("--prompts", type=existing_file, metavar="FILE",
                   help="one prompt per line, in sorted clip order (default: captions.jsonl/.csv in DIR)")
    c.add_argument("--device", type=device_type, default="cpu")
    _json_option(c, "clip")
    c.set_defaults(run=run_eval_clip)

    f = kinds.add_parser("train-features", help="train the vidiff-shapes feature network (deterministic)",
                         description="Trains the small vidiff-shapes video feature network on MovingShapes, "
                                     "deterministically, and writes its weights (safetensors).")
    f.add_argument("--out", type=output_file([".safetensors"]), required=True, metavar="PATH",
                   help="weights file (.safetensors)")
    f.add_argument("--steps", type=positive_int, default=400)
    f.add_argument("--seed", type=seed_type, default=0)
    f.add_argument("--threads", type=positive_int, default=1, help="CPU threads (default 1: the same weights on any machine)")
    f.set_defaults(run=run_eval_train_features)
    p.set_defaults(run=lambda args: (p.print_help(), 0)[1])


def feature_network(text: str) -> str:
    """An argparse type: ``vidiff-shapes`` or an existing (TorchScript) file."""
    if text != SHAPES_FEATURES and not Path(text).expanduser().is_file():
        raise argparse.ArgumentTypeError(f"feature network {text!r} is not a file; accepted: "
                                         f"{SHAPES_FEATURES!r} or the path of a TorchScript file")
    return text


def run_eval_distance(args) -> int:

    report = video_distance(args.real, args.fake, features=args.features, clips=args.clips,
                            frames=args.frames, metrics=args.metrics, batch=args.batch, seed=args.seed,
                            dataset_size=args.dataset_size, device=args.device)
    print(format_distance(report))
    write_json(args.json, report)
    return 0


def run_eval_temporal(args) -> int:

    report = temporal_report(args.clips, args.reference, args.count)
    print(format_temporal(report))
    write_json(args.json, report)
    return 0


def run_eval_clip(args) -> int:

    report = clip_report(args.clips, args.clip_dir, prompt=args.prompt, prompts_file=args.prompts,
                         device=args.device)
    print(format_clip(report))
    write_json(args.json, report)
    return 0


def run_eval_train_features(args) -> int:

    result = train_shapes_features(args.out, steps=args.steps, seed=args.seed, threads=args.threads)
    acc = result["accuracy"]
    print(f"wrote {result['out']} after {result['steps']} steps ({result['seconds']:.0f} s); accuracy on "
          f"held-out clips: colour {acc['color']:.1%}, shape {acc['shape']:.1%}, direction {acc['direction']:.1%}")
    return 0


def run_eval_shapes(args) -> int:

    if args.sampler is not None and args.samplers is not None:
        raise ValueError("give --sampler or --samplers, not both")
    pipe = load(args.model, device=args.device)
    # unset: as the model samples (its config's sample section), where its card was measured
    default_steps, default_sampler, guidance = pipe.sampling(None, args.sampler, args.guidance)
    samplers = args.samplers or [default_sampler]
    steps = args.steps or [default_steps]
    check_grid(steps, samplers)
    # the triples its training never saw: its data config's (a latent cache's run carries its source's)
    held_out = [tuple(t) for t in pipe.run_config.data.held_out] if pipe.run_config is not None else []
    if len(steps) == 1 and len(samplers) == 1:
        report = shapes_adherence(pipe, held_out, samples=args.samples, steps=steps[0],
                                  sampler=samplers[0], guidance=guidance, seed=args.seed)
        print(format_report(report))
        write_json(args.json, report)
        return 0
    report = steps_study(pipe, steps, samplers, held_out, samples=args.samples,
                         guidance=guidance, seed=args.seed)
    print(format_study(report))
    plot = Path(args.plot) if args.plot else Path(args.json).with_suffix(".png")
    plot_study(report, plot)
    write_json(args.json, report)
    print(f"wrote {args.json} and {plot}")
    return 0
