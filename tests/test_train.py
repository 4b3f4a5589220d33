"""The one trainer: lr schedules and optimizers (registries), data sharding, checkpoints (resume,
atomic writes, disk full), non-finite losses, validation on the val split, AMP / channels_last, and
DDP on CPU through torchrun (gloo, driven by tests/ddp_train.py).

Everything runs on the bundled digits data with ``tiny_cnn`` students and 1-2 attack steps.
Run-directory tests (lock, manifest, --overwrite) are in tests/test_rundir.py.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch

from robustdistill.data import load_dataset
from robustdistill.evaluation import EvalSettings, eval_settings, evaluate_model
from robustdistill.methods import AttackSettings, build_strategy
from robustdistill.models import build_student, freeze, save_classifier
from robustdistill.errors import CheckpointError, UsageError
from robustdistill.errors import DiskFullError
from robustdistill.train import (
    CHECKPOINT_FORMAT, OPTIMIZERS, SCHEDULES, Dist, NonFiniteLossError, RunDir, TrainConfig, Trainer, lr_factor,
    read_checkpoint, shard_order,
)
from robustdistill.train import validation as validation_mod

CPU = torch.device("cpu")
TESTS = Path(__file__).resolve().parent


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


def make_trainer(splits, *, method="ard", run_dir=None, dist=None, **cfg) -> Trainer:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        student = build_student("tiny_cnn", splits.info.hint())
        teacher = freeze(build_student("small_cnn", splits.info.hint()))
    attack = AttackSettings(eps=0.2, step_size=0.05, steps=1)
    strategy = build_strategy(method, attack=attack, num_classes=splits.info.num_classes)
    config = TrainConfig(**{"epochs": 1, "batch_size": 64, "val_pgd_steps": 2, **cfg})
    return Trainer(student, teacher, strategy, train=splits.train, val=splits.val, info=splits.info, config=config,
                   device=CPU, run_dir=run_dir, eval_settings=EvalSettings(eps=0.2), dist=dist)


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
    with pytest.raises(UsageError, match="schedule"):
        lr_factor("step", 10, 0)
    with pytest.raises(UsageError, match="schedule"):
        TrainConfig(schedule="step")  # validated on construction


def test_trainer_sets_the_scheduled_lr_every_step(small_splits):
    trainer = make_trainer(small_splits, epochs=4, schedule="ard")
    lrs = []
    trainer.fit(on_epoch=lambda record: lrs.append(record["lr"]))
    assert lrs == pytest.approx([0.1, 0.1, 0.01, 0.001])


def test_schedules_are_frozen_registered_specs():
    assert SCHEDULES.names() == ["ard", "ard-released", "rslad", "cosine", "constant"]
    for spec in SCHEDULES:
        assert spec.description and callable(spec.factor)
        with pytest.raises(dataclasses.FrozenInstanceError):
            spec.name = "other"
        assert lr_factor(spec.name, 20, 12, 3, 7) == spec.factor(20, 12, 3, 7)
    with pytest.raises(UsageError, match="did you mean 'cosine'"):
        SCHEDULES.get("cosin")


# --------------------------------------------------------------------------- optimizers and TrainConfig
def test_default_optimizer_is_sgd_with_the_configured_settings(small_splits):
    trainer = make_trainer(small_splits, momentum=0.8, weight_decay=5e-4, nesterov=True)
    assert trainer.cfg.optimizer == "sgd" and type(trainer.optimizer) is torch.optim.SGD
    group = trainer.optimizer.param_groups[0]
    assert (group["momentum"], group["weight_decay"], group["nesterov"]) == (0.8, 5e-4, True)
    no_momentum = make_trainer(small_splits, momentum=0.0, nesterov=True)  # torch refuses Nesterov without momentum
    assert no_momentum.optimizer.param_groups[0]["nesterov"] is False


def test_adamw_trains_and_takes_momentum_as_beta1(small_splits):
    trainer = make_trainer(small_splits, optimizer="adamw", lr=1e-3, momentum=0.85, weight_decay=1e-2)
    assert type(trainer.optimizer) is torch.optim.AdamW
    group = trainer.optimizer.param_groups[0]
    assert group["betas"] == (0.85, 0.999) and group["weight_decay"] == 1e-2
    before = [p.detach().clone() for p in trainer.student.parameters()]
    record = trainer.fit()[-1]
    assert record["skipped_steps"] == 0 and math.isfinite(record["train_loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.student.parameters()))
    assert all("exp_avg_sq" in s for s in trainer.optimizer.state_dict()["state"].values())


@pytest.mark.parametrize(("settings", "needles"), [
    ({"optimizer": "adam"}, ("unknown optimizer 'adam'", "did you mean 'adamw'", "sgd")),
    ({"optimizer": "adamw", "nesterov": True}, ("--nesterov", "sgd")),
    ({"optimizer": "adamw", "momentum": 1.0}, ("beta1", "[0, 1)")),
    ({"amp": "fp8"}, ("--amp",)),
    ({"select": "best"}, ("--select",)),
    ({"epochs": 0}, ("positive",)),
    ({"val_every": 0}, ("at least 1",)),
])
def test_train_config_is_validated_once_on_construction(settings, needles):
    with pytest.raises(UsageError) as info:
        TrainConfig(**settings)
    assert "\n" not in str(info.value) and all(n in str(info.value) for n in needles)


def test_train_config_is_frozen_and_keyword_only():
    cfg = TrainConfig(epochs=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 4
    with pytest.raises(TypeError):
        TrainConfig(3)  # noqa: the fields are keyword-only
    assert dataclasses.replace(cfg, optimizer="adamw").optimizer == "adamw" and OPTIMIZERS.names() == ["sgd", "adamw"]


def test_trainer_reads_the_process_group_and_refuses_torchrun_without_one(small_splits, monkeypatch):
    assert make_trainer(small_splits).dist == Dist()
    assert make_trainer(small_splits, dist=Dist(0, 1)).dist == Dist()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="init_distributed"):
        make_trainer(small_splits)


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



# --------------------------------------------------------------------------- checkpoints
def test_checkpoint_is_complete_and_loads_weights_only(small_splits, tmp_path):
    run = RunDir(tmp_path)
    trainer = make_trainer(small_splits, method="fair-ard", run_dir=run)
    trainer.fit()
    state = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["format"] == CHECKPOINT_FORMAT and state["epoch"] == 1 and state["optimizer_name"] == "sgd"
    model = trainer.student.state_dict()
    assert state["model"].keys() == model.keys() and all(torch.equal(state["model"][k], model[k]) for k in model)
    momentum = [s["momentum_buffer"] for s in state["optimizer"]["state"].values()]
    assert len(momentum) == len(list(trainer.student.parameters())) and all(m is not None for m in momentum)
    weights = state["strategy"]["class_weights"]
    assert len(weights) == 10 and weights == trainer.strategy.weights.tolist() and weights != [1.0] * 10
    assert isinstance(state["rng"]["torch"], torch.Tensor) and len(state["rng"]["python"]) == 625
    assert "scaler" in state and len(state["history"]) == 1 and state["history"][0]["epoch"] == 1
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    manifest = json.loads((tmp_path / ".robustdistill-manifest.json").read_text())
    assert manifest["files"] == {"checkpoint.pt": "distill", "metrics.jsonl": "distill"}


def _assert_same_optimizer_state(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"] and a["state"].keys() == b["state"].keys()
    for index, state in a["state"].items():
        assert state.keys() == b["state"][index].keys()
        for key, value in state.items():
            other = b["state"][index][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other, (index, key)


def test_checkpoint_resume_restores_model_optimizer_and_strategy(small_splits, tmp_path):
    first = make_trainer(small_splits, method="fair-ard", run_dir=RunDir(tmp_path), epochs=2)
    first.cfg = dataclasses.replace(first.cfg, epochs=1)  # stop after one of two epochs, as a killed run would
    first.fit()
    second = make_trainer(small_splits, method="fair-ard", run_dir=RunDir(tmp_path), epochs=2)
    second.load_checkpoint(tmp_path / "checkpoint.pt")
    assert second.start_epoch == 1 and second.run_dir.checkpoint_epoch == 1
    assert second.strategy.weights.tolist() == first.strategy.weights.tolist()
    assert all(torch.equal(a, b) for a, b in zip(second.student.state_dict().values(), first.student.state_dict().values()))
    _assert_same_optimizer_state(second.optimizer.state_dict(), first.optimizer.state_dict())
    momentum = [s["momentum_buffer"] for s in second.optimizer.state_dict()["state"].values()]
    assert momentum and all(m.abs().sum() > 0 for m in momentum)  # real buffers, not fresh zeros


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_killed_and_resumed_training_is_bit_identical(small_splits, tmp_path, optimizer):
    lr = 0.1 if optimizer == "sgd" else 1e-3
    straight = make_trainer(small_splits, method="fair-ard", epochs=2, optimizer=optimizer, lr=lr)
    straight.fit()
    first = make_trainer(small_splits, method="fair-ard", run_dir=RunDir(tmp_path), epochs=2, optimizer=optimizer, lr=lr)
    first.cfg = dataclasses.replace(first.cfg, epochs=1)
    first.fit()
    resumed = make_trainer(small_splits, method="fair-ard", run_dir=RunDir(tmp_path), epochs=2, optimizer=optimizer, lr=lr)
    state = read_checkpoint(tmp_path / "checkpoint.pt")  # read (and checked) before the trainer takes it
    assert state["epoch"] == 1 and state["optimizer_name"] == optimizer
    resumed.resume_from(state, tmp_path / "checkpoint.pt")
    resumed.fit()
    for key, value in straight.student.state_dict().items():
        assert torch.equal(value, resumed.student.state_dict()[key]), key
    _assert_same_optimizer_state(resumed.optimizer.state_dict(), straight.optimizer.state_dict())
    assert resumed.strategy.weights.tolist() == straight.strategy.weights.tolist()


def test_resume_with_another_optimizer_is_a_one_line_error(small_splits, tmp_path):
    make_trainer(small_splits, run_dir=RunDir(tmp_path)).fit()
    with pytest.raises(CheckpointError) as info:
        make_trainer(small_splits, optimizer="adamw", lr=1e-3).load_checkpoint(tmp_path / "checkpoint.pt")
    assert "\n" not in str(info.value) and "sgd optimizer, not adamw" in str(info.value)


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
    with pytest.raises(DiskFullError) as info:
        trainer.save_checkpoint(2)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "checkpoint.pt") in message and "bytes free" in message
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.ENOSPC
    assert (tmp_path / "checkpoint.pt").read_bytes() == good
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_unreadable_checkpoint_is_one_line_error(small_splits, tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError) as info:
        make_trainer(small_splits).load_checkpoint(tmp_path / "checkpoint.pt")
    message = str(info.value)
    # One line that says what to do - and never --overwrite, which would delete a finished run's results.
    assert "\n" not in message and "damaged" in message and "new --out" in message and "--overwrite" not in message


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
    steps = trainer.steps_per_epoch()
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
    real = validation_mod.evaluate_model

    def recording(model, split, *args, **kwargs):
        seen.append(split)
        return real(model, split, *args, **kwargs)

    monkeypatch.setattr(validation_mod, "evaluate_model", recording)
    trainer = make_trainer(small_splits, epochs=1, val_pgd_steps=2)
    record = trainer.fit()[-1]
    assert seen == [small_splits.val] and seen[0].name == "val"
    independent = evaluate_model(
        trainer.student, small_splits.val, small_splits.info.class_names, attacks=("clean", "pgd"),
        settings=eval_settings(0.2, 0, pgd_steps=2), batch_size=256,
    )
    assert record["val_clean"] == independent.accuracy("clean")
    assert record["val_pgd"] == independent.accuracy("pgd")
    assert record["val_pgd_worst"] == independent.summary("pgd").worst_class.accuracy


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
    from robustdistill import progress as progress_module
    from robustdistill.progress import Progress

    monkeypatch.delenv("ROBUSTDISTILL_NO_PROGRESS", raising=False)
    monkeypatch.setattr(progress_module, "interactive", lambda: True)  # a terminal: live bars (a log gets lines)
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




# --------------------------------------------------------------------------- disk full (a real, small tmpfs)
@pytest.fixture()
def small_disk(tmp_path):
    """A 4 MiB tmpfs mounted for the test (needs root and mount rights; skipped otherwise)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(result.stderr or result.stdout).strip()[:120]})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def fill_disk(directory: Path) -> Path:
    """Write a filler file until the file system says ENOSPC; returns it."""
    filler = directory / "filler.bin"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_disk_full_during_training_keeps_the_last_checkpoint_and_resumes_bit_identically(small_splits, small_disk, tmp_path):
    straight = make_trainer(small_splits, method="fair-ard", epochs=2)
    straight.fit()
    run = small_disk / "run"
    trainer = make_trainer(small_splits, method="fair-ard", run_dir=RunDir(run), epochs=2)
    filler = []
    with pytest.raises(DiskFullError) as info:
        trainer.fit(on_epoch=lambda record: filler.append(fill_disk(small_disk)))  # full after epoch 1
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"disk full: could not write {run / 'checkpoint.pt'}")
    assert f"the file system at {small_disk} has {info.value.free_bytes:,} bytes free" in message
    assert f"resume with `robustdistill distill --resume --out {run}`" in message
    assert "the checkpoint of epoch 1" in message
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]  # epoch 2's line fitted in the log's last block

    filler[0].unlink()  # space again: resume
    resumed = make_trainer(small_splits, method="fair-ard", run_dir=RunDir(run), epochs=2)
    resumed.load_checkpoint(run / "checkpoint.pt")
    resumed.fit()
    for key, value in straight.student.state_dict().items():
        assert torch.equal(value, resumed.student.state_dict()[key]), key
    timing = ("seconds", "images_per_second")
    assert [{k: v for k, v in r.items() if k not in timing} for r in read_metrics(run)] == \
           [{k: v for k, v in r.items() if k not in timing} for r in straight.history]


