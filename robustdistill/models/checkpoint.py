"""Fitting stored weights to architectures, and robustdistill's self-describing safetensors.

* State dicts nested under ``state_dict``/``model``/``net``/... and keys prefixed with
  ``module.``/``model.`` are matched to the target network by trying each interpretation and
  keeping the one whose keys fit, instead of blindly stripping substrings.
* Nothing real is allocated before the file is known to fit: :func:`build_and_load` first builds
  the architecture without memory (on the ``meta`` device) and compares every parameter and
  buffer - name, shape and dtype class - with the tensors the file declares. A crafted spec
  (``width=131072`` in a 380 KB file, ``num_classes=10**12``) is then a one-line error, not an
  out-of-memory crash. Integer tensors where the architecture has float parameters are refused
  (they would be cast silently and give 0 % accuracy); float16/bfloat16 weights are cast.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..fileio import atomic_write_bytes
from ..units import parse_fraction
from ..errors import CheckpointError, ModelError, RobustDistillError, UsageError
from .classifier import Classifier
from .registry import build_arch
from .spec import NUM_CLASSES_RANGE, ModelSpec
from .weightsio import (
    TensorLayout, first_line, layout_of, parse_json_metadata, read_metadata, read_safetensors, read_safetensors_header,
)

PREFIXES = ("module.", "model.", "net.", "_orig_mod.", "student.")
META_SPEC = "robustdistill.spec"
META_CONFIG = "robustdistill.config"
META_VERSION = "robustdistill.version"
META_EPS = "robustdistill.eps"
PLAIN_FIX = "is --arch right?"
CONFIG_FIX = "the file is damaged or was edited; pass --dataset and --eps explicitly, or save the model again"


# --------------------------------------------------------------------------- matching keys
def candidate_keys(keys: list[str]) -> list[dict[str, str]]:
    """Interpretations of stored keys as ``{model key: stored key}``: as they are, and with wrapper prefixes removed."""
    out = [{k: k for k in keys}]
    frontier = list(out)
    for _ in range(2):  # e.g. 'module.model.' needs two rounds
        nxt = []
        for names in frontier:
            for prefix in PREFIXES:
                if names and all(k.startswith(prefix) for k in names):
                    nxt.append({k[len(prefix):]: v for k, v in names.items()})
                elif any(k.startswith(prefix) for k in names):
                    # DataParallel checkpoints sometimes mix prefixed and plain keys.
                    nxt.append({(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in names.items()})
        out.extend(nxt)
        frontier = nxt
    return out


def plan_load(
    expected: Mapping[str, TensorLayout], stored: Mapping[str, TensorLayout], source: str, fix: str | None = None,
) -> dict[str, str]:
    """Match stored tensors to a model's state dict by name, shape and dtype class, before anything is loaded.

    Args:
        expected: layout of the model's state dict (e.g. of a model built on the meta device).
        stored: layout of the tensors in the file.
        source: the file, for messages.
        fix: advice for a mismatch; ``None`` (plain weights + ``--arch``) gives specific hints
            for class-count and channel mismatches.

    Returns:
        ``{model key: stored key}`` for every model key present in the file.

    Raises:
        ModelError: a key is missing or unexpected, a shape differs, or an integer tensor would
            land in a float parameter.
    """
    optional = {k for k in expected if k.endswith("num_batches_tracked")}  # older checkpoints lack it
    best = max(candidate_keys(list(stored)), key=lambda names: len(set(names) & set(expected)))
    mismatched = [k for k in expected if k in best and stored[best[k]].shape != expected[k].shape]
    if mismatched:
        key = mismatched[0]
        raise _shape_error(expected, key, stored[best[key]].shape, source, fix)
    missing = [k for k in expected if k not in best and k not in optional]
    unexpected = [k for k in best if k not in expected]
    if missing or unexpected:
        parts = [f"{len(missing)} missing (e.g. {', '.join(missing[:3])})"] if missing else []
        parts += [f"{len(unexpected)} unexpected (e.g. {', '.join(k[:80] for k in unexpected[:3])})"] if unexpected else []
        raise ModelError(f"weights in {source} do not fit the architecture: {'; '.join(parts)} keys - {fix or PLAIN_FIX}")
    for key, layout in expected.items():
        got = stored[best[key]].dtype if key in best else layout.dtype
        if layout.dtype.is_floating_point and not got.is_floating_point:
            raise ModelError(
                f"weights in {source}: tensor {best[key][:80]} is {_dtype_name(got)} where the model's {key} is "
                f"{_dtype_name(layout.dtype)} (a quantized or damaged file?); export float weights (float32, float16 or bfloat16)"
            )
    return {k: best[k] for k in expected if k in best}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _shape_error(expected: Mapping[str, TensorLayout], key: str, got: tuple[int, ...], source: str,
                 fix: str | None) -> ModelError:
    want = expected[key].shape
    hint = f" - {fix or PLAIN_FIX}"
    if fix is None:
        # Only the classifier head (the last 2-D weight and its bias) says anything about the class count.
        head = [k for k, v in expected.items() if len(v.shape) == 2 and k.endswith("weight")][-1:]
        head_keys = {*head, *(k[: -len("weight")] + "bias" for k in head)}
        if key in head_keys and len(got) >= 1 and got[1:] == want[1:] and got[0] != want[0]:
            hint = (f" - the checkpoint has {got[0]} classes where the model has {want[0]}: a class-count mismatch "
                    f"(use --num-classes {got[0]} or a model trained for this dataset)")
        # The stem (first 4-D weight) says how many image channels the weights take.
        stem = next((k for k, v in expected.items() if len(v.shape) == 4), None)
        if key == stem and len(got) == 4 and got[0] == want[0] and got[2:] == want[2:] and got[1] != want[1]:
            hint = (f" - the checkpoint takes {got[1]}-channel images but the model was built for {want[1]}-channel "
                    "data: a channel mismatch (use data with matching channels)")
    return ModelError(
        f"weights in {source} do not fit the architecture: {key} is {list(got)} in the file but {list(want)} in the model{hint}"
    )


def load_weights(net: nn.Module, state: dict[str, torch.Tensor], source: str, fix: str | None = None) -> None:
    """Load ``state`` into ``net`` strictly, choosing the key interpretation that fits best (see :func:`plan_load`)."""
    mapping = plan_load(layout_of(net.state_dict()), layout_of(state), source, fix)
    load_planned(net, state, mapping)


def load_planned(net: nn.Module, state: Mapping[str, torch.Tensor], mapping: Mapping[str, str]) -> None:
    """Load ``state`` into ``net`` following a :func:`plan_load` mapping (floating tensors are cast)."""
    expected = net.state_dict()
    chosen = {key: state[stored] for key, stored in mapping.items()}
    for key in expected:
        chosen.setdefault(key, expected[key])  # only num_batches_tracked can be absent after plan_load
    net.load_state_dict(chosen, strict=True)


def check_num_classes(value: int | None, flag: str = "--num-classes") -> int | None:
    """``value`` if it is a sane class count (see :data:`~robustdistill.models.spec.NUM_CLASSES_RANGE`); ``None`` passes."""
    if value is not None and (isinstance(value, bool) or not NUM_CLASSES_RANGE[0] <= int(value) <= NUM_CLASSES_RANGE[1]):
        raise UsageError(f"{flag} must be between {NUM_CLASSES_RANGE[0]} and {NUM_CLASSES_RANGE[1]}, got {value}")
    return None if value is None else int(value)


def infer_num_classes(state: dict[str, torch.Tensor]) -> int:
    """The class count of a state dict: the rows of its last 2-D ``*weight`` (the classifier head)."""
    matrices = [v for k, v in state.items() if v.ndim == 2 and k.endswith("weight")]
    if not matrices:
        raise ModelError("cannot tell the class count from the checkpoint; pass --num-classes")
    return int(matrices[-1].shape[0])



# --------------------------------------------------------------------------- building without memory
@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Move each parameter to the meta device the moment a module registers it.

    For architectures that compute with real tensors while being built (timm ViTs call
    ``.tolist()``), which a ``torch.device("meta")`` block cannot build. Parameters are created
    with ``torch.empty`` (never written), moved before their initialiser runs, and freed.
    """
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def build_on_meta(build: Callable[[], nn.Module], source: str, fix: str | None = None) -> dict[str, TensorLayout] | None:
    """The state-dict layout of ``build()`` obtained without allocating its parameters.

    Tries a ``torch.device("meta")`` block, then meta parameters with real buffers; the CPU
    random state is left untouched either way. Returns ``None`` when neither way builds it
    because the architecture needs real tensors while it is built; the caller then builds it
    for real.

    Raises:
        ModelError: the constructor rejects its arguments (TypeError, ValueError, OverflowError),
            e.g. malformed arch_kwargs from a file: a real build would fail the same way.
    """
    failure: Exception | None = None
    for context in (lambda: torch.device("meta"), _parameters_on_meta):
        try:
            with torch.random.fork_rng(devices=[]), context():
                return layout_of(build().state_dict())
        except RobustDistillError:
            raise
        except Exception as exc:  # noqa: BLE001 - any constructor error: try the next way, then judge it
            failure = exc
    if isinstance(failure, (TypeError, ValueError, OverflowError)):
        raise _build_error(source, failure, fix)
    return None


