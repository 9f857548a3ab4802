"""Samples written while and after a model trains: a grid video per checkpoint.

Given to :func:`vidiff.train.run.train` as its ``sample_writer``: sampling needs the
pipelines, which sit above training, so training calls it without importing it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from vidiff.checkpoint import resolve_checkpoint, write_file_atomic
from vidiff.compose import RunConfig, load_autoencoder, load_controlnet
from vidiff.data import collate
from vidiff.data.common import box_downsample
from vidiff.data.shapes import caption
from vidiff.pipelines.autoencoder import reconstruction_grid
from vidiff.pipelines.control import maps_video
from vidiff.pipelines.video import load
from vidiff.video import DEFAULT_FPS, Video


def default_prompts(run: RunConfig, trainer, count: int = 4) -> list[str]:
    """``sample.prompts``, else the run's held-out triples, then its dataset's first captions."""
    if run.sample.prompts:
        return list(run.sample.prompts)
    held_out = run.data.held_out         # a latent cache's run names its source's too
    prompts = [caption(*triple) for triple in held_out][:count]
    i = 0
    while len(prompts) < count and i < 64:
        text = trainer.dataset[i]["caption"]
        if text and text not in prompts:
            prompts.append(text)
        i += 1
    return prompts


def write_samples(run: RunConfig, trainer) -> Optional[Path]:
    """Sample the newest checkpoint (EMA weights) and write a grid video ``samples/step_N.mp4``
    by the run kind's writer (:data:`SAMPLE_WRITERS`); None for a kind without one."""
    writer = SAMPLE_WRITERS.get(run.kind)
    if writer is None:
        return None
    out = Path(run.train.out_dir) / "samples" / f"step_{trainer.step:07d}.mp4"
    writer(run, trainer, resolve_checkpoint(run.train.out_dir), out)
    return out


def denoiser_samples(run: RunConfig, trainer, checkpoint: Path, out: Path) -> None:
    """Generated clips of :func:`default_prompts` (unconditional: seeds 0-3), one grid, with the
    prompts beside it in ``out.txt``."""
    pipe = load(checkpoint)
    s = run.sample
    if pipe.text_encoder is None:
        prompts = [None] * 4
        videos = [pipe.generate(None, steps=s.steps, seed=k, sampler=s.sampler) for k in range(4)]
    else:
        prompts = default_prompts(run, trainer)
        videos = pipe.generate(prompts, num_frames=s.frames, steps=s.steps,
                               guidance=s.guidance, sampler=s.sampler, seed=0)
    Video.grid(videos, cols=min(4, len(videos))).save(out)
    write_file_atomic(out.with_suffix(".txt"),
                      lambda tmp: tmp.write_text("\n".join(p or "" for p in prompts) + "\n"))


def autoencoder_samples(run: RunConfig, trainer, checkpoint: Path, out: Path) -> None:
    """The last four clips of the dataset beside their reconstructions."""
    vae = load_autoencoder(checkpoint)
    held = [trainer.dataset[len(trainer.dataset) - 1 - i] for i in range(4)]
    reconstruction_grid(vae, collate(held)["video"], fps=getattr(trainer.dataset, "fps", DEFAULT_FPS)).save(out)


def controlnet_samples(run: RunConfig, trainer, checkpoint: Path, out: Path) -> None:
    """The maps of the dataset's last four clips (top row) and the base's videos generated to
    follow them with their own captions (bottom row)."""
    pipe, controlnet = load(run.base), load_controlnet(checkpoint)
    items = [trainer.dataset[len(trainer.dataset) - 1 - i] for i in range(4)]
    s, maps_row, videos = run.sample, [], []
    for item in items:
        maps = pipe.control_maps(item["video"], controlnet.config.control, run.extractor,
                                 controlnet.config.control_channels)
        maps_row.append(maps_video(maps, fps=pipe.fps))
        videos.append(pipe.generate(item["caption"] or None, control=maps, controlnet=controlnet, steps=s.steps,
                                    guidance=s.guidance, sampler=s.sampler, seed=0))
    Video.grid(maps_row + videos, cols=4).save(out)
    write_file_atomic(out.with_suffix(".txt"),
                      lambda tmp: tmp.write_text("\n".join(i["caption"] or "" for i in items) + "\n"))


def upscale_samples(run: RunConfig, trainer, checkpoint: Path, out: Path) -> None:
    """The dataset's last four clips: their box-downsampled inputs (top row, pixels repeated to
    the output size), the stage's upscaled videos (middle; a text-conditioned stage reads each
    clip's caption) and the clips themselves (bottom)."""
    pipe = load(checkpoint)
    items = [trainer.dataset[len(trainer.dataset) - 1 - i] for i in range(4)]
    s, scale = run.sample, run.upscale.scale
    inputs, outputs, truths = [], [], []
    for item in items:
        low = box_downsample(item["video"], scale)                                  # (3, T, h, w)
        inputs.append(Video.from_tensor(low.repeat_interleave(scale, 2).repeat_interleave(scale, 3), fps=pipe.fps))
        outputs.append(pipe.upscale(low, steps=s.steps, sampler=s.sampler, seed=0,
                                    prompt=pipe.prompt_for(item["caption"])))
        truths.append(Video.from_tensor(item["video"], fps=pipe.fps))
    Video.grid(inputs + outputs + truths, cols=4).save(out)


# One writer per run kind (vidiff.train.kinds.RUN_KINDS); a kind without one writes no samples.
SAMPLE_WRITERS = {"denoiser": denoiser_samples, "autoencoder": autoencoder_samples,
                  "controlnet": controlnet_samples, "upscale": upscale_samples}
