"""Markdown reports: report.md of ``evaluate``, report.md of a distillation run, and fairness.md.

Every document's first line names the model(s), dataset, split, n and the L∞ eps as written; a
section says when its numbers were reused from an earlier evaluation, and from where.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..cost import retention_sentence
from ..evaluation import EvaluationResult
from ..fairness import AttackComparison, Comparison
from ..metrics import AttackSummary, wilson_interval
from .text import (Provenance, attack_label, eps_text, reused_only, fmt, interval_pct, interval_pts, names_list,
                   p_cell, params_text, pct, provenance_lines, ratio_pct, scope, signed_pts)
from .verdicts import verdicts

NSD_NOTE = ("NSD = population std of class accuracies / their mean. A sample counts as robust only if it is also "
            "classified correctly clean. Intervals are 95 % Wilson score intervals.")


@dataclass(frozen=True)
class RunHeader:
    """What a distillation run's report.md states about the run itself.

    Attributes:
        method: the method name (``fair-iad``).
        teacher: the teacher identifier, or None for teacher-free training.
        student: the student architecture.
        epochs: epochs trained.
        seed: the training seed.
        selection: how the reported epoch was chosen, in words (``last epoch (3)``).
        natural_teacher: MTARD's naturally trained second teacher, if the method used one.
    """

    method: str
    teacher: str | None
    student: str
    epochs: int
    seed: int
    selection: str
    natural_teacher: str | None = None


def result_scope(result: EvaluationResult) -> str:
    """``digits (test split, n = 360, L∞ eps 0.2)`` for one evaluation."""
    return scope(result.dataset, result.split, result.n_examples, result.settings.eps)


def comparison_scope(comparison: Comparison) -> str:
    """The same for a comparison (every model shares data and eps)."""
    d = comparison.data
    return scope(d.dataset, d.split, d.n_examples, comparison.settings.eps)


def attack_params(result: EvaluationResult) -> dict[str, dict[str, Any]]:
    """Each evaluated attack's parameters, as stored with its numbers."""
    return {a: result.attack(a).parameters(result.settings.eps) for a in result.correct}


def _provenance_block(provenance: Provenance, labels: Mapping[str, str]) -> list[str]:
    lines = provenance_lines(provenance, labels)
    return ["", *[f"Not attacked again in this run – {line}" for line in lines]] if lines else []


def _attacks_line(params: Mapping[str, Mapping[str, Any]], eps: float) -> str:
    described = [f"{attack_label(a, p)}: {params_text(p)}" for a, p in params.items() if p]
    return f"Attacks (L∞, eps {eps_text(eps)}): " + ("; ".join(described) if described else "none (clean only)") + "."


def _overall_ci(s: AttackSummary) -> tuple[float, float] | None:
    return wilson_interval(s.n_correct, s.n)


def _worst_ci(s: AttackSummary) -> tuple[float, float] | None:
    return None if s.worst_class.index is None else s.ci95[s.worst_class.index]


def _summary_rows(summaries: Mapping[str, AttackSummary], labels: Mapping[str, str]) -> list[str]:
    lines = ["| attack | accuracy % | worst class % | worst class | best − worst | NSD | accuracy 95% CI | worst class 95% CI |",
             "|---|---:|---:|---|---:|---:|---:|---:|"]
    for attack, s in summaries.items():
        lines.append(f"| {labels[attack]} | {pct(s.accuracy, 2)} | {pct(s.worst_class.accuracy, 2)} | {s.worst_class.name} | "
                     f"{pct(s.gap, 2)} | {fmt(s.nsd, 3)} | {interval_pct(_overall_ci(s))} | {interval_pct(_worst_ci(s))} |")
    return lines


def _class_rows(class_names: Sequence[str], summaries: Mapping[str, AttackSummary], labels: Mapping[str, str]) -> list[str]:
    counts = next(iter(summaries.values())).class_counts
    header = ("| class | n | " + " | ".join(labels.values()) + " | "
              + " | ".join(f"{label} 95% CI" for label in labels.values()) + " |")
    lines = [header, "|---|---:|" + "---:|" * (2 * len(labels))]
    for i, name in enumerate(class_names):
        cells = [pct(s.per_class[i]) for s in summaries.values()] + [interval_pct(s.ci95[i]) for s in summaries.values()]
        lines.append(f"| {name} | {counts[i]} | " + " | ".join(cells) + " |")
    return lines


