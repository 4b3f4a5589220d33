"""SIGTERM behaves like Ctrl-C: a real signal raises Terminated in the main thread, atomic writes in
progress leave the old file, the run names what is intact and how to resume, and a run stopped by
SIGTERM in a real subprocess exits 143 with one line and resumes bit-identically.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from robustdistill.fileio import atomic_write_bytes
from robustdistill.rundir import RunDir
from robustdistill.signals import Interrupted, ResumePoint, Terminated, as_interrupted, exit_code, terminate_as_interrupt

TESTS = Path(__file__).resolve().parent


def _wait_for_the_handler() -> None:
    """Python runs a signal handler at the next bytecode boundary of the main thread; give it some."""
    for _ in range(1000):
        time.sleep(0.001)


# --------------------------------------------------------------------------- the handler
def test_sigterm_raises_terminated_with_exit_code_143_and_the_old_handler_comes_back():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: seen.append(signum))
    try:
        with pytest.raises(Terminated) as info:
            with terminate_as_interrupt() as installed:
                assert installed
                os.kill(os.getpid(), signal.SIGTERM)
                _wait_for_the_handler()
        assert isinstance(info.value, KeyboardInterrupt) and info.value.signum == signal.SIGTERM
        assert info.value.exit_code == 143 and exit_code(info.value) == 143
        assert info.value.message() == "stopped by SIGTERM; files already written are intact (resume a run with --resume)"
        os.kill(os.getpid(), signal.SIGTERM)  # the previous handler is back
        _wait_for_the_handler()
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_second_sigterm_does_not_cut_the_clean_up_short():
    cleaned = False
    with pytest.raises(Terminated):
        with terminate_as_interrupt():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                _wait_for_the_handler()
            finally:
                os.kill(os.getpid(), signal.SIGTERM)  # ignored: the first one is being handled
                _wait_for_the_handler()
                cleaned = True
    assert cleaned


def test_outside_the_main_thread_nothing_is_installed():
    results = []

    def worker():
        with terminate_as_interrupt() as installed:
            results.append((installed, signal.getsignal(signal.SIGTERM)))

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert results == [(False, before)]


def test_ctrl_c_and_sigterm_messages_and_exit_codes():
    point = ResumePoint("the checkpoint of epoch 2 in runs/x", "robustdistill distill --resume --out runs/x")
    plain = as_interrupted(KeyboardInterrupt())
    assert type(plain) is Interrupted and plain.exit_code == 130 and exit_code(KeyboardInterrupt()) == 130
    assert plain.message().startswith("interrupted (Ctrl-C); files already written are intact")
    terminated = as_interrupted(Terminated(), point)
    assert type(terminated) is Terminated and terminated.resume == point
    assert terminated.message() == ("stopped by SIGTERM; the checkpoint of epoch 2 in runs/x is intact; "
                                    "resume with `robustdistill distill --resume --out runs/x`")
    assert as_interrupted(terminated, ResumePoint("other", "other")) is terminated  # the innermost point wins


def test_an_atomic_write_cut_by_a_real_sigterm_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"the last good checkpoint")
    real_fsync = os.fsync

    def fsync_then_signal(fd):
        real_fsync(fd)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-write, before os.replace
        _wait_for_the_handler()

    monkeypatch.setattr(os, "fsync", fsync_then_signal)
    with pytest.raises(Terminated):
        with terminate_as_interrupt():
            atomic_write_bytes(target, b"half of a new checkpoint")
    assert target.read_bytes() == b"the last good checkpoint"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


def test_run_dir_guard_names_what_is_intact_and_the_resume_command(tmp_path):
    run = RunDir(tmp_path / "my run", command="train-teacher")
    with pytest.raises(Interrupted) as info:
        with run.guard():
            raise KeyboardInterrupt
    assert info.value.exit_code == 130
    assert info.value.resume.command == f"robustdistill train-teacher --resume --out '{tmp_path / 'my run'}'"
    assert "no checkpoint yet" in info.value.resume.intact
    run.checkpoint_epoch = 3
    with pytest.raises(Terminated) as info:
        with run.guard():
            raise Terminated()
    assert info.value.exit_code == 143 and info.value.resume.intact == f"the checkpoint of epoch 3 in {run.path}"
    with pytest.raises(Interrupted) as info:
        with RunDir(tmp_path, command="evaluate").guard():  # not a training run: nothing to resume
            raise KeyboardInterrupt
    assert info.value.resume is None


# --------------------------------------------------------------------------- a real run stopped by SIGTERM
def _start(options: dict, cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, ROBUSTDISTILL_NO_PROGRESS="1", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               HF_HUB_OFFLINE="1", COLUMNS="200")
    return subprocess.Popen([sys.executable, str(TESTS / "sigterm_run.py"), json.dumps(options)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)


def _signal_after_first_checkpoint(proc: subprocess.Popen, run: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be stopped: {proc.stderr.read()[-2000:]}")
        if (run / "checkpoint.pt").exists():
            proc.send_signal(signal.SIGTERM)
            return
        time.sleep(0.01)
    proc.kill()
    pytest.fail("the run did not write its first checkpoint in time")


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    from robustdistill.data import load_dataset
    from robustdistill.models import build_student, save_classifier

    hint = load_dataset("digits").info.hint()
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = build_student("small_cnn", hint)
    return save_classifier(model, tmp_path_factory.mktemp("teacher") / "teacher.safetensors",
                           config={"dataset": "digits", "eps": "0.2"})


@pytest.mark.slow
def test_sigterm_stops_a_run_with_143_and_one_line_and_resume_is_bit_identical(tmp_path, teacher_file, helpers):
    from safetensors.torch import load_file

    options = {"teacher": str(teacher_file), "student": "tiny_cnn", "method": "fair-ard", "epochs": 3, "batch_size": 64,
               "attack_steps": 2, "val_pgd_steps": 2, "eval_attacks": "clean", "eval_n_examples": 20, "device": "cpu",
               "seed": 3}
    a, b = tmp_path / "A", tmp_path / "B"
    reference = _start({**options, "out": str(b)}, tmp_path)  # uninterrupted, same seed
    victim = _start({**options, "out": str(a)}, tmp_path)
    _signal_after_first_checkpoint(victim, a)
    _, err = victim.communicate(timeout=120)
    assert victim.returncode == 143, err[-2000:]
    assert "Traceback" not in err and sum(line.startswith("error:") for line in err.splitlines()) == 1
    # the run's header line, then the error as a single line
    line = helpers.assert_one_line_error(err.strip().splitlines()[-1], "stopped by SIGTERM", "is intact",
                                         f"robustdistill distill --resume --out {a}")
    stopped_at = torch.load(a / "checkpoint.pt", weights_only=True)["epoch"]
    # (a signal landing right after the checkpoint's rename, before the trainer noted its epoch, says "the last checkpoint")
    assert 1 <= stopped_at <= 2
    assert f"the checkpoint of epoch {stopped_at} in {a} is intact" in line or f"the last checkpoint in {a} is intact" in line
    assert not (a / "student.safetensors").exists() and not [p.name for p in a.iterdir() if p.name.endswith(".tmp")]

    resumed = _start({"out": str(a), "resume": True}, tmp_path)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-3000:]
    left, right = load_file(a / "student.safetensors"), load_file(b / "student.safetensors")
    assert left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)
    timing = ("seconds", "images_per_second")
    records = [[{k: v for k, v in json.loads(line).items() if k not in timing}
                for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (a, b)]
    assert records[0] == records[1] and [r["epoch"] for r in records[0]] == [1, 2, 3]
