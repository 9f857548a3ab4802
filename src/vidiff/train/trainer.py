"""The training loop: one process by default, DDP or FSDP under ``torchrun``.

The loop is written once around an objective (``objective(batch, draws) -> loss, metrics``).
Data positions and all per-sample randomness derive from (seed, step, global sample index),
so a run resumed from a checkpoint continues exactly as the uninterrupted run would have, and
the result does not depend on the number of processes.
"""
from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from vidiff.checkpoint import (
    grow_input_channels, prune_checkpoints, read_trainer_state, read_weights, resolve_checkpoint,
    save_checkpoint,
)
from vidiff.data import BucketPlan
from vidiff.models.pretrained import frozen_prefixes
from vidiff.data import collate as default_collate
from vidiff.data.loader import WORKER_START
from vidiff.train.ema import EMA
from vidiff.train.process import Dist, _distributed_state_dict, keep_freed_memory, shard_blocks
from vidiff.train.objective import SampleDraws


def lr_factor(step: int, warmup: int, total: int, schedule: str, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then constant or cosine decay to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


#################################################################################
#                                   Trainer                                     #
#################################################################################


class Trainer:
    """Runs an objective's optimisation with everything a long run needs.

    Args:
        objective: an ``nn.Module`` whose forward is ``(batch, draws, image_step) -> (loss, metrics)``.
        dataset: map-style dataset of item dicts (``video``, ``caption``, ...).
        train: a :class:`~vidiff.train.config.TrainConfig`.
        checkpoint_config: the dict stored as each checkpoint's config.json (what to rebuild), or
            ``fn(weights) -> dict`` when it depends on the weights being saved.
        save_extra: ``fn(tmp_dir, weights)`` that adds files to each checkpoint (the text
            encoder's folder); ``weights`` is the saved state (EMA when kept), unsharded.
        collate: turns a list of items into a batch (default ``vidiff.data.collate``).
        progress: draw a progress bar (rank 0).
    """

    def __init__(self, objective: nn.Module, dataset, train, checkpoint_config: dict,
                 save_extra=None, collate=None, progress: bool = True):
        if collate is None:
            collate = default_collate
        self.dist = Dist()
        if self.dist.device.type == "cpu":
            keep_freed_memory()
        self.cfg, self.dataset = train, dataset
        self.collate = collate
        self.checkpoint_config, self.save_extra = checkpoint_config, save_extra
        self.progress = progress and self.dist.main
        self.out_dir = Path(train.out_dir)
        per_step = train.batch_size
        if per_step % (self.dist.world * train.grad_accum):
            raise ValueError(f"train.batch_size {per_step} must be divisible by processes x grad_accum "
                             f"= {self.dist.world} x {train.grad_accum}")
        self.micro_batch = per_step // (self.dist.world * train.grad_accum)
        self._loader = None   # batches from the current step on: made by fit, or by a first train_step
        self.objective = objective.to(self.dist.device)
        self._frozen = self._freeze(train.trainable)
        self.model = self._wrap(self.objective)
        # An objective with several models (an autoencoder and its discriminator) gives one
        # parameter group each; otherwise every trainable parameter is one group.
        groups = objective.param_groups(train.lr) if hasattr(objective, "param_groups") else \
            [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(groups, lr=train.lr, betas=(train.beta1, train.beta2),
                                           weight_decay=train.weight_decay)
        self.scheduler = self._make_scheduler()
        self.ema = EMA(self.objective, train.ema_decay, train.ema_warmup) if train.ema_decay > 0 else None
        self.step = 0
        self.history: list[dict] = []
        self._stop_signal: Optional[str] = None
        self.sample_hook = None  # fn(trainer) on rank 0 every train.sample_every steps
        self._tensorboard = None
        self._permutation: tuple = (None, None)
        # A dataset with shape buckets is read one shape per global batch (see BucketPlan).
        self._buckets = None
        if getattr(dataset, "buckets", None):
            self._buckets = BucketPlan(dataset, train.batch_size, train.seed)

    # ------------------------------------------------------------------ setup
    def set_total_steps(self, steps: int) -> None:
        """Plan ``steps`` steps instead of ``train.steps``: the LR schedule spans them. For a
        run whose length follows a time budget.

        Allowed before training starts and, after that, until the LR warm-up ends: the
        warm-up's rates do not depend on the total, so a run re-planned there (from step
        times measured on its first real steps) follows exactly the schedule it would have
        had if planned with that total from the start."""
        warmup = self.cfg.warmup_steps
        if self.step > warmup:
            raise ValueError(f"set_total_steps must come before training starts or within the LR "
                             f"warm-up (steps 0-{warmup}); this run is at step {self.step}")
        if steps < max(1, self.step):
            raise ValueError(f"steps must be >= {max(1, self.step)} (the steps already trained, "
                             f"at least 1), got {steps}")
        # The scheduler stays: its lambda reads ``cfg.steps`` at every step, and the rates it
        # has given so far (the warm-up's) are the same for any total.
        self.cfg.steps = int(steps)

    def _make_scheduler(self) -> torch.optim.lr_scheduler.LambdaLR:
        train = self.cfg
        return torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, train.warmup_steps, train.steps,
                                                train.lr_schedule, train.min_lr_ratio))

    def _wrap(self, module: nn.Module) -> nn.Module:
        if self.dist.world > 1 and self.cfg.fsdp:
            shard_blocks(module)    # each block its own unit, then the root
            wrapped = module
        elif self.dist.world > 1:
            device_ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            wrapped = nn.parallel.DistributedDataParallel(module, device_ids=device_ids)
        else:
            wrapped = module
        if self.cfg.compile:
            # Compile the network in place (its state-dict names stay the same); the objective's
            # per-sample random draws and the text encoder stay eager, outside the graph.
            getattr(module, "network", module).compile(backend=self.cfg.compile_backend)
        return wrapped

    def _freeze(self, prefixes: list[str]) -> frozenset[str]:
        """Freeze every parameter whose name starts with none of ``prefixes`` (``train.trainable``;
        empty: all train). Returns the names frozen here."""
        if not prefixes:
            return frozenset()
        params = {n: p for n, p in self.objective.named_parameters() if p.requires_grad}
        unmatched = [p for p in prefixes if not any(n.startswith(p) for n in params)]
        if unmatched:
            raise ValueError(f"train.trainable: no trainable parameter starts with {unmatched}; "
                             f"the parameters are named like {list(params)[:3]}")
        frozen = frozenset(n for n in params if not n.startswith(tuple(prefixes)))
        for n in frozen:
            params[n].requires_grad_(False)
        return frozen

    def load_weights(self, path, ema: bool = False) -> None:
        """Initialise from a checkpoint's weights (fine-tuning: ``train.init_from``).

        The model may have gained conditions the checkpoint lacks (known frames, a
        low-resolution clip, a noise-level embedder): the extra input channels of a weight
        (dimension 1 larger than the checkpoint's) start at zero and the added embedders keep
        their zero output layer, so the fine-tune starts from exactly the checkpoint's function.
        An added reference encoder starts fresh; it acts only on samples given a reference.
        The other way round, a part of that kind (``ADDABLE``) that the checkpoint has and this
        model leaves out is dropped: the model starts from the network the part was added to
        (a stage that trained only the part left that network as it was).
        """
        state = grow_input_channels(read_weights(path, ema=ema), self.objective.state_dict())
        missing, unexpected = self.objective.load_state_dict(state, strict=False)
        # Frozen pretrained parts (a CLIP encoder) may be absent; parts frozen by
        # train.trainable are this model's own and must come from the checkpoint.
        trainable = {n for n, p in self.objective.named_parameters() if p.requires_grad} | self._frozen
        added = _addable_prefixes(self.objective)
        missing = [m for m in missing if m in trainable and not m.startswith(added)]
        unexpected = [u for u in unexpected if not u.startswith(added)]
        if missing or unexpected:
            raise ValueError(f"checkpoint {str(path)!r} does not match this model: missing "
                             f"{missing[:5]}, unexpected {list(unexpected)[:5]}")
        if self.ema is not None:
            self.ema = EMA(self.objective, self.cfg.ema_decay, self.cfg.ema_warmup)

    def resume(self, path) -> None:
        """Restore weights, EMA, optimizer, LR schedule, step and RNG from a checkpoint."""
        path = resolve_checkpoint(path)
        raw = read_weights(path, ema=False)
        state = read_trainer_state(path)
        if self._sharded:
            dcp = _distributed_state_dict()
            options = dcp.StateDictOptions(full_state_dict=True, strict=False)
            dcp.set_model_state_dict(self.objective, raw, options=options)
            dcp.set_optimizer_state_dict(self.objective, self.optimizer, state["optimizer"], options=options)
        else:
            self.objective.load_state_dict(raw, strict=False)
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.history = list(state.get("history", []))
        torch.set_rng_state(state["torch_rng"])
        if self.ema is not None and (path / "ema.safetensors").is_file():
            self.ema.load_shadow(read_weights(path, ema=True))

    # ------------------------------------------------------------------ data
    def _indices(self, step: int, micro: int) -> list[int]:
        """Global sample indices of this process's micro-batch ``micro`` at ``step``."""
        start = step * self.cfg.batch_size + (micro * self.dist.world + self.dist.rank) * self.micro_batch
        return list(range(start, start + self.micro_batch))

    def _dataset_index(self, sample: int) -> int:
        """Dataset item of global sample ``sample``: a fresh permutation per epoch, seeded by
        (seed, epoch); synthetic datasets whose items are all distinct are read in order;
        a bucketed dataset follows its :class:`~vidiff.data.BucketPlan`."""
        if self._buckets is not None:
            step, offset = divmod(sample, self.cfg.batch_size)
            return self._buckets.batch(step)[offset]
        n = len(self.dataset)
        if getattr(self.dataset, "infinite", False) or n > 10_000_000:
            return sample % n
        epoch, offset = divmod(sample, n)
        if self._permutation[0] != epoch:
            g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
            self._permutation = (epoch, torch.randperm(n, generator=g))
        return int(self._permutation[1][offset])

    def _batches(self):
        """Batches in step order from ``self.step`` on, in lockstep with :meth:`_indices`.

        A DataLoader with ``train.num_workers`` worker processes decodes ahead; the sampler
        it reads is derived from the step counter, so resuming needs no loader state.
        """

        trainer, start = self, self.step

        class StepBatches(torch.utils.data.Sampler):
            def __iter__(self):
                for step in range(start, trainer.cfg.steps):
                    for micro in range(trainer.cfg.grad_accum):
                        yield [trainer._dataset_index(i) for i in trainer._indices(step, micro)]

            def __len__(self):
                return max(0, trainer.cfg.steps - start) * trainer.cfg.grad_accum

        workers = self.cfg.num_workers
        return iter(DataLoader(self.dataset, batch_sampler=StepBatches(), collate_fn=self.collate,
                               num_workers=workers, persistent_workers=False,
                               multiprocessing_context=WORKER_START if workers > 0 else None,
                               pin_memory=self.dist.device.type == "cuda"))

    def _image_step(self, step: int) -> bool:
        if self.cfg.image_ratio <= 0:
            return False
        g = torch.Generator().manual_seed(self.cfg.seed * 7_919 + step)
        return bool(torch.rand((), generator=g) < self.cfg.image_ratio)

    # ------------------------------------------------------------------ loop
    def train_step(self) -> dict:
        """One optimizer step on the next batch; returns its metrics."""
        cfg, step = self.cfg, self.step
        if self._loader is None:
            self._loader = self._batches()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        image_step = self._image_step(step)
        total = torch.zeros((), device=self.dist.device)
        for micro in range(cfg.grad_accum):
            indices = self._indices(step, micro)
            draws = SampleDraws(cfg.seed, step, indices, cfg.batch_size)
            batch = next(self._loader)
            batch = {k: v.to(self.dist.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                     for k, v in batch.items()}
            sync = micro == cfg.grad_accum - 1 or not isinstance(self.model, nn.parallel.DistributedDataParallel)
            context = torch.autocast(self.dist.device.type, dtype=torch.bfloat16) \
                if cfg.precision == "bf16" else _null_context()
            with (_null_context() if sync else self.model.no_sync()), context:
                loss, _ = self.model(batch, draws, image_step)
                (loss / cfg.grad_accum).backward()
            total += loss.detach() / cfg.grad_accum
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.model.parameters() if p.requires_grad],
            cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.objective, self.step)
        return {"step": self.step, "loss": float(self.dist.mean(total)),
                "grad_norm": float(grad_norm), "lr": self.scheduler.get_last_lr()[0],
                "image_step": image_step}

    def fit(self, until: Optional[int] = None) -> list[dict]:
        """Train until ``train.steps`` (or stop early at step ``until``, saving a checkpoint
        there as an interruption would); return the metric history."""
        cfg = self.cfg
        until = cfg.steps if until is None else min(until, cfg.steps)
        if self.dist.main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        previous = self._install_signal_handlers()
        self._loader = self._batches()
        bar = None
        if self.progress:
            bar = tqdm(total=cfg.steps, initial=self.step, desc="training", unit="step", dynamic_ncols=True)
        started = time.perf_counter()
        try:
            window_start, window_steps = time.perf_counter(), 0
            while self.step < until:
                metrics = self.train_step()
                window_steps += 1
                self.history.append({"step": metrics["step"], "loss": metrics["loss"]})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}")
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    elapsed = time.perf_counter() - window_start
                    metrics["steps_per_s"] = window_steps / max(elapsed, 1e-9)
                    window_start, window_steps = time.perf_counter(), 0
                    self._log(metrics)
                if cfg.max_minutes > 0 and time.perf_counter() - started > 60 * cfg.max_minutes:
                    self._stop_signal = self._stop_signal or "time limit"
                stop = self._agreed_stop()
                sample_now = (cfg.sample_every > 0 and self.step % cfg.sample_every == 0
                              and self.step < cfg.steps and self.sample_hook is not None)
                if self.step % cfg.checkpoint_every == 0 or self.step in (cfg.steps, until) or stop \
                        or sample_now:
                    self.save()
                if sample_now and self.dist.main:
                    self.sample_hook(self)  # periodic EMA samples, from the checkpoint just written
                if stop:
                    if self.dist.main:
                        print(f"\nstopped ({self._stop_signal}) at step {self.step}; "
                              f"checkpoint saved in {self.out_dir / 'checkpoints'}")
                    break
        finally:
            if bar is not None:
                bar.close()
            self._restore_signal_handlers(previous)
        return self.history

    # ------------------------------------------------------------------ outputs
    def _log(self, metrics: dict) -> None:
        if not self.dist.main:
            return
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(metrics) + "\n")
        if self._tensorboard is None:
            try:  # TensorBoard when it is installed; metrics.jsonl always
                from torch.utils.tensorboard import SummaryWriter
                self._tensorboard = SummaryWriter(str(self.out_dir / "tensorboard"))
            except ImportError:
                self._tensorboard = False
        if self._tensorboard:
            for key, value in metrics.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(key, value, metrics["step"])

    @property
    def _sharded(self) -> bool:
        return self.dist.world > 1 and self.cfg.fsdp

    def model_state(self) -> dict:
        """Full (unsharded) trainable state on the CPU; under FSDP every rank must call it."""
        if self._sharded:
            dcp = _distributed_state_dict()
            state = dcp.get_model_state_dict(self.objective, options=dcp.StateDictOptions(
                full_state_dict=True, cpu_offload=True))
        else:
            state = self.objective.state_dict()
        keep = _trainable_filter(self.objective, self._frozen)
        return {k: _full(v) for k, v in state.items() if keep(k)}

    def optimizer_state(self) -> dict:
        if self._sharded:
            dcp = _distributed_state_dict()
            return dcp.get_optimizer_state_dict(self.objective, self.optimizer, options=dcp.StateDictOptions(
                full_state_dict=True, cpu_offload=True))
        return self.optimizer.state_dict()

    def ema_state(self) -> Optional[dict]:
        if self.ema is None:
            return None
        full = self.ema.state_dict(self.objective)
        keep = _trainable_filter(self.objective, self._frozen)
        return {k: _full(v) for k, v in full.items() if keep(k)}

    def save(self) -> Optional[Path]:
        """Write ``checkpoints/step_NNNNNNN`` atomically (rank 0 only) and prune old ones."""
        # every rank takes part: FSDP gathers the shards
        model_state, ema_state, optimizer_state = self.model_state(), self.ema_state(), self.optimizer_state()
        path = None
        if self.dist.main:
            trainer_state = {"optimizer": optimizer_state,
                             "scheduler": self.scheduler.state_dict(), "step": self.step,
                             "torch_rng": torch.get_rng_state(), "history": self.history}
            weights = ema_state if ema_state is not None else model_state
            # checkpoint_config may depend on the weights (an autoencoder's latent scale)
            config = self.checkpoint_config(weights) if callable(self.checkpoint_config) \
                else dict(self.checkpoint_config)
            config["step"] = self.step
            extra = None
            if self.save_extra is not None:
                extra = lambda tmp: self.save_extra(tmp, weights)  # noqa: E731
            path = save_checkpoint(self.out_dir / "checkpoints" / f"step_{self.step:07d}", config,
                                   model_state, ema_state, trainer_state, extra)
            prune_checkpoints(self.out_dir, self.cfg.keep_last)
        self.dist.barrier()
        return path

    # ------------------------------------------------------------------ signals
    def _install_signal_handlers(self):
        def handler(signum, frame):
            self._stop_signal = signal.Signals(signum).name
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread
                pass
        return previous

    def _restore_signal_handlers(self, previous) -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    def _agreed_stop(self) -> bool:
        flag = torch.tensor(float(self._stop_signal is not None))
        if self.dist.world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag > 0)