def evaluation_markdown(result: EvaluationResult, heading: str | None = None, provenance: Provenance | None = None) -> str:
    """One model's evaluation as a ``##`` section: a row per attack, then per-class accuracy with intervals.

    Args:
        result: the evaluation.
        heading: the section title (default: the model id).
        provenance: attack -> ``{"source", "computed"}`` for attacks reused from an earlier
            evaluation (default: the result's own ``provenance``).
    """
    params = attack_params(result)
    labels = {a: attack_label(a, p) for a, p in params.items()}
    summaries = {a: result.summary(a) for a in params}
    origin = provenance if provenance is not None else reused_only(result.provenance)
    lines = [f"## {heading or result.model_id}", "",
             f"Model `{result.model_id}` on dataset **{result.dataset}** ({result.split} split, first {result.n_examples} "
             f"examples), L∞ eps = {eps_text(result.settings.eps)}, seed {result.settings.seed}.",
             *_provenance_block(origin, labels), "", *_summary_rows(summaries, labels), "",
             "Per-class accuracy (%) and its 95 % Wilson interval:", "",
             *_class_rows(result.class_names, summaries, labels), "", _attacks_line(params, result.settings.eps), NSD_NOTE]
    if result.cost is not None:
        lines += ["", f"Cost: {result.cost.summary()}."]
    return "\n".join(lines) + "\n"


def evaluation_document(result: EvaluationResult, provenance: Provenance | None = None) -> str:
    """report.md of ``robustdistill evaluate``: a first line stating model, data, n and eps, then the section."""
    return (f"# Robustness of {result.model_id} on {result_scope(result)}\n\n"
            + evaluation_markdown(result, heading="Results", provenance=provenance))


def cost_lines(comparison: Comparison) -> list[str]:
    """Per student, robustness kept against cost: "student keeps 78 % of teacher's worst-class AutoAttack at
    1/4 of its MACs" (headline attack; only when both models were profiled)."""
    ref, head = comparison.models[0], comparison.headline_attack
    if ref.cost is None:
        return []
    label = attack_label(head, comparison.settings.attacks[head])
    out = []
    for student in comparison.models[1:]:
        if student.cost is None:
            continue
        kept = retention_sentence(ref.cost, student.cost, ref.results[head].worst_class.accuracy or 0.0,
                                  student.results[head].worst_class.accuracy or 0.0, metric=f"worst-class {label}")
        out.append(kept.replace("the student", student.label, 1).replace("the teacher's", f"{ref.label}'s", 1) + ".")
    return out


