"""The shipped ControlNet and reference models: installed, trained by their committed configs
over the shipped `shapes`, and doing what their cards say on fresh clips of held-out triples.

Like tests/test_shipped_shapes.py, this file reads the package's own ``vidiff/shipped/``.
"""
from pathlib import Path

import numpy as np
import pytest
import yaml

import vidiff
from vidiff.compose.config import DiffusionConfig, RunConfig
from vidiff.config import from_dict, to_dict
from vidiff.data.shapes import DEMO_HELD_OUT, geometry, render
from vidiff.eval.shapes import centroids, detect
from vidiff.pipelines import shipped
from vidiff.train.config import load_run_config

ROOT = Path(__file__).resolve().parents[1]
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
SEED = 2024                      # starts and sampling seeds the benchmark did not use


@pytest.fixture
def package_models(monkeypatch):
    monkeypatch.delenv(shipped.SHIPPED_DIR_ENV, raising=False)
    return shipped.PACKAGE_DIR


def _card(name: str) -> dict:
    if name not in shipped.shipped_names():
        pytest.fail(f"{name} is not shipped in this build")
    return shipped.verify(shipped.PACKAGE_DIR / name)


def _same_run(name: str, config: str, steps: int = None) -> None:
    """The shipped config is the committed config's run (out_dir aside; ``steps``: the run was
    resumed to this many steps, as its card's command says)."""
    stored = from_dict(RunConfig, yaml.safe_load((shipped.PACKAGE_DIR / name / "train.yaml").read_text()))
    committed = load_run_config(ROOT / "configs" / config)
    a, b = to_dict(stored), to_dict(committed)
    for run in (a, b):
        run["train"].pop("out_dir")
    if steps is not None:
        assert a["train"]["steps"] == steps and f"train.steps={steps}" in _card(name)["command"]
        b["train"]["steps"] = steps
    if b["kind"] == "controlnet":
        # A ControlNet run records its base's schedule and text settings and its own training times.
        base = yaml.safe_load((shipped.PACKAGE_DIR / b["base"] / "train.yaml").read_text())
        for k in DiffusionConfig.SCHEDULE_FIELDS:
            assert a["diffusion"][k] == base["diffusion"][k], k
            b["diffusion"][k] = a["diffusion"][k]
        assert a["text"] == base["text"]
        b["text"] = a["text"]
    assert a == b


def _clips(n: int):
    rng = np.random.default_rng(SEED)
    out = []
    for i in range(n):
        triple = tuple(DEMO_HELD_OUT[i % len(DEMO_HELD_OUT)])
        g = geometry(triple[2], 16, 32)
        out.append((triple, render(*triple, frames=16, size=32,
                                   start=(rng.uniform(*g["x"]), rng.uniform(*g["y"])))))
    return out


def test_shapes_silhouette_follows_its_maps_against_the_prompt(package_models):
    card = _card("shapes-silhouette")
    assert card["kind"] == "controlnet" and card["base"] == "shapes"
    _same_run("shapes-silhouette", "controlnet-silhouette.yaml")
    pipe = vidiff.load("shapes")
    errors = []
    for i, ((color, shape, direction), clip) in enumerate(_clips(4)):
        video = pipe.generate(f"a {color} {shape} moving {OPPOSITE[direction]}", control_from=clip,
                              control_type="silhouette", seed=SEED + i)     # the shipped default ControlNet
        got, want = centroids(video), centroids(clip)
        assert not np.isnan(got).any()
        errors.append(float(np.linalg.norm(got - want, axis=1).mean()))
        d = detect(video)
        assert d["color"] == color and d["direction"] == direction, (d, color, direction)
    # Without control these clips are 13.6 px off (they follow the prompt); the aim, a mean under
    # 1.5 px, is held on 24 clips by benchmarks/control.py (1.35 px), here with room for 4.
    assert np.mean(errors) <= 2.0 and max(errors) <= 3.0, errors


def test_shapes_reference_takes_the_subject_from_the_image(package_models):
    card = _card("shapes-reference")
    assert card["kind"] == "denoiser"
    _same_run("shapes-reference", "shapes-reference.yaml", steps=1800)
    pipe = vidiff.load("shapes-reference")
    assert pipe.network.config.reference_tokens > 0
    hits = 0
    for i, ((color, shape, direction), _) in enumerate(_clips(4)):
        g = geometry("right", 2, 32)
        frame = render(color, shape, "right", frames=2, size=32, start=(g["x"][0] + 2 * i, sum(g["y"]) / 2))[0]
        d = detect(pipe.generate(f"a moving {direction}", reference=frame, seed=SEED + i))
        hits += d["color"] == color and d["shape"] == shape and d["direction"] == direction
    # Without a reference the words give the right subject in none of the benchmark's clips
    # (0%); with it, 83.3% of 24 (benchmarks/control.py): here at least 3 of 4.
    assert hits >= 3, hits
