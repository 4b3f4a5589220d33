"""robustdistill: distil adversarially robust classifiers into small students, fairly across classes."""

from __future__ import annotations

__version__ = "0.1.0"

from .api import ModelOptions, evaluate, load_report  # noqa: E402
from .data import load_dataset  # noqa: E402
from .distill import DistillConfig, DistillResult, distill, train_teacher  # noqa: E402
from .fairness import compare, fairness_report  # noqa: E402
from .evaluation import EvalSettings, EvaluationResult  # noqa: E402
from .models import Classifier, ModelSpec, load_model, save_classifier  # noqa: E402

__all__ = [
    "Classifier", "DistillConfig", "DistillResult", "EvalSettings", "EvaluationResult", "ModelOptions", "ModelSpec",
    "__version__", "compare", "distill", "evaluate", "fairness_report", "load_dataset", "load_model", "load_report",
    "save_classifier", "train_teacher",
]
