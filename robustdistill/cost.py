"""What a model costs to run: parameters, MACs per image, file size and measured latency.

MACs come from ``torch.utils.flop_counter.FlopCounterMode`` (no extra dependency). Its formulas
count 2 FLOPs per multiply-accumulate for convolutions and matrix products (``aten.convolution``:
``2 * N * prod(out spatial) * prod(kernel) * C_out * C_in/groups``; ``aten.mm/addmm/bmm``:
``2 * m * n * k``) and ignore biases, BatchNorm, activations, pooling and the input
normalisation, so ``macs_per_image = flops / 2`` is the usual conv + linear MAC count
(``tests/test_cost.py`` checks it against a hand count).

Latency is wall-clock time of one forward pass (``time.perf_counter``, with a device synchronise
on accelerators) of a random [0, 1] batch under ``torch.no_grad``: ``warmup`` untimed passes, then
timed passes until both ``min_repeats`` and ``min_seconds`` are reached (at most ``max_repeats``);
the median and the 95th percentile (linear interpolation) are reported with the repeat count and
the intra-op thread count, which is set for the measurement and restored afterwards.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

MAC_METHOD = ("torch.utils.flop_counter.FlopCounterMode on one image: convolution and matmul FLOPs / 2 "
              "(biases, BatchNorm, activations, pooling and normalisation not counted)")


@dataclass(frozen=True)
class Latency:
    """Timing of one forward pass at one batch size on one device.

    Attributes:
        device: ``cpu``, ``cuda:0``, ``mps`` ...
        batch_size: images per forward pass.
        threads: torch's intra-op threads during the measurement (CPU); ``None`` on accelerators.
        median_ms, p95_ms: median and 95th percentile of the timed passes, in milliseconds.
        repeats: timed passes; warmup: untimed passes before them.
    """

    device: str
    batch_size: int
    threads: int | None
    median_ms: float
    p95_ms: float
    repeats: int
    warmup: int

    @property
    def per_image_ms(self) -> float:
        return self.median_ms / self.batch_size

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "batch_size": self.batch_size, "threads": self.threads,
                "median_ms": self.median_ms, "p95_ms": self.p95_ms, "per_image_ms": self.per_image_ms,
                "repeats": self.repeats, "warmup": self.warmup}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Latency":
        return cls(str(data["device"]), int(data["batch_size"]), data.get("threads"), float(data["median_ms"]),
                   float(data["p95_ms"]), int(data["repeats"]), int(data["warmup"]))


@dataclass(frozen=True)
class CostProfile:
    """Parameters, MACs per image, file size and latencies of one model (schema ``robustdistill/cost@1``).

    Attributes:
        engine: what ran the timed passes: ``pytorch``, ``onnxruntime`` or ``torchscript``.
        parameters: parameter count (``None`` if unknown).
        macs_per_image: multiply-accumulates of one forward pass of one image (see :data:`MAC_METHOD`).
        input_size: ``(C, H, W)`` of the timed inputs.
        file_bytes: size of the model file, when there is one.
        latency: one :class:`Latency` per (device, batch size) measured.
    """

    engine: str
    parameters: int | None
    macs_per_image: int | None
    input_size: tuple[int, int, int]
    file_bytes: int | None = None
    latency: tuple[Latency, ...] = field(default_factory=tuple)

    def latency_at(self, batch_size: int, device_type: str = "cpu") -> Latency | None:
        """The measurement at ``batch_size`` on a device of type ``device_type`` (``cpu``, ``cuda``, ``mps``)."""
        for item in self.latency:
            if item.batch_size == batch_size and torch.device(item.device).type == device_type:
                return item
        return None

    def summary(self) -> str:
        """One plain line: counts, size and the CPU latencies (for logs and the CLI)."""
        parts = [f"{self.parameters:,} parameters" if self.parameters is not None else "parameters unknown",
                 f"{self.macs_per_image / 1e6:.3g} M MACs/image" if self.macs_per_image is not None else "MACs unknown"]
        if self.file_bytes is not None:
            parts.append(f"{self.file_bytes / 1e6:.3g} MB file")
        parts += [f"{item.device} batch {item.batch_size}: {item.median_ms:.3g} ms median, {item.p95_ms:.3g} ms p95"
                  + (f" ({item.threads} thread{'s' if item.threads != 1 else ''})" if item.threads else "")
                  for item in self.latency]
        return f"{self.engine}: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "robustdistill/cost@1", "engine": self.engine, "parameters": self.parameters,
                "macs_per_image": self.macs_per_image, "mac_method": MAC_METHOD, "input_size": list(self.input_size),
                "file_bytes": self.file_bytes, "latency": [item.to_dict() for item in self.latency]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CostProfile":
        return cls(str(data["engine"]), data.get("parameters"), data.get("macs_per_image"),
                   tuple(int(v) for v in data["input_size"]), data.get("file_bytes"),  # type: ignore[arg-type]
                   tuple(Latency.from_dict(item) for item in data.get("latency", [])))


# --------------------------------------------------------------------------- counting
def count_flops(model: nn.Module, input_size: Sequence[int]) -> int:
    """FLOPs of one forward pass of one zero image, as ``FlopCounterMode`` counts them (2 per MAC).

    The pass runs in eval mode on a private RNG stream: counting never touches BatchNorm
    statistics or the caller's random state (a model about to be trained stays as it was).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from .modes import eval_mode
    from .rng import forked_rng

    device = _device_of(model)
    counter = FlopCounterMode(display=False)
    with eval_mode(model), forked_rng(device), counter, torch.no_grad():
        model(torch.zeros(1, *input_size, device=device))
    return int(counter.get_total_flops())


