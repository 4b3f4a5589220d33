"""The epoch and step loop (:class:`Trainer`), shared by every distillation method and by teacher training.

The trainer owns what strategies must not: the student's mode around the inner maximisation,
autocast and ``channels_last``, the device, the DDP wrapper, the optimizer and learning rate, the
non-finite-loss policy, and when validation, logging and checkpoints happen. The process group
is joined before the trainer is built (:func:`~robustdistill.train.distributed.init_distributed`);
the trainer reads it or takes a :class:`~robustdistill.train.distributed.Dist`.

Determinism: every epoch reseeds torch from ``(seed, epoch, rank)`` and draws the data order
from a generator seeded by ``(seed, epoch)`` (the same on every rank, which then takes its own
shard) and the augmentation from one seeded by ``(seed, epoch, rank)``; the learning rate is a
pure function of the position in the run. A run killed at any point and resumed from its last
checkpoint therefore replays exactly the same computation (bit-identical on CPU).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from rich.progress import Progress
from torch import nn

from ..data import DatasetInfo, Split, augment_batch
from ..errors import RobustDistillError
from ..evaluation import EvalSettings
from ..methods.base import RunContext, Strategy
from ..progress import make_progress
from ..rng import derive_seed
from ..rundir import RunDir
from . import checkpoint as ckpt
from .config import TrainConfig
from .display import EpochBar, RunBar
from .distributed import (
    Dist, all_reduce_min, all_reduce_sum, average_buffers, barrier, check_sync_bn, convert_sync_bn, current_dist, shard_order,
    wrap_ddp,
)
from .optimizers import build_optimizer
from .probes import class_counts, weights_swapped
from .schedules import lr_factor
from .validation import is_validation_epoch, selected_epoch, updated_best, validation_record


class NonFiniteLossError(RobustDistillError, FloatingPointError):
    """Too many consecutive non-finite losses; the last checkpoint is left as it was."""


@dataclass
class EpochStats:
    """What one epoch of training measured (before validation)."""

    epoch: int
    lr: float
    loss: float
    seconds: float
    images: int
    skipped_steps: int
    extra: dict[str, Any]


class Trainer:
    """Runs ``strategy`` to train ``student`` (optionally against a frozen ``teacher``).

    Args:
        student: the model to train (a :class:`~robustdistill.models.Classifier`); moved to ``device``.
        teacher: the frozen teacher (put in eval mode, no parameter grads) or ``None`` for teacher-free methods.
        strategy: the method (see :mod:`robustdistill.methods`).
        train, val: splits of [0, 1] images; validation never uses the test split.
        info: dataset description (augmentation, class names).
        config: optimisation settings.
        device: where training runs.
        run_dir: where checkpoints and metrics go (``None``: keep everything in memory).
        eval_settings: the attack budget used for validation (eps; steps come from ``config``);
            default: the strategy's training budget.
        run_config: the run's resolved config, stored in the checkpoint.
        dist: this process's place in the process group; default: the group already joined, if any.
        extra_teachers: teachers besides ``teacher`` by the names the method asks for (MTARD's
            ``natural``); frozen like the teacher and handed to the strategy with :meth:`Strategy.bind`.
    """

    def __init__(
        self, student: nn.Module, teacher: nn.Module | None, strategy: Strategy, *, train: Split, val: Split,
        info: DatasetInfo, config: TrainConfig, device: torch.device, run_dir: RunDir | None = None,
        eval_settings: EvalSettings | None = None, run_config: dict[str, Any] | None = None, dist: Dist | None = None,
        extra_teachers: Mapping[str, nn.Module] | None = None,
    ) -> None:
        config.validate()
        self.cfg, self.device, self.strategy, self.info = config, device, strategy, info
        self.train_split, self.val_split, self.run_dir = train, val, run_dir
        self.run_config = run_config or {}
        self.eval_settings = eval_settings or EvalSettings(eps=strategy.attack.eps)
        self.dist = dist if dist is not None else current_dist()
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        if config.sync_bn:
            check_sync_bn(strategy.name, strategy.spec.double_backward, device)
            student = convert_sync_bn(student) if self.dist.enabled else student
        self.student = student.to(device, memory_format=self.memory_format)
        self.teacher = teacher.to(device, memory_format=self.memory_format).eval().requires_grad_(False) if teacher is not None else None
        self.extra_teachers = {name: model.to(device, memory_format=self.memory_format).eval().requires_grad_(False)
                               for name, model in (extra_teachers or {}).items()}
        strategy.bind(RunContext(self.extra_teachers, self.epoch_lr_factor, all_reduce_sum if self.dist.enabled else None))
        # The outer loss runs through DDP; the attack runs on the bare module (no reducer hooks per PGD step).
        self.model: nn.Module = wrap_ddp(self.student, device) if self.dist.enabled else self.student
        self.optimizer = build_optimizer(self.student.parameters(), config)
        # fp16 needs loss scaling or small gradients flush to zero; bf16/fp32 do not (disabled = no-op).
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
        self.parts = ckpt.TrainingParts(self.student, self.optimizer, self.scaler, self.strategy, config.optimizer)
        self.start_epoch = 0
        self.best: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.resumed_config: dict[str, Any] = {}  # the run config stored in the checkpoint we resumed from

    # -- checkpoints -------------------------------------------------------------------------
    def checkpoint_state(self, epoch: int) -> dict[str, Any]:
        """Everything a resumed run needs after ``epoch`` epochs; loads with ``torch.load(weights_only=True)``."""
        return ckpt.checkpoint_state(self.parts, ckpt.Progress(epoch, self.history, self.best, self.run_config))

    def save_checkpoint(self, epoch: int) -> None:
        """Write ``checkpoint.pt`` atomically (rank 0, with a run directory); the previous one survives any failure."""
        if self.run_dir is None or not self.dist.is_main:
            return
        self.run_dir.torch_save("checkpoint.pt", self.checkpoint_state(epoch))
        self.run_dir.checkpoint_epoch = epoch

    def load_checkpoint(self, path: Path) -> None:
        """Continue from ``path``: weights, optimizer, scaler, strategy, RNG, epoch, history and best epoch."""
        self.resume_from(ckpt.read_checkpoint(path), path)

    def resume_from(self, state: dict[str, Any], path: Path) -> None:
        """:meth:`load_checkpoint` of a ``state`` already read from ``path`` with
        :func:`~robustdistill.train.checkpoint.read_checkpoint` (e.g. to check it before claiming the run directory)."""
        ckpt.check_resumable(state, path, epochs=self.cfg.epochs, optimizer_name=self.cfg.optimizer)
        progress = ckpt.restore(self.parts, state)
        self.start_epoch, self.history, self.best = progress.epoch, progress.history, progress.best
        self.resumed_config = progress.config
        if self.run_dir is not None:
            self.run_dir.checkpoint_epoch = progress.epoch

    # -- one step ----------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.cfg.amp == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def epoch_lr_factor(self, epoch: int) -> float:
        """The schedule's factor at the start of (0-based) ``epoch`` (strategies whose own rates follow the lr)."""
        return lr_factor(self.cfg.schedule, self.cfg.epochs, epoch)

    def _set_lr(self, epoch: int, step: int, steps: int) -> float:
        lr = self.cfg.lr * lr_factor(self.cfg.schedule, self.cfg.epochs, epoch, step, steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _set_attack_mode(self) -> None:
        if self.strategy.attack_mode == "eval":
            self.student.eval()
        else:  # "train" (A1 attacks use batch statistics) or "none"
            self.student.train()

    def _is_finite(self, loss: torch.Tensor) -> bool:
        """One host sync per step (negligible after a K-step attack). Under DDP the decision is
        collective: a rank that skipped its backward alone would deadlock the gradient all-reduce."""
        ok = torch.isfinite(loss.detach()).reshape(1).to(torch.int32)
        if self.dist.enabled:
            all_reduce_min(ok)
        return bool(ok.item())

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """Attack, loss, and (if the loss is finite on every rank) one optimizer step; the loss, or ``None`` if skipped."""
        self._set_attack_mode()
        with self._autocast():
            adv = self.strategy.perturb(self.student, self.teacher, x, y)
        self.student.train()
        with self._autocast():
            loss, _stats = self.strategy.loss(self.model, self.teacher, x, y, adv, None)
        if not self._is_finite(loss):
            self.strategy.on_step_end(False)
            return None
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.strategy.on_step_end(True)
        return loss.detach().float()

    # -- one epoch ---------------------------------------------------------------------------
    def epoch_order(self, epoch: int) -> torch.Tensor:
        """This rank's example indices for ``epoch``, in training order (one shared order, sharded by rank)."""
        order_gen = torch.Generator().manual_seed(derive_seed(self.cfg.seed, epoch, 7))
        return shard_order(torch.randperm(len(self.train_split), generator=order_gen), self.dist)

    def _batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # One order for every rank (so the shards are disjoint); augmentation drawn per rank.
        augment_gen = torch.Generator().manual_seed(derive_seed(self.cfg.seed, epoch, 11, self.dist.rank))
        for x, y, _ in self.train_split.batches(self.cfg.batch_size, self.device, self.epoch_order(epoch)):
            x = augment_batch(x, self.info.crop_padding, self.info.flip, augment_gen)
            yield x.contiguous(memory_format=self.memory_format), y

    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch on each rank."""
        return math.ceil(math.ceil(len(self.train_split) / self.dist.world) / self.cfg.batch_size)

    def train_epoch(self, epoch: int, progress: Progress) -> EpochStats:
        """Train (0-based) ``epoch``; its bar is drawn into ``progress`` and removed at the end."""
        before = self._probe(epoch, "before_epoch", progress)  # before the reseed: it never shifts the training noise
        torch.manual_seed(derive_seed(self.cfg.seed, epoch, self.dist.rank))
        self.strategy.on_epoch_start(epoch, self.cfg.epochs)
        steps = self.steps_per_epoch()
        bar = EpochBar(progress, epoch, self.cfg.epochs, steps)
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, images
        skipped, consecutive, t0, lr = 0, 0, time.perf_counter(), self.cfg.lr
        for step, (x, y) in enumerate(self._batches(epoch)):
            lr = self._set_lr(epoch, step, steps)
            loss = self.step(x, y)
            if loss is None:  # skipped on every rank alike (the decision is collective)
                skipped, consecutive = skipped + 1, consecutive + 1
                self._check_nonfinite_streak(consecutive, epoch)
            else:
                consecutive = 0
                totals[0] += loss * y.shape[0]
                totals[1] += y.shape[0]
            bar.update(step, totals, lr)
        extra = {**before, **self._end_epoch(totals), **self._probe(epoch, "after_epoch", progress)}
        bar.close()
        loss_sum, images = totals.tolist()
        return EpochStats(epoch + 1, lr, loss_sum / max(1.0, images), time.perf_counter() - t0, int(images), skipped, extra)

    def _check_nonfinite_streak(self, consecutive: int, epoch: int) -> None:
        if consecutive >= self.cfg.max_nonfinite:
            raise NonFiniteLossError(
                f"{consecutive} consecutive non-finite losses at epoch {epoch + 1}; lower --lr or disable --amp "
                "(the last checkpoint is intact)"
            )

    def _end_epoch(self, totals: torch.Tensor) -> dict[str, Any]:
        """The strategy's epoch-end update and, under DDP, the reductions that keep every rank identical."""
        extra = self.strategy.on_epoch_end(all_reduce_sum if self.dist.enabled else None)
        if self.dist.enabled:
            all_reduce_sum(totals)
            average_buffers(self.student, self.dist.world)
        return extra

    def _probe(self, epoch: int, when: str, progress: Progress) -> dict[str, Any]:
        """The strategy's own per-class validation pass (FRL, CFA) if it wants one at ``when``; its logs."""
        need = self.strategy.validation_need()
        if need is None or need.when != when:
            return {}
        counts = class_counts(self.student, self.val_split, self.info, self.cfg, eps=self.eval_settings.eps,
                              pgd_steps=need.pgd_steps, device=self.device, progress=progress, dist=self.dist)
        return self.strategy.on_validation(counts, self.student, epoch)

    def validate(self, progress: Progress) -> dict[str, Any]:
        """Clean and PGD accuracy on the validation split (carved from training data; never test).

        Under DDP every rank calls it and attacks its share of the batches; all get the same record.
        """
        return validation_record(self.student, self.val_split, self.info, self.cfg, eps=self.eval_settings.eps,
                                 device=self.device, progress=progress, distributed=self.dist.enabled)

    # -- the run -----------------------------------------------------------------------------
    def fit(self, on_epoch: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """Train from ``start_epoch`` to ``epochs``; returns the metrics history.

        With a run directory, a disk-full error or an interruption (Ctrl-C, SIGTERM under
        :func:`robustdistill.signals.terminate_as_interrupt`) leaves the last checkpoint intact and
        names the command that resumes the run.
        """
        with self.run_dir.guard() if self.run_dir is not None else contextlib.nullcontext():
            if self.run_dir is not None and self.dist.is_main:
                self.run_dir.truncate_metrics(self.start_epoch)
            with make_progress() as progress:
                run_bar = RunBar(progress, self.cfg.epochs, self.start_epoch)
                for epoch in range(self.start_epoch, self.cfg.epochs):
                    record = self._run_epoch(epoch, progress)
                    run_bar.epoch_done(record)
                    if on_epoch is not None:
                        on_epoch(record)
        if self.cfg.select != "last" and self.best.get("model") is not None:
            self.student.load_state_dict(self.best["model"])
        elif (reported := self.strategy.report_state()) is not None:  # e.g. CFA's FAWA average
            self.student.load_state_dict(reported)
        return self.history

    def _run_epoch(self, epoch: int, progress: Progress) -> dict[str, Any]:
        """Train one epoch, validate (every rank its share), log and checkpoint (rank 0)."""
        stats = self.train_epoch(epoch, progress)
        record: dict[str, Any] = {
            "epoch": stats.epoch, "lr": stats.lr, "train_loss": stats.loss, "seconds": round(stats.seconds, 3),
            "images_per_second": round(stats.images / max(stats.seconds, 1e-9), 2), "skipped_steps": stats.skipped_steps,
            **stats.extra,
        }
        if is_validation_epoch(stats.epoch, self.cfg):
            # the weights the run would report are the ones validated and selected (CFA: the FAWA average)
            with weights_swapped(self.student, self.strategy.report_state()):
                record.update(self.validate(progress))
                self.best = updated_best(self.best, record, self.student, self.cfg.select)
        self.history.append(record)
        if self.run_dir is not None and self.dist.is_main:
            # metrics first: a kill between the two writes leaves a record the resume drops (truncate_metrics)
            self.run_dir.append_metrics(record)
        self.save_checkpoint(stats.epoch)
        barrier()
        return record

    @property
    def selected_epoch(self) -> int:
        """The epoch whose weights the run reports (the best validation epoch with ``select='best-val'`` or ``'fair'``)."""
        return selected_epoch(self.best, self.history, self.cfg.select)


__all__ = ["EpochStats", "NonFiniteLossError", "Trainer"]
