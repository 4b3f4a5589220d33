"""Command-line interface (Typer). Thin: parse, call the library, print.

Every domain error is one line on stderr and exit status 1; usage errors exit 2. ``--debug``
(or ROBUSTDISTILL_DEBUG=1) shows tracebacks.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, TypeVar

import typer

from .errors import RobustDistillError
from .progress import console, stdout_console

app = typer.Typer(
    name="robustdistill",
    help="Distil adversarially robust image classifiers into small students - fairly across classes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
# The method of the no-argument job; the same value as robustdistill.distill.DEFAULT_METHOD (kept
# here so that `--help` does not import torch; tests/test_bundled.py checks the two agree).
DEFAULT_METHOD = "fair-iad"
_state = {"debug": os.environ.get("ROBUSTDISTILL_DEBUG") == "1"}
F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int = 1) -> None:
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code)


def handle_errors(fn: F) -> F:
    """Turn domain errors into one line + exit 1; anything unexpected too, unless --debug."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except RobustDistillError as exc:
            if _state["debug"]:
                raise
            _fail(str(exc))
        except KeyboardInterrupt:
            _fail("interrupted; files already written are intact (resume a run with --resume)", 130)
        except Exception as exc:  # noqa: BLE001
            if _state["debug"]:
                raise
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            _fail(f"unexpected {type(exc).__name__}: {first} (re-run with --debug for the traceback)")

    return wrapper  # type: ignore[return-value]


def _version_callback(value: bool) -> None:
    if value:
        from . import __version__

        stdout_console.print(f"robustdistill {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version.")] = False,
) -> None:
    """Distil adversarially robust image classifiers into small students - fairly across classes."""
    _state["debug"] = debug or os.environ.get("ROBUSTDISTILL_DEBUG") == "1"


def _floats(text: Optional[str], name: str) -> Optional[tuple[float, ...]]:
    if text is None:
        return None
    from .errors import UsageError

    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{name} must be comma-separated numbers, e.g. 0.4914,0.4822,0.4465") from None


# Options shared by every command that loads a model.
ArchOpt = Annotated[Optional[str], typer.Option("--arch", help="Architecture of a plain .pt/.pth checkpoint (see `robustdistill list`).")]
NumClassesOpt = Annotated[Optional[int], typer.Option("--num-classes", min=2, help="Class count for --arch / timm models (default: the dataset's).")]
WeightsOpt = Annotated[Optional[Path], typer.Option("--weights", help="Local weights file for a timm:NAME model.")]
ModelDirOpt = Annotated[Optional[Path], typer.Option("--model-dir", envvar="ROBUSTDISTILL_MODEL_DIR", help="RobustBench cache root (MODEL_DIR/DATASET/THREAT/NAME.pt). \\[default: ./models]")]
MeanOpt = Annotated[Optional[str], typer.Option("--mean", help="Per-channel mean a plain checkpoint was trained with, e.g. 0.4914,0.4822,0.4465.")]
StdOpt = Annotated[Optional[str], typer.Option("--std", help="Per-channel std that goes with --mean.")]
DatasetOpt = Annotated[Optional[str], typer.Option("--dataset", "-d", help="digits, cifar10, cifar100, svhn or imagefolder. \\[default: the one recorded in a robustdistill model]")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="Where the dataset lives (imagefolder: the folder of class folders). \\[default: ./data]")]
DownloadOpt = Annotated[bool, typer.Option("--download", help="Download a torchvision dataset if it is missing (needs network).")]
ImageSizeOpt = Annotated[Optional[int], typer.Option("--image-size", min=4, help="Resize imagefolder images to NxN.")]
EpsOpt = Annotated[Optional[str], typer.Option("--eps", help="L-inf budget in [0,1] pixel units, e.g. 8/255. \\[default: 8/255, or the budget a robustdistill model was trained at]")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Evaluation batch size.")]


def _model_options(arch, num_classes, weights, model_dir, mean, std):  # noqa: ANN001, ANN202
    from .api import ModelOptions

    return ModelOptions(arch, num_classes, str(weights) if weights else None, str(model_dir) if model_dir else None,
                        _floats(mean, "--mean"), _floats(std, "--std"))


@app.command()
@handle_errors
def evaluate(
    model: Annotated[str, typer.Argument(help="bundled:NAME, robustbench:NAME[@DATASET/THREAT], timm:NAME, a .safetensors, or a .pt/.pth with --arch.")],
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    split: Annotated[Optional[str], typer.Option("--split", help="test (default), val, train, or all (an image folder without splits).")] = None,
    attacks: Annotated[str, typer.Option("--attacks", "-a", help="Comma-separated: clean, fgsm, pgd, cw, aa (or all).")] = "clean,pgd",
    eps: EpsOpt = None,
    n_examples: Annotated[Optional[int], typer.Option("--n-examples", "-n", min=1, help="Evaluate the first N examples of the split. \\[default: all]")] = None,
    batch_size: BatchOpt = 256,
    pgd_steps: Annotated[int, typer.Option("--pgd-steps", min=1, help="PGD iterations.")] = 20,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random starts and of AutoAttack.")] = 0,
    device: DeviceOpt = "auto",
    arch: ArchOpt = None,
    num_classes: NumClassesOpt = None,
    weights: WeightsOpt = None,
    model_dir: ModelDirOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    image_size: ImageSizeOpt = None,
    download: DownloadOpt = False,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write report.json and report.md here.")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Attack again even if an identical evaluation of this model file is stored.")] = False,
) -> None:
    """Clean, FGSM, PGD, CW∞ and AutoAttack accuracy of any model - overall and per class."""
    from . import api
    from .report import evaluation_table, per_class_table, write_evaluation

    eps_value = eps if eps is not None else api.saved_config(model).get("eps", "8/255") if not model.startswith(("robustbench:", "timm:")) else "8/255"
    result = api.evaluate(
        model, dataset=dataset, data_dir=data_dir, split=split, attacks=attacks, eps=eps_value, n_examples=n_examples,
        batch_size=batch_size, device=device, seed=seed, pgd_steps=pgd_steps,
        options=_model_options(arch, num_classes, weights, model_dir, mean, std), download=download, image_size=image_size,
        reuse=not fresh,
    )
    report = result.to_dict()
    stdout_console.print(evaluation_table(report))
    per_class = per_class_table(report)
    if per_class is not None:
        stdout_console.print(per_class)
    if out is not None:
        json_path, md_path = write_evaluation(report, out)
        console.print(f"wrote [bold]{json_path}[/] and [bold]{md_path}[/]")