def count_macs(model: nn.Module, input_size: Sequence[int]) -> int:
    """Multiply-accumulates per image of convolutions and matrix products (see :data:`MAC_METHOD`)."""
    return count_flops(model, input_size) // 2


def _device_of(model: nn.Module) -> torch.device:
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


# --------------------------------------------------------------------------- timing
@contextlib.contextmanager
def intra_op_threads(model: nn.Module, threads: int | None) -> Iterator[int]:
    """Set torch's intra-op threads (and an exported model's runtime threads) for a block, then restore."""
    from .exported import ExportedModel

    old = torch.get_num_threads()
    wanted = threads or old
    torch.set_num_threads(wanted)
    if isinstance(model, ExportedModel):
        model.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        torch.set_num_threads(old)
        if isinstance(model, ExportedModel):
            model.set_num_threads(old)


def _synchronize(device: torch.device) -> None:
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


def measure_latency(
    model: nn.Module,
    input_size: Sequence[int],
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
    threads: int | None = None,
    warmup: int = 3,
    min_repeats: int = 10,
    min_seconds: float = 1.0,
    max_repeats: int = 200,
    seed: int = 0,
) -> Latency:
    """Median and p95 wall time of ``model`` on a random batch (see the module docstring).

    The model must already be on ``device`` and in eval mode. ``threads`` (default: torch's
    current setting) applies on the CPU only.
    """
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(batch_size, *input_size, generator=generator).to(device)
    times: list[float] = []
    with intra_op_threads(model, threads if device.type == "cpu" else None) as used, torch.no_grad():
        for _ in range(warmup):
            model(x)
        _synchronize(device)
        started = time.perf_counter()
        while len(times) < max_repeats and (len(times) < min_repeats or time.perf_counter() - started < min_seconds):
            t0 = time.perf_counter()
            model(x)
            _synchronize(device)
            times.append(time.perf_counter() - t0)
    ms = np.asarray(times) * 1000.0
    return Latency(str(device), batch_size, used if device.type == "cpu" else None, float(np.median(ms)),
                   float(np.percentile(ms, 95)), len(times), warmup)


def accelerator() -> torch.device | None:
    """The accelerator torch sees (CUDA, MPS, XPU, ...), or ``None`` on a CPU-only machine."""
    if not torch.accelerator.is_available():
        return None
    return torch.accelerator.current_accelerator()


