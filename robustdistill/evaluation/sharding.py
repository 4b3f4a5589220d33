"""Sharded evaluation: the batches of one evaluation spread over DDP ranks or over local worker processes.

Every batch has its own seed (:mod:`robustdistill.evaluation.work`), so a sample gets the same
verdict whichever process attacks it: the gathered per-sample results are those of a one-process
evaluation with the same batch size, bit for bit at the same per-process thread count (float
reductions can round differently with another number of intra-op threads).

* Under ``torchrun`` (a process group is joined), every rank attacks its shard and the verdicts
  are combined with an all-reduce; every rank returns the whole result.
* Without one, ``workers = N > 1`` runs the shards in N local processes (``torch.multiprocessing``;
  forked on Linux, so nothing is pickled and they start in milliseconds; spawned elsewhere), each
  with one intra-op thread. They send each batch's verdicts to the parent as they finish; the
  parent keeps the resumable state and draws the progress.

The default number of workers (:func:`default_workers`) comes from measurements on a 2-core CPU
(``benchmarks/results/scaling.md``): 2 processes were as fast as 2 intra-op threads or faster for
every model measured (1.7-1.9x over one thread; AutoAttack 1.72x against 1.25x), and 1.0-1.6x
while another program kept a core busy, when 2 threads fell to 0.2-0.5x.
"""

from __future__ import annotations

import os
import pickle
import queue as queue_module
import signal
import sys
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ..data import Split
from ..errors import RobustDistillError, UsageError
from .work import BatchResult, EvalJob, Partial, run_shard

#: Models up to this many parameters run their CPU evaluation in one process per core by default: on
#: 2 cores, 2 processes were as fast as 2 threads or faster for every model measured, up to ResNet-18
#: (11.2 M), and far faster while other programs ran (benchmarks/results/scaling.md). Larger models
#: (WideResNet teachers) were not measured and keep one process: a second one doubles the activations.
SMALL_MODEL_PARAMETERS = 12_000_000


# --------------------------------------------------------------------------- DDP
def distributed_world() -> tuple[int, int]:
    """``(rank, world size)`` of the joined process group, else ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _collective_device() -> torch.device:
    """NCCL reduces CUDA tensors only; gloo reduces CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object, e.g. a cached result or ``None``)."""
    box = [value]
    dist.broadcast_object_list(box, src=0, device=_collective_device())
    return box[0]


def gather_ranks(partial: Partial, batches: int) -> None:
    """Combine every rank's verdicts into ``partial`` (each rank computed a disjoint shard).

    Flags are OR-ed, times take the slowest rank; every batch must have been attacked by
    exactly one rank under every attack.
    """
    names = list(partial.correct)
    device = _collective_device()
    flags = torch.stack([partial.correct[a] for a in names]).to(device=device, dtype=torch.int32)
    done = torch.tensor([len(partial.done[a]) for a in names], dtype=torch.int64, device=device)
    seconds = torch.tensor([partial.seconds[a] for a in names], dtype=torch.float64, device=device)
    dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    dist.all_reduce(done, op=dist.ReduceOp.SUM)
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    if done.tolist() != [batches] * len(names):
        raise RobustDistillError(f"the ranks attacked {done.tolist()} batches per attack, expected {batches} each; "
                                 "every rank must run the same evaluation")
    partial.correct = {a: flags[i].cpu().bool() for i, a in enumerate(names)}
    partial.seconds = dict(zip(names, seconds.cpu().tolist()))


# --------------------------------------------------------------------------- how many workers
def cpu_budget() -> int:
    """Cores this process may use: torch's intra-op thread count (``OMP_NUM_THREADS``, ``torch.set_num_threads``;
    by default the physical cores), capped by the CPU affinity."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, torch.get_num_threads()))


def start_method() -> str:
    """``fork`` on Linux while no CUDA context exists (instant, nothing pickled), else ``spawn``."""
    if sys.platform.startswith("linux") and not torch.cuda.is_initialized():
        return "fork"
    return "spawn"


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def default_workers(model: nn.Module, device: torch.device, batches: int) -> int:
    """The measured default: on a CPU, one process per usable core (:func:`cpu_budget`) for models up to
    :data:`SMALL_MODEL_PARAMETERS` parameters, never more than the batches; else 1.

    1 on GPUs and MPS (use ``torchrun``, one process per device), for exported files (their
    runtime's thread pools do not survive a fork), where worker processes would have to be spawned
    rather than forked (a script without a ``__main__`` guard would re-run itself), and for larger
    models. ``OMP_NUM_THREADS=1`` (or ``torch.set_num_threads(1)``) therefore means one process.
    """
    if device.type != "cpu" or not getattr(model, "differentiable", True) or start_method() != "fork":
        return 1
    if _parameters(model) > SMALL_MODEL_PARAMETERS:
        return 1
    return max(1, min(cpu_budget(), batches))


