"""VideoVAE: a causal 3D-convolution KL autoencoder, the latent space of latent video diffusion.

``encode(video (B, 3, T, H, W) in [-1, 1]) -> DiagonalGaussian`` over latents
``(B, latent_channels, 1 + (T - 1) / tf, H / sf, W / sf)`` and ``decode(z) -> (B, 3, T, H, W)``,
with ``sf = 2 ** (len(channels) - 1)`` (spatial factor) and ``tf = temporal_factor``.

Design, and why:

* **Causal in time.** Every temporal convolution pads only on the past side, by repeating the
  first frame (so a one-frame clip looks to the network like a still video, and an image and a
  video's first frame are coded alike). Output frame ``t`` therefore depends only on input
  frames ``<= t``, in the encoder and the decoder.
* **The first frame is coded on its own.** Temporal downsampling folds groups of frames into
  channels: frame 0 alone (repeated to fill a group), then frames ``1..s``, ``s+1..2s``, ...
  Two such halvings give ``tf = 4``: frame 0 -> latent 0, frames ``4j-3..4j`` -> latent ``j``.
  Upsampling mirrors it (latent 0 -> frame 0, latent ``j`` -> 4 frames), so valid clip
  lengths are ``1 + tf * k`` and a clip of another length is rejected with a ValueError.
* **Per-frame statistics only.** GroupNorm normalises each frame separately and the middle
  attention attends within a frame, so nothing looks across time except the causal convs.
  That is what makes **chunking exact**: decoding (or encoding) a clip piece by piece, with
  each causal conv carrying its last ``k - 1`` input frames from one chunk to the next
  (the *cache*), computes the same numbers as one pass over the whole clip, and the working
  memory is that of one chunk, whatever the length of the video.
* **Spatial tiling** (for frames too large for one pass) decodes overlapping latent tiles and
  blends them with linear ramps; each tile keeps its own temporal cache.
* ``kind="2d"`` is the comparison variant: a per-frame 2D encoder (frames meet only in the
  temporal fold when ``tf > 1``) and a decoder whose convs are a 3x3 spatial conv followed by a
  causal temporal conv that starts as the identity.
"""
from __future__ import annotations

import math
from typing import Iterable, Iterator, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from vidiff.diffusion.tiled import blend_weights, tile_starts
from vidiff.models.vae_blocks import Decoder, Encoder, FactorizedCausalConv
from vidiff.models.vae_config import VAEConfig


class DiagonalGaussian:
    """The posterior ``N(mean, exp(logvar))`` over latents, each ``(B, C, t, h, w)``."""

    def __init__(self, mean: Tensor, logvar: Tensor):
        # Clamped so exp() neither overflows nor collapses in early training.
        self.mean, self.logvar = mean, logvar.clamp(-30.0, 20.0)

    @classmethod
    def from_moments(cls, moments: Tensor) -> "DiagonalGaussian":
        mean, logvar = moments.chunk(2, dim=1)                               # (B, C, t, h, w) each
        return cls(mean, logvar)

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: Optional[torch.Generator] = None) -> Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device,
                            dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """KL to ``N(0, I)`` averaged over latent elements: ``(B,)`` (nats per element)."""
        kl = 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar)
        return kl.flatten(1).mean(1)


#################################################################################
#                                Pixel formats                                  #
#################################################################################


