"""Fair-ARD - class reweighting by geometric difficulty over any distillation method.

Yue, Mou, Wang, Zhao, "Revisiting Adversarial Robustness Distillation from the Perspective of
Robust Fairness", NeurIPS 2023 (spec ``algorithms.md`` section 5). One wrapper gives
``fair-ard``, ``fair-rslad``, ``fair-iad``, ``fair-kdiga``, ``fair-adaad`` and ``fair-kd``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from ..attacks import pgd
from ..modes import eval_mode
from ..rng import forked_rng
from ..errors import UsageError
from ..params import as_dict
from .base import AttackOutput, ClassCounts, RunContext, Strategy, ValidationNeed
from .spec import FAIR_PREFIX, AttackMode, FairParams, MethodSpec

#: Floor under ``kappa_mean + eps_floor`` before the log, so that kappa_mean = 0 with
#: ``eps_floor = 0`` (the Fair-RSLAD formula) still gives finite weights.
_MIN_BASE = 1e-12
#: Offset of the deterministic seeds of the separate kappa PGD (attack-free bases).
_KAPPA_SEED = 0x6B61707061


def class_weights(
    kappa_mean: torch.Tensor, beta: float = 2.0, clip_min: float = 5 / 6, clip_max: float = 5 / 2,
    eps_floor: float = 1e-5, *, present: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fair-ARD class weights from the per-class mean kappa (spec section 5.3), in float64.

    ``r_c = (1 / (kappa_c + eps_floor)) ** beta``; ``r <- r * C / sum(r)``; ``w = clip(r, clip_min, clip_max)``.

    Computed in log space and shifted by the maximum before exponentiating, which is the same
    number after the normalisation but never overflows: ``kappa_c = 0`` yields finite weights
    (the hard class at ``clip_max``, the others at ``clip_min``), also with ``eps_floor = 0``
    (``kappa_c + eps_floor`` is floored at 1e-12). ``beta = 0`` gives exactly 1.0 everywhere.
    Pass ``clip_min=0, clip_max=inf`` to see the normalised weights before clipping (they sum to C).

    Args:
        kappa_mean: shape [C], per-class mean of kappa (larger = easier class).
        beta: sharpness of the emphasis on hard classes (0 = uniform).
        clip_min, clip_max: bounds applied after the normalisation (5/6, 5/2 in the released code).
        eps_floor: the ``1e-5`` of the released code (Fair-RSLAD uses 0).
        present: optional bool mask [C]; only these classes enter the normalisation (C is then
            their number) and the others get ``clip_min`` (callers keep their previous weight).
    """
    kappa = kappa_mean.detach().to(torch.float64)
    mask = torch.ones_like(kappa, dtype=torch.bool) if present is None else present.to(kappa.device, torch.bool)
    log_r = -beta * torch.log((kappa + eps_floor).clamp_min(_MIN_BASE))
    log_r = log_r.masked_fill(~mask, -math.inf)
    top = log_r.max()
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # no class present: r = 0
    r = torch.exp(log_r - top)
    total = r.sum()
    r = r * mask.sum().to(torch.float64) / total
    return torch.where(total > 0, r.clamp(clip_min, clip_max), torch.ones_like(r))


