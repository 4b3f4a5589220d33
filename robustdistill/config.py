"""One run config for ``distill`` and ``train-teacher``: frozen, sectioned, validated once.

Sections: ``data``, ``teacher``, ``student``, ``method``, ``train``, ``evaluation``, ``run``.
Every field that a user can set is also an *option*: a flat name (``epochs``, ``eval_attacks``,
``teacher_arch``) that is the CLI flag (``--epochs``), a key accepted at the top level of a
``--config`` file, and a keyword of :func:`robustdistill.distill`. Method hyperparameters live in
``method.params`` (and Fair-ARD's in ``method.fair``) and are set with ``-p key=value``, with
their generated flags (``--tau``), or as extra keyword arguments of the Python API.

A value is decided once, in this order: the specs' defaults (the method's epochs, schedule and
weight decay; the dataset's eps and batch size; the teacher's recorded budget and data) <- a
YAML/TOML file <- CLI flags / API keywords. The resolved config is what ``config.yaml``, the
student's metadata and report.json hold, and a saved ``config.yaml`` is a valid ``--config``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterator, Literal, Mapping

from .errors import UsageError
from .params import coerce, field_types, require

SCHEMA = "robustdistill/run@2"
BOTH = frozenset({"distill", "train-teacher"})
DISTILL = frozenset({"distill"})
MAX_SEED = 2**63 - 1


def parse_budget(value: Any, name: str = "eps") -> float:
    """Parse ``8/255``, ``0.0314`` or a number into pixel units of [0, 1] (see :func:`robustdistill.units.parse_fraction`)."""
    from .units import parse_fraction

    if isinstance(value, bool):
        raise UsageError(f"{name} must be a number such as 8/255 or 0.031, got {value!r}")
    if not isinstance(value, (int, float, str)):
        raise UsageError(f"{name} must be a number such as 8/255 or 0.031, got {value!r}")
    return parse_fraction(value, name=name)


@dataclass(frozen=True)
class Option:
    """How one config field appears outside the config: its flat name, CLI flags and help."""

    name: str
    flags: tuple[str, ...]
    help: str
    commands: frozenset[str] = BOTH
    parse: Callable[[Any], Any] | None = None
    default_text: str | None = None
    flags_by_command: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))

    def flags_for(self, command: str) -> tuple[str, ...]:
        return self.flags_by_command.get(command, self.flags)


def option(default: Any, name: str, *flags: str, help: str, commands: frozenset[str] = BOTH,
           parse: Callable[[Any], Any] | None = None, default_text: str | None = None,
           flags_by_command: Mapping[str, tuple[str, ...]] | None = None) -> Any:
    """A dataclass field that is also a user-facing option."""
    meta = Option(name, flags or (f"--{name.replace('_', '-')}",), help, commands, parse, default_text,
                  MappingProxyType(dict(flags_by_command or {})))
    return field(default=default, metadata={"option": meta})


def _eps(value: Any) -> float:
    return parse_budget(value, "eps")


def _step(value: Any) -> float:
    return parse_budget(value, "attack step")


# --------------------------------------------------------------------------- sections
@dataclass(frozen=True)
class DataSection:
    name: str | None = option(None, "dataset", "--dataset", "-d",
                              help="Dataset (see `robustdistill list datasets`).", default_text="the teacher's")
    dir: str | None = option(None, "data_dir", "--data-dir",
                             help="Where the dataset lives (imagefolder: the folder of class folders).", default_text="./data")
    download: bool = option(False, "download", help="Download a torchvision dataset if it is missing (needs network).")
    image_size: int | None = option(None, "image_size", help="Resize imagefolder images to NxN.")
    val_size: int | None = option(None, "val_size", help="Validation examples carved from the training split.",
                                  default_text="10%, at most 1000")


@dataclass(frozen=True)
class TeacherSection:
    id: str | None = option("bundled:digits", "teacher", "--teacher", "-t", commands=DISTILL,
                            help="bundled:digits, robustbench:NAME[@DATASET/THREAT], timm:NAME, or a checkpoint file.")
    arch: str | None = option(None, "teacher_arch", commands=DISTILL, help="Architecture of a plain .pt teacher checkpoint.")
    weights: str | None = option(None, "teacher_weights", commands=DISTILL, help="Local weights for a timm:NAME teacher.")
    model_dir: str | None = option(None, "model_dir", commands=DISTILL, default_text="./models",
                                   help="RobustBench cache root (MODEL_DIR/DATASET/THREAT/NAME.pt); env ROBUSTDISTILL_MODEL_DIR.")
    natural: str | None = option(None, "natural_teacher", commands=DISTILL,
                                 help="Naturally trained second teacher of mtard / fair-mtard (any model identifier, "
                                      "e.g. the teacher.safetensors of `train-teacher --method standard`).")


@dataclass(frozen=True)
class StudentSection:
    arch: str = option("tiny_cnn", "student", "--student", "-s", flags_by_command={"train-teacher": ("--arch",)},
                       help="Architecture to train (see `robustdistill list students`).")
    weights: str | None = option(None, "student_weights", "--student-weights", "--init",
                                 help="Initialise the trained model from these weights (a pre-trained timm model; "
                                      "FRL's robust hot start, e.g. a `train-teacher --method trades` run's model).")


@dataclass(frozen=True)
class MethodSection:
    name: str = option("fair-iad", "method", "--method", "-m", help="Training method (see `robustdistill list methods`).")
    eps: float | None = option(None, "eps", parse=_eps, default_text="the teacher's training budget",
                               help="L-inf budget in [0,1] pixel units, e.g. 8/255.")
    attack_step: float | None = option(None, "attack_step", parse=_step, default_text="eps/4",
                                       help="Training attack step size.")
    attack_steps: int = option(10, "attack_steps", help="Training attack iterations.")
    params: Mapping[str, Any] = field(default_factory=dict)
    fair: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainSection:
    epochs: int | None = option(None, "epochs", "--epochs", "-e", default_text="the method's for the dataset",
                                help="Training epochs.")
    batch_size: int | None = option(None, "batch_size", "--batch-size", "-b", default_text="the dataset's",
                                    help="Training batch size per process.")
    optimizer: str = option("sgd", "optimizer", help="Optimizer: sgd or adamw.")
    lr: float | None = option(None, "lr", default_text="the method's (0.1; frl 1e-3)", help="Peak learning rate.")
    momentum: float = option(0.9, "momentum", help="SGD momentum.")
    weight_decay: float | None = option(None, "weight_decay", default_text="the method's", help="Weight decay.")
    nesterov: bool = option(False, "nesterov", "--nesterov/--no-nesterov",
                            help="Nesterov momentum (the released Fair-ARD code uses it).")
    schedule: str | None = option(None, "schedule", default_text="the method's",
                                  help="Learning-rate schedule (see `robustdistill list schedules`).")
    amp: Literal["auto", "none", "bf16", "fp16"] = option(
        "auto", "amp", help="Training autocast: auto (bf16 on GPUs with bf16 and on CPUs with native bf16 for large "
        "models, else fp32), none (fp32) or bf16; fp16 is refused (it zeroes attack gradients). Evaluation is fp32.")
    channels_last: bool | None = option(None, "channels_last", "--channels-last/--no-channels-last", default_text="with bf16",
                                        help="channels_last memory format.")
    threads: int | None = option(None, "threads", default_text="1 for small models on a CPU, else torch's",
                                 help="Intra-op threads of this process.")
    compile: bool = option(False, "compile", help="torch.compile the student and the teacher (measured: slower on "
                           "CPUs for small models, see benchmarks/results/numeric_path.md).")
    sync_bn: bool = option(False, "sync_bn", help="Under torchrun on CUDA GPUs: SyncBatchNorm in the student (batch "
                           "statistics over every rank's batch). Not for KDIGA, whose double backward it cannot do.")
    seed: int = option(0, "seed", help="Seed of the initial weights, data order, augmentation and attacks.")
    select: Literal["last", "best-val", "fair"] = option(
        "last", "select", help="Report the last epoch, the best on validation PGD (best-val), or Fair-ARD's rule (fair): "
                               "the best mean of average and worst-class validation PGD accuracy.")
    val_pgd_steps: int = option(10, "val_pgd_steps", help="PGD steps of the per-epoch validation.")


@dataclass(frozen=True)
class EvaluationSection:
    attacks: str = option("clean,pgd,cw,aa", "eval_attacks", help="Attacks of the final test-split evaluation.")
    no_aa: bool = option(False, "no_aa", help="Skip AutoAttack in the final evaluation.")
    aa_version: Literal["standard", "fast"] = option(
        "standard", "aa_version", help="AutoAttack: standard (the reference) or fast (APGD-CE + APGD-T only; labelled "
        "'not the reference AutoAttack' wherever its number appears).")
    n_examples: int | None = option(None, "eval_n_examples", default_text="all",
                                    help="Evaluate the first N test examples.")
    batch_size: int = option(256, "eval_batch_size", help="Largest evaluation batch; the examples are cut into "
                             "equal batches of at most this size (results depend on it).")
    workers: int | None = option(None, "eval_workers", default_text="one per core for models up to 12 M parameters "
                                 "on a CPU, else 1", help="Local CPU processes sharing the final evaluation's batches "
                                 "(same per-sample results; under torchrun every rank takes its share instead).")
    seed: int = option(0, "eval_seed",
                       help="Seed of the final evaluation's random starts and AutoAttack (fixed across training seeds).")


@dataclass(frozen=True)
class RunSection:
    out: str | None = option(None, "out", "--out", "-o", default_text="runs/<time>-<method>-<model>-<dataset>",
                             help="Run directory.")
    device: str = option("auto", "device", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps.")
    log: str = option("csv", "log", help="Metric logs besides metrics.jsonl: csv (metrics.csv), tensorboard "
                      "(RUN/tensorboard; pip install robustdistill[tensorboard]), csv,tensorboard, or none.")


SECTIONS: dict[str, type] = {
    "data": DataSection, "teacher": TeacherSection, "student": StudentSection, "method": MethodSection,
    "train": TrainSection, "evaluation": EvaluationSection, "run": RunSection,
}


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines a run (see the module docstring)."""

    data: DataSection = field(default_factory=DataSection)
    teacher: TeacherSection = field(default_factory=TeacherSection)
    student: StudentSection = field(default_factory=StudentSection)
    method: MethodSection = field(default_factory=MethodSection)
    train: TrainSection = field(default_factory=TrainSection)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
    run: RunSection = field(default_factory=RunSection)

    def to_dict(self) -> dict[str, Any]:
        """Sectioned, JSON/YAML-ready (``schema`` first); the format of config.yaml and of ``--config``."""
        out: dict[str, Any] = {"schema": SCHEMA}
        for name in SECTIONS:
            section = getattr(self, name)
            out[name] = {f.name: _plain(getattr(section, f.name)) for f in dataclasses.fields(section)}
        return out

    def option_values(self) -> dict[str, Any]:
        """Flat ``{option name: value}`` of every option field (for resume checks and messages)."""
        return {opt.name: getattr(getattr(self, sec), f.name) for sec, f, opt in iter_options()}

    def replace(self, **options: Any) -> "RunConfig":
        """A copy with options (flat names) replaced."""
        return build_config(options, base=self)


