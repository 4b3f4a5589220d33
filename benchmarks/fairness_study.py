"""The digits robust-fairness study: every method, its Fair- version and the robust-fairness baselines, over seeds.

    python benchmarks/fairness_study.py                      # the committed table (5 seeds, every method)
    python benchmarks/fairness_study.py --seeds 0 --methods ard --baselines "" --no-aa   # a quick look

Rows (one per method, each over the seeds):

* distillation from the bundled digits teacher (``robustdistill distill``): kd, ard, rslad, iad,
  kdiga, adaad, mtard, absld and their Fair-ARD versions fair-X (``fair-absld`` is an ablation: a
  composition no paper proposes). MTARD's natural teacher is a plainly trained digits model
  (``train-teacher --method standard``, small_cnn, seed 0), trained here once;
* teacher-free adversarial training (``robustdistill train-teacher``): trades, and the robust-fairness
  baselines frl (fine-tuning the same seed's trades model: its hot start) and cfa.

Every student is evaluated on the digits test split with clean, PGD-20, CW-inf-20 and AutoAttack.
The script writes ``benchmarks/results/fairness_study.{md,json}``: mean +- std over seeds of
overall accuracy, worst-class accuracy and NSD per attack (and the teachers' rows); the methods
ranked by worst-class accuracy under the headline attack (AutoAttack, else PGD) with a 95 %
interval; and for every pair the study compares (Fair-X vs X; every Fair-X vs FRL and CFA; the best
Fair- method vs every other distillation method; neighbours in the ranking) the paired difference
by seed with a 95 % paired-t interval, a per-seed exact McNemar test on the same test samples, and
whether the difference is within noise. It ends with whether the Fair-ARD paper's ranking claim
holds on this data.

Runs are independent subprocesses (``--workers`` at a time, one thread each). A finished run
(its ``report.json`` exists) is reused, a killed one resumed (``--resume``), so re-running the
command after an interruption continues where it stopped; a finished run made with other settings
is refused (use another ``--work-dir``). Hyperparameters are the method defaults except those in
``--set`` / ``STUDY_OVERRIDES``, which were chosen on the validation split only
(benchmarks/results/tuning.md) - never on the test split.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
METHODS = ("kd", "ard", "rslad", "iad", "kdiga", "adaad", "mtard", "absld")
BASELINES = ("trades", "frl", "cfa")
ROBUST_FAIRNESS = ("frl", "cfa")
ABLATIONS = ("fair-absld",)
ATTACKS = ("clean", "pgd", "cw", "aa")
# Settings shared by every run of the study (flags of `robustdistill distill` / `train-teacher`).
DISTILL = ["--teacher", "bundled:digits", "--dataset", "digits"]
TEACHER_FREE = ["--dataset", "digits"]
# Per-method overrides chosen on the validation split (see benchmarks/results/tuning.md).
STUDY_OVERRIDES: dict[str, list[str]] = {"kdiga": ["--gamma", "100"]}
NATURAL = "natural-teacher"  # MTARD's natural teacher: small_cnn, standard training, seed 0


# --------------------------------------------------------------------------- the runs
@dataclass
class Job:
    """One run: its row label, seed, command, flags and run directory; ``needs`` must be finished first."""

    label: str
    seed: int
    command: str
    flags: list[str]
    out: Path
    needs: list[Path] = field(default_factory=list)

    @property
    def model(self) -> Path:
        return self.out / ("student.safetensors" if self.command == "distill" else "teacher.safetensors")


def plan(args: argparse.Namespace) -> list[Job]:
    """Every run of the study, prerequisites (natural teacher, TRADES hot starts) first."""
    work, seeds = Path(args.work_dir), [int(s) for s in args.seeds.split(",")]
    bases = [m for m in args.methods.split(",") if m]
    baselines = [m for m in args.baselines.split(",") if m]
    natural = Job(NATURAL, 0, "train-teacher", [*TEACHER_FREE, "--arch", "small_cnn", "--method", "standard"],
                  work / f"{NATURAL}-seed0")
    jobs = [natural] if {"mtard"} & set(bases) else []
    for seed in seeds:
        trades = Job("trades", seed, "train-teacher", [*TEACHER_FREE, "--arch", args.student, "--method", "trades"],
                     work / f"trades-seed{seed}")
        if "trades" in baselines or "frl" in baselines:
            jobs.append(trades)
        if "frl" in baselines:
            jobs.append(Job("frl", seed, "train-teacher", [*TEACHER_FREE, "--arch", args.student, "--method", "frl",
                                                           "--init", str(trades.model)], work / f"frl-seed{seed}", [trades.out]))
        if "cfa" in baselines:
            jobs.append(Job("cfa", seed, "train-teacher", [*TEACHER_FREE, "--arch", args.student, "--method", "cfa"],
                            work / f"cfa-seed{seed}"))
        for method in [m for b in bases for m in ([b] if args.no_fair else [b, f"fair-{b}"])]:
            flags = [*DISTILL, "--student", args.student, "--method", method]
            needs = []
            if method.removeprefix("fair-") == "mtard":
                flags += ["--natural-teacher", str(natural.model)]
                needs = [natural.out]
            jobs.append(Job(method, seed, "distill", flags, work / f"{method}-seed{seed}", needs))
    return jobs


def check_reusable(job: Job, args: argparse.Namespace) -> None:
    """A finished run is reused only if it is this job: same method, seed, epochs and architecture."""
    config = json.loads((job.out / "report.json").read_text())["run"]["config"]
    arch = "small_cnn" if job.label == NATURAL else args.student
    wanted = {"method": job.label if job.label != NATURAL else "standard", "seed": job.seed, "epochs": args.epochs,
              "arch": arch}
    found = {"method": config["method"]["name"], "seed": config["train"]["seed"], "epochs": config["train"]["epochs"],
             "arch": config["student"]["arch"]}
    if found != wanted:
        raise RuntimeError(f"{job.out} holds a finished run with {found}, not {wanted}; pass another --work-dir")


def run_one(job: Job, args: argparse.Namespace) -> Path:
    if (job.out / "report.json").exists():
        check_reusable(job, args)
        return job.out
    missing = [str(p) for p in job.needs if not (p / "report.json").exists()]
    if missing:
        raise RuntimeError(f"{job.label} seed {job.seed} needs {', '.join(missing)} first")
    attacks = ",".join(a for a in ATTACKS if not (args.no_aa and a == "aa"))
    cmd = [sys.executable, "-m", "robustdistill", job.command, *job.flags, "--seed", str(job.seed),
           "--epochs", str(args.epochs), "--out", str(job.out), "--eval-attacks", attacks]
    cmd += STUDY_OVERRIDES.get(job.label.removeprefix("fair-"), []) + args.set
    if (job.out / "checkpoint.pt").exists():
        cmd.append("--resume")
    elif job.out.exists():
        cmd.append("--overwrite")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "ROBUSTDISTILL_NO_PROGRESS": "1"}
    started = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{job.label} seed {job.seed} failed: {proc.stderr.strip().splitlines()[-1:]}")
    print(f"  done {job.label:14s} seed {job.seed}  ({time.time() - started:.0f} s)", flush=True)
    return job.out


def run_all(jobs: list[Job], args: argparse.Namespace) -> None:
    """Prerequisites first (the natural teacher, TRADES hot starts), then the runs that need them."""
    first = [j for j in jobs if not j.needs]
    then = [j for j in jobs if j.needs]
    for phase in (first, then):
        with ThreadPoolExecutor(args.workers) as pool:
            list(pool.map(lambda job: run_one(job, args), phase))


# --------------------------------------------------------------------------- statistics
def mean_std(values: list[float | None]) -> tuple[float, float, int]:
    """(mean, sample std, how many values were defined); NSD is undefined when accuracy is 0."""
    defined = [v for v in values if v is not None]
    if not defined:
        return float("nan"), float("nan"), 0
    return statistics.fmean(defined), (statistics.stdev(defined) if len(defined) > 1 else 0.0), len(defined)


def t_interval(values: list[float]) -> tuple[float, tuple[float, float] | None]:
    """Mean and its 95 % Student-t interval over seeds (None with fewer than two seeds)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    from scipy.stats import t

    half = float(t.ppf(0.975, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, (mean - half, mean + half)


def noise_word(interval: tuple[float, float] | None, differences: list[float]) -> str:
    """better / worse when the 95 % interval excludes 0, identical when every seed's difference is 0, else within noise."""
    if differences and all(d == 0 for d in differences):
        return "identical"
    if interval is None:
        return "no interval (one seed)"
    if interval[0] > 0:
        return "better"
    if interval[1] < 0:
        return "worse"
    return "within noise"


# --------------------------------------------------------------------------- collecting
def load_runs(jobs: list[Job]) -> dict[str, Any]:
    """Per row label: the seeds' reports (student evaluation, per-sample flags), and the two teachers."""
    from robustdistill.evaluation import EvaluationResult

    rows: dict[str, list[dict[str, Any]]] = {}
    teachers: dict[str, Any] = {}
    for job in sorted(jobs, key=lambda j: j.seed):
        report = json.loads((job.out / "report.json").read_text())
        if job.label == NATURAL:
            continue
        rows.setdefault(job.label, []).append(
            {"seed": job.seed, "report": report["student"], "result": EvaluationResult.from_dict(report["student"])})
        if report.get("teacher"):
            teachers.setdefault("teacher", report["teacher"])
        if report.get("natural_teacher"):
            teachers.setdefault("natural teacher (mtard)", report["natural_teacher"])
    return {"rows": rows, "teachers": teachers}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"seeds": len(runs), "attacks": {}}
    for attack in runs[0]["report"]["results"]:
        res = [r["report"]["results"][attack] for r in runs]
        out["attacks"][attack] = {
            "accuracy": mean_std([r["accuracy"] for r in res]),
            "worst": mean_std([r["worst_class"]["accuracy"] for r in res]),
            "nsd": mean_std([r["nsd"] for r in res]),
            "worst_classes": [r["worst_class"]["name"] for r in res],
            "per_run": [{"seed": run["seed"], "accuracy": r["accuracy"], "worst": r["worst_class"]["accuracy"], "nsd": r["nsd"]}
                        for run, r in zip(runs, res)],
        }
    return out


def teacher_row(report: dict[str, Any]) -> dict[str, Any]:
    return {"seeds": 1, "attacks": {a: {"accuracy": mean_std([r["accuracy"]]), "worst": mean_std([r["worst_class"]["accuracy"]]),
                                        "nsd": mean_std([r["nsd"]]), "worst_classes": [r["worst_class"]["name"]]}
                                    for a, r in report["results"].items()}}


def headline(rows: dict[str, Any]) -> str:
    attacks = next(iter(rows.values()))["attacks"]
    return "aa" if "aa" in attacks else "pgd"


def ranking(rows: dict[str, Any], attack: str) -> list[dict[str, Any]]:
    """Methods by mean worst-class accuracy under ``attack`` (best first), each with its 95 % t-interval."""
    ranked = []
    for name, row in rows.items():
        worst = [r["worst"] for r in row["attacks"][attack]["per_run"]]
        average = [r["accuracy"] for r in row["attacks"][attack]["per_run"]]
        mean, interval = t_interval(worst)
        ranked.append({"method": name, "worst": mean, "worst_ci": interval, "average": statistics.fmean(average),
                       "seeds": len(worst)})
    return sorted(ranked, key=lambda r: (-r["worst"], -r["average"]))  # ties: the better average first


# --------------------------------------------------------------------------- paired comparisons
def mcnemar_by_seed(runs_a: list[dict[str, Any]], runs_b: list[dict[str, Any]], attack: str,
                    on_worst_of_b: bool) -> dict[str, int]:
    """Exact McNemar per seed on the same test samples (all of them, or B's worst class in that seed):
    how many seeds show a significant (p < 0.05) difference in A's favour, and against it."""
    from robustdistill.metrics import paired_test

    better = worse = 0
    for a, b in zip(runs_a, runs_b):
        flags_a, flags_b = a["result"].correct[attack], b["result"].correct[attack]
        if on_worst_of_b:
            worst = b["result"].summary(attack).worst_class.index
            mask = b["result"].labels == worst
            flags_a, flags_b = flags_a[mask], flags_b[mask]
        test = paired_test(flags_b, flags_a)  # reference B, "student" A: delta = A - B
        if test.significant():
            better += int((test.delta or 0) > 0)
            worse += int((test.delta or 0) < 0)
    return {"seeds": len(runs_a), "better": better, "worse": worse}


def compare_pair(runs: dict[str, list[dict[str, Any]]], a: str, b: str, attack: str, why: str) -> dict[str, Any]:
    """A - B by seed (the same seed: same initial weights, data order and attack noise) under ``attack``."""
    seeds = sorted({r["seed"] for r in runs[a]} & {r["seed"] for r in runs[b]})
    ra = [r for r in runs[a] if r["seed"] in seeds]
    rb = [r for r in runs[b] if r["seed"] in seeds]
    summary = [(x["report"]["results"][attack], y["report"]["results"][attack]) for x, y in zip(ra, rb)]
    differences = [100 * (x["worst_class"]["accuracy"] - y["worst_class"]["accuracy"]) for x, y in summary]
    worst = t_interval(differences)
    average = t_interval([100 * (x["accuracy"] - y["accuracy"]) for x, y in summary])
    return {"a": a, "b": b, "why": why, "attack": attack, "seeds": len(seeds), "worst": worst, "average": average,
            "verdict": noise_word(worst[1], differences), "mcnemar_average": mcnemar_by_seed(ra, rb, attack, False),
            "mcnemar_worst_class_of_b": mcnemar_by_seed(ra, rb, attack, True)}


def best_fair(ranked: list[dict[str, Any]]) -> str | None:
    """The Fair- method (ablations excluded) with the highest mean worst-class accuracy."""
    return next((r["method"] for r in ranked if r["method"].startswith("fair-") and r["method"] not in ABLATIONS), None)


def compared_pairs(rows: dict[str, Any], ranked: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """Every pair the study compares, with why (duplicates keep their first reason)."""
    fair = [m for m in rows if m.startswith("fair-")]
    distillers = [m for m in rows if m in METHODS]
    pairs = [(f, f.removeprefix("fair-"), "Fair-X vs X") for f in fair if f.removeprefix("fair-") in rows]
    pairs += [(f, b, "Fair-X vs robust-fairness AT") for f in fair if f not in ABLATIONS for b in ROBUST_FAIRNESS if b in rows]
    top = best_fair(ranked)
    if top is not None:
        pairs += [(top, m, "best Fair- method vs ARD method") for m in distillers]
    pairs += [(ranked[k]["method"], ranked[k + 1]["method"], "neighbours in the ranking") for k in range(len(ranked) - 1)]
    seen: set[frozenset[str]] = set()
    out = []
    for a, b, why in pairs:
        if frozenset((a, b)) not in seen:
            seen.add(frozenset((a, b)))
            out.append((a, b, why))
    return out


def claim(pairs: list[dict[str, Any]], ranked: list[dict[str, Any]], attack: str) -> list[str]:
    """The Fair-ARD paper's ranking claim (Fair-ARD over ARD methods and over robust-fairness AT), checked in words."""
    label = "AutoAttack" if attack == "aa" else attack.upper()
    lines = []
    own = [p for p in pairs if p["why"] == "Fair-X vs X"]
    counts = {w: [p["a"] for p in own if p["verdict"] == w] for w in ("better", "within noise", "identical", "worse")}
    lines.append(f"* Fair-X vs X, worst-class {label}: better in {len(counts['better'])} of {len(own)} bases "
                 f"({', '.join(counts['better']) or 'none'}), within noise in {len(counts['within noise'])}, identical in "
                 f"{len(counts['identical'])}, worse in {len(counts['worse'])} ({', '.join(counts['worse']) or 'none'}).")
    top = best_fair(ranked)
    verdicts, short = {}, {}
    for group, name in ((METHODS, "ARD methods"), (ROBUST_FAIRNESS, "robust-fairness AT")):
        chosen = [p for p in pairs if p["a"] == top and p["b"] in group]
        short[name] = [p["b"] for p in chosen if p["verdict"] != "better"]
        verdicts[name] = bool(chosen) and not short[name]
        shown = "; ".join(f"vs {p['b']}: {fmt_change(p['worst'])} ({p['verdict']})" for p in chosen) or "no pair"
        lines.append(f"* {top} (the best Fair- method here) over {name}, worst-class {label}: {shown}.")
    supported = [name for name, held in verdicts.items() if held]
    lines.append("")
    if len(supported) == len(verdicts):
        lines.append("**The paper's ranking claim is supported on this data** (every difference above is beyond seed noise).")
    elif supported:
        failed = "; ".join(f"over {name} not beyond seed noise against {', '.join(short[name]) or 'any'}"
                           for name, held in verdicts.items() if not held)
        lines.append(f"**The paper's ranking claim is only partly supported on this data**: {top} is better than every "
                     f"{supported[0].removesuffix(' methods')} method, but {failed}.")
    else:
        lines.append(f"**The paper's ranking claim is not supported on this data**: the best Fair- method ({top}) is "
                     "not better than every ARD method, nor than every robust-fairness AT method, beyond seed noise.")
    return lines


# --------------------------------------------------------------------------- markdown
def fmt(stats: tuple[float, float, int], seeds: int, pct: bool = True) -> str:
    mean, std, n = stats
    if n == 0:
        return "n/a"
    if seeds == 1:  # the teachers: one model, no spread
        return f"{100 * mean:.1f}" if pct else f"{mean:.2f}"
    text = f"{100 * mean:.1f} ± {100 * std:.1f}" if pct else f"{mean:.2f} ± {std:.2f}"
    return text if n == seeds else f"{text} ({n} of {seeds})"


def fmt_change(value: tuple[float, tuple[float, float] | None]) -> str:
    mean, interval = value
    return f"{mean:+.1f}" + (f" [{interval[0]:+.1f}, {interval[1]:+.1f}]" if interval else "")


def table(rows: dict[str, Any], teachers: dict[str, Any]) -> list[str]:
    attacks = [a for a in ATTACKS if a in next(iter(rows.values()))["attacks"]]
    head = "| model | " + " | ".join(f"{a.upper()} avg | {a.upper()} worst | {a.upper()} NSD" for a in attacks) + " |"
    lines = [head, "|---|" + "---:|---:|---:|" * len(attacks)]
    for name, row in [*rows.items(), *[(k, teacher_row(v)) for k, v in teachers.items()]]:
        cells = []
        for a in attacks:
            r = row["attacks"][a]
            cells += [fmt(r["accuracy"], row["seeds"]), fmt(r["worst"], row["seeds"]), fmt(r["nsd"], row["seeds"], pct=False)]
        label = f"**{name}** (1 model)" if name in teachers else f"{name} ({row['seeds']} seeds)"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def ranking_lines(ranked: list[dict[str, Any]], attack: str) -> list[str]:
    lines = [f"| rank | method | worst-class {attack.upper()} % (mean, 95 % t-interval over seeds) | average % | seeds |",
             "|---:|---|---:|---:|---:|"]
    for k, r in enumerate(ranked, 1):
        interval = f" [{100 * r['worst_ci'][0]:.1f}, {100 * r['worst_ci'][1]:.1f}]" if r["worst_ci"] else ""
        note = " (ablation)" if r["method"] in ABLATIONS else ""
        lines.append(f"| {k} | {r['method']}{note} | {100 * r['worst']:.1f}{interval} | {100 * r['average']:.1f} | {r['seeds']} |")
    return lines


def pair_lines(pairs: list[dict[str, Any]]) -> list[str]:
    lines = ["| A | B | compared as | worst class: A − B, points [95 % CI] | verdict | average: A − B [95 % CI] | "
             "McNemar, all samples: seeds A sig. better / worse | McNemar, B's worst class: seeds A sig. better / worse |",
             "|---|---|---|---:|---|---:|---:|---:|"]
    for p in pairs:
        m1, m2 = p["mcnemar_average"], p["mcnemar_worst_class_of_b"]
        lines.append(f"| {p['a']} | {p['b']} | {p['why']} | {fmt_change(p['worst'])} | {p['verdict']} | "
                     f"{fmt_change(p['average'])} | {m1['better']} / {m1['worse']} of {m1['seeds']} | "
                     f"{m2['better']} / {m2['worse']} of {m2['seeds']} |")
    return lines


def markdown(result: dict[str, Any], teachers: dict[str, Any], meta: dict[str, Any]) -> str:
    attack = result["headline"]
    label = "AutoAttack" if attack == "aa" else attack.upper()
    within = [f"{p['a']} vs {p['b']}" for p in result["pairs"] if p["verdict"] not in ("better", "worse")]
    text = ["# Digits robust-fairness study", "", *table(result["rows"], teachers), "",
            "Accuracy in % (mean ± sample std over seeds); NSD = population std / mean of the class accuracies "
            "(n/a where the accuracy is 0 for every class; \"(k of n)\" = defined for k seeds only). Distillation rows: "
            "bundled digits teacher → student; trades, frl and cfa train without a teacher (`train-teacher`); frl "
            "fine-tunes the same seed's trades model (its hot start); mtard's natural teacher is a small_cnn trained "
            "with `train-teacher --method standard` (seed 0). fair-absld is an ablation (no paper proposes it).",
            f"Command: `{meta['command']}`; {meta['runs']} runs, {meta['workers']} at a time, {meta['threads']} thread each, "
            f"2-core CPU: {meta['study_hours']:.2f} h from the first run's start to the last report (a resumed study "
            f"counts its pauses, and other jobs may have shared the machine), {meta['run_hours']:.2f} h of the runs' own "
            f"durations added up; versions: {meta['versions']}.",
            "", f"## Ranking by worst-class {label}", "", *ranking_lines(result["ranking"], attack), "",
            "The interval is the 95 % Student-t interval of the mean over seeds (none with one seed).", "",
            f"## Paired comparisons (worst-class and average {label}, by seed)", "", *pair_lines(result["pairs"]), "",
            "Same seed = same initial weights, data order and attack noise, so differences are paired by seed; the "
            "interval is the 95 % paired-t interval of the mean difference. verdict: better / worse when that interval "
            "excludes 0, identical when every seed's difference is 0, else within noise. McNemar: exact test on the "
            "same test samples, per seed, p < 0.05.", "",
            "Not distinguishable from seed noise (within noise, identical, or one seed only): "
            + (", ".join(within) or "none") + ".", "",
            "## The Fair-ARD paper's ranking claim on this data", "", *result["claim"], ""]
    return "\n".join(text)


# --------------------------------------------------------------------------- main
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--methods", default=",".join(METHODS), help="distillation bases (each with its Fair- version)")
    parser.add_argument("--baselines", default=",".join(BASELINES), help="teacher-free rows: trades, frl, cfa")
    parser.add_argument("--student", default="tiny_cnn")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--no-aa", action="store_true")
    parser.add_argument("--no-fair", action="store_true", help="only the base methods")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", nargs=argparse.REMAINDER, default=[], help="extra flags for every run")
    parser.add_argument("--out", default=str(RESULTS), help="where fairness_study.md/.json go")
    parser.add_argument("--work-dir", default="runs/fairness-study", help="run directories (not committed)")
    return parser.parse_args()


def study_hours(dirs: list[Path]) -> float:
    """Wall time of the whole study, also when it was resumed: first run's start to last report."""
    starts = [(d / "config.yaml").stat().st_mtime for d in dirs]
    ends = [(d / "report.json").stat().st_mtime for d in dirs]
    return (max(ends) - min(starts)) / 3600


def run_hours(dirs: list[Path]) -> float:
    """The runs' own durations added up (config.yaml written to report.json written; a resumed run counts its gap)."""
    return sum((d / "report.json").stat().st_mtime - (d / "config.yaml").stat().st_mtime for d in dirs) / 3600


def analyse(loaded: dict[str, Any]) -> dict[str, Any]:
    rows = {name: summarise(runs) for name, runs in loaded["rows"].items()}
    attack = headline(rows)
    ranked = ranking(rows, attack)
    pairs = [compare_pair(loaded["rows"], a, b, attack, why) for a, b, why in compared_pairs(rows, ranked)]
    return {"rows": rows, "headline": attack, "ranking": ranked, "pairs": pairs, "claim": claim(pairs, ranked, attack)}


def main() -> None:
    args = parse_args()
    started = time.time()
    jobs = plan(args)
    print(f"{len(jobs)} runs, {args.workers} at a time", flush=True)
    run_all(jobs, args)
    loaded = load_runs(jobs)
    result, teachers = analyse(loaded), loaded["teachers"]
    from robustdistill.runtime import versions

    meta = {"command": "python benchmarks/fairness_study.py " + " ".join(sys.argv[1:]), "last_invocation_s": time.time() - started,
            "study_hours": study_hours([j.out for j in jobs]), "run_hours": run_hours([j.out for j in jobs]), "runs": len(jobs), "workers": args.workers,
            "threads": args.threads, "versions": versions(), "seeds": args.seeds, "student": args.student,
            "epochs": args.epochs, "overrides": STUDY_OVERRIDES, "extra_flags": args.set}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = markdown(result, teachers, meta)
    (out / "fairness_study.md").write_text(text)
    plain = {**result, "teachers": {k: teacher_row(v) for k, v in teachers.items()}}
    (out / "fairness_study.json").write_text(json.dumps({"meta": meta, **plain}, indent=2))
    print(text)


if __name__ == "__main__":
    main()
