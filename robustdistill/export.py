"""Ship a model: export it to ONNX or TorchScript, and prove the exported file is as robust.

:func:`export_model` writes a file that takes [0, 1] NCHW images (the normalisation is part of
the graph) and returns logits, with robustdistill's metadata inside (the :class:`ModelSpec`, the
export record, the source's ``robustdistill.*`` entries such as teacher id/sha256 and eps, and a
content digest). Before the file appears under its name, export runs a **parity check** on the
first ``parity_n`` examples of the model's dataset (test split):

* clean inputs: max |logit difference| and argmax agreement, PyTorch vs the exported runtime;
* the same adversarial examples, made on the PyTorch model (PGD by default, at the model's
  recorded eps, seeded exactly as ``evaluate`` seeds them), classified by both: agreement per
  attack and per class;
* for a dynamic batch dimension, batches of 1 and 7 too.

If any argmax agreement is below ``min_agreement`` (default 0.999), the export is refused: a
:class:`~robustdistill.errors.ModelError`, and the file is not left behind (it is written to a
temporary file in the target directory and renamed only after the check). The numbers and their
evidence (versions, opset, n, eps, seed, thresholds, the runtime's cost profile) go to
``export.json`` beside the file, one record per exported file name.

ONNX goes through ``torch.onnx.export(dynamo=True)`` (the torch.export-based exporter, torch's
default since 2.9, which needs onnxscript) and ``onnx.checker``; ``exporter="legacy"`` selects
the deprecated TorchScript-based ONNX exporter. TorchScript goes through ``torch.jit.trace``
(torch 2.14 deprecates TorchScript in favour of torch.export; it still works and is parity-checked
the same way).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
import os
import re
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import torch
from torch import nn

from .api import describe_model, model_budget, open_model, resolve_dataset_name
from .cost import CostProfile, cost_profile, count_macs
from .data import DatasetSplits, Split, load_dataset
from .errors import ModelError, UsageError, did_you_mean
from .evaluation import EvalSettings, eval_settings
from .fileio import atomic_write_json
from .models import Classifier, ModelOptions, count_parameters, model_file
from .models.checkpoint import read_metadata
from .modes import eval_mode
from .rng import derive_seed, forked_rng
from .runtime import select_device, versions
from .units import format_fraction
from .exported import (
    EXPORT_JSON, META_DIGEST, META_EXPORT, META_SPEC, TS_DIGEST_FILE, TS_METADATA_FILE, ExportedModel,
    exported_format, load_exported, onnx_digest, require_onnx, torchscript_digest,
)

ExportFormat = Literal["onnx", "torchscript"]
FORMATS = ("onnx", "torchscript")
# dynamo (torch.export-based) is torch's default ONNX exporter since 2.9 and the one torch keeps; in torch
# 2.14 the legacy TorchScript-based exporter still works for every robustdistill architecture but warns
# that it will be removed, and it is the only way to an opset below 18 (dynamo's version converter
# leaves such models at 18; export refuses that mismatch). dynamo needs onnxscript.
EXPORTERS = ("dynamo", "legacy")
def parity_attacks() -> list[str]:
    """Attacks that produce adversarial examples (``EvalAttack.adversarial``), apart from clean: fgsm, pgd, cw."""
    from .evaluation import ATTACKS, EvalAttack

    return [a.name for a in ATTACKS if a.name != "clean" and type(a).adversarial is not EvalAttack.adversarial]
DEFAULT_SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
INPUT_NAME, OUTPUT_NAME = "input", "logits"
SCHEMA = "robustdistill/export@1"
BATCH_CHECKS = (1, 7)


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Agreement:
    """PyTorch vs exported runtime on one set of inputs (clean, or one attack's examples).

    ``per_class`` holds ``(class name, examples, agreeing examples)`` by true label; accuracies
    are plain accuracy on these inputs (not clean-and-adversarial robust accuracy).
    """

    inputs: str
    n: int
    agree: int
    max_abs_logit_diff: float
    accuracy_pytorch: float
    accuracy_exported: float
    per_class: tuple[tuple[str, int, int], ...] = ()

    @property
    def agreement(self) -> float:
        return self.agree / self.n if self.n else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs, "n": self.n, "agree": self.agree, "agreement": self.agreement,
            "max_abs_logit_diff": self.max_abs_logit_diff, "accuracy_pytorch": self.accuracy_pytorch,
            "accuracy_exported": self.accuracy_exported,
            "per_class": [{"class": c, "n": n, "agree": a, "agreement": a / n if n else 1.0} for c, n, a in self.per_class],
        }


@dataclass(frozen=True)
class ParityReport:
    """Everything the parity check measured, with its evidence; ``passed`` decides the export."""

    dataset: str
    split: str
    n_examples: int
    settings: EvalSettings
    attacks: tuple[str, ...]
    min_agreement: float
    device: str
    rows: tuple[Agreement, ...]

    @property
    def passed(self) -> bool:
        return all(row.agreement >= self.min_agreement for row in self.rows)

    @property
    def worst(self) -> Agreement:
        return min(self.rows, key=lambda row: (row.agreement, -row.max_abs_logit_diff))

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset, "split": self.split, "n_examples": self.n_examples,
            "eps": self.settings.eps, "eps_text": format_fraction(self.settings.eps), "seed": self.settings.seed,
            "attacks": {a: self.settings.attack(a).parameters(self.settings.eps) for a in self.attacks},
            "adversarial_examples_made_on": f"the PyTorch model ({self.device})",
            "min_agreement": self.min_agreement, "passed": self.passed, "rows": [row.to_dict() for row in self.rows],
        }

    def summary(self) -> list[str]:
        """One plain line per row (for the CLI)."""
        return [f"{row.inputs:>10}: argmax agreement {row.agree}/{row.n} ({row.agreement:.2%}), max |logit diff| "
                f"{row.max_abs_logit_diff:.2e}, accuracy PyTorch {row.accuracy_pytorch:.1%} / exported {row.accuracy_exported:.1%}"
                for row in self.rows]


@dataclass(frozen=True)
class ExportResult:
    """The exported file, its export.json record, the parity check and the runtime's cost profile."""

    path: Path
    format: str
    record: dict[str, Any]
    parity: ParityReport
    cost: CostProfile | None = None
    export_json: Path = field(default_factory=Path)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.record)