def _plain(value: Any) -> Any:
    return dict(value) if isinstance(value, Mapping) else value


def iter_options(command: str | None = None) -> Iterator[tuple[str, dataclasses.Field, Option]]:
    """``(section, field, option)`` of every option field, optionally only those of ``command``."""
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            opt = f.metadata.get("option")
            if opt is not None and (command is None or command in opt.commands):
                yield section, f, opt


def option_index() -> dict[str, tuple[str, str]]:
    """``{option name: (section, field)}``."""
    return {opt.name: (sec, f.name) for sec, f, opt in iter_options()}


def flag_aliases() -> dict[str, str]:
    """``{long flag name as a key: option name}``, e.g. ``arch`` (train-teacher's ``--arch``) -> ``student``,
    so a config file may use the words of the command line it replaces."""
    aliases: dict[str, str] = {}
    for _sec, _f, opt in iter_options():
        flags = [*opt.flags, *(f for fl in opt.flags_by_command.values() for f in fl)]
        for flag in flags:
            for spelling in flag.split("/"):  # "--nesterov/--no-nesterov": a boolean's two spellings
                if spelling.startswith("--") and not spelling.startswith("--no-"):
                    aliases.setdefault(spelling[2:].replace("-", "_"), opt.name)
    return aliases


# --------------------------------------------------------------------------- building
def _convert(section: str, name: str, kind: Any, opt: Option, value: Any) -> Any:
    """One option value (from a file, flag or keyword) to its field's type; one-line errors."""
    if value is None:
        return None
    if opt.parse is not None:
        return opt.parse(value)
    args = [a for a in getattr(kind, "__args__", ()) if a is not type(None)]
    plain = args[0] if len(args) == 1 else kind
    if isinstance(value, Path):
        value = str(value)
    if plain is float and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise UsageError(f"{opt.name} must be a number, got {value!r}") from None
    if plain is int and isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    return coerce("the run config", opt.name, plain, value)


