"""The one training loop, shared by every distillation method and by teacher training.

The trainer owns what strategies must not: the student's mode around the inner maximisation,
autocast and ``channels_last``, the device, DDP, the optimizer and learning-rate schedule,
per-epoch validation on the held-out split (never the test split), ``metrics.jsonl``, and an
atomically written, resumable ``checkpoint.pt``.

Determinism: every epoch reseeds torch from ``(seed, epoch, rank)`` and draws the data order
from a generator seeded by ``(seed, epoch)`` (the same on every rank, which then takes its own
shard) and the augmentation from one seeded by ``(seed, epoch, rank)``; the learning rate is a
pure function of the position in the run. A run killed at any point and resumed from its last
checkpoint therefore replays exactly the same computation (bit-identical on CPU).

DDP (``torchrun``): the student is wrapped in ``DistributedDataParallel`` for the outer loss
only (the attack runs on the bare module); every rank trains on a disjoint shard; the
skip-on-non-finite decision, the logged loss, Fair-ARD's class counts and the BatchNorm
running statistics are reduced across ranks, so all ranks hold the same model; rank 0 alone
validates, writes files and shows progress while the others wait at a barrier.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from ._utils import atomic_torch_save, atomic_write_json, atomic_write_text, derive_seed
from .data import DatasetInfo, Split, augment_batch
from .errors import CheckpointError, RobustDistillError, RunDirError, UsageError
from .evaluation import EvalSettings, evaluate_model
from .methods.base import Strategy
from .progress import is_main_process, make_progress

SCHEDULES = ("ard", "ard-released", "rslad", "cosine", "constant")
CHECKPOINT_FORMAT = "robustdistill/checkpoint@1"
#: Each rank writes ``rank<R>.json`` (parameter hashes, class weights, its data shard) here at the end of ``fit``.
DEBUG_DDP_ENV = "ROBUSTDISTILL_DEBUG_DDP_DIR"


class NonFiniteLossError(RobustDistillError, FloatingPointError):
    """Too many consecutive non-finite losses; the last checkpoint is left as it was."""


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
        if self.val_every < 1 or self.val_pgd_steps < 1 or self.max_nonfinite < 1:
            raise UsageError("val_every, val_pgd_steps and max_nonfinite must be at least 1")


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
    # Half-up rounding (not Python's banker's rounding) so milestones move monotonically with epochs.
    milestones = [math.floor(f * epochs + 0.5 + 1e-9) for f in fractions]
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
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL binds each process to its own GPU
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def barrier() -> None:
    """Wait for every rank (no-op outside DDP)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def destroy_distributed() -> None:
    """Leave the process group at the end of a run (no-op outside DDP)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def shard_order(order: torch.Tensor, d: Dist) -> torch.Tensor:
    """This rank's share of ``order``, padded by wrapping so every rank runs the same number of steps.

    The shards are disjoint apart from the padding and together cover ``order``.
    """
    if not d.enabled:
        return order
    total = math.ceil(order.numel() / d.world) * d.world
    padded = order.repeat(math.ceil(total / max(1, order.numel())))[:total]
    return padded[d.rank :: d.world]


def _no_buffer_sync() -> dict[str, bool]:
    """DDP must not re-broadcast buffers on every forward: ARD/RSLAD run two forwards (adversarial +
    clean) before one backward, and the broadcast between them is an in-place autograd error.
    torch 2.14 renamed ``broadcast_buffers`` (deprecated, warns) to ``forward_sync_buffers``."""
    import inspect

    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def average_buffers(model: nn.Module, world: int) -> None:
    """Average floating-point buffers (BatchNorm running statistics) across ranks.

    The student runs DDP with ``broadcast_buffers=False``, so each rank's statistics drift apart;
    averaging once per epoch (timm's ``distribute_bn``) keeps every rank's model identical and
    makes the statistics reflect all the data, not rank 0's shard.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            for buffer in (module.running_mean, module.running_var):
                if buffer is not None:
                    all_reduce_sum(buffer.data).div_(world)


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

    def check(self, *, resume: bool, overwrite: bool) -> None:
        """Refuse (without touching anything) a directory this run may not use."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"--out {self.path} is a file; choose a directory")
        if resume and overwrite:
            raise UsageError("--resume continues a run and --overwrite replaces it; pass only one of them")
        if resume:
            if not ((self.path / "checkpoint.pt").exists() or (self.path / "config.yaml").exists()):
                raise RunDirError(f"nothing to resume in {self.path} (no checkpoint.pt or config.yaml); start the run without --resume")
            return
        existing = sorted(p.name for p in self.path.iterdir()) if self.path.is_dir() else []
        if existing and not overwrite:
            raise RunDirError(
                f"{self.path} already holds files ({', '.join(existing[:4])}); resume with --resume, "
                "replace with --overwrite, or choose another --out"
            )

    def claim(self, *, overwrite: bool) -> None:
        """Create the directory; drop stale temp files (a kill mid-save) and, with ``overwrite``, old run files."""
        self.path.mkdir(parents=True, exist_ok=True)
        for entry in self.path.iterdir():
            stale_tmp = entry.name.startswith(".") and entry.name.endswith(".tmp")
            partial = entry.name.startswith(".") and entry.name.endswith(".partial.json")  # an unfinished evaluation
            old = overwrite and (entry.name in self.ARTIFACTS or entry.suffix == ".png" or partial)
            if entry.is_file() and (stale_tmp or old):
                entry.unlink(missing_ok=True)

    def prepare(self, *, resume: bool, overwrite: bool) -> None:
        """:meth:`check` then :meth:`claim` (single process)."""
        self.check(resume=resume, overwrite=overwrite)
        self.claim(overwrite=overwrite)

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def truncate_metrics(self, completed_epochs: int) -> None:
        """Drop records of epochs that the checkpoint does not contain (a kill between the two
        writes), and a last line cut short by a kill during the append."""
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("epoch", 0) <= completed_epochs:
                    keep.append(line)
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
        teacher: the frozen teacher (put in eval mode, no parameter grads) or ``None`` for teacher-free methods.
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
        self.teacher = teacher.to(device, memory_format=self.memory_format).eval().requires_grad_(False) if teacher is not None else None
        self.model: nn.Module = self.student
        if self.dist.enabled:
            self.model = nn.parallel.DistributedDataParallel(
                self.student, device_ids=[device.index] if device.type == "cuda" else None, **_no_buffer_sync()
            )
        self.optimizer = torch.optim.SGD(
            self.student.parameters(), lr=config.lr, momentum=config.momentum,
            weight_decay=config.weight_decay, nesterov=config.nesterov and config.momentum > 0,
        )
        # fp16 needs loss scaling or small gradients flush to zero; bf16/fp32 do not (disabled = no-op).
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.amp == "fp16")
        self.start_epoch = 0
        self.best: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.resumed_config: dict[str, Any] = {}  # the run config stored in the checkpoint we resumed from
        self._shard: list[int] = []

    # -- autocast ----------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.cfg.amp == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    # -- checkpointing -----------------------------------------------------------------------
    def checkpoint_state(self, epoch: int) -> dict[str, Any]:
        """Everything a resumed run needs; loads with ``torch.load(weights_only=True)``."""
        python_rng = random.getstate()
        state: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "model": {k: v.detach().cpu() for k, v in self.student.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "strategy": self.strategy.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": list(python_rng[1]), "python_version": python_rng[0]},
            "best": self.best,
            "history": self.history,
            "config": self.run_config,
        }
        if torch.cuda.is_available():
            state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_checkpoint(self, path: Path) -> None:
        state = self._read_checkpoint(path)
        if int(state["epoch"]) > self.cfg.epochs:
            raise UsageError(f"the run in {path.parent} already trained {state['epoch']} epochs; resume with --epochs {state['epoch']} or more")
        self.student.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.strategy.load_state_dict(state["strategy"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate((state["rng"]["python_version"], tuple(state["rng"]["python"]), None))
        self.start_epoch = int(state["epoch"])
        self.best = dict(state.get("best") or {})
        self.history = list(state.get("history") or [])
        self.resumed_config = dict(state.get("config") or {})

    @staticmethod
    def _read_checkpoint(path: Path) -> dict[str, Any]:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"cannot read {path} ({str(exc).splitlines()[0][:120]}); start over with --overwrite") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path} is not a robustdistill training checkpoint; start over with --overwrite")
        return state

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
        # One order for every rank (so the shards are disjoint); augmentation drawn per rank.
        order_gen = torch.Generator().manual_seed(derive_seed(self.cfg.seed, epoch, 7))
        augment_gen = torch.Generator().manual_seed(derive_seed(self.cfg.seed, epoch, 11, self.dist.rank))
        order = shard_order(torch.randperm(len(self.train_split), generator=order_gen), self.dist)
        if os.environ.get(DEBUG_DDP_ENV):
            self._shard = order.tolist()
        for x, y, _ in self.train_split.batches(self.cfg.batch_size, self.device, order):
            x = augment_batch(x, self.info.crop_padding, self.info.flip, augment_gen)
            yield x.contiguous(memory_format=self.memory_format), y

    def _set_attack_mode(self) -> None:
        if self.strategy.attack_mode == "eval":
            self.student.eval()
        else:  # "train" (A1 attacks use batch statistics) or "none"
            self.student.train()

    def _steps_per_epoch(self) -> int:
        return math.ceil(math.ceil(len(self.train_split) / self.dist.world) / self.cfg.batch_size)

    def _is_finite(self, loss: torch.Tensor) -> bool:
        """One host sync per step (negligible after a K-step attack). Under DDP the decision is
        collective: a rank that skipped its backward alone would deadlock the gradient all-reduce."""
        ok = torch.isfinite(loss.detach()).reshape(1).to(torch.int32)
        if self.dist.enabled:
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok.item())

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
        """Attack, loss, and (if the loss is finite) one optimizer step; returns the loss or ``None`` if skipped."""
        self._set_attack_mode()
        with self._autocast():
            adv = self.strategy.perturb(self.student, self.teacher, x, y)
        self.student.train()
        with self._autocast():
            loss, _stats = self.strategy.loss(self.model, self.teacher, x, y, adv, None)
        if not self._is_finite(loss):
            return None
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach().float()

    def train_epoch(self, epoch: int, progress: Any) -> EpochStats:
        torch.manual_seed(derive_seed(self.cfg.seed, epoch, self.dist.rank))
        self.strategy.on_epoch_start(epoch, self.cfg.epochs)
        steps = self._steps_per_epoch()
        task = progress.add_task(f"epoch {epoch + 1}/{self.cfg.epochs}", total=steps, info="")
        totals = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, images
        skipped, consecutive, t0, lr = 0, 0, time.perf_counter(), self.cfg.lr
        for step, (x, y) in enumerate(self._batches(epoch)):
            lr = self._set_lr(epoch, step, steps)
            loss = self._step(x, y)
            if loss is None:  # skipped on every rank alike (the decision is collective)
                skipped += 1
                consecutive += 1
                if consecutive >= self.cfg.max_nonfinite:
                    raise NonFiniteLossError(
                        f"{consecutive} consecutive non-finite losses at epoch {epoch + 1}; lower --lr or disable --amp "
                        "(the last checkpoint is intact)"
                    )
            else:
                consecutive = 0
                totals[0] += loss * y.shape[0]
                totals[1] += y.shape[0]
            info = {"info": f"loss {float(totals[0]) / max(1.0, float(totals[1])):.4f}  lr {lr:.4g}"} if step % 10 == 0 or step == steps - 1 else {}
            progress.update(task, completed=step + 1, **info)
        reduce = all_reduce_sum if self.dist.enabled else None
        extra = self.strategy.on_epoch_end(reduce)
        if self.dist.enabled:
            all_reduce_sum(totals)
            average_buffers(self.student, self.dist.world)
        progress.remove_task(task)
        loss_sum, images = totals.tolist()
        return EpochStats(epoch + 1, lr, loss_sum / max(1.0, images), time.perf_counter() - t0, int(images), skipped, extra)

    def validate(self, progress: Any) -> dict[str, Any]:
        """Clean and PGD accuracy on the validation split (carved from training data; never test)."""
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
                record = self._run_epoch(epoch, progress)
                progress.update(overall, completed=record["epoch"], info=_epoch_info(record))
                if on_epoch is not None:
                    on_epoch(record)
        self._debug_dump()
        if self.cfg.select == "best-val" and self.best.get("model") is not None:
            self.student.load_state_dict(self.best["model"])
        return self.history

    def _run_epoch(self, epoch: int, progress: Any) -> dict[str, Any]:
        """Train one epoch, validate (rank 0, the others wait), log and checkpoint."""
        stats = self.train_epoch(epoch, progress)
        record: dict[str, Any] = {
            "epoch": stats.epoch, "lr": stats.lr, "train_loss": stats.loss, "seconds": round(stats.seconds, 3),
            "images_per_second": round(stats.images / max(stats.seconds, 1e-9), 2), "skipped_steps": stats.skipped_steps,
            **stats.extra,
        }
        if is_main_process() and (stats.epoch % self.cfg.val_every == 0 or stats.epoch == self.cfg.epochs):
            record.update(self.validate(progress))
            self._track_best(record)
        self.history.append(record)
        if self.run_dir is not None and is_main_process():
            self.run_dir.append_metrics(record)
        self._save(stats.epoch)
        barrier()
        return record

    def _track_best(self, record: dict[str, Any]) -> None:
        if self.cfg.select != "best-val":
            return
        if record.get("val_pgd", -1) > self.best.get("val_pgd", -1):
            self.best = {"epoch": record["epoch"], "val_pgd": record["val_pgd"],
                         "model": {k: v.detach().cpu().clone() for k, v in self.student.state_dict().items()}}

    @property
    def selected_epoch(self) -> int:
        """The epoch whose weights the run reports (the best validation epoch with ``select='best-val'``)."""
        if self.cfg.select == "best-val" and self.best.get("epoch") is not None:
            return int(self.best["epoch"])
        return len(self.history)

    def _debug_dump(self) -> None:
        """With $ROBUSTDISTILL_DEBUG_DDP_DIR set, every rank writes what DDP tests compare across ranks."""
        root = os.environ.get(DEBUG_DDP_ENV)
        if not root:
            return
        hashes = {k: hashlib.sha256(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
                  for k, v in self.student.state_dict().items()}
        atomic_write_json(Path(root) / f"rank{self.dist.rank}.json", {
            "rank": self.dist.rank, "world": self.dist.world, "state_sha256": hashes,
            "strategy": self.strategy.state_dict(), "last_epoch_shard": self._shard,
        })


def _epoch_info(record: dict[str, Any]) -> str:
    info = f"loss {record['train_loss']:.4f}"
    if "val_pgd" in record:
        info += f"  val clean {record['val_clean']:.1%}  val PGD {record['val_pgd']:.1%} (worst {record['val_pgd_worst']:.1%})"
    return info


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    return asdict(cfg)
