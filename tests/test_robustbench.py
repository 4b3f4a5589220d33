"""RobustBench zoo models through robustbench's real ``load_model``, offline, from a pre-placed cache."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from robustdistill.errors import CheckpointError, ModelError
from robustdistill.models import Classifier, build_arch, load_model
from robustdistill.models.robustbench_zoo import (
    checkpoint_path, import_robustbench, list_robustbench, parse_robustbench_id,
)

NAME = "Sehwag2021Proxy_R18"
INPUTS = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_import_robustbench_aliases_pyautoattack() -> None:
    import pyautoattack
    import pyautoattack.state

    rb = import_robustbench()
    assert rb is sys.modules["robustbench"]
    assert sys.modules["autoattack"] is pyautoattack
    assert sys.modules["autoattack.state"] is pyautoattack.state
    import robustbench.eval  # the module that does `from autoattack.state import EvaluationState`

    assert robustbench.eval.EvaluationState is pyautoattack.state.EvaluationState
    assert import_robustbench() is rb  # idempotent


@pytest.fixture(scope="module")
def robustbench_reference(model_test_state) -> torch.nn.Module:
    """The zoo entry built by robustbench's own constructor, with the checkpoint loaded strictly."""
    import_robustbench()
    from robustbench.model_zoo.architectures.resnet import ResNet18

    net = ResNet18()
    net.load_state_dict(model_test_state, strict=True)
    return net.eval()


def _place(root: Path, obj_or_file, name: str = NAME, dataset: str = "cifar10", threat: str = "Linf") -> Path:
    path = root / dataset / threat / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(obj_or_file, Path):
        shutil.copyfile(obj_or_file, path)
    else:
        torch.save(obj_or_file, path)
    return path


def _check_model(model, reference) -> None:
    assert isinstance(model, Classifier)
    assert not model.training and not any(m.training for m in model.modules())
    assert model.spec.num_classes == 10 and model.spec.input_size == (3, 32, 32)
    assert model.spec.mean is None and model.spec.std is None  # [0, 1] in, no extra normalisation
    assert model.spec.arch == f"robustbench:{NAME}@cifar10/Linf"
    with torch.no_grad():
        assert torch.equal(model(INPUTS), reference(INPUTS))


def test_preplaced_raw_checkpoint(robustbench_cache: Path, robustbench_reference, no_network) -> None:
    model = load_model(f"robustbench:{NAME}", model_dir=robustbench_cache)
    _check_model(model, robustbench_reference)


def test_preplaced_nested_module_checkpoint(tmp_path: Path, model_test_state, robustbench_reference, no_network) -> None:
    _place(tmp_path, {"state_dict": {"module." + k: v for k, v in model_test_state.items()}})
    model = load_model(f"robustbench:{NAME}@cifar10/Linf", model_dir=tmp_path)
    _check_model(model, robustbench_reference)


def test_model_dir_from_environment(robustbench_cache: Path, robustbench_reference, monkeypatch, no_network) -> None:
    monkeypatch.setenv("ROBUSTDISTILL_MODEL_DIR", str(robustbench_cache))
    _check_model(load_model(f"robustbench:{NAME}"), robustbench_reference)


def test_missing_checkpoint_names_the_path(tmp_path: Path, no_network) -> None:
    with pytest.raises(CheckpointError) as exc:
        load_model(f"robustbench:{NAME}", model_dir=tmp_path)
    text = str(exc.value)
    assert "\n" not in text
    expected = tmp_path / "cifar10" / "Linf" / f"{NAME}.pt"
    assert str(expected) in text and "place its checkpoint" in text
    assert not expected.exists()  # nothing half-downloaded left behind


def test_html_at_cache_path_refused(tmp_path: Path, no_network) -> None:
    path = tmp_path / "cifar10" / "Linf" / f"{NAME}.pt"
    path.parent.mkdir(parents=True)
    path.write_text("<html><head><title>Google Drive</title></head><body>Quota exceeded</body></html>")
    with pytest.raises(CheckpointError, match="HTML page") as exc:
        load_model(f"robustbench:{NAME}", model_dir=tmp_path)
    assert str(path) in str(exc.value)


def test_truncated_cache_file_refused(tmp_path: Path, model_test_pt: Path, no_network) -> None:
    path = _place(tmp_path, model_test_pt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="could not load") as exc:
        load_model(f"robustbench:{NAME}", model_dir=tmp_path)
    assert "\n" not in str(exc.value)


def test_malicious_cache_file_does_not_execute(tmp_path: Path, model_test_state, helpers, no_network) -> None:
    marker = tmp_path / "PAYLOAD_RAN"
    _place(tmp_path, {"state_dict": model_test_state, "x": helpers.Marker(str(marker))})
    with pytest.raises(CheckpointError):
        load_model(f"robustbench:{NAME}", model_dir=tmp_path)
    assert not marker.exists()


def test_unknown_zoo_name_lists_valid_names() -> None:
    with pytest.raises(ModelError) as exc:
        load_model("robustbench:Sehwag2021Proxy_R19")
    text = str(exc.value)
    assert "\n" not in text
    assert "did you mean 'Sehwag2021Proxy_R18'" in text
    assert "Addepalli2022Efficient_RN18" in text and "Wong2020Fast" in text


def test_wrong_dataset_for_zoo_name() -> None:
    # Sehwag2021Proxy_R18 is a CIFAR-10 entry only.
    with pytest.raises(ModelError, match="cifar100/Linf"):
        load_model("robustbench:Sehwag2021Proxy_R18@cifar100/Linf")


@pytest.mark.parametrize(
    ("identifier", "expected"),
    [
        ("robustbench:Foo", ("Foo", "cifar10", "Linf")),
        ("robustbench:Foo@cifar100/Linf", ("Foo", "cifar100", "Linf")),
        ("robustbench:Foo@cifar100", ("Foo", "cifar100", "Linf")),
        ("robustbench:Foo@cifar10/l2", ("Foo", "cifar10", "L2")),
        ("Foo@imagenet/corruptions", ("Foo", "imagenet", "corruptions")),
    ],
)
def test_parse_robustbench_id(identifier: str, expected: tuple[str, str, str]) -> None:
    assert parse_robustbench_id(identifier) == expected


@pytest.mark.parametrize(
    ("identifier", "needle"),
    [("robustbench:Foo@cifar1000/Linf", "did you mean 'cifar100'"), ("robustbench:Foo@cifar10/Linfx", "threat model"),
     ("robustbench:", "empty")],
)
def test_parse_robustbench_id_errors(identifier: str, needle: str) -> None:
    with pytest.raises(ModelError, match=needle):
        parse_robustbench_id(identifier)


def test_checkpoint_path_layout(tmp_path: Path) -> None:
    assert checkpoint_path("X", "cifar100", "Linf", tmp_path) == tmp_path / "cifar100" / "Linf" / "X.pt"


def test_list_robustbench() -> None:
    names = list_robustbench()
    assert NAME in names and names == sorted(names)
    assert "Addepalli2022Efficient_RN18" in list_robustbench("cifar100")


def test_zoo_architecture_as_arch(robustbench_reference, model_test_state) -> None:
    net = build_arch(f"robustbench:{NAME}", 10)
    net.load_state_dict(model_test_state, strict=True)
    with torch.no_grad():
        assert torch.equal(net.eval()(INPUTS), robustbench_reference(INPUTS))
    with pytest.raises(ModelError, match="10 classes, not 100"):
        build_arch(f"robustbench:{NAME}", 100)
