"""Reading weights without ever executing code, and robustdistill's self-describing safetensors.

* ``.safetensors`` is read with safetensors (cannot run code; rejects truncated files).
* ``.pt``/``.pth``/``.tar``/``.ckpt`` is read with ``torch.load(weights_only=True)`` only.
* State dicts nested under ``state_dict``/``model``/``net``/... and keys prefixed with
  ``module.``/``model.`` are matched to the target network by trying each interpretation and
  keeping the one whose keys fit, instead of blindly stripping substrings.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._utils import atomic_write_bytes
from ..errors import CheckpointError, ModelError
from .classifier import Classifier
from .spec import ModelSpec

NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "student", "ema", "last", "params")
PREFIXES = ("module.", "model.", "net.", "_orig_mod.", "student.")
META_SPEC = "robustdistill.spec"
META_CONFIG = "robustdistill.config"
META_VERSION = "robustdistill.version"


def _sniff(path: Path) -> None:
    """Fail early, with the right advice, on the usual non-checkpoints (HTML pages, empty files)."""
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if path.is_dir():
        raise CheckpointError(f"{str(path)!r} is a directory, not a checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes); download it again")
    with open(path, "rb") as handle:
        head = handle.read(512).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        raise CheckpointError(
            f"{str(path)!r} is an HTML page, not weights (a failed Google-Drive download?); delete it and download again"
        )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a flat ``{name: tensor}`` from a safetensors or torch file, never unpickling code."""
    path = Path(path)
    _sniff(path)
    if path.suffix == ".safetensors":
        return _read_safetensors(path)[0]
    obj = _torch_load(path)
    return _find_state_dict(obj, path)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{str(path)!r} is not a readable safetensors file ({_first_line(exc)}); it may be truncated - copy it again"
        ) from None
    return tensors, metadata


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = _unpickler_detail(exc)
        named = _unsafe_globals(path) or re.findall(r"GLOBAL ([\w.]+)", str(exc))
        if named:
            listed = f" (it pickles {', '.join(dict.fromkeys(named[:4]))})"
            raise CheckpointError(
                f"{str(path)!r} holds Python objects beyond tensors{listed}, and robustdistill never unpickles code; "
                "re-save only its state_dict (torch.save(model.state_dict(), f)) or convert it to .safetensors"
            ) from None
        # Any other refusal of the weights-only unpickler is a malformed pickle, i.e. a corrupt file.
        raise CheckpointError(f"{str(path)!r} is not a PyTorch checkpoint ({detail}); it may be corrupt") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        message = str(exc)
        if "central directory" in message or "EOF" in message or isinstance(exc, EOFError):
            raise CheckpointError(f"{str(path)!r} is truncated (incomplete download or copy); fetch it again") from None
        raise CheckpointError(f"{str(path)!r} is not a PyTorch checkpoint ({_first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - random bytes make the legacy unpickler raise anything (IndexError, ...)
        raise CheckpointError(
            f"{str(path)!r} is not a PyTorch checkpoint ({type(exc).__name__}: {_first_line(exc)}); it may be corrupt"
        ) from None


def _unpickler_detail(exc: BaseException) -> str:
    """The informative line of a weights-only refusal (torch wraps it in a long generic preamble)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        rest = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()
        if rest and rest[0].strip():
            return rest[0].strip()[:200]
    return _first_line(exc)


def _unsafe_globals(path: Path) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - best-effort diagnostics only
        return []


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _find_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensor dict inside ``obj``: the object itself or one nested under a usual key."""
    if _is_tensor_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in NESTED_KEYS:
            if key in obj:
                try:
                    return _find_state_dict(obj[key], path)
                except CheckpointError:
                    continue
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) - 2:  # tensors plus e.g. an 'epoch' counter
            return tensors
        keys = ", ".join(map(str, list(obj)[:6]))
        raise CheckpointError(
            f"found no state dict in {str(path)!r} (top-level keys: {keys}); expected tensors directly or under "
            f"one of {', '.join(NESTED_KEYS)}"
        )
    raise CheckpointError(f"{str(path)!r} holds a {type(obj).__name__}, not a state dict of tensors")