class FairStrategy(Strategy):
    """Fair-ARD: per-class loss weights from the student's per-class geometric difficulty.

    Paper: Yue et al., NeurIPS 2023; exact procedure from the released code (spec section 5).
    Threat model and input range ([0, 1]) are those of the base method.

    Per batch, ``perturb`` delegates to the base method and records each sample's kappa (the
    number of the base attack's PGD iterates ``x^0..x^{K-1}`` the student classifies as y) into
    per-class sums and per-class counts on the device (``scatter_add_`` / ``bincount``).
    ``loss`` calls the base loss with ``sample_weight = w[y] * incoming_weight``; every base
    reduces as ``sum_i w_i l_i / B`` (not divided by ``sum w``), as the released code does.

    At ``on_epoch_end(reduce)`` the two count vectors are all-reduced (DDP) and
    ``kappa_mean_c = kappa_sum_c / count_c`` uses the **realised** per-class count. The released
    code divides by N/C; that is the same on a balanced dataset seen once per epoch, and the
    realised count stays correct for imbalanced data, ``drop_last`` and DDP padding (deviation,
    spec section 5.9 item 3). Then :func:`class_weights`; the weights apply to the *next* epoch,
    so the first epoch uses ``w = 1``. Classes absent from an epoch keep their previous weight and
    the others are normalised among themselves; kappa_mean = 0 never produces inf/NaN.

    Attack-free bases (``kd``, ``kdiga``) have no PGD iterates to count, but the paper's
    difficulty is geometric (how many PGD steps the student survives), so kappa is measured by a
    separate ``kappa_steps``-step CE-PGD on the student (uniform start, eps / step size from the
    strategy's ``AttackSettings``), with the student temporarily in eval mode (each submodule's
    previous mode is restored; eval mode leaves BN statistics untouched) and inside
    ``torch.random.fork_rng`` seeded from a call counter, so the global RNG is not consumed and
    ``beta = 0`` reproduces the base method bit for bit. Its adversarial examples are not used by
    the loss. Cost: ``kappa_steps`` extra student forwards + input-backwards per batch.

    Defaults: ``beta = 2.0``, ``clip_min = 5/6``, ``clip_max = 5/2``, ``eps_floor = 1e-5``,
    ``kappa_steps = 10``. With ``beta = 0`` the weights are exactly 1.0 and training is
    bit-identical to the base method. Weights, the kappa-seed counter and the base state are in
    :meth:`state_dict` (partial per-epoch sums are not: resume at epoch boundaries).

    Relation to the released scripts: ``fair-rslad`` with ``eps_floor=0`` is Fair-RSLAD's weight
    formula (finite here even when a class has kappa_mean = 0). ``fair-iad`` weights this
    package's IAD-I loss, whose CE term uses the clean output; released Fair-IAD uses the
    adversarial output there - identical at the default ``alpha = 1``. The released Fair-*
    scripts also switch on Nesterov momentum, which is the trainer's setting, not this class's.

    Args:
        base: the strategy to reweight (its hyperparameters, attack settings and class count are used).
        beta: exponent of the inverse difficulty (0 = uniform weights = the base method).
        clip_min, clip_max: bounds of the weights after normalising them to mean 1.
        eps_floor: added to kappa_mean before inverting (1e-5 in Fair-ARD/IAD, 0 in Fair-RSLAD).
        kappa_steps: PGD steps of the separate kappa measurement (attack-free bases only).
    """

    Params = FairParams

    def __init__(
        self, base: Strategy, beta: float = 2.0, clip_min: float = 5 / 6, clip_max: float = 5 / 2,
        eps_floor: float = 1e-5, kappa_steps: int = 10,
    ) -> None:
        super().__init__(FairParams(beta, clip_min, clip_max, eps_floor, kappa_steps), base.attack, base.num_classes)
        self.base = base
        self.weights = torch.ones(self.num_classes, dtype=torch.float32)
        self._device_weights: torch.Tensor | None = None
        self._kappa_sum: torch.Tensor | None = None
        self._count: torch.Tensor | None = None
        self._device: torch.device | None = None
        self._kappa_calls = 0

    @property
    def spec(self) -> MethodSpec:  # type: ignore[override]
        """The wrapped method's spec: schedule, weight decay and epochs are the base method's."""
        return self.base.spec

    @property
    def name(self) -> str:
        return FAIR_PREFIX + self.base.name

    @property
    def attack_mode(self) -> AttackMode:
        return self.base.attack_mode

    @property
    def needs_teacher(self) -> bool:
        return self.base.needs_teacher

    # -- hooks -------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        super().on_epoch_start(epoch, num_epochs)
        self.base.on_epoch_start(epoch, num_epochs)
        self._kappa_sum = self._count = None

    def on_epoch_end(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, Any]:
        logs = dict(self.base.on_epoch_end(reduce))
        device = self._device or torch.device("cpu")
        zeros = torch.zeros(self.num_classes, dtype=torch.long, device=device)
        kappa_sum = (self._kappa_sum if self._kappa_sum is not None else zeros).clone()
        count = (self._count if self._count is not None else zeros).clone()
        if reduce is not None:  # every rank takes part, even one that saw no batch
            kappa_sum, count = reduce(kappa_sum), reduce(count)
        self._kappa_sum = self._count = None
        present = count > 0
        kappa_mean = kappa_sum.to(torch.float64) / count.clamp_min(1).to(torch.float64)
        p = self.params
        new = class_weights(kappa_mean, p.beta, p.clip_min, p.clip_max, p.eps_floor, present=present)
        previous = self.weights.to(new.device, torch.float64)
        self.weights = torch.where(present, new, previous).to("cpu", torch.float32)
        self._device_weights = None
        means = [m if seen else None for m, seen in zip(kappa_mean.tolist(), present.tolist())]
        logs.update(class_weights=self.weights.tolist(), kappa_mean=means)
        return logs

    # The base method's own hooks (MTARD's balance, ABSLD's temperatures) run unchanged under the wrapper.
    def bind(self, context: RunContext) -> None:
        super().bind(context)
        self.base.bind(context)

    def on_step_end(self, applied: bool) -> None:
        self.base.on_step_end(applied)

    def validation_need(self) -> ValidationNeed | None:
        return self.base.validation_need()

    def on_validation(self, counts: ClassCounts, student: nn.Module, epoch: int) -> dict[str, Any]:
        return self.base.on_validation(counts, student, epoch)

    def report_state(self) -> dict[str, torch.Tensor] | None:
        return self.base.report_state()

    def state_dict(self) -> dict[str, Any]:
        return {"class_weights": self.weights.tolist(), "kappa_calls": self._kappa_calls, "base": self.base.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        weights = torch.as_tensor(state["class_weights"], dtype=torch.float32).detach().cpu().clone()
        if weights.shape != (self.num_classes,):
            raise UsageError(
                f"the checkpoint holds {weights.numel()} Fair-ARD class weights but this run has {self.num_classes} "
                "classes; resume with the dataset the run was started with"
            )
        self.weights, self._device_weights = weights, None
        self._kappa_calls = int(state.get("kappa_calls", 0))
        self.base.load_state_dict(state.get("base", {}))

    def describe(self) -> dict[str, Any]:
        return {**self.base.describe(), **as_dict(self.params), "method": self.name}

    # -- the algorithm -----------------------------------------------------------------------
    def perturb(self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        out = self.base.perturb(student, teacher, x, y)
        if out.kappa is None:
            out.kappa = self.measure_kappa(student, x, y)
        self._accumulate(out.kappa, y)
        return out

    def loss(
        self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
        adv: AttackOutput, sample_weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self._device_weights is None or self._device_weights.device != y.device:
            self._device_weights = self.weights.to(y.device)
        weight = self._device_weights[y]
        if sample_weight is not None:
            weight = weight * sample_weight
        return self.base.loss(student, teacher, x, y, adv, weight)

    def measure_kappa(self, student: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Kappa from a separate ``kappa_steps``-step CE-PGD (for bases without an attack)."""
        seed = (_KAPPA_SEED + self._kappa_calls) % (2**63)
        self._kappa_calls += 1
        with eval_mode(student), forked_rng(x.device, seed):
            res = pgd(
                student, x, y, eps=self.attack.eps, step_size=self.attack.step_size, steps=self.params.kappa_steps,
                loss="ce", start="uniform", clip_start=False, count_kappa=True,
            )
        assert res.kappa is not None
        return res.kappa

    def _accumulate(self, kappa: torch.Tensor, y: torch.Tensor) -> None:
        if self._kappa_sum is None or self._count is None or self._kappa_sum.device != y.device:
            self._kappa_sum = torch.zeros(self.num_classes, dtype=torch.long, device=y.device)
            self._count = torch.zeros(self.num_classes, dtype=torch.long, device=y.device)
        self._device = y.device
        self._kappa_sum.scatter_add_(0, y, kappa.to(torch.long))
        self._count += torch.bincount(y, minlength=self.num_classes)
