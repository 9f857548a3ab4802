"""Overlapping tiles and windows, and a denoiser that runs on them one at a time.

A denoiser's memory grows with the clip it sees. :class:`TiledDenoiser` cuts ``x_t`` into
overlapping windows of frames and tiles of rows and columns, calls the wrapped denoiser on each
(with its :meth:`~vidiff.conditioning.Conditioning.crop` of the conditioning) and blends the
predictions with weights that sum to one everywhere. Because the blend happens at *every*
sampling step (MultiDiffusion, Bar-Tal et al. 2023), neighbouring tiles agree on their overlap
long before the clip is clean, so there are no seams to hide afterwards; memory is one tile's.

:func:`tile_starts` and :func:`blend_weights` are the two helpers, shared with the autoencoder's
tiled encoding and decoding.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

Denoiser = Callable


def tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    """Starts of overlapping tiles of ``tile`` cells covering ``n`` cells (the last one flush)."""
    if tile >= n:
        return [0]
    return list(range(0, n - tile, tile - overlap)) + [n - tile]


def blend_weights(n: int, starts: list[int], tile: int, ramp: int) -> list[Tensor]:
    """Blend weights along one axis, one ``(length,)`` vector a tile, summing to one at every
    position: a linear ramp of ``ramp`` cells on each side that meets another tile."""
    raw = []
    for s in starts:
        length = min(tile, n - s)
        w = torch.ones(length)
        r = min(ramp, length)
        up = torch.arange(1, r + 1, dtype=torch.float32) / (r + 1)          # never zero: safe to divide
        if r and s > 0:
            w[:r] = up
        if r and s + length < n:
            w[-r:] = torch.minimum(w[-r:], up.flip(0))
        raw.append(w)
    total = torch.zeros(n)
    for s, w in zip(starts, raw):
        total[s:s + len(w)] += w
    return [w / total[s:s + len(w)] for s, w in zip(starts, raw)]


class TiledDenoiser:
    """``denoiser`` run window by window and tile by tile, its predictions blended.

    Args:
        denoiser: ``denoiser(x_t, t, cond) -> x0_hat``.
        frames, frame_overlap: window length and overlap in frames (None: the whole clip).
        tile, tile_overlap: tile side and overlap in pixels (None: whole frames).
        multiple: every tile start and size is a multiple of this many pixels (a network's
            patch, or a super-resolution stage's scale times it, so that its low-resolution
            input crops to whole pixels).
    """

    def __init__(self, denoiser: Denoiser, frames: Optional[int] = None, frame_overlap: int = 0,
                 tile: Optional[int] = None, tile_overlap: int = 0, multiple: int = 1):
        if frames is not None and not 0 <= frame_overlap < frames:
            raise ValueError(f"frame overlap must be in [0, {frames}) frames, got {frame_overlap}")
        if tile is not None:
            if tile % multiple or tile_overlap % multiple:
                raise ValueError(f"tile {tile} and tile overlap {tile_overlap} must be multiples of "
                                 f"{multiple} pixels")
            if not 0 <= tile_overlap < tile:
                raise ValueError(f"tile overlap must be in [0, {tile}) pixels, got {tile_overlap}")
        self.denoiser, self.frames, self.frame_overlap = denoiser, frames, frame_overlap
        self.tile, self.tile_overlap = tile, tile_overlap
        self._pieces: dict[tuple[int, int, int], list] = {}      # by (T, H, W): the same at every step

    def pieces(self, T: int, H: int, W: int) -> list[tuple[slice, slice, slice, Tensor]]:
        """The ``(frames, rows, cols, weight (t, h, w))`` of every piece of a ``T x H x W`` clip."""
        axes = []
        for n, size, overlap in ((T, self.frames, self.frame_overlap), (H, self.tile, self.tile_overlap),
                                 (W, self.tile, self.tile_overlap)):
            size = n if size is None else min(size, n)
            starts = tile_starts(n, size, overlap)
            axes.append([(slice(s, s + size), w) for s, w in zip(starts, blend_weights(n, starts, size, overlap))])
        return [(ft, fy, fx, wt[:, None, None] * wy[None, :, None] * wx[None, None, :])
                for ft, wt in axes[0] for fy, wy in axes[1] for fx, wx in axes[2]]

    def __call__(self, x: Tensor, t: Tensor, cond=None) -> Tensor:
        # x: (B, C, T, H, W) -> x0_hat (B, C, T, H, W)
        B, C, T, H, W = x.shape
        if (T, H, W) not in self._pieces:
            self._pieces[T, H, W] = self.pieces(T, H, W)
        pieces = self._pieces[T, H, W]
        if len(pieces) == 1:
            return self.denoiser(x, t, cond)
        out = torch.zeros_like(x)
        for ft, fy, fx, weight in pieces:
            part = None if cond is None else cond.crop(ft, fy, fx, (H, W))
            pred = self.denoiser(x[:, :, ft, fy, fx], t, part)                 # (B, C, t, h, w)
            out[:, :, ft, fy, fx] += pred * weight.to(pred)
        return out
