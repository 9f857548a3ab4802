"""The run-kind registry: what a run trains, by which objective, and how it reloads.

A run config states its ``kind`` (``"denoiser"``, ``"upscale"`` (a super-resolution stage),
``"autoencoder"``, ``"controlnet"``; later a distilled student). Each kind is one
:class:`RunKind` entry: the model sizes it trains, the clip length it defaults to, how it
builds its objective and trainer, the checkpoint kind it writes and the loader that rebuilds
what it trained. A new kind is a new entry here, not a new branch on a name elsewhere.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from vidiff.checkpoint import resolve_checkpoint, submodule_state
from vidiff.compose import (
    DiffusionConfig, RunConfig, autoencoder_fingerprint, build_autoencoder_for, build_network_for, build_text_encoder_for,
    copy_autoencoder, load_autoencoder, load_controlnet, load_denoiser, text_encoder_dir, weights_fingerprint,
)
from vidiff.compose.shipped import resolve_model
from vidiff.config import ConfigError, to_dict
from vidiff.data import collate
from vidiff.data.control import NEEDS_EXTRACTOR, extract, load_extractor
from vidiff.data.common import vocabulary_captions
from vidiff.data.latents import LatentCache
from vidiff.models.controlnet import CONTROL_TYPES, ControlledNetwork
from vidiff.models.registry import AUTOENCODERS, CONTROLNETS, MODELS, architecture_of, build_controlnet, network_spec, resolve_config
from vidiff.text.tokenizer import WordTokenizer
from vidiff.train.autoencoder import AutoencoderObjective, estimate_scaling
from vidiff.train.objective import DiffusionObjective
from vidiff.train.trainer import Trainer
from vidiff.video import DEFAULT_FPS


@dataclass(frozen=True)
class RunKind:
    """One kind of run.

    Attributes:
        name: the ``kind`` a run config states.
        checkpoint_kind: the ``kind`` its checkpoints record (what loaders check).
        sizes: the registry sizes ``model.size`` may name.
        default_frames: ``fn(run_dict) -> frames or None``: the clip length used when no
            config layer sets ``data.frames`` (None: the data config's own default).
        build: ``fn(run, dataset, resume_dir, progress) -> Trainer`` (untrained, unrestored).
        load: ``fn(checkpoint_dir, device) -> what the run trained``.
    """
    name: str
    checkpoint_kind: str
    sizes: tuple[str, ...]
    default_frames: Callable[[dict], Optional[int]]
    build: Callable
    load: Callable


def _fps(dataset) -> float:
    return float(getattr(dataset, "fps", DEFAULT_FPS))


# ----------------------------------------------------------------------------- denoiser
def _denoiser_trainer(run: RunConfig, dataset, resume: Optional[str], progress: bool) -> Trainer:
    vae = None
    if run.model.vae:
        vae = load_autoencoder(run.model.vae)
        vae.fingerprint = autoencoder_fingerprint(run.model.vae)
        vae.latent_shape(run.data.frames, run.data.size, run.data.size)   # the clip size must fit
    # Resuming or fine-tuning keeps the checkpoint's text encoder (its vocabulary above all).
    source = resume or (resolve_model(run.train.init_from) if run.train.init_from else None)
    text_dir = text_encoder_dir(resolve_checkpoint(source)) if source else None
    text_encoder = build_text_encoder_for(run, captions=None if text_dir else vocabulary_captions(dataset),
                                          text_dir=text_dir)
    network = build_network_for(run, text_encoder, vae)
    if getattr(network.config, "low_res", False) and run.kind != "upscale":
        raise ConfigError("the network has a low-resolution input (low_res: true): a super-resolution "
                          "stage trains with kind: upscale")
    _check_latent_cache(dataset, vae, text_encoder)
    references = getattr(network.config, "reference_tokens", 0) > 0
    if run.reference.prob > 0 and not references:
        raise ConfigError(f"reference.prob is {run.reference.prob} but the network has no reference pathway: "
                          "set model.overrides.reference_tokens (e.g. 4)")
    if references and run.reference.prob == 0:
        raise ConfigError("the network has a reference pathway (reference_tokens) that would never train: "
                          "set reference.prob > 0")
    objective = DiffusionObjective(
        network, text_encoder, run.diffusion,
        text_dropout=run.train.text_dropout if text_encoder is not None else 0.0,
        frame_stride=getattr(network.config, "frame_stride", False), vae=vae,
        tasks=run.tasks if getattr(network.config, "known_frames", False) else None,
        reference=run.reference if references else None,
        upscale=run.upscale if run.kind == "upscale" else None)
    checkpoint_config = {"kind": run_kind(run).checkpoint_kind, **network_spec(network), "run": to_dict(run),
                         "fps": _fps(dataset)}

    def save_extra(tmp: Path, weights: dict) -> None:
        if text_encoder is not None:
            own = submodule_state(weights, "text_encoder.")
            text_encoder.save(tmp / "text_encoder", state=own or None)
        if vae is not None:  # a latent model carries its autoencoder: it reloads with no other file
            copy_autoencoder(run.model.vae, tmp / "vae")

    return Trainer(objective, dataset, run.train, checkpoint_config, save_extra=save_extra,
                   collate=collate, progress=progress)


def _check_latent_cache(dataset, vae, text_encoder) -> None:
    """A latent cache must come from this run's autoencoder; its cached text is used only when
    it is what this run's text encoder would compute (same vocabulary, or same frozen kind)."""
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
        dataset.cached_text = getattr(text_encoder, "tokenizer", None) == WordTokenizer.build(dataset.captions())
    else:
        dataset.cached_text = text_encoder is not None and isinstance(text, dict) and \
            text.get("kind") == text_encoder.config.kind and text.get("dim") == text_encoder.dim


# ----------------------------------------------------------------------------- super-resolution
def _upscale_trainer(run: RunConfig, dataset, resume: Optional[str], progress: bool) -> Trainer:
    """A super-resolution stage is a denoiser with a low-resolution input, trained on pairs made
    on the fly from the dataset's clips (:meth:`DiffusionObjective.low_resolution`)."""
    if run.model.vae:
        raise ConfigError("kind upscale trains a pixel stage: remove model.vae")
    if run.data.size % run.upscale.scale:
        raise ConfigError(f"data.size {run.data.size} is not a multiple of upscale.scale "
                          f"{run.upscale.scale}: the low-resolution input would not be whole pixels")
    run = dataclasses.replace(run, model=dataclasses.replace(
        run.model, overrides={**run.model.overrides, "low_res": True}))
    return _denoiser_trainer(run, dataset, resume, progress)


# ----------------------------------------------------------------------------- autoencoder
def _autoencoder_trainer(run: RunConfig, dataset, resume: Optional[str], progress: bool) -> Trainer:
    vae = build_autoencoder_for(run)
    objective = AutoencoderObjective(vae, run.autoencoder)

    def checkpoint_config(weights: dict) -> dict:
        shift, scale = estimate_scaling(vae, weights, dataset, run.autoencoder.scaling_batches,
                                        run.train.batch_size)
        network = {**to_dict(vae.config), "shift_factor": shift, "scaling_factor": scale}
        return {"kind": run_kind(run).checkpoint_kind, "arch": "vae", "network": network, "run": to_dict(run),
                "fps": _fps(dataset)}

    return Trainer(objective, dataset, run.train, checkpoint_config, progress=progress)


# ----------------------------------------------------------------------------- ControlNet
def _controlnet_trainer(run: RunConfig, dataset, resume: Optional[str], progress: bool) -> Trainer:
    if not run.base:
        raise ConfigError("kind controlnet needs base: a shipped model's name (e.g. shapes) or a "
                          "denoiser checkpoint or run directory")
    if run.control not in CONTROL_TYPES:
        raise ConfigError(f"control: {run.control!r} is not a control type; accepted: {list(CONTROL_TYPES)}")
    if run.control in NEEDS_EXTRACTOR and not run.extractor:
        raise ConfigError(f"control: {run.control} needs extractor: a TorchScript file that makes its "
                          "maps from each training clip (vidiff downloads no weights)")
    base = load_denoiser(resolve_model(run.base), device="cpu")
    if base.vae is not None:
        raise ConfigError(f"base {run.base!r} is a latent model; a ControlNet trains over a pixel base "
                          "(its maps are per-pixel, per-frame)")
    # A ControlNet corrects its base's predictions, so it trains under the base's schedule and
    # parameterization; how it draws and weighs training times is its own (the base's last
    # stage may have spent its steps where only that stage had something to learn).
    base_diffusion, ours = to_dict(base.run.diffusion), to_dict(run.diffusion)
    default = to_dict(DiffusionConfig())
    differ = {k: (ours[k], base_diffusion[k]) for k in DiffusionConfig.SCHEDULE_FIELDS
              if ours[k] not in (base_diffusion[k], default[k])}
    if differ:
        raise ConfigError(f"diffusion {differ} (run, base) differ from the base's: a ControlNet trains "
                          f"under its base's schedule and parameterization (set only "
                          f"{', '.join(DiffusionConfig.TRAINING_TIME_FIELDS)})")
    diffusion = dataclasses.replace(run.diffusion, **{k: base_diffusion[k] for k in DiffusionConfig.SCHEDULE_FIELDS})
    run = dataclasses.replace(run, diffusion=diffusion, text=base.run.text)   # the caller's is kept
    base.network.requires_grad_(False).eval()
    if base.text_encoder is not None:
        base.text_encoder.requires_grad_(False).eval()
    base.network.check_shape((1, base.network.config.in_channels, run.data.frames, run.data.size, run.data.size))
    config = resolve_config(run.model.size, run.model.overrides)
    channels = CONTROL_TYPES[run.control] or config.control_channels
    config = dataclasses.replace(config, base_arch=architecture_of(base.network.config),
                                 base=to_dict(base.network.config), control=run.control, control_channels=channels)
    controlnet = build_controlnet(config)
    controlnet.load_base(base.network)            # the copy starts as the base's encoder
    extractor = load_extractor(run.extractor) if run.extractor else None
    objective = DiffusionObjective(
        ControlledNetwork(base.network, controlnet), base.text_encoder, run.diffusion,
        text_dropout=run.train.text_dropout if base.text_encoder is not None else 0.0,
        frame_stride=getattr(base.network.config, "frame_stride", False),
        control=lambda clips: extract(run.control, clips, extractor, channels))
    checkpoint_config = {"kind": "controlnet", "arch": "controlnet", "network": to_dict(config),
                         "base": {"model": run.base, "fingerprint": weights_fingerprint(base.network, base.text_encoder, base.vae)},
                         "run": to_dict(run), "fps": _fps(dataset)}
    return Trainer(objective, dataset, run.train, checkpoint_config, collate=collate, progress=progress)


# 1 + 4k frames: what a 4x temporal autoencoder codes without padding.
AUTOENCODER_FRAMES = 17


def _latent_frames(run: dict) -> Optional[int]:
    model = run.get("model") or {}
    return AUTOENCODER_FRAMES if isinstance(model, dict) and model.get("vae") else None


RUN_KINDS: dict[str, RunKind] = {
    "denoiser": RunKind("denoiser", "denoiser", tuple(MODELS), _latent_frames, _denoiser_trainer,
                        lambda path, device=None: load_denoiser(path, device=device)),
    # A stage loads as a denoiser: its low_res network and the run's upscale config say the rest.
    "upscale": RunKind("upscale", "denoiser", tuple(MODELS), lambda run: None, _upscale_trainer,
                       lambda path, device=None: load_denoiser(path, device=device)),
    "autoencoder": RunKind("autoencoder", "autoencoder", tuple(AUTOENCODERS),
                           lambda run: AUTOENCODER_FRAMES, _autoencoder_trainer,
                           lambda path, device=None: load_autoencoder(path, device=device)),
    "controlnet": RunKind("controlnet", "controlnet", tuple(CONTROLNETS), lambda run: None,
                          _controlnet_trainer, lambda path, device=None: load_controlnet(path, device=device)),
}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def run_kind(run: RunConfig) -> RunKind:
    """The :class:`RunKind` of ``run``, after checking that its model size belongs to it."""
    if run.kind not in RUN_KINDS:
        raise ConfigError(f"kind: {run.kind!r} is not a run kind; accepted: {sorted(RUN_KINDS)}")
    kind = RUN_KINDS[run.kind]
    if run.model.size not in kind.sizes:
        owner = next((k.name for k in RUN_KINDS.values() if run.model.size in k.sizes), None)
        what = f"{_article(owner)} {owner} size, not {_article(kind.name)} {kind.name} one: set kind: {owner}" \
            if owner else "an unknown model size"
        raise ConfigError(f"model.size: {run.model.size!r} is {what} "
                          f"(accepted for kind {kind.name}: {sorted(kind.sizes)})")
    return kind
