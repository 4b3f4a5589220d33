"""The units of an evaluation's work: balanced batches, their shards, running one shard, and the resumable state.

Batching (``balanced``): the ``n`` examples, in dataset order, are cut into ``ceil(n / batch_size)``
consecutive batches whose sizes differ by at most one (360 examples at batch size 256: two batches
of 180, not 256 + 104). ``batch_size`` is therefore the largest batch. Batch ``b`` under attack ``a``
draws its random start from ``derive_seed(seed, a.seed_id, b)`` (AutoAttack: from the evaluation
seed, on the batch as one chunk), so a sample's verdict depends on the batch it is in, never on
the process that attacks it.

Sharding: shard ``(i, k)`` is the batches ``b`` with ``b % k == i``. As the batches are balanced,
the shards of one evaluation differ by at most one batch (and the batches by at most one example):
with as many batches as shards, every shard runs AutoAttack as one chunk.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..data import Split
from ..fileio import atomic_write_json
from ..modes import eval_mode
from ..progress import Progress
from ..rng import derive_seed, forked_rng
from .attacks import EvalAttack, EvalSettings

#: How examples are cut into batches (recorded in every result; part of the cache and resume identity).
BATCHING = "balanced"


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each batch: ``ceil(n / batch_size)`` consecutive batches, sizes differing by at most one.

    >>> batch_bounds(360, 256)
    [(0, 180), (180, 360)]
    """
    if n <= 0:
        return []
    count = -(-n // batch_size)
    base, extra = divmod(n, count)
    stops = list(itertools.accumulate(base + (1 if b < extra else 0) for b in range(count)))
    return list(zip([0, *stops[:-1]], stops))


def shard_batches(count: int, shard: tuple[int, int]) -> list[int]:
    """The batch numbers of shard ``(index, shards)`` among ``count`` batches: every ``shards``-th from ``index``."""
    index, shards = shard
    return list(range(index, count, shards))


@dataclass(frozen=True)
class EvalJob:
    """What an evaluation computes (picklable: it is sent to worker processes as it is).

    Attributes:
        attacks: the attacks, with their parameters, in registry order (clean first).
        settings: the protocol (eps, seed, attack parameters).
        batch_size: the largest batch (see :func:`batch_bounds`).
        num_classes: classes of the model (AutoAttack's target count).
        device: where the attacks run.
    """

    attacks: tuple[EvalAttack, ...]
    settings: EvalSettings
    batch_size: int
    num_classes: int
    device: torch.device

    def bounds(self, n: int) -> list[tuple[int, int]]:
        return batch_bounds(n, self.batch_size)

    def seed(self, attack: EvalAttack, number: int) -> int:
        """Batch ``number``'s seed under ``attack`` (the same in every process)."""
        return derive_seed(self.settings.seed, attack.seed_id, number) if attack.seed_per_batch else self.settings.seed


@dataclass(frozen=True)
class BatchResult:
    """One attack's verdicts on one batch (plain lists: cheap to send between processes)."""

    attack: str
    number: int
    indices: list[int]
    correct: list[bool]
    seconds: float


def run_shard(model: nn.Module, data: Split, job: EvalJob, numbers: Sequence[int],
              done: Mapping[str, Collection[int]], on_batch: Callable[[BatchResult], None]) -> None:
    """Attack batches ``numbers`` of ``data`` with every attack of ``job``, skipping the ``(attack, batch)`` pairs in ``done``.

    ``on_batch`` receives each batch's verdicts as soon as they exist. The model runs in eval
    mode without parameter gradients (restored afterwards); the caller's RNG is untouched.
    """
    bounds = job.bounds(len(data))
    with eval_mode(model, freeze=True), forked_rng(job.device):
        for attack in job.attacks:
            todo = [b for b in numbers if b not in done.get(attack.name, ())]
            for number, x, y, idx in _load(data, bounds, todo, job.device):
                t0 = time.perf_counter()
                ok = attack.correct(model, x, y, eps=job.settings.eps, seed=job.seed(attack, number),
                                    num_classes=job.num_classes)
                on_batch(BatchResult(attack.name, number, idx.tolist(), ok.cpu().tolist(), time.perf_counter() - t0))


def _load(data: Split, bounds: Sequence[tuple[int, int]], numbers: Sequence[int],
          device: torch.device) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(batch number, x, y, indices)`` for ``numbers``; one data stream per run of equal-sized batches."""
    for size, group in itertools.groupby(numbers, key=lambda b: bounds[b][1] - bounds[b][0]):
        chosen = list(group)
        order = torch.cat([torch.arange(*bounds[b]) for b in chosen])
        for number, (x, y, idx) in zip(chosen, data.batches(size, device, order)):
            yield number, x, y, idx


class Partial:
    """Which batches of an evaluation are done, with their results; saved atomically after each.

    ``seconds`` per attack is the longest time one process spent on it (with one process: its
    time), plus the time recorded before a resume.
    """

    def __init__(self, path: Path | None, fingerprint: str, attacks: Sequence[str], n: int) -> None:
        self.path, self.fingerprint = path, fingerprint
        self.correct = {a: torch.zeros(n, dtype=torch.bool) for a in attacks}
        self.done: dict[str, set[int]] = {a: set() for a in attacks}
        self.seconds: dict[str, float] = {a: 0.0 for a in attacks}
        self._restored: dict[str, float] = dict(self.seconds)
        self._spent: dict[int, dict[str, float]] = {}

    @classmethod
    def open(cls, path: Path | None, fingerprint: str | None, attacks: Sequence[str], n: int) -> "Partial":
        """A fresh state, or the saved one when ``path`` holds this very evaluation's progress."""
        state = cls(path if fingerprint else None, fingerprint or "", attacks, n)
        if state.path is not None and state.path.exists():
            state._restore(state.path)
        return state

    def _restore(self, path: Path) -> None:
        try:
            saved = json.loads(path.read_text())
            if saved.get("fingerprint") != self.fingerprint:
                return
            done = {a: set(map(int, saved["done"][a])) for a in self.done}
            correct = {a: torch.tensor([c == "1" for c in saved["correct"][a]], dtype=torch.bool) for a in self.correct}
            seconds = {a: float(saved["seconds"][a]) for a in self.seconds}
        except (OSError, ValueError, KeyError, TypeError):
            return  # unreadable or foreign: start over (it is rewritten atomically, so this means tampering)
        if any(c.numel() != v.numel() for c, v in zip(correct.values(), self.correct.values())):
            return
        self.done, self.correct, self.seconds, self._restored = done, correct, seconds, dict(seconds)

    def record(self, result: BatchResult, worker: int = 0) -> None:
        """Keep one batch's verdicts (computed by process ``worker``) and save the state."""
        self.correct[result.attack][result.indices] = torch.tensor(result.correct, dtype=torch.bool)
        spent = self._spent.setdefault(worker, {})
        spent[result.attack] = spent.get(result.attack, 0.0) + result.seconds
        longest = max(s.get(result.attack, 0.0) for s in self._spent.values())
        self.seconds[result.attack] = self._restored.get(result.attack, 0.0) + longest
        self.mark(result.attack, result.number)

    def mark(self, attack: str, number: int) -> None:
        self.done[attack].add(number)
        if self.path is None:
            return
        atomic_write_json(self.path, {
            "fingerprint": self.fingerprint, "done": {k: sorted(v) for k, v in self.done.items()},
            "correct": {a: "".join("1" if v else "0" for v in c.tolist()) for a, c in self.correct.items()},
            "seconds": self.seconds,
        })

    def finish(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class Bars:
    """One progress bar per attack, advanced per finished batch, showing the running accuracy."""

    def __init__(self, progress: Progress, description: str, attacks: Sequence[EvalAttack], numbers: Sequence[int],
                 partial: Partial, bounds: Sequence[tuple[int, int]]) -> None:
        self.progress = progress
        self.tasks: dict[str, Any] = {}
        self.counts: dict[str, list[int]] = {}
        for attack in attacks:
            restored = [b for b in numbers if b in partial.done[attack.name]]
            flags = [partial.correct[attack.name][slice(*bounds[b])] for b in restored]
            self.counts[attack.name] = [sum(int(f.sum()) for f in flags), sum(f.numel() for f in flags)]
            self.tasks[attack.name] = progress.add_task(f"{description}: {attack.label}", total=len(numbers),
                                                        completed=len(restored), info=self._info(attack.name))

    def _info(self, attack: str) -> str:
        hits, seen = self.counts[attack]
        return f"{attack} {hits / seen:.1%}" if seen else ""

    def advance(self, result: BatchResult) -> None:
        counts = self.counts[result.attack]
        counts[0] += sum(result.correct)
        counts[1] += len(result.correct)
        self.progress.update(self.tasks[result.attack], advance=1, info=self._info(result.attack))

    def remove(self) -> None:
        for task in self.tasks.values():
            self.progress.remove_task(task)


__all__ = ["BATCHING", "BatchResult", "Bars", "EvalJob", "Partial", "batch_bounds", "run_shard", "shard_batches"]
