"""The one training loop, shared by every distillation method and by teacher training.

The trainer owns what strategies must not: the student's mode around the inner maximisation,
autocast and ``channels_last``, the device, DDP, the optimizer and learning-rate schedule,
per-epoch validation on the held-out split (never the test split), ``metrics.jsonl``, and an
atomically written, resumable ``checkpoint.pt``.

Determinism: every epoch reseeds torch from ``(seed, epoch, rank)`` and draws the data order
and augmentation from a generator seeded by ``(seed, epoch)``, and the learning rate is a pure
function of the position in the run. A run killed at any point and resumed from its last
checkpoint therefore replays exactly the same computation (bit-identical on CPU).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from ._utils import atomic_torch_save, atomic_write_text, derive_seed
from .data import DatasetInfo, Split, augment_batch
from .errors import RunDirError, UsageError
from .evaluation import EvalSettings, evaluate_model
from .methods.base import Strategy
from .models.classifier import unwrap
from .progress import console, is_main_process, make_progress

SCHEDULES = ("ard", "ard-released", "rslad", "cosine", "constant")
CHECKPOINT_FORMAT = "robustdistill/checkpoint@1"


@dataclass
class TrainConfig:
    """Optimisation settings. Schedule presets scale their milestones with ``epochs``:

    * ``ard``: x0.1 at 50 % and 75 % of the run (ARD/IAD/KDIGA/Fair-ARD paper intent: 100 and 150 of 200).
    * ``ard-released``: x0.1 at 50 % only - what the released ARD-family code actually does
      (it re-derives the lr from the base value, so the second decay repeats 0.01; specs §1.2).
    * ``rslad``: x0.1 after 215, 260 and 285 of 300 epochs (RSLAD/Fair-RSLAD).
    * ``cosine``: per-step cosine decay to 0; ``constant``: no decay.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 2e-4
    nesterov: bool = False
    schedule: str = "ard"
    amp: str = "none"  # none | bf16 | fp16
    channels_last: bool = False
    seed: int = 0
    val_every: int = 1
    val_pgd_steps: int = 10
    val_n_examples: int | None = None
    select: str = "last"  # last | best-val
    max_nonfinite: int = 20

    def validate(self) -> None:
        if self.schedule not in SCHEDULES:
            raise UsageError(f"unknown lr schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}")
        if self.amp not in ("none", "bf16", "fp16"):
            raise UsageError(f"--amp must be none, bf16 or fp16, not {self.amp!r}")
        if self.select not in ("last", "best-val"):
            raise UsageError(f"--select must be last or best-val, not {self.select!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise UsageError("epochs, batch size and learning rate must be positive")


def lr_factor(schedule: str, epochs: int, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
    """Learning-rate multiplier at ``step`` of (0-based) ``epoch``."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        progress = (epoch + step / max(1, steps_per_epoch)) / epochs
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if schedule in ("ard", "ard-released"):
        fractions = (0.5, 0.75) if schedule == "ard" else (0.5,)
    elif schedule == "rslad":
        fractions = (215 / 300, 260 / 300, 285 / 300)
    else:
        raise UsageError(f"unknown lr schedule {schedule!r}")
    milestones = [round(f * epochs) for f in fractions]
    return 0.1 ** sum(epoch >= m for m in milestones if m > 0)


# --------------------------------------------------------------------------- distributed helpers
@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: torch.device) -> Dist:
    """Join the process group torchrun set up (WORLD_SIZE > 1); a no-op otherwise."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shard_order(order: torch.Tensor, d: Dist) -> torch.Tensor:
    """This rank's share of ``order``, padded by wrapping so every rank runs the same number of steps."""
    if not d.enabled:
        return order
    total = math.ceil(order.numel() / d.world) * d.world
    padded = torch.cat([order, order[: total - order.numel()]])
    return padded[d.rank :: d.world]


# --------------------------------------------------------------------------- run directory
class RunDir:
    """Files of one run. Nothing is overwritten silently; everything is written atomically."""

    ARTIFACTS = (
        "config.yaml", "metrics.jsonl", "checkpoint.pt", "best.pt", "student.safetensors", "teacher.safetensors",
        "report.json", "report.md", "per_class.png", "fairness.json", "fairness.md",
    )

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def prepare(self, *, resume: bool, overwrite: bool) -> None:
        existing = [p.name for p in self.path.iterdir()] if self.path.is_dir() else []
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"--out {self.path} is a file; choose a directory")
        if resume:
            if not (self.path / "checkpoint.pt").exists():
                raise RunDirError(f"nothing to resume in {self.path} (no checkpoint.pt); start the run without --resume")
            return
        if existing and not overwrite:
            raise RunDirError(
                f"{self.path} already holds files ({', '.join(sorted(existing)[:4])}); resume with --resume, "
                "replace with --overwrite, or choose another --out"
            )
        if overwrite:
            for name in existing:
                if name in self.ARTIFACTS or name.endswith(".png") or name.startswith(".") and name.endswith(".tmp"):
                    (self.path / name).unlink(missing_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def truncate_metrics(self, completed_epochs: int) -> None:
        """Drop records of epochs that the checkpoint does not contain (a kill between the two writes)."""
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return
        keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("epoch", 0) <= completed_epochs]
        atomic_write_text(path, "".join(line + "\n" for line in keep))


# --------------------------------------------------------------------------- the trainer
@dataclass
class EpochStats:
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
        student: the model to train (a :class:`~robustdistill.models.Classifier`), on ``device``.
        teacher: the frozen teacher (eval mode, no grad) or ``None`` for teacher-free methods.
        strategy: the method (see :mod:`robustdistill.methods`).
        train, val: splits of [0, 1] images; validation never uses the test split.
        info: dataset description (augmentation, class names).
        config: optimisation settings.
        run_dir: where checkpoints and metrics go (``None``: keep everything in memory).
        eval_settings: the attack budget used for validation (eps; steps from the config).
    """

    def __init__(
        self, student: nn.Module, teacher: nn.Module | None, strategy: Strategy, *, train: Split, val: Split,
        info: DatasetInfo, config: TrainConfig, device: torch.device, run_dir: RunDir | None = None,
        eval_settings: EvalSettings | None = None, run_config: dict[str, Any] | None = None,
    ) -> None:
        config.validate()
        self.cfg, self.device, self.strategy, self.info = config, device, strategy, info
        self.train_split, self.val_split, self.run_dir = train, val, run_dir
        self.run_config = run_config or {}
        self.eval_settings = eval_settings or EvalSettings()
        self.dist = init_distributed(device)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.student = student.to(device, memory_format=self.memory_format)
        self.teacher = teacher.to(device, memory_format=self.memory_format) if teacher is not None else None
        self.model: nn.Module = self.student
        if self.dist.enabled:
            # broadcast_buffers=False: ARD/RSLAD run two forwards (adversarial + clean) before one
            # backward; re-broadcasting BN buffers between them is an in-place error under DDP.
            self.model = nn.parallel.DistributedDataParallel(
                self.student, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
            )
        self.optimizer = torch.optim.SGD(
            self.student.parameters(), lr=config.lr, momentum=config.momentum,
            weight_decay=config.weight_decay, nesterov=config.nesterov and config.momentum > 0,
        )
        self.start_epoch = 0
        self.best: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []

    # -- autocast ----------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.cfg.amp == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    # -- checkpointing -----------------------------------------------------------------------
    def checkpoint_state(self, epoch: int) -> dict[str, Any]:
        state: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "model": {k: v.detach().cpu() for k, v in self.student.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "strategy": self.strategy.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_version": random.getstate()[0]},
            "best": self.best,
            "history": self.history,
            "config": self.run_config,
        }
        if torch.cuda.is_available():
            state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_checkpoint(self, path: Path) -> None:
        from .errors import CheckpointError

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"cannot read {path} ({str(exc).splitlines()[0][:120]}); start over with --overwrite") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path} is not a robustdistill training checkpoint; start over with --overwrite")
        self.student.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.strategy.load_state_dict(state["strategy"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate((state["rng"]["python_version"], tuple(state["rng"]["python"]), None))
        self.start_epoch = int(state["epoch"])
        self.best = dict(state.get("best") or {})
        self.history = list(state.get("history") or [])

    def _save(self, epoch: int) -> None:
        if self.run_dir is None or not is_main_process():
            return
        atomic_torch_save(self.checkpoint_state(epoch), self.run_dir / "checkpoint.pt")

    # -- one epoch ---------------------------------------------------------------------------
    def _set_lr(self, epoch: int, step: int, steps: int) -> float:
        lr = self.cfg.lr * lr_factor(self.cfg.schedule, self.cfg.epochs, epoch, step, steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(derive_seed(self.cfg.seed, epoch, 7))
        order = shard_order(torch.randperm(len(self.train_split), generator=generator), self.dist)
        for x, y, _ in self.train_split.batches(self.cfg.batch_size, self.device, order):
            x = augment_batch(x, self.info.crop_padding, self.info.flip, generator)
            yield x.contiguous(memory_format=self.memory_format), y

    def _set_attack_mode(self) -> None:
        mode = self.strategy.attack_mode
        if mode == "eval":
            self.student.eval()
        else:  # "train" (A1 attacks use batch statistics) or "none"
            self.student.train()

    def train_epoch(self, epoch: int, progress: Any) -> EpochStats:
        torch.manual_seed(derive_seed(self.cfg.seed, epoch, self.dist.rank))
        self.strategy.on_epoch_start(epoch, self.cfg.epochs)
        steps = math.ceil(math.ceil(len(self.train_split) / self.dist.world) / self.cfg.batch_size)
        task = progress.add_task(f"epoch {epoch + 1}/{self.cfg.epochs}", total=steps, info="")
        loss_sum = torch.zeros((), device=self.device)
        images, skipped, consecutive, t0, lr = 0, 0, 0, time.perf_counter(), self.cfg.lr
        for step, (x, y) in enumerate(self._batches(epoch)):
            lr = self._set_lr(epoch, step, steps)
            self._set_attack_mode()
            with self._autocast():
                adv = self.strategy.perturb(self.student, self.teacher, x, y)
            self.student.train()
            with self._autocast():
                loss, _stats = self.strategy.loss(self.model, self.teacher, x, y, adv, None)
            # One host sync per step (after a K-step attack it is negligible): a non-finite loss
            # must not reach the weights.
            if not bool(torch.isfinite(loss)):
                skipped, consecutive = skipped + 1, consecutive + 1
                if consecutive >= self.cfg.max_nonfinite:
                    raise FloatingPointError(
                        f"{consecutive} consecutive non-finite losses at epoch {epoch + 1}; lower --lr or disable --amp "
                        "(the last checkpoint is intact)"
                    )
                progress.update(task, advance=1)
                continue
            consecutive = 0
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.detach().float() * y.shape[0]
            images += y.shape[0]
            if step % 10 == 0 or step == steps - 1:
                progress.update(task, completed=step + 1, info=f"loss {float(loss_sum) / max(1, images):.4f}  lr {lr:.4g}")
            else:
                progress.update(task, completed=step + 1)
        extra = self.strategy.on_epoch_end(all_reduce_sum if self.dist.enabled else None)
        progress.remove_task(task)
        return EpochStats(epoch + 1, lr, float(loss_sum) / max(1, images), time.perf_counter() - t0, images, skipped, extra)

    def validate(self, progress: Any) -> dict[str, Any]:
        settings = EvalSettings(eps=self.eval_settings.eps, pgd_steps=self.cfg.val_pgd_steps, seed=self.cfg.seed)
        result = evaluate_model(
            self.student, self.val_split, self.info.class_names, attacks=("clean", "pgd"), settings=settings,
            n_examples=self.cfg.val_n_examples, batch_size=max(256, self.cfg.batch_size), device=self.device,
            description="validating", progress=progress, keep_tasks=False,
        )
        clean, robust = result.summary("clean"), result.summary("pgd")
        return {
            "val_clean": clean["accuracy"], "val_pgd": robust["accuracy"],
            "val_pgd_worst": robust["worst_class"]["accuracy"], "val_pgd_worst_class": robust["worst_class"]["name"],
            "val_pgd_nsd": robust["nsd"],
        }

    # -- the run -----------------------------------------------------------------------------
    def fit(self, on_epoch: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """Train from ``start_epoch`` to ``epochs``; returns the metrics history."""
        if self.run_dir is not None and is_main_process():
            self.run_dir.truncate_metrics(self.start_epoch)
        with make_progress() as progress:
            overall = progress.add_task("training", total=self.cfg.epochs, completed=self.start_epoch, info="")
            for epoch in range(self.start_epoch, self.cfg.epochs):
                stats = self.train_epoch(epoch, progress)
                record: dict[str, Any] = {"epoch": stats.epoch, "lr": stats.lr, "train_loss": stats.loss,
                                          "seconds": round(stats.seconds, 3), "images_per_second": round(stats.images * self.dist.world / max(stats.seconds, 1e-9), 2),
                                          "skipped_steps": stats.skipped_steps}
                record.update({k: v for k, v in stats.extra.items()})
                last = epoch + 1 == self.cfg.epochs
                if is_main_process() and (stats.epoch % self.cfg.val_every == 0 or last):
                    record.update(self.validate(progress))
                    self._track_best(record)
                if self.dist.enabled:
                    dist.barrier()
                self.history.append(record)
                if self.run_dir is not None and is_main_process():
                    self.run_dir.append_metrics(record)
                self._save(stats.epoch)
                info = f"loss {stats.loss:.4f}" + (f"  val clean {record['val_clean']:.1%}  val PGD {record['val_pgd']:.1%} (worst {record['val_pgd_worst']:.1%})" if "val_pgd" in record else "")
                progress.update(overall, completed=stats.epoch, info=info)
                if on_epoch is not None:
                    on_epoch(record)
        if self.cfg.select == "best-val" and self.best.get("model") is not None:
            self.student.load_state_dict(self.best["model"])
        return self.history

    def _track_best(self, record: dict[str, Any]) -> None:
        if self.cfg.select != "best-val":
            return
        if record.get("val_pgd", -1) > self.best.get("val_pgd", -1):
            self.best = {"epoch": record["epoch"], "val_pgd": record["val_pgd"],
                         "model": {k: v.detach().cpu().clone() for k, v in self.student.state_dict().items()}}


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    return asdict(cfg)
