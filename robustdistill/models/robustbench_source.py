"""``robustbench:NAME[@DATASET/THREAT]``: RobustBench zoo models (the zoo itself is :mod:`.robustbench_zoo`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .classifier import Classifier
from .model_source import MODEL_SOURCES, ModelRef, ModelSource
from .robustbench_zoo import (  # noqa: F401 - list_robustbench: cli.py reaches it from here
    LINF_EPS, checkpoint_path, list_robustbench, load_robustbench, parse_robustbench_id,
)
from .spec import DataHint, ModelOptions


@dataclass(frozen=True)
class RobustBenchSource(ModelSource):
    """``robustbench:NAME[@DATASET/THREAT]``: a RobustBench zoo model from robustbench's local cache."""

    name: str = "robustbench"
    syntax: str = "robustbench:NAME[@DATASET/THREAT]"
    description: str = "RobustBench zoo model from the local cache (--model-dir)"
    prefix: str | None = "robustbench"

    def form(self) -> str:
        return "robustbench:NAME"

    def load(self, ref: ModelRef, options: ModelOptions, hint: DataHint | None) -> Classifier:
        return load_robustbench(ref.raw, options.model_dir)

    def file(self, ref: ModelRef, options: ModelOptions = ModelOptions()) -> Path | None:
        """The cache path ``MODEL_DIR/DATASET/THREAT/NAME.pt`` (it may not exist yet)."""
        return checkpoint_path(*parse_robustbench_id(ref.raw), options.model_dir)

    def recorded_eps(self, ref: ModelRef, options: ModelOptions = ModelOptions()) -> float | None:
        """The leaderboard budget: 8/255 for L-inf CIFAR-10/100, 4/255 for L-inf ImageNet, else ``None``."""
        _, dataset, threat = parse_robustbench_id(ref.raw)
        return LINF_EPS.get(dataset) if threat == "Linf" else None


MODEL_SOURCES.add(RobustBenchSource())
