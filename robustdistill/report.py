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


def figure_size(num_items: int, per_item: float = 0.35, base: float = 2.5, height: float = 4.5) -> tuple[float, float]:
    """A figure size in inches (at dpi 100) between 8 and 20 inches wide, i.e. 800-2000 px."""
    return min(20.0, max(8.0, base + per_item * num_items)), height


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG through a temporary file and a rename, then close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=dpi, format="png")
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def class_order(values: Sequence[float | None], sort: bool) -> list[int]:
    """Class indices in display order: as given, or by ascending accuracy (absent classes last)."""
    indices = list(range(len(values)))
    if not sort:
        return indices
    return sorted(indices, key=lambda i: (values[i] is None, values[i] if values[i] is not None else 0.0, i))


def plot_per_class(
    reports: Sequence[tuple[str, dict[str, Any]]],
    attack: str,
    path: str | Path,
    title: str | None = None,
    *,
    sort: bool | None = None,
    show_ci: bool | None = None,
) -> Path:
    """Grouped bars: per-class accuracy under ``attack`` for each (label, report), headless PNG.

    Args:
        reports: ``(label, report)`` pairs; ``report`` needs ``data.class_names``, ``settings.attacks``
            and ``results[attack]`` as written by :meth:`EvaluationResult.to_dict`.
        attack: which attack's accuracies to draw.
        path: the PNG to write (atomically).
        title: figure title; default names the attack.
        sort: order classes by the first report's accuracy (worst first); default for > 20 classes.
        show_ci: draw 95 % Wilson intervals as whiskers; default for <= 20 classes and <= 4 reports.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(reports[0][1]["data"]["class_names"])
    many = len(names) > 20
    sort = many if sort is None else sort
    show_ci = (not many and len(reports) <= 4) if show_ci is None else show_ci
    order = class_order(reports[0][1]["results"][attack]["per_class"], sort)
    x = np.arange(len(names))
    width = 0.8 / max(1, len(reports))
    fig, ax = plt.subplots(figsize=figure_size(len(names) * max(1.0, len(reports) ** 0.5)))
    for k, (label, rep) in enumerate(reports):
        result = rep["results"][attack]
        vals = np.array([np.nan if result["per_class"][i] is None else 100 * result["per_class"][i] for i in order])
        offset = x + (k - (len(reports) - 1) / 2) * width
        ax.bar(offset, vals, width, label=f"{label} (overall {100 * result['accuracy']:.1f}%)")
        if show_ci and result.get("ci95"):
            _draw_ci(ax, offset, vals, [result["ci95"][i] for i in order])
    ax.set_xticks(x)
    ax.set_xticklabels([names[i] for i in order], rotation=90 if many else (45 if len(names) > 10 else 0),
                       ha="center" if many or len(names) <= 10 else "right", fontsize=6 if many else 9)
    label = attack_label(reports[0][1], attack)
    ax.set_ylabel(f"{label} accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(-0.6, len(names) - 0.4)
    suffix = f" (classes sorted by {reports[0][0]}'s accuracy)" if sort else ""
    ax.set_title((title or f"Per-class {label} accuracy") + suffix)
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def _draw_ci(ax: Any, x: Any, vals: Any, intervals: Sequence[Any]) -> None:
    """Whiskers for 95 % intervals (``None`` entries are skipped)."""
    import numpy as np

    lo = np.array([np.nan if ci is None else 100 * ci[0] for ci in intervals])
    hi = np.array([np.nan if ci is None else 100 * ci[1] for ci in intervals])
    err = np.vstack([np.clip(vals - lo, 0, None), np.clip(hi - vals, 0, None)])
    ax.errorbar(x, vals, yerr=err, fmt="none", ecolor="black", elinewidth=0.7, capsize=2, alpha=0.6)
