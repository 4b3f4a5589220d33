"""Run a model exported by ``robustdistill export`` (ONNX via onnxruntime, or TorchScript) for inference.

:func:`load_exported` validates the file before anything runs it and returns an
:class:`ExportedModel`: an ``nn.Module`` that maps NCHW images in [0, 1] to logits like every
robustdistill model (the normalisation is part of the exported graph), so the clean evaluation and
score-based attacks (:func:`robustdistill.square.square`) run on it unchanged.

Validation refuses, with one line:

* a missing, empty, truncated or unparsable file (protobuf / zip errors, zip CRC mismatches);
* a file without robustdistill's metadata (``robustdistill.spec`` and ``robustdistill.export``);
* a file whose content differs from what ``export`` wrote: the sha256 *content digest* stored in
  the file (over the ONNX model without the digest entry / over every TorchScript archive entry
  but the digest) no longer matches, or the sha256 recorded for it in an ``export.json`` beside it
  differs;
* for ONNX, a model that fails ``onnx.checker`` (with shape inference), and for both formats an
  input or output whose shape disagrees with the recorded :class:`~robustdistill.models.ModelSpec`.

An exported model has no gradients: a forward pass that would need them (the input requires
grad while autograd is on, as in FGSM/PGD/CW/APGD/FAB) raises :class:`~robustdistill.errors.ModelError`
saying to evaluate the source model instead. Loading never runs Python code from the file: ONNX is a
protobuf graph, and a TorchScript archive holds TorchScript (not Python) code and tensors, read by
``torch.jit.load`` only after the checks above.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .errors import CheckpointError, ModelError, UsageError
from .models.spec import ModelSpec

META_SPEC = "robustdistill.spec"
META_EXPORT = "robustdistill.export"
META_DIGEST = "robustdistill.digest"
TS_METADATA_FILE = "robustdistill.json"  # TorchScript extra file holding every robustdistill.* entry
TS_DIGEST_FILE = "robustdistill.digest"
# torch.jit.save derives this id from the archive's records, so it changes when the digest file is
# added; it identifies the save, not the model, and is left out of the digest.
TS_UNHASHED = frozenset({f"extra/{TS_DIGEST_FILE}", ".data/serialization_id"})
EXPORT_JSON = "export.json"
EXTRA_HINT = 'pip install "robustdistill[export]"'
Runner = Callable[[np.ndarray], np.ndarray]


# --------------------------------------------------------------------------- optional dependencies
def require_onnx(purpose: str = "ONNX export") -> tuple[Any, Any]:
    """``(onnx, onnxruntime)``, or a one-line :class:`UsageError` naming the ``export`` extra."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise UsageError(
            f"{purpose} needs the optional packages onnx, onnxruntime and onnxscript ({exc.name} is missing); "
            f"install them with {EXTRA_HINT}"
        ) from None
    return onnx, onnxruntime


