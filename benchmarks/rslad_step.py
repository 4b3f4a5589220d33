"""An RSLAD training step with robustdistill's defaults against the released RSLAD training loop.

    python benchmarks/rslad_step.py                 # ResNet-18 <- WRN-34-10, batch 32, ~15 minutes on 2 cores

Both variants train the same architectures (robustdistill's CIFAR ResNet-18 student and WRN-34-10
teacher, random weights - speed does not depend on them) on the same random CIFAR-shaped batches:

* **research loop**: a line-by-line transcription of ``resnet18_rslad_cifar10.py`` +
  ``rslad_loss.rslad_inner_loss`` of zibojia/RSLAD (c40e04f6c4) for a CPU - ``.cuda()`` dropped,
  no ``DataParallel`` (a wrapper that does nothing on one device), fp32, torch's default threads,
  batches already in memory (its DataLoader's 2 workers overlap loading with compute, so leaving
  loading out is fair to it);
* **robustdistill defaults**: the real ``Trainer`` (augmentation, attack, loss, backward, SGD step)
  with the numeric path that ``robustdistill distill --method rslad --student resnet18`` chooses
  with no speed flag on this machine (printed and recorded).

The variants alternate round by round in one process, so a change in machine load hits both; the
ratio is of median step times. Results: benchmarks/results/rslad_step.md (+ .json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from robustdistill import config as C
from robustdistill.data import DatasetInfo, TensorSplit
from robustdistill.methods import AttackSettings, build_strategy
from robustdistill.models import Classifier, ModelSpec, build_arch, freeze
from robustdistill.pipeline import numeric_path_for, train_config
from robustdistill.progress import make_progress
from robustdistill.runtime import versions
from robustdistill.train import Trainer

RESULTS = Path(__file__).resolve().parent / "results"
SHAPE = (3, 32, 32)
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)


def classifier(arch: str) -> Classifier:
    spec = ModelSpec(arch=arch, num_classes=10, input_size=SHAPE, mean=MEAN, std=STD)
    return Classifier(build_arch(arch, 10, 3), spec)


# --------------------------------------------------------------------------- the research loop (transcribed)
def rslad_inner_loss(model: nn.Module, teacher_logits: torch.Tensor, x_natural: torch.Tensor, optimizer: torch.optim.Optimizer,
                     step_size: float, epsilon: float, perturb_steps: int) -> torch.Tensor:
    criterion_kl = nn.KLDivLoss(reduction="none")  # size_average=False, reduce=False in the original
    model.eval()
    x_adv = x_natural.detach() + 0.001 * torch.randn(x_natural.shape).detach()
    for _ in range(perturb_steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            loss_kl = criterion_kl(F.log_softmax(model(x_adv), dim=1), F.softmax(teacher_logits, dim=1))
            loss_kl = torch.sum(loss_kl)
        grad = torch.autograd.grad(loss_kl, [x_adv])[0]
        x_adv = x_adv.detach() + step_size * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x_natural - epsilon), x_natural + epsilon)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    model.train()
    x_adv = torch.clamp(x_adv, 0.0, 1.0).requires_grad_(False)
    optimizer.zero_grad()
    return model(x_adv)


def kl_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return -a * b + torch.log(b + 1e-5) * b


def research_steps(student: nn.Module, teacher: nn.Module, batches: list[torch.Tensor]) -> list[float]:
    """The body of the released loop, one timed iteration per batch."""
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    seconds = []
    for train_batch_data in batches:
        started = time.perf_counter()
        student.train()
        optimizer.zero_grad()
        with torch.no_grad():
            teacher_logits = teacher(train_batch_data)
        adv_logits = rslad_inner_loss(student, teacher_logits, train_batch_data, optimizer, 2 / 255.0, 8 / 255.0, 10)
        student.train()
        nat_logits = student(train_batch_data)
        kl_loss1 = torch.mean(kl_loss(F.log_softmax(adv_logits, dim=1), F.softmax(teacher_logits.detach(), dim=1)))
        kl_loss2 = torch.mean(kl_loss(F.log_softmax(nat_logits, dim=1), F.softmax(teacher_logits.detach(), dim=1)))
        loss = 5 / 6.0 * kl_loss1 + 1 / 6.0 * kl_loss2
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - started)
    return seconds


# --------------------------------------------------------------------------- robustdistill's defaults
def default_config(batch_size: int) -> C.RunConfig:
    """The run config of ``distill --method rslad --student resnet18 --batch-size B`` (no speed flag)."""
    return C.build_config({"method": "rslad", "student": "resnet18", "batch_size": batch_size, "eps": 8 / 255,
                           "epochs": 1, "schedule": "constant", "lr": 0.1, "out": "unused"})


def default_steps(student: Classifier, teacher: Classifier, batches: list[torch.Tensor], batch_size: int) -> tuple[list[float], dict]:
    """The real Trainer's steps, timed between consecutive loss calls (one full step apart)."""
    cfg = default_config(batch_size)
    numeric = numeric_path_for(cfg, torch.device("cpu"), [student, teacher])
    images = torch.cat(batches)
    split = TensorSplit("train", images, torch.randint(0, 10, (len(images),)))
    info = DatasetInfo("random", 10, SHAPE, tuple(map(str, range(10))), MEAN, STD, 4, True)
    strategy = build_strategy("rslad", {}, attack=AttackSettings(8 / 255, 2 / 255, 10), num_classes=10)
    trainer = Trainer(student, teacher, strategy, train=split, val=split, info=info, config=train_config(cfg, numeric),
                      device=torch.device("cpu"))
    marks: list[float] = []
    original = trainer.strategy.loss

    def timed_loss(*args, **kwargs):  # noqa: ANN002, ANN003 - the same point of every step
        marks.append(time.perf_counter())
        return original(*args, **kwargs)

    trainer.strategy.loss = timed_loss  # type: ignore[method-assign]
    with make_progress() as progress:
        trainer.train_epoch(0, progress)
    return [b - a for a, b in zip(marks, marks[1:])], numeric.to_dict()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student", default="resnet18")
    parser.add_argument("--teacher", default="wrn-34-10")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per variant and round (after one warm-up)")
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    torch.manual_seed(0)
    batches = [torch.rand(args.batch_size, *SHAPE) for _ in range(args.steps + 1)]
    times: dict[str, list[float]] = {"research": [], "defaults": []}
    numeric: dict = {}
    for round_ in range(args.rounds):
        torch.set_num_threads(default_threads)  # the research code leaves torch's default alone
        times["research"] += research_steps(classifier(args.student), freeze(classifier(args.teacher)), batches)[1:]
        steps, numeric = default_steps(classifier(args.student), freeze(classifier(args.teacher)), batches, args.batch_size)
        times["defaults"] += steps[1:]  # marks start at the first loss call: steps[0] holds the warm-up's tail
        print(f"round {round_ + 1}: research {statistics.median(times['research']):.2f} s/step, "
              f"defaults {statistics.median(times['defaults']):.2f} s/step ({numeric['reason']})", flush=True)
    write(args, times, numeric, default_threads)


