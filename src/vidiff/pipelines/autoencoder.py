"""Using a trained video autoencoder: reconstructing videos and showing reconstructions.

:func:`reconstruct` is ``vidiff reconstruct``: a video of any length and size through the
autoencoder and back, with PSNR and SSIM. (Loading one is
:func:`vidiff.compose.load_autoencoder`.)
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from vidiff.models.vae import VideoVAE
from vidiff.eval.temporal import psnr_ssim as per_frame
from vidiff.video import DEFAULT_FPS, Video


def reconstruction_grid(vae: VideoVAE, videos: Tensor, fps: float = DEFAULT_FPS):
    """Inputs beside their reconstructions, one row per clip: ``videos (B, C, T, H, W)``."""
    with torch.no_grad():
        recon = vae(videos, sample_posterior=False)[0].clamp(-1, 1)
    cells = []
    for original, rebuilt in zip(videos, recon):
        cells += [Video.from_tensor(original, fps=fps), Video.from_tensor(rebuilt, fps=fps)]
    return Video.grid(cells, cols=2)


def psnr_ssim(reference: np.ndarray, test: np.ndarray) -> tuple[float, float]:
    """Mean PSNR (dB) and SSIM over frames of two uint8 ``(T, H, W, 3)`` arrays."""
    scores = per_frame(test, reference)
    return float(np.mean(scores["psnr"])), float(np.mean(scores["ssim"]))


def reconstruct(vae: VideoVAE, video: Video, chunk: int = 2, tile: Optional[int] = None) -> tuple[Video, float, float]:
    """Encode and decode ``video`` with constant memory in its length; returns the
    reconstruction (same frames, size and fps) with its mean PSNR (dB) and SSIM.

    Any length and size is accepted: the clip is padded to the autoencoder's grid (the last
    frame repeated up to ``1 + tf*k`` frames, edge pixels up to a multiple of the spatial
    factor), coded ``chunk`` latent frames at a time, and cropped back.
    """
    frames = video.frames                                           # (T, H, W, 3) uint8
    T, H, W, _ = frames.shape
    tf, sf = vae.temporal_factor, vae.spatial_factor
    pad_t = (-(T - 1)) % tf
    pad_h, pad_w = (-H) % sf, (-W) % sf
    padded = np.pad(frames, ((0, pad_t), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    device = next(vae.parameters()).device
    with torch.no_grad():
        # uint8 pieces in, so no float copy of the whole clip is ever made
        pieces = (torch.from_numpy(padded[i:i + 16]).to(device) for i in range(0, len(padded), 16))
        posterior = vae.encode_chunked(pieces, chunk=chunk, tile=tile)
        out = vae.decode_to_uint8(posterior.mean[0], chunk=chunk, tile=tile)   # (T', H', W', 3)
    rebuilt = np.ascontiguousarray(out[:T, :H, :W])
    psnr, ssim = psnr_ssim(frames, rebuilt)
    return Video(rebuilt, fps=video.fps), psnr, ssim
