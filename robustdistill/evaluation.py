"""Evaluation that keeps one boolean per sample per attack, so per-class numbers are exact.

Protocol (the Fair-ARD evaluation, in [0, 1] pixel space, model in eval mode, first
``n_examples`` of the split in dataset order):

=========  =====================================================================================
clean      no attack
fgsm       one signed CE step of size eps from ``x + 0.001 N(0, I)``
pgd        PGD-20, step eps/4 (2/255 at 8/255), CE, uniform start clipped to [0, 1]
cw         CW-inf: PGD-20, step eps/4, uniform start, margin loss with confidence 50
aa         AutoAttack ``standard`` (APGD-CE, APGD-T, FAB-T, Square) through pyautoattack
=========  =====================================================================================

A sample counts as robust under an attack only if it is classified correctly both clean and
under the attack (the per-point worst case; AutoAttack does the same).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from . import attacks as atk
from ._utils import atomic_write_json, derive_seed, forked_rng, format_fraction
from .data import Split
from .errors import UsageError, did_you_mean
from .metrics import AttackSummary, summarize
from .progress import Progress, make_progress

ATTACKS = ("clean", "fgsm", "pgd", "cw", "aa")


@dataclass(frozen=True)
class EvalSettings:
    """Attack budget and parameters; every reported number carries these."""

    eps: float = 8 / 255
    pgd_steps: int = 20
    step_size: float | None = None  # default eps / 4
    pgd_restarts: int = 1
    cw_steps: int = 20
    cw_confidence: float = 50.0
    aa_version: str = "standard"
    seed: int = 0

    @property
    def step(self) -> float:
        return self.step_size if self.step_size is not None else self.eps / 4

    def describe(self, attack: str) -> dict[str, Any]:
        """The exact parameters of ``attack`` (the evidence stored next to its numbers)."""
        eps = {"eps": self.eps, "eps_str": format_fraction(self.eps), "norm": "Linf"}
        if attack == "clean":
            return {}
        if attack == "fgsm":
            return {**eps, "steps": 1, "step_size": self.eps, "loss": "ce", "start": "gaussian(0.001)"}
        if attack == "pgd":
            return {**eps, "steps": self.pgd_steps, "step_size": self.step, "loss": "ce", "start": "uniform", "restarts": self.pgd_restarts}
        if attack == "cw":
            return {**eps, "steps": self.cw_steps, "step_size": self.step, "loss": f"cw-margin(confidence={self.cw_confidence:g})", "start": "uniform"}
        if attack == "aa":
            from ._utils import versions

            return {**eps, "implementation": f"pyautoattack {versions()['pyautoattack']}", "version": self.aa_version, "seed": self.seed}
        raise KeyError(attack)


@dataclass
class EvaluationResult:
    """Per-sample correctness of one model under each attack, plus the evidence."""

    model_id: str
    dataset: str
    split: str
    class_names: tuple[str, ...]
    labels: torch.Tensor
    correct: dict[str, torch.Tensor]
    settings: EvalSettings
    seconds: dict[str, float] = field(default_factory=dict)
    model_info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_examples(self) -> int:
        return int(self.labels.numel())

    def summary(self, attack: str) -> AttackSummary:
        return summarize(self.correct[attack], self.labels, self.class_names)

    def accuracy(self, attack: str) -> float:
        return float(self.correct[attack].float().mean())

    def to_dict(self) -> dict[str, Any]:
        """The report.json payload (schema ``robustdistill/evaluation@1``)."""
        from ._utils import versions

        return {
            "schema": "robustdistill/evaluation@1",
            "model": {"id": self.model_id, **self.model_info},
            "data": {
                "dataset": self.dataset, "split": self.split, "n_examples": self.n_examples,
                "class_names": list(self.class_names),
                "class_counts": torch.bincount(self.labels, minlength=len(self.class_names)).tolist(),
            },
            "settings": {**asdict(self.settings), "step_size": self.settings.step, "eps_str": format_fraction(self.settings.eps),
                         "attacks": {a: self.settings.describe(a) for a in self.correct}},
            "results": {a: self.summary(a).to_dict() for a in self.correct},
            "seconds": self.seconds,
            "per_sample": {
                "labels": self.labels.tolist(),
                "correct": {a: "".join("1" if v else "0" for v in c.tolist()) for a, c in self.correct.items()},
            },
            "versions": versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    @classmethod
    def from_dict(cls, report: dict[str, Any]) -> "EvaluationResult":
        """Rebuild from a report.json written by :meth:`to_dict` (used by fairness-report)."""
        s = dict(report["settings"])
        settings = EvalSettings(**{k: s[k] for k in EvalSettings.__dataclass_fields__ if k in s})
        per = report["per_sample"]
        model = dict(report["model"])
        model_id = model.pop("id")
        return cls(
            model_id=model_id, dataset=report["data"]["dataset"], split=report["data"]["split"],
            class_names=tuple(report["data"]["class_names"]), labels=torch.tensor(per["labels"], dtype=torch.long),
            correct={a: torch.tensor([c == "1" for c in bits], dtype=torch.bool) for a, bits in per["correct"].items()},
            settings=settings, seconds=dict(report.get("seconds", {})), model_info=model,
        )


def parse_attacks(text: str | Sequence[str]) -> list[str]:
    """``clean,pgd,aa`` -> ordered list; ``all`` means every attack; clean is always included."""
    names = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if names == ["all"]:
        return list(ATTACKS)
    aliases = {"autoattack": "aa", "cw-inf": "cw", "cwinf": "cw", "natural": "clean"}
    names = [aliases.get(n, n) for n in names]
    for name in names:
        if name not in ATTACKS:
            raise UsageError(did_you_mean(name, ATTACKS, "attack"))
    wanted = set(names) | {"clean"}
    return [a for a in ATTACKS if a in wanted]


def _batch_correct(model: nn.Module, attack: str, x: torch.Tensor, y: torch.Tensor, s: EvalSettings) -> torch.Tensor:
    if attack == "fgsm":
        x_adv = atk.fgsm(model, x, y, eps=s.eps)
    elif attack == "pgd":
        x_adv = atk.pgd(model, x, y, eps=s.eps, step_size=s.step, steps=s.pgd_steps, restarts=s.pgd_restarts, clip_start=True).x_adv
    elif attack == "cw":
        x_adv = atk.pgd(model, x, y, eps=s.eps, step_size=s.step, steps=s.cw_steps, loss="cw", confidence=s.cw_confidence, clip_start=True).x_adv
    else:
        raise KeyError(attack)
    with torch.no_grad():
        return model(x_adv).argmax(1).eq(y)


def evaluate_model(
    model: nn.Module,
    split: Split,
    class_names: Sequence[str],
    *,
    attacks: Sequence[str] = ("clean", "pgd"),
    settings: EvalSettings = EvalSettings(),
    n_examples: int | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    model_id: str = "model",
    dataset: str = "",
    model_info: dict[str, Any] | None = None,
    description: str = "evaluating",
    progress: Progress | None = None,
    keep_tasks: bool = True,
    state_path: Path | None = None,
) -> EvaluationResult:
    """Attack the first ``n_examples`` of ``split`` and keep per-sample correctness for each attack.

    The model is put in eval mode with parameter gradients off for the duration (restored
    afterwards); the caller's RNG state is left untouched. Pass ``progress`` to draw into an
    existing rich display (only one can be live at a time); ``keep_tasks=False`` removes the
    evaluation's bars from it when done (per-epoch validation).

    With ``state_path`` (and a model file hash in ``model_info["sha256"]``), the per-sample
    results are saved atomically after every batch, and an evaluation killed part-way continues
    from there with identical results (every batch is seeded on its own); the file is removed
    when the evaluation completes.
    """
    device = torch.device(device)
    attacks = parse_attacks(list(attacks))
    data = split.head(n_examples)
    was_training = model.training
    grads = [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)
    labels = data.labels.clone()
    correct = {a: torch.zeros(len(data), dtype=torch.bool) for a in attacks}
    seconds = {a: 0.0 for a in attacks}
    info = dict(model_info or {})
    fingerprint = _fingerprint(info.get("sha256"), dataset, data.name, labels, settings, attacks, batch_size)
    partial = _Partial(state_path if fingerprint else None, fingerprint or "", correct, seconds)
    try:
        with forked_rng(device), (contextlib.nullcontext(progress) if progress is not None else make_progress()) as progress:
            torch.manual_seed(settings.seed)
            tasks = [_run_gradient_attacks(model, data, attacks, settings, batch_size, device, partial, progress, description)]
            if "aa" in attacks:
                tasks.append(_run_autoattack(model, data, len(class_names), settings, batch_size, device, partial, progress, description))
            if not keep_tasks:
                for task in tasks:
                    progress.remove_task(task)
    finally:
        model.train(was_training)
        for p, g in zip(model.parameters(), grads):
            p.requires_grad_(g)
    partial.finish()
    for a in attacks:
        if a != "clean":
            correct[a] &= correct["clean"]
    return EvaluationResult(model_id, dataset, data.name, tuple(class_names), labels, correct, settings, seconds, info)


def _fingerprint(sha256: str | None, dataset: str, split: str, labels: torch.Tensor, settings: EvalSettings,
                 attacks: Sequence[str], batch_size: int) -> str | None:
    """Identity of an evaluation for resuming it; ``None`` for models without a file hash."""
    if not sha256:
        return None
    payload = [sha256, dataset, split, hashlib.sha256(labels.numpy().tobytes()).hexdigest(), asdict(settings), list(attacks), batch_size]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


class _Partial:
    """Which batches of an evaluation are done, with their results; saved atomically after each."""

    def __init__(self, path: Path | None, fingerprint: str, correct: dict[str, torch.Tensor], seconds: dict[str, float]) -> None:
        self.path, self.fingerprint, self.correct, self.seconds = path, fingerprint, correct, seconds
        self.done: dict[str, set[int]] = {"gradient": set(), "aa": set()}
        if path is not None and path.exists():
            self._restore(path)

    def _restore(self, path: Path) -> None:
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            return  # unreadable: start over (it is rewritten atomically, so this means tampering)
        if state.get("fingerprint") != self.fingerprint:
            return
        self.done = {phase: set(numbers) for phase, numbers in state["done"].items()}
        for attack, bits in state["correct"].items():
            self.correct[attack] = torch.tensor([c == "1" for c in bits], dtype=torch.bool)
        self.seconds.update(state["seconds"])

    def mark(self, phase: str, number: int) -> None:
        self.done[phase].add(number)
        if self.path is None:
            return
        atomic_write_json(self.path, {
            "fingerprint": self.fingerprint, "done": {k: sorted(v) for k, v in self.done.items()},
            "correct": {a: "".join("1" if v else "0" for v in c.tolist()) for a, c in self.correct.items()},
            "seconds": self.seconds,
        })

    def finish(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _run_gradient_attacks(model, data, attacks, settings, batch_size, device, partial, progress, description) -> int:
    correct, seconds = partial.correct, partial.seconds
    plain = [a for a in attacks if a != "aa"]
    n_batches = -(-len(data) // batch_size)
    task = progress.add_task(f"{description}: {', '.join(plain)}", total=n_batches, info="")
    done = 0
    for number, (x, y, idx) in enumerate(data.batches(batch_size, device)):
        done += len(idx)
        if number in partial.done["gradient"]:
            progress.update(task, advance=1)
            continue
        for attack in plain:
            t0 = time.perf_counter()
            # Each (attack, batch) draws its random start from its own seed, so a sample's result
            # does not depend on which other attacks run (it does depend on the batch size).
            torch.manual_seed(derive_seed(settings.seed, ATTACKS.index(attack), number))
            if attack == "clean":
                with torch.no_grad():
                    ok = model(x).argmax(1).eq(y)
            else:
                ok = _batch_correct(model, attack, x, y, settings)
            correct[attack][idx] = ok.cpu()
            seconds[attack] += time.perf_counter() - t0
        partial.mark("gradient", number)
        info = "  ".join(f"{a} {correct[a][:done].float().mean():.1%}" for a in plain) if done else ""
        progress.update(task, advance=1, info=info)
    return task


def _run_autoattack(model, data, num_classes, settings, batch_size, device, partial, progress, description) -> int:
    # pyautoattack is run chunk by chunk (it is per-point anyway, and seeds itself) so progress
    # can be shown and a killed evaluation can continue.
    correct, seconds = partial.correct, partial.seconds
    chunk = max(batch_size, 1)
    n_chunks = -(-len(data) // chunk)
    task = progress.add_task(f"{description}: AutoAttack ({settings.aa_version})", total=n_chunks, info="")
    done = 0
    for number, (x, y, idx) in enumerate(data.batches(chunk, device)):
        done += len(idx)
        if number in partial.done["aa"]:
            progress.update(task, advance=1)
            continue
        t0 = time.perf_counter()
        flags = atk.autoattack(model, x, y, eps=settings.eps, num_classes=num_classes, version=settings.aa_version,
                               seed=settings.seed, batch_size=batch_size)
        correct["aa"][idx] = flags.cpu()
        seconds["aa"] += time.perf_counter() - t0
        partial.mark("aa", number)
        progress.update(task, advance=1, info=f"aa {correct['aa'][:done].float().mean():.1%}")
    return task
