"""L-infinity attacks in [0, 1] pixel space (normalisation lives inside the model).

``pgd`` is the one projected-gradient routine behind every attack here, in training and in
evaluation: losses CE, CW-margin or KL-to-target (or any per-sample callable), uniform or
Gaussian start, restarts, and an optional per-sample count of iterates the model still
classifies correctly (the kappa of GAIRAT / Fair-ARD). Gradients are taken w.r.t. the input only
(no parameter gradients are computed), and the loop never synchronises with the host.

``autoattack`` wraps pyautoattack (the reference AutoAttack) and returns per-sample robust flags.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Start = Literal["uniform", "gaussian", "none"]


# --------------------------------------------------------------------------- losses (per sample)
def full_precision(t: torch.Tensor) -> torch.Tensor:
    """Losses are computed in float32 under autocast (bf16/fp16 logits), float64 stays float64."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(full_precision(logits), y, reduction="none")


def cw_margin_loss(logits: torch.Tensor, y: torch.Tensor, confidence: float = 50.0) -> torch.Tensor:
    """``-max(z_y - max_{j != y} z_j + confidence, 0)``: maximising it pushes the margin below -confidence."""
    logits = full_precision(logits)
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return -(true - others + confidence).clamp(min=0)


def kl_to_target(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Per-sample ``KL(target || softmax(logits))`` (target first), summed over classes."""
    log_q = F.log_softmax(full_precision(logits), dim=1)
    return F.kl_div(log_q, full_precision(target_probs).to(log_q.dtype), reduction="none").sum(1)


# --------------------------------------------------------------------------- PGD
@dataclass
class PGDResult:
    """``x_adv`` in the eps-ball and [0, 1]; ``kappa[i]`` = iterates 0..K-1 still classified as ``y[i]``."""

    x_adv: torch.Tensor
    kappa: torch.Tensor | None = None


def random_start(x: torch.Tensor, eps: float, start: Start, scale: float = 0.001, clip: bool = False) -> torch.Tensor:
    """``x + U(-eps, eps)``, ``x + scale * N(0, I)`` or ``x``; clipped to [0, 1] only if ``clip``.

    The ARD/RSLAD training code does not clip the start before the first forward; evaluation does.
    """
    if start == "uniform":
        x0 = x + torch.empty_like(x).uniform_(-eps, eps)
    elif start == "gaussian":
        x0 = x + scale * torch.randn_like(x)
    elif start == "none":
        x0 = x.clone()
    else:
        raise ValueError(f"unknown start {start!r}; use uniform, gaussian or none")
    return x0.clamp(0.0, 1.0) if clip else x0


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Clip to the L-infinity ball around ``x``, then to [0, 1]."""
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def _loss_fn(loss: str | PerSampleLoss, y: torch.Tensor | None, target: torch.Tensor | None, confidence: float) -> PerSampleLoss:
    if callable(loss):
        return loss
    if loss == "ce":
        assert y is not None, "CE-PGD needs labels"
        return lambda logits, _x: ce_loss(logits, y)
    if loss == "cw":
        assert y is not None, "CW-PGD needs labels"
        return lambda logits, _x: cw_margin_loss(logits, y, confidence)
    if loss == "kl":
        assert target is not None, "KL-PGD needs target probabilities"
        return lambda logits, _x: kl_to_target(logits, target)
    raise ValueError(f"unknown PGD loss {loss!r}; use ce, cw, kl or a callable")


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    eps: float,
    step_size: float,
    steps: int,
    loss: str | PerSampleLoss = "ce",
    target: torch.Tensor | None = None,
    confidence: float = 50.0,
    start: Start = "uniform",
    start_scale: float = 0.001,
    clip_start: bool = False,
    restarts: int = 1,
    count_kappa: bool = False,
) -> PGDResult:
    """Projected sign-gradient ascent on a per-sample loss within the eps-ball (L-infinity).

    The model's mode (train/eval BatchNorm) is the caller's choice. With ``restarts > 1``
    (evaluation), each sample keeps the first restart that fools the model, else the last.
    ``count_kappa`` counts, per sample, the iterates ``x^0 .. x^{K-1}`` classified as ``y``
    (requires ``y``); it reuses the attack's own forward passes.
    """
    objective = _loss_fn(loss, y, target, confidence)
    if y is None and (restarts > 1 or count_kappa):
        raise ValueError("PGD restarts and count_kappa need labels y (to tell which samples are fooled)")
    x = x.detach()
    best: torch.Tensor | None = None
    fooled: torch.Tensor | None = None
    kappa: torch.Tensor | None = None
    for _ in range(max(1, restarts)):
        kappa = torch.zeros(x.shape[0], dtype=torch.long, device=x.device) if count_kappa else None
        x_adv = random_start(x, eps, start, start_scale, clip_start).detach()
        for _k in range(steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                logits = model(x_adv)
                if kappa is not None:
                    kappa += logits.detach().argmax(1).eq(y)
                grad, = torch.autograd.grad(objective(logits, x_adv).sum(), x_adv)
            x_adv = project(x_adv.detach() + step_size * grad.sign(), x, eps)
        if steps == 0:
            x_adv = project(x_adv, x, eps)
        if restarts <= 1:
            return PGDResult(x_adv.detach(), kappa)
        with torch.no_grad():
            wrong = model(x_adv).argmax(1).ne(y)
        if best is None:
            best, fooled = x_adv.detach(), wrong
        else:
            take = (~fooled) & wrong if fooled is not None else wrong
            best = torch.where(take[:, None, None, None], x_adv.detach(), best)
            fooled = fooled | wrong if fooled is not None else wrong
    assert best is not None
    return PGDResult(best, kappa)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, start: Start = "gaussian", start_scale: float = 0.001) -> torch.Tensor:
    """One signed CE step of size eps from ``x + 0.001 * N(0, I)`` (the Fair-ARD evaluation FGSM)."""
    return pgd(model, x, y, eps=eps, step_size=eps, steps=1, start=start, start_scale=start_scale, clip_start=True).x_adv


# --------------------------------------------------------------------------- AutoAttack
def autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    num_classes: int,
    version: str = "standard",
    seed: int = 0,
    batch_size: int = 250,
) -> torch.Tensor:
    """Per-sample robust flags under pyautoattack (reference AutoAttack, L-infinity).

    ``eps`` and the device are always passed explicitly (pyautoattack defaults to eps=0.3 and
    cpu); the model must be in eval mode. With fewer than 10 classes the targeted attacks use
    ``num_classes - 1`` target classes instead of 9 (the only change to ``standard``).
    ``version="fast"`` runs only the first two attacks of ``standard`` (APGD-CE and APGD-T, with
    ``standard``'s parameters): cheaper, and not the reference AutoAttack.
    A sample is robust iff its prediction on AutoAttack's output equals its label (clean-wrong
    samples are never robust).
    """
    from pyautoattack import AutoAttack

    if model.training:
        raise RuntimeError("AutoAttack needs the model in eval mode")
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    adversary = AutoAttack(model, norm="Linf", eps=float(eps), version="standard" if version == "fast" else version,
                           seed=seed, device=x.device)
    if version == "fast":
        adversary.attacks_to_run = ["apgd-ce", "apgd-t"]
    targets = min(9, num_classes - 1)
    adversary.apgd_targeted.n_target_classes = targets
    adversary.fab.n_target_classes = targets
    x_adv, y_adv = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    return y_adv.to(y.device).eq(y)
