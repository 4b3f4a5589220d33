"""``ModelSpec``: everything needed to rebuild a classifier and to interpret its outputs."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    """Self-description of a :class:`~robustdistill.models.Classifier`.

    Attributes:
        arch: architecture id understood by :func:`robustdistill.models.build_arch`
            (``resnet18``, ``wrn-34-10``, ``timm:convnext_nano``, ``robustbench:NAME@cifar10/Linf`` ...).
        num_classes: number of output logits.
        input_size: ``(channels, height, width)`` of the [0, 1] input.
        mean, std: per-channel normalisation applied *inside* the model; ``None`` when the
            network normalises itself (RobustBench models) or expects raw [0, 1] input.
        class_names: names of the classes, in logit order.
        source: where the weights came from (a model identifier or a file).
        arch_kwargs: extra keyword arguments of the architecture constructor.
    """

    arch: str
    num_classes: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    class_names: tuple[str, ...] | None = None
    source: str = ""
    arch_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        raw = json.loads(text)
        return cls(
            arch=raw["arch"],
            num_classes=int(raw["num_classes"]),
            input_size=tuple(int(v) for v in raw["input_size"]),  # type: ignore[arg-type]
            mean=tuple(raw["mean"]) if raw.get("mean") is not None else None,
            std=tuple(raw["std"]) if raw.get("std") is not None else None,
            class_names=tuple(raw["class_names"]) if raw.get("class_names") is not None else None,
            source=raw.get("source", ""),
            arch_kwargs=dict(raw.get("arch_kwargs") or {}),
        )

    def with_(self, **changes: Any) -> "ModelSpec":
        return replace(self, **changes)
