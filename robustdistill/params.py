"""Typed hyperparameters: every component's parameters are a frozen dataclass with defaults.

:func:`build_params` turns user values (from the CLI, a config file or the Python API) into an
instance of such a dataclass, checking names and types once, in one place, with one-line errors.
The dataclass's own ``__post_init__`` checks ranges (``require``).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Mapping

from .errors import UsageError

_MISSING = object()


def require(condition: bool, message: str) -> None:
    """Raise :class:`UsageError` with ``message`` (one line saying the fix) unless ``condition``."""
    if not condition:
        raise UsageError(message)


def hyperparameter(default: Any, help: str = "", aliases: tuple[str, ...] = ()) -> Any:
    """A parameters-dataclass field with a help line and older option names (``aliases``) for the CLI."""
    return dataclasses.field(default=default, metadata={"help": help, "aliases": aliases})


def field_types(params_cls: type) -> dict[str, Any]:
    """``{field name: resolved type}`` of a parameters dataclass."""
    hints = typing.get_type_hints(params_cls)
    return {f.name: hints.get(f.name, f.type) for f in dataclasses.fields(params_cls)}


def defaults(params_cls: type) -> dict[str, Any]:
    """The default value of every field of a parameters dataclass."""
    instance = params_cls()
    return {f.name: getattr(instance, f.name) for f in dataclasses.fields(params_cls)}


def _type_name(kind: Any) -> str:
    if typing.get_origin(kind) is typing.Literal:
        return " or ".join(repr(v) for v in typing.get_args(kind))
    return getattr(kind, "__name__", str(kind))


def coerce(owner: str, key: str, kind: Any, value: Any) -> Any:
    """Check and convert one value to its declared type (float, int, bool, str or a Literal)."""
    if typing.get_origin(kind) is typing.Literal:
        ok = value in typing.get_args(kind)
    elif kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float) and value.is_integer())
        value = int(value) if ok else value
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif kind is str:
        ok = isinstance(value, str)
    else:  # other annotations are taken as given (validated by the dataclass itself)
        ok = True
    if not ok:
        finite = "finite " if kind in (int, float) else ""
        raise UsageError(f"{key} of {owner} must be a {finite}{_type_name(kind)}, got {value!r}")
    return value


def build_params(params_cls: type, values: Mapping[str, Any] | None, owner: str) -> Any:
    """An instance of ``params_cls`` from ``values`` (unknown names and wrong types are one-line errors).

    ``None`` values mean "the default" (unset CLI flags).
    """
    types = field_types(params_cls)
    given = {k: v for k, v in (values or {}).items() if v is not None}
    unknown = sorted(k for k in given if k not in types)
    if unknown:
        valid = ", ".join(types) or "none (it has no hyperparameters)"
        raise UsageError(f"unknown hyperparameter(s) {', '.join(map(str, unknown))} for {owner}; valid: {valid}")
    return params_cls(**{k: coerce(owner, k, types[k], v) for k, v in given.items()})


def as_dict(params: Any) -> dict[str, Any]:
    """The fields of a parameters dataclass instance, in declaration order."""
    return {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
