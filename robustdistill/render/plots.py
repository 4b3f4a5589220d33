"""Headless PNG plots (matplotlib Agg), written atomically.

Every figure's title names the model(s), the attack, the dataset, split, n and eps; both axes are
labelled; whiskers are 95 % intervals and the legend says which. A scatter panel whose points
would all coincide (e.g. every class at 100 % clean for both models) is not drawn: the panel says
why instead.
"""

from __future__ import annotations

import io

from pathlib import Path
from typing import Callable, Any, Sequence

from ..fileio import atomic_write_bytes
from ..evaluation import EvaluationResult
from ..fairness import AttackComparison, Comparison, ModelEntry, StudentComparison
from ..metrics import AttackSummary, headline_attack
from .markdown import attack_params, comparison_scope, result_scope
from .text import attack_label, fmt, interval_pts, names_list, pct, signed_pts

WILSON_NOTE = "whiskers: 95 % Wilson interval"
NEWCOMBE_NOTE = "whiskers: 95 % paired interval (Newcombe)"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_size(num_items: int, per_item: float = 0.35, base: float = 2.5, height: float = 4.8) -> tuple[float, float]:
    """A figure size in inches (at dpi 100) between 8 and 20 inches wide, i.e. 800-2000 px."""
    return min(20.0, max(8.0, base + per_item * num_items)), height


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure as PNG, atomically (a private temporary file and a rename), then close it."""
    plt = _pyplot()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def class_order(values: Sequence[float | None], sort: bool) -> list[int]:
    """Class indices in display order: as given, or by ascending accuracy (absent classes last)."""
    indices = list(range(len(values)))
    if not sort:
        return indices
    return sorted(indices, key=lambda i: (values[i] is None, values[i] if values[i] is not None else 0.0, i))


def _title(fig: Any, text: str) -> None:
    """A figure title wrapped to the figure's width, so long model names are never cut off."""
    import textwrap

    chars = int(fig.get_figwidth() * 100 / 7.5)  # about 7.5 px per character at 11 pt and dpi 100
    lines = [wrapped for line in text.splitlines() for wrapped in textwrap.wrap(line, chars, break_on_hyphens=False) or [""]]
    fig.suptitle("\n".join(lines), fontsize=11)


def _class_axis(ax: Any, names: Sequence[str], sorted_by: str | None) -> None:
    """Class names on the x axis (rotated when many) and the axis label."""
    many = len(names) > 20
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90 if many else (45 if len(names) > 10 else 0),
                       ha="center" if many or len(names) <= 10 else "right", fontsize=6 if many else 9)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_xlabel("class" + (f" (sorted by {sorted_by}'s accuracy, lowest first)" if sorted_by else ""))


def _draw_whiskers(ax: Any, x: Any, vals: Any, intervals: Sequence[Any], scale: float = 100.0) -> None:
    """Whiskers for 95 % intervals given as fractions (``None`` entries are skipped)."""
    import numpy as np

    lo = np.array([np.nan if ci is None else scale * ci[0] for ci in intervals])
    hi = np.array([np.nan if ci is None else scale * ci[1] for ci in intervals])
    err = np.vstack([np.clip(vals - lo, 0, None), np.clip(hi - vals, 0, None)])
    ax.errorbar(x, vals, yerr=err, fmt="none", ecolor="black", elinewidth=0.7, capsize=2, alpha=0.6)


def _whisker_handle(label: str) -> Any:
    from matplotlib.lines import Line2D

    return Line2D([], [], color="black", marker="|", markersize=10, linestyle="-", linewidth=0.7, alpha=0.6, label=label)


def _legend_outside(ax: Any, extra: Sequence[Any] = ()) -> None:
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=[*handles, *extra], loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)


def plot_per_class(series: Sequence[tuple[str, AttackSummary]], class_names: Sequence[str], path: str | Path, *,
                   title: str, ylabel: str, sort: bool | None = None, show_ci: bool | None = None) -> Path:
    """:func:`per_class_figure` saved as a PNG at ``path`` (atomically)."""
    return save_figure(per_class_figure(series, class_names, title=title, ylabel=ylabel, sort=sort, show_ci=show_ci), path)


