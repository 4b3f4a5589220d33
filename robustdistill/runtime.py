"""What this process runs on: the device chosen once, and the library versions numbers depend on."""

from __future__ import annotations

import os

import torch

from .errors import UsageError


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


__all__ = ["select_device", "versions"]