def _build_error(source: str, exc: BaseException, fix: str | None) -> ModelError:
    return ModelError(f"cannot build the architecture of {source} ({type(exc).__name__}: {first_line(exc)}) - "
                      f"{fix or PLAIN_FIX}")


def build_and_load(
    build: Callable[[], nn.Module], stored: Mapping[str, TensorLayout], fetch: Callable[[], Mapping[str, torch.Tensor]],
    source: str, fix: str | None = None,
) -> nn.Module:
    """Build ``build()`` and load the file's tensors into it, checking the fit before allocating anything real.

    Args:
        build: constructor of the untrained network.
        stored: layout of the file's tensors (from the safetensors header, or of loaded tensors).
        fetch: returns the file's tensors (called only once the layout fits).
        source: the file, for messages.
        fix: advice for a mismatch (see :func:`plan_load`).

    Raises:
        ModelError: the architecture cannot be built, or the tensors do not fit it.
    """
    expected = build_on_meta(build, source, fix)
    mapping = plan_load(expected, stored, source, fix) if expected is not None else None
    try:
        net = build()
    except RobustDistillError:
        raise
    except Exception as exc:  # noqa: BLE001 - constructors raise anything on malformed arguments
        raise _build_error(source, exc, fix) from None
    if mapping is None:
        mapping = plan_load(layout_of(net.state_dict()), stored, source, fix)
    load_planned(net, fetch(), mapping)
    return net


