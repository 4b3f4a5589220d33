"""The no-argument `robustdistill distill`, before and after issue 12, on an idle and on a busy machine.

    git worktree add /tmp/before 6bd1782     # the tree to compare against (the last commit before the redesign)
    python benchmarks/default_job_speed.py --before-tree /tmp/before

Each job is `python -m robustdistill distill --seed S --out DIR` timed from process start to exit
(import, training, validation, the final test evaluation with clean, PGD-20, CW∞-20 and
AutoAttack ``standard``; the teacher's shipped evaluation is reused, the user cache is off so
nothing else is). "before" runs the same command from ``--before-tree`` (``PYTHONPATH``), "after"
from this checkout. Variants are interleaved seed by seed, so a drift in machine speed hits both.

"busy" runs the job while one other CPU-bound process spins (``python -c "while True: pass"``, a
laptop with a browser open); the issue asks for busy ≤ 1.5x idle.

The student's numbers are compared pair by pair (same seed, before vs after), with the mean paired
difference and its 95 % t interval over the seeds. With ``OMP_NUM_THREADS`` unset the two trees do
not train at the same thread count ("before" uses torch's default, "after" one intra-op thread for a
small model), so their students differ by floating-point reduction order, like two seeds' worth of
noise at most; that training itself is unchanged is shown separately, at a fixed thread count
(``OMP_NUM_THREADS=1``, tensors compared bit for bit). Results: benchmarks/results/default_job_speed.md
(+ .json); ``--render`` rewrites the Markdown from the JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]
ATTACKS = ("clean", "pgd", "cw", "aa")


def tensor_digest(path: Path) -> str:
    """sha256 over the student's tensors (names, dtypes, shapes, bytes) - not the file, whose metadata differs."""
    from safetensors.torch import load_file

    digest = hashlib.sha256()
    for name, tensor in sorted(load_file(str(path)).items()):
        digest.update(f"{name}{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.contiguous().view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes())
    return digest.hexdigest()


def run_job(tree: Path, out: Path, seed: int, busy: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "ROBUSTDISTILL_NO_PROGRESS": "1", "ROBUSTDISTILL_CACHE": "off"}
    env.pop("OMP_NUM_THREADS", None)  # what a user's shell has
    cmd = [sys.executable, "-m", "robustdistill", "distill", "--seed", str(seed), "--out", str(out), "--overwrite"]
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        time.sleep(0.5 if busy else 0)
        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tree)
        wall = time.perf_counter() - started
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    if done.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} (in {tree}) failed:\n{done.stderr[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    student = report["student"]["results"]
    return {"seed": seed, "busy": busy, "wall_s": round(wall, 1), "load_before": round(load_before, 2),
            "tensor_sha256": tensor_digest(out / "student.safetensors"),
            "student": {a: {"accuracy": student[a]["accuracy"], "worst": student[a]["worst_class"]["accuracy"]}
                        for a in ATTACKS if a in student},
            "numeric_path": report["run"].get("numeric_path"), "sharding": report["student"].get("sharding")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before-tree", type=Path, required=True, help="a checkout of the commit to compare against")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--busy-before", type=int, default=1, help="busy runs of the before tree (slow; the first seeds)")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/default-job-speed"))
    args = parser.parse_args()
    trees = {"before": args.before_tree.resolve(), "after": ROOT}
    commits = {k: subprocess.run(["git", "-C", str(t), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
               for k, t in trees.items()}
    rows = []
    for i, seed in enumerate(args.seeds):
        plan = [("before", False), ("after", False), ("after", True)] + ([("before", True)] if i < args.busy_before else [])
        for variant, busy in plan:
            out = (args.work_dir / f"{variant}-{'busy' if busy else 'idle'}-s{seed}").resolve()
            row = {"variant": variant, "commit": commits[variant], **run_job(trees[variant], out, seed, busy)}
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("variant", "seed", "busy", "wall_s", "load_before")}), flush=True)
    write(rows, args, commits)


def write(rows: list[dict], args: argparse.Namespace, commits: dict[str, str]) -> None:
    meta = {"command": shlex.join(["python", "benchmarks/default_job_speed.py", *sys.argv[1:]]), "commits": commits,
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M")}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "default_job_speed.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    (RESULTS / "default_job_speed.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


def _walls(rows: list[dict], variant: str, busy: bool) -> list[float]:
    return [r["wall_s"] for r in rows if r["variant"] == variant and r["busy"] == busy]


def markdown(rows: list[dict], meta: dict) -> str:
    med = {(v, b): statistics.median(_walls(rows, v, b)) for v in ("before", "after") for b in (False, True) if _walls(rows, v, b)}
    lines = ["# The default job: wall time before and after issue 12, idle and busy", "",
             f"`{meta['command']}` - {meta['date']}, {meta['cpu']}, {meta['cores']} cores; before = "
             f"`{meta['commits']['before']}`, after = `{meta['commits']['after']}`. Process start to exit, "
             "`OMP_NUM_THREADS` unset, the user cache off (the teacher's shipped evaluation is reused, as for a "
             "new user); busy = one other process spinning on a core.", "",
             "| variant | machine | runs (s) | median |", "|---|---|---|---:|"]
    for (variant, busy), value in med.items():
        runs = ", ".join(f"{w:.0f}" for w in _walls(rows, variant, busy))
        lines.append(f"| {variant} | {'busy' if busy else 'idle'} | {runs} | **{value:.0f} s** |")
    if ("after", True) in med and ("after", False) in med:
        lines += ["", f"After: busy / idle = **{med[('after', True)] / med[('after', False)]:.2f}x**"
                  + (f" (before: {med[('before', True)] / med[('before', False)]:.2f}x)" if ("before", True) in med else "")
                  + f"; idle speed-up after vs before: **{med[('before', False)] / med[('after', False)]:.2f}x**."]
    lines += ["", "## The student, seed by seed (idle runs)", "",
              "Tensors differ when the two trees train at different thread counts (see the script's docstring).", "",
              "| seed | student tensors before = after | " + " | ".join(f"{a} before → after (worst class)" for a in ATTACKS) + " |",
              "|---:|---|" + "---|" * len(ATTACKS)]
    for seed in sorted({r["seed"] for r in rows}):
        pair = {r["variant"]: r for r in rows if r["seed"] == seed and not r["busy"]}
        if len(pair) < 2:
            continue
        same = "identical" if pair["before"]["tensor_sha256"] == pair["after"]["tensor_sha256"] else "**differ**"
        cells = []
        for a in ATTACKS:
            b, f = pair["before"]["student"].get(a), pair["after"]["student"].get(a)
            cells.append(f"{100 * b['accuracy']:.1f} → {100 * f['accuracy']:.1f} ({100 * b['worst']:.1f} → {100 * f['worst']:.1f})"
                         if b and f else "–")
        lines.append(f"| {seed} | {same} | " + " | ".join(cells) + " |")
    lines += paired_lines(rows)
    after = next((r for r in rows if r["variant"] == "after"), None)
    if after:
        lines += ["", f"After's numeric path: {after['numeric_path']['reason'] if after['numeric_path'] else '-'}; "
                  f"final evaluation sharding: {after['sharding']}."]
    return "\n".join(lines) + "\n"


def paired_lines(rows: list[dict]) -> list[str]:
    """After − before per attack (average and worst class), mean over seeds with a 95 % t interval."""
    from scipy.stats import t as student_t

    pairs = []
    for seed in sorted({r["seed"] for r in rows}):
        pair = {r["variant"]: r for r in rows if r["seed"] == seed and not r["busy"]}
        if len(pair) == 2:
            pairs.append(pair)
    if len(pairs) < 2:
        return []
    lines = ["", "| attack | after − before, average (points) | after − before, worst class (points) |", "|---|---:|---:|"]
    for attack in ATTACKS:
        cells = []
        for key in ("accuracy", "worst"):
            diffs = [100 * (p["after"]["student"][attack][key] - p["before"]["student"][attack][key])
                     for p in pairs if attack in p["after"]["student"] and attack in p["before"]["student"]]
            mean = statistics.fmean(diffs)
            half = float(student_t.ppf(0.975, len(diffs) - 1)) * statistics.stdev(diffs) / len(diffs) ** 0.5
            verdict = "within noise" if mean - half <= 0 <= mean + half else ("higher" if mean > 0 else "lower")
            cells.append(f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}], {verdict}")
        lines.append(f"| {attack} | {cells[0]} | {cells[1]} |")
    count = 2 * len(ATTACKS)
    lines += ["", f"Mean over {len(pairs)} seeds [95 % paired-t interval]. Of {count} such intervals, at least one "
              f"excludes 0 by chance alone with probability {1 - 0.95 ** count:.0%} when nothing changed."]
    return lines


if __name__ == "__main__":
    if "--render" in sys.argv:  # rewrite the Markdown from the stored JSON (no job is run)
        stored = json.loads((RESULTS / "default_job_speed.json").read_text())
        (RESULTS / "default_job_speed.md").write_text(markdown(stored["rows"], stored["meta"]))
        print(markdown(stored["rows"], stored["meta"]))
    else:
        main()
