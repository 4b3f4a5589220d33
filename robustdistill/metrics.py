"""Per-class robustness metrics computed from per-sample results, so every number is exact.

* accuracy: overall fraction correct (= class accuracies weighted by class counts).
* per-class accuracy, worst class (lowest accuracy; ties -> lowest index), best class, gap = best - worst.
* NSD (normalised standard deviation) = population std (ddof=0) of the class accuracies divided by
  their unweighted mean; 0 for perfectly even robustness, ``None`` when the mean is 0.
* 95 % Wilson intervals per class, because worst-class numbers on small subsets are noisy.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch


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


def wilson_interval(hits: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    if n <= 0:
        return None
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def summarize(correct: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]) -> dict[str, Any]:
    """All per-class metrics for one attack, as a JSON-ready dict."""
    num_classes = len(class_names)
    acc, counts, hits = class_accuracy(correct, labels, num_classes)
    present = [(i, a) for i, a in enumerate(acc) if a is not None]
    worst_i, worst = min(present, key=lambda t: (t[1], t[0])) if present else (None, None)
    best_i, best = max(present, key=lambda t: (t[1], -t[0])) if present else (None, None)
    values = [a for _, a in present]
    n = int(labels.numel())
    return {
        "accuracy": float(correct.float().mean()) if n else None,
        "n": n,
        "n_correct": int(correct.sum()),
        "per_class": acc,
        "class_counts": counts,
        "class_correct": hits,
        "ci95": [wilson_interval(h, c) for h, c in zip(hits, counts)],
        "mean_class_accuracy": sum(values) / len(values) if values else None,
        "worst_class": {"index": worst_i, "name": class_names[worst_i] if worst_i is not None else None, "accuracy": worst},
        "best_class": {"index": best_i, "name": class_names[best_i] if best_i is not None else None, "accuracy": best},
        "gap": (best - worst) if present else None,
        "nsd": nsd(values),
        "classes_absent": [class_names[i] for i, a in enumerate(acc) if a is None],
    }
