"""Running an evaluation: every attack on every batch, one boolean per sample, resumable after a kill.

Protocol (the Fair-ARD evaluation): [0, 1] pixel space, model in eval mode with parameter
gradients off, the first ``n_examples`` of the split in dataset order, cut into balanced batches
of at most ``batch_size`` (:func:`~robustdistill.evaluation.work.batch_bounds`). Batch ``b``
under attack ``a`` draws its random start from ``derive_seed(seed, a.seed_id, b)``, so a sample's
result does not depend on which other attacks run, nor on which process runs the batch; it does
depend on the batch size.

One process, ``workers`` local processes, or every rank of a ``torchrun`` job
(:mod:`~robustdistill.evaluation.sharding`) compute the same per-sample results.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ..data import Split
from ..errors import UsageError
from ..progress import Progress, make_progress
from .attacks import EvalSettings
from .result import EvaluationResult, now_utc
from .sharding import choose_workers, distributed_world, gather_ranks, run_workers
from .work import BATCHING, Bars, BatchResult, EvalJob, Partial, run_shard, shard_batches


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
    workers: int | None = 1,
    distributed: bool = False,
) -> EvaluationResult:
    """Attack the first ``n_examples`` of ``split`` and keep per-sample correctness for each attack.

    The model runs in eval mode without parameter gradients for the duration (each submodule's
    mode and each parameter's flag are restored afterwards); the caller's RNG is untouched.
    Pass ``progress`` to draw into an existing rich display; ``keep_tasks=False`` removes the
    evaluation's bars from it when done (per-epoch validation).

    With ``state_path`` (and a file hash in ``model_info["sha256"]``), per-sample results are
    saved atomically after every batch, and an evaluation killed part-way continues from there
    with identical results (whatever the number of workers); the file is removed when done.

    Args:
        workers: local processes on a CPU (``None``: :func:`~robustdistill.evaluation.sharding.default_workers`).
        distributed: every rank of the joined process group calls this and attacks its shard; each
            gets the whole result (``state_path`` and ``workers`` are not used then).
        shard: ``(index, count)`` evaluates only the batches ``b`` with ``b % count == index`` in
            this process; the other samples stay ``False``.
    """
    if batch_size < 1:
        raise UsageError(f"batch size must be at least 1, got {batch_size}")
    device = torch.device(device)
    data = split.head(n_examples)
    job = EvalJob(settings.attacks(attacks), settings, batch_size, len(class_names), device)
    info = dict(model_info or {})
    count = len(job.bounds(len(data)))
    shard, workers, world = _placement(model, device, count, shard, workers, distributed)
    state_path = state_path if world == 1 else None
    fingerprint = _fingerprint(info.get("sha256"), dataset, data.name, data.labels, settings, job)
    partial = Partial.open(state_path, fingerprint, [a.name for a in job.attacks], len(data))
    with _display(progress) as shown:
        bars = Bars(shown, description, job.attacks, _shown_batches(count, shard, workers), partial, job.bounds(len(data)))
        ran = _attack(model, data, job, partial, bars, shard, workers)
        if not keep_tasks:
            bars.remove()
    if world > 1:
        gather_ranks(partial, count)
    partial.finish()
    return _result(job, data, class_names, partial, model_id=model_id, dataset=dataset, info=info,
                   sharding={"world_size": world, "workers": max(1, ran)})


def _placement(model: nn.Module, device: torch.device, count: int, shard: tuple[int, int], workers: int | None,
               distributed: bool) -> tuple[tuple[int, int], int, int]:
    """``(this process's shard, local workers, DDP world size)``: a rank takes its shard and works alone."""
    rank, world = distributed_world() if distributed else (0, 1)
    if world > 1:
        return (rank, world), 1, world
    return shard, 1 if shard[1] > 1 else choose_workers(workers, model, device, count), 1


def _shown_batches(count: int, shard: tuple[int, int], workers: int) -> list[int]:
    """The batches this process's bars count: its shard, or all of them when it gathers workers."""
    return list(range(count)) if workers > 1 else shard_batches(count, shard)


def _attack(model: nn.Module, data: Split, job: EvalJob, partial: Partial, bars: Bars, shard: tuple[int, int],
            workers: int) -> int:
    """Run the batches in this process or in ``workers`` local processes; returns how many processes attacked."""

    def keep(result: BatchResult, worker: int = 0) -> None:
        partial.record(result, worker)
        bars.advance(result)

    count = len(job.bounds(len(data)))
    if workers > 1:
        return run_workers(model, data, job, workers, partial, keep)
    run_shard(model, data, job, shard_batches(count, shard), partial.done, keep)
    return 1


def _result(job: EvalJob, data: Split, class_names: Sequence[str], partial: Partial, *, model_id: str, dataset: str,
            info: dict[str, Any], sharding: dict[str, int]) -> EvaluationResult:
    """The typed result: robust only if also clean-correct, plus the evidence."""
    correct = dict(partial.correct)
    for name in correct:
        if name != "clean":
            correct[name] = correct[name] & correct["clean"]
    computed = {a.name: {"source": "computed", "computed": now_utc()} for a in job.attacks}
    return EvaluationResult(model_id, dataset, data.name, tuple(class_names), data.labels.clone(), correct, job.settings,
                            seconds=dict(partial.seconds), model_info=info, batch_size=job.batch_size,
                            provenance=computed, sharding=sharding, batching=BATCHING,
                            implementations={a.name: a.implementation() for a in job.attacks})


@contextlib.contextmanager
def _display(progress: Progress | None) -> Iterator[Progress]:
    if progress is not None:
        yield progress
        return
    with make_progress() as fresh:
        yield fresh


def _fingerprint(sha256: str | None, dataset: str, split: str, labels: torch.Tensor, settings: EvalSettings,
                 job: EvalJob) -> str | None:
    """Identity of an evaluation for resuming it; ``None`` for models without a file hash."""
    if not sha256:
        return None
    payload = [sha256, dataset, split, hashlib.sha256(labels.numpy().tobytes()).hexdigest(), settings.seed,
               [a.identity(settings.eps) for a in job.attacks], job.batch_size, BATCHING]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


__all__ = ["Partial", "evaluate_model"]
