"""Scripting and logging conventions a user relies on: ``--json`` (machine-readable, alone on
stdout), documented exit statuses, plain uncut log lines when stderr is not a terminal, the
Python version the package declares, and the README's Python snippet run verbatim.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHORT = ["--epochs", "1", "--attack-steps", "1", "--val-pgd-steps", "1", "--eval-attacks", "clean,pgd",
         "--eval-n-examples", "20", "--device", "cpu"]


def module(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    base = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", COLUMNS="100")
    return subprocess.run([sys.executable, "-m", "robustdistill", *map(str, args)], capture_output=True, text=True,
                          env={**base, **(env or {})}, cwd=cwd, timeout=600)


# --------------------------------------------------------------------------- --json
@pytest.mark.parametrize("args", [
    ["list", "--json"],
    ["list", "methods", "--json"],
    ["evaluate", "bundled:digits", "-n", "20", "--attacks", "clean,pgd", "--no-profile", "--json"],
])
def test_json_is_the_only_thing_on_stdout(cli, args: list[str]) -> None:
    result = cli(*args)
    assert result.exit_code == 0, result.output
    json.loads(result.stdout)  # all of stdout is one JSON document


def test_distill_json_and_fairness_report_json(cli, tmp_path: Path) -> None:
    result = cli("distill", *SHORT, "--out", tmp_path / "run", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["out_dir"] == str(tmp_path / "run") and summary["eps"] == 0.2
    assert set(summary["student"]) == {"clean", "pgd"} and "worst_class" in summary["student"]["pgd"]
    fair = cli("fairness-report", f"{tmp_path / 'run' / 'report.json'}#teacher", str(tmp_path / "run"),
               "--out", tmp_path / "fr", "--json")
    assert fair.exit_code == 0, fair.output
    data = json.loads(fair.stdout)
    assert data["comparison"]["schema"].startswith("robustdistill/fairness@") and len(data["files"]) >= 2


@pytest.mark.slow
def test_quiet_prints_nothing_but_errors(tmp_path: Path) -> None:
    proc = module("evaluate", "bundled:digits", "-n", "10", "--attacks", "clean", "--quiet", "--out", tmp_path / "q",
                  env={"ROBUSTDISTILL_NO_PROGRESS": "0"})
    assert proc.returncode == 0 and proc.stderr == ""
    assert (tmp_path / "q" / "report.json").exists()


# --------------------------------------------------------------------------- exit statuses
@pytest.mark.slow
def test_exit_statuses(tmp_path: Path) -> None:
    """0 ok, 1 bad input, 2 command-line usage (130/143 and 4: tests/test_signals.py, tests/test_train.py)."""
    assert module("list", "datasets").returncode == 0
    bad = module("evaluate", "bundled:digits", "--eps", "8")
    assert bad.returncode == 1 and bad.stderr.startswith("error:") and "8/255" in bad.stderr
    usage = module("evaluate", "bundled:digits", "--bogus")
    assert usage.returncode == 2 and usage.stderr.startswith("error:") and len(usage.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- logs
@pytest.mark.slow
def test_a_log_gets_plain_uncut_lines_with_an_eta(tmp_path: Path) -> None:
    """stderr to a file or pipe: one line per epoch and per finished evaluation, never cut at 80 columns."""
    proc = module("distill", *SHORT, "--epochs", "2", "--out", tmp_path / "run",
                  env={"ROBUSTDISTILL_NO_PROGRESS": "0", "COLUMNS": ""})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    epochs = [line for line in lines if line.startswith("training: ")]
    assert len(epochs) == 2 and "ETA" in epochs[0] and "val PGD" in epochs[0]
    assert max(len(line) for line in lines) > 100  # long lines stay whole
    assert not any("\x1b[" in line for line in lines)  # no terminal control codes in a log


# --------------------------------------------------------------------------- Python version
def test_the_declared_python_is_the_one_the_code_needs() -> None:
    """The code uses tomllib (3.11+), so the package requires 3.11: pip refuses it on 3.10 instead of failing later."""
    from packaging.specifiers import SpecifierSet

    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert "3.10.14" not in SpecifierSet(requires) and "3.11.0" in SpecifierSet(requires)
    assert "3.11" in (ROOT / ".ci" / "run").read_text()  # CI checks the interpreter it runs on


# --------------------------------------------------------------------------- the README snippet
def readme_python() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_readme_python_snippet_runs_verbatim(tmp_path: Path) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(readme_python())
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=900,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", ROBUSTDISTILL_NO_PROGRESS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "runs" / "demo" / "report.json").read_text())
    assert report["student"]["settings"]["eps"] == 0.2
    # the snippet's evaluate() uses the student's own budget - the eps rule of the CLI
    assert "eps 0.2" in proc.stdout