def default_export_path(model: str, fmt: str) -> Path:
    """``NAME.onnx`` / ``NAME.pt`` in the working directory: the model file's stem, or the zoo name."""
    name = model.split(":", 1)[1] if model.startswith(("bundled:", "robustbench:", "timm:")) else Path(model).stem
    name = name.split("@", 1)[0].replace("/", "_") or "model"
    return Path(f"{name}{DEFAULT_SUFFIX.get(fmt, '.onnx')}")


# --------------------------------------------------------------------------- the source model
@dataclass
class _Source:
    model: Classifier
    identifier: str
    splits: DatasetSplits
    eps: float
    file_metadata: dict[str, str]
    info: dict[str, Any]


def _file_metadata(identifier: str, options: ModelOptions) -> dict[str, str]:
    """The ``robustdistill.*`` entries of a robustdistill safetensors file (teacher, eps, config ...)."""
    path = model_file(identifier, options)
    if path is None or path.suffix != ".safetensors" or not path.exists():
        return {}
    return {k: v for k, v in read_metadata(path).items() if k.startswith("robustdistill.")}


def _load_source(model: str | Classifier, dataset: str | None, data_dir: str | Path | None, download: bool,
                 image_size: int | None, options: ModelOptions, eps: float | str | None) -> _Source:
    if isinstance(model, str) and exported_format(model) is not None and Path(model).is_file():
        raise UsageError(f"{model!r} is already an exported model; export its source model (.safetensors, zoo id ...) instead")
    identifier = model if isinstance(model, str) else (model.spec.source or "model")
    metadata = _file_metadata(model, options) if isinstance(model, str) else {}
    if isinstance(model, str):
        name = resolve_dataset_name(model, dataset, options)
    elif dataset or model.spec.dataset:
        name = str(dataset or model.spec.dataset)
    else:
        raise UsageError("say which data to run the parity check on with dataset=...")
    splits = load_dataset(name, data_dir, download=download, image_size=image_size)
    net = open_model(model, splits, options)
    budget = model_budget(model if isinstance(model, str) else net, eps, options)  # the eps rule of evaluate
    info = describe_model(identifier, net, options) if isinstance(model, str) else {
        "arch": net.spec.arch, "num_classes": net.num_classes, "input_size": list(net.spec.input_size),
        "parameters": count_parameters(net), "source": net.spec.source}
    return _Source(net, identifier, splits, budget, metadata, info)


