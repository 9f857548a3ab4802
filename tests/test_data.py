"""Datasets: the MovingShapes spec, determinism, the other synthetic sets, video folders, batching."""
import json
import logging
import math
import re

import av
import numpy as np
import pytest
import torch

from vidiff.config import ConfigError
from vidiff.data import (COLORS, DEMO_HELD_OUT, DIRECTIONS, SHAPES, BucketBatchSampler, BucketPlan, DataConfig,
                         DatasetError, MovingDigits, MovingShapes, PhotoPan, VideoFolder, all_triples,
                         build_dataset, collate, make_loader)
from vidiff.data.videoio import probe, read_frames
from vidiff.eval.temporal import pooled_psnr
from vidiff.video import Video

CAPTION = re.compile(r"^a (red|green|blue|yellow|cyan|magenta|white) (circle|square|triangle) "
                     r"moving (left|right|up|down)$")


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(3, T, H, W) in [-1, 1] -> uint8 (T, H, W, 3)."""
    return ((video + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 3, 0).numpy()


# ---------------------------------------------------------------------------------- MovingShapes
@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("shape,area,perimeter", [("circle", math.pi, 2 * math.pi), ("square", 4.0, 8.0),
                                                  ("triangle", 2.0, 2 + 2 * math.sqrt(5))])
def test_shapes_colour_background_and_area(size, shape, area, perimeter):
    r = 0.15 * size
    for color, rgb in COLORS.items():
        clip = MovingShapes.render(color, shape, "right", frames=9, size=size)
        assert clip.dtype == np.uint8 and clip.shape == (9, size, size, 3)
        values = {tuple(v) for v in clip.reshape(-1, 3)}
        assert values == {(0, 0, 0), rgb}  # exact colour, exactly black elsewhere, no anti-aliasing
    # Pixel counts: within half the perimeter of the exact area per frame, and unbiased on
    # average over random starts (pixel-centre sampling).
    rng = np.random.default_rng(0)
    counts = []
    for direction in DIRECTIONS:
        g = MovingShapes.geometry(direction, 9, size)
        for _ in range(10):
            start = (rng.uniform(*g["x"]), rng.uniform(*g["y"]))
            mask = MovingShapes.render("white", shape, direction, 9, size, start).any(-1)
            counts += mask.reshape(9, -1).sum(axis=1).tolist()
    counts = np.array(counts, np.float64)
    assert np.all(np.abs(counts - area * r * r) <= perimeter * r / 2 + 1)
    assert counts.mean() == pytest.approx(area * r * r, rel=0.02)


def test_shapes_geometry_is_exact():
    # Frame side 40: r = 6, travel 18 over 9 steps = 2 px per frame.
    S, T, r = 40, 10, 6.0
    for direction, (vx, vy) in {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}.items():
        g = MovingShapes.geometry(direction, T, S)
        assert g["radius"] == pytest.approx(r)
        assert math.hypot(*g["step"]) * (T - 1) == pytest.approx(0.45 * S, abs=1e-12)
        assert np.sign(g["step"][0]) == vx and np.sign(g["step"][1]) == vy
        start = (g["x"][0] + 0.3 * (g["x"][1] - g["x"][0]), g["y"][0] + 0.7 * (g["y"][1] - g["y"][0]))
        clip = MovingShapes.render("white", "square", direction, T, S, start)
        for t in range(T):
            cx, cy = start[0] + vx * 2.0 * t, start[1] + vy * 2.0 * t
            # Pixel-centre sampling: column j is inside when |j + 0.5 - cx| <= r.
            cols = [j for j in range(S) if abs(j + 0.5 - cx) <= r]
            rows = [i for i in range(S) if abs(i + 0.5 - cy) <= r]
            expected = np.zeros((S, S), bool)
            expected[np.ix_(rows, cols)] = True
            assert np.array_equal(clip[t].any(-1), expected)
            assert r <= cx <= S - r and r <= cy <= S - r  # fully inside every frame


def test_triangle_points_up_and_circle_is_round():
    tri = MovingShapes.render("red", "triangle", "down", 4, 64)[0].any(-1)
    rows = tri.sum(axis=1)[tri.any(axis=1)]
    assert rows[0] <= 3 and rows[-1] >= 17 and np.all(np.diff(rows) >= 0)  # apex up, base 2r = 19.2
    assert 17 <= tri.any(axis=1).sum() <= 20                                 # height 2r
    circle = MovingShapes.render("red", "circle", "down", 4, 64)[0].any(-1)
    assert abs(int(circle.any(axis=0).sum()) - int(circle.any(axis=1).sum())) <= 1


def test_shapes_items_match_spec():
    ds = MovingShapes(frames=8, size=32, seed=3, length=300)
    r = 0.15 * 32
    for i in range(0, 300, 7):
        item = ds[i]
        assert set(item) >= {"video", "caption", "frame_stride", "index", "color", "shape", "direction"}
        assert item["video"].shape == (3, 8, 32, 32) and item["video"].dtype == torch.float32
        assert item["video"].min() >= -1 and item["video"].max() <= 1
        assert CAPTION.match(item["caption"])
        assert item["caption"] == f"a {item['color']} {item['shape']} moving {item['direction']}"
        assert item["index"] == i and item["frame_stride"] == 1.0
        x0, y0 = item["start"].tolist()
        vx, vy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[item["direction"]]
        for t in (0, 7):  # the path is straight, so the ends bound it
            cx, cy = x0 + vx * 0.45 * 32 * t / 7, y0 + vy * 0.45 * 32 * t / 7
            assert r - 1e-4 <= cx <= 32 - r + 1e-4 and r - 1e-4 <= cy <= 32 - r + 1e-4
        frames = to_uint8(item["video"])
        np.testing.assert_array_equal(frames, MovingShapes.render(
            item["color"], item["shape"], item["direction"], 8, 32, (x0, y0)))
        # The centroid moves the right way along the right axis.
        mask = frames.any(-1)
        cxs = [np.nonzero(m)[1].mean() for m in mask]
        cys = [np.nonzero(m)[0].mean() for m in mask]
        moved = (cxs[-1] - cxs[0], cys[-1] - cys[0])
        assert moved[0] * vx >= 0 and moved[1] * vy >= 0
        assert abs(moved[0] if vx else moved[1]) == pytest.approx(0.45 * 32, abs=1.0)
    with pytest.raises(IndexError):
        ds[300]


def test_render_rejects_bad_input():
    with pytest.raises(DatasetError, match="color 'purple'"):
        MovingShapes.render("purple", "circle", "left")
    with pytest.raises(DatasetError, match="outside"):
        MovingShapes.render("red", "circle", "right", 16, 32, start=(30.0, 16.0))
    with pytest.raises(DatasetError, match="frames >= 2"):
        MovingShapes(frames=1)


def test_shapes_determinism_and_order_independence():
    a, b = MovingShapes(frames=4, size=32, seed=7), MovingShapes(frames=4, size=32, seed=7)
    forward = [a[i] for i in range(12)]
    backward = [b[i] for i in reversed(range(12))][::-1]
    for x, y in zip(forward, backward):
        assert torch.equal(x["video"], y["video"]) and x["caption"] == y["caption"]
    assert torch.equal(a[5]["video"], a[5]["video"])
    c = MovingShapes(frames=4, size=32, seed=8)
    assert sum(torch.equal(a[i]["video"], c[i]["video"]) for i in range(12)) <= 1
    assert len(a) > 10**9 and a.infinite and a[10**9]["video"].shape == (3, 4, 32, 32)


def test_loader_is_independent_of_workers():
    ds = MovingShapes(frames=4, size=16, seed=1, length=24)
    zero = list(make_loader(ds, batch_size=6, seed=3, num_workers=0))
    two = list(make_loader(ds, batch_size=6, seed=3, num_workers=2))
    assert len(zero) == len(two) == 4
    for x, y in zip(zero, two):
        assert torch.equal(x["video"], y["video"]) and x["caption"] == y["caption"]
    assert zero[0]["video"].shape == (6, 3, 4, 16, 16) and zero[0]["frame_stride"].shape == (6,)
    assert sorted(torch.cat([b["index"] for b in zero]).tolist()) == list(range(24))
    stream = iter(make_loader(MovingShapes(frames=4, size=16), batch_size=3, start=100))
    assert next(stream)["index"].tolist() == [100, 101, 102]


def test_held_out_triples_are_never_drawn():
    ds = MovingShapes(frames=2, size=16, seed=0, held_out=DEMO_HELD_OUT)
    seen = {(it["color"], it["shape"], it["direction"]) for it in (ds[i] for i in range(2000))}
    assert not seen & set(DEMO_HELD_OUT)
    assert seen == set(all_triples()) - set(DEMO_HELD_OUT)
    for position, values in enumerate((COLORS, SHAPES, DIRECTIONS)):  # every value still trained
        assert {t[position] for t in ds.triples} == set(values)
    assert len(ds.captions()) == 84 - len(DEMO_HELD_OUT)
    with pytest.raises(DatasetError, match="nothing is left"):
        MovingShapes(held_out=all_triples())
    with pytest.raises(DatasetError, match="shape 'hexagon'"):
        MovingShapes(held_out=[("red", "hexagon", "up")])


# ---------------------------------------------------------------------------------- config
def test_data_config_and_build_errors(tmp_path):
    cfg = DataConfig.from_dict({"name": "shapes", "frames": 8, "held_out": "demo"})
    assert cfg.held_out == [list(t) for t in DEMO_HELD_OUT]
    ds = build_dataset(cfg)
    assert isinstance(ds, MovingShapes) and ds.held_out == list(DEMO_HELD_OUT)
    captions = DataConfig.from_dict({"held_out": [["a red circle moving up"], ["blue", "square", "left"]]})
    assert captions.held_out == [["red", "circle", "up"], ["blue", "square", "left"]]
    with pytest.raises(ConfigError, match="unknown key.*'frame'.*accepted keys"):
        DataConfig.from_dict({"frame": 8})
    with pytest.raises(ConfigError, match=r"shapes, digits, photopan.*existing path"):
        build_dataset({"name": "shpes"})
    with pytest.raises(ConfigError, match="data.stride applies only to video folders"):
        build_dataset({"name": "shapes", "stride": 2})
    with pytest.raises(ConfigError, match="held_out applies only to 'shapes'"):
        build_dataset({"name": "digits", "held_out": "demo"})
    with pytest.raises(ConfigError, match="frames must be >= 1"):
        DataConfig(frames=0)
    assert isinstance(build_dataset("digits"), MovingDigits)
    assert isinstance(build_dataset({"name": "photopan", "size": 16, "length": 5}), PhotoPan)


# ---------------------------------------------------------------------------------- MovingDigits
def test_moving_digits():
    ds = MovingDigits(frames=10, size=32, seed=2, length=50)
    side = round(0.4 * 32)
    single = None
    for i in range(20):
        item = ds[i]
        v = item["video"]
        assert v.shape == (3, 10, 32, 32) and v.min() >= -1 and v.max() <= 1 and v.min() == -1
        assert torch.equal(v[0], v[1]) and torch.equal(v[0], v[2])  # white on black
        digits = item["digits"]
        assert 1 <= len(digits) <= 2
        assert item["caption"] == (f"digit {digits[0]}" if len(digits) == 1 else f"digits {digits[0]} and {digits[1]}")
        pos = item["positions"]
        assert pos.shape == (len(digits), 10, 2) and pos.min() >= 0 and pos.max() <= 32 - side
        if len(digits) == 1 and single is None:
            single = item
    assert torch.equal(ds[3]["video"], MovingDigits(frames=10, size=32, seed=2)[3]["video"])
    assert not torch.equal(ds[3]["video"], MovingDigits(frames=10, size=32, seed=3)[3]["video"])
    # The glyph moves exactly as its (rounded) positions say: compare intensity centroids.
    frames = (single["video"][0] + 1).numpy()
    yy, xx = np.mgrid[0:32, 0:32]
    centroid = np.array([[(f * xx).sum() / f.sum(), (f * yy).sum() / f.sum()] for f in frames])
    corners = np.rint(single["positions"][0].numpy())
    np.testing.assert_allclose(centroid - centroid[0], corners - corners[0], atol=1e-3)
    assert np.abs(np.diff(corners, axis=0)).max() > 0  # it does move


# ---------------------------------------------------------------------------------- PhotoPan
def _shift(a: np.ndarray, b: np.ndarray, axis: int, limit: int) -> int:
    """Integer shift s along ``axis`` that best maps a onto b: b[k + s] ~ a[k]."""
    best, best_err = 0, np.inf
    n = a.shape[axis]
    for s in range(-limit, limit + 1):
        lo, hi = max(0, -s), min(n, n - s)
        ia = [slice(None)] * a.ndim
        ib = [slice(None)] * a.ndim
        ia[axis], ib[axis] = slice(lo, hi), slice(lo + s, hi + s)
        err = np.mean((a[tuple(ia)] - b[tuple(ib)]) ** 2)
        if err < best_err:
            best, best_err = s, err
    return best


def _find(ds, motion, photo="astronaut"):
    return next(ds[i] for i in range(2000) if ds[i]["motion"] == motion and ds[i]["photo"] == photo)


def test_photopan_shapes_determinism_and_captions():
    ds = PhotoPan(frames=6, size=32, seed=0)
    assert {"chelsea", "astronaut", "rocket"} <= set(ds.photos)
    item = ds[4]
    assert item["video"].shape == (3, 6, 32, 32) and item["video"].min() >= -1 and item["video"].max() <= 1
    assert re.match(r"^camera (pans (left|right|up|down) over|zooms in on|zooms out from) \S", item["caption"])
    assert torch.equal(item["video"], PhotoPan(frames=6, size=32, seed=0)[4]["video"])
    assert not torch.equal(item["video"], PhotoPan(frames=6, size=32, seed=1)[4]["video"])
    cat = _find(ds, "pan left", "chelsea")
    assert cat["caption"] == "camera pans left over a cat"
    with pytest.raises(DatasetError, match="not available"):
        PhotoPan(photos=["nonexistent"])


@pytest.mark.parametrize("motion,axis,sign", [("pan left", 1, +1), ("pan right", 1, -1),
                                              ("pan up", 0, +1), ("pan down", 0, -1)])
def test_photopan_pan_moves_content_opposite_to_camera(motion, axis, sign):
    ds = PhotoPan(frames=8, size=48, seed=0, photos=["astronaut"])
    item = _find(ds, motion)
    boxes = item["boxes"].numpy()                                  # (T, 4): x0, y0, w, h
    coord = 0 if axis == 1 else 1                                  # frame axis 1 is x, 0 is y
    moved = boxes[-1, coord] - boxes[0, coord]
    assert np.sign(moved) == -sign  # the camera (window) moves the stated way
    frames = to_uint8(item["video"]).astype(np.float64).mean(-1)   # (T, H, W)
    expected = -moved * 48 / boxes[0, 2 + coord]                   # in output pixels
    shift = _shift(frames[0], frames[-1], axis, 20)
    assert np.sign(shift) == sign and abs(shift - expected) <= 1.5


@pytest.mark.parametrize("motion", ["zoom in", "zoom out"])
def test_photopan_zoom(motion):
    ds = PhotoPan(frames=8, size=48, seed=0, photos=["astronaut"])
    item = _find(ds, motion)
    boxes = item["boxes"].numpy()
    centres = boxes[:, :2] + boxes[:, 2:] / 2
    np.testing.assert_allclose(centres, centres[:1].repeat(8, 0), atol=1e-4)   # concentric
    widths = boxes[:, 2]
    assert np.all(np.diff(widths) < 0) if motion == "zoom in" else np.all(np.diff(widths) > 0)
    ratios = widths[1:] / widths[:-1]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-5)                  # constant zoom rate
    # The narrow view equals the middle of the wide view, magnified.
    video = (item["video"] + 1) / 2
    wide, narrow = (video[:, 0], video[:, -1]) if motion == "zoom in" else (video[:, -1], video[:, 0])
    k = min(widths) / max(widths) * 48
    lo = (48 - k) / 2
    grid_x = lo + (torch.arange(48) + 0.5) * k / 48
    gx = (2 * grid_x / 48 - 1)
    grid = torch.stack(torch.meshgrid(gx, gx, indexing="xy"), -1)[None].float()
    crop = torch.nn.functional.grid_sample(wide[None], grid, align_corners=False)[0]
    error = (crop - narrow).abs().mean()
    assert error < 0.5 * (wide - narrow).abs().mean() and error < 0.06


# ---------------------------------------------------------------------------------- VideoFolder
def write_ramp(path, frames, fps=30, size=(48, 64), gop=8, step=4):
    """An H.264 mp4 whose frame k is uniform grey of level step * k."""
    h, w = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"g": str(gop), "crf": "8"})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for k in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((h, w, 3), step * k, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_gif(path, frames, fps=10, size=(32, 40)):
    h, w = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("gif", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "rgb8"
        for k in range(frames):
            image = np.zeros((h, w, 3), np.uint8)
            image[:, : 2 * k + 2] = 255
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="rgb8")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    write_ramp(root / "ramp.mp4", 60)
    write_ramp(root / "wide.mp4", 40, fps=20, size=(32, 96), step=6)
    write_ramp(root / "short.mp4", 5)
    write_gif(root / "bars.gif", 12)
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    frames_dir = root / "nested" / "stills"
    frames_dir.mkdir(parents=True)
    from PIL import Image
    for k in range(10):
        Image.fromarray(np.full((24, 24, 3), 20 * k, np.uint8)).save(frames_dir / f"{k:03d}.png")
    (frames_dir / "fps.txt").write_text("5\n")
    entries = [("ramp.mp4", "a grey ramp"), ("wide.mp4", "a wide ramp"), ("bars.gif", "growing bars"),
               ("nested/stills", "still frames"), ("broken.mp4", "never read")]
    (root / "captions.jsonl").write_text("".join(json.dumps({"file": f, "caption": c}) + "\n" for f, c in entries))
    return root


def test_video_folder_index_skips_and_captions(folder, caplog):
    with caplog.at_level(logging.WARNING, logger="vidiff.data"):
        ds = VideoFolder(folder, frames=8, size=32, seed=0)
    keys = [c.key for c in ds.clips]
    assert keys == ["bars.gif", "nested/stills", "ramp.mp4", "wide.mp4"]
    reasons = {p.split("/")[-1]: r for p, r in ds.skipped}
    assert set(reasons) == {"broken.mp4", "short.mp4"}
    assert "too short: 5 frames, needs 8" in reasons["short.mp4"]
    assert "broken.mp4" in caplog.text and "short.mp4" in caplog.text
    assert ds.captions() == ["a grey ramp", "a wide ramp", "growing bars", "still frames"]
    for i in range(len(ds)):
        item = ds[i]
        assert item["video"].shape == (3, 8, 32, 32) and item["video"].dtype == torch.float32
        assert -1 <= item["video"].min() and item["video"].max() <= 1
        assert item["caption"] == ds.caption_list[i] and item["frame_stride"] == 1.0
    bars = to_uint8(ds[0]["video"]).mean(axis=(1, 2, 3))
    assert np.all(np.diff(bars) > 0)  # the gif's bars grow frame by frame
    assert torch.equal(ds[2]["video"], VideoFolder(folder, frames=8, size=32, seed=0)[2]["video"])


@pytest.mark.parametrize("options,stride", [({"stride": 3}, 3.0), ({"fps": 10.0}, 3.0), ({"fps": 12.0}, 2.5)])
def test_video_folder_temporal_sampling(folder, options, stride):
    ds = VideoFolder(folder, frames=6, size=32, length=12, captions="none", **options)
    ramp = [c.key for c in ds.clips].index("ramp.mp4")
    n = len(ds.clips)
    for i in range(ramp, 12, n):                       # several random starts on the 30 fps ramp
        item = ds[i]
        assert item["frame_stride"] == pytest.approx(stride) and item["caption"] == ""
        indices = item["frame_indices"].numpy()
        expected = np.floor(indices[0] + np.arange(6) * stride + 0.5).astype(int)
        np.testing.assert_array_equal(indices, expected)
        brightness = to_uint8(item["video"]).astype(float).mean(axis=(1, 2, 3))
        np.testing.assert_allclose(brightness / 4, indices, atol=0.8)   # frame k has level 4k
    if "fps" in options:
        assert ds.fps == options["fps"]
        wide = ds[[c.key for c in ds.clips].index("wide.mp4")]
        assert wide["frame_stride"] == pytest.approx(20 / options["fps"])


def test_video_folder_errors(folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VideoFolder(tmp_path / "nope")
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all")
    with pytest.raises(DatasetError, match="no readable videos.*bad.mp4"):
        VideoFolder(tmp_path)
    with pytest.raises(ConfigError, match="no readable videos"):
        build_dataset({"name": str(tmp_path)})
    good = tmp_path / "good"
    good.mkdir()
    write_ramp(good / "a.mp4", 20)
    (good / "captions.csv").write_text("file,caption\na.mp4,first\nb.mp4,second\nc/d.webm,third\n")
    with pytest.raises(DatasetError, match=r"names 2 video\(s\) that are not in .*b\.mp4, c/d\.webm"):
        VideoFolder(good, frames=4)
    (good / "captions.csv").write_text("a.mp4,only\n")
    assert VideoFolder(good, frames=4).captions() == ["only"]
    with pytest.raises(DatasetError, match="either stride or fps"):
        VideoFolder(good, stride=2, fps=10)


def test_buckets_group_equal_shapes(folder):
    ds = VideoFolder(folder, frames=8, size=32, length=16, buckets=[[8, 32, 32], [8, 24, 48], [4, 16, 16]])
    shapes = {c.key: s for c, s in zip(ds.clips, ds.shapes)}
    assert shapes["wide.mp4"] == (8, 24, 48) and shapes["nested/stills"] == (8, 32, 32)
    assert shapes["short.mp4"] == (4, 16, 16)  # too short for 8 frames, long enough for 4
    sampler = BucketBatchSampler(ds, batch_size=3, seed=0)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(16)) and len(batches) == len(sampler)
    for b in batches:
        assert len({ds.item_shape(i) for i in b}) == 1
    loader = make_loader(ds, batch_size=3, seed=0, drop_last=False)
    sizes = {tuple(batch["video"].shape[2:]) for batch in loader}
    assert sizes == {(8, 32, 32), (8, 24, 48), (4, 16, 16)}
    with pytest.raises(DatasetError, match="BucketBatchSampler"):
        collate([ds[0], ds[[c.key for c in ds.clips].index("wide.mp4")]])
    synthetic = MovingShapes(frames=8, size=32, buckets=[[8, 32, 32], [4, 24, 40]])
    stream = iter(BucketBatchSampler(synthetic, batch_size=4))
    for _ in range(5):
        batch = collate([synthetic[i] for i in next(stream)])
        assert tuple(batch["video"].shape[2:]) in {(8, 32, 32), (4, 24, 40)}


def test_training_decodes_a_video_as_video_load_does(tmp_path):
    """The data path and Video.load share one RGB conversion: the same pixels, within 45 dB of
    the source for a smooth colour gradient (FFmpeg's default conversion, nearest chroma, gave
    39.6 dB and differed from Video.load by up to 7 levels), also for a full-range stream."""
    y, x = np.mgrid[0:32, 0:48]
    source = np.stack([(x * 5) % 256, (y * 7) % 256, ((x + y) * 3) % 256], -1).astype(np.uint8)
    source = np.repeat(source[None], 6, 0)                                          # (6, 32, 48, 3)
    Video(source, fps=8).save(tmp_path / "limited.mp4")                             # MPEG range, BT.709
    with av.open(str(tmp_path / "full.mp4"), "w") as container:                     # JPEG range, as phones write
        stream = container.add_stream("libx264", rate=8, options={"crf": "0"})
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        stream.codec_context.color_range, stream.codec_context.colorspace = 2, 1
        for i, rgb in enumerate(source):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
                format="yuv420p", dst_colorspace="ITU709", dst_color_range="JPEG")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    for name in ("limited.mp4", "full.mp4"):
        frames = read_frames(probe(tmp_path / name, name), range(6))
        assert np.array_equal(frames, Video.load(tmp_path / name).frames), name
        assert pooled_psnr(frames, source) >= 45.0, (name, pooled_psnr(frames, source))


def test_video_folder_decodes_in_workers(folder):
    ds = VideoFolder(folder, frames=4, size=24, length=8, crop="random", captions="none")
    zero = list(make_loader(ds, batch_size=4, seed=1, num_workers=0))
    two = list(make_loader(ds, batch_size=4, seed=1, num_workers=2))
    assert len(zero) == len(two) == 2
    for x, y in zip(zero, two):
        assert torch.equal(x["video"], y["video"]) and torch.equal(x["frame_indices"], y["frame_indices"])


def test_bucket_plan_is_a_pure_function_of_the_step():
    synthetic = MovingShapes(frames=8, size=16, buckets=[[8, 16, 16], [4, 8, 8], [2, 8, 16]])
    plan = BucketPlan(synthetic, batch_size=5, seed=3, window=40)
    forward = [plan.batch(s) for s in range(30)]
    for batch in forward:
        assert len(batch) == 5 and len({synthetic.item_shape(i) for i in batch}) == 1
    assert len({synthetic.item_shape(b[0]) for b in forward}) == 3
    flat = [i for b in forward for i in b]
    assert len(flat) == len(set(flat))                  # no index is read twice
    again = BucketPlan(synthetic, batch_size=5, seed=3, window=40)
    assert [again.batch(s) for s in reversed(range(30))] == forward[::-1]   # random access

    finite = MovingShapes(frames=8, size=16, length=23, buckets=[[8, 16, 16], [4, 8, 8]])
    plan = BucketPlan(finite, batch_size=4, seed=0)
    per_epoch = sum(c // 4 for c in np.unique([finite.item_shape(i) for i in range(23)], axis=0,
                                               return_counts=True)[1])
    epoch = [plan.batch(s) for s in range(per_epoch)]
    assert len({i for b in epoch for i in b}) == 4 * per_epoch       # an epoch has no repeats
    assert plan.batch(per_epoch) != epoch[0] or plan.batch(per_epoch + 1) != epoch[1]
    with pytest.raises(DatasetError, match="batch_size"):
        BucketPlan(MovingShapes(frames=8, size=16, length=3, buckets=[[8, 16, 16], [4, 8, 8]]), batch_size=4)


# ---------------------------------------------------------------------------------- stretch
def test_stretch_windows_longer_clips_so_motion_slows_by_up_to_the_factor():
    """A stretched MovingShapes clip is a window of a clip L frames long, L in [T, 1 + 4(T-1)]:
    the shape moves 0.45 S / (L - 1) per frame, so speeds span the travel of T to 4(T-1)+1
    frames, and ``start`` stays the centre of the window's frame 0."""
    T, S, s = 9, 32, 4.0
    plain, stretched = MovingShapes(frames=T, size=S, seed=5), MovingShapes(frames=T, size=S, seed=5, stretch=s)
    assert torch.equal(plain[2]["video"], MovingShapes(frames=T, size=S, seed=5, stretch=1.0)[2]["video"])
    speeds = []
    for i in range(60):
        item = stretched[i]
        assert item["video"].shape == (3, T, S, S)
        frames = to_uint8(item["video"])
        # the clip is exactly a rendered clip of its measured length, from its recorded start
        def window_of(L):  # frames offset.. of a clip of L frames whose frame `offset` is at start
            dx, dy = MovingShapes.geometry(item["direction"], L, S)["step"]
            for offset in range(L - T + 1):
                x0, y0 = item["start"][0].item() - dx * offset, item["start"][1].item() - dy * offset
                try:
                    clip = MovingShapes.render(item["color"], item["shape"], item["direction"], L, S, (x0, y0))
                except DatasetError:
                    continue
                if np.array_equal(frames, clip[offset:offset + T]):
                    return True
            return False
        lengths = [L for L in range(T, 2 + int(s * (T - 1))) if window_of(L)]
        assert lengths, f"item {i} is no window of a longer clip from its start"
        speeds.append(0.45 * S / (lengths[0] - 1))
    assert max(speeds) == pytest.approx(0.45 * S / (T - 1))            # L = T is drawn ...
    assert min(speeds) < 0.45 * S / (3 * (T - 1))                      # ... and down to ~4x slower
    assert min(speeds) >= 0.45 * S / (s * (T - 1)) - 1e-9
    assert torch.equal(stretched[7]["video"], MovingShapes(frames=T, size=S, seed=5, stretch=s)[7]["video"])


