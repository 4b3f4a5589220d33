"""The Python API of ``robustdistill evaluate``; the CLI is a thin layer over these functions.

Defaults are the CLI's: the attack budget is the model's recorded training budget when it has
one, else a required argument; attacks ``clean,pgd``; every example of the test split.
Bad arguments raise the same :class:`~robustdistill.errors.RobustDistillError` subclasses the
CLI turns into one-line messages.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

from .fileio import sha256_file
from .runtime import select_device
from .train.distributed import joined_process_group, rank_device
from .config import MAX_SEED, parse_budget
from .data import DatasetSplits, Split, load_dataset
from .errors import UsageError
from .evaluation import EvalSettings, EvaluationResult, attack_names, eval_settings, refuse_gradient_attacks
from .evaluation.cache import evaluate_or_reuse, partial_path
from .models import Classifier, ModelOptions, check_fits, count_parameters, load_model, model_file, recorded_config, recorded_eps


def model_options(options: ModelOptions | Mapping[str, Any] | None) -> ModelOptions:
    """``options`` as :class:`ModelOptions` (a mapping with its field names is accepted too)."""
    if options is None:
        return ModelOptions()
    if isinstance(options, ModelOptions):
        return options
    if isinstance(options, Mapping):
        valid = ModelOptions.__dataclass_fields__
        unknown = sorted(str(k) for k in options if k not in valid)
        if unknown:
            raise UsageError(f"unknown model option(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
        return ModelOptions(**dict(options))
    raise UsageError(f"options must be a ModelOptions or a mapping of its fields, not {type(options).__name__}")


def model_budget(model: str | Classifier, eps: float | str | None, options: ModelOptions = ModelOptions()) -> float:
    """The eps rule: ``eps`` when given, else the budget the model was trained at, else an error."""
    if eps is not None:
        return parse_budget(eps)
    recorded = recorded_eps(model, options) if isinstance(model, str) else model.spec.eps
    if recorded is None:
        name = model if isinstance(model, str) else (model.spec.source or model.spec.arch)
        raise UsageError(f"{name} records no training budget; pass --eps (eps=... in Python), e.g. 8/255")
    return float(recorded)


def recorded_dataset(identifier: str, options: ModelOptions = ModelOptions()) -> str | None:
    """The dataset a robustdistill model file was trained on (None for other models).

    Run configs of robustdistill 0.2 hold it as ``data.name``, those of 0.1 as ``dataset``.
    """
    config = recorded_config(identifier, options)
    data = config.get("data")
    name = data.get("name") if isinstance(data, Mapping) else config.get("dataset")
    return str(name) if name else None


def resolve_dataset_name(identifier: str, dataset: str | None, options: ModelOptions = ModelOptions()) -> str:
    """``dataset`` if given, else the dataset recorded in the model file, else an error."""
    if dataset:
        return dataset
    recorded = recorded_dataset(identifier, options)
    if recorded:
        return recorded
    raise UsageError(f"say which data to evaluate {identifier!r} on with --dataset (see `robustdistill list datasets`)")


def describe_model(identifier: str, model: Classifier, options: ModelOptions = ModelOptions()) -> dict[str, Any]:
    """Architecture, size and the file (with its sha256) behind a model: the evidence of a report."""
    info: dict[str, Any] = {
        "arch": model.spec.arch, "num_classes": model.spec.num_classes, "input_size": list(model.spec.input_size),
        "parameters": count_parameters(model) or _exported_parameters(model), "source": model.spec.source or identifier,
    }
    path = model_file(identifier, options)
    if path is not None and path.exists():
        # Bundled files live wherever the package is installed: name them package-relative.
        info["file"] = f"robustdistill/assets/{path.name}" if identifier.startswith("bundled:") else str(path)
        info["sha256"] = sha256_file(path)
    return info


def _exported_parameters(model: Any) -> int:
    """The parameter count an exported file records (its graph has no torch parameters)."""
    return int((getattr(model, "info", {}).get("source") or {}).get("parameters") or 0)


def open_model(identifier: str | Classifier, splits: DatasetSplits, options: ModelOptions = ModelOptions(),
               role: str = "model") -> Classifier:
    """Load ``identifier`` for ``splits`` and check it fits the data (classes, channels, size)."""
    hint = splits.info.hint()
    if isinstance(identifier, Classifier):
        model = identifier
    else:
        model = load_model(identifier, arch=options.arch, num_classes=options.num_classes, weights=options.weights,
                           model_dir=options.model_dir, mean=options.mean, std=options.std, hint=hint)
    check_fits(model, hint, role)
    return model


def _check_args(model: Any, batch_size: Any, n_examples: Any, seed: Any) -> None:
    if not isinstance(model, (str, Classifier)) or (isinstance(model, str) and not model.strip()):
        raise UsageError(f"model must be a model identifier (str) or a Classifier, not {model!r}")
    for name, value, low in (("batch_size", batch_size, 1), ("n_examples", n_examples, 1), ("seed", seed, 0)):
        if value is None and name == "n_examples":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= MAX_SEED:
            raise UsageError(f"{name} must be an integer >= {low}, got {value!r}")


def evaluate(
    model: str | Classifier, *, dataset: str | None = None, data_dir: str | Path | None = None,
    split: str | None = None, attacks: str | Sequence[str] = ("clean", "pgd"), eps: float | str | None = None,
    n_examples: int | None = None, batch_size: int = 256, device: str | None = None, seed: int = 0,
    pgd_steps: int | None = None, step_size: float | str | None = None, attack_params: Mapping[str, Any] | None = None,
    options: ModelOptions | Mapping[str, Any] | None = None, download: bool = False, image_size: int | None = None,
    splits: DatasetSplits | None = None, model_id: str | None = None, reuse: bool = True, profile: bool = True,
    workers: int | None = None,
) -> EvaluationResult:
    """Evaluate a model with exact per-class results (the Python twin of ``robustdistill evaluate``).

    Args:
        model: a model identifier (``bundled:digits``, ``robustbench:NAME``, ``timm:NAME``, a file) or a Classifier.
        eps: L-inf budget in [0, 1] pixel units (``8/255`` or ``0.031``); default: the budget the
            model was trained at; a model that records none needs it.
        attacks: names, e.g. ``"clean,pgd,aa"`` (see ``robustdistill list attacks``).
        pgd_steps, step_size: PGD iterations and the step of PGD and CW (default eps/4).
        attack_params: other attack parameters as ``<attack>_<parameter>`` (``{"aa_version": "fast"}``).
        reuse: return an identical stored evaluation instead of attacking again (same model file,
            data, examples, protocol, batch size and library versions), and store a fresh one.
        profile: add the model's cost (parameters, MACs, file size, CPU latency at batch 1 and 64).
        workers: local CPU processes sharing the batches, with the same results (default: see
            :func:`~robustdistill.evaluation.sharding.default_workers`); under torchrun call it on every rank.

    Example:
        >>> result = robustdistill.evaluate("bundled:digits", attacks="clean,pgd,aa")
        >>> result.summary("aa").worst_class
    """
    _check_args(model, batch_size, n_examples, seed)
    opts = model_options(options)
    # every explicit value is checked first, then the data and the model, then the eps rule
    wanted, given_eps, step = attack_names(attacks), _budget(eps, "eps"), _budget(step_size, "step size")
    identifier = model if isinstance(model, str) else (model_id or model.spec.source or "model")
    splits = splits or _load_splits(model, dataset, data_dir, download, image_size, opts)
    data = splits.split(split or splits.default_eval_split).head(n_examples)
    net = _open_for(model, splits, opts, wanted, identifier)  # a missing or misfit model is reported before the eps rule
    budget = given_eps if given_eps is not None else model_budget(model if isinstance(model, str) else net, None, opts)
    settings = eval_settings(budget, seed, step_size=step, pgd_steps=pgd_steps, **dict(attack_params or {}))
    info = describe_model(identifier, net, opts) if isinstance(model, str) else _describe_object(net)
    result = _attack_model(net, data, splits, settings, [a.name for a in settings.attacks(wanted)],
                           model_id or identifier, info, device, batch_size=batch_size, reuse=reuse, workers=workers)
    return with_cost(result, net, model_file(model, opts) if isinstance(model, str) else None) if profile else result


def _attack_model(net: Classifier, data: Split, splits: DatasetSplits, settings: EvalSettings, attacks: Sequence[str],
                  model_id: str, info: dict[str, Any], device: str | None, **options: Any) -> EvaluationResult:
    """Evaluate (or reuse) on this process's device; under ``torchrun`` every rank takes its share."""
    dev = rank_device(select_device(device))
    net.to(dev)
    with joined_process_group(dev) as group:
        return evaluate_or_reuse(
            net, data, _class_names(net, splits), attacks=attacks, settings=settings, model_id=model_id,
            dataset=splits.info.name, model_info=info, device=dev,
            reused_message=f"reusing the identical evaluation of {model_id} from {{source}} (pass --fresh to attack again)",
            state_path=partial_path(info.get("sha256")),  # a killed evaluation continues where it stopped
            distributed=group.enabled, **options,
        )


