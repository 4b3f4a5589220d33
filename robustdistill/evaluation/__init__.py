"""Evaluation with one boolean per sample per attack, so per-class numbers are exact.

* :mod:`~robustdistill.evaluation.attacks` - the attack objects (clean, FGSM, PGD, CW-inf,
  AutoAttack) and :class:`EvalSettings`, the protocol; :mod:`~robustdistill.evaluation.square`
  the score-based Square attack (also on exported files);
* :mod:`~robustdistill.evaluation.runner` - :func:`evaluate_model`, resumable after a kill;
* :mod:`~robustdistill.evaluation.result` - :class:`EvaluationResult`, the typed result;
* :mod:`~robustdistill.evaluation.cache` - reuse of identical stored evaluations.
"""

from .attacks import (
    ATTACKS, EvalAttack, EvalSettings, attack_names, eval_settings, refuse_gradient_attacks, register_attack,
)
from . import square  # noqa: F401, E402 - registers the Square attack (after the five built-in ones)
from .result import EvaluationResult
from .runner import evaluate_model

__all__ = [
    "ATTACKS", "EvalAttack", "EvalSettings", "EvaluationResult", "attack_names", "eval_settings", "evaluate_model",
    "refuse_gradient_attacks", "register_attack",
]
