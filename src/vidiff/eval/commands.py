"""The ``vidiff eval`` subcommands: one ``add_*`` parser and one ``run_*`` function per metric.

Registered on the main parser by :func:`add_eval`. Every command prints a readable table and
writes a JSON report (``--json``, default ``eval-<metric>.json``) once everything is computed,
so a failed run never leaves a partial report. Errors the user can fix raise
``ValueError``/``FileNotFoundError``, which ``vidiff.cli.main`` prints as one line.
"""
from __future__ import annotations


def _write_json(path: str, data) -> None:
    """Write JSON atomically (a temporary file, then a rename)."""
    from pathlib import Path
    from vidiff.train.checkpoint import write_json_atomic
    write_json_atomic(Path(path), data)


def _json_option(parser, metric: str) -> None:
    parser.add_argument("--json", metavar="PATH", default=f"eval-{metric}.json",
                        help=f"where to write the JSON report (default eval-{metric}.json)")


def add_eval(sub) -> None:
    from vidiff.cli import _csv

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
        d.add_argument("--real", required=True, metavar="DIR_OR_DATASET",
                       help="folder of clips, or shapes, digits, photopan")
        d.add_argument("--fake", required=True, metavar="DIR", help="folder of generated clips")
        d.add_argument("--features", required=required, default=None if required else "vidiff-shapes",
                       metavar="FILE" if required else "NAME_OR_FILE",
                       help="TorchScript feature network" + ("" if required else " or vidiff-shapes (default)"))
        d.add_argument("--clips", type=int, default=2048, help="clips per set (default 2048)")
        d.add_argument("--frames", type=int, default=16, help="clip length (default 16)")
        d.add_argument("--metrics", type=_csv(str), default=["frechet", "kernel"],
                       help="frechet, kernel or both (default both)")
        d.add_argument("--dataset-size", type=int, help="frame side of a built-in --real dataset "
                                                        "(default: the generated clips' height)")
        d.add_argument("--batch", type=int, default=16)
        d.add_argument("--seed", type=int, default=0, help="seed of a built-in --real dataset")
        d.add_argument("--device", default="cpu")
        _json_option(d, name)
        d.set_defaults(run=run_eval_distance)

    t = kinds.add_parser("temporal", help="flickering, motion smoothness, dynamic degree, PSNR/SSIM",
                         description="Weight-free temporal metrics of every clip in a folder, per clip "
                                     "and on average.")
    t.add_argument("clips", metavar="DIR", help="folder of clips")
    t.add_argument("--reference", metavar="DIR", help="reference clips (same relative names) for PSNR/SSIM")
    t.add_argument("--count", type=int, help="only the first N clips")
    _json_option(t, "temporal")
    t.set_defaults(run=run_eval_temporal)

    shapes = kinds.add_parser("shapes", help="prompt adherence on MovingShapes; a steps x samplers study",
                              description="Generates samples of every colour/shape/direction triple, "
                                          "reads them back with the MovingShapes detector and prints "
                                          "adherence and per-attribute accuracy. Several --steps or "
                                          "--samplers run the steps-versus-quality study (JSON + PNG).")
    shapes.add_argument("--model", required=True, metavar="DIR")
    shapes.add_argument("--samples", type=int, default=4)
    shapes.add_argument("--steps", type=_csv(int), default=[20], help="step counts, e.g. 10,20,50")
    shapes.add_argument("--sampler", help="one sampler (default dpmpp_2m)")
    shapes.add_argument("--samplers", type=_csv(str), help="several samplers, e.g. ddim,dpmpp_2m,euler")
    shapes.add_argument("--guidance", type=float, default=5.0)
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument("--plot", metavar="PATH", help="study plot (default: the JSON path with .png)")
    shapes.add_argument("--device")
    _json_option(shapes, "shapes")
    shapes.set_defaults(run=run_eval_shapes)

    c = kinds.add_parser("clip", help="CLIP similarity between prompts and frames (local CLIP)",
                         description="Cosine similarity between CLIP embeddings of each frame and of "
                                     "its clip's prompt, with a CLIP model from a local directory.")
    c.add_argument("clips", metavar="DIR", help="folder of clips")
    c.add_argument("--clip-dir", required=True, metavar="DIR", help="local CLIPModel directory")
    c.add_argument("--prompt", help="one prompt for every clip")
    c.add_argument("--prompts", metavar="FILE", help="one prompt per line, in sorted clip order "
                                                     "(default: captions.jsonl/.csv in DIR)")
    c.add_argument("--device", default="cpu")
    _json_option(c, "clip")
    c.set_defaults(run=run_eval_clip)

    f = kinds.add_parser("train-features", help="train the vidiff-shapes feature network (deterministic)",
                         description="Trains the small vidiff-shapes video feature network on MovingShapes, "
                                     "deterministically, and writes its weights (safetensors).")
    f.add_argument("--out", required=True, metavar="PATH", help="weights file (.safetensors)")
    f.add_argument("--steps", type=int, default=400)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: the same weights on any machine)")
    f.set_defaults(run=run_eval_train_features)
    p.set_defaults(run=lambda args: (p.print_help(), 0)[1])


