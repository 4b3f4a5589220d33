"""Loading models from identifiers, and what their files record - through the registered sources.

=========================================  =====================================================
identifier                                 source (module)
=========================================  =====================================================
``bundled:digits``                         the robust digits teacher shipped inside the package
                                           (:mod:`.bundled_source`)
``robustbench:NAME[@DATASET/THREAT]``      a RobustBench zoo model from its local cache (:mod:`.robustbench_source`)
``timm:NAME``                              a timm model (+ ``weights=FILE``), normalisation wrapped in
                                           (:mod:`.timm_source`)
``path/to/model.safetensors``              a model written by robustdistill (self-describing) (:mod:`.file_sources`)
``path/to/ckpt.pt`` + ``arch=...``         plain weights (raw, or nested; ``module.`` prefixes ok) (:mod:`.file_sources`)
``resnet18``, ``wrn-34-10``, ...           an *untrained* registry architecture (students) (:mod:`.arch_source`)
=========================================  =====================================================
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..errors import ModelError
from .bundled_source import bundled_path, list_bundled
from .checkpoint import load_weights
from .classifier import Classifier
from .model_source import MODEL_SOURCES, ModelRef, resolve_model, source_of
from .registry import build_arch
from .spec import DataHint, ModelOptions, ModelSpec
from .weightsio import read_state_dict

__all__ = [
    "DataHint", "ModelOptions", "ModelRef", "build_student", "bundled_path", "check_fits", "list_bundled",
    "list_teachers", "load_model", "model_file", "parse_model_id", "recorded_config", "recorded_eps", "resolve_model",
]


def parse_model_id(identifier: str) -> ModelRef:
    """Same as :func:`resolve_model` (the name earlier versions used)."""
    return resolve_model(identifier)


def load_model(
    identifier: str,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    weights: str | Path | None = None,
    model_dir: str | Path | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    hint: DataHint | None = None,
) -> Classifier:
    """Load a trained model from any supported identifier (see the module docstring), in eval mode.

    Args:
        identifier: the model id or file path.
        arch: architecture of a plain ``.pt``/``.pth`` (or non-robustdistill ``.safetensors``) file.
        num_classes: class count for ``arch``/``timm:`` models (default: from ``hint``, else the file).
        weights: local weights file for ``timm:NAME``.
        model_dir: RobustBench cache root (``MODEL_DIR/DATASET/THREAT/NAME.pt``).
        mean, std: normalisation of a plain checkpoint trained on normalised inputs.
        hint: the dataset's class count, input size and class names.

    Raises:
        RobustDistillError: a one-line :class:`~robustdistill.errors.ModelError`,
            :class:`~robustdistill.errors.CheckpointError` or :class:`~robustdistill.errors.UsageError`.
    """
    options = ModelOptions(
        arch=arch, num_classes=num_classes, weights=weights, model_dir=model_dir,
        mean=tuple(mean) if mean is not None else None, std=tuple(std) if std is not None else None,
    )
    ref = resolve_model(identifier)
    model = source_of(ref).load(ref, options, hint)
    if hint is not None and model.spec.class_names is None and hint.class_names and len(hint.class_names) == model.num_classes:
        model.spec = model.spec.with_(class_names=hint.class_names)
    model.eval()  # trained models are loaded for inference (BatchNorm statistics frozen)
    return model


def model_file(identifier: str, options: ModelOptions = ModelOptions()) -> Path | None:
    """The file whose bytes are the model behind ``identifier`` (to hash), or ``None``.

    Bundled and local files are themselves; ``robustbench:`` is its cache path under
    ``options.model_dir``; ``timm:`` is ``options.weights``. The file may not exist.
    """
    ref = resolve_model(identifier)
    return source_of(ref).file(ref, options)


def recorded_config(identifier: str, options: ModelOptions = ModelOptions()) -> dict[str, Any]:
    """The robustdistill run config stored in the model's file (``{}`` for anything else or a missing file)."""
    ref = resolve_model(identifier)
    return source_of(ref).recorded_config(ref, options)


def recorded_eps(identifier: str, options: ModelOptions = ModelOptions()) -> float | None:
    """The L-inf budget the model was trained at, in [0, 1] pixel units, when its source knows it.

    robustdistill files: the spec's ``eps``, else the recorded ``eps`` (``"0.2"``, ``"8/255"``).
    ``robustbench:`` L-inf models: 8/255 (CIFAR-10/100) or 4/255 (ImageNet). Otherwise ``None``.
    """
    ref = resolve_model(identifier)
    return source_of(ref).recorded_eps(ref, options)


def list_teachers() -> list[tuple[str, str]]:
    """(identifier form, description) of every source of trained models, for ``robustdistill list teachers``."""
    return [row for source in MODEL_SOURCES if source.trained for row in source.rows()]


def build_student(arch: str, hint: DataHint, *, weights: str | Path | None = None) -> Classifier:
    """A fresh (or ``weights``-initialised) student for data described by ``hint``.

    The student normalises with the dataset's mean/std inside the model, so attacks still see
    [0, 1] inputs.
    """
    ref = resolve_model(arch)
    if ref.source not in ("arch", "timm"):
        raise ModelError(f"student {arch!r} must be an architecture name (see `robustdistill list`), not a file or zoo id")
    net = build_arch(arch, hint.num_classes, hint.input_size[0])
    if weights is not None:
        load_weights(net, read_state_dict(weights), str(weights))
    spec = ModelSpec(
        arch=arch, num_classes=hint.num_classes, input_size=hint.input_size, mean=hint.mean, std=hint.std,
        class_names=hint.class_names, source="student",
    )
    return Classifier(net, spec)


def check_fits(model: Classifier, hint: DataHint, role: str = "model") -> None:
    """Refuse, in one line, a model whose class count, channels or input size do not fit the data."""
    spec = model.spec
    if spec.num_classes != hint.num_classes:
        raise ModelError(
            f"the {role} predicts {spec.num_classes} classes but the data has {hint.num_classes}; "
            "use a model trained for this dataset"
        )
    if spec.input_size[0] != hint.input_size[0]:
        raise ModelError(
            f"the {role} takes {spec.input_size[0]}-channel images but the data has {hint.input_size[0]} "
            f"channel{'s' if hint.input_size[0] != 1 else ''}"
        )
    if tuple(spec.input_size[1:]) != tuple(hint.input_size[1:]):
        h, w = spec.input_size[1:]
        raise ModelError(
            f"the {role} was built for {h}x{w} inputs but the data is {hint.input_size[1]}x{hint.input_size[2]}; "
            f"use matching data (for imagefolder: --image-size {h})"
        )
