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


@contextlib.contextmanager
def forked_rng(device: torch.device | None = None) -> Iterator[None]:
    """Run a block without disturbing the caller's torch RNG (pyautoattack reseeds globally)."""
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


__all__ = ["derive_seed", "forked_rng", "seed_everything"]
