"""The distillation (and teacher-training) pipeline behind ``robustdistill distill`` / ``train-teacher``.

Order of work is chosen so that a bad input never costs anything already written: every input
(dataset, teacher, student, method, hyperparameters, eps) is loaded and checked *before* the run
directory is touched.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from ._utils import atomic_write_json, atomic_write_text, format_fraction, parse_fraction, select_device, sha256_file
from .api import ModelOptions, describe_model, model_file, open_model, saved_config
from .data import DatasetSplits, load_dataset
from .errors import RunDirError, UsageError
from .evaluation import EvalSettings, EvaluationResult, parse_attacks
from .methods import AttackSettings, build_strategy, method_defaults, parse_method
from .models import Classifier, build_student, freeze, save_classifier
from .progress import console, is_main_process
from .report import evaluation_markdown, plot_per_class
from .train import RunDir, TrainConfig, Trainer, barrier, destroy_distributed, init_distributed

DIGITS_EPS = "0.2"
# The method of the no-argument job: Fair-ARD reweighting over IAD, the base with the best average
# and worst-class validation robustness on digits (benchmarks/results/default_job.md).
DEFAULT_METHOD = "fair-iad"


@dataclass
class DistillConfig:
    """Everything that defines a run; saved resolved as ``config.yaml`` and in the student's metadata.

    ``None`` means "the default for this method / teacher / dataset" and is resolved by
    :func:`resolve_config` (the resolved values are what gets saved).
    """

    teacher: str | None = "bundled:digits"
    student: str = "tiny_cnn"
    method: str = DEFAULT_METHOD
    dataset: str | None = None
    data_dir: str | None = None
    download: bool = False
    image_size: int | None = None
    val_size: int | None = None
    eps: str | None = None
    attack_step: str | None = None
    attack_steps: int = 10
    epochs: int | None = None
    batch_size: int | None = None
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float | None = None
    nesterov: bool = False
    schedule: str | None = None
    amp: str = "none"
    channels_last: bool = False
    seed: int = 0
    select: str = "last"
    val_pgd_steps: int = 10
    eval_attacks: str = "clean,pgd,cw,aa"
    no_aa: bool = False
    eval_n_examples: int | None = None
    eval_batch_size: int = 256
    eval_seed: int = 0
    out: str | None = None
    device: str = "auto"
    teacher_arch: str | None = None
    teacher_weights: str | None = None
    model_dir: str | None = None
    student_weights: str | None = None
    hparams: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DistillConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")
        return cls(**data)


# Epochs when none is given: the papers' schedules, except on the bundled digits data, where the
# default run must finish in minutes on a laptop CPU. Chosen on the validation split
# (benchmarks/results/default_job.md): IAD learns fastest here - after 20 epochs its validation
# PGD accuracy is above every other base's after 40 - so the IAD family gets 20, the others 40.
PAPER_EPOCHS = {"rslad": 300}
DIGITS_EPOCHS = {"iad": 20}
DIGITS_EPOCHS_OTHER = 40
# 1,293 training images: batches of 32 give 41 SGD steps per epoch (128 would give 11, too few
# for attacked training from scratch - chosen on the validation split, benchmarks/results/tuning.md).
DIGITS_BATCH = 32


def _base_method(method: str) -> str:
    return method[len("fair-"):] if method.startswith("fair-") else method


def resolve_config(cfg: DistillConfig) -> DistillConfig:
    """Fill every ``None`` default from the method, teacher and dataset."""
    cls_defaults = method_defaults(cfg.method)  # raises on unknown method
    base = _base_method(cfg.method)
    method_cls = parse_method(base).base
    teacher_cfg = saved_config(cfg.teacher) if cfg.teacher else {}
    dataset = cfg.dataset or teacher_cfg.get("dataset") or ("digits" if cfg.teacher in (None, "bundled:digits") else None)
    if not dataset:
        raise UsageError("say which data to train on with --dataset (digits, cifar10, cifar100, svhn, imagefolder)")
    eps = cfg.eps or teacher_cfg.get("eps") or (DIGITS_EPS if dataset == "digits" else "8/255")
    eps_value = parse_fraction(eps, name="eps")
    step = cfg.attack_step or format_fraction(eps_value / 4)
    parse_fraction(step, name="attack step")
    epochs = cfg.epochs or (DIGITS_EPOCHS.get(base, DIGITS_EPOCHS_OTHER) if dataset == "digits" else PAPER_EPOCHS.get(base, 200))
    batch_size = cfg.batch_size or (DIGITS_BATCH if dataset == "digits" else 128)
    schedule = cfg.schedule or method_cls.schedule
    wd = cfg.weight_decay if cfg.weight_decay is not None else method_cls.weight_decay
    hparams = {k: v for k, v in cfg.hparams.items() if v is not None}
    return replace(cfg, dataset=dataset, eps=eps, attack_step=step, epochs=epochs, batch_size=batch_size, schedule=schedule, weight_decay=wd,
                   hparams={**cls_defaults, **hparams})


def default_out(cfg: DistillConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    student = cfg.student.replace(":", "-").replace("/", "-")
    return Path("runs") / f"{stamp}-{cfg.method}-{student}-{cfg.dataset}"


@dataclass
class DistillResult:
    """Where a run wrote its files, and its final evaluations."""

    out_dir: Path
    student_path: Path
    report_path: Path
    student: EvaluationResult | None
    teacher: EvaluationResult | None
    history: list[dict[str, Any]]
    config: dict[str, Any]

    def summary(self) -> dict[str, Any]:
        def brief(result: EvaluationResult | None) -> dict[str, Any] | None:
            if result is None:
                return None
            return {a: {"accuracy": result.summary(a)["accuracy"], "worst": result.summary(a)["worst_class"]} for a in result.correct}

        return {"out_dir": str(self.out_dir), "student": brief(self.student), "teacher": brief(self.teacher)}


def _train_config(cfg: DistillConfig) -> TrainConfig:
    return TrainConfig(
        epochs=int(cfg.epochs or 1), batch_size=int(cfg.batch_size or 128), lr=cfg.lr, momentum=cfg.momentum,
        weight_decay=float(cfg.weight_decay if cfg.weight_decay is not None else 2e-4), nesterov=cfg.nesterov,
        schedule=cfg.schedule or "ard", amp=cfg.amp, channels_last=cfg.channels_last, seed=cfg.seed,
        val_pgd_steps=cfg.val_pgd_steps, select=cfg.select,
    )


@dataclass
class _Prepared:
    cfg: DistillConfig
    splits: DatasetSplits
    teacher: Classifier | None
    student: Classifier
    trainer: Trainer
    run: RunDir
    device: torch.device
    teacher_meta: dict[str, str]


def _prepare(cfg: DistillConfig, *, resume: bool, overwrite: bool) -> _Prepared:
    """Load and check every input, then (only then) claim the run directory."""
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    run = RunDir(out)
    cfg = replace(cfg, out=str(out))
    train_cfg = _train_config(cfg)
    train_cfg.validate()
    parse_attacks(cfg.eval_attacks)
    device = _rank_device(select_device(cfg.device))
    init_distributed(device)
    run.check(resume=resume, overwrite=overwrite)  # every rank, before rank 0 writes anything
    splits = load_dataset(cfg.dataset or "", cfg.data_dir, download=cfg.download, image_size=cfg.image_size, val_size=cfg.val_size)
    teacher = _load_teacher(cfg, splits)
    teacher_meta = _teacher_meta(cfg)
    student = _build_student(cfg, splits)
    attack = AttackSettings(eps=parse_fraction(cfg.eps or "8/255"), step_size=parse_fraction(cfg.attack_step or "2/255"), steps=cfg.attack_steps)
    strategy = build_strategy(cfg.method, cfg.hparams, attack=attack, num_classes=splits.info.num_classes)
    _claim(run, resume=resume, overwrite=overwrite)
    trainer = Trainer(
        student, teacher, strategy, train=splits.train, val=splits.val, info=splits.info, config=train_cfg,
        device=device, run_dir=run, eval_settings=EvalSettings(eps=attack.eps),
        run_config={**cfg.to_dict(), "teacher_sha256": teacher_meta.get("teacher_sha256")},
    )
    if resume and (run / "checkpoint.pt").exists():  # a run killed in its first epoch has only config.yaml
        trainer.load_checkpoint(run / "checkpoint.pt")
        _check_same_teacher(trainer.resumed_config, teacher_meta, run)
    return _Prepared(cfg, splits, teacher, student, trainer, run, device, teacher_meta)


def _check_same_teacher(saved: dict[str, Any], teacher_meta: dict[str, str], run: RunDir) -> None:
    """A resumed run must distil from the very teacher file it started with."""
    before, now = saved.get("teacher_sha256"), teacher_meta.get("teacher_sha256")
    if before and now and before != now:
        raise RunDirError(f"the teacher file changed since the run in {run.path} started (sha256 {before[:12]}... is now "
                          f"{now[:12]}...); resume with the original teacher or start a new --out")


def _rank_device(device: torch.device) -> torch.device:
    """Under torchrun, a bare ``cuda`` means this process's GPU (LOCAL_RANK), not GPU 0 for every rank."""
    import os

    if device.type == "cuda" and device.index is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def _load_teacher(cfg: DistillConfig, splits: DatasetSplits) -> Classifier | None:
    if cfg.teacher:
        options = ModelOptions(arch=cfg.teacher_arch, weights=cfg.teacher_weights, model_dir=cfg.model_dir)
        return freeze(open_model(cfg.teacher, splits, options, role="teacher"))
    if _needs_teacher(cfg.method):
        raise UsageError(f"method {cfg.method} distils from a teacher; pass --teacher")
    return None


