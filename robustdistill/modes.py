"""Eval mode for a block: the one place that switches a model to eval and restores exactly what it found.

Each submodule gets back its own training flag (a frozen part in eval mode inside a training
model keeps it) and each parameter its own ``requires_grad``. (The other shared context manager,
a private RNG stream, is :func:`robustdistill.rng.forked_rng`.)
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module, *, freeze: bool = False) -> Iterator[nn.Module]:
    """Put every submodule in eval mode (and, with ``freeze``, stop parameter gradients) for a block.

    On exit each submodule gets back its own previous mode and each parameter its own
    ``requires_grad``; eval mode never touches BatchNorm running statistics.
    """
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()] if freeze else []
    model.eval()
    if freeze:
        model.requires_grad_(False)
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
        for param, flag in grads:
            param.requires_grad_(flag)
