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


def study_hours(dirs: list[Path]) -> float:
    """Wall time of the whole study, also when it was resumed: first run's start to last report."""
    starts = [(d / "config.yaml").stat().st_mtime for d in dirs]
    ends = [(d / "report.json").stat().st_mtime for d in dirs]
    return (max(ends) - min(starts)) / 3600


def mean_std(values: list[float | None]) -> tuple[float, float, int]:
    """(mean, sample std, how many values were defined); NSD is undefined when accuracy is 0."""
    defined = [v for v in values if v is not None]
    if not defined:
        return float("nan"), float("nan"), 0
    return statistics.fmean(defined), (statistics.stdev(defined) if len(defined) > 1 else 0.0), len(defined)


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
                "nsd": mean_std([r["nsd"] for r in res]),
                "worst_classes": [r["worst_class"]["name"] for r in res],
                "per_run": [{"accuracy": r["accuracy"], "worst": r["worst_class"]["accuracy"], "nsd": r["nsd"]} for r in res],
            }
    assert teacher is not None
    rows["teacher"] = {"seeds": 1, "attacks": {a: {"accuracy": mean_std([r["accuracy"]]), "worst": mean_std([r["worst_class"]["accuracy"]]),
                                                   "nsd": mean_std([r["nsd"]]), "worst_classes": [r["worst_class"]["name"]]}
                                               for a, r in teacher["results"].items()}}
    return rows


def fmt(stats: tuple[float, float, int], seeds: int, pct: bool = True) -> str:
    mean, std, n = stats
    if n == 0:
        return "n/a"
    if seeds == 1:  # the teacher: one model, no spread
        return f"{100 * mean:.1f}" if pct else f"{mean:.2f}"
    text = f"{100 * mean:.1f} ± {100 * std:.1f}" if pct else f"{mean:.2f} ± {std:.2f}"
    return text if n == seeds else f"{text} ({n} of {seeds})"


def markdown(rows: dict[str, Any], meta: dict[str, Any]) -> str:
    attacks = [a for a in ATTACKS if a in rows["teacher"]["attacks"]]
    head = "| model | " + " | ".join(f"{a.upper()} avg | {a.upper()} worst | {a.upper()} NSD" for a in attacks) + " |"
    lines = [head, "|---|" + "---:|---:|---:|" * len(attacks)]
    for name, row in rows.items():
        cells = []
        for a in attacks:
            r = row["attacks"][a]
            cells += [fmt(r["accuracy"], row["seeds"]), fmt(r["worst"], row["seeds"]), fmt(r["nsd"], row["seeds"], pct=False)]
        label = f"**{name}** (1 model)" if name == "teacher" else f"{name} ({row['seeds']} seeds)"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Accuracy in % (mean ± sample std over seeds); NSD = population std / mean of the class accuracies "
              "(n/a where the accuracy is 0 for every class; \"(k of n)\" = defined for k seeds only).",
              f"Command: `{meta['command']}`; {meta['runs']} runs took {meta['study_hours']:.2f} h of wall time "
              f"({meta['workers']} at a time, {meta['threads']} thread each, 2-core CPU); versions: {meta['versions']}."]
    return "\n".join(lines) + "\n"


def paired(rows: dict[str, Any]) -> str:
    """Fair-X minus X per seed (same seed = same initial weights, data order and attack noise)."""
    lines = ["| base X | attack | worst class: Fair-X − X (points) | seeds better / tied / worse | average: Fair-X − X (points) |",
             "|---|---|---:|---:|---:|"]
    for base in [m for m in rows if f"fair-{m}" in rows]:
        for attack in [a for a in ATTACKS if a != "clean" and a in rows[base]["attacks"]]:
            b, f = rows[base]["attacks"][attack]["per_run"], rows[f"fair-{base}"]["attacks"][attack]["per_run"]
            worst = [100 * (y["worst"] - x["worst"]) for x, y in zip(b, f)]
            avg = [100 * (y["accuracy"] - x["accuracy"]) for x, y in zip(b, f)]
            better, tied = sum(v > 0 for v in worst), sum(v == 0 for v in worst)
            spread = lambda v: f"{statistics.fmean(v):+.1f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.1f}"  # noqa: E731
            lines.append(f"| {base} | {attack.upper()} | {spread(worst)} | {better} / {tied} / {len(worst) - better - tied} | {spread(avg)} |")
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
    from robustdistill.runtime import versions

    meta = {"command": "python benchmarks/fairness_study.py " + " ".join(sys.argv[1:]), "wall_time_s": time.time() - started,
            "study_hours": study_hours(done), "runs": len(done), "workers": args.workers, "threads": args.threads,
            "versions": versions(), "seeds": seeds, "student": args.student, "epochs": args.epochs,
            "overrides": STUDY_OVERRIDES, "extra_flags": args.set}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = ("# Digits robust-fairness study\n\n" + markdown(rows, meta)
            + "\n## Paired by seed: what Fair-ARD reweighting changes\n\n" + paired(rows))
    (out / "fairness_study.md").write_text(text)
    (out / "fairness_study.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(text)


if __name__ == "__main__":
    main()
