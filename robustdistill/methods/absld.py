"""ABSLD - Anti-Bias Soft Label Distillation (Zhao, Duan, Wang, Wei; NeurIPS 2024)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import ce_loss, full_precision, pgd
from ..errors import UsageError
from ..params import hyperparameter, require
from .spec import AttackMode, register_method
from .base import AttackOutput, Strategy, frozen_logits, soft_kl, weighted_mean
from .rslad import TEACHER_LOG_OFFSET


def update_temperatures(tau: torch.Tensor, risk: torch.Tensor, present: torch.Tensor, rate: float,
                        low: float, high: float) -> torch.Tensor:
    """ABSLD's per-class step: ``tau_c <- clip(tau_c - rate * (L_c - mean L) / max|L - mean L|, low, high)``.

    A class with a larger error risk ``L_c`` than the mean gets a lower temperature (a sharper soft
    label). The mean and the maximum run over ``present`` classes only; absent classes keep their
    temperature. When every present risk is equal (or the scale is not finite) nothing moves, and
    ``rate = 0`` leaves ``tau`` exactly as it was. Arithmetic in ``tau``'s dtype (float32).

    Args:
        tau: shape [C], current temperatures.
        risk: shape [C], the classes' error risk of the epoch (any float dtype).
        present: bool [C], classes seen in the epoch.
        rate: the step ``r`` of this update.
        low, high: clamp bounds (0.5 and 5 in the released code).
    """
    if rate == 0 or not bool(present.any()):
        return tau.clone()
    risk = risk.to(tau.dtype)
    gap = torch.where(present, risk - risk[present].mean(), torch.zeros_like(risk))
    scale = gap.abs().max()
    if not (bool(scale > 0) and bool(torch.isfinite(scale))):
        return tau.clone()
    return torch.where(present, (tau - rate * gap / scale).clamp(low, high), tau)


@register_method(
    name="absld", summary="ABSLD: RSLAD with per-class teacher temperatures that sharpen hard classes' soft labels "
                          "(Zhao et al., NeurIPS 2024)",
    attack_mode=AttackMode.EVAL, schedule="rslad", epochs=300,
    fair_note="a composition, not from a paper (ABSLD tempers the labels, Fair- reweights the loss)",
)
class ABSLD(Strategy):
    """Anti-Bias Soft Label Distillation: RSLAD whose teacher soft labels get a temperature per class.

    Paper: Zhao et al., "Improving Adversarial Robust Fairness via Anti-Bias Soft Label
    Distillation", NeurIPS 2024 (arXiv:2312.05508; spec ``algorithms.md`` section 7.3); procedure
    from the released code (zhaoshiji123/ABSLD). Threat model: L-infinity, eps = 8/255, inputs in [0, 1].

    Per-class temperatures ``tau_adv[C]`` and ``tau_nat[C]`` (float32, start at ``tau_init``)
    divide the teacher's clean logits by the temperature of each sample's label:
    ``t_adv = T(x) / tau_adv[y]``, ``t_nat = T(x) / tau_nat[y]`` (the student keeps tau = 1).

    Inner maximisation (A2, eval mode): RSLAD's KL-PGD towards ``softmax(t_adv)`` from
    ``x + 0.001 * N(0, I)``, 10 steps of 2/255; kappa is counted.

    Outer loss (train mode; adversarial forward first)::

        L = kl_scale * ( alpha * meanKL(p(t_adv) || p(S(x_adv))) + (1 - alpha) * meanKL(p(t_nat) || p(S(x))) )

    with RSLAD's element-wise KL ``p (log(p + 1e-5) - log q)`` and the student's log_softmax, reduced
    as ``sum_i w_i l_i / B``. The loss forwards also give, per class, the student's hard-label CE on
    S(x_adv) and on S(x) (detached, unweighted), summed over the epoch (committed only on applied steps).

    After each epoch e (0-based), for adv and nat separately: the class risk ``L_c`` (the per-class
    **mean** CE with ``class_risk = "mean"``, the released per-class **sum** with ``"sum"``; equal
    on a balanced dataset without ``drop_last``), then :func:`update_temperatures` with
    ``rate = tau_lr * lr_factor(e + 1)`` (the release decays r x0.1 together with the lr, *before*
    that epoch's update) and bounds ``[tau_min, tau_max]``. Temperatures are in the checkpoint
    (exact resume) and logged every epoch (``tau_adv``, ``tau_nat``, ``class_risk_adv``,
    ``class_risk_nat``, ``tau_lr``).

    ``coupling``: ``separate`` (default, the paper's two temperature sets) or ``product`` - the
    released code, whose two in-place divisions of one aliased tensor give *both* targets (and the
    attack's) the temperature ``tau_adv[y] * tau_nat[y]``. The released code also takes
    ``log(softmax(S))`` for the student where RSLAD uses log_softmax; this uses log_softmax, so
    that ``tau_lr = 0, tau_init = 1`` reproduces ``rslad`` bit for bit.

    ABSLD vs Fair-ARD: ABSLD changes **which target** each class is pulled towards (a lower
    temperature sharpens the soft label of a class with a high training error); Fair-ARD changes
    **how much** each sample's loss counts (a weight from the student's geometric difficulty kappa).
    ``fair-absld`` composes both (offered, not from a paper; the temperature statistics stay
    unweighted so the two mechanisms stay independent); both push towards hard classes, so it can
    over-correct.

    Defaults (released CIFAR-10 code): ``alpha = 5/6``, ``kl_scale = 1``, ``tau_lr = 0.1``,
    ``tau_init = 1``, ``tau_min = 0.5``, ``tau_max = 5``; schedule ``rslad`` (300 epochs), wd 2e-4.
    Stats: ``kl_adv``, ``kl_nat`` (meanKL before alpha and kl_scale).
    """

    @dataclass(frozen=True)
    class Params:
        """RSLAD's alpha and kl_scale; the temperature rate, start, bounds, coupling and class-risk form."""

        alpha: float = 5 / 6
        kl_scale: float = hyperparameter(1.0, "RSLAD: overall factor of both KL terms (10 in the released CIFAR-100 code)")
        tau_lr: float = hyperparameter(0.1, "ABSLD: step of the per-class temperature update (0 freezes them)")
        tau_init: float = hyperparameter(1.0, "ABSLD: initial temperature of every class")
        tau_min: float = hyperparameter(0.5, "ABSLD: lower bound of the temperatures")
        tau_max: float = hyperparameter(5.0, "ABSLD: upper bound of the temperatures")
        coupling: Literal["separate", "product"] = hyperparameter(
            "separate", "ABSLD: separate adv/nat temperatures, or product (the released code's aliasing)")
        class_risk: Literal["mean", "sum"] = hyperparameter("mean", "ABSLD: per-class mean CE, or sum (released)")

        def __post_init__(self) -> None:
            require(0.0 <= self.alpha <= 1.0, f"absld: alpha must be in [0, 1], got {self.alpha}")
            require(self.kl_scale > 0, f"absld: kl_scale must be > 0, got {self.kl_scale}")
            require(self.tau_lr >= 0, f"absld: tau_lr must be >= 0, got {self.tau_lr}")
            require(0 < self.tau_min <= self.tau_init <= self.tau_max,
                    f"absld: need 0 < tau_min <= tau_init <= tau_max, got {self.tau_min}, {self.tau_init}, {self.tau_max}")
            require(self.coupling in ("separate", "product"), f"absld: coupling must be separate or product, got {self.coupling!r}")
            require(self.class_risk in ("mean", "sum"), f"absld: class_risk must be mean or sum, got {self.class_risk!r}")

    def __init__(self, params: Any = None, attack: Any = None, num_classes: int = 10) -> None:
        super().__init__(params, attack, num_classes)
        self.tau_adv = torch.full((num_classes,), float(self.params.tau_init), dtype=torch.float32)
        self.tau_nat = self.tau_adv.clone()
        self.device_tau: dict[str, torch.Tensor] = {}
        self.sums: torch.Tensor | None = None  # [3, C] float64: CE adv, CE nat, count (committed steps)
        self.pending: torch.Tensor | None = None
        self.device = torch.device("cpu")  # where the accumulators live (a DDP reduction needs that device)

    # -- hooks -------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        super().on_epoch_start(epoch, num_epochs)
        self.sums = self.pending = None

    def on_step_end(self, applied: bool) -> None:
        if applied and self.pending is not None:
            self.sums = self.pending if self.sums is None or self.sums.device != self.pending.device else self.sums + self.pending
        self.pending = None

    def on_epoch_end(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, Any]:
        sums = self.sums.clone() if self.sums is not None else torch.zeros(3, self.num_classes, dtype=torch.float64,
                                                                             device=self.device)
        if reduce is not None:  # every rank takes part, even one that saw no batch
            sums = reduce(sums)
        sums = sums.cpu()
        self.sums = None
        present = sums[2] > 0
        divisor = sums[2].clamp_min(1) if self.params.class_risk == "mean" else torch.ones_like(sums[2])
        risk_adv, risk_nat = sums[0] / divisor, sums[1] / divisor
        p = self.params
        rate = p.tau_lr * self.context.lr_factor(self.epoch + 1)
        self.tau_adv = update_temperatures(self.tau_adv, risk_adv, present, rate, p.tau_min, p.tau_max)
        self.tau_nat = update_temperatures(self.tau_nat, risk_nat, present, rate, p.tau_min, p.tau_max)
        self.device_tau = {}

        def shown(risk: torch.Tensor) -> list[float | None]:
            return [float(v) if seen else None for v, seen in zip(risk.tolist(), present.tolist())]

        return {"tau_adv": self.tau_adv.tolist(), "tau_nat": self.tau_nat.tolist(), "class_risk_adv": shown(risk_adv),
                "class_risk_nat": shown(risk_nat), "tau_lr": rate}

    def state_dict(self) -> dict[str, Any]:
        return {"tau_adv": self.tau_adv.tolist(), "tau_nat": self.tau_nat.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        tau_adv = torch.as_tensor(state["tau_adv"], dtype=torch.float32)
        tau_nat = torch.as_tensor(state["tau_nat"], dtype=torch.float32)
        if tau_adv.shape != (self.num_classes,) or tau_nat.shape != (self.num_classes,):
            raise UsageError(f"the checkpoint holds {tau_adv.numel()} ABSLD temperatures but this run has "
                             f"{self.num_classes} classes; resume with the dataset the run was started with")
        self.tau_adv, self.tau_nat, self.device_tau = tau_adv.clone(), tau_nat.clone(), {}

    # -- the algorithm -----------------------------------------------------------------------
    def temperatures(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sample's (tau_adv, tau_nat) as float32 columns [B, 1] on ``y``'s device."""
        if not self.device_tau or self.device_tau["adv"].device != y.device:
            self.device_tau = {"adv": self.tau_adv.to(y.device), "nat": self.tau_nat.to(y.device)}
        return self.device_tau["adv"][y][:, None], self.device_tau["nat"][y][:, None]

    def targets(self, t_clean: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The adversarial and natural tempered teacher logits (float32; never float64, which would promote)."""
        t32 = full_precision(t_clean)
        tau_adv, tau_nat = self.temperatures(y)
        t_adv = t32 / tau_adv
        if self.params.coupling == "product":  # released: both divisions hit one aliased tensor, in this order
            t_adv = t_adv / tau_nat
            return t_adv, t_adv
        return t_adv, t32 / tau_nat

    def perturb(self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        t_clean = frozen_logits(teacher, x)
        t_adv, t_nat = self.targets(t_clean, y)
        res = pgd(
            student, x, y, eps=self.attack.eps, step_size=self.attack.step_size, steps=self.attack.steps,
            loss="kl", target=F.softmax(t_adv, dim=1), start="gaussian", start_scale=0.001, clip_start=False,
            count_kappa=True,
        )
        return AttackOutput(x_adv=res.x_adv, kappa=res.kappa, teacher_clean=t_clean, extras={"t_adv": t_adv, "t_nat": t_nat})

    def loss(
        self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
        adv: AttackOutput, sample_weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        p = self.params
        assert adv.x_adv is not None, "absld.loss needs the output of absld.perturb"
        if "t_adv" in adv.extras:
            t_adv, t_nat = adv.extras["t_adv"], adv.extras["t_nat"]
        else:
            t_adv, t_nat = self.targets(adv.teacher_clean if adv.teacher_clean is not None else frozen_logits(teacher, x), y)
        s_adv = student(adv.x_adv)
        s_nat = student(x)
        num_classes = s_adv.shape[1]
        kl_adv = weighted_mean(soft_kl(t_adv, s_adv, log_offset=TEACHER_LOG_OFFSET) / num_classes, sample_weight)
        kl_nat = weighted_mean(soft_kl(t_nat, s_nat, log_offset=TEACHER_LOG_OFFSET) / num_classes, sample_weight)
        loss = p.kl_scale * (p.alpha * kl_adv + (1.0 - p.alpha) * kl_nat)
        self.pending = self.class_statistics(s_adv.detach(), s_nat.detach(), y)
        return loss, {"kl_adv": kl_adv.detach(), "kl_nat": kl_nat.detach()}

    def class_statistics(self, s_adv: torch.Tensor, s_nat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``[3, C]`` float64 per-class sums of this batch: CE on S(x_adv), CE on S(x), sample count."""
        self.device = y.device
        out = torch.zeros(3, self.num_classes, dtype=torch.float64, device=y.device)
        out[0].scatter_add_(0, y, ce_loss(s_adv, y).double())
        out[1].scatter_add_(0, y, ce_loss(s_nat, y).double())
        out[2] += torch.bincount(y, minlength=self.num_classes).double()
        return out
