"""Latent video diffusion end to end: train an autoencoder, reconstruct, cache latents, train
a latent denoiser on the cache and on the fly, generate through the decoder."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import vidiff
from vidiff.cli import main
from vidiff.config import ConfigError
from vidiff.data import DEMO_HELD_OUT, build_dataset, collate
from vidiff.data.common import DatasetError
from vidiff.data.latents import LatentCache
from vidiff.compose import load_autoencoder
from vidiff.pipelines.autoencoder import psnr_ssim, reconstruct
from vidiff.checkpoint import resolve_checkpoint
from vidiff.train.config import load_run_config
from vidiff.pipelines.samples import write_samples
from vidiff.pipelines.shipped import SHIPPED_DIR_ENV, ship
from vidiff.train.run import build_trainer, train

DATA = {"name": "shapes", "frames": 5, "size": 16, "held_out": "demo"}
VAE_RUN = {
    "kind": "autoencoder",
    "model": {"size": "vae-tiny"},
    "data": {**DATA, "length": 24},
    "autoencoder": {"kl_weight": 1e-4, "gan_weight": 0.1, "gan_start": 3, "temporal_weight": 0.5,
                    "scaling_batches": 2},
    "train": {"steps": 6, "batch_size": 4, "lr": 2e-3, "warmup_steps": 0, "checkpoint_every": 3,
              "ema_decay": 0.9, "log_every": 3},
}
LATENT_RUN = {
    "model": {"size": "unet-tiny"},
    "data": {**DATA, "length": 8},
    "text": {"dim": 32, "depth": 1, "heads": 2},
    "train": {"steps": 4, "batch_size": 4, "lr": 1e-3, "warmup_steps": 0, "checkpoint_every": 4,
              "ema_decay": 0.0, "log_every": 2},
    "sample": {"steps": 2},
}


def weights(path, ema=False):
    return load_file(str(resolve_checkpoint(path) / ("ema.safetensors" if ema else "model.safetensors")))


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("vae")
    run = load_run_config(None, [f"train.out_dir={out}"], base=VAE_RUN)
    train(run, progress=False, sample_writer=write_samples)
    return out


def test_autoencoder_run_writes_a_scaled_checkpoint_and_samples(vae_dir):
    config = json.loads((resolve_checkpoint(vae_dir) / "config.json").read_text())
    assert config["kind"] == "autoencoder" and config["step"] == 6
    stored = weights(vae_dir)
    assert any(k.startswith("discriminator.") for k in stored)      # the GAN part trained too
    assert (vae_dir / "samples" / "step_0000006.mp4").is_file()     # inputs beside reconstructions
    # the stored shift and scale give zero-mean, unit-variance latents on the data they came from
    vae = load_autoencoder(vae_dir)
    dataset = build_dataset(load_run_config(None, [], base=VAE_RUN).data)
    clips = collate([dataset[i] for i in range(8)])["video"]
    z = vae.to_latent(clips).double()
    assert abs(z.mean().item()) < 1e-4 and abs(z.std(unbiased=False).item() - 1) < 1e-4


def test_autoencoder_resume_equals_uninterrupted(tmp_path):
    def run(name, *extra):
        return load_run_config(None, [f"train.out_dir={tmp_path / name}", *extra], base=VAE_RUN)
    build_trainer(run("a"), progress=False).fit()
    interrupted = build_trainer(run("b"), progress=False)
    interrupted.fit(until=4)                                     # past disc_start: both models train
    build_trainer(run("b"), resume=str(tmp_path / "b"), progress=False).fit()
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_reconstruct_any_length_and_size(vae_dir, tmp_path):
    rng = np.random.default_rng(0)
    frames = np.zeros((7, 18, 22, 3), np.uint8)                  # 7 frames: not 1 + 4k; 18x22: not /4
    frames[:, 4:12, 6:14] = rng.integers(0, 255, 3, dtype=np.uint8)
    vidiff.Video(frames, fps=10).save(tmp_path / "in")           # PNG folder: lossless
    report = tmp_path / "report.json"
    assert main(["reconstruct", str(tmp_path / "in"), "--vae", str(vae_dir), "--out",
                 str(tmp_path / "rec"), "--json", str(report)]) == 0
    rebuilt = vidiff.Video.load(tmp_path / "rec")
    assert rebuilt.frames.shape == frames.shape and rebuilt.fps == 10
    psnr, ssim = psnr_ssim(frames, rebuilt.frames)              # what was written is what was scored
    data = json.loads(report.read_text())
    assert data["psnr_db"] == pytest.approx(psnr) and data["ssim"] == pytest.approx(ssim)
    # chunking is exact: one chunk or many give the same frames
    vae = load_autoencoder(vae_dir)
    video = vidiff.Video(frames, fps=10)
    assert np.array_equal(reconstruct(vae, video, chunk=1)[0].frames, reconstruct(vae, video, chunk=8)[0].frames)


def test_latent_cache_round_trip_and_training_matches_on_the_fly(vae_dir, tmp_path):
    cache = tmp_path / "cache"
    assert main(["cache-latents", "shapes", "--vae", str(vae_dir), "--out", str(cache), "--shard-size", "3",
                 "length=8", "held_out=demo"]) == 0
    dataset = LatentCache(cache)
    source = build_dataset(load_run_config(None, [], base=LATENT_RUN).data)
    vae = load_autoencoder(vae_dir)
    for i in (0, 4, 7):                                          # shards of 3: items cross shard borders
        item = dataset[i]
        expected = vae.to_latent(source[i]["video"][None])[0]
        assert torch.allclose(item["latents"], expected, atol=1e-5) and item["caption"] == source[i]["caption"]

    def run(name, *extra):
        return load_run_config(None, [f"train.out_dir={tmp_path / name}", f"model.vae={vae_dir}", *extra],
                               base=LATENT_RUN)
    fly = build_trainer(run("fly"), progress=False)
    fly.fit()
    cached = build_trainer(run("cached", f"data.name={cache}"), progress=False)
    cached.fit()
    assert cached.dataset.cached_text                           # token ids came from the cache
    with pytest.raises(ConfigError, match=r"holding out 4: set data.held_out=demo"):
        build_trainer(run("other", f"data.name={cache}", "data.held_out=none"), progress=False)
    a, b = weights(tmp_path / "fly"), weights(tmp_path / "cached")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=1e-4, atol=1e-6), key
    # the latent model carries its autoencoder and generates pixels
    pipe = vidiff.load(tmp_path / "cached")
    assert pipe.vae is not None
    # the run records what its cache's source held out, so the model's eval scores them apart
    assert sorted(map(tuple, pipe.run_config.data.held_out)) == sorted(DEMO_HELD_OUT)
    video = pipe.generate("a red circle moving right", steps=2, seed=0)
    assert video.frames.shape == (5, 16, 16, 3)


def test_latent_cache_bad_input(vae_dir, tmp_path):
    cache = tmp_path / "cache"
    assert main(["cache-latents", "shapes", "--vae", str(vae_dir), "--out", str(cache), "--shard-size", "2",
                 "length=4"]) == 0
    with pytest.raises(DatasetError, match="another autoencoder|not by this run"):
        LatentCache(cache, vae="0" * 16)
    shard = cache / "shard_00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF                                             # flip bits in the tensor data
    shard.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match="shard_00001.safetensors"):
        LatentCache(cache)[3]
    shard.unlink()
    with pytest.raises(DatasetError, match="shard_00001.safetensors"):
        LatentCache(cache)
    # a clip length the temporal compression cannot take is refused with the accepted lengths
    assert main(["cache-latents", "shapes", "--vae", str(vae_dir), "--out", str(tmp_path / "bad"),
                 "length=4", "frames=6"]) == 2
    assert not (tmp_path / "bad" / "index.json").exists()


def test_autoencoder_ddp_matches_single_process(tmp_path):
    """Two processes (gloo) train the autoencoder and its discriminator as one does: the
    generator term's frozen-discriminator trick and the zero-weighted discriminator loss
    before gan_start keep DDP's gradient bookkeeping whole. The adaptive GAN weight depends on
    each process's own batch, so it is off here."""
    import os
    import subprocess
    import sys
    import yaml
    from test_train import assert_close_per_tensor
    config = tmp_path / "vae.yaml"
    config.write_text(yaml.safe_dump(VAE_RUN))
    extra = ["autoencoder.adaptive_weight=false", "train.steps=5"]
    out = subprocess.run([sys.executable, "-m", "vidiff", "train", str(config), "--nproc", "2", "--no-samples",
                          f"train.out_dir={tmp_path / 'ddp'}", *extra],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    single = build_trainer(load_run_config(None, [f"train.out_dir={tmp_path / 'single'}", *extra], base=VAE_RUN),
                           progress=False)
    single.fit()
    # All but one tensor agree to 3e-6; one discriminator GroupNorm bias, whose gradient is a
    # near-cancelling sum, differs by ~1e-4 after Adam divides by it (see assert_close_per_tensor).
    # A process-local discriminator or a generator gradient leaking into it differs by O(1).
    assert_close_per_tensor(weights(tmp_path / "ddp"), weights(tmp_path / "single"), rtol=1e-3,
                            tensor_rtol=1e-3)


def test_latent_and_autoencoder_runs_default_to_17_frames(caplog):
    with caplog.at_level("WARNING", logger="vidiff"):
        assert load_run_config(None, ["kind=autoencoder", "model.size=vae-s"]).data.frames == 17
        assert load_run_config(None, ["model.vae=somewhere"]).data.frames == 17
    # the implicit choice is said, once per run that takes it
    notes = [r.getMessage() for r in caplog.records if "17-frame" in r.getMessage()]
    assert len(notes) == 2 and "autoencoder" in notes[0] and "latent" in notes[1]
    caplog.clear()
    with caplog.at_level("WARNING", logger="vidiff"):
        assert load_run_config(None, ["model.vae=somewhere", "data.frames=9"]).data.frames == 9
        assert load_run_config(None, []).data.frames == 16                 # a pixel denoiser: no switch
    assert not caplog.records
    assert load_run_config(None, []).data.frames == 16


def test_latent_generate_decodes_unscaled_latents(vae_dir, tmp_path):
    # Regression: generate() decoded the diffusion latents without undoing scaling/shift.
    run = load_run_config(None, [f"train.out_dir={tmp_path / 'lat'}", f"model.vae={vae_dir}"], base=LATENT_RUN)
    build_trainer(run, progress=False).fit()
    pipe = vidiff.load(tmp_path / "lat")
    # A scale far from 1 and a shift far from 0, so decoding the scaled latents directly is visibly wrong.
    pipe.vae.config.scaling_factor, pipe.vae.config.shift_factor = 3.0, 0.4
    prompt = "a red circle moving right"
    z = pipe.sample(pipe.encode([prompt]), pipe.clip_shape(), seeds=[0], steps=2)   # (1, Cz, t, h, w)
    frames = pipe.generate(prompt, steps=2, seed=0).frames.astype(int)
    with torch.no_grad():
        expected = vidiff.Video.from_tensor(pipe.vae.from_latent(z)[0]).frames.astype(int)
        wrong = pipe.vae.decode_to_uint8(z[0], chunk=2).astype(int)
    # chunked decoding against one pass: equal up to float rounding (one 8-bit level)
    assert np.abs(frames - expected).max() <= 1
    assert np.abs(wrong - expected).mean() > 5 * max(np.abs(frames - expected).mean(), 0.05)


def test_a_latent_model_names_its_autoencoder(vae_dir, tmp_path, monkeypatch, capsys):
    """`--vae` given a latent model (its run, or its shipped name) uses the autoencoder the
    model carries: the reconstruction is the autoencoder run's own, bit for bit through the
    latent run, and up to float16 storage through the shipped copy."""
    run = load_run_config(None, [f"train.out_dir={tmp_path / 'lat'}", f"model.vae={vae_dir}", "train.ema_decay=0.9"],
                          base=LATENT_RUN)
    build_trainer(run, progress=False).fit()
    monkeypatch.setenv(SHIPPED_DIR_ENV, str(tmp_path / "shipped"))
    ship(tmp_path / "lat", "tiny-latent")
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
    vidiff.Video(frames, fps=10).save(tmp_path / "in")
    outputs = {}
    for name, vae in (("run", vae_dir), ("latent", tmp_path / "lat"), ("shipped", "tiny-latent")):
        assert main(["reconstruct", str(tmp_path / "in"), "--vae", str(vae), "--out", str(tmp_path / f"rec-{name}")]) == 0
        outputs[name] = vidiff.Video.load(tmp_path / f"rec-{name}").frames
    assert np.array_equal(outputs["run"], outputs["latent"])
    # the shipped copy stores the weights in float16: the same frames up to that rounding
    assert np.abs(outputs["run"].astype(int) - outputs["shipped"].astype(int)).max() <= 2
    capsys.readouterr()
    assert main(["reconstruct", str(tmp_path / "in"), "--vae", "no-such-model", "--out", str(tmp_path / "x")]) != 0
    err = capsys.readouterr().err
    assert "'no-such-model'" in err and "tiny-latent" in err and "Traceback" not in err


def test_a_latent_model_trains_on_the_task_mix_and_forecasts(vae_dir, tmp_path):
    """Masks are drawn on the latent grid in training; at sampling the pixel mask becomes the
    latent mask (latent frame 0 codes pixel frame 0 alone, so one known frame is one latent frame)."""
    run = load_run_config(None, [f"train.out_dir={tmp_path / 'tasks'}", f"model.vae={vae_dir}",
                                 "model.overrides.known_frames=true", "train.steps=2"], base=LATENT_RUN)
    train(run, progress=False)
    pipe = vidiff.load(tmp_path / "tasks")
    assert pipe.vae is not None and pipe.mask_trained
    video = vidiff.Video(np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8))
    out = pipe.predict(video, context=1, num_frames=5, steps=2)
    assert out.frames.shape == (5, 16, 16, 3) and np.array_equal(out.frames[0], video.frames[-1])
    # Longer than the 5-frame window: windows of whole latent groups, so the denoiser never
    # sees more than one window; the decoder gets each window's new latents only, its causal
    # cache carried from the window before, so the clip decodes as one stream.
    seen, decoded, sampled = [], [], []
    forward, decode, run = pipe.network.forward, pipe.vae.decode_continue, pipe._run
    pipe.network.forward = lambda x, *a, **k: (seen.append(x.shape[2]), forward(x, *a, **k))[1]
    pipe.vae.decode_continue = lambda z, *a, **k: (decoded.append(z.shape[-3]), decode(z, *a, **k))[1]
    pipe._run = lambda *a, **k: (lambda x0: (sampled.append(x0), x0)[1])(run(*a, **k))
    long = pipe.predict(video, context=1, num_frames=14, steps=2)
    assert long.frames.shape == (14, 16, 16, 3) and np.array_equal(long.frames[0], video.frames[-1])
    assert seen and max(seen) == 2                                        # 5 frames = 2 latent frames
    # Windows 0-5, 4-9, 8-13 and, to end on frame 14, 9-14: the first decodes its 2 latents,
    # the next two only their new one (continuing the stream); the last starts off the stream's
    # latent grid (frame 9 is inside a group) and decodes on its own.
    assert decoded == [2, 1, 1, 2]
    # The continued frames are what the decoder makes of the stream as a whole: the first
    # window's latents and each next window's new one, decoded in one pass.
    stream = torch.cat([sampled[0]] + [x0[:, :, 1:] for x0 in sampled[1:3]], 2)      # (1, Cz, 4, 4, 4)
    whole = pipe.vae.decode_to_uint8(pipe.vae.unscale(stream[0].float()), chunk=None)  # (13, H, W, 3)
    assert np.abs(long.frames[1:13].astype(int) - np.asarray(whole)[1:13].astype(int)).max() <= 1
    alone = np.asarray(pipe.vae.decode_to_uint8(pipe.vae.unscale(sampled[1][0].float()), chunk=None))
    assert np.abs(alone[1:5].astype(int) - long.frames[5:9].astype(int)).max() > 1   # what decoding alone gave
    # a prompt schedule on the latent grid: windows stay 1 + 4k frames, the switch lands on a group
    windows = []
    known, mask = torch.zeros(3, 13, 16, 16), torch.zeros(1, 13, 16, 16)
    pipe.fill(known, mask, "a red circle moving right", steps=1,
              prompt_schedule=[(0, "a red circle moving right"), (7, "a blue square moving up")],
              callback=lambda info: windows.append(info) if "window" in info else None)
    spans = [w["frames"] for w in windows]
    assert all((end - start - 1) % 4 == 0 and end - start <= 5 for start, end in spans)
    assert spans[0] == (0, 5) and spans[-1][1] == 13
    assert [w["prompt"] for w in windows][-1] == "a blue square moving up"
    with pytest.raises(ValueError, match=r"whole latent groups, 1 \+ 4k frames .*got 2"):
        pipe.predict(video, context=1, num_frames=14, steps=2, overlap=2)


