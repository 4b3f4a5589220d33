"""Architecture registry: ids -> constructors ``(num_classes, in_chans, **kwargs) -> nn.Module``.

Besides the registered names, three families are parsed: ``wrn-DEPTH-WIDEN``, ``timm:NAME`` (any
timm architecture, built without downloading weights) and ``robustbench:NAME[@DATASET/THREAT]``
(the architecture of a RobustBench zoo entry).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from ..errors import ModelError, did_you_mean
from . import archs
from .robustbench_zoo import build_robustbench_arch

Constructor = Callable[..., nn.Module]


@dataclass(frozen=True)
class ArchEntry:
    name: str
    build: Constructor
    description: str


_ARCHS: dict[str, ArchEntry] = {}
WRN_PATTERN = re.compile(r"^wrn-(\d+)-(\d+)$")
# Far beyond any trained WideResNet (RobustBench's largest is WRN-106-16 / WRN-70-16); the bound
# keeps a crafted name such as wrn-6000004-1 from building a million blocks even on the meta device.
WRN_MAX_DEPTH, WRN_MAX_WIDEN = 1000, 128


def register_arch(name: str, description: str) -> Callable[[Constructor], Constructor]:
    """Register ``fn(num_classes, in_chans, **kwargs)`` under ``name``."""

    def decorator(fn: Constructor) -> Constructor:
        if name in _ARCHS:
            raise ValueError(f"architecture {name!r} is registered twice")
        _ARCHS[name] = ArchEntry(name, fn, description)
        return fn

    return decorator


@register_arch("resnet18", "CIFAR ResNet-18 (11.2 M params at 10 classes)")
def _resnet18(num_classes: int, in_chans: int, **kw: Any) -> nn.Module:
    return archs.ResNet((2, 2, 2, 2), num_classes, in_chans)


@register_arch("resnet34", "CIFAR ResNet-34 (21.3 M params)")
def _resnet34(num_classes: int, in_chans: int, **kw: Any) -> nn.Module:
    return archs.ResNet((3, 4, 6, 3), num_classes, in_chans)


@register_arch("preact_resnet18", "CIFAR PreAct-ResNet-18 (11.2 M params)")
def _preact18(num_classes: int, in_chans: int, **kw: Any) -> nn.Module:
    return archs.PreActResNet((2, 2, 2, 2), num_classes, in_chans)


@register_arch("mobilenetv2", "CIFAR MobileNetV2 (2.3 M params)")
def _mobilenetv2(num_classes: int, in_chans: int, **kw: Any) -> nn.Module:
    return archs.MobileNetV2(num_classes, in_chans)


@register_arch("small_cnn", "3-block CNN for tiny images such as 8x8 digits (width 32, ~0.1 M params)")
def _small_cnn(num_classes: int, in_chans: int, width: int = 32, **kw: Any) -> nn.Module:
    return archs.SmallCNN(num_classes, in_chans, width=int(width))


@register_arch("tiny_cnn", "the same CNN at width 16 (~25 k params, 1/4 of small_cnn): a deliberately small student")
def _tiny_cnn(num_classes: int, in_chans: int, **kw: Any) -> nn.Module:
    return archs.SmallCNN(num_classes, in_chans, width=16)


def list_archs() -> list[tuple[str, str]]:
    """(name, description) of every registered architecture, plus the parsed families."""
    rows = [(e.name, e.description) for e in _ARCHS.values()]
    rows.append(("wrn-D-K", "WideResNet of depth D (6n+4) and widen factor K, e.g. wrn-34-10, wrn-16-4"))
    rows.append(("timm:NAME", "any timm architecture, e.g. timm:resnet18, timm:convnext_nano"))
    rows.append(("robustbench:NAME", "the architecture of a RobustBench zoo entry (for --arch)"))
    return rows


def is_arch(name: str) -> bool:
    """Whether ``name`` is a registered architecture or one of the parsed families (wrn-D-K, timm:, robustbench:)."""
    return name in _ARCHS or bool(WRN_PATTERN.match(name)) or name.startswith(("timm:", "robustbench:"))


def build_arch(arch: str, num_classes: int, in_chans: int = 3, **kwargs: Any) -> nn.Module:
    """Build an untrained network for ``arch`` with ``num_classes`` outputs and ``in_chans`` inputs."""
    if arch in _ARCHS:
        return _ARCHS[arch].build(num_classes, in_chans, **kwargs)
    match = WRN_PATTERN.match(arch)
    if match:
        depth, widen = int(match.group(1)), int(match.group(2))
        if (depth - 4) % 6:
            raise ModelError(f"WideResNet depth must be 6n+4 (16, 22, 28, 34, 40, 70), got {arch!r}")
        if depth > WRN_MAX_DEPTH or not 1 <= widen <= WRN_MAX_WIDEN:
            raise ModelError(f"{arch!r} is outside the WideResNets robustdistill builds (depth <= {WRN_MAX_DEPTH}, "
                             f"widen factor 1-{WRN_MAX_WIDEN}); use e.g. wrn-34-10")
        return archs.WideResNet(depth, widen, num_classes, in_chans, sub_block1=bool(kwargs.get("sub_block1")))
    if arch.startswith("timm:"):
        return _build_timm(arch[5:], num_classes, in_chans)
    if arch.startswith("robustbench:"):
        return build_robustbench_arch(arch, num_classes)
    valid = [e.name for e in _ARCHS.values()] + ["wrn-D-K", "timm:NAME", "robustbench:NAME"]
    raise ModelError(did_you_mean(arch, valid, "architecture"))


def _build_timm(name: str, num_classes: int, in_chans: int) -> nn.Module:
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name}*")[:5]
        hint = f"; similar: {', '.join(close)}" if close else "; `python -c \"import timm; print(timm.list_models())\"` lists them"
        raise ModelError(f"timm has no architecture {name!r}{hint}")
    return timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans)
