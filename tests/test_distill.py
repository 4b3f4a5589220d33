"""The distill / train-teacher pipeline end to end: every method, run files and metadata, resume
after SIGKILL (bit-identical), run-directory safety, input checks before training, --config files,
and best-on-validation model selection.

Tiny budgets throughout (digits, ``tiny_cnn``, 1-4 epochs, 2 attack steps, 20 test examples).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from robustdistill.data import load_dataset
from robustdistill import distill, train_teacher
from robustdistill.config import options_from_file
from robustdistill.evaluation import eval_settings, evaluate_model
from robustdistill.methods import list_methods, parse_method
from robustdistill.resolve import new_config
from robustdistill.models import DataHint, build_student, load_classifier, save_classifier
from robustdistill.models.checkpoint import read_metadata

distill_mod = importlib.import_module("robustdistill.pipeline")
ROOT = Path(__file__).resolve().parents[1]

TINY = {"epochs": 1, "attack_steps": 2, "val_pgd_steps": 2, "eval_attacks": "clean,pgd", "eval_n_examples": 20,
        "device": "cpu"}
TINY_ARGS = ["--epochs", "1", "--attack-steps", "2", "--val-pgd-steps", "2", "--eval-attacks", "clean",
             "--eval-n-examples", "20", "--device", "cpu"]
RUN_FILES = {"report.json", "report.md", "per_class.png", "metrics.jsonl", "config.yaml", "checkpoint.pt"}


# --------------------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module")
def splits():
    return load_dataset("digits")


def _save_model(path: Path, hint: DataHint, seed: int = 1) -> Path:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_student("small_cnn", hint)
    return save_classifier(model, path, config={"dataset": "digits", "eps": "0.2"})


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory, splits) -> Path:
    """An untrained small_cnn teacher for digits (distillation plumbing needs no good teacher)."""
    return _save_model(tmp_path_factory.mktemp("teacher") / "teacher.safetensors", splits.info.hint())


@pytest.fixture(scope="module")
def natural_file(tmp_path_factory, splits) -> Path:
    """An untrained small_cnn as MTARD's natural teacher (another seed than ``teacher_file``)."""
    return _save_model(tmp_path_factory.mktemp("natural") / "natural.safetensors", splits.info.hint(), seed=4)


@pytest.fixture(scope="module")
def init_file(tmp_path_factory, splits) -> Path:
    """An untrained tiny_cnn robustdistill model: FRL's hot start (``--init``) in these plumbing tests."""
    with torch.random.fork_rng():
        torch.manual_seed(5)
        model = build_student("tiny_cnn", splits.info.hint())
    return save_classifier(model, tmp_path_factory.mktemp("init") / "init.safetensors",
                           config={"dataset": "digits", "eps": "0.2"})


def method_inputs(method: str, natural: Path, init: Path) -> dict[str, str]:
    """The extra inputs a method needs: MTARD's natural teacher, FRL's initial model."""
    spec = parse_method(method).base
    out = {"natural_teacher": str(natural)} if "natural" in spec.extra_teachers else {}
    return {**out, "student_weights": str(init)} if spec.requires_init else out


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, teacher_file) -> Path:
    """A complete 1-epoch fair-ard run; tests copy it before changing anything."""
    out = tmp_path_factory.mktemp("finished") / "run"
    distill(str(teacher_file), "tiny_cnn", "fair-ard", out=str(out), **TINY)
    return out


def copy_run(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


def snapshot(path: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(path.iterdir())}


def flat(config: dict) -> dict:
    """A saved (sectioned) config as flat option names, method hyperparameters under ``params``."""
    options, params = options_from_file(config, "config.yaml")
    return {**options, "params": params}


def saved_config(run: Path) -> dict:
    return flat(yaml.safe_load((run / "config.yaml").read_text()))


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def assert_same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different}"


def check_error(result, helpers, *needles: str, code: int = 1) -> str:
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    return helpers.assert_one_line_error(result.stderr, *needles)


