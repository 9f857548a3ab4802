"""PhotoPan: camera pans and zooms over the photographs that ship inside scikit-image.

Each clip moves a virtual camera over one photograph (no download: only the images bundled in
the ``skimage`` wheel are used, and each is checked to load). The camera's view is a window
of the clip's aspect ratio in photo coordinates, resampled bilinearly at pixel centres
(``torch.nn.functional.grid_sample``) from a copy of the photo pre-shrunk with antialiasing,
so motion is sub-pixel smooth.

Motion convention (what a camera operator means):

- ``pan left``: the view window moves left over the photo, so the **content moves right** in
  the frame (``pan right``: content moves left; ``pan up``: content moves down; ``pan down``:
  content moves up). The window travels 20-40% of its own width (height) over the clip.
- ``zoom in``: the window shrinks about its fixed centre, so the content is magnified (by
  1.4x-2x over the clip, at a constant rate); ``zoom out`` is the reverse.

Captions: ``camera pans left over a cat``, ``camera zooms in on a rocket``,
``camera zooms out from a rocket``.
"""
from __future__ import annotations

import functools
import itertools
import logging
import warnings
from typing import Optional, Sequence

import numpy as np
import skimage.data
import torch
import torch.nn.functional as F

from vidiff.data.common import DatasetError, SyntheticDataset, geometric
from vidiff.video import DEFAULT_FPS

logger = logging.getLogger("vidiff.data")

# skimage.data function -> what the caption calls it.
PHOTOS: dict[str, str] = {
    "astronaut": "an astronaut",
    "chelsea": "a cat",
    "coffee": "a cup of coffee",
    "rocket": "a rocket",
    "camera": "a cameraman",
    "coins": "coins",
    "moon": "the moon",
    "clock": "a clock",
    "hubble_deep_field": "galaxies",
    "immunohistochemistry": "stained tissue",
    "colorwheel": "a colour wheel",
    "page": "a printed page",
}
MOTIONS: tuple[str, ...] = ("pan left", "pan right", "pan up", "pan down", "zoom in", "zoom out")
PAN_WINDOW = (0.4, 0.6)    # window side as a fraction of the largest window that fits
PAN_TRAVEL = (0.2, 0.4)    # distance travelled as a fraction of the window's extent
ZOOM_WINDOW = (0.6, 0.95)  # the larger window, as a fraction of the largest that fits
ZOOM_FACTOR = (1.4, 2.0)   # magnification over the clip


def motion_caption(motion: str, photo: str) -> str:
    noun = PHOTOS[photo]
    kind, way = motion.split()
    if kind == "pan":
        return f"camera pans {way} over {noun}"
    return f"camera zooms in on {noun}" if way == "in" else f"camera zooms out from {noun}"


@functools.lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """``uint8 (H, W, 3)`` photograph ``name`` from ``skimage.data`` (grey ones as RGB)."""
    if name not in PHOTOS:
        raise DatasetError(f"unknown photo {name!r}; accepted: {list(PHOTOS)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = np.asarray(getattr(skimage.data, name)())
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


@functools.lru_cache(maxsize=1)
def available_photos() -> tuple[str, ...]:
    """The photos of :data:`PHOTOS` that load offline in this installation."""
    names = []
    for name in PHOTOS:
        try:
            load_photo(name)
            names.append(name)
        except Exception as e:  # a photo that needs a download, or an older scikit-image
            logger.info("PhotoPan: photo %r is not available offline (%s)", name, e)
    return tuple(names)


@functools.lru_cache(maxsize=64)
def _photo_tensor(name: str, short_side: int) -> tuple[torch.Tensor, float]:
    """The photo as ``float (3, h, w)`` in [0, 1], shrunk (antialiased) so its shorter side is
    at most ``short_side``; also the factor from original to stored pixels."""
    image = torch.from_numpy(load_photo(name)).permute(2, 0, 1).float() / 255.0
    h, w = image.shape[1:]
    factor = min(1.0, short_side / min(h, w))
    if factor < 1.0:
        size = (max(1, round(h * factor)), max(1, round(w * factor)))
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False,
                              antialias=True)[0].clamp(0, 1)
    return image.contiguous(), factor


