"""Model sources: one registered class per identifier form, what each records, and the leaf IO module.

(No import cycle and no private imports, package-wide: tests/test_structure.py.)"""

from __future__ import annotations

import ast
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import robustdistill.models as models_pkg
from robustdistill.errors import CheckpointError, ModelError
from robustdistill.models import (
    MODEL_SOURCES, Classifier, DataHint, ModelOptions, ModelRef, ModelSource, ModelSpec, build_student, list_teachers,
    load_model, model_file, recorded_config, recorded_eps, resolve_model, save_classifier,
)
from robustdistill.models.checkpoint import META_CONFIG, META_EPS, META_SPEC, build_on_meta
from robustdistill.models.registry import build_arch
from robustdistill.models.weightsio import read_metadata

MODELS_DIR = Path(models_pkg.__file__).parent
DIGITS = DataHint(10, (1, 8, 8), tuple("0123456789"), (0.3,), (0.4,))


# --------------------------------------------------------------------------- structure
def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(absolute module, imported names, line) of every import in a file, function-level ones included."""
    package = "robustdistill.models"
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names = [alias.name for alias in node.names]
            out.append((base, names, node.lineno))
            # `from . import x` imports the submodule x
            out.extend((f"{base}.{n}", [], node.lineno) for n in names if not node.module)
        elif isinstance(node, ast.Import):
            out.extend((alias.name, [], node.lineno) for alias in node.names)
    return out


def test_weightsio_is_a_leaf() -> None:
    allowed = {"torch", "safetensors", "robustdistill.errors"}
    stdlib = set(sys.stdlib_module_names)
    modules = {m for m, _, _ in _imports(MODELS_DIR / "weightsio.py")}
    foreign = {m for m in modules if m.split(".")[0] not in stdlib and m not in allowed and m.split(".")[0] not in allowed}
    assert foreign == set()
    assert "safetensors" in {m.split(".")[0] for m in modules} and "torch" in modules


# --------------------------------------------------------------------------- dispatch
@pytest.mark.parametrize(
    ("identifier", "source", "name"),
    [
        ("bundled:digits", "bundled", "digits"),
        ("robustbench:Foo@imagenet/Linf", "robustbench", "Foo@imagenet/Linf"),
        ("timm:vit_tiny_patch16_224", "timm", "vit_tiny_patch16_224"),
        ("a/b.SafeTensors", "safetensors", "a/b.SafeTensors"),
        ("a/b.bin", "checkpoint", "a/b.bin"),
        ("a/b.tar", "checkpoint", "a/b.tar"),
        ("mobilenetv2", "arch", "mobilenetv2"),
        ("wrn-16-4", "arch", "wrn-16-4"),
    ],
)
def test_resolve_model(identifier: str, source: str, name: str) -> None:
    ref = resolve_model(identifier)
    assert ref == ModelRef(source, name, identifier) and ref.kind == source
    assert MODEL_SOURCES.get(ref.source).name == source


def test_one_source_per_identifier_form() -> None:
    assert [s.name for s in MODEL_SOURCES] == ["bundled", "robustbench", "timm", "exported", "safetensors", "checkpoint",
                                               "arch"]
    prefixes = [s.prefix for s in MODEL_SOURCES if s.prefix]
    assert sorted(prefixes) == ["bundled", "robustbench", "timm"]
    # The prefix-less sources never claim the same identifier.
    for text in ("x.safetensors", "x.pt", "x.pth", "resnet18", "wrn-34-10", "tiny_cnn", "x.ckpt"):
        claimed = [s.name for s in MODEL_SOURCES if s.prefix is None and s.claims(text)]
        assert len(claimed) == 1, (text, claimed)


def test_existing_file_named_like_an_architecture_is_a_checkpoint(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("resnet18").write_bytes(b"x")
    assert resolve_model("resnet18").source == "checkpoint"


def test_list_teachers_comes_from_the_sources() -> None:
    rows = dict(list_teachers())
    assert list(rows) == ["bundled:digits", "robustbench:NAME[@DATASET/THREAT]", "timm:NAME",
                          "FILE.onnx / exported TorchScript", "FILE.safetensors", "FILE.pt --arch ARCH"]
    assert rows["bundled:digits"] == "shipped with the package"
    assert "ARCH" not in rows  # bare architectures are students, not teachers


@dataclass(frozen=True)
class _ConstantSource(ModelSource):
    """A plug-in source: ``const:K`` is a linear model whose logits are all K (on 1x2x2 images)."""

    name: str = "const"
    syntax: str = "const:K"
    description: str = "a constant classifier (test plug-in)"
    prefix: str | None = "const"

    def load(self, ref: ModelRef, options: ModelOptions, hint: DataHint | None) -> Classifier:
        net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        torch.nn.init.zeros_(net[1].weight)
        torch.nn.init.constant_(net[1].bias, float(ref.name))
        return Classifier(net, ModelSpec("const", 3, (1, 2, 2), source=ref.raw)).train()

    def recorded_eps(self, ref: ModelRef, options: ModelOptions = ModelOptions()) -> float | None:
        return 0.5


def test_a_new_source_is_one_registered_class() -> None:
    with MODEL_SOURCES.temporarily(_ConstantSource()):
        model = load_model("const:7", hint=DataHint(3, (1, 2, 2), ("a", "b", "c")))
        assert not model.training and model.spec.class_names == ("a", "b", "c")  # load_model's common steps
        assert torch.equal(model(torch.rand(2, 1, 2, 2)), torch.full((2, 3), 7.0))
        assert recorded_eps("const:7") == 0.5 and recorded_config("const:7") == {} and model_file("const:7") is None
        assert ("const:K", "a constant classifier (test plug-in)") in list_teachers()
    with pytest.raises(ModelError, match="neither a file nor a known model"):
        resolve_model("const:7")


@pytest.mark.parametrize(
    ("identifier", "error", "needle"),
    [("x" * 5000, ModelError, "too long"), ("a\0b.pt", CheckpointError, "NUL byte"),
     ("nonexistent_model", ModelError, "neither a file nor a known model")],
    ids=["5000-chars", "nul-byte", "unknown"],
)
def test_odd_identifiers_fail_in_one_line(identifier: str, error: type, needle: str) -> None:
    with pytest.raises(error, match=needle) as exc:
        load_model(identifier, arch="resnet18")
    assert "\n" not in str(exc.value) and len(str(exc.value)) < 1000


# --------------------------------------------------------------------------- files, configs and budgets
@pytest.fixture()
def student_file(tmp_path: Path) -> Path:
    model = build_student("tiny_cnn", DIGITS)
    model.spec = model.spec.with_(dataset="digits", eps=0.25)
    return save_classifier(model, tmp_path / "s.safetensors", config={"dataset": "digits", "eps": "0.2"},
                           extra={"eps": "0.3"})


def test_model_file_per_source(tmp_path: Path, student_file: Path) -> None:
    assert model_file("bundled:digits").name == "digits.safetensors" and model_file("bundled:digits").is_file()
    assert model_file(str(student_file)) == student_file
    assert model_file("x.pt") == Path("x.pt")
    options = ModelOptions(model_dir=str(tmp_path), weights=str(tmp_path / "w.safetensors"))
    assert model_file("robustbench:Foo@cifar100/L2", options) == tmp_path / "cifar100" / "L2" / "Foo.pt"
    assert model_file("timm:resnet18", options) == tmp_path / "w.safetensors" and model_file("timm:resnet18") is None
    assert model_file("resnet18") is None


def test_model_file_of_robustbench_follows_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ROBUSTDISTILL_MODEL_DIR", str(tmp_path))
    assert model_file("robustbench:Foo") == tmp_path / "cifar10" / "Linf" / "Foo.pt"


def test_recorded_config_per_source(tmp_path: Path, student_file: Path) -> None:
    bundled = recorded_config("bundled:digits")
    assert bundled["dataset"] == "digits" and bundled["eps"] == "0.2" and bundled["method"] == "at"
    assert recorded_config(str(student_file)) == {"dataset": "digits", "eps": "0.2"}
    with pytest.raises(CheckpointError, match="does not exist"):  # a typo is named, not read as "records nothing"
        recorded_config(str(tmp_path / "missing.safetensors"))
    plain = tmp_path / "plain.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(plain))
    assert recorded_config(str(plain)) == {}
    for other in ("robustbench:Foo", "timm:resnet18", "x.pt", "resnet18"):
        assert recorded_config(other) == {}


def _with_metadata(path: Path, out: Path, **changes: str | None) -> Path:
    from safetensors.torch import load_file, save_file

    metadata = {k: v for k, v in {**read_metadata(path), **changes}.items() if v is not None}
    save_file(load_file(str(path)), str(out), metadata=metadata)
    return out


def test_recorded_eps_precedence(tmp_path: Path, student_file: Path) -> None:
    assert recorded_eps(str(student_file)) == 0.25  # the spec's own field first
    spec = json.loads(read_metadata(student_file)[META_SPEC])
    del spec["eps"], spec["dataset"]  # as in files written before ModelSpec had them
    old = _with_metadata(student_file, tmp_path / "old.safetensors", **{META_SPEC: json.dumps(spec)})
    assert recorded_eps(str(old)) == 0.3  # then the robustdistill.eps metadata
    older = _with_metadata(old, tmp_path / "older.safetensors", **{META_EPS: None,
                                                                    META_CONFIG: json.dumps({"eps": "8/255"})})
    assert recorded_eps(str(older)) == pytest.approx(8 / 255)  # then the config's text
    bare = _with_metadata(older, tmp_path / "bare.safetensors", **{META_CONFIG: None})
    assert recorded_eps(str(bare)) is None
    assert recorded_eps("bundled:digits") == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("identifier", "eps"),
    [("robustbench:Foo", 8 / 255), ("robustbench:Foo@cifar100/Linf", 8 / 255), ("robustbench:Foo@imagenet/Linf", 4 / 255),
     ("robustbench:Foo@cifar10/L2", None), ("robustbench:Foo@cifar10/corruptions", None),
     ("timm:resnet18", None), ("x.pt", None), ("resnet18", None)],
)
def test_recorded_eps_of_other_sources(identifier: str, eps: float | None) -> None:
    assert recorded_eps(identifier) == eps


def test_spec_keeps_dataset_and_eps_and_reads_old_files(student_file: Path) -> None:
    loaded = load_model(str(student_file))
    assert (loaded.spec.dataset, loaded.spec.eps) == ("digits", 0.25)
    old = {k: v for k, v in json.loads(loaded.spec.to_json()).items() if k not in ("dataset", "eps")}
    again = ModelSpec.from_json(json.dumps(old))
    assert again == loaded.spec.with_(dataset=None, eps=None)


# --------------------------------------------------------------------------- checking before allocating
def test_meta_build_allocates_nothing_and_keeps_the_random_state() -> None:
    import timm

    before = torch.random.get_rng_state()
    layout = build_on_meta(lambda: build_arch("wrn-34-10", 10), "wrn-34-10")
    assert layout["fc.weight"].shape == (10, 640) and len(layout) > 150
    # timm ViTs compute with real tensors while building: the second way (meta parameters) handles them.
    vit = build_on_meta(lambda: timm.create_model("vit_tiny_patch16_224", num_classes=10), "vit")
    assert vit is not None and vit["head.weight"].shape == (10, 192)
    assert torch.equal(torch.random.get_rng_state(), before)


@pytest.fixture()
def constructions(monkeypatch) -> list[str]:
    """The device every SmallCNN is constructed on (meta for the pre-check, cpu for the real one)."""
    from robustdistill.models import archs

    seen: list[str] = []
    original = archs.SmallCNN.__init__

    def spy(self, *args, **kwargs):
        seen.append(torch.empty(0).device.type)
        original(self, *args, **kwargs)

    monkeypatch.setattr(archs.SmallCNN, "__init__", spy)
    return seen


def test_the_fit_is_checked_on_the_meta_device_first(tmp_path: Path, constructions: list[str]) -> None:
    path = save_classifier(build_student("small_cnn", DIGITS), tmp_path / "ok.safetensors")
    constructions.clear()
    load_model(str(path))
    assert constructions == ["meta", "cpu"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_are_cast(tmp_path: Path, dtype: torch.dtype) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = build_student("tiny_cnn", DIGITS).eval()
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    path = tmp_path / "half.safetensors"
    save_file(state, str(path), metadata=read_metadata(save_classifier(model, tmp_path / "full.safetensors")))
    loaded = load_model(str(path))
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    expected = {k: v.to(torch.float32) for k, v in state.items()}
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in expected.items() if v.is_floating_point())
