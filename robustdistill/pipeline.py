"""The distillation (and teacher-training) pipeline behind ``robustdistill distill`` / ``train-teacher``.

Order of work is chosen so that a bad input never costs anything already written: the config is
resolved and validated, then every input (dataset, teacher, student, method) is loaded and
checked, and only then is the run directory claimed (locked; ``--overwrite`` removes only files
robustdistill wrote).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from . import config as C
from .fileio import sha256_file
from .runtime import select_device
from .units import format_fraction
from .api import describe_model, open_model
from .config import RunConfig
from .data import DatasetSplits, load_dataset
from .errors import RunDirError, UsageError
from .evaluation import EvaluationResult, eval_settings
from .evaluation.cache import evaluate_or_reuse
from .methods import AttackSettings, build_strategy
from .models import Classifier, ModelOptions, build_student, freeze, model_file, save_classifier
from .progress import console, is_main_process
from .resolve import COMMAND_DEFAULTS, new_config, resume_config
from .fairness import Comparison, compare
from .reports import DISTILL_SCHEMA
from .rundir import RunDir
from .methods import parse_method
from .train import TrainConfig, Trainer, barrier, destroy_distributed, init_distributed, read_checkpoint
from .train.distributed import check_sync_bn, rank_device

#: The method of the no-argument job: Fair-ARD reweighting over IAD, the base with the best average
#: and worst-class validation robustness on digits (benchmarks/results/default_job.md).
DEFAULT_METHOD = C.MethodSection().name


@dataclass(frozen=True)
class RunResult:
    """Where a run wrote its files, its final evaluations and the comparison with the teacher."""

    out_dir: Path
    student_path: Path
    report_path: Path
    student: EvaluationResult | None
    teacher: EvaluationResult | None
    history: list[dict[str, Any]]
    config: RunConfig
    comparison: Comparison | None = None

    def summary(self) -> dict[str, Any]:
        """Overall and worst-class accuracy per attack, for scripts (``--json``)."""
        def brief(result: EvaluationResult | None) -> dict[str, Any] | None:
            if result is None:
                return None
            return {a: {"accuracy": result.accuracy(a), "worst_class": result.summary(a).worst_class.to_dict()}
                    for a in result.correct}

        return {"out_dir": str(self.out_dir), "model": str(self.student_path), "report": str(self.report_path),
                "eps": self.config.method.eps, "student": brief(self.student), "teacher": brief(self.teacher)}


DistillResult = RunResult  # the name robustdistill 0.1 exported


def train_config(cfg: RunConfig) -> TrainConfig:
    """The trainer's settings from the run config's ``train`` section."""
    t = cfg.train
    return TrainConfig(
        epochs=int(t.epochs or 1), batch_size=int(t.batch_size or 1), optimizer=t.optimizer, lr=t.lr,
        momentum=t.momentum, weight_decay=float(t.weight_decay or 0.0), nesterov=t.nesterov,
        schedule=str(t.schedule), amp=t.amp, channels_last=t.channels_last, sync_bn=t.sync_bn, seed=t.seed,
        val_pgd_steps=t.val_pgd_steps, select=t.select,
    )


@dataclass
class Prepared:
    """Everything a run needs, loaded and checked."""

    cfg: RunConfig
    command: str
    splits: DatasetSplits
    teacher: Classifier | None
    student: Classifier
    trainer: Trainer
    run: RunDir
    device: torch.device
    teacher_meta: dict[str, str]


def _teacher_options(cfg: RunConfig) -> ModelOptions:
    return ModelOptions(arch=cfg.teacher.arch, weights=cfg.teacher.weights, model_dir=cfg.teacher.model_dir)


def _load_teacher(cfg: RunConfig, splits: DatasetSplits) -> Classifier | None:
    if not cfg.teacher.id:
        return None
    return freeze(open_model(cfg.teacher.id, splits, _teacher_options(cfg), role="teacher"))


def _build_student(cfg: RunConfig, splits: DatasetSplits) -> Classifier:
    """The student's initial weights depend on the seed only (same run, same start; identical on every rank)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        return build_student(cfg.student.arch, splits.info.hint(), weights=cfg.student.weights)