# --------------------------------------------------------------------------- checks of the arguments
def _check_arguments(fmt: str, exporter: str, out: Path, batch_size: int, parity_n: int, min_agreement: float,
                     attacks: Sequence[str], overwrite: bool) -> None:
    if fmt not in FORMATS:
        raise UsageError(did_you_mean(fmt, FORMATS, "export format"))
    if exporter not in EXPORTERS:
        raise UsageError(did_you_mean(exporter, EXPORTERS, "ONNX exporter"))
    for attack in attacks:
        if attack not in parity_attacks():
            raise UsageError(did_you_mean(attack, parity_attacks(), "parity attack"))
    if fmt == "onnx" and out.suffix.lower() != ".onnx":
        raise UsageError(f"an ONNX export must be named *.onnx (evaluate recognises it by the suffix), not {out.name!r}")
    if batch_size < 1 or parity_n < 1:
        raise UsageError("the batch size and the number of parity examples must be positive")
    if not 0.0 < min_agreement <= 1.0:
        raise UsageError(f"--min-agreement is a fraction in (0, 1], e.g. 0.999, not {min_agreement}")
    if out.is_dir():
        raise UsageError(f"{str(out)!r} is a directory; give the file to write, e.g. {out / ('model' + DEFAULT_SUFFIX[fmt])}")
    if out.exists() and not overwrite:
        raise UsageError(f"{str(out)!r} already exists; pass --overwrite to replace it")
    _read_index(out.parent / EXPORT_JSON)  # refuse early if an unrelated export.json sits there


def _read_index(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {"schema": SCHEMA, "exports": {}}
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError):
        index = None
    if not isinstance(index, dict) or index.get("schema") != SCHEMA or not isinstance(index.get("exports"), dict):
        raise UsageError(f"{str(path)!r} exists and was not written by robustdistill export; move it or export elsewhere")
    return index


# --------------------------------------------------------------------------- writing the file
@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' progress prints, deprecation warnings and INFO logs (parity is our check)."""
    names = ("torch", "torch._dynamo", "torch.fx", "torch.fx.experimental.symbolic_shapes", "torch.export", "torch._export",
             "torch.onnx", "onnxscript", "onnx_ir")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _onnx_proto(model: nn.Module, example: torch.Tensor, dynamic_batch: bool, opset: int | None, exporter: str) -> Any:
    onnx, _ = require_onnx()
    if exporter == "dynamo":
        try:
            import onnxscript  # noqa: F401 - torch's dynamo exporter imports it
        except ImportError:
            raise UsageError('ONNX export needs the optional package onnxscript; install it with pip install "robustdistill[export]"') from None
    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME], "opset_version": opset}
    with _quiet():
        if exporter == "dynamo":
            shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
            program = torch.onnx.export(model, (example,), None, dynamo=True, external_data=False, optimize=True,
                                        verbose=False, dynamic_shapes=shapes, **names)
            return program.model_proto
        buffer = io.BytesIO()
        axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
        torch.onnx.export(model, (example,), buffer, dynamo=False, dynamic_axes=axes, do_constant_folding=True, **names)
        return onnx.load_from_string(buffer.getvalue())


