"""Hostile input to the CLI, config files and the Python API: one line that says what to do, the
documented exit status, no traceback, and nothing already written touched.

Exit statuses: 0 ok; 1 bad input (a domain error); 2 command-line usage; 4 disk full; 130/143
interrupted. Model files: tests/test_hostile_models.py; data: tests/test_hostile_data.py; run
directories, signals and full disks: tests/test_rundir.py, tests/test_signals.py, tests/test_fileio.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import robustdistill as rd
from robustdistill.errors import RobustDistillError, RunDirError, UsageError

SHORT = ["--epochs", "1", "--attack-steps", "1", "--val-pgd-steps", "1", "--eval-attacks", "clean",
         "--eval-n-examples", "10", "--device", "cpu"]


def one_line(result, helpers, *needles: str, code: int = 1) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    assert "Traceback" not in result.output and result.stdout == ""
    return helpers.assert_one_line_error(result.stderr, *needles)


def snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


# --------------------------------------------------------------------------- config files
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
CONFIGS = {
    "yaml alias bomb": (ALIAS_BOMB, ".yaml", ("aliases",)),
    "not utf-8": (b"epochs: 1\n\xff\xfe\x00bad", ".yaml", ("UTF-8",)),
    "list-valued hyperparameter": ("method: ard\ntau: [1, 2]\n", ".yaml", ("tau", "float")),
    "integer key": ("1: 2\n", ".yaml", ("option names",)),
    "top-level list": ("- epochs\n- 1\n", ".yaml", ("mapping",)),
    "unknown key": ("epochs: 1\nbogus_key: 3\n", ".yaml", ("bogus_key",)),
    "unknown section key": ("train:\n  epochs: 1\n  bogus: 2\n", ".yaml", ("train.bogus",)),
    "option of the wrong type": ("epochs: ten\n", ".yaml", ("epochs",)),
    "nested too deep": ("train: {a: {b: {c: {d: {e: 1}}}}}\n", ".yaml", ("nests deeper",)),
    "invalid yaml": ("epochs: [1\n", ".yaml", ("not valid YAML",)),
    "invalid toml": ("epochs = \n", ".toml", ("not valid TOML",)),
    "huge file": ("# " + "x" * (1 << 20) + "\n", ".yaml", ("larger than",)),
    "hyperparameters not a mapping": ("method: {name: ard, params: 3}\n", ".yaml", ("method.params",)),
    "eps as a boolean": ("eps: true\n", ".yaml", ("eps",)),
    "eps 8 in a file": ("eps: 8\n", ".yaml", ("8/255",)),
}


@pytest.mark.parametrize("case", CONFIGS)
def test_hostile_config_file(case: str, tmp_path: Path, cli, helpers) -> None:
    text, suffix, needles = CONFIGS[case]
    path = tmp_path / f"run{suffix}"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    out = tmp_path / "out"
    one_line(cli("distill", "--config", path, "--out", out), helpers, *needles)
    assert not out.exists()
    with pytest.raises(UsageError):  # the Python API reads the same files the same way
        rd.distill(config=path, out=str(tmp_path / "api"))
    assert not (tmp_path / "api").exists()


def test_a_directory_as_config(tmp_path: Path, cli, helpers) -> None:
    one_line(cli("distill", "--config", tmp_path, "--out", tmp_path / "out"), helpers, "not a regular file")


# --------------------------------------------------------------------------- distill / train-teacher options
OPTIONS = {
    "lr inf": (["--lr", "inf"], ("lr",)),
    "lr nan": (["--lr", "nan"], ("lr",)),
    "lr zero": (["--lr", "0"], ("lr",)),
    "momentum 2": (["--momentum", "2"], ("momentum",)),
    "negative weight decay": (["--weight-decay", "-1"], ("weight_decay",)),
    "zero epochs": (["--epochs", "0"], ("epochs",)),
    "zero batch": (["--batch-size", "0"], ("batch_size",)),
    "zero attack steps": (["--attack-steps", "0"], ("attack_steps",)),
    "seed beyond 64 bits": (["--seed", str(2**64)], ("seed",)),
    "negative seed": (["--seed", "-1"], ("seed",)),
    "eval seed beyond 64 bits": (["--eval-seed", str(2**70)], ("eval_seed",)),
    "unknown attack": (["--eval-attacks", "clean,pgdd"], ("pgdd", "did you mean 'pgd'")),
    "unknown schedule": (["--schedule", "steps"], ("schedule",)),
    "unknown optimizer": (["--optimizer", "lbfgs"], ("optimizer",)),
    "unknown method": (["--method", "fair-at"], ("fair-at",)),
    "unknown hyperparameter": (["-p", "gamma=2"], ("gamma",)),
    "hyperparameter without value": (["-p", "tau"], ("KEY=VALUE",)),
    "hyperparameter of the wrong type": (["-p", "tau=hot"], ("tau", "float")),
    "a list as hyperparameter": (["-p", "tau=[1, 2]"], ("single number",)),
    "eps 8": (["--eps", "8"], ("did you mean 8/255",)),
    "step 1e9": (["--attack-step", "1e9"], ("attack step",)),
    "unknown metric log": (["--log", "wandb"], ("wandb",)),
    "unknown dataset": (["--dataset", "cifar11"], ("cifar11",)),
    "no gpu": (["--device", "cuda"], ("cuda",)),
}


@pytest.mark.parametrize("case", OPTIONS)
def test_hostile_option_is_refused_before_the_run_dir_is_touched(case: str, tmp_path: Path, cli, helpers) -> None:
    args, needles = OPTIONS[case]
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    before = snapshot(run)
    one_line(cli("distill", *SHORT, *args, "--out", run, "--overwrite"), helpers, *needles)
    assert snapshot(run) == before  # --overwrite never costs anything when the input is bad


USAGE = {  # command-line syntax: one line from the console script, exit status 2
    "not an integer": (["evaluate", "bundled:digits", "--seed", "abc"], ("--seed",)),
    "missing argument": (["evaluate"], ("model",)),
    "not a choice": (["distill", "--amp", "fp8"], ("--amp", "fp8")),
    "unknown flag": (["distill", "--bogus"], ("--bogus",)),
    "n out of range": (["evaluate", "bundled:digits", "-n", "0"], ("--n-examples",)),
}


# The fast loop keeps two usage errors; every case runs in the full suite (each is a ~3 s subprocess).
@pytest.mark.parametrize("case", [c if c in ("unknown flag", "missing argument") else pytest.param(c, marks=pytest.mark.slow)
                                  for c in USAGE])
def test_usage_errors_are_one_line_with_status_2(case: str, helpers) -> None:
    args, needles = USAGE[case]
    proc = helpers.run_module(*args)
    assert proc.returncode == 2 and proc.stdout == ""
    helpers.assert_one_line_error(proc.stderr, *needles, "--help")


# --------------------------------------------------------------------------- outputs of other commands
@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    rd.distill(out=str(out), epochs=1, attack_steps=1, val_pgd_steps=1, eval_attacks="clean", eval_n_examples=10)
    return out


def test_evaluate_never_writes_into_a_distill_run(finished: Path, tmp_path: Path, cli, helpers) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = snapshot(run)
    one_line(cli("evaluate", "bundled:digits", "-n", "10", "--out", run), helpers, "distill", "another --out")
    one_line(cli("fairness-report", "bundled:digits", str(run / "student.safetensors"), "-n", "10", "--out", run),
             helpers, "distill", "another --out")
    assert snapshot(run) == before


def test_evaluate_out_that_is_a_file(tmp_path: Path, cli, helpers) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    one_line(cli("evaluate", "bundled:digits", "-n", "10", "--out", path), helpers, "is a file")
    assert path.read_text() == "mine"


def test_resume_compares_values_not_text(finished: Path, tmp_path: Path, cli) -> None:
    """--resume --eps 1/5 is the saved 0.2 (written another way), so it is no conflict."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    result = cli("distill", "--resume", "--out", run, "--eps", "1/5", "--epochs", "1")
    assert result.exit_code == 0, result.output


