"""Atomic writers and appends: disk full (ENOSPC / EDQUOT injected into the real writer) is one
line naming the file, its file system and the free bytes, with the old content kept and no
temporary file left; appends never leave half a line; two processes writing the same file never
share a temporary file.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from robustdistill import fileio
from robustdistill.fileio import (
    DiskFullError, append_line, atomic_torch_save, atomic_write_bytes, atomic_write_json, atomic_write_text, mount_point,
    temp_file_target,
)


def _fail_writes_with(monkeypatch, code: int, after_bytes: int = 0) -> None:
    """os.write writes ``after_bytes`` of its data for real, then fails with ``code`` (as a filling disk does)."""
    real_write = os.write

    def write(fd, data):
        if after_bytes and len(data) > after_bytes:
            real_write(fd, bytes(data[:after_bytes]))
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "write", write)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
@pytest.mark.parametrize("writer", ["bytes", "text", "json", "torch"])
def test_disk_full_in_an_atomic_write_keeps_the_old_file_and_names_the_disk(tmp_path, monkeypatch, code, writer):
    target = tmp_path / "file"
    target.write_bytes(b"old")
    write = {"bytes": lambda: atomic_write_bytes(target, b"new" * 10_000), "text": lambda: atomic_write_text(target, "new"),
             "json": lambda: atomic_write_json(target, {"new": 1}), "torch": lambda: atomic_torch_save({"new": 1}, target)}[writer]
    # file objects write through their raw FileIO, not os.write: fail the fsync instead
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(code, os.strerror(code))))
    with pytest.raises(DiskFullError) as info:
        write()
    error = info.value
    assert error.path == target and error.mount == mount_point(tmp_path) and error.free_bytes >= 0
    assert str(error) == (f"disk full: could not write {target} (the file system at {error.mount} has "
                          f"{error.free_bytes:,} bytes free); free some space there and run the command again")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    assert error.__cause__.errno == code


def test_other_os_errors_are_not_called_disk_full(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError) as info:
        atomic_write_bytes(tmp_path / "file", b"x")
    assert not isinstance(info.value, DiskFullError) and info.value.errno == errno.EIO
    assert list(tmp_path.iterdir()) == []


def test_an_append_cut_by_a_full_disk_leaves_no_half_line(tmp_path, monkeypatch):
    log = tmp_path / "metrics.jsonl"
    append_line(log, '{"epoch": 1}')
    _fail_writes_with(monkeypatch, errno.ENOSPC, after_bytes=5)
    with pytest.raises(DiskFullError, match="metrics.jsonl"):
        append_line(log, '{"epoch": 2, "train_loss": 0.5}')
    monkeypatch.undo()
    assert log.read_text() == '{"epoch": 1}\n'
    append_line(log, '{"epoch": 2}')
    assert log.read_text() == '{"epoch": 1}\n{"epoch": 2}\n'


def test_an_append_interrupted_between_writes_leaves_no_half_line(tmp_path, monkeypatch):
    log = tmp_path / "metrics.jsonl"
    log.write_text("first\n")
    real_write = os.write

    def short_then_interrupt(fd, data):
        if len(data) > 3:
            return real_write(fd, bytes(data[:3]))  # a short write, as the kernel may return
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "write", short_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        append_line(log, "second record")
    monkeypatch.undo()
    assert log.read_text() == "first\n"


def test_temp_file_names_are_recognised():
    assert temp_file_target(".checkpoint.pt.k3x9a1qz.tmp") == "checkpoint.pt"
    assert temp_file_target("..robustdistill-manifest.json.ab_12.tmp") == ".robustdistill-manifest.json"
    assert temp_file_target(".per_class.png.tmp.png") == "per_class.png"  # report.save_figure's old fixed name
    for name in ("checkpoint.pt", "notes.tmp", ".hidden", "x.tmp"):
        assert temp_file_target(name) is None


WRITER = textwrap.dedent("""
    import sys
    from robustdistill.fileio import atomic_write_bytes
    target, fill = sys.argv[1], sys.argv[2].encode()
    for _ in range(60):
        atomic_write_bytes(target, fill * 200_000)
""")


def test_two_processes_writing_one_file_never_share_a_temp_file(tmp_path):
    target = tmp_path / "report.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(target), fill], stderr=subprocess.PIPE, text=True, env=env)
             for fill in ("a", "b")]
    errors = [proc.communicate(timeout=240)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], errors
    content = target.read_bytes()
    assert content in (b"a" * 200_000, b"b" * 200_000)  # one whole version, never a mix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_mount_point_of_a_missing_path_is_that_of_its_nearest_existing_ancestor(tmp_path):
    assert mount_point(tmp_path / "not" / "yet") == mount_point(tmp_path)
    assert os.path.ismount(mount_point(tmp_path)) and Path(tmp_path).is_relative_to(mount_point(tmp_path))
