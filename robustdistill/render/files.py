"""Writing report files: report.json/report.md of ``evaluate``, fairness.json/.md with plots, a run's report.

Every file is written atomically (temporary file + rename); plots render headless (Agg). When no
provenance is passed, each evaluation's own per-attack ``provenance`` says which numbers were reused
from an earlier evaluation, from where, and when they were computed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from ..fileio import atomic_write_json, atomic_write_text
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


Out = Path | str | Callable[[str], Path]


def path_function(out: Out) -> Callable[[str], Path]:
    """``name -> path`` for an output directory (created) or a function such as ``RunDir.file``
    (which records every file it hands out in the directory's manifest)."""
    if callable(out):
        return out
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    return lambda name: directory / name


def write_evaluation(result: EvaluationResult, out: Out, provenance: Provenance | None = None) -> tuple[Path, Path]:
    """report.json (:meth:`EvaluationResult.to_dict`) and report.md into ``out`` (see :func:`path_function`)."""
    path_for = path_function(out)
    origin = provenance if provenance is not None else result_provenance(result)
    json_path, md_path = path_for("report.json"), path_for("report.md")
    atomic_write_json(json_path, result.to_dict())
    atomic_write_text(md_path, evaluation_document(result, origin))
    return json_path, md_path


def write_fairness(comparison: Comparison, out_dir: Out, *, plots: bool = True,
                   provenance: Mapping[str, Provenance] | None = None) -> list[Path]:
    """Write fairness.json, fairness.md and the PNGs into ``out_dir`` (created); returns the paths.

    Args:
        comparison: the numbers.
        out_dir: the directory, or a function giving each file's path (see :func:`path_function`).
        plots: also draw ``per_class_/scatter_/delta_<attack>.png``.
        provenance: model label -> per-attack provenance (default: read from each model's info).
    """
    path_for = path_function(out_dir)
    images = comparison_plots(comparison, path_for) if plots else []
    notes = {a: list(scatter_skips(comparison, a).values()) for a in comparison.attacks} if plots else {}
    origin = provenance if provenance is not None else {
        m.label: reused_only(m.provenance) for m in comparison.models}
    json_path, md_path = path_for("fairness.json"), path_for("fairness.md")
    atomic_write_json(json_path, comparison_json(comparison))
    atomic_write_text(md_path, fairness_markdown(comparison, images, origin, notes))
    return [json_path, md_path, *images]


def write_run_files(out_dir: Out, report: Mapping[str, Any], header: RunHeader, student: EvaluationResult,
                     teacher: EvaluationResult | None = None, comparison: Comparison | None = None,
                     provenance: Mapping[str, Provenance] | None = None,
                     natural_teacher: EvaluationResult | None = None) -> list[Path]:
    """A run's report: fairness files (with a comparison), report.json, report.md and per_class.png.

    Args:
        out_dir: the run directory, or its :meth:`~robustdistill.rundir.RunDir.file`.
        report: the report.json content assembled by the caller (run record, evaluations);
            ``fairness`` is added from ``comparison``.
        header: what report.md says about the run.
        student, teacher: the final test evaluations.
        comparison: student vs teacher.
        provenance: role (``student``/``teacher``/``natural teacher``) -> per-attack provenance (default: from model info).
        natural_teacher: MTARD's natural teacher's final test evaluation (a section of report.md).
    """
    path_for = path_function(out_dir)
    paths = write_fairness(comparison, path_for) if comparison is not None else []
    content = dict(report)
    if comparison is not None:
        content["fairness"] = comparison_json(comparison)
    origin = provenance if provenance is not None else {
        role: result_provenance(r) for role, r in (("student", student), ("teacher", teacher),
                                                   ("natural teacher", natural_teacher)) if r is not None}
    json_path, md_path = path_for("report.json"), path_for("report.md")
    atomic_write_json(json_path, content)
    atomic_write_text(md_path, run_markdown(header, student, teacher, comparison, origin, natural_teacher))
    return [*paths, json_path, md_path, run_plot(student, teacher, path_for("per_class.png"))]
