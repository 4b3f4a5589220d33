"""FRL - Fair Robust Learning (Xu, Liu, Li, Jain, Tang; ICML 2021), reweight and remargin."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import ce_loss, full_precision, pgd
from ..errors import UsageError
from ..params import hyperparameter, require
from .classwise import classwise_pgd
from .spec import AttackMode, register_method
from .base import AttackOutput, ClassCounts, Strategy, ValidationNeed, soft_kl

VARIANTS = ("reweight", "reweight-remargin", "remargin")


def project_multipliers(values: torch.Tensor, limit: float) -> torch.Tensor:
    """FRL's projection: clamp at 0, then rescale so that the sum is at most ``limit``."""
    values = values.clamp(min=0)
    total = float(values.sum())
    return limit * values / total if total > limit else values


def class_costs(multipliers: torch.Tensor) -> torch.Tensor:
    """``C * w_c`` with FRL's cost-sensitive weights ``w_c = 1/C + lambda_c - (1/C) sum_j lambda_j``.

    Written as ``1 + C lambda_c - sum_j lambda_j`` (the same number) so that zero multipliers give
    exactly 1.0 for every class count (``C * (1/C)`` is not always 1 in floating point).
    """
    return 1.0 + multipliers.numel() * multipliers - multipliers.sum()


@dataclass(frozen=True)
class Violations:
    """Per-class constraint violations on the validation split (float64, 0 for absent classes)."""

    clean: torch.Tensor  # gamma0_c = err_c - err - tau_clean
    boundary: torch.Tensor  # gamma1_c = bndy_c - bndy - tau_boundary
    clean_accuracy: torch.Tensor
    robust_accuracy: torch.Tensor


def violations(counts: ClassCounts, tau_clean: float, tau_boundary: float) -> Violations:
    """gamma0 (clean error) and gamma1 (boundary error = clean - robust accuracy) of each class over the split's."""
    n, clean, robust = (t.to(torch.float64) for t in (counts.total, counts.clean, counts.robust))
    present = n > 0
    size = n.sum().clamp_min(1)
    err_c, bndy_c = 1 - clean / n.clamp_min(1), (clean - robust) / n.clamp_min(1)
    err, bndy = 1 - clean.sum() / size, (clean.sum() - robust.sum()) / size
    zero = torch.zeros_like(n)
    return Violations(torch.where(present, err_c - err - tau_clean, zero), torch.where(present, bndy_c - bndy - tau_boundary, zero),
                      clean / n.clamp_min(1), robust / n.clamp_min(1))


