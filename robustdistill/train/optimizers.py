"""Optimizers: registered, frozen specs that build a ``torch.optim`` optimizer from a :class:`TrainConfig`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Protocol

import torch

from ..errors import UsageError
from ..registry import Registry


class TrainConfig(Protocol):
    """What an optimizer reads of :class:`robustdistill.train.config.TrainConfig` (no import: config imports this module)."""

    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    nesterov: bool


Build = Callable[[Iterable[torch.nn.Parameter], "TrainConfig"], torch.optim.Optimizer]


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer.

    Attributes:
        name: what the ``optimizer`` setting accepts.
        description: one line for ``robustdistill list`` and the docs.
        build: ``build(parameters, config)`` -> the optimizer (the learning rate is then set every step).
        settings: the :class:`TrainConfig` fields it reads besides ``lr``; ``nesterov=True`` for an
            optimizer that does not read it is refused.
        validate: extra checks of the settings it reads (raise :class:`UsageError`), or ``None``.
    """

    name: str
    description: str
    build: Build
    settings: tuple[str, ...]
    validate: Callable[["TrainConfig"], None] | None = None

    def check(self, config: "TrainConfig") -> None:
        """Refuse settings this optimizer would silently ignore or cannot take."""
        if config.nesterov and "nesterov" not in self.settings:
            raise UsageError(f"--nesterov is a setting of the sgd optimizer, not of {self.name}; drop it or use sgd")
        if self.validate is not None:
            self.validate(config)


def _sgd(parameters: Iterable[torch.nn.Parameter], config: "TrainConfig") -> torch.optim.Optimizer:
    return torch.optim.SGD(
        parameters, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
        nesterov=config.nesterov and config.momentum > 0,  # torch refuses Nesterov without momentum
    )


def _adamw(parameters: Iterable[torch.nn.Parameter], config: "TrainConfig") -> torch.optim.Optimizer:
    # beta1 is Adam's momentum coefficient, so --momentum sets it (0.9 = torch's default betas).
    return torch.optim.AdamW(parameters, lr=config.lr, betas=(config.momentum, 0.999), weight_decay=config.weight_decay)


def _adamw_settings(config: "TrainConfig") -> None:
    if not 0.0 <= config.momentum < 1.0:
        raise UsageError(f"adamw uses --momentum as beta1, which must be in [0, 1), not {config.momentum}")


OPTIMIZERS: Registry[OptimizerSpec] = Registry("optimizer")
OPTIMIZERS.add(OptimizerSpec(
    "sgd", "SGD with momentum (and optional Nesterov) and L2 weight decay - every paper's choice", _sgd,
    ("momentum", "weight_decay", "nesterov"),
))
OPTIMIZERS.add(OptimizerSpec(
    "adamw", "AdamW (Loshchilov & Hutter): --momentum is beta1 (beta2 0.999), decoupled --weight-decay; "
             "usually wants a far smaller --lr (about 1e-3)", _adamw, ("momentum", "weight_decay"), _adamw_settings,
))


def build_optimizer(parameters: Iterable[torch.nn.Parameter], config: "TrainConfig") -> torch.optim.Optimizer:
    """The optimizer ``config.optimizer`` names, over ``parameters``."""
    return OPTIMIZERS.get(config.optimizer).build(parameters, config)


def list_optimizers() -> list[tuple[str, str]]:
    """``(name, description)`` of every registered optimizer."""
    return [(spec.name, spec.description) for spec in OPTIMIZERS]


__all__ = ["OPTIMIZERS", "OptimizerSpec", "build_optimizer", "list_optimizers"]