def test_disk_full_writing_a_model_or_a_report_keeps_the_old_files(small_splits, small_disk):
    import dataclasses

    from robustdistill.models import build_student, save_classifier
    from robustdistill.render import write_evaluation

    model = build_student("tiny_cnn", small_splits.info.hint())
    report = evaluate_model(model, small_splits.val, small_splits.info.class_names, attacks=("clean",),
                            n_examples=10, batch_size=256, settings=eval_settings(0.2))
    save_classifier(model, small_disk / "student.safetensors")
    write_evaluation(report, small_disk)
    before = {p.name: p.read_bytes() for p in small_disk.iterdir()}
    fill_disk(small_disk)
    with pytest.raises(DiskFullError, match="student.safetensors"):
        save_classifier(build_student("small_cnn", small_splits.info.hint()), small_disk / "student.safetensors")
    with pytest.raises(DiskFullError, match="report.json"):
        write_evaluation(dataclasses.replace(report, model_info={"note": "x" * 100_000}), small_disk)
    assert {p.name: p.read_bytes() for p in small_disk.iterdir() if p.name != "filler.bin"} == before  # no temp file either


# --------------------------------------------------------------------------- DDP (torchrun, gloo, CPU)
def _torchrun(helpers, script_args: list[str], env: dict[str, str], cwd: Path, fresh: tuple[Path, ...] = ()):
    """``torchrun --nproc_per_node=2 tests/ddp_train.py ARGS`` (the script records what each rank ended with)."""
    return helpers.run_torchrun([str(TESTS / "ddp_train.py"), *script_args], env=env, cwd=cwd, fresh=fresh, timeout=300)


