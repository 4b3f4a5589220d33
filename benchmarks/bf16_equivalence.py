"""Does bf16 autocast training keep the student's robustness? fp32 vs bf16 on digits, 5 seeds.

    python benchmarks/bf16_equivalence.py            # 10 runs, two at a time with one thread each (~30 min on 2 cores)

Each run is the default job with a ``small_cnn`` student (94 k parameters, the teacher's
architecture): ``robustdistill distill --student small_cnn --amp {none,bf16} --seed S``, the
bundled teacher, Fair-IAD, 20 epochs; the final test evaluation (clean, PGD-20, CW∞-20, AutoAttack)
always runs in fp32. The question is whether bf16 *training* changes robust accuracy beyond what a
different seed does: per attack, the paired difference bf16 − fp32 over seeds with its 95 % t
interval, next to the seed-to-seed standard deviation of each.

Results: benchmarks/results/bf16_equivalence.md (+ .json). Runs go to runs/bf16-equivalence.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from scipy import stats

RESULTS = Path(__file__).resolve().parent / "results"
ATTACKS = ("clean", "pgd", "cw", "aa")
LABEL = {"clean": "clean", "pgd": "PGD-20", "cw": "CW∞-20", "aa": "AutoAttack"}


def run(work: Path, amp: str, seed: int) -> dict:
    out = work / f"{amp}-s{seed}"
    if not (out / "report.json").exists():  # finished runs are kept: the script can be re-run after a stop
        cmd = [sys.executable, "-m", "robustdistill", "distill", "--student", "small_cnn", "--amp", amp, "--seed", str(seed),
               "--threads", "1", "--eval-workers", "1", "--out", str(out), "--overwrite"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "ROBUSTDISTILL_NO_PROGRESS": "1"}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{shlex.join(cmd)} failed:\n{done.stderr[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    results = report["student"]["results"]
    return {"amp": amp, "seed": seed, "numeric_path": report["run"]["numeric_path"]["reason"],
            **{a: results[a]["accuracy"] for a in ATTACKS}, **{f"{a}_worst": results[a]["worst_class"]["accuracy"] for a in ATTACKS}}


def paired(rows: list[dict], key: str) -> dict:
    by = {(r["amp"], r["seed"]): r[key] for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    fp32, bf16 = [by[("none", s)] for s in seeds], [by[("bf16", s)] for s in seeds]
    diffs = [b - f for b, f in zip(bf16, fp32)]
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    half = stats.t.ppf(0.975, len(diffs) - 1) * sd / len(diffs) ** 0.5
    return {"fp32_mean": statistics.fmean(fp32), "fp32_sd": statistics.stdev(fp32), "bf16_mean": statistics.fmean(bf16),
            "bf16_sd": statistics.stdev(bf16), "diff": mean, "low": mean - half, "high": mean + half,
            "p": float(stats.ttest_rel(bf16, fp32).pvalue)}


def markdown(rows: list[dict], meta: dict) -> str:
    seeds = sorted({r["seed"] for r in rows})
    lines = ["# bf16 autocast training vs fp32: robust accuracy of a `small_cnn` student (digits)", "",
             f"`{meta['command']}` - {meta['date']}, {meta['cpu']}; seeds {seeds}; torch {meta['torch']}. Each run: "
             "`robustdistill distill --student small_cnn --amp none|bf16 --seed S` (bundled teacher, fair-iad, 20 epochs, "
             "eps 0.2); the test evaluation (360 digits) is fp32 in both.", "",
             "| attack | fp32 mean ± sd % | bf16 mean ± sd % | bf16 − fp32, paired (95 % t interval) | p (paired t) |",
             "|---|---:|---:|---:|---:|"]
    summary = {}
    for a in ATTACKS:
        for key, name in ((a, LABEL[a]), (f"{a}_worst", f"{LABEL[a]} worst class")):
            p = summary[key] = paired(rows, key)
            lines.append(f"| {name} | {100 * p['fp32_mean']:.1f} ± {100 * p['fp32_sd']:.1f} | {100 * p['bf16_mean']:.1f} ± "
                         f"{100 * p['bf16_sd']:.1f} | {100 * p['diff']:+.1f} ({100 * p['low']:+.1f}, {100 * p['high']:+.1f}) | "
                         f"{p['p']:.2f} |")
    within = [LABEL.get(k, k) for k, p in summary.items() if p["low"] <= 0 <= p["high"]]
    lines += ["", "Per run:", "", "| amp | seed | " + " | ".join(f"{LABEL[a]} % (worst)" for a in ATTACKS) + " |",
              "|---|---:|" + "---:|" * len(ATTACKS)]
    for r in sorted(rows, key=lambda r: (r["amp"], r["seed"])):
        lines.append(f"| {r['amp']} | {r['seed']} | " + " | ".join(f"{100 * r[a]:.1f} ({100 * r[a + '_worst']:.1f})" for a in ATTACKS) + " |")
    lines += ["", f"{len(within)} of {len(summary)} paired intervals contain 0. bf16 runs: {rows[-1]['numeric_path']}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=Path("runs/bf16-equivalence"))
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    plan = [(amp, s) for s in range(args.seeds) for amp in ("none", "bf16")]
    started = time.perf_counter()
    with ThreadPoolExecutor(args.parallel) as pool:
        rows = list(pool.map(lambda t: run(args.work_dir, *t), plan))
    import torch

    meta = {"command": shlex.join(["python", "benchmarks/bf16_equivalence.py", *sys.argv[1:]]), "date": time.strftime("%Y-%m-%d %H:%M"),
            "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__,
            "wall_s": round(time.perf_counter() - started)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bf16_equivalence.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    text = markdown(rows, meta)
    (RESULTS / "bf16_equivalence.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
