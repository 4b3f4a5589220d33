"""Checkpoints and model identifiers, on a real third-party checkpoint (pyautoattack's ResNet-18)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
import torch

from robustdistill.errors import CheckpointError, ModelError, UsageError
from robustdistill.models import (
    Classifier, DataHint, ModelSpec, build_student, load_classifier, load_model, resolve_model, save_classifier,
)
from robustdistill.models.checkpoint import META_CONFIG, META_SPEC
from robustdistill.models.weightsio import read_metadata, read_state_dict

X = torch.Generator().manual_seed(0)
INPUTS = torch.rand(4, 3, 32, 32, generator=X)


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


@pytest.fixture(scope="module")
def reference_logits(reference_resnet) -> torch.Tensor:
    with torch.no_grad():
        return reference_resnet(INPUTS)


def assert_same_logits(model: Classifier, reference_logits: torch.Tensor) -> None:
    assert isinstance(model, Classifier)
    assert not model.training and not any(m.training for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(INPUTS), reference_logits)


# --------------------------------------------------------------------------- formats that load
def test_raw_legacy_checkpoint_loads(model_test_pt: Path, reference_logits) -> None:
    model = load_model(str(model_test_pt), arch="resnet18")
    assert model.spec.arch == "resnet18" and model.num_classes == 10 and model.spec.mean is None
    assert_same_logits(model, reference_logits)


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda sd: sd, id="raw-zip"),
        pytest.param(lambda sd: {"state_dict": sd}, id="state_dict"),
        pytest.param(lambda sd: {"model": sd}, id="model"),
        pytest.param(lambda sd: {"net": sd}, id="net"),
        pytest.param(lambda sd: {"module." + k: v for k, v in sd.items()}, id="module-prefix"),
        pytest.param(lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 3}, id="nested-module-epoch"),
        pytest.param(lambda sd: {"net": {"module." + k: v for k, v in sd.items()}, "optimizer": {"lr": 0.1}}, id="ard-style"),
    ],
)
def test_wrapped_checkpoints_load(tmp_path: Path, model_test_state, reference_logits, wrap) -> None:
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(model_test_state), path)
    assert_same_logits(load_model(str(path), arch="resnet18"), reference_logits)


def test_plain_safetensors_with_arch(tmp_path: Path, model_test_state, reference_logits) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in model_test_state.items()}, str(path))
    with pytest.raises(CheckpointError, match="--arch") as exc:
        load_model(str(path))
    one_line(exc)
    assert_same_logits(load_model(str(path), arch="resnet18"), reference_logits)


# --------------------------------------------------------------------------- refusals
@pytest.fixture(scope="module")
def zip_bytes(tmp_path_factory, model_test_state) -> bytes:
    path = tmp_path_factory.mktemp("zip") / "full.pt"
    torch.save(model_test_state, path)
    return path.read_bytes()


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.99])
def test_truncated_zip_checkpoint(tmp_path: Path, zip_bytes: bytes, fraction: float) -> None:
    path = tmp_path / "cut.pt"
    path.write_bytes(zip_bytes[: int(len(zip_bytes) * fraction)])
    with pytest.raises(CheckpointError, match="truncated") as exc:
        load_model(str(path), arch="resnet18")
    one_line(exc)


def test_truncated_legacy_checkpoint(tmp_path: Path, model_test_pt: Path) -> None:
    data = model_test_pt.read_bytes()
    path = tmp_path / "half.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as exc:
        load_model(str(path), arch="resnet18")
    one_line(exc)


def test_truncated_safetensors(tmp_path: Path) -> None:
    model = build_student("tiny_cnn", DataHint(10, (1, 8, 8)))
    full = save_classifier(model, tmp_path / "full.safetensors")
    data = full.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    for kwargs in ({}, {"arch": "tiny_cnn"}):
        with pytest.raises(CheckpointError, match="truncated|not a readable safetensors") as exc:
            load_model(str(cut), **kwargs)
        one_line(exc)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_html_page_refused(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"model{suffix}"
    path.write_text("<!DOCTYPE html>\n<html><head><title>Google Drive - Virus scan warning</title></head></html>")
    with pytest.raises(CheckpointError, match="HTML") as exc:
        load_model(str(path), arch="resnet18")
    one_line(exc)


def test_empty_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    path.touch()
    with pytest.raises(CheckpointError, match="empty") as exc:
        load_model(str(path), arch="resnet18")
    one_line(exc)


def test_random_bytes_refused(tmp_path: Path) -> None:
    import numpy as np

    path = tmp_path / "noise.pt"
    for seed in range(4):  # the legacy unpickler fails differently on different garbage
        path.write_bytes(np.random.default_rng(seed).bytes(4096))
        with pytest.raises(CheckpointError, match="not a PyTorch checkpoint") as exc:
            load_model(str(path), arch="resnet18")
        assert "beyond tensors" not in one_line(exc)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist") as exc:
        load_model(str(tmp_path / "nope.pt"), arch="resnet18")
    one_line(exc)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(str(tmp_path / "nope.safetensors"))
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(CheckpointError, match="directory"):
        load_model(str(tmp_path / "dir.pt"), arch="resnet18")


class _CustomObject:
    pass


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(lambda: argparse.Namespace(lr=0.1), id="namespace"),
        pytest.param(lambda: _CustomObject(), id="custom-class"),
    ],
)
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_non_tensor_pickles_refused(tmp_path: Path, model_test_state, payload, legacy: bool) -> None:
    path = tmp_path / "with_objects.pt"
    torch.save({"state_dict": model_test_state, "args": payload()}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError, match="beyond tensors") as exc:
        load_model(str(path), arch="resnet18")
    one_line(exc)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_malicious_pickle_never_executes(tmp_path: Path, monkeypatch, helpers, legacy: bool) -> None:
    marker = tmp_path / "PAYLOAD_RAN"
    path = tmp_path / "evil.pt"
    torch.save({"conv.weight": torch.zeros(1), "x": helpers.Marker(str(marker))}, path, _use_new_zipfile_serialization=not legacy)
    # Sanity: the payload is real (an unsafe load does run it).
    torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    # Even when the environment asks torch for unsafe loads, our explicit weights_only=True wins.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    for call in (lambda: load_model(str(path), arch="resnet18"), lambda: read_state_dict(path)):
        with pytest.raises(CheckpointError, match="beyond tensors") as exc:
            call()
        assert "shutil.copyfile" in one_line(exc)
        assert not marker.exists()


def test_class_count_mismatch(model_test_pt: Path) -> None:
    with pytest.raises(ModelError) as exc:
        load_model(str(model_test_pt), arch="resnet18", num_classes=100)
    text = one_line(exc)
    assert "class" in text and "10" in text and "100" in text


def test_channel_mismatch(model_test_pt: Path) -> None:
    with pytest.raises(ModelError) as exc:
        load_model(str(model_test_pt), arch="resnet18", hint=DataHint(10, (1, 8, 8)))
    text = one_line(exc)
    assert "3-channel" in text and "channel mismatch" in text


@pytest.mark.parametrize("arch", ["mobilenetv2", "preact_resnet18", "resnet34", "wrn-16-1"])
def test_wrong_arch(model_test_pt: Path, arch: str) -> None:
    with pytest.raises(ModelError) as exc:
        load_model(str(model_test_pt), arch=arch)
    text = one_line(exc)
    assert "--arch" in text and "class-count" not in text


def test_unknown_arch_lists_valid(model_test_pt: Path) -> None:
    with pytest.raises(ModelError) as exc:
        load_model(str(model_test_pt), arch="resnet19")
    text = one_line(exc)
    assert "did you mean 'resnet18'" in text and "tiny_cnn" in text and "wrn-D-K" in text


def test_plain_checkpoint_needs_arch(model_test_pt: Path) -> None:
    with pytest.raises(UsageError, match="--arch"):
        load_model(str(model_test_pt))


def test_architecture_is_not_weights() -> None:
    with pytest.raises(ModelError, match="not trained weights"):
        load_model("resnet18")


# --------------------------------------------------------------------------- self-describing safetensors
def test_safetensors_round_trip_keeps_spec_and_config(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)  # not needed for our own files
    torch.manual_seed(0)
    names = tuple("abcdefg")
    hint = DataHint(7, (3, 16, 16), names, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    model = build_student("small_cnn", hint)
    # Give BatchNorm non-trivial statistics so buffers are part of the check.
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, 16, 16))
    model.eval()
    config = {"dataset": "imagefolder", "eps": "8/255", "epochs": 3, "nested": {"a": [1, 2]}}
    path = save_classifier(model, tmp_path / "student.safetensors", config=config, extra={"teacher": "robustbench:X"})
    meta = read_metadata(path)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    assert json.loads(meta[META_CONFIG]) == config
    assert meta["robustdistill.teacher"] == "robustbench:X"
    spec = ModelSpec.from_json(meta[META_SPEC])
    assert spec == model.spec
    assert (spec.arch, spec.num_classes, spec.input_size, spec.mean, spec.std, spec.class_names) == (
        "small_cnn", 7, (3, 16, 16), (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), names)

    loaded = load_model(str(path))  # from the file alone: no arch, no classes, no hint
    assert loaded.spec == model.spec and not loaded.training
    x = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert torch.equal(load_classifier(path).normalize.mean, model.normalize.mean)
    # No stray temp files from the atomic write.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.safetensors"]


def test_robustdistill_state_dict_as_pt_keeps_normalisation(tmp_path: Path) -> None:
    hint = DataHint(10, (1, 8, 8), None, (0.3,), (0.4,))
    model = build_student("tiny_cnn", hint).eval()
    torch.save(model.state_dict(), tmp_path / "student.pt")
    loaded = load_model(str(tmp_path / "student.pt"), arch="tiny_cnn", hint=hint)
    assert loaded.spec.mean == pytest.approx((0.3,)) and loaded.spec.std == pytest.approx((0.4,))
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_hint_class_names_attached(model_test_pt: Path) -> None:
    names = tuple(f"c{i}" for i in range(10))
    model = load_model(str(model_test_pt), arch="resnet18", hint=DataHint(10, (3, 32, 32), names))
    assert model.spec.class_names == names


# --------------------------------------------------------------------------- identifiers
@pytest.mark.parametrize(
    ("identifier", "source", "name"),
    [
        ("bundled:digits", "bundled", "digits"),
        ("robustbench:Sehwag2021Proxy_R18", "robustbench", "Sehwag2021Proxy_R18"),
        ("robustbench:Foo@cifar100/Linf", "robustbench", "Foo@cifar100/Linf"),
        ("timm:resnet18", "timm", "resnet18"),
        ("runs/a/student.safetensors", "safetensors", "runs/a/student.safetensors"),
        ("STUDENT.SAFETENSORS", "safetensors", "STUDENT.SAFETENSORS"),
        ("weights/model.pt", "checkpoint", "weights/model.pt"),
        ("weights/model.pth", "checkpoint", "weights/model.pth"),
        ("weights/model.ckpt", "checkpoint", "weights/model.ckpt"),
        ("  resnet18 ", "arch", "resnet18"),
        ("wrn-34-10", "arch", "wrn-34-10"),
        ("tiny_cnn", "arch", "tiny_cnn"),
    ],
)
def test_resolve_model(identifier: str, source: str, name: str) -> None:
    ref = resolve_model(identifier)
    assert (ref.source, ref.name) == (source, name)


def test_resolve_model_existing_file_without_suffix(tmp_path: Path) -> None:
    path = tmp_path / "weights"
    path.write_bytes(b"x")
    assert resolve_model(str(path)).source == "checkpoint"


@pytest.mark.parametrize("identifier", ["resnet-18", "nonexistent_model", "robust:Foo"])
def test_resolve_model_unknown_lists_valid(identifier: str) -> None:
    with pytest.raises(ModelError) as exc:
        resolve_model(identifier)
    text = one_line(exc)
    for valid in ("robustbench:NAME", "timm:NAME", "resnet18", "mobilenetv2", "wrn-D-K"):
        assert valid in text


def test_resolve_model_empty() -> None:
    with pytest.raises(ModelError, match="empty"):
        resolve_model("  ")


def test_bundled_unknown_lists_available() -> None:
    with pytest.raises(ModelError, match="no bundled model 'nope'"):
        load_model("bundled:nope")


def test_build_student_rejects_files_and_zoo_ids(tmp_path: Path) -> None:
    hint = DataHint(10, (3, 32, 32))
    for bad in ("robustbench:Sehwag2021Proxy_R18", str(tmp_path / "x.safetensors")):
        with pytest.raises(ModelError, match="architecture name"):
            build_student(bad, hint)
    student = build_student("resnet18", DataHint(3, (1, 8, 8), ("a", "b", "c"), (0.5,), (0.25,)))
    assert student(torch.rand(2, 1, 8, 8)).shape == (2, 3)
    assert student.spec.class_names == ("a", "b", "c")


def test_classifier_normalises_inside() -> None:
    hint = DataHint(10, (3, 8, 8), None, (0.1, 0.2, 0.3), (0.5, 0.6, 0.7))
    model = build_student("tiny_cnn", hint).eval()
    x = torch.rand(2, 3, 8, 8)
    mean = torch.tensor(hint.mean).view(1, 3, 1, 1)
    std = torch.tensor(hint.std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net((x - mean) / std), rtol=0, atol=1e-6)


def test_env_unchanged_by_loads(model_test_pt: Path) -> None:
    before = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    load_model(str(model_test_pt), arch="resnet18")
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") == before