def _teacher_meta(cfg: RunConfig) -> dict[str, str]:
    if not cfg.teacher.id:
        return {}
    meta = {"teacher": cfg.teacher.id}
    path = model_file(cfg.teacher.id, _teacher_options(cfg))
    if path is not None and Path(path).is_file():
        meta["teacher_sha256"] = sha256_file(path)
    return meta


def _prepare(cfg: RunConfig, command: str, *, resume: bool, overwrite: bool) -> Prepared:
    """Load and check every input (and, on resume, the checkpoint), then - only then - claim the run directory."""
    run = RunDir(Path(str(cfg.run.out)), command=command)
    device = rank_device(select_device(cfg.run.device))
    if cfg.train.sync_bn:  # refused before anything is loaded
        check_sync_bn(cfg.method.name, parse_method(cfg.method.name).base.double_backward, device)
    init_distributed(device)
    run.check(resume=resume, overwrite=overwrite)  # every rank, before rank 0 writes anything
    splits = load_dataset(str(cfg.data.name), cfg.data.dir, download=cfg.data.download,
                          image_size=cfg.data.image_size, val_size=cfg.data.val_size)
    teacher = _load_teacher(cfg, splits)
    student = _build_student(cfg, splits)
    attack = AttackSettings(eps=float(cfg.method.eps or 0.0), step_size=float(cfg.method.attack_step or 0.0),
                            steps=cfg.method.attack_steps)
    strategy = build_strategy(cfg.method.name, {**cfg.method.params, **cfg.method.fair}, attack=attack,
                              num_classes=splits.info.num_classes)
    teacher_meta = _teacher_meta(cfg)
    state = _saved_state(run, teacher_meta) if resume else None
    _claim(run, resume=resume, overwrite=overwrite)
    trainer = Trainer(
        student, teacher, strategy, train=splits.train, val=splits.val, info=splits.info, config=train_config(cfg),
        device=device, run_dir=run, eval_settings=eval_settings(float(cfg.method.eps or 0.0)),
        run_config={**cfg.to_dict(), "teacher_sha256": teacher_meta.get("teacher_sha256")},
    )
    if state is not None:
        trainer.resume_from(state, run / "checkpoint.pt")
    return Prepared(cfg, command, splits, teacher, student, trainer, run, device, teacher_meta)


def _saved_state(run: RunDir, teacher_meta: Mapping[str, str]) -> dict[str, Any] | None:
    """The checkpoint to resume from (``None``: a run killed in its first epoch has only config.yaml), checked."""
    path = run / "checkpoint.pt"
    if not path.exists():
        return None
    state = read_checkpoint(path)
    _check_same_teacher(state.get("config") or {}, teacher_meta, run)
    return state


def _claim(run: RunDir, *, resume: bool, overwrite: bool) -> None:
    """Rank 0 alone creates, locks and cleans the run directory; the other ranks wait (they checked it already)."""
    barrier()
    if is_main_process():
        run.claim(overwrite=overwrite and not resume)
    barrier()


def _check_same_teacher(saved: Mapping[str, Any], teacher_meta: Mapping[str, str], run: RunDir) -> None:
    """A resumed run must distil from the very teacher file it started with."""
    before, now = saved.get("teacher_sha256"), teacher_meta.get("teacher_sha256")
    if before and now and before != now:
        raise RunDirError(f"the teacher file changed since the run in {run.path} started (sha256 {before[:12]}... is now "
                          f"{now[:12]}...); resume with the original teacher or start a new --out")


def _write_config(prep: Prepared) -> None:
    import yaml

    if is_main_process():
        prep.run.write_text("config.yaml", yaml.safe_dump(prep.cfg.to_dict(), sort_keys=False))


