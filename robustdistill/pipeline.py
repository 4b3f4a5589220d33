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
from .api import describe_model, open_model, with_cost
from .config import RunConfig
from .data import DatasetSplits, load_dataset
from .errors import ModelError, RunDirError, UsageError
from .evaluation import EvaluationResult, eval_settings
from .evaluation.cache import evaluate_or_reuse
from .methods import AttackSettings, build_strategy
from .models import Classifier, ModelOptions, build_student, freeze, model_file, read_metadata, save_classifier
from .progress import console, is_main_process
from .resolve import COMMAND_DEFAULTS, new_config, resume_config
from .fairness import Comparison, compare
from .reports import DISTILL_SCHEMA
from .rundir import RunDir
from .methods import parse_method
from .train import TrainConfig, Trainer, barrier, destroy_distributed, init_distributed, read_checkpoint
from .train.numerics import NumericPath, choose_numeric_path, forward_macs
from .train.numerics import apply as apply_numeric_path
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
    natural_teacher: EvaluationResult | None = None

    def summary(self) -> dict[str, Any]:
        """Overall and worst-class accuracy per attack, for scripts (``--json``)."""
        def brief(result: EvaluationResult | None) -> dict[str, Any] | None:
            if result is None:
                return None
            return {a: {"accuracy": result.accuracy(a), "worst_class": result.summary(a).worst_class.to_dict()}
                    for a in result.correct}

        out = {"out_dir": str(self.out_dir), "model": str(self.student_path), "report": str(self.report_path),
               "eps": self.config.method.eps, "student": brief(self.student), "teacher": brief(self.teacher)}
        if self.natural_teacher is not None:
            out["natural_teacher"] = brief(self.natural_teacher)
        return out


DistillResult = RunResult  # the name robustdistill 0.1 exported


def train_config(cfg: RunConfig, numeric: NumericPath) -> TrainConfig:
    """The trainer's settings from the run config's ``train`` section and the chosen numeric path."""
    t = cfg.train
    return TrainConfig(
        epochs=int(t.epochs or 1), batch_size=int(t.batch_size or 1), optimizer=t.optimizer, lr=t.lr,
        momentum=t.momentum, weight_decay=float(t.weight_decay or 0.0), nesterov=t.nesterov,
        schedule=str(t.schedule), amp=numeric.amp, channels_last=numeric.channels_last, sync_bn=t.sync_bn, seed=t.seed,
        val_pgd_steps=t.val_pgd_steps, select=t.select,
    )


def numeric_path_for(cfg: RunConfig, device: torch.device, models: list[Classifier]) -> NumericPath:
    """Autocast, memory format, threads and compilation for these models on this device (applied now)."""
    t = cfg.train
    macs = sum(forward_macs(m, m.spec.input_size) for m in models)
    path = choose_numeric_path(amp=t.amp, channels_last=t.channels_last, threads=t.threads, compile=t.compile,
                               device=device, macs=macs)
    apply_numeric_path(path, models)
    return path


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
    numeric: NumericPath
    extra_teachers: dict[str, Classifier]
    threads_at_start: int


def _teacher_options(cfg: RunConfig) -> ModelOptions:
    return ModelOptions(arch=cfg.teacher.arch, weights=cfg.teacher.weights, model_dir=cfg.teacher.model_dir)


def _load_teacher(cfg: RunConfig, splits: DatasetSplits) -> Classifier | None:
    if not cfg.teacher.id:
        return None
    return freeze(open_model(cfg.teacher.id, splits, _teacher_options(cfg), role="teacher"))


def _natural_options(cfg: RunConfig) -> ModelOptions:
    return ModelOptions(model_dir=cfg.teacher.model_dir)


def _load_extra_teachers(cfg: RunConfig, splits: DatasetSplits) -> dict[str, Classifier]:
    """MTARD's natural teacher, checked against the data (classes, channels, size) like the robust one."""
    if not cfg.teacher.natural:
        return {}
    return {"natural": freeze(open_model(cfg.teacher.natural, splits, _natural_options(cfg), role="natural teacher"))}