def _env() -> dict[str, str]:
    return dict(os.environ, ROBUSTDISTILL_NO_PROGRESS="1", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
                HF_HUB_OFFLINE="1", COLUMNS="200")


def _module(*args: str) -> list[str]:
    return [sys.executable, "-m", "robustdistill", *map(str, args)]


@pytest.fixture()
def watched_teacher(monkeypatch):
    """Wrap the pipeline's ``freeze`` so every teacher forward asserts eval mode and frozen parameters
    (``models`` holds each frozen teacher with its weights before training: MTARD has two)."""
    seen: dict = {"model": None, "calls": 0, "models": []}
    real = distill_mod.freeze

    def freeze_and_watch(model):
        model = real(model)
        seen["model"], seen["before"] = model, {k: v.clone() for k, v in model.state_dict().items()}
        seen["models"].append((model, seen["before"]))

        def check(module, _inputs):
            assert not any(m.training for m in module.modules()), "teacher ran in train mode"
            assert not any(p.requires_grad for p in module.parameters()), "teacher parameters require grad"
            seen["calls"] += 1

        model.register_forward_pre_hook(check)
        return model

    monkeypatch.setattr(distill_mod, "freeze", freeze_and_watch)
    return seen


# --------------------------------------------------------------------------- every method
METHODS = [m.name for m in list_methods()]


def _teacher_free(method: str) -> bool:
    return not parse_method(method).base.needs_teacher


# The fast loop keeps every base method and Fair-ARD itself; the other Fair- wrappers run in the full suite.
@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) if m.startswith("fair-") and m != "fair-ard"
                                    else m for m in METHODS])
def test_every_method_runs_end_to_end(method, tmp_path, teacher_file, natural_file, init_file, watched_teacher, cli):
    out = tmp_path / "run"
    inputs = method_inputs(method, natural_file, init_file)
    if _teacher_free(method):
        result = train_teacher("tiny_cnn", method, dataset="digits", out=str(out), **TINY, **inputs)
        model_name = "teacher.safetensors"
    else:
        result = distill(str(teacher_file), "tiny_cnn", method, out=str(out), **TINY, **inputs)
        model_name = "student.safetensors"
    assert result.student is not None and result.student_path == out / model_name
    assert RUN_FILES | {model_name} <= {p.name for p in out.iterdir()}
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]

    # report.json: per-class numbers for the student and (when there is one) the teacher
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "robustdistill/distill@2" and flat(report["run"]["config"])["method"] == method
    roles = ["student"] + ([] if _teacher_free(method) else ["teacher"])
    for role in roles:
        assert report[role]["data"]["split"] == "test" and report[role]["data"]["n_examples"] == 20
        for attack in ("clean", "pgd"):
            per = report[role]["results"][attack]
            assert len(per["per_class"]) == 10 and sum(per["class_counts"]) == 20
    assert (report["teacher"] is None) == _teacher_free(method)
    assert "# Distillation report" in (out / "report.md").read_text()

    # metrics.jsonl: one epoch, finite, validated
    (record,) = metrics(out)
    assert record["epoch"] == 1 and record["skipped_steps"] == 0 and "val_pgd" in record
    assert torch.isfinite(torch.tensor(record["train_loss"]))
    assert ("class_weights" in record) == method.startswith("fair-")

    # safetensors metadata: spec, resolved config (== config.yaml), teacher id and sha256
    meta = read_metadata(out / model_name)
    spec = json.loads(meta["robustdistill.spec"])
    assert spec["arch"] == "tiny_cnn" and spec["num_classes"] == 10 and list(spec["input_size"]) == [1, 8, 8]
    config = json.loads(meta["robustdistill.config"])
    assert config == yaml.safe_load((out / "config.yaml").read_text()) == report["run"]["config"]
    assert flat(config)["method"] == method and flat(config)["epochs"] == 1 and flat(config)["eps"] == 0.2
    assert spec["dataset"] == "digits" and spec["eps"] == 0.2
    if _teacher_free(method):
        assert "robustdistill.teacher" not in meta
    else:
        from robustdistill.fileio import sha256_file

        assert meta["robustdistill.teacher"] == str(teacher_file)
        assert meta["robustdistill.teacher_sha256"] == sha256_file(teacher_file)
        # the teacher ran (in eval mode, frozen: checked on every call) and is bit-identical
        assert watched_teacher["calls"] > 0
        after = watched_teacher["model"].state_dict()
        assert all(torch.equal(after[k], v) for k, v in watched_teacher["before"].items())
        assert len(watched_teacher["models"]) == 1 + len(inputs)  # MTARD: the natural teacher too
        for model, before in watched_teacher["models"]:
            assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
        if "natural_teacher" in inputs:
            assert meta["robustdistill.natural_teacher"] == str(natural_file) and report["natural_teacher"] is not None

    # the model file is self-describing: `evaluate` needs no other flag
    evaluated = cli("evaluate", str(out / model_name))
    assert evaluated.exit_code == 0, evaluated.output
    assert "Clean" in evaluated.stdout and "PGD" in evaluated.stdout


