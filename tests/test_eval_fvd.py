"""FVD end to end with a tiny TorchScript stand-in for I3D, the vidiff-shapes network, bad input."""
import json

import numpy as np
import pytest
import torch

from vidiff.cli import main
from vidiff.eval.features import load_extractor
from vidiff.eval.frechet import frechet_from_features, polynomial_mmd
from vidiff.video import Video


class I3DStandIn(torch.nn.Module):
    """The I3D export's signature; returns what it received: per-channel means (3), per-channel
    std over time of the frame means (3), T, H, W, min, max. Refuses to rescale or resize."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        if rescale or resize:
            raise RuntimeError("stand-in: vidiff must rescale and resize itself")
        frame_means = x.mean(dim=(3, 4))                                  # (B, 3, T)
        B = x.shape[0]
        size = torch.tensor([x.shape[2], x.shape[3], x.shape[4]], dtype=x.dtype).expand(B, 3)
        stats = torch.stack([x.amin(dim=(1, 2, 3, 4)), x.amax(dim=(1, 2, 3, 4))], 1)
        features = torch.cat([frame_means.mean(2), frame_means.std(2), size, stats], 1)  # (B, 11)
        return features if return_features else features[:, :2]          # "logits" otherwise


class PlainFeatures(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3, 4))                                      # (B, 3)


class WrongShape(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(3, 4))                                         # (B, 3, T): not (B, D)


def _script(module, path):
    torch.jit.script(module).save(str(path))
    return str(path)


def _colours(rng, frames):
    return rng.integers(0, 256, size=(frames, 3))


def _write_clips(folder, count, rng, frames=20, size=(8, 8)):
    """Clips whose frame k is one flat colour; returns the colours, (count, frames, 3)."""
    colours = []
    for i in range(count):
        c = _colours(rng, frames)
        clip = np.broadcast_to(c[:, None, None, :], (frames, *size, 3)).astype(np.uint8)
        Video(clip).save(folder / f"clip_{i:02d}")
        colours.append(c)
    return np.array(colours)


def _expected_features(colours, frames=16):
    x = colours[:, :frames].astype(np.float64) / 127.5 - 1.0              # (N, T, 3)
    n = len(x)
    size = np.tile([frames, 224, 224], (n, 1))
    return np.concatenate([x.mean(1), x.std(1, ddof=1), size, x.min((1, 2))[:, None], x.max((1, 2))[:, None]], 1)


@pytest.fixture(scope="module")
def i3d(tmp_path_factory):
    return _script(I3DStandIn(), tmp_path_factory.mktemp("i3d") / "i3d.pt")


@pytest.fixture(scope="module")
def clip_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(0)
    (root / "real").mkdir()
    (root / "fake").mkdir()
    return root, _write_clips(root / "real", 12, rng), _write_clips(root / "fake", 12, rng)


def test_preprocessing_seen_by_the_network(i3d):
    extractor = load_extractor(i3d)
    assert extractor.i3d_call and extractor.comparable
    rng = np.random.default_rng(1)
    colours = np.stack([_colours(rng, 20) for _ in range(2)])                     # (2, 20, 3)
    clips = np.broadcast_to(colours[:, :, None, None, :], (2, 20, 6, 10, 3)).astype(np.uint8)  # non-square
    features = extractor(clips)
    assert features.shape == (2, 11)
    assert np.allclose(features, _expected_features(colours), atol=1e-5)  # 16 frames, 224x224, [-1, 1]
    full_range = np.zeros((1, 16, 8, 8, 3), np.uint8)
    full_range[0, 1:] = 255
    assert np.allclose(extractor(full_range)[0, -2:], [-1.0, 1.0])


def test_fvd_end_to_end(i3d, clip_sets, tmp_path, capsys):
    root, real, fake = clip_sets
    out = tmp_path / "fvd.json"
    assert main(["eval", "fvd", "--real", str(root / "real"), "--fake", str(root / "fake"), "--features", i3d,
                 "--clips", "12", "--batch", "5", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    expected_real, expected_fake = _expected_features(real), _expected_features(fake)
    assert report["frechet"] == pytest.approx(frechet_from_features(expected_real, expected_fake), rel=1e-4)
    assert report["kernel"] == pytest.approx(polynomial_mmd(expected_real, expected_fake), rel=1e-4, abs=1e-7)
    assert report["clips"] == {"real": 12, "generated": 12} and report["name"] == "FVD"
    assert report["protocol"]["call"] == "model(x, rescale=False, resize=False, return_features=True)"
    printed = capsys.readouterr().out
    assert "FVD" in printed and "KVD" in printed and "12" in printed


def test_other_torchscript_extractor_is_labelled(clip_sets, tmp_path):
    root, real, fake = clip_sets
    path = _script(PlainFeatures(), tmp_path / "plain.pt")
    out = tmp_path / "fd.json"
    assert main(["eval", "fd", "--real", str(root / "real"), "--fake", str(root / "fake"), "--features", path,
                 "--clips", "10", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    x, y = (real[:10, :16].astype(np.float64) / 127.5 - 1).mean(1), (fake[:10, :16] / 127.5 - 1).mean(1)
    assert report["frechet"] == pytest.approx(frechet_from_features(x, y), rel=1e-4)
    assert report["name"] == "FD" and not report["comparable_with_published_fvd"]
    assert "NOT comparable" in report["note"] and report["protocol"]["call"] == "model(x)"


def test_bad_input_is_one_clear_line_and_writes_no_report(i3d, clip_sets, tmp_path, capsys):
    root, _, _ = clip_sets
    out = tmp_path / "r.json"

    def fails(*extra, features=i3d, fake=root / "fake", clips="12"):
        argv = ["eval", "fvd", "--real", str(root / "real"), "--fake", str(fake), "--json", str(out),
                "--features", features, "--clips", clips, *extra]
        assert main(argv) == 2
        assert not out.exists()
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
        return err

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a model")
    assert "is not a TorchScript file" in fails(features=str(garbage))
    assert "is not a file" in fails(features=str(tmp_path / "missing.pt"))
    assert "expected a (batch, features) tensor" in fails(features=_script(WrongShape(), tmp_path / "wrong.pt"))
    assert "needs at least 12 clips per set, got 5" in fails(clips="5")
    assert "holds 12 clips, fewer than the 30 requested" in fails(clips="30")
    (tmp_path / "empty").mkdir()
    assert "holds no clips" in fails(fake=tmp_path / "empty")
    mixed = tmp_path / "mixed"
    _write_clips(mixed, 11, np.random.default_rng(2))
    _write_clips(mixed / "z", 1, np.random.default_rng(3), size=(10, 10))
    assert "mixed sizes" in fails(fake=mixed)
    short = tmp_path / "short"
    _write_clips(short, 12, np.random.default_rng(4), frames=8)
    assert "8 frames, fewer than the 16 required" in fails(fake=short)
    assert "unknown metric 'fid'" in fails("--metrics", "fid")


def test_vidiff_shapes_features_are_trained_and_separate_datasets(tmp_path):
    from vidiff.data import MovingDigits, MovingShapes
    from vidiff.eval.shapes_features import LABELS, load_shapes_features
    from vidiff.eval.distance import video_distance

    net = load_shapes_features()
    data = MovingShapes(frames=16, size=32, seed=7)
    items = [data[i] for i in range(48)]
    with torch.no_grad():
        logits = net.logits(torch.stack([it["video"] for it in items]))
    for key, names in LABELS.items():
        accuracy = np.mean([names[int(k)] == it[key] for k, it in zip(logits[key].argmax(1), items)])
        assert accuracy >= 0.9, key
    for name, dataset in (("shapes", MovingShapes(frames=8, size=32, seed=1)),
                          ("digits", MovingDigits(frames=8, size=32, seed=1))):
        for i in range(66):
            Video.from_tensor(dataset[i]["video"]).save(tmp_path / name / f"{i:03d}.gif")
    same = video_distance("shapes", str(tmp_path / "shapes"), clips=66, frames=8, batch=33)
    other = video_distance("shapes", str(tmp_path / "digits"), clips=66, frames=8, batch=33)
    assert same["feature_dim"] == 64 and same["name"] == "FD" and "NOT comparable" in same["note"]
    assert 0 <= same["frechet"] < other["frechet"] / 3 and same["kernel"] < other["kernel"]


def test_feature_training_is_deterministic(tmp_path):
    from vidiff.eval.shapes_features import train_shapes_features
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    for path in (a, b):
        train_shapes_features(path, steps=2, batch=4, check=4, progress=False)
    from safetensors.torch import load_file
    first, second = load_file(str(a)), load_file(str(b))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    with pytest.raises(ValueError, match="must end in .safetensors"):
        train_shapes_features(tmp_path / "x.pt", steps=1)
