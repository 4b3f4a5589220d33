"""Reuse of evaluations that were already run (a teacher's AutoAttack can take hours on CIFAR).

An evaluation is reused only when *everything* that determines it is the same: the model file's
sha256, the dataset, split and the exact label vector of the evaluated examples, the attack
settings (eps, steps, step size, restarts, CW confidence, AutoAttack version, seed) and the
versions of torch and pyautoattack. Sources, in order:

1. the evaluation shipped next to a bundled model (``assets/NAME.report.json``);
2. the user cache, ``$ROBUSTDISTILL_CACHE/evaluations`` (default ``~/.cache/robustdistill``),
   written after every teacher evaluation of ``distill``. ``ROBUSTDISTILL_CACHE=off`` disables it.

A reused result is restricted to the requested attacks; the report says it was reused.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, replace
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import torch

from ._utils import atomic_write_json, versions
from .evaluation import EvalSettings, EvaluationResult, evaluate_model
from .progress import console


def cache_dir() -> Path | None:
    root = os.environ.get("ROBUSTDISTILL_CACHE", "")
    if root.lower() in ("off", "0", "none", "false"):
        return None
    return (Path(root) if root else Path.home() / ".cache" / "robustdistill") / "evaluations"


def partial_path(sha256: str | None) -> Path | None:
    """Where an unfinished evaluation of the model file with ``sha256`` keeps its progress."""
    root = cache_dir()
    return root.parent / "partial" / f"{sha256[:24]}.partial.json" if root is not None and sha256 else None


def _key(sha256: str, dataset: str, split: str, labels: torch.Tensor, settings: EvalSettings) -> str:
    v = versions()
    payload = {
        "sha256": sha256, "dataset": dataset, "split": split,
        "labels": hashlib.sha256(labels.to(torch.int64).numpy().tobytes()).hexdigest(),
        "settings": asdict(_effective(settings)), "torch": v["torch"], "pyautoattack": v["pyautoattack"],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def _effective(settings: EvalSettings) -> EvalSettings:
    """Settings with the default step (eps/4) written out, as reports store it."""
    return replace(settings, step_size=settings.step)


def _matches(result: EvaluationResult, sha256: str, dataset: str, split: str, labels: torch.Tensor,
             settings: EvalSettings, attacks: Sequence[str]) -> bool:
    return (
        result.model_info.get("sha256") == sha256 and result.dataset == dataset and result.split == split
        and torch.equal(result.labels, labels.cpu()) and _effective(result.settings) == _effective(settings)
        and set(attacks) <= set(result.correct)
    )


def _restrict(result: EvaluationResult, attacks: Sequence[str], model_id: str, source: str) -> EvaluationResult:
    info = {**result.model_info, "reused_evaluation": source}
    return replace(result, model_id=model_id, correct={a: result.correct[a] for a in attacks},
                   seconds={a: result.seconds.get(a, 0.0) for a in attacks}, model_info=info)


def _candidates(bundled: str | None, key: str) -> list[tuple[str, Path]]:
    out = []
    if bundled:
        shipped = resources.files("robustdistill") / "assets" / f"{bundled}.report.json"
        if shipped.is_file():
            out.append((f"bundled:{bundled} (shipped evaluation)", Path(str(shipped))))
    root = cache_dir()
    if root is not None and (root / f"{key}.json").is_file():
        out.append((str(root / f"{key}.json"), root / f"{key}.json"))
    return out


def lookup(model_id: str, sha256: str | None, dataset: str, split: str, labels: torch.Tensor,
           settings: EvalSettings, attacks: Sequence[str]) -> EvaluationResult | None:
    """A stored evaluation of exactly this model, data and settings, or ``None``."""
    if not sha256:
        return None
    bundled = model_id.split(":", 1)[1] if model_id.startswith("bundled:") else None
    key = _key(sha256, dataset, split, labels, settings)
    for source, path in _candidates(bundled, key):
        try:
            result = EvaluationResult.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a damaged cache entry is ignored, never trusted
        if _matches(result, sha256, dataset, split, labels, settings, attacks):
            return _restrict(result, attacks, model_id, source)
    return None


def store(result: EvaluationResult) -> Path | None:
    """Cache ``result`` (only for models identified by a file hash)."""
    root = cache_dir()
    sha = result.model_info.get("sha256")
    if root is None or not sha:
        return None
    path = root / f"{_key(sha, result.dataset, result.split, result.labels, result.settings)}.json"
    try:
        atomic_write_json(path, result.to_dict())
    except OSError:
        return None  # a read-only home directory must not fail a run
    return path


def evaluate_or_reuse(model: torch.nn.Module, data: Any, class_names: Sequence[str], *, attacks: Sequence[str],
                      settings: EvalSettings, model_id: str, dataset: str, model_info: dict[str, Any], reuse: bool,
                      reused_message: str, **evaluate_options: Any) -> EvaluationResult:
    """:func:`~robustdistill.evaluation.evaluate_model`, unless ``reuse`` finds an identical stored
    evaluation (then ``reused_message``, formatted with its ``source``, is printed and it is
    returned); with ``reuse`` a fresh result is stored for next time."""
    if reuse:
        found = lookup(model_id, model_info.get("sha256"), dataset, data.name, data.labels, settings, attacks)
        if found is not None:
            console.print(reused_message.format(source=found.model_info["reused_evaluation"]))
            return found
    result = evaluate_model(model, data, class_names, attacks=attacks, settings=settings, model_id=model_id,
                            dataset=dataset, model_info=model_info, **evaluate_options)
    if reuse:
        store(result)
    return result