DATASET_NOTES = {
    "digits": "scikit-learn's bundled 8x8 digits, 10 classes, offline (1,293 train / 144 val / 360 test)",
    "cifar10": "torchvision CIFAR-10 from --data-dir (--download to fetch)",
    "cifar100": "torchvision CIFAR-100 from --data-dir (--download to fetch)",
    "svhn": "torchvision SVHN from --data-dir (--download to fetch)",
    "imagefolder": "--data-dir with train/ and test/ class folders, or just class folders",
}
ATTACK_NOTES = {
    "clean": "no attack",
    "fgsm": "one signed CE step of size eps from x + 0.001 N(0, I)",
    "pgd": "PGD-20 (--pgd-steps), step eps/4, CE, uniform start",
    "cw": "CW-inf: PGD-20, step eps/4, margin loss with confidence 50",
    "aa": "AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square) via pyautoattack",
}


@app.command("list")
@handle_errors
def list_cmd(
    what: Annotated[Optional[str], typer.Argument(help="students, teachers, datasets, attacks, methods or robustbench.")] = None,
) -> None:
    """Print the registries: architectures, bundled teachers, datasets, attacks, methods."""
    from rich.table import Table

    from .data import DATASETS
    from .errors import UsageError
    from .evaluation import ATTACKS
    from .models import list_archs, list_bundled

    sections = {
        "students": lambda: [(n, d) for n, d in list_archs()],
        "teachers": lambda: [(f"bundled:{n}", "shipped with the package") for n in list_bundled()]
        + [("robustbench:NAME[@DATASET/THREAT]", "RobustBench zoo model from the local cache (--model-dir)"),
           ("timm:NAME", "timm model (+ --weights FILE)"),
           ("FILE.safetensors", "a model written by robustdistill"),
           ("FILE.pt --arch ARCH", "plain weights (raw or nested state dict)")],
        "datasets": lambda: [(n, DATASET_NOTES[n]) for n in DATASETS],
        "attacks": lambda: [(a, ATTACK_NOTES[a]) for a in ATTACKS],
    }
    try:
        from .methods import list_methods

        sections["methods"] = lambda: list_methods()
    except ImportError:
        pass
    if what == "robustbench":
        from .models.robustbench_source import list_robustbench

        for name in list_robustbench():
            stdout_console.print(name)
        return
    if what is not None and what not in sections:
        raise UsageError(f"unknown registry {what!r}; use one of {', '.join(sections)} or robustbench")
    for name, rows in sections.items():
        if what not in (None, name):
            continue
        table = Table(title=name, show_header=False, title_justify="left")
        table.add_column("name", style="bold")
        table.add_column("description")
        for row in rows():
            table.add_row(*row)
        stdout_console.print(table)


