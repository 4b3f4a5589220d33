"""robustdistill: distil adversarially robust classifiers into small students, fairly across classes."""

from __future__ import annotations

__version__ = "0.1.0"

from .api import ModelOptions, evaluate, load_report  # noqa: E402
from .data import load_dataset  # noqa: E402
from .evaluation import EvalSettings, EvaluationResult  # noqa: E402
from .models import Classifier, ModelSpec, load_model, save_classifier  # noqa: E402

__all__ = [
    "Classifier", "EvalSettings", "EvaluationResult", "ModelOptions", "ModelSpec", "__version__",
    "evaluate", "load_dataset", "load_model", "load_report", "save_classifier",
]
