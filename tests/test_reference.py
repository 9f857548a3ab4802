"""Reference images: the pathway is exactly absent without a reference, dropped with the prompt,
trained on shifted frames of each clip with the subject words dropped, and refused where a
model has no such pathway."""
import numpy as np
import pytest
import torch
from PIL import Image

import vidiff
from test_backbones import TEXT_DIM, one_per_backbone, text_cond
from vidiff.cli import main
from vidiff.compose.config import ReferenceConfig
from vidiff.data.shapes import render
from vidiff.train.config import load_run_config
from vidiff.train.objective import SampleDraws
from vidiff.train.run import build_trainer, train
from vidiff.video import Video

pytestmark = pytest.mark.usefixtures("one_thread")


def image(seed: int = 7, size: int = 20) -> torch.Tensor:
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("b", one_per_backbone())
def test_without_a_reference_the_pathway_is_exactly_absent(b):
    plain = b.make(text_dim=TEXT_DIM)
    torch.manual_seed(11)
    with_ref = b.build(text_dim=TEXT_DIM, reference_tokens=3).eval()
    missing, unexpected = with_ref.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(m.startswith("cond.reference.") for m in missing)
    x, t = b.clip(T=5), torch.rand(2)
    with torch.no_grad():
        alone = plain(x, t, text_cond())
        assert torch.equal(with_ref(x, t, text_cond()), alone)
        given = with_ref(x, t, text_cond(reference=image()))
        other = with_ref(x, t, text_cond(reference=image(seed=8)))
        # A row whose prompt is dropped drops its reference too; a masked row has none.
        dropped = with_ref(x, t, text_cond(reference=image(), drop_text=torch.tensor([True, False])))
        null = with_ref(x, t, text_cond(drop_text=torch.tensor([True, False])))
        masked = with_ref(x, t, text_cond(reference=image(), reference_mask=torch.tensor([False, True])))
    assert not torch.allclose(given, alone, atol=1e-4) and not torch.allclose(given, other, atol=1e-4)
    assert torch.allclose(dropped[0], null[0], atol=1e-5)
    assert torch.allclose(masked[0], alone[0], atol=1e-5) and torch.allclose(masked[1], given[1], atol=1e-5)
    with pytest.raises(ValueError, match="built without a reference pathway"):
        plain(x, t, text_cond(reference=image()))


def test_reference_images_are_shifted_frames_and_captions_lose_the_subject():
    class Holder:                       # reference_images reads only self.reference
        reference = ReferenceConfig(prob=1.0, drop_prob=1.0, drop_words=["red", "circle"])
    from vidiff.train.objective import DiffusionObjective
    clip = Video(render("red", "circle", "right", frames=4, size=16, start=(5.0, 8.0))).to_tensor()
    clips = torch.stack([clip, clip])
    draws = SampleDraws(seed=3, step=5, indices=[0, 1], global_batch=2)
    captions, (images, given) = DiffusionObjective.reference_images(
        Holder(), clips, ["a red circle moving right", "a red circle moving right"], draws)
    assert captions == ["a moving right"] * 2 and given.all()
    for i in range(2):
        matches = [(f, dy, dx) for f in range(4) for dy in range(16) for dx in range(16)
                   if torch.equal(images[i], torch.roll(clip[:, f], (dy, dx), (1, 2)))]
        assert matches                  # some frame of the clip, circularly shifted
    again = DiffusionObjective.reference_images(Holder(), clips, ["x y"] * 2, draws)[1][0]
    assert torch.equal(again, images)   # fixed by (seed, step, sample)
    Holder.reference = ReferenceConfig(prob=0.0, drop_words=["red"])
    captions, (images, given) = DiffusionObjective.reference_images(Holder(), clips, ["a red one"] * 2, draws)
    assert captions == ["a red one"] * 2 and not given.any() and not images.any()


RUN = {"model": {"size": "unet-tiny", "overrides": {"channels": [8, 16], "norm_groups": 4, "patch": 2,
                                                    "spatial_attention": [], "temporal_attention": [],
                                                    "mid_attention": False, "reference_tokens": 2}},
       "data": {"name": "shapes", "frames": 4, "size": 16},
       "text": {"dim": 16, "depth": 1, "heads": 2},
       "reference": {"prob": 0.5, "drop_words": ["red", "green", "blue", "circle", "square", "triangle"]},
       "train": {"steps": 1, "batch_size": 2, "warmup_steps": 1, "checkpoint_every": 1}}


@pytest.fixture(scope="module")
def tiny_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-reference")
    train(load_run_config(None, [f"train.out_dir={out}"], base=RUN), progress=False)
    return out


def test_generate_with_a_reference(tiny_reference, tiny_model, tmp_path, capsys):
    pipe = vidiff.load(tiny_reference, device="cpu")
    frame = render("blue", "square", "up", frames=2, size=16)[0]                  # (H, W, 3) uint8
    kwargs = dict(steps=2, seed=1)
    a = pipe.generate("a moving up", reference=frame, **kwargs)
    b = pipe.generate("a moving up", reference=Video(frame[None]), **kwargs)
    plain = pipe.generate("a moving up", **kwargs)
    assert np.array_equal(a.frames, b.frames) and not np.array_equal(a.frames, plain.frames)
    with pytest.raises(ValueError, match="has no reference pathway"):
        vidiff.load(tiny_model, device="cpu").generate("a moving up", reference=frame, steps=2)
    with pytest.raises(ValueError, match="the reference must be one image, got 2 frames"):
        pipe.generate("a moving up", reference=render("blue", "square", "up", frames=2, size=16), steps=2)
    Image.fromarray(frame).save(tmp_path / "ref.png")
    Video(render("blue", "square", "up", frames=2, size=16)).save(tmp_path / "two.mp4")
    out = tmp_path / "o.mp4"
    assert main(["generate", "--model", str(tiny_reference), "--prompt", "a moving up", "--reference",
                 str(tmp_path / "ref.png"), "--steps", "2", "--out", str(out)]) == 0
    assert Video.load(out).num_frames == 4
    capsys.readouterr()
    assert main(["generate", "--model", str(tiny_reference), "--prompt", "a moving up", "--reference",
                 str(tmp_path / "two.mp4"), "--steps", "2", "--out", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has 2 frames; give one image" in err[0] and not (tmp_path / "x.mp4").exists()
    (tmp_path / "broken.png").write_bytes(b"not an image")
    assert main(["generate", "--model", str(tiny_reference), "--prompt", "a moving up", "--reference",
                 str(tmp_path / "broken.png"), "--steps", "2", "--out", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read reference image" in err[0] and not (tmp_path / "x.mp4").exists()


def test_a_reference_run_is_checked(tmp_path):
    bad_prob = {**RUN, "model": {"size": "unet-tiny", "overrides": {"channels": [8, 16], "norm_groups": 4}}}
    with pytest.raises(ValueError, match="reference.prob is 0.5 but the network has no reference pathway"):
        build_trainer(load_run_config(None, [f"train.out_dir={tmp_path}"], base=bad_prob), progress=False)
    never = {**RUN, "reference": {"prob": 0.0}}
    with pytest.raises(ValueError, match="would never train: set reference.prob > 0"):
        build_trainer(load_run_config(None, [f"train.out_dir={tmp_path}"], base=never), progress=False)
    with pytest.raises(ValueError, match=r"reference.drop_prob must be in \[0, 1\]"):
        ReferenceConfig(drop_prob=1.5)