def build_config(options: Mapping[str, Any], *, params: Mapping[str, Any] | None = None,
                 base: RunConfig | None = None) -> RunConfig:
    """A config from flat option values over ``base`` (default: the built-in defaults), unresolved.

    ``params`` are method hyperparameters (base and Fair-ARD ones in one mapping); they are
    routed to ``method.params`` / ``method.fair`` by :func:`resolve`.
    """
    base = base or RunConfig()
    index = option_index()
    unknown = sorted(str(k) for k in options if k not in index)
    if unknown:
        raise UsageError(f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(index))}")
    changes: dict[str, dict[str, Any]] = {}
    types = {sec: field_types(cls) for sec, cls in SECTIONS.items()}
    for name, value in options.items():
        sec, fname = index[name]
        opt = next(o for s, f, o in iter_options() if o.name == name)
        changes.setdefault(sec, {})[fname] = _convert(sec, fname, types[sec][fname], opt, value)
    if params:
        merged = {**base.method.params, **base.method.fair, **{k: v for k, v in params.items() if v is not None}}
        changes.setdefault("method", {})["params"] = MappingProxyType(merged)
        changes["method"]["fair"] = MappingProxyType({})
    return dataclasses.replace(base, **{sec: dataclasses.replace(getattr(base, sec), **vals) for sec, vals in changes.items()})