# --------------------------------------------------------------------------- resume after SIGKILL
def _kill_after_epochs(proc: subprocess.Popen, run: Path, epochs: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    path = run / "metrics.jsonl"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}")
        if path.exists() and path.read_text().count("\n") >= epochs:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.01)
    proc.kill()
    pytest.fail("the run did not log its epochs in time")


#: Per method: (command, extra flags); MTARD's natural teacher and FRL's hot start are filled in by the test.
RESUME_CASES = {
    "fair-ard": ("distill", []),  # reweighted (state to resume)
    "rslad": ("distill", []),  # eval-mode attack
    "fair-mtard": ("distill", ["--natural-teacher", "NATURAL"]),  # loss balance (omega, L0) + Fair-ARD weights
    "absld": ("distill", ["--tau-lr", "0.3"]),  # per-class temperatures
    "frl": ("train-teacher", ["--init", "INIT", "--variant", "reweight-remargin", "--rate", "0.5"]),  # multipliers
    "cfa": ("train-teacher", ["--fawa-threshold", "0", "--calibrate-from", "0"]),  # r_train and the FAWA average
}


@pytest.mark.slow
@pytest.mark.parametrize("method", RESUME_CASES)
def test_resume_after_sigkill_is_bit_identical(method, tmp_path, teacher_file, natural_file, init_file):
    command, extra = RESUME_CASES[method]
    extra = [{"NATURAL": str(natural_file), "INIT": str(init_file)}.get(e, e) for e in extra]
    inputs = ["--teacher", teacher_file] if command == "distill" else ["--arch", "tiny_cnn", "--dataset", "digits"]
    args = [command, *inputs, "--method", method, "--epochs", "4", "--batch-size", "64",
            "--attack-steps", "2", "--val-pgd-steps", "2", "--eval-attacks", "clean", "--eval-n-examples", "20",
            "--device", "cpu", "--seed", "3", *extra]
    model = "student.safetensors" if command == "distill" else "teacher.safetensors"
    a, b = tmp_path / "A", tmp_path / "B"
    pipe = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, "env": _env(), "cwd": tmp_path}
    reference = subprocess.Popen(_module(*args, "--out", b), **pipe)  # uninterrupted, same seed
    victim = subprocess.Popen(_module(*args, "--out", a), **pipe)
    _kill_after_epochs(victim, a, epochs=2)
    assert victim.returncode == -signal.SIGKILL
    assert not (a / model).exists()
    killed_at = torch.load(a / "checkpoint.pt", weights_only=True)["epoch"]
    assert 1 <= killed_at <= 3
    kept = (a / "metrics.jsonl").read_text().splitlines()[:killed_at]

    resumed = subprocess.run(_module(command, "--resume", "--out", a), capture_output=True, text=True,
                             env=_env(), cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-3000:]

    assert_same_tensors(tensors(a / model), tensors(b / model))
    ra, rb = metrics(a), metrics(b)
    assert [r["epoch"] for r in ra] == [r["epoch"] for r in rb] == [1, 2, 3, 4]
    assert (a / "metrics.jsonl").read_text().splitlines()[:killed_at] == kept  # resumed, not restarted
    timing = ("seconds", "images_per_second")
    assert [{k: v for k, v in r.items() if k not in timing} for r in ra] == \
           [{k: v for k, v in r.items() if k not in timing} for r in rb]
    state_a = torch.load(a / "checkpoint.pt", weights_only=True)["strategy"]
    state_b = torch.load(b / "checkpoint.pt", weights_only=True)["strategy"]
    assert state_a.keys() == state_b.keys()
    for key in state_a:  # the method's state (weights, balance, temperatures, multipliers, FAWA average) is identical
        if key == "fawa_state":
            assert_same_tensors(state_a[key], state_b[key])
        else:
            assert state_a[key] == state_b[key], key
    if method.startswith("fair-"):
        weights = state_a["class_weights"]
        assert weights == ra[-1]["class_weights"] and weights != [1.0] * 10
    assert_method_state_moved(method, state_a, ra, a)
    assert not [p.name for p in a.iterdir() if p.name.endswith(".tmp")]


