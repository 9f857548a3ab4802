"""The one place that turns configs and checkpoints into modules.

Training (``vidiff.train``), pipelines (``vidiff.pipelines``) and the commands all build their
networks, text encoders and autoencoders here, so a model is built the same way when it is
trained and when it is loaded (the field's classic bug is an encoder that differs between
the two).
"""
from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from vidiff.checkpoint import (
    CheckpointError, read_config, read_weights, resolve_checkpoint, submodule_state, update_digest,
)
from vidiff.compose.config import RunConfig
from vidiff.compose.shipped import resolve_model
from vidiff.config import from_dict
from vidiff.models.controlnet import ControlNet
from vidiff.models.pretrained import frozen_prefixes
from vidiff.models.registry import architecture_of, build_controlnet, build_from_config, resolve_config
from vidiff.models.vae import VAEConfig, VideoVAE
from vidiff.text import build_text_encoder, load_text_encoder


# Hex digits kept of a SHA-256 fingerprint: 64 bits, no chance collision among one user's models.
FINGERPRINT_CHARS = 16


def default_device(device=None) -> torch.device:
    """``device``, or CUDA when it is available, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ----------------------------------------------------------------------------- from a config
def build_text_encoder_for(run: RunConfig, captions: Optional[list[str]] = None,
                           text_dir: Optional[Path] = None):
    """The text encoder a run config describes (None for ``text.kind: none``).

    The built-in encoder builds its vocabulary from ``captions`` (training) or loads it from
    ``text_dir`` (a checkpoint's ``text_encoder/``).
    """
    if run.text.kind == "none":
        return None
    if text_dir is not None:
        return load_text_encoder(text_dir, path_override=run.text.path)
    return build_text_encoder(run.text, captions=captions)


def build_network_for(run: RunConfig, text_encoder, vae: Optional[VideoVAE] = None) -> nn.Module:
    """The denoiser a run config describes; its text width follows ``text_encoder`` and, for a
    latent model, its input and output channels follow the autoencoder ``vae``."""
    overrides = dict(run.model.overrides)
    overrides["text_dim"] = text_encoder.dim if text_encoder is not None else None
    overrides["pooled_dim"] = text_encoder.pooled_dim if text_encoder is not None else None
    if vae is not None:
        overrides["in_channels"] = vae.config.latent_channels
        overrides["out_channels"] = None
    config = resolve_config(run.model.size, overrides)
    return build_from_config(architecture_of(config), config)


def build_autoencoder_for(run: RunConfig) -> VideoVAE:
    """The (untrained) autoencoder an autoencoder run describes; checks that the run's clip
    size fits its grid."""
    vae = VideoVAE(resolve_config(run.model.size, run.model.overrides))
    vae.latent_shape(run.data.frames, run.data.size, run.data.size)
    return vae


# ----------------------------------------------------------------------------- from a checkpoint
def autoencoder_checkpoint(path) -> Path:
    """The autoencoder checkpoint ``path`` means: an autoencoder checkpoint or run directory
    as it is, or the autoencoder a latent model carries in its ``vae/`` folder when ``path``
    is a latent denoiser (a checkpoint, a run directory or a shipped model's name, such as
    ``shapes-latent``), so a user names the model and gets the autoencoder it was trained on."""
    path = resolve_checkpoint(resolve_model(path))
    if read_config(path).get("kind") == "denoiser" and (path / "vae").is_dir():
        return path / "vae"
    return path


def load_autoencoder(path, device=None, ema: bool = True) -> VideoVAE:
    """A trained :class:`VideoVAE` from an autoencoder checkpoint (or run) directory, or from
    a latent model's (see :func:`autoencoder_checkpoint`), in eval mode on ``device`` (default:
    the CPU); its config carries the latent scaling estimated when the checkpoint was written."""
    path = autoencoder_checkpoint(path)
    config = read_config(path, kind="autoencoder", required=("network",))
    vae = VideoVAE(from_dict(VAEConfig, config["network"]))
    state = submodule_state(read_weights(path, ema=ema), "network.")
    missing, unexpected = vae.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"weights in {str(path)!r} do not match its autoencoder config: "
                              f"missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}")
    return vae.to(device or "cpu").eval()


def autoencoder_fingerprint(path) -> str:
    """A short hash of an autoencoder checkpoint's config and weights: what a latent cache
    records so that latents are never used with another autoencoder."""
    path = autoencoder_checkpoint(path)
    digest = hashlib.sha256()
    for name in ("config.json", "ema.safetensors", "model.safetensors"):
        file = path / name
        if file.is_file():
            update_digest(digest, file)
    return digest.hexdigest()[:FINGERPRINT_CHARS]


def weights_fingerprint(*modules: Optional[nn.Module]) -> str:
    """A short hash of the weights of ``modules`` (None skipped): SHA-256 over each tensor's
    name, dtype, shape and bytes, in the modules' order and state-dict order, truncated like
    :func:`autoencoder_fingerprint`. What a noise file records so that it is never used with
    another model; computed from the loaded weights, so a model reads the same from any path."""
    digest = hashlib.sha256()
    for index, module in enumerate(modules):
        if module is None:
            continue
        for name, tensor in module.state_dict().items():
            data = tensor.detach().to("cpu").contiguous()
            digest.update(f"{index}.{name}:{data.dtype}:{tuple(data.shape)};".encode())
            digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:FINGERPRINT_CHARS]


def copy_autoencoder(source, dest: Path) -> None:
    """Copy an autoencoder checkpoint's config and weights (no trainer state) to ``dest``."""
    read_config(source, kind="autoencoder")
    source = resolve_checkpoint(source)
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors", "ema.safetensors"):
        if (source / name).is_file():
            shutil.copy2(source / name, dest / name)


