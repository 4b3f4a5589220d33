"""Where a run's per-epoch metrics go besides ``metrics.jsonl`` (which the trainer always writes).

* ``csv``: ``metrics.csv``, the same records as one row per epoch (list values such as Fair-ARD's
  class weights become ``class_weights_0 .. class_weights_C``); re-written from metrics.jsonl
  after every epoch, so it always agrees with it, also after ``--resume``.
* ``tensorboard``: event files under ``tensorboard/`` (``tensorboard --logdir RUN/tensorboard``);
  needs ``pip install "robustdistill[tensorboard]"``. A resumed run purges the events of epochs
  the checkpoint did not keep.

Only the main process (rank 0) writes.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .errors import UsageError

SINKS = ("csv", "tensorboard")


def parse_sinks(text: str) -> tuple[str, ...]:
    """``"csv,tensorboard"`` -> ``("csv", "tensorboard")``; ``none`` or empty -> ``()``."""
    names = tuple(dict.fromkeys(t.strip().lower() for t in str(text).split(",") if t.strip()))
    if names in ((), ("none",)):
        return ()
    unknown = [n for n in names if n not in SINKS]
    if unknown:
        raise UsageError(f"unknown metric log {', '.join(unknown)}; use csv, tensorboard, both (csv,tensorboard) or none")
    return names


def flatten(record: Mapping[str, Any]) -> dict[str, Any]:
    """One epoch's record with list values spread over numbered columns (``None`` items stay empty)."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, (list, tuple)):
            out.update({f"{key}_{i}": v for i, v in enumerate(value)})
        else:
            out[key] = value
    return out


def csv_text(records: Iterable[Mapping[str, Any]]) -> str:
    """The rows of ``records`` as CSV, columns in order of first appearance."""
    rows = [flatten(r) for r in records]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


class MetricSinks:
    """The sinks of one run; ``write(record)`` after every epoch (the trainer's ``on_epoch``)."""

    def __init__(self, names: tuple[str, ...], run_path: Path, write_text: Callable[[str, str], Any],
                 start_epoch: int = 0) -> None:
        self.names, self.run_path, self.write_text = names, Path(run_path), write_text
        self.writer = _tensorboard(self.run_path / "tensorboard", start_epoch) if "tensorboard" in names else None

    def write(self, record: Mapping[str, Any]) -> None:
        if "csv" in self.names:
            self.write_text("metrics.csv", csv_text(_read_jsonl(self.run_path / "metrics.jsonl")))
        if self.writer is not None:
            step = int(record["epoch"])
            for key, value in flatten(record).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                    self.writer.add_scalar(key.replace("_", "/", 1) if key.startswith("val_") else key, value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _tensorboard(log_dir: Path, start_epoch: int) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UsageError('--log tensorboard needs the tensorboard package: pip install "robustdistill[tensorboard]"') from None
    # purge_step drops events of epochs after the checkpoint a resumed run continues from.
    return SummaryWriter(str(log_dir), purge_step=start_epoch + 1 if start_epoch else None)
