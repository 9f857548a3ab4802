"""One registry of named model sizes across architectures, and the one way to build a network.

``MODELS["unet-demo"]`` is a config dataclass;
``build_from_config("dit", resolve_config("dit-s/2", {"text_dim": 256}))`` builds it. A
checkpoint stores the architecture name and the full resolved config, so it reloads even if
the registry's sizes change later.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch
from torch import nn

from vidiff.config import ConfigError, from_dict, to_dict
from vidiff.models.controlnet import CONTROLNET_MODELS, ControlNet, ControlNetConfig
from vidiff.models.dit import DIT_MODELS, DiTConfig, VideoDiT
from vidiff.models.flops import count_flops, count_parameters
from vidiff.models.unet import UNET_MODELS, UNet3D, UNetConfig
from vidiff.models.vae import VAE_MODELS, VAEConfig, VideoVAE

ARCHITECTURES: dict[str, tuple[type, type]] = {
    "unet": (UNetConfig, UNet3D),
    "dit": (DiTConfig, VideoDiT),
    "vae": (VAEConfig, VideoVAE),
}
MODELS: dict[str, Any] = {**UNET_MODELS, **DIT_MODELS}       # denoisers
AUTOENCODERS: dict[str, Any] = dict(VAE_MODELS)
CONTROLNETS: dict[str, Any] = dict(CONTROLNET_MODELS)


def architecture_of(config) -> str:
    for name, (config_cls, _) in ARCHITECTURES.items():
        if isinstance(config, config_cls):
            return name
    raise ConfigError(f"not a network config: {type(config).__name__}")


def resolve_config(size: str, overrides: Optional[dict] = None):
    """The registry config ``size`` (a denoiser, an autoencoder or a ControlNet) with ``overrides`` applied
    (field names validated)."""
    known = {**MODELS, **AUTOENCODERS, **CONTROLNETS}
    if size not in known:
        raise ConfigError(f"unknown model size {size!r}; accepted: {sorted(known)}")
    base = known[size]
    data = to_dict(base)
    data.update(overrides or {})
    return from_dict(type(base), data, where=f"model {size!r}")


def build_from_config(arch: str, config) -> nn.Module:
    """Build a network from its architecture name and a config dataclass or dict."""
    if arch not in ARCHITECTURES:
        raise ConfigError(f"unknown architecture {arch!r}; accepted: {sorted(ARCHITECTURES)}")
    config_cls, network_cls = ARCHITECTURES[arch]
    if isinstance(config, dict):
        config = from_dict(config_cls, config)
    return network_cls(config)


def build_controlnet(config) -> ControlNet:
    """A :class:`ControlNet` from its config (a dataclass or a dict), its copy built from the
    base's architecture and config that the config records."""
    if isinstance(config, dict):
        config = from_dict(ControlNetConfig, config)
    if config.base_arch not in ("unet", "dit"):
        raise ConfigError(f"a ControlNet copies a 'unet' or 'dit' base, not {config.base_arch!r}")
    return ControlNet(config, build_from_config(config.base_arch, config.base))


def network_spec(network: nn.Module) -> dict:
    """``{"arch": ..., "network": {...}}`` for a checkpoint's config.json."""
    config = network.config
    return {"arch": architecture_of(config), "network": to_dict(config)}


def describe_sizes(frames: int = 16, size: int = 32) -> list[dict]:
    """Every registry size with its parameter count and forward FLOPs on one unconditional
    ``(1, C, frames, size, size)`` clip, computed on the meta device (no memory, no time)."""
    rows = []
    for name, config in MODELS.items():
        with torch.device("meta"):
            network = build_from_config(architecture_of(config), dataclasses.replace(config))
            x = torch.zeros(1, config.in_channels, frames, size, size)
            flops = count_flops(lambda: network(x, torch.zeros(1), None))
        rows.append({"name": name, "arch": architecture_of(config),
                     "parameters": count_parameters(network), "gflop": flops / 1e9})
    return rows
