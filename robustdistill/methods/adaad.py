"""AdaAD - Adaptive Adversarial Distillation (Huang, Chen, Wang, Song, Shi; CVPR 2023)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..attacks import pgd
from ..params import require
from .spec import AttackMode, register_method
from .base import AttackOutput, Strategy, frozen_logits, soft_kl, weighted_mean


@register_method(
    name="adaad", summary="AdaAD: attack maximises the teacher-student KL at the same point (Huang et al., CVPR 2023)",
    attack_mode=AttackMode.EVAL, weight_decay=5e-4,
)
class AdaAD(Strategy):
    """Adaptive Adversarial Distillation.

    Paper: Huang et al., "Boosting Accuracy and Robustness of Student Models via Adaptive
    Adversarial Distillation", CVPR 2023; attack and loss follow the released code (spec
    ``algorithms.md`` section 7.1). Threat model: L-infinity, eps = 8/255 (step 2/255, 10 steps),
    inputs in [0, 1]. The paper also reports a larger search radius eps = 16/255 with step 4/255
    (which is also the default of the released ``main.py``); set it through the strategy's
    ``AttackSettings`` (eps=16/255, step_size=4/255) - this module never hard-codes eps.

    Inner maximisation (A4): maximise ``sum_i KL(p(T(x'_i)) || p(S(x'_i)))`` with the teacher
    evaluated at the *moving* point (the gradient flows through the frozen teacher to x'), from
    ``x + 0.001 * N(0, I)`` (not clipped), student and teacher in **eval** mode. Kappa is counted
    on the student against y.

    Outer loss (tau = 1; teacher on both inputs without grad; student in train mode)::

        L = alpha * KL( p(T(x_adv)) || p(S(x_adv)) ) + (1 - alpha) * KL( p(T(x)) || p(S(x)) )

    each KL reduced as meanKL (per-sample sum over classes / C, the CIFAR-10 code) or, with
    ``batch_kl = True``, as batch-KL (no / C, the CIFAR-100 code); then ``sum_i w_i l_i / B``.

    Defaults (released code): ``alpha = 1.0`` (adversarial term only), ``batch_kl = False``,
    weight decay 5e-4. The clean student forward always runs, before the adversarial one (as in the
    released code; it touches BN statistics); the clean teacher forward is skipped when
    ``alpha == 1`` (its term has weight 0 and the eval-mode teacher has no side effects).
    Stats: ``kl_adv`` and, when alpha < 1, ``kl_nat``.
    Cost: the teacher (a WRN-34-20 in the paper) runs 10 forwards + 10 input-backwards per batch.
    """

    @dataclass(frozen=True)
    class Params:
        """alpha: weight of the adversarial KL (1 - alpha on the natural KL); batch_kl: KL reduction."""

        alpha: float = 1.0
        batch_kl: bool = False

        def __post_init__(self) -> None:
            require(0.0 <= self.alpha <= 1.0, f"adaad: alpha must be in [0, 1], got {self.alpha}")

    def perturb(self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        require(teacher is not None, "adaad needs a teacher; pass one with --teacher")
        assert teacher is not None

        def discrepancy(s_logits: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
            return soft_kl(teacher(x_adv), s_logits)

        res = pgd(
            student, x, y, eps=self.attack.eps, step_size=self.attack.step_size, steps=self.attack.steps,
            loss=discrepancy, start="gaussian", start_scale=0.001, clip_start=False, count_kappa=True,
        )
        return AttackOutput(x_adv=res.x_adv, kappa=res.kappa)

    def loss(
        self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
        adv: AttackOutput, sample_weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        p = self.params
        assert adv.x_adv is not None, "adaad.loss needs the output of adaad.perturb"
        s_nat = student(x)  # released order: clean forward first, then adversarial
        s_adv = student(adv.x_adv)
        divisor = 1.0 if p.batch_kl else float(s_adv.shape[1])
        kl_adv = weighted_mean(soft_kl(frozen_logits(teacher, adv.x_adv), s_adv) / divisor, sample_weight)
        loss = p.alpha * kl_adv
        stats = {"kl_adv": kl_adv.detach()}
        if p.alpha < 1.0:
            t_nat = adv.teacher_clean if adv.teacher_clean is not None else frozen_logits(teacher, x)
            kl_nat = weighted_mean(soft_kl(t_nat, s_nat) / divisor, sample_weight)
            loss = loss + (1.0 - p.alpha) * kl_nat
            stats["kl_nat"] = kl_nat.detach()
        return loss, stats
