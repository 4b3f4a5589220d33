"""Resolving a run config from the component specs, once, and checking a resume against the saved run.

Every default comes from a spec: the dataset's eps, batch size and epochs; the method's epochs on
that dataset, its schedule, weight decay and hyperparameters; the teacher's recorded dataset and
training budget. Train-teacher runs take the dataset's budget; a distillation whose teacher
records no budget (timm, plain checkpoints) needs ``--eps``: no silent 8/255.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from . import config as C
from .config import RunConfig
from .errors import RunDirError, UsageError
from .params import build_params, defaults

#: What each command trains by default (the no-argument ``distill`` is the bundled digits job).
COMMAND_DEFAULTS: dict[str, dict[str, Any]] = {
    "distill": {},
    "train-teacher": {"teacher": None, "student": "small_cnn", "method": "at"},
}
#: Options that may change when a run is resumed (they do not change what is trained).
RESUMABLE_CHANGES = frozenset({"device", "no_aa", "eval_attacks", "eval_n_examples", "eval_batch_size", "eval_seed",
                               "epochs", "log", "threads", "compile", "aa_version",
                               "eval_workers"})


def new_config(command: str, options: Mapping[str, Any], params: Mapping[str, Any] | None = None) -> RunConfig:
    """The resolved config of a new run of ``command`` from flat options and method hyperparameters."""
    base = C.build_config(COMMAND_DEFAULTS[command])
    return resolve(C.build_config(options, params=params or {}, base=base), command)


def _teacher_record(cfg: RunConfig) -> tuple[str | None, float | None]:
    """The dataset and L-inf budget the teacher was trained for, when its file or source records them."""
    if not cfg.teacher.id:
        return None, None
    from .api import recorded_dataset
    from .models import ModelOptions, recorded_eps

    options = ModelOptions(arch=cfg.teacher.arch, weights=cfg.teacher.weights, model_dir=cfg.teacher.model_dir)
    return recorded_dataset(cfg.teacher.id, options), recorded_eps(cfg.teacher.id, options)


def _method(cfg: RunConfig, command: str) -> Any:
    from .methods import parse_method

    from .methods import METHODS

    choice = parse_method(cfg.method.name)
    if command == "train-teacher" and (choice.fair or choice.base.needs_teacher):
        others = ", ".join(s.name for s in METHODS if not s.needs_teacher and s.name not in ("at", "trades"))
        raise UsageError(f"train-teacher trains without a teacher; use --method at or trades (or {others}), not {choice.name}")
    if command == "distill" and choice.base.needs_teacher and not cfg.teacher.id:
        raise UsageError(f"method {choice.name} distils from a teacher; pass --teacher")
    if choice.base.requires_init and not cfg.student.weights:
        raise UsageError(f"{choice.name} fine-tunes a robust model; pass --init MODEL (e.g. the teacher.safetensors of "
                         "`robustdistill train-teacher --method trades`)")
    return choice


def _check_extra_teachers(cfg: RunConfig, choice: Any, params: Mapping[str, Any]) -> None:
    """A natural teacher is given exactly when the method runs one (mtard, unless its target is the robust teacher)."""
    uses = "natural" in choice.base.extra_teachers and params.get("natural_target", "natural") == "natural"
    if uses and not cfg.teacher.natural:
        raise UsageError(f"method {choice.name} also distils from a naturally trained teacher; pass --natural-teacher "
                         "MODEL (e.g. the teacher.safetensors of `robustdistill train-teacher --method standard`)")
    if cfg.teacher.natural and not uses:
        raise UsageError(f"--natural-teacher is used only by mtard and fair-mtard with natural_target=natural, not by "
                         f"{choice.name}; drop it")


def _budget(cfg: RunConfig, command: str, recorded: float | None, dataset_eps: float) -> float:
    if cfg.method.eps is not None:
        return cfg.method.eps
    if recorded is not None:
        return recorded
    if command == "train-teacher" or not cfg.teacher.id:
        return dataset_eps
    raise UsageError(f"the teacher {cfg.teacher.id} records no training budget; pass --eps (e.g. --eps 8/255) "
                     "so the student is trained and attacked at the budget you mean")


def _params(choice: Any, given: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every hyperparameter of the method written out (defaults filled in), validated now."""
    from .methods import FairParams, canonical_params, split_params

    base, fair = split_params(choice, canonical_params(given))
    owner = f"method {choice.name!r}"
    base = {**choice.base.default_params(), **base}
    build_params(choice.base.params, base, owner)
    if not choice.fair:
        return base, {}
    fair = {**defaults(FairParams), **fair}
    build_params(FairParams, fair, owner)
    return base, fair


