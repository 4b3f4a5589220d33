"""timm models: local weights only (safetensors or weights-only torch files), normalisation inside."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from robustdistill.errors import CheckpointError, ModelError
from robustdistill.models import Classifier, DataHint, build_student, load_classifier, load_model, save_classifier

HINT = DataHint(10, (3, 32, 32), tuple(f"class{i}" for i in range(10)), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@pytest.fixture(scope="module")
def timm_net() -> torch.nn.Module:
    import timm

    torch.manual_seed(0)
    net = timm.create_model("resnet18", num_classes=10)
    # Non-trivial BatchNorm statistics, so buffers matter in the comparison.
    net.train()
    with torch.no_grad():
        net(torch.randn(8, 3, 32, 32))
    return net.eval()


@pytest.fixture(scope="module")
def timm_weights(tmp_path_factory, timm_net) -> dict[str, Path]:
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("timm")
    state = {k: v.contiguous() for k, v in timm_net.state_dict().items()}
    save_file(state, str(root / "resnet18.safetensors"))
    torch.save(state, root / "resnet18.pt")
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}, "epoch": 7}, root / "nested.pth")
    return {"safetensors": root / "resnet18.safetensors", "pt": root / "resnet18.pt", "nested": root / "nested.pth"}


@pytest.mark.parametrize("fmt", ["safetensors", "pt", "nested"])
def test_timm_with_local_weights(timm_net, timm_weights, fmt: str) -> None:
    model = load_model("timm:resnet18", weights=timm_weights[fmt], hint=HINT)
    assert isinstance(model, Classifier) and not model.training
    spec = model.spec
    assert spec.arch == "timm:resnet18" and spec.num_classes == 10 and spec.input_size == (3, 32, 32)
    # timm's own normalisation (ImageNet statistics), not the dataset's.
    assert spec.mean == pytest.approx(timm_net.pretrained_cfg["mean"]) and spec.std == pytest.approx(timm_net.pretrained_cfg["std"])
    assert spec.class_names == HINT.class_names
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), timm_net((x - mean) / std), rtol=0, atol=1e-5)


def test_timm_round_trip_through_safetensors(tmp_path: Path, timm_weights) -> None:
    model = load_model("timm:resnet18", weights=timm_weights["safetensors"], hint=HINT)
    path = save_classifier(model, tmp_path / "timm_student.safetensors", config={"dataset": "cifar10"})
    again = load_classifier(path)
    assert again.spec == model.spec
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again.eval()(x), model(x))


def test_timm_class_count_mismatch(timm_weights) -> None:
    with pytest.raises(ModelError, match="class-count mismatch"):
        load_model("timm:resnet18", weights=timm_weights["pt"], num_classes=100)


def test_timm_student() -> None:
    student = build_student("timm:resnet18", HINT)
    assert student.spec.arch == "timm:resnet18" and student.num_classes == 10
    assert student.spec.mean == HINT.mean and student.spec.std == HINT.std  # a student normalises with the data's stats
    assert type(student.net).__module__.startswith("timm.")
    gray = build_student("timm:resnet18", DataHint(3, (1, 16, 16)))
    assert gray(torch.rand(2, 1, 16, 16)).shape == (2, 3)


def test_timm_unknown_name() -> None:
    with pytest.raises(ModelError, match="timm has no architecture 'resnet18x'"):
        load_model("timm:resnet18x", weights="unused.pt", hint=HINT)


@pytest.fixture()
def network_log(monkeypatch) -> list[tuple]:
    """Block the network like ``no_network``, and record every attempt to use it - and every sleep.

    huggingface_hub waits between retries with ``time.sleep`` (http_backoff), which is what made an
    offline failure take ~45 s; recording sleeps proves the failure never waits, without a clock.
    """
    import socket

    log: list[tuple] = []

    def refuse(kind: str):
        def call(*args, **_kwargs):
            log.append((kind, *(a for a in args if isinstance(a, (str, int)))))
            raise OSError("network disabled in tests")
        return call

    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(time, "sleep", lambda seconds: log.append(("sleep", seconds)))
    return log


def test_timm_without_weights_offline_fails_fast(network_log) -> None:
    with pytest.raises(CheckpointError) as exc:
        load_model("timm:resnet18", hint=HINT)
    text = str(exc.value)
    assert "\n" not in text and "--weights" in text
    # HF_HUB_OFFLINE (set for the tests): only the local cache is looked at - no lookup, no connection, no wait.
    assert network_log == []


def test_timm_without_weights_offline_fails_fast_even_outside_hf_offline_mode(network_log, monkeypatch) -> None:
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(CheckpointError, match="--weights"):
        load_model("timm:resnet18", hint=HINT)
    # One name lookup (is the hub reachable?), then no connection attempt and no retry wait.
    assert network_log == [("getaddrinfo", "huggingface.co", 443)]
    assert hf_constants.HF_HUB_OFFLINE is False  # restored


def test_timm_malicious_weights_refused(tmp_path: Path, timm_net, helpers, monkeypatch) -> None:
    marker = tmp_path / "PAYLOAD_RAN"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": timm_net.state_dict(), "hook": helpers.Marker(str(marker))}, path)
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    with pytest.raises(CheckpointError, match="beyond tensors"):
        load_model("timm:resnet18", weights=path, hint=HINT)
    assert not marker.exists()
    # timm's own loader would have run it; prove the file is a live payload.
    import timm

    timm.models.load_checkpoint(timm.create_model("resnet18", num_classes=10), str(path))  # weights_only=False inside
    assert marker.exists()


def test_timm_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model("timm:resnet18", weights=tmp_path / "nope.safetensors", hint=HINT)