# --------------------------------------------------------------------------- tampered reports
def _tamper(report: Path, change) -> Path:
    data = json.loads(report.read_text())
    change(data)
    report.write_text(json.dumps(data))
    return report


REPORTS = {
    "not json": lambda p: p.write_text("{not json"),
    "a json list": lambda p: p.write_text("[1, 2]"),
    "foreign schema": lambda p: _tamper(p, lambda d: d.update(schema="something/else@1")),
    "bits of the wrong length": lambda p: _tamper(p, lambda d: d["student"]["per_sample"]["correct"].update(clean="01")),
    "bits not 0/1": lambda p: _tamper(p, lambda d: d["student"]["per_sample"]["correct"].update(
        clean="x" * len(d["student"]["per_sample"]["labels"]))),
    "labels missing": lambda p: _tamper(p, lambda d: d["student"]["per_sample"].pop("labels")),
    "settings missing": lambda p: _tamper(p, lambda d: d["student"].pop("settings")),
    "unknown attack": lambda p: _tamper(p, lambda d: d["student"]["per_sample"]["correct"].update(
        zzz=d["student"]["per_sample"]["correct"]["clean"])),
}


@pytest.mark.parametrize("case", REPORTS)
def test_tampered_report_json(case: str, finished: Path, tmp_path: Path, cli, helpers) -> None:
    report = tmp_path / "report.json"
    shutil.copy(finished / "report.json", report)
    REPORTS[case](report)
    one_line(cli("fairness-report", f"{report}#teacher", str(report), "--out", tmp_path / "fr"), helpers)
    with pytest.raises(RobustDistillError) as info:
        rd.load_report(report)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- the Python API
