"""Trainer building blocks: EMA, LR schedule, per-sample randomness, atomic checkpoints."""
import math

import pytest
import torch
from torch import nn

from vidiff.checkpoint import (
    CheckpointError, prune_checkpoints, read_config, read_weights, resolve_checkpoint, save_checkpoint,
)
from vidiff.train.ema import EMA
from vidiff.train.objective import SampleDraws
from vidiff.train.trainer import lr_factor


def test_ema_matches_closed_form():
    model = nn.Linear(1, 1, bias=False)
    nn.init.constant_(model.weight, 0.0)
    ema = EMA(model, decay=0.9, warmup=False)
    values = [1.0, 2.0, 3.0]
    for step, v in enumerate(values):
        nn.init.constant_(model.weight, v)
        ema.update(model, step)
    expected = 0.0
    for v in values:
        expected = 0.9 * expected + 0.1 * v
    assert float(ema.shadow["weight"]) == pytest.approx(expected)
    assert EMA(model, 0.999, warmup=True).current_decay(0) == pytest.approx(0.1)
    assert EMA(model, 0.999, warmup=True).current_decay(10**6) == pytest.approx(0.999)


def test_lr_warmup_then_cosine():
    assert lr_factor(0, 10, 110, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 110, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_factor(10, 10, 110, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_factor(60, 10, 110, "cosine", 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(110, 10, 110, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(80, 10, 110, "constant", 0.1) == 1.0


def test_draws_depend_only_on_seed_step_and_global_index():
    whole = SampleDraws(seed=3, step=7, indices=[0, 1, 2, 3], global_batch=4)
    left = SampleDraws(seed=3, step=7, indices=[0, 1], global_batch=4)
    right = SampleDraws(seed=3, step=7, indices=[2, 3], global_batch=4)
    for method, args in (("normal", ((2, 3), "noise")), ("uniform", ("drop",)), ("times", ("uniform",)),
                         ("times", ("logit_normal",))):
        full = getattr(whole, method)(*args)
        split = torch.cat([getattr(left, method)(*args), getattr(right, method)(*args)])
        assert torch.equal(full, split), method
    other_step = SampleDraws(seed=3, step=8, indices=[0, 1, 2, 3], global_batch=4)
    assert not torch.equal(whole.normal((5,), "noise"), other_step.normal((5,), "noise"))
    # stratified over the global batch: one time in each quarter
    t = whole.times("uniform")
    assert sorted((t * 4).floor().long().tolist()) == [0, 1, 2, 3]


def test_checkpoint_round_trip_and_atomicity(tmp_path):
    state = {"w": torch.randn(3, 4), "b": torch.arange(5)}
    path = save_checkpoint(tmp_path / "run" / "checkpoints" / "step_0000010", {"kind": "denoiser", "x": 1},
                           state, ema_state={"w": state["w"] * 2, "b": state["b"]},
                           trainer_state={"step": 10, "rng": torch.get_rng_state()})
    assert resolve_checkpoint(tmp_path / "run") == path
    assert read_config(path, kind="denoiser")["x"] == 1
    assert torch.equal(read_weights(path)["w"], state["w"] * 2)          # EMA preferred
    assert torch.equal(read_weights(path, ema=False)["w"], state["w"])
    with pytest.raises(CheckpointError, match="holds a model of kind 'denoiser', not the 'vae'"):
        read_config(path, kind="vae")
    # a damaged config.json is named, not a KeyError deep in a loader
    with pytest.raises(CheckpointError, match=r"lacks \['run'\]: it was not written by vidiff, or is damaged"):
        read_config(path, kind="denoiser", required=("x", "run"))

    def crash(tmp):
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        save_checkpoint(tmp_path / "run" / "checkpoints" / "step_0000020", {"kind": "denoiser"}, state,
                        extra=crash)
    leftovers = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert leftovers == ["step_0000010"]  # no half-written checkpoint, no temporary folder


def test_prune_keeps_newest(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path / "checkpoints" / f"step_{step:07d}", {"kind": "denoiser"}, {"w": torch.zeros(1)})
    prune_checkpoints(tmp_path, keep_last=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_0000002", "step_0000003"]


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="neither a checkpoint"):
        resolve_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="not a vidiff checkpoint"):
        read_config(tmp_path)
