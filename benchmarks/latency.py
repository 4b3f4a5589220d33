"""Inference latency of the bundled digits teacher vs the default job's student, per engine.

For each model (teacher ``bundled:digits``, ``small_cnn``; student: the default job's ``tiny_cnn``)
the script exports a dynamic-batch ONNX and TorchScript file with ``robustdistill.export``
(parity-checked as usual) and times PyTorch eager, onnxruntime and TorchScript at batch 1 and 64
with 1 and 2 intra-op threads (``robustdistill.cost.measure_latency``: warm-up, then timed passes
until both the repeat and the time minimum are met; median and p95). The 1-minute load average
before and after every measurement is recorded; a measurement taken while the load exceeded the
core count is flagged as contended.

    python benchmarks/latency.py                                # student = the default job's architecture, untrained
    python benchmarks/latency.py --student runs/DEFAULT/student.safetensors
    python benchmarks/latency.py --quick                        # a short run that checks the script works

Without ``--student`` the student is a freshly built ``tiny_cnn`` for digits (the default job's
architecture, untrained): these dense networks run the same operations whatever their weights.
Results go to benchmarks/results/latency.md (and, one JSON line per measurement, to stdout).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from robustdistill.cost import cost_profile
from robustdistill.data import load_dataset
from robustdistill.export import export_model
from robustdistill.models import build_student, load_model
from robustdistill.exported import load_exported

RESULTS = Path(__file__).parent / "results"
ENGINES = ("pytorch", "onnxruntime", "torchscript")


def models(student: str | None) -> dict[str, tuple[object, str]]:
    """name -> (model, description)."""
    teacher = load_model("bundled:digits").eval()
    if student:
        trained = load_model(student).eval()
        return {"teacher": (teacher, "bundled:digits (small_cnn)"), "student": (trained, f"{student} ({trained.spec.arch})")}
    hint = load_dataset("digits").info.hint()
    fresh = build_student("tiny_cnn", hint).eval()
    return {"teacher": (teacher, "bundled:digits (small_cnn)"), "student": (fresh, "tiny_cnn, the default job's architecture (untrained)")}


def runtimes(model: object, folder: Path, name: str) -> dict[str, object]:
    """The model under each engine: itself, and its parity-checked ONNX and TorchScript exports."""
    out = {"pytorch": model}
    for fmt, engine, suffix in (("onnx", "onnxruntime", ".onnx"), ("torchscript", "torchscript", ".pt")):
        path = folder / f"{name}{suffix}"
        export_model(model, format=fmt, out=path, dynamic_batch=True, dataset="digits", eps=0.2, parity_n=100, profile=False)
        out[engine] = load_exported(path)
    return out


def measure(engine_model: object, threads: int, batches: tuple[int, ...], timing: dict) -> list[dict]:
    load_before = os.getloadavg()[0]
    profile = cost_profile(engine_model, batch_sizes=batches, threads=threads, use_accelerator=False, **timing)
    load_after = os.getloadavg()[0]
    contended = max(load_before, load_after) > (os.cpu_count() or 1)
    return [{**lat.to_dict(), "engine": profile.engine, "macs_per_image": profile.macs_per_image, "parameters": profile.parameters,
             "load_before": round(load_before, 2), "load_after": round(load_after, 2), "contended": contended}
            for lat in profile.latency]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default=None, help="a distilled student .safetensors (default: the default job's architecture, untrained)")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--quick", action="store_true", help="few repeats: checks the script, numbers mean little")
    args = parser.parse_args()
    timing = {"warmup": 3, "min_repeats": 10, "min_seconds": 0.2} if args.quick else {"warmup": 20, "min_repeats": 50, "min_seconds": 3.0, "max_repeats": 2000}
    threads = tuple(int(t) for t in args.threads.split(","))
    batches = tuple(int(b) for b in args.batches.split(","))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, (model, description) in models(args.student).items():
            engines = runtimes(model, Path(folder), name)
            for engine, engine_model in engines.items():
                for n in threads:
                    for row in measure(engine_model, n, batches, timing):
                        rows.append({"model": name, "description": description, **row})
                        print(json.dumps(rows[-1]), flush=True)
    command = "python benchmarks/latency.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    meta = {"command": command.strip(), "quick": args.quick, "timing": timing, "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"), "versions": _versions()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latency.md").write_text(markdown(meta, rows))
    print(markdown(meta, rows))


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for pkg in ("robustdistill", "torch", "onnx", "onnxruntime", "onnxscript"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def markdown(meta: dict, rows: list[dict]) -> str:
    busy = any(r["contended"] for r in rows)
    lines = ["# Inference latency: digits teacher vs student", "",
             f"Command: `{meta['command']}`; {meta['date']}; {meta['cpu']}, {meta['cores']} cores; versions {meta['versions']}.",
             f"Timing: {meta['timing']} (warm-up passes, then timed passes until both minimums are met); median and p95 of one "
             "forward pass of a random [0, 1] batch under `torch.no_grad`. Engines: PyTorch eager, and the parity-checked "
             "dynamic-batch exports (`robustdistill export`) run by onnxruntime (CPU) and TorchScript.", ""]
    if meta["quick"] or busy:
        lines += ["**These figures are provisional**: " + ("a `--quick` run; " if meta["quick"] else "")
                  + ("measured while other jobs loaded the machine (see the load columns; 'contended' = load above the core count). "
                     if busy else "") + "Re-measure on an idle machine before quoting them.", ""]
    for name in dict.fromkeys(r["model"] for r in rows):
        first = next(r for r in rows if r["model"] == name)
        lines += [f"## {name}: {first['description']}", "",
                  f"{first['parameters']:,} parameters, {first['macs_per_image']:,} MACs per image.", "",
                  "| engine | threads | batch | median ms | p95 ms | ms per image | repeats | load before/after | contended |",
                  "|---|---:|---:|---:|---:|---:|---:|---|---|"]
        for r in (r for r in rows if r["model"] == name):
            lines.append(f"| {r['engine']} | {r['threads']} | {r['batch_size']} | {r['median_ms']:.3f} | {r['p95_ms']:.3f} | "
                         f"{r['per_image_ms']:.4f} | {r['repeats']} | {r['load_before']}/{r['load_after']} | {'yes' if r['contended'] else 'no'} |")
        lines.append("")
    lines += _ratios(rows)
    return "\n".join(lines) + "\n"


def _ratios(rows: list[dict]) -> list[str]:
    """Teacher / student median latency per (engine, threads, batch)."""
    key = lambda r: (r["engine"], r["threads"], r["batch_size"])  # noqa: E731
    teacher = {key(r): r for r in rows if r["model"] == "teacher"}
    student = {key(r): r for r in rows if r["model"] == "student"}
    lines = ["## Teacher / student", "", "| engine | threads | batch | teacher ms | student ms | teacher / student |", "|---|---:|---:|---:|---:|---:|"]
    for k in teacher:
        if k in student:
            t, s = teacher[k]["median_ms"], student[k]["median_ms"]
            lines.append(f"| {k[0]} | {k[1]} | {k[2]} | {t:.3f} | {s:.3f} | {t / s:.2f}x |")
    macs = [r["macs_per_image"] for r in rows if r["engine"] == "pytorch"]
    if len(set(macs)) == 2:
        t_macs = next(r["macs_per_image"] for r in rows if r["model"] == "teacher")
        s_macs = next(r["macs_per_image"] for r in rows if r["model"] == "student")
        lines += ["", f"MAC ratio teacher / student: {t_macs / s_macs:.2f}x."]
    return lines


if __name__ == "__main__":
    main()
