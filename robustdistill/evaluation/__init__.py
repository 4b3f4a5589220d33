"""Evaluation with one boolean per sample per attack, so per-class numbers are exact.

* :mod:`~robustdistill.evaluation.attacks` - the attack objects (clean, FGSM, PGD, CW-inf,
  AutoAttack) and :class:`EvalSettings`, the protocol; :mod:`~robustdistill.evaluation.square`
  the score-based Square attack (also on exported files);
* :mod:`~robustdistill.evaluation.runner` - :func:`evaluate_model`, resumable after a kill, in one
  process, in N local worker processes or on every ``torchrun`` rank with the same results;
* :mod:`~robustdistill.evaluation.work` - balanced batches, shards, running one shard, the resumable state;
* :mod:`~robustdistill.evaluation.sharding` - DDP gathering, local worker processes, the default worker count;
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
