"""fairness-report: exact numbers on a hand-computed case, refusals, report loading, files and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from robustdistill import fairness, render, reports
from robustdistill.cli import app
from robustdistill.errors import UsageError
from robustdistill.evaluation import EvaluationResult, eval_settings
from robustdistill.fairness import AttackComparison, Comparison
from robustdistill.metrics import AttackSummary, headline_attack

CLASSES = ("airplane", "cat", "dog", "ship")
PER_CLASS = 10
# Interleaved labels (0,1,2,3,0,1,...) so that per-class bookkeeping cannot rely on sorted order.
LABELS = torch.arange(len(CLASSES)).repeat(PER_CLASS)

# Correct samples per class (out of 10). Robust hits never exceed clean hits.
TEACHER = {"clean": [10, 9, 9, 10], "pgd": [8, 4, 6, 8]}
STUDENT = {"clean": [10, 8, 9, 10], "pgd": [7, 2, 5, 8]}
FLAT = {"clean": [9, 9, 9, 9], "pgd": [5, 5, 5, 5]}


def correct_vector(hits: list[int], labels: torch.Tensor = LABELS) -> torch.Tensor:
    """The first ``hits[c]`` samples of class ``c`` (in dataset order) are correct."""
    out = torch.zeros(labels.numel(), dtype=torch.bool)
    for c, k in enumerate(hits):
        out[(labels == c).nonzero().flatten()[:k]] = True
    return out


def make_result(name: str, hits: dict[str, list[int]], *, dataset: str = "toy", eps: float = 8 / 255,
                classes: tuple[str, ...] = CLASSES, labels: torch.Tensor = LABELS, split: str = "test",
                **setting_changes: object) -> EvaluationResult:
    correct = {a: correct_vector(h, labels) for a, h in hits.items()}
    for attack in correct:  # robust only if also clean-correct, as evaluate_model guarantees
        if attack != "clean" and "clean" in correct:
            correct[attack] &= correct["clean"]
    return EvaluationResult(name, dataset, split, classes, labels.clone(), correct,
                            eval_settings(eps, **setting_changes), model_info={"arch": "toy"})  # type: ignore[arg-type]


@pytest.fixture
def teacher() -> EvaluationResult:
    return make_result("teacher.safetensors", TEACHER)


@pytest.fixture
def student() -> EvaluationResult:
    return make_result("student.safetensors", STUDENT)


@pytest.fixture
def comparison(teacher: EvaluationResult, student: EvaluationResult) -> Comparison:
    return fairness.compare([("teacher", teacher), ("student", student)])


def pgd_of(comparison: Comparison, label: str) -> AttackSummary:
    return comparison.model(label).results["pgd"]


def student_pgd(comparison: Comparison, label: str = "student") -> AttackComparison:
    return comparison.student(label).attacks["pgd"]


def by_hand_nsd(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values)) / mean


# --------------------------------------------------------------------------- exact numbers
def test_per_model_numbers_match_hand_computation(comparison: Comparison) -> None:
    t, s = pgd_of(comparison, "teacher"), pgd_of(comparison, "student")
    assert t.per_class == pytest.approx([0.8, 0.4, 0.6, 0.8])
    assert s.per_class == pytest.approx([0.7, 0.2, 0.5, 0.8])
    assert t.accuracy == pytest.approx(26 / 40) and s.accuracy == pytest.approx(22 / 40)
    assert (t.worst_class.name, t.worst_class.accuracy) == ("cat", pytest.approx(0.4))
    assert (s.worst_class.name, s.worst_class.accuracy) == ("cat", pytest.approx(0.2))
    assert t.best_class.name == "airplane"  # tie with ship at 0.8: lowest index wins
    assert t.gap == pytest.approx(0.4) and s.gap == pytest.approx(0.6)
    # NSD = population std / mean: teacher sqrt(0.0275)/0.65, student sqrt(0.0525)/0.55
    assert t.nsd == pytest.approx(math.sqrt(0.0275) / 0.65) == pytest.approx(by_hand_nsd([0.8, 0.4, 0.6, 0.8]))
    assert s.nsd == pytest.approx(math.sqrt(0.0525) / 0.55)


def test_student_vs_reference_numbers(comparison: Comparison) -> None:
    c = student_pgd(comparison)
    assert c.inherited_average == pytest.approx(0.55 / 0.65)
    assert c.inherited_worst == pytest.approx(0.5)
    assert c.student_on_reference_worst == pytest.approx(0.2)
    assert c.per_class_delta == pytest.approx([-0.1, -0.2, -0.1, 0.0])
    assert c.accuracy.delta == pytest.approx(-0.1)
    # Pearson by hand: sxy = 0.15, sxx = 0.11, syy = 0.21; and numpy agrees.
    assert c.pearson == pytest.approx(0.15 / math.sqrt(0.11 * 0.21))
    assert c.pearson == pytest.approx(np.corrcoef([0.8, 0.4, 0.6, 0.8], [0.7, 0.2, 0.5, 0.8])[0, 1])
    # Spearman: average ranks (3.5, 1, 2, 3.5) vs (3, 1, 2, 4) -> 4.5 / sqrt(4.5 * 5)
    assert c.spearman == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    # Losses (0.1, 0.2, 0.1, 0.0) vs average 0.1: only cat lost *more*; the exact ties do not count.
    assert c.average_loss == pytest.approx(0.1)
    assert c.classes_losing_more.to_dict() == {"count": 1, "of": 4, "names": ["cat"]}
    assert c.nsd.delta == pytest.approx(math.sqrt(0.0525) / 0.55 - math.sqrt(0.0275) / 0.65)
    assert c.gap.delta == pytest.approx(0.2)


def test_verdict_names_worst_class_and_right_percentages(comparison: Comparison) -> None:
    text = render.attack_verdict(comparison, "student", "pgd")
    assert text.startswith("student keeps 85% of teacher's average PGD-20 robustness (55.0% vs 65.0%)")
    assert "but only 50% on its worst class, cat (20.0% vs 40.0%)" in text
    assert "Pearson r = 0.99 (Spearman 0.95)" in text
    assert "1 of 4 classes lost more than the average 10.0 points" in text
    assert "NSD 0.417 vs 0.255 (less even)" in text
    assert comparison.headline_attack == "pgd"
    data = render.comparison_json(comparison)
    assert data["comparisons"][0]["verdict"] == text == render.verdicts(comparison)[0]
    clean = data["comparisons"][0]["attacks"]["clean"]["verdict"]
    assert clean.startswith("student keeps 97% of teacher's average clean accuracy (92.5% vs 95.0%) "
                            "but only 89% on its worst class, cat (80.0% vs 90.0%).")


def test_zero_variance_gives_no_correlation(teacher: EvaluationResult) -> None:
    comp = fairness.compare([("teacher", teacher), ("flat", make_result("flat", FLAT))])
    c = student_pgd(comp, "flat")
    assert c.pearson is None and c.spearman is None
    text = render.attack_verdict(comp, "flat", "pgd")
    assert "Pearson r = n/a" in text
    # flat's worst class (airplane: ties go to the lowest index) differs from the teacher's (cat).
    assert "its worst class, airplane (50.0% vs 40.0% on teacher's worst class, cat)" in text
    assert "reaches 125% on" not in text and "and 125% on its worst class" in text


def test_headline_attack_preference() -> None:
    assert headline_attack({"clean": 0.9, "pgd": 0.5, "aa": 0.4}) == "aa"
    assert headline_attack({"clean": 0.9, "fgsm": 0.3, "pgd": 0.5}) == "pgd"
    assert headline_attack({"clean": 0.9, "fgsm": 0.6, "cw": 0.4}) == "cw"
    assert headline_attack({"clean": 0.9}) == "clean"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10), st.integers(0, 10)), min_size=2, max_size=12))
def test_correlations_agree_with_numpy(pairs: list[tuple[int, int]]) -> None:
    xs, ys = [a / 10 for a, _ in pairs], [b / 10 for _, b in pairs]
    if len(set(xs)) < 2 or len(set(ys)) < 2:
        assert fairness.pearson(xs, ys) is None
        return
    assert fairness.pearson(xs, ys) == pytest.approx(np.corrcoef(xs, ys)[0, 1], abs=1e-9)
    rx, ry = fairness.average_ranks(xs), fairness.average_ranks(ys)
    assert sorted(rx) == pytest.approx(sorted(fairness.average_ranks(sorted(xs))))
    assert sum(rx) == pytest.approx(len(xs) * (len(xs) + 1) / 2)
    assert fairness.spearman(xs, ys) == pytest.approx(np.corrcoef(rx, ry)[0, 1], abs=1e-9)


# --------------------------------------------------------------------------- refusals
def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("other, expected", [
    (lambda: make_result("s", STUDENT, dataset="cifar10"), ["dataset", "toy", "cifar10"]),
    (lambda: make_result("s", STUDENT, eps=4 / 255), ["eps", "8/255", "4/255"]),
    (lambda: make_result("s", STUDENT, split="val"), ["split", "test", "val"]),
    (lambda: make_result("s", {k: v + [3] for k, v in STUDENT.items()}, classes=CLASSES + ("truck",)),
     ["number of classes", "4", "5"]),
    (lambda: make_result("s", {"clean": [9, 8, 9, 9], "pgd": [6, 2, 5, 7]}, labels=LABELS[:36]),
     ["n_examples", "40", "36"]),
    (lambda: make_result("s", STUDENT, classes=("airplane", "kitten", "dog", "ship")), ["class name 1", "cat", "kitten"]),
    (lambda: make_result("s", STUDENT, labels=LABELS.flip(0)), ["label of example 0", "0", "3"]),
    (lambda: make_result("s", STUDENT, pgd_steps=10), ["pgd steps", "20", "10"]),
    (lambda: make_result("s", {**STUDENT, "aa": [5, 1, 4, 6]}), ["set of attacks", "--attacks clean,pgd"]),
])
def test_mismatches_are_refused_in_one_line(teacher: EvaluationResult, other, expected: list[str]) -> None:
    with pytest.raises(UsageError) as exc:
        fairness.compare([("teacher", teacher), ("student", other())])
    message = _one_line(exc)
    assert message.startswith("cannot compare student with teacher")
    for part in expected:
        assert part in message


def test_attacks_restricted_to_a_common_subset(teacher: EvaluationResult) -> None:
    other = make_result("s", {**STUDENT, "aa": [5, 1, 4, 6]})
    comp = fairness.compare([("teacher", teacher), ("student", other)], attacks=["clean", "pgd"])
    assert list(comp.settings.attacks) == ["clean", "pgd"] == comp.attacks
    with pytest.raises(UsageError) as exc:
        fairness.compare([("teacher", teacher), ("student", other)], attacks=["aa"])
    assert "teacher has no aa results" in _one_line(exc)


def test_needs_two_models_with_distinct_labels(teacher: EvaluationResult, student: EvaluationResult) -> None:
    with pytest.raises(UsageError, match="at least two models"):
        fairness.compare([("teacher", teacher)])
    with pytest.raises(UsageError, match="labelled 'm'"):
        fairness.compare([("m", teacher), ("m", student)])


# --------------------------------------------------------------------------- report.json loading
def _normalised(comparison: Comparison) -> dict:
    data = json.loads(json.dumps(render.comparison_json(comparison)))
    data.pop("created")
    data.pop("versions")
    return data


def write_report(path: Path, result: EvaluationResult) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_dict()))
    return path


def test_report_round_trip_gives_the_same_comparison(tmp_path: Path, teacher, student, comparison) -> None:
    t = reports.load_entry(str(write_report(tmp_path / "t" / "report.json", teacher)))
    s = reports.load_entry(str(write_report(tmp_path / "s" / "report.json", student).parent))  # a run directory
    again = fairness.compare([("teacher", t), ("student", s)])
    assert _normalised(again) == _normalised(comparison)


def test_distill_report_selectors(tmp_path: Path, teacher, student) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(json.dumps(
        {"schema": "robustdistill/distill@1", "teacher": teacher.to_dict(), "student": student.to_dict()}))
    picked = {
        "teacher": reports.load_entry(f"{run}/report.json#teacher"),
        "student": reports.load_entry(f"{run}/report.json#student"),
        "default": reports.load_entry(f"{run}/report.json"),
        "dir": reports.load_entry(str(run)),
        "dir#teacher": reports.load_entry(f"{run}#teacher"),
    }
    assert picked["teacher"].model_id == picked["dir#teacher"].model_id == "teacher.safetensors"
    assert {picked[k].model_id for k in ("student", "default", "dir")} == {"student.safetensors"}
    assert torch.equal(picked["teacher"].correct["pgd"], teacher.correct["pgd"])
    with pytest.raises(UsageError, match="#student or #teacher"):
        reports.load_entry(f"{run}/report.json#coach")
    plain = write_report(tmp_path / "eval" / "report.json", teacher)
    with pytest.raises(UsageError, match="only applies to a distill report"):
        reports.load_entry(f"{plain}#teacher")


@pytest.mark.parametrize("requested, expected", [
    (reports.Requested(eps=4 / 255), "eps=8/255, not --eps 4/255; re-run without --eps"),
    (reports.Requested(dataset="cifar10"), "evaluated on toy, not --dataset cifar10"),
    (reports.Requested(n_examples=20), "holds 40 examples, not --n-examples 20"),
    (reports.Requested(attacks=("clean", "aa")), "has no aa results (it has clean, pgd); drop aa from --attacks"),
])
def test_report_settings_must_match_the_request(tmp_path: Path, teacher, requested, expected: str) -> None:
    path = write_report(tmp_path / "report.json", teacher)
    with pytest.raises(UsageError) as exc:
        reports.load_entry(str(path), requested)
    assert expected in _one_line(exc)


def test_report_restricted_to_requested_attacks(tmp_path: Path, teacher) -> None:
    path = write_report(tmp_path / "report.json", teacher)
    result = reports.load_entry(str(path), reports.Requested(attacks=("clean",), eps=8 / 255, dataset="toy", n_examples=40))
    assert list(result.correct) == ["clean"]


def test_unreadable_or_foreign_reports(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        reports.load_entry(str(tmp_path / "missing.json"))
    (tmp_path / "other.json").write_text('{"schema": "something/else@1"}')
    with pytest.raises(UsageError, match="not a robustdistill report.json"):
        reports.load_entry(str(tmp_path / "other.json"))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(UsageError, match="not a readable report.json"):
        reports.load_entry(str(tmp_path / "broken.json"))
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(UsageError, match="without report.json"):
        reports.load_entry(str(tmp_path / "empty_run"))


# --------------------------------------------------------------------------- files
def check_png(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
    assert 800 <= width <= 2000, (path.name, width)
    assert 300 <= height <= 2000, (path.name, height)
    return width, height


def test_write_outputs(tmp_path: Path, teacher, student) -> None:
    comp = fairness.compare([("teacher", teacher), ("student", student), ("flat", make_result("flat", FLAT))])
    paths = render.write_fairness(comp, tmp_path / "out")
    names = {p.name for p in paths}
    assert {"fairness.json", "fairness.md", "per_class_pgd.png", "scatter_pgd.png", "delta_pgd.png",
            "per_class_clean.png"} <= names
    assert all(p.exists() for p in paths)
    data = json.loads((tmp_path / "out" / "fairness.json").read_text())
    assert data["schema"] == "robustdistill/fairness@1"
    assert data["reference"] == "teacher" and [c["label"] for c in data["comparisons"]] == ["student", "flat"]
    assert data["comparisons"][1]["attacks"]["pgd"]["pearson"] is None
    md = (tmp_path / "out" / "fairness.md").read_text()
    assert "|---|" in md and "| cat | 10 | 40.0 | 20.0 | 50.0 | -20.0 | +10.0 |" in md
    assert "but only 50% on its worst class, cat" in md and "![per_class_pgd](per_class_pgd.png)" in md
    for path in paths:
        if path.suffix == ".png":
            check_png(path)
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left behind


def test_plots_stay_readable_with_100_classes(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(100).repeat(4)
    names = tuple(f"class{i}" for i in range(100))

    def random_result(name: str) -> EvaluationResult:
        clean = torch.rand(400, generator=g) < 0.9
        return EvaluationResult(name, "toy100", "test", names, labels, {"clean": clean}, eval_settings(8 / 255))

    comp = fairness.compare([("teacher", random_result("t")), ("student", random_result("s"))])
    for path in render.comparison_plots(comp, tmp_path):
        width, _ = check_png(path)
        if path.name.startswith(("per_class", "delta")):
            assert width == 2000  # capped, not 100 x bar width
    table_md = render.fairness_markdown(comp)
    assert "| class99 |" in table_md  # the headline attack keeps its per-class table


def test_summary_table_renders_in_80_columns(comparison: Comparison) -> None:
    from rich.console import Console

    console = Console(width=80, record=True)
    console.print(render.summary_table(comparison))
    text = console.export_text()
    assert "PGD-20" in text and "student" in text and "85%" in text and "50%" in text and "0.99" in text
    assert max(len(line) for line in text.splitlines()) <= 80


# --------------------------------------------------------------------------- CLI
def test_cli_with_two_reports(tmp_path: Path, teacher, student) -> None:
    t = write_report(tmp_path / "t" / "report.json", teacher)
    s = write_report(tmp_path / "s" / "report.json", student)
    out = tmp_path / "fr"
    result = CliRunner().invoke(app, ["fairness-report", str(t), str(s), "--out", str(out), "--labels", "teacher,student"])
    assert result.exit_code == 0, result.output
    assert "Robust fairness vs teacher" in result.stdout
    assert "student keeps 85% of teacher's average PGD-20 robustness" in result.stdout.replace("\n", " ")
    assert "wrote" in result.stderr and "fairness.json" in result.stderr
    assert json.loads((out / "fairness.json").read_text())["schema"] == "robustdistill/fairness@1"
    assert (out / "fairness.md").exists() and (out / "scatter_pgd.png").exists()


@pytest.mark.parametrize("args, expected", [
    (["--eps", "4/255"], "--eps"),
    (["--labels", "only-one"], "--labels gives 1 names for 2 models"),
    ([], "cannot compare student with teacher: eps differs (teacher: 8/255, student: 4/255)"),
])
def test_cli_mismatch_is_one_error_line(tmp_path: Path, teacher, args: list[str], expected: str) -> None:
    t = write_report(tmp_path / "t" / "report.json", teacher)
    s = write_report(tmp_path / "s" / "report.json", make_result("student.safetensors", STUDENT, eps=4 / 255))
    result = CliRunner().invoke(app, ["fairness-report", str(t), str(s), "--out", str(tmp_path / "fr"), *args])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "fr").exists()


def test_cli_end_to_end_on_digits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, teacher) -> None:
    """Two tiny untrained students evaluated for real (plumbing, not accuracy), then reused from report.json."""
    from robustdistill.data import load_dataset
    from robustdistill.models import build_student, save_classifier

    monkeypatch.setenv("ROBUSTDISTILL_NO_PROGRESS", "1")
    hint = load_dataset("digits").info.hint()
    torch.manual_seed(0)
    save_classifier(build_student("small_cnn", hint), tmp_path / "teacher.safetensors", config={"eps": "8/255"})
    save_classifier(build_student("small_cnn", hint), tmp_path / "student.safetensors", config={"eps": "8/255"})
    out = tmp_path / "fr"
    args = ["fairness-report", str(tmp_path / "teacher.safetensors"), str(tmp_path / "student.safetensors"),
            "--dataset", "digits", "-n", "40", "--attacks", "clean,pgd", "--out", str(out), "--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "fairness.json").read_text())
    assert data["data"]["dataset"] == "digits" and data["data"]["n_examples"] == 40
    assert [m["label"] for m in data["models"]] == ["teacher", "student"]
    assert sorted(p.name for p in out.glob("*.png")) == sorted(
        f"{kind}_{a}.png" for kind in ("per_class", "scatter", "delta") for a in ("clean", "pgd"))
    # A stored report on other data is refused before anything is evaluated.
    toy = write_report(tmp_path / "toy" / "report.json", teacher)
    result = CliRunner().invoke(app, ["fairness-report", str(toy), str(tmp_path / "student.safetensors"), "--dataset", "digits"])
    assert result.exit_code == 1 and result.stderr.startswith("error:") and "not --dataset digits" in result.stderr
