"""Per-class robustness metrics and paired tests, computed from per-sample results so every number is exact.

* accuracy: overall fraction correct (= class accuracies weighted by class counts).
* per-class accuracy, worst class (lowest accuracy; ties -> lowest index), best class, gap = best - worst.
* NSD (normalised standard deviation) = population std (ddof=0) of the class accuracies divided by
  their unweighted mean; 0 for perfectly even robustness, ``None`` when the mean is 0.
* 95 % Wilson intervals per class, because worst-class numbers on small subsets are noisy.
* Paired comparison of two models on the *same* samples (:func:`paired_test`): the exact McNemar
  test (two-sided binomial test on the discordant pairs) and Newcombe's square-and-add 95 %
  interval for the difference of the two accuracies (Newcombe 1998, "Improved confidence intervals
  for the difference between binomial proportions based on paired data", method 10).
* :func:`spread_change_interval`: a seeded, class-stratified paired bootstrap of the change in NSD
  and in best - worst gap (statistics without a closed-form interval).

All accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

Z95 = 1.959964  # two-sided 95 % standard-normal quantile
ALPHA = 0.05  # significance level of the "within noise" wording
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def class_accuracy(correct: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[list[float | None], list[int], list[int]]:
    """(accuracy per class or None for absent classes, samples per class, correct per class)."""
    labels = labels.long().cpu()
    counts = torch.bincount(labels, minlength=num_classes)
    hits = torch.bincount(labels, weights=correct.cpu().double(), minlength=num_classes).round().long()
    acc = [(int(h) / int(n)) if int(n) > 0 else None for h, n in zip(hits, counts)]
    return acc, counts.tolist(), hits.tolist()


def nsd(values: Sequence[float]) -> float | None:
    """Population standard deviation over mean; None when the mean is 0 or there are no values."""
    if not values:
        return None
    mean = sum(values) / len(values)
    if mean <= 0:
        return None
    var = sum((v - mean) ** 2 for v in values) / len(values)
    return math.sqrt(var) / mean


def wilson_interval(hits: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval of a binomial proportion (95 % by default); None when ``n`` is 0."""
    if n <= 0:
        return None
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


# --------------------------------------------------------------------------- one attack's summary
@dataclass(frozen=True)
class ClassScore:
    """One class and its accuracy (all ``None`` when no class is present)."""

    index: int | None
    name: str | None
    accuracy: float | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"index": self.index, "name": self.name, "accuracy": self.accuracy}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ClassScore":
        """Rebuild from :meth:`to_dict` output (or its JSON)."""
        return cls(data.get("index"), data.get("name"), data.get("accuracy"))


def _interval(value: Any) -> tuple[float, float] | None:
    return None if value is None else (float(value[0]), float(value[1]))


