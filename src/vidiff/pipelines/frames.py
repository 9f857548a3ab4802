"""Frame tasks: every way of generating a clip of which some pixels are known.

Image-to-video, forecasting, interpolation, inpainting, outpainting, extension and long
text-to-video are one operation, :meth:`FrameTasks.fill`: a known clip ``(C, T, H, W)`` and a
mask ``(1, T, H, W)`` (1 = known) go in, the clip with the unknown part generated comes out.
Each task is a few lines that build that pair; ``fill`` calls the pipeline's one sampling core
(:meth:`VideoPipeline.sample`) once per window.

Long clips are built window by window (the autoregressive scheme): a window is at most the
model's training length ``W``, starts ``overlap`` frames before the first frame still unknown,
and everything it generates becomes known for the windows after it. So the denoiser never
sees more than ``W`` frames, time grows linearly with length and memory stays flat. With a
prompt schedule a window never straddles a prompt change: the frame where a prompt starts
begins a window. The hierarchical scheme generates every ``stride``-th frame first (a clip at
a lower frame rate, for a model conditioned on frame stride), then fills between them.

A latent model works in whole latent groups: its windows are ``1 + tf k`` frames and overlap
by ``1 + tf m`` frames, so the known frames a window starts with code to whole known latents
(:func:`~vidiff.diffusion.masks.latent_mask`), and a prompt change starts the first window
whose first unknown frame is at or after it (up to ``tf - 1`` frames late). Each window's
overlap frames are encoded again from the pixels the window before decoded (a latent denoiser
trained on whole clips takes its first latent to code one frame, not a group of ``tf``), but
its new latents are decoded with the decoder's causal cache carried from the window before, so
the decoded clip is one stream: the frames after an overlap follow from the frames before it,
as in a clip decoded whole. The decoder never holds more than two latent frames and its cache.
"""
from __future__ import annotations

import inspect
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from vidiff.conditioning import Conditioning
from vidiff.diffusion import DEFAULT_GUIDANCE_WEIGHT
from vidiff.diffusion.masks import border_mask, box_mask, frames_mask, latent_mask
from vidiff.video import Video, from_levels, to_levels

Clip = Union[Video, np.ndarray, Tensor]
SCHEMES = ("autoregressive", "hierarchical")
WINDOW_SEED_STEP = 1_000_003   # window j of sample k uses seed (seed + k) + j * this
KNOWN_NOISE_SEED = 7_919       # the known frames' noise augmentation draws from seed + this


def clip_tensor(clip: Clip, what: str = "video") -> Tensor:
    """A video, an image or a tensor as float ``(3, T, H, W)`` in ``[-1, 1]``: a
    :class:`Video`, a uint8 array ``(T, H, W, 3)`` or ``(H, W, 3)`` (one image), or a float
    tensor ``(3, T, H, W)`` in ``[-1, 1]``."""
    if isinstance(clip, Video):
        return clip.to_tensor()
    if isinstance(clip, np.ndarray):
        frames = clip[None] if clip.ndim == 3 else clip
        return Video(frames).to_tensor()
    if isinstance(clip, Tensor) and clip.ndim == 4 and clip.shape[0] == 3:
        return clip.float()
    shape = getattr(clip, "shape", None)
    raise ValueError(f"{what} must be a Video, a uint8 array (T, H, W, 3) or (H, W, 3), or a float "
                     f"tensor (3, T, H, W); got {type(clip).__name__} of shape {shape}")


def parse_prompt_schedule(lines: Sequence[str]) -> list[tuple[int, str]]:
    """``"FRAME PROMPT"`` lines (blank lines and ``#`` comments skipped) as ``[(frame, prompt)]``,
    strictly increasing in frame; ValueError names the first bad line."""
    schedule: list[tuple[int, str]] = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        head, _, prompt = text.partition(" ")
        if not head.isdigit() or not prompt.strip():
            raise ValueError(f"prompt schedule line {number}: {text!r} is not 'FRAME PROMPT' "
                             "(a frame index >= 0, a space, a prompt)")
        frame = int(head)
        if schedule and frame <= schedule[-1][0]:
            raise ValueError(f"prompt schedule line {number}: frame {frame} does not increase "
                             f"(the previous line starts at frame {schedule[-1][0]})")
        schedule.append((frame, prompt.strip()))
    if not schedule:
        raise ValueError("the prompt schedule has no 'FRAME PROMPT' lines")
    return schedule


