"""Prompt adherence of a MovingShapes text-to-video model: generate, detect, score.

A sample adheres when the detector (:mod:`vidiff.eval.shapes`) reads the prompt's colour,
shape and direction from it. Seen triples and held-out triples (never trained on) are scored
separately: the second measures compositional generalisation.
"""
from __future__ import annotations

import time
from typing import Callable, Optional, Sequence

from tqdm.auto import tqdm

from vidiff.compose.config import SampleConfig
from vidiff.data.shapes import all_triples, caption
from vidiff.eval.shapes import score

DEFAULTS = SampleConfig()   # the sampling defaults, from their one source


def shapes_adherence(pipe, held_out: Sequence[tuple[str, str, str]] = (), samples: int = 4,
                     steps: int = DEFAULTS.steps, sampler: str = DEFAULTS.sampler,
                     guidance: float = DEFAULTS.guidance,
                     seed: int = 0, batch: int = 64, progress: bool = True,
                     on_videos: Optional[Callable[[str, list], None]] = None,
                     triples: Optional[Sequence[tuple[str, str, str]]] = None) -> dict:
    """Score ``pipe`` on ``samples`` clips of every MovingShapes triple (or of ``triples``).

    Returns ``{"seen": {...}, "held_out": {...} (if any), "seconds_per_clip", "settings"}``
    where each part holds ``adherence`` and per-attribute accuracies (see
    :func:`vidiff.eval.shapes.score`) without the per-clip detections. ``on_videos(part,
    videos)`` receives each part's generated clips (a list of ``Video``) after the timing.
    """
    held = {tuple(t) for t in held_out}
    scored = all_triples() if triples is None else [tuple(t) for t in triples]
    groups = {"seen": [t for t in scored if t not in held], "held_out": [t for t in scored if t in held]}
    report = {"settings": {"samples": samples, "steps": steps, "sampler": sampler,
                           "guidance": guidance, "seed": seed}}
    bar = None
    if progress:
        bar = tqdm(total=sum(len(g) for g in groups.values()) * samples, desc="evaluating", unit="clip")
    start, clips, generated = time.perf_counter(), 0, {}
    for name, triples in groups.items():
        if not triples:
            continue
        prompts = [caption(*t) for t in triples]
        videos, targets = [], []
        per_call = max(1, batch // samples)
        for i in range(0, len(prompts), per_call):
            chunk = prompts[i:i + per_call]
            out = pipe.generate(chunk, steps=steps, guidance=guidance, sampler=sampler, seed=seed,
                                samples=samples)
            videos += out if isinstance(out, list) else [out]
            targets += [p for p in chunk for _ in range(samples)]
            if bar is not None:
                bar.update(len(chunk) * samples)
        result = score(videos, targets)
        result.pop("detections", None)
        report[name] = result
        clips += len(videos)
        if on_videos is not None:
            generated[name] = videos
    if bar is not None:
        bar.close()
    report["seconds_per_clip"] = (time.perf_counter() - start) / max(clips, 1)
    for name, videos in generated.items():
        on_videos(name, videos)
    return report


def format_report(report: dict) -> str:
    """A readable table of :func:`shapes_adherence`'s result."""
    lines = [f"{'triples':<10}{'clips':>7}{'adherence':>11}{'colour':>9}{'shape':>8}{'direction':>11}"]
    for name in ("seen", "held_out"):
        part: Optional[dict] = report.get(name)
        if part is None:
            continue
        lines.append(f"{name:<10}{part['count']:>7}{part['adherence']:>11.1%}{part['color_accuracy']:>9.1%}"
                     f"{part['shape_accuracy']:>8.1%}{part['direction_accuracy']:>11.1%}")
    s = report["settings"]
    lines.append(f"({s['samples']} samples per triple, {s['sampler']}, {s['steps']} steps, guidance "
                 f"{s['guidance']:g}; {report['seconds_per_clip']:.3f} s per clip)")
    return "\n".join(lines)
