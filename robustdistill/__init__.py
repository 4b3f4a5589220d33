"""robustdistill: distil adversarially robust classifiers into small students, fairly across classes.

The public API is imported lazily (``import robustdistill.config`` does not import torch):

* :func:`distill`, :func:`train_teacher` - train (``RunResult``), the twins of the CLI commands;
* :func:`evaluate`, :func:`load_report` - per-sample, per-class robustness (``EvaluationResult``);
* :func:`fairness_report`, :func:`compare` - teacher vs students class by class (``Comparison``);
* :func:`load_model`, :func:`save_classifier`, :class:`Classifier`, :class:`ModelSpec`,
  :class:`ModelOptions` - the model contract; :func:`load_dataset`;
* the registries: ``robustdistill.methods``, ``robustdistill.evaluation.ATTACKS``,
  ``robustdistill.data``, ``robustdistill.models``; errors in ``robustdistill.errors``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_EXPORTS = {
    "distill": "pipeline", "train_teacher": "pipeline", "RunResult": "pipeline", "DistillResult": "pipeline",
    "evaluate": "api", "load_report": "reports",
    "fairness_report": "reports", "compare": "fairness", "Comparison": "fairness",
    "EvalSettings": "evaluation", "EvaluationResult": "evaluation", "eval_settings": "evaluation",
    "RunConfig": "config",
    "load_dataset": "data",
    "Classifier": "models", "ModelSpec": "models", "ModelOptions": "models", "load_model": "models",
    "save_classifier": "models",
    "RobustDistillError": "errors",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'robustdistill' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
