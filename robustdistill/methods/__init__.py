"""Distillation and adversarial-training strategies.

Each method is one module defining a :class:`~robustdistill.methods.base.Strategy` subclass
registered with :func:`~robustdistill.methods.spec.register_method`. The built-in modules are
imported here, explicitly; ``fair-<base>`` wraps any method that distils from a teacher in
:class:`~robustdistill.methods.fair.FairStrategy`. Build one with :func:`build_strategy`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from ..errors import UsageError
from ..params import build_params, defaults, field_types
# Registration order is the order of `robustdistill list methods`.
from . import ard, rslad, iad, kdiga, adaad, kd, mtard, absld  # noqa: F401, I001 - the built-in methods register themselves
from . import adversarial, standard, frl, cfa  # noqa: F401, I001 - teacher-free ones
from .base import AttackOutput, AttackSettings, ClassCounts, RunContext, Strategy, ValidationNeed, weighted_mean
from .fair import FairStrategy, class_weights
from .spec import (
    FAIR_PREFIX, METHODS, AttackMode, FairParams, MethodChoice, MethodSpec, list_methods, method_names, parse_method,
    register_method,
)

__all__ = [
    "FAIR_PREFIX", "METHODS", "AttackMode", "AttackOutput", "AttackSettings", "ClassCounts", "FairParams", "FairStrategy",
    "MethodChoice", "MethodSpec", "RunContext", "Strategy", "ValidationNeed", "build_strategy", "canonical_params", "class_weights",
    "hyperparameter_names", "list_methods", "method_defaults",
    "method_names", "parse_method", "register_method", "split_params", "weighted_mean",
]


def split_params(choice: MethodChoice, params: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Route hyperparameters to their owner: ``(base method's, Fair-ARD's)``.

    Names never clash (``register_method`` refuses a wrappable method that reuses a Fair-ARD
    name), so a flat mapping - CLI ``-p`` options, API keyword arguments - is unambiguous.
    Unknown names raise :class:`~robustdistill.errors.UsageError` listing the valid ones.
    """
    given = {k: v for k, v in (params or {}).items() if v is not None}
    fair_names = set(field_types(FairParams)) if choice.fair else set()
    base = {k: v for k, v in given.items() if k not in fair_names}
    fair = {k: v for k, v in given.items() if k in fair_names}
    if choice.fair:
        unknown = sorted(str(k) for k in base if k not in field_types(choice.base.params))
        if unknown:
            valid = ", ".join([*field_types(choice.base.params), *field_types(FairParams)])
            raise UsageError(f"unknown hyperparameter(s) {', '.join(unknown)} for method {choice.name!r}; valid: {valid}")
    return base, fair


def hyperparameter_names() -> dict[str, str]:
    """``{name or older alias: name}`` of every hyperparameter of every registered method and of Fair-ARD."""
    out: dict[str, str] = {}
    for params in [spec.params for spec in METHODS] + [FairParams]:
        for f in dataclasses.fields(params):
            out[f.name] = f.name
            out.update({alias: f.name for alias in f.metadata.get("aliases", ())})
    return out


def canonical_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """``params`` with older names (``temperature``, ``iad_beta``, ...) replaced by the current ones."""
    names = hyperparameter_names()
    out: dict[str, Any] = {}
    for key, value in (params or {}).items():
        name = names.get(str(key).replace("-", "_"), key)
        if name in out and out[name] != value:
            raise UsageError(f"hyperparameter {name} is given twice ({key}={value!r} and {name}={out[name]!r}); give it once")
        out[name] = value
    return out


def build_strategy(
    name: str | MethodChoice, params: Mapping[str, Any] | None = None, *, attack: AttackSettings | None = None,
    num_classes: int,
) -> Strategy:
    """Build a strategy by name (``fair-<base>`` wraps ``<base>`` in :class:`FairStrategy`).

    Args:
        name: a method name (see :func:`method_names`) or a parsed :class:`MethodChoice`.
        params: hyperparameters (base and Fair-ARD ones in one mapping; ``None`` values mean default).
        attack: training attack budget in [0, 1] pixel units (default 8/255, 2/255, 10 steps).
        num_classes: number of classes of the dataset.

    Raises:
        UsageError: unknown method, unknown hyperparameter, or a value out of range (one line).
    """
    choice = name if isinstance(name, MethodChoice) else parse_method(name)
    if num_classes < 2:
        raise UsageError(f"num_classes must be >= 2, got {num_classes}")
    base_values, fair_values = split_params(choice, canonical_params(params))
    owner = f"method {choice.name!r}"
    base = choice.base.strategy(build_params(choice.base.params, base_values, owner), attack=attack, num_classes=num_classes)
    if not choice.fair:
        return base
    fair = build_params(FairParams, fair_values, owner)
    return FairStrategy(base, **{k: getattr(fair, k) for k in field_types(FairParams)})


def method_defaults(name: str) -> dict[str, Any]:
    """The method's default hyperparameters (what :func:`build_strategy` resolves with no overrides)."""
    choice = parse_method(name)
    out = choice.base.default_params()
    if choice.fair:
        out.update(defaults(FairParams))
    return out