def with_cost(result: EvaluationResult, model: Any, file: Path | None) -> EvaluationResult:
    """``result`` with the model's cost profile (a short timing run; the model is left where it is)."""
    from .cost import cost_profile
    from .modes import eval_mode

    path = file if file is not None and Path(file).is_file() else None
    with eval_mode(model):
        cost = cost_profile(model, file=path, warmup=2, min_repeats=5, min_seconds=0.2)
    return dataclasses.replace(result, cost=cost)


def _budget(value: float | str | None, name: str) -> float | None:
    return parse_budget(value, name) if value is not None else None


def _open_for(model: str | Classifier, splits: DatasetSplits, options: ModelOptions, attacks: Sequence[str],
              identifier: str) -> Classifier:
    """The model, checked against the data and against the attacks it can face (no gradients: clean, square)."""
    net = open_model(model, splits, options)
    if not getattr(net, "differentiable", True):
        refuse_gradient_attacks(attacks, identifier)
    return net


def _load_splits(model: str | Classifier, dataset: str | None, data_dir: str | Path | None, download: bool,
                 image_size: int | None, options: ModelOptions) -> DatasetSplits:
    name = resolve_dataset_name(model, dataset, options) if isinstance(model, str) else (dataset or model.spec.dataset)
    if not name:
        raise UsageError("say which data to evaluate on with --dataset (dataset=... in Python)")
    return load_dataset(name, data_dir, download=download, image_size=image_size)


def _describe_object(net: Classifier) -> dict[str, Any]:
    return {"arch": net.spec.arch, "num_classes": net.num_classes, "input_size": list(net.spec.input_size),
            "parameters": count_parameters(net), "source": net.spec.source}


def _class_names(net: Classifier, splits: DatasetSplits) -> tuple[str, ...]:
    names = net.spec.class_names
    return tuple(names) if names and len(names) == splits.info.num_classes else tuple(splits.info.class_names)


__all__ = ["describe_model", "evaluate", "model_budget", "model_options", "open_model",
           "recorded_dataset", "resolve_dataset_name"]
