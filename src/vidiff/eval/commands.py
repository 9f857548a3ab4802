"""The ``vidiff eval`` subcommands: one ``add_*`` parser and one ``run_*`` function per metric.

Registered on the main parser by :func:`add_eval`; errors the user can fix raise
``ValueError``/``FileNotFoundError``, which ``vidiff.cli.main`` prints as one line.
"""
from __future__ import annotations


def _write_json(path: str, data) -> None:
    """Write JSON atomically (a temporary file, then a rename)."""
    from pathlib import Path
    from vidiff.train.checkpoint import write_json_atomic
    write_json_atomic(Path(path), data)


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="measure a model: shapes (prompt adherence on MovingShapes)")
    kinds = p.add_subparsers(dest="metric", metavar="METRIC")
    shapes = kinds.add_parser("shapes", help="prompt adherence of a MovingShapes text-to-video model",
                              description="Generates samples of every colour/shape/direction triple, "
                                          "reads them back with the MovingShapes detector and "
                                          "prints adherence and per-attribute accuracy.")
    shapes.add_argument("--model", required=True, metavar="DIR")
    shapes.add_argument("--samples", type=int, default=4)
    shapes.add_argument("--steps", type=int, default=20)
    shapes.add_argument("--sampler", default="dpmpp_2m")
    shapes.add_argument("--guidance", type=float, default=5.0)
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    shapes.add_argument("--device")
    shapes.set_defaults(run=run_eval_shapes)
    p.set_defaults(run=lambda args: (p.print_help(), 0)[1])


def run_eval_shapes(args) -> int:
    import vidiff
    from vidiff.eval.adherence import format_report, shapes_adherence

    pipe = vidiff.load(args.model, device=args.device)
    held_out = []
    if pipe.run_config is not None and pipe.run_config.data.name == "shapes":
        from vidiff.data import build_dataset
        held_out = list(getattr(build_dataset(pipe.run_config.data), "held_out", []))
    report = shapes_adherence(pipe, held_out, samples=args.samples, steps=args.steps,
                              sampler=args.sampler, guidance=args.guidance, seed=args.seed)
    print(format_report(report))
    if args.json:
        _write_json(args.json, report)
    return 0
