"""FVD, KVD and their offline cousins: distances between real and generated clip sets.

:func:`video_distance` reads both sets (folders, or a built-in dataset for the real side),
extracts features with a :class:`vidiff.eval.features.FeatureExtractor` and reports the
Fréchet distance and the polynomial-kernel MMD between them (see :mod:`vidiff.eval.frechet`).
With an I3D-style TorchScript export the two are FVD and KVD under the common protocol;
with any other network (``vidiff-shapes`` included) they are labelled as *not* comparable
with published FVD.
"""
from __future__ import annotations

from typing import Optional, Sequence

from vidiff.data import BUILTIN
from vidiff.eval.features import extract_features, iter_clips, load_extractor
from vidiff.eval.frechet import frechet_from_features, min_clips_for_fd, polynomial_mmd

METRICS = ("frechet", "kernel")
DEFAULT_CLIPS = 2048


def _peek_height(source: str, frames: int) -> int:
    """Frame height of the first clip of a folder (renders a dataset at the generated size)."""
    _, clip = next(iter_clips(source, 1, frames))
    return int(clip.shape[1])


def video_distance(real: str, fake: str, features: str = "vidiff-shapes", clips: int = DEFAULT_CLIPS,
                   frames: int = 16, metrics: Sequence[str] = METRICS, batch: int = 16, seed: int = 0,
                   dataset_size: Optional[int] = None, device: str = "cpu") -> dict:
    """Distance between the first ``clips`` clips of ``real`` and of ``fake``.

    Args:
        real: a folder of clips or a built-in dataset (``shapes``, ``digits``, ``photopan``;
            rendered at ``dataset_size``, default the generated clips' height).
        fake: a folder of generated clips.
        features: ``vidiff-shapes`` or the path of a TorchScript feature network.
        clips: clips per set (both sets must hold at least this many).
        frames: clip length (the first ``frames`` frames of each clip).
        metrics: any of ``frechet`` and ``kernel``.

    Returns a JSON-ready report: ``name`` (``FVD``/``FD``), ``kernel_name`` (``KVD``/``KD``),
    ``frechet`` and/or ``kernel`` values, ``comparable_with_published_fvd``, ``note``,
    ``clips`` ({real, generated}), ``feature_dim`` and the ``protocol``.
    """
    metrics = list(dict.fromkeys(metrics))
    for m in metrics:
        if m not in METRICS:
            raise ValueError(f"unknown metric {m!r}; accepted: {list(METRICS)}")
    if not metrics:
        raise ValueError(f"no metric requested; accepted: {list(METRICS)}")
    if clips < 2:
        raise ValueError(f"the clip count must be >= 2, got {clips}")
    extractor = load_extractor(features, frames=frames, device=device)
    size = dataset_size or (_peek_height(fake, frames) if real in BUILTIN else 0)
    real_features = extract_features(extractor, iter_clips(real, clips, frames, size, seed), batch)
    dim = real_features.shape[1]
    if "frechet" in metrics and clips < min_clips_for_fd(dim):
        raise ValueError(f"the Fréchet distance with {dim}-dimensional features needs at least "
                         f"{min_clips_for_fd(dim)} clips per set, got {clips}; raise the clip count or "
                         "use only the kernel metric (works from 2 clips)")
    fake_features = extract_features(extractor, iter_clips(fake, clips, frames, size, seed), batch)
    if extractor.comparable:
        name, kernel_name = "FVD", "KVD"
        note = ("I3D-style TorchScript features under the common FVD protocol; comparable with "
                "published FVD only if the file is the standard I3D export")
    else:
        name, kernel_name = "FD", "KD"
        note = (f"Fréchet distance in the features of {extractor.name}: NOT comparable with "
                "published FVD (which uses I3D)")
    report = {"name": name, "kernel_name": kernel_name, "features": extractor.name, "feature_dim": dim,
              "comparable_with_published_fvd": extractor.comparable, "note": note,
              "real": real, "generated": fake,
              "clips": {"real": int(real_features.shape[0]), "generated": int(fake_features.shape[0])},
              "protocol": {"frames": extractor.frames, "size": extractor.size, "range": [-1, 1],
                           "resize": "bilinear, no antialiasing",
                           "call": ("model(x, rescale=False, resize=False, return_features=True)"
                                    if extractor.i3d_call else "model(x)")}}
    if "frechet" in metrics:
        report["frechet"] = frechet_from_features(real_features, fake_features)
    if "kernel" in metrics:
        report["kernel"] = polynomial_mmd(real_features, fake_features)
    return report


def format_distance(report: dict) -> str:
    """A readable table of :func:`video_distance`'s report."""
    lines = [f"{'metric':<8}{'value':>14}{'real clips':>12}{'generated':>11}"]
    for key, label in (("frechet", report["name"]), ("kernel", report["kernel_name"])):
        if key in report:
            lines.append(f"{label:<8}{report[key]:>14.4f}{report['clips']['real']:>12}"
                         f"{report['clips']['generated']:>11}")
    p = report["protocol"]
    lines.append(f"features {report['features']} ({report['feature_dim']}-dim); {p['frames']} frames "
                 f"at {p['size']}x{p['size']}, inputs in [-1, 1], called as {p['call']}")
    lines.append(f"note: {report['note']}")
    return "\n".join(lines)
