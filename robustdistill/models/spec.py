"""Plain descriptions of models: ``ModelSpec`` (what a classifier is), ``DataHint`` (what the data
needs) and ``ModelOptions`` (how to read a model identifier).

``ModelSpec.from_json`` reads the ``robustdistill.spec`` metadata of a file that may come from
anywhere, so it checks every field's type and range (:data:`NUM_CLASSES_RANGE`,
:data:`CHANNELS_RANGE`, :data:`SIDE_RANGE`, ...) and raises a one-line :class:`CheckpointError`
instead of building something absurd.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .weightsio import parse_json_metadata

NUM_CLASSES_RANGE = (2, 100_000)  # ImageNet-21k has 21,843 classes
CHANNELS_RANGE = (1, 64)
SIDE_RANGE = (1, 8192)  # image height/width in pixels
MAX_ARCH_KWARGS = 32
SPEC_FIX = ("the file is damaged or was edited - save the model again with robustdistill, "
            "or load its tensors as plain weights with --arch ARCH")


@dataclass(frozen=True)
class DataHint:
    """What the data says the model should look like (used to build heads and to check fit)."""

    num_classes: int
    input_size: tuple[int, int, int]
    class_names: tuple[str, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


@dataclass(frozen=True)
class ModelOptions:
    """How to interpret a model identifier (see :func:`robustdistill.models.load_model`).

    Attributes:
        arch: architecture of a plain ``.pt``/``.pth`` (or non-robustdistill ``.safetensors``) file.
        num_classes: class count for ``arch``/``timm:`` models (default: from the data, else the file).
        weights: local weights file for ``timm:NAME``.
        model_dir: RobustBench cache root (``MODEL_DIR/DATASET/THREAT/NAME.pt``; default
            ``$ROBUSTDISTILL_MODEL_DIR``, else ``./models``).
        mean, std: normalisation of a plain checkpoint trained on normalised inputs.
    """

    arch: str | None = None
    num_classes: int | None = None
    weights: str | Path | None = None
    model_dir: str | Path | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


@dataclass(frozen=True)
class ModelSpec:
    """Self-description of a :class:`~robustdistill.models.Classifier`.

    Attributes:
        arch: architecture id understood by :func:`robustdistill.models.build_arch`
            (``resnet18``, ``wrn-34-10``, ``timm:convnext_nano``, ``robustbench:NAME@cifar10/Linf`` ...).
        num_classes: number of output logits.
        input_size: ``(channels, height, width)`` of the [0, 1] input.
        mean, std: per-channel normalisation applied *inside* the model; ``None`` when the
            network normalises itself (RobustBench models) or expects raw [0, 1] input.
        class_names: names of the classes, in logit order.
        source: where the weights came from (a model identifier or a file).
        arch_kwargs: extra keyword arguments of the architecture constructor.
        dataset: the dataset the model was trained on, when known.
        eps: the L-inf budget (in [0, 1] pixel units) the model was trained to resist, when known.
    """

    arch: str
    num_classes: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    class_names: tuple[str, ...] | None = None
    source: str = ""
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None
    eps: float | None = None

    def to_json(self) -> str:
        """The spec as the JSON text stored in a file's ``robustdistill.spec`` metadata."""
        import json

        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, origin: str = "the robustdistill.spec metadata") -> "ModelSpec":
        """Parse and check the JSON written by :meth:`to_json` (older files lack ``dataset``/``eps``).

        Raises:
            CheckpointError: malformed, oversized or out-of-range metadata, naming ``origin``.
        """
        raw = parse_json_metadata(text, what=origin, fix=SPEC_FIX)
        if not isinstance(raw, dict):
            raise _invalid(origin, f"it is a JSON {type(raw).__name__}, not an object")
        channels, height, width = _input_size(raw, origin)
        mean, std = _norm(raw, "mean", channels, origin), _norm(raw, "std", channels, origin)
        if (mean is None) != (std is None) or (std is not None and min(std) <= 0):
            raise _invalid(origin, "mean and std must both be set (std > 0) or both be null")
        num_classes = _int_field(raw, "num_classes", NUM_CLASSES_RANGE, origin)
        return cls(
            arch=_str_field(raw, "arch", origin, required=True, limit=200),  # type: ignore[arg-type]
            num_classes=num_classes,
            input_size=(channels, height, width),
            mean=mean,
            std=std,
            class_names=_class_names(raw, num_classes, origin),
            source=_str_field(raw, "source", origin, required=False, limit=10_000) or "",
            arch_kwargs=_arch_kwargs(raw, origin),
            dataset=_str_field(raw, "dataset", origin, required=False, limit=200),
            eps=_eps(raw, origin),
        )

    def with_(self, **changes: Any) -> "ModelSpec":
        """A copy with ``changes`` applied."""
        return replace(self, **changes)


