"""Training: the one loop shared by every distillation method and by teacher training.

Modules, one concern each:

* :mod:`~robustdistill.train.loop` - :class:`Trainer`: the epoch and step loop (attack mode,
  autocast, ``channels_last``, skipping non-finite steps, when to validate, log and checkpoint);
* :mod:`~robustdistill.train.config` - :class:`TrainConfig`, frozen and validated once;
* :mod:`~robustdistill.train.optimizers` / :mod:`~robustdistill.train.schedules` - registries of
  optimizers (``sgd``, ``adamw``) and learning-rate schedules (``ard``, ``ard-released``,
  ``rslad``, ``cosine``, ``constant``);
* :mod:`~robustdistill.train.checkpoint` - the resumable ``checkpoint.pt`` (state, restore, friendly errors);
* :mod:`~robustdistill.train.validation` - validation on the held-out split and best-epoch selection
  (``last``, ``best-val``, and Fair-ARD's ``fair`` rule);
* :mod:`~robustdistill.train.probes` - per-class validation counts a method asks for (FRL, CFA)
  and the weights it wants validated and reported (CFA's FAWA average);
* :mod:`~robustdistill.train.display` - the progress bars;
* :mod:`~robustdistill.train.distributed` - the DDP process group (joined by the pipeline, before
  the trainer is built), shards and reductions.

Run directories (lock, manifest, ``--overwrite``) are :mod:`robustdistill.rundir`; ``RunDir`` is
re-exported here for existing imports.

DDP (``torchrun``): the student is wrapped in ``DistributedDataParallel`` for the outer loss
only (the attack runs on the bare module); ``--batch-size`` is per process (the run prints and
records the global batch); every rank trains on a disjoint shard; the skip-on-non-finite
decision, the logged loss, Fair-ARD's class counts and the BatchNorm running statistics are
reduced across ranks (or ``sync_bn`` synchronises BatchNorm on CUDA), so all ranks hold the same
model; every rank validates its share of the validation batches and gets the whole record; rank 0
alone writes files and shows progress.
"""

from __future__ import annotations

from ..rundir import RunDir
from .checkpoint import CHECKPOINT_FORMAT, read_checkpoint
from .config import TrainConfig, config_dict
from .distributed import (
    Dist, all_reduce_sum, average_buffers, barrier, current_dist, destroy_distributed, init_distributed, shard_order,
)
from .loop import EpochStats, NonFiniteLossError, Trainer
from .optimizers import OPTIMIZERS, OptimizerSpec, build_optimizer, list_optimizers
from .schedules import SCHEDULES, ScheduleSpec, list_schedules, lr_factor

__all__ = [
    "CHECKPOINT_FORMAT", "Dist", "EpochStats", "NonFiniteLossError", "OPTIMIZERS", "OptimizerSpec", "RunDir", "SCHEDULES",
    "ScheduleSpec", "TrainConfig", "Trainer", "all_reduce_sum", "average_buffers", "barrier", "build_optimizer",
    "config_dict", "current_dist", "destroy_distributed", "init_distributed", "list_optimizers", "list_schedules",
    "lr_factor", "read_checkpoint", "shard_order",
]
