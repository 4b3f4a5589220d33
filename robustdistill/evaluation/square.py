"""Square Attack (Andriushchenko et al., ECCV 2020): score-based, L-infinity, no gradients.

It only queries the model's logits, so it runs on exported files (onnxruntime, TorchScript) as
well as on PyTorch models. The implementation is pyautoattack's ``SquareAttack`` (the one inside
AutoAttack), configured as AutoAttack ``standard`` configures it: margin loss, ``p_init=0.8``,
5,000 queries, one restart, no rescaled schedule. Inputs and ``eps`` are in [0, 1] pixel units.
It is part of AutoAttack already, so ``--attacks all`` does not add it a second time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..params import require
from ..rng import forked_rng
from .attacks import EvalAttack, register_attack


def square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, n_queries: int = 5000,
           p_init: float = 0.8, seed: int = 0) -> torch.Tensor:
    """Per-sample robust flags under the Square attack (L-infinity, untargeted, margin loss).

    Args:
        model: maps [0, 1] images to logits; must be in eval mode (checked).
        x, y: a batch of images in [0, 1] and their labels.
        eps: the L-infinity budget in pixel units (always explicit; pyautoattack has no safe default).
        n_queries: query budget per sample. p_init: initial fraction of pixels in a square.
        seed: seeds the attack's random squares; the caller's RNG state is left untouched.

    Returns:
        ``True`` where the model still predicts ``y`` on the attack's output (clean-misclassified
        samples are never robust).
    """
    from pyautoattack.square import SquareAttack

    if model.training:
        raise RuntimeError("the Square attack needs the model in eval mode")
    attack = SquareAttack(model, norm="Linf", n_queries=int(n_queries), eps=float(eps), p_init=float(p_init),
                          n_restarts=1, seed=int(seed), verbose=False, device=x.device, resc_schedule=False)
    with forked_rng(x.device), torch.no_grad():  # pyautoattack reseeds the global RNG
        x_adv = attack.perturb(x, y)
        return model(x_adv).argmax(1).eq(y)


@register_attack()
@dataclass(frozen=True)
class Square(EvalAttack):
    """The score-based Square attack alone (also runs on exported ONNX/TorchScript files)."""

    name: ClassVar[str] = "square"
    title: ClassVar[str] = "Square"
    description: ClassVar[str] = "Square Attack alone (score-based, 5000 queries; also runs on exported files)"
    seed_id: ClassVar[int] = 5
    needs_gradients: ClassVar[bool] = False
    in_all: ClassVar[bool] = False

    n_queries: int = 5000
    p_init: float = 0.8

    def __post_init__(self) -> None:
        require(self.n_queries >= 1, f"square: n_queries must be at least 1, got {self.n_queries}")
        require(0 < self.p_init <= 1, f"square: p_init must be in (0, 1], got {self.p_init}")

    @property
    def label(self) -> str:
        return f"{self.title}-{self.n_queries}"

    def implementation(self) -> str:
        from importlib import metadata

        return f"pyautoattack {metadata.version('pyautoattack')} SquareAttack / torch {torch.__version__}"

    def parameters(self, eps: float) -> dict[str, Any]:
        return {"eps": eps, "norm": "Linf", "n_queries": self.n_queries, "p_init": self.p_init, "loss": "margin",
                "restarts": 1}

    def correct(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, seed: int,
                num_classes: int) -> torch.Tensor:
        return square(model, x, y, eps=eps, n_queries=self.n_queries, p_init=self.p_init, seed=seed)
