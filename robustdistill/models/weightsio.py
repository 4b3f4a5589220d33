"""Weights-only file IO: the one place that opens weight files, and it never executes code.

* ``.safetensors`` is read with safetensors (cannot run code; rejects truncated files). Its
  header - tensor names, shapes, dtypes and the str -> str metadata - can be read without
  loading any tensor (:func:`read_safetensors_header`), so a file can be checked before a
  single real tensor is allocated.
* ``.pt``/``.pth``/``.tar``/``.ckpt``/``.bin`` go through :func:`torch_load_weights_only`, the
  package's only ``torch.load`` call, always with ``weights_only=True`` and inside
  :func:`weights_only_loads`.
* :func:`sniff` turns the usual non-checkpoints (missing, directory, FIFO/device, unreadable,
  empty, an HTML page saved by a failed download) into one-line :class:`CheckpointError` s.
* Metadata JSON is parsed with a size and nesting budget (:func:`parse_json_metadata`), so a
  hostile file cannot exhaust memory or the interpreter's stack.

This module is a leaf: it imports only the standard library, torch, safetensors and
:mod:`robustdistill.errors`.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import stat
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from ..errors import CheckpointError

FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
FORCE_NO_WEIGHTS_ONLY = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "student", "ema", "last", "params")
MAX_METADATA_JSON = 1 << 20  # bytes of one JSON metadata value; robustdistill writes a few KB
MAX_JSON_DEPTH = 32  # nesting of that JSON; robustdistill writes depth <= 4
HTML_HEADS = (b"<!doctype html", b"<html", b"<?xml", b"<head")
# safetensors dtype names -> torch dtypes (the names safetensors 0.4-0.8 write).
SAFETENSORS_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "U16": torch.uint16,
    "I32": torch.int32, "U32": torch.uint32, "I64": torch.int64, "U64": torch.uint64,
    "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


@dataclass(frozen=True)
class TensorLayout:
    """Shape and dtype of one stored tensor (what a file declares, before any data is read)."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    @classmethod
    def of(cls, tensor: torch.Tensor) -> "TensorLayout":
        """The layout of ``tensor`` (a meta tensor works too)."""
        return cls(tuple(tensor.shape), tensor.dtype)