# --------------------------------------------------------------------------- robustdistill safetensors
def save_classifier(
    model: Classifier, path: str | Path, *, config: Mapping[str, Any] | None = None, extra: Mapping[str, str] | None = None
) -> Path:
    """Write ``model`` as a self-describing safetensors file (atomically).

    Metadata (all str -> str, JSON for structures): ``robustdistill.spec``, ``robustdistill.config``,
    ``robustdistill.version``, ``format=pt``, plus ``extra`` (e.g. teacher id and sha256).
    """
    from safetensors.torch import save

    from .. import __version__

    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    # safetensors refuses tensors that share storage (tied weights): give each its own copy.
    seen: dict[int, str] = {}
    for key, tensor in state.items():
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen and tensor.numel() > 0:
            state[key] = tensor.clone()
        seen[ptr] = key
    metadata = {"format": "pt", META_SPEC: model.spec.to_json(), META_VERSION: __version__}
    if config is not None:
        metadata[META_CONFIG] = json.dumps(config, sort_keys=True, default=str)
    for key, value in (extra or {}).items():
        metadata[key if key.startswith("robustdistill.") else f"robustdistill.{key}"] = str(value)
    atomic_write_bytes(path, save(state, metadata=metadata))
    return path


def read_spec(path: str | Path) -> tuple[ModelSpec, dict[str, TensorLayout], dict[str, str]]:
    """The checked :class:`ModelSpec`, tensor layouts and metadata of a robustdistill safetensors file."""
    path = Path(path)
    layout, metadata = read_safetensors_header(path)
    if META_SPEC not in metadata:
        raise CheckpointError(
            f"{str(path)!r} was not written by robustdistill (no {META_SPEC} metadata); "
            "pass --arch ARCH (and --num-classes) to load it as plain weights"
        )
    spec = ModelSpec.from_json(metadata[META_SPEC], origin=f"the {META_SPEC} metadata of {str(path)!r}")
    return spec, layout, metadata


