"""``vidiff synth``: a labelled synthetic MovingShapes dataset made by a model, every label verified.

Clip ``i`` of a dataset is a pure function of ``(seed, i, attempt)``: its prompt is drawn from
the triples (balanced: each round of ``K`` indices is one permutation of the ``K`` triples),
and attempt ``a`` samples it with the clip seed :func:`clip_seed` ``(seed, i, a)``. The
MovingShapes detector reads colour, shape and direction back from the clip as it will be stored
(after the codec round trip); a clip the detector disagrees with is regenerated with attempt
``a + 1``, up to ``max_attempts``, after which the index is recorded as failed, never written
with a wrong label.

Because nothing depends on the order of work, processes need no communication: rank ``r`` of
``W`` (``RANK``/``WORLD_SIZE`` from the environment, as ``torchrun`` sets them) takes the indices
``i ≡ r (mod W)``, and a resumed run skips the indices already done. The folder::

    synth.json            the settings, written first; a run with other settings refuses
    clips/000012.mp4      one clip per index, each written atomically (temporary name, rename)
    labels.rank{r}.jsonl  rank r's rows, appended and fsync'd one line per clip, after the clip
    labels.jsonl          all rows sorted by index (written when every index is done)
    captions.jsonl        {"file", "caption"} per clip: what VideoFolder reads
    summary.json          clips, failed indices, rejections

A clip's sample is the same alone or inside any batch up to the pipeline's ``SEED_TOLERANCE``
before the 8-bit rounding, so a resumed or sharded run gives the clips of a single run (exactly
so with any pipeline whose samples do not depend on the batch).
"""
from __future__ import annotations

import json
import os
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from vidiff.checkpoint import write_file_atomic, write_json_atomic
from vidiff.compose import autoencoder_fingerprint
from vidiff.data.folder import CAPTION_FILES
from vidiff.data.shapes import DEMO_HELD_OUT, all_triples, caption
from vidiff.eval.shapes import detect, parse_caption
from vidiff.pipelines.shipped import resolve_model
from vidiff.pipelines.video import DEFAULTS, check_sampling
from vidiff.video import Video

FORMAT, FORMAT_VERSION = "vidiff-synth", 1
SETTINGS, LABELS, SUMMARY, CAPTIONS = "synth.json", "labels.jsonl", "summary.json", CAPTION_FILES[0]
CLIP_FOLDER = "clips"
CLIP_FORMATS = ("mp4", "webm", "gif", "png")      # png: a lossless folder of frames per clip
HELD_OUT = ("include", "exclude", "only")
ATTRIBUTES = ("color", "shape", "direction")
Triple = tuple[str, str, str]


class SynthError(ValueError):
    """A synth folder or request that cannot be used; the message says why."""


@dataclass(frozen=True)
class SynthSettings:
    """Everything a dataset's clips depend on; stored in ``synth.json`` and compared on resume.

    ``model`` identifies the weights (a hash of the checkpoint's config and weights);
    ``held_out_triples`` is the set ``held_out`` refers to (``include``: all 84 triples,
    ``exclude``: all but these, ``only``: just these); ``frames``/``height``/``width`` are the
    clip size in pixels; ``format`` the clip container.
    """
    model: str
    n: int
    seed: int
    held_out: str
    held_out_triples: tuple
    steps: int
    sampler: str
    guidance: float
    frames: int
    height: int
    width: int
    max_attempts: int
    format: str

    def to_dict(self) -> dict:
        data = asdict(self)
        data["held_out_triples"] = [list(t) for t in self.held_out_triples]
        return data

    def triples(self) -> list[Triple]:
        """The triples prompts are drawn from, in :func:`all_triples` order."""
        held = {tuple(t) for t in self.held_out_triples}
        keep = {"include": lambda t: True, "exclude": lambda t: t not in held, "only": lambda t: t in held}
        return [t for t in all_triples() if keep[self.held_out](t)]


