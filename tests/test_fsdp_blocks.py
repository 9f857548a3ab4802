"""FSDP shards every block of UNet3D, VideoDiT and VideoVAE on its own, and still trains
exactly like one process.

Two CPU processes (gloo) wrap each network with the trainer's :func:`shard_blocks`, check
which modules became FSDP units, which blocks hold gathered (unsharded) weights while each
block runs, and train three steps on half of a batch each; the full weights are then compared
with the same steps taken by one process on the whole batch.
"""
import dataclasses
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, Shard

from test_train import assert_close_per_tensor
from vidiff.conditioning import Conditioning
from vidiff.models import vae_blocks
from vidiff.models.dit import DIT_MODELS, DiTBlock, VideoDiT
from vidiff.models.unet import UNET_MODELS, AttentionBlock, ResBlock, UNet3D
from vidiff.models.vae import VAE_MODELS, VideoVAE
from vidiff.train.process import shard_blocks

WORLD, STEPS, TEXT_DIM = 2, 3, 12

pytestmark = pytest.mark.usefixtures("one_thread")   # the one-process reference runs


def _text(B: int) -> Conditioning:
    return Conditioning(text=torch.randn(B, 5, TEXT_DIM, generator=torch.Generator().manual_seed(1)))


def _denoiser_loss(model, x, rows):
    t = torch.linspace(0.2, 0.8, 4)[rows]
    cond = _text(4).map(lambda v: v[rows])
    return (model(x[rows], t, cond) - x[rows]).square().mean()


def _vae_loss(model, x, rows):
    recon, posterior = model(x[rows], sample_posterior=False)
    return (recon - x[rows]).square().mean() + 1e-2 * posterior.kl().mean()


# name -> (build, block classes (what should be a unit, found by type, not by the marker),
#          input batch of 4 clips, loss(model, x, rows))
CASES = {
    "unet": (lambda: UNet3D(dataclasses.replace(UNET_MODELS["unet-tiny"], text_dim=TEXT_DIM)),
             (ResBlock, AttentionBlock), (4, 3, 4, 16, 16), _denoiser_loss),
    "dit": (lambda: VideoDiT(dataclasses.replace(DIT_MODELS["dit-tiny"], text_dim=TEXT_DIM,
                                                 attention=("factorized", "full"))),
            (DiTBlock,), (4, 3, 3, 8, 8), _denoiser_loss),
    "vae": (lambda: VideoVAE(VAE_MODELS["vae-tiny"]),
            (vae_blocks.ResBlock, vae_blocks.FrameAttention), (4, 3, 5, 16, 16), _vae_loss),
}


def _setup(name: str):
    build, block_types, shape, loss = CASES[name]
    torch.manual_seed(0)
    model = build().train()
    # Off the zero inits (adaLN-zero, zero output projections): a zero layer's first gradients
    # are sums that cancel to rounding noise, which Adam's normalisation blows up to a full
    # step; the agreement tested here is that of real updates.
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2)).clamp(-1, 1)
    return model, block_types, x, loss


def _train(model, x, loss, rows) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(STEPS):
        opt.zero_grad()
        loss(model, x, rows).backward()
        opt.step()


def _gathered(block: torch.nn.Module) -> bool:
    """Whether ``block``'s weights are gathered right now (FSDP swaps in plain tensors)."""
    return not any(isinstance(p, DTensor) for p in block.parameters(recurse=True))


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    facts = {}
    for name in CASES:
        model, block_types, x, loss = _setup(name)
        units = shard_blocks(model)
        blocks = [m for m in model.modules() if isinstance(m, block_types)]
        params = list(model.parameters())
        shards = [p.to_local().shape[0] if isinstance(p, DTensor) else None for p in params]
        # As each block starts, which block it is and which blocks hold gathered weights.
        gathered = []

        def record(module, args):
            gathered.append([next(i for i, b in enumerate(blocks) if b is module),
                             [_gathered(b) for b in blocks]])
        hooks = [b.register_forward_pre_hook(record) for b in blocks]
        rows = torch.arange(4).chunk(WORLD)[rank]          # this rank's half of the batch
        _train(model, x, loss, rows)
        for h in hooks:
            h.remove()
        facts[name] = {
            "units": units, "blocks": len(blocks),
            "fsdp_modules": sum(isinstance(m, FSDPModule) for m in model.modules()),
            "blocks_are_units": all(isinstance(b, FSDPModule) for b in blocks),
            "all_dtensor_shard0": all(isinstance(p, DTensor) and p.placements == (Shard(0),)
                                      and p.device_mesh.size() == WORLD for p in params),
            "local_rows": shards, "rows": [p.shape[0] for p in params],
            "gathered_while_running": gathered[:len(blocks)],       # the first step's forward
        }
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        if rank == 0:
            save_file({k: v.contiguous() for k, v in state.items()},
                      os.path.join(out_dir, f"{name}.safetensors"))
    with open(os.path.join(out_dir, f"facts{rank}.json"), "w") as f:
        json.dump(facts, f)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"                   # inherited by the spawned workers
    try:
        mp.spawn(_worker, args=(str(out / "init"), str(out)), nprocs=WORLD)
    finally:
        if threads is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = threads
    facts = [json.loads((out / f"facts{r}.json").read_text()) for r in range(WORLD)]
    return out, facts


@pytest.mark.parametrize("name", list(CASES))
def test_every_block_is_its_own_fsdp_unit(sharded_run, name):
    _, facts = sharded_run
    for rank, per_rank in enumerate(facts):
        f = per_rank[name]
        assert f["blocks"] > 1
        assert f["units"] == f["fsdp_modules"] == f["blocks"] + 1, f     # each block, then the root
        assert f["blocks_are_units"]
        assert f["all_dtensor_shard0"]
        # Every parameter is split along its first dimension across the two ranks.
        assert f["local_rows"] == [(n + 1) // 2 if rank == 0 else n // 2 for n in f["rows"]]
        # A block's weights are gathered only while it runs: never all blocks at once.
        running = f["gathered_while_running"]
        assert sorted(i for i, _ in running) == list(range(f["blocks"]))   # each block ran once
        for i, gathered in running:
            assert gathered == [j == i for j in range(f["blocks"])], (i, gathered)


@pytest.mark.parametrize("name", list(CASES))
def test_sharded_training_matches_one_process(sharded_run, name):
    out, _ = sharded_run
    model, _, x, loss = _setup(name)
    _train(model, x, loss, torch.arange(4))
    # The same tolerances as the trainer's FSDP test (see assert_close_per_tensor).
    assert_close_per_tensor(load_file(str(out / f"{name}.safetensors")),
                            {k: v.detach() for k, v in model.state_dict().items()}, rtol=1e-5)
