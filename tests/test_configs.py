"""Every config under configs/ trains: shrunk to a tiny model of the same architecture and a
few 16x16 clips, it runs two steps, writes a checkpoint that reloads, and keeps what the file
is about (run kind, architecture, schedule and parameterization, data set, text encoder, ...).

The configs are found by glob, so a new file under configs/ is covered without a new test.
"""
import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vidiff
from vidiff.checkpoint import read_config, resolve_checkpoint
from vidiff.compose import DiffusionConfig, RunConfig, load_autoencoder
from vidiff.config import from_dict, load_file, to_dict
from vidiff.models.registry import architecture_of, resolve_config
from vidiff.train.config import load_run_config
from vidiff.train.kinds import RUN_KINDS
from vidiff.train.run import train

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
TINY_SIZES = {"unet": "unet-tiny", "dit": "dit-tiny", "vae": "vae-tiny"}
STEPS = 2


def _ids(paths):
    return [p.name for p in paths]


def family(run: RunConfig) -> dict:
    """What a tiny stand-in must share with the network a config names: the architecture and,
    for an autoencoder, whether it is 3D (causal over time) or per frame. (A ControlNet's
    architecture is its base's: the tiny run trains it over the base's tiny run.)"""
    if run.kind == "controlnet":
        return {"arch": "controlnet", "control": run.control}
    config = resolve_config(run.model.size, run.model.overrides)
    arch = architecture_of(config)
    return {"arch": arch, **({"vae_kind": config.kind} if arch == "vae" else {})}


def about(run: RunConfig) -> dict:
    """The parts of a run config that say what it trains and how; a tiny run must keep them."""
    facts = {
        "kind": run.kind, **family(run), "latent": run.model.vae is not None,
        # the data set and its options, all but the clip size (and the loader's workers)
        "data": {k: v for k, v in to_dict(run.data).items() if k not in ("frames", "size", "num_workers")},
        "text": (run.text.kind, run.text.pooling),
        "optimizer": (run.train.lr, run.train.lr_schedule, run.train.weight_decay,
                      run.train.ema_decay, run.train.fsdp),
    }
    if run.kind == "autoencoder":
        losses = to_dict(run.autoencoder)
        # the tiny run switches the discriminator on at once and measures the latent scale
        # on one batch; the loss terms and their weights stay
        facts["autoencoder"] = {k: v for k, v in losses.items() if k not in ("gan_start", "scaling_batches")}
    else:
        facts["diffusion"] = to_dict(run.diffusion)
        facts["text_dropout"] = run.train.text_dropout
        facts["sample"] = (run.sample.sampler, run.sample.guidance)
    return facts


def clip_frames(run: RunConfig) -> int:
    # 1 + 4k frames for whatever an autoencoder codes, else any short clip
    return 5 if run.kind == "autoencoder" or run.model.vae else 4


def tiny_overrides(run: RunConfig, out_dir: Path, vae_dir=None, processes: int = 1) -> list[str]:
    """``key=value`` overrides that shrink ``run`` to seconds: a tiny registry size of the same
    architecture, 16x16 clips, two steps, a checkpoint at the end, no compile, no workers."""
    arch = family(run)["arch"]
    overrides = [
        *([f"model.size={TINY_SIZES[arch]}"] if arch in TINY_SIZES else []),
        f"data.frames={clip_frames(run)}", "data.size=16",
        f"train.steps={STEPS}", f"train.batch_size={2 * processes}", "train.grad_accum=1",
        f"train.checkpoint_every={STEPS}", "train.log_every=1", "train.sample_every=0",
        "train.num_workers=0", "train.max_minutes=0",
        # a staged config runs its stages as one schedule; stages are tested in test_train.py
        "train.stop_at=0",
        # compiling (inductor) on this CPU would take longer than all the rest of the file
        "train.compile=false", f"train.out_dir={out_dir}",
    ]
    if arch == "vae":
        overrides += [f"model.overrides.kind={family(run)['vae_kind']}",
                      "autoencoder.scaling_batches=1", "autoencoder.gan_start=1"]
    if run.text.kind == "builtin":
        overrides += ["text.dim=32", "text.depth=1", "text.heads=2"]
    if run.sample.frames is not None:
        overrides.append(f"sample.frames={clip_frames(run)}")
    if vae_dir is not None:
        overrides.append(f"model.vae={vae_dir}")
    return overrides


def config_writing(out_dir: str, key: str, kind: str = None) -> Path:
    """The config under configs/ (of run ``kind``, if given) whose ``train.out_dir`` is
    ``out_dir``, the value of another config's ``key``."""
    for path in CONFIGS:
        run = load_run_config(str(path))
        if (kind is None or run.kind == kind) and Path(run.train.out_dir) == Path(out_dir):
            return path
    raise AssertionError(f"{key}: {out_dir!r} is written by no {kind + ' ' if kind else ''}config "
                         f"under configs/ (their train.out_dir)")


