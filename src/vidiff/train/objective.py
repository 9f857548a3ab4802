"""What a training step optimises, separate from the loop that runs it.

The trainer knows nothing about diffusion: it calls ``objective(batch, draws)`` and gets a
loss. Different models (a denoiser with its text encoder, later an autoencoder with its
discriminator or a ControlNet over a frozen base) are different objectives around the same loop.

Every random choice of a training sample (its diffusion time, noise, text dropout, which
frame an image step uses) comes from :class:`SampleDraws`, seeded by (run seed, step, global
sample index). A run's result therefore does not depend on how many processes share it, and a
resumed run draws exactly what the uninterrupted one would have.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from vidiff.compose.config import DiffusionConfig, ReferenceConfig, TasksConfig, UpscaleConfig
from vidiff.conditioning import Conditioning
from vidiff.data.common import box_downsample
from vidiff.diffusion import TASKS, diffusion_loss, draw_task_mask


def _seed(*parts) -> int:
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class SampleDraws:
    """Per-sample random streams for the samples ``indices`` of global step ``step``.

    ``generator(i)`` is a fresh generator for local sample ``i``; ``shared(tag)`` is one the
    same on every process for this step (for choices about the whole global batch).
    """

    def __init__(self, seed: int, step: int, indices: list[int], global_batch: int):
        self.seed, self.step, self.indices, self.global_batch = seed, step, list(indices), global_batch

    def generator(self, i: int, tag: str) -> torch.Generator:
        return torch.Generator().manual_seed(_seed(self.seed, self.step, self.indices[i], tag))

    def shared(self, tag: str) -> torch.Generator:
        return torch.Generator().manual_seed(_seed(self.seed, self.step, "shared", tag))

    def times(self, distribution: str, mean: float = 0.0, std: float = 1.0, eps: float = 1e-5) -> Tensor:
        """Training times ``(B_local,)``; uniform times are stratified over the *global* batch."""
        if distribution == "uniform":
            g = self.shared("t")
            n = self.global_batch
            strata = torch.randperm(n, generator=g)
            jitter = torch.rand(n, generator=g, dtype=torch.float64)
            t = (strata.double() + jitter) / n
            picked = t[torch.tensor(self.indices) % n]
        else:
            z = torch.stack([torch.randn((), generator=self.generator(i, "t"), dtype=torch.float64)
                             for i in range(len(self.indices))])
            picked = torch.sigmoid(mean + std * z)
        return picked.clamp(eps, 1 - eps).float()

    def normal(self, shape: tuple[int, ...], tag: str) -> Tensor:
        """``(B_local, *shape)`` standard normal, one stream per sample."""
        return torch.stack([torch.randn(shape, generator=self.generator(i, tag))
                            for i in range(len(self.indices))])

    def uniform(self, tag: str) -> Tensor:
        """``(B_local,)`` uniform in [0, 1), one draw per sample."""
        return torch.stack([torch.rand((), generator=self.generator(i, tag)) for i in range(len(self.indices))])


class DiffusionObjective(nn.Module):
    """A denoiser network and its text encoder, trained by the diffusion loss.

    Args:
        network: ``network(x_t, t, cond) -> prediction``.
        text_encoder: a vidiff text encoder or None (unconditional model).
        diffusion: a :class:`~vidiff.compose.config.DiffusionConfig`: schedule,
            parameterization, loss weighting and time distribution (the one source of their
            defaults).
        text_dropout: probability that a sample trains with the null text (for guidance).
        frame_stride: pass the batch's frame stride to the network.
        vae: a frozen :class:`~vidiff.models.VideoVAE` for a latent model: clips are encoded
            to latents (posterior means, scaled) before noising, unless the batch already
            holds them (``batch["latents"]``, from a latent cache).
        tasks: the frame-task mix for a network with known-frame inputs (None: text-to-video
            only). Latent models draw their masks on the latent grid.
        reference: how a network with a reference pathway learns it (which samples get a
            reference image, which captions lose their subject words; None: never).
        control: ``fn(clips (B, 3, T, H, W) in [-1, 1]) -> maps (B, C_ctrl, T, H, W)`` for a
            pixel network that reads ``cond.control`` (a base with its ControlNet): each
            batch's maps are extracted from its own clips.
        upscale: for a super-resolution stage (a network with a ``low_res`` input): how each
            clip's low-resolution input is made (box-downsampled by ``upscale.scale``, then
            noise-augmented; see :class:`~vidiff.compose.config.UpscaleConfig`).
    """

    def __init__(self, network: nn.Module, text_encoder: Optional[nn.Module], diffusion: DiffusionConfig,
                 text_dropout: float, frame_stride: bool = False, vae: Optional[nn.Module] = None,
                 tasks: Optional[TasksConfig] = None, control: Optional[Callable[[Tensor], Tensor]] = None,
                 reference: Optional[ReferenceConfig] = None, upscale: Optional[UpscaleConfig] = None):
        super().__init__()
        if upscale is not None and vae is not None:
            raise ValueError("a super-resolution stage works in pixels: it cannot take an autoencoder")
        self.upscale = upscale
        self.reference = reference if reference is not None and reference.prob > 0 else None
        if control is not None and vae is not None:
            raise ValueError("control maps are extracted from pixel clips: a latent model cannot take them")
        self.tasks, self.control = tasks, control
        if tasks is not None:
            self._task_weights = torch.tensor(list(tasks.weights().values()), dtype=torch.float64)
        if vae is not None:
            vae.requires_grad_(False).eval()
        self.vae = vae
        self.network, self.text_encoder = network, text_encoder
        self.diffusion, self.schedule = diffusion, diffusion.make_schedule()
        self.text_dropout, self.frame_stride = text_dropout, frame_stride

    def conditioning(self, captions: list[str], draws: Optional[SampleDraws],
                     frame_stride: Optional[Tensor], device, cached: Optional[dict] = None) -> Optional[Conditioning]:
        """The batch's conditioning; ``cached`` holds a latent cache's text (token ids for the
        built-in encoder, or a frozen encoder's embeddings), used instead of the captions."""
        parts, cached = {}, cached or {}
        if self.text_encoder is not None:
            if "text" in cached and cached["text"].shape[-1] == self.text_encoder.dim \
                    and not getattr(self.text_encoder, "trainable", True):
                parts.update(text=cached["text"], text_mask=cached["text_mask"].bool(),
                             text_pooled=cached["text_pooled"])
            elif "token_ids" in cached and getattr(self.text_encoder, "trainable", False):
                mask = cached["token_mask"].bool()
                keep = min(int(mask.sum(1).max()), self.text_encoder.max_length)   # trim padding
                ids, mask = cached["token_ids"][:, :keep].to(device), mask[:, :keep].to(device)
                text, pooled = self.text_encoder(ids, mask)
                parts.update(text=text.float() * mask.unsqueeze(-1), text_mask=mask, text_pooled=pooled.float())
            else:
                cond = self.text_encoder.conditioning(captions)
                parts.update(text=cond.text, text_mask=cond.text_mask, text_pooled=cond.text_pooled)
            if draws is not None and self.text_dropout > 0:
                parts["drop_text"] = draws.uniform("text_dropout") < self.text_dropout
        if self.frame_stride and frame_stride is not None:
            parts["frame_stride"] = frame_stride.float()
        if not parts:
            return None
        return Conditioning(**parts).to(device)

    def forward(self, batch: dict, draws: SampleDraws, image_step: bool = False) -> tuple[Tensor, dict]:
        # batch["video"]: (B, C, T, H, W) in [-1, 1] (pixels); batch["latents"]: latent units
        x0 = batch["latents"] if "latents" in batch else batch["video"]
        device = x0.device
        if self.vae is not None and "latents" not in batch:
            with torch.no_grad():
                x0 = self.vae.to_latent(x0)                             # (B, Cz, t, h, w)
        if image_step:
            # Joint image-video training: one frame per sample, T = 1, same network.
            pick = (draws.uniform("image_frame") * x0.shape[2]).long().clamp(max=x0.shape[2] - 1)
            x0 = x0[torch.arange(x0.shape[0]), :, pick.to(device)].unsqueeze(2)   # (B, C, 1, H, W)
        d = self.diffusion
        t = draws.times(d.time_distribution, d.logit_mean, d.logit_std).to(device)
        noise = draws.normal(tuple(x0.shape[1:]), "noise").to(device=device, dtype=x0.dtype)
        x_t = self.schedule.add_noise(x0, noise, t)
        captions, references = batch["caption"], None
        if self.reference is not None:
            if "video" not in batch:
                raise ValueError("reference images are frames of the training clips: a latent cache has none")
            captions, references = self.reference_images(batch["video"], captions, draws)
        cond = self.conditioning(captions, draws, batch.get("frame_stride"), device, batch)
        if references is not None and references[1].any():
            # Rows without a reference carry a placeholder that reference_mask hides: one batched call.
            cond = cond.replace(reference=references[0].to(device=device, dtype=x0.dtype),
                                reference_mask=references[1].to(device))
        mask, known_weight = None, 0.0
        if self.tasks is not None:
            known, mask, known_noise = self.frame_task(x0, draws)
            cond = (cond or Conditioning()).replace(known=known, mask=mask, known_noise=known_noise)
            known_weight = self.tasks.known_weight
        if self.control is not None:
            with torch.no_grad():
                maps = self.control(x0)                                 # (B, C_ctrl, T, H, W)
            cond = (cond or Conditioning()).replace(control=maps.to(device=device, dtype=x0.dtype))
        if self.upscale is not None:
            low, level = self.low_resolution(x0, draws)
            cond = (cond or Conditioning()).replace(low_res=low, low_res_noise=level)
        pred = self.network(x_t, t, cond)
        loss = diffusion_loss(pred, x0, noise, t, self.schedule, d.parameterization,
                              d.loss_weighting, d.min_snr_gamma, known=mask, known_weight=known_weight)
        return loss, {"loss": loss.detach()}

    def reference_images(self, clips: Tensor, captions: list[str], draws: SampleDraws):
        """Per sample, from its own streams: whether it gets a reference (``given (B,)`` bool), the
        reference ``(B, 3, H, W)`` (a random frame of its clip, circularly shifted by a random
        offset; zeros where not given) and its caption, with ``drop_words`` removed from a share
        ``drop_prob`` of the given ones."""
        B, _, T, H, W = clips.shape
        cfg = self.reference
        given = draws.uniform("reference") < cfg.prob                              # (B,)
        drop = given & (draws.uniform("reference_drop") < cfg.drop_prob)
        images, out = torch.zeros(B, 3, H, W, dtype=clips.dtype, device=clips.device), list(captions)
        for i in range(B):
            if not given[i]:
                continue
            g = draws.generator(i, "reference_image")
            frame = int(torch.randint(T, (), generator=g))
            dy, dx = int(torch.randint(H, (), generator=g)), int(torch.randint(W, (), generator=g))
            images[i] = torch.roll(clips[i, :, frame], shifts=(dy, dx), dims=(1, 2))   # (3, H, W)
            if drop[i] and cfg.drop_words:
                out[i] = " ".join(w for w in (captions[i] or "").split() if w.lower() not in cfg.drop_words)
        return out, (images, given)

    def low_resolution(self, x0: Tensor, draws: SampleDraws) -> tuple[Tensor, Tensor]:
        """The stage's input for clips ``x0 (B, C, T, H, W)``: ``low (B, C, T, H/s, W/s)``, box-
        downsampled by ``s = upscale.scale`` and noised to ``level (B,)`` (0 where a sample
        draws no augmentation), both from each sample's own streams."""
        cfg = self.upscale
        low = box_downsample(x0, cfg.scale)
        noisy = draws.uniform("low_res_noise_on") < cfg.noise_prob
        level = torch.where(noisy, draws.uniform("low_res_noise") * cfg.noise_max, 0.0)
        level = level.to(device=x0.device, dtype=x0.dtype)                        # (B,)
        eps = draws.normal(tuple(low.shape[1:]), "low_res_eps").to(device=x0.device, dtype=x0.dtype)
        noised = self.schedule.add_noise(low, eps, level)
        return torch.where(level.view(-1, 1, 1, 1, 1) > 0, noised, low), level

    def frame_task(self, x0: Tensor, draws: SampleDraws) -> tuple[Tensor, Tensor, Tensor]:
        """One task of the mix per sample: ``known (B, C, T, H, W)`` (``x0`` noised to each
        sample's ``known_noise (B,)``), ``mask (B, 1, T, H, W)``; all drawn from the sample's
        own streams, so the masks of a run are fixed by (seed, step, sample)."""
        B, _, T, H, W = x0.shape
        masks = []
        for i in range(B):
            g = draws.generator(i, "task")
            task = TASKS[int(torch.multinomial(self._task_weights, 1, generator=g))]
            masks.append(draw_task_mask(task, T, H, W, g))
        mask = torch.stack(masks).to(device=x0.device, dtype=x0.dtype)           # (B, 1, T, H, W)
        noisy = draws.uniform("known_noise_on") < self.tasks.known_noise_prob
        level = torch.where(noisy, draws.uniform("known_noise") * self.tasks.known_noise_max, 0.0)
        level = level.to(device=x0.device, dtype=x0.dtype)                        # (B,)
        eps = draws.normal(tuple(x0.shape[1:]), "known_noise_eps").to(device=x0.device, dtype=x0.dtype)
        known = torch.where(level.view(B, 1, 1, 1, 1) > 0, self.schedule.add_noise(x0, eps, level), x0)
        return known, mask, level