def test_stretch_cuts_per_frame_metadata_with_the_frames():
    digits = MovingDigits(frames=6, size=32, seed=1, stretch=3.0)
    side = round(0.4 * 32)
    for i in range(6):
        item = digits[i]
        assert item["positions"].shape == (len(item["digits"]), 6, 2)
        if len(item["digits"]) == 1:  # the glyph's box starts where its position says, every frame
            video = (item["video"][0] + 1).numpy()
            for t, (x, y) in enumerate(np.rint(item["positions"][0].numpy()).astype(int)):
                assert video[t, y:y + side, x:x + side].sum() == pytest.approx(video[t].sum())
    pan = PhotoPan(frames=5, size=16, seed=0, stretch=2.0)
    assert pan[0]["boxes"].shape == (5, 4)


def test_stretch_bad_values_are_refused():
    with pytest.raises(DatasetError, match="stretch must be >= 1"):
        MovingShapes(frames=4, stretch=0.5)
    with pytest.raises(ConfigError, match=r"data.stretch must be >= 1.*0.5"):
        DataConfig(stretch=0.5)
    with pytest.raises(ConfigError, match="data.stretch applies only to"):
        build_dataset({"name": ".", "stretch": 2.0})


# ---------------------------------------------------------------------------------- frame strides
def test_frame_strides_show_one_scene_at_several_frame_rates():
    """A MovingDigits item at stride 0.5 is the same scene as at stride 1 with a frame between
    each pair (its even frames are the stride-1 clip, positions and pixels); at stride 2 it is
    every other frame of a clip twice as long. Each item says its stride."""
    T, S = 5, 32
    plain, long = MovingDigits(frames=T, size=S, seed=3), MovingDigits(frames=2 * T - 1, size=S, seed=3)
    half = MovingDigits(frames=2 * T - 1, size=S, seed=3, frame_strides=[0.5])
    double = MovingDigits(frames=T, size=S, seed=3, frame_strides=[2])
    for i in range(4):
        assert half[i]["frame_stride"] == 0.5 and double[i]["frame_stride"] == 2.0
        assert plain[i]["frame_stride"] == 1.0
        assert torch.equal(half[i]["positions"][:, ::2], plain[i]["positions"])
        assert torch.equal(half[i]["video"][:, ::2], plain[i]["video"])
        assert not torch.equal(half[i]["positions"][:, 1], plain[i]["positions"][:, 1])
        assert torch.equal(double[i]["video"], long[i]["video"][:, ::2])
        assert torch.equal(double[i]["positions"], long[i]["positions"][:, ::2])
    mixed = MovingDigits(frames=T, size=S, seed=3, frame_strides=[0.25, 0.5, 1.0])
    drawn = [mixed[i]["frame_stride"] for i in range(40)]
    assert set(drawn) == {0.25, 0.5, 1.0}                                # every rate is drawn ...
    assert drawn == [MovingDigits(frames=T, size=S, seed=3, frame_strides=[0.25, 0.5, 1.0])[i]["frame_stride"]
                     for i in range(40)]                                 # ... the same way each time
    quarter = [i for i, v in enumerate(drawn) if v == 0.25][0]
    slow = MovingDigits(frames=T, size=S, seed=3, frame_strides=[0.25])[quarter]
    assert torch.equal(mixed[quarter]["video"], slow["video"])


def test_frame_strides_are_refused_where_speed_follows_the_clip_length():
    """MovingShapes and PhotoPan move by a fraction of the frame over the whole clip, whatever
    its length: a stride would relabel the same motion. Only digits take frame strides."""
    with pytest.raises(DatasetError, match=r"frame_strides must be positive, got \[-1.0\]"):
        MovingDigits(frames=4, frame_strides=[-1])
    with pytest.raises(ConfigError, match="data.frame_strides applies only to 'digits', not to 'shapes'"):
        build_dataset({"name": "shapes", "frames": 4, "frame_strides": [0.5]})
    with pytest.raises(ConfigError, match=r"data.frame_strides must be positive, got \[0.5, 0\]"):
        DataConfig(name="digits", frame_strides=[0.5, 0])
    assert build_dataset({"name": "digits", "frames": 4, "size": 16, "frame_strides": [0.5]})[0]["frame_stride"] == 0.5