def _initial_model(cfg: RunConfig, splits: DatasetSplits) -> Classifier | None:
    """``--init`` / ``--student-weights`` when it is a robustdistill model file (e.g. FRL's hot start from
    ``train-teacher``), checked against the data and the architecture; ``None`` for other weight files."""
    path = cfg.student.weights
    if not path or not str(path).lower().endswith(".safetensors") or not Path(path).is_file():
        return None
    if "robustdistill.spec" not in read_metadata(path):
        return None
    model = open_model(str(path), splits, role="initial model (--init)")
    if model.spec.arch != cfg.student.arch:
        raise ModelError(f"the initial model {path} is a {model.spec.arch}, but the run trains a {cfg.student.arch}; "
                         f"train a {model.spec.arch} or start from a {cfg.student.arch}")
    return model


def _build_student(cfg: RunConfig, splits: DatasetSplits) -> Classifier:
    """The student's initial weights depend on the seed only (same run, same start; identical on every rank),
    or are those of ``--init`` (a robustdistill model of the same architecture, or plain weights)."""
    initial = _initial_model(cfg, splits)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        student = build_student(cfg.student.arch, splits.info.hint(), weights=None if initial else cfg.student.weights)
    if initial is not None:
        student.load_state_dict(initial.state_dict())
    return student


def _teacher_meta(cfg: RunConfig) -> dict[str, str]:
    """Identifier and file sha256 of each teacher and of the initial weights (a resume must use the same files)."""
    meta: dict[str, str] = {}
    for key, identifier, options in (("teacher", cfg.teacher.id, _teacher_options(cfg)),
                                     ("natural_teacher", cfg.teacher.natural, _natural_options(cfg))):
        if not identifier:
            continue
        meta[key] = identifier
        path = model_file(identifier, options)
        if path is not None and Path(path).is_file():
            meta[f"{key}_sha256"] = sha256_file(path)
    if cfg.student.weights and Path(cfg.student.weights).is_file():
        meta["init_sha256"] = sha256_file(cfg.student.weights)
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
    extra_teachers = _load_extra_teachers(cfg, splits)
    student = _build_student(cfg, splits)
    attack = AttackSettings(eps=float(cfg.method.eps or 0.0), step_size=float(cfg.method.attack_step or 0.0),
                            steps=cfg.method.attack_steps)
    strategy = build_strategy(cfg.method.name, {**cfg.method.params, **cfg.method.fair}, attack=attack,
                              num_classes=splits.info.num_classes)
    teacher_meta = _teacher_meta(cfg)
    threads_at_start = torch.get_num_threads()
    numeric = numeric_path_for(cfg, device, [m for m in (student, teacher) if m is not None])
    state = _saved_state(run, teacher_meta) if resume else None
    _claim(run, resume=resume, overwrite=overwrite)
    trainer = Trainer(
        student, teacher, strategy, train=splits.train, val=splits.val, info=splits.info,
        config=train_config(cfg, numeric),
        device=device, run_dir=run, eval_settings=eval_settings(float(cfg.method.eps or 0.0)),
        run_config={**cfg.to_dict(), **{k: v for k, v in teacher_meta.items() if k.endswith("_sha256")}},
        extra_teachers=extra_teachers,
    )
    if state is not None:
        trainer.resume_from(state, run / "checkpoint.pt")
    return Prepared(cfg, command, splits, teacher, student, trainer, run, device, teacher_meta, numeric,
                    extra_teachers, threads_at_start)


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
    """A resumed run must distil from the very teacher files (and start from the initial weights) it started with."""
    for key, what in (("teacher_sha256", "teacher"), ("natural_teacher_sha256", "natural teacher"),
                      ("init_sha256", "initial weights (--init)")):
        before, now = saved.get(key), teacher_meta.get(key)
        if before and now and before != now:
            raise RunDirError(f"the {what} file changed since the run in {run.path} started (sha256 {before[:12]}... is "
                              f"now {now[:12]}...); resume with the original file or start a new --out")


