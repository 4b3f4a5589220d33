"""Small shared helpers: eps parsing, device choice, atomic files, hashing, seeding."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import UsageError


def parse_fraction(value: str | float | int, *, name: str = "eps") -> float:
    """Parse ``8/255``, ``0.0314`` or ``2/255`` into a float in pixel units of [0, 1].

    Values above 1 are refused: inputs live in [0, 1], so ``8`` almost always means ``8/255``.
    """
    if isinstance(value, (int, float)):
        result = float(value)
    else:
        text = str(value).strip()
        try:
            result = float(Fraction(text)) if "/" in text else float(text)
        except (ValueError, ZeroDivisionError):
            raise UsageError(f"{name} {text!r} is not a number; write it like 8/255 or 0.031") from None
    if result != result or result < 0 or result == float("inf"):
        raise UsageError(f"{name} must be a non-negative number in pixel units of [0, 1], got {value!r}")
    if result > 1:
        if result > 255:  # no pixel budget: do not suggest e.g. 1000000000/255
            raise UsageError(f"{name}={value} is out of range; images are in [0, 1], so write it like 8/255 or 0.031")
        shown = int(result) if float(result).is_integer() else result
        raise UsageError(
            f"{name}={value} is larger than 1 but images are in [0, 1]; did you mean {shown}/255?"
        )
    return result


def format_fraction(value: float) -> str:
    """Show a pixel budget as written: short decimals (0.2, 0.03) as decimals, else k/255 when it is one."""
    if round(value, 4) == value:
        return f"{value:g}"
    k = value * 255
    if abs(k - round(k)) < 1e-6 and round(k) != 0:
        return f"{round(k)}/255"
    return f"{value:.6g}"


def select_device(preference: str | None = None) -> torch.device:
    """Pick the device once: an explicit choice, else cuda, then mps, then cpu."""
    if preference and preference != "auto":
        try:
            device = torch.device(preference)
        except RuntimeError:
            raise UsageError(f"unknown device {preference!r}; use auto, cpu, cuda, cuda:N or mps") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise UsageError("--device mps was asked for but MPS is not available; use --device cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _atomic_write(path: Path, write: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would have.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old content or the new one, never half of it."""
    _atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a temporary file and ``os.replace``."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def derive_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (seed, epoch, rank, ...), independent of PYTHONHASHSEED."""
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@contextlib.contextmanager
def forked_rng(device: torch.device | None = None) -> Iterator[None]:
    """Run a block without disturbing the caller's torch RNG (pyautoattack reseeds globally)."""
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


def versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour a number depends on."""
    from importlib import metadata

    out = {}
    for pkg in ("robustdistill", "torch", "torchvision", "timm", "pyautoattack", "robustbench", "safetensors"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out
