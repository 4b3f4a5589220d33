"""Robust fairness: does a student inherit its teacher's robustness evenly across classes?

The first model handed to :func:`compare` is the *reference* (usually the teacher); every other
model is a *student* compared with it, attack by attack. All numbers come from per-sample
results (:class:`~robustdistill.evaluation.EvaluationResult`), so they are exact.

Per model and attack (the same dict as ``results[attack]`` in an evaluation report.json, see
:func:`robustdistill.metrics.summarize`): overall accuracy, per-class accuracy, worst and best
class, ``gap`` = best - worst, ``nsd`` = population std (ddof=0) of the class accuracies over their
unweighted mean, 95 % Wilson intervals.

Per student and attack, against the reference (``r`` = reference, ``s`` = student, ``acc`` =
overall accuracy, ``acc_c`` = accuracy on class ``c``, ``worst`` = the model's own worst class):

* ``inherited_average`` = ``s.acc / r.acc`` (None when ``r.acc`` is 0).
* ``inherited_worst`` = ``s.worst / r.worst`` (None when ``r.worst`` is 0). The two worst classes
  may differ; ``student_on_reference_worst`` gives the student's accuracy on the reference's one.
* ``per_class_delta[c]`` = ``s.acc_c - r.acc_c`` (None for classes absent from the subset).
* ``pearson`` = Pearson correlation over the classes of (``r.acc_c``, ``s.acc_c``): does the
  student keep the reference's class profile? ``spearman`` = Pearson of the average ranks. Both
  are None ("n/a") when either side has zero variance or fewer than two classes are present.
* ``average_loss`` = ``r.acc - s.acc``; ``classes_losing_more`` counts the classes whose loss
  ``r.acc_c - s.acc_c`` is strictly larger than ``average_loss``. The comparison uses exact
  fractions of the hit counts, so ties are not decided by rounding.
* ``nsd`` and ``gap``: reference, student and ``delta`` = student - reference (positive = less even).
* ``verdict``: one or two plain sentences, e.g. "student keeps 93% of teacher's average PGD-20
  robustness (45.0% vs 48.4%) but only 61% on its worst class, cat (12.0% vs 19.7%)." followed by
  the profile (Pearson r, classes losing more than average, NSD). "but only" is used when the
  worst-class ratio is more than 5 points below the average ratio, "and" otherwise; "keeps"
  becomes "reaches" above 100 %.

The headline attack (whose verdict is the comparison's ``verdict``) is ``aa`` if present, else
``pgd``, else the non-clean attack on which the reference is least accurate, else ``clean``.

fairness.json (schema ``robustdistill/fairness@1``)::

    schema, created, versions
    reference: label of the reference model;  headline_attack: attack name
    data: {dataset, split, n_examples, class_names, class_counts}
    settings: {eps, eps_str, attacks: {attack: parameters}}     (shared by every model)
    models: [{label, role: reference|student, id, seed, info, results: {attack: summary}}]
    comparisons: [{label, reference, verdict, attacks: {attack: {
        accuracy: {reference, student, delta}, inherited_average, inherited_worst,
        worst_class: {reference: {index, name, accuracy}, student: {...}},
        student_on_reference_worst, per_class_delta: [..], pearson, spearman,
        average_loss, classes_losing_more: {count, of, names}, nsd: {reference, student, delta},
        gap: {reference, student, delta}, verdict}}}]
    definitions: {name: one-line definition}

Accuracies are fractions in [0, 1]; Markdown, tables and plots show percentages.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from rich.table import Table
from rich.text import Text

from ._utils import atomic_write_json, atomic_write_text, format_fraction, versions
from .errors import UsageError
from .evaluation import ATTACKS, EvalSettings, EvaluationResult, parse_attacks
from .report import attack_label, class_order, figure_size, pct, plot_per_class, save_figure

if TYPE_CHECKING:
    from .api import ModelOptions

SCHEMA = "robustdistill/fairness@1"
EVALUATION_SCHEMA = "robustdistill/evaluation@1"
DISTILL_SCHEMA = "robustdistill/distill@1"
SELECTORS = ("student", "teacher")
BUT_ONLY_MARGIN = 0.05  # worst-class ratio this far below the average ratio reads as "but only"

DEFINITIONS = {
    "accuracy": "overall fraction of the examples classified correctly (robust: correct clean and under the attack)",
    "worst_class": "class with the lowest accuracy (ties: lowest index)",
    "gap": "best-class accuracy minus worst-class accuracy",
    "nsd": "population std (ddof=0) of the class accuracies divided by their unweighted mean",
    "inherited_average": "student accuracy / reference accuracy",
    "inherited_worst": "student worst-class accuracy / reference worst-class accuracy (own worst classes)",
    "per_class_delta": "student class accuracy - reference class accuracy",
    "pearson": "Pearson correlation of per-class accuracies (student vs reference); null when either has zero variance",
    "spearman": "Spearman rank correlation (average ranks for ties) of per-class accuracies",
    "average_loss": "reference accuracy - student accuracy",
    "classes_losing_more": "classes whose (reference - student) accuracy exceeds average_loss, compared exactly",
}


# --------------------------------------------------------------------------- statistics
def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Pearson correlation; None with fewer than two points or zero variance on either side."""
    if len(xs) != len(ys) or len(xs) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx <= 1e-24 or syy <= 1e-24:
        return None
    return max(-1.0, min(1.0, sxy / math.sqrt(sxx * syy)))


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the mean of their ranks."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman rank correlation (Pearson of average ranks); None like :func:`pearson`."""
    return pearson(average_ranks(xs), average_ranks(ys))


