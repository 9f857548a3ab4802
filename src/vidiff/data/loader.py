"""Batching: ``collate``, seeded samplers, shape buckets and ``make_loader``.

Every sampler here is a pure function of ``(seed, epoch)`` (and a start position), so a
resumed run sees the same batches, and no sampler materialises the 2**31 indices of an
infinite dataset.
"""
from __future__ import annotations

import bisect
import multiprocessing
from collections import OrderedDict
from typing import Iterator, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Sampler

from vidiff.data.common import DatasetError

_COMMON = ("video", "latents", "caption", "frame_stride", "index")


def collate(items: Sequence[dict]) -> dict:
    """Stack a list of items into a batch.

    ``video`` -> ``(B, 3, T, H, W)`` (or ``latents`` -> ``(B, Cz, t, h, w)``); ``caption`` ->
    list of str; ``frame_stride`` -> float ``(B,)``; ``index`` -> long ``(B,)``. Other keys: tensors of one shape are stacked,
    numbers become a tensor, anything else stays a list.
    """
    if not items:
        raise ValueError("collate needs at least one item")
    key = "video" if "video" in items[0] else "latents"    # a latent cache's items hold latents
    shapes = {tuple(it[key].shape) for it in items}
    if len(shapes) > 1:
        raise DatasetError(f"cannot batch clips of different shapes {sorted(shapes)}; batch them by "
                           "shape with BucketBatchSampler (make_loader does when the dataset has buckets)")
    batch = {key: torch.stack([it[key] for it in items]),
             "caption": [str(it.get("caption", "")) for it in items],
             "frame_stride": torch.tensor([float(it.get("frame_stride", 1.0)) for it in items]),
             "index": torch.tensor([int(it.get("index", -1)) for it in items], dtype=torch.long)}
    for key in items[0]:
        if key in _COMMON:
            continue
        values = [it.get(key) for it in items]
        if all(isinstance(v, torch.Tensor) for v in values) and len({v.shape for v in values}) == 1:
            batch[key] = torch.stack(values)
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    return batch


