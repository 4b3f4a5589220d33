"""Does KDIGA keep robustness that plain KD loses - and at which budget? (validation split only)

    python benchmarks/kdiga_eps_sweep.py            # after benchmarks/fairness_study.py

Evaluates the study's KD and KDIGA students (and the teacher) on the digits VALIDATION split with
PGD-20 (step eps/4) at a range of budgets, and writes benchmarks/results/kdiga_eps_sweep.md.
The students are the ones trained by the study (runs/fairness-study/{kd,kdiga}-seed*/).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from robustdistill.data import load_dataset
from robustdistill.evaluation import EvalSettings, evaluate_model
from robustdistill.models import load_model

RESULTS = Path(__file__).resolve().parent / "results"
BUDGETS = (0.01, 0.02, 0.05, 0.1, 0.2)


def robust_accuracy(model_id: str, eps: float, splits) -> float:
    model = load_model(model_id)
    result = evaluate_model(model, splits.val, splits.info.class_names, attacks=("clean", "pgd"),
                            settings=EvalSettings(eps=eps, seed=0), description=f"{Path(model_id).parent.name} eps {eps}")
    return result.accuracy("pgd")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default="runs/fairness-study")
    parser.add_argument("--methods", default="kd,kdiga,fair-kdiga")
    args = parser.parse_args()
    splits = load_dataset("digits")
    rows = [("teacher (bundled:digits)", [[robust_accuracy("bundled:digits", e, splits)] for e in BUDGETS])]
    for method in args.methods.split(","):
        files = sorted(Path(args.work_dir).glob(f"{method}-seed*/student.safetensors"))
        if files:
            rows.append((f"{method} ({len(files)} seeds)", [[robust_accuracy(str(f), e, splits) for f in files] for e in BUDGETS]))
    head = "| model | " + " | ".join(f"PGD-20 @ eps {e:g}" for e in BUDGETS) + " |"
    lines = [head, "|---|" + "---:|" * len(BUDGETS)]
    for name, per_eps in rows:
        cells = [f"{100 * statistics.fmean(v):.1f}" + (f" ± {100 * statistics.stdev(v):.1f}" if len(v) > 1 else "") for v in per_eps]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = ("# KD vs KDIGA across attack budgets (digits validation split, PGD-20, step eps/4)\n\n"
            "Command: `python benchmarks/kdiga_eps_sweep.py`. Accuracy in % (mean ± std over seeds).\n\n" + "\n".join(lines) + "\n")
    (RESULTS / "kdiga_eps_sweep.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
