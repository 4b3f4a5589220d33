"""The two context managers every part of the package shares: eval mode and a private RNG stream.

Both restore *exactly* what they found: each submodule's own training flag (a model whose
teacher part is frozen in eval mode inside a training student keeps it), each parameter's
``requires_grad``, and the caller's random state on the CPU and on the model's device.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
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


def _device_index(device: torch.device) -> int:
    if device.index is not None:
        return device.index
    return torch.get_device_module(device.type).current_device()


@contextlib.contextmanager
def forked_rng(device: torch.device | str | None = None, seed: int | None = None) -> Iterator[None]:
    """Run a block on a private copy of the RNG state (CPU and ``device``), seeded with ``seed`` if given.

    The caller's random stream is restored afterwards, so e.g. AutoAttack (which reseeds the
    global generator) or Fair-ARD's separate kappa attack never shift the training run's noise.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.default_generator.manual_seed(seed)
            yield
        return
    index = _device_index(device)
    with torch.random.fork_rng(devices=[index], device_type=device.type):
        if seed is not None:
            torch.default_generator.manual_seed(seed)
            module = torch.get_device_module(device.type)
            if device.type == "cuda":
                with torch.cuda.device(index):
                    torch.cuda.manual_seed(seed)
            else:
                module.manual_seed(seed)
        yield