def write(args: argparse.Namespace, times: dict[str, list[float]], numeric: dict, default_threads: int) -> None:
    research, defaults = statistics.median(times["research"]), statistics.median(times["defaults"])
    meta = {"command": shlex.join(["python", "benchmarks/rslad_step.py", *sys.argv[1:]]), "student": args.student, "teacher": args.teacher,
            "batch_size": args.batch_size, "rounds": args.rounds, "steps_per_round": args.steps,
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_default_threads": default_threads, "numeric_path": numeric, "load_after": os.getloadavg()[0],
            "versions": versions(), "date": time.strftime("%Y-%m-%d %H:%M")}
    result = {"meta": meta, "seconds": times, "median_s": {"research": research, "defaults": defaults},
              "speedup": research / defaults}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rslad_step.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# RSLAD step: robustdistill defaults vs the released training loop ({args.student} <- {args.teacher})", "",
             f"`{meta['command']}` - {meta['date']}, {meta['cpu']}, {meta['cores']} cores, torch {torch.__version__}; "
             f"{args.rounds} interleaved rounds x {args.steps} timed steps per variant, batch {args.batch_size}, "
             "10-step attack; load average after the run "
             f"{meta['load_after']:.2f}.", "",
             "| variant | numeric path | median s/step | images/s |", "|---|---|---:|---:|",
             f"| research loop (released RSLAD code, transcribed) | fp32, contiguous, {default_threads} threads | {research:.2f} | "
             f"{args.batch_size / research:.1f} |",
             f"| robustdistill defaults (`Trainer`, no speed flag) | {numeric.get('reason', '')} | {defaults:.2f} | "
             f"{args.batch_size / defaults:.1f} |", "",
             f"**Speed-up of the defaults: {research / defaults:.2f}x** (ratio of medians; every timed step is in "
             "rslad_step.json). The defaults include robustdistill's on-device crop + flip augmentation; the research "
             "loop's batches come ready-made."]
    (RESULTS / "rslad_step.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