def cost_profile(
    model: nn.Module,
    *,
    input_size: Sequence[int] | None = None,
    file: str | Path | None = None,
    batch_sizes: Sequence[int] = (1, 64),
    threads: int | None = None,
    use_accelerator: bool = True,
    parameters: int | None = None,
    macs_per_image: int | None = None,
    **timing: Any,
) -> CostProfile:
    """Count and time ``model``: CPU latency at each of ``batch_sizes``, and on the accelerator if present.

    Args:
        model: a :class:`~robustdistill.models.Classifier` (MACs counted here) or an
            :class:`~robustdistill.exported.ExportedModel` (CPU only; parameters and MACs taken from
            the source model's numbers recorded at export).
        input_size: ``(C, H, W)``; default ``model.spec.input_size``.
        file: the model's file, for its size.
        threads: CPU intra-op threads for the measurement (default: torch's current setting).
        use_accelerator: also time on the accelerator, when there is one (PyTorch models only).
        parameters, macs_per_image: override the counts.
        **timing: passed to :func:`measure_latency` (``warmup``, ``min_repeats``, ``min_seconds``, ...).
    """
    from .exported import ExportedModel

    size = tuple(input_size or model.spec.input_size)  # type: ignore[union-attr]
    exported = isinstance(model, ExportedModel)
    if exported:
        recorded = model.info.get("source", {})
        parameters = parameters if parameters is not None else recorded.get("parameters")
        macs_per_image = macs_per_image if macs_per_image is not None else recorded.get("macs_per_image")
    else:
        parameters = parameters if parameters is not None else sum(p.numel() for p in model.parameters())
        macs_per_image = macs_per_image if macs_per_image is not None else count_macs(model, size)
    devices = [torch.device("cpu")]
    target = accelerator() if use_accelerator and not exported else None
    if target is not None:
        devices.append(target)
    latency = _time_on(model, size, devices, batch_sizes, threads, timing)
    engine = model.format if exported else "pytorch"  # type: ignore[union-attr]
    engine = {"onnx": "onnxruntime"}.get(engine, engine)
    file_bytes = Path(file).stat().st_size if file is not None and Path(file).is_file() else None
    return CostProfile(engine, parameters, macs_per_image, size, file_bytes, tuple(latency))  # type: ignore[arg-type]


def _time_on(model: nn.Module, size: tuple[int, ...], devices: list[torch.device], batch_sizes: Sequence[int],
             threads: int | None, timing: dict[str, Any]) -> list[Latency]:
    home = _device_of(model)
    was_training = model.training
    model.eval()
    out = []
    try:
        for device in devices:
            model.to(device)
            out += [measure_latency(model, size, batch_size=b, device=device, threads=threads, **timing) for b in batch_sizes]
    finally:
        model.to(home)
        model.train(was_training)
    return out


# --------------------------------------------------------------------------- comparison sentence
def _ratio_text(ratio: float) -> str:
    shown = f"{ratio:.0f}" if ratio >= 10 else f"{ratio:.1f}".removesuffix(".0")
    return shown


def retention_sentence(
    teacher: CostProfile,
    student: CostProfile,
    teacher_value: float,
    student_value: float,
    *,
    metric: str = "worst-class AA",
    latency_batch: int | None = 1,
) -> str:
    """'the student keeps 78 % of the teacher's worst-class AA at 1/4 of its MACs' (+ CPU time).

    ``teacher_value`` and ``student_value`` are the robustness numbers in the same unit (fractions
    or percentages). With ``latency_batch``, the CPU latency ratio at that batch size is added
    when both profiles have it at the same thread count.
    """
    if teacher.macs_per_image and student.macs_per_image:
        cost = _cost_clause(teacher.macs_per_image / student.macs_per_image, "MACs")
    else:
        cost = "at an unknown MAC count"
    if teacher_value > 0:
        text = f"the student keeps {100 * student_value / teacher_value:.0f} % of the teacher's {metric} {cost}"
    else:
        text = f"the teacher's {metric} is 0, so there is no robustness to keep; the student runs {cost}"
    if latency_batch is not None:
        t, s = teacher.latency_at(latency_batch), student.latency_at(latency_batch)
        if t is not None and s is not None and t.threads == s.threads and s.median_ms > 0:
            threads = f"{t.threads} thread{'s' if t.threads != 1 else ''}"
            text += (f" and {_cost_clause(t.median_ms / s.median_ms, 'CPU latency').removeprefix('at ')} "
                     f"(batch {latency_batch}, {threads})")
    return text


def _cost_clause(ratio: float, what: str) -> str:
    if ratio >= 1:
        return f"at 1/{_ratio_text(ratio)} of its {what}"
    return f"at {_ratio_text(1 / ratio)}x its {what}"