def assert_method_state_moved(method: str, state: dict, records: list[dict], run: Path) -> None:
    """The resumed state is not trivially equal: it moved away from its initial value during the run."""
    if method == "fair-mtard":
        assert state["base"]["omega_nat"] == records[-1]["omega_nat"] != 0.5 and state["base"]["init_adv"] > 0
    elif method == "absld":
        assert state["tau_adv"] == records[-1]["tau_adv"] != [1.0] * 10
    elif method == "frl":
        assert state["lambda"][2] == records[-1]["lambda2"] and any(state["lambda"][2])
    elif method == "cfa":  # the reported model is the FAWA average, not the live weights
        assert state["r_train"] == records[-1]["r_train"] and records[-1]["fawa_started"]
        assert_same_tensors(tensors(run / "teacher.safetensors"), {k: v.contiguous() for k, v in state["fawa_state"].items()})


def test_resume_of_a_run_that_died_after_training_before_its_report(tmp_path, teacher_file, monkeypatch):
    out = tmp_path / "run"

    def die(*_args, **_kwargs):
        raise RuntimeError("killed before the report")

    monkeypatch.setattr(distill_mod, "save_classifier", die)
    with pytest.raises(RuntimeError, match="killed"):
        distill(str(teacher_file), "tiny_cnn", "ard", out=str(out), **TINY)
    monkeypatch.undo()
    assert not (out / "student.safetensors").exists() and not (out / "report.json").exists()
    checkpoint_before = snapshot(out)["checkpoint.pt"]

    result = distill(out=str(out), resume=True)
    assert result.student is not None and len(result.history) == 1
    assert len(metrics(out)) == 1 and snapshot(out)["checkpoint.pt"] == checkpoint_before  # nothing retrained
    state = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    assert_same_tensors(tensors(out / "student.safetensors"), {k: v.contiguous() for k, v in state.items()})
    assert json.loads((out / "report.json").read_text())["run"]["epochs_trained"] == 1


def test_resume_with_a_conflicting_flag_is_refused(tmp_path, finished_run, cli, helpers):
    run = copy_run(finished_run, tmp_path)
    before = snapshot(run)
    line = check_error(cli("distill", "--resume", "--out", run, "--method", "ard"), helpers, "method", "--resume")
    assert "fair-ard" in line
    check_error(cli("distill", "--resume", "--out", run, "--overwrite"), helpers, "only one")
    check_error(cli("distill", "--resume", "--out", tmp_path / "nothing"), helpers, "nothing to resume")
    assert snapshot(run) == before


