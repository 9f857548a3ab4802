"""What every command module shares: the parser class, option types, the JSON writer.

Every user-facing value is checked once, when the command line is parsed, before any model is
loaded or any file written. Each ``*_type`` below is an argparse ``type=``: it returns the
parsed value or raises ``argparse.ArgumentTypeError`` naming the value and what is accepted,
which :class:`Parser` prints as one line, ``vidiff CMD: error: argument --opt: ...``, with exit
status 2. (argparse passes string defaults through ``type=`` as well, so defaults are checked
by the same rule.) What only a loaded model can judge (a frame size its network cannot take,
a checkpoint of another kind) is checked by the library before its work starts and raised as
a ``ValueError``, which ``vidiff.cli.main`` prints the same way.
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import torch

from vidiff.checkpoint import write_json_atomic
from vidiff.data import BUILTIN
from vidiff.diffusion import DEFAULT_GUIDANCE_WEIGHT, FRAME_METHODS, SAMPLERS
from vidiff.pipelines.frames import SCHEMES, parse_prompt_schedule
from vidiff.pipelines.shipped import DEFAULT_MODEL, check_model
from vidiff.pipelines.video import DEFAULTS
from vidiff.video import SAVE_EXTENSIONS, Video

Type = Callable[[str], object]
SEED_LIMIT = 2 ** 32         # seeds are what numpy and torch both take: 0 <= seed < 2^32


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``vidiff CMD: error: MESSAGE``, and exit
    status 2 (argparse's own prints the whole usage first, many lines for a big command).
    Subcommand parsers are made of the same class (argparse uses the parent's class)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _named(parse: Type, name: str) -> Type:
    parse.__name__ = name        # argparse names the type in a few messages of its own
    return parse


# ----------------------------------------------------------------------------- numbers
def int_at_least(low: int) -> Type:
    """An integer ``>= low`` (``"0"`` is refused by ``int_at_least(1)``, never defaulted)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value
    return _named(parse, f"integer >= {low}")


positive_int = int_at_least(1)


def seed_type(text: str) -> int:
    """A random seed: an integer in ``[0, 2^32)``."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"a seed must be an integer in [0, {SEED_LIMIT}), got {text!r}")
    return value


def number(low: float = -math.inf, high: float = math.inf, low_open: bool = False) -> Type:
    """A finite float in ``[low, high]`` (``(low, high]`` with ``low_open``); NaN and inf are
    refused, as no option means anything by them."""
    if high < math.inf:
        accepted = f"a finite number in {'(' if low_open else '['}{low:g}, {high:g}]"
    elif low > -math.inf:
        accepted = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        accepted = "a finite number"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {accepted}, got {text!r}") from None
        if not (math.isfinite(value) and (value > low if low_open else value >= low) and value <= high):
            raise argparse.ArgumentTypeError(f"must be {accepted}, got {text!r}")
        return value
    return _named(parse, accepted)


positive_float = number(0.0, low_open=True)
nonnegative_float = number(0.0)
unit_interval = number(0.0, 1.0)


# ----------------------------------------------------------------------------- names and lists
def one_of(what: str, options: Iterable[str]) -> Type:
    """One of ``options`` (``one_of("sampler", SAMPLERS)``): ``unknown sampler 'dpm'; accepted: ...``."""
    options = list(options)

    def parse(text: str) -> str:
        if text not in options:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}; accepted: {', '.join(options)}")
        return text
    return _named(parse, what)


def csv_list(kind: Type) -> Type:
    """Comma-separated values, each parsed by ``kind`` (``"10,20"`` -> ``[10, 20]``); at least one."""
    def parse(text: str) -> list:
        parts = [part.strip() for part in text.split(",") if part.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected one or more comma-separated values, got {text!r}")
        try:
            return [kind(part) for part in parts]
        except ValueError:       # a plain type such as int; ArgumentTypeError passes through
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, "
                                             f"got {text!r}") from None
    return _named(parse, f"list of {kind.__name__}")


def text_type(text: str) -> str:
    """A non-blank string (a prompt)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected non-blank text, got an empty string")
    return text


