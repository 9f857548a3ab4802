"""``vidiff train``: from a run config to a trained checkpoint, samples and a loss curve."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from vidiff.config import from_dict, to_dict
from vidiff.train.checkpoint import read_config, resolve_checkpoint, submodule_state, write_file_atomic
from vidiff.train.config import RunConfig
from vidiff.train.objective import DiffusionObjective
from vidiff.train.trainer import Trainer


def build_trainer(run: RunConfig, resume: Optional[str] = None, progress: bool = True) -> Trainer:
    """Dataset, text encoder, network, objective and trainer for ``run``.

    With ``resume``, the text encoder's vocabulary and all training state come from that
    checkpoint, so the run continues exactly where it stopped.
    """
    from vidiff.data import build_dataset, collate
    from vidiff.data.common import vocabulary_captions
    from vidiff.models.registry import network_spec
    from vidiff.pipelines.video import build_network_for, build_text_encoder_for

    torch.manual_seed(run.train.seed)
    dataset = build_dataset(run.data)
    if run.task == "autoencoder":
        return _autoencoder_trainer(run, dataset, resume, progress)
    vae = None
    if run.model.vae:
        from vidiff.pipelines.autoencoder import autoencoder_fingerprint, load_autoencoder
        vae = load_autoencoder(run.model.vae)
        vae.fingerprint = autoencoder_fingerprint(run.model.vae)
        vae.latent_shape(run.data.frames, run.data.size, run.data.size)   # the clip size must fit
    text_dir = None
    if resume is not None:
        ckpt = resolve_checkpoint(resume)
        text_dir = ckpt / "text_encoder" if (ckpt / "text_encoder").is_dir() else None
    elif run.train.init_from:
        ckpt = resolve_checkpoint(run.train.init_from)
        text_dir = ckpt / "text_encoder" if (ckpt / "text_encoder").is_dir() else None
    text_encoder = build_text_encoder_for(run, captions=None if text_dir else vocabulary_captions(dataset),
                                          text_dir=text_dir)
    network = build_network_for(run, text_encoder, vae)
    _check_latent_cache(dataset, vae, text_encoder)
    d = run.diffusion
    objective = DiffusionObjective(
        network, text_encoder, d.make_schedule(), d.parameterization, d.loss_weighting,
        d.min_snr_gamma, d.time_distribution, d.logit_mean, d.logit_std,
        text_dropout=run.train.text_dropout if text_encoder is not None else 0.0,
        frame_stride=getattr(network.config, "frame_stride", False), vae=vae)
    checkpoint_config = {"kind": "denoiser", **network_spec(network), "run": to_dict(run),
                         "fps": float(getattr(dataset, "fps", 8.0))}

    def save_extra(tmp: Path, weights: dict) -> None:
        if text_encoder is not None:
            own = submodule_state(weights, "text_encoder.")
            text_encoder.save(tmp / "text_encoder", state=own or None)
        if vae is not None:  # a latent model carries its autoencoder: it reloads with no other file
            copy_autoencoder(run.model.vae, tmp / "vae")

    return _restored(Trainer(objective, dataset, run.train, checkpoint_config, save_extra=save_extra,
                             collate=collate, progress=progress), run, resume)


def _restored(trainer: Trainer, run: RunConfig, resume: Optional[str]) -> Trainer:
    """``trainer`` continued from ``resume``, or started from ``train.init_from``'s weights."""
    if resume is not None:
        trainer.resume(resume)
    elif run.train.init_from:
        trainer.load_weights(run.train.init_from, ema=True)
    return trainer


def _check_latent_cache(dataset, vae, text_encoder) -> None:
    """A latent cache must come from this run's autoencoder; its cached text is used only when
    it is what this run's text encoder would compute (same vocabulary, or same frozen kind)."""
    from vidiff.data.latents import LatentCache
    if not isinstance(dataset, LatentCache):
        return
    if vae is None:
        raise ValueError(f"data.name {str(dataset.path)!r} is a latent cache: set model.vae to the "
                         "autoencoder that made it")
    if vae.fingerprint != dataset.fingerprint:
        raise ValueError(f"latent cache {str(dataset.path)!r} was made by autoencoder "
                         f"{dataset.fingerprint}, not by model.vae ({vae.fingerprint}): rebuild it")
    text = dataset.index.get("text")
    if text == "token_ids":
        from vidiff.text.tokenizer import WordTokenizer
        dataset.cached_text = getattr(text_encoder, "tokenizer", None) == WordTokenizer.build(dataset.captions())
    else:
        dataset.cached_text = text_encoder is not None and isinstance(text, dict) and \
            text.get("kind") == text_encoder.config.kind and text.get("dim") == text_encoder.dim


