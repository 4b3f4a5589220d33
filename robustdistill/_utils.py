"""Deprecated home of small shared helpers, kept so that existing imports keep working.

The helpers now live in public modules: :mod:`robustdistill.fileio` (atomic files, hashing),
:mod:`robustdistill.rng` (seeding), :mod:`robustdistill.units` (eps parsing) and
:mod:`robustdistill.runtime` (device choice, library versions). Import from those.
"""

from __future__ import annotations

from .fileio import atomic_torch_save, atomic_write_bytes, atomic_write_json, atomic_write_text, sha256_file
from .rng import derive_seed, forked_rng, seed_everything
from .runtime import select_device, versions
from .units import format_fraction, parse_fraction

__all__ = [
    "atomic_torch_save", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "derive_seed", "format_fraction",
    "forked_rng", "parse_fraction", "seed_everything", "select_device", "sha256_file", "versions",
]
