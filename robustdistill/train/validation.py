"""Per-epoch validation on the held-out split (carved from the training data, never the test split),
and best-on-validation model selection."""

from __future__ import annotations

from typing import Any

import torch
from rich.progress import Progress
from torch import nn

from ..data import DatasetInfo, Split
from ..evaluation import eval_settings, evaluate_model
from .config import TrainConfig


def validation_record(
    student: nn.Module, split: Split, info: DatasetInfo, config: TrainConfig, *, eps: float, device: torch.device,
    progress: Progress, distributed: bool = False,
) -> dict[str, Any]:
    """Clean and PGD accuracy of ``student`` on the validation ``split``, as ``val_*`` metrics.

    PGD uses ``config.val_pgd_steps`` steps at ``eps`` with the run's seed; its bars are drawn into
    ``progress`` and removed again. With ``distributed``, every rank of the process group calls this
    and attacks its share of the batches; each gets the same record (that of one process).
    """
    settings = eval_settings(eps, config.seed, pgd_steps=config.val_pgd_steps)
    result = evaluate_model(
        student, split, info.class_names, attacks=("clean", "pgd"), settings=settings,
        n_examples=config.val_n_examples, batch_size=max(256, config.batch_size), device=device,
        description="validating", progress=progress, keep_tasks=False, distributed=distributed,
    )
    clean, robust = result.summary("clean"), result.summary("pgd")
    return {
        "val_clean": clean.accuracy, "val_pgd": robust.accuracy,
        "val_pgd_worst": robust.worst_class.accuracy, "val_pgd_worst_class": robust.worst_class.name,
        "val_pgd_nsd": robust.nsd,
    }


def is_validation_epoch(epoch: int, config: TrainConfig) -> bool:
    """Validate after every ``val_every``-th (1-based) epoch and after the last."""
    return epoch % config.val_every == 0 or epoch == config.epochs


def selection_score(record: dict[str, Any], select: str) -> float | None:
    """The number ``select`` maximises over validated epochs (``None``: the record was not validated).

    ``best-val``: validation PGD accuracy. ``fair`` (Fair-ARD's rule): the mean of the average and
    the worst-class validation PGD accuracy, ``(val_pgd + val_pgd_worst) / 2``.
    """
    if "val_pgd" not in record:
        return None
    if select == "fair":
        worst = record.get("val_pgd_worst")
        return None if worst is None else (record["val_pgd"] + worst) / 2
    return record["val_pgd"]


def updated_best(best: dict[str, Any], record: dict[str, Any], student: nn.Module, select: str) -> dict[str, Any]:
    """``best`` after ``record``: a copy of the student's weights when its :func:`selection_score` is a new high.

    ``select="last"`` keeps no weights and returns ``best`` unchanged; ties keep the earlier epoch.
    """
    score = selection_score(record, select) if select != "last" else None
    if score is None or score <= best.get("score", best.get("val_pgd", -1)):
        return best
    return {"epoch": record["epoch"], "score": score, "val_pgd": record["val_pgd"],
            "val_pgd_worst": record.get("val_pgd_worst"),
            "model": {k: v.detach().cpu().clone() for k, v in student.state_dict().items()}}


def selected_epoch(best: dict[str, Any], history: list[dict[str, Any]], select: str) -> int:
    """The epoch whose weights the run reports (the best validation epoch with ``select='best-val'`` or ``'fair'``)."""
    if select != "last" and best.get("epoch") is not None:
        return int(best["epoch"])
    return len(history)


__all__ = ["is_validation_epoch", "selected_epoch", "selection_score", "updated_best", "validation_record"]