def _ratio(num: float | None, den: float | None) -> float | None:
    return None if num is None or not den else num / den


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


# --------------------------------------------------------------------------- compatibility
def _refuse(ref: str, other: str, what: str, a: Any, b: Any, fix: str) -> UsageError:
    return UsageError(f"cannot compare {other} with {ref}: {what} differs ({ref}: {a}, {other}: {b}); {fix}")


def _attack_params(settings: EvalSettings, attack: str) -> dict[str, Any]:
    """The settings that change an attack's numbers (not seed or library versions)."""
    return {
        "clean": {}, "fgsm": {},
        "pgd": {"pgd_steps": settings.pgd_steps, "step_size": settings.step, "restarts": settings.pgd_restarts},
        "cw": {"cw_steps": settings.cw_steps, "step_size": settings.step, "cw_confidence": settings.cw_confidence},
        "aa": {"aa_version": settings.aa_version},
    }[attack]


def _check_data(ref: tuple[str, EvaluationResult], other: tuple[str, EvaluationResult]) -> None:
    (rl, r), (ol, o) = ref, other
    fix = "evaluate every model on the same data"
    if len(r.class_names) != len(o.class_names):
        raise _refuse(rl, ol, "the number of classes", len(r.class_names), len(o.class_names), "models must share one label set")
    for what, a, b in (("dataset", r.dataset, o.dataset), ("split", r.split, o.split),
                       ("n_examples", r.n_examples, o.n_examples)):
        if a != b:
            raise _refuse(rl, ol, what, a, b, fix + (" (same --n-examples)" if what == "n_examples" else ""))
    if tuple(r.class_names) != tuple(o.class_names):
        first = next(i for i, (a, b) in enumerate(zip(r.class_names, o.class_names)) if a != b)
        raise _refuse(rl, ol, f"class name {first}", r.class_names[first], o.class_names[first], "models must share one label set")
    if not bool((r.labels.cpu() == o.labels.cpu()).all()):
        first = int((r.labels.cpu() != o.labels.cpu()).nonzero()[0])
        raise _refuse(rl, ol, f"the label of example {first}", int(r.labels[first]), int(o.labels[first]),
                      "both evaluations must use the same examples in the same order")


def _check_settings(ref: tuple[str, EvaluationResult], other: tuple[str, EvaluationResult], attacks: Sequence[str]) -> None:
    (rl, r), (ol, o) = ref, other
    if abs(r.settings.eps - o.settings.eps) > 1e-9:
        raise _refuse(rl, ol, "eps", format_fraction(r.settings.eps), format_fraction(o.settings.eps),
                      "evaluate every model at the same --eps")
    for attack in attacks:
        a, b = _attack_params(r.settings, attack), _attack_params(o.settings, attack)
        for key in a:
            if a[key] != b[key]:
                raise _refuse(rl, ol, f"{attack} {key}", a[key], b[key], "re-evaluate with the same attack settings")


def common_attacks(entries: Sequence[tuple[str, EvaluationResult]], attacks: Sequence[str] | None = None) -> list[str]:
    """The attacks to compare: ``attacks`` if given (every model must have them), else the shared set.

    Raises:
        UsageError: a model lacks a requested attack, or (without ``attacks``) the models were
            evaluated under different attacks.
    """
    ref_label, ref = entries[0]
    if attacks is not None:
        wanted = parse_attacks(list(attacks))
        for label, result in entries:
            missing = [a for a in wanted if a not in result.correct]
            if missing:
                raise UsageError(f"{label} has no {', '.join(missing)} results (it has {', '.join(result.correct)}); "
                                 f"drop {', '.join(missing)} from --attacks or re-evaluate {label}")
        return wanted
    for label, result in entries[1:]:
        if set(result.correct) != set(ref.correct):
            shared = [a for a in ATTACKS if a in ref.correct and a in result.correct]
            raise _refuse(ref_label, label, "the set of attacks", ",".join(ref.correct), ",".join(result.correct),
                          f"pass --attacks {','.join(shared)} to compare the common ones")
    return [a for a in ATTACKS if a in ref.correct]


def check_compatible(entries: Sequence[tuple[str, EvaluationResult]], attacks: Sequence[str] | None = None) -> list[str]:
    """Refuse, in one line, evaluations that cannot be compared; return the attacks to compare."""
    if len(entries) < 2:
        raise UsageError("fairness needs at least two models: the reference (e.g. the teacher) and one student")
    labels = [label for label, _ in entries]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise UsageError(f"two models are labelled {duplicates[0]!r}; give each a distinct label (--labels)")
    for other in entries[1:]:
        _check_data(entries[0], other)
    chosen = common_attacks(entries, attacks)
    for other in entries[1:]:
        _check_settings(entries[0], other, chosen)
    return chosen