def test_latent_model_refuses_frame_counts_and_a_mismatched_autoencoder(vae_dir, tmp_path, capsys):
    from vidiff.checkpoint import CheckpointError
    import shutil

    run = load_run_config(None, [f"train.out_dir={tmp_path / 'lat'}", f"model.vae={vae_dir}"], base=LATENT_RUN)
    build_trainer(run, progress=False).fit()
    # 3 frames, one window: the autoencoder codes 1 + 4k; the message names the nearest counts and
    # no file is written (past one window, 5-frame windows cover any count: see the task-mix test)
    out = tmp_path / "o.mp4"
    assert main(["generate", "--model", str(tmp_path / "lat"), "--frames", "3", "--steps", "1",
                 "--out", str(out)]) == 2
    assert "nearest are 1 and 5" in capsys.readouterr().err and not out.exists()
    # an autoencoder of 8 latent channels in place of the 4-channel one it was trained on
    other = load_run_config(None, [f"train.out_dir={tmp_path / 'vae8'}", "model.overrides.latent_channels=8",
                                   "train.steps=1", "train.checkpoint_every=1"], base=VAE_RUN)
    train(other, progress=False)
    checkpoint = resolve_checkpoint(tmp_path / "lat")
    shutil.rmtree(checkpoint / "vae")
    shutil.copytree(resolve_checkpoint(tmp_path / "vae8"), checkpoint / "vae")
    with pytest.raises(CheckpointError, match="takes latents of 4 channels but the autoencoder .* codes 8"):
        vidiff.load(tmp_path / "lat")


