"""RSLAD - Robust Soft Label Adversarial Distillation (Zi, Zhao, Ma, Jiang; ICCV 2021)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import pgd, full_precision
from ..params import hyperparameter, require
from .spec import AttackMode, register_method
from .base import AttackOutput, Strategy, frozen_logits, soft_kl, weighted_mean

#: RSLAD's element-wise KL is ``p * (log(p + 1e-5) - log q)`` (a 1e-5 inside the teacher log).
TEACHER_LOG_OFFSET = 1e-5


@register_method(
    name="rslad", summary="RSLAD: teacher's clean soft labels in the attack and both loss terms (Zi et al., ICCV 2021)",
    attack_mode=AttackMode.EVAL, schedule="rslad", epochs=300,
)
class RSLAD(Strategy):
    """Robust Soft Label Adversarial Distillation.

    Paper: Zi et al., "Revisiting Adversarial Robustness Distillation: Robust Soft Labels Make
    Student Better", ICCV 2021 (arXiv:2108.07969); attack and loss follow the released code
    (spec ``algorithms.md`` section 3). Threat model: L-infinity, eps = 8/255, inputs in [0, 1].

    Inner maximisation (A2): maximise ``sum_i KL(p(T(x_i)) || p(S(x'_i)))`` - the teacher's soft
    label on the *clean* input, computed once (no grad) and fixed during the attack, tau = 1 -
    from ``x + 0.001 * N(0, I)`` (not clipped), 10 steps of 2/255, student in **eval** mode
    (``attack_mode = "eval"``). Kappa is counted against the hard label y although the attack
    never uses y. The clean teacher logits are handed to the loss via ``AttackOutput.teacher_clean``
    (one teacher forward per batch).

    Outer loss (tau = 1; both student forwards in train mode; adversarial first, then clean)::

        L = kl_scale * ( alpha * meanKL(p(T(x)) || p(S(x_adv))) + (1 - alpha) * meanKL(p(T(x)) || p(S(x))) )

    with element-wise KL ``p_c (log(p_c + 1e-5) - log q_c)`` as written in the released code,
    meanKL = per-sample sum over classes / C, reduced by ``sum_i w_i l_i / B``.

    Defaults: ``alpha = 5/6`` (so 5/6 and 1/6), ``kl_scale = 1.0``. The released CIFAR-100 scripts
    multiply both KL terms by 10 "to keep consistent with CIFAR-10": pass ``kl_scale = 10`` to
    reproduce them. Schedule preset "rslad" (300 epochs, decays at 215/260/285).
    Stats: ``kl_adv``, ``kl_nat`` (both meanKL, before alpha and kl_scale).
    """

    @dataclass(frozen=True)
    class Params:
        """alpha: weight of the adversarial KL (1 - alpha on the natural KL); kl_scale: overall factor."""

        alpha: float = 5 / 6
        kl_scale: float = hyperparameter(1.0, "RSLAD: overall factor of both KL terms (10 in the released CIFAR-100 code)")

        def __post_init__(self) -> None:
            require(0.0 <= self.alpha <= 1.0, f"rslad: alpha must be in [0, 1], got {self.alpha}")
            require(self.kl_scale > 0, f"rslad: kl_scale must be > 0, got {self.kl_scale}")

    def perturb(self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        t_clean = frozen_logits(teacher, x)
        target = F.softmax(full_precision(t_clean), dim=1)
        res = pgd(
            student, x, y, eps=self.attack.eps, step_size=self.attack.step_size, steps=self.attack.steps,
            loss="kl", target=target, start="gaussian", start_scale=0.001, clip_start=False, count_kappa=True,
        )
        return AttackOutput(x_adv=res.x_adv, kappa=res.kappa, teacher_clean=t_clean)

    def loss(
        self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
        adv: AttackOutput, sample_weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        p = self.params
        assert adv.x_adv is not None, "rslad.loss needs the output of rslad.perturb"
        t_clean = adv.teacher_clean if adv.teacher_clean is not None else frozen_logits(teacher, x)
        s_adv = student(adv.x_adv)
        s_nat = student(x)
        num_classes = s_adv.shape[1]
        kl_adv = weighted_mean(soft_kl(t_clean, s_adv, log_offset=TEACHER_LOG_OFFSET) / num_classes, sample_weight)
        kl_nat = weighted_mean(soft_kl(t_clean, s_nat, log_offset=TEACHER_LOG_OFFSET) / num_classes, sample_weight)
        loss = p.kl_scale * (p.alpha * kl_adv + (1.0 - p.alpha) * kl_nat)
        return loss, {"kl_adv": kl_adv.detach(), "kl_nat": kl_nat.detach()}
