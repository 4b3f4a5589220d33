"""The Python API; the CLI is a thin layer over these functions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ._utils import parse_fraction, select_device, sha256_file
from . import eval_cache
from .data import DatasetSplits, load_dataset
from .errors import UsageError
from .evaluation import EvalSettings, EvaluationResult, parse_attacks
from .models import Classifier, check_fits, count_parameters, load_model, parse_model_id
from .models.checkpoint import META_CONFIG, read_metadata
from .models.sources import bundled_path


@dataclass(frozen=True)
class ModelOptions:
    """How to interpret a model identifier (see :func:`robustdistill.models.load_model`)."""

    arch: str | None = None
    num_classes: int | None = None
    weights: str | None = None
    model_dir: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


def model_file(identifier: str) -> Path | None:
    """The file behind an identifier, if it is one (for hashing and metadata)."""
    ref = parse_model_id(identifier)
    if ref.kind == "bundled":
        return bundled_path(ref.name)
    if ref.kind in ("safetensors", "checkpoint"):
        return Path(ref.name)
    return None


def saved_config(identifier: str) -> dict[str, Any]:
    """The run config stored in a robustdistill safetensors file (empty for anything else)."""
    path = model_file(identifier)
    if path is None or path.suffix != ".safetensors" or not path.exists():
        return {}
    meta = read_metadata(path)
    return json.loads(meta[META_CONFIG]) if META_CONFIG in meta else {}


def resolve_dataset_name(identifier: str, dataset: str | None) -> str:
    """``dataset`` if given, else the dataset recorded in the model file, else an error."""
    if dataset:
        return dataset
    recorded = saved_config(identifier).get("dataset")
    if recorded:
        return str(recorded)
    raise UsageError(f"say which data to evaluate {identifier!r} on with --dataset (digits, cifar10, cifar100, svhn, imagefolder)")


def describe_model(identifier: str, model: Classifier) -> dict[str, Any]:
    path = model_file(identifier)
    info: dict[str, Any] = {
        "arch": model.spec.arch, "num_classes": model.spec.num_classes, "input_size": list(model.spec.input_size),
        "parameters": count_parameters(model), "source": model.spec.source or identifier,
    }
    if path is not None and path.exists():
        # Bundled files live wherever the package is installed: name them package-relative.
        info["file"] = f"robustdistill/assets/{path.name}" if identifier.startswith("bundled:") else str(path)
        info["sha256"] = sha256_file(path)
    return info


def open_model(identifier: str | Classifier, splits: DatasetSplits, options: ModelOptions = ModelOptions(), role: str = "model") -> Classifier:
    """Load ``identifier`` for ``splits`` and check it fits the data (classes, channels, size)."""
    hint = splits.info.hint()
    if isinstance(identifier, Classifier):
        model = identifier
    else:
        model = load_model(
            identifier, arch=options.arch, num_classes=options.num_classes, weights=options.weights,
            model_dir=options.model_dir, mean=options.mean, std=options.std, hint=hint,
        )
    check_fits(model, hint, role)
    return model


def evaluate(
    model: str | Classifier,
    *,
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    split: str | None = None,
    attacks: str | Sequence[str] = ("clean", "pgd"),
    eps: float | str = 8 / 255,
    n_examples: int | None = None,
    batch_size: int = 256,
    device: str | None = None,
    seed: int = 0,
    pgd_steps: int = 20,
    step_size: float | str | None = None,
    options: ModelOptions = ModelOptions(),
    download: bool = False,
    image_size: int | None = None,
    splits: DatasetSplits | None = None,
    model_id: str | None = None,
    reuse: bool = True,
) -> EvaluationResult:
    """Evaluate a model with exact per-class results.

    With ``reuse`` (the default), an identical evaluation stored earlier - same model file
    (sha256), data, split, examples and attack settings; see :mod:`robustdistill.eval_cache` -
    is returned instead of attacking again, and a fresh evaluation of a model file is stored.

    Example:
        >>> result = robustdistill.evaluate("bundled:digits", attacks="clean,pgd,aa", eps=0.2)
        >>> result.summary("aa")["worst_class"]
    """
    eps_value = parse_fraction(eps, name="eps")
    step = parse_fraction(step_size, name="step size") if step_size is not None else None
    attack_list = parse_attacks(attacks)
    if n_examples is not None and n_examples <= 0:
        raise UsageError("--n-examples must be positive")
    identifier = model if isinstance(model, str) else (model_id or model.spec.source or "model")
    if splits is None:
        name = resolve_dataset_name(identifier, dataset) if isinstance(model, str) else (dataset or "")
        if not name:
            raise UsageError("say which data to evaluate on with dataset=...")
        splits = load_dataset(name, data_dir, download=download, image_size=image_size)
    net = open_model(model, splits, options)
    dev = select_device(device)
    net.to(dev)
    split_name = split or splits.default_eval_split
    settings = EvalSettings(eps=eps_value, pgd_steps=pgd_steps, step_size=step, seed=seed)
    info = describe_model(identifier, net) if isinstance(model, str) else {
        "arch": net.spec.arch, "num_classes": net.num_classes, "input_size": list(net.spec.input_size),
        "parameters": count_parameters(net), "source": net.spec.source}
    class_names = net.spec.class_names if net.spec.class_names and len(net.spec.class_names) == splits.info.num_classes else splits.info.class_names
    data = splits.split(split_name).head(n_examples)
    return eval_cache.evaluate_or_reuse(
        net, data, class_names, attacks=attack_list, settings=settings, model_id=model_id or identifier,
        dataset=splits.info.name, model_info=info, reuse=reuse,
        reused_message=f"reusing the identical evaluation of {model_id or identifier} from {{source}} (pass --fresh to attack again)",
        batch_size=batch_size, device=dev,
        state_path=eval_cache.partial_path(info.get("sha256")),  # a killed evaluation continues where it stopped
    )


def load_report(path: str | Path) -> EvaluationResult:
    """Read a report.json written by ``evaluate`` back into an :class:`EvaluationResult`."""
    data = json.loads(Path(path).read_text())
    if "per_sample" not in data:
        raise UsageError(f"{path} is not an evaluation report.json written by robustdistill")
    return EvaluationResult.from_dict(data)