def test_a_latent_cache_of_another_clip_length_is_refused(vae_dir, tmp_path):
    from vidiff.config import ConfigError

    cache = tmp_path / "cache"
    assert main(["cache-latents", "shapes", "--vae", str(vae_dir), "--out", str(cache), "length=4"]) == 0
    with pytest.raises(ConfigError, match=r"data.frames=9 but the latent cache .* holds clips of frames 5: "
                                          r"set data.frames=5"):
        build_dataset({"name": str(cache), "frames": 9, "size": 16})
    assert len(build_dataset({"name": str(cache), "frames": 5, "size": 16})) == 4


def test_reconstruction_benchmark_reports_each_length_at_tiny_size(tmp_path):
    """benchmarks/vae_quality.py end to end at tiny size: a stretched training run, then the
    per-frame PSNR profile of held-out clips at two lengths, the plot and the headline."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "vae_quality.py"
    result = subprocess.run([sys.executable, str(script), "--datasets", "shapes", "--size", "vae-tiny",
                             "--minutes", "0.3", "--max-steps", "4", "--frames", "5", "--stretch", "2",
                             "--frame-size", "16", "--eval-frames", "5,9", "--clips", "2", "--batch-size", "2",
                             "--out", str(tmp_path / "runs"), "--plot", str(tmp_path / "profile.png"), "--quiet"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    profiles = {int(line.split()[3]): line.split(":")[1].split() for line in lines
                if line.startswith("per-frame PSNR, shapes")}
    assert {k: len(v) for k, v in profiles.items()} == {5: 5, 9: 9}
    assert lines[-1].startswith("headline: PSNR shapes") and (tmp_path / "profile.png").stat().st_size > 0
    config = json.loads((resolve_checkpoint(tmp_path / "runs" / "shapes") / "config.json").read_text())
    assert config["run"]["data"]["stretch"] == 2.0


def test_editing_a_latent_model_inverts_to_the_autoencoders_reconstruction(vae_dir, tmp_path):
    """On a latent model, inversion then generation gives back what the autoencoder alone
    reconstructs (the best a latent model can return), closer with more steps; an edit with
    identical prompts does the same, and restyling decodes to the clip's size."""
    from vidiff.data.shapes import render

    build_trainer(load_run_config(None, [f"train.out_dir={tmp_path / 'lat'}", f"model.vae={vae_dir}"],
                                  base=LATENT_RUN), progress=False).fit()
    pipe = vidiff.load(tmp_path / "lat")
    prompt = "a red circle moving right"
    video = vidiff.Video(render("red", "circle", "right", frames=5, size=16))
    with torch.no_grad():
        reconstruction = pipe.decode(pipe.vae.to_latent(video.to_tensor()[None]))[0].frames.astype(np.float64)

    def error(frames) -> float:
        return float(np.mean((frames.astype(np.float64) - reconstruction) ** 2))
    coarse = error(pipe.generate_from_noise(pipe.invert(video, prompt, steps=6)).frames)
    fine = error(pipe.generate_from_noise(pipe.invert(video, prompt, steps=40)).frames)
    assert fine < 0.5 * coarse and fine < 1.0      # (measured 1.20 and 0.12 levels^2: 47.3 and 57.4 dB)
    same = pipe.edit(video, prompt, prompt, inject=1.0, steps=40)
    assert error(same.frames) < 1.0
    assert pipe.restyle(video, "a blue circle moving right", strength=0.3, steps=2).frames.shape == (5, 16, 16, 3)
