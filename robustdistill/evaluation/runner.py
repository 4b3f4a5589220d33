"""Running an evaluation: every attack on every batch, one boolean per sample, resumable after a kill.

Protocol (the Fair-ARD evaluation): [0, 1] pixel space, model in eval mode with parameter
gradients off, the first ``n_examples`` of the split in dataset order, batches of ``batch_size``.
Batch ``b`` under attack ``a`` draws its random start from ``derive_seed(seed, a.seed_id, b)``,
so a sample's result does not depend on which other attacks run, nor on which process runs the
batch (sharding, see :mod:`robustdistill.evaluation.sharding`); it does depend on the batch size.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ..fileio import atomic_write_json
from ..modes import eval_mode
from ..rng import derive_seed, forked_rng
from ..data import Split
from ..errors import UsageError
from ..progress import Progress, make_progress
from .attacks import EvalAttack, EvalSettings
from .result import EvaluationResult, now_utc


def evaluate_model(
    model: nn.Module,
    split: Split,
    class_names: Sequence[str],
    *,
    settings: EvalSettings,
    attacks: str | Sequence[str] = ("clean", "pgd"),
    n_examples: int | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    model_id: str = "model",
    dataset: str = "",
    model_info: dict[str, Any] | None = None,
    description: str = "evaluating",
    progress: Progress | None = None,
    keep_tasks: bool = True,
    state_path: Path | None = None,
    shard: tuple[int, int] = (0, 1),
) -> EvaluationResult:
    """Attack the first ``n_examples`` of ``split`` and keep per-sample correctness for each attack.

    The model runs in eval mode without parameter gradients for the duration (each submodule's
    mode and each parameter's flag are restored afterwards); the caller's RNG is untouched.
    Pass ``progress`` to draw into an existing rich display; ``keep_tasks=False`` removes the
    evaluation's bars from it when done (per-epoch validation).

    With ``state_path`` (and a file hash in ``model_info["sha256"]``), per-sample results are
    saved atomically after every batch, and an evaluation killed part-way continues from there
    with identical results; the file is removed when the evaluation completes.

    ``shard = (index, count)`` evaluates only the batches ``b`` with ``b % count == index``; the
    other samples stay ``False`` (see :func:`robustdistill.evaluation.sharding.gather`).
    """
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    device = torch.device(device)
    chosen = settings.attacks(attacks)
    data = split.head(n_examples)
    info = dict(model_info or {})
    labels = data.labels.clone()
    partial = Partial.open(state_path, _fingerprint(info.get("sha256"), dataset, data.name, labels, settings,
                                                     chosen, batch_size), [a.name for a in chosen], len(data))
    runner = _Run(model, data, chosen, settings, batch_size, device, len(class_names), partial, shard)
    with eval_mode(model, freeze=True), forked_rng(device), _display(progress) as shown:
        tasks = [runner.attack(attack, shown, description) for attack in chosen]
        if not keep_tasks:
            for task in tasks:
                shown.remove_task(task)
    partial.finish()
    correct = dict(partial.correct)
    for name in correct:
        if name != "clean":
            correct[name] = correct[name] & correct["clean"]
    computed = {a.name: {"source": "computed", "computed": now_utc()} for a in chosen}
    return EvaluationResult(model_id, dataset, data.name, tuple(class_names), labels, correct, settings,
                            seconds=dict(partial.seconds), model_info=info, batch_size=batch_size, provenance=computed,
                            sharding={"world_size": shard[1], "workers": 1},
                            implementations={a.name: a.implementation() for a in chosen})


@contextlib.contextmanager
def _display(progress: Progress | None) -> Iterator[Progress]:
    if progress is not None:
        yield progress
        return
    with make_progress() as fresh:
        yield fresh


class _Run:
    """One evaluation's loop state (so each attack's pass is a short method)."""

    def __init__(self, model: nn.Module, data: Split, attacks: Sequence[EvalAttack], settings: EvalSettings,
                 batch_size: int, device: torch.device, num_classes: int, partial: "Partial",
                 shard: tuple[int, int]) -> None:
        self.model, self.data, self.attacks, self.settings = model, data, attacks, settings
        self.batch_size, self.device, self.num_classes, self.partial = batch_size, device, num_classes, partial
        self.numbers = [b for b in range(-(-len(data) // batch_size)) if b % shard[1] == shard[0]]

    def _batches(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``(batch number, x, y, indices)`` for this shard's batches, in order."""
        if not self.numbers:
            return
        n, size = len(self.data), self.batch_size
        order = torch.cat([torch.arange(b * size, min((b + 1) * size, n)) for b in self.numbers])
        for number, (x, y, idx) in zip(self.numbers, self.data.batches(size, self.device, order)):
            yield number, x, y, idx

    def attack(self, attack: EvalAttack, progress: Progress, description: str) -> Any:
        task = progress.add_task(f"{description}: {attack.label}", total=len(self.numbers), info="")
        flags, done = self.partial.correct[attack.name], self.partial.done[attack.name]
        hits = seen = 0
        for number, x, y, idx in self._batches():
            if number not in done:
                seed = derive_seed(self.settings.seed, attack.seed_id, number) if attack.seed_per_batch else self.settings.seed
                t0 = time.perf_counter()
                ok = attack.correct(self.model, x, y, eps=self.settings.eps, seed=seed, num_classes=self.num_classes)
                flags[idx] = ok.cpu()
                self.partial.seconds[attack.name] = self.partial.seconds.get(attack.name, 0.0) + time.perf_counter() - t0
                self.partial.mark(attack.name, number)
            hits, seen = hits + int(flags[idx].sum()), seen + len(idx)
            progress.update(task, advance=1, info=f"{attack.name} {hits / seen:.1%}")
        return task


def _fingerprint(sha256: str | None, dataset: str, split: str, labels: torch.Tensor, settings: EvalSettings,
                 attacks: Sequence[EvalAttack], batch_size: int) -> str | None:
    """Identity of an evaluation for resuming it; ``None`` for models without a file hash."""
    if not sha256:
        return None
    payload = [sha256, dataset, split, hashlib.sha256(labels.numpy().tobytes()).hexdigest(), settings.seed,
               [a.identity(settings.eps) for a in attacks], batch_size]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class Partial:
    """Which batches of an evaluation are done, with their results; saved atomically after each."""

    def __init__(self, path: Path | None, fingerprint: str, attacks: Sequence[str], n: int) -> None:
        self.path, self.fingerprint = path, fingerprint
        self.correct = {a: torch.zeros(n, dtype=torch.bool) for a in attacks}
        self.done: dict[str, set[int]] = {a: set() for a in attacks}
        self.seconds: dict[str, float] = {a: 0.0 for a in attacks}

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
        self.done, self.correct, self.seconds = done, correct, seconds

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