def source_config(source: str, key: str) -> Path:
    """The config under configs/ whose run writes ``source``: a run directory, or a shipped
    model's name (the last config its card's command trains, else the run its shipped
    ``train.yaml`` wrote; a shipped run may have written elsewhere, e.g. ``train.out_dir=``)."""
    shipped = ROOT / "src" / "vidiff" / "shipped" / source
    if (shipped / "card.json").is_file():
        command = json.loads((shipped / "card.json").read_text())["command"]
        trained = re.findall(r"vidiff train (configs/\S+\.ya?ml)", command)
        if trained:
            assert ROOT / trained[-1] in CONFIGS, f"{key}: {source!r} names {trained[-1]}, not under configs/"
            return ROOT / trained[-1]
    if (shipped / "train.yaml").is_file():
        source = load_file(shipped / "train.yaml")["train"]["out_dir"]
    return config_writing(source, key)


def autoencoder_config_for(latent: RunConfig) -> Path:
    """The config under configs/ whose autoencoder run writes ``latent.model.vae``."""
    return config_writing(latent.model.vae, "model.vae", kind="autoencoder")


def stage_config_for(run: RunConfig) -> Path:
    """The config under configs/ whose run writes ``run.train.init_from`` (an earlier stage)."""
    return source_config(run.train.init_from, "train.init_from")


