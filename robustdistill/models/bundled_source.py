"""``bundled:NAME``: robustdistill files shipped inside the package (``robustdistill/assets``)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ModelError
from .checkpoint import load_classifier, recorded_config_of, recorded_eps_of
from .classifier import Classifier
from .model_source import MODEL_SOURCES, ModelRef, ModelSource
from .spec import DataHint, ModelOptions


def list_bundled() -> list[str]:
    """Names of the bundled models (``digits`` -> ``bundled:digits``)."""
    root = resources.files("robustdistill") / "assets"
    if not root.is_dir():
        return []
    return sorted(p.name[: -len(".safetensors")] for p in root.iterdir() if p.name.endswith(".safetensors"))


def bundled_path(name: str) -> Path:
    """The installed file of ``bundled:NAME``; unknown names raise :class:`ModelError` listing the available ones."""
    root = resources.files("robustdistill") / "assets"
    path = Path(str(root / f"{name}.safetensors"))
    if "/" in name or "\\" in name or not path.exists():
        valid = ", ".join(f"bundled:{n}" for n in list_bundled()) or "none (the package was installed without its assets)"
        raise ModelError(f"no bundled model {name!r}; available: {valid}")
    return path


@dataclass(frozen=True)
class BundledSource(ModelSource):
    """``bundled:NAME``: a self-describing robustdistill file shipped with the package."""

    name: str = "bundled"
    syntax: str = "bundled:NAME"
    description: str = "shipped with the package"
    prefix: str | None = "bundled"

    def rows(self) -> list[tuple[str, str]]:
        return [(f"bundled:{name}", self.description) for name in list_bundled()]

    def load(self, ref: ModelRef, options: ModelOptions, hint: DataHint | None) -> Classifier:
        return load_classifier(bundled_path(ref.name))

    def file(self, ref: ModelRef, options: ModelOptions = ModelOptions()) -> Path | None:
        return bundled_path(ref.name)

    def recorded_config(self, ref: ModelRef, options: ModelOptions = ModelOptions()) -> dict[str, Any]:
        return recorded_config_of(bundled_path(ref.name))

    def recorded_eps(self, ref: ModelRef, options: ModelOptions = ModelOptions()) -> float | None:
        return recorded_eps_of(bundled_path(ref.name))


MODEL_SOURCES.add(BundledSource())
