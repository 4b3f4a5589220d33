"""Evaluation time with 1 and 2 processes on this CPU (sharded evaluation), interleaved, with the machine's load.

Each workload is evaluated by :func:`robustdistill.evaluation.evaluate_model` in three variants:

* ``1 proc x 1 thread``  - one process, ``torch.set_num_threads(1)``, ``workers=1``;
* ``1 proc x 2 threads`` - one process, two intra-op threads, ``workers=1``;
* ``2 procs x 1 thread`` - ``workers=2``: two forked worker processes with one thread each.

The variants are interleaved (rotated every repetition) so a change in the machine's load hits all
of them. For each run the script records wall time, the CPU time of this process and its workers,
the 1-minute load average before and after, and - from /proc/stat - how many cores *other*
processes kept busy during the run (``others``: the machine's busy CPU time minus ours, per
second of wall time). With ``others`` near 0 the numbers are those of an idle machine.
It also checks that every variant gives the same per-sample results (the threads variant may
differ in a sample or two: another thread count can round a float reduction differently).

    python benchmarks/scaling.py                      # all workloads, 2 repetitions
    python benchmarks/scaling.py --workloads digits-aa --repeats 3

Rows are appended to benchmarks/results/scaling.jsonl; a markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from robustdistill.data import TensorSplit, load_dataset
from robustdistill.evaluation import eval_settings, evaluate_model
from robustdistill.models import Classifier, ModelSpec, build_arch, load_model

RESULTS = Path(__file__).parent / "results"
VARIANTS = {"1 proc x 1 thread": (1, 1), "1 proc x 2 threads": (2, 1), "2 procs x 1 thread": (1, 2)}


@dataclass
class Workload:
    """A model, data and attacks to evaluate (built once, before any timing)."""

    name: str
    describe: str
    build: Callable[[], tuple[torch.nn.Module, Any, tuple[str, ...], list[str], float, dict[str, Any]]]
    batch_size: int


def _cifar_like(arch: str, n: int) -> tuple[torch.nn.Module, Any, tuple[str, ...]]:
    spec = ModelSpec(arch=arch, num_classes=10, input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.25,) * 3)
    torch.manual_seed(0)
    model = Classifier(build_arch(arch, 10, 3), spec).eval()
    split = TensorSplit("random", torch.rand(n, 3, 32, 32), torch.randint(0, 10, (n,)))
    return model, split, tuple(map(str, range(10)))


def workloads(n_digits: int) -> dict[str, Workload]:
    digits = load_dataset("digits")
    teacher = lambda: load_model("bundled:digits")  # noqa: E731 - small_cnn, 94 k parameters, PGD-AT at eps 0.2
    return {
        "digits-aa": Workload(
            "digits-aa", f"bundled teacher (small_cnn, 94 k params), first {n_digits} test digits, AutoAttack standard, eps 0.2",
            lambda: (teacher(), digits.test.head(n_digits), digits.info.class_names, ["clean", "aa"], 0.2, {}), 256),
        "digits-pgd-cw": Workload(
            "digits-pgd-cw", "bundled teacher, all 360 test digits, clean + FGSM + PGD-20 + CW-20, eps 0.2",
            lambda: (teacher(), digits.test, digits.info.class_names, ["clean", "fgsm", "pgd", "cw"], 0.2, {}), 256),
        "mobilenetv2-pgd": Workload(
            "mobilenetv2-pgd", "CIFAR MobileNetV2 (2.3 M params), 128 random 32x32 images, PGD-10, eps 8/255",
            lambda: (*_cifar_like("mobilenetv2", 128), ["clean", "pgd"], 8 / 255, {"pgd_steps": 10}), 64),
        "resnet18-pgd": Workload(
            "resnet18-pgd", "CIFAR ResNet-18 (11.2 M params), 64 random 32x32 images, PGD-10, eps 8/255",
            lambda: (*_cifar_like("resnet18", 64), ["clean", "pgd"], 8 / 255, {"pgd_steps": 10}), 32),
    }


def busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, in clock ticks (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def our_cpu_seconds() -> float:
    self_, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return self_.ru_utime + self_.ru_stime + kids.ru_utime + kids.ru_stime


def run_once(work: Workload, built: tuple, variant: str) -> tuple[dict[str, Any], dict[str, list[bool]]]:
    model, split, classes, attacks, eps, params = built
    threads, workers = VARIANTS[variant]
    torch.set_num_threads(threads)
    settings = eval_settings(eps, 0, **params)
    tick = os.sysconf("SC_CLK_TCK")
    load_before, (busy0, _), cpu0, t0 = os.getloadavg()[0], busy_jiffies(), our_cpu_seconds(), time.perf_counter()
    result = evaluate_model(model, split, classes, attacks=attacks, settings=settings, batch_size=work.batch_size,
                            workers=workers)
    wall = time.perf_counter() - t0
    ours, busy1 = our_cpu_seconds() - cpu0, busy_jiffies()[0]
    others = max(0.0, (busy1 - busy0) / tick - ours) / wall
    row = {"workload": work.name, "variant": variant, "threads_per_process": threads, "workers": result.sharding["workers"],
           "n": len(split), "batch_size": work.batch_size, "wall_s": round(wall, 3), "cpu_s": round(ours, 3),
           "others_cores": round(others, 2), "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
           "attack_s": {a: round(s, 3) for a, s in result.seconds.items()}}
    return row, {a: c.tolist() for a, c in result.correct.items()}


def measure(work: Workload, repeats: int) -> list[dict[str, Any]]:
    built = work.build()
    names = list(VARIANTS)
    import pyautoattack  # noqa: F401 - imported before timing

    model, split, classes, _attacks, eps, _params = built
    evaluate_model(model, split, classes, attacks=["clean", "pgd"], settings=eval_settings(eps, 0, pgd_steps=1),
                   batch_size=work.batch_size)  # warm-up: allocator and oneDNN primitives
    rows = []
    for rep in range(repeats):
        for variant in names[rep % len(names):] + names[: rep % len(names)]:  # rotate the order every repetition
            row, correct = run_once(work, built, variant)
            rows.append({**row, "repeat": rep, "_correct": correct})
            print(json.dumps({k: v for k, v in row.items() if k != "attack_s"}), flush=True)
    ref = next(r["_correct"] for r in rows if r["variant"] == "1 proc x 1 thread")
    for row in rows:
        mine = row.pop("_correct")
        row["samples_differing_from_1x1"] = sum(x != y for a in ref for x, y in zip(ref[a], mine[a]))
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| workload | variant | wall s (each run) | median wall s | vs 1x1 | CPU s | other load (cores) | differing samples |",
           "|---|---|---|---:|---:|---:|---|---:|"]
    for name in dict.fromkeys(r["workload"] for r in rows):
        base = _median([r["wall_s"] for r in rows if r["workload"] == name and r["variant"] == "1 proc x 1 thread"])
        for variant in VARIANTS:
            mine = [r for r in rows if r["workload"] == name and r["variant"] == variant]
            walls = ", ".join(f"{r['wall_s']:.1f}" for r in mine)
            others = ", ".join(f"{r['others_cores']:.1f}" for r in mine)
            wall = _median([r["wall_s"] for r in mine])
            cpu = _median([r["cpu_s"] for r in mine])
            differing = max(r["samples_differing_from_1x1"] for r in mine)
            out.append(f"| {name} | {variant} | {walls} | {wall:.2f} | {base / wall:.2f}x | {cpu:.1f} | {others} | {differing} |")
    return "\n".join(out)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="digits-pgd-cw,mobilenetv2-pgd,resnet18-pgd,digits-aa")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--n-digits", type=int, default=360, help="test digits for the AutoAttack workload")
    args = parser.parse_args()
    available = workloads(args.n_digits)
    header = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": platform.processor() or platform.machine(),
              "cores": len(os.sched_getaffinity(0)), "torch": torch.__version__}
    print(json.dumps(header), flush=True)
    rows = []
    for name in args.workloads.split(","):
        work = available[name]
        print(f"# {name}: {work.describe}, batch {work.batch_size}", flush=True)
        rows += [{**header, **r, "describe": work.describe} for r in measure(work, args.repeats)]
    RESULTS.mkdir(exist_ok=True)
    with (RESULTS / "scaling.jsonl").open("a") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