def per_class_figure(series: Sequence[tuple[str, AttackSummary]], class_names: Sequence[str], *, title: str, ylabel: str,
                     sort: bool | None = None, show_ci: bool | None = None) -> Any:
    """Grouped bars: per-class accuracy of each (label, summary); returns the matplotlib figure.

    Args:
        series: ``(label, summary)`` per model, all under the same attack.
        class_names: the class names, in index order.
        title: the figure title (state models, attack, dataset, split, n and eps).
        ylabel: the y axis label.
        sort: order classes by the first model's accuracy (lowest first); default for > 20 classes.
        show_ci: draw 95 % Wilson intervals as whiskers; default for <= 20 classes and <= 4 models.
    """
    import numpy as np

    plt = _pyplot()
    many = len(class_names) > 20
    sort = many if sort is None else sort
    show_ci = (not many and len(series) <= 4) if show_ci is None else show_ci
    order = class_order(series[0][1].per_class, sort)
    x = np.arange(len(class_names))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=figure_size(len(class_names) * max(1.0, len(series) ** 0.5)))
    for k, (label, s) in enumerate(series):
        vals = np.array([np.nan if s.per_class[i] is None else 100 * s.per_class[i] for i in order])
        offset = x + (k - (len(series) - 1) / 2) * width
        ax.bar(offset, vals, width, label=f"{label} (overall {pct(s.accuracy)}%)")
        if show_ci:
            _draw_whiskers(ax, offset, vals, [s.ci95[i] for i in order])
    _class_axis(ax, [class_names[i] for i in order], series[0][0] if sort else None)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    _title(fig, title)
    _legend_outside(ax, [_whisker_handle(WILSON_NOTE)] if show_ci else [])
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def short_model_name(model_id: str) -> str:
    """``runs/x/student.safetensors`` -> ``x/student.safetensors``; other identifiers unchanged."""
    parts = Path(model_id).parts
    return "/".join(parts[-2:]) if len(parts) > 2 else model_id


def run_plot(student: EvaluationResult, teacher: EvaluationResult | None, path: str | Path) -> Path:
    """per_class.png of a run: :func:`run_figure` saved at ``path`` (atomically)."""
    return save_figure(run_figure(student, teacher), path)


def run_figure(student: EvaluationResult, teacher: EvaluationResult | None) -> Any:
    """Teacher and student per class under the headline attack (chosen on the teacher, else the student)."""
    reference = teacher if teacher is not None else student
    attack = headline_attack({a: reference.summary(a).accuracy for a in reference.correct})
    label = attack_label(attack, attack_params(reference)[attack])
    series = [("student", student.summary(attack))]
    names = f"student {short_model_name(student.model_id)}"
    if teacher is not None:
        series.insert(0, ("teacher", teacher.summary(attack)))
        names = f"teacher {short_model_name(teacher.model_id)} vs {names}"
    return per_class_figure(series, student.class_names, title=f"Per-class {label} accuracy: {names}\n{result_scope(student)}",
                            ylabel=f"{label} accuracy (%)")


# --------------------------------------------------------------------------- comparison plots
def coinciding_note(reference: ModelEntry, student: ModelEntry, attack: str) -> str | None:
    """Why a scatter panel is skipped (all its points coincide), or None when it is worth drawing."""
    xr, ys = reference.results[attack].per_class, student.results[attack].per_class
    points = {(xr[i], ys[i]) for i in range(len(xr)) if xr[i] is not None and ys[i] is not None}
    if len(points) > 1:
        return None
    if not points:
        return f"{student.label}: no class present in both evaluations, nothing to plot."
    (x, y), = points
    return (f"{student.label}: panel skipped – every class is at {reference.label} {pct(x)}% and "
            f"{student.label} {pct(y)}%, so all points would coincide.")


def scatter_skips(comparison: Comparison, attack: str) -> dict[str, str]:
    """Student label -> why its scatter panel under ``attack`` is skipped (only skipped ones)."""
    ref = comparison.models[0]
    notes = {m.label: coinciding_note(ref, m, attack) for m in comparison.models[1:]}
    return {label: note for label, note in notes.items() if note}


