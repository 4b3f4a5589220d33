"""Teacher-free adversarial training: Madry PGD-AT and TRADES (used to train teachers)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import ce_loss, pgd, full_precision
from ..params import hyperparameter, require
from .spec import AttackMode, register_method
from .base import AttackOutput, Strategy, soft_kl, weighted_mean


@register_method(
    name="at", summary="Madry PGD adversarial training, no teacher (Madry et al., ICLR 2018)",
    attack_mode=AttackMode.EVAL, needs_teacher=False,
)
class MadryAT(Strategy):
    """PGD adversarial training, no teacher.

    Paper: Madry, Makelov, Schmidt, Tsipras, Vladu, "Towards Deep Learning Models Resistant to
    Adversarial Attacks", ICLR 2018. Threat model: L-infinity, eps = 8/255 (10 steps of 2/255 by
    default, from ``AttackSettings``), inputs in [0, 1].

    Inner maximisation: CE-PGD on the model from ``x + U(-eps, eps)`` **clipped to [0, 1]** (the
    "Madry" attack of the IAD/GAIRAT pre-training code), model BN in **eval** mode
    (``attack_mode = "eval"``); per-sample kappa against y is reported.

    Loss: ``CE(S(x_adv), y)`` reduced as ``sum_i w_i CE_i / B``. Stats: ``ce_adv``.
    """

    @dataclass(frozen=True)
    class Params:
        """No hyperparameters besides the attack settings."""

    def perturb(self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        res = pgd(
            student, x, y, eps=self.attack.eps, step_size=self.attack.step_size, steps=self.attack.steps,
            loss="ce", start="uniform", clip_start=True, count_kappa=True,
        )
        return AttackOutput(x_adv=res.x_adv, kappa=res.kappa)

    def loss(
        self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
        adv: AttackOutput, sample_weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert adv.x_adv is not None, "at.loss needs the output of at.perturb"
        ce = weighted_mean(ce_loss(student(adv.x_adv), y), sample_weight)
        return ce, {"ce_adv": ce.detach()}


@register_method(
    name="trades", summary="TRADES: clean CE plus beta x KL(clean || adversarial), no teacher (Zhang et al., ICML 2019)",
    attack_mode=AttackMode.EVAL, needs_teacher=False,
)
class TRADES(Strategy):
    """TRADES adversarial training, no teacher.

    Paper: Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan, "Theoretically Principled Trade-off between
    Robustness and Accuracy", ICML 2019. Threat model: L-infinity, eps = 8/255 (10 steps of 2/255
    by default, from ``AttackSettings``), inputs in [0, 1].

    Inner maximisation: maximise ``sum_i KL(p(S(x_i)) || p(S(x'_i)))`` from ``x + 0.001 * N(0, I)``
    (not clipped), model in **eval** mode; the clean target ``p(S(x))`` is computed once (the
    eval-mode model is deterministic, so this equals the per-step recomputation of the reference
    code). Kappa is judged against y although the attack does not use it.

    Loss (model in train mode)::

        L = CE(S(x), y) + beta * batchKL( p(S(x)) || p(S(x_adv)) )

    batch-KL = per-sample KL summed over classes (not / C); both terms ``sum_i w_i l_i / B``. The
    clean target is *not* detached (as in the reference code); its clean logits are reused from the
    CE forward (the reference code runs the clean forward twice). Default ``beta = 6.0``.
    Stats: ``ce``, ``kl_adv``.
    """

    @dataclass(frozen=True)
    class Params:
        """beta: weight of the robustness (KL) term."""

        beta: float = hyperparameter(6.0, "TRADES: weight of the robustness KL term", aliases=("trades_beta",))

        def __post_init__(self) -> None:
            require(self.beta >= 0, f"trades: beta must be >= 0, got {self.beta}")

    def perturb(self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        with torch.no_grad():
            target = F.softmax(full_precision(student(x)), dim=1)
        res = pgd(
            student, x, y, eps=self.attack.eps, step_size=self.attack.step_size, steps=self.attack.steps,
            loss="kl", target=target, start="gaussian", start_scale=0.001, clip_start=False, count_kappa=True,
        )
        return AttackOutput(x_adv=res.x_adv, kappa=res.kappa)

    def loss(
        self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
        adv: AttackOutput, sample_weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert adv.x_adv is not None, "trades.loss needs the output of trades.perturb"
        s_nat = student(x)
        s_adv = student(adv.x_adv)
        ce = weighted_mean(ce_loss(s_nat, y), sample_weight)
        kl = weighted_mean(soft_kl(s_nat, s_adv), sample_weight)
        return ce + self.params.beta * kl, {"ce": ce.detach(), "kl_adv": kl.detach()}