def layout_of(state: Mapping[str, torch.Tensor]) -> dict[str, TensorLayout]:
    """The layout of every tensor in ``state`` (works for meta tensors too)."""
    return {key: TensorLayout.of(value) for key, value in state.items()}


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), else its type name."""
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


# --------------------------------------------------------------------------- sniffing
def sniff(path: str | Path) -> Path:
    """Check that ``path`` is a readable, non-empty regular file that is not an HTML page.

    Raises:
        CheckpointError: one line naming the problem and the fix.
    """
    path = Path(path)
    info = _stat(path)
    if stat.S_ISDIR(info.st_mode):
        raise CheckpointError(f"{str(path)!r} is a directory, not a checkpoint file; pass the weights file inside it")
    if not stat.S_ISREG(info.st_mode):
        # Opening a FIFO would block forever and a device never ends: refuse before reading.
        raise CheckpointError(f"{str(path)!r} is not a regular file (a FIFO, socket or device); pass a weights file")
    if info.st_size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes); download it again")
    try:
        with open(path, "rb") as handle:
            head = handle.read(512).lstrip().lower()
    except PermissionError:
        raise CheckpointError(
            f"cannot read {str(path)!r}: permission denied; make it readable (chmod u+r {path}) or copy it somewhere you can read"
        ) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {str(path)!r} ({first_line(exc)}); check the file and the disk") from None
    if head.startswith(HTML_HEADS):
        raise CheckpointError(
            f"{str(path)!r} is an HTML page, not weights (a failed Google-Drive download?); delete it and download again"
        )
    return path


def _stat(path: Path) -> os.stat_result:
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist") from None
    except PermissionError:
        raise CheckpointError(
            f"cannot reach {str(path)!r}: permission denied on a folder above it; fix that folder's permissions"
        ) from None
    except OSError as exc:  # e.g. a symlink loop or a name too long
        raise CheckpointError(f"cannot open {str(path)!r} ({first_line(exc)}); check the path") from None
    except ValueError:  # a NUL byte: no file system accepts it
        raise CheckpointError(f"{str(path)[:200]!r} is not a valid file name (it contains a NUL byte); check the path") from None


# --------------------------------------------------------------------------- torch files
@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Make every ``torch.load`` in the block weights-only, whatever the environment says.

    Sets ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1`` (so libraries that pass ``weights_only=False``, such
    as robustbench or timm, cannot unpickle code) and hides ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``:
    torch 2.14 refuses *every* load with a RuntimeError when both are set, and the CLI sets the
    first while a user's shell may set the second. Hiding the unsafe one only makes the loads
    safer. Both variables are restored afterwards. The environment is process-wide, so loads on
    other threads during the block see it too (they only get safer).
    """
    saved = {name: os.environ.get(name) for name in (FORCE_WEIGHTS_ONLY, FORCE_NO_WEIGHTS_ONLY)}
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    os.environ.pop(FORCE_NO_WEIGHTS_ONLY, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def torch_load_weights_only(path: str | Path) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``, working whatever the environment.

    The package's only ``torch.load``; torch's own exceptions pass through (see
    :func:`read_torch_file` for the translated ones).
    """
    with weights_only_loads():
        return torch.load(path, map_location="cpu", weights_only=True)


def read_torch_file(path: str | Path) -> Any:
    """Unpickle a torch file with the weights-only unpickler; every failure is a one-line CheckpointError."""
    path = sniff(path)
    try:
        return torch_load_weights_only(path)
    except pickle.UnpicklingError as exc:
        raise _unpickling_error(path, exc) from None
    except MemoryError:
        raise _oversized_error(path) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise _torch_error(path, exc) from None
    except Exception as exc:  # noqa: BLE001 - random bytes make the legacy unpickler raise anything (IndexError, ...)
        raise CheckpointError(
            f"{str(path)!r} is not a PyTorch checkpoint ({type(exc).__name__}: {first_line(exc)}); it may be corrupt"
        ) from None


def _unpickling_error(path: Path, exc: pickle.UnpicklingError) -> CheckpointError:
    named = _unsafe_globals(path) or re.findall(r"GLOBAL ([\w.]+)", str(exc))
    if named:
        listed = f" (it pickles {', '.join(dict.fromkeys(named[:4]))})"
        return CheckpointError(
            f"{str(path)!r} holds Python objects beyond tensors{listed}, and robustdistill never unpickles code; "
            "re-save only its state_dict (torch.save(model.state_dict(), f)) or convert it to .safetensors"
        )
    # Any other refusal of the weights-only unpickler is a malformed pickle, i.e. a corrupt file.
    return CheckpointError(f"{str(path)!r} is not a PyTorch checkpoint ({_unpickler_detail(exc)}); it may be corrupt")


def _torch_error(path: Path, exc: BaseException) -> CheckpointError:
    message = str(exc)
    if "central directory" in message or "EOF" in message or isinstance(exc, EOFError):
        return CheckpointError(f"{str(path)!r} is truncated (incomplete download or copy); fetch it again")
    if "can't allocate memory" in message or "wrong byte size" in message or "does not match expected size" in message:
        return _oversized_error(path)
    return CheckpointError(f"{str(path)!r} is not a PyTorch checkpoint ({first_line(exc)})")


def _oversized_error(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{str(path)!r} declares tensors larger than the data it holds: it is corrupt (or crafted); fetch it again"
    )


def _unpickler_detail(exc: BaseException) -> str:
    """The informative line of a weights-only refusal (torch wraps it in a long generic preamble)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        rest = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()
        if rest and rest[0].strip():
            return rest[0].strip()[:200]
    return first_line(exc)


def _unsafe_globals(path: Path) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # noqa: BLE001 - best-effort diagnostics only
        return []


def is_tensor_dict(obj: Any) -> bool:
    """True for a non-empty mapping whose values are all tensors."""
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def find_state_dict(obj: Any, path: str | Path) -> dict[str, torch.Tensor]:
    """The tensor dict inside an unpickled checkpoint: the object itself or one nested under a usual key."""
    if is_tensor_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in NESTED_KEYS:
            if key in obj:
                try:
                    return find_state_dict(obj[key], path)
                except CheckpointError:
                    continue
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) >= len(obj) - 2:  # tensors plus e.g. an 'epoch' counter
            return {str(k): v for k, v in tensors.items()}
        keys = ", ".join(str(k)[:40] for k in list(obj)[:6])
        raise CheckpointError(
            f"found no state dict in {str(path)!r} (top-level keys: {keys}); expected tensors directly or under "
            f"one of {', '.join(NESTED_KEYS)}"
        )
    raise CheckpointError(
        f"{str(path)!r} holds a {type(obj).__name__}, not a state dict of tensors; save model.state_dict() instead"
    )