def prompt_at(schedule: Sequence[tuple[int, str]], frame: int, default: Optional[str]) -> Optional[str]:
    """The prompt in force at ``frame``: the last schedule entry starting at or before it."""
    prompt = default
    for start, text in schedule:
        if start <= frame:
            prompt = text
    return prompt


def _levels_and_bools(known: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``known`` as uint8 levels and ``mask`` as bools (known where >= 0.5), each returned as
    it is when it already has that type."""
    levels = known if known.dtype == torch.uint8 else to_levels(known)
    return levels, (mask if mask.dtype == torch.bool else mask >= 0.5)


def _frame_known(mask: Tensor) -> Tensor:
    """``(T,)`` bool: frames whose every pixel is known, for a mask ``(1, T, H, W)``."""
    return mask.flatten(2).min(dim=2).values[0] >= 0.5


class FrameTasks:
    """The frame tasks of :class:`~vidiff.pipelines.VideoPipeline` (mixed into it)."""

    # ------------------------------------------------------------------ the one operation
    @torch.no_grad()
    def fill(self, known: Tensor, mask: Tensor, prompt: Optional[str] = None, *, samples: int = 1,
             seed: int = 0, steps: Optional[int] = None, sampler: Optional[str] = None,
             guidance: Optional[float] = None, negative_prompt: Optional[str] = None,
             method: Optional[str] = None, guidance_weight: float = DEFAULT_GUIDANCE_WEIGHT, known_noise: float = 0.0,
             prompt_schedule: Optional[Sequence[tuple[int, str]]] = None,
             window: Optional[int] = None, overlap: Optional[int] = None,
             frame_stride: Optional[float] = None, progress: bool = False,
             callback=None) -> tuple[Tensor, Tensor]:
        """Generate the unknown part of ``known (C, T, H, W)`` (float in ``[-1, 1]``, or uint8
        levels) where ``mask (1, T, H, W)`` is below 0.5 (float or bool).

        Args:
            prompt: the text (None: the null text, no text guidance).
            samples: variations; sample ``k`` uses seed ``seed + k`` (window ``j`` of it
                ``seed + k + j * 1_000_003``).
            steps, sampler, negative_prompt: as in :meth:`generate`.
            guidance: text guidance (None: ``known_guidance`` of the sampling defaults, 1, for
                ``method="mask"``, where the unconditional branch sees the known frames but
                not the text; the text-to-video default, 5, for the other methods).
            method: ``"mask"``, ``"guidance"`` or ``"replace"`` (see :meth:`sample`).
            guidance_weight: the reconstruction guidance weight.
            known_noise: diffusion time of noise added to the known frames (a mask-trained
                model was taught small levels; 0 = clean).
            prompt_schedule: ``[(frame, prompt)]``: the prompt changes at those frames.
            window: frames per window (default and at most the model's training length ``W``).
            overlap: known frames each window after the first starts with (default ``W // 4``).
            frame_stride: source frames per clip frame, for a model conditioned on it.

        Returns:
            ``(video, raw)``, each ``(samples, C, T, H, W)`` in ``[-1, 1]`` on the 8-bit grid
            (between windows the clip is held as uint8 levels, so memory grows by a few bytes
            a pixel of length): ``video`` has the known pixels pasted back; ``raw`` is the
            model's own output everywhere.
        """
        video, raw = self._fill(known, mask, prompt, samples=samples, seed=seed, steps=steps, sampler=sampler,
                                guidance=guidance, negative_prompt=negative_prompt, method=method,
                                guidance_weight=guidance_weight, known_noise=known_noise,
                                prompt_schedule=prompt_schedule, window=window, overlap=overlap,
                                frame_stride=frame_stride, progress=progress, callback=callback)
        return from_levels(video), from_levels(raw)

    @torch.no_grad()
    def _fill(self, known: Tensor, mask: Tensor, prompt: Optional[str], *, samples: int, seed: int,
              steps: Optional[int], sampler: Optional[str], guidance: Optional[float],
              negative_prompt: Optional[str], method: Optional[str], guidance_weight: float,
              known_noise: float, prompt_schedule, window: Optional[int], overlap: Optional[int],
              frame_stride: Optional[float], progress: bool, callback, keep_raw: bool = True,
              own: bool = False) -> tuple[Tensor, Optional[Tensor]]:
        """:meth:`fill` on 8-bit levels: ``(video, raw)`` uint8 ``(samples, C, T, H, W)``, what
        the tasks turn into videos without a float copy of the whole clip. ``keep_raw=False``
        returns no raw output (None) and does not hold one; ``own=True`` lets a single sample
        be generated in place in ``known`` (uint8) and ``mask`` (bool), the caller's own
        buffers, so a long clip is held once."""
        method = self.check_method(method)
        # known frames entering the network: its unconditional branch is no guide
        if guidance is None and method == "mask":
            guidance = self.sample_defaults.known_guidance
        steps, sampler, guidance = self.sampling(steps, sampler, guidance)
        C, T, H, W = known.shape
        if mask.shape != (1, T, H, W):
            raise ValueError(f"mask must have shape (1, T, H, W) = {(1, T, H, W)} for known {tuple(known.shape)}, "
                             f"got {tuple(mask.shape)}")
        if C != self.channels:
            raise ValueError(f"known clip has {C} channels; this model makes {self.channels}")
        if mask.min() >= 0.5:
            raise ValueError("the mask marks every pixel known: there is nothing to generate")
        if not 0.0 <= known_noise < 1.0:
            raise ValueError(f"known noise must be in [0, 1), got {known_noise!r}")
        schedule = list(prompt_schedule or [])
        window = self.frames if window is None else min(int(window), self.frames)
        group = self.vae.temporal_factor if self.vae is not None else 1
        if T <= window and group > 1:
            self.vae.latent_shape(T, H, W)        # one window: a count off the 1 + tf*k grid names the nearest
        window = 1 + group * ((window - 1) // group)
        if overlap is None:   # a quarter window (whole latent groups for a latent model)
            overlap = 1 + group * round((max(1, window // 4) - 1) / group)
        overlap = int(overlap)
        if not 0 < overlap < window:
            raise ValueError(f"overlap must be between 1 and {window - 1} frames (the window is {window}), got {overlap}")
        if (overlap - 1) % group:
            raise ValueError(f"a latent model's windows overlap by whole latent groups, 1 + {group}k frames "
                             f"(1, {1 + group}, {1 + 2 * group}, ...); got {overlap}")
        self.clip_shape(min(T, window), H, W)                        # refuse sizes the network cannot take
        # The clip is held as 8-bit levels and the mask as bools, a quarter of float32's memory
        # for the part that grows with the length (each window converts only its own frames).
        levels, bools = _levels_and_bools(known, mask)
        in_place = own and samples == 1 and levels is known and bools is mask
        known = levels.unsqueeze(0).expand(samples, -1, -1, -1, -1)                  # (S, C, T, H, W) uint8
        have = bools.unsqueeze(0).expand(samples, -1, -1, -1, -1)                     # (S, 1, T, H, W) bool
        if not in_place:
            known, have = known.clone(), have.clone()
        del levels, bools          # a converted copy is not held beside the working buffers
        raw = torch.zeros_like(known) if keep_raw else None
        covered = torch.zeros(T, dtype=torch.bool)
        changes = [f for f, _ in schedule if f > 0]
        streams, decoded_to = None, 0   # a latent model's decoder caches (one a sample) and the frame they reach
        for j, (start, end) in enumerate(self._windows(have[0], window, overlap, changes, group)):
            text = prompt_at(schedule, int(torch.nonzero(~_frame_known(have[0, :, start:end]))[0]) + start, prompt)
            carried = 0
            if self.vae is not None:
                # A window that starts inside what the last one decoded, on whole latent groups,
                # continues that decoder stream: its new latents follow the ones decoded last.
                if streams is not None and start < decoded_to < end and (decoded_to - start - 1) % group == 0:
                    carried = decoded_to - start
                else:
                    streams = [{} for _ in range(samples)]
            part = self._fill_window(from_levels(known[:, :, start:end]), have[:, :, start:end].float(), text,
                                     [seed + k + j * WINDOW_SEED_STEP for k in range(samples)],
                                     steps=steps, sampler=sampler, guidance=guidance,
                                     negative_prompt=negative_prompt, method=method,
                                     guidance_weight=guidance_weight, known_noise=known_noise,
                                     frame_stride=frame_stride, progress=progress, callback=callback,
                                     streams=streams, carried=carried)
            decoded_to = end
            if callback is not None:
                callback({"window": j, "frames": (start, end), "prompt": text})
            part = to_levels(part)                                                  # (S, C, t, H, W) uint8
            if raw is not None:
                fresh = ~covered[start:end]
                raw[:, :, start:end][:, :, fresh] = part[:, :, fresh]
                covered[start:end] = True
            known[:, :, start:end] = torch.where(have[:, :, start:end], known[:, :, start:end], part)
            have[:, :, start:end] = True
        return known, raw

    def _windows(self, mask: Tensor, window: int, overlap: int, changes: Sequence[int], group: int = 1):
        """Yield ``(start, end)`` frame ranges until every frame is known; ``mask (1, T, H, W)``
        is updated by the caller between yields. With ``group > 1`` (a latent model) every
        range is ``1 + group k`` frames long."""
        T = mask.shape[1]
        while True:
            unknown = torch.nonzero(~_frame_known(mask))
            if len(unknown) == 0:
                return
            first = int(unknown[0])
            start = first if first in changes else max(0, min(first - overlap, T - window))
            end = min(start + window, T)
            end = min([end] + [c for c in changes if first < c < end])      # stop before a prompt change
            if (end - start - 1) % group:   # a latent model: whole groups, shorter if that leaves
                short = start + 1 + group * ((end - start - 1) // group)   # frames to make, else longer
                if short > first:
                    end = short
                else:
                    length = 1 + group * -(-(end - start - 1) // group)
                    end = min(start + length, T)
                    start = end - length
            yield start, end

    def _fill_window(self, known: Tensor, mask: Tensor, prompt: Optional[str], seeds: list[int], *,
                     steps: int, sampler: str, guidance: float, negative_prompt: Optional[str],
                     method: str, guidance_weight: float, known_noise: float,
                     frame_stride: Optional[float], progress: bool, callback,
                     streams: Optional[list] = None, carried: int = 0) -> Tensor:
        """One window: ``known (S, C, t, H, W)``, ``mask (S, 1, t, H, W)`` -> ``(S, C, t, H, W)``.

        A latent model decodes through ``streams`` (one decoder cache per sample, carried from
        window to window); the first ``carried`` frames were decoded by the window before (they
        are known here and come back as given), and the latents after them continue its stream.
        """
        S, _, t, H, W = known.shape
        cond, negative = self._prompt_conditioning(prompt, negative_prompt, S)
        units, units_mask = self._to_units(known, mask)
        if known_noise > 0:      # each sample's own stream (its seed's), as for its initial noise
            eps = torch.stack([torch.randn(units.shape[1:], generator=torch.Generator().manual_seed(s + KNOWN_NOISE_SEED))
                               for s in seeds])
            units = self.schedule.add_noise(units, eps, torch.full((S,), known_noise))
        parts = dict(known=units.to(self.device), mask=units_mask.to(self.device),
                     known_noise=torch.full((S,), float(known_noise), device=self.device))
        if frame_stride is not None:
            parts["frame_stride"] = torch.full((S,), float(frame_stride), device=self.device)
        cond = (cond or Conditioning()).replace(**parts)
        x0 = self._run(cond, self.clip_shape(t, H, W), seeds, progress, callback, steps=steps,
                       sampler=sampler, guidance=guidance if prompt is not None else 1.0,
                       negative=negative, method=method, guidance_weight=guidance_weight)
        if self.vae is None:
            return x0.float().cpu()
        z = self.vae.unscale(x0.float())                                     # (S, Cz, t', h, w)
        skip = 1 + (carried - 1) // self.vae.temporal_factor if carried else 0   # latents of the carried frames
        # Two latent frames at a time, as decode does: memory stays one piece's.
        new = torch.cat([torch.cat([self.vae.decode_continue(z[k:k + 1, :, a:a + 2], streams[k]).cpu()
                                    for a in range(skip, z.shape[2], 2)], 2) for k in range(S)])
        return torch.cat([known[:, :, :carried], new.clamp(-1, 1)], 2)        # (S, C, t, H, W)

    def _prompt_conditioning(self, prompt: Optional[str], negative_prompt: Optional[str], rows: int):
        if prompt is not None and self.text_encoder is None:
            raise ValueError("this model is unconditional: use it without a prompt")
        if prompt is None or self.text_encoder is None:
            return None, None
        negative = self.encode([negative_prompt]) if negative_prompt is not None else None
        return self.encode([prompt] * rows), negative

    def _to_units(self, known: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Known pixels and mask in the sampler's units: latents and the latent mask
        (:func:`~vidiff.diffusion.masks.latent_mask`) for a latent model."""
        if self.vae is None:
            return known, mask
        z = self.vae.to_latent(known.to(self.device))
        return z.cpu(), latent_mask(mask, self.vae.temporal_factor, self.vae.spatial_factor, causal=True)

    def _videos(self, clips: Tensor, fps: Optional[float] = None) -> list[Video]:
        """uint8 levels ``(S, C, T, H, W)`` as ``S`` videos."""
        return [Video(c.permute(1, 2, 3, 0).contiguous().numpy(), fps=fps or self.fps) for c in clips]

    # ------------------------------------------------------------------ tasks
    def animate(self, image: Clip, prompt: Optional[str] = None, num_frames: Optional[int] = None,
                frame_index: int = 0, samples: int = 1, **options):
        """Image to video: ``image`` (a one-frame :class:`Video` or a uint8 ``(H, W, 3)`` array,
        at the model's frame size) becomes frame ``frame_index`` of a ``num_frames`` clip.
        ``options`` go to :meth:`fill`. Returns a Video (a list for ``samples > 1``)."""
        frame = clip_tensor(image, "image")
        if frame.shape[1] != 1:
            raise ValueError(f"image must be one frame, got {frame.shape[1]}")
        T = self.frames if num_frames is None else int(num_frames)
        if not 0 <= frame_index < T:
            raise ValueError(f"frame index {frame_index} is outside the clip's frames 0..{T - 1}")
        self._check_frame_size(frame)
        known = torch.zeros(3, T, frame.shape[2], frame.shape[3])
        known[:, frame_index] = frame[:, 0]
        video, _ = self._task(known, frames_mask(T, frame.shape[2], frame.shape[3], [frame_index]),
                              prompt, samples=samples, **options)
        return self._one_or_list(self._videos(video))

    def predict(self, video: Clip, context: int, num_frames: int, prompt: Optional[str] = None,
                samples: int = 1, **options):
        """Forecast: the last ``context`` frames of ``video`` become frames ``0..context-1`` of a
        ``num_frames`` clip; the rest is generated (``samples`` different futures)."""
        clip = clip_tensor(video)
        if not 1 <= context <= clip.shape[1]:
            raise ValueError(f"context must be 1..{clip.shape[1]} (the video's frames), got {context}")
        if context >= self.frames:
            raise ValueError(f"context of {context} frames is not shorter than the model's window of "
                             f"{self.frames}: it leaves nothing to generate in a window")
        if num_frames <= context:
            raise ValueError(f"frames ({num_frames}) must exceed the context ({context}): nothing to generate")
        self._check_frame_size(clip)
        known = torch.zeros(3, num_frames, clip.shape[2], clip.shape[3], dtype=torch.uint8)
        known[:, :context] = to_levels(clip[:, -context:])
        videos, _ = self._task(known, frames_mask(num_frames, clip.shape[2], clip.shape[3], range(context)) >= 0.5,
                               prompt, samples=samples, **options)
        return self._one_or_list(self._videos(videos, _fps(video, self.fps)))

    def interpolate(self, video: Clip, factor: int, prompt: Optional[str] = None, **options) -> Video:
        """``factor - 1`` frames between each pair of ``video``'s frames: ``(T - 1) factor + 1``
        frames at ``factor`` times the frame rate, the given frames unchanged at every
        ``factor``-th position. Windows hold as many keyframes as fit the model's window and
        share one keyframe with the next.

        A model conditioned on frame stride (a temporal-interpolation stage) is told the
        output's rate: ``frame_stride=1 / factor`` by default, the input being at the rate the
        model counts as 1 (its training data's); pass ``frame_stride`` to say otherwise."""
        clip = clip_tensor(video)
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
            raise ValueError(f"factor must be an integer >= 2, got {factor!r}")
        if factor >= self.frames:
            raise ValueError(f"factor {factor} leaves no two keyframes in the model's window of "
                             f"{self.frames} frames; the largest factor is {self.frames - 1}")
        if clip.shape[1] < 2:
            raise ValueError("interpolation needs a video of at least 2 frames")
        self._check_frame_size(clip)
        T_out = (clip.shape[1] - 1) * factor + 1
        known = torch.zeros(3, T_out, clip.shape[2], clip.shape[3])
        known[:, ::factor] = clip
        mask = frames_mask(T_out, clip.shape[2], clip.shape[3], range(0, T_out, factor))
        if getattr(getattr(self.network, "config", None), "frame_stride", False):
            options.setdefault("frame_stride", 1.0 / factor)
        gaps = (self.frames - 1) // factor            # keyframe gaps per window
        # Windows end on a keyframe, and the next one starts on it.
        out, _ = self._task(known, mask, prompt, window=gaps * factor + 1, overlap=1, **options)
        return self._videos(out[:1], fps=_fps(video, self.fps) * factor)[0]

    def inpaint(self, video: Clip, prompt: Optional[str] = None, mask: Optional[Clip] = None,
                box: Optional[Sequence[int]] = None, frame_range: Optional[Sequence[int]] = None,
                samples: int = 1, **options):
        """Regenerate a region: ``mask`` (white = regenerate; one image for every frame or one
        per frame) or ``box`` ``x0, y0, x1, y1`` (pixels, exclusive ends) over ``frame_range``."""
        clip = clip_tensor(video)
        self._check_frame_size(clip)
        _, T, H, W = clip.shape
        if (mask is None) == (box is None):
            raise ValueError("inpaint takes exactly one of a mask and a box")
        if box is not None:
            known_mask = box_mask(T, H, W, box, frame_range)
        else:
            regen = (clip_tensor(mask, "mask").mean(dim=0, keepdim=True) > 0)        # (1, t, h, w), white > mid-grey
            if regen.shape[2:] != (H, W) or regen.shape[1] not in (1, T):
                raise ValueError(f"mask must be {W}x{H} with 1 or {T} frames (the video's), "
                                 f"got {regen.shape[3]}x{regen.shape[2]} with {regen.shape[1]}")
            if not regen.any() or regen.all():
                raise ValueError("the mask is all black (nothing to regenerate) or all white "
                                 "(nothing kept): white marks the pixels to regenerate")
            known_mask = (~regen).float().expand(1, T, H, W).clone()
        videos, _ = self._task(clip, known_mask, prompt, samples=samples, **options)
        return self._one_or_list(self._videos(videos, _fps(video, self.fps)))

    def outpaint(self, video: Clip, pad: dict, prompt: Optional[str] = None, samples: int = 1, **options):
        """Grow the frame by ``pad`` (``left``, ``right``, ``top``, ``bottom`` pixels); the
        original pixels keep their place in the bigger frame."""
        clip = clip_tensor(video)
        unknown = set(pad) - {"left", "right", "top", "bottom"}
        if unknown:
            raise ValueError(f"pad sides must be left, right, top, bottom; got {sorted(unknown)}")
        sides = {k: int(pad.get(k, 0)) for k in ("left", "right", "top", "bottom")}
        if min(sides.values()) < 0 or not any(sides.values()):
            raise ValueError(f"pad must be >= 0 on every side and > 0 on one, got {sides}")
        _, T, H, W = clip.shape
        H2, W2 = H + sides["top"] + sides["bottom"], W + sides["left"] + sides["right"]
        try:
            self.clip_shape(min(T, self.frames), H2, W2)
        except ValueError as e:
            raise ValueError(f"the padded frame {W2}x{H2} does not fit the model ({e}); "
                             "choose pads that give a size it accepts") from None
        known = torch.zeros(3, T, H2, W2)
        known[:, :, sides["top"]:sides["top"] + H, sides["left"]:sides["left"] + W] = clip
        videos, _ = self._task(known, border_mask(T, H2, W2, **sides), prompt, samples=samples, **options)
        return self._one_or_list(self._videos(videos, _fps(video, self.fps)))

    def extend(self, video: Clip, num_frames: int, prompt: Optional[str] = None, samples: int = 1,
               scheme: str = "autoregressive", stride: int = 4, **options):
        """Continue ``video`` to ``num_frames`` frames (its own frames first, unchanged)."""
        clip = clip_tensor(video)
        if num_frames <= clip.shape[1]:
            raise ValueError(f"frames ({num_frames}) must exceed the video's {clip.shape[1]} frames")
        self._check_frame_size(clip)
        known = torch.zeros(3, num_frames, clip.shape[2], clip.shape[3], dtype=torch.uint8)
        known[:, :clip.shape[1]] = to_levels(clip)
        mask = frames_mask(num_frames, clip.shape[2], clip.shape[3], range(clip.shape[1])) >= 0.5
        videos = self.long(known, mask, prompt, samples=samples, scheme=scheme, stride=stride, **options)
        return self._one_or_list(self._videos(videos, _fps(video, self.fps)))

    def long(self, known: Tensor, mask: Tensor, prompt: Optional[str], scheme: str = "autoregressive",
             stride: int = 4, **options) -> Tensor:
        """:meth:`fill` by a long-video ``scheme``: ``"autoregressive"`` (sliding windows) or
        ``"hierarchical"`` (every ``stride``-th frame first, as a clip at ``stride`` times
        the frame stride, then the frames between). Returns uint8 levels ``(S, C, T, H, W)``."""
        if scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {scheme!r}; accepted: {list(SCHEMES)}")
        if scheme == "hierarchical":
            if not getattr(getattr(self.network, "config", None), "frame_stride", False):
                raise ValueError("the hierarchical scheme samples keyframes at a lower frame rate, which "
                                 "needs a model conditioned on frame stride (frame_stride: true); "
                                 "this one is not: use --scheme autoregressive")
            if isinstance(stride, bool) or not isinstance(stride, int) or stride < 2:
                raise ValueError(f"keyframe stride must be an integer >= 2, got {stride!r}")
            if options.get("prompt_schedule"):
                raise ValueError("a prompt schedule needs --scheme autoregressive")
            known, mask = _levels_and_bools(known, mask)
            keys, _ = self._task(known[:, ::stride], mask[:, ::stride], prompt, frame_stride=float(stride),
                                 **options)
            samples = keys.shape[0]
            filled = []
            for k in range(samples):                 # each sample's keyframes are its own known frames
                key_known = known.clone()
                key_known[:, ::stride] = keys[k]
                key_mask = mask.clone()
                key_mask[:, ::stride] = True
                one = dict(options, samples=1, seed=options.get("seed", 0) + k)
                if key_mask.all():
                    filled.append(key_known[None])
                    continue
                filled.append(self._task(key_known, key_mask, prompt, **one)[0])
            return torch.cat(filled)
        return self._task(known, mask, prompt, keep_raw=False, own=True, **options)[0]

    def _task(self, known: Tensor, mask: Tensor, prompt: Optional[str], **options) -> tuple[Tensor, Optional[Tensor]]:
        """:meth:`_fill` with :meth:`fill`'s defaults for the options not given."""
        return self._fill(known, mask, prompt, **{**FILL_DEFAULTS, **options})

    # ------------------------------------------------------------------ helpers
    def _check_frame_size(self, clip: Tensor) -> None:
        """Input frames must be the model's training size: refused, not resized, because a
        resize would silently change the content the task is asked to keep (outpainting, which
        makes a bigger frame on purpose, checks the padded size instead)."""
        if (clip.shape[2], clip.shape[3]) != (self.height, self.width):
            raise ValueError(f"frames of {clip.shape[3]}x{clip.shape[2]} do not fit this model: it takes "
                             f"{self.width}x{self.height} (resize the input to that size)")

    @staticmethod
    def _one_or_list(videos: list[Video], single: bool = True):
        """One :class:`Video` when one was asked for (one input, one sample), else the list."""
        return videos[0] if single and len(videos) == 1 else videos


# fill's keyword defaults, read from its signature so the task methods share the one source.
FILL_DEFAULTS = {name: p.default for name, p in inspect.signature(FrameTasks.fill).parameters.items()
                 if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _fps(video: Clip, default: float) -> float:
    return video.fps if isinstance(video, Video) else default
