"""Cost profile: MACs against hand counts, latency measurements and the teacher-vs-student sentence."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from robustdistill.cost import (
    CostProfile, Latency, cost_profile, count_flops, count_macs, measure_latency, retention_sentence,
)
from robustdistill.models import Classifier, ModelSpec, build_arch, save_classifier


class HandCounted(nn.Module):
    """A conv net small enough to count by hand on a 1x8x8 input (biases are not MACs)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)              # 8x8 out: 64 * 9 * 1 * 4 = 2,304
        self.conv2 = nn.Conv2d(4, 8, 3, stride=2, padding=1)    # 4x4 out: 16 * 9 * 4 * 8 = 4,608
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # 4x4 out: 16 * 9 * 1 * 8 = 1,152
        self.bn = nn.BatchNorm2d(8)
        self.linear = nn.Linear(8 * 4 * 4, 10)                 # 128 * 10 = 1,280

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        out = torch.relu(self.bn(self.depthwise(out)))
        return self.linear(out.flatten(1))


HAND_MACS = 64 * 9 * 1 * 4 + 16 * 9 * 4 * 8 + 16 * 9 * 1 * 8 + 128 * 10  # 9,344


def _classifier(arch: str) -> Classifier:
    spec = ModelSpec(arch=arch, num_classes=10, input_size=(1, 8, 8), mean=(0.3,), std=(0.37,))
    return Classifier(build_arch(arch, 10, 1), spec).eval()


def test_macs_equal_a_hand_count() -> None:
    net = HandCounted().eval()
    assert count_macs(net, (1, 8, 8)) == HAND_MACS == 9_344
    assert count_flops(net, (1, 8, 8)) == 2 * HAND_MACS  # FlopCounterMode counts 2 FLOPs per MAC


@pytest.mark.parametrize(("arch", "width"), [("tiny_cnn", 16), ("small_cnn", 32)])
def test_macs_of_the_digits_networks(arch: str, width: int) -> None:
    """conv(1->w) and conv(w->2w) on 8x8, max-pool, conv(2w->4w) on 4x4, linear(4w->10)."""
    w = width
    hand = 64 * 9 * 1 * w + 64 * 9 * w * 2 * w + 16 * 9 * 2 * w * 4 * w + 4 * w * 10
    assert count_macs(_classifier(arch), (1, 8, 8)) == hand
    assert hand == {"tiny_cnn": 599_680, "small_cnn": 2_379_008}[arch]


def test_latency_fields_and_threads() -> None:
    model = _classifier("tiny_cnn")
    before = torch.get_num_threads()
    latency = measure_latency(model, (1, 8, 8), batch_size=4, threads=1, warmup=2, min_repeats=5, min_seconds=0.0)
    assert torch.get_num_threads() == before  # restored
    assert latency.threads == 1 and latency.device == "cpu" and latency.batch_size == 4
    assert latency.repeats == 5 and latency.warmup == 2
    assert 0 < latency.median_ms <= latency.p95_ms
    assert latency.per_image_ms == pytest.approx(latency.median_ms / 4)


def test_latency_repeats_until_min_seconds() -> None:
    latency = measure_latency(_classifier("tiny_cnn"), (1, 8, 8), batch_size=1, min_repeats=2, min_seconds=0.2, max_repeats=10_000)
    assert latency.repeats > 2 and latency.repeats * latency.median_ms / 1000 > 0.05


def test_cost_profile(tmp_path: Path) -> None:
    model = _classifier("tiny_cnn")
    path = save_classifier(model, tmp_path / "tiny.safetensors")
    profile = cost_profile(model, file=path, batch_sizes=(1, 3), threads=1, use_accelerator=False, min_repeats=3, min_seconds=0.0)
    assert profile.engine == "pytorch" and profile.input_size == (1, 8, 8)
    assert profile.parameters == sum(p.numel() for p in model.parameters())
    assert profile.macs_per_image == 599_680 and profile.file_bytes == path.stat().st_size
    assert [(lat.device, lat.batch_size, lat.threads) for lat in profile.latency] == [("cpu", 1, 1), ("cpu", 3, 1)]
    assert profile.latency_at(3) is profile.latency[1] and profile.latency_at(64) is None
    assert CostProfile.from_dict(profile.to_dict()) == profile
    assert re.match(r"pytorch: 24,058 parameters; 0.6 M MACs/image; [0-9.]+ MB file; cpu batch 1: [0-9.]+ ms median, "
                    r"[0-9.]+ ms p95 \(1 thread\); cpu batch 3: ", profile.summary())
    assert not model.training and next(model.parameters()).device.type == "cpu"


def _profile(macs: int, median_ms: float) -> CostProfile:
    return CostProfile("pytorch", None, macs, (1, 8, 8), None, (Latency("cpu", 1, 1, median_ms, median_ms, 10, 3),))


def test_retention_sentence() -> None:
    teacher, student = _profile(2_379_008, 0.8), _profile(599_680, 0.25)
    assert retention_sentence(teacher, student, 0.200, 0.156, latency_batch=None) == (
        "the student keeps 78 % of the teacher's worst-class AA at 1/4 of its MACs")
    assert retention_sentence(teacher, student, 20.0, 15.6) == (
        "the student keeps 78 % of the teacher's worst-class AA at 1/4 of its MACs and 1/3.2 of its CPU latency (batch 1, 1 thread)")
    assert retention_sentence(student, teacher, 0.5, 0.5, metric="PGD-20 accuracy", latency_batch=None) == (
        "the student keeps 100 % of the teacher's PGD-20 accuracy at 4x its MACs")
    assert retention_sentence(teacher, student, 0.0, 0.1, latency_batch=None).startswith("the teacher's worst-class AA is 0")
