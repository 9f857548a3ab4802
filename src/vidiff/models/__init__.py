from vidiff.models.vae import VAE_MODELS, VAEConfig, VideoVAE  # noqa: F401
