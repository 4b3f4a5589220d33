"""Stratified splitting with exact part sizes, and the validation split carved from training data."""

from __future__ import annotations

import math
from typing import Sequence, TypeVar

import numpy as np
import torch

from ..errors import DataError
from .splits import Split

SPLIT_SEED = 0
S = TypeVar("S", bound=Split)


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int = SPLIT_SEED) -> list[np.ndarray]:
    """Split indices per class into parts of the given fractions, with exact part sizes.

    Every part after the first holds ``ceil(f * N)`` samples (scikit-learn's convention for a
    held-out part) and the first takes the rest. Each part's size is shared over the classes by
    largest remainder, so the totals are exact (rounding class by class would drift) and the
    classes stay as balanced as the counts allow.

    Args:
        labels: one integer label per sample.
        fractions: the parts' shares of the samples (summing to 1).
        seed: seed of the shuffle within each class.

    Returns:
        One sorted index array per part; together they cover ``0 .. len(labels) - 1`` once.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    alloc = np.zeros((len(fractions), len(classes)), dtype=np.int64)
    for j, f in enumerate(fractions[1:], start=1):
        quota = f * counts
        base = np.floor(quota + 1e-9).astype(np.int64)
        extra = math.ceil(f * len(labels) - 1e-6) - int(base.sum())
        order = np.argsort(-(quota - base), kind="stable")  # largest remainder first; ties -> lowest class
        base[order[: max(0, extra)]] += 1
        alloc[j] = np.minimum(base, counts - alloc[1:j].sum(0))
    alloc[0] = counts - alloc[1:].sum(0)
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    for k, c in enumerate(classes):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        for part, chunk in zip(parts, np.split(idx, np.cumsum(alloc[:-1, k]))):
            part.extend(chunk.tolist())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def carve_val(train: S, val_size: int | None) -> tuple[S, S]:
    """Split a training pool into (train, val), stratified with :data:`SPLIT_SEED`.

    Args:
        train: the training pool.
        val_size: examples in the validation split; default 10% of the pool, at most 1,000.

    Returns:
        The remaining training split and the validation split (named ``val``).
    """
    n = len(train)
    n_val = val_size if val_size is not None else min(1000, max(1, round(0.1 * n)))
    if val_size is None and n < 2:
        raise DataError(f"a training split of {n} example(s) is too small to carve a validation split from; "
                        "add more images (a few per class at least)")
    if not 0 < n_val < n:
        raise DataError(f"--val-size {n_val} must be between 1 and {n - 1} for a training split of {n}")
    labels = train.labels.numpy()
    rest, val = stratified_split(labels, [1 - n_val / n, n_val / n])
    return train.subset(torch.from_numpy(rest)), renamed(train.subset(torch.from_numpy(val)), "val")


def renamed(split: S, name: str) -> S:
    """``split`` renamed in place; callers pass a fresh subset that nothing else holds."""
    split.name = name
    return split
