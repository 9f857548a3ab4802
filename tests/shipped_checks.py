"""Checks every shipped model's test makes: that the card's command and the committed config
describe the run it records, and that a fresh adherence measurement agrees with its card."""
import math
import re
from pathlib import Path

import yaml

from vidiff.compose import RunConfig
from vidiff.config import from_dict, to_dict
from vidiff.data import DataConfig
from vidiff.eval.adherence import shapes_adherence
from vidiff.pipelines import shipped
from vidiff.train.config import load_run_config


def committed_run(card: dict, name: str, config: Path) -> RunConfig:
    """The run config of ``vidiff train CONFIG key=value...`` as the card's command gives it,
    after asserting that the shipped model ``name`` recorded exactly that run."""
    folder = shipped.PACKAGE_DIR / name
    assert name in shipped.shipped_names() and shipped.total_bytes() <= shipped.BUDGET_BYTES
    assert card["dtype"] == "float16" and card["kind"] == "denoiser"
    pattern = rf"vidiff train configs/{re.escape(config.name)}((?: [\w.]+=\S+)*)"
    overrides = re.search(pattern, card["command"])
    assert overrides is not None, card["command"]
    committed = load_run_config(str(config), overrides.group(1).split())
    recorded = from_dict(RunConfig, yaml.safe_load((folder / "train.yaml").read_text()))
    for part in ("model", "diffusion", "text", "data", "tasks", "sample"):
        assert to_dict(getattr(recorded, part)) == to_dict(getattr(committed, part)), part
    assert to_dict(recorded.train) == to_dict(committed.train)
    assert card["steps"] == committed.train.steps
    assert from_dict(DataConfig, card["trained_on"]) == committed.data
    return committed


def assert_adherence_matches_card(card: dict, pipe, triples, seed: int) -> None:
    """One fresh sample of each of ``triples`` (seen ones), at the card's sampling settings and
    ``seed``, scores within three binomial standard errors of the card's seen adherence."""
    recorded = card["scores"]["seen"]["adherence"]
    settings = card["scores"]["settings"]
    report = shapes_adherence(pipe, held_out=[], samples=1, steps=settings["steps"],
                              sampler=settings["sampler"], guidance=settings["guidance"], seed=seed,
                              progress=False, triples=triples)
    measured, n = report["seen"]["adherence"], report["seen"]["count"]
    assert n == len(triples)
    tolerance = 3 * math.sqrt(max(recorded * (1 - recorded), 0.02) / n)
    assert abs(measured - recorded) <= tolerance, (measured, recorded, tolerance)
