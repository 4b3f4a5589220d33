"""Where bf16 autocast and a second intra-op thread pay off on this CPU: the thresholds of `--amp auto`
and `--threads` (robustdistill/train/numerics.py).

    python benchmarks/numeric_path.py            # ~10 minutes on 2 cores; run it on an idle machine

One training step of RSLAD (10-step PGD + loss + backward; the step every distillation method is
built from) is timed for students of increasing size, each against a teacher of the same
architecture, in four variants - fp32 / bf16 autocast (+ channels_last) x 1 / 2 intra-op threads -
interleaved round by round so that a change in machine load hits every variant alike. Reported:
median step time, and the speed-up of bf16 over fp32 and of 2 threads over 1, against the MACs per
image of student + teacher (what `--amp auto` looks at).

Results: benchmarks/results/numeric_path.md (+ .json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from robustdistill.cost import count_macs
from robustdistill.methods import AttackSettings, build_strategy
from robustdistill.models import DataHint, build_student
from robustdistill.runtime import versions

RESULTS = Path(__file__).resolve().parent / "results"
# (architecture, channels, image side, batch): from the digits default job to a CIFAR ResNet-18.
MODELS = [("tiny_cnn", 1, 8, 32), ("small_cnn", 1, 8, 32), ("small_cnn", 3, 32, 32), ("mobilenetv2", 3, 32, 32),
          ("resnet18", 3, 32, 32)]
VARIANTS = [("fp32", 1), ("bf16", 1), ("fp32", 2), ("bf16", 2)]


def make(arch: str, channels: int, side: int, batch: int):
    torch.manual_seed(0)
    hint = DataHint(10, (channels, side, side), mean=(0.5,) * channels, std=(0.25,) * channels)
    student, teacher = build_student(arch, hint), build_student(arch, hint).eval().requires_grad_(False)
    x, y = torch.rand(batch, channels, side, side), torch.randint(0, 10, (batch,))
    macs = count_macs(student, hint.input_size) + count_macs(teacher, hint.input_size)
    return student, teacher, x, y, macs


def step_seconds(student, teacher, x, y, amp: str, repeats: int) -> float:
    strategy = build_strategy("rslad", attack=AttackSettings(8 / 255, 2 / 255, 10), num_classes=10)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01)
    layout = torch.channels_last if amp == "bf16" else torch.contiguous_format
    student, teacher, x = student.to(memory_format=layout), teacher.to(memory_format=layout), x.contiguous(memory_format=layout)
    times = []
    for _ in range(repeats + 1):  # the first is warm-up
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
            student.eval()
            adv = strategy.perturb(student, teacher, x, y)
            student.train()
            loss, _ = strategy.loss(student, teacher, x, y, adv)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for arch, channels, side, batch in MODELS:
        student, teacher, x, y, macs = make(arch, channels, side, batch)
        seconds: dict[str, list[float]] = {f"{amp}/{n}": [] for amp, n in VARIANTS}
        for _ in range(args.rounds):
            for amp, threads in VARIANTS:
                torch.set_num_threads(threads)
                seconds[f"{amp}/{threads}"].append(step_seconds(student, teacher, x, y, amp, args.repeats))
        median = {k: statistics.median(v) for k, v in seconds.items()}
        rows.append({"model": f"{arch} {channels}x{side}x{side}", "batch": batch, "macs_student_plus_teacher": macs,
                     "seconds": median, "bf16_speedup_1t": median["fp32/1"] / median["bf16/1"],
                     "two_thread_speedup_fp32": median["fp32/1"] / median["fp32/2"],
                     "load_after": os.getloadavg()[0]})
        print(json.dumps(rows[-1]), flush=True)
    write(rows, args)


def write(rows: list[dict], args: argparse.Namespace) -> None:
    RESULTS.mkdir(exist_ok=True)
    meta = {"command": "python benchmarks/numeric_path.py", "rounds": args.rounds, "repeats": args.repeats,
            "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "versions": versions()}
    (RESULTS / "numeric_path.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = ["# Numeric path: bf16 and intra-op threads against model size (CPU)", "",
             f"`{meta['command']}` ({args.rounds} interleaved rounds x {args.repeats} timed steps per variant; "
             "one RSLAD training step, teacher of the same architecture).", "",
             "| student (input) | batch | M MACs / image (student + teacher) | fp32 1 thread (ms) | bf16 1 thread | "
             "fp32 2 threads | bf16 2 threads | bf16 speed-up (1 thread) | 2-thread speed-up (fp32) | load after |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        s = r["seconds"]
        lines.append(f"| {r['model']} | {r['batch']} | {r['macs_student_plus_teacher'] / 1e6:.1f} | {1000 * s['fp32/1']:.1f} | "
                     f"{1000 * s['bf16/1']:.1f} | {1000 * s['fp32/2']:.1f} | {1000 * s['bf16/2']:.1f} | "
                     f"{r['bf16_speedup_1t']:.2f}x | {r['two_thread_speedup_fp32']:.2f}x | {r['load_after']:.2f} |")
    (RESULTS / "numeric_path.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