# ----------------------------------------------------------------------------- pure functions
def shard_from_env() -> tuple[int, int]:
    """``(rank, world_size)`` from ``RANK``/``WORLD_SIZE`` (``(0, 1)`` when unset); no
    torch.distributed: a shard needs only its index range."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise SynthError(f"RANK={os.environ.get('RANK')!r} and WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} "
                         "must be integers") from None
    if not 0 <= rank < world:
        raise SynthError(f"RANK={rank} must be in [0, WORLD_SIZE={world})")
    return rank, world


def prompt_triple(seed: int, index: int, triples: Sequence[Triple]) -> Triple:
    """The triple of index ``index``: round ``index // K`` of the ``K`` triples is one
    permutation drawn from ``(seed, round)``, so every triple appears equally often (to within
    one) in any prefix of whole rounds, and any process computes the same triple."""
    k = len(triples)
    order = np.random.default_rng([seed, 0, index // k]).permutation(k)
    return tuple(triples[int(order[index % k])])


def clip_seed(seed: int, index: int, attempt: int) -> int:
    """The sampling seed of attempt ``attempt`` at index ``index``: an integer in [0, 2^32), so
    ``vidiff generate --prompt P --seed S`` redraws the clip a label names."""
    return int(np.random.SeedSequence([seed, 1, index, attempt]).generate_state(1)[0])


def clip_name(index: int, settings: SynthSettings) -> str:
    """``clips/000012.mp4`` (``clips/000012`` for PNG frames), relative to the folder."""
    width = max(6, len(str(settings.n - 1)))
    suffix = "" if settings.format == "png" else f".{settings.format}"
    return f"{CLIP_FOLDER}/{index:0{width}d}{suffix}"


def model_identity(model: Union[str, Path, None] = None) -> str:
    """What ``synth.json`` records of a model (a shipped name, default ``shapes``, or a
    checkpoint or run directory, its newest checkpoint): a hash of its config and weights."""
    return f"sha256:{autoencoder_fingerprint(resolve_model(model))}"   # a hash of any checkpoint's files


def held_out_of(pipe) -> list[Triple]:
    """The triples the model was trained without (its ``data.held_out``), else the demo's."""
    data = getattr(getattr(pipe, "run_config", None), "data", None)
    held = [tuple(t) for t in (getattr(data, "held_out", None) or [])]
    return held or [tuple(t) for t in DEMO_HELD_OUT]


# ----------------------------------------------------------------------------- the folder
def read_rows(path: Path) -> list[dict]:
    """The rows of a label file; a last line without its newline (a write cut short) is
    ignored, a damaged line before it is an error."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    rows = []
    for n, line in enumerate(lines[:-1], 1):      # lines[-1]: "" or the torn tail
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise SynthError(f"{path}:{n} is damaged (not JSON): {line[:80]!r}") from None
    return rows


class LabelWriter:
    """Appends rows to one rank's label file, each line flushed and fsync'd before the next
    clip starts, so a crash loses at most the line being written; a torn tail left by an
    earlier crash is cut off first (the file is this rank's alone)."""

    def __init__(self, path: Path):
        if path.is_file():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):
                with open(path, "r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)
        self.file = open(path, "a", encoding="utf-8")

    def append(self, row: dict) -> None:
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


def check_settings(out: Path, settings: SynthSettings) -> None:
    """Write ``synth.json`` into a new or empty folder, or check that the one there holds the
    same settings; :class:`SynthError` names the first setting that differs."""
    path = out / SETTINGS
    if not path.is_file():
        if out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):
            raise SynthError(f"{str(out)!r} is not empty and holds no {SETTINGS}: write a synthetic "
                             "dataset into a new or empty folder")
        write_json_atomic(path, {"format": FORMAT, "version": FORMAT_VERSION, "settings": settings.to_dict()})
    try:
        stored = json.loads(path.read_text())
        old = stored["settings"] if stored.get("format") == FORMAT else None
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        old = None
    if not isinstance(old, dict):
        raise SynthError(f"{str(path)!r} is not a vidiff synth settings file")
    for key, value in settings.to_dict().items():
        if old.get(key) != value:
            raise SynthError(f"{str(out)!r} holds a dataset made with other settings: {key} is "
                             f"{old.get(key)!r} there, this run asks for {value!r}; use the same "
                             "settings to continue it, or another --out")


def done_rows(out: Path, n: int) -> dict[int, dict]:
    """``{index: row}`` of the indices already done, over every rank's file: a clip whose row
    and file both exist, or a recorded failure. A later row of an index replaces an earlier."""
    done = {}
    for path in sorted(out.glob("labels.rank*.jsonl")):
        for row in read_rows(path):
            index = row.get("index")
            if isinstance(index, int) and 0 <= index < n and (row.get("failed") or (out / row["file"]).exists()):
                done[index] = row
    return done