def text_encoder_dir(checkpoint: Path) -> Optional[Path]:
    """A checkpoint's ``text_encoder/`` folder, or None when it has none."""
    folder = Path(checkpoint) / "text_encoder"
    return folder if folder.is_dir() else None


def _stored(module: nn.Module, missing: list[str]) -> list[str]:
    """The ``missing`` keys a checkpoint should have held: not those of frozen pretrained
    models (a CLIP/T5 text encoder, a CLIP vision reference encoder), whose weights come from
    their own folder."""
    frozen = frozen_prefixes(module)
    return [m for m in missing if not m.startswith(frozen)]


@dataclass
class Denoiser:
    """A trained denoiser's parts, as :func:`load_denoiser` rebuilds them.

    ``config`` is the checkpoint's config.json; ``run`` its run config; ``vae`` the
    autoencoder a latent model carries (None for a pixel model).
    """
    network: nn.Module
    text_encoder: Optional[nn.Module]
    run: RunConfig
    vae: Optional[VideoVAE]
    config: dict
    path: Path


def load_denoiser(path, device=None, ema: bool = True, text_encoder_path: Optional[str] = None,
                  reference_encoder_path: Optional[str] = None) -> Denoiser:
    """A denoiser checkpoint (or a run directory: its newest checkpoint) rebuilt from its own
    files, in eval mode on ``device`` (default: CUDA if available). ``text_encoder_path``
    re-points a frozen CLIP/T5 encoder at a new local directory; ``reference_encoder_path`` a
    CLIP vision reference encoder (both are ignored by a model without one)."""
    path = resolve_checkpoint(path)
    config = read_config(path, kind="denoiser", required=("arch", "network", "run"))
    run = from_dict(RunConfig, config["run"])
    if text_encoder_path is not None:
        run.text.path = text_encoder_path
    if reference_encoder_path is not None and config["network"].get("reference_encoder") == "clip":
        config["network"]["reference_encoder_path"] = str(reference_encoder_path)
        run.model.overrides["reference_encoder_path"] = str(reference_encoder_path)
    text_dir = text_encoder_dir(path)
    if run.text.kind != "none" and text_dir is None:
        raise CheckpointError(f"{str(path)!r} has no text_encoder/ folder")
    text_encoder = build_text_encoder_for(run, text_dir=text_dir)
    network = build_from_config(config["arch"], config["network"])
    holder = nn.ModuleDict({"network": network})
    if text_encoder is not None:
        holder["text_encoder"] = text_encoder
    missing, unexpected = holder.load_state_dict(read_weights(path, ema=ema), strict=False)
    params = {n for n, _ in holder.named_parameters()}
    missing = [m for m in _stored(holder, missing) if m in params]
    if missing or unexpected:
        raise CheckpointError(f"weights in {str(path)!r} do not match its config: missing "
                              f"{missing[:5]}, unexpected {list(unexpected)[:5]}")
    device = default_device(device)
    holder.to(device).eval()
    vae = load_autoencoder(path / "vae", device=device) if (path / "vae").is_dir() else None
    takes = getattr(getattr(network, "config", None), "in_channels", None)
    if vae is not None and takes is not None and takes != vae.config.latent_channels:
        raise CheckpointError(f"the denoiser in {str(path)!r} takes latents of {takes} channels but "
                              f"the autoencoder in its vae/ folder codes {vae.config.latent_channels}: "
                              f"a latent model must be used with the autoencoder it was trained on")
    return Denoiser(network, text_encoder, run, vae, config, path)


def load_controlnet(path, device=None, ema: bool = True) -> ControlNet:
    """A ControlNet checkpoint (or a run directory: its newest checkpoint) rebuilt from its own
    files, in eval mode on ``device``. It carries ``base_model`` (the base it was trained over,
    as the run named it), ``base_fingerprint`` (:func:`weights_fingerprint` of that base's
    network, text encoder and autoencoder: what ``VideoPipeline.fingerprint`` computes) and ``source`` (the folder it was read from)."""
    path = resolve_checkpoint(path)
    config = read_config(path, kind="controlnet", required=("network", "base", "run"))
    controlnet = build_controlnet(config["network"])
    state = submodule_state(read_weights(path, ema=ema), "network.controlnet.")
    missing, unexpected = controlnet.load_state_dict(state, strict=False)
    missing = _stored(controlnet, missing)
    if missing or unexpected:
        raise CheckpointError(f"weights in {str(path)!r} do not match its ControlNet config: missing "
                              f"{missing[:5]}, unexpected {list(unexpected)[:5]}")
    controlnet.base_model = config["base"].get("model")
    controlnet.base_fingerprint = config["base"].get("fingerprint")
    controlnet.source = str(path)
    return controlnet.to(default_device(device)).eval()