def _full(value: torch.Tensor) -> torch.Tensor:
    """A plain CPU tensor from a (possibly sharded) DTensor."""
    if hasattr(value, "full_tensor"):
        value = value.full_tensor()
    return value.detach().cpu()


def _addable_prefixes(module: nn.Module) -> tuple[str, ...]:
    """Parameter-name prefixes a checkpoint may lack when it initialises ``module``: the parts
    each submodule's class lists in ``ADDABLE`` (ConditionEmbedder's optional embedders,
    UNet3D's pixel head), which start as the identity."""
    return tuple(f"{name}.{part}." if name else f"{part}."
                 for name, m in module.named_modules() for part in getattr(m, "ADDABLE", ()))


def _trainable_filter(module: nn.Module, held: frozenset = frozenset()):
    """``keep(key)``: True for parameters that train or are ``held`` (frozen by
    ``train.trainable``, but this model's own), and for buffers outside frozen pretrained
    models (a CLIP/T5 text encoder, a CLIP vision reference encoder: they are recorded by their
    folder, not stored); the tables are built once per save, not once per key."""
    trains = {name: p.requires_grad or name in held for name, p in module.named_parameters()}
    frozen = frozen_prefixes(module)

    def keep(key: str) -> bool:
        if key in trains:
            return trains[key]
        return not key.startswith(frozen)
    return keep


class _null_context:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
