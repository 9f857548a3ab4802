"""Composition: run configs, and building networks, text encoders, autoencoders and ControlNets
from a config or a checkpoint (found by path or by shipped name). Training, pipelines and
commands build through here and nowhere else."""
from vidiff.compose.build import (
    Denoiser, autoencoder_checkpoint, autoencoder_fingerprint, build_autoencoder_for, build_network_for,
    build_text_encoder_for, copy_autoencoder, default_device, load_autoencoder, load_controlnet, load_denoiser,
    text_encoder_dir, weights_fingerprint,
)
from vidiff.compose.config import (
    AutoencoderConfig, DiffusionConfig, ModelConfig, RunConfig, SampleConfig, TrainConfig,
)

__all__ = [
    "RunConfig", "ModelConfig", "DiffusionConfig", "TrainConfig", "SampleConfig", "AutoencoderConfig",
    "Denoiser", "load_denoiser", "load_autoencoder", "autoencoder_checkpoint", "autoencoder_fingerprint",
    "copy_autoencoder", "build_network_for", "build_text_encoder_for", "build_autoencoder_for", "default_device",
    "text_encoder_dir", "weights_fingerprint", "load_controlnet",
]