class SeededSampler(Sampler[int]):
    """One epoch of ``range(n)``, shuffled by ``(seed, epoch)``; ``set_epoch`` moves on."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = int(n), int(seed), shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class InfiniteSampler(Sampler[int]):
    """``start, start + 1, ...``: for endless synthetic datasets, whose items are already random."""

    def __init__(self, start: int = 0, end: Optional[int] = None):
        self.start, self.end = int(start), end

    def __iter__(self) -> Iterator[int]:
        i = self.start
        while self.end is None or i < self.end:
            yield i
            i += 1


class BucketBatchSampler(Sampler[list[int]]):
    """Batches whose items share one ``(frames, height, width)``, so one run mixes sizes.

    Indices are visited in a seeded order (a permutation per epoch for a finite dataset, or
    ``start, start + 1, ...`` for an infinite one) and queued per shape; a batch is emitted as
    soon as a queue holds ``batch_size`` indices. At the end of a finite epoch the partial
    queues become batches unless ``drop_last``.

    Args:
        dataset: anything with ``item_shape(i)`` and ``__len__`` (every vidiff dataset), or
            pass ``shapes`` (a list of ``(T, H, W)`` per index) instead.
    """

    def __init__(self, dataset=None, batch_size: int = 8, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = False, shapes: Optional[Sequence] = None, start: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if dataset is None and shapes is None:
            raise ValueError("BucketBatchSampler needs a dataset (with item_shape) or shapes")
        self.batch_size, self.seed, self.shuffle, self.drop_last = int(batch_size), int(seed), shuffle, drop_last
        self.start, self.epoch = int(start), 0
        if shapes is not None:
            self._shapes = [tuple(s) for s in shapes]
            self.shape_of, self.n, self.infinite = self._shapes.__getitem__, len(self._shapes), False
        else:
            self.shape_of, self.n = dataset.item_shape, len(dataset)
            self.infinite = bool(getattr(dataset, "infinite", False))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _order(self) -> Iterator[int]:
        if self.infinite:
            return iter(InfiniteSampler(self.start, self.n))
        return iter(SeededSampler(self.n, self.seed + self.epoch * 7_919, self.shuffle))

    def __iter__(self) -> Iterator[list[int]]:
        queues: "OrderedDict[tuple, list[int]]" = OrderedDict()
        for i in self._order():
            queue = queues.setdefault(tuple(self.shape_of(i)), [])
            queue.append(i)
            if len(queue) == self.batch_size:
                yield queue[:]
                queue.clear()
        if not self.drop_last:
            for queue in queues.values():
                if queue:
                    yield queue

    def __len__(self) -> int:
        if self.infinite:
            raise TypeError("an infinite dataset has no number of batches")
        counts: dict = {}
        for i in range(self.n):
            key = tuple(self.shape_of(i))
            counts[key] = counts.get(key, 0) + 1
        if self.drop_last:
            return sum(c // self.batch_size for c in counts.values())
        return sum(-(-c // self.batch_size) for c in counts.values())


class BucketPlan:
    """Global batches of one ``(frames, height, width)`` each, addressed by step number.

    The trainer's data order must be a pure function of the step (so a resumed or
    differently parallelised run reads the same samples); this is the bucketed form of that.
    The dataset's indices are cut into windows (an epoch's seeded permutation for a finite
    dataset, ``window`` consecutive indices for an infinite one); inside a window indices are
    queued per shape, every full queue of ``batch_size`` becomes a batch (the remainder of a
    window is dropped) and the window's batches are shuffled so buckets interleave.

    ``batch(step)`` -> the ``batch_size`` dataset indices of global step ``step``.
    """

    def __init__(self, dataset, batch_size: int, seed: int = 0, window: Optional[int] = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.shape_of, self.n = dataset.item_shape, len(dataset)
        self.infinite = bool(getattr(dataset, "infinite", False))
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.window = int(window or 64 * batch_size)
        self._cached: tuple = (None, None)
        self._ends: list[int] = []          # cumulative batch count after each window
        if not self._window_batches(0):
            raise DatasetError(f"no bucket holds {batch_size} clips (a whole batch); lower "
                               f"train.batch_size or use fewer buckets")

    def _window_batches(self, k: int) -> list[list[int]]:
        if self.infinite:
            order = range(k * self.window, min((k + 1) * self.window, self.n))
        else:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
            order = torch.randperm(self.n, generator=g).tolist()
        queues: "OrderedDict[tuple, list[int]]" = OrderedDict()
        batches = []
        for i in order:
            queue = queues.setdefault(tuple(self.shape_of(i)), [])
            queue.append(i)
            if len(queue) == self.batch_size:
                batches.append(queue[:])
                queue.clear()
        g = torch.Generator().manual_seed(self.seed * 7_919 + k)
        return [batches[j] for j in torch.randperm(len(batches), generator=g).tolist()]

    def batch(self, step: int) -> list[int]:
        # Only the window counts are kept (one int each) and the window in use is cached:
        # a window is a pure function of its number, so any window can be rebuilt.
        while not self._ends or self._ends[-1] <= step:
            batches = self._window_batches(len(self._ends))
            if not batches:
                raise DatasetError(f"bucket window {len(self._ends)} holds no whole batch")
            self._ends.append((self._ends[-1] if self._ends else 0) + len(batches))
            self._cached = (len(self._ends) - 1, batches)
        k = bisect.bisect_right(self._ends, step)
        if self._cached[0] != k:
            self._cached = (k, self._window_batches(k))
        return self._cached[1][step - (self._ends[k - 1] if k else 0)]


# Workers start as fresh processes, never as forks of this one: a fork copies the locks that
# this process's other threads (FFmpeg's decoder and scaler threads, OpenMP's, a progress bar's)
# hold at that moment, and a forked worker decoding video with PyAV hung for good in FFmpeg's
# scaler (freeing its slice threads), intermittently, under the test suite.
WORKER_START = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _worker_init(_: int) -> None:
    # Workers decode; one intra-op thread each keeps them from oversubscribing the cores.
    torch.set_num_threads(1)


def make_loader(dataset, batch_size: int, seed: int = 0, shuffle: bool = True, num_workers: int = 0,
                drop_last: bool = True, buckets: Optional[bool] = None, start: int = 0,
                pin_memory: bool = False, prefetch_factor: Optional[int] = None) -> DataLoader:
    """A ``DataLoader`` with :func:`collate`, seeded order and, when needed, shape buckets.

    - finite dataset: one epoch per iteration, shuffled by ``(seed, epoch)``; call
      ``loader.batch_sampler.set_epoch(e)`` (buckets) or ``loader.sampler.set_epoch(e)``;
    - infinite dataset (``dataset.infinite``): an endless stream from index ``start``;
    - ``buckets`` (default: whether the dataset has buckets): batches of one shape through
      :class:`BucketBatchSampler`.

    Items do not depend on the worker that makes them, so any ``num_workers`` gives the same
    batches.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    infinite = bool(getattr(dataset, "infinite", False))
    use_buckets = bool(getattr(dataset, "buckets", None)) if buckets is None else buckets
    options = dict(num_workers=num_workers, collate_fn=collate, pin_memory=pin_memory,
                   worker_init_fn=_worker_init if num_workers > 0 else None,
                   persistent_workers=num_workers > 0)
    if num_workers > 0:
        options["multiprocessing_context"] = WORKER_START
        if prefetch_factor is not None:
            options["prefetch_factor"] = prefetch_factor
    if use_buckets:
        sampler = BucketBatchSampler(dataset, batch_size, seed, shuffle, drop_last, start=start)
        return DataLoader(dataset, batch_sampler=sampler, **options)
    order = InfiniteSampler(start, len(dataset)) if infinite else SeededSampler(len(dataset), seed, shuffle)
    return DataLoader(dataset, batch_size=batch_size, sampler=order, drop_last=drop_last, **options)