def merge(out: Path, settings: SynthSettings) -> Optional[dict]:
    """When every index is done, write ``labels.jsonl``, ``captions.jsonl`` and
    ``summary.json`` (atomically: several ranks may merge at once, with the same result) and
    return the summary; ``None`` while indices remain."""
    done = done_rows(out, settings.n)
    if len(done) < settings.n:
        return None
    rows = [done[i] for i in range(settings.n)]
    clips = [r for r in rows if not r.get("failed")]
    captions = [{"file": r["file"], "caption": r["caption"]} for r in clips]
    for name, items in ((LABELS, clips), (CAPTIONS, captions)):
        text = "".join(json.dumps(item) + "\n" for item in items)
        write_file_atomic(out / name, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    summary = {"n": settings.n, "clips": len(clips), "failed": [r["index"] for r in rows if r.get("failed")],
               "rejections": sum(r["rejections"] for r in rows),
               "attempts": sum(r["rejections"] + (0 if r.get("failed") else 1) for r in rows)}
    write_json_atomic(out / SUMMARY, summary)
    return summary


def _write_bytes_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())    # the clip is on disk before its label line is


def _stored(video: Video, settings: SynthSettings) -> tuple[Video, Optional[bytes]]:
    """The clip as it will be read back (after the codec) and its encoded bytes (None: PNG)."""
    if settings.format == "png":
        return video, None
    data = video.to_bytes(settings.format)
    return Video.load(data), data


def _sample(pipe, prompts: list[str], seeds: list[int], settings: SynthSettings) -> list[Video]:
    """One batch through the pipeline's sampling core, one seed per clip."""
    with torch.no_grad():
        cond = pipe.encode(prompts)
        shape = pipe.clip_shape(settings.frames, settings.height, settings.width)
        x0 = pipe.sample(cond, shape, seeds, steps=settings.steps, sampler=settings.sampler,
                         guidance=settings.guidance)
        return pipe.decode(x0)


