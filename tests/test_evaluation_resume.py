"""A killed evaluation continues from its last finished batch with identical results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robustdistill import attacks as atk
from robustdistill.data import load_dataset
from robustdistill.evaluation import eval_settings, evaluate_model
from robustdistill.evaluation.attacks import FGSM
from robustdistill.models import build_student

SETTINGS = eval_settings(0.2, pgd_steps=3)


@pytest.fixture(scope="module")
def setup():
    splits = load_dataset("digits")
    torch.manual_seed(0)
    model = build_student("tiny_cnn", splits.info.hint()).eval()
    return model, splits


def run(model, splits, state: Path | None, attacks=("clean", "fgsm", "pgd")):
    return evaluate_model(model, splits.test.head(100), splits.info.class_names, attacks=attacks, settings=SETTINGS,
                          batch_size=32, model_info={"sha256": "f" * 64}, dataset="digits", state_path=state)


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs (BaseException passes every `except Exception`)."""


def test_gradient_attacks_resume_bit_identical(setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, splits = setup
    reference = run(model, splits, None)
    state = tmp_path / ".eval.partial.json"
    calls = {"n": 0}
    original = FGSM.correct

    def dies_on_third_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # FGSM on batch 3 (clean has run on every batch; PGD has not started)
            raise Killed()
        return original(*args, **kwargs)

    monkeypatch.setattr(FGSM, "correct", dies_on_third_batch)
    with pytest.raises(Killed):
        run(model, splits, state)
    saved = json.loads(state.read_text())
    assert saved["done"] == {"clean": [0, 1, 2, 3], "fgsm": [0, 1], "pgd": []}
    monkeypatch.setattr(FGSM, "correct", original)
    resumed = run(model, splits, state)
    for attack in ("clean", "fgsm", "pgd"):
        assert torch.equal(resumed.correct[attack], reference.correct[attack]), attack
    assert not state.exists()


@pytest.mark.slow
def test_autoattack_resumes_per_chunk(setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, splits = setup
    state = tmp_path / ".eval.partial.json"
    calls = {"n": 0}
    original = atk.autoattack

    def dies_on_second_chunk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Killed()
        return original(*args, **kwargs)

    monkeypatch.setattr(atk, "autoattack", dies_on_second_chunk)
    small = splits.test.head(40)
    kwargs = dict(attacks=("clean", "aa"), settings=SETTINGS, batch_size=20, model_info={"sha256": "e" * 64}, dataset="digits")
    with pytest.raises(Killed):
        evaluate_model(model, small, splits.info.class_names, state_path=state, **kwargs)
    assert json.loads(state.read_text())["done"]["aa"] == [0]
    monkeypatch.setattr(atk, "autoattack", original)
    resumed = evaluate_model(model, small, splits.info.class_names, state_path=state, **kwargs)
    fresh = evaluate_model(model, small, splits.info.class_names, **kwargs)
    assert torch.equal(resumed.correct["aa"], fresh.correct["aa"])


def test_state_of_another_evaluation_is_ignored(setup, tmp_path: Path) -> None:
    model, splits = setup
    state = tmp_path / ".eval.partial.json"
    state.write_text(json.dumps({"fingerprint": "someone else", "done": {"clean": [0, 1, 2, 3], "fgsm": [], "pgd": []},
                                 "correct": {"clean": "0" * 100, "fgsm": "0" * 100, "pgd": "0" * 100},
                                 "seconds": {"clean": 0.0, "fgsm": 0.0, "pgd": 0.0}}))
    result = run(model, splits, state)
    assert result.accuracy("clean") == run(model, splits, None).accuracy("clean")
    assert not state.exists()


def test_models_without_a_file_hash_are_not_resumed(setup, tmp_path: Path) -> None:
    model, splits = setup
    state = tmp_path / ".eval.partial.json"
    evaluate_model(model, splits.test.head(20), splits.info.class_names, attacks=("clean",), settings=SETTINGS, state_path=state)
    assert not state.exists()
