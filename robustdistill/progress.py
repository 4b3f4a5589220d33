"""Rich progress bars and console output (stderr), silent on non-zero DDP ranks."""

from __future__ import annotations

import os

from rich.console import Console
from rich.progress import (  # noqa: F401 - Progress is re-exported
    BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
)

console = Console(stderr=True, highlight=False)
stdout_console = Console(highlight=False)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def make_progress(transient: bool = False) -> Progress:
    """A progress display on stderr; disabled on non-zero ranks or with ROBUSTDISTILL_NO_PROGRESS=1."""
    disabled = not is_main_process() or os.environ.get("ROBUSTDISTILL_NO_PROGRESS") == "1"
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=disabled,
    )