def _candidates(state: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Interpretations of the keys: as they are, and with common wrapper prefixes removed."""
    out = [state]
    frontier = [state]
    for _ in range(2):  # e.g. 'module.model.' needs two rounds
        nxt = []
        for sd in frontier:
            for prefix in PREFIXES:
                if sd and all(k.startswith(prefix) for k in sd):
                    stripped = {k[len(prefix):]: v for k, v in sd.items()}
                    nxt.append(stripped)
                elif any(k.startswith(prefix) for k in sd):
                    # DataParallel checkpoints sometimes mix prefixed and plain keys.
                    nxt.append({(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()})
        out.extend(nxt)
        frontier = nxt
    return out


def load_weights(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``net`` strictly, choosing the key interpretation that fits best."""
    expected = net.state_dict()
    optional = {k for k in expected if k.endswith("num_batches_tracked")}

    def score(sd: dict[str, torch.Tensor]) -> int:
        return len(set(sd) & set(expected))

    best = max(_candidates(state), key=score)
    missing = [k for k in expected if k not in best and k not in optional]
    unexpected = [k for k in best if k not in expected]
    mismatched = [(k, tuple(best[k].shape), tuple(v.shape)) for k, v in expected.items() if k in best and best[k].shape != v.shape]
    if mismatched:
        key, got, want = mismatched[0]
        hint = " - is --arch right?"
        # Only the classifier head (the last 2-D weight and its bias) says anything about the class count.
        head = [k for k, v in expected.items() if v.ndim == 2 and k.endswith("weight")][-1:]
        head_keys = {*head, *(k[: -len("weight")] + "bias" for k in head)}
        if key in head_keys and len(got) >= 1 and got[1:] == want[1:] and got[0] != want[0]:
            hint = (f" - the checkpoint has {got[0]} classes where the model has {want[0]}: a class-count mismatch "
                    f"(use --num-classes {got[0]} or a model trained for this dataset)")
        # The stem (first 4-D weight) says how many image channels the weights take.
        stem = next((k for k, v in expected.items() if v.ndim == 4), None)
        if key == stem and len(got) == 4 and got[0] == want[0] and got[2:] == want[2:] and got[1] != want[1]:
            hint = (f" - the checkpoint takes {got[1]}-channel images but the model was built for {want[1]}-channel "
                    "data: a channel mismatch (use data with matching channels)")
        raise ModelError(
            f"weights in {source} do not fit the architecture: {key} is {list(got)} in the file but {list(want)} in the model{hint}"
        )
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise ModelError(
            f"weights in {source} do not fit the architecture: {'; '.join(parts)} keys - is --arch right?"
        )
    for key in optional:  # older checkpoints lack num_batches_tracked
        best.setdefault(key, expected[key])
    net.load_state_dict(best, strict=True)


# --------------------------------------------------------------------------- robustdistill safetensors
def save_classifier(
    model: Classifier, path: str | Path, *, config: Mapping[str, Any] | None = None, extra: Mapping[str, str] | None = None
) -> Path:
    """Write ``model`` as a self-describing safetensors file (atomically).

    Metadata (all str -> str, JSON for structures): ``robustdistill.spec``, ``robustdistill.config``,
    ``robustdistill.version``, ``format=pt``, plus ``extra`` (e.g. teacher id and sha256).
    """
    from safetensors.torch import save

    from .. import __version__

    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    # safetensors refuses tensors that share storage (tied weights): give each its own copy.
    seen: dict[int, str] = {}
    for key, tensor in state.items():
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen and tensor.numel() > 0:
            state[key] = tensor.clone()
        seen[ptr] = key
    metadata = {"format": "pt", META_SPEC: model.spec.to_json(), META_VERSION: __version__}
    if config is not None:
        metadata[META_CONFIG] = json.dumps(config, sort_keys=True, default=str)
    for key, value in (extra or {}).items():
        metadata[key if key.startswith("robustdistill.") else f"robustdistill.{key}"] = str(value)
    atomic_write_bytes(path, save(state, metadata=metadata))
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The str -> str metadata of a safetensors file (without loading tensors)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    _sniff(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors file ({_first_line(exc)})") from None


def load_classifier(path: str | Path) -> Classifier:
    """Rebuild a :class:`Classifier` from a safetensors file written by :func:`save_classifier`."""
    from .registry import build_arch

    path = Path(path)
    tensors, metadata = _read_safetensors(path) if path.exists() else ({}, {})
    if not path.exists():
        _sniff(path)
    if META_SPEC not in metadata:
        raise CheckpointError(
            f"{str(path)!r} was not written by robustdistill (no {META_SPEC} metadata); "
            "pass --arch ARCH (and --num-classes) to load it as plain weights"
        )
    spec = ModelSpec.from_json(metadata[META_SPEC])
    net = build_arch(spec.arch, spec.num_classes, spec.input_size[0], **spec.arch_kwargs)
    model = Classifier(net, spec)
    load_weights(model, tensors, str(path))
    return model
