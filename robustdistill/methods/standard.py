"""Standard (non-adversarial) training with cross-entropy: a natural teacher for MTARD, a baseline."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..attacks import ce_loss
from .spec import AttackMode, register_method
from .base import AttackOutput, Strategy, weighted_mean


@register_method(
    name="standard", summary="standard training: clean cross-entropy, no attack, no teacher (a natural teacher for MTARD)",
    attack_mode=AttackMode.NONE, needs_teacher=False,
)
class Standard(Strategy):
    """Plain empirical risk minimisation on clean inputs.

    No threat model at training time (evaluate it under the usual L-infinity attacks to see how
    little robustness it has). Inputs are images in [0, 1]. Its use here is the *natural teacher*
    of MTARD (``distill --method mtard --natural-teacher RUN/teacher.safetensors``): a model
    trained on clean data only, e.g. ``robustdistill train-teacher --method standard``.

    Loss: ``CE(S(x), y)`` reduced as ``sum_i w_i CE_i / B``. Stats: ``ce``. No hyperparameters.
    """

    @dataclass(frozen=True)
    class Params:
        """No hyperparameters."""

    def perturb(self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        return AttackOutput()

    def loss(
        self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
        adv: AttackOutput, sample_weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ce = weighted_mean(ce_loss(student(x), y), sample_weight)
        return ce, {"ce": ce.detach()}
