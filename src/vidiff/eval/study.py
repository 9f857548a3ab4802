"""The steps-versus-quality study on MovingShapes: every sampler at every step count.

For each ``(sampler, steps)`` pair, :func:`steps_study` runs
:func:`vidiff.eval.adherence.shapes_adherence` (same prompts, same seeds) and adds the
temporal metrics of :mod:`vidiff.eval.temporal` averaged over the generated clips; the
result is written as JSON and drawn as a PNG (adherence against steps, one line per sampler;
held-out adherence dashed).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from matplotlib.figure import Figure
from tqdm.auto import tqdm

from vidiff.checkpoint import write_file_atomic
from vidiff.diffusion import SAMPLERS
from vidiff.eval.adherence import DEFAULTS, shapes_adherence
from vidiff.eval.temporal import clip_metrics, summarize


def check_grid(steps: Sequence[int], samplers: Sequence[str]) -> None:
    """Raise ``ValueError`` for an empty grid, a step count < 1 or an unknown sampler."""
    if not steps or not samplers:
        raise ValueError("the study needs at least one step count and one sampler")
    for s in steps:
        if s < 1:
            raise ValueError(f"steps must be >= 1, got {list(steps)}")
    for name in samplers:
        if name not in SAMPLERS:
            raise ValueError(f"unknown sampler {name!r}; accepted: {sorted(SAMPLERS)}")


def steps_study(pipe, steps: Sequence[int], samplers: Sequence[str], held_out=(), samples: int = 1,
                guidance: float = DEFAULTS.guidance, seed: int = 0, progress: bool = True) -> dict:
    """Adherence, held-out adherence, temporal metrics and seconds per clip for each
    ``sampler x steps``.

    Returns ``{"settings": {...}, "rows": [{"sampler", "steps", "adherence",
    "held_out_adherence" (None without held-out triples), "seen", "held_out", "temporal",
    "seconds_per_clip"}, ...]}``, rows sampler-major in the order given.
    """
    check_grid(steps, samplers)
    rows, bar = [], None
    if progress:
        bar = tqdm(total=len(steps) * len(samplers), desc="steps study", unit="setting")
    for sampler in samplers:
        for n in steps:
            clips: list = []
            report = shapes_adherence(pipe, held_out, samples=samples, steps=n, sampler=sampler,
                                      guidance=guidance, seed=seed, progress=False,
                                      on_videos=lambda part, videos: clips.extend(videos))
            held = report.get("held_out")
            rows.append({"sampler": sampler, "steps": n, "adherence": report["seen"]["adherence"],
                         "held_out_adherence": held["adherence"] if held else None,
                         "seen": report["seen"], "held_out": held,
                         "temporal": summarize([clip_metrics(v.frames) for v in clips]),
                         "seconds_per_clip": report["seconds_per_clip"]})
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return {"settings": {"steps": list(steps), "samplers": list(samplers), "samples": samples,
                         "guidance": guidance, "seed": seed,
                         "held_out": [list(t) for t in held_out]}, "rows": rows}


def format_study(report: dict) -> str:
    """A readable table of :func:`steps_study`'s result."""
    lines = [f"{'sampler':<10}{'steps':>6}{'adherence':>11}{'held-out':>10}{'flicker':>9}"
             f"{'smooth':>8}{'dynamic':>9}{'s/clip':>9}"]
    for r in report["rows"]:
        held = "-" if r["held_out_adherence"] is None else f"{r['held_out_adherence']:.1%}"
        t = r["temporal"]
        smooth = "-" if "smoothness" not in t else f"{t['smoothness']:.4f}"
        lines.append(f"{r['sampler']:<10}{r['steps']:>6}{r['adherence']:>11.1%}{held:>10}"
                     f"{t['flickering']:>9.4f}{smooth:>8}{t['dynamic_degree']:>9.0%}{r['seconds_per_clip']:>9.3f}")
    s = report["settings"]
    lines.append(f"({s['samples']} samples per triple, guidance {s['guidance']:g}, seed {s['seed']})")
    return "\n".join(lines)


def plot_study(report: dict, path) -> Path:
    """Draw adherence against steps (one line per sampler; held-out dashed) as a PNG at
    ``path``, written under a temporary name and renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A bare Figure (no pyplot): no global backend or figure registry is touched.
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.subplots()
    for i, sampler in enumerate(report["settings"]["samplers"]):
        rows = [r for r in report["rows"] if r["sampler"] == sampler]
        steps = [r["steps"] for r in rows]
        ax.plot(steps, [r["adherence"] for r in rows], "o-", color=f"C{i}", label=sampler)
        if all(r["held_out_adherence"] is not None for r in rows):
            ax.plot(steps, [r["held_out_adherence"] for r in rows], "s--", color=f"C{i}",
                    label=f"{sampler} (held out)")
    ax.set_xscale("log")
    ax.set_xlabel("sampling steps")
    ax.set_ylabel("prompt adherence")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("MovingShapes: adherence against steps")
    write_file_atomic(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))
    return path
