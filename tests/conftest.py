"""Shared test fixtures."""
import os

import pytest
import torch

from vidiff.train.config import load_run_config
from vidiff.train.run import train

# Under pytest-xdist (`-n N`) each worker process gets an equal share of the cores, and so do
# the processes it starts: N workers at full width would each run as many threads as there
# are cores and spend the time waiting on one another.
if "PYTEST_XDIST_WORKER" in os.environ:
    _share = max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    torch.set_num_threads(_share)
    os.environ["OMP_NUM_THREADS"] = str(_share)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models: a second thread only adds
    synchronisation, and on a shared 2-core machine OpenMP threads waiting for a busy core
    slow such tests down by an order of magnitude."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A run directory of a tiny text-to-video U-Net trained one step on 4-frame 16x16
    MovingShapes (demo triples held out): for command tests that need a real checkpoint."""
    out = tmp_path_factory.mktemp("tiny-run")
    smaller = {"channels": [8, 16], "norm_groups": 4, "patch": 2, "spatial_attention": [],
               "temporal_attention": [], "mid_attention": False}
    base = {"model": {"size": "unet-tiny", "overrides": smaller},
            "data": {"name": "shapes", "frames": 4, "size": 16, "held_out": "demo"},
            "text": {"dim": 16, "depth": 1, "heads": 2},
            "train": {"steps": 1, "batch_size": 2, "warmup_steps": 1, "checkpoint_every": 1}}
    train(load_run_config(None, [f"train.out_dir={out}"], base=base), progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_editor(tmp_path_factory):
    """A run directory of a tiny text-to-video U-Net with spatial, temporal and cross-attention
    at its lower level, trained two steps on 4-frame 16x16 MovingShapes: for the editing tests,
    which need attention layers to inject into (``tiny_model`` has none)."""
    out = tmp_path_factory.mktemp("tiny-editor")
    smaller = {"channels": [8, 16], "norm_groups": 4, "patch": 2, "head_dim": 8, "mid_attention": False}
    base = {"model": {"size": "unet-tiny", "overrides": smaller},
            "data": {"name": "shapes", "frames": 4, "size": 16},
            "text": {"dim": 16, "depth": 1, "heads": 2},
            "train": {"steps": 2, "batch_size": 2, "warmup_steps": 1, "checkpoint_every": 2}}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(load_run_config(None, [f"train.out_dir={out}"], base=base), progress=False)
    finally:
        torch.set_num_threads(threads)
    return out