def run_markdown(header: RunHeader, student: EvaluationResult, teacher: EvaluationResult | None = None,
                 comparison: Comparison | None = None, provenance: Mapping[str, Provenance] | None = None,
                 natural_teacher: EvaluationResult | None = None) -> str:
    """report.md of a distillation (or teacher-training) run.

    Args:
        header: the run's method, models, epochs, seed and model selection.
        student: the student's final test evaluation.
        teacher: the teacher's, if there is a teacher.
        comparison: student vs teacher (adds the verdicts and a link to fairness.md).
        provenance: role (``student``/``teacher``/``natural teacher``) -> per-attack provenance of reused evaluations.
        natural_teacher: the natural teacher's evaluation (MTARD), if the method used one.
    """
    provenance = provenance or {}
    origin = header.teacher or "no teacher (adversarial training)"
    natural = f" and natural teacher `{header.natural_teacher}`" if header.natural_teacher else ""
    lines = [f"# Distillation report: {header.method}, {origin} → {header.student} on {result_scope(student)}", "",
             (f"Teacher `{header.teacher}`{natural} → student `{header.student}`" if header.teacher else
              f"Teacher-free adversarial training of `{header.student}`") + f", {header.epochs} epochs, seed {header.seed}. "
             f"Model selection: {header.selection}; validation on a split carved from the training data, the test split "
             "is used only here.", "", evaluation_markdown(student, "Student", provenance.get("student"))]
    if teacher is not None:
        lines.append(evaluation_markdown(teacher, "Teacher", provenance.get("teacher")))
    if natural_teacher is not None:
        lines.append(evaluation_markdown(natural_teacher, "Natural teacher", provenance.get("natural teacher")))
    if comparison is not None:
        lines += ["## Robust fairness: student vs teacher", "", *verdicts(comparison), *cost_lines(comparison), "",
                  "Class-by-class tables and plots: [fairness.md](fairness.md).", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- fairness.md
def _md_models(comparison: Comparison, attack: str) -> list[str]:
    lines = ["| model | accuracy % | accuracy 95% CI | worst class % | worst class 95% CI | worst class | best − worst | NSD |",
             "|---|---:|---:|---:|---:|---|---:|---:|"]
    for m in comparison.models:
        s = m.results[attack]
        lines.append(f"| {m.label} | {pct(s.accuracy, 2)} | {interval_pct(_overall_ci(s))} | {pct(s.worst_class.accuracy, 2)} | "
                     f"{interval_pct(_worst_ci(s))} | {s.worst_class.name} | {pct(s.gap, 2)} | {fmt(s.nsd, 3)} |")
    return lines


def _student_row(label: str, a: AttackComparison) -> str:
    test, ref_worst, losing = a.accuracy_test, a.reference_worst_test, a.classes_losing_more
    cells = [label, signed_pts(a.accuracy.delta), interval_pts(a.accuracy.ci95), p_cell(test),
             ratio_pct(a.inherited_average), ratio_pct(a.inherited_worst),
             signed_pts(None if ref_worst is None else ref_worst.test.delta), p_cell(None if ref_worst is None else ref_worst.test),
             fmt(a.pearson), fmt(a.spearman), f"{losing.count} / {losing.of}", fmt(a.nsd.delta, 3),
             "–" if a.nsd.ci95 is None else f"{a.nsd.ci95[0]:+.3f} to {a.nsd.ci95[1]:+.3f}"]
    return "| " + " | ".join(cells) + " |"


def _md_students(comparison: Comparison, attack: str) -> list[str]:
    ref = comparison.reference
    worst = comparison.models[0].results[attack].worst_class.name
    lines = [f"| student | Δ accuracy (pts) | 95% CI (pts) | McNemar p | kept of {ref}'s avg | kept of {ref}'s worst | "
             f"Δ on {ref}'s worst class, {worst} (pts) | its p | Pearson r | Spearman ρ | classes losing > avg | Δ NSD | "
             "Δ NSD 95% CI |", "|---|" + "---:|" * 12]
    return lines + [_student_row(c.label, c.attacks[attack]) for c in comparison.comparisons]


def _md_per_class(comparison: Comparison, attack: str) -> list[str]:
    models, comps = comparison.models, comparison.comparisons
    header = ("| class | n | " + " | ".join(f"{m.label} %" for m in models) + " | "
              + " | ".join(f"Δ {c.label}" for c in comps) + " | " + " | ".join(f"p {c.label}" for c in comps) + " |")
    lines = [header, "|---|---:|" + "---:|" * (len(models) + 2 * len(comps))]
    for i, name in enumerate(comparison.data.class_names):
        cells = [pct(m.results[attack].per_class[i]) for m in models]
        cells += [signed_pts(c.attacks[attack].per_class_delta[i]) for c in comps]
        tests = [c.attacks[attack].per_class_tests for c in comps]
        cells += [p_cell(None if t is None else t[i]) for t in tests]
        lines.append(f"| {name} | {comparison.data.class_counts[i]} | " + " | ".join(cells) + " |")
    return lines


def _md_evidence(comparison: Comparison, provenance: Mapping[str, Provenance] | None) -> list[str]:
    labels = {a: attack_label(a, p) for a, p in comparison.settings.attacks.items()}
    lines = ["", "## Models", ""]
    for m in comparison.models:
        sha = m.info.get("sha256")
        role = " (reference)" if m.role == "reference" else ""
        lines.append(f"- **{m.label}**{role}: `{m.id}`" + (f", sha256 {sha[:16]}…" if sha else "") + f", evaluation seed {m.seed}.")
        origin = (provenance or {}).get(m.label) or reused_only(m.provenance)
        lines += [f"  Not attacked again – {line}" for line in provenance_lines(origin, labels)]
    return lines


def fairness_markdown(comparison: Comparison, images: Sequence[Path] = (), provenance: Mapping[str, Provenance] | None = None,
                      notes: Mapping[str, Sequence[str]] | None = None) -> str:
    """fairness.md: verdicts, then per attack the models, the student-vs-reference numbers and the per-class table.

    Args:
        comparison: the numbers.
        images: PNGs to embed (``*_<attack>.png`` go under that attack).
        provenance: model label -> per-attack provenance of reused evaluations.
        notes: attack -> sentences to print under that attack's plots (e.g. skipped plot panels).
    """
    d, s = comparison.data, comparison.settings
    head = comparison.headline_attack
    students = names_list([c.label for c in comparison.comparisons])
    lines = [f"# Robust fairness: {students} vs {comparison.reference} on {comparison_scope(comparison)}", "",
             f"Reference: **{comparison.reference}**. Dataset **{d.dataset}** ({d.split} split, first {d.n_examples} "
             f"examples, {len(d.class_names)} classes), L∞ eps = {eps_text(s.eps)}. "
             f"Headline attack: {attack_label(head, s.attacks[head])}.", "", "## Verdict", ""]
    lines += [f"- {v}" for v in [*verdicts(comparison), *cost_lines(comparison)]]
    many = len(d.class_names) > 20
    for attack, params in s.attacks.items():
        label = attack_label(attack, params)
        lines += ["", f"## {label}", "", *_md_models(comparison, attack), "", *_md_students(comparison, attack)]
        if not many or attack == head:
            lines += ["", f"Per-class {label} accuracy (%), change vs {comparison.reference} (points) and its McNemar p:",
                      "", *_md_per_class(comparison, attack)]
        lines += [""] + [f"![{p.stem}]({p.name})" for p in images if p.stem.endswith(f"_{attack}")]
        lines += list((notes or {}).get(attack, ()))
    lines += _md_evidence(comparison, provenance)
    lines += ["", "## Definitions", ""] + [f"- **{k}**: {v}" for k, v in comparison.definitions.items()]
    lines += ["", _attacks_line(s.attacks, s.eps), "A sample counts as robust only if it is also classified correctly "
              "without attack. Intervals of accuracies are 95 % Wilson score intervals."]
    return "\n".join(lines) + "\n"
