"""Perturbation budgets in pixel units of [0, 1]: parsing ``8/255`` / ``0.031`` and showing them back."""

from __future__ import annotations

from fractions import Fraction

from .errors import UsageError


def parse_fraction(value: str | float | int, *, name: str = "eps") -> float:
    """Parse ``8/255``, ``0.0314`` or ``2/255`` into a float in pixel units of [0, 1].

    Values above 1 are refused: inputs live in [0, 1], so ``8`` almost always means ``8/255``.
    """
    if isinstance(value, (int, float)):
        result = float(value)
    else:
        text = str(value).strip()
        try:
            result = float(Fraction(text)) if "/" in text else float(text)
        except (ValueError, ZeroDivisionError):
            raise UsageError(f"{name} {text!r} is not a number; write it like 8/255 or 0.031") from None
    if result != result or result < 0 or result == float("inf"):
        raise UsageError(f"{name} must be a non-negative number in pixel units of [0, 1], got {value!r}")
    if result > 1:
        if result > 255:  # no pixel budget: do not suggest e.g. 1000000000/255
            raise UsageError(f"{name}={value} is out of range; images are in [0, 1], so write it like 8/255 or 0.031")
        shown = int(result) if float(result).is_integer() else result
        raise UsageError(
            f"{name}={value} is larger than 1 but images are in [0, 1]; did you mean {shown}/255?"
        )
    return result


def format_fraction(value: float) -> str:
    """Show a pixel budget as written: short decimals (0.2, 0.03) as decimals, else k/255 when it is one."""
    if round(value, 4) == value:
        return f"{value:g}"
    k = value * 255
    if abs(k - round(k)) < 1e-6 and round(k) != 0:
        return f"{round(k)}/255"
    return f"{value:.6g}"


__all__ = ["format_fraction", "parse_fraction"]