def _to_pixels(frames) -> Tensor:
    """uint8 ``(T, H, W, C)`` (numpy or torch) -> float ``(1, C, T, H, W)`` in [-1, 1]; float
    ``(B, C, T, H, W)`` passes through."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(frames)
    if frames.dtype == torch.uint8:
        if frames.dim() != 4:
            raise ValueError(f"uint8 frames must be (T, H, W, C), got shape {tuple(frames.shape)}")
        return (frames.permute(3, 0, 1, 2).unsqueeze(0).float() / 127.5 - 1.0)
    return frames


def _to_uint8(x: Tensor) -> np.ndarray:
    """float ``(B, C, T, H, W)`` in [-1, 1] -> uint8 ``(B, T, H, W, C)`` numpy."""
    x = (x.float().clamp(-1.0, 1.0) + 1.0).mul_(127.5).round_()
    return x.to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()


#################################################################################
#                                  VideoVAE                                     #
#################################################################################


class VideoVAE(nn.Module):
    """KL video autoencoder (see the module docstring for the design).

    Videos are float ``(B, in_channels, T, H, W)`` in [-1, 1] with ``T = 1 + tf * k`` and
    ``H, W`` divisible by ``sf``; latents ``(B, latent_channels, t, h, w)``. ``chunk`` counts
    latent frames per pass, beyond latent frame 0 in the first pass (so passes code ``1 + tf *
    chunk`` frames, then ``tf * chunk``), and ``tile``/``overlap`` count latent cells.
    """

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    @property
    def spatial_factor(self) -> int:
        return self.config.spatial_factor

    @property
    def temporal_factor(self) -> int:
        return self.config.temporal_factor

    @property
    def last_layer(self) -> Tensor:
        """The decoder's output conv weight (for the adaptive GAN weight in ``vae_losses``)."""
        out = self.decoder.conv_out
        return (out.temporal if isinstance(out, FactorizedCausalConv) else out).conv.weight

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """``(latent_channels, t, h, w)`` of a valid ``(frames, height, width)`` clip."""
        self._check_size(frames, height, width)
        sf = self.spatial_factor
        return (self.config.latent_channels, 1 + (frames - 1) // self.temporal_factor, height // sf, width // sf)

    def _check_size(self, frames: Optional[int], height: int, width: int) -> None:
        tf, sf = self.temporal_factor, self.spatial_factor
        if frames is not None and (frames < 1 or (frames - 1) % tf):
            low = 1 + tf * ((frames - 1) // tf) if frames > 1 else 1
            raise ValueError(
                f"VideoVAE: a clip of T={frames} frames cannot be coded with temporal compression "
                f"{tf}: accepted lengths are 1 + {tf}k ({', '.join(str(1 + tf * k) for k in range(5))}, ...); "
                f"the nearest are {low} and {low + tf}")
        if height % sf or width % sf:
            raise ValueError(f"VideoVAE: frame size {height}x{width} is not divisible by the spatial "
                             f"factor {sf}; crop or pad to a multiple of {sf}")

    def _check_video(self, video: Tensor, frames: bool = True) -> None:
        if video.dim() != 5 or video.shape[1] != self.config.in_channels:
            raise ValueError(f"VideoVAE: expected a video (B, {self.config.in_channels}, T, H, W), "
                             f"got shape {tuple(video.shape)}")
        self._check_size(video.shape[2] if frames else None, *video.shape[3:])

    def _check_latent(self, z: Tensor) -> None:
        if z.dim() != 5 or z.shape[1] != self.config.latent_channels:
            raise ValueError(f"VideoVAE: expected latents (B, {self.config.latent_channels}, t, h, w), "
                             f"got shape {tuple(z.shape)}")

    def _autocast(self, device: torch.device, enabled: bool):
        """bf16 autocast (meant for GPUs) or a no-op."""
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)

    def _tiled(self, net: nn.Module, x: Tensor, caches: dict, tile: Optional[int],
               overlap: Optional[int], scale_in: int, scale_out: int) -> Tensor:
        """``net(x, cache)`` on overlapping spatial tiles of ``x``, blended; ``caches[i]`` is
        tile ``i``'s causal cache. ``tile``/``overlap`` are latent cells, which are ``scale_in``
        cells of ``x`` and ``scale_out`` cells of the output."""
        h, w = x.shape[-2] // scale_in, x.shape[-1] // scale_in
        if tile is None or (tile >= h and tile >= w):
            return net(x, caches.setdefault(0, {}))
        overlap = tile // 4 if overlap is None else overlap
        if not 0 <= overlap < tile:
            raise ValueError(f"VideoVAE: tile overlap must be in [0, tile={tile}), got {overlap}")
        ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
        wy = blend_weights(h * scale_out, [s * scale_out for s in ys], tile * scale_out, overlap * scale_out)
        wx = blend_weights(w * scale_out, [s * scale_out for s in xs], tile * scale_out, overlap * scale_out)
        out = None
        for i, (y0, vy) in enumerate(zip(ys, wy)):
            for j, (x0, vx) in enumerate(zip(xs, wx)):
                piece = x[..., y0 * scale_in:(y0 + tile) * scale_in, x0 * scale_in:(x0 + tile) * scale_in]
                y = net(piece, caches.setdefault((i, j), {}))                 # (B, C', T', th, tw)
                if out is None:
                    out = y.new_zeros(*y.shape[:3], h * scale_out, w * scale_out)
                oy, ox = y0 * scale_out, x0 * scale_out
                out[..., oy:oy + y.shape[-2], ox:ox + y.shape[-1]] += y * (vy[:, None] * vx[None, :]).to(y)
        return out

    # ----------------------------------------------------------------- encoding

    def _frame_groups(self, frames, chunk: int) -> Iterator[Tensor]:
        """Re-cut a video (a tensor, or an iterable of pieces) into the frames of ``chunk`` latent
        frames (plus latent 0 in the first): ``1 + tf * chunk`` frames first, then ``tf * chunk``;
        each ``(B, C, T', H, W)``."""
        tf = self.temporal_factor
        pieces = [frames] if isinstance(frames, (Tensor, np.ndarray)) else frames
        need, total, buf = 1 + tf * chunk, 0, None
        for piece in pieces:
            piece = _to_pixels(piece)
            self._check_video(piece, frames=False)
            total += piece.shape[2]
            buf = piece if buf is None else torch.cat([buf, piece], 2)
            while buf.shape[2] >= need:
                yield buf[:, :, :need]
                buf, need = buf[:, :, need:], tf * chunk
        if buf is None:
            raise ValueError("VideoVAE: no frames to encode")
        # Valid totals leave a valid rest: the first group (1 + tf*m frames) or whole groups.
        self._check_size(total, *buf.shape[-2:])
        if buf.shape[2]:
            yield buf

    @torch.no_grad()
    def encode_chunked(self, frames: Union[Tensor, np.ndarray, Iterable], chunk: int = 4,
                       tile: Optional[int] = None, overlap: Optional[int] = None,
                       autocast: bool = False) -> DiagonalGaussian:
        """Encode a long video ``chunk`` latent frames at a time, carrying the causal cache, so
        memory is one chunk's (exactly equal to :meth:`encode` of the whole clip without tiles).

        ``frames``: a float video ``(B, C, T, H, W)``, a uint8 ``(T, H, W, C)`` array, or an
        iterable of either cut anywhere in time (pieces are re-cut to the causal grouping).
        """
        if chunk < 1:
            raise ValueError(f"VideoVAE: chunk must be >= 1 latent frame, got {chunk}")
        if isinstance(frames, (Tensor, np.ndarray)):
            self._check_video(_to_pixels(frames))
        caches: dict = {}
        sf = self.spatial_factor
        with self._autocast(next(self.parameters()).device, autocast):
            moments = [self._tiled(self.encoder, g, caches, tile, overlap, sf, 1).float()
                       for g in self._frame_groups(frames, chunk)]
        return DiagonalGaussian.from_moments(torch.cat(moments, 2))

    def encode(self, video: Tensor, chunk: Optional[int] = None, tile: Optional[int] = None,
               overlap: Optional[int] = None) -> DiagonalGaussian:
        """Posterior over latents of ``video (B, C, T, H, W)``; differentiable in one pass, or
        (with ``chunk`` or ``tile``) through :meth:`encode_chunked` without gradients."""
        if chunk is not None or tile is not None:
            return self.encode_chunked(video, chunk or video.shape[2], tile, overlap)
        self._check_video(video)
        return DiagonalGaussian.from_moments(self.encoder(video))           # (B, Cz, t, h, w) x 2

    # ----------------------------------------------------------------- decoding

    def _decode_pieces(self, z: Tensor, chunk: Optional[int], tile: Optional[int],
                       overlap: Optional[int], autocast: bool) -> Iterator[Tensor]:
        """Float ``(B, C, T', H, W)`` pieces of the decoded clip: latent frames ``0..chunk``, then
        ``chunk`` more at a time, so every piece but the last decodes ``1 + tf * chunk`` or
        ``tf * chunk`` frames (a clip of ``1 + tf * chunk`` frames is one piece)."""
        self._check_latent(z)
        if chunk is not None and chunk < 1:
            raise ValueError(f"VideoVAE: chunk must be >= 1 latent frame, got {chunk}")
        step, caches = chunk or z.shape[2], {}
        bounds = [0] + list(range(1 + step, z.shape[2], step)) + [z.shape[2]]
        for start, end in zip(bounds[:-1], bounds[1:]):
            with self._autocast(z.device, autocast):
                y = self._tiled(self.decoder, z[:, :, start:end], caches, tile, overlap, 1,
                                self.spatial_factor)
            yield y.float()

    @torch.no_grad()
    def decode_continue(self, z: Tensor, caches: dict, tile: Optional[int] = None,
                        overlap: Optional[int] = None) -> Tensor:
        """Decode the next latent frames ``z (B, Cz, t, h, w)`` of a stream whose causal cache
        is ``caches`` (updated in place; ``{}`` starts a stream) -> float ``(B, C, T', H, W)``:
        ``1 + tf (t - 1)`` frames for the first piece, ``tf t`` after. Pieces decoded one after
        another equal :meth:`decode` of their concatenation (tiles aside), so a caller can
        decode a clip as it is made, holding only the cache."""
        self._check_latent(z)
        return self._tiled(self.decoder, z, caches, tile, overlap, 1, self.spatial_factor).float()

    def decode(self, z: Tensor, chunk: Optional[int] = None, tile: Optional[int] = None,
               overlap: Optional[int] = None) -> Tensor:
        """``z (B, Cz, t, h, w) -> (B, C, 1 + tf(t-1), h*sf, w*sf)`` float; differentiable in one
        pass, or chunked/tiled without gradients (chunking is exact, tiling approximate)."""
        if chunk is None and tile is None:
            self._check_latent(z)
            return self.decoder(z)
        with torch.no_grad():
            return torch.cat(list(self._decode_pieces(z, chunk, tile, overlap, False)), 2)

    @torch.no_grad()
    def decode_stream(self, z: Tensor, chunk: Optional[int] = 4, tile: Optional[int] = None,
                      overlap: Optional[int] = None, autocast: bool = False) -> Iterator[np.ndarray]:
        """Yield decoded frames as uint8 numpy arrays, ``chunk`` latent frames' worth at a time:
        ``(T', H, W, C)`` for latents ``(Cz, t, h, w)``, ``(B, T', H, W, C)`` for ``(B, Cz, t, h, w)``.
        Only one chunk is ever decoded in memory (``chunk=None``: the whole clip at once)."""
        single = z.dim() == 4
        for y in self._decode_pieces(z[None] if single else z, chunk, tile, overlap, autocast):
            frames = _to_uint8(y)                                            # (B, T', H, W, C)
            yield frames[0] if single else frames

    @torch.no_grad()
    def decode_to_uint8(self, z: Tensor, out=None, chunk: Optional[int] = 4, tile: Optional[int] = None,
                        overlap: Optional[int] = None, autocast: bool = False):
        """Decode into ``out``, a preallocated uint8 ``(T, H, W, C)`` (for ``(Cz, t, h, w)``) or
        ``(B, T, H, W, C)`` numpy array or tensor (allocated when None); returns ``out``."""
        single = z.dim() == 4
        _, t, h, w = z.shape[-4:]
        shape = ((z.shape[0],) if not single else ()) + (1 + self.temporal_factor * (t - 1),
                                                         h * self.spatial_factor, w * self.spatial_factor,
                                                         self.config.in_channels)
        if out is None:
            out = np.empty(shape, dtype=np.uint8)
        if tuple(out.shape) != shape or out.dtype not in (np.uint8, torch.uint8):
            raise ValueError(f"VideoVAE: out must be uint8 of shape {shape}, got {out.dtype} {tuple(out.shape)}")
        pos = 0
        for frames in self.decode_stream(z, chunk, tile, overlap, autocast):
            n = frames.shape[-4]
            piece = torch.from_numpy(frames) if isinstance(out, Tensor) else frames
            out[..., pos:pos + n, :, :, :] = piece
            pos += n
        return out

    # ------------------------------------------------------------ training, latents

    def forward(self, video: Tensor, generator: Optional[torch.Generator] = None,
                sample_posterior: bool = True) -> tuple[Tensor, DiagonalGaussian]:
        """Training pass: ``video (B, C, T, H, W) -> (reconstruction (B, C, T, H, W), posterior)``,
        decoding a posterior sample (or the mean with ``sample_posterior=False``)."""
        posterior = self.encode(video)
        z = posterior.sample(generator) if sample_posterior else posterior.mean   # (B, Cz, t, h, w)
        return self.decoder(z), posterior

    def to_latent(self, video: Tensor, sample: bool = False, generator: Optional[torch.Generator] = None,
                  chunk: Optional[int] = None, tile: Optional[int] = None) -> Tensor:
        """Diffusion-ready latents ``(mean - shift_factor) * scaling_factor``, ``(B, Cz, t, h, w)``;
        with ``sample=True`` a posterior sample (drawn with ``generator``) replaces the mean."""
        posterior = self.encode(video, chunk=chunk, tile=tile)
        z = posterior.sample(generator) if sample else posterior.mean
        return (z - self.config.shift_factor) * self.config.scaling_factor

    def unscale(self, z: Tensor) -> Tensor:
        """Diffusion latents back to the decoder's units: the inverse of the scaling in
        :meth:`to_latent`, ``z / scaling_factor + shift_factor`` (same shape)."""
        return z / self.config.scaling_factor + self.config.shift_factor

    def from_latent(self, z: Tensor, chunk: Optional[int] = None, tile: Optional[int] = None) -> Tensor:
        """Inverse of :meth:`to_latent`, then :meth:`decode`: ``(B, Cz, t, h, w) -> (B, C, T, H, W)``."""
        return self.decode(self.unscale(z), chunk=chunk, tile=tile)

    @torch.no_grad()
    def estimate_latent_scaling(self, batches: Iterable, max_batches: Optional[int] = None,
                                chunk: Optional[int] = None) -> tuple[float, float]:
        """Set ``config.shift_factor`` to the mean and ``config.scaling_factor`` to 1 / std of the
        posterior means over ``batches`` (videos as :meth:`encode` takes them), so
        :meth:`to_latent` of that data has zero mean and unit variance; returns (shift, scale)."""
        count, total, squares = 0, 0.0, 0.0
        for i, video in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            mean = self.encode(_to_pixels(video), chunk=chunk).mean.double()
            count, total, squares = count + mean.numel(), total + mean.sum().item(), squares + mean.pow(2).sum().item()
        if count == 0:
            raise ValueError("VideoVAE.estimate_latent_scaling: no batches")
        shift = total / count
        std = math.sqrt(max(squares / count - shift ** 2, 1e-12))
        self.config.shift_factor, self.config.scaling_factor = shift, 1.0 / std
        return shift, 1.0 / std


#################################################################################
#                                 Named sizes                                   #
#################################################################################

VAE_MODELS: dict[str, VAEConfig] = {
    # Seconds-fast, for tests: 4x spatial, 4x temporal.
    "vae-tiny": VAEConfig(latent_channels=4, channels=(8, 16, 16), blocks_per_level=1, head_dim=8,
                          norm_groups=4),
    # The CPU default: 4x spatial, 4x temporal, 8 latent channels; narrow at full resolution,
    # where a step spends most of its time (a third of vae-m's step time on 2 cores).
    "vae-s": VAEConfig(latent_channels=8, channels=(16, 32, 64), blocks_per_level=1, head_dim=32,
                       norm_groups=8),
    "vae-s-2d": VAEConfig(kind="2d", latent_channels=8, channels=(16, 32, 64), blocks_per_level=1,
                          head_dim=32, norm_groups=8),
    # Twice as wide: more capacity for a longer or GPU run.
    "vae-m": VAEConfig(latent_channels=8, channels=(32, 64, 128), blocks_per_level=1, head_dim=64,
                       norm_groups=16),
    # GPU size: 8x spatial, 4x temporal, 16 latent channels.
    "vae-b": VAEConfig(latent_channels=16, channels=(64, 128, 256, 256), blocks_per_level=2),
}
