"""Files written by ``robustdistill export``: ``FILE.onnx`` (onnxruntime) and TorchScript archives.

They load as :class:`~robustdistill.exported.ExportedModel` (validated before anything runs: see
:mod:`robustdistill.exported`), take [0, 1] images like every robustdistill model, and carry
the source model's spec, run config and training budget in their metadata. They have no
gradients: only attacks that query outputs (clean, square) can evaluate them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..units import parse_fraction
from .model_source import MODEL_SOURCES, ModelRef, ModelSource
from .spec import DataHint, ModelOptions


@dataclass(frozen=True)
class ExportedSource(ModelSource):
    """An exported model (``robustdistill export``), recognised by ``.onnx`` or by its TorchScript metadata."""

    name: str = "exported"
    syntax: str = "FILE.onnx / exported TorchScript"
    description: str = "a model exported by `robustdistill export` (clean and score-based attacks only)"

    def form(self) -> str:
        return "an .onnx file"

    def claims(self, text: str) -> bool:
        from ..exported import exported_format

        try:
            return exported_format(text) is not None
        except (OSError, ValueError):
            return False

    def load(self, ref: ModelRef, options: ModelOptions, hint: DataHint | None) -> Any:
        from ..exported import load_exported

        return load_exported(ref.name)

    def file(self, ref: ModelRef, options: ModelOptions = ModelOptions()) -> Path | None:
        return Path(ref.name)

    def recorded_config(self, ref: ModelRef, options: ModelOptions = ModelOptions()) -> dict[str, Any]:
        text = self._metadata(ref).get("robustdistill.config")
        return json.loads(text) if text else {}

    def recorded_eps(self, ref: ModelRef, options: ModelOptions = ModelOptions()) -> float | None:
        eps = self._metadata(ref).get("robustdistill.eps")
        return parse_fraction(eps) if eps not in (None, "", "None") else None

    @staticmethod
    def _metadata(ref: ModelRef) -> dict[str, str]:
        from ..exported import load_exported

        return dict(load_exported(ref.name).metadata) if Path(ref.name).is_file() else {}


MODEL_SOURCES.add(ExportedSource())