def resolve(cfg: RunConfig, command: str) -> RunConfig:
    """Fill every default from the specs and validate; raises :class:`UsageError` on bad input."""
    from .data import get_dataset
    from .methods import parse_method

    choice = _method(cfg, command)
    rec_dataset, rec_eps = _teacher_record(cfg)
    dataset_name = _given(cfg.data.name, rec_dataset)
    if not dataset_name:
        raise UsageError("say which data to train on with --dataset (see `robustdistill list datasets`)")
    dspec = get_dataset(dataset_name)
    eps = _budget(cfg, command, rec_eps, dspec.defaults.eps)
    base, fair = _params(choice, {**cfg.method.params, **cfg.method.fair})
    _check_extra_teachers(cfg, choice, base)
    cfg = dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, name=dspec.name),
        method=dataclasses.replace(cfg.method, name=parse_method(choice.name).name, eps=eps,
                                   attack_step=cfg.method.attack_step if cfg.method.attack_step is not None else eps / 4,
                                   params=MappingProxyType(base), fair=MappingProxyType(fair)),
        train=dataclasses.replace(
            cfg.train, epochs=_given(cfg.train.epochs, choice.base.epochs_for(dspec.name, dspec.defaults.epochs)),
            batch_size=_given(cfg.train.batch_size, dspec.defaults.batch_size), lr=_given(cfg.train.lr, choice.base.lr),
            schedule=_given(cfg.train.schedule, choice.base.schedule),
            weight_decay=cfg.train.weight_decay if cfg.train.weight_decay is not None else choice.base.weight_decay),
    )
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out=_given(cfg.run.out, C.default_out(cfg))))
    check_components(cfg)
    return cfg


def _given(value: Any, default: Any) -> Any:
    """``value`` unless it was not given (``None``): an explicit 0 must reach validation, not the default."""
    return default if value is None else value


def check_components(cfg: RunConfig) -> None:
    """Names that must be registered (schedule, optimizer, attacks) and numeric ranges."""
    from .evaluation import attack_names
    from .logsinks import parse_sinks
    from .train import OPTIMIZERS, SCHEDULES

    parse_sinks(cfg.run.log)
    SCHEDULES.get(str(cfg.train.schedule))
    OPTIMIZERS.get(cfg.train.optimizer)
    attack_names(cfg.evaluation.attacks)
    C.validate(cfg)


# --------------------------------------------------------------------------- resume
def saved_config(out: str | Path) -> RunConfig:
    """The config.yaml of the run in ``out`` (sectioned, or robustdistill 0.1's flat form)."""
    path = Path(out) / "config.yaml"
    if not path.exists():
        raise RunDirError(f"nothing to resume in {out} (no config.yaml); start the run without --resume")
    try:
        data = C.read_config_file(path)
        options, params = C.options_from_file(data, str(path))
        cfg = C.build_config(options, params=params, base=C.build_config({"teacher": None}))
    except UsageError as exc:
        raise RunDirError(f"the run's {path} is damaged ({exc}); start a new --out or repair the file") from None
    base, fair = _split_saved(cfg)
    return dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, params=base, fair=fair))


def _split_saved(cfg: RunConfig) -> tuple[Mapping[str, Any], Mapping[str, Any]]:
    from .methods import parse_method, split_params

    base, fair = split_params(parse_method(cfg.method.name), cfg.method.params)
    return MappingProxyType(base), MappingProxyType(fair)


def resume_config(out: str | Path, options: Mapping[str, Any], params: Mapping[str, Any] | None = None) -> RunConfig:
    """The saved config of the run in ``out``; explicitly given options must agree with it, except
    :data:`RESUMABLE_CHANGES` (e.g. more ``epochs``, another ``device``). Values are compared as
    values (``--eps 1/5`` equals a saved 0.2)."""
    saved = saved_config(out)
    given = C.build_config(options, params=params or {}, base=saved)
    conflicts = [f"{k}={_show(v)} (the run has {_show(saved.option_values()[k])})" for k, v in given.option_values().items()
                 if k in options and k not in RESUMABLE_CHANGES and k != "out" and v != saved.option_values()[k]]
    saved_params = {**saved.method.params, **saved.method.fair}
    conflicts += [f"{k}={v!r} (the run has {saved_params.get(k)!r})" for k, v in (params or {}).items()
                  if v is not None and saved_params.get(k) != v]
    if conflicts:
        raise RunDirError(f"--resume continues the saved run, but {', '.join(conflicts)}; drop those flags or start a new --out")
    changes = {k: options[k] for k in options if k in RESUMABLE_CHANGES}
    cfg = C.build_config(changes, base=saved)
    check_components(cfg)
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out=str(out)))


def _show(value: Any) -> str:
    from .units import format_fraction

    return format_fraction(value) if isinstance(value, float) else repr(value)