@dataclass(frozen=True)
class AttackSummary:
    """All per-class metrics of one model under one attack (``results[attack]`` in report.json)."""

    accuracy: float | None
    n: int
    n_correct: int
    per_class: tuple[float | None, ...]
    class_counts: tuple[int, ...]
    class_correct: tuple[int, ...]
    ci95: tuple[tuple[float, float] | None, ...]
    mean_class_accuracy: float | None
    worst_class: ClassScore
    best_class: ClassScore
    gap: float | None
    nsd: float | None
    classes_absent: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict, with the keys and values report.json has always had."""
        return {
            "accuracy": self.accuracy, "n": self.n, "n_correct": self.n_correct, "per_class": list(self.per_class),
            "class_counts": list(self.class_counts), "class_correct": list(self.class_correct), "ci95": list(self.ci95),
            "mean_class_accuracy": self.mean_class_accuracy, "worst_class": self.worst_class.to_dict(),
            "best_class": self.best_class.to_dict(), "gap": self.gap, "nsd": self.nsd,
            "classes_absent": list(self.classes_absent),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AttackSummary":
        """Rebuild from :meth:`to_dict` output (or its JSON)."""
        return cls(
            accuracy=data["accuracy"], n=int(data["n"]), n_correct=int(data["n_correct"]),
            per_class=tuple(data["per_class"]), class_counts=tuple(int(c) for c in data["class_counts"]),
            class_correct=tuple(int(c) for c in data["class_correct"]), ci95=tuple(_interval(c) for c in data["ci95"]),
            mean_class_accuracy=data.get("mean_class_accuracy"), worst_class=ClassScore.from_dict(data["worst_class"]),
            best_class=ClassScore.from_dict(data["best_class"]), gap=data.get("gap"), nsd=data.get("nsd"),
            classes_absent=tuple(data.get("classes_absent", ())),
        )


def summarize(correct: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]) -> AttackSummary:
    """All per-class metrics for one attack from its per-sample flags."""
    num_classes = len(class_names)
    acc, counts, hits = class_accuracy(correct, labels, num_classes)
    present = [(i, a) for i, a in enumerate(acc) if a is not None]
    worst_i, worst = min(present, key=lambda t: (t[1], t[0])) if present else (None, None)
    best_i, best = max(present, key=lambda t: (t[1], -t[0])) if present else (None, None)
    values = [a for _, a in present]
    n = int(labels.numel())
    return AttackSummary(
        accuracy=float(correct.float().mean()) if n else None,
        n=n,
        n_correct=int(correct.sum()),
        per_class=tuple(acc),
        class_counts=tuple(counts),
        class_correct=tuple(hits),
        ci95=tuple(wilson_interval(h, c) for h, c in zip(hits, counts)),
        mean_class_accuracy=sum(values) / len(values) if values else None,
        worst_class=ClassScore(worst_i, class_names[worst_i] if worst_i is not None else None, worst),
        best_class=ClassScore(best_i, class_names[best_i] if best_i is not None else None, best),
        gap=(best - worst) if best is not None and worst is not None else None,
        nsd=nsd(values),
        classes_absent=tuple(class_names[i] for i, a in enumerate(acc) if a is None),
    )


def headline_attack(accuracy: Mapping[str, float | None]) -> str:
    """The attack a report leads with: ``aa``, else ``pgd``, else the least accurate other non-clean one, else clean.

    Args:
        accuracy: attack name -> the reference model's accuracy, in evaluation order (ties among
            the "least accurate" go to the earlier attack).
    """
    for attack in ("aa", "pgd"):
        if attack in accuracy:
            return attack
    order = list(accuracy)
    others = [a for a in order if a != "clean"]
    if others:
        return min(others, key=lambda a: (_or_inf(accuracy[a]), order.index(a)))
    return "clean" if "clean" in accuracy else order[0]


def _or_inf(value: float | None) -> float:
    return math.inf if value is None else value


# --------------------------------------------------------------------------- paired tests
@dataclass(frozen=True)
class PairedTest:
    """Student vs reference on the same samples: 2x2 counts, exact McNemar p-value, 95 % interval.

    ``delta`` = student accuracy - reference accuracy = (student_only - reference_only) / n;
    ``ci95`` is Newcombe's square-and-add interval for it; ``p_value`` is the two-sided exact
    McNemar test (1.0 when there are no discordant pairs).
    """

    n: int
    both: int
    reference_only: int
    student_only: int
    neither: int
    delta: float | None
    ci95: tuple[float, float] | None
    p_value: float

    @property
    def discordant(self) -> int:
        """Samples on which exactly one of the two models is right (all the test looks at)."""
        return self.reference_only + self.student_only

    def significant(self, alpha: float = ALPHA) -> bool:
        """Whether the difference is significant at level ``alpha`` (default 0.05)."""
        return self.p_value < alpha

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"n": self.n, "both": self.both, "reference_only": self.reference_only, "student_only": self.student_only,
                "neither": self.neither, "delta": self.delta, "ci95": self.ci95, "p_value": self.p_value}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PairedTest":
        """Rebuild from :meth:`to_dict` output (or its JSON)."""
        return cls(int(data["n"]), int(data["both"]), int(data["reference_only"]), int(data["student_only"]),
                   int(data["neither"]), data.get("delta"), _interval(data.get("ci95")), float(data["p_value"]))


def mcnemar_exact(reference_only: int, student_only: int) -> float:
    """Two-sided exact McNemar p-value: binomial test of ``student_only`` of the discordant pairs at 1/2."""
    discordant = reference_only + student_only
    if discordant == 0:
        return 1.0
    from scipy.stats import binomtest  # imported here: scipy is slow to import and only reports need it

    return float(binomtest(student_only, discordant, 0.5).pvalue)


def newcombe_paired_interval(both: int, reference_only: int, student_only: int, neither: int,
                             z: float = Z95) -> tuple[float, float] | None:
    """Newcombe (1998) method 10: square-and-add interval for student - reference accuracy on paired data.

    Combines the Wilson intervals of the two accuracies with the correlation ``phi`` of the
    paired 2x2 table (shrunk towards 0 by n/2 when positive, as in the paper); None when n is 0.
    """
    n = both + reference_only + student_only + neither
    if n == 0:
        return None
    p_ref, p_stu = (both + reference_only) / n, (both + student_only) / n
    l_ref, u_ref = wilson_interval(both + reference_only, n, z)  # type: ignore[misc]
    l_stu, u_stu = wilson_interval(both + student_only, n, z)  # type: ignore[misc]
    phi = _newcombe_phi(both, reference_only, student_only, neither)
    delta = p_stu - p_ref
    low = delta - math.sqrt(max(0.0, (p_stu - l_stu) ** 2 - 2 * phi * (p_stu - l_stu) * (u_ref - p_ref) + (u_ref - p_ref) ** 2))
    high = delta + math.sqrt(max(0.0, (u_stu - p_stu) ** 2 - 2 * phi * (u_stu - p_stu) * (p_ref - l_ref) + (p_ref - l_ref) ** 2))
    return max(-1.0, low), min(1.0, high)


def _newcombe_phi(a: int, b: int, c: int, d: int) -> float:
    """Correlation of the paired table; 0 when a margin is empty, and n/2 is subtracted when positive."""
    n = a + b + c + d
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    if margins == 0:
        return 0.0
    cross = a * d - b * c
    if cross > n / 2:
        return (cross - n / 2) / math.sqrt(margins)
    return cross / math.sqrt(margins) if cross < 0 else 0.0


def paired_test(reference: torch.Tensor, student: torch.Tensor) -> PairedTest:
    """McNemar test and Newcombe interval for two boolean per-sample vectors over the same samples."""
    ref, stu = reference.bool().cpu(), student.bool().cpu()
    both, ref_only = int((ref & stu).sum()), int((ref & ~stu).sum())
    stu_only, neither = int((~ref & stu).sum()), int((~ref & ~stu).sum())
    n = int(ref.numel())
    return PairedTest(n, both, ref_only, stu_only, neither, (stu_only - ref_only) / n if n else None,
                      newcombe_paired_interval(both, ref_only, stu_only, neither), mcnemar_exact(ref_only, stu_only))


# --------------------------------------------------------------------------- bootstrap of spread
def _resampled_class_accuracy(flags: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor, num_classes: int,
                              resamples: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(resamples, classes) accuracies of both models; absent classes are NaN.

    Samples are redrawn within their class (the class counts of a test set are fixed by design),
    and the same draw is used for both models, so the pairing is kept.
    """
    ref_acc = torch.full((resamples, num_classes), math.nan, dtype=torch.float64)
    stu_acc = ref_acc.clone()
    for c in range(num_classes):
        idx = (labels == c).nonzero().flatten()
        if idx.numel() == 0:
            continue
        draw = idx[torch.randint(idx.numel(), (resamples, idx.numel()), generator=generator)]
        ref_acc[:, c] = flags[0][draw].double().mean(1)
        stu_acc[:, c] = flags[1][draw].double().mean(1)
    return ref_acc, stu_acc


