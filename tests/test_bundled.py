"""The bundled robust digits teacher and the no-argument default job."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import pytest
import torch

from robustdistill.data import load_dataset
from robustdistill.evaluation import eval_settings, evaluate_model
from robustdistill.models import list_bundled, load_model, recorded_config, recorded_eps
from robustdistill.resolve import new_config

ROOT = Path(__file__).resolve().parents[1]


def recorded_report() -> dict:
    return json.loads((resources.files("robustdistill") / "assets" / "digits.report.json").read_text())


def test_bundled_digits_is_registered_and_self_describing() -> None:
    assert "digits" in list_bundled()
    model = load_model("bundled:digits")
    assert not model.training
    assert model.spec.arch == "small_cnn" and model.spec.num_classes == 10 and model.spec.input_size == (1, 8, 8)
    assert model.spec.class_names == tuple(str(d) for d in range(10))
    config = recorded_config("bundled:digits")
    assert config["dataset"] == "digits" and config["eps"] == "0.2" and config["method"] == "at"
    assert recorded_eps("bundled:digits") == 0.2


def test_recorded_evaluation_matches_a_fresh_one() -> None:
    """The numbers shipped next to the teacher are what the teacher does (clean exactly, PGD per sample)."""
    report = recorded_report()
    assert report["schema"] == "robustdistill/evaluation@2" and report["settings"]["batch_size"] == 256
    assert {"clean", "pgd", "aa"} <= set(report["results"])
    model = load_model("bundled:digits")
    splits = load_dataset("digits")
    assert report["data"]["n_examples"] == len(splits.test)
    assert report["per_sample"]["labels"] == splits.test.labels.tolist()
    fresh = evaluate_model(model, splits.test, splits.info.class_names, attacks=("clean", "pgd"),
                           settings=eval_settings(0.2, report["settings"]["seed"]))
    for attack in ("clean", "pgd"):
        bits = "".join("1" if v else "0" for v in fresh.correct[attack].tolist())
        recorded = report["per_sample"]["correct"][attack]
        differing = sum(a != b for a, b in zip(bits, recorded))
        # Random starts are seeded per (attack, batch): the same per-sample results, whatever
        # other attacks ran; allow one sample for float reduction order across thread counts.
        assert differing <= (0 if attack == "clean" else 1), (attack, differing)
    assert report["results"]["aa"]["accuracy"] <= report["results"]["pgd"]["accuracy"] + 1e-9


def test_no_argument_defaults() -> None:
    cfg = new_config("distill", {})
    assert (cfg.teacher.id, cfg.student.arch, cfg.method.name, cfg.data.name) == ("bundled:digits", "tiny_cnn", "fair-iad", "digits")
    assert cfg.method.eps == 0.2 and cfg.method.attack_step == 0.05 and cfg.train.batch_size == 32 and cfg.train.epochs == 20
    assert cfg.method.fair["beta"] == 2.0 and cfg.method.params["tau"] == 1.0 and cfg.evaluation.attacks == "clean,pgd,cw,aa"
    # The Python API resolves the very same config (no second copy of any default).
    from robustdistill.pipeline import DEFAULT_METHOD

    assert DEFAULT_METHOD == cfg.method.name


@pytest.mark.parametrize(("method", "epochs"), [("iad", 20), ("fair-iad", 20), ("ard", 40), ("fair-rslad", 40), ("kd", 40)])
def test_digits_epochs_per_method(method: str, epochs: int) -> None:
    """Digits defaults chosen on validation (benchmarks/results/default_job.md); an explicit --epochs wins."""
    assert new_config("distill", {"method": method}).train.epochs == epochs
    assert new_config("distill", {"method": method, "epochs": 7}).train.epochs == 7


@pytest.mark.slow
def test_wheel_ships_the_teacher(tmp_path: Path) -> None:
    """A plain (non-editable) install gets the asset: it is inside the built wheel."""
    import shutil

    # Build from a copy: setuptools writes build/ and *.egg-info next to the sources it builds.
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "robustdistill", source / "robustdistill", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(tmp_path), "-q"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("robustdistill-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("digits.safetensors", "digits.report.json", "digits.report.md"):
        assert f"robustdistill/assets/{name}" in names
    assert "robustdistill/py.typed" in names
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read("robustdistill/assets/digits.safetensors")
    assert data == (resources.files("robustdistill") / "assets" / "digits.safetensors").read_bytes()


@pytest.mark.slow
def test_default_job_one_epoch(tmp_path: Path) -> None:
    """The default job's code path end to end (shortened): bundled teacher -> tiny_cnn, Fair-ARD."""
    from robustdistill import distill

    result = distill(epochs=1, eval_attacks="clean,pgd", eval_n_examples=60, out=str(tmp_path / "run"))
    assert result.student_path.exists() and (tmp_path / "run" / "fairness.md").exists()
    report = json.loads(result.report_path.read_text())
    assert report["teacher"]["model"]["id"] == "bundled:digits"
    assert len(report["teacher"]["results"]["pgd"]["per_class"]) == 10
    assert torch.isfinite(torch.tensor(report["student"]["results"]["pgd"]["accuracy"]))