def _autoencoder_trainer(run: RunConfig, dataset, resume: Optional[str], progress: bool) -> Trainer:
    from vidiff.config import to_dict
    from vidiff.models.registry import resolve_config
    from vidiff.models.vae import VideoVAE
    from vidiff.train.autoencoder import AutoencoderObjective, estimate_scaling

    vae = VideoVAE(resolve_config(run.model.size, run.model.overrides))
    vae.latent_shape(run.data.frames, run.data.size, run.data.size)      # the clip size must fit
    objective = AutoencoderObjective(vae, run.autoencoder)

    def checkpoint_config(weights: dict) -> dict:
        shift, scale = estimate_scaling(vae, weights, dataset, run.autoencoder.scaling_batches,
                                        run.train.batch_size)
        network = {**to_dict(vae.config), "shift_factor": shift, "scaling_factor": scale}
        return {"kind": "autoencoder", "arch": "vae", "network": network, "run": to_dict(run),
                "fps": float(getattr(dataset, "fps", 8.0))}

    trainer = Trainer(objective, dataset, run.train, checkpoint_config, progress=progress)
    return _restored(trainer, run, resume)


def copy_autoencoder(source, dest: Path) -> None:
    """Copy an autoencoder checkpoint's config and weights (no trainer state) to ``dest``."""
    import shutil
    from vidiff.train.checkpoint import read_config
    read_config(source, kind="autoencoder")
    source = resolve_checkpoint(source)
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors", "ema.safetensors"):
        if (source / name).is_file():
            shutil.copy2(source / name, dest / name)


def resume_config(path: str, overrides: Optional[list[str]] = None) -> RunConfig:
    """The run config stored in a checkpoint, with ``key=value`` overrides (e.g. more steps)."""
    from vidiff.config import apply_overrides
    data = read_config(path)["run"]
    apply_overrides(data, overrides or [])
    return from_dict(RunConfig, data)


def train(run: RunConfig, resume: Optional[str] = None, progress: bool = True,
          samples: bool = True) -> Trainer:
    """Train ``run`` (or continue it from ``resume``), then write samples and the loss curve."""
    trainer = build_trainer(run, resume, progress)
    if samples:
        trainer.sample_hook = lambda t: write_samples(run, t)
    trainer.fit()
    if trainer.dist.main:
        plot_loss(trainer.history, Path(run.train.out_dir) / "loss.png")
        if samples:
            write_samples(run, trainer)
    return trainer


def default_prompts(run: RunConfig, trainer: Trainer, count: int = 4) -> list[str]:
    if run.sample.prompts:
        return list(run.sample.prompts)
    held_out = getattr(trainer.dataset, "held_out", None) or []
    prompts = [f"a {c} {s} moving {d}" for c, s, d in held_out][:count]
    i = 0
    while len(prompts) < count and i < 64:
        caption = trainer.dataset[i]["caption"]
        if caption and caption not in prompts:
            prompts.append(caption)
        i += 1
    return prompts


def write_samples(run: RunConfig, trainer: Trainer) -> Optional[Path]:
    """Sample the newest checkpoint (EMA weights) and write a grid video ``samples/step_N.mp4``:
    generated clips for a denoiser, inputs beside reconstructions for an autoencoder."""
    from vidiff.pipelines.video import load
    from vidiff.video import Video

    ckpt = resolve_checkpoint(run.train.out_dir)
    out = Path(run.train.out_dir) / "samples" / f"step_{trainer.step:07d}.mp4"
    out.parent.mkdir(parents=True, exist_ok=True)
    if run.task == "autoencoder":
        from vidiff.data import collate
        from vidiff.pipelines.autoencoder import load_autoencoder, reconstruction_grid
        vae = load_autoencoder(ckpt)
        held = [trainer.dataset[len(trainer.dataset) - 1 - i] for i in range(4)]
        reconstruction_grid(vae, collate(held)["video"], fps=getattr(trainer.dataset, "fps", 8.0)).save(out)
        return out
    pipe = load(ckpt)
    prompts = default_prompts(run, trainer) if pipe.text_encoder is not None else [None] * 4
    if pipe.text_encoder is None:
        videos = [pipe.generate(None, steps=run.sample.steps, seed=k, sampler=run.sample.sampler)
                  for k in range(len(prompts))]
    else:
        videos = pipe.generate(prompts, num_frames=run.sample.frames or None, steps=run.sample.steps,
                               guidance=run.sample.guidance, sampler=run.sample.sampler, seed=0)
    Video.grid(videos, cols=min(4, len(videos))).save(out)
    (out.with_suffix(".txt")).write_text("\n".join(p or "" for p in prompts) + "\n")
    return out


def plot_loss(history: list[dict], path: Path) -> None:
    """The loss curve (raw and smoothed) as a PNG, written atomically."""
    if not history:
        return
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    losses = [h["loss"] for h in history]
    smooth, value = [], losses[0]
    for loss in losses:  # exponential smoothing shows the trend under the noise
        value = 0.95 * value + 0.05 * loss
        smooth.append(value)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, losses, alpha=0.3, label="loss")
    ax.plot(steps, smooth, label="smoothed")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    try:
        write_file_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
