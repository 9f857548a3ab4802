"""Video round trips through every container, tensor conversion, and bad input."""
import numpy as np
import pytest
import torch

from vidiff.video import Video


def clip(T=9, H=34, W=50, fps=12.0):
    """Smooth gradients plus a moving yellow square: content codecs handle well but not trivially."""
    yy, xx = np.mgrid[0:H, 0:W]
    frames = np.zeros((T, H, W, 3), np.uint8)
    for t in range(T):
        frames[t, ..., 0] = (xx * 4 + t * 3) % 256
        frames[t, ..., 1] = (yy * 6) % 256
        frames[t, ..., 2] = 90
        frames[t, 5:12, 3 + 3 * t:10 + 3 * t] = [255, 255, 0]
    return Video(frames, fps)


# Mean absolute error bounds; measured on this content: mp4 ~2.9 (4:2:0) and ~1.0 (4:4:4, odd
# sides), webm ~2.5, gif ~2.3.
@pytest.mark.parametrize("ext,bound", [(".mp4", 4.0), (".webm", 5.0), (".gif", 5.0), ("", 0.0)])
@pytest.mark.parametrize("size", [(34, 50), (33, 47)])
def test_round_trip(tmp_path, ext, bound, size):
    video = clip(H=size[0], W=size[1])
    path = tmp_path / f"clip{ext}"
    video.save(path)
    back = Video.load(path)
    assert back.frames.shape == video.frames.shape
    error = np.abs(back.frames.astype(int) - video.frames.astype(int)).mean()
    assert error <= bound
    if ext == ".gif":
        assert back.fps == pytest.approx(1000 / 80)  # 83.3 ms rounds to GIF's 10 ms grid: 80 ms
    else:
        assert back.fps == pytest.approx(12.0, abs=1e-3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary files left


def test_lossless_mp4_is_exact_in_yuv444(tmp_path):
    video = clip(H=33, W=47)  # odd sides: written as yuv444p
    video.save(tmp_path / "x.mp4", quality=0)
    back = Video.load(tmp_path / "x.mp4")
    assert np.abs(back.frames.astype(int) - video.frames.astype(int)).max() <= 2


def test_max_frames_and_fractional_fps(tmp_path):
    video = Video(clip().frames, fps=30000 / 1001)
    video.save(tmp_path / "x.mp4")
    back = Video.load(tmp_path / "x.mp4", max_frames=4)
    assert back.num_frames == 4 and back.fps == pytest.approx(29.97, abs=1e-2)


def test_tensor_round_trip_is_exact():
    video = clip()
    x = video.to_tensor()
    assert x.shape == (3, 9, 34, 50) and x.dtype == torch.float32
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    assert float(x[0, 0, 0, 0]) == pytest.approx(-1.0)  # pixel 0 -> -1
    assert np.array_equal(Video.from_tensor(x).frames, video.frames)
    assert np.array_equal(Video.from_tensor(x[None] * 3).frames.max(), 255)  # clamped


def test_grid_tiles_with_gutter():
    a = Video(np.full((2, 4, 5, 3), 10, np.uint8))
    b = Video(np.full((3, 4, 5, 3), 200, np.uint8))
    g = Video.grid([a, b, a], cols=2, gutter=2)
    assert g.frames.shape == (3, 4 + 2 + 4, 5 + 2 + 5, 3)
    assert g.frames[2, 0, 0, 0] == 10 and g.frames[2, 0, 7, 0] == 200 and g.frames[0, 6, 0, 0] == 10
    assert g.frames[0, 4, 0, 0] == 0 and g.frames[0, 0, 5, 0] == 0  # gutters
    assert g.frames[0, 6, 7, 0] == 0  # the empty fourth cell


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="uint8, got float32"):
        Video(np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(T >= 1, H, W, 3\), got \(2, 4, 4\)"):
        Video(np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="unknown extension '.avi'.*.mp4"):
        clip().save(tmp_path / "x.avi")
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        Video.load(tmp_path / "missing.mp4")
    (tmp_path / "garbage.mp4").write_bytes(b"\x00not a video" * 100)
    with pytest.raises(ValueError, match="garbage.mp4"):
        Video.load(tmp_path / "garbage.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.mp4"):
        Video.load(tmp_path / "empty.mp4")
    (tmp_path / "noframes").mkdir()
    with pytest.raises(ValueError, match="no image frames"):
        Video.load(tmp_path / "noframes")
    (tmp_path / "keep").mkdir()
    (tmp_path / "keep" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="refusing to replace"):
        clip().save(tmp_path / "keep")
    assert (tmp_path / "keep" / "notes.txt").read_text() == "mine"


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    def explode(self, path, ext, quality):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("encoder died")
    monkeypatch.setattr(Video, "_write_av", explode)
    with pytest.raises(RuntimeError):
        clip().save(tmp_path / "out.mp4")
    assert list(tmp_path.iterdir()) == []
