"""Command-line interface (Typer). Thin: parse, build a config or call the API, print.

``distill`` and ``train-teacher`` take their options from the run-config schema
(:mod:`robustdistill.config`) and the method hyperparameters from the method registry, so a new
option or method appears here without editing this file. ``list`` prints the registries.

Exit codes: 0 success; 1 an error in the input, data, model or run directory (one line on stderr
saying what to do); 2 command-line usage (unknown flag, malformed value); 4 disk full (free space,
then resume); 130 interrupted (Ctrl-C) and 143 terminated (SIGTERM): the last checkpoint is
intact, resume with ``--resume``. ``--debug`` (or ROBUSTDISTILL_DEBUG=1) shows tracebacks.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, NoReturn, Optional, TypeVar

import click
import typer

from .errors import RobustDistillError
from .progress import console, error_console, is_main_process, set_quiet, stdout_console

def _untyped_flags(params: list[Any]) -> list[Any]:
    """On/off flags take no value, so ``--help`` shows no ``<bool>`` after them (typer's own flags included)."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class _UntypedFlags:
    """Mixed into typer's command and group classes: their ``--help`` lists flags without ``<bool>``."""

    def get_params(self, ctx: click.Context) -> list[Any]:
        return _untyped_flags(super().get_params(ctx))  # type: ignore[misc]


class _Command(_UntypedFlags, typer.core.TyperCommand):
    pass


class _Group(_UntypedFlags, typer.core.TyperGroup):
    pass


app = typer.Typer(
    cls=_Group,
    name="robustdistill",
    help="Distil adversarially robust image classifiers into small students - fairly across classes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
_state = {"debug": os.environ.get("ROBUSTDISTILL_DEBUG") == "1"}
F = TypeVar("F", bound=Callable[..., Any])
def _fail(message: str, code: int = 1) -> None:
    error_console.print(f"[bold red]error:[/] {message}", soft_wrap=True, markup=True, highlight=False)
    raise typer.Exit(code)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def handle_errors(fn: F) -> F:
    """Domain errors -> one line + their exit code; signals -> one line + 128+signal; anything
    unexpected -> one line too, unless --debug."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .signals import as_interrupted, terminate_as_interrupt

        try:
            with terminate_as_interrupt():  # SIGTERM (a scheduler, docker stop) behaves like Ctrl-C
                return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit, click.exceptions.ClickException):
            raise
        except RobustDistillError as exc:
            if _state["debug"]:
                raise
            _fail(_escape(str(exc)), exc.exit_code)
        except KeyboardInterrupt as exc:
            stop = as_interrupted(exc)
            _fail(_escape(stop.message()), stop.exit_code)
        except Exception as exc:  # noqa: BLE001
            if _state["debug"]:
                raise
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            _fail(_escape(f"unexpected {type(exc).__name__}: {first} (re-run with --debug for the traceback)"))
        finally:
            set_quiet(False)  # --quiet / --json last one command (the CLI can run in-process)

    return wrapper  # type: ignore[return-value]


def _version_callback(value: bool) -> None:
    if value:
        from . import __version__

        stdout_console.print(f"robustdistill {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                          help="Print the version.")] = False,
) -> None:
    """Distil adversarially robust image classifiers into small students - fairly across classes."""
    _state["debug"] = debug or os.environ.get("ROBUSTDISTILL_DEBUG") == "1"


# --------------------------------------------------------------------------- shared options
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON summary on stdout, nothing else.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress and no messages; errors only.")]
ArchOpt = Annotated[Optional[str], typer.Option("--arch", help="Architecture of a plain .pt/.pth checkpoint (see `robustdistill list students`).")]
NumClassesOpt = Annotated[Optional[int], typer.Option("--num-classes", min=2, max=100000, help="Class count for --arch / timm models. \\[default: the dataset's]")]
WeightsOpt = Annotated[Optional[Path], typer.Option("--weights", help="Local weights file for a timm:NAME model.")]
ModelDirOpt = Annotated[Optional[Path], typer.Option("--model-dir", envvar="ROBUSTDISTILL_MODEL_DIR", help="RobustBench cache root (MODEL_DIR/DATASET/THREAT/NAME.pt). \\[default: ./models]")]
MeanOpt = Annotated[Optional[str], typer.Option("--mean", help="Per-channel mean a plain checkpoint was trained with, e.g. 0.4914,0.4822,0.4465.")]
StdOpt = Annotated[Optional[str], typer.Option("--std", help="Per-channel std that goes with --mean.")]
DatasetOpt = Annotated[Optional[str], typer.Option("--dataset", "-d", help="Dataset (see `robustdistill list datasets`). \\[default: the one recorded in a robustdistill model]")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="Where the dataset lives (imagefolder: the folder of class folders). \\[default: ./data]")]
EpsOpt = Annotated[Optional[str], typer.Option("--eps", help="L-inf budget in [0,1] pixel units, e.g. 8/255. \\[default: the budget the model was trained at; required when it records none]")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Largest evaluation batch; the examples are cut into equal batches of at most this size (recorded: results depend on it).")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", min=1, help="Local CPU processes that share the batches, one intra-op thread each (per-sample results are the same). Under torchrun every rank takes its share instead. \\[default: one per core for models up to 12 M parameters on a CPU, else 1]")]


def _floats(text: Optional[str], name: str) -> Optional[tuple[float, ...]]:
    if text is None:
        return None
    from .errors import UsageError

    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{name} must be comma-separated numbers, e.g. 0.4914,0.4822,0.4465") from None


def _model_options(arch, num_classes, weights, model_dir, mean, std):  # noqa: ANN001, ANN202
    from .models import ModelOptions

    return ModelOptions(arch, num_classes, str(weights) if weights else None, str(model_dir) if model_dir else None,
                        _floats(mean, "--mean"), _floats(std, "--std"))


def _emit_json(payload: Any) -> None:
    """The one thing ``--json`` prints: JSON on stdout (no rich wrapping or colour)."""
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    sys.stdout.flush()


def _output_mode(as_json: bool, quiet: bool) -> None:
    """``--json`` and ``--quiet`` silence progress and messages (stderr); errors are still printed.
    Set on every command, so one in-process command's ``--json`` does not silence the next."""
    set_quiet(as_json or quiet)


# --------------------------------------------------------------------------- evaluate
@app.command(cls=_Command)
@handle_errors
def evaluate(
    model: Annotated[str, typer.Argument(help="bundled:NAME, robustbench:NAME\\[@DATASET/THREAT], timm:NAME, a .safetensors, a .pt/.pth with --arch, or an exported .onnx / TorchScript file (clean and square only).")],
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    split: Annotated[Optional[str], typer.Option("--split", help="test (default), val, train, or all (an image folder without splits).")] = None,
    attacks: Annotated[str, typer.Option("--attacks", "-a", help="Comma-separated attack names, or all (see `robustdistill list attacks`).")] = "clean,pgd",
    eps: EpsOpt = None,
    n_examples: Annotated[Optional[int], typer.Option("--n-examples", "-n", min=1, help="Evaluate the first N examples of the split. \\[default: all]")] = None,
    batch_size: BatchOpt = 256,
    pgd_steps: Annotated[Optional[int], typer.Option("--pgd-steps", min=1, help="PGD iterations. \\[default: 20]")] = None,
    aa_version: Annotated[Literal["standard", "fast"], typer.Option("--aa-version", help="AutoAttack: standard (the reference) or fast (APGD-CE + APGD-T; labelled 'not the reference AutoAttack').")] = "standard",
    attack_param: Annotated[Optional[list[str]], typer.Option("--attack-param", help="Attack parameter as ATTACK_PARAM=VALUE, e.g. aa_version=fast, cw_steps=50 (repeatable).")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, max=2**63 - 1, help="Seed of the random starts and of AutoAttack.")] = 0,
    device: DeviceOpt = "auto",
    arch: ArchOpt = None,
    num_classes: NumClassesOpt = None,
    weights: WeightsOpt = None,
    model_dir: ModelDirOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    image_size: Annotated[Optional[int], typer.Option("--image-size", min=4, help="Resize imagefolder images to NxN.")] = None,
    download: Annotated[bool, typer.Option("--download", help="Download a torchvision dataset if it is missing (needs network).")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write report.json and report.md into this directory.")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Attack again even if an identical evaluation of this model file is stored.")] = False,
    profile: Annotated[bool, typer.Option("--profile/--no-profile", help="Add the model's cost: parameters, MACs, file size, CPU latency at batch 1 and 64.")] = True,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Clean, FGSM, PGD, CW∞ and AutoAttack accuracy of any model - overall and per class."""
    from . import api
    from .render import write_evaluation

    _output_mode(as_json, quiet)
    target = _output_dir(out, "evaluate")  # checked before the attack: never write over another command's files
    result = api.evaluate(
        model, dataset=dataset, data_dir=data_dir, split=split, attacks=attacks, eps=eps, n_examples=n_examples,
        batch_size=batch_size, device=device, seed=seed, pgd_steps=pgd_steps,
        attack_params={"aa_version": aa_version, **_key_values(attack_param)},
        options=_model_options(arch, num_classes, weights, model_dir, mean, std), download=download,
        image_size=image_size, reuse=not fresh, profile=profile, workers=workers,
    )
    if not is_main_process():  # under torchrun every rank attacked its share; rank 0 writes and prints
        return
    paths = list(_write_outputs(target, lambda path_for: write_evaluation(result, path_for)))
    if as_json:
        _emit_json({"evaluation": result.to_dict() | {"per_sample": None}, "files": [str(p) for p in paths]})
        return
    _print_evaluation(result, paths)


def _output_dir(out: Optional[Path], command: str) -> Any:
    """The ``--out`` directory of a command that only adds outputs, checked (not yet created or locked)."""
    if out is None:
        return None
    from .rundir import RunDir

    target = RunDir(out, command=command)
    target.check_outputs()
    return target


def _write_outputs(target: Any, write: Callable[[Callable[[str], Path]], Any]) -> Any:
    """Lock ``target``, write through its manifest-recording ``file``, release (no-op without ``--out``)."""
    if target is None:
        return []
    target.claim_outputs()
    try:
        return write(target.file)
    finally:
        target.release()


def _print_evaluation(result: Any, paths: list[Path]) -> None:
    from .render import evaluation_table, per_class_table

    stdout_console.print(evaluation_table(result))
    table = per_class_table(result)
    if table is not None:
        stdout_console.print(table)
    if result.cost is not None:
        console.print(f"cost: {result.cost.summary()}", markup=False)
    if paths:
        console.print("wrote " + " and ".join(f"[bold]{_escape(str(p))}[/]" for p in paths))


def _key_values(items: Optional[list[str]]) -> dict[str, Any]:
    """``["aa_version=fast", "cw_steps=50"]`` -> ``{"aa_version": "fast", "cw_steps": 50}`` (YAML scalars)."""
    import yaml

    from .errors import UsageError

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"expected KEY=VALUE, got {item!r} (e.g. -p tau=4.0)")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        if not isinstance(value, (int, float, str, bool)) or value is None:
            raise UsageError(f"{key.strip()}={text!r}: give a single number, word or true/false")
        out[key.strip().replace("-", "_")] = value
    return out


# --------------------------------------------------------------------------- list
def _list_sections() -> dict[str, Callable[[], list[tuple[str, str]]]]:
    """Every registry, as (name, one-line description) rows."""
    from .data import list_datasets
    from .evaluation import ATTACKS
    from .methods import list_methods
    from .models import list_archs, list_teachers
    from .train import list_optimizers, list_schedules

    return {
        "students": list_archs,
        "teachers": list_teachers,
        "datasets": lambda: [(d.name, d.description) for d in list_datasets()],
        "attacks": lambda: [(a.name, a.description) for a in ATTACKS],
        "methods": lambda: [(m.name, m.summary) for m in list_methods()],
        "schedules": list_schedules,
        "optimizers": list_optimizers,
    }


@app.command("list", cls=_Command)
@handle_errors
def list_cmd(
    what: Annotated[Optional[str], typer.Argument(help="students, teachers, datasets, attacks, methods, schedules, optimizers or robustbench.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print the registries: architectures, model sources, datasets, attacks, methods, schedules, optimizers."""
    from rich.table import Table

    from .errors import UsageError

    if what == "robustbench":
        from .models.robustbench_zoo import list_robustbench

        names = list_robustbench()
        _emit_json({"robustbench": names}) if as_json else [stdout_console.print(n, markup=False) for n in names]
        return
    sections = _list_sections()
    if what is not None and what not in sections:
        raise UsageError(f"unknown registry {what!r}; use one of {', '.join(sections)} or robustbench")
    chosen = {name: rows() for name, rows in sections.items() if what in (None, name)}
    if as_json:
        _emit_json({name: [{"name": n, "description": d} for n, d in rows] for name, rows in chosen.items()})
        return
    for name, rows in chosen.items():
        table = Table(title=name, show_header=False, title_justify="left")
        table.add_column("name", style="bold")
        table.add_column("description")
        for row in rows:
            table.add_row(*[_escape(str(c)) for c in row])
        stdout_console.print(table)


# --------------------------------------------------------------------------- distill / train-teacher
def _python_type(kind: Any) -> Any:
    args = [a for a in getattr(kind, "__args__", ()) if a is not type(None)]
    return args[0] if len(args) == 1 else kind


def _option_parameter(command: str, f: dataclasses.Field, opt: Any, default: Any, kind: Any) -> inspect.Parameter:
    """One generated CLI option for a run-config field (a ``Literal`` becomes a choice)."""
    import typing

    plain = _python_type(kind)
    choice = typing.get_origin(plain) is typing.Literal
    annotation: Any = plain if choice or (opt.parse is None and plain in (int, float, bool)) else str
    extra: dict[str, Any] = {}
    if opt.name == "model_dir":
        extra["envvar"] = "ROBUSTDISTILL_MODEL_DIR"
    shown = f"{opt.default_text}" if opt.default_text else True
    info = typer.Option(*opt.flags_for(command), help=opt.help, show_default=shown, **extra)
    return inspect.Parameter(opt.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=Annotated[Optional[annotation] if default is None else annotation, info])


def _hyperparameter_flags(command: str) -> dict[str, tuple[Any, list[str], tuple[str, ...], str]]:
    """``{param: (type, methods using it, alias flags, help)}`` over the methods ``command`` can run."""
    from .methods import FairParams, list_methods
    from .params import field_types

    found: dict[str, tuple[Any, list[str], tuple[str, ...], str]] = {}
    for choice in list_methods():
        if choice.fair or (command == "train-teacher") == choice.base.needs_teacher:
            continue
        _collect(found, choice.base.params, choice.name, field_types(choice.base.params))
    if command == "distill":
        _collect(found, FairParams, "fair-*", field_types(FairParams))
    return found


def _collect(found: dict, params: type, owner: str, types: dict[str, Any]) -> None:
    for f in dataclasses.fields(params):
        kind, owners, aliases, text = found.get(f.name, (types[f.name], [], (), ""))
        owners.append(owner)
        aliases = tuple(dict.fromkeys([*aliases, *f.metadata.get("aliases", ())]))
        found[f.name] = (kind, owners, aliases, text or f.metadata.get("help", ""))


def _hyperparameter_parameters(command: str, taken: set[str]) -> list[inspect.Parameter]:
    out = []
    for name, (kind, owners, aliases, text) in sorted(_hyperparameter_flags(command).items()):
        if name in taken:
            raise RuntimeError(f"method hyperparameter {name!r} clashes with a run option of the same name")
        plain = _python_type(kind)
        flags = [f"--{n.replace('_', '-')}" for n in (name, *aliases)]
        if plain is bool:
            flags = [f"{flag}/--no-{flag[2:]}" for flag in flags[:1]]
        own = text + "; " if text and len(owners) == 1 else ""  # a help line belongs to one method's meaning
        described = own + f"hyperparameter of {', '.join(owners)}. \\[default: the method's]"
        annotation = plain if plain in (int, float, bool) else str
        info = typer.Option(*flags, help=described, rich_help_panel="Method hyperparameters", show_default=False)
        out.append(inspect.Parameter(f"hp_{name}", inspect.Parameter.KEYWORD_ONLY, default=None,
                                     annotation=Annotated[Optional[annotation], info]))
    return out


def _fixed_parameters() -> list[inspect.Parameter]:
    kw = inspect.Parameter.KEYWORD_ONLY
    spec = [
        ("config", Optional[Path], None, typer.Option("--config", "-c", help="YAML or TOML run config; flags on the command line override it (a run's config.yaml works too).")),
        ("param", Optional[list[str]], None, typer.Option("--param", "-p", help="Method hyperparameter KEY=VALUE, e.g. -p tau=4 (repeatable).", rich_help_panel="Method hyperparameters")),
        ("resume", bool, False, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")),
        ("overwrite", bool, False, typer.Option("--overwrite", help="Replace the run in --out (only files robustdistill wrote are removed, after every input is checked).")),
        ("as_json", bool, False, typer.Option("--json", help="Print a machine-readable JSON summary on stdout, nothing else.")),
        ("quiet", bool, False, typer.Option("--quiet", "-q", help="No progress and no messages; errors only.")),
    ]
    return [inspect.Parameter(n, kw, default=d, annotation=Annotated[t, info]) for n, t, d, info in spec]


def _run_command(command: str, doc: str) -> Callable[..., None]:
    """A Typer command whose options are generated from the run-config schema and the method registry."""
    from .config import build_config, iter_options
    from .params import field_types
    from .resolve import COMMAND_DEFAULTS

    defaults = build_config(COMMAND_DEFAULTS[command]).option_values()
    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    from .config import SECTIONS

    for section, f, opt in iter_options(command):
        kind = field_types(SECTIONS[section])[f.name]
        params.append(_option_parameter(command, f, opt, defaults[opt.name], kind))
    params += _hyperparameter_parameters(command, {p.name for p in params})
    params += _fixed_parameters()

    def body(ctx: typer.Context, **values: Any) -> None:
        _run_from_cli(ctx, command, values)

    body.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    body.__annotations__ = {p.name: p.annotation for p in params}
    body.__doc__ = doc
    body.__name__ = command.replace("-", "_")
    return body


def _explicit(ctx: typer.Context, name: str) -> bool:
    """Given on the command line (or by its environment variable)? By name: typer vendors click,
    so click.core.ParameterSource members may not compare equal."""
    return getattr(ctx.get_parameter_source(name), "name", None) in ("COMMANDLINE", "ENVIRONMENT")


def _gather(ctx: typer.Context, command: str, values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(options, hyperparameters)``: the --config file's values, overridden by explicit flags."""
    from .config import iter_options, options_from_file, read_config_file

    options, params = ({}, {})
    if values.get("config") is not None:
        options, params = options_from_file(read_config_file(values["config"]), str(values["config"]))
    for _, _, opt in iter_options(command):
        if _explicit(ctx, opt.name):
            value = values[opt.name]
            options[opt.name] = str(value) if isinstance(value, Path) else value
    params.update({k[3:]: v for k, v in values.items() if k.startswith("hp_") and v is not None and _explicit(ctx, k)})
    params.update(_key_values(values.get("param")))
    return options, params


def _run_from_cli(ctx: typer.Context, command: str, values: dict[str, Any]) -> None:
    from .pipeline import run_training
    from .errors import UsageError
    from .resolve import new_config, resume_config

    _output_mode(values["as_json"], values["quiet"])
    options, params = _gather(ctx, command, values)
    if values["resume"] and values["overwrite"]:
        raise UsageError("--resume continues a run and --overwrite replaces it; pass only one of them")
    if values["resume"]:
        if not options.get("out"):
            raise UsageError("--resume needs --out DIR (the run to continue)")
        cfg = resume_config(options["out"], options, params)
    else:
        cfg = new_config(command, options, params)
    result = run_training(cfg, command=command, resume=values["resume"], overwrite=values["overwrite"])
    if not is_main_process():  # under torchrun rank 0 prints (and wrote the files)
        return
    if values["as_json"]:
        _emit_json(result.summary())
    elif result.student is not None:
        _print_run(result)


def _print_run(result: Any) -> None:
    """The student's (and teacher's) table, the fairness verdicts, and where the files are."""
    from .render import evaluation_table, verdicts

    role = "student" if result.teacher is not None else "teacher"
    stdout_console.print(evaluation_table(result.student, role=role))
    if result.teacher is not None:
        stdout_console.print(evaluation_table(result.teacher, role="teacher"))
    if result.natural_teacher is not None:  # MTARD's second teacher
        stdout_console.print(evaluation_table(result.natural_teacher, role="natural teacher"))
    if result.comparison is not None:
        from .render.markdown import cost_lines

        for line in [*verdicts(result.comparison), *cost_lines(result.comparison)]:
            console.print(line, markup=False)
    names = sorted(p.name for p in result.out_dir.iterdir() if not p.name.startswith("."))
    console.print(f"wrote {_escape(str(result.out_dir))}/: " + ", ".join(names), markup=False)


app.command("distill", cls=_Command)(handle_errors(_run_command(
    "distill", "Distil a robust teacher into a small student. With no arguments: the bundled digits job (a few "
    "minutes on a laptop CPU).")))
app.command("train-teacher", cls=_Command)(handle_errors(_run_command(
    "train-teacher", "Adversarially train a robust teacher (PGD-AT or TRADES) for data that has none; writes "
    "teacher.safetensors.")))


# --------------------------------------------------------------------------- fairness-report
@app.command("fairness-report", cls=_Command)
@handle_errors
def fairness_report_cmd(
    models: Annotated[list[str], typer.Argument(help="The reference first (usually the teacher), then the students: report.json files from evaluate/distill (RUN/report.json#teacher selects a distill run's teacher), run directories, or anything `evaluate` accepts.", show_default=False)],
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    attacks: Annotated[Optional[str], typer.Option("--attacks", "-a", help="Comma-separated attack names, or all. \\[default: clean,pgd, or the attacks of the first report.json]")] = None,
    eps: Annotated[Optional[str], typer.Option("--eps", help="L-inf budget in [0,1] pixel units, e.g. 8/255. \\[default: the first report.json's, else the first model's training budget]")] = None,
    n_examples: Annotated[Optional[int], typer.Option("--n-examples", "-n", min=1, help="Compare on the first N examples of the split. \\[default: the first report.json's, else all]")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for fairness.json, fairness.md and the PNG plots.")] = Path("fairness-report"),
    labels: Annotated[Optional[str], typer.Option("--labels", help="Comma-separated display names, one per model. \\[default: file stems / model ids]")] = None,
    batch_size: BatchOpt = 256,
    seed: Annotated[Optional[int], typer.Option("--seed", min=0, max=2**63 - 1, help="Seed of the random starts and of AutoAttack. \\[default: the first report.json's, else 0]")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Attack again even if identical evaluations of the model files are stored.")] = False,
    workers: WorkersOpt = None,
    device: DeviceOpt = "auto",
    arch: ArchOpt = None,
    num_classes: NumClassesOpt = None,
    weights: WeightsOpt = None,
    model_dir: ModelDirOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Does each student inherit the reference's robustness evenly across classes? Tables, verdicts and plots."""
    from .render import summary_table, verdicts, write_fairness
    from .reports import fairness_report

    _output_mode(as_json, quiet)
    target = _output_dir(out, "fairness-report")
    comparison = fairness_report(
        models, labels=[s.strip() for s in labels.split(",")] if labels else None, dataset=dataset, data_dir=data_dir,
        attacks=attacks, eps=eps, n_examples=n_examples, batch_size=batch_size, device=device, seed=seed,
        options=_model_options(arch, num_classes, weights, model_dir, mean, std), reuse=not fresh, workers=workers,
    )
    if not is_main_process():  # under torchrun every rank attacked its share; rank 0 writes and prints
        return
    paths = _write_outputs(target, lambda path_for: write_fairness(comparison, path_for))
    if as_json:
        from .render import comparison_json

        _emit_json({"comparison": comparison_json(comparison), "files": [str(p) for p in paths]})
        return
    stdout_console.print(summary_table(comparison))
    for line in verdicts(comparison):
        stdout_console.print(line, markup=False)
    console.print(f"wrote {len(paths)} files to [bold]{_escape(str(out))}[/]: " + ", ".join(p.name for p in paths),
                  soft_wrap=True)


@app.command(cls=_Command)
@handle_errors
def export(
    model: Annotated[str, typer.Argument(help="bundled:NAME, robustbench:NAME\\[@DATASET/THREAT], timm:NAME, a .safetensors, or a .pt/.pth with --arch.")],
    format: Annotated[Literal["onnx", "torchscript"], typer.Option("--format", "-f", help="onnx (runs with onnxruntime; pip install \"robustdistill\\[export]\") or torchscript.")] = "onnx",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="File to write (*.onnx for ONNX); export.json is written beside it. \\[default: ./NAME.onnx or ./NAME.pt]")] = None,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch", help="A dynamic batch dimension instead of a fixed one (--batch).")] = False,
    batch: Annotated[int, typer.Option("--batch", min=1, help="The fixed batch dimension of the exported graph (without --dynamic-batch).")] = 1,
    opset: Annotated[Optional[int], typer.Option("--opset", min=7, help="ONNX opset; the dynamo exporter supports 18 and newer. \\[default: the exporter's, recorded in export.json]")] = None,
    exporter: Annotated[Literal["dynamo", "legacy"], typer.Option("--exporter", help="ONNX exporter: dynamo (torch's default) or legacy (TorchScript-based, deprecated by torch; older opsets).")] = "dynamo",
    n_examples: Annotated[int, typer.Option("--n-examples", "-n", min=1, help="Run the parity check on the first N examples of the test split.")] = 500,
    attacks: Annotated[str, typer.Option("--attacks", "-a", help="Attacks (fgsm, pgd, cw) whose examples, made on the PyTorch model, both models must classify alike.")] = "pgd",
    eps: EpsOpt = None,
    pgd_steps: Annotated[int, typer.Option("--pgd-steps", min=1, help="PGD iterations of the parity check (step eps/4).")] = 20,
    seed: Annotated[int, typer.Option("--seed", min=0, max=2**63 - 1, help="Seed of the parity attacks' random starts.")] = 0,
    min_agreement: Annotated[float, typer.Option("--min-agreement", min=0.0, max=1.0, help="Refuse the export (exit 1, no file written) if PyTorch and the exported file agree on fewer clean or adversarial examples.")] = 0.999,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Batch size of the parity check's attacks.")] = 256,
    profile: Annotated[bool, typer.Option("--profile/--no-profile", help="Time the exported file on the CPU (batch 1 and 64) for export.json.")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out file.")] = False,
    device: DeviceOpt = "auto",
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    arch: ArchOpt = None,
    num_classes: NumClassesOpt = None,
    weights: WeightsOpt = None,
    model_dir: ModelDirOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Export a model to ONNX or TorchScript, refusing a file that is not as robust as the model (parity check)."""
    from .export import default_export_path, export_model

    _output_mode(as_json, quiet)
    result = export_model(
        model, format=format, out=out or default_export_path(model, format), dynamic_batch=dynamic_batch, batch_size=batch,
        opset=opset, exporter=exporter, eps=eps, dataset=dataset, data_dir=data_dir,
        options=_model_options(arch, num_classes, weights, model_dir, mean, std), parity_n=n_examples,
        attacks=[a.strip() for a in attacks.split(",") if a.strip()], pgd_steps=pgd_steps, seed=seed,
        min_agreement=min_agreement, parity_batch_size=batch_size, device=device, profile=profile, overwrite=overwrite,
    )
    if as_json:
        _emit_json({"export": result.record, "files": [str(result.path), str(result.export_json)]})
        return
    for line in result.parity.summary():
        stdout_console.print(line, markup=False)
    if result.cost is not None:
        stdout_console.print(result.cost.summary(), markup=False)
    opset_text = f", opset {result.record['opset']}" if result.record.get("opset") else ""
    console.print(f"wrote {result.path} ({result.format}{opset_text}, {result.record['bytes']:,} bytes) and "
                  f"{result.export_json}", markup=False)


def main() -> None:
    """Console-script entry point: command-line usage errors are one line too, with exit status 2."""
    # Fail closed: no third-party loader may unpickle arbitrary objects while robustdistill runs.
    os.environ.setdefault("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")
    command = typer.main.get_command(app)
    try:
        code = command.main(prog_name="robustdistill", standalone_mode=False)
    except typer.TyperException as exc:  # click's usage errors (typer vendors click)
        _exit(_usage_error(exc))
    except (typer.Abort, KeyboardInterrupt):
        console.print("[bold red]error:[/] interrupted")
        _exit(130)
    _exit(code if isinstance(code, int) else 0)


def _exit(code: int) -> NoReturn:
    """Exit with ``code``, skipping the interpreter's last garbage collection.

    Every file is written and closed by now. Python's shutdown would still walk the millions of
    objects torch, its compiler stack and matplotlib leave behind - 0.9-1.4 s of the default job on
    this CPU; frozen, they are left to the OS (0.2 s). Only objects in reference cycles lose their
    finalizers, and nothing robustdistill writes relies on one.
    """
    gc.freeze()
    sys.exit(code)


def _usage_error(exc: Exception) -> int:
    """Print a command-line usage error as one line (help for a bare command); return its exit status."""
    ctx = getattr(exc, "ctx", None)
    code = int(getattr(exc, "exit_code", 2))
    if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
        stdout_console.print(ctx.get_help())
        return code
    where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    error_console.print(f"[bold red]error:[/] {_escape(' '.join(message.split()))}{where}", highlight=False)
    return code
