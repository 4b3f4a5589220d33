"""Run directories: read-only checks, the lock (two real processes, a holder killed by SIGKILL), the
manifest that limits --overwrite to robustdistill's own files, runs made before the manifest, and
commands that only write outputs (evaluate / fairness-report --out) never writing over a run.

The first three tests moved here from tests/test_train.py.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from robustdistill.errors import RunDirError, UsageError
from robustdistill.errors import DiskFullError
from robustdistill.rundir import LOCK_NAME, MANIFEST_NAME, RunDir, holder_pid

BOOKKEEPING = [MANIFEST_NAME, LOCK_NAME]


def names(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def manifest(path: Path) -> dict:
    return json.loads((path / MANIFEST_NAME).read_text())


# --------------------------------------------------------------------------- checks (moved from test_train.py)
def test_run_dir_refuses_a_non_empty_directory_without_touching_it(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    with pytest.raises(RunDirError, match="--overwrite"):
        RunDir(tmp_path).prepare(resume=False, overwrite=False)
    with pytest.raises(RunDirError, match="nothing to resume"):
        RunDir(tmp_path).prepare(resume=True, overwrite=False)
    with pytest.raises(UsageError, match="only one"):
        RunDir(tmp_path).prepare(resume=True, overwrite=True)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


def test_run_dir_overwrite_of_a_run_made_before_the_manifest_removes_its_run_files_and_temp_files_only(tmp_path):
    for name in ("checkpoint.pt", "report.md", "per_class_pgd.png", ".checkpoint.pt.abc.tmp", "notes.txt"):
        (tmp_path / name).write_text("x")
    RunDir(tmp_path).prepare(resume=False, overwrite=True)
    assert names(tmp_path) == [MANIFEST_NAME, LOCK_NAME, "notes.txt"]
    assert manifest(tmp_path)["files"] == {} and manifest(tmp_path)["command"] == "distill"


def test_truncate_metrics_drops_epochs_past_the_checkpoint_and_a_cut_line(tmp_path):
    lines = [json.dumps({"epoch": e, "train_loss": 1.0}) for e in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"epoch": 4, "train_lo')
    RunDir(tmp_path).truncate_metrics(2)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]


def test_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("a file")
    for check in (lambda r: r.check(resume=False, overwrite=True), RunDir.check_outputs):
        with pytest.raises(RunDirError, match="is a file; choose a directory"):
            check(RunDir(tmp_path / "out"))


# --------------------------------------------------------------------------- the manifest
def _a_run(path: Path) -> RunDir:
    """A claimed run that wrote its files through every RunDir writer."""
    run = RunDir(path)
    run.prepare(resume=False, overwrite=False)
    run.write_text("config.yaml", "method: ard\n")
    run.append_metrics({"epoch": 1})
    run.torch_save("checkpoint.pt", {"epoch": 1})
    run.write_json("report.json", {})
    run.write_bytes("student.safetensors", b"weights")
    run.file("per_class.png").write_bytes(b"png")  # a writer that wants a path
    (path / "scatter_pgd.png").write_bytes(b"png")  # a writer that chose its own name, recorded after
    run.record(path / "scatter_pgd.png")
    return run


def test_every_writer_records_its_file_in_the_manifest(tmp_path):
    _a_run(tmp_path)
    files = manifest(tmp_path)["files"]
    assert files == dict.fromkeys(["checkpoint.pt", "config.yaml", "metrics.jsonl", "per_class.png", "report.json",
                                   "scatter_pgd.png", "student.safetensors"], "distill")
    assert list(files) == sorted(files)


def test_overwrite_removes_only_the_files_in_the_manifest_and_our_temp_files(tmp_path):
    run = _a_run(tmp_path)
    run.release()
    user = {"notes.txt": "mine", "my_plot.png": "mine", "report-by-hand.md": "mine", ".notes.txt.swp.tmp": "editor"}
    for name, text in user.items():
        (tmp_path / name).write_text(text)
    (tmp_path / ".report.json.k3x9a1qz.tmp").write_text("half")  # a kill mid-write
    (tmp_path / f".{MANIFEST_NAME}.abcd1234.tmp").write_text("half")
    RunDir(tmp_path).check(resume=False, overwrite=True)
    RunDir(tmp_path).claim(overwrite=True)
    assert names(tmp_path) == sorted([*BOOKKEEPING, *user])
    assert all((tmp_path / name).read_text() == text for name, text in user.items())
    assert manifest(tmp_path)["files"] == {}


def test_claim_without_overwrite_keeps_the_run_and_drops_only_stale_temp_files(tmp_path):
    _a_run(tmp_path)
    recorded = manifest(tmp_path)
    (tmp_path / ".checkpoint.pt.q1w2e3r4.tmp").write_bytes(b"half")
    (tmp_path / "notes.txt").write_text("mine")
    stamp = (tmp_path / MANIFEST_NAME).stat().st_mtime_ns
    RunDir(tmp_path).prepare(resume=True, overwrite=False)
    assert ".checkpoint.pt.q1w2e3r4.tmp" not in names(tmp_path) and "notes.txt" in names(tmp_path)
    assert manifest(tmp_path) == recorded and (tmp_path / MANIFEST_NAME).stat().st_mtime_ns == stamp  # not rewritten


def test_a_run_made_before_the_manifest_is_recognised_by_name(tmp_path):
    legacy = ["config.yaml", "metrics.jsonl", "checkpoint.pt", "report.json", "per_class.png", "per_class_aa.png",
              "delta_pgd.png", "fairness.md", ".student-evaluation.partial.json"]
    for name in [*legacy, "my_plot.png", "notes.txt"]:
        (tmp_path / name).write_text("x")
    RunDir(tmp_path).prepare(resume=True, overwrite=False)  # resuming adopts the run files it recognises
    assert manifest(tmp_path)["files"] == dict.fromkeys(sorted(legacy), "distill")
    RunDir(tmp_path).prepare(resume=False, overwrite=True)
    assert names(tmp_path) == sorted([*BOOKKEEPING, "my_plot.png", "notes.txt"])


def test_a_damaged_manifest_is_a_one_line_error_and_nothing_is_removed(tmp_path):
    (tmp_path / "checkpoint.pt").write_text("x")
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(RunDirError) as info:
        RunDir(tmp_path).claim(overwrite=True)
    assert "\n" not in str(info.value) and "delete it" in str(info.value)
    assert "checkpoint.pt" in names(tmp_path)


def test_file_names_must_be_plain(tmp_path):
    for bad in ("../x", "sub/x", MANIFEST_NAME, LOCK_NAME):
        with pytest.raises(ValueError):
            RunDir(tmp_path).file(bad)
    with pytest.raises(ValueError, match="not in"):
        RunDir(tmp_path).record(tmp_path.parent / "elsewhere.txt")


# --------------------------------------------------------------------------- outputs of evaluate / fairness-report
def test_output_commands_never_write_into_a_training_run(tmp_path):
    _a_run(tmp_path / "run")
    for command in ("evaluate", "fairness-report"):
        with pytest.raises(RunDirError, match="holds a `robustdistill distill` run") as info:
            RunDir(tmp_path / "run", command=command).check_outputs()
        assert "\n" not in str(info.value) and "another --out" in str(info.value)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for name in ("config.yaml", "checkpoint.pt"):
        (legacy / name).write_text("x")
    with pytest.raises(RunDirError, match="distill/train-teacher"):
        RunDir(legacy, command="evaluate").check_outputs()
    RunDir(tmp_path / "run", command="distill").check_outputs()  # its own run is fine


def test_output_commands_share_a_directory_but_not_each_others_files(tmp_path):
    evaluate = RunDir(tmp_path, command="evaluate")
    evaluate.check_outputs()
    evaluate.claim_outputs()
    evaluate.write_json("report.json", {"a": 1})
    evaluate.write_json("report.json", {"a": 2})  # its own file again: fine
    evaluate.release()
    (tmp_path / "notes.txt").write_text("mine")
    fairness = RunDir(tmp_path, command="fairness-report")
    fairness.check_outputs()
    fairness.claim_outputs()
    fairness.write_text("fairness.md", "# fair")
    with pytest.raises(RunDirError, match="was written by `robustdistill evaluate`"):
        fairness.write_json("report.json", {})
    assert json.loads((tmp_path / "report.json").read_text()) == {"a": 2} and (tmp_path / "notes.txt").exists()
    assert manifest(tmp_path) == {"schema": "robustdistill/run-manifest@1", "command": "evaluate",
                                  "files": {"fairness.md": "fairness-report", "report.json": "evaluate"}}


# --------------------------------------------------------------------------- the lock (real processes)
HOLDER = textwrap.dedent("""
    import sys
    from robustdistill.rundir import RunDir
    run = RunDir(sys.argv[1])  # kept: a claimed RunDir that is garbage-collected lets go of the lock
    run.claim(overwrite=False)
    print("locked", flush=True)
    sys.stdin.read()  # hold the lock until killed (or stdin closes)
