"""Temporal metrics on constructed clips whose answers are known."""
import json

import numpy as np
import pytest

from vidiff.cli import main
from vidiff.eval.temporal import (block_flow, clip_metrics, dynamic_degree, motion_smoothness, pooled_psnr,
                                  psnr_ssim, temporal_flickering)
from vidiff.video import Video

T, H, W = 8, 32, 32


def moving_object(step=(3, 0), start=(1, 10), frames=T, seed=0):
    """A textured 8x8 patch moving ``step = (dx, dy)`` pixels per frame on black."""
    texture = np.random.default_rng(seed).integers(30, 256, size=(8, 8, 3), dtype=np.uint8)
    clip = np.zeros((frames, H, W, 3), np.uint8)
    for t in range(frames):
        x, y = start[0] + step[0] * t, start[1] + step[1] * t
        clip[t, y:y + 8, x:x + 8] = texture
    return clip


def noise(seed=1):
    return np.random.default_rng(seed).integers(0, 256, size=(T, H, W, 3), dtype=np.uint8)


def test_static_clip():
    clip = np.repeat(noise()[:1], T, axis=0)
    assert temporal_flickering(clip) == 1.0 and motion_smoothness(clip) == 1.0
    motion = dynamic_degree(clip)
    assert motion["flow"] == 0.0 and not motion["dynamic"] and motion["method"] == "block-matching"


def test_flickering_clip():
    clip = np.zeros((T, H, W, 3), np.uint8)
    clip[1::2] = 255
    assert temporal_flickering(clip) == 0.0
    clip[1::2] = 51                                    # |difference| = 51 everywhere: 1 - 51/255
    assert temporal_flickering(clip) == pytest.approx(0.8, abs=1e-12)


def test_linearly_moving_object():
    clip = moving_object(step=(3, 0))
    flow = block_flow(clip[:2])[0]                     # (H, W, 2) as (dx, dy)
    assert np.array_equal(flow[10:18, 1:9], np.broadcast_to([3.0, 0.0], (8, 8, 2)))
    motion = dynamic_degree(clip)                       # the patch is 6.25% > 5% of the frame
    assert motion["flow"] == 3.0 and motion["dynamic"] and motion["threshold"] == 6 * 32 / 256
    diagonal = dynamic_degree(moving_object(step=(2, 2), start=(2, 2)))
    assert diagonal["flow"] == pytest.approx(np.hypot(2, 2))
    # constant velocity is reconstructed exactly; the same frames out of order are not
    assert motion_smoothness(clip) == 1.0 and motion_smoothness(moving_object(step=(1, 2), start=(4, 2))) == 1.0
    jerky = clip[[0, 2, 1, 3, 5, 4, 6, 7]]
    assert motion_smoothness(jerky) < 0.99
    assert temporal_flickering(clip) < 1.0              # motion lowers flickering: static content only


def test_random_noise():
    clip = noise()
    # E|U - U'| for independent uniform 8-bit levels is (256^2 - 1) / (3 * 256) = 85.33
    assert temporal_flickering(clip) == pytest.approx(1 - (256 ** 2 - 1) / (3 * 256) / 255, abs=0.01)
    assert motion_smoothness(clip) < 0.8 < motion_smoothness(moving_object())


def test_psnr_ssim_against_references():
    clip = noise()[:, :, :, :].copy()
    clip = np.clip(clip, 20, 235).astype(np.uint8)
    same = psnr_ssim(clip, clip)
    assert same["psnr"] == [100.0] * T and same["ssim"] == pytest.approx([1.0] * T)
    shifted = psnr_ssim(clip + 10, clip)               # MSE 100: 10 log10(255^2 / 100)
    assert shifted["psnr"] == pytest.approx([10 * np.log10(255 ** 2 / 100)] * T)
    assert all(s < 1.0 for s in shifted["ssim"])
    with pytest.raises(ValueError, match="differ in shape"):
        psnr_ssim(clip[:4], clip)
    with pytest.raises(ValueError, match="at least 2 frames"):
        clip_metrics(clip[:1])


def test_pooled_psnr_pools_the_error_not_the_decibels():
    clip = np.clip(noise(), 20, 235).astype(np.uint8)
    assert pooled_psnr(clip, clip) == 100.0
    worse = clip.copy()
    worse[0] += 16                                      # one frame off by 16 levels, the rest exact
    # MSE pooled over T frames: 16^2 / T, so 10 log10(255^2 T / 256); the per-frame mean is far higher
    assert pooled_psnr(worse, clip) == pytest.approx(10 * np.log10(255 ** 2 * T / 256))
    assert np.mean(psnr_ssim(worse, clip)["psnr"]) > pooled_psnr(worse, clip) + 40
    mask = np.zeros(clip.shape[:3], bool)
    mask[0, :4] = True                                 # any selection of pixels: here only altered ones
    assert pooled_psnr(worse[mask], clip[mask]) == pytest.approx(10 * np.log10(255 ** 2 / 256))
    with pytest.raises(ValueError, match="differ in shape"):
        pooled_psnr(clip[:4], clip)


def test_cli_reports_per_clip_and_mean(tmp_path, capsys):
    clips, refs = tmp_path / "clips", tmp_path / "refs"
    static = np.repeat(noise()[:1], T, axis=0)
    Video(static).save(clips / "a")
    Video(moving_object()).save(clips / "b")
    Video(static).save(refs / "a")
    Video(moving_object()).save(refs / "b.gif")        # matched by name, any container
    out = tmp_path / "t.json"
    assert main(["eval", "temporal", str(clips), "--reference", str(refs), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = {r["name"].split("/")[-1]: r for r in report["clips"]}
    assert rows["a"]["flickering"] == 1.0 and rows["b"]["flow"] == 3.0 and rows["b"]["dynamic"]
    assert rows["a"]["psnr_mean"] == 100.0 and rows["b"]["psnr_mean"] > 30
    assert report["mean"]["dynamic_degree"] == 0.5
    assert report["mean"]["flickering"] == pytest.approx((1.0 + rows["b"]["flickering"]) / 2)
    assert "mean of 2" in capsys.readouterr().out
    # bad input: an empty folder, clips of mixed sizes, a missing reference; no report written
    out.unlink()
    (tmp_path / "empty").mkdir()
    Video(np.zeros((4, 16, 16, 3), np.uint8)).save(clips / "c")
    for argv, message in ((["eval", "temporal", str(tmp_path / "empty")], "holds no clips"),
                          (["eval", "temporal", str(clips)], "mixed sizes"),
                          (["eval", "temporal", str(clips), "--count", "2", "--reference", str(tmp_path / "empty")],
                           "holds no clips")):
        assert main([*argv, "--json", str(out)]) == 2 and not out.exists()
        assert message in capsys.readouterr().err