def _nsd_rows(acc: torch.Tensor) -> torch.Tensor:
    present = acc[:, ~torch.isnan(acc[0])]
    mean = present.mean(1)
    std = present.std(1, unbiased=False)
    return torch.where(mean > 0, std / mean, torch.full_like(mean, math.nan))


def _gap_rows(acc: torch.Tensor) -> torch.Tensor:
    present = acc[:, ~torch.isnan(acc[0])]
    return present.max(1).values - present.min(1).values


def _percentile_interval(values: torch.Tensor) -> tuple[float, float] | None:
    values = values[~torch.isnan(values)]
    if values.numel() == 0:
        return None
    lo, hi = torch.quantile(values, torch.tensor([0.025, 0.975], dtype=values.dtype)).tolist()
    return float(lo), float(hi)


def spread_change_interval(reference: torch.Tensor, student: torch.Tensor, labels: torch.Tensor, num_classes: int, *,
                           resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> dict[str, tuple[float, float] | None]:
    """95 % percentile intervals of the change (student - reference) in NSD and in best - worst gap.

    A paired bootstrap stratified by class: ``resamples`` redraws of the samples within each class,
    the same redraw for both models, from a generator seeded with ``seed`` (so reports are
    reproducible). Returns ``{"nsd": interval, "gap": interval}``; an interval is None when it
    is undefined (no class present, or NSD undefined in every redraw).
    """
    labels = labels.long().cpu()
    if labels.numel() == 0 or num_classes == 0:
        return {"nsd": None, "gap": None}
    generator = torch.Generator().manual_seed(seed)
    ref_acc, stu_acc = _resampled_class_accuracy((reference.bool().cpu(), student.bool().cpu()), labels, num_classes,
                                                 resamples, generator)
    return {"nsd": _percentile_interval(_nsd_rows(stu_acc) - _nsd_rows(ref_acc)),
            "gap": _percentile_interval(_gap_rows(stu_acc) - _gap_rows(ref_acc))}