def _torchrun(path: Path, overrides: list[str], processes: int) -> None:
    """The documented command, ``torchrun --nproc_per_node N -m vidiff train CONFIG``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          f"--nproc_per_node={processes}", "-m", "vidiff", "train", str(path),
                          "--no-samples", *overrides],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, one_thread):
    """``tiny_run(path) -> (file's run config, tiny run config, out_dir)``, trained once per
    config (a latent config first trains the autoencoder config it names)."""
    done = {}

    def run(path: Path):
        if path not in done:
            full = load_run_config(str(path))
            if full.text.kind in ("clip", "t5"):
                pytest.skip(f"{path.name}: text.kind {full.text.kind} needs a local model directory")
            vae_dir = tiny_run_dir(autoencoder_config_for(full)) if full.model.vae else None
            out = tmp_path_factory.mktemp(path.stem)
            processes = 2 if full.train.fsdp else 1
            overrides = tiny_overrides(full, out, vae_dir, processes)
            if full.train.init_from:      # a later stage starts from its earlier stage's tiny run
                overrides.append(f"train.init_from={tiny_run_dir(stage_config_for(full))}")
            if full.kind == "controlnet":  # over its base's tiny run
                overrides.append(f"base={tiny_run_dir(source_config(full.base, 'base'))}")
            if processes > 1:
                # 2 CPU processes over gloo. bf16 collectives are not what gloo is for (slow or
                # refused), so the sharded run computes in fp32; the bf16 autocast path itself
                # is covered by tests/test_train.py.
                overrides.append("train.precision=fp32")
            tiny = load_run_config(str(path), overrides)
            if processes > 1:
                _torchrun(path, overrides, processes)
            else:
                train(tiny, progress=False)
            done[path] = (full, tiny, out)
        return done[path]

    def tiny_run_dir(path: Path) -> Path:
        return run(path)[2]

    return run


def test_configs_are_found():
    names = {p.name for p in CONFIGS}
    assert {"t2v-unet.yaml", "t2v-dit.yaml", "vae.yaml", "latent-t2v.yaml", "fsdp-dit.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=_ids(CONFIGS))
def test_config_is_documented_and_explicit(path):
    """The file opens with a comment holding its command, states its run kind, and
    docs/configs.md describes it."""
    header = list(itertools.takewhile(lambda line: line.startswith("#"), path.read_text().splitlines()))
    assert any(f"configs/{path.name}" in line for line in header), \
        f"{path.name}: the header comment must give the command that runs it"
    assert "kind" in load_file(path), f"{path.name}: state the run kind (kind: denoiser / autoencoder)"
    assert f"configs/{path.name}" in (ROOT / "docs" / "configs.md").read_text()


@pytest.mark.parametrize("path", [p for p in CONFIGS if load_run_config(str(p)).model.vae],
                         ids=lambda p: p.name)
def test_latent_config_chains_to_its_autoencoder(path):
    """A latent config names the out_dir of an autoencoder config trained on the clips it codes:
    the same data at the same frame size. The clip length may differ (configs/vae-64.yaml
    trains on 9-frame windows, then 17-frame ones), but the latent clip must be one that the
    autoencoder's temporal compression takes, 1 + k x its factor frames."""
    latent = load_run_config(str(path))
    vae = load_run_config(str(autoencoder_config_for(latent)))
    assert (latent.data.name, latent.data.size) == (vae.data.name, vae.data.size)
    factor = resolve_config(vae.model.size, vae.model.overrides).temporal_factor
    assert (latent.data.frames - 1) % factor == 0, (latent.data.frames, factor)


# Network options a fine-tune may switch on over its checkpoint: new condition inputs (and a
# reference pathway, whose encoder starts fresh and acts only where a reference is given).
GROWABLE = {"known_frames", "known_in_place", "frame_stride", "low_res"}
ADDABLE = {"reference_tokens", "pixel_head", "full_attention"}   # each starts as the identity
# How training draws and weighs diffusion times (DiffusionConfig.TRAINING_TIME_FIELDS): a later
# stage may spend its steps elsewhere in t (what each t means, the schedule, stays).


@pytest.mark.parametrize("path", [p for p in CONFIGS if load_run_config(str(p)).train.init_from],
                         ids=lambda p: p.name)
def test_staged_config_continues_its_earlier_stage(path):
    """A config that starts from another's run keeps everything the weights depend on: the
    network, the schedule (its shift above all: it fixes what each diffusion time means), the
    parameterization, the text encoder and the data set (its vocabulary and held-out triples)."""
    later = load_run_config(str(path))
    earlier = load_run_config(str(stage_config_for(later)))
    assert to_dict(later.text) == to_dict(earlier.text), "text"
    schedule = [{k: v for k, v in to_dict(run.diffusion).items() if k not in DiffusionConfig.TRAINING_TIME_FIELDS}
                for run in (later, earlier)]
    assert schedule[0] == schedule[1], "diffusion"
    # The network is the same, except that a later stage may add conditions the earlier one
    # lacks (their weights grow from zero when it loads, Trainer.load_weights) and may leave
    # out an addable part the earlier one has (dropped: it starts from what the part was added to).
    model_later, model_earlier = to_dict(later.model), to_dict(earlier.model)
    added = {k: v for k, v in model_later["overrides"].items() if k not in model_earlier["overrides"]}
    assert all((k in GROWABLE and v is True) or (k in ADDABLE and bool(v)) for k, v in added.items()), added
    dropped = {k for k in model_earlier["overrides"] if k not in model_later["overrides"]}
    assert dropped <= ADDABLE, dropped
    model_later["overrides"] = {k: v for k, v in model_later["overrides"].items() if k not in added}
    model_earlier["overrides"] = {k: v for k, v in model_earlier["overrides"].items() if k not in dropped}
    assert model_later == model_earlier, "model"
    assert (later.data.name, later.data.held_out) == (earlier.data.name, earlier.data.held_out)


@pytest.mark.parametrize("path", CONFIGS, ids=_ids(CONFIGS))
def test_config_trains_tiny_and_reloads(path, tiny_run):
    full, tiny, out = tiny_run(path)
    # the overrides shrank the run, not its recipe: the config and the checkpoint agree with the file
    assert about(tiny) == about(full)
    stored = read_config(resolve_checkpoint(out), kind=RUN_KINDS[full.kind].checkpoint_kind, required=("run",))
    assert stored["step"] == STEPS
    recorded = from_dict(RunConfig, stored["run"])
    if full.kind == "controlnet":      # it records its base's schedule and text settings, its own times
        base = load_run_config(str(source_config(full.base, "base")))
        for k in DiffusionConfig.SCHEDULE_FIELDS:
            assert getattr(recorded.diffusion, k) == getattr(base.diffusion, k), k
        for k in DiffusionConfig.TRAINING_TIME_FIELDS:
            assert getattr(recorded.diffusion, k) == getattr(full.diffusion, k), k
        assert recorded.text.kind == base.text.kind
        recorded.diffusion, recorded.text = full.diffusion, full.text
    assert about(recorded) == about(full)
    frames = clip_frames(full)
    if full.kind == "controlnet":
        pipe = vidiff.load(from_dict(RunConfig, stored["run"]).base)
        clip = vidiff.Video((torch.rand(frames, 16, 16, 3) * 255).to(torch.uint8).numpy())
        video = pipe.generate("a red circle moving right", control_from=clip, controlnet=str(out), steps=2)
        assert video.frames.shape == (frames, 16, 16, 3)
        return
    if full.kind == "autoencoder":
        vae = load_autoencoder(out)
        assert vae.config.kind == family(full)["vae_kind"]
        clip = torch.rand(1, 3, frames, 16, 16) * 2 - 1            # (B, C, T, H, W)
        with torch.no_grad():
            recon, _ = vae(clip)
        assert recon.shape == clip.shape and torch.isfinite(recon).all()
        return
    pipe = vidiff.load(out)
    assert architecture_of(pipe.network.config) == family(full)["arch"]
    assert pipe.parameterization == full.diffusion.parameterization
    assert pipe.schedule == full.diffusion.make_schedule()
    assert (pipe.vae is not None) == (full.model.vae is not None)
    assert (pipe.text_encoder is not None) == (full.text.kind != "none")
    if full.kind == "upscale":             # a stage: its training size is its output size
        scale = full.upscale.scale
        assert pipe.upscale_factor == scale
        video = pipe.upscale(torch.rand(3, frames, 16 // scale, 16 // scale) * 2 - 1, steps=2)
    else:
        video = pipe.generate("a red circle moving right", steps=2, seed=0)
    assert video.frames.shape == (frames, 16, 16, 3)
