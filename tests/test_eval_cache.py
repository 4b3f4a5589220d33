"""Reuse of identical evaluations (teacher attacked once)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robustdistill import eval_cache
from robustdistill.api import describe_model
from robustdistill.data import load_dataset
from robustdistill.evaluation import EvalSettings, evaluate_model
from robustdistill.models import build_student, load_model, save_classifier


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ROBUSTDISTILL_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "evaluations"


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture()
def model_file(tmp_path: Path, digits) -> str:
    torch.manual_seed(0)
    path = tmp_path / "m.safetensors"
    save_classifier(build_student("tiny_cnn", digits.info.hint()), path, config={"dataset": "digits", "eps": "0.2"})
    return str(path)


def _evaluate(model_id: str, digits, settings: EvalSettings):
    model = load_model(model_id)
    split = digits.test.head(40)
    return evaluate_model(model, split, digits.info.class_names, attacks=("clean", "pgd"), settings=settings,
                          model_id=model_id, dataset="digits", model_info=describe_model(model_id, model)), split


def test_store_then_lookup_returns_the_same_per_sample_results(cache: Path, model_file: str, digits) -> None:
    settings = EvalSettings(eps=0.2, pgd_steps=2)
    result, split = _evaluate(model_file, digits, settings)
    assert eval_cache.store(result) is not None and len(list(cache.glob("*.json"))) == 1
    found = eval_cache.lookup(model_file, result.model_info["sha256"], "digits", split.name, split.labels, settings, ["clean", "pgd"])
    assert found is not None and found.model_info["reused_evaluation"].endswith(".json")
    for attack in ("clean", "pgd"):
        assert torch.equal(found.correct[attack], result.correct[attack])
    only_clean = eval_cache.lookup(model_file, result.model_info["sha256"], "digits", split.name, split.labels, settings, ["clean"])
    assert only_clean is not None and list(only_clean.correct) == ["clean"]


def test_anything_different_is_not_reused(cache: Path, model_file: str, digits) -> None:
    settings = EvalSettings(eps=0.2, pgd_steps=2)
    result, split = _evaluate(model_file, digits, settings)
    eval_cache.store(result)
    sha = result.model_info["sha256"]
    ask = lambda **kw: eval_cache.lookup(model_file, kw.get("sha", sha), "digits", split.name, kw.get("labels", split.labels),  # noqa: E731
                                         kw.get("settings", settings), kw.get("attacks", ["clean", "pgd"]))
    assert ask(sha="0" * 64) is None
    assert ask(settings=EvalSettings(eps=0.1, pgd_steps=2)) is None
    assert ask(settings=EvalSettings(eps=0.2, pgd_steps=2, seed=1)) is None
    assert ask(settings=EvalSettings(eps=0.2, pgd_steps=3)) is None
    assert ask(labels=split.labels.flip(0)) is None
    assert ask(attacks=["clean", "pgd", "aa"]) is None
    assert ask() is not None


def test_cache_off_and_damaged_entries(cache: Path, model_file: str, digits, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = EvalSettings(eps=0.2, pgd_steps=2)
    result, split = _evaluate(model_file, digits, settings)
    path = eval_cache.store(result)
    assert path is not None
    path.write_text("{not json")
    assert eval_cache.lookup(model_file, result.model_info["sha256"], "digits", split.name, split.labels, settings, ["clean"]) is None
    monkeypatch.setenv("ROBUSTDISTILL_CACHE", "off")
    assert eval_cache.store(result) is None


def test_bundled_teacher_reuses_its_shipped_evaluation(cache: Path, digits) -> None:
    model = load_model("bundled:digits")
    info = describe_model("bundled:digits", model)
    split = digits.test
    found = eval_cache.lookup("bundled:digits", info["sha256"], "digits", "test", split.labels, EvalSettings(eps=0.2), ["clean", "pgd", "aa"])
    assert found is not None and "shipped" in found.model_info["reused_evaluation"]
    assert found.summary("aa")["accuracy"] <= found.summary("pgd")["accuracy"]


def test_distill_attacks_its_teacher_once(cache: Path, model_file: str, tmp_path: Path) -> None:
    from robustdistill import distill

    common = dict(dataset="digits", epochs=1, eval_attacks="clean,pgd", eval_n_examples=30, attack_steps=1, val_pgd_steps=1)
    distill(model_file, "tiny_cnn", "ard", out=str(tmp_path / "a"), **common)
    second = distill(model_file, "tiny_cnn", "rslad", out=str(tmp_path / "b"), **common)
    reports = [json.loads((tmp_path / r / "report.json").read_text()) for r in ("a", "b")]
    assert "reused_evaluation" not in reports[0]["teacher"]["model"]
    assert reports[1]["teacher"]["model"]["reused_evaluation"].endswith(".json")
    assert reports[0]["teacher"]["per_sample"] == reports[1]["teacher"]["per_sample"]
    assert second.teacher is not None


def test_evaluate_reuses_and_fresh_attacks_again(cache: Path, model_file: str) -> None:
    from robustdistill import evaluate

    first = evaluate(model_file, attacks="clean,pgd", n_examples=30, pgd_steps=2)
    assert "reused_evaluation" not in first.model_info
    second = evaluate(model_file, attacks="clean,pgd", n_examples=30, pgd_steps=2)
    assert second.model_info["reused_evaluation"].endswith(".json")
    assert torch.equal(second.correct["pgd"], first.correct["pgd"])
    third = evaluate(model_file, attacks="clean,pgd", n_examples=30, pgd_steps=2, reuse=False)
    assert "reused_evaluation" not in third.model_info


def test_fairness_report_reuses_the_bundled_teacher_evaluation(cache: Path, model_file: str) -> None:
    """fairness-report on the bundled teacher with the shipped settings does not attack it again."""
    from robustdistill import fairness_report

    comparison = fairness_report(["bundled:digits", model_file], attacks="clean,pgd", n_examples=None)
    teacher = comparison["models"][0]
    assert "shipped" in teacher["info"]["reused_evaluation"]
    assert teacher["results"]["pgd"]["n"] == 360
