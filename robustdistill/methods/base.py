"""The strategy interface every distillation / adversarial-training method implements.

A strategy owns only its algorithm:

* :meth:`Strategy.perturb` - the inner maximisation. It returns the adversarial batch and, when
  the method has an attack, ``kappa``: per sample, how many of the PGD iterates ``x^0..x^{K-1}``
  the *student* still classified correctly (Fair-ARD's geometric difficulty, free because it
  reuses the attack's forward passes).
* :meth:`Strategy.loss` - the outer loss. Every per-sample term accepts ``sample_weight`` and is
  reduced as ``sum_i w_i * l_i / B`` (the Fair-ARD convention, *not* divided by ``sum w``);
  with ``sample_weight=None`` the very same arithmetic runs with ``w_i = 1``, so a reweighting
  wrapper with uniform weights reproduces the base method bit for bit.

The trainer owns everything else: the student's mode (it puts the student in
``attack_mode`` before :meth:`perturb` and back in train mode before :meth:`loss`), autocast,
devices, DDP, the optimizer and checkpoints. Teachers arrive frozen and in eval mode.

Optional hooks for methods with state beyond Fair-ARD's per-epoch counts (MTARD, ABSLD, FRL,
CFA): :meth:`Strategy.bind` hands over the run context once (extra teachers such as MTARD's
natural one, the learning-rate factor of an epoch, the DDP reduction), :meth:`Strategy.on_step_end`
tells whether the optimizer step was applied (a non-finite loss is skipped), and
:meth:`Strategy.validation_need` / :meth:`Strategy.on_validation` give a method per-class
clean and robust counts measured on the **validation** split. :meth:`Strategy.report_state`
names weights to report instead of the live ones (CFA's FAWA average).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import full_precision
from ..errors import UsageError
from ..params import as_dict
from .spec import AttackMode, MethodSpec


@dataclass(frozen=True)
class AttackSettings:
    """Training-time inner maximisation budget (pixel units of [0, 1])."""

    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10


@dataclass
class AttackOutput:
    """What :meth:`Strategy.perturb` hands to :meth:`Strategy.loss`.

    Attributes:
        x_adv: the adversarial batch (``None`` for methods without an attack).
        kappa: per-sample count of PGD iterates classified correctly (long, shape [B]) or ``None``.
        teacher_clean: teacher logits on the clean batch, if the attack already computed them.
        extras: anything else a method wants to carry from its attack to its loss.
    """

    x_adv: torch.Tensor | None = None
    kappa: torch.Tensor | None = None
    teacher_clean: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


Reduce = Callable[[torch.Tensor], torch.Tensor]


def constant_factor(epoch: int) -> float:
    """The learning-rate factor of a run without a schedule (unit tests, a strategy used alone)."""
    del epoch
    return 1.0


@dataclass(frozen=True)
class RunContext:
    """What the trainer hands a strategy once, before the first epoch (:meth:`Strategy.bind`).

    Attributes:
        teachers: extra teachers by the names in ``MethodSpec.extra_teachers`` (e.g. ``natural``),
            on the training device, in eval mode and frozen.
        lr_factor: the learning-rate schedule's factor at the start of a (0-based) epoch; methods
            whose own rates decay with the learning rate (MTARD's eta_omega, ABSLD's r) read it.
        reduce: all-reduce (sum) across DDP processes, usable inside :meth:`Strategy.loss`;
            ``None`` in a single process.
    """

    teachers: Mapping[str, nn.Module] = field(default_factory=dict)
    lr_factor: Callable[[int], float] = constant_factor
    reduce: Reduce | None = None


@dataclass(frozen=True)
class ValidationNeed:
    """A per-class validation pass a method needs (on the validation split, never test).

    Attributes:
        when: ``before_epoch`` (also before the first: FRL's multipliers) or ``after_epoch`` (CFA's FAWA).
        pgd_steps: steps of the evaluation PGD (uniform start clipped to [0, 1], step eps/4, CE).
    """

    when: Literal["before_epoch", "after_epoch"]
    pgd_steps: int


@dataclass(frozen=True)
class ClassCounts:
    """Per-class validation counts (long tensors of shape [C], on the CPU).

    Attributes:
        total: examples of each class.
        clean: of those, classified correctly.
        robust: classified correctly both clean and under the PGD attack.
    """

    total: torch.Tensor
    clean: torch.Tensor
    robust: torch.Tensor


class Strategy:
    """Base class: subclasses define ``Params`` and implement :meth:`perturb` and :meth:`loss`.

    Registered subclasses carry their :class:`~robustdistill.methods.spec.MethodSpec` as ``spec``
    (set by :func:`~robustdistill.methods.spec.register_method`); name, attack mode and teacher
    needs are read from it.
    """

    spec: ClassVar[MethodSpec]

    @dataclass(frozen=True)
    class Params:
        """Method hyperparameters with the paper defaults (overridden per subclass)."""

    def __init__(self, params: Any = None, attack: AttackSettings | None = None, num_classes: int = 10) -> None:
        self.params = params if params is not None else self.Params()
        self.attack = attack or AttackSettings()
        self.num_classes = num_classes
        self.epoch = 0
        self.num_epochs = 1
        self.context = RunContext()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def attack_mode(self) -> AttackMode:
        return self.spec.attack_mode

    @property
    def needs_teacher(self) -> bool:
        return self.spec.needs_teacher

    # -- hooks -------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        """Called before each epoch (0-based); e.g. IAD switches its introspection term on."""
        self.epoch, self.num_epochs = epoch, num_epochs

    def on_epoch_end(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, Any]:
        """Called after each epoch; ``reduce`` all-reduces (sums) a tensor across DDP processes.

        Returns values to log (e.g. Fair-ARD's new class weights).
        """
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Strategy state that a resumed run needs (tensors, numbers, lists only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    def bind(self, context: RunContext) -> None:
        """Called once by the trainer before training (extra teachers, lr factor, DDP reduction)."""
        self.context = context

    def on_step_end(self, applied: bool) -> None:
        """Called after every step: ``applied`` is False when the trainer skipped it (non-finite loss).

        Strategies that change state inside :meth:`loss` commit it here, so a skipped step leaves
        no trace and :meth:`loss` must be called exactly once per step.
        """
        del applied

    def validation_need(self) -> ValidationNeed | None:
        """The per-class validation pass this method needs, or ``None`` (the default)."""
        return None

    def on_validation(self, counts: ClassCounts, student: nn.Module, epoch: int) -> dict[str, Any]:
        """Receives the counts of :meth:`validation_need` (0-based ``epoch``); returns values to log."""
        del counts, student, epoch
        return {}

    def report_state(self) -> dict[str, torch.Tensor] | None:
        """Weights to validate, select and report instead of the live ones (``None``: the live weights)."""
        return None

    # -- the algorithm -----------------------------------------------------------------------
    def perturb(self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        raise NotImplementedError

    def loss(
        self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
        adv: AttackOutput, sample_weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Return (scalar loss, detached per-batch statistics to log)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, **as_dict(self.params)}


def weighted_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """``sum_i w_i * v_i / B``; identical arithmetic with ``weight=None`` (w = 1)."""
    if weight is not None:
        values = values * weight
    return values.sum() / values.shape[0]


def soft_kl(
    target_logits: torch.Tensor, student_logits: torch.Tensor, tau: float = 1.0, *, log_offset: float | None = None,
) -> torch.Tensor:
    """Per-sample ``KL(p^tau(target) || p^tau(student))`` summed over classes, in float32 (or float64).

    Divide by C for the "mean-KL" convention (PyTorch's default KL reduction, ARD/RSLAD/AdaAD) or
    keep as is for "batch-KL" (IAD, TRADES). ``log_offset`` writes the target log as
    ``log(p + log_offset)`` (RSLAD's ``1e-5``); otherwise ``log_softmax`` is used. Gradients flow
    into both arguments; detach the target where the method treats it as a constant.
    """
    log_q = F.log_softmax(full_precision(student_logits) / tau, dim=1)
    if log_offset is None:
        log_p = F.log_softmax(full_precision(target_logits) / tau, dim=1)
        p = log_p.exp()
    else:
        p = F.softmax(full_precision(target_logits) / tau, dim=1)
        log_p = torch.log(p + log_offset)
    return (p * (log_p - log_q)).sum(1)


def frozen_logits(teacher: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """Teacher logits without a graph (the teacher is frozen and needs no input gradient here)."""
    if teacher is None:
        raise UsageError("this method needs a teacher; pass one (e.g. --teacher robustbench:Zhang2019Theoretically)")
    with torch.no_grad():
        return teacher(x).detach()
