"""Rendering evaluation results: report.json, report.md, a rich table and per-class plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from rich.table import Table

from ._utils import atomic_write_json, atomic_write_text

ATTACK_LABELS = {"clean": "Clean", "fgsm": "FGSM", "pgd": "PGD", "cw": "CW∞", "aa": "AutoAttack"}


def pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f}"


def attack_label(report: dict[str, Any], attack: str) -> str:
    desc = report["settings"]["attacks"].get(attack, {})
    if attack in ("pgd", "cw") and desc:
        return f"{ATTACK_LABELS[attack]}-{desc['steps']}"
    return ATTACK_LABELS.get(attack, attack)


def evaluation_table(report: dict[str, Any], title: str | None = None) -> Table:
    """Overall accuracy, worst class and NSD per attack (one row per attack)."""
    d = report["data"]
    table = Table(title=title or f"{report['model']['id']} on {d['dataset']} "
                  f"({d['split']}, n={d['n_examples']}, eps={report['settings']['eps_str']})")
    table.add_column("attack")
    table.add_column("accuracy %", justify="right")
    table.add_column("worst class %", justify="right")
    table.add_column("worst class")
    table.add_column("NSD", justify="right")
    for attack, summary in report["results"].items():
        worst = summary["worst_class"]
        table.add_row(attack_label(report, attack), pct(summary["accuracy"]), pct(worst["accuracy"]),
                      str(worst["name"]), _fmt_nsd(summary["nsd"]))
    return table


def per_class_table(report: dict[str, Any], max_classes: int = 20) -> Table | None:
    """Per-class accuracy with classes as rows and attacks as columns (None if too many classes)."""
    d, results = report["data"], report["results"]
    if len(d["class_names"]) > max_classes:
        return None
    table = Table(title="per-class accuracy %")
    table.add_column("class")
    table.add_column("n", justify="right")
    for attack in results:
        table.add_column(attack_label(report, attack), justify="right")
    for i, name in enumerate(d["class_names"]):
        table.add_row(str(name), str(d["class_counts"][i]), *[pct(r["per_class"][i]) for r in results.values()])
    return table


def evaluation_markdown(report: dict[str, Any], heading: str | None = None) -> str:
    """Markdown tables: summary per attack, then per-class accuracy (classes as rows)."""
    d, s = report["data"], report["settings"]
    results = report["results"]
    lines = [f"## {heading or report['model']['id']}", ""]
    lines.append(f"Dataset **{d['dataset']}** ({d['split']} split, first {d['n_examples']} examples), "
                 f"L∞ eps = {s['eps_str']}, seed {s['seed']}.")
    lines += ["", "| attack | accuracy % | worst class % | worst class | best − worst | NSD |", "|---|---:|---:|---|---:|---:|"]
    for attack, r in results.items():
        lines.append(f"| {attack_label(report, attack)} | {pct(r['accuracy'], 2)} | {pct(r['worst_class']['accuracy'], 2)} | "
                     f"{r['worst_class']['name']} | {pct(r['gap'], 2)} | {_fmt_nsd(r['nsd'])} |")
    header = "| class | n | " + " | ".join(attack_label(report, a) for a in results) + " |"
    lines += ["", "Per-class accuracy (%):", "", header, "|---|---:|" + "---:|" * len(results)]
    for i, name in enumerate(d["class_names"]):
        cells = " | ".join(pct(r["per_class"][i]) for r in results.values())
        lines.append(f"| {name} | {d['class_counts'][i]} | {cells} |")
    lines += ["", "Attacks: " + "; ".join(f"{attack_label(report, a)}: {_describe(p)}" for a, p in s["attacks"].items() if p) + "."]
    lines.append("NSD = population std of class accuracies / their mean. A sample counts as robust only if it is also classified correctly clean.")
    return "\n".join(lines) + "\n"


def _fmt_nsd(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _describe(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items() if k not in ("eps", "norm"))


def write_evaluation(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", "# Robustness report\n\n" + evaluation_markdown(report))
    return out / "report.json", out / "report.md"


def plot_per_class(reports: Sequence[tuple[str, dict[str, Any]]], attack: str, path: str | Path, title: str | None = None) -> Path:
    """Grouped bars: per-class accuracy under ``attack`` for each (label, report), headless PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = reports[0][1]["data"]["class_names"]
    x = np.arange(len(names))
    width = 0.8 / max(1, len(reports))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(names) * max(1, len(reports)) ** 0.5 + 2), 4.0), dpi=120)
    for k, (label, rep) in enumerate(reports):
        vals = [100 * (v if v is not None else 0) for v in rep["results"][attack]["per_class"]]
        overall = 100 * rep["results"][attack]["accuracy"]
        ax.bar(x + (k - (len(reports) - 1) / 2) * width, vals, width, label=f"{label} (overall {overall:.1f}%)")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=45 if len(names) > 10 else 0, ha="right" if len(names) > 10 else "center")
    ax.set_ylabel(f"{attack_label(reports[0][1], attack)} accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title or f"Per-class {attack_label(reports[0][1], attack)} accuracy")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path
