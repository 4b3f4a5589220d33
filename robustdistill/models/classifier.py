"""The one model contract: NCHW images in [0, 1] -> logits, normalisation inside as buffers."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .spec import ModelSpec


class Normalize(nn.Module):
    """``(x - mean) / std`` with per-channel buffers, so attacks can work in [0, 1] pixel space."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class Classifier(nn.Module):
    """A network wrapped so that it maps [0, 1] images to logits, carrying its :class:`ModelSpec`.

    ``Classifier.net`` is the wrapped architecture; ``Classifier.normalize`` is either a
    :class:`Normalize` or an identity (when ``spec.mean`` is ``None``).
    """

    def __init__(self, net: nn.Module, spec: ModelSpec) -> None:
        super().__init__()
        if (spec.mean is None) != (spec.std is None):
            raise ValueError("ModelSpec.mean and .std must both be set or both be None")
        self.normalize: nn.Module = (
            Normalize(spec.mean, spec.std) if spec.mean is not None else nn.Identity()  # type: ignore[arg-type]
        )
        self.net = net
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def extra_repr(self) -> str:
        return f"arch={self.spec.arch!r}, num_classes={self.spec.num_classes}, input_size={self.spec.input_size}"


def unwrap(model: nn.Module) -> nn.Module:
    """The module under a DistributedDataParallel / DataParallel / compile wrapper."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod  # torch.compile
        else:
            return model


def freeze(model: nn.Module) -> nn.Module:
    """Teacher contract: eval mode and no parameter gradients, ever."""
    model.eval()
    model.requires_grad_(False)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
