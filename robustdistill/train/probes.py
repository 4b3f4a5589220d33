"""What the trainer measures or swaps for a strategy's own needs: per-class validation counts
(FRL's multipliers, CFA's FAWA) and the weights a strategy wants validated and reported instead of
the live ones (CFA's FAWA average). Validation split only, never test."""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

import torch
from rich.progress import Progress
from torch import nn

from ..data import DatasetInfo, Split
from ..evaluation import eval_settings, evaluate_model
from ..methods.base import ClassCounts
from .config import TrainConfig
from .distributed import Dist, all_reduce_sum


def class_counts(
    student: nn.Module, split: Split, info: DatasetInfo, config: TrainConfig, *, eps: float, pgd_steps: int,
    device: torch.device, progress: Progress, dist: Dist,
) -> ClassCounts:
    """Per-class totals, clean-correct and PGD-robust counts of ``student`` on the validation ``split``.

    The evaluation PGD (``pgd_steps`` steps of eps/4 from a clipped uniform start, CE, eval mode,
    the run's seed) leaves the caller's RNG and the student's modes as they were. Under DDP rank 0
    measures and every rank receives its counts (a sum with zeros from the others), so every
    process updates its strategy from the same numbers.
    """
    counts = torch.zeros(3, info.num_classes, dtype=torch.long, device=device)
    if dist.is_main:
        settings = eval_settings(eps, config.seed, pgd_steps=pgd_steps)
        result = evaluate_model(
            student, split, info.class_names, attacks=("clean", "pgd"), settings=settings,
            n_examples=config.val_n_examples, batch_size=max(256, config.batch_size), device=device,
            description="validating for the method", progress=progress, keep_tasks=False,
        )
        labels = result.labels.long().cpu()
        for row, mask in enumerate((None, result.correct["clean"], result.correct["pgd"])):
            chosen = labels if mask is None else labels[mask.bool().cpu()]
            counts[row] = torch.bincount(chosen, minlength=info.num_classes).to(device)
    if dist.enabled:
        all_reduce_sum(counts)
    counts = counts.cpu()
    return ClassCounts(counts[0], counts[1], counts[2])


@contextlib.contextmanager
def weights_swapped(model: nn.Module, state: Mapping[str, torch.Tensor] | None) -> Iterator[nn.Module]:
    """Run a block with ``state`` loaded into ``model`` (in place), then put the live weights back.

    ``None`` leaves the model alone. The parameters stay the same tensor objects (the optimizer's
    references remain valid) and get back exactly the values they had.
    """
    if state is None:
        yield model
        return
    live = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(dict(state))
    try:
        yield model
    finally:
        model.load_state_dict(live)


__all__ = ["class_counts", "weights_swapped"]