def _onnx_opset(proto: Any) -> int:
    return next(int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _onnx_bytes(model: nn.Module, example: torch.Tensor, metadata: dict[str, str], dynamic_batch: bool,
                opset: int | None, exporter: str) -> tuple[bytes, int]:
    """The ONNX file's bytes (metadata and digest included) and the opset it uses."""
    try:
        proto = _onnx_proto(model, example, dynamic_batch, opset, exporter)
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch.export / onnxscript raise many types
        raise ModelError(f"torch.onnx.export ({exporter}) could not export {model.spec.arch} ({_first_line(exc)}); "
                         "try --exporter legacy or --format torchscript") from None
    used = _onnx_opset(proto)
    if opset is not None and used != opset:
        raise UsageError(f"asked for opset {opset} but the {exporter} exporter produced opset {used} (the dynamo exporter "
                         f"supports opset 18 and newer); use --opset {used}, or --exporter legacy for older opsets")
    record = json.loads(metadata[META_EXPORT])
    metadata = {**metadata, META_EXPORT: json.dumps({**record, "opset": used}, sort_keys=True)}
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    proto.metadata_props.add(key=META_DIGEST, value=onnx_digest(proto))
    try:
        return proto.SerializeToString(), used
    except ValueError as exc:  # protobuf's 2 GB limit
        raise ModelError(f"the ONNX model is too large to store in one file ({_first_line(exc)}); use --format torchscript") from None


def _torchscript_bytes(model: nn.Module, example: torch.Tensor, metadata: dict[str, str]) -> bytes:
    """A traced TorchScript archive with the metadata and, over every other entry, the content digest."""
    with _quiet(), torch.no_grad():
        try:
            traced = torch.jit.trace(model, (example,), check_trace=False)
        except Exception as exc:  # noqa: BLE001 - tracing failures come in many types
            raise ModelError(f"torch.jit.trace could not trace {model.spec.arch} ({_first_line(exc)}); try --format onnx") from None
    extra = {TS_METADATA_FILE: json.dumps(metadata, sort_keys=True)}
    digest = torchscript_digest(zipfile.ZipFile(io.BytesIO(_jit_save(traced, extra))))
    data = _jit_save(traced, {**extra, TS_DIGEST_FILE: digest})
    if torchscript_digest(zipfile.ZipFile(io.BytesIO(data))) != digest:  # torch.jit.save must be deterministic
        raise ModelError("torch.jit.save wrote different archives for the same module, so no content digest can be stored; use --format onnx")
    return data


def _jit_save(traced: Any, extra: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with _quiet():
        torch.jit.save(traced, buffer, _extra_files=extra)
    return buffer.getvalue()


def _example(split: Split, n: int) -> torch.Tensor:
    """``n`` real images (repeated if the split is smaller) for tracing: the first of the split."""
    x = next(iter(split.batches(n, torch.device("cpu"))))[0]
    while x.shape[0] < n:
        x = torch.cat([x, x])[:n]
    return x


def _metadata(source: _Source, fmt: str, exporter: str, dynamic_batch: bool, batch_size: int, macs: int) -> dict[str, str]:
    """Every string entry stored in the file: the source's robustdistill.* metadata, spec, export record."""
    from . import __version__

    spec = source.model.spec
    record = {
        "format": fmt, "exporter": _exporter_text(fmt, exporter), "opset": None, "dynamic_batch": dynamic_batch,
        "batch_size": None if dynamic_batch else batch_size,
        "input": {"name": INPUT_NAME, "shape": ["batch" if dynamic_batch else batch_size, *spec.input_size],
                  "dtype": "float32", "range": [0.0, 1.0], "layout": "NCHW", "normalization": "inside the graph"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch" if dynamic_batch else batch_size, spec.num_classes], "meaning": "logits"},
        "eps": source.eps, "eps_str": format_fraction(source.eps), "dataset": source.splits.info.name,
        "source": {"id": source.identifier, "sha256": source.info.get("sha256"), "arch": spec.arch,
                   "parameters": source.info.get("parameters"), "macs_per_image": macs},
        "teacher": source.file_metadata.get("robustdistill.teacher"),
        "teacher_sha256": source.file_metadata.get("robustdistill.teacher_sha256"),
        "robustdistill_version": __version__, "torch": torch.__version__,
    }
    return {**source.file_metadata, META_SPEC: spec.to_json(), "robustdistill.version": __version__,
            META_EXPORT: json.dumps(record, sort_keys=True)}


def _exporter_text(fmt: str, exporter: str) -> str:
    if fmt == "torchscript":
        return "torch.jit.trace"
    return "torch.onnx.export(dynamo=True)" if exporter == "dynamo" else "torch.onnx.export(dynamo=False) (legacy TorchScript-based)"


# --------------------------------------------------------------------------- the parity check
class _Tally:
    """Accumulates PyTorch and exported predictions, labels and the largest logit difference for one input set."""

    def __init__(self) -> None:
        self.ref: list[torch.Tensor] = []
        self.exp: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []
        self.max_diff = 0.0

    def add(self, ref_logits: torch.Tensor, exp_logits: torch.Tensor, y: torch.Tensor) -> None:
        diff = (ref_logits - exp_logits).abs().max().item() if ref_logits.numel() else 0.0
        self.max_diff = max(self.max_diff, diff) if diff == diff else float("nan")  # keep a NaN visible
        self.ref.append(ref_logits.argmax(1).cpu())
        self.exp.append(exp_logits.argmax(1).cpu())
        self.labels.append(y.cpu())

    def result(self, inputs: str, class_names: Sequence[str]) -> Agreement:
        ref, exp, y = torch.cat(self.ref), torch.cat(self.exp), torch.cat(self.labels)
        same = ref.eq(exp)
        per_class = tuple((str(name), int((y == c).sum()), int(same[y == c].sum())) for c, name in enumerate(class_names))
        return Agreement(inputs, int(y.numel()), int(same.sum()), self.max_diff, float(ref.eq(y).double().mean()),
                         float(exp.eq(y).double().mean()), per_class)


def check_parity(
    model: Classifier,
    runtime: nn.Module,
    data: Split,
    class_names: Sequence[str],
    *,
    settings: EvalSettings,
    attacks: Sequence[str] = ("pgd",),
    min_agreement: float = 0.999,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    dataset: str = "",
    batch_checks: Sequence[int] = (),
) -> ParityReport:
    """Compare ``model`` (PyTorch, on the CPU) with ``runtime`` on clean and adversarial inputs.

    Adversarial examples are made on ``model`` on ``device`` with the attack parameters and
    per-batch seeds of ``evaluate`` (the same examples at the same batch size), then both models
    classify them. ``batch_checks`` adds clean comparisons at those batch sizes (dynamic batch).
    The caller's RNG state is left untouched.
    """
    device = torch.device(device)
    attacker = model if device.type == "cpu" else copy.deepcopy(model).to(device)
    tallies = {name: _Tally() for name in ("clean", *attacks)}
    with eval_mode(model, freeze=True), eval_mode(attacker, freeze=True), forked_rng(device):
        for number, (x, y, _idx) in enumerate(data.batches(batch_size, torch.device("cpu"))):
            _compare(model, runtime, x, y, tallies["clean"])
            for attack in settings.attacks(attacks)[1:]:  # the examples evaluate makes: same parameters and seeds
                seed = derive_seed(settings.seed, attack.seed_id, number)
                x_adv = attack.adversarial(attacker, x.to(device), y.to(device), eps=settings.eps, seed=seed).cpu()
                _compare(model, runtime, x_adv, y, tallies[attack.name])
        rows = [tally.result(name, class_names) for name, tally in tallies.items()]
        rows += _batch_rows(model, runtime, data, batch_checks, class_names)
    return ParityReport(dataset, data.name, len(data), settings, tuple(attacks), min_agreement, str(device), tuple(rows))


def _compare(model: nn.Module, runtime: nn.Module, x: torch.Tensor, y: torch.Tensor, tally: _Tally) -> None:
    with torch.no_grad():
        tally.add(model(x), runtime(x), y)


def _batch_rows(model: nn.Module, runtime: nn.Module, data: Split, sizes: Sequence[int], class_names: Sequence[str]) -> list[Agreement]:
    rows = []
    for size in sizes:
        tally = _Tally()
        x, y, _ = next(iter(data.batches(size, torch.device("cpu"))))
        _compare(model, runtime, x, y, tally)
        rows.append(tally.result(f"batch {x.shape[0]}", class_names))
    return rows


def _refusal(fmt: str, parity: ParityReport) -> str:
    row = parity.worst
    return (f"the exported {fmt} model disagrees with PyTorch on {row.n - row.agree} of {row.n} {row.inputs} examples "
            f"(argmax agreement {row.agreement:.2%} < the required {parity.min_agreement:.2%}, max |logit diff| "
            f"{row.max_abs_logit_diff:.2e}); nothing was written - look for data-dependent code in the model, or try another "
            "--format / --exporter / --opset")


# --------------------------------------------------------------------------- export
def export_model(
    model: str | Classifier,
    *,
    format: ExportFormat = "onnx",  # noqa: A002 - the CLI option's name
    out: str | Path,
    dynamic_batch: bool = False, batch_size: int = 1,
    opset: int | None = None, exporter: str = "dynamo",
    eps: float | str | None = None,
    dataset: str | None = None, data_dir: str | Path | None = None, download: bool = False, image_size: int | None = None,
    options: ModelOptions = ModelOptions(),
    parity_n: int = 500, attacks: Sequence[str] = ("pgd",), pgd_steps: int = 20, seed: int = 0,
    min_agreement: float = 0.999,
    parity_batch_size: int = 256,
    device: str | None = None, profile: bool = True, overwrite: bool = False,
) -> ExportResult:
    """Export ``model`` to ONNX or TorchScript, check robustness parity, write ``export.json``.

    Args:
        model: anything robustdistill loads (``bundled:NAME``, ``robustbench:NAME``, ``timm:NAME``, a
            ``.safetensors``, a ``.pt`` with ``options.arch``) or a :class:`Classifier`.
        format: ``onnx`` (runs with onnxruntime; needs the ``export`` extra) or ``torchscript``.
        out: the file to write (``*.onnx`` for ONNX); ``export.json`` goes beside it.
        dynamic_batch, batch_size: a dynamic batch dimension, else one fixed at ``batch_size``.
        opset: ONNX opset (default: the exporter's; recorded). The dynamo exporter supports >= 18.
        exporter: ``dynamo`` (default) or ``legacy`` (the deprecated TorchScript-based ONNX exporter).
        eps: L-inf budget of the parity attacks, [0, 1] pixel units; default the model's recorded one.
        dataset, data_dir, download, image_size, options: the parity data and how to read the model,
            as for ``evaluate`` (default dataset: the one the model records).
        parity_n: the first ``parity_n`` test examples are checked (default 500).
        attacks, pgd_steps, seed: parity attacks (any of fgsm, pgd, cw; default PGD-20, step eps/4)
            and their seed; ``parity_batch_size`` is their batch size (examples as ``evaluate`` makes them).
        min_agreement: refuse the export if any argmax agreement is below this (default 0.999).
        device: where the adversarial examples are made (default cuda > mps > cpu); classified on the CPU.
        profile: time the exported runtime on the CPU (batch 1 and 64, or the fixed batch) for export.json.
        overwrite: replace an existing ``out``.

    Raises:
        ModelError: the exporter fails, or the parity check fails (nothing is written).
        UsageError: bad arguments, or onnx/onnxruntime/onnxscript missing for ``format="onnx"``.
    """
    out = Path(out)
    _check_arguments(format, exporter, out, batch_size, parity_n, min_agreement, list(attacks), overwrite)
    if format == "onnx":
        require_onnx()
    plan = _Plan(format, exporter, dynamic_batch, batch_size, opset, tuple(attacks), min_agreement, parity_batch_size,
                 select_device(device), profile)
    source = _load_source(model, dataset, data_dir, download, image_size, options, eps)
    net = source.model if _on_cpu(source.model) else copy.deepcopy(source.model).to("cpu")  # leave the caller's model where it is
    data = source.splits.split(source.splits.default_eval_split).head(parity_n)
    payload, used_opset = _serialise(net, source, data, plan)
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = eval_settings(source.eps, seed, pgd_steps=pgd_steps)
    runtime, parity, cost = _check_and_place(out, payload, net, source, data, settings, plan)
    record = _record(out, payload, runtime, source, parity, cost, used_opset)
    record["parity"]["n_requested"] = parity_n
    index_path = _write_index(out, record)
    return ExportResult(out, format, record, parity, cost, index_path)


@dataclass(frozen=True)
class _Plan:
    """The export's choices, passed between its steps."""

    format: str
    exporter: str
    dynamic_batch: bool
    batch_size: int
    opset: int | None
    attacks: tuple[str, ...]
    min_agreement: float
    parity_batch_size: int
    device: torch.device
    profile: bool


def _serialise(net: Classifier, source: _Source, data: Split, plan: _Plan) -> tuple[bytes, int | None]:
    """The exported file's bytes (metadata inside) and the ONNX opset used (``None`` for TorchScript)."""
    with eval_mode(net, freeze=True):
        macs = count_macs(net, net.spec.input_size)
        metadata = _metadata(source, plan.format, plan.exporter, plan.dynamic_batch, plan.batch_size, macs)
        example = _example(data, 2 if plan.dynamic_batch else plan.batch_size)  # batch 2: no size-1 specialisation when dynamic
        if plan.format == "onnx":
            return _onnx_bytes(net, example, metadata, plan.dynamic_batch, plan.opset, plan.exporter)
        return _torchscript_bytes(net, example, metadata), None


def _check_and_place(out: Path, payload: bytes, net: Classifier, source: _Source, data: Split, settings: EvalSettings,
                     plan: _Plan) -> tuple[ExportedModel, ParityReport, CostProfile | None]:
    """Validate and parity-check a staged copy of the file; rename it to ``out`` only if it passes."""
    with _staged(out, payload) as staged:
        runtime = load_exported(staged)  # the same validation `evaluate FILE` applies
        parity = check_parity(net, runtime, data, _class_names(source), settings=settings, attacks=plan.attacks,
                              min_agreement=plan.min_agreement, batch_size=plan.parity_batch_size, device=plan.device,
                              dataset=source.splits.info.name, batch_checks=BATCH_CHECKS if plan.dynamic_batch else ())
        if not parity.passed:
            raise ModelError(_refusal(plan.format, parity))
        batches = (1, 64) if plan.dynamic_batch else (plan.batch_size,)
        cost = cost_profile(runtime, file=staged, batch_sizes=batches) if plan.profile else None
        os.replace(staged, out)
    return runtime, parity, cost


def _on_cpu(model: nn.Module) -> bool:
    return all(t.device.type == "cpu" for t in [*model.parameters(), *model.buffers()])


def _class_names(source: _Source) -> tuple[str, ...]:
    names = source.model.spec.class_names
    info = source.splits.info
    return tuple(names) if names and len(names) == info.num_classes else tuple(info.class_names)


@contextlib.contextmanager
def _staged(out: Path, payload: bytes) -> Iterator[Path]:
    """``payload`` in a temporary file beside ``out`` (same suffix), removed unless the block renamed it."""
    fd, name = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=f".partial{out.suffix}", dir=out.parent)
    staged = Path(name)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staged, 0o666 & ~umask)  # mkstemp makes 0600 files; give the export a plain file's mode
        yield staged
    finally:
        staged.unlink(missing_ok=True)


def _record(out: Path, payload: bytes, runtime: ExportedModel, source: _Source, parity: ParityReport,
            cost: CostProfile | None, opset: int | None) -> dict[str, Any]:
    """The export.json entry of ``out``: the file, the export, the parity check, the cost, the evidence."""
    info = dict(runtime.info)
    info["opset"] = opset
    return {
        "file": out.name, "sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload), **info,
        "spec": json.loads(runtime.spec.to_json()), "parity": parity.to_dict(),
        "cost": cost.to_dict() if cost is not None else None, "versions": _export_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _export_versions() -> dict[str, str]:
    from importlib import metadata

    out = versions()
    for pkg in ("onnx", "onnxruntime", "onnxscript"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _write_index(out: Path, record: dict[str, Any]) -> Path:
    path = out.parent / EXPORT_JSON
    index = _read_index(path)
    index["exports"][out.name] = record
    atomic_write_json(path, index)
    return path


def _first_line(exc: BaseException) -> str:
    """The first line of the innermost cause (torch.export wraps the informative error in generic text)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch.export colours its messages
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0][:200] if lines else type(exc).__name__
