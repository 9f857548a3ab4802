"""Shipped models: ship a run, load it by name, list it, and every way it can go wrong.

One tiny model is trained once for the module (6 steps, checkpoints at steps 3 and 6); every
test ships it into its own folder through ``$VIDIFF_SHIPPED_DIR``, so the package's own
``vidiff/shipped/`` is never read or written here.
"""
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import vidiff
from vidiff.checkpoint import resolve_checkpoint
from vidiff.cli import build_parser, main
from vidiff.config import to_dict
from vidiff.pipelines import shipped
from vidiff.pipelines.shipped import (REINSTALL, SHIPPED_DIR_ENV, ShippedModelError, half_precision, resolve_model,
                                      ship)
from vidiff.train.config import load_run_config
from vidiff.train.run import build_trainer, train
from vidiff.video import Video

from test_train import TINY    # 6 steps of unet-tiny, checkpoints at steps 3 and 6, EMA decay 0.9

PROMPT = "a red circle moving right"
FP16_EPS = 2.0 ** -11         # float16 unit roundoff: storing a weight moves it by at most this, relatively


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("run")
    train(load_run_config(None, [f"train.out_dir={out}"], base=TINY), progress=False)
    return out


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """An empty shipped-models folder that every lookup in the test uses."""
    root = tmp_path / "shipped"
    monkeypatch.setenv(SHIPPED_DIR_ENV, str(root))
    return root


def checkpoints(run_dir):
    return sorted((run_dir / "checkpoints").glob("step_*"))


def files_below(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def everything_below(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))     # hidden and temporary ones too


def rounded(state):
    return {k: v.half().float() if v.is_floating_point() else v for k, v in state.items()}


def one_error_line(capsys, command):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vidiff {command}: error: ") and "Traceback" not in err, err
    return lines[0]


# ----------------------------------------------------------------------------- ship and load
def test_ship_writes_ema_weights_in_float16_and_loads_by_name(run_dir, folder):
    ship(run_dir, "tiny")
    model = folder / "tiny"
    assert files_below(model) == ["card.json", "config.json", "ema.safetensors", "text_encoder/config.json",
                                  "text_encoder/model.safetensors", "text_encoder/vocab.json", "train.yaml"]
    source = resolve_checkpoint(run_dir)                         # the newest checkpoint
    ema, raw = load_file(str(source / "ema.safetensors")), load_file(str(source / "model.safetensors"))
    stored = load_file(str(model / "ema.safetensors"))
    assert stored.keys() == ema.keys()
    for key, value in stored.items():                            # exactly the EMA weights, rounded once
        assert value.dtype == torch.float16 and torch.equal(value, ema[key].half()), key
    text = load_file(str(model / "text_encoder" / "model.safetensors"))
    assert text and all(v.dtype == torch.float16 for v in text.values())
    # EMA, not the raw weights: they differ after 6 steps by more than the rounding
    assert any(not torch.equal(ema[k].half(), raw[k].half()) for k in ema)

    pipe, reference = vidiff.load("tiny"), vidiff.load(run_dir)
    params = {f"network.{k}": v for k, v in pipe.network.state_dict().items()}
    params.update({f"text_encoder.{k}": v for k, v in pipe.text_encoder.state_dict().items()})
    for key, value in rounded(ema).items():                      # float16 storage, float32 network
        assert params[key].dtype == value.dtype and torch.equal(params[key], value), key
    video = pipe.generate(PROMPT, steps=2, seed=0)
    assert video.frames.shape == (4, 16, 16, 3)

    # The same seed from the float32 checkpoint and from the shipped copy.
    def draw(p, seed=3):
        return p.sample(p.encode([PROMPT]), p.clip_shape(), seeds=[seed], steps=3)
    mine, theirs = draw(pipe), draw(reference)
    # Each weight moved by at most FP16_EPS relatively; this network's output moves by about as
    # much relative to its scale (measured 1.6 FP16_EPS * max|x|). 4 FP16_EPS * max|x| leaves room
    # for other kernels and fails a coarser storage (bfloat16 rounding, 8x float16's, measured
    # 13.6) or other weights (another seed's sample differs by ~1000x).
    scale = theirs.abs().max()
    assert 0 < (mine - theirs).abs().max() <= 4 * FP16_EPS * scale
    assert (draw(reference, seed=4) - theirs).abs().max() > 100 * FP16_EPS * scale
    # And the difference is the rounding alone: the float32 model with its weights rounded the
    # same way draws exactly the shipped model's sample.
    with torch.no_grad():
        for module in (reference.network, reference.text_encoder):
            for p in module.parameters():
                p.copy_(p.half().float())
    assert torch.equal(draw(reference), mine)