# ----------------------------------------------------------------------------- the run
def synthesize(pipe, out: Union[str, Path], n: int, model: str, seed: int = 0, held_out: str = "include",
               steps: int = DEFAULTS.steps, sampler: str = DEFAULTS.sampler, guidance: float = DEFAULTS.guidance,
               frames: Optional[int] = None, max_attempts: int = 8, batch: int = 16, format: str = "mp4",
               rank: Optional[int] = None, world_size: Optional[int] = None, progress: bool = True) -> dict:
    """Write this process's share of an ``n``-clip labelled dataset into ``out``.

    Args:
        pipe: a text-to-video :class:`~vidiff.pipelines.VideoPipeline` trained on MovingShapes
            (anything with its ``encode``, ``clip_shape``, ``sample``, ``decode``, ``frames``,
            ``height``, ``width``).
        model: the identity recorded in ``synth.json`` (:func:`model_identity`).
        held_out: ``include`` (all 84 triples), ``exclude`` or ``only`` the model's held-out
            triples (:func:`held_out_of`).
        frames: clip length (default: the model's training length).
        max_attempts: samples tried per index before it is recorded as failed.
        batch: clips sampled per call.
        format: ``mp4``, ``webm``, ``gif`` or ``png`` (a folder of lossless frames per clip).
        rank, world_size: this process's share, ``i ≡ rank (mod world_size)``; default from
            the environment (:func:`shard_from_env`).

    Returns this share's ``{"rank", "world_size", "share", "generated", "resumed", "clips",
    "failed" (indices), "rejections"}`` (counted over the share, however many runs made it),
    and ``"summary"`` (:func:`merge`) when this process found the whole dataset done.
    """
    for name, value, low in (("n", n, 1), ("seed", seed, 0), ("frames", 1 if frames is None else frames, 1),
                             ("max_attempts", max_attempts, 1), ("batch", batch, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise SynthError(f"{name} must be an integer >= {low}, got {value!r}")
    if held_out not in HELD_OUT:
        raise SynthError(f"unknown held-out mode {held_out!r}; accepted: {', '.join(HELD_OUT)}")
    if format not in CLIP_FORMATS:
        raise SynthError(f"unknown clip format {format!r}; accepted: {', '.join(CLIP_FORMATS)}")
    check_sampling(steps, sampler, guidance)
    if getattr(pipe, "text_encoder", None) is None:
        raise SynthError("this model is unconditional: vidiff synth needs a text-to-video model "
                         "trained on MovingShapes")
    if rank is None or world_size is None:
        rank, world_size = shard_from_env()
    elif not 0 <= rank < world_size:
        raise SynthError(f"rank {rank} must be in [0, world size {world_size})")
    settings = SynthSettings(
        model=model, n=n, seed=seed, held_out=held_out, held_out_triples=tuple(held_out_of(pipe)),
        steps=steps, sampler=sampler, guidance=float(guidance), frames=frames or pipe.frames,
        height=pipe.height, width=pipe.width, max_attempts=max_attempts, format=format)
    triples = settings.triples()
    pipe.clip_shape(settings.frames, settings.height, settings.width)   # a size the model refuses fails here
    out = Path(out)
    check_settings(out, settings)
    (out / CLIP_FOLDER).mkdir(exist_ok=True)

    share = range(rank, n, world_size)
    done = done_rows(out, n)
    queue = deque((i, 0) for i in share if i not in done)
    resumed = len(share) - len(queue)
    bar = tqdm(total=len(share), initial=resumed, desc=f"synth rank {rank}/{world_size}", unit="clip",
               disable=not progress)
    labels, rejected = LabelWriter(out / f"labels.rank{rank}.jsonl"), 0
    try:
        while queue:
            work = [queue.popleft() for _ in range(min(batch, len(queue)))]
            prompts = [caption(*prompt_triple(seed, i, triples)) for i, _ in work]
            seeds = [clip_seed(seed, i, a) for i, a in work]
            videos = _sample(pipe, prompts, seeds, settings)
            for (i, attempt), prompt, sample_seed, video in zip(work, prompts, seeds, videos):
                stored, data = _stored(video, settings)
                found = detect(stored)
                row = {"index": i, "prompt": prompt, "seed": sample_seed, "rejections": attempt}
                if tuple(found[k] for k in ATTRIBUTES) == parse_caption(prompt):
                    name = clip_name(i, settings)
                    if data is None:
                        video.save(out / name)             # a PNG folder, itself written atomically
                    else:
                        write_file_atomic(out / name, lambda tmp: _write_bytes_synced(tmp, data))
                    labels.append({**row, "file": name, "caption": prompt, **found})
                    bar.update(1)
                    continue
                rejected += 1
                if attempt + 1 < max_attempts:
                    queue.appendleft((i, attempt + 1))     # retried in the next batch
                else:
                    labels.append({**row, "rejections": max_attempts, "failed": True, "detected": found})
                    bar.update(1)
            bar.set_postfix(rejected=rejected)
    finally:
        labels.close()
        bar.close()
    rows = [r for i, r in done_rows(out, n).items() if i % world_size == rank]
    report = {"rank": rank, "world_size": world_size, "share": len(share), "generated": len(share) - resumed,
              "resumed": resumed, "clips": sum(1 for r in rows if not r.get("failed")),
              "failed": sorted(r["index"] for r in rows if r.get("failed")),
              "rejections": sum(r["rejections"] for r in rows)}
    summary = merge(out, settings)
    if summary is not None:
        report["summary"] = summary
    return report


def format_report(report: dict, out: Union[str, Path]) -> str:
    """The lines ``vidiff synth`` prints for :func:`synthesize`'s report."""
    lines = [f"rank {report['rank']} of {report['world_size']}: {report['share']} indices ({report['generated']} "
             f"done now, {report['resumed']} before): {report['clips']} clips, {len(report['failed'])} failed, "
             f"{report['rejections']} rejections"]
    summary = report.get("summary")
    if summary is None:
        lines.append("other ranks' indices remain: the last rank to finish writes labels.jsonl")
    else:
        rate = (summary["attempts"] - summary["rejections"]) / max(summary["attempts"], 1)
        lines.append(f"dataset complete: {summary['clips']} of {summary['n']} clips in {out} "
                     f"({summary['rejections']} rejections, {rate:.1%} of samples accepted)")
        if summary["failed"]:
            shown = ", ".join(map(str, summary["failed"][:20])) + (" ..." if len(summary["failed"]) > 20 else "")
            lines.append(f"{len(summary['failed'])} indices failed every attempt and have no clip: {shown}")
    return "\n".join(lines)