def _build_student(cfg: DistillConfig, splits: DatasetSplits) -> Classifier:
    """The student's initial weights depend on the seed only (same run, same start; identical on every rank)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return build_student(cfg.student, splits.info.hint(), weights=cfg.student_weights)


def _claim(run: RunDir, *, resume: bool, overwrite: bool) -> None:
    """Rank 0 alone creates / cleans the run directory; the other ranks wait (they checked it already)."""
    barrier()
    if is_main_process():
        run.claim(overwrite=overwrite and not resume)
    barrier()


def _needs_teacher(method: str) -> bool:
    return parse_method(method).base.needs_teacher


# Flags that may change when a run is resumed (they do not change what is trained).
RESUMABLE_CHANGES = ("device", "no_aa", "eval_attacks", "eval_n_examples", "eval_batch_size", "eval_seed", "epochs")


def resume_config(out: str | Path, given: dict[str, Any]) -> DistillConfig:
    """The saved config of the run in ``out``; explicitly ``given`` values must agree with it,
    except for :data:`RESUMABLE_CHANGES` (e.g. more ``epochs``, another ``device``)."""
    import yaml

    path = Path(out) / "config.yaml"
    if not path.exists():
        raise RunDirError(f"nothing to resume in {out} (no config.yaml); start the run without --resume")
    saved = yaml.safe_load(path.read_text())
    given = dict(given)
    saved_h = saved.get("hparams") or {}
    conflicts = [f"{k}={v!r} (the run has {saved_h.get(k)!r})" for k, v in (given.pop("hparams", None) or {}).items() if saved_h.get(k) != v]
    conflicts += [f"{k}={v!r} (the run has {saved.get(k)!r})" for k, v in given.items()
                  if k not in RESUMABLE_CHANGES and k != "out" and k in saved and v != saved.get(k)]
    if conflicts:
        raise RunDirError(f"--resume continues the saved run, but {', '.join(conflicts)}; drop those flags or start a new --out")
    changes = {k: v for k, v in given.items() if k in RESUMABLE_CHANGES}
    return replace(DistillConfig.from_dict(saved), out=str(out), **changes)


def _write_config(prep: _Prepared) -> None:
    import yaml

    if is_main_process():
        atomic_write_text(prep.run / "config.yaml", yaml.safe_dump(prep.cfg.to_dict(), sort_keys=False))


def _teacher_meta(cfg: DistillConfig) -> dict[str, str]:
    if not cfg.teacher:
        return {}
    meta = {"teacher": cfg.teacher}
    path = model_file(cfg.teacher)
    if path is None and cfg.teacher.startswith("robustbench:"):
        from .models.robustbench_source import checkpoint_path, parse_robustbench_id

        path = checkpoint_path(*parse_robustbench_id(cfg.teacher), cfg.model_dir)
    if path is not None and Path(path).exists():
        meta["teacher_sha256"] = sha256_file(path)
    return meta


def _evaluate_final(prep: _Prepared, model: Classifier, model_id: str, info: dict[str, Any], description: str,
                    reuse: bool = False) -> EvaluationResult:
    """Test-split evaluation. With ``reuse`` (the teacher), an identical stored evaluation is
    reused instead of attacking again, and a fresh one is stored (see :mod:`robustdistill.eval_cache`)."""
    from . import eval_cache

    cfg = prep.cfg
    attacks = [a for a in parse_attacks(cfg.eval_attacks) if not (cfg.no_aa and a == "aa")]
    settings = EvalSettings(eps=parse_fraction(cfg.eps or "8/255"), seed=cfg.eval_seed)
    split = prep.splits.test.head(cfg.eval_n_examples)
    return eval_cache.evaluate_or_reuse(
        model, split, prep.splits.info.class_names, attacks=attacks, settings=settings, model_id=model_id,
        dataset=prep.splits.info.name, model_info=info, reuse=reuse,
        reused_message=f"{description}: reusing the identical evaluation from {{source}}",
        batch_size=cfg.eval_batch_size, device=prep.device, description=description,
        state_path=prep.run / f".{description}-evaluation.partial.json",  # --resume continues a killed evaluation
    )


def run_training(cfg: DistillConfig, *, resume: bool = False, overwrite: bool = False) -> DistillResult:
    """Train a student (distillation, or teacher-free adversarial training) and report on it.

    Teacher-free runs (``train-teacher``) write ``teacher.safetensors`` instead of ``student.safetensors``.
    Under ``torchrun`` every rank trains; only rank 0 writes the model and evaluates it (the
    others return right after training with ``student=None``); each leaves the process group.
    """
    try:
        return _run(cfg, resume=resume, overwrite=overwrite)
    finally:
        destroy_distributed()


def _run(cfg: DistillConfig, *, resume: bool, overwrite: bool) -> DistillResult:
    prep = _prepare(cfg, resume=resume, overwrite=overwrite)
    cfg = prep.cfg
    _write_config(prep)
    if is_main_process():
        console.print(f"[bold]{cfg.method}[/]: {cfg.teacher or '(no teacher)'} → {cfg.student} on {cfg.dataset}, "
                      f"eps {cfg.eps}, {cfg.epochs} epochs, device {prep.device}; run directory [bold]{prep.run.path}[/]")
    history = prep.trainer.fit()
    student_path = prep.run / ("student.safetensors" if cfg.teacher else "teacher.safetensors")
    report_path = prep.run / "report.json"
    if not is_main_process():
        return DistillResult(prep.run.path, student_path, report_path, None, None, history, cfg.to_dict())
    extra = {"dataset": str(cfg.dataset), "method": cfg.method, "eps": str(cfg.eps), **prep.teacher_meta}
    prep.student.spec = prep.student.spec.with_(source=_provenance(cfg))
    save_classifier(prep.student, student_path, config=cfg.to_dict(), extra=extra)
    student_eval = _evaluate_final(prep, prep.student, str(student_path), describe_model(str(student_path), prep.student), "student")
    teacher_eval = None
    if prep.teacher is not None and cfg.teacher:
        teacher_eval = _evaluate_final(prep, prep.teacher, cfg.teacher, describe_model(cfg.teacher, prep.teacher), "teacher", reuse=True)
    write_run_report(prep, student_eval, teacher_eval, history)
    return DistillResult(prep.run.path, student_path, report_path, student_eval, teacher_eval, history, cfg.to_dict())


def _provenance(cfg: DistillConfig) -> str:
    """``ModelSpec.source`` of a trained model: how it was made."""
    if cfg.teacher:
        return f"robustdistill distill --method {cfg.method} --teacher {cfg.teacher} (eps {cfg.eps}, seed {cfg.seed})"
    return f"robustdistill train-teacher --method {cfg.method} (eps {cfg.eps}, seed {cfg.seed})"


def write_run_report(prep: _Prepared, student: EvaluationResult, teacher: EvaluationResult | None, history: list[dict[str, Any]]) -> None:
    """report.json / report.md / per_class.png (+ the fairness comparison when there is a teacher)."""
    cfg = prep.cfg
    selected = prep.trainer.selected_epoch
    report: dict[str, Any] = {
        "schema": "robustdistill/distill@1",
        "run": {"config": cfg.to_dict(), "epochs_trained": len(history), "selected": cfg.select, "selected_epoch": selected,
                "selected_validation": _validation(history, selected), "final_validation": _validation(history, len(history))},
        "student": student.to_dict(),
        "teacher": teacher.to_dict() if teacher is not None else None,
    }
    headline = "aa" if "aa" in student.correct else ("pgd" if "pgd" in student.correct else "clean")
    md = [f"# Distillation report: {cfg.method}", "",
          f"Teacher `{cfg.teacher}` → student `{cfg.student}` on {cfg.dataset}, L∞ eps {cfg.eps}, "
          f"{len(history)} epochs, seed {cfg.seed}. Model selection: {_selection_text(cfg.select, selected, history)} "
          "(validation split carved from the training data; the test split is used only here).", ""]
    md.append(evaluation_markdown(report["student"], heading="Student"))
    pairs = [("student", report["student"])]
    if teacher is not None:
        md.append(evaluation_markdown(report["teacher"], heading="Teacher"))
        pairs.insert(0, ("teacher", report["teacher"]))
        from .fairness import compare, verdicts, write_outputs

        comparison = compare([("teacher", teacher), ("student", student)])
        report["fairness"] = comparison
        write_outputs(comparison, prep.run.path)
        md += ["## Robust fairness: student vs teacher", "", *verdicts(comparison), "",
               "Class-by-class tables and plots: [fairness.md](fairness.md).", ""]
    atomic_write_json(prep.run / "report.json", report)
    atomic_write_text(prep.run / "report.md", "\n".join(md))
    plot_per_class(pairs, headline, prep.run / "per_class.png", title=f"Per-class accuracy under {headline.upper()}: teacher vs student")


def _validation(history: list[dict[str, Any]], epoch: int) -> dict[str, Any]:
    """The validation numbers logged for ``epoch`` (1-based; empty if it was not validated)."""
    record = next((r for r in history if r.get("epoch") == epoch), {})
    return {k: v for k, v in record.items() if k.startswith("val_")}


def _selection_text(select: str, epoch: int, history: list[dict[str, Any]]) -> str:
    if select != "best-val":
        return f"last epoch ({epoch})"
    val = _validation(history, epoch).get("val_pgd")
    shown = f", validation PGD accuracy {val:.1%}" if isinstance(val, float) else ""
    return f"best-val: epoch {epoch} of {len(history)}, the best on validation PGD accuracy{shown}"


def distill(
    teacher: str | None = "bundled:digits",
    student: str = "tiny_cnn",
    method: str = DEFAULT_METHOD,
    *,
    resume: bool = False,
    overwrite: bool = False,
    **options: Any,
) -> DistillResult:
    """Distil ``teacher`` into ``student`` with ``method``; the Python twin of ``robustdistill distill``.

    Keyword options are the fields of :class:`DistillConfig` (``dataset``, ``epochs``, ``eps``,
    ``out``, ...); anything else (``alpha``, ``temperature``, ``beta``, ``gamma``, ...) is a method
    hyperparameter.

    Example:
        >>> result = robustdistill.distill("bundled:digits", "tiny_cnn", "fair-iad", epochs=5, out="runs/demo")
        >>> result.student.summary("pgd")["worst_class"]
    """
    hparams, base = _split_options(options)
    if resume:
        named = {"teacher": teacher, "student": student, "method": method}
        return _resume(_non_default(named), base, hparams, overwrite)
    cfg = resolve_config(DistillConfig(teacher=teacher, student=student, method=method, hparams=hparams, **base))
    return run_training(cfg, overwrite=overwrite)


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(method hyperparameters, DistillConfig fields)`` from the keyword options of :func:`distill`."""
    known = {f.name for f in fields(DistillConfig)}
    hparams = dict(options.get("hparams") or {})
    hparams.update({k: v for k, v in options.items() if k not in known})
    return hparams, {k: v for k, v in options.items() if k in known and k != "hparams"}


