"""Imports every method module so that their ``@register_method`` decorators run (registry order)."""

from __future__ import annotations

from . import ard, rslad, iad, kdiga, adaad, kd, adversarial  # noqa: F401
