"""Writing report files: report.json/report.md of ``evaluate``, fairness.json/.md with plots, a run's report.

Every file is written atomically (temporary file + rename); plots render headless (Agg). When no
provenance is passed, each evaluation's own per-attack ``provenance`` says which numbers were reused
from an earlier evaluation, from where, and when they were computed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from .._utils import atomic_write_json, atomic_write_text
from ..evaluation import EvaluationResult
from ..fairness import Comparison
from .markdown import RunHeader, evaluation_document, fairness_markdown, run_markdown
from .plots import comparison_plots, run_plot, scatter_skips
from .text import Provenance, reused_only
from .verdicts import attack_verdict


def comparison_json(comparison: Comparison) -> dict[str, Any]:
    """fairness.json's content: :meth:`Comparison.to_dict` plus the ``verdict`` sentences.

    Each student gets ``verdict`` (under the headline attack) and each of its attacks its own
    ``verdict``, where fairness.json has always had them.
    """
    data = comparison.to_dict()
    for k, student in enumerate(comparison.comparisons):
        entry = data["comparisons"][k]
        for attack in student.attacks:
            entry["attacks"][attack]["verdict"] = attack_verdict(comparison, student.label, attack)
        data["comparisons"][k] = {"label": entry["label"], "reference": entry["reference"],
                                  "verdict": entry["attacks"][comparison.headline_attack]["verdict"],
                                  "attacks": entry["attacks"]}
    return data


def result_provenance(result: EvaluationResult) -> dict[str, dict[str, str]]:
    """Per-attack provenance of ``result`` when it was reused from an earlier evaluation (else empty)."""
    return reused_only(result.provenance)


def write_evaluation(result: EvaluationResult, out_dir: str | Path, provenance: Provenance | None = None) -> tuple[Path, Path]:
    """report.json (:meth:`EvaluationResult.to_dict`) and report.md into ``out_dir`` (created)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    origin = provenance if provenance is not None else result_provenance(result)
    atomic_write_json(out / "report.json", result.to_dict())
    atomic_write_text(out / "report.md", evaluation_document(result, origin))
    return out / "report.json", out / "report.md"


def write_fairness(comparison: Comparison, out_dir: Path | str, *, plots: bool = True,
                   provenance: Mapping[str, Provenance] | None = None) -> list[Path]:
    """Write fairness.json, fairness.md and the PNGs into ``out_dir`` (created); returns the paths.

    Args:
        comparison: the numbers.
        out_dir: the directory.
        plots: also draw ``per_class_/scatter_/delta_<attack>.png``.
        provenance: model label -> per-attack provenance (default: read from each model's info).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = comparison_plots(comparison, out) if plots else []
    notes = {a: list(scatter_skips(comparison, a).values()) for a in comparison.attacks} if plots else {}
    origin = provenance if provenance is not None else {
        m.label: reused_only(m.provenance) for m in comparison.models}
    atomic_write_json(out / "fairness.json", comparison_json(comparison))
    atomic_write_text(out / "fairness.md", fairness_markdown(comparison, images, origin, notes))
    return [out / "fairness.json", out / "fairness.md", *images]


def write_run_files(out_dir: Path | str, report: Mapping[str, Any], header: RunHeader, student: EvaluationResult,
                     teacher: EvaluationResult | None = None, comparison: Comparison | None = None,
                     provenance: Mapping[str, Provenance] | None = None) -> list[Path]:
    """A run's report: fairness files (with a comparison), report.json, report.md and per_class.png.

    Args:
        out_dir: the run directory.
        report: the report.json content assembled by the caller (run record, evaluations);
            ``fairness`` is added from ``comparison``.
        header: what report.md says about the run.
        student, teacher: the final test evaluations.
        comparison: student vs teacher.
        provenance: role (``student``/``teacher``) -> per-attack provenance (default: from model info).
    """
    out = Path(out_dir)
    paths = write_fairness(comparison, out) if comparison is not None else []
    content = dict(report)
    if comparison is not None:
        content["fairness"] = comparison_json(comparison)
    origin = provenance if provenance is not None else {
        role: result_provenance(r) for role, r in (("student", student), ("teacher", teacher)) if r is not None}
    atomic_write_json(out / "report.json", content)
    atomic_write_text(out / "report.md", run_markdown(header, student, teacher, comparison, origin))
    paths += [out / "report.json", out / "report.md", run_plot(student, teacher, out / "per_class.png")]
    return paths