def test_load_defaults_to_shapes_and_an_existing_path_wins(run_dir, folder, tmp_path, monkeypatch):
    ship(run_dir, "shapes")
    assert resolve_model() == resolve_model("shapes") == folder / "shapes"
    ema = load_file(str(resolve_checkpoint(run_dir) / "ema.safetensors"))
    key = next(k for k in ema if k.startswith("network.") and ema[k].dim() > 1)
    weight = lambda pipe: pipe.network.state_dict()[key[len("network."):]]    # noqa: E731
    assert torch.equal(weight(vidiff.load()), ema[key].half().float())         # the shipped copy
    assert not torch.equal(ema[key].half().float(), ema[key])                   # (rounding shows)
    frames = tmp_path / "frames"
    assert main(["generate", "--prompt", PROMPT, "--steps", "1", "--out", str(frames)]) == 0   # no --model
    assert np.array_equal(Video.load(frames).frames, vidiff.load().generate(PROMPT, steps=1).frames)
    # The README's main job: several --prompt, --samples each, one grid (a row per prompt).
    other = "a blue square moving up"
    grid = tmp_path / "grid"
    assert main(["generate", "--prompt", PROMPT, "--prompt", other, "--samples", "2", "--steps", "1",
                 "--grid", "--out", str(grid)]) == 0
    clips = vidiff.load().generate([PROMPT, other], steps=1, samples=2)
    assert np.array_equal(Video.load(grid).frames, Video.grid(clips, cols=2).frames)
    assert Video.load(grid).frames.shape == (4, 2 * 16 + 2, 2 * 16 + 2, 3)
    # A folder called "shapes" here is a path that exists: it wins over the shipped name.
    monkeypatch.chdir(tmp_path)
    shutil.copytree(resolve_checkpoint(run_dir), tmp_path / "shapes")
    assert resolve_model("shapes").resolve() == (tmp_path / "shapes").resolve()
    assert torch.equal(weight(vidiff.load("shapes")), ema[key])


