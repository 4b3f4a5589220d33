"""Reuse of identical evaluations (teacher attacked once)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robustdistill.evaluation import cache as eval_cache
from robustdistill.api import describe_model
from robustdistill.data import load_dataset
from robustdistill.evaluation import EvalSettings, eval_settings, evaluate_model
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
    settings = eval_settings(0.2, pgd_steps=2)
    result, split = _evaluate(model_file, digits, settings)
    assert eval_cache.store(result) is not None and len(list(cache.glob("*.json"))) == 1
    found = eval_cache.lookup(model_file, result.model_info["sha256"], split, "digits", settings,
                              settings.attacks(["clean", "pgd"]), 256)
    assert found is not None and all(p["source"].endswith(".json") for p in found.provenance.values())
    for attack in ("clean", "pgd"):
        assert torch.equal(found.correct[attack], result.correct[attack])
    only_clean = eval_cache.lookup(model_file, result.model_info["sha256"], split, "digits", settings,
                                   settings.attacks(["clean"]), 256)
    assert only_clean is not None and list(only_clean.correct) == ["clean"]


def test_anything_different_is_not_reused(cache: Path, model_file: str, digits) -> None:
    settings = eval_settings(0.2, pgd_steps=2)
    result, split = _evaluate(model_file, digits, settings)
    eval_cache.store(result)
    sha = result.model_info["sha256"]
    def ask(**kw):
        data = split if "labels" not in kw else type(split)(split.name, split.images, kw["labels"])
        chosen = kw.get("settings", settings)
        return eval_cache.lookup(model_file, kw.get("sha", sha), data, "digits", chosen,
                                 chosen.attacks(kw.get("attacks", ["clean", "pgd"])), kw.get("batch_size", 256))

    assert ask(sha="0" * 64) is None
    assert ask(settings=eval_settings(0.1, pgd_steps=2)) is None
    assert ask(settings=eval_settings(0.2, 1, pgd_steps=2)) is None
    assert ask(settings=eval_settings(0.2, pgd_steps=3)) is None
    assert ask(labels=split.labels.flip(0)) is None
    assert ask(attacks=["clean", "pgd", "aa"]) is None
    assert ask(batch_size=32) is None  # each batch has its own random start: another batch size is another experiment
    assert ask() is not None


def test_cache_off_and_damaged_entries(cache: Path, model_file: str, digits, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = eval_settings(0.2, pgd_steps=2)
    result, split = _evaluate(model_file, digits, settings)
    path = eval_cache.store(result)
    assert path is not None
    path.write_text("{not json")
    assert eval_cache.lookup(model_file, result.model_info["sha256"], split, "digits", settings,
                             settings.attacks(["clean"]), 256) is None
    monkeypatch.setenv("ROBUSTDISTILL_CACHE", "off")
    assert eval_cache.store(result) is None


def test_bundled_teacher_reuses_its_shipped_evaluation(cache: Path, digits) -> None:
    model = load_model("bundled:digits")
    info = describe_model("bundled:digits", model)
    split = digits.test
    settings = eval_settings(0.2)
    found = eval_cache.lookup("bundled:digits", info["sha256"], split, "digits", settings,
                              settings.attacks(["clean", "pgd", "aa"]), 256)
    assert found is not None and all("shipped" in p["source"] for p in found.provenance.values())
    assert found.accuracy("aa") <= found.accuracy("pgd")


@pytest.mark.slow
def test_distill_attacks_its_teacher_once(cache: Path, model_file: str, tmp_path: Path) -> None:
    from robustdistill import distill

    common = dict(dataset="digits", epochs=1, eval_attacks="clean,pgd", eval_n_examples=30, attack_steps=1, val_pgd_steps=1)
    distill(model_file, "tiny_cnn", "ard", out=str(tmp_path / "a"), **common)
    second = distill(model_file, "tiny_cnn", "rslad", out=str(tmp_path / "b"), **common)
    reports = [json.loads((tmp_path / r / "report.json").read_text()) for r in ("a", "b")]
    assert {p["source"] for p in reports[0]["teacher"]["provenance"].values()} == {"computed"}
    assert all(p["source"].endswith(".json") for p in reports[1]["teacher"]["provenance"].values())
    assert reports[0]["teacher"]["per_sample"] == reports[1]["teacher"]["per_sample"]
    assert second.teacher is not None


def test_evaluate_reuses_and_fresh_attacks_again(cache: Path, model_file: str) -> None:
    from robustdistill import evaluate

    first = evaluate(model_file, attacks="clean,pgd", n_examples=30, pgd_steps=2)
    assert first.provenance["pgd"]["source"] == "computed"
    second = evaluate(model_file, attacks="clean,pgd", n_examples=30, pgd_steps=2)
    assert second.provenance["pgd"]["source"].endswith(".json")
    assert second.provenance["pgd"]["computed"] == first.provenance["pgd"]["computed"]
    assert torch.equal(second.correct["pgd"], first.correct["pgd"])
    third = evaluate(model_file, attacks="clean,pgd", n_examples=30, pgd_steps=2, reuse=False)
    assert third.provenance["pgd"]["source"] == "computed"


def test_fairness_report_reuses_the_bundled_teacher_evaluation(cache: Path, model_file: str) -> None:
    """fairness-report on the bundled teacher with the shipped settings does not attack it again."""
    from robustdistill import fairness_report

    comparison = fairness_report(["bundled:digits", model_file], attacks="clean,pgd", n_examples=None)
    teacher = comparison.models[0]
    assert all("shipped" in p["source"] for p in teacher.provenance.values())
    assert teacher.results["pgd"].n == 360


def test_another_library_version_is_a_miss(cache: Path, model_file: str, digits) -> None:
    """A result computed with another torch or pyautoattack is another experiment: never reused."""
    import dataclasses

    settings = eval_settings(0.2, pgd_steps=2)
    result, split = _evaluate(model_file, digits, settings)
    older = dataclasses.replace(result, implementations={a: i.replace(torch.__version__, "2.9.0")
                                                         for a, i in result.implementations.items()})
    eval_cache.store(older)
    assert eval_cache.lookup(model_file, result.model_info["sha256"], split, "digits", settings,
                             settings.attacks(["clean", "pgd"]), 256) is None
    eval_cache.store(result)
    assert eval_cache.lookup(model_file, result.model_info["sha256"], split, "digits", settings,
                             settings.attacks(["clean", "pgd"]), 256) is not None


def test_stored_attacks_accumulate(cache: Path, model_file: str, digits) -> None:
    """Evaluating more attacks later keeps the ones stored before (one entry per model, data and protocol)."""
    settings = eval_settings(0.2, pgd_steps=2)
    model = load_model(model_file)
    split = digits.test.head(40)
    info = describe_model(model_file, model)
    for attacks in (("clean", "pgd"), ("clean", "fgsm")):
        eval_cache.store(evaluate_model(model, split, digits.info.class_names, attacks=attacks, settings=settings,
                                        model_id=model_file, dataset="digits", model_info=info))
    both = eval_cache.lookup(model_file, info["sha256"], split, "digits", settings,
                             settings.attacks(["clean", "fgsm", "pgd"]), 256)
    assert both is not None and list(both.correct) == ["clean", "fgsm", "pgd"]