# --------------------------------------------------------------------------- validation
def _check_int(name: str, value: int | None, low: int, high: int = MAX_SEED) -> None:
    require(value is None or low <= value <= high, f"{name} must be an integer in [{low}, {high}], got {value}")


def _check_float(name: str, value: float | None, low: float, high: float = math.inf, *, open_low: bool = False) -> None:
    ok = value is None or (math.isfinite(value) and (value > low if open_low else value >= low) and value <= high)
    bound = f"({low}" if open_low else f"[{low}"
    require(ok, f"{name} must be a finite number in {bound}, {high}], got {value}")


def validate(cfg: RunConfig) -> None:
    """Range checks of every numeric option (types were checked when the config was built)."""
    t, e, m = cfg.train, cfg.evaluation, cfg.method
    _check_int("threads", t.threads, 1, 1024)
    require(t.amp != "fp16", "--amp fp16 is refused: half-precision input gradients flush to zero inside the PGD "
            "attack, which looks like robustness; use --amp bf16 (or auto)")
    for name, value in (("epochs", t.epochs), ("batch_size", t.batch_size), ("val_pgd_steps", t.val_pgd_steps),
                        ("attack_steps", m.attack_steps), ("eval_batch_size", e.batch_size),
                        ("eval_n_examples", e.n_examples), ("eval_workers", e.workers), ("image_size", cfg.data.image_size),
                        ("val_size", cfg.data.val_size)):
        _check_int(name, value, 1, 10**9)
    _check_int("seed", t.seed, 0)
    _check_int("eval_seed", e.seed, 0)
    _check_float("lr", t.lr, 0.0, 10.0, open_low=True)
    _check_float("momentum", t.momentum, 0.0, 1.0)
    _check_float("weight_decay", t.weight_decay, 0.0, 1.0)
    _check_float("eps", m.eps, 0.0, 1.0)
    _check_float("attack_step", m.attack_step, 0.0, 1.0)


def default_out(cfg: RunConfig) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    student = cfg.student.arch.replace(":", "-").replace("/", "-")
    return str(Path("runs") / f"{stamp}-{cfg.method.name}-{student}-{cfg.data.name}")


# --------------------------------------------------------------------------- config files
MAX_CONFIG_BYTES = 1 << 20
MAX_ALIASES = 64
MAX_DEPTH = 16


