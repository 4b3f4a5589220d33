"""Domain errors. Each message is one line that says what went wrong *and what to do*.

The CLI prints ``error: <message>`` and exits with the error's ``exit_code`` (1; 4 for a full
disk); no traceback unless ``--debug``. The Python API raises the same exceptions for the same
bad input. Hierarchy::

    RobustDistillError
    +-- UsageError        a value out of range or inconsistent (eps=8 instead of 8/255, an unknown name)
    +-- ModelError        an unknown model, or weights/architecture that do not fit the data
    +-- CheckpointError   a file that is missing, truncated, not a checkpoint, or would need unpickling
    +-- DataError         an unknown, missing or damaged dataset
    +-- RunDirError       a run directory in use, another command's outputs, nothing to resume
    +-- DiskFullError     no space left while writing (the old file is kept; resume after freeing space)
"""

from __future__ import annotations

from pathlib import Path


class RobustDistillError(Exception):
    """Base class of every error robustdistill raises on purpose."""

    exit_code = 1


class UsageError(RobustDistillError):
    """A value given by the user is out of range or inconsistent (e.g. eps=8 instead of 8/255)."""


class ModelError(RobustDistillError):
    """An unknown model name, an architecture that does not fit the data, or weights that do not fit."""


class CheckpointError(RobustDistillError):
    """A file that is missing, truncated, not a checkpoint, or would need unsafe unpickling."""


class DataError(RobustDistillError):
    """An unknown or missing dataset."""


class RunDirError(RobustDistillError):
    """A run directory that would be overwritten, or cannot be resumed."""


class DiskFullError(RobustDistillError):
    """No space left (or the quota is used up) while writing a file; the file's old content is kept.

    :func:`robustdistill.fileio.disk_full_error` builds it for a path with the disk's mount point
    and free space. Exit status 4, so a scheduler can tell "free space and resume" from bad input.

    Attributes:
        path: the file that could not be written.
        mount: the mount point of the file system it lives on.
        free_bytes: bytes still free there (for an unprivileged user), measured after the failure.
        hint: what to do; :meth:`with_hint` replaces it (e.g. with the command that resumes a run).
    """

    DEFAULT_HINT = "free some space there and run the command again"
    exit_code = 4

    def __init__(self, path: str | Path, mount: str | Path, free_bytes: int, hint: str = DEFAULT_HINT) -> None:
        self.path, self.mount, self.free_bytes, self.hint = Path(path), Path(mount), int(free_bytes), hint
        super().__init__(f"disk full: could not write {self.path} (the file system at {self.mount} has "
                         f"{self.free_bytes:,} bytes free); {hint}")

    def with_hint(self, hint: str) -> "DiskFullError":
        """The same error with another ``hint`` (the traceback and cause are kept)."""
        error = DiskFullError(self.path, self.mount, self.free_bytes, hint)
        error.__cause__ = self.__cause__
        return error.with_traceback(self.__traceback__)


def did_you_mean(name: str, valid: list[str] | tuple[str, ...], what: str) -> str:
    """Format 'unknown X: Y; valid: a, b, c' with the closest match first when there is one."""
    import difflib

    close = difflib.get_close_matches(name, list(valid), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {what} {name!r}{hint}; valid: {', '.join(valid)}"
