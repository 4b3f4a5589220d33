"""Seeding: stable derived seeds, global seeding, and blocks that leave the caller's RNG alone."""

from __future__ import annotations

import contextlib
import hashlib
import random
from typing import Iterator

import torch


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


__all__ = ["derive_seed", "forked_rng", "seed_everything"]
