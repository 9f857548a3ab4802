"""The MovingShapes judge: right on rendered clips, at chance on wrong captions, robust to noise."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from vidiff.data import MovingShapes, all_triples
from vidiff.eval.shapes import CaptionError, detect, parse_caption, score
from vidiff.video import Video


def rendered(frames, size, seed):
    """Every one of the 84 triples once, from a random start."""
    rng = np.random.default_rng(seed)
    clips, triples = [], all_triples()
    for color, shape, direction in triples:
        g = MovingShapes.geometry(direction, frames, size)
        start = (rng.uniform(*g["x"]), rng.uniform(*g["y"]))
        clips.append(MovingShapes.render(color, shape, direction, frames, size, start))
    return clips, triples


def degrade(clip, rng, noise=20.0, blur=0.7):
    """Slight Gaussian blur (sigma in pixels) and Gaussian noise (std in 8-bit levels)."""
    x = ndimage.gaussian_filter(clip.astype(np.float64), (0, blur, blur, 0))
    x = x + rng.normal(0.0, noise, x.shape)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size,frames", [(32, 8), (32, 16), (64, 8), (64, 16)])
def test_detector_reads_rendered_clips(size, frames):
    clips, triples = rendered(frames, size, seed=size + frames)
    result = score(clips, triples)
    assert result["count"] == 84
    assert result["adherence"] >= 0.98, [(t, d) for t, d in zip(triples, result["detections"])
                                         if (d["color"], d["shape"], d["direction"]) != t]
    # Wrong captions (the triples shuffled) score near chance.
    shuffled = [triples[i] for i in np.random.default_rng(0).permutation(84)]
    assert score(clips, shuffled)["adherence"] < 0.3


@pytest.mark.parametrize("size,frames", [(32, 8), (64, 16)])
def test_detector_survives_noise_and_blur(size, frames):
    clips, triples = rendered(frames, size, seed=1)
    rng = np.random.default_rng(2)
    result = score([degrade(c, rng) for c in clips], triples)
    assert result["adherence"] >= 0.9
    assert min(result["color_accuracy"], result["shape_accuracy"], result["direction_accuracy"]) >= 0.9


def test_inputs_and_captions():
    clip = MovingShapes.render("cyan", "triangle", "up", 8, 32, start=(12.0, 25.0))
    expected = {"color": "cyan", "shape": "triangle", "direction": "up"}
    assert detect(clip) == expected
    assert detect(Video(clip, 8)) == expected
    tensor = torch.from_numpy(clip).permute(3, 0, 1, 2).float() / 127.5 - 1   # (3, T, H, W)
    assert detect(tensor) == expected and detect(tensor[None]) == expected
    details = detect(clip, details=True)["features"]
    assert details["velocity"][1] < 0 and details["frames_used"] == 8
    result = score(tensor[None].repeat(2, 1, 1, 1, 1), ["a cyan triangle moving up", ("cyan", "square", "up")])
    assert result["adherence"] == 0.5 and result["correct"] == {"all": 1, "color": 2, "shape": 1, "direction": 2}
    blank = detect(np.zeros((8, 32, 32, 3), np.uint8))
    assert blank == {"color": None, "shape": None, "direction": None}
    assert score([np.zeros((8, 32, 32, 3), np.uint8)], ["a red circle moving left"])["adherence"] == 0.0

    assert parse_caption("a red circle moving right") == ("red", "circle", "right")
    assert parse_caption("  A White Square moving Down ") == ("white", "square", "down")
    with pytest.raises(CaptionError, match=r"not of the form 'a \{color\} \{shape\} moving \{direction\}'"):
        parse_caption("a red circle going right")
    with pytest.raises(CaptionError, match="color 'purple' is not one of"):
        parse_caption("a purple circle moving right")
    with pytest.raises(ValueError, match="2 videos but 1 targets"):
        score([clip, clip], ["a cyan triangle moving up"])
    with pytest.raises(ValueError, match="uint8 frames"):
        detect(np.zeros((8, 32, 32), np.uint8))


def test_foreground_and_centroids_are_the_rendered_shape():
    # A square is symmetric about its centre: the centroid of its pixels is the centre, in
    # pixel-index units (continuous coordinates minus half a pixel).
    from vidiff.data.shapes import geometry, render, shape_masks
    from vidiff.eval.shapes import centroids, foreground
    g = geometry("down", 6, 32)
    start = (12.0, g["y"][0] + 1.0)
    clip = render("green", "square", "down", frames=6, size=32, start=start)
    k = np.arange(6)
    cx, cy = start[0] + g["step"][0] * k, start[1] + g["step"][1] * k
    assert np.array_equal(foreground(clip), shape_masks("square", cx, cy, g["radius"], 32, 32))
    expected = np.stack([cx, cy], 1) - 0.5
    # Pixel sampling moves a centroid by at most half a pixel from the exact centre.
    assert np.abs(centroids(clip) - expected).max() <= 0.5
    blank = centroids(np.zeros((2, 8, 8, 3), np.uint8))
    assert blank.shape == (2, 2) and np.isnan(blank).all()