API = {
    "evaluate a number": lambda: rd.evaluate(123),
    "evaluate an empty name": lambda: rd.evaluate("  "),
    "options with an unknown field": lambda: rd.evaluate("bundled:digits", options={"bogus": 1}),
    "options of the wrong type": lambda: rd.evaluate("bundled:digits", options=[1]),
    "attacks that are numbers": lambda: rd.evaluate("bundled:digits", attacks=[1, 2]),
    "batch size 0": lambda: rd.evaluate("bundled:digits", batch_size=0),
    "batch size a float": lambda: rd.evaluate("bundled:digits", batch_size=2.5),
    "pgd steps 0": lambda: rd.evaluate("bundled:digits", pgd_steps=0, n_examples=4),
    "n examples 0": lambda: rd.evaluate("bundled:digits", n_examples=0),
    "seed beyond 64 bits": lambda: rd.evaluate("bundled:digits", seed=2**64),
    "eps 8": lambda: rd.evaluate("bundled:digits", eps=8),
    "unknown attack parameter": lambda: rd.evaluate("bundled:digits", attack_params={"pgd_bogus": 1}, n_examples=4),
    "load a missing report": lambda: rd.load_report("nope.json"),
    "load a report from a number": lambda: rd.load_report(3),
    "distill 0 epochs": lambda: rd.distill(epochs=0, out="never"),
    "distill batch size 0": lambda: rd.distill(batch_size=0, out="never"),
    "distill a bad hyperparameter": lambda: rd.distill(tau="hot", out="never"),
    "distill an unknown option value": lambda: rd.distill(amp="fp8", out="never"),
    "distill out as a number": lambda: rd.distill(out=123),
    "train a teacher with a teacher method": lambda: rd.train_teacher("tiny_cnn", "ard", out="never"),
    "fairness with one model": lambda: rd.fairness_report(["bundled:digits"]),
}


@pytest.mark.parametrize("case", API)
def test_the_api_raises_the_clis_domain_errors(case: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RobustDistillError) as info:
        API[case]()
    assert "\n" not in str(info.value) and str(info.value)
    assert not (tmp_path / "never").exists()


def test_there_are_enough_cases() -> None:
    assert len(CONFIGS) + len(OPTIONS) + len(USAGE) + len(REPORTS) + len(API) >= 60


def test_the_exception_hierarchy_is_public() -> None:
    from robustdistill import errors

    for name in ("UsageError", "ModelError", "CheckpointError", "DataError", "RunDirError", "DiskFullError"):
        cls = getattr(errors, name)
        assert issubclass(cls, RobustDistillError) and cls.__doc__
    assert errors.DiskFullError.exit_code == 4 and UsageError.exit_code == RunDirError.exit_code == 1
