"""``VideoPipeline``: text encoder + (optional autoencoder) + denoiser + schedule, one method per task.

``vidiff.load(DIR)`` rebuilds a pipeline from a checkpoint directory alone (its config.json
names the architecture and every setting; the built-in text encoder's vocabulary travels with
it; EMA weights are used when present).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from vidiff.conditioning import Conditioning
from vidiff.diffusion import GuidedDenoiser, NetworkDenoiser, Schedule, progress_callback, sample
from vidiff.models.registry import architecture_of, build_from_config, resolve_config
from vidiff.train.checkpoint import CheckpointError, read_config, read_weights, resolve_checkpoint
from vidiff.video import Video


def build_text_encoder_for(run, captions: Optional[list[str]] = None, text_dir: Optional[Path] = None):
    """The text encoder a run config describes (None for ``text.kind: none``).

    The built-in encoder builds its vocabulary from ``captions`` (training) or loads it from
    ``text_dir`` (a checkpoint's ``text_encoder/``).
    """
    from vidiff.text import build_text_encoder, load_text_encoder

    if run.text.kind == "none":
        return None
    if text_dir is not None:
        return load_text_encoder(text_dir, path_override=run.text.path)
    return build_text_encoder(run.text, captions=captions)


def build_network_for(run, text_encoder, vae=None) -> nn.Module:
    """The network a run config describes; its text width follows ``text_encoder`` and, for a
    latent model, its input and output channels follow the autoencoder ``vae``."""
    overrides = dict(run.model.overrides)
    overrides["text_dim"] = text_encoder.dim if text_encoder is not None else None
    overrides["pooled_dim"] = text_encoder.pooled_dim if text_encoder is not None else None
    if vae is not None:
        overrides["in_channels"] = vae.config.latent_channels
        overrides["out_channels"] = None
    config = resolve_config(run.model.size, overrides)
    return build_from_config(architecture_of(config), config)


class VideoPipeline:
    """Generates videos with a trained denoiser.

    Args:
        network: ``network(x_t, t, cond) -> prediction`` of kind ``parameterization``.
        schedule: the schedule it was trained with.
        parameterization: ``"eps"``, ``"v"``, ``"x0"`` or ``"flow"``.
        text_encoder: encodes prompts into a :class:`Conditioning` (None: unconditional).
        frames, height, width: the default clip size in pixels (the training size).
        fps: frame rate of written videos.
        vae: for a latent model, the autoencoder whose latents the network denoises; videos
            are sampled as latents and decoded chunk by chunk (constant memory in length).
    """

    def __init__(self, network: nn.Module, schedule: Schedule, parameterization: str,
                 text_encoder=None, frames: int = 16, height: int = 32, width: int = 32,
                 channels: int = 3, fps: float = 8.0, run_config=None, vae=None):
        self.network, self.schedule, self.parameterization = network, schedule, parameterization
        self.text_encoder, self.vae = text_encoder, vae
        self.frames, self.height, self.width, self.channels, self.fps = frames, height, width, channels, fps
        self.run_config = run_config
        self.device = next(network.parameters()).device

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: Union[str, Path], device=None, ema: bool = True,
                        text_encoder_path: Optional[str] = None) -> "VideoPipeline":
        """Rebuild a pipeline from a checkpoint (or a run directory: its newest checkpoint).

        ``text_encoder_path`` re-points a frozen CLIP/T5 encoder at a new local directory.
        """
        from vidiff.train.config import RunConfig
        from vidiff.config import from_dict

        path = resolve_checkpoint(path)
        config = read_config(path, kind="denoiser")
        run = from_dict(RunConfig, config["run"])
        if text_encoder_path is not None:
            run.text.path = text_encoder_path
        text_dir = path / "text_encoder" if (path / "text_encoder").is_dir() else None
        if run.text.kind != "none" and text_dir is None:
            raise CheckpointError(f"{str(path)!r} has no text_encoder/ folder")
        text_encoder = build_text_encoder_for(run, text_dir=text_dir)
        network = build_from_config(config["arch"], config["network"])
        holder = nn.ModuleDict({"network": network})
        if text_encoder is not None:
            holder["text_encoder"] = text_encoder
        state = read_weights(path, ema=ema)
        missing, unexpected = holder.load_state_dict(state, strict=False)
        trainable = {n for n, p in holder.named_parameters()
                     if not (n.startswith("text_encoder.") and not getattr(text_encoder, "trainable", True))}
        missing = [m for m in missing if m in trainable]
        if missing or unexpected:
            raise CheckpointError(f"weights in {str(path)!r} do not match its config: missing "
                                  f"{missing[:5]}, unexpected {list(unexpected)[:5]}")
        device = torch.device(device) if device is not None else \
            torch.device("cuda" if torch.cuda.is_available() else "cpu")
        holder.to(device).eval()
        vae = None
        if (path / "vae").is_dir():
            from vidiff.pipelines.autoencoder import load_autoencoder
            vae = load_autoencoder(path / "vae", device=device)
        data = run.data
        channels = vae.config.in_channels if vae is not None else config["network"].get("in_channels", 3)
        return cls(network, run.diffusion.make_schedule(), run.diffusion.parameterization,
                   text_encoder, frames=data.frames, height=data.size, width=data.size,
                   channels=channels, fps=float(config.get("fps", 8.0)), run_config=run, vae=vae)

    # ------------------------------------------------------------------ conditioning
    def encode(self, prompts: list[str]) -> Optional[Conditioning]:
        """Text conditioning for ``prompts`` (None for an unconditional model)."""
        if self.text_encoder is None:
            return None
        for p in prompts:
            if not isinstance(p, str) or not p.strip():
                raise ValueError(f"prompts must be non-empty strings, got {p!r}")
        with torch.no_grad():
            return self.text_encoder.conditioning(prompts).to(self.device)

    def denoiser(self, guidance: float = 1.0, negative: Optional[Conditioning] = None,
                 rescale: float = 0.0):
        """The network as a denoiser, with classifier-free guidance when ``guidance != 1``."""
        base = NetworkDenoiser(self.network, self.schedule, self.parameterization)
        if guidance == 1.0 or self.text_encoder is None:
            return base
        return GuidedDenoiser(base, guidance, rescale=rescale, negative=negative)

    # ------------------------------------------------------------------ tasks
    @torch.no_grad()
    def generate(self, prompt: Union[str, list[str], None] = None, num_frames: Optional[int] = None,
                 steps: int = 20, guidance: float = 5.0, seed: int = 0, sampler: str = "dpmpp_2m",
                 negative_prompt: Optional[str] = None, samples: int = 1,
                 height: Optional[int] = None, width: Optional[int] = None,
                 guidance_rescale: float = 0.0, progress: bool = False):
        """Text to video.

        Args:
            prompt: one prompt or a list (None for an unconditional model).
            num_frames, height, width: clip size (default: the training size).
            steps, sampler: sampling budget and method (see ``vidiff.diffusion.SAMPLERS``).
            guidance: classifier-free guidance scale (1 = off).
            seed: sample ``k`` of every prompt uses noise from seed ``seed + k``.
            negative_prompt: used instead of the null text for the unconditional pass.
            samples: variations per prompt.

        Returns:
            a :class:`Video` for one prompt and one sample, else a list ordered prompt-major.
        """
        if samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")
        single = prompt is None or isinstance(prompt, str)
        prompts = [prompt] if single else list(prompt)
        if not prompts:
            raise ValueError("no prompts given")
        if self.text_encoder is None and any(p is not None for p in prompts):
            raise ValueError("this model is unconditional: generate it without a prompt")
        T = num_frames or self.frames
        H, W = height or self.height, width or self.width
        shape = self.vae.latent_shape(T, H, W) if self.vae is not None else (self.channels, T, H, W)
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed + k))
                             for _ in prompts for k in range(samples)]).to(self.device)
        cond = negative = None
        if self.text_encoder is not None:
            expanded = [p for p in prompts for _ in range(samples)]
            cond = self.encode(expanded)
            if negative_prompt is not None:
                negative = self.encode([negative_prompt] * len(expanded))
        callback = progress_callback(steps, "sampling") if progress else None
        x0 = sample(self.denoiser(guidance, negative, guidance_rescale), noise, schedule=self.schedule,
                    sampler=sampler, steps=steps, cond=cond, callback=callback,
                    generator=torch.Generator().manual_seed(seed))
        if callback is not None:
            callback.close()
        if self.vae is not None:   # latents -> uint8 frames, decoded a few latent frames at a time
            videos = [Video(self.vae.decode_to_uint8(z, chunk=2), fps=self.fps) for z in x0.float()]
        else:
            videos = [Video.from_tensor(clip.float().cpu(), fps=self.fps) for clip in x0]
        return videos[0] if single and samples == 1 else videos


def load(path: Union[str, Path], device=None, ema: bool = True,
         text_encoder_path: Optional[str] = None) -> VideoPipeline:
    """``vidiff.load(DIR)``: a :class:`VideoPipeline` from a checkpoint or run directory."""
    return VideoPipeline.from_pretrained(path, device=device, ema=ema, text_encoder_path=text_encoder_path)