# --------------------------------------------------------------------------- safetensors
def is_safetensors(path: str | Path) -> bool:
    """Whether ``path`` names a safetensors file (by its suffix, case-insensitively)."""
    return str(path).lower().endswith(".safetensors")


def _unreadable_safetensors(path: Path, exc: BaseException) -> CheckpointError:
    return CheckpointError(
        f"{str(path)!r} is not a readable safetensors file ({first_line(exc)}); it may be truncated - copy it again"
    )


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors (on the CPU) and the str -> str metadata of a safetensors file."""
    from safetensors import SafetensorError, safe_open

    path = sniff(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, TypeError, MemoryError) as exc:
        raise _unreadable_safetensors(path, exc) from None
    return tensors, metadata


def read_safetensors_header(path: str | Path) -> tuple[dict[str, TensorLayout], dict[str, str]]:
    """The tensor layouts and metadata of a safetensors file, without reading any tensor data.

    safetensors itself bounds the header (100 MB) and checks that the declared tensors fit the file.
    """
    from safetensors import SafetensorError, safe_open

    path = sniff(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = dict(handle.metadata() or {})
            raw = {key: handle.get_slice(key) for key in handle.keys()}
            declared = {key: (tuple(int(n) for n in s.get_shape()), str(s.get_dtype())) for key, s in raw.items()}
    except (SafetensorError, OSError, ValueError, TypeError, MemoryError) as exc:
        raise _unreadable_safetensors(path, exc) from None
    layout = {}
    for key, (shape, dtype_name) in declared.items():
        if dtype_name not in SAFETENSORS_DTYPES:
            raise CheckpointError(
                f"{str(path)!r} stores tensor {key[:80]!r} as {dtype_name}, which PyTorch cannot load; export float32 weights"
            )
        layout[key] = TensorLayout(shape, SAFETENSORS_DTYPES[dtype_name])
    return layout, metadata


def read_metadata(path: str | Path) -> dict[str, str]:
    """The str -> str metadata of a safetensors file (without loading tensors)."""
    return read_safetensors_header(path)[1]


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a flat ``{name: tensor}`` from a safetensors or torch file, never unpickling code."""
    if is_safetensors(path):
        return read_safetensors(path)[0]
    return find_state_dict(read_torch_file(path), path)


# --------------------------------------------------------------------------- metadata JSON
def json_depth(text: str) -> int:
    """The deepest bracket nesting of a JSON text (brackets inside strings do not count)."""
    depth = deepest = 0
    for bracket in re.findall(r"[\[\]{}]", re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def parse_json_metadata(text: str, *, what: str, fix: str) -> Any:
    """Parse one JSON metadata value within a budget of :data:`MAX_METADATA_JSON` bytes and :data:`MAX_JSON_DEPTH` levels.

    Args:
        text: the metadata value.
        what: what it is, for messages (e.g. ``"the robustdistill.spec metadata of 'a.safetensors'"``).
        fix: what the user should do, appended to every message.

    Raises:
        CheckpointError: the text is too large, too deep or not JSON.
    """
    if len(text) > MAX_METADATA_JSON:
        raise CheckpointError(
            f"{what} is {len(text) / 1e6:.1f} MB of JSON, beyond the {MAX_METADATA_JSON // 1024} KB robustdistill reads; {fix}"
        )
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise CheckpointError(f"{what} nests {depth} levels deep, beyond the {MAX_JSON_DEPTH} robustdistill reads; {fix}")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{what} is not valid JSON ({first_line(exc)}); {fix}") from None
