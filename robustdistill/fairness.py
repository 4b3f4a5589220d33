"""Robust fairness: does a student inherit its teacher's robustness evenly across classes? (numbers only)

The first model handed to :func:`compare` is the *reference* (usually the teacher); every other
model is a *student* compared with it, attack by attack. All numbers come from per-sample
results (:class:`~robustdistill.evaluation.EvaluationResult`), so they are exact. Sentences,
tables, files and plots are made from a :class:`Comparison` by :mod:`robustdistill.render`;
loading report.json files and evaluating models for a comparison is :mod:`robustdistill.reports`.

Per model and attack (an :class:`~robustdistill.metrics.AttackSummary`, the same as
``results[attack]`` in an evaluation report.json): overall accuracy, per-class accuracy, worst and
best class, ``gap`` = best - worst, ``nsd`` = population std (ddof=0) of the class accuracies over
their unweighted mean, 95 % Wilson intervals.

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
* ``nsd`` and ``gap``: reference, student, ``delta`` = student - reference (positive = less even)
  and ``ci95``, a 95 % interval of ``delta`` from a class-stratified paired bootstrap
  (:func:`~robustdistill.metrics.spread_change_interval`: 2000 redraws, seed 0).
* Paired tests on the per-sample flags (:func:`~robustdistill.metrics.paired_test`): exact
  McNemar p-value and Newcombe's 95 % interval of the difference, for the overall accuracy
  (``accuracy_test``; its interval is also ``accuracy.ci95``), for the reference's worst class
  and the student's own worst class (``worst_class_tests``) and for every class
  (``per_class_tests``). The worst classes are picked after seeing the results, so their
  p-values are not corrected for that choice.

The headline attack (:func:`~robustdistill.metrics.headline_attack`) is ``aa`` if present, else
``pgd``, else the non-clean attack on which the reference is least accurate, else ``clean``.

fairness.json (schema ``robustdistill/fairness@1``; written by :mod:`robustdistill.render`, which
adds the ``verdict`` sentences)::

    schema, created, versions
    reference: label of the reference model;  headline_attack: attack name
    data: {dataset, split, n_examples, class_names, class_counts}
    settings: {eps, eps_str, attacks: {attack: parameters}}     (shared by every model)
    models: [{label, role: reference|student, id, seed, info, results: {attack: summary}}]
    comparisons: [{label, reference, verdict, attacks: {attack: {
        accuracy: {reference, student, delta, ci95}, inherited_average, inherited_worst,
        worst_class: {reference: {index, name, accuracy}, student: {...}},
        student_on_reference_worst, per_class_delta: [..], pearson, spearman,
        average_loss, classes_losing_more: {count, of, names}, nsd: {reference, student, delta, ci95},
        gap: {reference, student, delta, ci95}, verdict,
        accuracy_test: test, worst_class_tests: {reference: {index, name, **test}, student: {...}},
        per_class_tests: [test or null]}}}]
        (test = {n, both, reference_only, student_only, neither, delta, ci95, p_value})
    definitions: {name: one-line definition}

Keys added since the first version of @1 (``ci95`` in accuracy/nsd/gap and the three ``*_test(s)``
keys) are optional when reading: :meth:`Comparison.from_dict` reads older files with them None.
Accuracies are fractions in [0, 1]; Markdown, tables and plots show percentages.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Mapping, Sequence

import torch

from .runtime import versions
from .units import format_fraction
from .errors import UsageError
from .cost import CostProfile
from .evaluation import ATTACKS, EvaluationResult, attack_names
from .metrics import AttackSummary, ClassScore, PairedTest, headline_attack, paired_test, spread_change_interval

SCHEMA = "robustdistill/fairness@1"

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
    "accuracy_test": "paired test of student vs reference on the same examples: exact McNemar p-value (two-sided "
                     "binomial test on the examples exactly one model gets right) and ci95 = Newcombe's square-and-add "
                     "95% interval (1998, method 10) of student - reference accuracy",
    "worst_class_tests": "the same paired test on the examples of the reference's worst class and of the student's own "
                         "worst class (classes picked after seeing the results: p-values not corrected for that choice)",
    "per_class_tests": "the same paired test on the examples of each class (null for absent classes)",
    "ci95": "95% interval of a change: Newcombe (accuracy); paired bootstrap stratified by class, 2000 redraws, "
            "seed 0, percentile interval (nsd, gap)",
    "within_noise": "a change whose exact McNemar test has p >= 0.05 (nsd, gap: whose ci95 contains 0); the test "
                    "decides, as the Newcombe interval is approximate and can just exclude 0 at a borderline p",
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


def _interval(value: Any) -> tuple[float, float] | None:
    return None if value is None else (float(value[0]), float(value[1]))


# --------------------------------------------------------------------------- compatibility
def _refuse(ref: str, other: str, what: str, a: Any, b: Any, fix: str) -> UsageError:
    return UsageError(f"cannot compare {other} with {ref}: {what} differs ({ref}: {a}, {other}: {b}); {fix}")


def _attack_params(result: EvaluationResult, attack: str) -> dict[str, Any]:
    """The parameters that change an attack's numbers (not the seed or the library versions)."""
    params = result.attack(attack).parameters(result.settings.eps)
    return {k: v for k, v in params.items() if k != "implementation"}


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
        a, b = _attack_params(r, attack), _attack_params(o, attack)
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
        wanted = attack_names(list(attacks))
        for label, result in entries:
            missing = [a for a in wanted if a not in result.correct]
            if missing:
                raise UsageError(f"{label} has no {', '.join(missing)} results (it has {', '.join(result.correct)}); "
                                 f"drop {', '.join(missing)} from --attacks or re-evaluate {label}")
        return wanted
    for label, result in entries[1:]:
        if set(result.correct) != set(ref.correct):
            shared = [a for a in ATTACKS.names() if a in ref.correct and a in result.correct]
            raise _refuse(ref_label, label, "the set of attacks", ",".join(ref.correct), ",".join(result.correct),
                          f"pass --attacks {','.join(shared)} to compare the common ones")
    return [a for a in ATTACKS.names() if a in ref.correct]


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


