"""Per-class metrics by hand, and `robustdistill evaluate` end to end on real checkpoints and images."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from robustdistill.evaluation import EvaluationResult, attack_names, eval_settings
from robustdistill.errors import UsageError
from robustdistill.metrics import nsd, summarize, wilson_interval
from robustdistill.render import evaluation_document, write_evaluation

N_EVAL = 24


# --------------------------------------------------------------------------- metrics by hand
def test_summarize_three_classes_by_hand() -> None:
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])
    correct = torch.tensor([1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0], dtype=torch.bool)
    s = summarize(correct, labels, ("cat", "dog", "frog")).to_dict()
    assert s["per_class"] == [0.5, 0.25, 0.25]
    assert s["class_counts"] == [4, 4, 4] and sum(s["class_counts"]) == s["n"] == 12
    assert s["class_correct"] == [2, 1, 1] and s["n_correct"] == 4
    assert s["accuracy"] == pytest.approx(4 / 12)
    assert s["worst_class"] == {"index": 1, "name": "dog", "accuracy": 0.25}  # tie -> lowest index
    assert s["best_class"] == {"index": 0, "name": "cat", "accuracy": 0.5}
    assert s["gap"] == pytest.approx(0.25)
    mean = (0.5 + 0.25 + 0.25) / 3
    population_std = math.sqrt(((0.5 - mean) ** 2 + 2 * (0.25 - mean) ** 2) / 3)  # ddof = 0
    assert s["nsd"] == pytest.approx(population_std / mean)
    assert s["nsd"] == pytest.approx(math.sqrt(2) / 4)
    assert s["mean_class_accuracy"] == pytest.approx(mean)
    assert s["classes_absent"] == []


def test_summarize_unequal_counts_and_absent_class() -> None:
    labels = torch.tensor([2, 0, 2, 0, 0, 2, 2, 2])  # class 1 ('b') and class 3 ('d') absent
    correct = torch.tensor([1, 1, 1, 0, 1, 0, 1, 1], dtype=torch.bool)
    s = summarize(correct, labels, ("a", "b", "c", "d")).to_dict()
    assert s["per_class"] == [pytest.approx(2 / 3), None, pytest.approx(4 / 5), None]
    assert s["class_counts"] == [3, 0, 5, 0] and s["classes_absent"] == ["b", "d"]
    assert s["ci95"][1] is None and s["ci95"][3] is None
    assert s["worst_class"]["name"] == "a" and s["best_class"]["name"] == "c"
    weighted = sum(a * n for a, n in zip(s["per_class"], s["class_counts"]) if a is not None) / s["n"]
    assert weighted == pytest.approx(s["accuracy"]) and s["accuracy"] == pytest.approx(6 / 8)
    assert s["mean_class_accuracy"] == pytest.approx((2 / 3 + 4 / 5) / 2)  # unweighted, present classes only
    vals = [2 / 3, 4 / 5]
    m = sum(vals) / 2
    assert s["nsd"] == pytest.approx(math.sqrt(sum((v - m) ** 2 for v in vals) / 2) / m)


def test_summarize_all_wrong_and_empty() -> None:
    s = summarize(torch.zeros(4, dtype=torch.bool), torch.tensor([0, 1, 1, 0]), ("x", "y")).to_dict()
    assert s["accuracy"] == 0 and s["nsd"] is None and s["gap"] == 0 and s["worst_class"]["index"] == 0
    empty = summarize(torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.long), ("x", "y")).to_dict()
    assert empty["n"] == 0 and empty["accuracy"] is None and empty["worst_class"]["index"] is None
    assert empty["classes_absent"] == ["x", "y"]


def test_nsd_and_wilson() -> None:
    assert nsd([]) is None and nsd([0.0, 0.0]) is None and nsd([0.4, 0.4]) == 0
    lo, hi = wilson_interval(0, 10)
    assert lo == 0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert wilson_interval(0, 0) is None


@settings(max_examples=40, deadline=None, database=None, derandomize=True)
@given(data=st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=1, max_size=60))
def test_summarize_invariants(data) -> None:
    labels = torch.tensor([d[0] for d in data])
    correct = torch.tensor([d[1] for d in data])
    s = summarize(correct, labels, tuple("abcde")).to_dict()
    assert sum(s["class_counts"]) == s["n"] == len(data)
    assert sum(s["class_correct"]) == s["n_correct"] == int(correct.sum())
    weighted = sum(a * n for a, n in zip(s["per_class"], s["class_counts"]) if a is not None) / s["n"]
    assert weighted == pytest.approx(s["accuracy"])
    present = [a for a in s["per_class"] if a is not None]
    assert s["worst_class"]["accuracy"] == min(present)
    assert s["per_class"].index(min(present)) == s["worst_class"]["index"]
    for (lo, hi), a in ((ci, a) for ci, a in zip(s["ci95"], s["per_class"]) if a is not None):
        assert lo - 1e-12 <= a <= hi + 1e-12


def test_attack_names() -> None:
    assert attack_names("pgd") == ["clean", "pgd"]
    assert attack_names("AA, cw-inf ,fgsm") == ["clean", "fgsm", "cw", "aa"]
    assert attack_names("all") == ["clean", "fgsm", "pgd", "cw", "aa"]
    with pytest.raises(UsageError, match="did you mean 'pgd'"):
        attack_names("clean,pgdd")


def test_report_round_trip_and_markdown(tmp_path: Path) -> None:
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    correct = {"clean": torch.tensor([1, 1, 1, 1, 0, 1], dtype=torch.bool),
               "pgd": torch.tensor([1, 0, 1, 0, 0, 0], dtype=torch.bool)}
    result = EvaluationResult("m", "digits", "test", ("zero", "one", "two"), labels, correct,
                              eval_settings(8 / 255, pgd_steps=5), model_info={"arch": "tiny_cnn"})
    report = result.to_dict()
    assert report["per_sample"]["correct"] == {"clean": "111101", "pgd": "101000"}
    assert report["settings"]["eps_text"] == "8/255" and report["settings"]["attacks"]["pgd"]["parameters"]["steps"] == 5
    json_path, md_path = write_evaluation(result, tmp_path / "out")
    again = EvaluationResult.from_dict(json.loads(json_path.read_text()))
    assert torch.equal(again.labels, labels) and all(torch.equal(again.correct[a], correct[a]) for a in correct)
    assert again.attack("pgd").steps == 5 and again.model_info == {"arch": "tiny_cnn"}
    md = md_path.read_text()
    assert md == evaluation_document(result)
    assert md.splitlines()[0] == "# Robustness of m on digits (test split, n = 6, L∞ eps 8/255)"
    assert "| PGD-5 | 33.33 | 0.00 | one |" in md
    assert "| two | 2 | 100.0 | 50.0 |" in md
    assert "population std" in md


# --------------------------------------------------------------------------- end to end
def expected_files(root: Path) -> list[str]:
    """The documented evaluation order of an image folder, re-derived independently: class folders
    sorted, files sorted within a class, then one fixed permutation (numpy default_rng(0))."""
    files = []
    for cls in sorted(p.name for p in root.iterdir() if p.is_dir()):
        files += sorted(str(p) for p in (root / cls).iterdir() if p.suffix == ".png")
    return [files[i] for i in np.random.default_rng(0).permutation(len(files))]


def hand_check(report: dict, image_folder: Path, network: torch.nn.Module, helpers) -> None:
    names = list(helpers.CIFAR10_CLASSES)
    files = expected_files(image_folder)[:N_EVAL]
    labels = [names.index(Path(f).parent.name) for f in files]
    x = helpers.load_folder_images(image_folder, files)
    with torch.no_grad():
        preds = network.eval()(x).argmax(1).tolist()
    hits = [int(p == t) for p, t in zip(preds, labels)]

    assert report["data"]["class_names"] == names and report["data"]["n_examples"] == N_EVAL
    assert report["data"]["split"] == "all" and report["data"]["dataset"] == "imagefolder"
    assert report["per_sample"]["labels"] == labels
    assert report["per_sample"]["correct"]["clean"] == "".join(map(str, hits))
    counts = [labels.count(c) for c in range(10)]
    per_class = [sum(h for h, t in zip(hits, labels) if t == c) / counts[c] if counts[c] else None for c in range(10)]
    clean = report["results"]["clean"]
    assert clean["class_counts"] == counts and report["data"]["class_counts"] == counts
    assert clean["per_class"] == pytest.approx(per_class)
    assert clean["accuracy"] == pytest.approx(sum(hits) / N_EVAL)
    present = [(a, c) for c, a in enumerate(per_class) if a is not None]
    worst = min(present)
    assert clean["worst_class"]["name"] == names[worst[1]] and clean["worst_class"]["accuracy"] == pytest.approx(worst[0])

    if "pgd" in report["results"]:
        bits = [int(b) for b in report["per_sample"]["correct"]["pgd"]]
        assert all(b <= h for b, h in zip(bits, hits))  # robust implies clean-correct
        pgd_class = [sum(b for b, t in zip(bits, labels) if t == c) / counts[c] if counts[c] else None for c in range(10)]
        assert report["results"]["pgd"]["per_class"] == pytest.approx(pgd_class)
        assert report["results"]["pgd"]["n_correct"] == sum(bits)
        assert report["settings"]["attacks"]["pgd"]["parameters"]["steps"] == 2
        assert report["settings"]["eps_text"] == "8/255"


def _read_outputs(out: Path) -> dict:
    assert (out / "report.md").is_file()
    md = (out / "report.md").read_text()
    assert "Per-class accuracy" in md and "airplane" in md
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def cli_report(tmp_path_factory, model_test_pt: Path, image_folder: Path) -> dict:
    from typer.testing import CliRunner

    from robustdistill.cli import app

    out = tmp_path_factory.mktemp("eval-cli") / "run"
    result = CliRunner().invoke(app, [
        "evaluate", str(model_test_pt), "--arch", "resnet18", "--dataset", "imagefolder", "--data-dir", str(image_folder),
        "--attacks", "clean,pgd", "-n", str(N_EVAL), "--pgd-steps", "2", "--batch-size", "16", "--device", "cpu",
        "--eps", "8/255",  # a plain checkpoint records no training budget
        "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    assert "PGD-2" in result.stdout and "worst class" in result.stdout
    assert "report.json" in result.stderr
    return _read_outputs(out)


def test_evaluate_cli_checkpoint_by_hand(cli_report: dict, image_folder: Path, reference_resnet, helpers) -> None:
    hand_check(cli_report, image_folder, reference_resnet, helpers)
    assert cli_report["model"]["arch"] == "resnet18" and cli_report["model"]["sha256"]
    assert cli_report["schema"] == "robustdistill/evaluation@2"


@pytest.mark.slow
def test_evaluate_subprocess_matches_in_process(cli_report: dict, tmp_path: Path, model_test_pt: Path,
                                                image_folder: Path, helpers) -> None:
    out = tmp_path / "run"
    proc = helpers.run_module(
        "evaluate", model_test_pt, "--arch", "resnet18", "--dataset", "imagefolder", "--data-dir", image_folder,
        "--attacks", "clean,pgd", "-n", N_EVAL, "--pgd-steps", "2", "--batch-size", "16", "--device", "cpu", "--out", out,
        "--eps", "8/255",
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    report = _read_outputs(out)
    # Same data, same seed: identical per-sample results, bit for bit.
    assert report["per_sample"] == cli_report["per_sample"]
    assert report["results"] == cli_report["results"]


@pytest.mark.slow
def test_evaluate_robustbench_by_hand(tmp_path: Path, robustbench_cache: Path, image_folder: Path, reference_resnet,
                                      helpers, cli, no_network) -> None:
    out = tmp_path / "rb"
    result = cli("evaluate", f"robustbench:{helpers.ROBUSTBENCH_NAME}", "--model-dir", robustbench_cache,
                 "--dataset", "imagefolder", "--data-dir", image_folder, "--attacks", "clean,pgd", "-n", N_EVAL,
                 "--pgd-steps", "2", "--batch-size", "24", "--device", "cpu", "--out", out)
    assert result.exit_code == 0, result.output
    report = _read_outputs(out)
    hand_check(report, image_folder, reference_resnet, helpers)  # same weights, no normalisation: same predictions
    assert report["model"]["arch"] == f"robustbench:{helpers.ROBUSTBENCH_NAME}@cifar10/Linf"


@pytest.fixture(scope="module")
def digits_student(tmp_path_factory) -> Path:
    from robustdistill.data import load_dataset
    from robustdistill.models import build_student, save_classifier

    torch.manual_seed(0)
    splits = load_dataset("digits")
    model = build_student("tiny_cnn", splits.info.hint())
    path = tmp_path_factory.mktemp("student") / "student.safetensors"
    return save_classifier(model, path, config={"dataset": "digits", "eps": "4/255", "method": "ard"})


def test_evaluate_safetensors_needs_no_arch_or_dataset(digits_student: Path, tmp_path: Path, cli) -> None:
    from robustdistill.models import load_model

    result = cli("evaluate", digits_student, "-n", 20, "--attacks", "clean,fgsm", "--device", "cpu", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["data"]["dataset"] == "digits" and report["data"]["split"] == "test"
    assert report["settings"]["eps_text"] == "4/255"  # the budget recorded in the model file
    assert report["data"]["class_names"] == [str(d) for d in range(10)]
    # The clean bits are those of the file's own model on the first 20 test digits.
    from robustdistill.data import load_dataset

    test = load_dataset("digits").test
    with torch.no_grad():
        hits = load_model(str(digits_student))(test.images[:20]).argmax(1).eq(test.labels[:20])
    assert report["per_sample"]["correct"]["clean"] == "".join("1" if h else "0" for h in hits.tolist())


def test_evaluate_safetensors_without_recorded_dataset(tmp_path: Path, cli, helpers) -> None:
    from robustdistill.models import DataHint, build_student, save_classifier

    path = save_classifier(build_student("tiny_cnn", DataHint(10, (1, 8, 8))), tmp_path / "bare.safetensors")
    result = cli("evaluate", path, "-n", 4)
    assert result.exit_code == 1
    helpers.assert_one_line_error(result.stderr, "--dataset")


def test_evaluate_api_returns_per_sample_results(digits_student: Path) -> None:
    import robustdistill

    result = robustdistill.evaluate(str(digits_student), attacks="clean,pgd", eps="2/255", n_examples=12,
                                    pgd_steps=2, device="cpu")
    assert result.n_examples == 12 and set(result.correct) == {"clean", "pgd"}
    assert result.settings.eps == pytest.approx(2 / 255)
    assert result.attack("pgd").parameters(result.settings.eps)["step_size"] == pytest.approx(0.5 / 255)
    assert not (result.correct["pgd"] & ~result.correct["clean"]).any()
