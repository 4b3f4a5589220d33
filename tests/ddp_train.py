"""Drive DDP training through the library under ``torchrun`` and record what each rank ended with.

The DDP tests in tests/test_train.py compare ranks with each other; the package itself writes no
such per-rank debug files, so this script records them from the outside:

``torchrun --nproc_per_node=2 tests/ddp_train.py cli RANKS_DIR ARGS...``
    runs ``robustdistill ARGS`` (the real CLI, in this process) with the pipeline's ``Trainer``
    and training split wrapped so that each rank can write ``RANKS_DIR/rank<R>.json``: parameter
    and buffer hashes, the strategy state (Fair-ARD's class weights), the last epoch's data shard
    and the exit code.

``torchrun --nproc_per_node=2 tests/ddp_train.py nan OUT_DIR``
    trains Fair-RSLAD directly with a :class:`Trainer` whose loss is NaN on rank 0 only (its 2nd
    and 3rd step), then writes ``OUT_DIR/rank<R>.json``: skipped steps, losses, class weights,
    parameter hashes, which epochs validated and their validation metrics.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch


def state_hashes(module: torch.nn.Module) -> dict[str, str]:
    return {k: hashlib.sha256(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
            for k, v in module.state_dict().items()}


def write_rank(directory: str, record: dict[str, Any]) -> None:
    rank = int(os.environ.get("RANK", "0"))
    Path(directory, f"rank{rank}.json").write_text(json.dumps({"rank": rank, **record}))


def run_cli(ranks_dir: str, args: list[str]) -> int:
    """The real CLI, with the pipeline's trainer and training split recording what they did."""
    import importlib

    from robustdistill.cli import app
    from robustdistill.data import TensorSplit

    pipeline = importlib.import_module("robustdistill.pipeline")
    seen: dict[str, Any] = {"orders": []}

    class RecordingSplit(TensorSplit):
        def batches(self, batch_size, device, order=None):  # noqa: ANN001, ANN202 - Split.batches
            seen["orders"].append([] if order is None else order.tolist())
            return super().batches(batch_size, device, order)

    class RecordingTrainer(pipeline.Trainer):
        def fit(self, on_epoch=None):  # noqa: ANN001, ANN202 - Trainer.fit
            seen["trainer"] = self
            return super().fit(on_epoch)

    load_dataset = pipeline.load_dataset

    def recording_load(*a: Any, **k: Any) -> Any:
        splits = load_dataset(*a, **k)
        return replace(splits, train=RecordingSplit(splits.train.name, splits.train.images, splits.train.labels))

    pipeline.load_dataset, pipeline.Trainer = recording_load, RecordingTrainer
    try:
        app(args=args, prog_name="robustdistill")
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    trainer = seen["trainer"]
    write_rank(ranks_dir, {"world": trainer.dist.world, "state_sha256": state_hashes(trainer.student),
                           "strategy": trainer.strategy.state_dict(), "last_epoch_shard": seen["orders"][-1],
                           "exit_code": code})
    return code


def run_nan(out_dir: str) -> int:
    """Fair-RSLAD with a NaN loss on rank 0 only, at its 2nd and 3rd step."""
    from robustdistill.data import load_dataset
    from robustdistill.methods import AttackSettings, build_strategy
    from robustdistill.models import build_student, freeze
    from robustdistill.train import TrainConfig, Trainer, destroy_distributed, init_distributed

    device = torch.device("cpu")
    init_distributed(device)  # the caller joins the process group, not the trainer
    splits = load_dataset("digits")
    splits = replace(splits, train=splits.train.subset(torch.arange(512)))
    rank = int(os.environ["RANK"])
    torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
    student = build_student("tiny_cnn", splits.info.hint())
    teacher = freeze(build_student("small_cnn", splits.info.hint()))
    strategy = build_strategy("fair-rslad", attack=AttackSettings(0.2, 0.05, 1), num_classes=10)
    real, calls = strategy.loss, [0]

    def loss(*args: Any, **kwargs: Any) -> Any:
        value, stats = real(*args, **kwargs)
        calls[0] += 1
        return (value * float("nan") if rank == 0 and calls[0] in (2, 3) else value), stats

    strategy.loss = loss  # type: ignore[method-assign]
    config = TrainConfig(epochs=2, batch_size=64, val_pgd_steps=1, val_n_examples=32)
    trainer = Trainer(student, teacher, strategy, train=splits.train, val=splits.val, info=splits.info,
                      config=config, device=device)
    history = trainer.fit()
    write_rank(out_dir, {"skipped": [r["skipped_steps"] for r in history], "loss": [r["train_loss"] for r in history],
                         "weights": strategy.weights.tolist(), "state": state_hashes(student),
                         "validated": ["val_pgd" in r for r in history],
                         "validation": [{k: v for k, v in r.items() if k.startswith("val_")} for r in history]})
    destroy_distributed()
    return 0


if __name__ == "__main__":
    mode, target, *rest = sys.argv[1:]
    sys.exit(run_cli(target, rest) if mode == "cli" else run_nan(target))