def _write_config(prep: Prepared) -> None:
    import yaml

    if is_main_process():
        prep.run.write_text("config.yaml", yaml.safe_dump(prep.cfg.to_dict(), sort_keys=False))


def _evaluate_final(prep: Prepared, model: Classifier, model_id: str, info: dict[str, Any], description: str,
                    file: Path | None, reuse: bool = False) -> EvaluationResult:
    """Test-split evaluation at the training budget. With ``reuse`` (the teacher), an identical stored
    evaluation is reused instead of attacking again, and a fresh one is stored.

    Under ``torchrun`` every rank calls this and attacks its share of the batches (no resumable
    state then); otherwise ``eval_workers`` local processes share them.
    """
    e = prep.cfg.evaluation
    settings = eval_settings(float(prep.cfg.method.eps or 0.0), e.seed, aa_version=e.aa_version)
    attacks = [a.name for a in settings.attacks(e.attacks) if not (e.no_aa and a.name == "aa")]
    split = prep.splits.test.head(e.n_examples)
    distributed = prep.trainer.dist.enabled
    # --resume continues a killed evaluation (one process writes the run directory: not under torchrun)
    state = None if distributed else prep.run.file(f".{description}-evaluation.partial.json")
    result = evaluate_or_reuse(
        model, split, prep.splits.info.class_names, attacks=attacks, settings=settings, model_id=model_id,
        dataset=prep.splits.info.name, model_info=info, reuse=reuse,
        reused_message=f"{description}: reusing the identical evaluation from {{source}}",
        batch_size=e.batch_size, device=prep.device, description=description, state_path=state,
        workers=e.workers, distributed=distributed,
    )
    return with_cost(result, model, file) if is_main_process() else result  # timing on one rank is enough


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
    natural = f" + natural {cfg.teacher.natural}" if cfg.teacher.natural else ""
    console.print(f"[bold]{cfg.method.name}[/]: {cfg.teacher.id or '(no teacher)'}{natural} → {cfg.student.arch} on "
                  f"{cfg.data.name}, eps {format_fraction(float(cfg.method.eps or 0))}, {cfg.train.epochs} epochs, "
                  f"device {prep.device}, {prep.numeric.reason}; run directory [bold]{prep.run.path}[/]")
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
    _numerics_for_evaluation(prep)
    model_path = prep.run / ("student.safetensors" if cfg.teacher.id else "teacher.safetensors")
    report_path = prep.run / "report.json"
    _save_model(prep, model_path)
    barrier()  # every rank describes the saved file (its sha256 keys the cache)
    student_eval = _evaluate_final(prep, prep.student, str(model_path), describe_model(str(model_path), prep.student),
                                   "student", model_path)
    teacher_eval = _evaluate_teacher(prep, cfg.teacher.id, prep.teacher, _teacher_options(cfg), "teacher")
    natural_eval = _evaluate_teacher(prep, cfg.teacher.natural, prep.extra_teachers.get("natural"),
                                     _natural_options(cfg), "natural-teacher")
    if not is_main_process():
        return RunResult(prep.run.path, model_path, report_path, student_eval, teacher_eval, history, cfg,
                         natural_teacher=natural_eval)
    comparison = write_run_report(prep, student_eval, teacher_eval, history, natural_eval)
    return RunResult(prep.run.path, model_path, report_path, student_eval, teacher_eval, history, cfg, comparison,
                     natural_eval)


def _evaluate_teacher(prep: Prepared, identifier: str | None, model: Classifier | None, options: ModelOptions,
                      role: str) -> EvaluationResult | None:
    # Teachers are evaluated once and reused from the cache: their result does not depend on this run.
    if model is None or not identifier:
        return None
    info = describe_model(identifier, model, options)
    return _evaluate_final(prep, model, identifier, info, role, model_file(identifier, options), reuse=True)


