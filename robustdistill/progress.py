"""Progress and messages on stderr: a live bar with a readable ETA in a terminal, plain uncut lines in a log.

Silent on non-zero DDP ranks, with ``--quiet`` / ``--json`` (:func:`set_quiet`) and with
``ROBUSTDISTILL_NO_PROGRESS=1``. In a terminal the bar shows done/total, elapsed time and the time
remaining; when stderr is a file or a pipe (a batch job's log), each finished task - an epoch, an
attack - is one line with its own numbers, elapsed time and the ETA of the run, never cut to a
terminal width.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
)

# soft_wrap: long lines (paths, verdicts) are never cut or re-wrapped in a log file.
console = Console(stderr=True, highlight=False, soft_wrap=True)
stdout_console = Console(highlight=False, soft_wrap=True)
#: Errors: printed even under --quiet / --json.
error_console = Console(stderr=True, highlight=False, soft_wrap=True)
_quiet = {"on": False}

__all__ = ["Progress", "console", "error_console", "is_main_process", "make_progress", "set_quiet", "stdout_console"]


def set_quiet(quiet: bool) -> None:
    """Silence progress and informational messages on stderr (errors are printed by the CLI regardless)."""
    _quiet["on"] = quiet
    console.quiet = quiet


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _disabled() -> bool:
    return not is_main_process() or _quiet["on"] or os.environ.get("ROBUSTDISTILL_NO_PROGRESS") == "1"


def interactive() -> bool:
    """Is stderr a terminal (live bars), rather than a file or a pipe (plain lines)?"""
    return console.is_terminal


def make_progress(transient: bool = False) -> Any:
    """A progress display on stderr: a rich bar in a terminal, :class:`LineProgress` otherwise."""
    if not _disabled() and not interactive():
        return LineProgress()
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(compact=True, elapsed_when_finished=True),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=transient,
        disable=_disabled(),
        expand=False,
    )


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class _Task:
    def __init__(self, description: str, total: float | None, completed: float, info: str) -> None:
        self.description, self.total, self.completed, self.info = description, total, completed, info
        self.started, self.start_completed, self.reported = time.monotonic(), completed, False

    def eta(self) -> float | None:
        done = self.completed - self.start_completed
        if not self.total or done <= 0:
            return None
        return (time.monotonic() - self.started) / done * (self.total - self.completed)


class LineProgress:
    """The subset of :class:`rich.progress.Progress` the package uses, printing one plain line per finished task.

    The ``training`` task (the whole run) prints a line each time an epoch completes, with the
    ETA of the run; other tasks print when they finish.
    """

    def __init__(self) -> None:
        self._tasks: dict[int, _Task] = {}
        self._next = 0

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, completed: float = 0, info: str = "",
                 **_: Any) -> int:
        self._next += 1
        self._tasks[self._next] = _Task(description, total, completed, info)
        return self._next

    def update(self, task_id: int, *, advance: float | None = None, completed: float | None = None,
               info: str | None = None, **_: Any) -> None:
        task = self._tasks[task_id]
        before = task.completed
        task.completed = completed if completed is not None else task.completed + (advance or 0)
        task.info = info if info is not None else task.info
        if task.description == "training" and task.completed > before:
            self._line(task, f"{int(task.completed)}/{int(task.total or 0)} epochs")
        elif task.total is not None and task.completed >= task.total and not task.reported:
            task.reported = True
            self._line(task, "done")

    def remove_task(self, task_id: int) -> None:
        self._tasks.pop(task_id, None)

    def _line(self, task: _Task, what: str) -> None:
        elapsed = time.monotonic() - task.started
        eta = "" if task.total is None or task.completed >= task.total else f", ETA {_clock(task.eta())}"
        info = f"  {task.info}" if task.info else ""
        sys.stderr.write(f"{task.description}: {what} ({_clock(elapsed)} elapsed{eta}){info}\n")
        sys.stderr.flush()