# --------------------------------------------------------------------------- comparison
def headline_attack(reference: dict[str, dict[str, Any]]) -> str:
    """``aa`` if present, else ``pgd``, else the non-clean attack the reference does worst on, else clean."""
    for attack in ("aa", "pgd"):
        if attack in reference:
            return attack
    others = [a for a in ATTACKS if a in reference and a != "clean"]
    if others:
        return min(others, key=lambda a: (reference[a]["accuracy"], ATTACKS.index(a)))
    return "clean" if "clean" in reference else next(iter(reference))


def _losing_more(ref: dict[str, Any], stu: dict[str, Any], class_names: Sequence[str]) -> dict[str, Any]:
    """Classes whose loss exceeds the overall loss, compared as exact fractions of hit counts."""
    average = Fraction(ref["n_correct"] - stu["n_correct"], ref["n"]) if ref["n"] else Fraction(0)
    names = []
    present = [i for i, n in enumerate(ref["class_counts"]) if n]
    for i in present:
        loss = Fraction(ref["class_correct"][i] - stu["class_correct"][i], ref["class_counts"][i])
        if loss > average:
            names.append(class_names[i])
    return {"count": len(names), "of": len(present), "names": names}


def compare_attack(ref: dict[str, Any], stu: dict[str, Any], class_names: Sequence[str]) -> dict[str, Any]:
    """Student-vs-reference numbers for one attack, from two :func:`~robustdistill.metrics.summarize` dicts."""
    both = [i for i, (a, b) in enumerate(zip(ref["per_class"], stu["per_class"])) if a is not None and b is not None]
    xs, ys = [ref["per_class"][i] for i in both], [stu["per_class"][i] for i in both]
    ref_worst, stu_worst = ref["worst_class"], stu["worst_class"]
    return {
        "accuracy": {"reference": ref["accuracy"], "student": stu["accuracy"], "delta": _delta(stu["accuracy"], ref["accuracy"])},
        "inherited_average": _ratio(stu["accuracy"], ref["accuracy"]),
        "inherited_worst": _ratio(stu_worst["accuracy"], ref_worst["accuracy"]),
        "worst_class": {"reference": ref_worst, "student": stu_worst},
        "student_on_reference_worst": None if ref_worst["index"] is None else stu["per_class"][ref_worst["index"]],
        "per_class_delta": [_delta(b, a) for a, b in zip(ref["per_class"], stu["per_class"])],
        "pearson": pearson(xs, ys),
        "spearman": spearman(xs, ys),
        "average_loss": _delta(ref["accuracy"], stu["accuracy"]),
        "classes_losing_more": _losing_more(ref, stu, class_names),
        "nsd": {"reference": ref["nsd"], "student": stu["nsd"], "delta": _delta(stu["nsd"], ref["nsd"])},
        "gap": {"reference": ref["gap"], "student": stu["gap"], "delta": _delta(stu["gap"], ref["gap"])},
    }


def _quantity(attack: str, label: str) -> str:
    return "clean accuracy" if attack == "clean" else f"{label} robustness"


def _average_clause(student: str, reference: str, quantity: str, c: dict[str, Any]) -> str:
    acc = c["accuracy"]
    ratio = c["inherited_average"]
    if ratio is None:
        return f"{student} reaches {pct(acc['student'])}% average {quantity} where {reference} has {pct(acc['reference'])}%"
    verb = "keeps" if ratio <= 1 else "reaches"
    return (f"{student} {verb} {100 * ratio:.0f}% of {reference}'s average {quantity} "
            f"({pct(acc['student'])}% vs {pct(acc['reference'])}%)")


def _worst_clause(reference: str, c: dict[str, Any]) -> str:
    rw, sw = c["worst_class"]["reference"], c["worst_class"]["student"]
    ratio, average = c["inherited_worst"], c["inherited_average"]
    if ratio is None:
        return (f"; {reference}'s worst class, {rw['name']}, is at {pct(rw['accuracy'])}% so there is no worst-class ratio "
                f"(its worst class, {sw['name']}, is at {pct(sw['accuracy'])}%)")
    joint = "but only" if average is not None and ratio < average - BUT_ONLY_MARGIN else "and"
    where = "" if rw["index"] == sw["index"] else f" on {reference}'s worst class, {rw['name']}"
    return (f" {joint} {100 * ratio:.0f}% on its worst class, {sw['name']} "
            f"({pct(sw['accuracy'])}% vs {pct(rw['accuracy'])}%{where})")


def _profile_sentence(reference: str, c: dict[str, Any]) -> str:
    r, rho = c["pearson"], c["spearman"]
    corr = "n/a (no variation across classes)" if r is None else f"{r:.2f}" + ("" if rho is None else f" (Spearman {rho:.2f})")
    losing = c["classes_losing_more"]
    avg = c["average_loss"] or 0.0
    if avg >= 0:
        moved = f"{losing['count']} of {losing['of']} classes lost more than the average {100 * avg:.1f} points"
    else:
        moved = f"{losing['count']} of {losing['of']} classes gained less than the average {-100 * avg:.1f} points"
    nsd = c["nsd"]
    even = ""
    if nsd["delta"] is not None:
        word = "less even" if nsd["delta"] > 0.005 else "more even" if nsd["delta"] < -0.005 else "as even"
        even = f"; NSD {nsd['student']:.3f} vs {nsd['reference']:.3f} ({word})"
    return f"Class profile vs {reference}: Pearson r = {corr}; {moved}{even}."


