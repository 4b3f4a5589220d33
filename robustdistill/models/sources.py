"""One parser for model identifiers, and the loaders behind it.

=========================================  =====================================================
identifier                                 what it loads
=========================================  =====================================================
``bundled:digits``                         the robust digits teacher shipped inside the package
``robustbench:NAME[@DATASET/THREAT]``      a RobustBench zoo model from its local cache
``timm:NAME``                              a timm model (+ ``weights=FILE``), normalisation wrapped in
``path/to/model.safetensors``              a model written by robustdistill (self-describing)
``path/to/ckpt.pt`` + ``arch=...``         plain weights (raw, or nested; ``module.`` prefixes ok)
``resnet18``, ``wrn-34-10``, ...           an *untrained* registry architecture (students)
=========================================  =====================================================
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator, Sequence

import torch

from ..errors import CheckpointError, ModelError, UsageError
from .checkpoint import META_SPEC, load_classifier, load_weights, read_metadata, read_state_dict
from .classifier import Classifier
from .registry import build_arch, is_arch, list_archs
from .spec import ModelSpec

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".tar", ".ckpt", ".bin")


@dataclass(frozen=True)
class ModelRef:
    """A parsed model identifier."""

    kind: str  # bundled | robustbench | timm | safetensors | checkpoint | arch
    name: str
    raw: str


def list_bundled() -> list[str]:
    root = resources.files("robustdistill") / "assets"
    if not root.is_dir():
        return []
    return sorted(p.name[: -len(".safetensors")] for p in root.iterdir() if p.name.endswith(".safetensors"))


def bundled_path(name: str) -> Path:
    root = resources.files("robustdistill") / "assets"
    path = Path(str(root / f"{name}.safetensors"))
    if not path.exists():
        valid = ", ".join(f"bundled:{n}" for n in list_bundled()) or "none (the package was installed without its assets)"
        raise ModelError(f"no bundled model {name!r}; available: {valid}")
    return path


def parse_model_id(identifier: str) -> ModelRef:
    """Classify ``identifier``; raises :class:`ModelError` listing the valid forms when nothing fits."""
    text = identifier.strip()
    if not text:
        raise ModelError("empty model identifier; pass e.g. bundled:digits, robustbench:NAME, timm:NAME or a file")
    for prefix in ("bundled", "robustbench", "timm"):
        if text.startswith(prefix + ":"):
            return ModelRef(prefix, text[len(prefix) + 1 :], text)
    lowered = text.lower()
    if lowered.endswith(".safetensors"):
        return ModelRef("safetensors", text, text)
    if lowered.endswith(CHECKPOINT_SUFFIXES) or Path(text).is_file():
        return ModelRef("checkpoint", text, text)
    if is_arch(text):
        return ModelRef("arch", text, text)
    valid = ", ".join(name for name, _ in list_archs())
    raise ModelError(
        f"{text!r} is neither a file nor a known model; use bundled:NAME, robustbench:NAME, timm:NAME, "
        f"a .safetensors/.pt file, or an architecture ({valid})"
    )


@dataclass(frozen=True)
class DataHint:
    """What the data says the model should look like (used to build heads and to check fit)."""

    num_classes: int
    input_size: tuple[int, int, int]
    class_names: tuple[str, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


def load_model(
    identifier: str,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    weights: str | Path | None = None,
    model_dir: str | Path | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    hint: DataHint | None = None,
) -> Classifier:
    """Load a trained model from any supported identifier (see the module docstring).

    Args:
        identifier: the model id or file path.
        arch: architecture of a plain ``.pt``/``.pth`` (or non-robustdistill ``.safetensors``) file.
        num_classes: class count for ``arch``/``timm:`` models (default: from ``hint``).
        weights: local weights file for ``timm:NAME``.
        model_dir: RobustBench cache root (``MODEL_DIR/DATASET/THREAT/NAME.pt``).
        mean, std: normalisation of a plain checkpoint trained on normalised inputs.
        hint: the dataset's class count, input size and class names.
    """
    ref = parse_model_id(identifier)
    if ref.kind == "bundled":
        return load_classifier(bundled_path(ref.name)).eval()
    if ref.kind == "robustbench":
        from .robustbench_source import load_robustbench

        model = load_robustbench(ref.raw, model_dir)
    elif ref.kind == "timm":
        model = _load_timm(ref.name, num_classes, weights, hint)
    elif ref.kind == "safetensors" and arch is None:
        if META_SPEC not in read_metadata(ref.name):
            raise CheckpointError(
                f"{ref.name!r} was not written by robustdistill; pass --arch ARCH to load it as plain weights"
            )
        model = load_classifier(ref.name)
    elif ref.kind in ("checkpoint", "safetensors"):
        model = _load_plain(ref.name, arch, num_classes, mean, std, hint)
    else:
        raise ModelError(
            f"{identifier!r} is an architecture, not trained weights; pass a checkpoint file with --arch {identifier}"
        )
    if hint is not None and model.spec.class_names is None and hint.class_names and len(hint.class_names) == model.num_classes:
        model.spec = model.spec.with_(class_names=hint.class_names)
    model.eval()  # trained models are loaded for inference (BatchNorm statistics frozen)
    return model


def _load_plain(
    path: str, arch: str | None, num_classes: int | None, mean: Sequence[float] | None,
    std: Sequence[float] | None, hint: DataHint | None,
) -> Classifier:
    if not Path(path).exists():
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    if arch is None:
        raise UsageError(f"{path!r} holds plain weights; say which architecture with --arch (see `robustdistill list`)")
    state = read_state_dict(path)
    if mean is None and "normalize.mean" in state:  # a robustdistill state dict saved as .pt
        mean, std = state["normalize.mean"].flatten().tolist(), state["normalize.std"].flatten().tolist()
    state = {k: v for k, v in state.items() if not k.startswith("normalize.")}
    classes = num_classes or (hint.num_classes if hint else None) or _infer_num_classes(state)
    in_size = hint.input_size if hint else (3, 32, 32)
    if (mean is None) != (std is None):
        raise UsageError("--mean and --std go together")
    spec = ModelSpec(
        arch=arch, num_classes=classes, input_size=in_size,
        mean=tuple(mean) if mean else None, std=tuple(std) if std else None,
        source=str(Path(path).resolve()),
    )
    net = build_arch(arch, classes, in_size[0])
    load_weights(net, state, path)
    model = Classifier(net, spec)
    return model


def _infer_num_classes(state: dict[str, torch.Tensor]) -> int:
    matrices = [v for k, v in state.items() if v.ndim == 2 and k.endswith("weight")]
    if not matrices:
        raise ModelError("cannot tell the class count from the checkpoint; pass --num-classes")
    return int(matrices[-1].shape[0])


def _load_timm(name: str, num_classes: int | None, weights: str | Path | None, hint: DataHint | None) -> Classifier:
    import timm

    from .robustbench_source import weights_only_loads

    if not timm.is_model(name):
        build_arch(f"timm:{name}", 1)  # raises the helpful error
    in_chans = hint.input_size[0] if hint else 3
    if weights is None:
        net = _timm_pretrained(name, in_chans)
        classes = int(getattr(net, "num_classes", 0) or num_classes or 0)
    else:
        classes = num_classes or (hint.num_classes if hint else None)
        state = read_state_dict(weights)
        classes = classes or _infer_num_classes(state)
        net = timm.create_model(name, pretrained=False, num_classes=classes, in_chans=in_chans)
        load_weights(net, state, str(weights))
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is not None and len(mean) != in_chans:
        mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
    input_size = hint.input_size if hint else tuple(cfg.get("input_size", (3, 224, 224)))
    spec = ModelSpec(
        arch=f"timm:{name}", num_classes=classes, input_size=tuple(input_size),  # type: ignore[arg-type]
        mean=tuple(mean) if mean else None, std=tuple(std) if std else None,
        source=f"timm:{name}" + (f" + {Path(weights).resolve()}" if weights else " (timm pretrained)"),
    )
    return Classifier(net, spec)


def _timm_pretrained(name: str, in_chans: int) -> torch.nn.Module:
    """timm's pretrained weights: from the local cache, else downloaded - failing fast when offline.

    huggingface_hub retries an unreachable host for ~45 s before giving up, so the cache is tried
    first with the hub in offline mode, and the download only when the host resolves.
    """
    import timm

    from .robustbench_source import weights_only_loads

    def create() -> torch.nn.Module:
        with weights_only_loads():
            return timm.create_model(name, pretrained=True, in_chans=in_chans)

    def fail(exc: BaseException) -> CheckpointError:
        text = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        return CheckpointError(
            f"timm could not fetch pretrained weights for {name!r} ({text}); pass --weights FILE with local weights"
        )

    try:
        with _hf_offline():
            return create()
    except Exception as exc:  # noqa: BLE001 - not in the local cache (or not a hub model)
        cached_error = exc
    if _hf_offline_mode() or not _host_reachable("huggingface.co"):
        raise fail(cached_error) from None
    try:
        return create()
    except Exception as exc:  # noqa: BLE001 - network / hub errors of every kind
        raise fail(exc) from None


def _hf_offline_mode() -> bool:
    try:
        import huggingface_hub.constants as hf_constants
    except ImportError:
        return False
    return bool(getattr(hf_constants, "HF_HUB_OFFLINE", False))


@contextlib.contextmanager
def _hf_offline() -> Iterator[None]:
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


def _host_reachable(host: str) -> bool:
    """True if ``host`` resolves (or a proxy is configured, which may resolve it for us)."""
    import socket

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        socket.getaddrinfo(host, 443)
    except (OSError, UnicodeError):
        return False
    return True


def build_student(arch: str, hint: DataHint, *, weights: str | Path | None = None) -> Classifier:
    """A fresh (or ``weights``-initialised) student for data described by ``hint``.

    The student normalises with the dataset's mean/std inside the model, so attacks still see
    [0, 1] inputs.
    """
    ref = parse_model_id(arch)
    if ref.kind not in ("arch", "timm"):
        raise ModelError(f"student {arch!r} must be an architecture name (see `robustdistill list`), not a file or zoo id")
    net = build_arch(arch, hint.num_classes, hint.input_size[0])
    if weights is not None:
        load_weights(net, read_state_dict(weights), str(weights))
    spec = ModelSpec(
        arch=arch, num_classes=hint.num_classes, input_size=hint.input_size, mean=hint.mean, std=hint.std,
        class_names=hint.class_names, source="student",
    )
    return Classifier(net, spec)


def check_fits(model: Classifier, hint: DataHint, role: str = "model") -> None:
    """Refuse, in one line, a model whose class count, channels or input size do not fit the data."""
    spec = model.spec
    if spec.num_classes != hint.num_classes:
        raise ModelError(
            f"the {role} predicts {spec.num_classes} classes but the data has {hint.num_classes}; "
            "use a model trained for this dataset"
        )
    if spec.input_size[0] != hint.input_size[0]:
        raise ModelError(
            f"the {role} takes {spec.input_size[0]}-channel images but the data has {hint.input_size[0]} "
            f"channel{'s' if hint.input_size[0] != 1 else ''}"
        )
    if tuple(spec.input_size[1:]) != tuple(hint.input_size[1:]):
        h, w = spec.input_size[1:]
        raise ModelError(
            f"the {role} was built for {h}x{w} inputs but the data is {hint.input_size[1]}x{hint.input_size[2]}; "
            f"use matching data (for imagefolder: --image-size {h})"
        )
