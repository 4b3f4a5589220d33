"""Model files: robustdistill's self-describing ``.safetensors`` and plain weights (``.pt`` + ``--arch``).

* ``FILE.safetensors`` written by robustdistill rebuilds itself from its ``robustdistill.spec``
  metadata; with ``arch=...`` (or when it has no spec) it is read as plain weights.
* ``FILE.pt``/``.pth``/``.tar``/``.ckpt``/``.bin`` (or any existing file) holds plain weights,
  raw or nested under ``state_dict``/``model``/``net``, possibly ``module.``-prefixed; the
  architecture comes from ``arch=...``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import CheckpointError, UsageError
from .checkpoint import (
    META_SPEC, build_and_load, check_num_classes, infer_num_classes, load_classifier, recorded_config_of, recorded_eps_of,
)
from .classifier import Classifier
from .model_source import MODEL_SOURCES, ModelRef, ModelSource, is_existing_file
from .registry import build_arch
from .spec import DataHint, ModelOptions, ModelSpec
from .weightsio import is_safetensors, layout_of, read_metadata, read_state_dict, sniff

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".tar", ".ckpt", ".bin")


def load_plain(path: str, options: ModelOptions, hint: DataHint | None) -> Classifier:
    """Plain weights + ``options.arch``: a robustdistill state dict keeps its ``normalize.*`` statistics.

    The architecture is compared with the file on the meta device before it is built (see
    :func:`~robustdistill.models.checkpoint.build_and_load`).
    """
    sniff(path)
    if options.arch is None:
        raise UsageError(f"{path!r} holds plain weights; say which architecture with --arch (see `robustdistill list`)")
    mean, std = _statistics(options.mean, options.std)
    state = read_state_dict(path)
    if mean is None and "normalize.mean" in state and "normalize.std" in state:  # a robustdistill state dict saved as .pt
        mean, std = tuple(state["normalize.mean"].flatten().tolist()), tuple(state["normalize.std"].flatten().tolist())
    state = {k: v for k, v in state.items() if not k.startswith("normalize.")}
    classes = check_num_classes(options.num_classes) or (hint.num_classes if hint else None) or infer_num_classes(state)
    in_size = hint.input_size if hint else (3, 32, 32)
    arch = options.arch
    net = build_and_load(lambda: build_arch(arch, classes, in_size[0]), layout_of(state), lambda: state, path)
    spec = ModelSpec(arch=arch, num_classes=classes, input_size=in_size, mean=mean, std=std, source=str(Path(path).resolve()))
    return Classifier(net, spec)


def _statistics(mean: Sequence[float] | None, std: Sequence[float] | None) -> tuple[tuple[float, ...] | None, ...]:
    if (mean is None) != (std is None):
        raise UsageError("--mean and --std go together")
    if std is not None and min(std) <= 0:
        raise UsageError("--std must be positive")
    return (tuple(mean) if mean else None, tuple(std) if std else None)  # type: ignore[arg-type]


@dataclass(frozen=True)
class SafetensorsSource(ModelSource):
    """``FILE.safetensors``: self-describing when robustdistill wrote it, else plain weights with ``arch``."""

    name: str = "safetensors"
    syntax: str = "FILE.safetensors"
    description: str = "a model written by robustdistill"

    def form(self) -> str:
        return "a .safetensors file"

    def claims(self, text: str) -> bool:
        return is_safetensors(text)

    def load(self, ref: ModelRef, options: ModelOptions, hint: DataHint | None) -> Classifier:
        if options.arch is not None:
            return load_plain(ref.name, options, hint)
        if META_SPEC not in read_metadata(ref.name):
            raise CheckpointError(
                f"{ref.name!r} was not written by robustdistill; pass --arch ARCH to load it as plain weights"
            )
        return load_classifier(ref.name)

    def file(self, ref: ModelRef, options: ModelOptions = ModelOptions()) -> Path | None:
        return Path(ref.name)

    def recorded_config(self, ref: ModelRef, options: ModelOptions = ModelOptions()) -> dict[str, Any]:
        return recorded_config_of(ref.name)

    def recorded_eps(self, ref: ModelRef, options: ModelOptions = ModelOptions()) -> float | None:
        return recorded_eps_of(ref.name)


@dataclass(frozen=True)
class CheckpointSource(ModelSource):
    """``FILE.pt`` (``.pth``, ``.tar``, ``.ckpt``, ``.bin``, or any other existing file) + ``arch``: plain weights."""

    name: str = "checkpoint"
    syntax: str = "FILE.pt --arch ARCH"
    description: str = "plain weights (raw or nested state dict)"

    def form(self) -> str:
        return "a .pt/.pth file"

    def claims(self, text: str) -> bool:
        return not is_safetensors(text) and (text.lower().endswith(CHECKPOINT_SUFFIXES) or is_existing_file(text))

    def load(self, ref: ModelRef, options: ModelOptions, hint: DataHint | None) -> Classifier:
        return load_plain(ref.name, options, hint)

    def file(self, ref: ModelRef, options: ModelOptions = ModelOptions()) -> Path | None:
        return Path(ref.name)


MODEL_SOURCES.add(SafetensorsSource())
MODEL_SOURCES.add(CheckpointSource())
