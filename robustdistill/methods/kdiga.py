"""KDIGA - Knowledge Distillation with Input Gradient Alignment (Shao, Yi, Chen, Hsieh; 2021)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..attacks import ce_loss, full_precision
from ..params import hyperparameter, require
from .spec import AttackMode, register_method
from .base import AttackOutput, Strategy, soft_kl, weighted_mean


def input_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, sample_weight: torch.Tensor | None, *, create_graph: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logits, per-sample CE, g)`` with ``g = d/dx [sum_i w_i CE_i / B]`` from one forward at ``x``.

    ``x`` must require grad. With ``create_graph`` the gradient stays differentiable w.r.t. the
    model's parameters (double backprop).
    """
    with torch.enable_grad():
        logits = model(x)
        ce = ce_loss(logits, y)
        grad, = torch.autograd.grad(weighted_mean(ce, sample_weight), x, create_graph=create_graph)
    return logits, ce, grad


@register_method(
    name="kdiga", summary="KDIGA: clean KD plus input-gradient alignment with the teacher (Shao et al., arXiv 2021)",
    attack_mode=AttackMode.NONE, double_backward=True,
)
class KDIGA(Strategy):
    """Knowledge distillation with input gradient alignment (no adversarial examples).

    Paper: Shao, Yi, Chen, Hsieh, "How and When Adversarial Robustness Transfers in Knowledge
    Distillation?" (arXiv:2110.12072, 2021); the loss follows the first author's public code
    (method ``kdiga``; spec ``algorithms.md`` section 6). Threat model at test time: L-infinity on
    inputs in [0, 1]; training uses only clean inputs.

    Loss, with ``g_M = d/dx [ sum_i w_i CE(M(x_i), y_i) / B ]`` for M in {S, T}::

        L = alpha * tau^2 * meanKL( p^tau(T(x)) || p^tau(S(x)) ) + (1 - alpha) * CE(S(x), y)
          + (gamma / B) * || g_S - g_T ||_2

    * The norm is the Frobenius norm of the whole B x C x H x W batch gradient, **not squared**
      and not per sample (so, without BN coupling, ``(gamma / B^2) sqrt(sum_i w_i^2 ||g_S,i - g_T,i||^2)``).
    * ``g_S`` is built with ``create_graph=True`` (double backprop through the student, BN in
      train mode); ``g_T`` is a constant from one teacher forward + input-backward whose logits are
      reused for the KD term (the released code runs the teacher twice).
    * One student forward feeds the gradient, the KD and the CE terms (the released code runs two
      clean student forwards, so BN running statistics see the batch once here instead of twice).
    * Sample weights (Fair-KDIGA) weight each sample's CE *inside* both gradients and each sample's
      KD / CE term; with ``sample_weight=None`` the same arithmetic runs with ``w_i = 1``.
    * meanKL = per-sample KL summed over classes / C; CE = ``sum_i w_i CE_i / B``.

    Defaults (released code): ``alpha = 0.5``, ``tau = 1.0``, ``gamma = 0.5`` (the code's experiment
    list also shows gamma in {1, 10, 100}). Cost: no attack, but double backprop (~2-3x a KD step).
    Stats: ``kl``, ``ce``, ``grad_gap`` (``||g_S - g_T||_2 / B``, before gamma).
    """

    @dataclass(frozen=True)
    class Params:
        """alpha: KD weight (1 - alpha on CE); tau: temperature; gamma: weight of the alignment term."""

        alpha: float = 0.5
        tau: float = 1.0
        gamma: float = hyperparameter(0.5, "KDIGA: weight of the input-gradient alignment")

        def __post_init__(self) -> None:
            require(0.0 <= self.alpha <= 1.0, f"kdiga: alpha must be in [0, 1], got {self.alpha}")
            require(self.tau > 0, f"kdiga: tau must be > 0, got {self.tau}")
            require(self.gamma >= 0, f"kdiga: gamma must be >= 0, got {self.gamma}")

    def perturb(self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor) -> AttackOutput:
        return AttackOutput(x_adv=None, kappa=None)

    def loss(
        self, student: nn.Module, teacher: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
        adv: AttackOutput, sample_weight: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        p = self.params
        require(teacher is not None, "kdiga needs a teacher; pass one with --teacher")
        assert teacher is not None
        x_in = x.detach().requires_grad_(True)
        t_logits, _, g_t = input_gradient(teacher, x_in, y, sample_weight, create_graph=False)
        s_logits, s_ce, g_s = input_gradient(student, x_in, y, sample_weight, create_graph=True)
        batch = x.shape[0]
        kl = weighted_mean(soft_kl(t_logits.detach(), s_logits, p.tau) / s_logits.shape[1], sample_weight)
        ce = weighted_mean(s_ce, sample_weight)
        gap = torch.linalg.vector_norm(full_precision(g_s - g_t.detach())) / batch
        loss = p.alpha * p.tau**2 * kl + (1.0 - p.alpha) * ce + p.gamma * gap
        return loss, {"kl": kl.detach(), "ce": ce.detach(), "grad_gap": gap.detach()}