# --------------------------------------------------------------------------- result types
@dataclass(frozen=True)
class Change:
    """A number of the reference and of the student, ``delta`` = student - reference, and its 95 % interval."""

    reference: float | None
    student: float | None
    delta: float | None
    ci95: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"reference": self.reference, "student": self.student, "delta": self.delta, "ci95": self.ci95}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Change":
        """Rebuild from :meth:`to_dict` output (or its JSON)."""
        return cls(data.get("reference"), data.get("student"), data.get("delta"), _interval(data.get("ci95")))


@dataclass(frozen=True)
class LosingMore:
    """The classes that lost more than the overall loss (``count`` of the ``of`` present classes)."""

    count: int
    of: int
    names: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"count": self.count, "of": self.of, "names": list(self.names)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LosingMore":
        """Rebuild from :meth:`to_dict` output (or its JSON)."""
        return cls(int(data["count"]), int(data["of"]), tuple(data["names"]))


@dataclass(frozen=True)
class WorstClasses:
    """Each model's own worst class."""

    reference: ClassScore
    student: ClassScore

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"reference": self.reference.to_dict(), "student": self.student.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "WorstClasses":
        """Rebuild from :meth:`to_dict` output (or its JSON)."""
        return cls(ClassScore.from_dict(data["reference"]), ClassScore.from_dict(data["student"]))


@dataclass(frozen=True)
class ClassTest:
    """A :class:`~robustdistill.metrics.PairedTest` on the examples of one class."""

    index: int
    name: str
    test: PairedTest

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"index": self.index, "name": self.name, **self.test.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ClassTest":
        """Rebuild from :meth:`to_dict` output (or its JSON)."""
        return cls(int(data["index"]), str(data["name"]), PairedTest.from_dict(data))


def _class_test_or_none(data: Mapping[str, Any] | None) -> ClassTest | None:
    return None if data is None else ClassTest.from_dict(data)


def _test_or_none(data: Mapping[str, Any] | None) -> PairedTest | None:
    return None if data is None else PairedTest.from_dict(data)


