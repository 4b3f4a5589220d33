"""robustdistill.render and the paired statistics: first lines, intervals, provenance, plots, noise wording.

Hand-computed references: the exact McNemar p-value is 2 * sum_{k <= min(b, c)} C(b + c, k) / 2^(b + c);
Newcombe's paired interval is checked against the published example of Fagerland, Lydersen & Laake
(Statistical Analysis of Contingency Tables, ch. 8: Cavo et al. 2012, 59/6/16/80 -> -0.0621,
95 % CI -0.1186 to -0.0046 for the first minus the second proportion).
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path

import pytest
import torch
from PIL import Image

from robustdistill import fairness, render
from robustdistill.evaluation import EvalSettings, EvaluationResult
from robustdistill.fairness import Comparison
from robustdistill.metrics import (AttackSummary, newcombe_paired_interval, paired_test, spread_change_interval, summarize,
                                   wilson_interval)
from robustdistill.render import RunHeader

CLASSES = ("airplane", "cat", "dog", "ship")
LABELS = torch.arange(4).repeat(10)  # 40 examples, 10 per class, interleaved


def flags(hits: list[int], labels: torch.Tensor = LABELS) -> torch.Tensor:
    """The first ``hits[c]`` examples of class ``c`` are correct."""
    out = torch.zeros(labels.numel(), dtype=torch.bool)
    for c, k in enumerate(hits):
        out[(labels == c).nonzero().flatten()[:k]] = True
    return out


def result(name: str, correct: dict[str, torch.Tensor], *, labels: torch.Tensor = LABELS, classes=CLASSES,
           dataset: str = "toy", eps: float = 8 / 255, info: dict | None = None,
           provenance: dict | None = None) -> EvaluationResult:
    fixed = dict(correct)
    for attack in fixed:
        if attack != "clean":
            fixed[attack] = fixed[attack] & fixed["clean"]
    return EvaluationResult(name, dataset, "test", classes, labels.clone(), fixed, EvalSettings(eps=eps),
                            model_info=dict(info or {"arch": "toy"}), provenance=dict(provenance or {}))


@pytest.fixture
def teacher() -> EvaluationResult:
    return result("teacher.safetensors", {"clean": flags([10, 9, 9, 10]), "pgd": flags([8, 4, 6, 8])})


@pytest.fixture
def student() -> EvaluationResult:
    return result("student.safetensors", {"clean": flags([10, 8, 9, 10]), "pgd": flags([7, 2, 5, 8])})


@pytest.fixture
def comparison(teacher, student) -> Comparison:
    return fairness.compare([("teacher", teacher), ("student", student)])


# --------------------------------------------------------------------------- statistics by hand
def test_mcnemar_p_value_against_hand_computation() -> None:
    ref = torch.tensor([1] * 59 + [1] * 6 + [0] * 16 + [0] * 80, dtype=torch.bool)
    stu = torch.tensor([1] * 59 + [0] * 6 + [1] * 16 + [0] * 80, dtype=torch.bool)
    test = paired_test(ref, stu)
    assert (test.both, test.reference_only, test.student_only, test.neither, test.n) == (59, 6, 16, 80, 161)
    by_hand = 2 * sum(math.comb(22, k) for k in range(7)) / 2 ** 22
    assert test.p_value == pytest.approx(by_hand, rel=1e-12) and by_hand == pytest.approx(0.052479, abs=1e-6)
    assert test.delta == pytest.approx(10 / 161)
    # Published: first - second = -0.0621 (-0.1186 to -0.0046); ours is student - reference, the mirror image.
    lo, hi = test.ci95
    assert (round(lo, 4), round(hi, 4)) == (0.0046, 0.1186)
    assert newcombe_paired_interval(59, 16, 6, 80) == pytest.approx((-hi, -lo))
    assert not test.significant() and paired_test(ref, ref).p_value == 1.0


@pytest.mark.parametrize("b, c", [(0, 5), (3, 9), (12, 4), (1, 0), (7, 7)])
def test_mcnemar_small_tables(b: int, c: int) -> None:
    ref = torch.tensor([1] * b + [0] * c + [1, 1, 0], dtype=torch.bool)
    stu = torch.tensor([0] * b + [1] * c + [1, 1, 0], dtype=torch.bool)
    n = b + c
    expected = min(1.0, 2 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n)
    assert paired_test(ref, stu).p_value == pytest.approx(expected, rel=1e-12)


def test_bootstrap_interval_is_seeded_and_covers_the_observed_change(teacher, student) -> None:
    a = spread_change_interval(teacher.correct["pgd"], student.correct["pgd"], LABELS, 4)
    b = spread_change_interval(teacher.correct["pgd"], student.correct["pgd"], LABELS, 4)
    assert a == b
    observed = student.summary("pgd").nsd - teacher.summary("pgd").nsd
    assert a["nsd"][0] <= observed <= a["nsd"][1]
    assert spread_change_interval(teacher.correct["pgd"], teacher.correct["pgd"], LABELS, 4)["gap"] == (0.0, 0.0)


# --------------------------------------------------------------------------- "within noise"
def test_one_sample_difference_reads_within_noise(teacher) -> None:
    pgd = teacher.correct["pgd"].clone()
    pgd[int(pgd.nonzero()[0])] = False  # the student misses exactly one example the teacher gets
    other = result("one-off.safetensors", {"clean": teacher.correct["clean"], "pgd": pgd})
    comp = fairness.compare([("teacher", teacher), ("one-off", other)])
    test = comp.student("one-off").attacks["pgd"].accuracy_test
    assert (test.reference_only, test.student_only, test.p_value) == (1, 0, 1.0)
    text = render.attack_verdict(comp, "one-off", "pgd")
    assert "the average change (-2.5 points) is within noise (McNemar p = 1.000" in text
    assert "significant" not in text.split("Class profile")[0]


def test_a_large_difference_reads_significant(teacher) -> None:
    weak = result("weak.safetensors", {"clean": teacher.correct["clean"], "pgd": flags([0, 0, 0, 0])})
    comp = fairness.compare([("teacher", teacher), ("weak", weak)])
    text = render.attack_verdict(comp, "weak", "pgd")
    # 26 examples lost, none gained: p = 2 / 2^26.
    assert comp.student("weak").attacks["pgd"].accuracy_test.p_value == pytest.approx(2 / 2 ** 26)
    assert "the average change (-65.0 points) is significant (McNemar p < 0.001" in text


def test_worst_class_tests_use_each_models_own_worst_class(teacher) -> None:
    flat = result("flat", {"clean": flags([9, 9, 9, 9]), "pgd": flags([5, 5, 5, 5])})
    c = fairness.compare([("teacher", teacher), ("flat", flat)]).student("flat").attacks["pgd"]
    assert (c.reference_worst_test.name, c.student_worst_test.name) == ("cat", "airplane")
    # cat: teacher 4/10, flat 5/10 on the same first examples -> one example gained.
    assert (c.reference_worst_test.test.reference_only, c.reference_worst_test.test.student_only) == (0, 1)
    assert (c.student_worst_test.test.reference_only, c.student_worst_test.test.student_only) == (3, 0)
    assert c.per_class_tests[1] == c.reference_worst_test.test


# --------------------------------------------------------------------------- typed results
def test_summary_recomputed_from_the_shipped_report_is_bit_identical() -> None:
    shipped = json.loads((resources.files("robustdistill") / "assets" / "digits.report.json").read_text())
    labels = torch.tensor(shipped["per_sample"]["labels"])
    names = shipped["data"]["class_names"]
    for attack, bits in shipped["per_sample"]["correct"].items():
        summary = summarize(torch.tensor([b == "1" for b in bits]), labels, names)
        assert json.loads(json.dumps(summary.to_dict())) == shipped["results"][attack]
        assert AttackSummary.from_dict(shipped["results"][attack]) == summary


def test_comparison_round_trips_through_fairness_json(comparison: Comparison) -> None:
    data = json.loads(json.dumps(render.comparison_json(comparison)))
    assert Comparison.from_dict(data) == comparison
    assert data["comparisons"][0]["verdict"] == render.verdicts(comparison)[0]
    pgd = data["comparisons"][0]["attacks"]["pgd"]
    assert {"accuracy_test", "worst_class_tests", "per_class_tests", "verdict"} <= set(pgd)
    assert pgd["accuracy"]["ci95"] == pgd["accuracy_test"]["ci95"]


def test_a_fairness_json_without_paired_tests_still_renders(comparison: Comparison) -> None:
    data = json.loads(json.dumps(render.comparison_json(comparison)))
    for attack in data["comparisons"][0]["attacks"].values():
        for key in ("accuracy_test", "worst_class_tests", "per_class_tests"):
            del attack[key]
    old = Comparison.from_dict(data)
    assert old.student("student").attacks["pgd"].accuracy_test is None
    text = render.verdicts(old)[0]
    assert text.startswith("student keeps 85% of teacher's average PGD-20") and "McNemar" not in text
    assert render.fairness_markdown(old).startswith("# Robust fairness: student vs teacher on toy")


# --------------------------------------------------------------------------- Markdown and tables
def test_evaluation_report_states_scope_first_with_intervals_and_no_internal_keys(tmp_path: Path, teacher) -> None:
    json_path, md_path = render.write_evaluation(teacher, tmp_path)
    md = md_path.read_text()
    assert md.splitlines()[0] == "# Robustness of teacher.safetensors on toy (test split, n = 40, L∞ eps 8/255)"
    for internal in ("eps_str", "norm=", "Linf"):
        assert internal not in md
    assert "step_size=2/255" in md
    # cat under PGD: 4 of 10 -> Wilson 16.8-68.7 %, by hand: centre 0.42776, half-width 0.25958.
    assert "| cat | 10 | 90.0 | 40.0 | 59.6–98.2 | 16.8–68.7 |" in md
    lo, hi = wilson_interval(26, 40)
    assert f"| PGD-20 | 65.00 | 40.00 | cat | 40.00 | 0.255 | {100 * lo:.1f}–{100 * hi:.1f} | 16.8–68.7 |" in md
    assert json.loads(json_path.read_text())["results"]["pgd"] == json.loads(json.dumps(teacher.summary("pgd").to_dict()))


def test_reused_evaluation_says_from_where_and_when(tmp_path: Path, teacher) -> None:
    cached = tmp_path / "cache.json"
    origin = {"source": str(cached), "computed": "2024-05-01T10:00:00Z"}
    reused = result("bundled:toy", dict(teacher.correct), provenance={"clean": origin, "pgd": origin})
    _, md_path = render.write_evaluation(reused, tmp_path / "out")
    assert f"Clean, PGD-20: reused from {cached}, computed 2024-05-01T10:00:00Z." in md_path.read_text()
    given = {"pgd": {"source": "a lab notebook", "computed": "yesterday"}}
    assert "PGD-20: reused from a lab notebook, computed yesterday." in render.evaluation_markdown(teacher, provenance=given)
    fresh = result("m", dict(teacher.correct), provenance={"clean": {"source": "computed", "computed": "now"}})
    assert "reused" not in render.evaluation_document(fresh)  # numbers computed here are not called reused


def test_fairness_markdown_first_line_and_worst_class_intervals(comparison: Comparison) -> None:
    md = render.fairness_markdown(comparison)
    assert md.splitlines()[0] == "# Robust fairness: student vs teacher on toy (test split, n = 40, L∞ eps 8/255)"
    assert "| teacher | 65.00 | " in md and "| 40.00 | 16.8–68.7 | cat |" in md  # worst class and its interval
    assert "| student | 55.00 | " in md and "| 20.00 | 5.7–51.0 | cat |" in md
    assert "eps_str" not in md and "within noise" in md


def test_run_markdown_first_line(comparison: Comparison, teacher, student) -> None:
    header = RunHeader("fair-iad", "bundled:toy", "tiny_cnn", 3, 0, "last epoch (3)")
    md = render.run_markdown(header, student, teacher, comparison)
    assert md.splitlines()[0] == ("# Distillation report: fair-iad, bundled:toy → tiny_cnn on toy "
                                  "(test split, n = 40, L∞ eps 8/255)")
    assert "## Student" in md and "## Teacher" in md and "fairness.md" in md and "eps_str" not in md
    alone = render.run_markdown(RunHeader("at", None, "small_cnn", 3, 0, "last epoch (3)"), student)
    assert alone.splitlines()[0] == ("# Distillation report: at, no teacher (adversarial training) → small_cnn on toy "
                                     "(test split, n = 40, L∞ eps 8/255)")
    assert "Teacher-free adversarial training of `small_cnn`, 3 epochs" in alone and "None" not in alone


def test_rich_titles_state_models_data_n_and_eps(comparison: Comparison, teacher) -> None:
    from rich.console import Console

    scope = "toy (test split, n = 40, L∞ eps 8/255)"
    for table in (render.evaluation_table(teacher, role="teacher"), render.per_class_table(teacher),
                  render.summary_table(comparison)):
        assert scope in str(table.title)
    assert str(render.evaluation_table(teacher, role="teacher").title).startswith("teacher: teacher.safetensors on toy")
    console = Console(width=80, record=True)
    console.print(render.summary_table(comparison))
    assert max(len(line) for line in console.export_text().splitlines()) <= 80


# --------------------------------------------------------------------------- plots
def _texts(fig) -> str:
    parts = [fig.get_suptitle()]
    for ax in fig.axes:
        parts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel(), *[t.get_text() for t in ax.texts]]
        legend = ax.get_legend()
        if legend is not None:
            parts += [t.get_text() for t in legend.get_texts()]
    return "\n".join(parts)


def test_plot_titles_axes_and_interval_legends(comparison: Comparison) -> None:
    import matplotlib.pyplot as plt

    scope = "toy (test split, n = 40, L∞ eps 8/255)"
    series = [(m.label, m.results["pgd"]) for m in comparison.models]
    figures = {
        "per_class": render.per_class_figure(series, CLASSES, title=f"Per-class PGD-20 accuracy\n{scope}", ylabel="PGD-20 (%)"),
        "scatter": render.scatter_figure(comparison, "pgd"),
        "delta": render.delta_figure(comparison, "pgd"),
    }
    for kind, fig in figures.items():
        text = _texts(fig)
        assert scope in text, kind
        for ax in fig.axes:
            if ax.axison:
                assert ax.get_xlabel() and ax.get_ylabel(), kind
        plt.close(fig)
        expected = "95 % paired interval (Newcombe)" if kind == "delta" else "95 % Wilson interval"
        assert expected in text, kind
    assert "teacher: PGD-20 accuracy (%)" in _texts(render.scatter_figure(comparison, "pgd"))
    plt.close("all")


def test_degenerate_scatter_panel_is_skipped_and_says_so(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    perfect = flags([10, 10, 10, 10])
    a = result("a", {"clean": perfect, "pgd": flags([8, 4, 6, 8])})
    b = result("b", {"clean": perfect, "pgd": flags([7, 2, 5, 8])})
    comp = fairness.compare([("teacher", a), ("student", b)])
    skips = render.scatter_skips(comp, "clean")
    assert list(skips) == ["student"] and "every class is at teacher 100.0% and student 100.0%" in skips["student"]
    assert render.scatter_skips(comp, "pgd") == {}
    fig = render.scatter_figure(comp, "clean")
    panel = fig.axes[0]
    assert not panel.axison and not panel.collections  # no points drawn ...
    assert "panel skipped" in _texts(fig)  # ... and the figure says why
    plt.close(fig)
    paths = render.write_fairness(comp, tmp_path)
    pngs = sorted(p.name for p in paths if p.suffix == ".png")
    assert pngs == sorted(f"{kind}_{a}.png" for kind in ("per_class", "scatter", "delta") for a in ("clean", "pgd"))
    for path in paths:
        if path.suffix == ".png":
            with Image.open(path) as image:
                assert 800 <= image.size[0] <= 2000 and 300 <= image.size[1] <= 2000
    md = (tmp_path / "fairness.md").read_text()
    assert "panel skipped" in md.split("## PGD-20")[0] and "panel skipped" not in md.split("## PGD-20")[1]


def test_run_plot_uses_the_shared_headline_rule(tmp_path: Path) -> None:
    """Without aa or pgd, the headline attack is the one the reference (teacher) does worst on."""
    import matplotlib.pyplot as plt

    t = result("t", {"clean": flags([10, 10, 10, 10]), "fgsm": flags([6, 6, 6, 6]), "cw": flags([3, 3, 3, 3])})
    s = result("s", {"clean": flags([10, 10, 10, 10]), "fgsm": flags([2, 2, 2, 2]), "cw": flags([5, 5, 5, 5])})
    fig = render.run_figure(s, t)
    assert fig.get_suptitle().startswith("Per-class CW∞-20 accuracy: teacher t vs student s\ntoy (test split, n = 40")
    assert fig.axes[0].get_ylabel() == "CW∞-20 accuracy (%)"
    plt.close(fig)
    assert render.run_plot(s, t, tmp_path / "per_class.png").exists()
    header = RunHeader("kd", "t", "tiny_cnn", 1, 0, "last epoch (1)")
    comp = fairness.compare([("teacher", t), ("student", s)])
    assert comp.headline_attack == "cw"
    assert "CW∞-20 robustness" in render.run_markdown(header, s, t, comp).split("## Robust fairness")[1]
