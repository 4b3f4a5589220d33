"""The one trainer: lr schedules, data sharding, run directories, checkpoints, non-finite losses,
validation on the val split, AMP / channels_last, and DDP on CPU through torchrun (gloo).

Everything runs on the bundled digits data with ``tiny_cnn`` students and 1-2 attack steps.
"""

from __future__ import annotations

import errno
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robustdistill import train as train_mod
from robustdistill.data import load_dataset
from robustdistill.evaluation import EvalSettings, evaluate_model
from robustdistill.methods import AttackSettings, build_strategy
from robustdistill.models import build_student, freeze, save_classifier
from robustdistill.train import (
    CHECKPOINT_FORMAT, Dist, NonFiniteLossError, RunDir, TrainConfig, Trainer, lr_factor, shard_order,
)

CPU = torch.device("cpu")


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def splits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def small_splits(splits):
    """The digits splits with the training set cut to 256 images (4 steps of 64)."""
    from dataclasses import replace

    return replace(splits, train=splits.train.subset(torch.arange(256)))


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory, splits) -> Path:
    """An untrained small_cnn teacher written by robustdistill (plumbing needs no good teacher)."""
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = build_student("small_cnn", splits.info.hint())
    save_classifier(model, path, config={"dataset": "digits", "eps": "0.2"})
    return path


def make_trainer(splits, *, method="ard", run_dir=None, **cfg) -> Trainer:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        student = build_student("tiny_cnn", splits.info.hint())
        teacher = freeze(build_student("small_cnn", splits.info.hint()))
    attack = AttackSettings(eps=0.2, step_size=0.05, steps=1)
    strategy = build_strategy(method, attack=attack, num_classes=splits.info.num_classes)
    config = TrainConfig(**{"epochs": 1, "batch_size": 64, "val_pgd_steps": 2, **cfg})
    return Trainer(student, teacher, strategy, train=splits.train, val=splits.val, info=splits.info, config=config,
                   device=CPU, run_dir=run_dir, eval_settings=EvalSettings(eps=0.2))


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# --------------------------------------------------------------------------- lr schedules
@pytest.mark.parametrize(
    ("schedule", "epochs", "expected"),
    [
        # ARD paper intent: x0.1 at 100 and at 150 of 200 epochs.
        ("ard", 200, {0: 1.0, 99: 1.0, 100: 0.1, 149: 0.1, 150: 0.01, 199: 0.01}),
        # released ARD-family code: only the decay at 50 %.
        ("ard-released", 200, {0: 1.0, 99: 1.0, 100: 0.1, 150: 0.1, 199: 0.1}),
        # RSLAD: x0.1 after 215, 260 and 285 of 300 epochs.
        ("rslad", 300, {0: 1.0, 214: 1.0, 215: 0.1, 259: 0.1, 260: 0.01, 284: 0.01, 285: 0.001, 299: 0.001}),
        ("constant", 10, {0: 1.0, 5: 1.0, 9: 1.0}),
        # milestones scale with the run length (half-up rounding: 7.5 -> 8).
        ("ard", 10, {4: 1.0, 5: 0.1, 7: 0.1, 8: 0.01}),
        ("ard-released", 10, {4: 1.0, 5: 0.1, 9: 0.1}),
        ("rslad", 30, {21: 1.0, 22: 0.1, 25: 0.1, 26: 0.01, 28: 0.01, 29: 0.001}),  # 21.5 -> 22, 26, 28.5 -> 29
    ],
)
def test_lr_factor_milestones(schedule, epochs, expected):
    for epoch, factor in expected.items():
        assert lr_factor(schedule, epochs, epoch) == pytest.approx(factor, rel=1e-12), (schedule, epoch)


def test_lr_factor_cosine_is_per_step_and_decays_to_zero():
    assert lr_factor("cosine", 10, 0, 0, 100) == 1.0
    assert lr_factor("cosine", 10, 5, 0, 100) == pytest.approx(0.5)
    assert lr_factor("cosine", 10, 2, 50, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    values = [lr_factor("cosine", 4, e, s, 10) for e in range(4) for s in range(10)]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert lr_factor("cosine", 4, 4, 0, 10) == pytest.approx(0.0, abs=1e-12)


def test_lr_factor_single_epoch_never_decays_and_unknown_schedule_is_refused():
    for schedule in ("ard", "ard-released", "rslad"):
        assert lr_factor(schedule, 1, 0) == 1.0
    from robustdistill.errors import UsageError

    with pytest.raises(UsageError, match="schedule"):
        lr_factor("step", 10, 0)
    with pytest.raises(UsageError, match="schedule"):
        TrainConfig(schedule="step").validate()


def test_trainer_sets_the_scheduled_lr_every_step(small_splits):
    trainer = make_trainer(small_splits, epochs=4, schedule="ard")
    lrs = []
    trainer.fit(on_epoch=lambda record: lrs.append(record["lr"]))
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.001])