def _non_default(named: dict[str, Any]) -> dict[str, Any]:
    """The positional arguments of :func:`distill` a caller changed (so a resume can check them)."""
    defaults = {"teacher": "bundled:digits", "student": "tiny_cnn", "method": DEFAULT_METHOD}
    return {k: v for k, v in named.items() if v != defaults[k]}


def _resume(named: dict[str, Any], base: dict[str, Any], hparams: dict[str, Any], overwrite: bool) -> DistillResult:
    if not base.get("out"):
        raise UsageError("resume needs out=... (the run directory to continue)")
    given = {**named, **{k: v for k, v in base.items() if k != "out"}, "hparams": hparams}
    return run_training(resume_config(base["out"], given), resume=True, overwrite=overwrite)


def train_teacher(
    arch: str | None = None, method: str | None = None, *, resume: bool = False, overwrite: bool = False, **options: Any,
) -> DistillResult:
    """Adversarially train ``arch`` (default ``small_cnn``) with PGD-AT ``at`` (default) or ``trades``
    into a robust teacher.

    The Python twin of ``robustdistill train-teacher``; options as for :func:`distill`. On resume,
    ``arch`` and ``method`` are checked against the saved run only when given.
    """
    if method is not None and (parse_method(method).base.needs_teacher or method.startswith("fair-")):
        raise UsageError(f"train-teacher trains without a teacher; use --method at or trades, not {method}")
    if resume:
        named = {"teacher": None, **({"student": arch} if arch else {}), **({"method": method} if method else {})}
        hparams, base = _split_options(options)
        return _resume(named, base, hparams, overwrite)
    return distill(None, arch or "small_cnn", method or "at", overwrite=overwrite, **options)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or TOML run config into a flat dict (``hparams`` may be nested or flat)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"config file {path} does not exist")
    text = path.read_text()
    if path.suffix.lower() == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{path} is not valid TOML ({exc})") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise UsageError(f"{path} is not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} must hold a mapping of option names to values")
    return {k.replace("-", "_"): v for k, v in data.items()}


__all__ = ["DistillConfig", "DistillResult", "distill", "train_teacher", "load_config_file", "resolve_config", "resume_config", "run_training"]
