"""The diffusion core: schedules, objectives, samplers and guidance. Depends on torch only."""
from vidiff.diffusion.denoisers import DEFAULT_GUIDANCE_WEIGHT, FRAME_METHODS, GuidedDenoiser, KnownFramesDenoiser, NetworkDenoiser
from vidiff.diffusion.masks import TASKS, draw_task_mask, latent_mask
from vidiff.diffusion.objectives import (
    LOSS_WEIGHTINGS, PARAMETERIZATIONS, TIME_DISTRIBUTIONS, diffusion_loss, loss_weight,
    prediction_target, prediction_to_x0, x0_to_prediction,
)
from vidiff.diffusion.samplers import (
    DEFAULT_SAMPLER, DEFAULT_SPACING, DEFAULT_STEPS, KARRAS_K_MAX, KARRAS_K_MIN, SAMPLERS, SPACINGS, ddim_invert, invert,
    log_snr_grid, sample, sample_ddim, sample_ddpm, sample_dpmpp_2m,
    sample_euler, sample_heun, timesteps,
)
from vidiff.diffusion.schedule import SCHEDULES, Schedule
from vidiff.diffusion.tiled import TiledDenoiser, blend_weights, tile_starts

__all__ = [
    "Schedule", "SCHEDULES", "sample", "invert", "SAMPLERS", "SPACINGS", "DEFAULT_SPACING",
    "DEFAULT_SAMPLER", "DEFAULT_STEPS",
    "KARRAS_K_MAX", "KARRAS_K_MIN",
    "timesteps", "log_snr_grid",
    "sample_ddpm", "sample_ddim", "sample_euler", "sample_heun", "sample_dpmpp_2m", "ddim_invert",
    "PARAMETERIZATIONS", "LOSS_WEIGHTINGS", "TIME_DISTRIBUTIONS", "prediction_target",
    "prediction_to_x0", "x0_to_prediction", "loss_weight", "diffusion_loss",
    "NetworkDenoiser", "GuidedDenoiser", "TiledDenoiser", "tile_starts", "blend_weights", "KnownFramesDenoiser", "FRAME_METHODS", "DEFAULT_GUIDANCE_WEIGHT", "TASKS", "draw_task_mask", "latent_mask",
]
