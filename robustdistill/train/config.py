"""The optimisation settings of one run, validated once, when they are made."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..errors import UsageError
from .optimizers import OPTIMIZERS
from .schedules import SCHEDULES

AMP_MODES = ("none", "bf16", "fp16")
SELECTIONS = ("last", "best-val", "fair")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation settings (frozen; :meth:`validate` runs on construction).

    Attributes:
        epochs: epochs to train (a resumed run may be given more).
        batch_size: examples per step and process.
        lr: peak learning rate; ``schedule`` scales it (see :mod:`robustdistill.train.schedules`).
        optimizer: a registered optimizer (:mod:`robustdistill.train.optimizers`): ``sgd`` or ``adamw``.
        momentum: SGD momentum; AdamW's beta1.
        weight_decay: SGD's L2 penalty; AdamW's decoupled decay.
        nesterov: Nesterov momentum (sgd only).
        schedule: ``ard`` (default), ``ard-released``, ``rslad``, ``cosine`` or ``constant``.
        amp: autocast ``none``, ``bf16`` or ``fp16`` (fp16 adds loss scaling).
        channels_last: train in the ``channels_last`` memory format.
        sync_bn: under DDP, SyncBatchNorm in the student (CUDA only; refused for double-backward methods).
        seed: seeds the data order, augmentation and attacks of every epoch.
        val_every: validate every N epochs (and always after the last).
        val_pgd_steps: PGD steps of the validation attack.
        val_n_examples: validate on the first N validation examples (``None``: all).
        select: report the ``last`` epoch, the ``best-val`` epoch on validation PGD accuracy, or the
            ``fair`` epoch (Fair-ARD's rule: the highest mean of average and worst-class validation PGD accuracy).
        max_nonfinite: abort after this many consecutive steps with a non-finite loss.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 2e-4
    nesterov: bool = False
    schedule: str = "ard"
    amp: str = "none"
    channels_last: bool = False
    sync_bn: bool = False
    seed: int = 0
    val_every: int = 1
    val_pgd_steps: int = 10
    val_n_examples: int | None = None
    select: str = "last"
    max_nonfinite: int = 20

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`UsageError` (one line, naming the valid values) for a setting that cannot run."""
        SCHEDULES.get(self.schedule)
        OPTIMIZERS.get(self.optimizer).check(self)
        if self.amp not in AMP_MODES:
            raise UsageError(f"--amp must be none, bf16 or fp16, not {self.amp!r}")
        if self.select not in SELECTIONS:
            raise UsageError(f"--select must be last, best-val or fair, not {self.select!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise UsageError("epochs, batch size and learning rate must be positive")
        if self.val_every < 1 or self.val_pgd_steps < 1 or self.max_nonfinite < 1:
            raise UsageError("val_every, val_pgd_steps and max_nonfinite must be at least 1")


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    """``cfg`` as a plain dict (field order)."""
    return asdict(cfg)


__all__ = ["AMP_MODES", "SELECTIONS", "TrainConfig", "config_dict"]