def _bounded_yaml_loader() -> type:
    """A SafeLoader that refuses YAML alias bombs ("billion laughs") beyond a small alias budget."""
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        def __init__(self, stream: Any) -> None:
            super().__init__(stream)
            self.aliases = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_ALIASES:
                    raise yaml.YAMLError(f"more than {MAX_ALIASES} aliases (*refs); write the values out")
            return super().compose_node(parent, index)

    return BoundedLoader


def _parse_text(path: Path, text: str) -> Any:
    if path.suffix.lower() == ".toml":
        import tomllib

        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{path} is not valid TOML ({exc}); fix the file") from None
    import yaml

    try:
        return yaml.load(text, Loader=_bounded_yaml_loader()) or {}  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"{path} is not valid YAML ({first}); fix the file") from None


def _depth(value: Any, limit: int) -> int:
    if limit < 0:
        return 0
    if isinstance(value, Mapping):
        return 1 + max((_depth(v, limit - 1) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v, limit - 1) for v in value), default=0)
    return 0


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML (safe, alias-bounded) or TOML run config: a mapping with string keys, at most 1 MB."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"config file {path} does not exist")
    if not path.is_file():
        raise UsageError(f"config file {path} is not a regular file; pass a .yaml or .toml file")
    try:
        raw = path.read_bytes()[: MAX_CONFIG_BYTES + 1]
    except OSError as exc:
        raise UsageError(f"cannot read config file {path} ({exc.strerror}); check its permissions") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise UsageError(f"config file {path} is larger than {MAX_CONFIG_BYTES // 1024} KB; a run config is a few lines")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"config file {path} is not UTF-8 text; save it as UTF-8") from None
    data = _parse_text(path, text)
    if not isinstance(data, dict):
        raise UsageError(f"{path} must hold a mapping of option names to values, not a {type(data).__name__}")
    if _depth(data, MAX_DEPTH) > 4:
        raise UsageError(f"{path} nests deeper than a run config does (sections hold options); flatten it")
    return data


def options_from_file(data: Mapping[str, Any], source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(flat options, method hyperparameters)`` from a config file's mapping.

    Accepts the sectioned form of config.yaml (``train: {epochs: 20}``; method hyperparameters
    under ``method.params`` / ``method.fair``), flat option names at the top level
    (``epochs: 20``), method hyperparameters at the top level (``tau: 4``, or an older name such
    as ``temperature``), and robustdistill 0.1's flat config.yaml (``hparams``).
    """
    from .methods import hyperparameter_names  # the method registry knows every hyperparameter name

    index, hyper, aliases = option_index(), hyperparameter_names(), flag_aliases()
    by_field = {(sec, fname): name for name, (sec, fname) in index.items()}
    options: dict[str, Any] = {}
    params: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise UsageError(f"{source}: keys must be option names, got {key!r}")
        name = key.replace("-", "_")
        if name == "schema":
            continue
        if name in SECTIONS and isinstance(value, Mapping):
            _section_options(name, value, by_field, options, params, source)
        elif name in ("hparams", "params"):
            params.update(_mapping(value, source, name))
        elif name in index:
            options[name] = value
        elif name in aliases and name not in hyper:
            options[aliases[name]] = value
        elif name in hyper:
            params[name] = value
        else:
            valid = ", ".join(sorted({*index, *SECTIONS, "params"}))
            raise UsageError(f"unknown key {key!r} in {source}; valid keys: {valid}, or a method hyperparameter "
                             "(see `robustdistill list methods`)")
    return options, params


def _section_options(section: str, values: Mapping[str, Any], by_field: Mapping[tuple[str, str], str],
                     options: dict[str, Any], params: dict[str, Any], source: str) -> None:
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if section == "method" and name in ("params", "fair"):
            params.update(_mapping(value, source, f"method.{name}"))
        elif (section, name) in by_field:
            options[by_field[(section, name)]] = value
        else:
            valid = ", ".join(f.name for f in dataclasses.fields(SECTIONS[section]))
            raise UsageError(f"unknown key {section}.{key} in {source}; valid keys of {section}: {valid}")


def _mapping(value: Any, source: str, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise UsageError(f"{what} in {source} must map hyperparameter names to values")
    return dict(value)