# --------------------------------------------------------------------------- data sharding
@pytest.mark.parametrize(("n", "world"), [(10, 2), (10, 3), (1293, 2), (7, 4), (3, 4)])
def test_shard_order_is_disjoint_and_covers_the_data(n, world):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    shards = [shard_order(order, Dist(rank, world)) for rank in range(world)]
    per_rank = math.ceil(n / world)
    assert all(s.numel() == per_rank for s in shards)  # same number of steps on every rank
    merged = torch.cat(shards)
    assert set(merged.tolist()) == set(range(n))  # covers everything
    padding = per_rank * world - n
    assert merged.numel() - len(set(merged.tolist())) == padding  # disjoint except for the wrap-around padding
    assert torch.equal(shard_order(order, Dist()), order)


def test_shards_are_disjoint_up_to_the_wraparound():
    order = torch.arange(11)
    a, b = shard_order(order, Dist(0, 2)), shard_order(order, Dist(1, 2))
    assert a.tolist() == [0, 2, 4, 6, 8, 10] and b.tolist() == [1, 3, 5, 7, 9, 0]


# --------------------------------------------------------------------------- run directory
def test_run_dir_refuses_a_non_empty_directory_without_touching_it(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    from robustdistill.errors import RunDirError, UsageError

    with pytest.raises(RunDirError, match="--overwrite"):
        RunDir(tmp_path).prepare(resume=False, overwrite=False)
    with pytest.raises(RunDirError, match="nothing to resume"):
        RunDir(tmp_path).prepare(resume=True, overwrite=False)
    with pytest.raises(UsageError, match="only one"):
        RunDir(tmp_path).prepare(resume=True, overwrite=True)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


def test_run_dir_overwrite_removes_run_files_and_stale_temp_files_only(tmp_path):
    for name in ("checkpoint.pt", "report.md", "per_class_pgd.png", ".checkpoint.pt.abc.tmp", "notes.txt"):
        (tmp_path / name).write_text("x")
    RunDir(tmp_path).prepare(resume=False, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_truncate_metrics_drops_epochs_past_the_checkpoint_and_a_cut_line(tmp_path):
    lines = [json.dumps({"epoch": e, "train_loss": 1.0}) for e in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"epoch": 4, "train_lo')
    RunDir(tmp_path).truncate_metrics(2)
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2]


# --------------------------------------------------------------------------- checkpoints
def test_checkpoint_is_complete_and_loads_weights_only(small_splits, tmp_path):
    run = RunDir(tmp_path)
    trainer = make_trainer(small_splits, method="fair-ard", run_dir=run)
    trainer.fit()
    state = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["format"] == CHECKPOINT_FORMAT and state["epoch"] == 1
    model = trainer.student.state_dict()
    assert state["model"].keys() == model.keys() and all(torch.equal(state["model"][k], model[k]) for k in model)
    momentum = [s["momentum_buffer"] for s in state["optimizer"]["state"].values()]
    assert len(momentum) == len(list(trainer.student.parameters())) and all(m is not None for m in momentum)
    weights = state["strategy"]["class_weights"]
    assert len(weights) == 10 and weights == trainer.strategy.weights.tolist() and weights != [1.0] * 10
    assert isinstance(state["rng"]["torch"], torch.Tensor) and len(state["rng"]["python"]) == 625
    assert "scaler" in state and len(state["history"]) == 1 and state["history"][0]["epoch"] == 1
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_checkpoint_resume_restores_model_optimizer_and_strategy(small_splits, tmp_path):
    first = make_trainer(small_splits, method="fair-ard", run_dir=RunDir(tmp_path), epochs=2)
    first.cfg.epochs = 1  # stop after one of two epochs, as a killed run would
    first.fit()
    second = make_trainer(small_splits, method="fair-ard", run_dir=RunDir(tmp_path), epochs=2)
    second.load_checkpoint(tmp_path / "checkpoint.pt")
    assert second.start_epoch == 1
    assert second.strategy.weights.tolist() == first.strategy.weights.tolist()
    assert all(torch.equal(a, b) for a, b in zip(second.student.state_dict().values(), first.student.state_dict().values()))
    assert second.optimizer.state_dict()["state"].keys() == first.optimizer.state_dict()["state"].keys()


def test_checkpoint_write_goes_through_a_temp_file_and_os_replace(small_splits, tmp_path, monkeypatch):
    replaced = []
    real_replace = os.replace

    def spy(src, dst):
        replaced.append((Path(src), Path(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    make_trainer(small_splits, run_dir=RunDir(tmp_path)).fit()
    ckpt = [(src, dst) for src, dst in replaced if dst.name == "checkpoint.pt"]
    assert len(ckpt) == 1
    src, dst = ckpt[0]
    assert src.parent == dst.parent == tmp_path and src.name.startswith(".") and src.name.endswith(".tmp")
    assert not src.exists()


def test_failed_checkpoint_save_keeps_the_previous_checkpoint(small_splits, tmp_path, monkeypatch):
    """A save that dies half-way (here: disk full at fsync) leaves the last good checkpoint and no temp file."""
    trainer = make_trainer(small_splits, run_dir=RunDir(tmp_path))
    trainer.fit()
    good = (tmp_path / "checkpoint.pt").read_bytes()

    def disk_full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        trainer._save(2)
    assert (tmp_path / "checkpoint.pt").read_bytes() == good
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_unreadable_checkpoint_is_one_line_error(small_splits, tmp_path):
    from robustdistill.errors import CheckpointError

    (tmp_path / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError) as info:
        make_trainer(small_splits).load_checkpoint(tmp_path / "checkpoint.pt")
    assert "\n" not in str(info.value) and "--overwrite" in str(info.value)


# --------------------------------------------------------------------------- non-finite losses
def _poison_loss(monkeypatch, strategy, bad_calls):
    """Make the strategy's loss NaN at the given (0-based) calls; the real loss still runs."""
    real = strategy.loss
    calls = {"n": 0}

    def loss(*args, **kwargs):
        value, stats = real(*args, **kwargs)
        index, calls["n"] = calls["n"], calls["n"] + 1
        return (value * float("nan") if index in bad_calls else value), stats

    monkeypatch.setattr(strategy, "loss", loss)
    return calls


def test_non_finite_steps_are_skipped_and_counted(small_splits, tmp_path, monkeypatch):
    trainer = make_trainer(small_splits, run_dir=RunDir(tmp_path), max_nonfinite=3)
    _poison_loss(monkeypatch, trainer.strategy, {1, 3})
    trainer.fit()
    record = read_metrics(tmp_path)[0]
    assert record["skipped_steps"] == 2 and math.isfinite(record["train_loss"])
    assert all(torch.isfinite(p).all() for p in trainer.student.parameters())


def test_consecutive_non_finite_losses_abort_with_the_last_checkpoint_intact(small_splits, tmp_path, monkeypatch):
    trainer = make_trainer(small_splits, run_dir=RunDir(tmp_path), epochs=2, max_nonfinite=3)
    steps = trainer._steps_per_epoch()
    _poison_loss(monkeypatch, trainer.strategy, set(range(steps, 10 * steps)))  # all of epoch 2
    epoch1 = {}
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit(on_epoch=lambda r: epoch1.update({k: v.clone() for k, v in trainer.student.named_parameters()}))
    message = str(info.value)
    assert "\n" not in message and "3 consecutive non-finite" in message and "epoch 2" in message
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and len(read_metrics(tmp_path)) == 1
    for name, value in trainer.student.named_parameters():  # the skipped steps never touched the weights
        assert torch.equal(value, epoch1[name]) and torch.equal(state["model"][name], epoch1[name])


def test_non_finite_abort_is_a_one_line_cli_error(teacher_file, tmp_path, monkeypatch, cli, helpers):
    from robustdistill.methods.kd import KD

    real, calls = KD.loss, {"n": 0}
    steps_per_epoch = math.ceil(1293 / 32)

    def nan_from_epoch_2(self, *args, **kwargs):
        value, stats = real(self, *args, **kwargs)
        calls["n"] += 1
        return (value * float("nan") if calls["n"] > steps_per_epoch else value), stats

    monkeypatch.setattr(KD, "loss", nan_from_epoch_2)
    out = tmp_path / "run"
    result = cli("distill", "--teacher", teacher_file, "--method", "kd", "--epochs", "2", "--batch-size", "32",
                 "--val-pgd-steps", "1", "--device", "cpu", "--out", out)
    assert result.exit_code == 1 and "Traceback" not in result.output
    # the run's header line, then the error as a single line
    helpers.assert_one_line_error(result.stderr.strip().splitlines()[-1], "20 consecutive non-finite losses at epoch 2",
                                  "checkpoint is intact")
    assert sum(line.startswith("error:") for line in result.stderr.splitlines()) == 1
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert [r["epoch"] for r in read_metrics(out)] == [1] and not (out / "student.safetensors").exists()


# --------------------------------------------------------------------------- validation
def test_validation_uses_the_val_split_and_matches_an_independent_evaluation(small_splits, monkeypatch):
    seen = []
    real = train_mod.evaluate_model

    def recording(model, split, *args, **kwargs):
        seen.append(split)
        return real(model, split, *args, **kwargs)

    monkeypatch.setattr(train_mod, "evaluate_model", recording)
    trainer = make_trainer(small_splits, epochs=1, val_pgd_steps=2)
    record = trainer.fit()[-1]
    assert seen == [small_splits.val] and seen[0].name == "val"
    independent = evaluate_model(
        trainer.student, small_splits.val, small_splits.info.class_names, attacks=("clean", "pgd"),
        settings=EvalSettings(eps=0.2, pgd_steps=2, seed=0), batch_size=256,
    )
    assert record["val_clean"] == independent.accuracy("clean")
    assert record["val_pgd"] == independent.accuracy("pgd")
    assert record["val_pgd_worst"] == independent.summary("pgd")["worst_class"]["accuracy"]


def test_teacher_is_put_in_eval_mode_and_left_untouched(small_splits):
    trainer = make_trainer(small_splits, method="rslad")
    trainer.teacher.train()  # even a teacher handed over in train mode...
    trainer = Trainer(trainer.student, trainer.teacher, trainer.strategy, train=small_splits.train,
                      val=small_splits.val, info=small_splits.info, config=trainer.cfg, device=CPU)
    assert not trainer.teacher.training  # ...is switched to eval mode
    before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    modes = []
    trainer.teacher.register_forward_pre_hook(lambda m, _a: modes.append(any(x.training for x in m.modules())))
    trainer.fit()
    assert modes and not any(modes)
    assert all(torch.equal(v, before[k]) for k, v in trainer.teacher.state_dict().items())


def test_live_progress_has_one_display_that_validation_draws_into(small_splits, monkeypatch):
    """With progress bars on, fit() owns the only live display; validation adds its bars to it and
    removes them again (a second live display would raise rich's LiveError)."""
    from robustdistill.progress import Progress

    monkeypatch.delenv("ROBUSTDISTILL_NO_PROGRESS", raising=False)
    started, added = [], []
    real_start, real_add = Progress.start, Progress.add_task
    monkeypatch.setattr(Progress, "start", lambda self: (started.append(self), real_start(self))[1])
    monkeypatch.setattr(Progress, "add_task", lambda self, *a, **k: (added.append(self), real_add(self, *a, **k))[1])
    trainer = make_trainer(small_splits, epochs=2, val_n_examples=32)
    trainer.fit()
    assert len(started) == 1 and set(map(id, added)) == {id(started[0])}
    assert [t.description for t in started[0].tasks] == ["training"]  # epoch and validation bars were removed


# --------------------------------------------------------------------------- AMP / channels_last
@pytest.mark.parametrize(("amp", "channels_last"), [("bf16", False), ("none", True), ("bf16", True)])
def test_bf16_autocast_and_channels_last_train_on_cpu(small_splits, amp, channels_last):
    trainer = make_trainer(small_splits, method="fair-ard", amp=amp, channels_last=channels_last)
    record = trainer.fit()[-1]
    assert record["skipped_steps"] == 0 and math.isfinite(record["train_loss"]) and record["train_loss"] > 0
    assert all(torch.isfinite(p).all() for p in trainer.student.parameters())
    conv = next(p for p in trainer.student.parameters() if p.dim() == 4 and p.shape[1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last


# --------------------------------------------------------------------------- DDP (torchrun, gloo, CPU)
def _torchrun(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "robustdistill", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def _spurious_abort(result: subprocess.CompletedProcess) -> bool:
    """ecosystem.md §5.3: a gloo worker sometimes dies of SIGABRT in this sandbox; retry that once."""
    text = result.stderr + result.stdout
    return result.returncode != 0 and ("SIGABRT" in text or "Signal 6" in text or result.returncode in (-6, 134))


@pytest.mark.slow
def test_torchrun_two_processes_fair_ard(tmp_path, teacher_file):
    out, debug = tmp_path / "run", tmp_path / "debug"
    debug.mkdir()
    env = dict(os.environ, ROBUSTDISTILL_NO_PROGRESS="1", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               HF_HUB_OFFLINE="1", COLUMNS="200", ROBUSTDISTILL_DEBUG_DDP_DIR=str(debug))
    args = ["distill", "--teacher", str(teacher_file), "--method", "fair-ard", "--epochs", "1", "--batch-size", "64",
            "--attack-steps", "2", "--val-pgd-steps", "2", "--eval-attacks", "clean,pgd", "--eval-n-examples", "20",
            "--device", "cpu", "--out", str(out)]
    result = _torchrun(args, env, tmp_path)
    if _spurious_abort(result):
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        result = _torchrun(args, env, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    # one set of files, written once (rank 1 neither evaluated nor wrote nor printed)
    assert {p.name for p in out.iterdir()} >= {"student.safetensors", "report.json", "metrics.jsonl", "checkpoint.pt"}
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    assert result.stdout.count("student (test split)") == 1
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [1] and "val_pgd" in records[0]

    ranks = [json.loads((debug / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    # identical models (parameters and the averaged BN statistics) and Fair-ARD weights on both ranks
    assert ranks[0]["state_sha256"] == ranks[1]["state_sha256"]
    assert ranks[0]["strategy"]["class_weights"] == ranks[1]["strategy"]["class_weights"] == records[0]["class_weights"]
    # the saved student is exactly what rank 1 ended with
    import hashlib

    from safetensors.torch import load_file

    saved = load_file(out / "student.safetensors")
    assert {k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest() for k, v in saved.items()} == ranks[1]["state_sha256"]
    # the two ranks trained on disjoint halves that together cover the training split
    a, b = (set(r["last_epoch_shard"]) for r in ranks)
    n_train = len(load_dataset("digits").train)
    assert len(ranks[0]["last_epoch_shard"]) == len(ranks[1]["last_epoch_shard"]) == math.ceil(n_train / 2)
    assert a | b == set(range(n_train)) and len(a & b) <= 1
    report = json.loads((out / "report.json").read_text())
    assert report["student"]["data"]["split"] == "test" and report["teacher"] is not None


DDP_NAN_SCRIPT = '''
import hashlib, json, os, sys
from dataclasses import replace
import torch
from robustdistill.data import load_dataset
from robustdistill.methods import AttackSettings, build_strategy
from robustdistill.models import build_student, freeze
from robustdistill.train import Trainer, TrainConfig, destroy_distributed

splits = load_dataset("digits")
splits = replace(splits, train=splits.train.subset(torch.arange(512)))
torch.manual_seed(int(os.environ["RANK"]))  # different initial weights per rank: DDP must broadcast rank 0's
student = build_student("tiny_cnn", splits.info.hint())
teacher = freeze(build_student("small_cnn", splits.info.hint()))
strategy = build_strategy("fair-rslad", attack=AttackSettings(0.2, 0.05, 1), num_classes=10)
rank, real, calls = int(os.environ["RANK"]), strategy.loss, [0]

def loss(*args, **kwargs):  # a NaN on rank 0 only, at its 2nd and 3rd step
    value, stats = real(*args, **kwargs)
    calls[0] += 1
    return (value * float("nan") if rank == 0 and calls[0] in (2, 3) else value), stats

strategy.loss = loss
config = TrainConfig(epochs=2, batch_size=64, val_pgd_steps=1, val_n_examples=32)
trainer = Trainer(student, teacher, strategy, train=splits.train, val=splits.val, info=splits.info,
                  config=config, device=torch.device("cpu"))
history = trainer.fit()
state = {k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest() for k, v in student.state_dict().items()}
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as handle:
    json.dump({"skipped": [r["skipped_steps"] for r in history], "loss": [r["train_loss"] for r in history],
               "weights": strategy.weights.tolist(), "state": state, "validated": ["val_pgd" in r for r in history]}, handle)
destroy_distributed()
'''


@pytest.mark.slow
def test_torchrun_non_finite_skip_is_collective_and_ranks_stay_identical(tmp_path):
    """A NaN on one rank only: every rank skips that step (no deadlock in the gradient all-reduce),
    the count is per step (not per rank), and parameters, BN statistics and Fair weights stay equal."""
    script = tmp_path / "ddp_nan.py"
    script.write_text(DDP_NAN_SCRIPT)
    env = dict(os.environ, ROBUSTDISTILL_NO_PROGRESS="1", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    if _spurious_abort(result):
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["skipped"] == r1["skipped"] == [2, 0]
    assert r0["loss"] == r1["loss"] and all(math.isfinite(v) for v in r0["loss"])
    assert r0["state"] == r1["state"] and r0["weights"] == r1["weights"] != [1.0] * 10
    assert r0["validated"] == [True, True] and r1["validated"] == [False, False]  # rank 0 alone validates