def _scatter_panel(ax: Any, names: Sequence[str], ref: ModelEntry, stu: ModelEntry, c: AttackComparison, attack: str,
                   label: str, max_labels: int) -> None:
    rs, ss = ref.results[attack], stu.results[attack]
    idx = [i for i in range(len(names)) if rs.per_class[i] is not None and ss.per_class[i] is not None]
    x = [100 * rs.per_class[i] for i in idx]  # type: ignore[operator]
    y = [100 * ss.per_class[i] for i in idx]  # type: ignore[operator]
    ax.plot([0, 100], [0, 100], ls="--", color="grey", lw=1, label=f"y = x: {stu.label} as accurate as {ref.label}")
    if len(idx) <= 20:
        err = [[abs(v - 100 * b) for v, b in zip(vals, bounds)] for vals, bounds in
               ((x, [rs.ci95[i][0] for i in idx]), (x, [rs.ci95[i][1] for i in idx]),  # type: ignore[index]
                (y, [ss.ci95[i][0] for i in idx]), (y, [ss.ci95[i][1] for i in idx]))]  # type: ignore[index]
        ax.errorbar(x, y, xerr=[err[0], err[1]], yerr=[err[2], err[3]], fmt="none", ecolor="grey", elinewidth=0.6, alpha=0.5)
    # Classes at exactly the same accuracies would hide each other: dot area grows with their number.
    stacked = {(a, b): sum(1 for p in zip(x, y) if p == (a, b)) for a, b in zip(x, y)}
    base = 28 if len(idx) <= 20 else 12
    sizes = [base * min(20, stacked[p]) for p in zip(x, y)]
    dots = "one class" + (f" ({WILSON_NOTE})" if len(idx) <= 20 else "")
    if max(stacked.values(), default=1) > 1:
        dots += "\nbigger dot: several classes at the same accuracies"
    ax.scatter(x, y, s=sizes, alpha=0.8, label=dots)
    # A hollow star: overall accuracy often lands on a class's dot, which must stay visible under it.
    ax.scatter([100 * (c.accuracy.reference or 0)], [100 * (c.accuracy.student or 0)], marker="*", s=260, facecolors="none",
               edgecolors="crimson", linewidths=1.4, zorder=3, label="overall accuracy")
    shown = idx if len(idx) <= max_labels else sorted(idx, key=lambda i: (ss.per_class[i] - rs.per_class[i], i))[:8]  # type: ignore[operator]
    _annotate_points(ax, [(100 * rs.per_class[i], 100 * ss.per_class[i], str(names[i])) for i in shown])  # type: ignore[operator]
    ax.set(xlim=(0, 102), ylim=(0, 102), aspect="equal", xlabel=f"{ref.label}: {label} accuracy (%)",
           ylabel=f"{stu.label}: {label} accuracy (%)")
    reason = "" if c.pearson is not None else " (a model has the same accuracy on every class)"
    ax.set_title(f"{stu.label}: Pearson r = {fmt(c.pearson)}{reason}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=7)


def _annotate_points(ax: Any, points: Sequence[tuple[float, float, str]], near: float = 1.5) -> None:
    """Name each point; classes within ``near`` points of each other share one label (``airplane, ship``)."""
    groups: list[tuple[float, float, list[str]]] = []
    for x, y, name in sorted(points):
        group = next((g for g in groups if abs(g[0] - x) <= near and abs(g[1] - y) <= near), None)
        if group is None:
            groups.append((x, y, [name]))
        else:
            group[2].append(name)
    for x, y, names in groups:
        ax.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=8)


def _skipped_panel(ax: Any, note: str) -> None:
    import textwrap

    ax.axis("off")
    ax.text(0.5, 0.5, textwrap.fill(note, 45), ha="center", va="center", fontsize=10, transform=ax.transAxes,
            bbox={"boxstyle": "round", "facecolor": "#f3f3f3", "edgecolor": "grey"})


def plot_scatter(comparison: Comparison, attack: str, path: Path, max_labels: int = 20) -> Path:
    """:func:`scatter_figure` saved as a PNG at ``path`` (atomically)."""
    return save_figure(scatter_figure(comparison, attack, max_labels), path)


