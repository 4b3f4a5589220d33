"""The training checkpoint: what a resumed run needs, written atomically, read back with one-line errors.

``checkpoint.pt`` holds the student's weights, the optimizer (momentum buffers / Adam moments), the
GradScaler, the strategy's state (e.g. Fair-ARD's class weights), the torch and Python RNG states,
the epoch, the best-on-validation tracking, the metrics history and the run config. It loads with
``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts only, nothing that
executes code. The learning-rate schedule needs no state (it is a function of the epoch).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, UsageError
from ..methods.base import Strategy

CHECKPOINT_FORMAT = "robustdistill/checkpoint@1"


@dataclass
class TrainingParts:
    """The objects whose state a checkpoint carries."""

    student: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    strategy: Strategy
    optimizer_name: str = "sgd"


@dataclass
class Progress:
    """Where a run stands: the epochs done, their metrics, and the best validation epoch so far."""

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def checkpoint_state(parts: TrainingParts, progress: Progress) -> dict[str, Any]:
    """Everything a resumed run needs; loads with ``torch.load(weights_only=True)``."""
    python_rng = random.getstate()
    state: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "epoch": progress.epoch,
        "model": {k: v.detach().cpu() for k, v in parts.student.state_dict().items()},
        "optimizer": parts.optimizer.state_dict(),
        "optimizer_name": parts.optimizer_name,
        "scaler": parts.scaler.state_dict(),
        "strategy": parts.strategy.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": list(python_rng[1]), "python_version": python_rng[0]},
        "best": progress.best,
        "history": progress.history,
        "config": progress.config,
    }
    if torch.cuda.is_available():
        state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
    return state


#: What :func:`restore` reads, with the type each must have (a damaged file is refused before anything is touched).
REQUIRED_FIELDS: dict[str, type | tuple[type, ...]] = {
    "epoch": int, "model": dict, "optimizer": dict, "strategy": dict, "rng": dict,
}


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load ``path`` (weights only) and check it is a robustdistill training checkpoint.

    Raises:
        CheckpointError: unreadable, truncated or not a training checkpoint (one line, with the fix).
    """
    from ..models.weightsio import read_torch_file

    # Never advise --overwrite here: the run may have finished, and its model and reports are intact.
    fix = "the run's other files are untouched; to train again, choose a new --out"
    try:
        state = read_torch_file(path)
    except CheckpointError:  # torch's own wording is long; what matters is that this file cannot be used
        raise CheckpointError(f"cannot resume from {path}: the checkpoint is damaged or incomplete; {fix}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a robustdistill training checkpoint; {fix}")
    missing = [k for k, kind in REQUIRED_FIELDS.items() if not isinstance(state.get(k), kind)]
    if missing:
        raise CheckpointError(f"{path} is damaged (missing or malformed: {', '.join(missing)}); {fix}")
    return state


def check_resumable(state: dict[str, Any], path: Path, *, epochs: int, optimizer_name: str) -> None:
    """Refuse to continue a checkpoint with fewer epochs than it trained, or with another optimizer."""
    if int(state["epoch"]) > epochs:
        raise UsageError(f"the run in {path.parent} already trained {state['epoch']} epochs; resume with --epochs {state['epoch']} or more")
    saved = state.get("optimizer_name", "sgd")  # checkpoints written before adamw existed are SGD's
    if saved != optimizer_name:
        raise CheckpointError(f"the run in {path.parent} was trained with the {saved} optimizer, not {optimizer_name}; "
                              f"resume with optimizer {saved} or start a new --out")


def restore(parts: TrainingParts, state: dict[str, Any]) -> Progress:
    """Put the checkpoint's weights, optimizer, scaler, strategy and RNG states back; returns its progress."""
    parts.student.load_state_dict(state["model"])
    parts.optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        parts.scaler.load_state_dict(state["scaler"])
    parts.strategy.load_state_dict(state["strategy"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate((state["rng"]["python_version"], tuple(state["rng"]["python"]), None))
    return Progress(int(state["epoch"]), list(state.get("history") or []), dict(state.get("best") or {}),
                    dict(state.get("config") or {}))


__all__ = ["CHECKPOINT_FORMAT", "Progress", "TrainingParts", "check_resumable", "checkpoint_state", "read_checkpoint", "restore"]