# --------------------------------------------------------------------------- field checks
def _invalid(origin: str, problem: str) -> CheckpointError:
    return CheckpointError(f"{origin} is invalid: {problem}; {SPEC_FIX}")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _int_field(raw: dict, key: str, bounds: tuple[int, int], origin: str) -> int:
    value = raw.get(key)
    if not _is_int(value) or not bounds[0] <= value <= bounds[1]:
        raise _invalid(origin, f"{key} must be an integer in [{bounds[0]}, {bounds[1]}], got {_shown(value)}")
    return value


def _str_field(raw: dict, key: str, origin: str, *, required: bool, limit: int) -> str | None:
    value = raw.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() and required or len(value) > limit:
        raise _invalid(origin, f"{key} must be a text of at most {limit} characters, got {_shown(value)}")
    return value


def _input_size(raw: dict, origin: str) -> tuple[int, int, int]:
    value = raw.get("input_size")
    if not isinstance(value, list) or len(value) != 3 or not all(_is_int(v) for v in value):
        raise _invalid(origin, f"input_size must be [channels, height, width], got {_shown(value)}")
    channels, height, width = value
    if not CHANNELS_RANGE[0] <= channels <= CHANNELS_RANGE[1] or not all(SIDE_RANGE[0] <= s <= SIDE_RANGE[1] for s in (height, width)):
        raise _invalid(origin, f"input_size {value} is out of range (channels {CHANNELS_RANGE[0]}-{CHANNELS_RANGE[1]}, "
                               f"sides {SIDE_RANGE[0]}-{SIDE_RANGE[1]} pixels)")
    return channels, height, width


def _norm(raw: dict, key: str, channels: int, origin: str) -> tuple[float, ...] | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) not in (1, channels) or not all(_is_number(v) for v in value):
        raise _invalid(origin, f"{key} must be null or {channels} finite numbers, got {_shown(value)}")
    return tuple(float(v) for v in value)


def _class_names(raw: dict, num_classes: int, origin: str) -> tuple[str, ...] | None:
    value = raw.get("class_names")
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != num_classes or not all(isinstance(v, str) and len(v) <= 1000 for v in value):
        raise _invalid(origin, f"class_names must be null or {num_classes} texts, got {_shown(value)}")
    return tuple(value)


def _arch_kwargs(raw: dict, origin: str) -> dict[str, Any]:
    value = raw.get("arch_kwargs") or {}
    scalar = (lambda v: v is None or isinstance(v, (bool, str)) and len(str(v)) <= 200 or _is_number(v))  # noqa: E731
    if not isinstance(value, dict) or len(value) > MAX_ARCH_KWARGS or not all(scalar(v) for v in value.values()):
        raise _invalid(origin, f"arch_kwargs must map at most {MAX_ARCH_KWARGS} names to numbers, texts or booleans, "
                               f"got {_shown(value)}")
    return dict(value)


def _eps(raw: dict, origin: str) -> float | None:
    value = raw.get("eps")
    if value is None:
        return None
    if not _is_number(value) or not 0 <= value <= 1:
        raise _invalid(origin, f"eps must be null or a number in [0, 1] (pixel units), got {_shown(value)}")
    return float(value)
