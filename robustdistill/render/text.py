"""Formatting helpers shared by every renderer: percentages, intervals, p-values, labels, scope lines.

Accuracies arrive as fractions in [0, 1] and are shown as percentages; changes as signed
percentage points. ``–`` marks a value that does not exist (an absent class), ``n/a`` a statistic
that is undefined (a correlation without variance).
"""

from __future__ import annotations

import dataclasses

from typing import Any, Iterable, Mapping

from ..units import format_fraction
from ..metrics import ALPHA, PairedTest

# One entry per attack: {"source": where the numbers were read from, "computed": when they were made}.
Provenance = Mapping[str, Mapping[str, str]]

ATTACK_NAMES = {"clean": "Clean", "fgsm": "FGSM", "pgd": "PGD", "cw": "CW∞", "aa": "AutoAttack"}
HIDDEN_PARAMS = ("eps", "eps_str", "norm")  # stated once per report, not per attack


def pct(value: float | None, digits: int = 1) -> str:
    """``0.4567`` -> ``45.7``; ``–`` for None."""
    return "–" if value is None else f"{100 * value:.{digits}f}"


def fmt(value: float | None, digits: int = 2) -> str:
    """A plain number with ``digits`` decimals; ``n/a`` for None."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def ratio_pct(value: float | None) -> str:
    """A ratio as a whole percentage (``0.846`` -> ``85%``); ``n/a`` for None."""
    return "n/a" if value is None else f"{100 * value:.0f}%"


def signed_pts(value: float | None, digits: int = 1) -> str:
    """A change in accuracy as signed percentage points (``-0.1`` -> ``-10.0``); ``–`` for None."""
    return "–" if value is None else f"{100 * value:+.{digits}f}"


def interval_pct(ci: tuple[float, float] | None, digits: int = 1) -> str:
    """A 95 % interval of an accuracy in percent (``34.2–100.0``); ``–`` for None."""
    return "–" if ci is None else f"{100 * ci[0]:.{digits}f}–{100 * ci[1]:.{digits}f}"


def interval_pts(ci: tuple[float, float] | None, digits: int = 1) -> str:
    """A 95 % interval of a change in signed points (``-19.5 to -0.9``); ``–`` for None."""
    return "–" if ci is None else f"{100 * ci[0]:+.{digits}f} to {100 * ci[1]:+.{digits}f}"


def p_text(p: float | None) -> str:
    """``p = 0.031``; ``p < 0.001`` below that; ``p n/a`` for None."""
    if p is None:
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def p_cell(test: PairedTest | None) -> str:
    """A table cell with a paired test's p-value (``–`` when there is no test)."""
    if test is None:
        return "–"
    return "<0.001" if test.p_value < 0.001 else f"{test.p_value:.3f}"


def noise_word(test: PairedTest) -> str:
    """``significant`` (p < 0.05) or ``within noise``."""
    return "significant" if test.significant(ALPHA) else "within noise"


def interval_noise_word(ci: tuple[float, float] | None) -> str:
    """For a bootstrap interval of a change: ``within noise`` when it contains 0, else ``significant``."""
    return "within noise" if ci is None or ci[0] <= 0 <= ci[1] else "significant"


def attack_label(attack: str, params: Mapping[str, Any] | None = None) -> str:
    """The display name of an attack (``Clean``, ``PGD-20``, ``CW∞-20``, ``AutoAttack``), from its attack object.

    ``params`` are the parameters stored with the numbers; those that are fields of the attack
    (``steps``, ``version``) configure the object whose ``label`` is shown.
    """
    from ..evaluation import ATTACKS

    if attack not in ATTACKS:
        return attack
    default = ATTACKS.get(attack)
    fields = {f.name for f in dataclasses.fields(default)}
    try:
        return dataclasses.replace(default, **{k: v for k, v in (params or {}).items() if k in fields}).label
    except Exception:  # noqa: BLE001 - a label must never fail a report
        return default.label


def params_text(params: Mapping[str, Any]) -> str:
    """An attack's parameters as ``steps=20, step_size=2/255, ...`` (eps and norm are stated elsewhere)."""
    shown = {k: format_fraction(v) if k == "step_size" else v for k, v in params.items() if k not in HIDDEN_PARAMS}
    return ", ".join(f"{k}={v}" for k, v in shown.items())


def eps_text(eps: float) -> str:
    """The L∞ budget as written: ``0.2``, ``8/255``."""
    return format_fraction(eps)


def scope(dataset: str, split: str, n: int, eps: float) -> str:
    """``digits (test split, n = 360, L∞ eps 0.2)``: what every report's first line states."""
    return f"{dataset} ({split} split, n = {n}, L∞ eps {eps_text(eps)})"


def names_list(labels: Iterable[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    items = list(labels)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def reused_only(provenance: Mapping[str, Mapping[str, str]] | None) -> dict[str, dict[str, str]]:
    """The entries of a per-attack provenance that were reused from an earlier evaluation."""
    return {a: dict(p) for a, p in (provenance or {}).items() if p.get("source", "computed") != "computed"}


def provenance_lines(provenance: Provenance, labels: Mapping[str, str]) -> list[str]:
    """One sentence per distinct origin: ``Clean, PGD-20: reused from X, computed T.``

    Args:
        provenance: attack -> ``{"source", "computed"}`` for the reused attacks only.
        labels: attack -> display label, in the order to list them.
    """
    groups: dict[tuple[str, str], list[str]] = {}
    for attack, label in labels.items():
        origin = provenance.get(attack)
        if origin:
            groups.setdefault((origin.get("source", "?"), origin.get("computed", "time not recorded")), []).append(label)
    return [f"{', '.join(names)}: reused from {source}, computed {computed}." for (source, computed), names in groups.items()]