def _ddp_env() -> dict[str, str]:
    return dict(os.environ, ROBUSTDISTILL_NO_PROGRESS="1", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
                HF_HUB_OFFLINE="1", COLUMNS="200")


@pytest.mark.slow
def test_torchrun_two_processes_fair_ard(tmp_path, teacher_file, helpers):
    out, ranks_dir = tmp_path / "run", tmp_path / "ranks"
    ranks_dir.mkdir()
    args = ["distill", "--teacher", str(teacher_file), "--method", "fair-ard", "--epochs", "1", "--batch-size", "64",
            "--attack-steps", "2", "--val-pgd-steps", "2", "--eval-attacks", "clean,pgd", "--eval-n-examples", "20",
            "--device", "cpu", "--out", str(out)]
    result = _torchrun(helpers, ["cli", str(ranks_dir), *args], _ddp_env(), tmp_path, fresh=(out,))
    assert result.returncode == 0, result.stderr[-3000:]

    # one set of files, written once (rank 1 neither evaluated nor wrote nor printed)
    assert {p.name for p in out.iterdir()} >= {"student.safetensors", "report.json", "metrics.jsonl", "checkpoint.pt"}
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    assert result.stdout.count("student: ") == 1  # the title of the student's table, printed once (by rank 0)
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [1] and "val_pgd" in records[0]

    ranks = [json.loads((ranks_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["exit_code"] for r in ranks] == [0, 0]
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


@pytest.mark.slow
def test_torchrun_non_finite_skip_is_collective_and_ranks_stay_identical(tmp_path, helpers):
    """A NaN on one rank only: every rank skips that step (no deadlock in the gradient all-reduce),
    the count is per step (not per rank), and parameters, BN statistics and Fair weights stay equal."""
    result = _torchrun(helpers, ["nan", str(tmp_path)], _ddp_env(), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["skipped"] == r1["skipped"] == [2, 0]
    assert r0["loss"] == r1["loss"] and all(math.isfinite(v) for v in r0["loss"])
    assert r0["state"] == r1["state"] and r0["weights"] == r1["weights"] != [1.0] * 10
    # every rank validates its share of the batches and gets the same (whole) record
    assert r0["validated"] == r1["validated"] == [True, True] and r0["validation"] == r1["validation"]
