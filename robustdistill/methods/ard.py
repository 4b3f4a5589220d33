"""ARD - Adversarially Robust Distillation (Goldblum, Fowl, Feizi, Goldstein; AAAI 2020)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..attacks import ce_loss, pgd
from ..params import hyperparameter, require
from .spec import AttackMode, register_method
from .base import AttackOutput, AttackSettings, Strategy, frozen_logits, soft_kl, weighted_mean


def student_ce_attack(student: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: AttackSettings) -> AttackOutput:
    """Attack A1 of the spec: hard-label CE-PGD on the student from ``x + U(-eps, eps)``.

    The random start is *not* clipped to [0, 1] before the first forward (as in the ARD code);
    every later iterate is projected to the eps-ball and [0, 1]. The student's BN mode is the
    trainer's business (train mode for the ARD family). Returns ``x_adv`` and per-sample kappa.
    """
    res = pgd(
        student, x, y, eps=attack.eps, step_size=attack.step_size, steps=attack.steps,
        loss="ce", start="uniform", clip_start=False, count_kappa=True,
    )
    return AttackOutput(x_adv=res.x_adv, kappa=res.kappa)


@register_method(
    name="ard", summary="ARD: adversarial student matched to the teacher's clean soft labels (Goldblum et al., AAAI 2020)",
    attack_mode=AttackMode.TRAIN,
)
class ARD(Strategy):
    """Adversarially Robust Distillation.

    Paper: Goldblum et al., "Adversarially Robust Distillation", AAAI 2020 (arXiv:1905.09747);
    loss and attack follow the released code (spec ``algorithms.md`` section 2).
    Threat model: L-infinity, eps = 8/255 on inputs in [0, 1] (settings from ``AttackSettings``).

    Inner maximisation (A1): 10-step CE-PGD on the *student* (step 2/255), uniform start not
    clipped, student BN in **train** mode (``attack_mode = "train"``); per-sample kappa is counted.

    Outer loss (teacher on the *clean* input, eval mode, no grad)::

        L = alpha * tau^2 * meanKL( p^tau(T(x)) || p^tau(S(x_adv)) ) + (1 - alpha) * CE(S(x), y)

    meanKL = per-sample KL summed over classes, divided by C, then ``sum_i w_i l_i / B``
    (PyTorch's default ``KLDivLoss``; with tau = 30, C = 10 this is 90 x batch-KL - the maintainers
    note the reduction changes results, so it is kept). CE is ``sum_i w_i CE_i / B``.

    Defaults (released code): ``alpha = 1.0``, ``tau = 30.0``. The clean student forward is run
    even at ``alpha = 1`` (where the CE term has weight 0) because the released code does so and
    it updates the BN running statistics; order of the forwards: adversarial, then clean.
    Stats: ``kl_adv`` (meanKL), ``ce`` (clean CE).
    """

    @dataclass(frozen=True)
    class Params:
        """alpha: weight of the adversarial KD term (1 - alpha on clean CE); tau: temperature."""

        alpha: float = hyperparameter(1.0, "weight of the adversarial distillation term (1 - alpha on clean CE)")
        tau: float = hyperparameter(30.0, "distillation temperature", aliases=("temperature",))

        def __post_init__(self) -> None:
            require(0.0 <= self.alpha <= 1.0, f"ard: alpha must be in [0, 1], got {self.alpha}")
            require(self.tau > 0, f"ard: tau must be > 0, got {self.tau}")

    def perturb(self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        return student_ce_attack(student, x, y, self.attack)

    def loss(
        self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
        adv: AttackOutput, sample_weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        p = self.params
        assert adv.x_adv is not None, "ard.loss needs the output of ard.perturb"
        s_adv = student(adv.x_adv)
        t_clean = adv.teacher_clean if adv.teacher_clean is not None else frozen_logits(teacher, x)
        s_clean = student(x)
        kl = weighted_mean(soft_kl(t_clean, s_adv, p.tau) / s_adv.shape[1], sample_weight)
        ce = weighted_mean(ce_loss(s_clean, y), sample_weight)
        loss = p.alpha * p.tau**2 * kl + (1.0 - p.alpha) * ce
        return loss, {"kl_adv": kl.detach(), "ce": ce.detach()}
