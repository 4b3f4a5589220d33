"""Learning-rate schedules: registered, frozen specs whose factor is a pure function of the position in the run.

The factor at ``step`` of (0-based) ``epoch`` multiplies the peak learning rate. Because it depends
on nothing but the position, a resumed run sets exactly the rates an uninterrupted one would.
Milestones scale with the run length, rounded half-up (not Python's banker's rounding) so they move
monotonically with ``epochs``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from ..registry import Registry

#: ``factor(epochs, epoch, step, steps_per_epoch) -> multiplier of the peak learning rate``.
Factor = Callable[[int, int, int, int], float]


@dataclass(frozen=True)
class ScheduleSpec:
    """One learning-rate schedule.

    Attributes:
        name: what ``--schedule`` accepts.
        description: one line for ``robustdistill list`` and the docs.
        factor: the multiplier of the peak learning rate at a position in the run.
    """

    name: str
    description: str
    factor: Factor


def step_decay(*fractions: float) -> Factor:
    """x0.1 at each of ``fractions`` of the run (epoch milestones, rounded half-up)."""

    def factor(epochs: int, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
        milestones = [math.floor(f * epochs + 0.5 + 1e-9) for f in fractions]
        return 0.1 ** sum(epoch >= m for m in milestones if m > 0)

    return factor


def cosine(epochs: int, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
    """Per-step cosine decay from 1 to 0 over the run."""
    progress = (epoch + step / max(1, steps_per_epoch)) / epochs
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def constant(epochs: int, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
    """No decay."""
    return 1.0


SCHEDULES: Registry[ScheduleSpec] = Registry("lr schedule")
SCHEDULES.add(ScheduleSpec("ard", "x0.1 at 50 % and 75 % of the run (ARD/IAD/KDIGA/Fair-ARD paper intent: "
                                  "epochs 100 and 150 of 200)", step_decay(0.5, 0.75)))
SCHEDULES.add(ScheduleSpec("ard-released", "x0.1 at 50 % only - what the released ARD-family code does (it re-derives "
                                           "the lr from the base value, so its second decay repeats 0.01)", step_decay(0.5)))
SCHEDULES.add(ScheduleSpec("rslad", "x0.1 after epochs 215, 260 and 285 of 300 (RSLAD / Fair-RSLAD)",
                           step_decay(215 / 300, 260 / 300, 285 / 300)))
SCHEDULES.add(ScheduleSpec("cosine", "per-step cosine decay to 0", cosine))
SCHEDULES.add(ScheduleSpec("constant", "no decay", constant))


def lr_factor(schedule: str, epochs: int, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
    """Learning-rate multiplier of ``schedule`` at ``step`` of (0-based) ``epoch`` of an ``epochs``-epoch run.

    Raises:
        UsageError: ``schedule`` is not registered.
    """
    return SCHEDULES.get(schedule).factor(epochs, epoch, step, steps_per_epoch)


def list_schedules() -> list[tuple[str, str]]:
    """``(name, description)`` of every registered schedule."""
    return [(spec.name, spec.description) for spec in SCHEDULES]


__all__ = ["SCHEDULES", "ScheduleSpec", "constant", "cosine", "list_schedules", "lr_factor", "step_decay"]
