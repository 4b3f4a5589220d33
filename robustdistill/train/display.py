"""What training shows while it runs: one live display with an overall bar, one bar per epoch
(validation draws its own bars into the same display and removes them)."""

from __future__ import annotations

from typing import Any

import torch
from rich.progress import Progress, TaskID


def epoch_summary(record: dict[str, Any]) -> str:
    """The overall bar's text after an epoch: loss, and the validation numbers when it validated."""
    info = f"loss {record['train_loss']:.4f}"
    if "val_pgd" in record:
        info += f"  val clean {record['val_clean']:.1%}  val PGD {record['val_pgd']:.1%} (worst {record['val_pgd_worst']:.1%})"
    return info


class EpochBar:
    """The bar of one epoch: steps done, running loss and learning rate (text refreshed every 10 steps)."""

    def __init__(self, progress: Progress, epoch: int, epochs: int, steps: int) -> None:
        self.progress, self.steps = progress, steps
        self.task: TaskID = progress.add_task(f"epoch {epoch + 1}/{epochs}", total=steps, info="")

    def update(self, step: int, totals: torch.Tensor, lr: float) -> None:
        """After ``step`` (0-based); ``totals`` = (loss sum, images) on the device, read (a host sync)
        only when the text is refreshed."""
        info = {}
        if step % 10 == 0 or step == self.steps - 1:
            info = {"info": f"loss {float(totals[0]) / max(1.0, float(totals[1])):.4f}  lr {lr:.4g}"}
        self.progress.update(self.task, completed=step + 1, **info)

    def close(self) -> None:
        self.progress.remove_task(self.task)


class RunBar:
    """The overall bar: epochs done out of the run's, with :func:`epoch_summary` of the last one."""

    def __init__(self, progress: Progress, epochs: int, start_epoch: int) -> None:
        self.progress = progress
        self.task: TaskID = progress.add_task("training", total=epochs, completed=start_epoch, info="")

    def epoch_done(self, record: dict[str, Any]) -> None:
        self.progress.update(self.task, completed=record["epoch"], info=epoch_summary(record))


__all__ = ["EpochBar", "RunBar", "epoch_summary"]
