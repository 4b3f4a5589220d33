"""Adding a strategy, an evaluation attack or a dataset is one new class or function plus its
registration: toy ones, registered from this test module, run through the CLI end to end
(``list``, ``distill``, ``evaluate``) without any other file changing.

These are the tests CONTRIBUTING.md points to; copy one when you add a component.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from robustdistill.data import DATASETS, DatasetInfo, DatasetSplits, RunDefaults, TensorSplit, carve_val, register_dataset
from robustdistill.evaluation import ATTACKS, EvalAttack, register_attack
from robustdistill.evaluation.attacks import seeded
from robustdistill.methods import METHODS, AttackMode, AttackOutput, Strategy, register_method, weighted_mean
from robustdistill.methods.base import frozen_logits, soft_kl
from robustdistill.params import hyperparameter, require

SHORT = ["--attack-steps", "1", "--val-pgd-steps", "1", "--eval-attacks", "clean,pgd", "--eval-n-examples", "20",
         "--device", "cpu"]


# --------------------------------------------------------------------------- a toy strategy
@pytest.fixture()
def toy_strategy():
    """Clean KD with a uniform-noise 'attack': registered under 'toykd' for the test only."""

    @register_method(name="toykd", summary="toy KD on noisy inputs (test only)", attack_mode=AttackMode.EVAL,
                     dataset_epochs={"digits": 3})
    class ToyKD(Strategy):
        @dataclass(frozen=True)
        class Params:
            weight: float = hyperparameter(1.0, "scale of the toy KD term")

            def __post_init__(self) -> None:
                require(self.weight > 0, f"toykd: weight must be > 0, got {self.weight}")

        def perturb(self, student, teacher, x, y) -> AttackOutput:
            x_adv = (x + torch.empty_like(x).uniform_(-self.attack.eps, self.attack.eps)).clamp(0, 1)
            with torch.no_grad():
                kappa = student(x_adv).argmax(1).eq(y).long()
            return AttackOutput(x_adv=x_adv, kappa=kappa)

        def loss(self, student, teacher, x, y, adv, sample_weight=None):
            kl = weighted_mean(soft_kl(frozen_logits(teacher, x), student(adv.x_adv)), sample_weight)
            return self.params.weight * kl, {"kl": kl.detach()}

    yield ToyKD
    METHODS.unregister("toykd")


@pytest.mark.slow
def test_a_toy_strategy_runs_through_the_cli(toy_strategy, cli, tmp_path: Path) -> None:
    listed = cli("list", "methods")
    assert listed.exit_code == 0 and "toykd" in listed.stdout and "fair-toykd" in listed.stdout
    out = tmp_path / "run"
    result = cli("distill", "--method", "fair-toykd", "-p", "weight=2", "-p", "beta=1", *SHORT, "--epochs", "2",
                 "--out", out)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "report.json").read_text())["run"]["config"]
    assert config["method"]["name"] == "fair-toykd"
    assert config["method"]["params"] == {"weight": 2.0} and config["method"]["fair"]["beta"] == 1.0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and "class_weights" in records[0]  # Fair-ARD wrapped the toy method
    # the method's per-dataset epochs are its own default on digits
    again = cli("distill", "--method", "toykd", *SHORT, "--out", tmp_path / "b")
    assert again.exit_code == 0, again.output
    assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 3


def test_a_toy_strategy_reusing_a_fair_name_is_refused() -> None:
    with pytest.raises(ValueError, match="beta"):
        @register_method(name="clash", summary="x", attack_mode=AttackMode.NONE)
        class Clash(Strategy):
            @dataclass(frozen=True)
            class Params:
                beta: float = 1.0
    assert "clash" not in METHODS


# --------------------------------------------------------------------------- a toy attack
@pytest.fixture()
def toy_attack():
    @register_attack()
    @dataclass(frozen=True)
    class Noise(EvalAttack):
        """Uniform noise in the eps-ball (a sanity floor, not an attack anyone should report)."""

        name: ClassVar[str] = "noise"
        title: ClassVar[str] = "Noise"
        description: ClassVar[str] = "uniform noise in the eps-ball (test only)"
        seed_id: ClassVar[int] = 99
        in_all: ClassVar[bool] = False

        draws: int = 1

        def adversarial(self, model, x, y, *, eps, seed):
            seeded(seed)
            return (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)

    yield Noise
    ATTACKS.unregister("noise")


def test_a_toy_attack_runs_through_the_cli(toy_attack, cli, tmp_path: Path) -> None:
    listed = cli("list", "attacks")
    assert listed.exit_code == 0 and "noise" in listed.stdout
    result = cli("evaluate", "bundled:digits", "--attacks", "clean,noise,pgd", "-n", "40", "--pgd-steps", "2",
                 "--attack-param", "noise_draws=3", "--out", tmp_path / "ev")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert list(report["results"]) == ["clean", "pgd", "noise"]  # registry order, whatever was asked
    assert report["settings"]["attacks"]["noise"]["parameters"]["draws"] == 3
    assert report["results"]["noise"]["accuracy"] >= report["results"]["pgd"]["accuracy"]
    # a new attack never re-seeds an existing one: PGD is what it is without the toy attack
    alone = cli("evaluate", "bundled:digits", "--attacks", "clean,pgd", "-n", "40", "--pgd-steps", "2", "--fresh",
                "--out", tmp_path / "alone")
    assert alone.exit_code == 0, alone.output
    pgd_alone = json.loads((tmp_path / "alone" / "report.json").read_text())["per_sample"]["correct"]["pgd"]
    assert report["per_sample"]["correct"]["pgd"] == pgd_alone


def test_an_attack_needs_a_seed_id_of_its_own() -> None:
    with pytest.raises(ValueError, match="seed_id"):
        @register_attack()
        @dataclass(frozen=True)
        class Copycat(EvalAttack):
            name: ClassVar[str] = "copycat"
            seed_id: ClassVar[int] = 2  # PGD's
    assert "copycat" not in ATTACKS


# --------------------------------------------------------------------------- a toy dataset
@pytest.fixture()
def toy_dataset():
    """Two-class 6x6 stripes: horizontal (0) vs vertical (1), with pixel noise."""

    @register_dataset("stripes", description="6x6 horizontal vs vertical stripes (test only)",
                      defaults=RunDefaults(eps=0.1, batch_size=16, epochs=2), channels=1, image_size=6, num_classes=2,
                      class_names=("horizontal", "vertical"))
    def load_stripes(options):
        rng = np.random.default_rng(0)
        base = np.zeros((2, 6, 6), dtype=np.float32)
        base[0, ::2, :] = 1.0
        base[1, :, ::2] = 1.0
        labels = rng.integers(0, 2, size=240)
        images = np.clip(base[labels] + 0.2 * rng.standard_normal((240, 6, 6)), 0, 1).astype(np.float32)
        x, y = torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels)
        pool, test = TensorSplit("train", x[:200], y[:200]), TensorSplit("test", x[200:], y[200:])
        train, val = carve_val(pool, options.val_size)
        info = DatasetInfo("stripes", 2, (1, 6, 6), ("horizontal", "vertical"), (0.5,), (0.25,), crop_padding=1)
        return DatasetSplits(info, train, val, test)

    yield load_stripes
    DATASETS.unregister("stripes")


def test_a_toy_dataset_runs_through_the_cli(toy_dataset, cli, tmp_path: Path) -> None:
    listed = cli("list", "datasets")
    assert listed.exit_code == 0 and "stripes" in listed.stdout
    out = tmp_path / "teacher"
    trained = cli("train-teacher", "--dataset", "stripes", "--arch", "tiny_cnn", "--attack-steps", "2",
                  "--eval-attacks", "clean,pgd", "--device", "cpu", "--out", out)
    assert trained.exit_code == 0, trained.output
    config = json.loads((out / "report.json").read_text())["run"]["config"]
    # the dataset's run defaults: eps 0.1, batch 16, 2 epochs
    assert config["method"]["eps"] == 0.1 and config["train"]["batch_size"] == 16 and config["train"]["epochs"] == 2
    evaluated = cli("evaluate", out / "teacher.safetensors", "--attacks", "clean,fgsm", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    summary = json.loads(evaluated.stdout)["evaluation"]
    assert summary["data"]["dataset"] == "stripes" and summary["settings"]["eps"] == 0.1  # recorded in the file
    assert summary["results"]["clean"]["accuracy"] > 0.9  # stripes are easy: the loop really trained
