"""Square Attack (Andriushchenko et al., ECCV 2020): score-based, L-infinity, no gradients.

It only queries the model's logits, so it runs on exported files (onnxruntime, TorchScript) as
well as on PyTorch models. The implementation is pyautoattack's ``SquareAttack`` (the one inside
AutoAttack), configured as AutoAttack ``standard`` configures it: margin loss, ``p_init=0.8``,
5,000 queries, one restart, no rescaled schedule. Inputs and ``eps`` are in [0, 1] pixel units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._utils import format_fraction, forked_rng


@dataclass(frozen=True)
class SquareSettings:
    """Parameters of the Square attack (defaults: AutoAttack ``standard``'s)."""

    eps: float
    n_queries: int = 5000
    p_init: float = 0.8
    seed: int = 0

    def describe(self) -> dict[str, Any]:
        """The evidence stored next to Square numbers."""
        from ._utils import versions

        return {"eps": self.eps, "eps_str": format_fraction(self.eps), "norm": "Linf", "n_queries": self.n_queries,
                "p_init": self.p_init, "loss": "margin", "restarts": 1, "seed": self.seed,
                "implementation": f"pyautoattack {versions()['pyautoattack']} SquareAttack"}


def square(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    n_queries: int = 5000,
    p_init: float = 0.8,
    seed: int = 0,
) -> torch.Tensor:
    """Per-sample robust flags under the Square attack (L-infinity, untargeted, margin loss).

    Args:
        model: maps [0, 1] images to logits; must be in eval mode (checked).
        x, y: a batch of images in [0, 1] and their labels.
        eps: the L-infinity budget in pixel units (always explicit; pyautoattack has no safe default).
        n_queries: query budget per sample. p_init: initial fraction of pixels in a square.
        seed: seeds the attack's random squares; the caller's RNG state is left untouched.

    Returns:
        A bool tensor: ``True`` where the model still predicts ``y`` on the attack's output
        (clean-misclassified samples are never robust).
    """
    from pyautoattack.square import SquareAttack

    if model.training:
        raise RuntimeError("the Square attack needs the model in eval mode")
    attack = SquareAttack(model, norm="Linf", n_queries=int(n_queries), eps=float(eps), p_init=float(p_init),
                          n_restarts=1, seed=int(seed), verbose=False, device=x.device, resc_schedule=False)
    with forked_rng(x.device), torch.no_grad():  # pyautoattack reseeds the global RNG
        x_adv = attack.perturb(x, y)
        return model(x_adv).argmax(1).eq(y)
