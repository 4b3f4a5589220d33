"""PGD with a per-sample L-infinity budget (class-wise margins of CFA's CCM and FRL's remargin).

The budget ``eps_i`` of every sample is usually ``eps * m_{y_i}`` for a per-class multiplier
``m``. Methods call this only when some multiplier differs from 1; with uniform multipliers they
call :func:`robustdistill.attacks.pgd` with the scalar budget, so that their neutral settings
reproduce the plain method bit for bit (the tensor projection rounds differently).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from ..attacks import PGDResult, ce_loss, kl_to_target


def per_sample_start(x: torch.Tensor, eps: torch.Tensor, start: Literal["uniform", "gaussian", "none"],
                     scale: float = 0.001, clip: bool = False) -> torch.Tensor:
    """``x + eps_i * U(-1, 1)``, ``x + scale * N(0, I)`` or ``x``; clipped to [0, 1] only if ``clip``.

    Args:
        x: the clean batch in [0, 1].
        eps: per-sample budgets broadcastable to ``x`` (shape [B, 1, 1, 1]).
        start: the kind of random start.
        scale: standard deviation of the Gaussian start.
        clip: clip the start to [0, 1] before the first forward (the evaluation attacks do).
    """
    if start == "uniform":
        x0 = x + torch.empty_like(x).uniform_(-1.0, 1.0) * eps
    elif start == "gaussian":
        x0 = x + scale * torch.randn_like(x)
    else:
        x0 = x.clone()
    return x0.clamp(0.0, 1.0) if clip else x0


def classwise_pgd(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: torch.Tensor, step_size: float, steps: int,
    loss: Literal["ce", "kl"] = "ce", target: torch.Tensor | None = None,
    start: Literal["uniform", "gaussian", "none"] = "uniform", start_scale: float = 0.001, clip_start: bool = False,
) -> PGDResult:
    """Sign-gradient ascent within a per-sample L-infinity ball, counting kappa like :func:`~robustdistill.attacks.pgd`.

    Threat model: L-infinity ball of radius ``eps[i]`` around ``x[i]``, intersected with [0, 1].
    The model's BatchNorm mode is the caller's choice; only input gradients are taken.

    Args:
        model: the attacked model.
        x, y: the clean batch in [0, 1] and its labels (kappa is judged against ``y``).
        eps: shape [B], each sample's budget.
        step_size: the signed step (one float for the whole batch, as in the released code).
        steps: PGD iterations.
        loss: ``ce`` (hard label) or ``kl`` (``KL(target || p(model(x')))``, target probabilities [B, C]).
        start, start_scale, clip_start: see :func:`per_sample_start`.

    Returns:
        ``x_adv`` and per-sample kappa (iterates ``x^0 .. x^{K-1}`` classified as ``y``).
    """
    x = x.detach()
    radius = eps.to(x.device, x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    if loss == "kl" and target is None:
        raise ValueError("KL-PGD needs target probabilities")
    kappa = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    x_adv = per_sample_start(x, radius, start, start_scale, clip_start).detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            logits = model(x_adv)
            kappa += logits.detach().argmax(1).eq(y)
            objective = ce_loss(logits, y) if loss == "ce" else kl_to_target(logits, target)  # type: ignore[arg-type]
            grad, = torch.autograd.grad(objective.sum(), x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + step_size * grad.sign(), x - radius), x + radius).clamp_(0.0, 1.0)
    if steps == 0:
        x_adv = torch.min(torch.max(x_adv, x - radius), x + radius).clamp_(0.0, 1.0)
    return PGDResult(x_adv.detach(), kappa)


__all__ = ["classwise_pgd", "per_sample_start"]
