"""What a training process sets up besides the loop: how it keeps freed memory, its rank and
device under ``torchrun``, and FSDP's units.

A module of its own so that the benchmarks (which time models the way training runs them) and
the trainer share one copy of each.
"""
from __future__ import annotations

import ctypes
import os

import torch
import torch.distributed as dist
from torch import nn


#################################################################################
#                                  CPU memory                                   #
#################################################################################


def keep_freed_memory() -> bool:
    """Make glibc malloc keep freed memory inside the process; True when it took effect.

    By default glibc hands every large block (above a threshold of at most 32 MiB) back to the
    kernel when it is freed, so each CPU training step page-faults its activations in again:
    about 2.4 GB of fresh pages and up to a second of system time per demo step. Raising the
    mmap and trim thresholds to 1 GiB reuses the memory, as jemalloc or tcmalloc would. It is
    process-wide and only changes where memory comes from, never a result; a CPU
    :class:`Trainer` calls it, and so do the benchmarks (for every model they compare).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:     # not glibc (macOS, musl): nothing to tune
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))


#################################################################################
#                               Distributed setup                               #
#################################################################################


class Dist:
    """Rank, world size and device of this process; initialises torch.distributed under torchrun."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            self.device = torch.device("cuda", local)
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        """Wait for every rank, then tear the process group down. Left to interpreter exit,
        gloo's worker threads can be destroyed while still joinable, and the rank aborts
        ("terminate called without an active exception") after its work is done."""
        if self.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            value = value.clone()
            dist.all_reduce(value)
            value /= self.world
        return value


def _distributed_state_dict():
    """``torch.distributed.checkpoint.state_dict``, which gathers and scatters FSDP shards."""
    # Imported here for start-up time: only FSDP runs need it.
    import torch.distributed.checkpoint.state_dict as dcp
    return dcp


def shard_blocks(module: nn.Module) -> int:
    """FSDP2-shard ``module`` (torch.distributed initialised): each sub-module marked
    ``fsdp_unit = True`` (the residual and transformer blocks of UNet3D, VideoDiT and
    VideoVAE) becomes its own unit, gathered just before it runs and freed after, then the
    root takes every remaining parameter. Returns the number of units (marked blocks + 1).
    """
    # Imported here for start-up time (and builds without distributed support): only FSDP
    # runs need it.
    from torch.distributed.fsdp import fully_shard
    blocks = [m for m in module.modules() if m is not module and getattr(m, "fsdp_unit", False)]
    for block in reversed(blocks):  # innermost first: a unit owns what no inner unit holds
        fully_shard(block)
    fully_shard(module)
    return len(blocks) + 1
