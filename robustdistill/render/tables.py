"""rich tables for the terminal; every title states the model(s), dataset, split, n and eps."""

from __future__ import annotations

from typing import Sequence

from rich import box
from rich.table import Table
from rich.text import Text

from ..evaluation import EvaluationResult
from ..fairness import Comparison
from .markdown import attack_params, comparison_scope, result_scope
from .text import attack_label, fmt, names_list, p_cell, pct, ratio_pct


def evaluation_table(result: EvaluationResult, role: str | None = None) -> Table:
    """Overall accuracy, worst class and NSD per attack (one row per attack).

    Args:
        result: the evaluation.
        role: a prefix for the title (``student``, ``teacher``); the title always names the
            model, dataset, split, n and eps.
    """
    prefix = f"{role}: " if role else ""
    table = Table(title=f"{prefix}{result.model_id} on {result_scope(result)}")
    for name in ("attack", "accuracy %", "worst class %", "worst class", "NSD"):
        table.add_column(name, justify="left" if name in ("attack", "worst class") else "right")
    for attack, params in attack_params(result).items():
        s = result.summary(attack)
        table.add_row(attack_label(attack, params), pct(s.accuracy), pct(s.worst_class.accuracy),
                      Text(str(s.worst_class.name)), fmt(s.nsd, 3))
    return table


def per_class_table(result: EvaluationResult, max_classes: int = 20) -> Table | None:
    """Per-class accuracy with classes as rows and attacks as columns (None if more than ``max_classes``)."""
    if len(result.class_names) > max_classes:
        return None
    params = attack_params(result)
    summaries = {a: result.summary(a) for a in params}
    table = Table(title=f"per-class accuracy % of {result.model_id} on {result_scope(result)}")
    table.add_column("class")
    table.add_column("n", justify="right")
    for attack, p in params.items():
        table.add_column(attack_label(attack, p), justify="right")
    counts = next(iter(summaries.values())).class_counts
    for i, name in enumerate(result.class_names):
        table.add_row(Text(str(name)), str(counts[i]), *[pct(s.per_class[i]) for s in summaries.values()])
    return table


def summary_table(comparison: Comparison, attacks: Sequence[str] | None = None) -> Table:
    """One row per attack and model: accuracy, worst class, NSD and the comparison with the reference.

    Compact enough for an 80-column terminal with CIFAR-style class names.
    """
    ref = comparison.reference
    students = names_list([c.label for c in comparison.comparisons])
    table = Table(title=f"Robust fairness vs {ref}: {students} on {comparison_scope(comparison)}", box=box.SIMPLE_HEAD,
                  padding=(0, 0), show_edge=False,
                  caption="kept = student / reference accuracy; kept(w) = the same for each model's own worst class; "
                          "p = exact McNemar p of the accuracy change (< 0.05: beyond noise); r = Pearson of per-class "
                          "accuracy; >avg = classes that lost more than the overall loss.")
    for name, justify in (("attack", "left"), ("model", "left"), ("acc%", "right"), ("worst%", "right"), ("class", "left"),
                          ("NSD", "right"), ("kept", "right"), ("p", "right"), ("kept(w)", "right"), ("r", "right"),
                          (">avg", "right")):
        # Only class names may wrap, so labels and numbers stay whole on an 80-column terminal.
        table.add_column(name, justify=justify, no_wrap=name != "class", min_width=5 if name == "class" else None)  # type: ignore[arg-type]
    chosen = list(attacks or comparison.attacks)
    for a_i, attack in enumerate(chosen):
        for m_i, model in enumerate(comparison.models):
            s = model.results[attack]
            student = next((c for c in comparison.comparisons if c.label == model.label), None)
            c = None if student is None else student.attacks.get(attack)
            extra = ["ref", "", "ref", "", ""] if c is None else [
                ratio_pct(c.inherited_average), p_cell(c.accuracy_test), ratio_pct(c.inherited_worst), fmt(c.pearson),
                f"{c.classes_losing_more.count}/{c.classes_losing_more.of}"]
            # Text() so that names such as "run[2]" are not read as rich markup.
            table.add_row(attack_label(attack, comparison.settings.attacks[attack]) if m_i == 0 else "", Text(model.label),
                          pct(s.accuracy), pct(s.worst_class.accuracy), Text(str(s.worst_class.name)), fmt(s.nsd, 3), *extra,
                          end_section=m_i == len(comparison.models) - 1 and a_i < len(chosen) - 1)
    return table
