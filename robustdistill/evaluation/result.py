"""The typed result of an evaluation: per-sample correctness under each attack, plus the evidence.

``to_dict`` writes schema ``robustdistill/evaluation@2`` (report.json); ``from_dict`` also reads
``@1`` files written by robustdistill 0.1 (flat attack settings, no batch size).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from ..cost import CostProfile
from ..errors import UsageError
from ..runtime import versions
from ..units import format_fraction
from ..metrics import summarize
from .attacks import ATTACKS, EvalAttack, EvalSettings

SCHEMA = "robustdistill/evaluation@2"
LEGACY_SCHEMA = "robustdistill/evaluation@1"


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class EvaluationResult:
    """Per-sample correctness of one model under each attack, plus the evidence.

    Attributes:
        model_id: how the model was named (identifier or file).
        dataset, split: the data; ``labels`` the label of every evaluated example, in order.
        class_names: names of the classes, in label order.
        correct: per attack name, a bool per example (robust = correct clean *and* under the attack).
        settings: the protocol (eps, seed, attack parameters).
        seconds: time per attack (with several processes, the longest one process spent on it).
        model_info: architecture, parameter count, file and sha256.
        batch_size: the largest attacked batch (results depend on it: each batch has its own seed).
        batching: how the examples were cut into batches: ``balanced`` (``ceil(n / batch_size)`` batches
            whose sizes differ by at most one) or ``fixed`` (batches of exactly ``batch_size`` and a
            smaller last one: reports written before balanced batches, read but never reused).
        provenance: per attack, where the number came from: ``{"source": "computed", "computed": time}``
            or the stored evaluation it was reused from.
        implementations: per attack, the code that computed it (library versions included).
        cost: the model's parameters, MACs, file size and latency (measured when the result was
            made; not part of what an evaluation cache entry must match).
        sharding: how the work was split (``world_size`` DDP ranks, or ``workers`` local processes);
            the per-sample results do not depend on it.
        versions: library versions the numbers were computed with.
        created: when this result was assembled (UTC).
    """

    model_id: str
    dataset: str
    split: str
    class_names: tuple[str, ...]
    labels: torch.Tensor
    correct: Mapping[str, torch.Tensor]
    settings: EvalSettings
    seconds: Mapping[str, float] = field(default_factory=dict)
    model_info: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int | None = None
    provenance: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    sharding: Mapping[str, int] = field(default_factory=lambda: {"world_size": 1, "workers": 1})
    batching: str = "balanced"
    implementations: Mapping[str, str] = field(default_factory=dict)
    cost: CostProfile | None = None
    versions: Mapping[str, str] = field(default_factory=versions)
    created: str = field(default_factory=now_utc)

    @property
    def n_examples(self) -> int:
        return int(self.labels.numel())

    @property
    def attack_names(self) -> list[str]:
        return list(self.correct)

    def attack(self, name: str) -> EvalAttack:
        """The attack object (with this evaluation's parameters) behind the results called ``name``."""
        return self.settings.attack(name)

    def summary(self, attack: str) -> Any:
        return summarize(self.correct[attack], self.labels, self.class_names)

    def accuracy(self, attack: str) -> float:
        return float(self.correct[attack].float().mean())

    def restricted(self, attacks: list[str], **changes: Any) -> "EvaluationResult":
        """The same result with only ``attacks`` (in that order), and other fields replaced."""
        keep = {
            "correct": {a: self.correct[a] for a in attacks},
            "seconds": {a: self.seconds.get(a, 0.0) for a in attacks},
            "provenance": {a: self.provenance[a] for a in attacks if a in self.provenance},
            "implementations": {a: self.implementations[a] for a in attacks if a in self.implementations},
        }
        return dataclasses.replace(self, **{**keep, **changes})

    def settings_dict(self) -> dict[str, Any]:
        eps = self.settings.eps
        return {
            "eps": eps, "eps_text": format_fraction(eps), "seed": self.settings.seed, "batch_size": self.batch_size,
            "batching": self.batching,
            "attacks": {a: {"label": self.attack(a).label, "reference": self.attack(a).reference,
                            "parameters": self.attack(a).parameters(eps),
                            "implementation": self.implementations.get(a) or self.attack(a).implementation()}
                        for a in self.correct},
            "overrides": {k: dict(v) for k, v in self.settings.params.items() if v},
        }

    def to_dict(self) -> dict[str, Any]:
        """The report.json payload (schema ``robustdistill/evaluation@2``)."""
        return {
            "schema": SCHEMA,
            "model": {"id": self.model_id, **self.model_info},
            "data": {
                "dataset": self.dataset, "split": self.split, "n_examples": self.n_examples,
                "class_names": list(self.class_names),
                "class_counts": torch.bincount(self.labels, minlength=len(self.class_names)).tolist(),
            },
            "settings": self.settings_dict(),
            "results": {a: _plain(self.summary(a)) for a in self.correct},
            "seconds": dict(self.seconds),
            "provenance": {a: dict(p) for a, p in self.provenance.items()},
            "sharding": dict(self.sharding),
            "cost": self.cost.to_dict() if self.cost is not None else None,
            "per_sample": {"labels": self.labels.tolist(),
                           "correct": {a: _bits(c) for a, c in self.correct.items()}},
            "versions": dict(self.versions),
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, report: Mapping[str, Any]) -> "EvaluationResult":
        """Rebuild from a report.json written by :meth:`to_dict` (``@2``) or by robustdistill 0.1 (``@1``)."""
        schema = report.get("schema")
        if schema not in (SCHEMA, LEGACY_SCHEMA):
            raise UsageError(f"not an evaluation report (schema {schema!r}); expected {SCHEMA}")
        legacy = schema == LEGACY_SCHEMA
        settings, batch_size = _settings_from(report["settings"], legacy=legacy)
        batching = "fixed" if legacy else str(report["settings"].get("batching") or "fixed")
        per = report["per_sample"]
        model = dict(report["model"])
        model_id = str(model.pop("id"))
        labels = torch.tensor(per["labels"], dtype=torch.long)
        correct = {str(a): _flags(bits, labels.numel()) for a, bits in per["correct"].items()}
        for name in correct:
            ATTACKS.canonical(name)
        return cls(
            model_id=model_id, dataset=str(report["data"]["dataset"]), split=str(report["data"]["split"]),
            class_names=tuple(str(c) for c in report["data"]["class_names"]), labels=labels, correct=correct,
            settings=settings, seconds=dict(report.get("seconds", {})), model_info=model, batch_size=batch_size,
            provenance=dict(report.get("provenance", {})), sharding=dict(report.get("sharding") or {"world_size": 1, "workers": 1}),
            batching=batching,
            versions=dict(report.get("versions", {})), created=str(report.get("created", "")),
            implementations=_implementations(report, correct, legacy),
            cost=CostProfile.from_dict(report["cost"]) if report.get("cost") else None,
        )


def _plain(summary: Any) -> Any:
    return summary.to_dict() if hasattr(summary, "to_dict") else summary


def _bits(flags: torch.Tensor) -> str:
    return "".join("1" if v else "0" for v in flags.tolist())


def _flags(bits: str, n: int) -> torch.Tensor:
    if not isinstance(bits, str) or len(bits) != n or set(bits) - {"0", "1"}:
        raise UsageError(f"per-sample results must be {n} characters of 0/1; the report is damaged")
    return torch.tensor([c == "1" for c in bits], dtype=torch.bool)


def _settings_from(raw: Mapping[str, Any], *, legacy: bool) -> tuple[EvalSettings, int | None]:
    if not legacy:
        return EvalSettings(eps=float(raw["eps"]), seed=int(raw["seed"]), params=dict(raw.get("overrides") or {})), \
            raw.get("batch_size")
    # robustdistill 0.1 wrote the parameters of pgd, cw and aa as flat keys (and no batch size).
    params = {"pgd": {"steps": raw["pgd_steps"], "step_size": raw["step_size"], "restarts": raw["pgd_restarts"]},
              "cw": {"steps": raw["cw_steps"], "step_size": raw["step_size"], "confidence": raw["cw_confidence"]},
              "aa": {"version": raw["aa_version"]}}
    return EvalSettings(eps=float(raw["eps"]), seed=int(raw["seed"]), params=params), None


def _implementations(report: Mapping[str, Any], attacks: Mapping[str, Any], legacy: bool) -> dict[str, str]:
    """Which code computed each attack; robustdistill 0.1 (``@1``) recorded only the library versions."""
    if not legacy:
        return {a: str(report["settings"]["attacks"][a]["implementation"]) for a in attacks}
    v = report.get("versions", {})
    ours = f"robustdistill 1 / torch {v.get('torch')}"
    return {a: f"pyautoattack {v.get('pyautoattack')} / torch {v.get('torch')}" if a == "aa" else ours for a in attacks}