def device_type(text: str) -> str:
    """A torch device this machine has: ``cpu``, ``cuda``, ``cuda:N``, ``mps``, ..."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; accepted: cpu, cuda, cuda:N, mps") from None
    backend = getattr(torch, device.type, None)
    if not (hasattr(backend, "is_available") and backend.is_available()):
        raise argparse.ArgumentTypeError(f"device {text!r} is not available on this machine")
    if device.index is not None and hasattr(backend, "device_count") and device.index >= backend.device_count():
        raise argparse.ArgumentTypeError(f"device {text!r} does not exist: this machine has "
                                         f"{backend.device_count()} {device.type} device(s)")
    return text


# ----------------------------------------------------------------------------- paths
def existing_path(text: str) -> str:
    """A file or folder that exists (a video or a folder of frames)."""
    if not Path(text).exists():
        raise argparse.ArgumentTypeError(f"no such file or folder: {text!r}")
    return text


def existing_file(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text!r}" if not Path(text).exists()
                                         else f"{text!r} is a folder, expected a file")
    return text


def existing_dir(text: str) -> str:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"no such folder: {text!r}" if not Path(text).exists()
                                         else f"{text!r} is a file, expected a folder")
    return text


def model_type(text: str) -> str:
    """A model: an existing checkpoint or run directory, or an installed shipped model's name
    (an unknown name is refused with the list of shipped ones). Whether the files load is
    checked when the model loads, still before any work."""
    try:
        check_model(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_model_option(parser, default: str = DEFAULT_MODEL) -> None:
    """``--model NAME_OR_DIR``, the one option every command that uses a model takes.

    Left out, it is None, which the command reads as its ``default`` (named in the help;
    :func:`vidiff.pipelines.video.load` reads None as the shipped ``shapes``): a string default would be checked before argparse reports a missing required
    option, and a build without ``shapes`` would then hide that message behind its own."""
    parser.add_argument("--model", type=model_type, default=None, metavar="NAME_OR_DIR",
                        help=f"a shipped model's name (vidiff models --pretrained) or a checkpoint or "
                             f"run directory (default: {default})")


def dataset_type(text: str) -> str:
    """A built-in dataset name or an existing folder (of videos, or a latent cache)."""
    if text not in BUILTIN and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is neither a built-in dataset ({', '.join(BUILTIN)}) "
                                         "nor an existing folder")
    return text


def _check_writable(text: str, path: Path) -> None:
    """The nearest existing ancestor of ``path`` must be a writable folder: the command
    creates the folders below it when it writes."""
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: {str(parent)!r} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: folder {str(parent)!r} is not writable")


def output_file(extensions: Optional[Sequence[str]] = None, frames_folder: bool = False) -> Type:
    """A file to write whose extension is one of ``extensions`` (None: any), in a folder that
    exists or can be made; with ``frames_folder``, a path without extension (or ending in
    ``/``) is a folder of PNG frames, as :meth:`vidiff.Video.save` takes it."""
    accepted = ", ".join(extensions or ()) + (", or a folder path (no extension) for PNG frames"
                                              if frames_folder else "")

    def parse(text: str) -> str:
        path = Path(text)
        folder = text.endswith(("/", os.sep)) or path.suffix == ""
        if frames_folder and folder:
            if path.exists() and not path.is_dir():
                raise argparse.ArgumentTypeError(f"{text!r} is a file; a path without extension is a "
                                                 "folder of PNG frames")
        else:
            if extensions is not None and path.suffix.lower() not in extensions:
                raise argparse.ArgumentTypeError(f"cannot write {text!r}: unknown extension "
                                                 f"{path.suffix!r}; accepted: {accepted}")
            if text.endswith(("/", os.sep)) or path.is_dir():
                raise argparse.ArgumentTypeError(f"{text!r} is a folder, expected a file path")
        _check_writable(text, path)
        return text
    return _named(parse, "output path")


video_out = output_file(SAVE_EXTENSIONS, frames_folder=True)   # what Video.save writes
json_out = output_file()


def output_dir(text: str) -> str:
    """A folder to write into (a run directory, a cache): it may exist; it must not be a file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, expected a folder")
    _check_writable(text, path)
    return text


def write_json(path: str, data) -> None:
    """Write JSON atomically (a temporary file, then a rename)."""
    write_json_atomic(Path(path), data)


# ----------------------------------------------------------------------------- shared options
def add_video_out(p) -> None:
    """``--out``, a video path whose extension picks the container, for every command that writes one."""
    p.add_argument("--out", type=video_out, required=True,
                   help="output path; the extension picks the container (.mp4, .webm, .gif; none: PNG folder)")