def scatter_figure(comparison: Comparison, attack: str, max_labels: int = 20) -> Any:
    """Student-vs-reference per-class accuracy, one panel per student, with the y = x line.

    Every class is named when there are at most ``max_labels``; otherwise only the eight classes
    that lost the most. The star marks overall accuracy. A panel whose points all coincide is
    replaced by a sentence saying so.
    """
    plt = _pyplot()
    ref, comps = comparison.models[0], comparison.comparisons
    label = attack_label(attack, comparison.settings.attacks[attack])
    cols = min(3, len(comps))
    rows = -(-len(comps) // cols)
    notes = {c.label: coinciding_note(ref, comparison.model(c.label), attack) for c in comps}
    panel_height = 2.2 if all(notes.values()) else 5.4  # only sentences to show: a short figure
    fig, axes = plt.subplots(rows, cols, figsize=(max(8.0, min(18.0, 5.5 * cols + 0.5)), panel_height * rows + 0.9),
                             squeeze=False)
    for k, c in enumerate(comps):
        ax, stu = axes[k // cols][k % cols], comparison.model(c.label)
        note = notes[c.label]
        if note:
            _skipped_panel(ax, note)
        else:
            _scatter_panel(ax, comparison.data.class_names, ref, stu, c.attacks[attack], attack, label, max_labels)
    for k in range(len(comps), rows * cols):
        axes[k // cols][k % cols].axis("off")
    students = names_list([c.label for c in comps])
    _title(fig, f"Per-class {label} accuracy: {students} vs {ref.label}\n{comparison_scope(comparison)}")
    fig.tight_layout()
    return fig


def _delta_series(ax: Any, x: Any, order: Sequence[int], c: StudentComparison, attack: str, k: int, width: float,
                  show_ci: bool) -> None:
    """Bars of one student's per-class change (with paired whiskers) and a dashed line at its overall change."""
    import numpy as np

    a = c.attacks[attack]
    vals = np.array([np.nan if a.per_class_delta[i] is None else 100 * a.per_class_delta[i] for i in order])
    offset = x + k * width
    bars = ax.bar(offset, vals, width, label=f"{c.label} per class")
    if show_ci and a.per_class_tests is not None:
        _draw_whiskers(ax, offset, vals, [None if a.per_class_tests[i] is None else a.per_class_tests[i].ci95 for i in order])
    if a.accuracy.delta is not None:
        ax.axhline(100 * a.accuracy.delta, ls="--", lw=1, color=bars.patches[0].get_facecolor(),
                   label=f"{c.label} overall: {signed_pts(a.accuracy.delta)} points (95% CI {interval_pts(a.accuracy.ci95)})")


def plot_deltas(comparison: Comparison, attack: str, path: Path) -> Path:
    """:func:`delta_figure` saved as a PNG at ``path`` (atomically)."""
    return save_figure(delta_figure(comparison, attack), path)


def delta_figure(comparison: Comparison, attack: str) -> Any:
    """Per-class change vs the reference (points), one bar per student, with each student's overall change."""
    import numpy as np

    plt = _pyplot()
    names = comparison.data.class_names
    many = len(names) > 20
    order = class_order(comparison.models[0].results[attack].per_class, many)
    comps = comparison.comparisons
    show_ci = not many and len(comps) <= 4
    width = 0.8 / len(comps)
    x = np.arange(len(names)) - (len(comps) - 1) / 2 * width
    fig, ax = plt.subplots(figsize=figure_size(len(names) * max(1.0, len(comps) ** 0.5)))
    for k, c in enumerate(comps):
        _delta_series(ax, x, order, c, attack, k, width, show_ci)
    ax.axhline(0, color="black", lw=0.8)
    if all(d in (None, 0) for c in comps for d in c.attacks[attack].per_class_delta):
        ax.text(0.5, 0.9, "no class changed: every bar is 0 points" + (" (whiskers: what the noise allows)" if show_ci else ""),
                ha="center", va="center", transform=ax.transAxes, fontsize=9,
                bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "grey"})
    ax.use_sticky_edges = False  # let the margin show bars that end at 0
    ax.margins(x=0, y=0.08)
    _class_axis(ax, [names[i] for i in order], comparison.reference if many else None)
    label = attack_label(attack, comparison.settings.attacks[attack])
    ax.set_ylabel(f"change in {label} accuracy vs {comparison.reference} (points)")
    students = names_list([c.label for c in comps])
    _title(fig, f"Per-class change in {label} accuracy: {students} minus {comparison.reference}\n{comparison_scope(comparison)}")
    _legend_outside(ax, [_whisker_handle(NEWCOMBE_NOTE)] if show_ci else [])
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def comparison_series(comparison: Comparison, attack: str) -> list[tuple[str, AttackSummary]]:
    """``(label, summary)`` of every compared model under ``attack``."""
    return [(m.label, m.results[attack]) for m in comparison.models]


def comparison_plots(comparison: Comparison, out_dir: Path | Callable[[str], Path]) -> list[Path]:
    """``per_class_<attack>.png``, ``scatter_<attack>.png`` and ``delta_<attack>.png`` for every attack.

    ``out_dir`` is a directory or a function giving the path of a file name (a run directory's
    :meth:`~robustdistill.rundir.RunDir.file`, which records what it writes).
    """
    path_for = out_dir if callable(out_dir) else (lambda name: Path(out_dir) / name)
    paths = []
    scope_line = comparison_scope(comparison)
    models = names_list([m.label for m in comparison.models])
    for attack, params in comparison.settings.attacks.items():
        label = attack_label(attack, params)
        paths.append(plot_per_class(comparison_series(comparison, attack), comparison.data.class_names,
                                    path_for(f"per_class_{attack}.png"), ylabel=f"{label} accuracy (%)",
                                    title=f"Per-class {label} accuracy: {models}\n{scope_line}"))
        paths.append(plot_scatter(comparison, attack, path_for(f"scatter_{attack}.png")))
        paths.append(plot_deltas(comparison, attack, path_for(f"delta_{attack}.png")))
    return paths