def render_boxes(image: torch.Tensor, boxes: np.ndarray, height: int, width: int) -> torch.Tensor:
    """Sample ``(T, 3, height, width)`` from ``image (3, h, w)`` through ``boxes (T, 4)`` =
    ``(x0, y0, box_w, box_h)`` in the image's pixel units (edges, so pixel k spans [k, k+1])."""
    h, w = image.shape[1:]
    b = torch.from_numpy(np.asarray(boxes, np.float64))
    u = (torch.arange(width, dtype=torch.float64) + 0.5) / width     # pixel centres in [0, 1]
    v = (torch.arange(height, dtype=torch.float64) + 0.5) / height
    x = b[:, 0, None] + u[None, :] * b[:, 2, None]                   # (T, W) image x
    y = b[:, 1, None] + v[None, :] * b[:, 3, None]                   # (T, H) image y
    gx = (2 * x / w - 1)[:, None, :].expand(-1, height, -1)          # align_corners=False units
    gy = (2 * y / h - 1)[:, :, None].expand(-1, -1, width)
    grid = torch.stack([gx, gy], dim=-1).float()                     # (T, H, W, 2)
    source = image[None].expand(len(b), -1, -1, -1)
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="border", align_corners=False)


class PhotoPan(SyntheticDataset):
    """A camera panning (left/right/up/down) or zooming (in/out) over a photograph.

    Args:
        frames, size, seed, length, buckets, fps, stretch: as for every synthetic dataset.
        photos: names from :data:`PHOTOS` to use (default: every one available offline).

    Items carry ``photo``, ``motion`` (one of :data:`MOTIONS`) and ``boxes``: float tensor
    ``(T, 4)``, the view window ``(x0, y0, width, height)`` of each frame in the original
    photo's pixels.
    """

    frame_axes = {"boxes": 0}       # (T, 4)

    def __init__(self, frames: int = 16, size: int = 32, seed: int = 0, length: Optional[int] = None,
                 photos: Sequence[str] = (), buckets=None, fps: float = DEFAULT_FPS,
                 stretch: float = 1.0):
        super().__init__(frames, size, seed, length, buckets, fps, stretch)
        available = available_photos()
        if not available:
            raise DatasetError("PhotoPan: none of the scikit-image photographs loads in this "
                               "installation (is scikit-image installed?)")
        photos = list(photos or available)
        missing = [p for p in photos if p not in available]
        if missing:
            raise DatasetError(f"PhotoPan: photo(s) {missing} are not available; available: {list(available)}")
        self.photos = photos

    def _make(self, rng: np.random.Generator, frames: int, height: int, width: int) -> dict:
        photo = self.photos[int(rng.integers(len(self.photos)))]
        motion = MOTIONS[int(rng.integers(len(MOTIONS)))]
        ph, pw = load_photo(photo).shape[:2]
        boxes = self.boxes(rng, motion, frames, (ph, pw), (height, width))
        # Store the photo so that the largest window maps at most ~2x down to the frame.
        image, factor = _photo_tensor(photo, 2 * max(height, width))
        clip = render_boxes(image, boxes * factor, height, width)           # (T, 3, H, W)
        frames_u8 = (clip.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return {"frames": frames_u8, "caption": motion_caption(motion, photo), "photo": photo,
                "motion": motion, "boxes": torch.from_numpy(boxes).float()}

    @staticmethod
    def boxes(rng: np.random.Generator, motion: str, frames: int, photo_hw: tuple[int, int],
              out_hw: tuple[int, int]) -> np.ndarray:
        """The view window ``(x0, y0, w, h)`` of each frame, float64 ``(T, 4)``, in photo pixels."""
        ph, pw = photo_hw
        H, W = out_hw
        full_h = min(ph, pw * H / W)             # the largest window of the clip's aspect
        kind, way = motion.split()
        t = np.linspace(0.0, 1.0, frames) if frames > 1 else np.zeros(1)
        if kind == "pan":
            bh = rng.uniform(*PAN_WINDOW) * full_h
            bw = bh * W / H
            horizontal = way in ("left", "right")
            extent, room = (bw, pw - bw) if horizontal else (bh, ph - bh)
            travel = min(rng.uniform(*PAN_TRAVEL) * extent, room)
            other_room = (ph - bh) if horizontal else (pw - bw)
            first = rng.uniform(0, room - travel)          # low end of the swept range
            other = rng.uniform(0, other_room)
            # pan left/up: the window moves towards smaller coordinates.
            along = first + travel * (1 - t) if way in ("left", "up") else first + travel * t
            x0, y0 = (along, np.full(frames, other)) if horizontal else (np.full(frames, other), along)
            return np.stack([x0, y0, np.full(frames, bw), np.full(frames, bh)], axis=1)
        big = rng.uniform(*ZOOM_WINDOW) * full_h
        small = big / rng.uniform(*ZOOM_FACTOR)
        big_w = big * W / H
        cx = rng.uniform(big_w / 2, pw - big_w / 2)
        cy = rng.uniform(big / 2, ph - big / 2)
        hs = geometric(big, small, frames) if way == "in" else geometric(small, big, frames)
        ws = hs * W / H
        return np.stack([cx - ws / 2, cy - hs / 2, ws, hs], axis=1)

    def captions(self) -> list[str]:
        return [motion_caption(m, p) for p, m in itertools.product(self.photos, MOTIONS)]