def test_card_records_data_size_steps_command_and_scores(run_dir, folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scores = {"seen": {"adherence": 0.75, "count": 8}, "settings": {"steps": 20}}
    card = ship(run_dir, "tiny", scores=scores, description="a tiny test model")
    model = folder / "tiny"
    assert json.loads((model / "card.json").read_text()) == card
    config = json.loads((resolve_checkpoint(run_dir) / "config.json").read_text())
    ema = load_file(str(resolve_checkpoint(run_dir) / "ema.safetensors"))
    assert (card["name"], card["description"], card["kind"], card["model"]) == \
        ("tiny", "a tiny test model", "denoiser", "unet-tiny")
    assert card["trained_on"] == config["run"]["data"] and card["trained_on"]["frames"] == 4
    assert card["steps"] == 6 and card["batch_size"] == 4 and card["scores"] == scores
    assert card["parameters"] == sum(v.numel() for v in ema.values())      # network and text encoder once
    listed = [f for f in files_below(model) if f != "card.json"]
    assert sorted(card["files"]) == listed
    for name, entry in card["files"].items():
        data = (model / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert card["bytes"] == sum((model / f).stat().st_size for f in listed)
    # The default command trains the same run again: its config file loads to this run config.
    assert card["command"] == "vidiff train shipped/tiny/train.yaml"
    again = load_run_config(card["command"].split()[-1])
    assert to_dict(again) == config["run"]
    # A given command is kept, and so is a config path the checkpoint records.
    given = "vidiff train configs/x.yaml"
    assert ship(run_dir, "tiny", command=given)["command"] == given
    recorded = tmp_path / "recorded"
    shutil.copytree(resolve_checkpoint(run_dir), recorded)
    (recorded / "config.json").write_text(json.dumps({**config, "config_path": "configs/tiny.yaml"}))
    assert ship(recorded, "tiny")["command"] == "vidiff train configs/tiny.yaml"


def test_reshipping_a_name_replaces_it(run_dir, folder):
    first, last = checkpoints(run_dir)
    assert ship(first, "tiny")["steps"] == 3
    assert ship(last, "tiny")["steps"] == 6                       # a fine-tuned model: the same command
    assert [n for n in everything_below(folder) if "/" not in n] == ["tiny"]      # no old or temporary copy
    ema = load_file(str(last / "ema.safetensors"))
    key = next(k for k in ema if k.startswith("network."))
    assert torch.equal(vidiff.load("tiny").network.state_dict()[key[len("network."):]], ema[key].half().float())


def test_a_latent_model_ships_its_autoencoder_in_float16(folder, tmp_path):
    # Untrained checkpoints (step 0) are enough: what is checked is what is copied, and how.
    vae_run = {"kind": "autoencoder", "model": {"size": "vae-tiny"}, "autoencoder": {"scaling_batches": 1},
               "data": {"name": "shapes", "frames": 5, "size": 16, "length": 4}, "train": {"batch_size": 2}}
    def save_untrained(name, base):
        build_trainer(load_run_config(None, [f"train.out_dir={tmp_path / name}"], base=base), progress=False).save()
    save_untrained("vae", vae_run)
    latent = {**TINY, "data": vae_run["data"], "model": {"size": "unet-tiny", "vae": str(tmp_path / "vae")}}
    save_untrained("lat", latent)
    ship(tmp_path / "lat", "lat")
    files = files_below(folder / "lat")
    assert {"vae/config.json", "vae/ema.safetensors"} <= set(files) and "vae/model.safetensors" not in files
    source = load_file(str(resolve_checkpoint(tmp_path / "lat") / "vae" / "ema.safetensors"))
    stored = load_file(str(folder / "lat" / "vae" / "ema.safetensors"))
    assert all(v.dtype == torch.float16 for v in stored.values())
    pipe = vidiff.load("lat")
    vae = {f"network.{k}": v for k, v in pipe.vae.state_dict().items()}
    for key, value in rounded(source).items():
        assert vae[key].dtype == torch.float32 and torch.equal(vae[key], value), key
    card = json.loads((folder / "lat" / "card.json").read_text())
    assert card["parameters_by_part"]["autoencoder"] == sum(v.numel() for v in source.values())
    assert pipe.generate(PROMPT, steps=1, seed=0).frames.shape == (5, 16, 16, 3)


# ----------------------------------------------------------------------------- listing
def test_models_pretrained_lists_every_shipped_model(run_dir, folder, capsys):
    assert main(["models", "--pretrained"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("no shipped models are installed")
    scores = {"seen": {"adherence": 0.75}, "held_out": {"adherence": 0.5}, "settings": {"steps": 20}}
    card = ship(run_dir, "tiny", scores=scores, description="a tiny test model", command="vidiff train t.yaml")
    ship(checkpoints(run_dir)[0], "tiny-early")
    assert main(["models", "--pretrained"]) == 0
    out = capsys.readouterr().out
    size = sum(p.stat().st_size for p in (folder / "tiny").rglob("*") if p.is_file())
    total = size + sum(p.stat().st_size for p in (folder / "tiny-early").rglob("*") if p.is_file())
    for expected in ("tiny: a tiny test model", "trained on   shapes, 4 frames of 16x16, held out: 4 triples",
                     f"size         {card['parameters']:,} parameters, {size / 1e6:.1f} MB on disk (float16)",
                     "trained by   vidiff train t.yaml  (6 steps of batch 4)",
                     "scores       seen.adherence 0.75, held_out.adherence 0.5",
                     "tiny-early: (no description)", "(3 steps of batch 4)", "scores       (none measured)",
                     f"2 shipped models, {total / 1e6:.1f} MB of the 60 MB budget"):
        assert expected in out, expected
    assert "settings" not in out
    (folder / "tiny-early" / "ema.safetensors").unlink()        # a damaged one is listed as such
    assert main(["models", "--pretrained"]) == 0
    out = capsys.readouterr().out
    assert "tiny-early: damaged" in out and REINSTALL in out and "tiny: a tiny test model" in out


# ----------------------------------------------------------------------------- bad input
def test_an_unknown_name_lists_the_shipped_ones(run_dir, folder, tmp_path, capsys):
    ship(run_dir, "tiny")
    ship(run_dir, "tiny-2")
    with pytest.raises(ShippedModelError, match=r"unknown model 'nosuch'.*shipped models: tiny, tiny-2"):
        vidiff.load("nosuch")
    with pytest.raises(ShippedModelError, match=r"'digits' is not installed in this build.*tiny, tiny-2"):
        vidiff.load("digits")                                  # a registered name this build lacks
    with pytest.raises(ShippedModelError, match="'shapes' is not installed"):
        vidiff.load()
    out = tmp_path / "out"
    out.mkdir()
    for argv, message in (
            (["generate", "--model", "nosuch", "--out", str(out / "o.mp4")],
             "argument --model: unknown model 'nosuch': neither a shipped model (shipped models: tiny, tiny-2)"),
            (["generate", "--prompt", PROMPT, "--out", str(out / "o.mp4")],
             "shipped model 'shapes' is not installed"),
            (["generate", "--model", str(out / "missing"), "--out", str(out / "o.mp4")], "does not exist"),
            (["eval", "shapes", "--model", "nosuch", "--json", str(out / "r.json")],
             "shipped models: tiny, tiny-2")):
        assert main(argv) == 2
        assert message in one_error_line(capsys, " ".join(argv[:2] if argv[0] == "eval" else argv[:1]))
    assert list(out.iterdir()) == []
    assert build_parser().parse_args(["eval", "shapes", "--model", "tiny"]).model == "tiny"


@pytest.mark.parametrize("damage, message", [
    (lambda m: (m / "ema.safetensors").unlink(), "ema.safetensors is missing"),
    (lambda m: (m / "config.json").unlink(), "config.json is missing"),
    (lambda m: (m / "card.json").unlink(), "card.json is missing"),
    (lambda m: (m / "card.json").write_text("{not json"), "card.json is not valid JSON"),
    (lambda m: (m / "ema.safetensors").write_bytes(b"\0" * (m / "ema.safetensors").stat().st_size),
     "ema.safetensors differs from the file that was shipped"),
    (lambda m: (m / "text_encoder" / "model.safetensors").write_bytes(b"truncated"),
     "text_encoder/model.safetensors differs from the file that was shipped"),
], ids=["no-ema", "no-config", "no-card", "bad-card", "zeroed-weights", "truncated-text-weights"])
def test_a_damaged_install_is_named_with_the_reinstall_command(run_dir, folder, tmp_path, capsys, damage,
                                                               message):
    ship(run_dir, "tiny")
    damage(folder / "tiny")
    with pytest.raises(ShippedModelError) as error:
        vidiff.load("tiny")
    assert "shipped model 'tiny' is damaged" in str(error.value) and message in str(error.value)
    assert REINSTALL in str(error.value)
    assert main(["generate", "--model", "tiny", "--prompt", PROMPT, "--out", str(tmp_path / "o.mp4")]) == 2
    line = one_error_line(capsys, "generate")
    assert message in line and REINSTALL in line and not (tmp_path / "o.mp4").exists()


def test_a_checkpoint_without_ema_weights_is_refused(run_dir, folder, tmp_path, capsys):
    raw = tmp_path / "raw"
    shutil.copytree(resolve_checkpoint(run_dir), raw)
    (raw / "ema.safetensors").unlink()                 # what a run with train.ema_decay=0 writes
    with pytest.raises(ValueError, match="has no EMA weights"):
        ship(raw, "tiny")
    assert main(["ship", str(raw), "--name", "tiny"]) == 2
    assert "EMA weights only" in one_error_line(capsys, "ship")
    assert not folder.exists() or everything_below(folder) == []


def test_a_text_encoder_from_a_local_folder_is_refused(run_dir, folder, tmp_path):
    clip = tmp_path / "clip"
    shutil.copytree(resolve_checkpoint(run_dir), clip)
    config = json.loads((clip / "config.json").read_text())
    config["run"]["text"].update(kind="clip", path="/models/clip")
    (clip / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="'/models/clip', which does not travel with a package"):
        ship(clip, "tiny")


def test_the_size_budget_is_enforced_and_an_old_version_does_not_count(run_dir, folder, monkeypatch, capsys):
    ship(run_dir, "first")
    size = sum(p.stat().st_size for p in (folder / "first").rglob("*") if p.is_file())
    monkeypatch.setattr(shipped, "BUDGET_BYTES", size + size // 2)
    with pytest.raises(ValueError, match=r"would bring the shipped models to .* MB, over the .* MB budget"):
        ship(run_dir, "second")
    assert main(["ship", str(run_dir), "--name", "second"]) == 2
    assert "over the" in one_error_line(capsys, "ship")
    # nothing else below the folder: no second model, no temporary folder left behind
    assert everything_below(folder) == ["first", *(f"first/{f}" for f in everything_below(folder / "first"))]
    ship(run_dir, "first", description="again")       # replacing "first" counts its new size only
    assert json.loads((folder / "first" / "card.json").read_text())["description"] == "again"


def test_names_and_float16_range_are_checked(run_dir, folder, capsys):
    for bad in ("Shapes", "../x", "a b", "", "-x"):
        with pytest.raises(ValueError, match="is not accepted"):
            ship(run_dir, bad)
    assert main(["ship", str(run_dir), "--name", "../x"]) == 2
    assert "argument --name: model name '../x' is not accepted" in one_error_line(capsys, "ship")
    with pytest.raises(ValueError, match="tensor 'w' holds values beyond float16's range"):
        half_precision({"w": torch.tensor([1.0, 7e4])})
    kept = half_precision({"w": torch.tensor([1.0, float("inf")]), "n": torch.tensor([3], dtype=torch.int64)})
    assert kept["w"].dtype == torch.float16 and kept["n"].dtype == torch.int64 and torch.isinf(kept["w"][1])


# ----------------------------------------------------------------------------- the commands
def test_generate_and_ship_commands_with_a_shipped_name(run_dir, folder, tmp_path, capsys):
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({"seen": {"adherence": 0.5}}))
    assert main(["ship", str(run_dir), "--name", "tiny", "--scores", str(scores), "--description", "tiny",
                 "--command", "vidiff train t.yaml"]) == 0
    out = capsys.readouterr().out
    card = json.loads((folder / "tiny" / "card.json").read_text())
    assert (card["scores"], card["description"], card["command"]) == \
        ({"seen": {"adherence": 0.5}}, "tiny", "vidiff train t.yaml")
    assert f"shipped 'tiny' to {str(folder / 'tiny')!r}: {card['parameters']:,} parameters" in out
    assert "of 60 MB" in out
    frames = tmp_path / "frames"                       # a PNG folder: lossless, compared exactly
    assert main(["generate", "--model", "tiny", "--prompt", PROMPT, "--steps", "2", "--seed", "1",
                 "--out", str(frames)]) == 0
    expected = vidiff.load("tiny").generate(PROMPT, steps=2, seed=1)
    assert np.array_equal(Video.load(frames).frames, expected.frames)
    capsys.readouterr()                                # the progress bar
    scores.write_text("[1, 2")
    assert main(["ship", str(run_dir), "--name", "tiny", "--scores", str(scores)]) == 2
    assert "is not valid JSON" in one_error_line(capsys, "ship")
    scores.write_text("[1, 2]")
    assert main(["ship", str(run_dir), "--name", "tiny", "--scores", str(scores)]) == 2
    assert "scores must be a JSON object" in one_error_line(capsys, "ship")


def test_a_fine_tune_starts_from_a_shipped_model_by_name(run_dir, folder, tmp_path):
    # train.init_from takes a shipped name as --model does: the fine-tune's first weights are
    # the shipped float16 ones, and its text encoder (the vocabulary above all) is the shipped one.
    ship(run_dir, "tiny", root=folder)
    run = load_run_config(None, [f"train.out_dir={tmp_path / 'ft'}", "train.init_from=tiny", "train.steps=1"],
                          base=TINY)
    trainer = build_trainer(run, progress=False)
    shipped = load_file(str(folder / "tiny" / "ema.safetensors"))
    state = trainer.objective.state_dict()
    assert shipped and all(torch.equal(state[k], v.float()) for k, v in shipped.items())