def load_classifier(path: str | Path) -> Classifier:
    """Rebuild a :class:`Classifier` from a safetensors file written by :func:`save_classifier`.

    The spec is checked (types, ranges) and the architecture it names is compared with the
    file's tensors on the meta device before any real memory is allocated.
    """
    spec, layout, _ = read_spec(path)

    fix = f"the file's {META_SPEC} does not describe its tensors (damaged or edited?); save the model again"

    def build() -> Classifier:
        try:
            net = build_arch(spec.arch, spec.num_classes, spec.input_size[0], **spec.arch_kwargs)
        except ModelError as exc:  # e.g. an unknown or absurd architecture name in the metadata
            raise ModelError(f"{str(path)!r} names an architecture robustdistill cannot build: {exc}") from None
        return Classifier(net, spec)

    model = build_and_load(build, layout, lambda: read_safetensors(path)[0], str(path), fix)
    return model  # type: ignore[return-value]


def recorded_config_of(path: str | Path) -> dict[str, Any]:
    """The run config stored in a robustdistill safetensors file; ``{}`` for other safetensors files.

    A missing or unreadable file raises the loader's :class:`CheckpointError` ("does not exist"), so
    a mistyped path is named as such before anything asks for what the file would have recorded.
    """
    path = Path(path)
    metadata = read_metadata(path)
    if META_CONFIG not in metadata:
        return {}
    config = parse_json_metadata(metadata[META_CONFIG], what=f"the {META_CONFIG} metadata of {str(path)!r}", fix=CONFIG_FIX)
    if not isinstance(config, dict):
        raise CheckpointError(f"the {META_CONFIG} metadata of {str(path)!r} is not a JSON object; {CONFIG_FIX}")
    return config


def recorded_eps_of(path: str | Path) -> float | None:
    """The L-inf budget a robustdistill file was trained at: its spec's ``eps``, else the
    ``robustdistill.eps`` metadata, else the config's ``eps`` (older files store text such as
    ``"0.2"`` or ``"8/255"``); ``None`` when the file records none. A missing file raises, as in
    :func:`recorded_config_of`."""
    path = Path(path)
    metadata = read_metadata(path)
    if META_SPEC in metadata:
        spec = ModelSpec.from_json(metadata[META_SPEC], origin=f"the {META_SPEC} metadata of {str(path)!r}")
        if spec.eps is not None:
            return spec.eps
    value = metadata.get(META_EPS)
    if value is None:
        value = recorded_config_of(path).get("eps")
    if value is None:
        return None
    try:
        return parse_fraction(value if isinstance(value, (int, float, str)) and not isinstance(value, bool) else "?")
    except UsageError:
        raise CheckpointError(
            f"the eps recorded in {str(path)!r} ({str(value)[:40]!r}) is not a budget in [0, 1]; pass --eps explicitly"
        ) from None