def _load_config_option(ctx: typer.Context, param: Any, value: Optional[Path]) -> Optional[Path]:
    """Eager --config: the file's values become defaults, so flags given on the command line win."""
    if value is None:
        return value
    from .distill import load_config_file

    try:
        data = load_config_file(value)
    except RobustDistillError as exc:
        _fail(str(exc))
    valid = {p.name for p in ctx.command.params}
    data = _config_to_options(data, ctx.command.name or "", valid)
    unknown = sorted(k for k in data if k not in valid)
    if unknown:
        _fail(f"unknown key(s) in {value}: {', '.join(unknown)}; use the option names of `robustdistill distill --help`")
    ctx.default_map = {**(ctx.default_map or {}), **data}
    return value


# Options shared by `distill` and `train-teacher`.
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", is_eager=True, callback=_load_config_option, help="YAML or TOML file of option values; flags on the command line override it (a run's config.yaml works too).")]
ValSizeOpt = Annotated[Optional[int], typer.Option("--val-size", min=1, help="Validation examples carved from the training split. \\[default: 10%, at most 1000]")]
AttackStepOpt = Annotated[Optional[str], typer.Option("--attack-step", help="Training attack step size. \\[default: eps/4]")]
AttackStepsOpt = Annotated[int, typer.Option("--attack-steps", min=1, help="Training attack iterations.")]
EpochsOpt = Annotated[Optional[int], typer.Option("--epochs", "-e", min=1, help="Epochs. \\[default: the paper's (200; RSLAD 300); digits 40, IAD family 20]")]
TrainBatchOpt = Annotated[Optional[int], typer.Option("--batch-size", "-b", min=1, help="Training batch size (per process). \\[default: 128; digits 32]")]
LrOpt = Annotated[float, typer.Option("--lr", min=0.0, help="Peak learning rate (SGD).")]
MomentumOpt = Annotated[float, typer.Option("--momentum", min=0.0, max=1.0)]
WeightDecayOpt = Annotated[Optional[float], typer.Option("--weight-decay", min=0.0, help="\\[default: the method's, 2e-4; AdaAD 5e-4]")]
NesterovOpt = Annotated[bool, typer.Option("--nesterov/--no-nesterov", help="Nesterov momentum (the released Fair-ARD code uses it).")]
ScheduleOpt = Annotated[Optional[str], typer.Option("--schedule", help="ard, ard-released, rslad, cosine or constant. \\[default: the method's]")]
AmpOpt = Annotated[str, typer.Option("--amp", help="Autocast: none, bf16 or fp16.")]
ChannelsLastOpt = Annotated[bool, typer.Option("--channels-last", help="channels_last memory format.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the initial weights, data order, augmentation and attacks.")]
SelectOpt = Annotated[str, typer.Option("--select", help="Report the last epoch, or the best epoch on validation PGD (best-val).")]
ValPgdStepsOpt = Annotated[int, typer.Option("--val-pgd-steps", min=1, help="PGD steps of the per-epoch validation.")]
EvalAttacksOpt = Annotated[str, typer.Option("--eval-attacks", help="Attacks of the final test-split evaluation.")]
NoAaOpt = Annotated[bool, typer.Option("--no-aa", help="Skip AutoAttack in the final evaluation.")]
EvalNOpt = Annotated[Optional[int], typer.Option("--eval-n-examples", min=1, help="Evaluate the first N test examples. \\[default: all]")]
EvalBatchOpt = Annotated[int, typer.Option("--eval-batch-size", min=1)]
EvalSeedOpt = Annotated[int, typer.Option("--eval-seed", help="Seed of the final evaluation's random starts and AutoAttack (fixed across training seeds).")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory. \\[default: runs/<time>-<method>-<model>-<dataset>]")]
ResumeOpt = Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace the run files already in --out.")]


def _explicit(ctx: typer.Context, name: str) -> bool:
    """Was ``name`` given on the command line or in --config? (By name: typer vendors click, so
    click.core.ParameterSource members never compare equal.)"""
    return getattr(ctx.get_parameter_source(name), "name", None) in ("COMMANDLINE", "DEFAULT_MAP")


def _training_config(ctx: typer.Context, fields_: dict[str, Any], hparams: dict[str, Any], resume: bool,
                     out: Optional[Path], renamed: dict[str, str] | None = None) -> Any:
    """The run config: resolved defaults for a new run, the saved config (checked against the
    explicitly given flags) for --resume. ``renamed`` maps config fields to option names."""
    from .distill import DistillConfig, resolve_config, resume_config
    from .errors import UsageError

    if not resume:
        return resolve_config(DistillConfig(**fields_, hparams=hparams))
    if out is None:
        raise UsageError("--resume needs --out DIR (the run to continue)")
    option = renamed or {}
    given = {k: v for k, v in fields_.items() if k in {p.name for p in ctx.command.params} | set(option) and _explicit(ctx, option.get(k, k))}
    return resume_config(out, {**given, "hparams": hparams})


def _fields(values: dict[str, Any], skip: set[str]) -> dict[str, Any]:
    from .distill import DistillConfig

    return {k: (str(v) if isinstance(v, Path) else v) for k, v in values.items()
            if k not in skip and k in DistillConfig.__dataclass_fields__}


# CLI option -> method hyperparameter (robustdistill.methods Params field).
HPARAMS = {"alpha": "alpha", "temperature": "tau", "beta": "beta", "gamma": "gamma", "iad_beta": "beta_iad",
           "iad_begin": "begin", "clip_min": "clip_min", "clip_max": "clip_max", "eps_floor": "eps_floor",
           "kappa_steps": "kappa_steps"}


def _config_to_options(data: dict[str, Any], command: str, valid: set[str]) -> dict[str, Any]:
    """Accept a run's saved config.yaml as --config: nested ``hparams`` (method parameter names)
    become CLI options; for train-teacher, ``student`` is ``--arch`` and TRADES' ``beta`` is
    ``--trades-beta``. Keys a command lacks are dropped only when they hold the default value."""
    from .distill import DistillConfig

    data = dict(data)
    nested = data.pop("hparams", None) or {}
    to_option = {"beta": "trades_beta"} if command == "train-teacher" else {v: k for k, v in HPARAMS.items()}
    data.update({to_option.get(k, k): v for k, v in nested.items()})
    if command == "train-teacher":
        if "student" in data:
            data["arch"] = data.pop("student")
        if data.get("teacher") is None:
            data.pop("teacher", None)
    defaults = DistillConfig()
    return {k: v for k, v in data.items()
            if k in valid or not (k in DistillConfig.__dataclass_fields__ and v == getattr(defaults, k))}


@app.command()
@handle_errors
def distill(
    ctx: typer.Context,
    config: ConfigOpt = None,
    teacher: Annotated[str, typer.Option("--teacher", "-t", help="bundled:digits, robustbench:NAME[@DATASET/THREAT], timm:NAME, or a checkpoint file.")] = "bundled:digits",
    student: Annotated[str, typer.Option("--student", "-s", help="Student architecture (see `robustdistill list students`).")] = "tiny_cnn",
    method: Annotated[str, typer.Option("--method", "-m", help="kd, ard, rslad, iad, kdiga, adaad, or fair-<any of them> (see `robustdistill list methods`).")] = DEFAULT_METHOD,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    download: DownloadOpt = False,
    image_size: ImageSizeOpt = None,
    val_size: ValSizeOpt = None,
    eps: Annotated[Optional[str], typer.Option("--eps", help="L-inf budget in [0,1] pixel units, e.g. 8/255. \\[default: the teacher's, else 8/255; digits 0.2]")] = None,
    attack_step: AttackStepOpt = None,
    attack_steps: AttackStepsOpt = 10,
    epochs: EpochsOpt = None,
    batch_size: TrainBatchOpt = None,
    lr: LrOpt = 0.1,
    momentum: MomentumOpt = 0.9,
    weight_decay: WeightDecayOpt = None,
    nesterov: NesterovOpt = False,
    schedule: ScheduleOpt = None,
    amp: AmpOpt = "none",
    channels_last: ChannelsLastOpt = False,
    seed: SeedOpt = 0,
    select: SelectOpt = "last",
    val_pgd_steps: ValPgdStepsOpt = 10,
    eval_attacks: EvalAttacksOpt = "clean,pgd,cw,aa",
    no_aa: NoAaOpt = False,
    eval_n_examples: EvalNOpt = None,
    eval_batch_size: EvalBatchOpt = 256,
    eval_seed: EvalSeedOpt = 0,
    out: OutOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = "auto",
    teacher_arch: Annotated[Optional[str], typer.Option("--teacher-arch", help="Architecture of a plain .pt teacher checkpoint.")] = None,
    teacher_weights: Annotated[Optional[str], typer.Option("--teacher-weights", help="Local weights for a timm:NAME teacher.")] = None,
    model_dir: ModelDirOpt = None,
    student_weights: Annotated[Optional[str], typer.Option("--student-weights", help="Initialise the student from these weights (e.g. a pre-trained timm model).")] = None,
    alpha: Annotated[Optional[float], typer.Option("--alpha", help="Weight of the (adversarial) distillation term.")] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", "--tau", help="Distillation temperature.")] = None,
    beta: Annotated[Optional[float], typer.Option("--beta", help="Fair-ARD: sharpness of the class reweighting (0 = the base method).")] = None,
    gamma: Annotated[Optional[float], typer.Option("--gamma", help="KDIGA: weight of input-gradient alignment.")] = None,
    iad_beta: Annotated[Optional[float], typer.Option("--iad-beta", help="IAD: exponent of the teacher reliability.")] = None,
    iad_begin: Annotated[Optional[float], typer.Option("--iad-begin", help="IAD: fraction of the run after which introspection starts.")] = None,
    clip_min: Annotated[Optional[float], typer.Option("--clip-min", help="Fair-ARD: lower bound of class weights (5/6).")] = None,
    clip_max: Annotated[Optional[float], typer.Option("--clip-max", help="Fair-ARD: upper bound of class weights (5/2).")] = None,
    eps_floor: Annotated[Optional[float], typer.Option("--eps-floor", help="Fair-ARD: the 1e-5 in (kappa + 1e-5)^-beta.")] = None,
    kappa_steps: Annotated[Optional[int], typer.Option("--kappa-steps", min=1, help="Fair-KD/Fair-KDIGA: PGD steps that measure class difficulty.")] = None,
) -> None:
    """Distil a robust teacher into a small student. With no arguments: the bundled digits job (about 2.5 minutes on a 2-core CPU)."""
    from .distill import run_training

    values = dict(locals())
    hparams = {key: values[opt] for opt, key in HPARAMS.items() if values[opt] is not None}
    cfg = _training_config(ctx, _fields(values, set(HPARAMS)), hparams, resume, out)
    result = run_training(cfg, resume=resume, overwrite=overwrite)
    if result.student is not None:
        from .report import evaluation_table

        stdout_console.print(evaluation_table(result.student.to_dict(), title="student (test split)"))
        if result.teacher is not None:
            stdout_console.print(evaluation_table(result.teacher.to_dict(), title="teacher (test split)"))
        if result.teacher is not None:
            from .fairness import compare, verdicts

            for line in verdicts(compare([("teacher", result.teacher), ("student", result.student)])):
                console.print(line, soft_wrap=True)
        console.print(f"wrote [bold]{result.student_path}[/], [bold]{result.report_path}[/], "
                      f"{result.out_dir / 'report.md'}, {result.out_dir / 'per_class.png'} and {result.out_dir / 'fairness.md'}")


@app.command("train-teacher")
@handle_errors
def train_teacher(
    ctx: typer.Context,
    config: ConfigOpt = None,
    arch: Annotated[str, typer.Option("--arch", help="Architecture to train (see `robustdistill list students`).")] = "small_cnn",
    method: Annotated[str, typer.Option("--method", "-m", help="at (PGD adversarial training, Madry et al.) or trades (Zhang et al.).")] = "at",
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    download: DownloadOpt = False,
    image_size: ImageSizeOpt = None,
    val_size: ValSizeOpt = None,
    eps: Annotated[Optional[str], typer.Option("--eps", help="L-inf budget, e.g. 8/255. \\[default: 8/255; digits 0.2]")] = None,
    attack_step: AttackStepOpt = None,
    attack_steps: AttackStepsOpt = 10,
    epochs: EpochsOpt = None,
    batch_size: TrainBatchOpt = None,
    lr: LrOpt = 0.1,
    momentum: MomentumOpt = 0.9,
    weight_decay: WeightDecayOpt = None,
    nesterov: NesterovOpt = False,
    schedule: ScheduleOpt = None,
    trades_beta: Annotated[Optional[float], typer.Option("--trades-beta", help="TRADES: weight of the robustness KL term (6).")] = None,
    amp: AmpOpt = "none",
    channels_last: ChannelsLastOpt = False,
    seed: SeedOpt = 0,
    select: SelectOpt = "last",
    val_pgd_steps: ValPgdStepsOpt = 10,
    eval_attacks: EvalAttacksOpt = "clean,pgd,cw,aa",
    no_aa: NoAaOpt = False,
    eval_n_examples: EvalNOpt = None,
    eval_batch_size: EvalBatchOpt = 256,
    eval_seed: EvalSeedOpt = 0,
    out: OutOpt = None,
    resume: ResumeOpt = False,
    overwrite: OverwriteOpt = False,
    device: DeviceOpt = "auto",
) -> None:
    """Adversarially train a robust teacher (PGD-AT or TRADES) for data that has none; writes teacher.safetensors."""
    from .distill import run_training
    from .errors import UsageError
    from .report import evaluation_table

    if method not in ("at", "trades"):
        raise UsageError(f"train-teacher trains without a teacher; use --method at or trades, not {method!r}")
    values = dict(locals())
    fields_ = {**_fields(values, set()), "teacher": None, "student": arch}
    hparams = {"beta": trades_beta} if trades_beta is not None else {}
    cfg = _training_config(ctx, fields_, hparams, resume, out, renamed={"student": "arch"})
    result = run_training(cfg, resume=resume, overwrite=overwrite)
    if result.student is not None:
        stdout_console.print(evaluation_table(result.student.to_dict(), title="teacher (test split)"))
        console.print(f"wrote [bold]{result.student_path}[/], [bold]{result.report_path}[/] and {result.out_dir / 'report.md'}")



@app.command("fairness-report")
@handle_errors
def fairness_report_cmd(
    models: Annotated[list[str], typer.Argument(help="The reference first (usually the teacher), then the students: report.json files from evaluate/distill (RUN/report.json#teacher selects a distill run's teacher), run directories, or anything `evaluate` accepts.", show_default=False)],
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    attacks: Annotated[Optional[str], typer.Option("--attacks", "-a", help="Comma-separated: clean, fgsm, pgd, cw, aa (or all). \\[default: clean,pgd, or the attacks of the first report.json]")] = None,
    eps: Annotated[Optional[str], typer.Option("--eps", help="L-inf budget in [0,1] pixel units, e.g. 8/255. \\[default: the first report.json's, else the first model's training budget, else 8/255]")] = None,
    n_examples: Annotated[Optional[int], typer.Option("--n-examples", "-n", min=1, help="Compare on the first N examples of the split. \\[default: the first report.json's, else all]")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for fairness.json, fairness.md and the PNG plots.")] = Path("fairness-report"),
    labels: Annotated[Optional[str], typer.Option("--labels", help="Comma-separated display names, one per model. \\[default: file stems / model ids]")] = None,
    batch_size: BatchOpt = 256,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the random starts and of AutoAttack. \\[default: the first report.json's, else 0]")] = None,
    device: DeviceOpt = "auto",
    arch: ArchOpt = None,
    num_classes: NumClassesOpt = None,
    weights: WeightsOpt = None,
    model_dir: ModelDirOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
) -> None:
    """Does each student inherit the reference's robustness evenly across classes? Tables, verdicts and plots."""
    from .fairness import fairness_report, summary_table, verdicts, write_outputs

    comparison = fairness_report(
        models, labels=[s.strip() for s in labels.split(",")] if labels else None, dataset=dataset, data_dir=data_dir,
        attacks=attacks, eps=eps, n_examples=n_examples, batch_size=batch_size, device=device, seed=seed,
        options=_model_options(arch, num_classes, weights, model_dir, mean, std),
    )
    stdout_console.print(summary_table(comparison))
    for line in verdicts(comparison):
        stdout_console.print(line, markup=False)
    paths = write_outputs(comparison, out)
    console.print(f"wrote {len(paths)} files to [bold]{out}[/]: " + ", ".join(p.name for p in paths), soft_wrap=True)


def main() -> None:
    """Console-script entry point."""
    # Fail closed: no third-party loader may unpickle arbitrary objects while robustdistill runs.
    os.environ.setdefault("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - interrupted outside a command body
        console.print("[bold red]error:[/] interrupted")
        sys.exit(130)