def test_api_resume_checks_what_the_caller_gives(tmp_path, finished_run, teacher_file):
    from robustdistill.errors import RunDirError

    run = copy_run(finished_run, tmp_path)
    before = snapshot(run)
    with pytest.raises(RunDirError, match="method='ard'"):
        distill(str(teacher_file), "tiny_cnn", "ard", out=str(run), resume=True)
    with pytest.raises(RunDirError, match="beta"):
        distill(out=str(run), resume=True, beta=1.0)
    with pytest.raises(RunDirError, match="student"):
        train_teacher("small_cnn", out=str(run), resume=True)
    assert snapshot(run) == before


def test_resume_refuses_a_changed_teacher_file(tmp_path, teacher_file, splits, helpers, cli):
    teacher = _save_model(tmp_path / "teacher.safetensors", splits.info.hint())
    out = tmp_path / "run"
    distill(str(teacher), "tiny_cnn", "kd", out=str(out), **TINY)
    before = snapshot(out)
    _save_model(teacher, splits.info.hint(), seed=2)  # same path, other weights
    check_error(cli("distill", "--resume", "--out", out), helpers, "teacher file changed")
    assert snapshot(out) == before


def test_resume_of_a_run_killed_in_its_first_epoch_starts_it_over(tmp_path, finished_run):
    """Only config.yaml was written: --resume trains from scratch, and (same seed) reproduces the run."""
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(finished_run / "config.yaml", run / "config.yaml")
    (run / ".checkpoint.pt.k1ll.tmp").write_bytes(b"half")
    distill(out=str(run), resume=True)
    assert_same_tensors(tensors(run / "student.safetensors"), tensors(finished_run / "student.safetensors"))
    assert len(metrics(run)) == 1 and not (run / ".checkpoint.pt.k1ll.tmp").exists()


def test_resume_may_add_epochs(tmp_path, finished_run, cli):
    run = copy_run(finished_run, tmp_path)
    first = metrics(run)[0]
    result = cli("distill", "--resume", "--out", run, "--epochs", "2")
    assert result.exit_code == 0, result.output
    records = metrics(run)
    assert [r["epoch"] for r in records] == [1, 2] and records[0] == first
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 2
    assert saved_config(run)["epochs"] == 2
    assert json.loads((run / "report.json").read_text())["run"]["epochs_trained"] == 2


# --------------------------------------------------------------------------- run-directory safety
def test_existing_run_dir_is_refused_and_left_untouched(tmp_path, finished_run, teacher_file, cli, helpers):
    run = copy_run(finished_run, tmp_path)
    before = snapshot(run)
    check_error(cli("distill", "--teacher", teacher_file, *TINY_ARGS, "--out", run), helpers, "--overwrite", "--resume")
    assert snapshot(run) == before


def test_overwrite_replaces_the_run(tmp_path, finished_run, teacher_file, cli):
    run = copy_run(finished_run, tmp_path)
    (run / "notes.txt").write_text("not a run file")
    (run / ".checkpoint.pt.x1.tmp").write_bytes(b"half a checkpoint")
    result = cli("distill", "--teacher", teacher_file, "--method", "ard", *TINY_ARGS, "--out", run, "--overwrite")
    assert result.exit_code == 0, result.output
    assert saved_config(run)["method"] == "ard"
    (record,) = metrics(run)
    assert "class_weights" not in record  # a fresh ard log, not appended to the fair-ard one
    assert (run / "notes.txt").read_text() == "not a run file" and not (run / ".checkpoint.pt.x1.tmp").exists()
    assert flat(json.loads((run / "report.json").read_text())["run"]["config"])["method"] == "ard"


def _bad_teacher(tmp_path: Path, num_classes=10, input_size=(1, 8, 8)) -> Path:
    return _save_model(tmp_path / "bad.safetensors", DataHint(num_classes, input_size, mean=(0.5,) * input_size[0],
                                                               std=(0.25,) * input_size[0]))


