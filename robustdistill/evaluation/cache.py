"""Reuse of evaluations that were already run (a teacher's AutoAttack can take hours on CIFAR).

A stored evaluation is reused only when everything that determines its per-sample results is the
same: the model file's sha256; the dataset, split and exact label vector of the evaluated
examples; eps, the evaluation seed, the batch size and the batching (each batch has its own random
start); and
for every requested attack its parameters and the code that computed it (robustdistill's attack
code version, torch, and pyautoattack for AutoAttack). A different library version is a miss.
Sources, in order:

1. the evaluation shipped next to a bundled model (``assets/NAME.report.json``);
2. the user cache, ``$ROBUSTDISTILL_CACHE/evaluations`` (default ``~/.cache/robustdistill``).
   ``ROBUSTDISTILL_CACHE=off`` disables it.

A reused result is restricted to the requested attacks, and each attack's ``provenance`` says
where it was reused from and when it was computed; reports print that.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..fileio import atomic_write_json
from ..data import Split
from ..progress import console
from .attacks import ATTACKS, EvalAttack, EvalSettings
from .result import EvaluationResult
from .runner import evaluate_model
from .sharding import broadcast_from_main, distributed_world
from .work import BATCHING

CACHE_ENV = "ROBUSTDISTILL_CACHE"


def cache_root() -> Path | None:
    """``$ROBUSTDISTILL_CACHE`` (default ``~/.cache/robustdistill``), or ``None`` when it is ``off``."""
    root = os.environ.get(CACHE_ENV, "")
    if root.lower() in ("off", "0", "none", "false"):
        return None
    return Path(root) if root else Path.home() / ".cache" / "robustdistill"


def partial_path(sha256: str | None) -> Path | None:
    """Where an unfinished evaluation of the model file with ``sha256`` keeps its progress."""
    root = cache_root()
    return root / "partial" / f"{sha256[:24]}.partial.json" if root is not None and sha256 else None


def _labels_hash(labels: torch.Tensor) -> str:
    return hashlib.sha256(labels.to(torch.int64).cpu().numpy().tobytes()).hexdigest()


def _key(sha256: str, dataset: str, split: str, labels: torch.Tensor, settings: EvalSettings, batch_size: int) -> str:
    """File name of the cache entry for this model, data and protocol context (attacks live inside it)."""
    payload = [sha256, dataset, split, _labels_hash(labels), settings.eps, settings.seed, batch_size, BATCHING]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:32]


def _same_attack(stored: EvaluationResult, attack: EvalAttack) -> bool:
    """Same parameters and same implementation (code and library versions) as when it was stored."""
    if attack.name not in stored.correct:
        return False
    old = stored.attack(attack.name)
    return (old.parameters(stored.settings.eps) == attack.parameters(stored.settings.eps)
            and stored.implementations.get(attack.name) == attack.implementation())


def _matches(stored: EvaluationResult, sha256: str, data: Split, dataset: str, settings: EvalSettings,
             attacks: Sequence[EvalAttack], batch_size: int) -> bool:
    return (stored.model_info.get("sha256") == sha256 and stored.dataset == dataset and stored.split == data.name
            and torch.equal(stored.labels, data.labels.cpu()) and stored.settings.eps == settings.eps
            and stored.settings.seed == settings.seed and stored.batch_size == batch_size and stored.batching == BATCHING
            and all(_same_attack(stored, a) for a in attacks))


def _candidates(bundled: str | None, key: str) -> list[tuple[str, Path]]:
    out = []
    if bundled:
        shipped = resources.files("robustdistill") / "assets" / f"{bundled}.report.json"
        if shipped.is_file():
            out.append((f"bundled:{bundled} (shipped evaluation)", Path(str(shipped))))
    root = cache_root()
    if root is not None and (root / "evaluations" / f"{key}.json").is_file():
        out.append((str(root / "evaluations" / f"{key}.json"), root / "evaluations" / f"{key}.json"))
    return out


def _read(path: Path) -> EvaluationResult | None:
    try:
        return EvaluationResult.from_dict(json.loads(path.read_text()))
    except Exception:  # noqa: BLE001 - a damaged or foreign cache entry is ignored, never trusted
        return None


def lookup(model_id: str, sha256: str | None, data: Split, dataset: str, settings: EvalSettings,
           attacks: Sequence[EvalAttack], batch_size: int) -> EvaluationResult | None:
    """A stored evaluation of exactly this model, data and protocol for ``attacks``, or ``None``."""
    if not sha256:
        return None
    bundled = model_id.split(":", 1)[1] if model_id.startswith("bundled:") else None
    for source, path in _candidates(bundled, _key(sha256, dataset, data.name, data.labels, settings, batch_size)):
        stored = _read(path)
        if stored is not None and _matches(stored, sha256, data, dataset, settings, attacks, batch_size):
            provenance = {a.name: {"source": source, "computed": _computed(stored, a.name)} for a in attacks}
            return stored.restricted([a.name for a in attacks], model_id=model_id, provenance=provenance)
    return None


def _computed(stored: EvaluationResult, attack: str) -> str:
    return str((stored.provenance.get(attack) or {}).get("computed") or stored.created)


def store(result: EvaluationResult) -> Path | None:
    """Cache ``result`` (models identified by a file hash only), merged with attacks stored before."""
    root, sha = cache_root(), result.model_info.get("sha256")
    if root is None or not sha or result.batch_size is None:
        return None
    path = root / "evaluations" / f"{_key(sha, result.dataset, result.split, result.labels, result.settings, result.batch_size)}.json"
    merged = _merge(_read(path), result) if path.exists() else result
    try:
        atomic_write_json(path, merged.to_dict())
    except OSError:
        return None  # a read-only or full home directory must not fail a run
    return path


def _merge(old: EvaluationResult | None, new: EvaluationResult) -> EvaluationResult:
    """``new`` plus the attacks of ``old`` that ``new`` lacks (same model, data and protocol context)."""
    if (old is None or old.model_info.get("sha256") != new.model_info.get("sha256") or not torch.equal(old.labels, new.labels)
            or old.batching != new.batching):
        return new
    extra = [a for a in old.correct if a not in new.correct and old.implementations.get(a)]
    if not extra:
        return new
    params = {a: new.settings.params[a] for a in new.correct if a in new.settings.params}
    params.update({a: old.settings.params[a] for a in extra if a in old.settings.params})
    names = [a for a in ATTACKS.names() if a in new.correct or a in extra]
    return EvaluationResult(
        new.model_id, new.dataset, new.split, new.class_names, new.labels,
        {**{a: old.correct[a] for a in extra}, **new.correct}, EvalSettings(new.settings.eps, new.settings.seed, params),
        seconds={**old.seconds, **new.seconds}, model_info=new.model_info, batch_size=new.batch_size,
        provenance={**old.provenance, **new.provenance}, sharding=new.sharding, batching=new.batching,
        implementations={**old.implementations, **new.implementations}, versions=new.versions,
    ).restricted(names)


def evaluate_or_reuse(model: nn.Module, data: Split, class_names: Sequence[str], *, attacks: Sequence[str],
                      settings: EvalSettings, model_id: str, dataset: str, model_info: dict[str, Any], reuse: bool,
                      reused_message: str, batch_size: int = 256, **evaluate_options: Any) -> EvaluationResult:
    """:func:`~robustdistill.evaluation.runner.evaluate_model`, unless ``reuse`` finds an identical stored
    evaluation (then ``reused_message``, formatted with its ``source``, is printed and it is
    returned); with ``reuse`` a fresh result is stored for next time.

    With ``distributed=True`` every rank calls this: rank 0 alone looks in the cache (the others
    get its answer), prints and stores.
    """
    chosen = settings.attacks(attacks)
    rank, world = distributed_world() if evaluate_options.get("distributed") else (0, 1)
    if reuse:
        found = lookup(model_id, model_info.get("sha256"), data, dataset, settings, chosen, batch_size) if rank == 0 else None
        found = broadcast_from_main(found) if world > 1 else found
        if found is not None:
            source = next(iter(found.provenance.values()))["source"]
            if rank == 0:
                console.print(reused_message.format(source=source))
            return found
    result = evaluate_model(model, data, class_names, attacks=[a.name for a in chosen], settings=settings,
                            model_id=model_id, dataset=dataset, model_info=model_info, batch_size=batch_size,
                            **evaluate_options)
    if reuse and rank == 0:
        store(result)
    return result
