"""``timm:NAME``: a timm architecture with local weights (``weights=FILE``) or timm's pretrained ones.

Local weights are read weights-only (safetensors, or the weights-only torch unpickler) and
checked against the architecture on the meta device before it is built. timm's own
normalisation (its ``pretrained_cfg`` mean/std) is wrapped inside the model, so it takes [0, 1]
images like every :class:`Classifier`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from ..errors import CheckpointError
from .checkpoint import build_and_load, check_num_classes, infer_num_classes
from .classifier import Classifier
from .model_source import MODEL_SOURCES, ModelRef, ModelSource
from .registry import build_arch
from .spec import DataHint, ModelOptions, ModelSpec
from .weightsio import layout_of, read_state_dict, weights_only_loads

HUB_HOST = "huggingface.co"


def load_timm(name: str, options: ModelOptions, hint: DataHint | None) -> Classifier:
    """timm architecture ``name`` with ``options.weights`` (or timm's pretrained weights), normalisation inside."""
    import timm

    if not timm.is_model(name):
        build_arch(f"timm:{name}", 1)  # raises the helpful error
    in_chans = hint.input_size[0] if hint else 3
    if options.weights is None:
        net = timm_pretrained(name, in_chans)
        classes = int(getattr(net, "num_classes", 0) or options.num_classes or 0)
    else:
        classes = check_num_classes(options.num_classes) or (hint.num_classes if hint else None)
        state = read_state_dict(options.weights)
        classes = classes or infer_num_classes(state)
        net = build_and_load(lambda: timm.create_model(name, pretrained=False, num_classes=classes, in_chans=in_chans),
                             layout_of(state), lambda: state, str(options.weights))
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is not None and len(mean) != in_chans:
        mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
    input_size = hint.input_size if hint else tuple(cfg.get("input_size", (3, 224, 224)))
    weights = options.weights
    spec = ModelSpec(
        arch=f"timm:{name}", num_classes=classes, input_size=tuple(input_size),  # type: ignore[arg-type]
        mean=tuple(mean) if mean else None, std=tuple(std) if std else None,
        source=f"timm:{name}" + (f" + {Path(weights).resolve()}" if weights else " (timm pretrained)"),
    )
    return Classifier(net, spec)


def timm_pretrained(name: str, in_chans: int) -> torch.nn.Module:
    """timm's pretrained weights: from the local cache, else downloaded - failing fast when offline.

    huggingface_hub retries an unreachable host for ~45 s before giving up, so the cache is tried
    first with the hub in offline mode, and the download only when the host resolves.
    """
    import timm

    def create() -> torch.nn.Module:
        with weights_only_loads():
            return timm.create_model(name, pretrained=True, in_chans=in_chans)

    def fail(exc: BaseException) -> CheckpointError:
        text = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        return CheckpointError(
            f"timm could not fetch pretrained weights for {name!r} ({text}); pass --weights FILE with local weights"
        )

    try:
        with hf_offline():
            return create()
    except Exception as exc:  # noqa: BLE001 - not in the local cache (or not a hub model)
        cached_error = exc
    if hf_offline_mode() or not host_reachable(HUB_HOST):
        raise fail(cached_error) from None
    try:
        return create()
    except Exception as exc:  # noqa: BLE001 - network / hub errors of every kind
        raise fail(exc) from None


def hf_offline_mode() -> bool:
    """Whether huggingface_hub is in offline mode (``HF_HUB_OFFLINE``)."""
    try:
        import huggingface_hub.constants as hf_constants
    except ImportError:
        return False
    return bool(getattr(hf_constants, "HF_HUB_OFFLINE", False))


@contextlib.contextmanager
def hf_offline() -> Iterator[None]:
    """huggingface_hub in offline mode for the block (cache only, no network), restored afterwards."""
    try:
        import huggingface_hub.constants as hf_constants
    except ImportError:
        yield
        return
    old = hf_constants.HF_HUB_OFFLINE
    hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = old


def host_reachable(host: str) -> bool:
    """True if ``host`` resolves (or a proxy is configured, which may resolve it for us)."""
    import socket

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        socket.getaddrinfo(host, 443)
    except (OSError, UnicodeError):
        return False
    return True


@dataclass(frozen=True)
class TimmSource(ModelSource):
    """``timm:NAME``: a timm model with local weights (``--weights FILE``) or timm's pretrained weights."""

    name: str = "timm"
    syntax: str = "timm:NAME"
    description: str = "timm model (+ --weights FILE)"
    prefix: str | None = "timm"

    def load(self, ref: ModelRef, options: ModelOptions, hint: DataHint | None) -> Classifier:
        return load_timm(ref.name, options, hint)

    def file(self, ref: ModelRef, options: ModelOptions = ModelOptions()) -> Path | None:
        """The local weights file, when one is given (timm's pretrained cache is not tracked)."""
        return Path(options.weights) if options.weights is not None else None


MODEL_SOURCES.add(TimmSource())
