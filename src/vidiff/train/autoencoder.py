"""Training a :class:`~vidiff.models.VideoVAE`: the autoencoder objective and its checkpoints.

The same :class:`~vidiff.train.Trainer` loop runs it (resume, DDP, EMA, progress): only the
objective differs. A run is an autoencoder run when ``model.size`` names an autoencoder size
(``vae-tiny``, ``vae-s``, ...); the loss settings live in the run config's ``autoencoder``
section (:class:`~vidiff.train.config.AutoencoderConfig`).

The discriminator, when on, trains in the same backward pass as the autoencoder: the
generator's adversarial term is computed with the discriminator's parameters frozen, and the
discriminator's own hinge loss on detached reconstructions, so each parameter receives exactly
its own gradient and one optimizer (with a parameter group per model) serves both.
"""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from vidiff.checkpoint import submodule_state
from vidiff.data import collate
from vidiff.models.vae import VideoVAE
from vidiff.models.vae_losses import PatchDiscriminator, autoencoder_loss, discriminator_loss


class AutoencoderObjective(nn.Module):
    """A video autoencoder (and optional patch discriminator) trained by reconstruction, KL and
    temporal-difference losses, plus the adversarial term from step ``settings.gan_start``.

    ``forward(batch, draws, image_step) -> (loss, metrics)`` as the trainer expects; the batch's
    ``video`` is ``(B, C, T, H, W)`` in [-1, 1]; an image step trains on one frame (T = 1).
    ``settings`` is an :class:`~vidiff.train.config.AutoencoderConfig`.
    """

    def __init__(self, vae: VideoVAE, settings):
        super().__init__()
        self.network = vae            # "network": the module the trainer compiles
        self.settings = settings
        self.discriminator = None
        if settings.gan_weight > 0:
            self.discriminator = PatchDiscriminator(vae.config.in_channels, settings.disc_channels,
                                                    settings.disc_layers, settings.disc_kind)

    def param_groups(self, lr: float) -> list[dict]:
        """One AdamW parameter group per model (the discriminator's LR scaled)."""
        groups = [{"params": [p for p in self.network.parameters() if p.requires_grad], "lr": lr}]
        if self.discriminator is not None:
            groups.append({"params": list(self.discriminator.parameters()),
                           "lr": lr * self.settings.disc_lr_ratio})
        return groups

    def forward(self, batch: dict, draws, image_step: bool = False) -> tuple[Tensor, dict]:
        s = self.settings
        video = batch["video"]                                          # (B, C, T, H, W)
        if image_step:
            pick = (draws.uniform("image_frame") * video.shape[2]).long().clamp(max=video.shape[2] - 1)
            video = video[torch.arange(video.shape[0]), :, pick.to(video.device)].unsqueeze(2)
        noise = draws.normal(self.network.latent_shape(*video.shape[2:]), "posterior").to(video.device)
        posterior = self.network.encode(video)
        recon = self.network.decoder(posterior.mean + posterior.std * noise)   # (B, C, T, H, W)
        if self.discriminator is None:
            return autoencoder_loss(recon, video, posterior, s)
        gan_on = draws.step >= s.gan_start
        fake_logits = None
        if gan_on:  # the generator's term, through a discriminator whose weights stay put
            self.discriminator.requires_grad_(False)
            fake_logits = self.discriminator(recon)
            self.discriminator.requires_grad_(True)
        loss, metrics = autoencoder_loss(recon, video, posterior, s, fake_logits,
                                         self.network.last_layer if gan_on else None)
        d_loss, d_metrics = discriminator_loss(self.discriminator(video), self.discriminator(recon.detach()), s)
        # Before gan_start the discriminator's loss weighs 0 but still runs, so every parameter
        # has a gradient each step (DDP requires it) and nothing moves.
        loss = loss + (1.0 if gan_on else 0.0) * d_loss
        return loss, {**metrics, **d_metrics}


@torch.no_grad()
def estimate_scaling(vae: VideoVAE, weights: dict, dataset, batches: int, batch_size: int) -> tuple[float, float]:
    """Latent shift and scale of the autoencoder with ``weights`` (its ``network.*`` entries)
    over the first ``batches x batch_size`` items of ``dataset``: a copy is estimated, so the
    training model is untouched."""
    probe = copy.deepcopy(vae).cpu().eval()
    probe.load_state_dict(submodule_state(weights, "network."))
    n = min(len(dataset), batches * batch_size)
    clips = (collate([dataset[i] for i in range(start, min(start + batch_size, n))])["video"]
             for start in range(0, n, batch_size))
    return probe.estimate_latent_scaling(clips)
