"""Every frame-task command end to end on a tiny mask-trained model, and its bad input."""
import numpy as np
import pytest

from vidiff.cli import main
from vidiff.train.config import load_run_config
from vidiff.train.run import train
from vidiff.video import Video

SIZE, FRAMES = 16, 4
FAST = ["--steps", "2", "--sampler", "ddim"]


@pytest.fixture(scope="module")
def tiny_tasks(tmp_path_factory, one_thread):
    """A tiny U-Net with known-frame inputs, trained 2 steps on the task mix of 4-frame clips."""
    out = tmp_path_factory.mktemp("tiny-tasks")
    smaller = {"channels": [8, 16], "norm_groups": 4, "patch": 2, "spatial_attention": [],
               "temporal_attention": [], "mid_attention": False, "known_frames": True}
    base = {"model": {"size": "unet-tiny", "overrides": smaller},
            "data": {"name": "shapes", "frames": FRAMES, "size": SIZE},
            "text": {"dim": 16, "depth": 1, "heads": 2},
            "train": {"steps": 2, "batch_size": 4, "warmup_steps": 1, "checkpoint_every": 2}}
    train(load_run_config(None, [f"train.out_dir={out}"], base=base), progress=False)
    return str(out)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    video = Video(rng.integers(0, 256, (FRAMES, SIZE, SIZE, 3), dtype=np.uint8), fps=8)
    video.save(root / "in.mp4")
    Video(video.frames[:1]).save(root / "image")                  # a folder with one PNG
    mask = np.zeros((1, SIZE, SIZE, 3), np.uint8)
    mask[0, :8, :8] = 255
    Video(mask).save(root / "mask")
    Video(np.zeros_like(mask)).save(root / "black")
    Video(video.frames[:, :, :8].copy()).save(root / "narrow.mp4")
    Video(video.frames[:1, :, :8].copy()).save(root / "narrow_image")
    (root / "schedule.txt").write_text("0 a red circle moving right\n6 a blue square moving down\n")
    (root / "bad_schedule.txt").write_text("4 a red circle moving right\n2 a blue square moving down\n")
    return root


def _frames(path) -> int:
    return Video.load(path).num_frames


def test_every_frame_command_runs_end_to_end(tiny_tasks, inputs, tmp_path, capsys):
    m = ["--model", tiny_tasks]
    video, image = str(inputs / "in.mp4"), str(inputs / "image" / "frame_00000.png")
    assert main(["animate", image, "--prompt", "a red circle moving right", "--frames", "4",
                 "--frame-index", "1", "--out", str(tmp_path / "a.mp4"), *m, *FAST]) == 0
    assert _frames(tmp_path / "a.mp4") == 4
    assert main(["predict", video, "--context", "2", "--frames", "6", "--samples", "2",
                 "--out", str(tmp_path / "future.mp4"), *m, *FAST]) == 0
    assert _frames(tmp_path / "future_0.mp4") == 6 and _frames(tmp_path / "future_1.mp4") == 6
    assert main(["interpolate", video, "--factor", "3", "--out", str(tmp_path / "i"), *m, *FAST]) == 0
    out = Video.load(tmp_path / "i")
    assert out.num_frames == (FRAMES - 1) * 3 + 1 and out.fps == 24
    assert np.array_equal(out.frames[::3], Video.load(video).frames)   # PNG frames: lossless
    assert main(["inpaint", video, "--box", "0,0,8,8", "--frame-range", "1,2", "--prompt", "a red circle moving right",
                 "--out", str(tmp_path / "b.mp4"), *m, *FAST]) == 0
    assert main(["inpaint", video, "--mask", str(inputs / "mask"), "--out", str(tmp_path / "c.mp4"), *m, *FAST]) == 0
    assert main(["outpaint", str(inputs / "narrow.mp4"), "--pad", "left=4,right=4", "--out",
                 str(tmp_path / "o.mp4"), *m, *FAST]) == 0
    assert Video.load(tmp_path / "o.mp4").width == SIZE
    assert main(["extend", video, "--frames", "10", "--out", str(tmp_path / "e.mp4"), *m, *FAST]) == 0
    assert _frames(tmp_path / "e.mp4") == 10
    assert main(["generate", "--prompt", "a red circle moving right", "--frames", "9", "--prompt-schedule",
                 str(inputs / "schedule.txt"), "--out", str(tmp_path / "g.mp4"), *m, *FAST]) == 0
    assert _frames(tmp_path / "g.mp4") == 9
    for method in ("guidance", "replace"):
        assert main(["predict", video, "--context", "2", "--frames", "4", "--method", method,
                     "--out", str(tmp_path / f"{method}.mp4"), *m, *FAST]) == 0


