"""MTARD - Multi-Teacher Adversarial Robustness Distillation (Zhao, Yu, Wang, Chen, Ma, Wang; ECCV 2022)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Literal

import torch
from torch import nn

from ..attacks import pgd
from ..errors import UsageError
from ..params import hyperparameter, require
from .spec import AttackMode, register_method
from .base import AttackOutput, Strategy, frozen_logits, soft_kl, weighted_mean
from .rslad import TEACHER_LOG_OFFSET


@dataclass(frozen=True)
class Balance:
    """MTARD's normalised loss balance: the natural teacher's weight and the run's first losses.

    ``init_adv`` / ``init_nat`` are the losses of the first applied batch of the whole run (the
    released code keeps them for the entire run and does not save them; here they are in the
    checkpoint so a resumed run continues exactly).
    """

    omega_nat: float = 0.5
    init_adv: float | None = None
    init_nat: float | None = None

    def step(self, l_adv: float, l_nat: float, eta: float, power: float) -> "Balance":
        """The balance after one batch with losses ``l_adv``, ``l_nat`` (host floats, float64 arithmetic).

        ``r = (L / L0) ** power`` per teacher; ``omega_nat <- omega_nat - eta * (omega_nat - r_nat / (r_adv + r_nat))``:
        the teacher whose loss has fallen less (relative to its first value) gets the larger weight.
        Guards (not in the released code): the first losses are taken only when finite and positive,
        and a batch with a non-finite or zero ratio leaves the weight unchanged.
        """
        if not (math.isfinite(l_adv) and math.isfinite(l_nat)):
            return self
        if self.init_adv is None or self.init_nat is None:
            if l_adv <= 0 or l_nat <= 0:
                return self
            init_adv, init_nat = l_adv, l_nat
        else:
            init_adv, init_nat = self.init_adv, self.init_nat
        r_adv, r_nat = (l_adv / init_adv) ** power, (l_nat / init_nat) ** power
        total = r_adv + r_nat
        if not (math.isfinite(total) and total > 0):
            return replace(self, init_adv=init_adv, init_nat=init_nat)
        omega = self.omega_nat - eta * (self.omega_nat - r_nat / total)
        return Balance(omega, init_adv, init_nat)


@register_method(
    name="mtard", summary="MTARD: robust teacher on adversarial + natural teacher on clean inputs, normalised loss "
                          "balance (Zhao et al., ECCV 2022)",
    attack_mode=AttackMode.EVAL, schedule="rslad", epochs=300, extra_teachers=("natural",),
)
class MTARD(Strategy):
    """Multi-Teacher Adversarial Robustness Distillation with the released code's loss balance.

    Paper: Zhao et al., "Enhanced Accuracy and Robustness via Multi-Teacher Adversarial
    Distillation", ECCV 2022 (spec ``algorithms.md`` section 7.2); attack, loss and balance follow
    the released code (zhaoshiji123/MTARD). Threat model: L-infinity, eps = 8/255, inputs in [0, 1].

    Two teachers: the robust ``--teacher`` T_adv and a naturally trained ``--natural-teacher`` T_nat
    (any model identifier; e.g. ``train-teacher --method standard``). Both are checked against the
    data before the run starts.

    Inner maximisation (A3): hard-label CE-PGD on the student from ``x + 0.001 * N(0, I)`` (not
    clipped), 10 steps of 2/255, student in **eval** mode; kappa is counted (free for Fair-MTARD).

    Outer loss (student in train mode; forwards in the released order S(x_adv), T_adv(x_adv), S(x), T_nat(x))::

        L_adv = kl_scale * meanKL( p(T_adv(x_adv)) || p(S(x_adv)) )
        L_nat = kl_scale * meanKL( p(T_nat(x))     || p(S(x)) )
        L     = (1 - omega_nat) * L_adv + omega_nat * L_nat

    with RSLAD's element-wise KL ``p (log(p + 1e-5) - log q)``, meanKL = per-sample sum / C,
    reduced as ``sum_i w_i l_i / B`` (per-sample weights enter both terms, and the balance sees the
    weighted losses, as released Fair-MTARD does). Before the backward, ``omega_nat`` is updated
    from this batch's losses (:meth:`Balance.step`) with ``eta = omega_lr * lr_factor(epoch)``: the
    release decays eta x0.1 together with the learning rate (epochs 215, 260, 285 of 300 under the
    ``rslad`` schedule); with another schedule eta follows that schedule's factor at the start of
    the epoch (a generalisation). The update is committed only when the trainer applies the step
    (:meth:`on_step_end`); under DDP the losses are all-reduced first, so every process holds the
    same weight. Call :meth:`loss` exactly once per step.

    ``natural_target``: ``natural`` (default; MTARD, and the paper intent of Fair-MTARD) uses
    T_nat(x) as the natural term's target; ``robust-adv`` reproduces the released Fair-MTARD
    script, whose natural term targets the *robust* teacher's output on x_adv (the natural teacher
    is then not run and not needed).

    Defaults (released CIFAR-10 code): ``omega_lr = 0.025``, ``omega_nat_init = 0.5``,
    ``balance_power = 1``, ``kl_scale = 1`` (10 reproduces the released CIFAR-100 script; the ratios,
    hence omega, are unchanged by it). Schedule preset ``rslad`` (300 epochs), weight decay 2e-4.
    Not implemented: the entropy-based temperature balance of the journal extension B-MTARD.
    Stats: ``kl_adv``, ``kl_nat`` (meanKL before kl_scale), ``omega_nat``. Logged per epoch:
    ``omega_nat``, ``omega_nat_mean``, ``omega_lr``, ``init_adv``, ``init_nat``.
    """

    @dataclass(frozen=True)
    class Params:
        """Balance learning rate, initial natural weight, exponent, KL factor and the natural term's target."""

        omega_lr: float = hyperparameter(0.025, "MTARD: learning rate of the loss balance (decays with the lr)")
        omega_nat_init: float = hyperparameter(0.5, "MTARD: initial weight of the natural teacher's term")
        balance_power: float = hyperparameter(1.0, "MTARD: exponent on the relative losses of the balance")
        kl_scale: float = hyperparameter(1.0, "RSLAD: overall factor of both KL terms (10 in the released CIFAR-100 code)")
        natural_target: Literal["natural", "robust-adv"] = hyperparameter(
            "natural", "MTARD: target of the natural term: natural (T_nat(x)) or robust-adv (released Fair-MTARD)")

        def __post_init__(self) -> None:
            require(0.0 <= self.omega_lr <= 1.0, f"mtard: omega_lr must be in [0, 1], got {self.omega_lr}")
            require(0.0 <= self.omega_nat_init <= 1.0, f"mtard: omega_nat_init must be in [0, 1], got {self.omega_nat_init}")
            require(self.balance_power > 0, f"mtard: balance_power must be > 0, got {self.balance_power}")
            require(self.kl_scale > 0, f"mtard: kl_scale must be > 0, got {self.kl_scale}")
            require(self.natural_target in ("natural", "robust-adv"),
                    f"mtard: natural_target must be natural or robust-adv, got {self.natural_target!r}")

    def __init__(self, params: Any = None, attack: Any = None, num_classes: int = 10) -> None:
        super().__init__(params, attack, num_classes)
        self.balance = Balance(self.params.omega_nat_init)
        self.pending: Balance | None = None
        self.omega_sum, self.omega_steps = 0.0, 0

    @property
    def omega_lr(self) -> float:
        """eta of the current epoch: ``omega_lr`` times the schedule's factor."""
        return self.params.omega_lr * self.context.lr_factor(self.epoch)

    def natural_teacher(self) -> nn.Module:
        teacher = self.context.teachers.get("natural")
        if teacher is None:
            raise UsageError("mtard needs a natural teacher; pass --natural-teacher MODEL (e.g. a train-teacher "
                             "--method standard run's teacher.safetensors), or -p natural_target=robust-adv")
        return teacher

    # -- hooks -------------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        super().on_epoch_start(epoch, num_epochs)
        self.omega_sum, self.omega_steps, self.pending = 0.0, 0, None

    def on_step_end(self, applied: bool) -> None:
        if applied and self.pending is not None:
            self.balance = self.pending
            self.omega_sum += self.balance.omega_nat
            self.omega_steps += 1
        self.pending = None

    def on_epoch_end(self, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, Any]:
        mean = self.omega_sum / self.omega_steps if self.omega_steps else None
        return {"omega_nat": self.balance.omega_nat, "omega_nat_mean": mean, "omega_lr": self.omega_lr,
                "init_adv": self.balance.init_adv, "init_nat": self.balance.init_nat}

    def state_dict(self) -> dict[str, Any]:
        b = self.balance
        return {"omega_nat": b.omega_nat, "init_adv": b.init_adv, "init_nat": b.init_nat}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        init_adv, init_nat = state.get("init_adv"), state.get("init_nat")
        self.balance = Balance(float(state["omega_nat"]), None if init_adv is None else float(init_adv),
                               None if init_nat is None else float(init_nat))

    # -- the algorithm -----------------------------------------------------------------------
    def perturb(self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        res = pgd(
            student, x, y, eps=self.attack.eps, step_size=self.attack.step_size, steps=self.attack.steps,
            loss="ce", start="gaussian", start_scale=0.001, clip_start=False, count_kappa=True,
        )
        return AttackOutput(x_adv=res.x_adv, kappa=res.kappa)

    def loss(
        self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
        adv: AttackOutput, sample_weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        p = self.params
        assert adv.x_adv is not None, "mtard.loss needs the output of mtard.perturb"
        s_adv = student(adv.x_adv)
        t_adv = frozen_logits(teacher, adv.x_adv)
        s_nat = student(x)
        t_target = frozen_logits(self.natural_teacher(), x) if p.natural_target == "natural" else t_adv
        num_classes = s_adv.shape[1]
        kl_adv = weighted_mean(soft_kl(t_adv, s_adv, log_offset=TEACHER_LOG_OFFSET) / num_classes, sample_weight)
        kl_nat = weighted_mean(soft_kl(t_target, s_nat, log_offset=TEACHER_LOG_OFFSET) / num_classes, sample_weight)
        l_adv, l_nat = p.kl_scale * kl_adv, p.kl_scale * kl_nat
        self.pending = self.balance.step(*self.balance_losses(l_adv, l_nat, x.shape[0]), self.omega_lr, p.balance_power)
        omega_nat = self.pending.omega_nat
        loss = (1.0 - omega_nat) * l_adv + omega_nat * l_nat
        return loss, {"kl_adv": kl_adv.detach(), "kl_nat": kl_nat.detach(),
                      "omega_nat": torch.tensor(omega_nat, device=loss.device)}

    def balance_losses(self, l_adv: torch.Tensor, l_nat: torch.Tensor, batch: int) -> tuple[float, float]:
        """The two losses the balance sees, as host floats (one sync): this batch's, or under DDP their
        mean over every process (all-reduce of ``[B * L_adv, B * L_nat, B]`` in float64)."""
        if self.context.reduce is None:
            values = torch.stack([l_adv.detach(), l_nat.detach()]).tolist()
            return float(values[0]), float(values[1])
        size = float(batch)
        sums = torch.stack([l_adv.detach().double() * size, l_nat.detach().double() * size,
                            torch.tensor(size, dtype=torch.float64, device=l_adv.device)])
        total = self.context.reduce(sums).tolist()
        return total[0] / total[2], total[1] / total[2]
