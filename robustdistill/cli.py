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
    if debug:
        _state["debug"] = True


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
ModelDirOpt = Annotated[Optional[Path], typer.Option("--model-dir", envvar="ROBUSTDISTILL_MODEL_DIR", help="RobustBench cache root (MODEL_DIR/DATASET/THREAT/NAME.pt). [default: ./models]")]
MeanOpt = Annotated[Optional[str], typer.Option("--mean", help="Per-channel mean a plain checkpoint was trained with, e.g. 0.4914,0.4822,0.4465.")]
StdOpt = Annotated[Optional[str], typer.Option("--std", help="Per-channel std that goes with --mean.")]
DatasetOpt = Annotated[Optional[str], typer.Option("--dataset", "-d", help="digits, cifar10, cifar100, svhn or imagefolder. [default: the one recorded in a robustdistill model]")]
DataDirOpt = Annotated[Optional[Path], typer.Option("--data-dir", help="Where the dataset lives (imagefolder: the folder of class folders). [default: ./data]")]
DownloadOpt = Annotated[bool, typer.Option("--download", help="Download a torchvision dataset if it is missing (needs network).")]
ImageSizeOpt = Annotated[Optional[int], typer.Option("--image-size", min=4, help="Resize imagefolder images to NxN.")]
EpsOpt = Annotated[Optional[str], typer.Option("--eps", help="L-inf budget in [0,1] pixel units, e.g. 8/255. [default: 8/255, or the budget a robustdistill model was trained at]")]
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
    n_examples: Annotated[Optional[int], typer.Option("--n-examples", "-n", min=1, help="Evaluate the first N examples of the split. [default: all]")] = None,
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
) -> None:
    """Clean, FGSM, PGD, CW∞ and AutoAttack accuracy of any model - overall and per class."""
    from . import api
    from .report import evaluation_table, per_class_table, write_evaluation

    eps_value = eps if eps is not None else api.saved_config(model).get("eps", "8/255") if not model.startswith(("robustbench:", "timm:")) else "8/255"
    result = api.evaluate(
        model, dataset=dataset, data_dir=data_dir, split=split, attacks=attacks, eps=eps_value, n_examples=n_examples,
        batch_size=batch_size, device=device, seed=seed, pgd_steps=pgd_steps,
        options=_model_options(arch, num_classes, weights, model_dir, mean, std), download=download, image_size=image_size,
    )
    report = result.to_dict()
    stdout_console.print(evaluation_table(report))
    per_class = per_class_table(report)
    if per_class is not None:
        stdout_console.print(per_class)
    if out is not None:
        json_path, md_path = write_evaluation(report, out)
        console.print(f"wrote [bold]{json_path}[/] and [bold]{md_path}[/]")


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
        "datasets": lambda: [(n, "") for n in DATASETS],
        "attacks": lambda: [(a, "") for a in ATTACKS],
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


def main() -> None:
    """Console-script entry point."""
    # Fail closed: no third-party loader may unpickle arbitrary objects while robustdistill runs.
    os.environ.setdefault("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover - interrupted outside a command body
        console.print("[bold red]error:[/] interrupted")
        sys.exit(130)