def add_sampling_options(p, samples: bool = True, guidance_help: Optional[str] = None) -> None:
    """The options every sampling command shares (DESIGN: the same meaning everywhere).
    ``--steps``, ``--sampler`` and ``--guidance`` stay None when not given: the model then
    samples as its config's ``sample`` section says (:attr:`VideoPipeline.sample_defaults
    <vidiff.pipelines.VideoPipeline.sample_defaults>`), and a command whose other source of
    them (a cascade's stages, a noise file) would silently win can refuse them."""
    add_model_option(p)
    p.add_argument("--negative-prompt", type=text_type, help="steer away from this text")
    p.add_argument("--steps", type=positive_int, default=None,
                   help=f"sampling steps (default: the model's own; {DEFAULTS.steps} unless its config says otherwise)")
    p.add_argument("--sampler", type=one_of("sampler", SAMPLERS), default=None,
                   help=f"default: the model's own; {DEFAULTS.sampler} unless its config says otherwise")
    p.add_argument("--guidance", type=nonnegative_float, default=None,
                   help=guidance_help or f"classifier-free guidance scale, 1 = off (default: the model's own; "
                                         f"{DEFAULTS.guidance:g} unless its config says otherwise)")
    p.add_argument("--seed", type=seed_type, default=0)
    if samples:
        p.add_argument("--samples", type=positive_int, default=1,
                       help="variations, written as OUT_0, OUT_1, ... when more than one")
    add_video_out(p)
    p.add_argument("--device", type=device_type, help="cpu, cuda, ... (default: cuda if available)")


def add_frame_options(p) -> None:
    """How known frames condition the sample, for every frame-conditioned command."""
    p.add_argument("--method", type=one_of("method", FRAME_METHODS), default=None,
                   help="mask: the known frames enter the network (default for mask-trained models); "
                        "guidance: reconstruction guidance (default otherwise); replace: the baseline")
    p.add_argument("--guidance-weight", type=nonnegative_float, default=DEFAULT_GUIDANCE_WEIGHT,
                   help="reconstruction guidance weight (--method guidance)")


def add_long_options(p) -> None:
    """Window-by-window generation of long clips (generate and extend)."""
    p.add_argument("--prompt-schedule", type=existing_file, metavar="FILE",
                   help="a file of 'FRAME PROMPT' lines: the prompt changes at those frames")
    p.add_argument("--scheme", type=one_of("scheme", SCHEMES), default="autoregressive",
                   help="autoregressive: sliding windows; hierarchical: keyframes first, then fill")
    p.add_argument("--overlap", type=positive_int, help="known frames each new window starts with "
                                                         "(default: a quarter of the model's window)")
    p.add_argument("--stride", type=positive_int, default=4, help="keyframe spacing of --scheme hierarchical")


SAMPLING_OPTIONS = ("steps", "sampler", "guidance")


def sampling_kwargs(args) -> dict:
    """The pipeline keywords of :func:`add_sampling_options` and :func:`add_frame_options`."""
    kwargs = dict(steps=args.steps, sampler=args.sampler, guidance=args.guidance, seed=args.seed,
                  negative_prompt=args.negative_prompt, progress=True)
    if hasattr(args, "method"):
        kwargs.update(method=args.method, guidance_weight=args.guidance_weight)
    return kwargs


def long_kwargs(args) -> dict:
    schedule = None
    if args.prompt_schedule is not None:
        schedule = parse_prompt_schedule(Path(args.prompt_schedule).read_text().splitlines())
    return dict(prompt_schedule=schedule, scheme=args.scheme, overlap=args.overlap, stride=args.stride)


def read_video(path: str, what: str = "video") -> Video:
    """A video (or folder of frames) from the command line; a file PyAV cannot decode is a
    ValueError naming it (one line, before any work)."""
    try:
        return Video.load(path)
    except (ValueError, OSError) as e:
        raise ValueError(f"cannot read {what} {path!r}: {e}") from None


def write_videos(videos, out: str) -> None:
    """One video to ``out``; several to ``OUT_0``, ``OUT_1``, ... (same extension)."""
    videos = videos if isinstance(videos, list) else [videos]
    path = Path(out)
    targets = [path] if len(videos) == 1 else [path.with_name(f"{path.stem}_{i}{path.suffix}")
                                               for i in range(len(videos))]
    for video, target in zip(videos, targets):
        video.save(target)
        print(f"wrote {target}")
