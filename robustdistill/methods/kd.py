"""Plain knowledge distillation on clean inputs (Hinton et al., 2015) - the non-robust baseline."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..attacks import ce_loss
from ..params import require
from .spec import AttackMode, register_method
from .base import AttackOutput, Strategy, frozen_logits, soft_kl, weighted_mean


@register_method(
    name="kd", summary="plain knowledge distillation on clean inputs (Hinton et al., 2015); non-robust baseline",
    attack_mode=AttackMode.NONE,
)
class KD(Strategy):
    """Knowledge distillation on clean data, no inner maximisation.

    Paper: Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network" (NIPS DL workshop,
    2015). Used as the "does plain KD from a robust teacher transfer robustness?" baseline of the
    adversarial-distillation papers. Threat model: none at training time (evaluate it under the
    usual L-infinity attacks). Inputs are images in [0, 1].

    Loss (B = batch size, C = number of classes, every term reduced by
    :func:`~robustdistill.methods.base.weighted_mean`, i.e. ``sum_i w_i l_i / B``)::

        L = alpha * tau^2 * meanKL( p^tau(T(x)) || p^tau(S(x)) ) + (1 - alpha) * CE(S(x), y)

    where meanKL is the per-sample KL summed over classes divided by C (PyTorch's default
    ``KLDivLoss`` reduction, as in ARD and KDIGA).

    Defaults ``alpha = 0.5``, ``tau = 1.0``: the defaults of the KDIGA authors' code, whose ``kd``
    method this is. It makes ``kd`` exactly the ``gamma = 0`` ablation of ``kdiga`` (same KD term,
    same scale), which is the comparison that code base was built for. Hinton-style settings
    (e.g. ``alpha = 0.9, tau = 4``) are a flag away.

    ``perturb`` does no attack and returns ``AttackOutput(x_adv=None, kappa=None)``; Fair-KD
    measures kappa with its own short PGD (see :mod:`robustdistill.methods.fair`).
    Stats: ``kl`` (meanKL), ``ce``.
    """

    @dataclass(frozen=True)
    class Params:
        """alpha: weight of the KD term (1 - alpha on CE); tau: softmax temperature."""

        alpha: float = 0.5
        tau: float = 1.0

        def __post_init__(self) -> None:
            require(0.0 <= self.alpha <= 1.0, f"kd: alpha must be in [0, 1], got {self.alpha}")
            require(self.tau > 0, f"kd: tau must be > 0, got {self.tau}")

    def perturb(self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        return AttackOutput(x_adv=None, kappa=None)

    def loss(
        self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
        adv: AttackOutput, sample_weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        p = self.params
        t_logits = adv.teacher_clean if adv.teacher_clean is not None else frozen_logits(teacher, x)
        s_logits = student(x)
        kl = weighted_mean(soft_kl(t_logits, s_logits, p.tau) / s_logits.shape[1], sample_weight)
        ce = weighted_mean(ce_loss(s_logits, y), sample_weight)
        loss = p.alpha * p.tau**2 * kl + (1.0 - p.alpha) * ce
        return loss, {"kl": kl.detach(), "ce": ce.detach()}