def verdict(student: str, reference: str, attack_name: str, attack: str, c: dict[str, Any]) -> str:
    """Plain-words summary of one :func:`compare_attack` result (see the module docstring)."""
    quantity = _quantity(attack, attack_name)
    return f"{_average_clause(student, reference, quantity, c)}{_worst_clause(reference, c)}. {_profile_sentence(reference, c)}"


def _model_entry(label: str, role: str, result: EvaluationResult, attacks: Sequence[str]) -> dict[str, Any]:
    return {"label": label, "role": role, "id": result.model_id, "seed": result.settings.seed,
            "info": dict(result.model_info), "results": {a: result.summary(a) for a in attacks}}


def compare(entries: Sequence[tuple[str, EvaluationResult]], *, attacks: Sequence[str] | None = None) -> dict[str, Any]:
    """Compare every model with the first (the reference), per attack; JSON-ready (``robustdistill/fairness@1``).

    Args:
        entries: ``(label, result)`` pairs; the first is the reference (usually the teacher).
        attacks: restrict to these attacks (every model must have them). By default all models
            must have been evaluated under the same attacks.

    Returns:
        The comparison dict described in the module docstring.

    Raises:
        UsageError: one line naming the setting that differs between two models and both values
            (class count, dataset, split, n_examples, class names, labels, eps, attack parameters,
            attacks), or duplicate labels.
    """
    chosen = check_compatible(entries, attacks)
    ref_label, ref = entries[0]
    models = [_model_entry(label, "reference" if k == 0 else "student", result, chosen) for k, (label, result) in enumerate(entries)]
    comparison: dict[str, Any] = {
        "schema": SCHEMA,
        "reference": ref_label,
        "headline_attack": headline_attack(models[0]["results"]),
        "data": {"dataset": ref.dataset, "split": ref.split, "n_examples": ref.n_examples, "class_names": list(ref.class_names),
                 "class_counts": models[0]["results"][chosen[0]]["class_counts"]},
        "settings": {"eps": ref.settings.eps, "eps_str": format_fraction(ref.settings.eps),
                     "attacks": {a: ref.settings.describe(a) for a in chosen}},
        "models": models,
    }
    comparison["comparisons"] = [_student_comparison(comparison, m) for m in models[1:]]
    comparison["definitions"] = dict(DEFINITIONS)
    comparison["versions"] = versions()
    comparison["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return comparison


def _student_comparison(comparison: dict[str, Any], student: dict[str, Any]) -> dict[str, Any]:
    ref = comparison["models"][0]
    names = comparison["data"]["class_names"]
    per_attack = {}
    for attack in ref["results"]:
        c = compare_attack(ref["results"][attack], student["results"][attack], names)
        c["verdict"] = verdict(student["label"], ref["label"], attack_label(comparison, attack), attack, c)
        per_attack[attack] = c
    return {"label": student["label"], "reference": ref["label"],
            "verdict": per_attack[comparison["headline_attack"]]["verdict"], "attacks": per_attack}


# --------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class Requested:
    """Evaluation settings the user asked for explicitly (None = take what the inputs say)."""

    dataset: str | None = None
    eps: float | None = None
    n_examples: int | None = None
    attacks: tuple[str, ...] | None = None


def split_selector(spec: str) -> tuple[str, str | None]:
    """``run/report.json#teacher`` -> (``run/report.json``, ``teacher``); no ``#`` -> (spec, None)."""
    base, sep, selector = spec.rpartition("#")
    if not sep or not base:
        return spec, None
    return base, selector.strip().lower()


def report_path(spec: str) -> Path | None:
    """The report.json behind ``spec`` (a .json file or a run directory), or None for a model id."""
    base, _ = split_selector(str(spec))
    path = Path(base)
    if path.is_dir():
        if not (path / "report.json").is_file():
            raise UsageError(f"{base} is a directory without report.json; pass a report.json or a model file inside it")
        return path / "report.json"
    if base.lower().endswith(".json"):
        if not path.is_file():
            raise UsageError(f"{base} does not exist; pass a report.json written by `robustdistill evaluate --out` or `distill`")
        return path
    return None


def read_report(path: Path, selector: str | None, shown: str) -> dict[str, Any]:
    """The evaluation dict inside a report.json (evaluation@1, or distill@1 with a selector)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{shown} is not a readable report.json ({str(exc).splitlines()[0]})") from None
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema == EVALUATION_SCHEMA:
        if selector is not None:
            raise UsageError(f"{shown}: #{selector} only applies to a distill report.json; drop the #{selector}")
        return data
    if schema == DISTILL_SCHEMA:
        role = selector or "student"
        if role not in SELECTORS:
            raise UsageError(f"{shown}: unknown selector #{role}; use #student or #teacher")
        part = data.get(role)
        if not isinstance(part, dict) or part.get("schema", EVALUATION_SCHEMA) != EVALUATION_SCHEMA or "per_sample" not in part:
            raise UsageError(f"{shown} holds no per-sample {role} evaluation; re-run `robustdistill evaluate` on the {role}")
        return part
    raise UsageError(f"{shown} is not a robustdistill report.json (schema {schema!r}); expected {EVALUATION_SCHEMA} or {DISTILL_SCHEMA}")


def check_requested(result: EvaluationResult, requested: Requested, shown: str) -> EvaluationResult:
    """Refuse a stored evaluation whose settings differ from the explicitly requested ones.

    Returns the result restricted to the requested attacks (when they are a subset of its own).
    """
    fix = "re-run without {opt} to use the report's value, or re-evaluate the model"
    if requested.dataset is not None and requested.dataset.lower() != result.dataset.lower():
        raise UsageError(f"{shown} was evaluated on {result.dataset}, not --dataset {requested.dataset}; " + fix.format(opt="--dataset"))
    if requested.eps is not None and abs(requested.eps - result.settings.eps) > 1e-9:
        raise UsageError(f"{shown} was evaluated at eps={format_fraction(result.settings.eps)}, not --eps "
                         f"{format_fraction(requested.eps)}; " + fix.format(opt="--eps"))
    if requested.n_examples is not None and requested.n_examples != result.n_examples:
        raise UsageError(f"{shown} holds {result.n_examples} examples, not --n-examples {requested.n_examples}; "
                         + fix.format(opt="--n-examples"))
    if requested.attacks is None:
        return result
    missing = [a for a in requested.attacks if a not in result.correct]
    if missing:
        raise UsageError(f"{shown} has no {', '.join(missing)} results (it has {', '.join(result.correct)}); "
                         f"drop {', '.join(missing)} from --attacks or re-evaluate the model")
    keep = {a: c for a, c in result.correct.items() if a in requested.attacks}
    return EvaluationResult(result.model_id, result.dataset, result.split, result.class_names, result.labels, keep,
                            result.settings, {a: s for a, s in result.seconds.items() if a in keep}, result.model_info)


def load_entry(
    path_or_model: str,
    requested: Requested = Requested(),
    *,
    evaluate_kwargs: dict[str, Any] | None = None,
) -> EvaluationResult:
    """One model's evaluation: read from a report.json when given one, else evaluated now.

    Args:
        path_or_model: ``report.json`` (evaluate or distill; distill reports give the student unless
            suffixed ``#teacher``), a run directory holding ``report.json``, or any model identifier
            :func:`robustdistill.api.evaluate` accepts.
        requested: settings the user asked for explicitly; a stored report must match them.
        evaluate_kwargs: keyword arguments for :func:`robustdistill.api.evaluate` (dataset,
            data_dir, attacks, eps, n_examples, batch_size, device, seed, options, splits ...).

    Raises:
        UsageError: an unreadable report, or one whose settings differ from ``requested``.
    """
    path = report_path(path_or_model)
    if path is not None:
        _, selector = split_selector(path_or_model)
        result = EvaluationResult.from_dict(read_report(path, selector, path_or_model))
        return check_requested(result, requested, path_or_model)
    from . import api

    kwargs = dict(evaluate_kwargs or {})
    kwargs.setdefault("dataset", requested.dataset)
    kwargs.setdefault("n_examples", requested.n_examples)
    if requested.eps is not None:
        kwargs.setdefault("eps", requested.eps)
    if requested.attacks is not None:
        kwargs.setdefault("attacks", list(requested.attacks))
    return api.evaluate(path_or_model, **kwargs)


def default_labels(specs: Sequence[str], results: Sequence[EvaluationResult]) -> list[str]:
    """Short distinct display names: a file's stem (or ``teacher``/``student`` of a distill report)."""
    def short(spec: str, result: EvaluationResult, long: bool) -> str:
        base, selector = split_selector(spec)
        if report_path(spec) is not None and selector:
            name = Path(base).parent.name if Path(base).is_file() else Path(base).name
            return f"{name}#{selector}" if long else selector
        ident = result.model_id
        if "/" in ident or ident.lower().endswith((".safetensors", ".pt", ".pth")):
            p = Path(ident)
            return f"{p.parent.name}/{p.stem}" if long and p.parent.name else p.stem
        return ident

    labels = [short(s, r, False) for s, r in zip(specs, results)]
    if len(set(labels)) < len(labels):
        labels = [short(s, r, True) for s, r in zip(specs, results)]
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out


def _resolve_settings(reports: dict[int, EvaluationResult], specs: Sequence[str], requested: Requested) -> dict[str, Any]:
    """Settings for the models still to evaluate: explicit > first stored report > model file > defaults."""
    from . import api

    first = next(iter(reports.values()), None)
    if first is not None:
        return {"dataset": requested.dataset or first.dataset,
                "eps": requested.eps if requested.eps is not None else first.settings.eps,
                "n_examples": requested.n_examples if requested.n_examples is not None else first.n_examples,
                "attacks": list(requested.attacks) if requested.attacks else list(first.correct),
                "pgd_steps": first.settings.pgd_steps, "step_size": first.settings.step_size, "seed": first.settings.seed}
    saved = api.saved_config(specs[0]) if not specs[0].startswith(("robustbench:", "timm:")) else {}
    eps = requested.eps if requested.eps is not None else saved.get("eps")
    return {"dataset": requested.dataset, "eps": eps if eps is not None else 8 / 255,
            "n_examples": requested.n_examples, "attacks": list(requested.attacks or ("clean", "pgd"))}


def fairness_report(
    models: Sequence[str],
    *,
    labels: Sequence[str] | None = None,
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    attacks: str | Sequence[str] | None = None,
    eps: float | str | None = None,
    n_examples: int | None = None,
    batch_size: int = 256,
    device: str | None = None,
    seed: int | None = None,
    options: ModelOptions | None = None,
) -> dict[str, Any]:
    """Load or evaluate every model, then :func:`compare` them (the first is the reference).

    Stored report.json files are used as they are; the other models are evaluated with the
    explicit settings, else those of the first report, else the defaults (clean,pgd at 8/255, or
    the eps recorded in the first robustdistill model). The data is loaded once.
    """
    from ._utils import parse_fraction

    if len(models) < 2:
        raise UsageError("fairness-report needs at least two models: the reference (e.g. the teacher) and a student")
    if labels is not None and len(labels) != len(models):
        raise UsageError(f"--labels gives {len(labels)} names for {len(models)} models; give one per model")
    requested = Requested(dataset, parse_fraction(eps) if eps is not None else None, n_examples,
                          tuple(parse_attacks(attacks)) if attacks is not None else None)
    reports = {k: load_entry(spec, requested) for k, spec in enumerate(models) if report_path(spec) is not None}
    results: dict[int, EvaluationResult] = dict(reports)
    todo = [k for k in range(len(models)) if k not in reports]
    if todo:
        results.update(_evaluate_all(models, todo, reports, requested, data_dir, batch_size, device, seed, options))
    ordered = [results[k] for k in range(len(models))]
    names = list(labels) if labels is not None else default_labels(models, ordered)
    return compare(list(zip(names, ordered)), attacks=requested.attacks)


def _evaluate_all(models: Sequence[str], todo: Sequence[int], reports: dict[int, EvaluationResult], requested: Requested,
                  data_dir: str | Path | None, batch_size: int, device: str | None, seed: int | None,
                  options: ModelOptions | None) -> dict[int, EvaluationResult]:
    """Evaluate the models that are not stored reports, on data loaded once."""
    from . import api
    from .data import load_dataset

    settings = _resolve_settings(reports, [models[k] for k in todo], requested)
    name = settings.pop("dataset") or api.resolve_dataset_name(models[todo[0]], None)
    splits = load_dataset(name, data_dir)
    if seed is not None:
        settings["seed"] = seed
    kwargs = {**settings, "batch_size": batch_size, "device": device, "splits": splits}
    if options is not None:
        kwargs["options"] = options
    return {k: api.evaluate(models[k], **kwargs) for k in todo}


# --------------------------------------------------------------------------- rendering
def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ratio_pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _signed_pts(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.1f}"


def summary_table(comparison: dict[str, Any], attacks: Sequence[str] | None = None) -> Table:
    """One row per attack and model: accuracy, worst class, gap, NSD and the comparison with the reference.

    Compact enough for an 80-column terminal with CIFAR-style class names.
    """
    from rich import box

    d, ref = comparison["data"], comparison["reference"]
    table = Table(title=f"Robust fairness vs {ref}: {d['dataset']} ({d['split']}, n={d['n_examples']}, "
                        f"eps={comparison['settings']['eps_str']})", box=box.SIMPLE_HEAD, padding=(0, 0), show_edge=False,
                  caption="kept = student / reference accuracy; kept(w) = the same for each model's own worst class; "
                          "r = Pearson of per-class accuracy; >avg = classes that lost more than the overall loss.")
    for name, justify in (("attack", "left"), ("model", "left"), ("acc%", "right"), ("worst%", "right"), ("class", "left"),
                          ("NSD", "right"), ("kept", "right"), ("kept(w)", "right"), ("r", "right"), (">avg", "right")):
        # Only class names may wrap, so labels and numbers stay whole on an 80-column terminal.
        table.add_column(name, justify=justify, no_wrap=name != "class", min_width=5 if name == "class" else None)  # type: ignore[arg-type]
    by_label = {c["label"]: c for c in comparison["comparisons"]}
    chosen = list(attacks or comparison["settings"]["attacks"])
    for a_i, attack in enumerate(chosen):
        for m_i, model in enumerate(comparison["models"]):
            r = model["results"][attack]
            c = by_label.get(model["label"], {}).get("attacks", {}).get(attack)
            extra = ["ref", "ref", "", ""] if c is None else [
                _ratio_pct(c["inherited_average"]), _ratio_pct(c["inherited_worst"]), _fmt(c["pearson"]),
                f"{c['classes_losing_more']['count']}/{c['classes_losing_more']['of']}"]
            worst = r["worst_class"]
            # Text() so that names such as "run[2]" are not read as rich markup.
            table.add_row(attack_label(comparison, attack) if m_i == 0 else "", Text(model["label"]), pct(r["accuracy"]),
                          pct(worst["accuracy"]), Text(str(worst["name"])), _fmt(r["nsd"], 3), *extra,
                          end_section=m_i == len(comparison["models"]) - 1 and a_i < len(chosen) - 1)
    return table


def verdicts(comparison: dict[str, Any], attack: str | None = None) -> list[str]:
    """The verdict sentence of each student under ``attack`` (default: the headline attack)."""
    attack = attack or comparison["headline_attack"]
    return [c["attacks"][attack]["verdict"] for c in comparison["comparisons"]]


def _md_models(comparison: dict[str, Any], attack: str) -> list[str]:
    lines = ["| model | accuracy % | worst class % | worst class | best − worst | NSD |", "|---|---:|---:|---|---:|---:|"]
    for m in comparison["models"]:
        r = m["results"][attack]
        lines.append(f"| {m['label']} | {pct(r['accuracy'], 2)} | {pct(r['worst_class']['accuracy'], 2)} | "
                     f"{r['worst_class']['name']} | {pct(r['gap'], 2)} | {_fmt(r['nsd'], 3)} |")
    return lines


def _md_students(comparison: dict[str, Any], attack: str) -> list[str]:
    ref = comparison["reference"]
    lines = [f"| student | Δ accuracy (pts) | kept of {ref}'s avg | kept of {ref}'s worst | Pearson r | Spearman ρ | "
             "classes losing > avg | Δ NSD |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in comparison["comparisons"]:
        a = c["attacks"][attack]
        losing = a["classes_losing_more"]
        lines.append(f"| {c['label']} | {_signed_pts(a['accuracy']['delta'])} | {_ratio_pct(a['inherited_average'])} | "
                     f"{_ratio_pct(a['inherited_worst'])} | {_fmt(a['pearson'])} | {_fmt(a['spearman'])} | "
                     f"{losing['count']} / {losing['of']} | {_fmt(a['nsd']['delta'], 3)} |")
    return lines


def _md_per_class(comparison: dict[str, Any], attack: str) -> list[str]:
    models, comps = comparison["models"], comparison["comparisons"]
    header = "| class | n | " + " | ".join(f"{m['label']} %" for m in models) + " | " + \
        " | ".join(f"Δ {c['label']}" for c in comps) + " |"
    lines = [header, "|---|---:|" + "---:|" * (len(models) + len(comps))]
    for i, name in enumerate(comparison["data"]["class_names"]):
        cells = [pct(m["results"][attack]["per_class"][i]) for m in models]
        cells += [_signed_pts(c["attacks"][attack]["per_class_delta"][i]) for c in comps]
        lines.append(f"| {name} | {comparison['data']['class_counts'][i]} | " + " | ".join(cells) + " |")
    return lines


def fairness_markdown(comparison: dict[str, Any], images: Sequence[Path] = ()) -> str:
    """Markdown a person can paste into a paper: per attack, models, student-vs-reference, per class."""
    d, s = comparison["data"], comparison["settings"]
    head = comparison["headline_attack"]
    lines = ["# Robust fairness report", "",
             f"Reference: **{comparison['reference']}**. Dataset **{d['dataset']}** ({d['split']} split, first "
             f"{d['n_examples']} examples, {len(d['class_names'])} classes), L∞ eps = {s['eps_str']}. "
             f"Headline attack: {attack_label(comparison, head)}.", "", "## Verdict", ""]
    lines += [f"- {v}" for v in verdicts(comparison)]
    many = len(d["class_names"]) > 20
    for attack in s["attacks"]:
        lines += ["", f"## {attack_label(comparison, attack)}", "", *_md_models(comparison, attack), "",
                  *_md_students(comparison, attack)]
        if not many or attack == head:
            lines += ["", f"Per-class {attack_label(comparison, attack)} accuracy (%) and change vs "
                      f"{comparison['reference']} (points):", "", *_md_per_class(comparison, attack)]
        lines += [""] + [f"![{p.stem}]({p.name})" for p in images if p.stem.endswith(f"_{attack}")]
    lines += ["", "## Definitions", ""] + [f"- **{k}**: {v}" for k, v in comparison["definitions"].items()]
    lines += ["", "Attacks (L∞, eps " + s["eps_str"] + "): " + "; ".join(
        f"{attack_label(comparison, a)}: {_params_text(p)}" for a, p in s["attacks"].items() if p) + ".",
        "A sample counts as robust only if it is also classified correctly without attack."]
    return "\n".join(lines) + "\n"


def _params_text(params: dict[str, Any]) -> str:
    shown = {k: format_fraction(v) if k == "step_size" else v for k, v in params.items() if k not in ("eps", "eps_str", "norm")}
    return ", ".join(f"{k}={v}" for k, v in shown.items())


def _as_reports(comparison: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Each model in the shape :func:`robustdistill.report.plot_per_class` reads."""
    return [(m["label"], {"data": comparison["data"], "settings": comparison["settings"], "results": m["results"]})
            for m in comparison["models"]]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_scatter(comparison: dict[str, Any], attack: str, path: Path, max_labels: int = 20) -> Path:
    """Student-vs-reference per-class accuracy, one panel per student, with the y = x line.

    Every class is named when there are at most ``max_labels``; otherwise only the eight classes
    that lost the most. The star marks overall accuracy.
    """
    plt = _pyplot()
    ref = comparison["models"][0]
    comps = comparison["comparisons"]
    cols = min(3, len(comps))
    rows = -(-len(comps) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(8.0, min(18.0, 5.5 * cols + 0.5)), 5.4 * rows + 0.6), squeeze=False)
    students = {m["label"]: m for m in comparison["models"][1:]}
    for k, c in enumerate(comps):
        _scatter_panel(axes[k // cols][k % cols], comparison, ref, students[c["label"]], c["attacks"][attack], attack, max_labels)
    for k in range(len(comps), rows * cols):
        axes[k // cols][k % cols].axis("off")
    fig.suptitle(f"Per-class {attack_label(comparison, attack)} accuracy: students vs {ref['label']}")
    fig.tight_layout()
    return save_figure(fig, path)


def _scatter_panel(ax: Any, comparison: dict[str, Any], ref: dict[str, Any], stu: dict[str, Any], c: dict[str, Any],
                   attack: str, max_labels: int) -> None:
    names = comparison["data"]["class_names"]
    xr, ys = ref["results"][attack]["per_class"], stu["results"][attack]["per_class"]
    idx = [i for i in range(len(names)) if xr[i] is not None and ys[i] is not None]
    x = [100 * xr[i] for i in idx]
    y = [100 * ys[i] for i in idx]
    ax.plot([0, 100], [0, 100], ls="--", color="grey", lw=1, label="y = x (kept fully)")
    ax.scatter(x, y, s=28 if len(idx) <= 20 else 12, alpha=0.8, label="classes")
    ax.scatter([100 * c["accuracy"]["reference"]], [100 * c["accuracy"]["student"]], marker="*", s=180,
               color="crimson", zorder=3, label="overall")
    shown = idx if len(idx) <= max_labels else sorted(idx, key=lambda i: (ys[i] - xr[i], i))[:8]
    for i in shown:
        ax.annotate(str(names[i]), (100 * xr[i], 100 * ys[i]), textcoords="offset points", xytext=(4, 3), fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_aspect("equal")
    ax.set_xlabel(f"{ref['label']} accuracy (%)")
    ax.set_ylabel(f"{stu['label']} accuracy (%)")
    ax.set_title(f"{stu['label']}: Pearson r = {_fmt(c['pearson'])}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=7)


def plot_deltas(comparison: dict[str, Any], attack: str, path: Path) -> Path:
    """Per-class change vs the reference (points), one bar per student, with each student's average change."""
    import numpy as np

    plt = _pyplot()
    names = comparison["data"]["class_names"]
    many = len(names) > 20
    order = class_order(comparison["models"][0]["results"][attack]["per_class"], many)
    comps = comparison["comparisons"]
    x = np.arange(len(names))
    width = 0.8 / len(comps)
    fig, ax = plt.subplots(figsize=figure_size(len(names) * max(1.0, len(comps) ** 0.5)))
    for k, c in enumerate(comps):
        a = c["attacks"][attack]
        vals = np.array([np.nan if a["per_class_delta"][i] is None else 100 * a["per_class_delta"][i] for i in order])
        bars = ax.bar(x + (k - (len(comps) - 1) / 2) * width, vals, width, label=c["label"])
        if a["accuracy"]["delta"] is not None:
            ax.axhline(100 * a["accuracy"]["delta"], ls="--", lw=1, color=bars.patches[0].get_facecolor(),
                       label=f"{c['label']} overall {100 * a['accuracy']['delta']:+.1f}")
    ax.axhline(0, color="black", lw=0.8)
    ax.use_sticky_edges = False  # let the margin show bars that end at 0
    ax.margins(x=0, y=0.08)
    ax.set_xticks(x)
    ax.set_xticklabels([names[i] for i in order], rotation=90 if many else (45 if len(names) > 10 else 0),
                       ha="center" if many or len(names) <= 10 else "right", fontsize=6 if many else 9)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel(f"change in {attack_label(comparison, attack)} accuracy (points)")
    sort_note = f" (classes sorted by {comparison['reference']}'s accuracy)" if many else ""
    ax.set_title(f"Per-class change vs {comparison['reference']}{sort_note}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def write_plots(comparison: dict[str, Any], out_dir: Path) -> list[Path]:
    """``per_class_<attack>.png``, ``scatter_<attack>.png`` and ``delta_<attack>.png`` for every attack."""
    paths = []
    for attack in comparison["settings"]["attacks"]:
        paths.append(plot_per_class(_as_reports(comparison), attack, out_dir / f"per_class_{attack}.png"))
        paths.append(plot_scatter(comparison, attack, out_dir / f"scatter_{attack}.png"))
        paths.append(plot_deltas(comparison, attack, out_dir / f"delta_{attack}.png"))
    return paths


def write_outputs(comparison: dict[str, Any], out_dir: Path | str, *, plots: bool = True) -> list[Path]:
    """Write fairness.json, fairness.md and the PNGs into ``out_dir`` (created); returns the paths.

    Every file is written atomically (temporary file + rename); plots render headless (Agg).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = write_plots(comparison, out) if plots else []
    atomic_write_json(out / "fairness.json", comparison)
    atomic_write_text(out / "fairness.md", fairness_markdown(comparison, images))
    return [out / "fairness.json", out / "fairness.md", *images]
