"""Sharded evaluation: the batches of one evaluation spread over DDP ranks or local worker processes.

Batch ``b`` goes to shard ``b % count``. Every batch draws its random start from its own seed
``derive_seed(seed, attack.seed_id, b)`` (AutoAttack: the evaluation seed, per batch), so a
sample gets the same verdict whichever process attacks it: the gathered per-sample results are
those of a single-process evaluation with the same batch size.

* Under ``torchrun`` (a process group is initialised), every rank evaluates its shard and the
  flags are summed across ranks (each sample is set by exactly one rank).
* ``workers = N > 1`` (no process group): N local processes (``torch.multiprocessing``, spawn),
  each with one intra-op thread, evaluate the shards; the parent gathers them.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ..data import Split
from .attacks import EvalSettings
from .result import EvaluationResult
from .runner import evaluate_model


def distributed_world() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised process group, else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather(results: Sequence[EvaluationResult], *, world_size: int, workers: int) -> EvaluationResult:
    """One result from the shards' results (each sample was evaluated by exactly one shard)."""
    first = results[0]
    correct = {a: torch.stack([r.correct[a] for r in results]).any(0) for a in first.correct}
    seconds = {a: max(r.seconds.get(a, 0.0) for r in results) for a in first.correct}
    return dataclasses.replace(first, correct=correct, seconds=seconds,
                               sharding={"world_size": world_size, "workers": workers})


def _all_reduce_flags(result: EvaluationResult, world: int) -> EvaluationResult:
    names = list(result.correct)
    stacked = torch.stack([result.correct[a].to(torch.int32) for a in names])
    seconds = torch.tensor([result.seconds.get(a, 0.0) for a in names], dtype=torch.float64)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    stacked, seconds = stacked.to(device), seconds.to(device)
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    correct = {a: stacked[i].cpu() > 0 for i, a in enumerate(names)}
    return dataclasses.replace(result, correct=correct, seconds=dict(zip(names, seconds.cpu().tolist())),
                               sharding={"world_size": world, "workers": 1})


def _worker(index: int, count: int, payload: dict[str, Any], queue: Any) -> None:
    torch.set_num_threads(1)  # the workers share the cores: one intra-op thread each
    os.environ["ROBUSTDISTILL_NO_PROGRESS"] = "1"
    try:
        result = evaluate_model(payload.pop("model"), payload.pop("split"), payload.pop("class_names"),
                                shard=(index, count), **payload)
        queue.put((index, {a: c.clone() for a, c in result.correct.items()}, dict(result.seconds), None))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it there
        queue.put((index, None, None, f"{type(exc).__name__}: {exc}"))


def _run_workers(workers: int, model: nn.Module, split: Split, class_names: Sequence[str],
                 options: dict[str, Any]) -> list[tuple[dict[str, torch.Tensor], dict[str, float]]]:
    import torch.multiprocessing as mp

    from ..errors import RobustDistillError

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    payload = {"model": model, "split": split, "class_names": list(class_names), **options}
    procs = [ctx.Process(target=_worker, args=(i, workers, dict(payload), queue), daemon=True) for i in range(workers)]
    for proc in procs:
        proc.start()
    out: dict[int, tuple[dict[str, torch.Tensor], dict[str, float]]] = {}
    try:
        for _ in procs:
            index, correct, seconds, error = queue.get()
            if error is not None:
                raise RobustDistillError(f"evaluation worker {index} failed ({error}); re-run with --workers 1")
            out[index] = (correct, seconds)
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
    return [out[i] for i in range(workers)]


def evaluate_sharded(model: nn.Module, split: Split, class_names: Sequence[str], *, settings: EvalSettings,
                     workers: int = 1, **options: Any) -> EvaluationResult:
    """:func:`~robustdistill.evaluation.runner.evaluate_model` over every DDP rank, or ``workers`` local processes.

    Per-sample results equal a one-process evaluation with the same batch size. Resumable state
    (``state_path``) is used only when the evaluation runs in one process.
    """
    rank, world = distributed_world()
    if world > 1:
        options.pop("state_path", None)
        return _all_reduce_flags(evaluate_model(model, split, class_names, settings=settings, shard=(rank, world),
                                                **options), world)
    if workers <= 1:
        return evaluate_model(model, split, class_names, settings=settings, **options)
    options.pop("state_path", None)
    options.pop("progress", None)
    base = evaluate_model(model, split, class_names, settings=settings, **{**options, "attacks": ("clean",)},
                          shard=(0, 10**9))  # the result's shape and evidence, without attacking anything
    shards = _run_workers(workers, model, split, class_names, {"settings": settings, **options})
    correct = {a: torch.stack([c[a] for c, _ in shards]).any(0) for a in shards[0][0]}
    seconds = {a: max(s.get(a, 0.0) for _, s in shards) for a in correct}
    for name in correct:
        if name != "clean":
            correct[name] = correct[name] & correct["clean"]
    chosen = settings.attacks(options.get("attacks", ("clean", "pgd")))
    return dataclasses.replace(base, correct=correct, seconds=seconds, sharding={"world_size": 1, "workers": workers},
                               provenance={a.name: base.provenance["clean"] for a in chosen},
                               implementations={a.name: a.implementation() for a in chosen})