# --------------------------------------------------------------------------- digests
def onnx_digest(proto: Any) -> str:
    """sha256 of an ONNX ``ModelProto`` serialised deterministically, without its digest entry."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    kept = [(p.key, p.value) for p in copy.metadata_props if p.key != META_DIGEST]
    del copy.metadata_props[:]
    for key, value in kept:
        copy.metadata_props.add(key=key, value=value)
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def torchscript_digest(archive: zipfile.ZipFile) -> str:
    """sha256 over every archive entry (name without its top folder, then bytes) but :data:`TS_UNHASHED`."""
    digest = hashlib.sha256()
    for name in sorted(archive.namelist()):
        inner = name.split("/", 1)[-1]
        if inner in TS_UNHASHED:
            continue
        data = archive.read(name)
        digest.update(f"{inner}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


# --------------------------------------------------------------------------- format detection
def exported_format(path: str | Path) -> str | None:
    """``"onnx"`` or ``"torchscript"`` when ``path`` looks like a robustdistill export, else ``None``.

    ONNX is recognised by its ``.onnx`` suffix; TorchScript (any suffix) by the zip entry
    ``extra/robustdistill.json`` or ``extra/robustdistill.digest`` - from the zip directory, or, for a
    truncated archive without one, from the first local entry (``torch.jit.save`` writes the extra
    files first). Nothing is executed.
    """
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if not path.is_file():
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        names = [_first_zip_entry(path)]
    markers = {f"extra/{TS_METADATA_FILE}", f"extra/{TS_DIGEST_FILE}"}
    return "torchscript" if any(n.split("/", 1)[-1] in markers for n in names) else None


def _first_zip_entry(path: Path) -> str:
    """The name in the first local file header of a zip file (``""`` if it does not start like one)."""
    with open(path, "rb") as handle:
        head = handle.read(30 + 1024)
    if len(head) < 30 or head[:4] != b"PK\x03\x04":
        return ""
    length = int.from_bytes(head[26:28], "little")
    return head[30 : 30 + length].decode("utf-8", errors="replace")


# --------------------------------------------------------------------------- the module
class ExportedModel(nn.Module):
    """An exported file as a robustdistill model: [0, 1] NCHW images -> logits, inference only.

    Attributes:
        spec: the :class:`ModelSpec` recorded at export (``mean``/``std`` are informational: the
            normalisation is inside the exported graph).
        info: the ``robustdistill.export`` record (format, opset, batch, eps, source, teacher ...).
        metadata: every ``robustdistill.*`` entry of the file.
        path: the file it was loaded from.
        batch_size: the fixed batch dimension of the file, or ``None`` when it is dynamic; inputs
            of another size are run in chunks (the last one zero-padded).
        differentiable: ``False``: only attacks that query outputs (clean, square) can run on it.
    """

    differentiable = False

    def __init__(self, runner: Runner, spec: ModelSpec, metadata: dict[str, str], path: Path,
                 rebuild: Callable[[int], Runner] | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.metadata = dict(metadata)
        self.info: dict[str, Any] = json.loads(metadata[META_EXPORT])
        self.path = path
        self.batch_size: int | None = None if self.info.get("dynamic_batch") else int(self.info["batch_size"])
        self._runner = runner
        self._rebuild = rebuild

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def format(self) -> str:
        return str(self.info["format"])

    def set_num_threads(self, threads: int) -> None:
        """Intra-op threads of the runtime (onnxruntime: a new session; TorchScript: torch's setting)."""
        if self._rebuild is not None:
            self._runner = self._rebuild(threads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            raise ModelError(
                f"{self.path.name} is an exported {self.format} model without gradients, so gradient attacks "
                f"cannot run on it; evaluate the source model ({self.info.get('source', {}).get('id', '?')}) "
                "for those, and the export with attacks that only query outputs (clean, square)"
            )
        if tuple(x.shape[1:]) != tuple(self.spec.input_size):
            raise ModelError(
                f"{self.path.name} takes images of shape {tuple(self.spec.input_size)}, got {tuple(x.shape[1:])}"
            )
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self._run_chunks(array)).to(x.device)

    def _run_chunks(self, array: np.ndarray) -> np.ndarray:
        size = self.batch_size
        if size is None or array.shape[0] == size:
            return np.asarray(self._runner(array), dtype=np.float32)
        outputs = []
        for start in range(0, array.shape[0], size):
            chunk = array[start : start + size]
            n = chunk.shape[0]
            if n < size:  # a fixed-batch graph only takes full batches: pad with zeros, drop their logits
                chunk = np.concatenate([chunk, np.zeros((size - n, *chunk.shape[1:]), dtype=chunk.dtype)])
            outputs.append(np.asarray(self._runner(chunk), dtype=np.float32)[:n])
        return np.concatenate(outputs) if outputs else np.zeros((0, self.num_classes), dtype=np.float32)

    def extra_repr(self) -> str:
        batch = "dynamic" if self.batch_size is None else str(self.batch_size)
        return f"format={self.format!r}, arch={self.spec.arch!r}, num_classes={self.num_classes}, batch={batch}"


# --------------------------------------------------------------------------- loading
def load_exported(path: str | Path, *, threads: int | None = None) -> ExportedModel:
    """Validate and open an exported model (see the module docstring for what is checked).

    Args:
        path: a ``.onnx`` file or a TorchScript archive written by ``robustdistill export``.
        threads: intra-op threads of the runtime. Default: ``torch.get_num_threads()``, so both
            runtimes respect the same setting (onnxruntime would otherwise use every core).

    Raises:
        CheckpointError: the file is missing, truncated, corrupt, modified, or not a robustdistill export.
        UsageError: an ONNX file but onnx/onnxruntime are not installed.
    """
    path = Path(path)
    data = _read_bytes(path)
    fmt = exported_format(path)
    if fmt is None:
        raise CheckpointError(
            f"{str(path)!r} is neither an .onnx file nor a TorchScript archive exported by robustdistill; "
            "export the model with `robustdistill export`"
        )
    _check_export_json(path, data)
    threads = threads or torch.get_num_threads()
    model = _open_onnx(path, data, threads) if fmt == "onnx" else _open_torchscript(path, data, threads)
    _probe(model)
    return model.eval()


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise CheckpointError(f"exported model {str(path)!r} does not exist")
    if path.is_dir():
        raise CheckpointError(f"{str(path)!r} is a directory, not an exported model file")
    data = path.read_bytes()
    if not data:
        raise CheckpointError(f"exported model {str(path)!r} is empty (0 bytes); copy or export it again")
    return data


def read_export_json(path: Path) -> dict[str, Any] | None:
    """The record of ``path`` in the ``export.json`` beside it, if there is one."""
    index = path.parent / EXPORT_JSON
    if not index.is_file():
        return None
    try:
        record = json.loads(index.read_text()).get("exports", {}).get(path.name)
    except (OSError, ValueError, AttributeError):
        return None
    return record if isinstance(record, dict) else None


def _check_export_json(path: Path, data: bytes) -> None:
    record = read_export_json(path)
    if record is None or "sha256" not in record:
        return
    if hashlib.sha256(data).hexdigest() != record["sha256"]:
        raise CheckpointError(
            f"{str(path)!r} differs from the file recorded in {EXPORT_JSON} beside it (sha256 mismatch): "
            "it was modified or truncated after export; export it again"
        )


def _spec_from(metadata: dict[str, str], path: Path) -> ModelSpec:
    if META_SPEC not in metadata or META_EXPORT not in metadata:
        raise CheckpointError(
            f"{str(path)!r} carries no robustdistill metadata ({META_SPEC}, {META_EXPORT}); "
            "evaluate files exported with `robustdistill export`"
        )
    try:
        json.loads(metadata[META_EXPORT])
        return ModelSpec.from_json(metadata[META_SPEC])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{str(path)!r} has unreadable robustdistill metadata ({exc}); export it again") from None


def _modified(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{str(path)!r} was modified after export (its content digest does not match); export it again"
    )


def _open_onnx(path: Path, data: bytes, threads: int) -> ExportedModel:
    onnx, ort = require_onnx("evaluating an ONNX file")
    try:
        proto = onnx.load_from_string(data)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError or RuntimeError on bad bytes
        raise CheckpointError(
            f"{str(path)!r} is not a readable ONNX model ({_first_line(exc)}); it may be truncated - export or copy it again"
        ) from None
    metadata = {p.key: p.value for p in proto.metadata_props if p.key.startswith("robustdistill.")}
    spec = _spec_from(metadata, path)
    if metadata.get(META_DIGEST) != onnx_digest(proto):
        raise _modified(path)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # noqa: BLE001 - ValidationError, InferenceError
        raise CheckpointError(f"{str(path)!r} fails the ONNX checker ({_first_line(exc)}); export it again") from None
    _check_onnx_shapes(proto, spec, path)

    def build(n_threads: int) -> Runner:
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(n_threads))
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda array: session.run(None, {name: array})[0]

    try:
        runner = build(threads)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise CheckpointError(f"onnxruntime cannot load {str(path)!r} ({_first_line(exc)})") from None
    return ExportedModel(runner, spec, metadata, path, rebuild=build)


