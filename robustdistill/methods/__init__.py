"""Distillation and adversarial-training strategies (see :mod:`robustdistill.methods.base`).

Registered methods: ``ard``, ``rslad``, ``iad``, ``kdiga``, ``adaad``, ``kd`` (need a teacher),
``at``, ``trades`` (teacher-free), and ``fair-<base>`` for every method with a teacher
(:class:`~robustdistill.methods.fair.FairStrategy`). Build one with :func:`build_strategy`.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from ..errors import UsageError, did_you_mean
from . import _load_all  # noqa: F401 - registers every method
from .base import AttackOutput, AttackSettings, Strategy, get_method_class, method_names, register_method, weighted_mean
from .fair import FairStrategy, class_weights, fair_summary

__all__ = [
    "AttackOutput", "AttackSettings", "FairStrategy", "Strategy", "build_strategy", "class_weights",
    "get_method_class", "list_methods", "method_defaults", "method_names", "register_method", "weighted_mean",
]

FAIR_PREFIX = "fair-"


def _resolve(name: str) -> tuple[type[Strategy], bool]:
    """``(base class, is_fair)`` for a method name; unknown names raise :class:`UsageError`."""
    if name not in method_names():
        raise UsageError(did_you_mean(name, method_names(), "method"))
    fair = name.startswith(FAIR_PREFIX)
    return get_method_class(name[len(FAIR_PREFIX):] if fair else name), fair


def _field_types(params_cls: type) -> dict[str, Any]:
    return {f.name: f.type for f in fields(params_cls)}


def _coerce(method: str, key: str, kind: Any, value: Any) -> Any:
    """Check/convert one hyperparameter value to its declared type (float, int or bool)."""
    kind = getattr(kind, "__name__", kind)
    ok = True
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool) or (isinstance(value, float) and value.is_integer())
        value = int(value) if ok else value
    elif kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    if not ok:
        raise UsageError(f"hyperparameter {key} of method {method!r} must be a finite {kind}, got {value!r}")
    return value


def build_strategy(
    name: str, params: dict[str, Any] | None = None, *, attack: AttackSettings | None = None, num_classes: int,
) -> Strategy:
    """Build a strategy by name (``fair-<base>`` wraps ``<base>`` in :class:`FairStrategy`).

    Args:
        name: a registered method name (see :func:`list_methods`).
        params: hyperparameter overrides; keys must be fields of the method's ``Params`` (plus,
            for ``fair-*``: beta, clip_min, clip_max, eps_floor, kappa_steps). ``None`` values are
            ignored (the CLI passes ``None`` for unset flags).
        attack: training attack budget in [0, 1] pixel units (default 8/255, 2/255, 10 steps).
        num_classes: number of classes of the dataset.

    Raises:
        UsageError: unknown method, unknown hyperparameter, or a value out of range (one line).
    """
    cls, fair = _resolve(name)
    if num_classes < 2:
        raise UsageError(f"num_classes must be >= 2, got {num_classes}")
    base_types = _field_types(cls.Params)
    fair_types = _field_types(FairStrategy.Params) if fair else {}
    given = {k: v for k, v in (params or {}).items() if v is not None}
    unknown = sorted(k for k in given if k not in base_types and k not in fair_types)
    if unknown:
        valid = ", ".join([*base_types, *fair_types]) or "none (this method has no hyperparameters)"
        raise UsageError(f"unknown hyperparameter(s) {', '.join(unknown)} for method {name!r}; valid: {valid}")
    base_kwargs = {k: _coerce(name, k, base_types[k], v) for k, v in given.items() if k in base_types}
    base = cls(cls.Params(**base_kwargs), attack=attack, num_classes=num_classes)
    if not fair:
        return base
    fair_kwargs = {k: _coerce(name, k, fair_types[k], v) for k, v in given.items() if k in fair_types}
    return FairStrategy(base, **fair_kwargs)


def list_methods() -> list[tuple[str, str]]:
    """``(name, one-line summary)`` for every method, including the ``fair-`` variants."""
    rows = []
    for name in method_names():
        if name.startswith(FAIR_PREFIX):
            rows.append((name, fair_summary(name[len(FAIR_PREFIX):])))
        else:
            rows.append((name, get_method_class(name).summary))
    return rows


def method_defaults(name: str) -> dict[str, Any]:
    """The method's default hyperparameters (what :func:`build_strategy` resolves with no overrides)."""
    cls, fair = _resolve(name)
    base = cls.Params()
    out = {f.name: getattr(base, f.name) for f in fields(base)}
    if fair:
        extra = FairStrategy.Params()
        out.update({f.name: getattr(extra, f.name) for f in fields(extra)})
    return out
