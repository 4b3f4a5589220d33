"""The no-argument `robustdistill distill`: how its method and epochs were chosen, what it costs, what it gives.

    python benchmarks/default_job.py                 # choose (validation split) + time the default job
    python benchmarks/default_job.py --skip-choice   # only time the default job and its KD baseline

Part 1 (choice, VALIDATION split only): short `robustdistill distill` runs of the candidate
(method, epochs) pairs on digits with the bundled teacher and `tiny_cnn`, several seeds, two runs at a
time with one thread each; the score is the last epoch's validation PGD-10 accuracy and worst-class
accuracy from metrics.jsonl. The runs end with a clean-only test evaluation that is not read here.

Part 2 (cost and result): the default job itself, `robustdistill distill` with no arguments, run alone
on the machine and timed end to end (import, training, validation, the test evaluation with clean,
PGD-20, CW-20 and AutoAttack), then the same job with `--method kd` as the non-robust baseline.

Results: benchmarks/results/default_job.md (+ .json). Run directories go to runs/default-job.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from robustdistill.runtime import versions

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
CANDIDATES = [("fair-ard", 20), ("fair-rslad", 20), ("fair-iad", 20), ("fair-iad", 30), ("fair-ard", 40), ("fair-rslad", 40), ("fair-iad", 40)]
COMMON = ["--teacher", "bundled:digits", "--student", "tiny_cnn", "--dataset", "digits"]


def choice_run(work: Path, method: str, epochs: int, seed: int) -> dict:
    out = work / f"{method}-e{epochs}-s{seed}"
    if not (out / "report.json").exists():
        cmd = [sys.executable, "-m", "robustdistill", "distill", *COMMON, "--method", method, "--epochs", str(epochs),
               "--seed", str(seed), "--eval-attacks", "clean", "--no-aa", "--out", str(out), "--overwrite"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "ROBUSTDISTILL_NO_PROGRESS": "1"}
        subprocess.run(cmd, env=env, check=True, capture_output=True)
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    return {"method": method, "epochs": epochs, "seed": seed, **{k: last[k] for k in ("val_clean", "val_pgd", "val_pgd_worst")}}


def timed_job(work: Path, name: str, flags: list[str]) -> dict:
    """One job alone on the machine, timed from the shell's point of view (process start to exit)."""
    out = work / name
    cmd = [sys.executable, "-m", "robustdistill", "distill", *flags, "--out", str(out), "--overwrite"]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    subprocess.run(cmd, env={**os.environ, "ROBUSTDISTILL_NO_PROGRESS": "1"}, check=True, capture_output=True)
    wall = time.perf_counter() - started
    report = json.loads((out / "report.json").read_text())
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    results = {a: {"accuracy": r["accuracy"], "worst": r["worst_class"]["accuracy"], "worst_class": r["worst_class"]["name"]}
               for a, r in report["student"]["results"].items()}
    return {"name": name, "flags": flags, "wall_s": wall, "train_s": sum(m["seconds"] for m in metrics),
            "load_before": load_before, "config": report["run"]["config"], "results": results}


def pct(v: float) -> str:
    return f"{100 * v:.1f}"


def markdown(choice: list[dict], jobs: list[dict], meta: dict) -> str:
    lines = ["# The default job (`robustdistill distill` with no arguments)", ""]
    if choice:
        lines += ["## Choosing its method and length (validation split only)", "",
                  "Last-epoch validation PGD-10 accuracy on digits (bundled teacher -> `tiny_cnn`, eps 0.2, batch 32),",
                  "mean ± std over seeds; the test split is not read.", "",
                  "| method | epochs | seeds | val clean % | val PGD-10 % | val worst-class PGD-10 % |", "|---|---:|---:|---:|---:|---:|"]
        groups: dict[tuple[str, int], list[dict]] = {}
        for r in choice:
            groups.setdefault((r["method"], r["epochs"]), []).append(r)
        for (method, epochs), rs in groups.items():
            def ms(key: str) -> str:
                vals = [100 * r[key] for r in rs]
                return f"{statistics.fmean(vals):.1f} ± {statistics.stdev(vals) if len(vals) > 1 else 0.0:.1f}"
            lines.append(f"| {method} | {epochs} | {len(rs)} | {ms('val_clean')} | {ms('val_pgd')} | {ms('val_pgd_worst')} |")
        lines.append("")
    if not jobs:
        return "\n".join(lines)
    lines += ["## Cost and result of the default job (test split)", "",
              "Each job ran alone on the machine (the 1-minute load average before it lags: it still counts the",
              "previous job), all cores, timed from process",
              "start to exit: import, training, per-epoch validation, and the final test evaluation (clean, PGD-20,",
              "CW∞-20, AutoAttack `standard` on 360 images; the teacher's evaluation is the shipped one, reused).", "",
              "| job | wall time | of which training | clean % | PGD-20 % (worst class) | CW∞-20 % (worst) | AutoAttack % (worst) | load before |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for j in jobs:
        r = j["results"]
        cell = lambda a: f"{pct(r[a]['accuracy'])} ({pct(r[a]['worst'])}, class {r[a]['worst_class']})" if a in r else "–"  # noqa: E731
        command = f"`robustdistill distill {' '.join(j['flags'])}`" if j["flags"] else "`robustdistill distill` (no arguments)"
        lines.append(f"| {command} | {j['wall_s'] / 60:.1f} min | {j['train_s']:.0f} s | {pct(r['clean']['accuracy'])} | "
                     f"{cell('pgd')} | {cell('cw')} | {cell('aa')} | {j['load_before']:.2f} |")
    lines += ["", f"Command: `{meta['command']}`; machine: {meta['machine']}; versions: {meta['versions']}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default="runs/default-job")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--skip-choice", action="store_true", help="only time the default job and its KD baseline")
    parser.add_argument("--choice-only", action="store_true", help="only run the validation-split choice and print it")
    parser.add_argument("--render-only", action="store_true", help="rewrite default_job.md from default_job.json")
    args = parser.parse_args()
    if args.render_only:
        data = json.loads((RESULTS / "default_job.json").read_text())
        (RESULTS / "default_job.md").write_text(markdown(data["choice"], data["jobs"], data["meta"]))
        return
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    choice: list[dict] = []
    if not args.skip_choice:
        todo = [(m, e, s) for m, e in CANDIDATES for s in range(args.seeds)]
        with ThreadPoolExecutor(2) as pool:
            choice = list(pool.map(lambda t: choice_run(work, *t), todo))
        if args.choice_only:
            print(markdown(choice, [], {"command": "", "machine": "", "versions": ""}))
            return
    jobs = [timed_job(work, "default", []), timed_job(work, "kd-baseline", ["--method", "kd"])]
    meta = {"command": "python benchmarks/default_job.py " + " ".join(sys.argv[1:]),
            "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, no GPU" if not _has_gpu() else "GPU",
            "versions": versions()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "default_job.json").write_text(json.dumps({"choice": choice, "jobs": jobs, "meta": meta}, indent=1) + "\n")
    text = markdown(choice, jobs, meta)
    (RESULTS / "default_job.md").write_text(text)
    print(text)


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
