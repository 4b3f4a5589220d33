"""Domain errors. Each message is one line that says what went wrong *and what to do*.

The CLI prints ``error: <message>`` and exits with status 1; no traceback unless ``--debug``.
"""

from __future__ import annotations


class RobustDistillError(Exception):
    """Base class of every error robustdistill raises on purpose."""


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


def did_you_mean(name: str, valid: list[str] | tuple[str, ...], what: str) -> str:
    """Format 'unknown X: Y; valid: a, b, c' with the closest match first when there is one."""
    import difflib

    close = difflib.get_close_matches(name, list(valid), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {what} {name!r}{hint}; valid: {', '.join(valid)}"