def _numerics_for_evaluation(prep: Prepared) -> None:
    """Undo what was chosen for training only: a small model's single intra-op thread (not one asked for
    with ``--threads``) - so the evaluation's worker processes get every core - and cuDNN autotuning, whose
    per-process kernel choice could make per-sample results depend on the number of processes."""
    if prep.cfg.train.threads is None:
        torch.set_num_threads(prep.threads_at_start)
    torch.backends.cudnn.benchmark = False


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
    extra = (f" --natural-teacher {cfg.teacher.natural}" if cfg.teacher.natural else "") + (
        f" --init {cfg.student.weights}" if cfg.student.weights else "")
    if cfg.teacher.id:
        return f"robustdistill distill --method {cfg.method.name} --teacher {cfg.teacher.id}{extra} {what}"
    return f"robustdistill train-teacher --method {cfg.method.name}{extra} {what}"


def write_run_report(prep: Prepared, student: EvaluationResult, teacher: EvaluationResult | None,
                     history: list[dict[str, Any]], natural_teacher: EvaluationResult | None = None) -> Comparison | None:
    """report.json / report.md / per_class.png (+ the fairness comparison when there is a teacher; MTARD's
    natural teacher is evaluated, reported and compared with the robust teacher as well)."""
    from .render import RunHeader, write_run_files

    cfg, selected = prep.cfg, prep.trainer.selected_epoch
    report: dict[str, Any] = {
        "schema": DISTILL_SCHEMA,
        "run": {"config": cfg.to_dict(), "numeric_path": prep.numeric.to_dict(), "epochs_trained": len(history),
                "selected": cfg.train.select,
                "selected_epoch": selected, "selected_validation": _validation(history, selected),
                "final_validation": _validation(history, len(history)), "batch": _global_batch(prep)},
        "student": student.to_dict(),
        "teacher": teacher.to_dict() if teacher is not None else None,
    }
    entries = [("teacher", teacher), ("student", student)] if teacher is not None else []
    if natural_teacher is not None:
        report["natural_teacher"] = natural_teacher.to_dict()
        entries.append(("natural teacher", natural_teacher))
    comparison = compare(entries) if entries else None  # type: ignore[arg-type]
    header = RunHeader(cfg.method.name, cfg.teacher.id, cfg.student.arch, len(history), cfg.train.seed,
                       _selection_text(cfg.train.select, selected, history), cfg.teacher.natural)
    write_run_files(prep.run.file, report, header, student, teacher, comparison, natural_teacher=natural_teacher)
    return comparison


def _validation(history: list[dict[str, Any]], epoch: int) -> dict[str, Any]:
    """The validation numbers logged for ``epoch`` (1-based; empty if it was not validated)."""
    record = next((r for r in history if r.get("epoch") == epoch), {})
    return {k: v for k, v in record.items() if k.startswith("val_")}


def _selection_text(select: str, epoch: int, history: list[dict[str, Any]]) -> str:
    if select == "last":
        return f"last epoch ({epoch})"
    record = _validation(history, epoch)
    val, worst = record.get("val_pgd"), record.get("val_pgd_worst")
    if select == "fair":
        shown = (f", validation PGD accuracy {val:.1%}, worst class {worst:.1%}, mean {(val + worst) / 2:.1%}"
                 if isinstance(val, float) and isinstance(worst, float) else "")
        return (f"fair: epoch {epoch} of {len(history)}, the highest mean of average and worst-class validation PGD "
                f"accuracy (Fair-ARD's rule){shown}")
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
    """Train ``arch`` (default ``small_cnn``) without a teacher: PGD-AT ``at`` (default), ``trades``, the
    robust-fairness methods ``frl`` (needs ``student_weights=`` a robust model: its hot start) and ``cfa``,
    or ``standard`` (clean cross-entropy: e.g. MTARD's natural teacher).

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