@pytest.mark.parametrize("args, words", [
    (["interpolate", "{video}", "--factor", "1"], "--factor must be >= 2"),
    (["predict", "{video}", "--context", "4", "--frames", "8"], "not shorter than the model's window"),
    (["predict", "{video}", "--context", "2", "--frames", "2"], "must exceed the context"),
    (["inpaint", "{video}", "--box", "0,0,20,8"], "x1 <= 16"),
    (["inpaint", "{video}", "--mask", "{black}"], "all black"),
    (["inpaint", "{video}"], "exactly one of --mask and --box"),
    (["outpaint", "{video}", "--pad", "left=-4"], "negative"),
    (["outpaint", "{video}", "--pad", "left=3"], "does not fit the model"),
    (["outpaint", "{video}", "--pad", "top=0"], "grows nothing"),
    (["animate", "{narrow_image}"], "do not fit this model"),
    (["extend", "{video}", "--frames", "12", "--prompt-schedule", "{bad_schedule}"], "does not increase"),
    (["extend", "{video}", "--frames", "12", "--scheme", "hierarchical"], "frame_stride"),
    (["predict", "{video}", "--context", "2", "--frames", "6", "--method", "mix"], "unknown method"),
])
def test_bad_input_is_one_line_and_writes_nothing(tiny_tasks, inputs, tmp_path, capsys, args, words):
    paths = {"video": inputs / "in.mp4", "black": inputs / "black", "narrow": inputs / "narrow.mp4",
             "narrow_image": inputs / "narrow_image" / "frame_00000.png",
             "bad_schedule": inputs / "bad_schedule.txt"}
    argv = [a.format(**{k: str(v) for k, v in paths.items()}) for a in args]
    out = tmp_path / "out.mp4"
    assert main(argv + ["--out", str(out), "--model", tiny_tasks, *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_frame_commands_default_to_no_guidance_on_a_mask_trained_model(tiny_tasks, inputs, tmp_path, monkeypatch):
    """Left unset, --guidance is SampleConfig.known_guidance (1) for method mask, where the
    unconditional branch sees the known frames but not the text; the text-to-video default (5)
    for the other methods; a given --guidance wins; generate keeps 5."""
    from vidiff.pipelines.video import DEFAULTS, VideoPipeline
    used = []
    run = VideoPipeline._run

    def spy(self, *args, **options):
        used.append(options["guidance"])
        return run(self, *args, **options)
    monkeypatch.setattr(VideoPipeline, "_run", spy)
    predict = ["predict", str(inputs / "in.mp4"), "--model", tiny_tasks, "--context", "2", "--frames", "4",
               "--prompt", "a red circle moving right", *FAST]
    assert main(predict + ["--out", str(tmp_path / "a.mp4")]) == 0
    assert main(predict + ["--method", "replace", "--out", str(tmp_path / "b.mp4")]) == 0
    assert main(predict + ["--guidance", "3", "--out", str(tmp_path / "c.mp4")]) == 0
    assert main(["generate", "--model", tiny_tasks, "--prompt", "a red circle moving right", *FAST,
                 "--out", str(tmp_path / "d.mp4")]) == 0
    assert used == [DEFAULTS.known_guidance, DEFAULTS.guidance, 3.0, DEFAULTS.guidance] == [1.0, 5.0, 3.0, 5.0]
