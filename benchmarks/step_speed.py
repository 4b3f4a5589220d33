"""Training-step throughput of the real Trainer for speed options (fp32, channels_last, bf16 autocast).

Runs ``Trainer.train_epoch`` (attack + loss + SGD step, exactly the production path) on random
CIFAR-shaped data for each option combination and reports images/second. The machine's load is
recorded with every measurement; a measurement taken while the load exceeds the core count is
flagged as contended (numbers then mean little). For fp32 it also counts the FLOPs of one real
step and times a bare student forward, to tell how close the step runs to the machine's speed.

    python benchmarks/step_speed.py --student resnet18 --teacher wrn-34-10 --method rslad --batch-size 32 --steps 4
    python benchmarks/step_speed.py --student tiny_cnn --teacher small_cnn --dataset-shape 1,8,8 --method fair-iad --batch-size 32 --steps 40

Results are appended to benchmarks/results/step_speed.jsonl and summarised in step_speed.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from robustdistill.data import DatasetInfo, TensorSplit
from robustdistill.methods import AttackSettings, build_strategy
from robustdistill.models import Classifier, ModelSpec, build_arch, freeze
from robustdistill.progress import make_progress
from robustdistill.train import TrainConfig, Trainer

RESULTS = Path(__file__).parent / "results"


def model(arch: str, shape: tuple[int, int, int], classes: int) -> Classifier:
    spec = ModelSpec(arch=arch, num_classes=classes, input_size=shape, mean=(0.5,) * shape[0], std=(0.25,) * shape[0])
    return Classifier(build_arch(arch, classes, shape[0]), spec)


def measure(args: argparse.Namespace, amp: str, channels_last: bool) -> dict:
    shape = tuple(int(v) for v in args.dataset_shape.split(","))
    n = args.batch_size * (args.steps + args.warmup + 1)
    torch.manual_seed(0)
    split = TensorSplit("train", torch.rand(n, *shape), torch.randint(0, 10, (n,)))
    info = DatasetInfo("random", 10, shape, tuple(map(str, range(10))), (0.5,) * shape[0], (0.25,) * shape[0], 0, False)
    student = model(args.student, shape, 10)
    teacher = freeze(model(args.teacher, shape, 10)) if args.teacher != "none" else None
    strategy = build_strategy(args.method, {}, attack=AttackSettings(8 / 255, 2 / 255, args.attack_steps), num_classes=10)
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, amp=amp, channels_last=channels_last, schedule="constant")
    trainer = Trainer(student, teacher, strategy, train=split, val=split, info=info, config=cfg, device=torch.device(args.device))
    timings = []
    original = trainer.strategy.loss

    def timed_loss(*a, **k):  # marks the same point of every step
        timings.append(time.perf_counter())
        return original(*a, **k)

    trainer.strategy.loss = timed_loss  # type: ignore[method-assign]
    load_before = os.getloadavg()[0]
    with make_progress() as progress:
        trainer.train_epoch(0, progress)
    # Consecutive loss calls are one full step apart (loss, backward, SGD, next attack).
    steps = [b - a for a, b in zip(timings, timings[1:])][args.warmup:]
    seconds = sum(steps)
    row = {
        "student": args.student, "teacher": args.teacher, "method": args.method, "shape": args.dataset_shape, "batch_size": args.batch_size,
        "attack_steps": args.attack_steps, "amp": amp, "channels_last": channels_last, "timed_steps": len(steps),
        "images_per_second": round(args.batch_size * len(steps) / seconds, 2), "threads": torch.get_num_threads(),
        "load_before": round(load_before, 2), "load_after": round(os.getloadavg()[0], 2),
        "contended": max(load_before, os.getloadavg()[0]) > (os.cpu_count() or 1) + 0.5,
        "device": args.device, "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    if amp == "none" and not channels_last:
        row.update(arithmetic(trainer, student, split, shape, args))
        row["step_gflops_per_s"] = round(row["images_per_second"] * row["step_gflop_per_image"], 1)
    return row


class _FlopCount:
    """Counts convolution/matmul FLOPs (torch.utils.flop_counter's formulas) of every op dispatched
    inside it. FlopCounterMode itself cannot be used here: its module tracker rejects the
    ``autograd.grad`` calls of the attacks."""

    def __enter__(self) -> "_FlopCount":
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import flop_registry

        counter = self
        counter.total = 0

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                formula = flop_registry.get(func._overloadpacket)
                if formula is not None:
                    counter.total += formula(*args, **kwargs, out_val=out)
                return out

        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._mode.__exit__(*exc)


def arithmetic(trainer: Trainer, student: Classifier, split: TensorSplit, shape: tuple[int, ...], args: argparse.Namespace) -> dict:
    """FLOPs of one real training step per image (convolutions and matmuls, forward and backward,
    attack included), and the speed of a bare student forward for comparison: how close the step
    comes to what this machine does on plain convolutions."""
    trainer.train_split = split.subset(torch.arange(args.batch_size))  # the same trainer, one batch
    with _FlopCount() as step, make_progress() as progress:
        trainer.train_epoch(1, progress)
    x = torch.rand(args.batch_size, *shape, device=args.device)
    student.eval()
    with torch.no_grad(), _FlopCount() as forward:
        student(x)
    with torch.no_grad():
        student(x)  # warm-up
        started, runs = time.perf_counter(), 5
        for _ in range(runs):
            student(x)
        seconds = (time.perf_counter() - started) / runs
    return {"step_gflop_per_image": round(step.total / args.batch_size / 1e9, 3),
            "student_forward_gflop_per_image": round(forward.total / args.batch_size / 1e9, 3),
            "student_forward_gflops_per_s": round(forward.total / seconds / 1e9, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="resnet18")
    parser.add_argument("--teacher", default="wrn-34-10")
    parser.add_argument("--method", default="rslad")
    parser.add_argument("--dataset-shape", default="3,32,32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--attack-steps", type=int, default=10)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--options", default="fp32,channels_last,bf16,bf16+channels_last")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = []
    for option in args.options.split(","):
        amp = "bf16" if "bf16" in option else "none"
        row = measure(args, amp, "channels_last" in option)
        row["option"] = option
        rows.append(row)
        print(json.dumps(row))
        with open(RESULTS / "step_speed.jsonl", "a") as handle:
            handle.write(json.dumps(row) + "\n")
    summary = markdown([json.loads(line) for line in (RESULTS / "step_speed.jsonl").read_text().splitlines() if line.strip()])
    (RESULTS / "step_speed.md").write_text(summary)
    print(summary)


def markdown(rows: list[dict]) -> str:
    """step_speed.md: the latest measurement of every (setup, option), speed-ups against fp32."""
    latest: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        setup = (row["student"], row["teacher"], row["method"], row.get("shape", "3,32,32"), row["batch_size"], row["attack_steps"], row["device"])
        latest.setdefault(setup, {})[row["option"]] = row
    lines = ["# Training-step throughput", "",
             "`python benchmarks/step_speed.py ...` (commands in the module docstring): the real `Trainer.train_epoch`",
             "(the method's attack + loss + backward + SGD step) on random data of the given shape; images per",
             "second over the timed steps after one warm-up step. 'contended' marks a measurement taken while the",
             "machine's load exceeded its core count (such numbers mean little).", ""]
    for (student, teacher, method, shape, batch, steps, device), options in latest.items():
        base = options.get("fp32", next(iter(options.values())))["images_per_second"]
        first = next(iter(options.values()))
        lines += [f"## {method}: {student} <- {teacher}, input {shape}, batch {batch}, {steps}-step attack, {device}", "",
                  f"{first['cpu']}, {first['threads']} threads, torch {first['torch']}, measured {first['date']}.", "",
                  "| option | images/s | speed-up vs fp32 | timed steps | load before/after | contended |", "|---|---:|---:|---:|---|---|"]
        for option, row in options.items():
            lines.append(f"| {option} | {row['images_per_second']} | {row['images_per_second'] / base:.2f}x | {row['timed_steps']} | "
                         f"{row['load_before']}/{row['load_after']} | {'yes' if row['contended'] else 'no'} |")
        fp32 = options.get("fp32", {})
        if "step_gflop_per_image" in fp32:
            lines += ["", f"Arithmetic (fp32, `torch.utils.flop_counter` on one real step): {fp32['step_gflop_per_image']} GFLOP per "
                      f"training image, so the step runs at **{fp32['step_gflops_per_s']} GFLOP/s**; a bare `{student}` forward "
                      f"({fp32['student_forward_gflop_per_image']} GFLOP per image, batch {batch}, `no_grad`) runs at "
                      f"{fp32['student_forward_gflops_per_s']} GFLOP/s on the same machine."]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
