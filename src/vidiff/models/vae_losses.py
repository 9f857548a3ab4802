"""Losses for training a :class:`~vidiff.models.vae.VideoVAE`: reconstruction, KL, temporal
difference and an adversarial term with its patch discriminator.

Every term is a pure function returning a scalar tensor (a mean, so its size does not depend
on the batch, clip length or resolution); :func:`autoencoder_loss` and
:func:`discriminator_loss` combine them by a :class:`VAELossConfig`. Videos are
``(B, C, T, H, W)`` in [-1, 1]. When to start the adversarial term (``gan_start``) is the
trainer's decision; these functions only compute.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidiff.config import ConfigError
from vidiff.models.vae import DiagonalGaussian

#################################################################################
#                                Pixel losses                                   #
#################################################################################


def _distance(a: Tensor, b: Tensor, kind: str) -> Tensor:
    if kind == "l1":
        return (a - b).abs().mean()
    if kind == "l2":
        return (a - b).pow(2).mean()
    raise ValueError(f"unknown distance {kind!r}; accepted: 'l1', 'l2'")


def reconstruction_loss(recon: Tensor, target: Tensor, kind: str = "l1") -> Tensor:
    """Mean L1 or L2 distance between ``recon`` and ``target``, each ``(B, C, T, H, W)``."""
    return _distance(recon, target, kind)


def kl_loss(posterior: DiagonalGaussian) -> Tensor:
    """KL of the posterior to ``N(0, I)``, in nats per latent element, averaged over the batch."""
    return posterior.kl().mean()


def temporal_difference_loss(recon: Tensor, target: Tensor, kind: str = "l1") -> Tensor:
    """Distance between frame-to-frame differences ``x[t] - x[t-1]`` of the two clips.

    Penalises flicker that per-pixel losses average away: a reconstruction can be close to
    every frame yet move differently. Zero for one-frame clips.
    """
    if recon.shape[2] < 2:
        return recon.new_zeros(())
    return _distance(recon.diff(dim=2), target.diff(dim=2), kind)


#################################################################################
#                              Discriminator                                    #
#################################################################################


class PatchDiscriminator(nn.Module):
    """PatchGAN: a real/fake logit per overlapping patch, ``(B, C, T, H, W) -> (B, 1, T, h, w)``.

    ``kind="2d"`` judges each frame alone (frames folded into the batch); ``kind="3d"`` uses
    ``(3, 4, 4)`` kernels, so it also sees motion over neighbouring frames (it is not causal:
    it only trains the autoencoder). Each of ``layers`` stride-2 convs halves H and W.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, layers: int = 3,
                 kind: Literal["2d", "3d"] = "2d"):
        super().__init__()
        if kind not in ("2d", "3d"):
            raise ValueError(f"PatchDiscriminator kind must be '2d' or '3d', got {kind!r}")
        self.kind = kind
        conv = nn.Conv2d if kind == "2d" else nn.Conv3d

        def k(size):  # the temporal extent of a 3D kernel is 3 with padding 1: T is kept
            return size if kind == "2d" else (3, size, size)

        def s(stride):
            return stride if kind == "2d" else (1, stride, stride)
        mods, c = [conv(in_channels, channels, k(4), s(2), 1), nn.LeakyReLU(0.2)], channels
        for i in range(1, layers + 1):
            c_next = channels * 2 ** min(i, 3)
            stride = 2 if i < layers else 1  # the last layer widens the patch without shrinking
            mods += [conv(c, c_next, k(4), s(stride), 1), nn.GroupNorm(min(32, c_next // 4), c_next),
                     nn.LeakyReLU(0.2)]
            c = c_next
        mods.append(conv(c, 1, k(3), 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, video: Tensor) -> Tensor:
        B, C, T, H, W = video.shape
        if self.kind == "3d":
            return self.net(video)                                           # (B, 1, T, h, w)
        frames = video.transpose(1, 2).reshape(B * T, C, H, W)               # (B*T, C, H, W)
        logits = self.net(frames)                                            # (B*T, 1, h, w)
        return logits.view(B, T, 1, *logits.shape[-2:]).transpose(1, 2)     # (B, 1, T, h, w)


#################################################################################
#                                GAN losses                                     #
#################################################################################


def hinge_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator hinge loss: real logits pushed above +1, fake below -1."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def hinge_g_loss(fake_logits: Tensor) -> Tensor:
    """Generator side of the hinge GAN: raise the fake logits."""
    return -fake_logits.mean()


def nonsaturating_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator logistic loss: ``-log D(real) - log(1 - D(fake))``."""
    return 0.5 * (F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean())


def nonsaturating_g_loss(fake_logits: Tensor) -> Tensor:
    """Non-saturating generator loss ``-log D(fake)`` (strong gradients while D wins)."""
    return F.softplus(-fake_logits).mean()


GAN_LOSSES = {
    "hinge": (hinge_d_loss, hinge_g_loss),
    "nonsaturating": (nonsaturating_d_loss, nonsaturating_g_loss),
}


def adaptive_gan_weight(rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor,
                        max_weight: float = 1e4) -> Tensor:
    """``||grad rec|| / ||grad g||`` at the decoder's last weight (Esser et al., 2021): scales the
    adversarial term to pull as hard as the reconstruction term, whatever their raw sizes."""
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (rec_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0.0, max_weight).detach()


#################################################################################
#                                  Combined                                     #
#################################################################################


@dataclass
class VAELossConfig:
    """Weights of the autoencoder loss terms (each term is a per-element mean).

    The KL is per latent element, so ``kl_weight`` is far smaller than 1: it only keeps the
    latents from drifting; unit variance comes from the scaling factor, not from the KL.
    ``gan_weight = 0`` trains without a discriminator.
    """
    reconstruction: Literal["l1", "l2"] = "l1"
    kl_weight: float = 1e-6
    temporal_weight: float = 0.5
    gan_weight: float = 0.0
    gan_loss: Literal["hinge", "nonsaturating"] = "hinge"
    adaptive_weight: bool = True           # scale the GAN term by adaptive_gan_weight
    gan_start: int = 0                     # training step at which the trainer enables it
    disc_kind: Literal["2d", "3d"] = "2d"
    disc_channels: int = 64
    disc_layers: int = 3

    def __post_init__(self):
        for name in ("kl_weight", "temporal_weight", "gan_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"VAELossConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.gan_loss not in GAN_LOSSES:
            raise ConfigError(f"VAELossConfig.gan_loss: {self.gan_loss!r} is not one of {sorted(GAN_LOSSES)}")


def autoencoder_loss(recon: Tensor, target: Tensor, posterior: DiagonalGaussian, cfg: VAELossConfig,
                     fake_logits: Optional[Tensor] = None,
                     last_layer: Optional[Tensor] = None) -> tuple[Tensor, dict[str, float]]:
    """The autoencoder's total loss and its terms (floats, for logging).

    ``fake_logits`` (the discriminator on ``recon``) adds the generator term when
    ``cfg.gan_weight > 0``; ``last_layer`` (the decoder's output weight) is needed for the
    adaptive weight.
    """
    rec = reconstruction_loss(recon, target, cfg.reconstruction)
    kl = kl_loss(posterior)
    tdiff = temporal_difference_loss(recon, target, cfg.reconstruction)
    nll = rec + cfg.temporal_weight * tdiff
    total = nll + cfg.kl_weight * kl
    terms = {"rec": rec.item(), "kl": kl.item(), "tdiff": tdiff.item()}
    if cfg.gan_weight > 0 and fake_logits is not None:
        g = GAN_LOSSES[cfg.gan_loss][1](fake_logits)
        weight = cfg.gan_weight
        if cfg.adaptive_weight and last_layer is not None and torch.is_grad_enabled():
            weight = weight * adaptive_gan_weight(nll, g, last_layer)
        total = total + weight * g
        terms["g"] = g.item()
    terms["loss"] = total.item()
    return total, terms


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor,
                       cfg: VAELossConfig) -> tuple[Tensor, dict[str, float]]:
    """The discriminator's loss on logits of real clips and (detached) reconstructions."""
    loss = GAN_LOSSES[cfg.gan_loss][0](real_logits, fake_logits)
    return loss, {"d": loss.item(), "logits_real": real_logits.mean().item(),
                  "logits_fake": fake_logits.mean().item()}