@dataclass(frozen=True)
class AttackComparison:
    """One student against the reference under one attack (see the module docstring for each field).

    The paired-test fields are None only for comparisons read from a fairness.json written before
    they existed.
    """

    accuracy: Change
    inherited_average: float | None
    inherited_worst: float | None
    worst_class: WorstClasses
    student_on_reference_worst: float | None
    per_class_delta: tuple[float | None, ...]
    pearson: float | None
    spearman: float | None
    average_loss: float | None
    classes_losing_more: LosingMore
    nsd: Change
    gap: Change
    accuracy_test: PairedTest | None = None
    reference_worst_test: ClassTest | None = None
    student_worst_test: ClassTest | None = None
    per_class_tests: tuple[PairedTest | None, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers (the ``verdict`` sentence is added by :mod:`robustdistill.render`)."""
        return {
            "accuracy": self.accuracy.to_dict(), "inherited_average": self.inherited_average,
            "inherited_worst": self.inherited_worst, "worst_class": self.worst_class.to_dict(),
            "student_on_reference_worst": self.student_on_reference_worst, "per_class_delta": list(self.per_class_delta),
            "pearson": self.pearson, "spearman": self.spearman, "average_loss": self.average_loss,
            "classes_losing_more": self.classes_losing_more.to_dict(), "nsd": self.nsd.to_dict(), "gap": self.gap.to_dict(),
            "accuracy_test": None if self.accuracy_test is None else self.accuracy_test.to_dict(),
            "worst_class_tests": {k: None if t is None else t.to_dict()
                                  for k, t in (("reference", self.reference_worst_test), ("student", self.student_worst_test))},
            "per_class_tests": None if self.per_class_tests is None else
            [None if t is None else t.to_dict() for t in self.per_class_tests],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AttackComparison":
        """Rebuild from :meth:`to_dict` output (or its JSON)."""
        worst_tests = data.get("worst_class_tests") or {}
        per_class = data.get("per_class_tests")
        return cls(
            accuracy=Change.from_dict(data["accuracy"]), inherited_average=data.get("inherited_average"),
            inherited_worst=data.get("inherited_worst"), worst_class=WorstClasses.from_dict(data["worst_class"]),
            student_on_reference_worst=data.get("student_on_reference_worst"), per_class_delta=tuple(data["per_class_delta"]),
            pearson=data.get("pearson"), spearman=data.get("spearman"), average_loss=data.get("average_loss"),
            classes_losing_more=LosingMore.from_dict(data["classes_losing_more"]), nsd=Change.from_dict(data["nsd"]),
            gap=Change.from_dict(data["gap"]), accuracy_test=_test_or_none(data.get("accuracy_test")),
            reference_worst_test=_class_test_or_none(worst_tests.get("reference")),
            student_worst_test=_class_test_or_none(worst_tests.get("student")),
            per_class_tests=None if per_class is None else tuple(_test_or_none(t) for t in per_class),
        )


@dataclass(frozen=True)
class StudentComparison:
    """One student against the reference, per attack."""

    label: str
    reference: str
    attacks: Mapping[str, AttackComparison]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"label": self.label, "reference": self.reference, "attacks": {a: c.to_dict() for a, c in self.attacks.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "StudentComparison":
        """Rebuild from :meth:`to_dict` output (or its JSON)."""
        return cls(data["label"], data["reference"], {a: AttackComparison.from_dict(c) for a, c in data["attacks"].items()})


@dataclass(frozen=True)
class ModelEntry:
    """One compared model: its label, role (``reference`` or ``student``), evidence and per-attack summaries."""

    label: str
    role: str
    id: str
    seed: int
    info: Mapping[str, Any]
    results: Mapping[str, AttackSummary]
    provenance: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    cost: CostProfile | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"label": self.label, "role": self.role, "id": self.id, "seed": self.seed, "info": dict(self.info),
                "results": {a: s.to_dict() for a, s in self.results.items()},
                "provenance": {a: dict(p) for a, p in self.provenance.items()},
                "cost": self.cost.to_dict() if self.cost is not None else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelEntry":
        """Rebuild from :meth:`to_dict` output (or its JSON)."""
        return cls(data["label"], data["role"], data["id"], int(data["seed"]), dict(data.get("info", {})),
                   {a: AttackSummary.from_dict(s) for a, s in data["results"].items()},
                   dict(data.get("provenance") or {}),
                   CostProfile.from_dict(data["cost"]) if data.get("cost") else None)


@dataclass(frozen=True)
class DataInfo:
    """The examples every compared model was evaluated on."""

    dataset: str
    split: str
    n_examples: int
    class_names: tuple[str, ...]
    class_counts: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"dataset": self.dataset, "split": self.split, "n_examples": self.n_examples,
                "class_names": list(self.class_names), "class_counts": list(self.class_counts)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DataInfo":
        """Rebuild from :meth:`to_dict` output (or its JSON)."""
        return cls(data["dataset"], data["split"], int(data["n_examples"]), tuple(data["class_names"]),
                   tuple(int(c) for c in data["class_counts"]))


@dataclass(frozen=True)
class ComparisonSettings:
    """The L∞ budget and each compared attack's parameters (shared by every model)."""

    eps: float
    attacks: Mapping[str, Mapping[str, Any]]

    @property
    def eps_str(self) -> str:
        """The budget as written (0.2, 8/255)."""
        return format_fraction(self.eps)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"eps": self.eps, "eps_str": self.eps_str, "attacks": {a: dict(p) for a, p in self.attacks.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ComparisonSettings":
        """Rebuild from :meth:`to_dict` output (or its JSON)."""
        return cls(float(data["eps"]), {a: dict(p) for a, p in data["attacks"].items()})


@dataclass(frozen=True)
class Comparison:
    """Every student against the reference (``models[0]``), per attack: the content of fairness.json."""

    reference: str
    headline_attack: str
    data: DataInfo
    settings: ComparisonSettings
    models: tuple[ModelEntry, ...]
    comparisons: tuple[StudentComparison, ...]
    definitions: Mapping[str, str]
    versions: Mapping[str, str]
    created: str
    schema: str = SCHEMA

    @property
    def attacks(self) -> list[str]:
        """The compared attacks, in evaluation order."""
        return list(self.settings.attacks)

    def model(self, label: str) -> ModelEntry:
        """The model called ``label``."""
        return next(m for m in self.models if m.label == label)

    def student(self, label: str) -> StudentComparison:
        """The comparison of the student called ``label`` with the reference."""
        return next(c for c in self.comparisons if c.label == label)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers; :func:`robustdistill.render.comparison_json` adds the verdict sentences."""
        return {"schema": self.schema, "reference": self.reference, "headline_attack": self.headline_attack,
                "data": self.data.to_dict(), "settings": self.settings.to_dict(),
                "models": [m.to_dict() for m in self.models], "comparisons": [c.to_dict() for c in self.comparisons],
                "definitions": dict(self.definitions), "versions": dict(self.versions), "created": self.created}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Comparison":
        """Rebuild from :meth:`to_dict` output or a fairness.json (verdict sentences are ignored).

        Raises:
            UsageError: ``data`` is not a robustdistill fairness comparison.
        """
        schema = data.get("schema") if isinstance(data, Mapping) else None
        if schema != SCHEMA:
            raise UsageError(f"not a robustdistill fairness comparison (schema {schema!r}); expected {SCHEMA}, "
                             "as written by `robustdistill fairness-report`")
        return cls(
            reference=data["reference"], headline_attack=data["headline_attack"], data=DataInfo.from_dict(data["data"]),
            settings=ComparisonSettings.from_dict(data["settings"]),
            models=tuple(ModelEntry.from_dict(m) for m in data["models"]),
            comparisons=tuple(StudentComparison.from_dict(c) for c in data["comparisons"]),
            definitions=dict(data.get("definitions", {})), versions=dict(data.get("versions", {})),
            created=str(data.get("created", "")), schema=schema,
        )


# --------------------------------------------------------------------------- comparison
def _losing_more(ref: AttackSummary, stu: AttackSummary, class_names: Sequence[str]) -> LosingMore:
    """Classes whose loss exceeds the overall loss, compared as exact fractions of hit counts."""
    average = Fraction(ref.n_correct - stu.n_correct, ref.n) if ref.n else Fraction(0)
    present = [i for i, n in enumerate(ref.class_counts) if n]
    names = [class_names[i] for i in present
             if Fraction(ref.class_correct[i] - stu.class_correct[i], ref.class_counts[i]) > average]
    return LosingMore(len(names), len(present), tuple(names))


def _class_test(flags: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor, score: ClassScore) -> ClassTest | None:
    if score.index is None:
        return None
    mask = labels == score.index
    return ClassTest(score.index, str(score.name), paired_test(flags[0][mask], flags[1][mask]))


def _per_class_tests(flags: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor, counts: Sequence[int]) -> tuple[PairedTest | None, ...]:
    return tuple(paired_test(flags[0][labels == c], flags[1][labels == c]) if n else None for c, n in enumerate(counts))


def compare_attack(ref: AttackSummary, stu: AttackSummary, class_names: Sequence[str],
                   flags: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor) -> AttackComparison:
    """Student-vs-reference numbers for one attack.

    Args:
        ref, stu: the two models' summaries under the attack.
        class_names: the shared class names.
        flags: (reference, student) per-sample correctness on the same examples.
        labels: the examples' labels.
    """
    labels = labels.long().cpu()
    flags = (flags[0].bool().cpu(), flags[1].bool().cpu())
    both = [i for i, (a, b) in enumerate(zip(ref.per_class, stu.per_class)) if a is not None and b is not None]
    xs, ys = [ref.per_class[i] for i in both], [stu.per_class[i] for i in both]
    overall = paired_test(*flags)
    spread = spread_change_interval(flags[0], flags[1], labels, len(class_names))
    ref_worst, stu_worst = ref.worst_class, stu.worst_class
    return AttackComparison(
        accuracy=Change(ref.accuracy, stu.accuracy, _delta(stu.accuracy, ref.accuracy), overall.ci95),
        inherited_average=_ratio(stu.accuracy, ref.accuracy),
        inherited_worst=_ratio(stu_worst.accuracy, ref_worst.accuracy),
        worst_class=WorstClasses(ref_worst, stu_worst),
        student_on_reference_worst=None if ref_worst.index is None else stu.per_class[ref_worst.index],
        per_class_delta=tuple(_delta(b, a) for a, b in zip(ref.per_class, stu.per_class)),
        pearson=pearson(xs, ys),  # type: ignore[arg-type]
        spearman=spearman(xs, ys),  # type: ignore[arg-type]
        average_loss=_delta(ref.accuracy, stu.accuracy),
        classes_losing_more=_losing_more(ref, stu, class_names),
        nsd=Change(ref.nsd, stu.nsd, _delta(stu.nsd, ref.nsd), spread["nsd"]),
        gap=Change(ref.gap, stu.gap, _delta(stu.gap, ref.gap), spread["gap"]),
        accuracy_test=overall,
        reference_worst_test=_class_test(flags, labels, ref_worst),
        student_worst_test=_class_test(flags, labels, stu_worst),
        per_class_tests=_per_class_tests(flags, labels, ref.class_counts),
    )


def _model_entry(label: str, role: str, result: EvaluationResult, attacks: Sequence[str]) -> ModelEntry:
    return ModelEntry(label, role, result.model_id, result.settings.seed, dict(result.model_info),
                      {a: result.summary(a) for a in attacks},
                      {a: dict(result.provenance[a]) for a in attacks if a in result.provenance}, result.cost)


def _student_comparison(ref: tuple[ModelEntry, EvaluationResult], stu: tuple[ModelEntry, EvaluationResult],
                        attacks: Sequence[str]) -> StudentComparison:
    (ref_entry, ref_result), (stu_entry, stu_result) = ref, stu
    per_attack = {a: compare_attack(ref_entry.results[a], stu_entry.results[a], ref_result.class_names,
                                    (ref_result.correct[a], stu_result.correct[a]), ref_result.labels) for a in attacks}
    return StudentComparison(stu_entry.label, ref_entry.label, per_attack)


def compare(entries: Sequence[tuple[str, EvaluationResult]], *, attacks: Sequence[str] | None = None) -> Comparison:
    """Compare every model with the first (the reference), per attack.

    Args:
        entries: ``(label, result)`` pairs; the first is the reference (usually the teacher).
        attacks: restrict to these attacks (every model must have them). By default all models
            must have been evaluated under the same attacks.

    Returns:
        The :class:`Comparison` (``to_dict()`` is fairness.json without its verdict sentences).

    Raises:
        UsageError: one line naming the setting that differs between two models and both values
            (class count, dataset, split, n_examples, class names, labels, eps, attack parameters,
            attacks), or duplicate labels.
    """
    chosen = check_compatible(entries, attacks)
    ref_label, ref = entries[0]
    models = [_model_entry(label, "reference" if k == 0 else "student", result, chosen)
              for k, (label, result) in enumerate(entries)]
    students = tuple(_student_comparison((models[0], ref), (models[k], entries[k][1]), chosen) for k in range(1, len(entries)))
    return Comparison(
        reference=ref_label,
        headline_attack=headline_attack({a: models[0].results[a].accuracy for a in chosen}),
        data=DataInfo(ref.dataset, ref.split, ref.n_examples, tuple(ref.class_names), models[0].results[chosen[0]].class_counts),
        settings=ComparisonSettings(ref.settings.eps, {a: ref.attack(a).parameters(ref.settings.eps) for a in chosen}),
        models=tuple(models), comparisons=students, definitions=dict(DEFINITIONS), versions=versions(),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
