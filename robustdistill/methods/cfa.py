"""CFA - Class-wise Calibrated Fair Adversarial Training (Wei, Wang, Guo, Wang; CVPR 2023)."""

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
from .base import AttackOutput, ClassCounts, Strategy, ValidationNeed, soft_kl, weighted_mean


def fawa_update(average: dict[str, torch.Tensor] | None, live: dict[str, torch.Tensor], decay: float) -> dict[str, torch.Tensor]:
    """One FAWA step: ``decay * average + (1 - decay) * live`` for floating tensors (parameters and BN
    running statistics, as released), the live value for integer buffers (``num_batches_tracked``,
    which the release pushes through a float multiply). ``average=None`` starts from a copy of ``live``.
    """
    out = {}
    for key, value in live.items():
        value = value.detach().cpu()
        if average is None or not value.is_floating_point():
            out[key] = value.clone()
        else:
            out[key] = decay * average[key] + (1 - decay) * value
    return out


@register_method(
    name="cfa", summary="CFA: class-wise calibrated margins (CCM), TRADES weights (CCR) and fairness-aware weight "
                        "averaging (FAWA) over AT or TRADES (Wei et al., CVPR 2023)",
    attack_mode=AttackMode.EVAL, needs_teacher=False, weight_decay=5e-4,
)
class CFA(Strategy):
    """Class-wise Calibrated Fair Adversarial training over PGD-AT or TRADES.

    Paper: Wei et al., "CFA: Class-wise Calibrated Fair Adversarial Training", CVPR 2023
    (arXiv:2303.14460; spec ``algorithms.md`` section 8); procedure from the released code
    (PKU-ML/CFA). Threat model: L-infinity, eps = 8/255 (10 steps of 2/255), inputs in [0, 1].

    Calibration from ``r_c``, the previous epoch's per-class accuracy of the train-mode
    adversarial outputs used in the loss (realised per-class counts), from epoch
    ``round(calibrate_from * epochs)`` on (at least 1; 10 of 200 in the release):

    * CCM (``ccm``): per-class budget ``eps_c = (lambda_margin + r_c) * eps`` in the attack (step unchanged);
    * CCR (``ccr``, TRADES only): ``b_c = (lambda_reg + r_c) * beta``.

    Base ``at``: CE-PGD from ``x + eps_i U(-1, 1)`` clipped to [0, 1]; loss ``sum_i w_i CE(S(x_adv_i), y_i) / B``.
    Base ``trades``: KL-PGD towards p(S(x)) from ``x + 0.001 N(0, I)``; loss, with per-sample
    ``b = b_{y_i}`` (the scalar beta without CCR)::

        normalised (released):  sum_i w_i [ (1 - b/(1+b)) CE_i + b/(1+b) KL_i ] / B   (= TRADES / (1 + beta) without CCR)
        standard:               sum_i w_i CE_i / B + sum_i w_i b KL_i / B          (= trades, bit for bit, without CCR)

    FAWA (``fawa``): after each epoch the live model is evaluated on the **validation** split
    (PGD-``fawa_pgd_steps``); when its worst-class robust accuracy reaches ``fawa_threshold``, the
    average starts as a copy of the weights, and later such epochs update it as
    ``decay * average + (1 - decay) * weights`` (BN statistics included, as released). Once started,
    the average is what is validated each epoch, selected by ``--select`` and reported; before that,
    the live weights (the release would report its untouched initial copy).

    ``attack_bn``: ``eval`` (default, so that CFA-AT without calibration is ``at``) or ``train`` -
    the released AT attack, which runs the model with batch statistics. Neutral settings:
    ``base=at, ccm=False, fawa=False`` is ``at`` and ``base=trades, ccm=False, ccr=False, fawa=False,
    trades_form=standard`` is ``trades`` (beta 6), bit for bit. Per-class state (``r_train``, the
    FAWA average) is in the checkpoint; logged per epoch: ``r_train``, ``eps_c``, ``beta_c`` and, after
    validation, ``val_r_min``, ``fawa_started``. Deviations: no extra clean train-mode forward for
    logging (the release's changes BN statistics); selection on validation, never test.
    Defaults (released): TRADES base, lambda 0.5 / 0.5, beta 6, threshold 0.24 (0.2 in the README's
    AT example), decay 0.88; 200 epochs, lr 0.1 x0.1 at 50 % and 75 %, wd 5e-4.
    """

    @dataclass(frozen=True)
    class Params:
        """Base, the three calibrations, their coefficients, FAWA's threshold and decay, and two released quirks."""

        base: Literal["at", "trades"] = hyperparameter("trades", "CFA: adversarial training it calibrates: at or trades")
        ccm: bool = hyperparameter(True, "CFA: class-wise calibrated margins (per-class eps)")
        ccr: bool = hyperparameter(True, "CFA: class-wise calibrated TRADES regularisation (trades only)")
        lambda_margin: float = hyperparameter(0.5, "CFA: lambda_1 of eps_c = (lambda_1 + r_c) eps")
        lambda_reg: float = hyperparameter(0.5, "CFA: lambda_2 of b_c = (lambda_2 + r_c) beta")
        beta: float = hyperparameter(6.0, "TRADES: weight of the robustness KL term", aliases=("trades_beta",))
        calibrate_from: float = hyperparameter(0.05, "CFA: fraction of the run before the calibration starts")
        fawa: bool = hyperparameter(True, "CFA: fairness-aware weight averaging")
        fawa_decay: float = hyperparameter(0.88, "CFA: decay of the FAWA average")
        fawa_threshold: float = hyperparameter(0.24, "CFA: worst-class validation robust accuracy that admits an epoch")
        trades_form: Literal["normalised", "standard"] = hyperparameter(
            "normalised", "CFA: normalised ((1-b')CE + b'KL, released) or standard (CE + b KL)")
        attack_bn: Literal["eval", "train"] = hyperparameter("eval", "CFA: BN mode of the AT attack (train = released)")
        fawa_pgd_steps: int = hyperparameter(10, "CFA: PGD steps of FAWA's validation pass")

        def __post_init__(self) -> None:
            require(self.base in ("at", "trades"), f"cfa: base must be at or trades, got {self.base!r}")
            require(self.lambda_margin >= 0 and self.lambda_reg >= 0, "cfa: lambda_margin and lambda_reg must be >= 0")
            require(self.beta >= 0, f"cfa: beta must be >= 0, got {self.beta}")
            require(0.0 <= self.calibrate_from <= 1.0, f"cfa: calibrate_from is a fraction in [0, 1], got {self.calibrate_from}")
            require(0.0 <= self.fawa_decay <= 1.0, f"cfa: fawa_decay must be in [0, 1], got {self.fawa_decay}")
            require(self.trades_form in ("normalised", "standard"),
                    f"cfa: trades_form must be normalised or standard, got {self.trades_form!r}")
            require(self.attack_bn in ("eval", "train"), f"cfa: attack_bn must be eval or train, got {self.attack_bn!r}")
            require(self.fawa_pgd_steps >= 1, f"cfa: fawa_pgd_steps must be >= 1, got {self.fawa_pgd_steps}")

    def __init__(self, params: Any = None, attack: Any = None, num_classes: int = 10) -> None:
        super().__init__(params, attack, num_classes)
        self.r_train: torch.Tensor | None = None  # float64 [C], last epoch's per-class training robust accuracy
        self.fawa_state: dict[str, torch.Tensor] | None = None
        self.sums: torch.Tensor | None = None  # [2, C] long: correct, count (committed steps)
        self.pending: torch.Tensor | None = None
        self.device = torch.device("cpu")

    @property
    def attack_mode(self) -> AttackMode:
        train_bn = self.params.base == "at" and self.params.attack_bn == "train"
        return AttackMode.TRAIN if train_bn else AttackMode.EVAL

    @property
    def calibrated(self) -> bool:
        """Whether this epoch uses last epoch's per-class accuracies."""
        start = max(1, round(self.params.calibrate_from * self.num_epochs))
        return self.r_train is not None and self.epoch >= start

    def class_factor(self, coefficient: float, y: torch.Tensor) -> torch.Tensor:
        """Per-sample ``coefficient + r_{y_i}`` in float32 (as the released float32 arithmetic)."""
        assert self.r_train is not None
        return coefficient + self.r_train.to(y.device, torch.float32)[y]

    # -- hooks -------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        super().on_epoch_start(epoch, num_epochs)
        self.sums = self.pending = None

    def on_step_end(self, applied: bool) -> None:
        if applied and self.pending is not None:
            self.sums = self.pending if self.sums is None else self.sums + self.pending
        self.pending = None

    def on_epoch_end(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, Any]:
        sums = self.sums.clone() if self.sums is not None else torch.zeros(2, self.num_classes, dtype=torch.long, device=self.device)
        if reduce is not None:  # every rank takes part, even one that saw no batch
            sums = reduce(sums)
        sums, self.sums = sums.cpu(), None
        present = sums[1] > 0
        previous = self.r_train if self.r_train is not None else torch.zeros(self.num_classes, dtype=torch.float64)
        self.r_train = torch.where(present, sums[0].double() / sums[1].clamp_min(1).double(), previous)
        r32 = self.r_train.float()
        b = (self.params.lambda_reg + r32) * self.params.beta
        return {"r_train": self.r_train.tolist(), "eps_c": ((self.params.lambda_margin + r32) * self.attack.eps).tolist(),
                "beta_c": (b / (1 + b) if self.params.trades_form == "normalised" else b).tolist()}

    def validation_need(self) -> ValidationNeed | None:
        return ValidationNeed("after_epoch", self.params.fawa_pgd_steps) if self.params.fawa else None

    def on_validation(self, counts: ClassCounts, student: nn.Module, epoch: int) -> dict[str, Any]:
        present = counts.total > 0
        robust = counts.robust.double() / counts.total.clamp_min(1).double()
        r_min = float(robust[present].min()) if bool(present.any()) else 0.0
        admitted = r_min >= self.params.fawa_threshold
        if admitted:
            self.fawa_state = fawa_update(self.fawa_state, student.state_dict(), self.params.fawa_decay)
        return {"val_r_min": r_min, "fawa_updated": admitted, "fawa_started": self.fawa_state is not None}

    def report_state(self) -> dict[str, torch.Tensor] | None:
        return self.fawa_state

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"r_train": None if self.r_train is None else self.r_train.tolist()}
        if self.fawa_state is not None:
            state["fawa_state"] = self.fawa_state
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        r_train = state.get("r_train")
        if r_train is not None and len(r_train) != self.num_classes:
            raise UsageError(f"the checkpoint holds CFA accuracies for {len(r_train)} classes but this run has "
                             f"{self.num_classes}; resume with the dataset the run was started with")
        self.r_train = None if r_train is None else torch.tensor(r_train, dtype=torch.float64)
        fawa = state.get("fawa_state")
        self.fawa_state = None if fawa is None else {k: v.detach().cpu().clone() for k, v in fawa.items()}

    # -- the algorithm -----------------------------------------------------------------------
    def perturb(self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        a, trades = self.attack, self.params.base == "trades"
        target = None
        if trades:
            with torch.no_grad():
                target = F.softmax(full_precision(student(x)), dim=1)
        kind: dict[str, Any] = ({"loss": "kl", "target": target, "start": "gaussian", "clip_start": False} if trades
                                else {"loss": "ce", "start": "uniform", "clip_start": True})
        if self.params.ccm and self.calibrated:
            eps = self.class_factor(self.params.lambda_margin, y) * a.eps
            res = classwise_pgd(student, x, y, eps=eps, step_size=a.step_size, steps=a.steps, start_scale=0.001, **kind)
        else:
            res = pgd(student, x, y, eps=a.eps, step_size=a.step_size, steps=a.steps, start_scale=0.001,
                      count_kappa=True, **kind)
        return AttackOutput(x_adv=res.x_adv, kappa=res.kappa)

    def loss(
        self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
        adv: AttackOutput, sample_weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert adv.x_adv is not None, "cfa.loss needs the output of cfa.perturb"
        if self.params.base == "at":
            s_adv = student(adv.x_adv)
            loss = weighted_mean(ce_loss(s_adv, y), sample_weight)
            stats = {"ce_adv": loss.detach()}
        else:
            s_nat = student(x)
            s_adv = student(adv.x_adv)
            loss, stats = self.trades_loss(ce_loss(s_nat, y), soft_kl(s_nat, s_adv), y, sample_weight)
        self.record(s_adv.detach(), y)
        return loss, stats

    def trades_loss(self, ce: torch.Tensor, kl: torch.Tensor, y: torch.Tensor,
                    weight: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """TRADES in the chosen form, with CCR's per-sample ``b`` once calibrated, else the scalar beta."""
        p = self.params
        stats = {"ce": weighted_mean(ce, weight).detach(), "kl_adv": weighted_mean(kl, weight).detach()}
        per_class = p.ccr and self.calibrated
        b: torch.Tensor | float = self.class_factor(p.lambda_reg, y) * p.beta if per_class else p.beta
        if p.trades_form == "normalised":
            share = b / (1 + b)
            return weighted_mean((1 - share) * ce + share * kl, weight), stats
        if per_class:
            return weighted_mean(ce, weight) + weighted_mean(b * kl, weight), stats
        return weighted_mean(ce, weight) + p.beta * weighted_mean(kl, weight), stats

    def record(self, s_adv: torch.Tensor, y: torch.Tensor) -> None:
        """This batch's per-class correct adversarial outputs and counts (committed on an applied step)."""
        self.device = y.device
        correct = torch.zeros(self.num_classes, dtype=torch.long, device=y.device)
        correct.scatter_add_(0, y, s_adv.argmax(1).eq(y).long())
        self.pending = torch.stack([correct, torch.bincount(y, minlength=self.num_classes)])
