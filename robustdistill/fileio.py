"""Writing files safely: atomic replacement, appends that never leave half a line, disk-full errors.

Every file robustdistill writes goes through these functions, so three guarantees hold everywhere:

* a reader (or a resumed run) sees a file's old content or its new content, never half of it:
  :func:`atomic_write_bytes` writes a temporary file in the same directory, fsyncs it, replaces the
  target with ``os.replace`` and fsyncs the directory;
* two processes never share a temporary file: names come from ``tempfile.mkstemp``
  (``.<name>.<random>.tmp``, created with ``O_EXCL``), and :func:`temp_file_target` recognises them
  so a later run can clean up after a kill;
* running out of space (``ENOSPC``, or ``EDQUOT`` for a quota) raises :class:`DiskFullError`, one
  line naming the file, its file system and the bytes left there; the temporary file is removed and
  the target keeps its previous content.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from .errors import DiskFullError

TEMP_SUFFIX = ".tmp"
# ``.<target>.<random>.tmp`` (mkstemp; any random part, so files of older versions match too) and the
# fixed ``.<target>.tmp.png`` that robustdistill.report.save_figure used to write.
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?:[^.]+\.tmp|tmp\.png)$")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(path: str | Path) -> DiskFullError:
    """The :class:`DiskFullError` for ``path``, with its mount point and free space measured now."""
    where = _existing_ancestor(Path(path).absolute())
    try:
        free = shutil.disk_usage(where).free
    except OSError:  # the disk is gone altogether; still say which file failed
        free = 0
    return DiskFullError(path, mount_point(where), free)


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def mount_point(path: str | Path) -> Path:
    """The mount point of the file system holding ``path`` (or its nearest existing ancestor)."""
    current = _existing_ancestor(Path(os.path.abspath(path)))
    while not os.path.ismount(current) and current != current.parent:
        current = current.parent
    return current


@contextlib.contextmanager
def disk_full_as_error(path: str | Path) -> Iterator[None]:
    """Turn ``ENOSPC`` / ``EDQUOT`` raised inside the block into :class:`DiskFullError` for ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _DISK_FULL:
            raise disk_full_error(path) from exc
        raise


def temp_file_target(name: str) -> str | None:
    """The file a temporary file called ``name`` was going to replace, or ``None`` if it is not one of ours."""
    match = _TEMP_NAME.match(name)
    return match.group("target") if match else None


def _current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); some platforms cannot open a directory, which is fine."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    path = Path(path)
    with disk_full_as_error(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        try:
            # mkstemp creates 0600 files; give the result the permissions a plain open() would have.
            os.chmod(tmp, 0o666 & ~_current_umask())
            with os.fdopen(fd, "wb") as handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:  # also Ctrl-C / SIGTERM: never leave the temporary file behind
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_directory(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file so that readers see the old content or the new one, never half of it."""
    _atomic_write(Path(path), lambda handle: handle.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """:func:`atomic_write_text` of ``obj`` as indented JSON with a final newline."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through a temporary file and ``os.replace``."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def append_line(path: str | Path, line: str) -> None:
    """Append ``line`` (plus a newline) to a text file: all of it, or - on any failure - nothing.

    A failed or interrupted append truncates the file back to its previous length, so a log such
    as ``metrics.jsonl`` never ends in half a record.
    """
    path = Path(path)
    data = (line.rstrip("\n") + "\n").encode("utf-8")
    with disk_full_as_error(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:  # os.write may write less than asked (e.g. just before the disk fills)
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


__all__ = [
    "DiskFullError", "TEMP_SUFFIX", "append_line", "atomic_torch_save", "atomic_write_bytes", "atomic_write_json",
    "atomic_write_text", "disk_full_as_error", "disk_full_error", "mount_point", "sha256_file", "temp_file_target",
]
