from vidiff.models.vae import VAE_MODELS, VAEConfig, VideoVAE  # noqa: F401
from vidiff.models.controlnet import CONTROL_TYPES, ControlledNetwork, ControlNet, ControlNetConfig  # noqa: F401