BAD_INPUTS = {
    "unknown student": (lambda t, good: ["--teacher", good, "--student", "nosuchnet"], ("nosuchnet",)),
    "unknown method": (lambda t, good: ["--teacher", good, "--method", "fair-foo"], ("fair-foo",)),
    "class count": (lambda t, good: ["--teacher", _bad_teacher(t, num_classes=3)], ("3 classes", "10")),
    "channels": (lambda t, good: ["--teacher", _bad_teacher(t, input_size=(3, 8, 8))], ("3-channel",)),
    "input size": (lambda t, good: ["--teacher", _bad_teacher(t, input_size=(1, 16, 16))], ("16x16", "8x8")),
    "eps 8": (lambda t, good: ["--teacher", good, "--eps", "8"], ("8/255",)),
    "bad schedule": (lambda t, good: ["--teacher", good, "--schedule", "steps"], ("schedule",)),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_refused_before_the_run_dir_is_touched(case, tmp_path, teacher_file, finished_run, cli, helpers):
    make_args, needles = BAD_INPUTS[case]
    args = [*make_args(tmp_path, teacher_file), "--dataset", "digits", *TINY_ARGS]
    fresh = tmp_path / "fresh"
    check_error(cli("distill", *args, "--out", fresh), helpers, *needles)
    assert not fresh.exists()
    # even with --overwrite, an existing run survives a bad input untouched
    run = copy_run(finished_run, tmp_path)
    before = snapshot(run)
    check_error(cli("distill", *args, "--out", run, "--overwrite"), helpers, *needles)
    assert snapshot(run) == before


def test_api_refuses_teacherless_distillation_and_teacher_methods_in_train_teacher(tmp_path):
    from robustdistill.errors import UsageError

    with pytest.raises(UsageError, match="teacher"):
        distill(None, "tiny_cnn", "ard", dataset="digits", out=str(tmp_path / "x"), **TINY)
    with pytest.raises(UsageError, match="at or trades"):
        train_teacher("tiny_cnn", "fair-ard", dataset="digits", out=str(tmp_path / "y"), **TINY)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# --------------------------------------------------------------------------- --config files
def test_yaml_config_applies_and_flags_override(tmp_path, teacher_file, cli):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({
        "teacher": str(teacher_file), "method": "ard", "epochs": 1, "attack_steps": 2, "val_pgd_steps": 2,
        "eval_attacks": "clean", "eval_n_examples": 10, "lr": 0.05, "temperature": 4.0, "device": "cpu",
    }))
    out = tmp_path / "out"
    result = cli("distill", "--config", cfg, "--lr", "0.02", "--out", out)
    assert result.exit_code == 0, result.output
    saved = saved_config(out)
    assert saved["method"] == "ard" and saved["epochs"] == 1 and saved["attack_steps"] == 2
    assert saved["eval_n_examples"] == 10 and saved["params"]["tau"] == 4.0
    assert saved["lr"] == 0.02  # the command line wins over the file
    assert metrics(out)[0]["lr"] == 0.02


def test_toml_config_applies_and_flags_override(tmp_path, teacher_file, cli):
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f'teacher = "{teacher_file}"\nmethod = "kd"\nepochs = 3\nval-pgd-steps = 2\neval-attacks = "clean"\n'
        'eval-n-examples = 10\ndevice = "cpu"\nseed = 5\n\n[hparams]\nalpha = 0.25\n'
    )
    out = tmp_path / "out"
    result = cli("distill", "--config", cfg, "--epochs", "1", "--out", out)
    assert result.exit_code == 0, result.output
    saved = saved_config(out)
    assert saved["method"] == "kd" and saved["seed"] == 5 and saved["params"]["alpha"] == 0.25
    assert saved["epochs"] == 1 and len(metrics(out)) == 1


EXAMPLE_CONFIGS = sorted((ROOT / "examples" / "configs").glob("*.yaml"))


