"""The `digits` model that ships inside the package: it is installed, intact, trained by the
committed config, samples clips of its training size, and forecasts fresh MovingDigits clips
as well as its card says.

Like tests/test_shipped_shapes.py, this file reads the package's own ``vidiff/shipped/digits/``.
"""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import vidiff
from vidiff.data.digits import MovingDigits
from vidiff.eval.temporal import pooled_psnr
from vidiff.pipelines import shipped

from shipped_checks import committed_run

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "digits-st.yaml"
CONTEXT, FRAMES = 4, 16
# Fresh clips: a data seed neither training (seed 0) nor the recorded benchmark (4321) used.
SEED, CLIPS = 777, 6


@pytest.fixture
def card(monkeypatch):
    monkeypatch.delenv(shipped.SHIPPED_DIR_ENV, raising=False)
    return shipped.verify(shipped.PACKAGE_DIR / "digits")      # every file present and unaltered


def test_digits_is_installed_and_was_trained_by_the_committed_config(card):
    committed_run(card, "digits", CONFIG)


def test_digits_samples_its_training_size(card):
    pipe = vidiff.load("digits")
    assert (pipe.frames, pipe.height, pipe.width) == (FRAMES, 32, 32)
    assert pipe.mask_trained and pipe.check_method(None) == "mask"
    assert all(p.dtype == torch.float32 for p in pipe.network.parameters())   # fp16 storage only
    video = pipe.generate("the digit 3", steps=4, seed=0)
    assert video.frames.shape == (FRAMES, 32, 32, 3)


def test_digits_forecast_gain_matches_its_card(card):
    """On fresh clips, the forecast's mean gain over copying the last context frame lies within
    three standard errors (the card's per-clip spread) of the gain the card records; PSNR is
    the card's, of the whole clip's pooled error (``pooled_psnr``)."""
    scores = card["scores"]
    recorded, spread = scores["forecast"] - scores["copy_last"], scores["gain_std"]
    pipe, data = vidiff.load("digits"), MovingDigits(frames=FRAMES, size=32, seed=SEED)
    gains = []
    for i in range(CLIPS):
        clip = vidiff.Video.from_tensor(data[i]["video"]).frames                # (T, H, W, 3) uint8
        pred = pipe.predict(vidiff.Video(clip[:CONTEXT]), CONTEXT, FRAMES, seed=i, steps=20,
                            guidance=1.0).frames           # frames alone, as the benchmark
        assert np.array_equal(pred[:CONTEXT], clip[:CONTEXT])                  # the context, as given
        copy = np.repeat(clip[CONTEXT - 1:CONTEXT], FRAMES - CONTEXT, 0)
        gains.append(pooled_psnr(pred[CONTEXT:], clip[CONTEXT:]) - pooled_psnr(copy, clip[CONTEXT:]))
    tolerance = 3 * spread / math.sqrt(CLIPS)
    assert abs(np.mean(gains) - recorded) <= tolerance, (gains, recorded, tolerance)
