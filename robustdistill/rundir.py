"""Run directories: one process per directory, and nothing of the user's is ever removed.

A run directory (``--out``) holds the files one training command (``distill``, ``train-teacher``)
wrote. Three records make it safe to share a disk with people and with other runs:

* a **lock**: ``.robustdistill.lock`` inside the directory, held with ``flock`` for as long as a
  run uses the directory; it holds the holder's pid, so a second run on the same ``--out`` stops
  with a one-line :class:`~robustdistill.errors.RunDirError` naming that pid. The kernel drops the
  lock when its holder dies, even by SIGKILL, so a stale lock file never blocks anyone (without
  ``fcntl``, i.e. on Windows, directories are not locked);
* a **manifest**: ``.robustdistill-manifest.json`` lists every file robustdistill wrote there and
  the command that wrote it (recorded *before* the file is written, atomically). ``--overwrite``
  removes exactly those files plus robustdistill's own temporary files - a ``notes.txt`` or
  ``my_plot.png`` of the user's stays;
* runs made **before the manifest existed** are recognised by name: ``--overwrite`` removes the
  run files robustdistill has always written (:data:`LEGACY_ARTIFACTS`, the generated plots
  ``per_class_*.png`` / ``scatter_*.png`` / ``delta_*.png`` and unfinished evaluations
  ``.*-evaluation.partial.json``) and nothing else; the first claim records what is there.

Order of calls in a training pipeline::

    run = RunDir(out, command="distill")
    run.check(resume=resume, overwrite=overwrite)   # read-only, every DDP rank, before loading inputs
    ...load and check every input...
    run.claim(overwrite=overwrite)                  # rank 0, only now: mkdir, lock, clean, manifest
    try:
        with run.guard():                           # disk-full and Ctrl-C/SIGTERM errors name the resume command
            ...run.write_text("config.yaml", ...), Trainer(..., run_dir=run).fit(), ...
    finally:
        run.release()

Commands that only *write outputs* into a directory (``evaluate --out``, ``fairness-report --out``)
use :meth:`RunDir.check_outputs` / :meth:`RunDir.claim_outputs` instead: they may share a directory
with each other but never write into a training run, nor over a file another command wrote.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator

from .errors import RunDirError, UsageError
from .fileio import (
    DiskFullError, append_line, atomic_torch_save, atomic_write_bytes, atomic_write_json, atomic_write_text,
    disk_full_as_error, temp_file_target,
)
from .signals import ResumePoint, as_interrupted

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows has no flock; directories are not locked there
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".robustdistill.lock"
MANIFEST_NAME = ".robustdistill-manifest.json"
MANIFEST_SCHEMA = "robustdistill/run-manifest@1"
#: Commands whose output directory is a (resumable) training run.
TRAINING_COMMANDS = ("distill", "train-teacher")
#: The run files robustdistill wrote before the manifest existed; ``--overwrite`` of such a run removes these.
LEGACY_ARTIFACTS = (
    "config.yaml", "metrics.jsonl", "checkpoint.pt", "best.pt", "student.safetensors", "teacher.safetensors",
    "report.json", "report.md", "per_class.png", "fairness.json", "fairness.md",
)
_LEGACY_GENERATED = re.compile(r"^(?:(?:per_class|scatter|delta)_[A-Za-z0-9_-]+\.png|\.[A-Za-z0-9_-]+-evaluation\.partial\.json)$")
_BOOKKEEPING = (LOCK_NAME, MANIFEST_NAME)


def is_legacy_artifact(name: str) -> bool:
    """Is ``name`` a file robustdistill wrote into run directories before the manifest existed?"""
    return name in LEGACY_ARTIFACTS or bool(_LEGACY_GENERATED.match(name))


# --------------------------------------------------------------------------- the lock
class DirectoryLock:
    """The exclusive ``flock`` on ``DIR/.robustdistill.lock`` that marks a directory as in use.

    A process holds one flock per directory however often it acquires it (flocks of two descriptors
    of one process would conflict with each other); acquisitions are counted and the flock is
    dropped when the last one is released.
    """

    _held: ClassVar[dict[str, list[int]]] = {}  # realpath of a directory -> [descriptor, acquisitions]

    @staticmethod
    def _key(directory: Path) -> str:
        return os.path.realpath(directory)

    @classmethod
    def holds(cls, directory: Path) -> bool:
        """Does this process hold the lock of ``directory``?"""
        return cls._key(directory) in cls._held

    @classmethod
    def acquire(cls, directory: Path) -> None:
        """Lock ``directory`` (which must exist) and write this process's pid into the lock file.

        Raises:
            RunDirError: another process holds the lock (the message names its pid).
        """
        if fcntl is None:
            return
        if cls.holds(directory):
            cls._held[cls._key(directory)][1] += 1
            return
        path = directory / LOCK_NAME
        with disk_full_as_error(path):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # never O_TRUNC: the holder's pid is in there
        try:
            _try_flock(fd, directory, path)
            if holder_pid(path) != os.getpid():  # unchanged otherwise: a re-run in one process touches nothing
                with disk_full_as_error(path):
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)  # closing drops the flock too
            raise
        cls._held[cls._key(directory)] = [fd, 1]

    @classmethod
    def probe(cls, directory: Path) -> None:
        """Raise :class:`RunDirError` if another process holds the lock; changes nothing on disk."""
        path = directory / LOCK_NAME
        if fcntl is None or cls.holds(directory) or not path.is_file():
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            _try_flock(fd, directory, path)
        finally:
            os.close(fd)

    @classmethod
    def release(cls, directory: Path) -> None:
        """Undo one :meth:`acquire`; the last one drops the flock (the file stays: removing it
        would race with a process about to lock it)."""
        key = cls._key(directory)
        if key not in cls._held:
            return
        cls._held[key][1] -= 1
        if cls._held[key][1] == 0:
            fd = cls._held.pop(key)[0]
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _try_flock(fd: int, directory: Path, path: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = holder_pid(path)
        who = f"pid {pid}" if pid is not None else "pid unknown"
        raise RunDirError(f"{directory} is in use by another robustdistill process ({who}); "
                          "wait for it to finish or choose another --out") from None
    except OSError as exc:
        raise RunDirError(f"cannot lock {directory} ({exc.strerror}); choose an --out on a local disk") from None


def holder_pid(lock_file: Path) -> int | None:
    """The pid written into a lock file (``None`` if it is empty or unreadable)."""
    try:
        return int(lock_file.read_text().strip())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- the manifest
@dataclass
class Manifest:
    """Which files of a directory robustdistill wrote, and which command wrote each.

    Attributes:
        command: the command that claimed the directory (a training command for a run).
        files: file name -> the command that wrote it.
    """

    command: str
    files: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, directory: Path) -> "Manifest | None":
        """The manifest of ``directory``, or ``None`` if it has none (a new or pre-manifest directory)."""
        path = directory / MANIFEST_NAME
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("schema") != MANIFEST_SCHEMA or not isinstance(data.get("files"), dict):
                raise ValueError("not a robustdistill manifest")
            return cls(str(data["command"]), {str(k): str(v) for k, v in data["files"].items()})
        except (OSError, ValueError, KeyError, AttributeError) as exc:
            raise RunDirError(f"{path} is damaged ({str(exc).splitlines()[0][:80]}); delete it (robustdistill then "
                              "recognises its run files by name) or choose another --out") from None

    def write(self, directory: Path) -> None:
        atomic_write_json(directory / MANIFEST_NAME,
                          {"schema": MANIFEST_SCHEMA, "command": self.command, "files": dict(sorted(self.files.items()))})


# --------------------------------------------------------------------------- the run directory
class RunDir:
    """The directory of one run (or of one command's outputs); see the module docstring.

    Args:
        path: the directory (``--out``); created by :meth:`claim`, not before.
        command: the CLI command using it (``distill``, ``train-teacher``, ``evaluate``,
            ``fairness-report``); it goes into the manifest and into the resume command.
    """

    ARTIFACTS = LEGACY_ARTIFACTS

    def __init__(self, path: str | Path, command: str = "distill") -> None:
        self.path = Path(path)
        self.command = command
        #: The epoch of the last checkpoint written or loaded in this process (set by the trainer).
        self.checkpoint_epoch: int | None = None
        self._unlock: weakref.finalize | None = None  # releases this object's hold on the lock

    def __truediv__(self, name: str) -> Path:
        """The path of ``name`` in the directory, for reading (use :meth:`file` to write)."""
        return self.path / name

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r}, command={self.command!r})"

    # -- checks (read-only) ------------------------------------------------------------------
    def check(self, *, resume: bool, overwrite: bool) -> None:
        """Refuse (without touching anything) a directory this run may not use."""
        self._refuse_a_file()
        if resume and overwrite:
            raise UsageError("--resume continues a run and --overwrite replaces it; pass only one of them")
        DirectoryLock.probe(self.path)
        if resume:
            if not ((self.path / "checkpoint.pt").exists() or (self.path / "config.yaml").exists()):
                raise RunDirError(f"nothing to resume in {self.path} (no checkpoint.pt or config.yaml); start the run without --resume")
            return
        existing = self.entries()
        if existing and not overwrite:
            raise RunDirError(
                f"{self.path} already holds files ({', '.join(existing[:4])}); resume with --resume, "
                "replace with --overwrite, or choose another --out"
            )

    def check_outputs(self) -> None:
        """For commands that write outputs into a directory: refuse a file, a directory in use, or a training run's directory."""
        self._refuse_a_file()
        DirectoryLock.probe(self.path)
        owner = self.training_command()
        if owner is not None and owner != self.command:
            raise RunDirError(f"{self.path} holds a `robustdistill {owner}` run, and {self.command} would write over "
                              "its files; choose another --out")

    def _refuse_a_file(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"--out {self.path} is a file; choose a directory")

    def entries(self) -> list[str]:
        """Sorted names in the directory, apart from robustdistill's lock file and manifest."""
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if p.name not in _BOOKKEEPING)

    def training_command(self) -> str | None:
        """The training command whose run this directory holds (``None``: not a training run)."""
        manifest = Manifest.read(self.path)
        if manifest is not None:
            return manifest.command if manifest.command in TRAINING_COMMANDS else None
        legacy_run = (self.path / "config.yaml").is_file() and any((self.path / n).is_file() for n in ("checkpoint.pt", "metrics.jsonl"))
        return "distill/train-teacher" if legacy_run else None

    # -- claiming ----------------------------------------------------------------------------
    def claim(self, *, overwrite: bool) -> None:
        """Create the directory and lock it; drop stale temporary files and, with ``overwrite``, the run's files.

        Call it after every input has been checked (only then may anything be removed), on one
        process only (DDP rank 0). The lock is held until :meth:`release`, until this object is
        garbage-collected, or until the process ends (even by SIGKILL).
        """
        self._lock()
        manifest = Manifest.read(self.path)
        known = set(manifest.files) if manifest is not None else set(self._legacy_files())
        doomed = self._stale_temp_files(known) | (known if overwrite else set())
        for name in sorted(doomed):
            entry = self.path / name
            if entry.is_file() or entry.is_symlink():
                entry.unlink(missing_ok=True)
        kept = {} if overwrite else (manifest.files if manifest is not None else dict.fromkeys(known, self.command))
        claimed = Manifest(self.command, dict(kept))
        if claimed != manifest:
            claimed.write(self.path)

    def claim_outputs(self) -> None:
        """:meth:`claim` for a command that only adds outputs: lock, drop its stale temporary files, remove nothing else."""
        self._lock()
        manifest = Manifest.read(self.path)
        mine = {n for n, c in manifest.files.items() if c == self.command} if manifest is not None else set()
        for name in self._stale_temp_files(mine):
            (self.path / name).unlink(missing_ok=True)
        if manifest is None:
            Manifest(self.command).write(self.path)

    def prepare(self, *, resume: bool, overwrite: bool) -> None:
        """:meth:`check` then :meth:`claim` (single process)."""
        self.check(resume=resume, overwrite=overwrite)
        self.claim(overwrite=overwrite and not resume)

    def release(self) -> None:
        """Give up this object's hold on the directory's lock (a no-op if it holds none).

        A claimed ``RunDir`` that is garbage-collected releases its hold too, as a file closes.
        """
        if self._unlock is not None:
            self._unlock()
            self._unlock = None

    def _lock(self) -> None:
        """Create the directory and hold its lock (once per object)."""
        with disk_full_as_error(self.path):
            self.path.mkdir(parents=True, exist_ok=True)
        if self._unlock is None:
            DirectoryLock.acquire(self.path)
            self._unlock = weakref.finalize(self, DirectoryLock.release, self.path)

    def _legacy_files(self) -> list[str]:
        return [n for n in self.entries() if is_legacy_artifact(n) and (self.path / n).is_file()]

    def _stale_temp_files(self, known: set[str]) -> set[str]:
        """Temporary files robustdistill left behind (a kill mid-write) for ``known`` or legacy names."""
        stale = set()
        for name in self.entries() if self.path.is_dir() else []:
            target = temp_file_target(name)
            if target is not None and (target in known or target == MANIFEST_NAME or is_legacy_artifact(target)):
                stale.add(name)
        return stale

    # -- writing -----------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        """Record ``name`` in the manifest (before anything is written) and return its path.

        Raises:
            RunDirError: a command that only adds outputs would replace a file another command wrote.
        """
        if Path(name).name != name or name in _BOOKKEEPING:
            raise ValueError(f"{name!r} is not a plain file name of a run directory")
        manifest = Manifest.read(self.path) or Manifest(self.command)
        owner = manifest.files.get(name)
        if owner == self.command:
            return self.path / name
        if owner is not None and manifest.command != self.command:
            raise RunDirError(f"{self.path / name} was written by `robustdistill {owner}`; {self.command} will not "
                              "replace it - choose another --out")
        manifest.files[name] = self.command
        manifest.write(self.path)
        return self.path / name

    def record(self, *paths: str | Path) -> None:
        """Record files that were written into the directory by code that chose their names itself."""
        for path in map(Path, paths):
            if path.parent.resolve() != self.path.resolve():
                raise ValueError(f"{path} is not in {self.path}")
            self.file(path.name)

    def write_bytes(self, name: str, data: bytes) -> Path:
        """Record and atomically write ``name``."""
        atomic_write_bytes(self.file(name), data)
        return self.path / name

    def write_text(self, name: str, text: str) -> Path:
        atomic_write_text(self.file(name), text)
        return self.path / name

    def write_json(self, name: str, obj: Any) -> Path:
        atomic_write_json(self.file(name), obj)
        return self.path / name

    def torch_save(self, name: str, obj: Any) -> Path:
        atomic_torch_save(obj, self.file(name))
        return self.path / name

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one epoch's record to ``metrics.jsonl`` (whole line or nothing)."""
        append_line(self.file("metrics.jsonl"), json.dumps(record))

    def truncate_metrics(self, completed_epochs: int) -> None:
        """Drop records of epochs that the checkpoint does not contain (a kill between the two
        writes), and a last line cut short by a kill during the append."""
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict) and record.get("epoch", 0) <= completed_epochs:
                    keep.append(line)
        atomic_write_text(self.file("metrics.jsonl"), "".join(line + "\n" for line in keep))

    # -- stopping ----------------------------------------------------------------------------
    def resume_point(self) -> ResumePoint | None:
        """What a stop now leaves intact and the command that continues the run (``None``: not a training run)."""
        if self.command not in TRAINING_COMMANDS:
            return None
        if self.checkpoint_epoch is not None:
            intact = f"the checkpoint of epoch {self.checkpoint_epoch} in {self.path}"
        elif (self.path / "checkpoint.pt").is_file():
            intact = f"the last checkpoint in {self.path}"
        else:
            intact = f"everything written to {self.path} (no checkpoint yet, so training starts over)"
        return ResumePoint(intact, f"robustdistill {self.command} --resume --out {shlex.quote(str(self.path))}")

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Name the resume command in a :class:`DiskFullError` or an interruption (Ctrl-C, SIGTERM) raised inside."""
        try:
            yield
        except DiskFullError as exc:
            point = self.resume_point()
            if point is None or exc.hint != DiskFullError.DEFAULT_HINT:
                raise
            raise exc.with_hint(f"free some space, then resume with `{point.command}` ({point.intact} is intact)") from exc.__cause__
        except KeyboardInterrupt as exc:
            stop = as_interrupted(exc, self.resume_point())
            if stop is exc:
                raise
            raise stop from None


__all__ = [
    "DirectoryLock", "LEGACY_ARTIFACTS", "LOCK_NAME", "MANIFEST_NAME", "Manifest", "RunDir", "TRAINING_COMMANDS",
    "holder_pid", "is_legacy_artifact",
]