def _evaluate_final(prep: Prepared, model: Classifier, model_id: str, info: dict[str, Any], description: str,
                    reuse: bool = False) -> EvaluationResult:
    """Test-split evaluation at the training budget. With ``reuse`` (the teacher), an identical stored
    evaluation is reused instead of attacking again, and a fresh one is stored.

    Under ``torchrun`` every rank calls this and attacks its share of the batches (no resumable
    state then); otherwise ``eval_workers`` local processes share them.
    """
    e = prep.cfg.evaluation
    settings = eval_settings(float(prep.cfg.method.eps or 0.0), e.seed)
    attacks = [a.name for a in settings.attacks(e.attacks) if not (e.no_aa and a.name == "aa")]
    split = prep.splits.test.head(e.n_examples)
    distributed = prep.trainer.dist.enabled
    # --resume continues a killed evaluation (one process writes the run directory: not under torchrun)
    state = None if distributed else prep.run.file(f".{description}-evaluation.partial.json")
    return evaluate_or_reuse(
        model, split, prep.splits.info.class_names, attacks=attacks, settings=settings, model_id=model_id,
        dataset=prep.splits.info.name, model_info=info, reuse=reuse,
        reused_message=f"{description}: reusing the identical evaluation from {{source}}",
        batch_size=e.batch_size, device=prep.device, description=description, state_path=state,
        workers=e.workers, distributed=distributed,
    )


def run_training(cfg: RunConfig, *, command: str = "distill", resume: bool = False, overwrite: bool = False) -> RunResult:
    """Train a student (distillation, or teacher-free adversarial training) and report on it.

    Teacher-free runs (``train-teacher``) write ``teacher.safetensors`` instead of ``student.safetensors``.
    Under ``torchrun`` every rank trains, validates and evaluates its share of the batches and
    returns the whole evaluation; only rank 0 writes files (and ``comparison`` is ``None`` on the
    others); each leaves the process group.
    """
    try:
        return _run(cfg, command, resume=resume, overwrite=overwrite)
    finally:
        destroy_distributed()


