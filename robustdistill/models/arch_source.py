"""Architecture names (``resnet18``, ``wrn-34-10``, ...): untrained networks, i.e. students."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ModelError
from .classifier import Classifier
from .model_source import MODEL_SOURCES, ModelRef, ModelSource, is_existing_file
from .registry import is_arch, list_archs
from .spec import DataHint, ModelOptions


@dataclass(frozen=True)
class ArchitectureSource(ModelSource):
    """A registered architecture name: it builds an untrained student and holds no weights to load."""

    name: str = "arch"
    syntax: str = "ARCH"
    description: str = "an untrained registry architecture (students; see `robustdistill list students`)"
    trained: bool = False

    def form(self) -> str:
        return f"or an architecture ({', '.join(name for name, _ in list_archs())})"

    def claims(self, text: str) -> bool:
        # An existing file of the same name is a checkpoint (CheckpointSource claims it).
        return is_arch(text) and not is_existing_file(text)

    def load(self, ref: ModelRef, options: ModelOptions, hint: DataHint | None) -> Classifier:
        raise ModelError(
            f"{ref.raw!r} is an architecture, not trained weights; pass a checkpoint file with --arch {ref.raw}"
        )


MODEL_SOURCES.add(ArchitectureSource())
