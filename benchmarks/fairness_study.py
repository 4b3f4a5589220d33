"""The digits robust-fairness study: every method and its Fair- version over several seeds.

    python benchmarks/fairness_study.py                      # the committed table (5 seeds, all methods)
    python benchmarks/fairness_study.py --seeds 0 --methods ard --no-aa   # a quick look

For each method X in kd, ard, rslad, iad, kdiga, adaad and its Fair-ARD version fair-X, and each
seed, it runs ``robustdistill distill`` (bundled digits teacher -> student, the settings below)
and evaluates the student on the digits test split with clean, PGD-20, CW-inf-20 and AutoAttack.
It then writes ``benchmarks/results/fairness_study.{md,json}`` (run directories go to ``runs/fairness-study/``): mean +- std over seeds of overall
accuracy, worst-class accuracy and NSD for every attack, plus the teacher's row.

Runs are independent subprocesses (``--workers`` at a time, one thread each) and a finished run
is never repeated: re-running the command after an interruption continues where it stopped.
Hyperparameters are the method defaults except those in ``--set`` / ``STUDY_OVERRIDES``, which
were chosen on the validation split only (benchmarks/results/tuning.md) - never on the test split.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
METHODS = ("kd", "ard", "rslad", "iad", "kdiga", "adaad")
ATTACKS = ("clean", "pgd", "cw", "aa")
# Settings shared by every run of the study (flags of `robustdistill distill`).
COMMON = ["--teacher", "bundled:digits", "--dataset", "digits"]
# Per-method overrides chosen on the validation split (see benchmarks/results/tuning.md).
STUDY_OVERRIDES: dict[str, list[str]] = {"kdiga": ["--gamma", "100"]}


def run_one(method: str, seed: int, args: argparse.Namespace) -> Path:
    out = Path(args.work_dir) / f"{method}-seed{seed}"
    if (out / "report.json").exists():
        return out
    cmd = [sys.executable, "-m", "robustdistill", "distill", *COMMON, "--student", args.student, "--method", method,
           "--seed", str(seed), "--epochs", str(args.epochs), "--out", str(out),
           "--eval-attacks", ",".join(a for a in ATTACKS if not (args.no_aa and a == "aa"))]
    cmd += STUDY_OVERRIDES.get(method.removeprefix("fair-"), []) + args.set
    if (out / "checkpoint.pt").exists():
        cmd.append("--resume")
    elif out.exists():
        cmd.append("--overwrite")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "ROBUSTDISTILL_NO_PROGRESS": "1"}
    started = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} seed {seed} failed: {proc.stderr.strip().splitlines()[-1:]}")
    print(f"  done {method:12s} seed {seed}  ({time.time() - started:.0f} s)", flush=True)
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def collect(runs: dict[str, list[Path]]) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    teacher: dict[str, Any] | None = None
    for method, dirs in runs.items():
        reports = [json.loads((d / "report.json").read_text()) for d in dirs]
        teacher = teacher or reports[0]["teacher"]
        rows[method] = {"seeds": len(reports), "attacks": {}}
        for attack in reports[0]["student"]["results"]:
            res = [r["student"]["results"][attack] for r in reports]
            rows[method]["attacks"][attack] = {
                "accuracy": mean_std([r["accuracy"] for r in res]),
                "worst": mean_std([r["worst_class"]["accuracy"] for r in res]),
                "nsd": mean_std([r["nsd"] if r["nsd"] is not None else float("nan") for r in res]),
                "worst_classes": [r["worst_class"]["name"] for r in res],
                "per_run": [{"accuracy": r["accuracy"], "worst": r["worst_class"]["accuracy"], "nsd": r["nsd"]} for r in res],
            }
    assert teacher is not None
    rows["teacher"] = {"seeds": 1, "attacks": {a: {"accuracy": (r["accuracy"], 0.0), "worst": (r["worst_class"]["accuracy"], 0.0),
                                                   "nsd": (r["nsd"], 0.0), "worst_classes": [r["worst_class"]["name"]]}
                                               for a, r in teacher["results"].items()}}
    return rows


def fmt(pair: tuple[float, float], pct: bool = True) -> str:
    mean, std = pair
    if mean != mean:  # nan
        return "–"
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if pct else f"{mean:.3f} ± {std:.3f}"


def markdown(rows: dict[str, Any], meta: dict[str, Any]) -> str:
    attacks = [a for a in ATTACKS if a in rows["teacher"]["attacks"]]
    head = "| model | " + " | ".join(f"{a.upper()} avg | {a.upper()} worst | {a.upper()} NSD" for a in attacks) + " |"
    lines = [head, "|---|" + "---:|---:|---:|" * len(attacks)]
    for name, row in rows.items():
        cells = []
        for a in attacks:
            r = row["attacks"][a]
            cells += [fmt(r["accuracy"]), fmt(r["worst"]), fmt(r["nsd"], pct=False)]
        label = f"**{name}** (1 model)" if name == "teacher" else f"{name} ({row['seeds']} seeds)"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Accuracy in % (mean ± sample std over seeds); NSD = population std / mean of the class accuracies.",
              f"Command: `{meta['command']}`; wall time {meta['wall_time_s'] / 60:.1f} min; versions: {meta['versions']}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--student", default="tiny_cnn")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--no-aa", action="store_true")
    parser.add_argument("--no-fair", action="store_true", help="only the base methods")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", nargs=argparse.REMAINDER, default=[], help="extra distill flags for every run")
    parser.add_argument("--out", default=str(RESULTS), help="where table.md/table.json go")
    parser.add_argument("--work-dir", default="runs/fairness-study", help="run directories (not committed)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = [m for base in args.methods.split(",") for m in ([base] if args.no_fair else [base, f"fair-{base}"])]
    started = time.time()
    jobs = [(m, s) for s in seeds for m in methods]
    print(f"{len(jobs)} runs, {args.workers} at a time", flush=True)
    with ThreadPoolExecutor(args.workers) as pool:
        done = list(pool.map(lambda job: run_one(job[0], job[1], args), jobs))
    runs: dict[str, list[Path]] = {m: [] for m in methods}
    for (method, _), out in zip(jobs, done):
        runs[method].append(out)
    rows = collect(runs)
    from robustdistill._utils import versions

    meta = {"command": "python benchmarks/fairness_study.py " + " ".join(sys.argv[1:]), "wall_time_s": time.time() - started,
            "versions": versions(), "seeds": seeds, "student": args.student, "epochs": args.epochs,
            "overrides": STUDY_OVERRIDES, "extra_flags": args.set}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fairness_study.md").write_text(markdown(rows, meta))
    (out / "fairness_study.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