def _dims(value_info: Any) -> list[int | str]:
    return [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in value_info.type.tensor_type.shape.dim]


def _check_onnx_shapes(proto: Any, spec: ModelSpec, path: Path) -> None:
    graph = proto.graph
    inputs = [i for i in graph.input if i.name not in {t.name for t in graph.initializer}]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise CheckpointError(f"{str(path)!r} has {len(inputs)} inputs and {len(graph.output)} outputs, expected 1 and 1")
    shape_in, shape_out = _dims(inputs[0]), _dims(graph.output[0])
    if len(shape_in) != 4 or [*shape_in[1:]] != list(spec.input_size):
        raise CheckpointError(f"{str(path)!r} takes input of shape {shape_in}, but its metadata says (N, {', '.join(map(str, spec.input_size))})")
    if len(shape_out) != 2 or shape_out[1] != spec.num_classes:
        raise CheckpointError(f"{str(path)!r} returns shape {shape_out}, but its metadata says (N, {spec.num_classes})")


def _open_torchscript(path: Path, data: bytes, threads: int) -> ExportedModel:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        bad = archive.testzip()  # CRC of every entry: catches bytes changed in place
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise CheckpointError(f"{str(path)!r} is not a readable TorchScript archive ({_first_line(exc)}); it may be truncated - export or copy it again") from None
    if bad is not None:
        raise CheckpointError(f"{str(path)!r} is corrupt (entry {bad} fails its CRC check); export or copy it again")
    metadata = _torchscript_metadata(archive, path)
    spec = _spec_from(metadata, path)
    if metadata.get(META_DIGEST) != torchscript_digest(archive):
        raise _modified(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates TorchScript; it still loads
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - the TorchScript reader raises RuntimeError of many kinds
        raise CheckpointError(f"torch.jit.load cannot read {str(path)!r} ({_first_line(exc)}); export it again") from None
    module.eval()

    def build(n_threads: int) -> Runner:
        def run(array: np.ndarray) -> np.ndarray:
            # TorchScript runs on torch's intra-op pool; the count is set by the caller (cost.py).
            with torch.no_grad():
                return module(torch.from_numpy(array)).numpy()
        return run

    return ExportedModel(build(threads), spec, metadata, path, rebuild=None)


def _torchscript_metadata(archive: zipfile.ZipFile, path: Path) -> dict[str, str]:
    entries = {n.split("/", 1)[-1]: n for n in archive.namelist()}
    if f"extra/{TS_METADATA_FILE}" not in entries:
        return {}
    try:
        metadata = json.loads(archive.read(entries[f"extra/{TS_METADATA_FILE}"]).decode("utf-8"))
        if f"extra/{TS_DIGEST_FILE}" in entries:
            metadata[META_DIGEST] = archive.read(entries[f"extra/{TS_DIGEST_FILE}"]).decode("ascii").strip()
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{str(path)!r} has unreadable robustdistill metadata ({exc}); export it again") from None
    return {str(k): str(v) for k, v in metadata.items()}


def _probe(model: ExportedModel) -> None:
    """One forward pass at the file's batch size: the logits must be finite and (N, num_classes)."""
    n = model.batch_size or 1
    with torch.no_grad():
        try:
            out = model(torch.zeros(n, *model.spec.input_size))
        except ModelError:
            raise
        except Exception as exc:  # noqa: BLE001 - runtime failures of a corrupt graph
            raise CheckpointError(f"{str(model.path)!r} fails to run ({_first_line(exc)}); export it again") from None
    if tuple(out.shape) != (n, model.num_classes) or not bool(torch.isfinite(out).all()):
        raise CheckpointError(
            f"{str(model.path)!r} returns logits of shape {tuple(out.shape)} (expected ({n}, {model.num_classes}), finite); export it again"
        )


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0][:200] if lines else type(exc).__name__