def _announce(prep: Prepared) -> None:
    cfg = prep.cfg
    if not is_main_process():
        return
    console.print(f"[bold]{cfg.method.name}[/]: {cfg.teacher.id or '(no teacher)'} → {cfg.student.arch} on "
                  f"{cfg.data.name}, eps {format_fraction(float(cfg.method.eps or 0))}, {cfg.train.epochs} epochs, "
                  f"device {prep.device}; run directory [bold]{prep.run.path}[/]")
    batch = _global_batch(prep)
    if batch["world_size"] > 1:
        console.print(f"DDP: {batch['world_size']} processes x --batch-size {batch['batch_size_per_process']} = global "
                      f"batch {batch['global_batch_size']} ({cfg.method.name}'s reference batch: "
                      f"{batch['reference_batch_size']})", markup=False)
    if batch["world_size"] > 1 and batch["global_batch_size"] != batch["reference_batch_size"]:
        per = max(1, batch["reference_batch_size"] // batch["world_size"])
        console.print(f"[yellow]warning:[/] the global batch {batch['global_batch_size']} differs from the "
                      f"{batch['reference_batch_size']} of {cfg.method.name}'s recipe (lr {cfg.train.lr:g} goes with it); "
                      f"--batch-size {per} keeps the recipe, or scale --lr with the batch")


def _global_batch(prep: Prepared) -> dict[str, Any]:
    """How the batch is split under DDP (``--batch-size`` is per process): what report.json records."""
    world, per = prep.trainer.dist.world, int(prep.cfg.train.batch_size or 1)
    return {"world_size": world, "batch_size_per_process": per, "global_batch_size": world * per,
            "reference_batch_size": prep.trainer.strategy.spec.reference_batch, "sync_bn": prep.cfg.train.sync_bn}


def _run(cfg: RunConfig, command: str, *, resume: bool, overwrite: bool) -> RunResult:
    prep = _prepare(cfg, command, resume=resume, overwrite=overwrite)
    try:
        with prep.run.guard():  # a full disk or a stop names what is intact and the resume command
            return _train_and_report(prep)
    finally:
        prep.run.release()


def _train_and_report(prep: Prepared) -> RunResult:
    cfg = prep.cfg
    _write_config(prep)
    _announce(prep)
    history = _fit(prep)
    model_path = prep.run / ("student.safetensors" if cfg.teacher.id else "teacher.safetensors")
    report_path = prep.run / "report.json"
    _save_model(prep, model_path)
    barrier()  # every rank describes the saved file (its sha256 keys the cache)
    student_eval = _evaluate_final(prep, prep.student, str(model_path), describe_model(str(model_path), prep.student), "student")
    teacher_eval = None
    if prep.teacher is not None and cfg.teacher.id:
        info = describe_model(cfg.teacher.id, prep.teacher, _teacher_options(cfg))
        teacher_eval = _evaluate_final(prep, prep.teacher, cfg.teacher.id, info, "teacher", reuse=True)
    if not is_main_process():
        return RunResult(prep.run.path, model_path, report_path, student_eval, teacher_eval, history, cfg)
    comparison = write_run_report(prep, student_eval, teacher_eval, history)
    return RunResult(prep.run.path, model_path, report_path, student_eval, teacher_eval, history, cfg, comparison)


def _fit(prep: Prepared) -> list[dict[str, Any]]:
    """Train, writing every epoch's metrics to the configured logs as well (rank 0)."""
    from .logsinks import MetricSinks, parse_sinks

    if not is_main_process():
        return prep.trainer.fit()
    sinks = MetricSinks(parse_sinks(prep.cfg.run.log), prep.run.path, prep.run.write_text, prep.trainer.start_epoch)
    try:
        return prep.trainer.fit(on_epoch=sinks.write)
    finally:
        sinks.close()


def _save_model(prep: Prepared, path: Path) -> None:
    """Label the trained model with its provenance (every rank) and write it (rank 0)."""
    cfg = prep.cfg
    spec = prep.student.spec.with_(source=_provenance(cfg), dataset=cfg.data.name, eps=cfg.method.eps)
    prep.student.spec = spec
    if not is_main_process():
        return
    extra = {"dataset": str(cfg.data.name), "method": cfg.method.name, "eps": repr(cfg.method.eps), **prep.teacher_meta}
    save_classifier(prep.student, prep.run.file(path.name), config=cfg.to_dict(), extra=extra)


def _provenance(cfg: RunConfig) -> str:
    """``ModelSpec.source`` of a trained model: how it was made."""
    what = f"(eps {format_fraction(float(cfg.method.eps or 0))}, seed {cfg.train.seed})"
    if cfg.teacher.id:
        return f"robustdistill distill --method {cfg.method.name} --teacher {cfg.teacher.id} {what}"
    return f"robustdistill train-teacher --method {cfg.method.name} {what}"


def write_run_report(prep: Prepared, student: EvaluationResult, teacher: EvaluationResult | None,
                     history: list[dict[str, Any]]) -> Comparison | None:
    """report.json / report.md / per_class.png (+ the fairness comparison when there is a teacher)."""
    from .render import RunHeader, write_run_files

    cfg, selected = prep.cfg, prep.trainer.selected_epoch
    report: dict[str, Any] = {
        "schema": DISTILL_SCHEMA,
        "run": {"config": cfg.to_dict(), "epochs_trained": len(history), "selected": cfg.train.select,
                "selected_epoch": selected, "selected_validation": _validation(history, selected),
                "final_validation": _validation(history, len(history)), "batch": _global_batch(prep)},
        "student": student.to_dict(),
        "teacher": teacher.to_dict() if teacher is not None else None,
    }
    comparison = compare([("teacher", teacher), ("student", student)]) if teacher is not None else None
    header = RunHeader(cfg.method.name, cfg.teacher.id, cfg.student.arch, len(history), cfg.train.seed,
                       _selection_text(cfg.train.select, selected, history))
    write_run_files(prep.run.file, report, header, student, teacher, comparison)
    return comparison


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


# --------------------------------------------------------------------------- Python API
def _split_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(run options, method hyperparameters)`` from keyword arguments: anything that is not an
    option name (``alpha``, ``tau``, ``beta``, ...) is a hyperparameter; ``params=`` / ``hparams=``
    dicts are accepted too."""
    known = C.option_index()
    params = {**dict(options.get("params") or {}), **dict(options.get("hparams") or {})}
    params.update({k: v for k, v in options.items() if k not in known and k not in ("params", "hparams")})
    return {k: v for k, v in options.items() if k in known}, params


def _changed(command: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """The positional arguments a caller changed from their defaults (what a resume must check)."""
    defaults = C.build_config(COMMAND_DEFAULTS[command]).option_values()
    return {k: v for k, v in given.items() if v != defaults.get(k)}


def distill(
    teacher: str | None = "bundled:digits",
    student: str = "tiny_cnn",
    method: str = DEFAULT_METHOD,
    *,
    resume: bool = False,
    overwrite: bool = False,
    config: str | Path | None = None,
    **options: Any,
) -> RunResult:
    """Distil ``teacher`` into ``student`` with ``method``: the Python twin of ``robustdistill distill``.

    Keyword options are the run options (the CLI flags with underscores: ``dataset``, ``epochs``,
    ``eps``, ``out``, ``eval_attacks`` ...); anything else (``alpha``, ``tau``, ``beta``, ...) is a
    method hyperparameter. ``config`` reads a YAML/TOML file first; keywords override it.
    Defaults are the CLI's, resolved from the same specs.

    Example:
        >>> result = robustdistill.distill("bundled:digits", "tiny_cnn", "fair-iad", epochs=5, out="runs/demo")
        >>> result.student.summary("pgd").worst_class
    """
    named = {"teacher": teacher, "student": student, "method": method}
    return _run_api("distill", _changed("distill", named) if resume else named, options, resume=resume,
                    overwrite=overwrite, config=config)


def train_teacher(
    arch: str | None = None, method: str | None = None, *, resume: bool = False, overwrite: bool = False,
    config: str | Path | None = None, **options: Any,
) -> RunResult:
    """Adversarially train ``arch`` (default ``small_cnn``) with PGD-AT ``at`` (default) or ``trades``.

    The Python twin of ``robustdistill train-teacher``; options as for :func:`distill`.
    """
    named = {k: v for k, v in {"student": arch, "method": method}.items() if v is not None}
    return _run_api("train-teacher", named, options, resume=resume, overwrite=overwrite, config=config)


def _run_api(command: str, named: dict[str, Any], options: Mapping[str, Any], *, resume: bool, overwrite: bool,
             config: str | Path | None) -> RunResult:
    run_options, params = _split_options(options)
    if config is not None:
        file_options, file_params = C.options_from_file(C.read_config_file(config), str(config))
        run_options, params = {**file_options, **run_options}, {**file_params, **params}
    if resume:
        if not run_options.get("out"):
            raise UsageError("resume needs out=... (the run directory to continue)")
        given = {**named, **run_options}
        cfg = resume_config(run_options["out"], given, params)
        return run_training(cfg, command=command, resume=True, overwrite=overwrite)
    cfg = new_config(command, {**named, **run_options}, params)
    return run_training(cfg, command=command, overwrite=overwrite)


__all__ = ["DEFAULT_METHOD", "DistillResult", "RunResult", "distill", "run_training", "train_config", "train_teacher"]
