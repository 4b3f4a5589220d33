"""Distillation and adversarial-training strategies (see :mod:`robustdistill.methods.base`)."""

from .base import AttackOutput, AttackSettings, Strategy, get_method_class, method_names, register_method, weighted_mean

__all__ = ["AttackOutput", "AttackSettings", "Strategy", "get_method_class", "method_names", "register_method", "weighted_mean"]