@register_method(
    name="frl", summary="FRL: TRADES fine-tuning with per-class fairness constraints by reweighting and/or remargining "
                        "(Xu et al., ICML 2021)",
    attack_mode=AttackMode.EVAL, needs_teacher=False, schedule="constant", epochs=40, weight_decay=5e-4, lr=1e-3,
    requires_init=True,
)
class FRL(Strategy):
    """Fair Robust Learning: TRADES whose class weights and class margins follow constraint multipliers.

    Paper: Xu et al., "To be Robust or to be Fair: Towards Fairness in Adversarial Training",
    ICML 2021 (arXiv:2010.06121; spec ``algorithms.md`` section 8); procedure from the released
    code (hannxu123/fair_robust, ``frlrw.py`` / ``frlrmrw.py``). Threat model: L-infinity, eps =
    8/255, inputs in [0, 1]. FRL **fine-tunes a robust model** (its "hot start"): pass ``--init
    MODEL`` (e.g. the ``teacher.safetensors`` of ``train-teacher --method trades``); 40 epochs at
    lr 1e-3, weight decay 5e-4, no decay within the run.

    Before every epoch (also the first, from the hot start) the model is evaluated on the
    **validation** split (clean and PGD-``multiplier_pgd_steps``, step eps/4, eval mode): per class, the
    clean error ``err_c`` and the boundary error ``bndy_c`` (clean minus robust accuracy), against
    the split's ``err`` and ``bndy``. Violations ``gamma0 = err_c - err - tau_clean`` and
    ``gamma1 = bndy_c - bndy - tau_boundary`` move the multipliers, with
    ``rate_e = rate * 0.5 ** ((e + 1) // rate_halve_every)`` (0-based epoch e)::

        lambda0 <- P(lambda0 + rate_e gamma0),  lambda1 <- P(lambda1 + 2 rate_e gamma1)   (reweight variants)
        lambda2 <- lambda2 + margin_rate gamma1                                           (remargin variants; no projection)

    P clamps at 0 and rescales so that the sum is at most ``lim``. Class weights
    ``w_c = 1/C + lambda_c - mean(lambda)`` (per-sample ``a_i = C w0[y_i]``, ``b_i = C w1[y_i]``)
    and margins ``m_c = clip(exp(2 lambda2_c), margin_min, margin_max)``.

    Inner maximisation (eval mode): TRADES' KL-PGD from ``x + 0.001 N(0, I)``, in the per-sample
    ball ``eps * m[y_i]`` (the scalar eps while every margin is 1); step ``step_size`` (``fixed``) or
    ``max_i eps_i / 4`` (``max-eps-quarter``, the released reweight-remargin script).
    Loss (train mode), a weighted **average** as released (not Fair-ARD's ``/ B``)::

        L = sum_i u_i a_i CE(S(x_i), y_i) / sum_i a_i + beta * sum_i u_i b_i KL(p(S(x_i)) || p(S(x_adv_i))) / sum_i b_i

    (``u`` = external sample weights, none by default; the KL target is not detached, as in TRADES.)
    With zero multipliers (``rate = margin_rate = 0``) this is ``trades`` with ``beta = 1.5`` bit for bit.

    Variants: ``reweight`` (FRL-RW, released defaults tau 0.1), ``reweight-remargin`` (FRL-RWRM; the
    release uses tau 0.07 and ``step_rule = max-eps-quarter``), ``remargin`` (FRL-RM, reconstructed:
    only lambda2 moves). Multipliers are in the checkpoint; each epoch logs gamma0, gamma1, the
    multipliers, weights, margins and the validation per-class accuracies they came from.
    Deviations: weights generalised from 10 classes to C; the clean forward runs once (the release
    runs it twice, touching BN statistics twice); the attack target p(S(x)) is computed once
    (constant in eval mode; the release recomputes it per step).
    """

    @dataclass(frozen=True)
    class Params:
        """Variant, TRADES beta, tolerances, multiplier rates and bounds, margin clip, step rule, validation PGD steps."""

        variant: Literal["reweight", "reweight-remargin", "remargin"] = hyperparameter(
            "reweight", "FRL: reweight, reweight-remargin or remargin")
        beta: float = hyperparameter(1.5, "TRADES: weight of the robustness KL term", aliases=("trades_beta",))
        tau_clean: float = hyperparameter(0.1, "FRL: tolerated excess clean error of a class (0.07 in the released RWRM)")
        tau_boundary: float = hyperparameter(0.1, "FRL: tolerated excess boundary error of a class")
        rate: float = hyperparameter(0.05, "FRL: step of the reweighting multipliers (x2 for the boundary ones)")
        rate_halve_every: int = hyperparameter(40, "FRL: halve the rate every N epochs")
        margin_rate: float = hyperparameter(0.2, "FRL: step of the remargin multipliers")
        lim: float = hyperparameter(0.5, "FRL: bound on the sum of each set of reweighting multipliers")
        margin_min: float = hyperparameter(0.98, "FRL: lower clip of the class margin factor")
        margin_max: float = hyperparameter(3.0, "FRL: upper clip of the class margin factor")
        step_rule: Literal["fixed", "max-eps-quarter"] = hyperparameter(
            "fixed", "FRL: attack step: fixed, or max-eps-quarter (released RWRM)")
        multiplier_pgd_steps: int = hyperparameter(20, "FRL: PGD steps of the validation pass that moves the multipliers")

        def __post_init__(self) -> None:
            require(self.variant in VARIANTS, f"frl: variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
            require(self.beta >= 0, f"frl: beta must be >= 0, got {self.beta}")
            for name in ("rate", "margin_rate", "lim"):
                require(getattr(self, name) >= 0, f"frl: {name} must be >= 0, got {getattr(self, name)}")
            require(self.rate_halve_every >= 1, f"frl: rate_halve_every must be >= 1, got {self.rate_halve_every}")
            require(0 < self.margin_min <= 1 <= self.margin_max,
                    f"frl: need 0 < margin_min <= 1 <= margin_max, got {self.margin_min}, {self.margin_max}")
            require(self.step_rule in ("fixed", "max-eps-quarter"),
                    f"frl: step_rule must be fixed or max-eps-quarter, got {self.step_rule!r}")
            require(self.multiplier_pgd_steps >= 1, f"frl: multiplier_pgd_steps must be >= 1, got {self.multiplier_pgd_steps}")

    def __init__(self, params: Any = None, attack: Any = None, num_classes: int = 10) -> None:
        super().__init__(params, attack, num_classes)
        self.multipliers = torch.zeros(3, num_classes, dtype=torch.float64)  # lambda0, lambda1, lambda2
        self.device_costs: dict[str, torch.Tensor] = {}

    @property
    def reweights(self) -> bool:
        return self.params.variant != "remargin"

    @property
    def remargins(self) -> bool:
        return self.params.variant != "reweight"

    def margins(self) -> torch.Tensor:
        """``m_c = clip(exp(2 lambda2_c), margin_min, margin_max)`` (float64; exactly 1 while lambda2 = 0)."""
        return torch.exp(2 * self.multipliers[2]).clamp(self.params.margin_min, self.params.margin_max)

    # -- hooks -------------------------------------------------------------------------------
    def validation_need(self) -> ValidationNeed | None:
        return ValidationNeed("before_epoch", self.params.multiplier_pgd_steps)

    def on_validation(self, counts: ClassCounts, student: nn.Module, epoch: int) -> dict[str, Any]:
        p = self.params
        v = violations(counts, p.tau_clean, p.tau_boundary)
        rate = p.rate * 0.5 ** ((epoch + 1) // p.rate_halve_every)
        lam = self.multipliers.clone()
        if self.reweights:
            lam[0] = project_multipliers(lam[0] + rate * v.clean, p.lim)
            lam[1] = project_multipliers(lam[1] + 2 * rate * v.boundary, p.lim)
        if self.remargins:
            lam[2] = lam[2] + p.margin_rate * v.boundary
        self.multipliers, self.device_costs = lam, {}
        return {"gamma0": v.clean.tolist(), "gamma1": v.boundary.tolist(), "lambda0": lam[0].tolist(),
                "lambda1": lam[1].tolist(), "lambda2": lam[2].tolist(), "w0": (class_costs(lam[0]) / self.num_classes).tolist(),
                "w1": (class_costs(lam[1]) / self.num_classes).tolist(), "margin": self.margins().tolist(), "rate": rate,
                "frl_val_clean_class": v.clean_accuracy.tolist(), "frl_val_pgd_class": v.robust_accuracy.tolist()}

    def state_dict(self) -> dict[str, Any]:
        return {"lambda": self.multipliers.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        lam = torch.as_tensor(state["lambda"], dtype=torch.float64)
        if lam.shape != (3, self.num_classes):
            raise UsageError(f"the checkpoint holds FRL multipliers for {lam.shape[-1]} classes but this run has "
                             f"{self.num_classes}; resume with the dataset the run was started with")
        self.multipliers, self.device_costs = lam.clone(), {}

    def on_epoch_end(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, Any]:
        return {}

    # -- the algorithm -----------------------------------------------------------------------
    def costs(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample ``a_i = C w0[y_i]`` and ``b_i = C w1[y_i]`` (float32, exactly 1.0 with zero multipliers)."""
        if not self.device_costs or self.device_costs["a"].device != y.device:
            self.device_costs = {"a": class_costs(self.multipliers[0]).to(y.device, torch.float32),
                                 "b": class_costs(self.multipliers[1]).to(y.device, torch.float32)}
        return self.device_costs["a"][y], self.device_costs["b"][y]

    def perturb(self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        with torch.no_grad():
            target = F.softmax(full_precision(student(x)), dim=1)
        margins = self.margins()
        if not bool((margins == 1).all()):
            eps = (self.attack.eps * margins).to(y.device)[y]
            step = self.attack.step_size if self.params.step_rule == "fixed" else float(eps.max()) / 4
            res = classwise_pgd(student, x, y, eps=eps, step_size=step, steps=self.attack.steps, loss="kl",
                                target=target, start="gaussian", start_scale=0.001, clip_start=False)
            return AttackOutput(x_adv=res.x_adv, kappa=res.kappa)
        step = self.attack.step_size if self.params.step_rule == "fixed" else self.attack.eps / 4
        res = pgd(student, x, y, eps=self.attack.eps, step_size=step, steps=self.attack.steps, loss="kl", target=target,
                  start="gaussian", start_scale=0.001, clip_start=False, count_kappa=True)
        return AttackOutput(x_adv=res.x_adv, kappa=res.kappa)

    def loss(
        self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
        adv: AttackOutput, sample_weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert adv.x_adv is not None, "frl.loss needs the output of frl.perturb"
        s_nat = student(x)
        s_adv = student(adv.x_adv)
        a, b = self.costs(y)
        ce_terms, kl_terms = a * ce_loss(s_nat, y), b * soft_kl(s_nat, s_adv)
        if sample_weight is not None:
            ce_terms, kl_terms = ce_terms * sample_weight, kl_terms * sample_weight
        ce, kl = ce_terms.sum() / a.sum(), kl_terms.sum() / b.sum()
        return ce + self.params.beta * kl, {"ce": ce.detach(), "kl_adv": kl.detach()}
