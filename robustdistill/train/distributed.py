"""DDP plumbing: the process group (joined by the pipeline, not by the trainer), data shards,
collective reductions, and the DDP wrapper the outer loss runs through.

Under ``torchrun`` every rank trains on a disjoint shard of one shared data order; the decision to
skip a non-finite step, the logged loss, Fair-ARD's class counts and the BatchNorm running
statistics are reduced across ranks, so every rank holds the same model.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn

from ..errors import UsageError


@dataclass(frozen=True)
class Dist:
    """This process's place in the process group (``Dist()``: a single process)."""

    rank: int = 0
    world: int = 1

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that validates, writes files and shows progress."""
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """Join the process group torchrun set up (WORLD_SIZE > 1); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL binds each process to its own GPU
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def rank_device(device: torch.device) -> torch.device:
    """Under torchrun, a bare ``cuda`` means this process's GPU (LOCAL_RANK), not GPU 0 for every rank."""
    if device.type == "cuda" and device.index is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


@contextlib.contextmanager
def joined_process_group(device: torch.device) -> Iterator[Dist]:
    """The process group for a block: joined under torchrun (WORLD_SIZE > 1) and left again afterwards
    if this block joined it; ``Dist()`` outside torchrun. A group joined before is used and kept."""
    joined_before = dist.is_available() and dist.is_initialized()
    group = init_distributed(device)
    try:
        yield group
    finally:
        if group.enabled and not joined_before:
            destroy_distributed()


def current_dist() -> Dist:
    """The process group this process already joined (``Dist()`` outside torchrun).

    Raises:
        UsageError: launched by torchrun (WORLD_SIZE > 1) but the group was never joined - every
            rank would otherwise train alone on all the data and write the same files.
    """
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        raise UsageError(f"running under torchrun (WORLD_SIZE={world}) but the process group is not joined; "
                         "call robustdistill.train.init_distributed(device) before building the Trainer")
    return Dist()


def barrier() -> None:
    """Wait for every rank (no-op outside DDP)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def destroy_distributed() -> None:
    """Leave the process group at the end of a run (no-op outside DDP)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` in place across ranks (no-op outside DDP); returns it."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_min(tensor: torch.Tensor) -> torch.Tensor:
    """Minimum of ``tensor`` in place across ranks (no-op outside DDP); returns it."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


def shard_order(order: torch.Tensor, d: Dist) -> torch.Tensor:
    """This rank's share of ``order``, padded by wrapping so every rank runs the same number of steps.

    The shards are disjoint apart from the padding and together cover ``order``.
    """
    if not d.enabled:
        return order
    total = math.ceil(order.numel() / d.world) * d.world
    padded = order.repeat(math.ceil(total / max(1, order.numel())))[:total]
    return padded[d.rank :: d.world]


def check_sync_bn(method: str, double_backward: bool, device: torch.device) -> None:
    """Refuse ``--sync-bn`` where torch's SyncBatchNorm cannot train (one-line :class:`UsageError`).

    SyncBatchNorm has no double backward ("derivative for batch_norm_backward_elemt is not
    implemented"), which input-gradient losses such as KDIGA's need, and it runs on CUDA only.
    """
    if double_backward:
        raise UsageError(f"--sync-bn cannot train {method}: SyncBatchNorm has no double backward, which its input-gradient "
                         "term needs; drop --sync-bn (each rank keeps its BatchNorm statistics, averaged every epoch)")
    if device.type != "cuda":
        raise UsageError(f"--sync-bn needs CUDA GPUs (torch's SyncBatchNorm does not run on {device.type}); drop --sync-bn")


def convert_sync_bn(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm layer replaced by SyncBatchNorm (statistics over all ranks' batches)."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


def _no_buffer_sync() -> dict[str, bool]:
    """DDP must not re-broadcast buffers on every forward: ARD/RSLAD run two forwards (adversarial +
    clean) before one backward, and the broadcast between them is an in-place autograd error.
    torch 2.14 renamed ``broadcast_buffers`` (deprecated, warns) to ``forward_sync_buffers``."""
    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in ``DistributedDataParallel`` without per-forward buffer broadcasts (see :func:`average_buffers`).

    DDP broadcasts rank 0's parameters here, so ranks that built different initial weights agree.
    """
    return nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None, **_no_buffer_sync()
    )


def average_buffers(model: nn.Module, world: int) -> None:
    """Average floating-point buffers (BatchNorm running statistics) across ranks.

    The student runs DDP with ``broadcast_buffers=False``, so each rank's statistics drift apart;
    averaging once per epoch (timm's ``distribute_bn``) keeps every rank's model identical and
    makes the statistics reflect all the data, not rank 0's shard.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            for buffer in (module.running_mean, module.running_var):
                if buffer is not None:
                    all_reduce_sum(buffer.data).div_(world)


__all__ = [
    "Dist", "all_reduce_min", "all_reduce_sum", "average_buffers", "barrier", "check_sync_bn", "convert_sync_bn",
    "current_dist", "destroy_distributed",
    "init_distributed", "joined_process_group", "rank_device", "shard_order", "wrap_ddp",
]
