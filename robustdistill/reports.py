"""Report files: reading report.json back, and loading or evaluating the models of a fairness comparison.

A model for :func:`fairness_report` is named by a ``report.json`` written by ``robustdistill evaluate``
(schema ``robustdistill/evaluation@1``) or ``distill`` (``robustdistill/distill@1``; ``#teacher`` /
``#student`` picks one of its two evaluations, the student by default), by a run directory holding
a report.json, or by anything :func:`robustdistill.api.evaluate` accepts (then it is evaluated).
Stored evaluations are used as they are, after checking them against what the user asked for.

Writing reports is :mod:`robustdistill.render`; the numbers of a comparison are
:mod:`robustdistill.fairness`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .units import format_fraction
from .errors import RobustDistillError, UsageError
from .evaluation import EvaluationResult, attack_names
from .evaluation.result import LEGACY_SCHEMA as LEGACY_EVALUATION_SCHEMA
from .evaluation.result import SCHEMA as EVALUATION_SCHEMA
from .fairness import Comparison, compare

if TYPE_CHECKING:
    from .api import ModelOptions

EVALUATION_SCHEMAS = (EVALUATION_SCHEMA, LEGACY_EVALUATION_SCHEMA)
DISTILL_SCHEMA = "robustdistill/distill@2"
DISTILL_SCHEMAS = (DISTILL_SCHEMA, "robustdistill/distill@1")
SELECTORS = ("student", "teacher")


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
    if schema in EVALUATION_SCHEMAS:
        if selector is not None:
            raise UsageError(f"{shown}: #{selector} only applies to a distill report.json; drop the #{selector}")
        return data
    if schema in DISTILL_SCHEMAS:
        role = selector or "student"
        if role not in SELECTORS:
            raise UsageError(f"{shown}: unknown selector #{role}; use #student or #teacher")
        part = data.get(role)
        if not isinstance(part, dict) or part.get("schema") not in EVALUATION_SCHEMAS or "per_sample" not in part:
            raise UsageError(f"{shown} holds no per-sample {role} evaluation; re-run `robustdistill evaluate` on the {role}")
        return part
    raise UsageError(f"{shown} is not a robustdistill report.json (schema {schema!r}); expected {EVALUATION_SCHEMA} or {DISTILL_SCHEMA}")


def read_evaluation(spec: str | Path) -> EvaluationResult:
    """The evaluation in a report.json (``RUN/report.json#teacher`` selects a distill run's teacher) or run directory.

    Raises:
        UsageError: missing, unreadable, foreign or damaged files (one line).
    """
    shown = str(spec)
    path = report_path(shown)
    if path is None:
        raise UsageError(f"{shown} is not a report.json or a run directory; pass one written by `robustdistill evaluate --out` or `distill`")
    _, selector = split_selector(shown)
    data = read_report(path, selector, shown)
    try:
        return EvaluationResult.from_dict(data)
    except RobustDistillError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise UsageError(f"{shown} is damaged ({type(exc).__name__}: {str(exc)[:80]}); re-create it with `robustdistill evaluate --out`") from None


def load_report(path: str | Path) -> EvaluationResult:
    """Read a report.json written by ``evaluate --out`` (or a distill run's, ``RUN/report.json#teacher``)
    back into an :class:`EvaluationResult`; the Python twin of giving ``fairness-report`` a report."""
    if not isinstance(path, (str, Path)):
        raise UsageError(f"load_report needs a path to a report.json, not {type(path).__name__}")
    return read_evaluation(path)


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
    return result.restricted([a for a in result.correct if a in requested.attacks])


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
        return check_requested(read_evaluation(path_or_model), requested, path_or_model)
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


def _resolve_settings(reports: dict[int, EvaluationResult], specs: Sequence[str], requested: Requested,
                      options: ModelOptions | None = None) -> dict[str, Any]:
    """Settings for the models still to evaluate: explicit > first stored report > model file > defaults."""
    from . import api

    first = next(iter(reports.values()), None)
    if first is not None:
        overrides = {f"{a}_{k}": v for a, values in first.settings.params.items() for k, v in values.items()}
        return {"dataset": requested.dataset or first.dataset,
                "eps": requested.eps if requested.eps is not None else first.settings.eps,
                "n_examples": requested.n_examples if requested.n_examples is not None else first.n_examples,
                "attacks": list(requested.attacks) if requested.attacks else list(first.correct),
                "attack_params": overrides, "seed": first.settings.seed,
                "batch_size": first.batch_size}
    # No stored report: the first model's training budget (api.evaluate's rule: required when it records none).
    eps = requested.eps if requested.eps is not None else api.model_budget(specs[0], None, api.model_options(options))
    return {"dataset": requested.dataset, "eps": eps, "n_examples": requested.n_examples,
            "attacks": list(requested.attacks or ("clean", "pgd"))}


def fairness_report(
    models: Sequence[str],
    *,
    labels: Sequence[str] | None = None,
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    attacks: str | Sequence[str] | None = None,
    eps: float | str | None = None,
    n_examples: int | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    seed: int | None = None,
    options: ModelOptions | None = None,
    reuse: bool = True,
    workers: int | None = None,
) -> Comparison:
    """Load or evaluate every model, then :func:`~robustdistill.fairness.compare` them (the first is the reference).

    Stored report.json files are used as they are; the other models are evaluated with the
    explicit settings, else those of the first report, else the defaults (clean,pgd at 8/255, or
    the eps recorded in the first robustdistill model). The data is loaded once. ``workers``: local
    CPU processes per evaluation, as for :func:`robustdistill.api.evaluate`.
    """
    from .units import parse_fraction

    if len(models) < 2:
        raise UsageError("fairness-report needs at least two models: the reference (e.g. the teacher) and a student")
    if labels is not None and len(labels) != len(models):
        raise UsageError(f"--labels gives {len(labels)} names for {len(models)} models; give one per model")
    requested = Requested(dataset, parse_fraction(eps) if eps is not None else None, n_examples,
                          tuple(attack_names(attacks)) if attacks is not None else None)
    reports = {k: load_entry(spec, requested) for k, spec in enumerate(models) if report_path(spec) is not None}
    results: dict[int, EvaluationResult] = dict(reports)
    todo = [k for k in range(len(models)) if k not in reports]
    if todo:
        results.update(_evaluate_all(models, todo, reports, requested, data_dir, batch_size, device, seed, options, reuse,
                                     workers))
    ordered = [results[k] for k in range(len(models))]
    names = list(labels) if labels is not None else default_labels(models, ordered)
    return compare(list(zip(names, ordered)), attacks=requested.attacks)


def _evaluate_all(models: Sequence[str], todo: Sequence[int], reports: dict[int, EvaluationResult], requested: Requested,
                  data_dir: str | Path | None, batch_size: int | None, device: str | None, seed: int | None,
                  options: ModelOptions | None, reuse: bool, workers: int | None = None) -> dict[int, EvaluationResult]:
    """Evaluate the models that are not stored reports, on data loaded once."""
    from . import api
    from .data import load_dataset

    settings = _resolve_settings(reports, [models[k] for k in todo], requested, options)
    name = settings.pop("dataset") or api.resolve_dataset_name(models[todo[0]], None, api.model_options(options))
    splits = load_dataset(name, data_dir)
    if seed is not None:
        settings["seed"] = seed
    # The batch size is part of the protocol (each batch has its own random start): a stored
    # report's wins unless one is asked for.
    batch = batch_size or settings.pop("batch_size", None) or 256
    settings.pop("batch_size", None)
    kwargs = {**settings, "batch_size": batch, "device": device, "splits": splits, "reuse": reuse, "workers": workers}
    if options is not None:
        kwargs["options"] = options
    return {k: api.evaluate(models[k], **kwargs) for k in todo}
