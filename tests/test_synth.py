"""``vidiff synth``: verified labels, rejections, resume, shards and settings, against a stand-in
pipeline that renders true (or, for known seeds, wrong) MovingShapes clips; then the command on a
tiny trained model."""
import json

import numpy as np
import pytest
import torch

from vidiff.apps.synth import (SynthError, clip_seed, prompt_triple, read_rows, shard_from_env,
                               synthesize)
from vidiff.cli import main
from vidiff.data import DEMO_HELD_OUT, build_dataset
from vidiff.data.shapes import all_triples, caption, geometry, render
from vidiff.eval.shapes import detect, parse_caption
from vidiff.video import Video

SEED, N, ATTEMPTS = 5, 12, 3
SWAP = {"red": "blue", "blue": "red", "green": "yellow", "yellow": "green", "cyan": "magenta",
        "magenta": "cyan", "white": "red"}
NEVER = caption(*prompt_triple(SEED, 3, all_triples()))   # index 3's prompt: never drawn right


def wrong(prompt: str, seed: int) -> bool:
    """Whether the stand-in draws this (prompt, seed) with the wrong colour."""
    return seed % 3 == 0 or prompt == NEVER


class RenderingPipe:
    """Stands in for a VideoPipeline: clip ``seed`` of a prompt is the prompt's true clip, from a
    start drawn from the seed, except that :func:`wrong` pairs get the wrong colour. With
    ``stop_after`` it raises KeyboardInterrupt at that sampling call (an interrupted run)."""

    frames, height, width = 8, 32, 32
    text_encoder = "stand-in"

    def __init__(self, stop_after=None):
        self.stop_after, self.calls = stop_after, []

    def encode(self, prompts):
        return list(prompts)

    def clip_shape(self, frames=None, height=None, width=None):
        return (3, frames or self.frames, height or self.height, width or self.width)

    def sample(self, cond, shape, seeds, **options):
        if self.stop_after is not None and len(self.calls) == self.stop_after:
            raise KeyboardInterrupt
        self.calls.append(list(zip(cond, seeds)))
        _, T, H, W = shape
        clips = []
        for prompt, seed in zip(cond, seeds):
            color, form, direction = parse_caption(prompt)
            g = geometry(direction, T, (H, W))
            rng = np.random.default_rng(seed)
            start = (rng.uniform(*g["x"]), rng.uniform(*g["y"]))
            color = SWAP[color] if wrong(prompt, seed) else color
            clips.append(torch.from_numpy(render(color, form, direction, T, (H, W), start)))
        return torch.stack(clips).permute(0, 4, 1, 2, 3).float() / 127.5 - 1   # (B, 3, T, H, W)

    def decode(self, x0):
        return [Video.from_tensor(clip) for clip in x0]


def run(out, pipe=None, **options):
    options = {"n": N, "seed": SEED, "max_attempts": ATTEMPTS, "batch": 4, "rank": 0, "world_size": 1,
               "progress": False, **options}
    return synthesize(pipe or RenderingPipe(), out, model="stand-in", **options)


def expected_rejections(index: int) -> int:
    """Attempts index ``index`` needs before a right clip: counted from the stand-in's rule."""
    prompt = caption(*prompt_triple(SEED, index, all_triples()))
    attempt = 0
    while attempt < ATTEMPTS and wrong(prompt, clip_seed(SEED, index, attempt)):
        attempt += 1
    return attempt


