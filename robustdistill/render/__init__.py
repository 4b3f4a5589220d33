"""Everything a person reads: Markdown, rich tables, verdict sentences, JSON files and PNG plots.

Rendering reads only typed results (:class:`~robustdistill.evaluation.EvaluationResult`,
:class:`~robustdistill.metrics.AttackSummary`, :class:`~robustdistill.fairness.Comparison`) and
never computes a statistic of its own beyond formatting (and the Wilson interval of an overall
accuracy). Modules: :mod:`.text` (formatting, attack labels), :mod:`.verdicts` (sentences),
:mod:`.markdown`, :mod:`.tables` (rich), :mod:`.plots` (matplotlib Agg), :mod:`.files` (writing).
"""

from __future__ import annotations

from .files import comparison_json, result_provenance, write_evaluation, write_fairness, write_run_files
from .markdown import RunHeader, evaluation_document, evaluation_markdown, fairness_markdown, run_markdown
from .plots import (comparison_plots, delta_figure, per_class_figure, plot_deltas, plot_per_class, plot_scatter, run_figure,
                    run_plot, scatter_figure, scatter_skips)
from .tables import evaluation_table, per_class_table, summary_table
from .text import Provenance, attack_label
from .verdicts import attack_verdict, verdict, verdicts

__all__ = [
    "Provenance", "RunHeader", "attack_label", "attack_verdict", "comparison_json", "comparison_plots",
    "delta_figure", "evaluation_document", "evaluation_markdown", "evaluation_table", "fairness_markdown",
    "per_class_figure", "per_class_table", "plot_deltas", "plot_per_class", "plot_scatter", "result_provenance",
    "run_figure", "run_markdown", "run_plot", "scatter_figure", "scatter_skips", "summary_table", "verdict", "verdicts",
    "write_evaluation", "write_fairness", "write_run_files",
]