def choose_workers(requested: int | None, model: nn.Module, device: torch.device, batches: int) -> int:
    """``requested`` local processes (checked), or :func:`default_workers` when it is ``None``; never more than the batches."""
    if requested is None:
        return default_workers(model, device, batches)
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise UsageError(f"workers must be an integer >= 1, got {requested!r}")
    if requested > 1 and device.type != "cpu":
        raise UsageError(f"--workers runs CPU processes; on {device.type} use torchrun --nproc_per_node=N "
                         "(one process per device) or --workers 1")
    if requested > 1 and not getattr(model, "differentiable", True):
        raise UsageError("an exported model file is evaluated in one process (its runtime does not survive a fork); "
                         "use --workers 1")
    return max(1, min(requested, batches))


# --------------------------------------------------------------------------- local worker processes
def run_workers(model: nn.Module, data: Split, job: EvalJob, workers: int, partial: Partial,
                on_batch: Callable[[BatchResult, int], None], method: str | None = None) -> int:
    """Attack the batches ``partial`` still lacks in up to ``workers`` local processes; returns how many ran.

    Worker ``i`` takes every ``workers``-th of the remaining batches from the ``i``-th on (on a
    fresh evaluation, shard ``(i, workers)``); ``on_batch(result, i)`` runs in this process for
    each batch as its verdicts arrive.
    """
    count = len(job.bounds(len(data)))
    remaining = [b for b in range(count) if any(b not in partial.done[a.name] for a in job.attacks)]
    shards = [remaining[i::workers] for i in range(min(workers, len(remaining)))]
    if not shards:
        return 0
    import torch.multiprocessing as mp

    method = method or start_method()
    ctx = mp.get_context(method)
    results = ctx.Queue()
    done = {a: set(b) for a, b in partial.done.items()}
    procs = [ctx.Process(target=_worker, args=(i, model, data, job, numbers, done, results),
                         name=f"robustdistill-eval-{i}") for i, numbers in enumerate(shards)]
    try:
        for proc in procs:
            proc.start()
        _collect(procs, results, on_batch, method)
    finally:
        _stop(procs, results)
    return len(procs)


def _worker(index: int, model: nn.Module, data: Split, job: EvalJob, numbers: Sequence[int],
            done: Mapping[str, set[int]], results: Any) -> None:
    """One worker process: one intra-op thread, its batches, each batch's verdicts sent as soon as they exist."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops every worker
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker must not inherit the parent's handler
    torch.set_num_threads(1)  # the workers are the parallelism; more threads each would fight for the cores
    try:
        run_shard(model, data, job, numbers, done, lambda result: results.put(("batch", index, result)))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises it there
        results.put(("error", index, _portable(exc)))
        return
    results.put(("done", index, None))


def _portable(exc: BaseException) -> Any:
    """The exception itself when it is a picklable domain error (same message and exit code in the parent), else text."""
    if isinstance(exc, RobustDistillError):
        try:
            pickle.loads(pickle.dumps(exc))
            return exc
        except Exception:  # noqa: BLE001 - fall back to its text
            pass
    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _collect(procs: Sequence[Any], results: Any, on_batch: Callable[[BatchResult, int], None], method: str) -> None:
    """Hand each arriving batch to ``on_batch`` until every worker is done; raise a worker's error here."""
    finished: set[int] = set()
    suspects: set[int] = set()
    while len(finished) < len(procs):
        try:
            kind, index, payload = results.get(timeout=0.5)
        except queue_module.Empty:
            dead = {i for i, p in enumerate(procs) if i not in finished and p.exitcode is not None}
            if dead & suspects:  # exited, and nothing more arrived from it since: it died
                index = min(dead & suspects)
                raise _died(index, procs[index].exitcode, method)
            suspects = dead
            continue
        if kind == "batch":
            on_batch(payload, index)
        elif kind == "done":
            finished.add(index)
        else:
            raise payload if isinstance(payload, RobustDistillError) else RobustDistillError(
                f"evaluation worker {index} failed ({payload}); re-run with --workers 1 to see it in this process")


def _died(index: int, code: int | None, method: str) -> RobustDistillError:
    if code is not None and code < 0:
        return RobustDistillError(f"evaluation worker {index} was killed by signal {-code} (out of memory?); "
                                  "use fewer --workers or a smaller --batch-size")
    if method == "spawn":  # a spawned worker first re-imports the main script
        return RobustDistillError(f"evaluation worker {index} exited with code {code} before finishing; a script that "
                                  "starts workers must guard its entry point with if __name__ == '__main__', or use --workers 1")
    return RobustDistillError(f"evaluation worker {index} exited with code {code} before finishing; re-run with --workers 1")


def _stop(procs: Sequence[Any], results: Any) -> None:
    """Every worker gone (stopped if still running, e.g. after Ctrl-C or another worker's error)."""
    for proc in procs:
        if proc.pid is not None and proc.is_alive():
            proc.terminate()
    for proc in procs:
        if proc.pid is not None:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
    results.close()
    results.cancel_join_thread()


__all__ = [
    "SMALL_MODEL_PARAMETERS", "broadcast_from_main", "choose_workers", "cpu_budget", "default_workers", "distributed_world", "gather_ranks",
    "run_workers", "start_method",
]