def frames_of(folder, rows):
    return {r["index"]: Video.load(folder / r["file"]).frames for r in rows}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference: one uninterrupted single-process run."""
    out = tmp_path_factory.mktemp("single")
    return out, run(out)


def test_prompts_balanced_and_seeds_pure():
    triples = all_triples()
    assert sorted(prompt_triple(7, i, triples) for i in range(84)) == sorted(triples)     # one round
    assert sorted(prompt_triple(7, i, triples) for i in range(84, 168)) == sorted(triples)
    assert [prompt_triple(7, i, triples) for i in range(84)] != [prompt_triple(8, i, triples) for i in range(84)]
    seeds = {clip_seed(7, i, a) for i in range(50) for a in range(4)}
    assert len(seeds) == 200 and all(0 <= s < 2 ** 32 for s in seeds)
    assert clip_seed(7, 3, 1) == clip_seed(7, 3, 1)


def test_labels_match_detector_and_rejections_are_counted(single):
    out, report = single
    rows = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    want = {i: expected_rejections(i) for i in range(N)}
    failed = [i for i in range(N) if want[i] == ATTEMPTS]
    assert failed == [3]                                             # the NEVER prompt only
    assert sum(want.values()) > ATTEMPTS                             # some rejections besides index 3
    assert [r["index"] for r in rows] == [i for i in range(N) if i not in failed]
    for r in rows:
        triple = prompt_triple(SEED, r["index"], all_triples())
        assert r["prompt"] == r["caption"] == caption(*triple)
        assert r["rejections"] == want[r["index"]]
        assert r["seed"] == clip_seed(SEED, r["index"], r["rejections"])    # the first right attempt
        found = detect(Video.load(out / r["file"]))                         # read back from disk
        assert (found["color"], found["shape"], found["direction"]) == triple
        assert (r["color"], r["shape"], r["direction"]) == triple
    summary = json.loads((out / "summary.json").read_text())
    assert summary == {"n": N, "clips": N - 1, "failed": [3], "rejections": sum(want.values()),
                       "attempts": sum(want.values()) + N - 1}
    assert report["summary"] == summary and report["failed"] == [3] and report["generated"] == N
    failure = [r for r in read_rows(out / "labels.rank0.jsonl") if r.get("failed")]
    assert len(failure) == 1 and failure[0]["detected"]["color"] == SWAP[parse_caption(NEVER)[0]]
    assert not list((out / "clips").glob(".*"))                    # no temporary left behind


def test_resume_after_interruption_loses_and_duplicates_nothing(tmp_path):
    # PNG clips, so that frames compare exactly (x264's output may vary with its thread count)
    reference, out = tmp_path / "reference", tmp_path / "resumed"
    run(reference, format="png")
    with pytest.raises(KeyboardInterrupt):
        run(out, RenderingPipe(stop_after=2), batch=2, format="png")
    labels = out / "labels.rank0.jsonl"
    lines = labels.read_text().splitlines(keepends=True)
    assert 1 < len(lines) <= 4 and not (out / "labels.jsonl").exists()
    lost = json.loads(lines[-1])
    # a crash after a clip but before its line, and a line cut short by a crash
    labels.write_text("".join(lines[:-1]) + '{"index": 7, "prompt": "a re')
    pipe = RenderingPipe()
    report = run(out, pipe, batch=2, format="png")
    redone = {seed for call in pipe.calls for _, seed in call}
    done_before = {json.loads(line)["index"] for line in lines[:-1]}
    assert clip_seed(SEED, lost["index"], lost["rejections"]) in redone
    assert not any(clip_seed(SEED, i, a) in redone for i in done_before for a in range(ATTEMPTS))
    assert report["resumed"] == len(done_before) and report["generated"] == N - len(done_before)
    rows = read_rows(labels)
    assert len(rows) == N and sorted(r["index"] for r in rows) == list(range(N))   # torn tail cut
    for name in ("labels.jsonl", "captions.jsonl", "summary.json"):
        assert (out / name).read_text() == (reference / name).read_text(), name
    got, want = (frames_of(folder, read_rows(folder / "labels.jsonl")) for folder in (out, reference))
    assert got.keys() == want.keys() and all(np.array_equal(got[i], want[i]) for i in want)
    again = RenderingPipe()                                # a finished dataset: nothing to do
    assert run(out, again, format="png")["generated"] == 0 and again.calls == []


def test_two_ranks_write_disjoint_shares_whose_union_is_the_single_run(single, tmp_path, monkeypatch):
    reference, _ = single
    monkeypatch.setenv("WORLD_SIZE", "2")
    reports = []
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        assert shard_from_env() == (int(rank), 2)
        reports.append(run(tmp_path, rank=None, world_size=None))
        merged = (tmp_path / "labels.jsonl").exists()
        assert merged == (rank == "1")                  # the rank that finds every index done merges
    assert "summary" not in reports[0] and reports[1]["summary"]["clips"] == N - 1
    shares = [{r["index"] for r in read_rows(tmp_path / f"labels.rank{k}.jsonl")} for k in (0, 1)]
    assert shares == [set(range(0, N, 2)), set(range(1, N, 2))]
    for name in ("labels.jsonl", "captions.jsonl", "summary.json"):
        assert (tmp_path / name).read_text() == (reference / name).read_text(), name
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(SynthError, match="RANK=2 must be in"):
        shard_from_env()


def test_other_settings_refuse_and_say_which(single, tmp_path):
    reference, _ = single
    before = sorted(p.name for p in reference.rglob("*"))
    with pytest.raises(SynthError, match="seed is 5 there, this run asks for 6"):
        run(reference, seed=6)
    with pytest.raises(SynthError, match="n is 12 there, this run asks for 13"):
        run(reference, n=13)
    with pytest.raises(SynthError, match="steps is"):
        run(reference, steps=3)
    assert sorted(p.name for p in reference.rglob("*")) == before
    (tmp_path / "mine.mp4").write_bytes(b"x")
    with pytest.raises(SynthError, match="not empty and holds no synth.json"):
        run(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["mine.mp4"]


def test_output_loads_as_video_folder_with_the_labels_as_captions(single, tmp_path):
    out, _ = single
    dataset = build_dataset({"name": str(out), "frames": 8, "size": 32})
    rows = {r["file"]: r for r in read_rows(out / "labels.jsonl")}
    assert len(dataset) == N - 1 and not dataset.skipped
    for k in range(len(dataset)):
        item = dataset[k]
        row = rows[item["path"]]
        assert item["caption"] == row["prompt"]
        found = detect(item["video"])              # the label holds for what training reads too
        assert (found["color"], found["shape"], found["direction"]) == parse_caption(row["prompt"])
    # PNG clips are lossless: training reads exactly the clip the detector verified
    run(tmp_path, n=4, format="png")
    dataset = build_dataset({"name": str(tmp_path), "frames": 8, "size": 32})
    for k in range(len(dataset)):
        item = dataset[k]
        stored = Video.load(tmp_path / item["path"]).to_tensor()
        assert torch.allclose(item["video"], stored, atol=1e-6)    # x / 255 * 2 - 1 against x / 127.5 - 1


def test_held_out_modes_and_png_clips(tmp_path):
    held = set(DEMO_HELD_OUT)
    run(tmp_path / "only", n=6, held_out="only", format="png")
    rows = read_rows(tmp_path / "only" / "labels.jsonl")
    assert rows and all(tuple(parse_caption(r["prompt"])) in held for r in rows)
    assert all((tmp_path / "only" / r["file"] / "frame_00000.png").is_file() for r in rows)
    assert len(build_dataset({"name": str(tmp_path / "only"), "frames": 8, "size": 32})) == len(rows)
    run(tmp_path / "exclude", n=8, held_out="exclude", format="png")
    rows = read_rows(tmp_path / "exclude" / "labels.jsonl")
    assert rows and not any(tuple(parse_caption(r["prompt"])) in held for r in rows)
    with pytest.raises(SynthError, match="unknown held-out mode 'some'"):
        run(tmp_path / "x", held_out="some")
    with pytest.raises(SynthError, match="unknown clip format 'avi'"):
        run(tmp_path / "x", format="avi")
    assert not (tmp_path / "x").exists()


def test_cli_on_a_tiny_model(tiny_model, tmp_path, capsys):
    out = tmp_path / "data"
    command = ["synth", "--model", str(tiny_model), "--n", "3", "--out", str(out), "--steps", "1",
               "--guidance", "1", "--max-attempts", "2", "--device", "cpu"]
    assert main(command) == 0
    printed = capsys.readouterr().out
    settings = json.loads((out / "synth.json").read_text())["settings"]
    assert settings["n"] == 3 and settings["frames"] == 4 and settings["height"] == 16
    assert settings["model"].startswith("sha256:")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clips"] + len(summary["failed"]) == 3 and "dataset complete" in printed
    assert summary["rejections"] >= 2 * len(summary["failed"])
    for r in read_rows(out / "labels.jsonl"):           # an untrained model rarely gets any right
        found = detect(Video.load(out / r["file"]))
        assert (found["color"], found["shape"], found["direction"]) == parse_caption(r["prompt"])
    assert main(command) == 0 and "(0 done now, 3 before)" in capsys.readouterr().out
    assert main(command[:-2] + ["--seed", "1"]) == 2
    assert "seed is 0 there, this run asks for 1" in capsys.readouterr().err