def run_eval_distance(args) -> int:
    from vidiff.eval.distance import format_distance, video_distance

    for name, value, low in (("--frames", args.frames, 2), ("--batch", args.batch, 1)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    report = video_distance(args.real, args.fake, features=args.features, clips=args.clips,
                            frames=args.frames, metrics=args.metrics, batch=args.batch, seed=args.seed,
                            dataset_size=args.dataset_size, device=args.device)
    print(format_distance(report))
    _write_json(args.json, report)
    return 0


def run_eval_temporal(args) -> int:
    from vidiff.eval.temporal import format_temporal, temporal_report

    if args.count is not None and args.count < 1:
        raise ValueError(f"--count must be >= 1, got {args.count}")
    report = temporal_report(args.clips, args.reference, args.count)
    print(format_temporal(report))
    _write_json(args.json, report)
    return 0


def run_eval_clip(args) -> int:
    from vidiff.eval.clip_score import clip_report, format_clip

    report = clip_report(args.clips, args.clip_dir, prompt=args.prompt, prompts_file=args.prompts,
                         device=args.device)
    print(format_clip(report))
    _write_json(args.json, report)
    return 0


def run_eval_train_features(args) -> int:
    from vidiff.eval.shapes_features import train_shapes_features

    result = train_shapes_features(args.out, steps=args.steps, seed=args.seed, threads=args.threads)
    acc = result["accuracy"]
    print(f"wrote {result['out']} after {result['steps']} steps ({result['seconds']:.0f} s); accuracy on "
          f"held-out clips: colour {acc['color']:.1%}, shape {acc['shape']:.1%}, direction {acc['direction']:.1%}")
    return 0


def run_eval_shapes(args) -> int:
    import vidiff
    from vidiff.eval.study import check_grid

    if args.sampler is not None and args.samplers is not None:
        raise ValueError("give --sampler or --samplers, not both")
    samplers = args.samplers or [args.sampler or "dpmpp_2m"]
    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    check_grid(args.steps, samplers)
    pipe = vidiff.load(args.model, device=args.device)
    held_out = []
    if pipe.run_config is not None and pipe.run_config.data.name == "shapes":
        from vidiff.data import build_dataset
        held_out = list(getattr(build_dataset(pipe.run_config.data), "held_out", []))
    if len(args.steps) == 1 and len(samplers) == 1:
        from vidiff.eval.adherence import format_report, shapes_adherence
        report = shapes_adherence(pipe, held_out, samples=args.samples, steps=args.steps[0],
                                  sampler=samplers[0], guidance=args.guidance, seed=args.seed)
        print(format_report(report))
        _write_json(args.json, report)
        return 0
    from pathlib import Path
    from vidiff.eval.study import format_study, plot_study, steps_study
    report = steps_study(pipe, args.steps, samplers, held_out, samples=args.samples,
                         guidance=args.guidance, seed=args.seed)
    print(format_study(report))
    plot = Path(args.plot) if args.plot else Path(args.json).with_suffix(".png")
    plot_study(report, plot)
    _write_json(args.json, report)
    print(f"wrote {args.json} and {plot}")
    return 0