def _normalised(options: dict) -> dict:
    """Option values as the run config holds them (``eps: "0.2"`` -> 0.2)."""
    from robustdistill.config import build_config

    values = build_config(options).option_values()
    return {k: values[k] for k in options}


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLE_CONFIGS, ids=lambda p: p.stem)
def test_every_example_config_runs_and_applies(path, tmp_path, cli):
    """The shipped examples/configs are real: each runs (at a tiny budget) and its values land in the run."""
    options, params = options_from_file(yaml.safe_load(path.read_text()), str(path))
    out = tmp_path / "out"
    result = cli("distill", "--config", path, *TINY_ARGS, "--out", out)
    assert result.exit_code == 0, result.output
    saved = saved_config(out)
    for key, value in _normalised(options).items():
        if key in ("epochs",):  # overridden by TINY_ARGS on purpose
            continue
        assert saved[key] == (pytest.approx(value) if isinstance(value, float) else value), (key, saved[key], value)
    from robustdistill.methods import canonical_params

    for key, value in canonical_params(params).items():  # older names (temperature) are the current ones (tau)
        assert saved["params"][key] == pytest.approx(value), (key, saved["params"][key], value)


@pytest.mark.parametrize("path", sorted((ROOT / "examples" / "configs").glob("*.*")), ids=lambda p: p.name)
def test_every_example_config_file_resolves(path):
    """Every shipped config (YAML or TOML, with flat keys, sections or the command line's flag words such
    as train-teacher's ``arch``) reads and resolves to a run config without an error."""
    from robustdistill.config import read_config_file

    options, params = options_from_file(read_config_file(path), str(path))
    command = "train-teacher" if options.get("method") in ("at", "trades", "standard", "frl", "cfa") else "distill"
    cfg = new_config(command, {**options, "out": "o"}, params)
    assert cfg.student.arch == options.get("student", cfg.student.arch)


def test_the_default_job_config_is_the_no_argument_job():
    """examples/configs/fair-iad.yaml spells out `robustdistill distill` with no arguments: it resolves to the same config."""
    options, params = options_from_file(yaml.safe_load((ROOT / "examples" / "configs" / "fair-iad.yaml").read_text()), "x")
    default, spelled = new_config("distill", {"out": "o"}), new_config("distill", {**options, "out": "o"}, params)
    assert spelled.to_dict() == default.to_dict()


@pytest.mark.parametrize("suffix", [".yaml", ".toml"])
def test_config_with_an_unknown_key_is_refused(suffix, tmp_path, cli, helpers):
    cfg = tmp_path / f"run{suffix}"
    cfg.write_text("epochs: 1\nbogus_key: 3\n" if suffix == ".yaml" else "epochs = 1\nbogus_key = 3\n")
    out = tmp_path / "out"
    check_error(cli("distill", "--config", cfg, "--out", out), helpers, "bogus_key")
    assert not out.exists()


# --------------------------------------------------------------------------- model selection
def test_best_val_selection_is_reported_and_uses_the_val_split(tmp_path, splits):
    out = tmp_path / "run"
    result = train_teacher("tiny_cnn", "at", dataset="digits", eps="0.1", epochs=3, lr=0.05, select="best-val",
                           out=str(out), **{k: v for k, v in TINY.items() if k != "epochs"})
    records = metrics(out)
    val = [r["val_pgd"] for r in records]
    best = val.index(max(val)) + 1
    report = json.loads((out / "report.json").read_text())
    assert report["run"]["selected"] == "best-val" and report["run"]["selected_epoch"] == best
    assert report["run"]["selected_validation"]["val_pgd"] == max(val)
    assert f"best-val: epoch {best} of 3" in (out / "report.md").read_text()
    # the saved model is the selected epoch's: an independent evaluation on the *val* split
    # reproduces that epoch's logged validation numbers exactly
    model = load_classifier(out / "teacher.safetensors")
    check = evaluate_model(model, splits.val, splits.info.class_names, attacks=("clean", "pgd"),
                           settings=eval_settings(0.1, 0, pgd_steps=2), batch_size=256)
    assert check.accuracy("clean") == records[best - 1]["val_clean"]
    assert check.accuracy("pgd") == records[best - 1]["val_pgd"]
    last = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    saved = tensors(out / "teacher.safetensors")
    assert all(torch.equal(saved[k], last[k].contiguous()) for k in saved) == (best == 3)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