""")


def _hold_lock(path: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    assert line.strip() == "locked", proc.stderr.read()
    return proc


def test_a_second_process_is_refused_while_the_first_holds_the_run(tmp_path, cli, helpers):
    run = tmp_path / "run"
    holder = _hold_lock(run)
    try:
        assert holder_pid(run / LOCK_NAME) == holder.pid
        (run / "config.yaml").write_text("x")
        before = {p.name: p.read_bytes() for p in run.iterdir()}
        for attempt in (lambda: RunDir(run).check(resume=True, overwrite=False),
                        lambda: RunDir(run).claim(overwrite=True),
                        lambda: RunDir(run, command="evaluate").check_outputs()):
            with pytest.raises(RunDirError) as info:
                attempt()
            assert str(info.value) == (f"{run} is in use by another robustdistill process (pid {holder.pid}); "
                                       "wait for it to finish or choose another --out")
        result = cli("distill", "--epochs", "1", "--device", "cpu", "--out", run, "--overwrite")
        assert result.exit_code == 1
        helpers.assert_one_line_error(result.stderr, "in use", f"pid {holder.pid}")
        assert {p.name: p.read_bytes() for p in run.iterdir()} == before  # nothing was removed
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_process_killed_with_sigkill_does_not_block(tmp_path):
    run = tmp_path / "run"
    holder = _hold_lock(run)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert holder.returncode == -signal.SIGKILL
    assert holder_pid(run / LOCK_NAME) == holder.pid  # the file and its stale pid are still there...
    RunDir(run).check(resume=False, overwrite=False)  # ...but the kernel dropped the lock
    RunDir(run).claim(overwrite=False)
    assert holder_pid(run / LOCK_NAME) == os.getpid()


def _another_process_can_claim(path: Path) -> bool:
    code = f"from robustdistill.rundir import RunDir; run = RunDir({str(path)!r}); run.claim(overwrite=False)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1"), timeout=120)
    assert result.returncode == 0 or "is in use by another robustdistill process" in result.stderr, result.stderr
    return result.returncode == 0


def test_the_lock_is_held_until_every_claim_of_this_process_is_released(tmp_path):
    first, second = RunDir(tmp_path / "run"), RunDir(tmp_path / "run")
    first.claim(overwrite=False)
    first.claim(overwrite=False)  # the same object again: one hold
    second.claim(overwrite=False)  # another object in the same process: no conflict with itself
    RunDir(first.path).check(resume=False, overwrite=False)
    first.release()
    first.release()  # a no-op
    assert not _another_process_can_claim(first.path)  # `second` still holds it
    del second  # a claimed RunDir that is garbage-collected lets go, as a file closes
    gc.collect()
    assert _another_process_can_claim(first.path)


# --------------------------------------------------------------------------- disk full
def test_guard_adds_the_resume_command_to_a_disk_full_error(tmp_path):
    run = RunDir(tmp_path / "run")
    run.checkpoint_epoch = 4
    with pytest.raises(DiskFullError) as info:
        with run.guard():
            raise DiskFullError(run.path / "checkpoint.pt", "/", 0)
    assert str(info.value) == (f"disk full: could not write {run.path / 'checkpoint.pt'} (the file system at / has 0 bytes "
                               f"free); free some space, then resume with `robustdistill distill --resume --out {run.path}` "
                               f"(the checkpoint of epoch 4 in {run.path} is intact)")
    with pytest.raises(DiskFullError) as info:
        with RunDir(tmp_path, command="evaluate").guard():
            raise DiskFullError(tmp_path / "report.json", "/", 10)
    assert str(info.value).endswith("free some space there and run the command again")


def test_writing_without_a_claim_records_the_file_but_takes_no_lock(tmp_path):
    RunDir(tmp_path).write_json("report.json", {"x": 1})
    assert names(tmp_path) == [MANIFEST_NAME, "report.json"]  # and no temporary file is left
