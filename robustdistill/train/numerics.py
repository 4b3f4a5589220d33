"""The numeric path of a run, chosen once from the device and the size of the models: autocast,
memory format, intra-op threads, ``torch.compile`` and cuDNN autotuning.

``--amp auto`` (the default) trains in bf16 autocast with ``channels_last`` where that is faster
and as accurate: on CUDA devices with bf16 support, and on CPUs with native bf16 (AVX512-BF16 or
AMX) when the models are large enough that the arithmetic, not per-operation overhead, dominates
a step. Elsewhere it trains in fp32. Evaluation always runs in fp32.

``--threads`` (default: chosen) sets torch's intra-op threads. Tiny models on the CPU run faster
on one thread - a second one adds synchronisation to operations that take microseconds, and
makes a busy machine much slower still - so below the same size threshold one thread is used.

The thresholds come from ``benchmarks/numeric_path.py`` (results in
``benchmarks/results/numeric_path.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


#: Multiply-accumulates per training image (student + teacher forward) from which a CPU run trains in
#: bf16 autocast and with torch's default intra-op threads (benchmarks/results/numeric_path.md). Measured
#: on a 2-core AVX512-BF16 CPU: bf16 makes an RSLAD step 1.3x (1.2 M) to 2.0x (77 M, 1.1 G) faster at
#: every size, but below this a run takes minutes and auto keeps it in exact fp32; a second thread is
#: slower at 1.2 M (0.49x) and 1.27x faster at 4.8 M when the machine is idle, yet two threads ran at
#: 0.2-0.5x of one when another process wanted a core (scaling.md), so auto takes the second thread only
#: where the idle gain is large (1.77x at 77 M).
CPU_LARGE_MACS = 20_000_000


@dataclass(frozen=True)
class NumericPath:
    """How a run computes: what was asked, what is used, and why.

    Attributes:
        amp: autocast used for training: ``none`` or ``bf16``.
        channels_last: the training memory format.
        threads: intra-op threads set for the run (``None``: torch's default left alone).
        compile: student and teacher compiled with ``torch.compile``.
        cudnn_benchmark: cuDNN autotuning switched on (CUDA only).
        reason: one sentence saying why (printed and recorded in report.json).
    """

    amp: str
    channels_last: bool
    threads: int | None
    compile: bool
    cudnn_benchmark: bool
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {"amp": self.amp, "channels_last": self.channels_last, "threads": self.threads, "compile": self.compile,
                "cudnn_benchmark": self.cudnn_benchmark, "reason": self.reason}


def cpu_has_native_bf16() -> bool:
    """Does this CPU compute bf16 natively (AVX512-BF16 or AMX)? Read from /proc/cpuinfo (Linux)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return any(flag in flags for flag in (" avx512_bf16", " amx_bf16"))


def forward_macs(model: nn.Module, input_size: tuple[int, ...]) -> int:
    """Multiply-accumulates of one image through the convolutions and linear layers of ``model``.

    Counted with forward hooks on one zero image (milliseconds; ``cost.count_macs``, which counts
    every matrix product with torch's FlopCounterMode, is exact but costs seconds to set up - too
    much for a decision made at every start). Eval mode and a private RNG leave the model as it was.
    """
    from ..modes import eval_mode
    from ..rng import forked_rng

    total = [0]

    def count(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        if isinstance(module, nn.Linear):
            total[0] += module.in_features * module.out_features * (output.numel() // module.out_features)
        else:  # a convolution: per output element, in_channels / groups x kernel size
            total[0] += output.numel() * (module.in_channels // module.groups) * int(torch.tensor(module.kernel_size).prod())

    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    handles = [m.register_forward_hook(count) for m in layers]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with eval_mode(model), forked_rng(device), torch.no_grad():
            model(torch.zeros(1, *input_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return total[0]


def _bf16_ok(device: torch.device, macs: int) -> tuple[bool, str]:
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ok, "the GPU supports bf16" if ok else "the GPU has no bf16 (fp16 is refused: see --amp)"
    if device.type == "cpu":
        if not cpu_has_native_bf16():
            return False, "this CPU has no native bf16"
        if macs < CPU_LARGE_MACS:
            return False, (f"the models are small ({macs / 1e6:.1f} M MACs per image): a short run, kept in exact fp32; "
                           "--amp bf16 trains faster on this CPU")
        return True, f"this CPU has native bf16 and the models are large ({macs / 1e6:.0f} M MACs per image)"
    return False, f"fp32 on {device.type}"


def _threads(requested: int | None, device: torch.device, macs: int) -> tuple[int | None, str]:
    if requested is not None:
        return requested, f"{requested} intra-op thread{'s' if requested > 1 else ''} (--threads)"
    if device.type == "cpu" and macs < CPU_LARGE_MACS:
        return 1, "1 intra-op thread (a small model: more threads only add overhead)"
    return None, f"torch's default {torch.get_num_threads()} intra-op threads"


def choose_numeric_path(*, amp: str, channels_last: bool | None, threads: int | None, compile: bool,
                        device: torch.device, macs: int) -> NumericPath:
    """Resolve ``--amp auto``, ``--channels-last`` (``None``: with bf16) and ``--threads`` (``None``: chosen)."""
    if amp == "auto":
        use, why = _bf16_ok(device, macs)
        amp_used = "bf16" if use else "none"
    else:
        amp_used, why = amp, f"--amp {amp}"
    layout = channels_last if channels_last is not None else amp_used == "bf16"
    count, thread_why = _threads(threads, device, macs)
    reason = f"{'bf16 autocast' if amp_used == 'bf16' else 'fp32'} ({why}); {thread_why}"
    return NumericPath(amp_used, layout, count, compile, device.type == "cuda", reason)


def apply(path: NumericPath, models: list[nn.Module]) -> None:
    """Set threads and cuDNN autotuning; compile ``models`` in place (``nn.Module.compile``)."""
    if path.threads is not None:
        torch.set_num_threads(path.threads)
    if path.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if path.compile:
        for model in models:
            model.compile()
