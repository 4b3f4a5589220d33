"""`export`: ONNX / TorchScript files with the normalisation inside, a robustness-parity check that
refuses disagreeing exports, and exported files that are validated before they run.

The bundled digits teacher and a freshly distilled tiny student are exported to both formats and
checked on the whole digits test split (360 images) with PGD-20 at their recorded eps (0.2).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from robustdistill import attacks as atk
from robustdistill.cost import CostProfile, cost_profile
from robustdistill.data import load_dataset
from robustdistill.errors import CheckpointError, ModelError, UsageError
from robustdistill.evaluation import eval_settings, evaluate_model, refuse_gradient_attacks
from robustdistill.export import ExportResult, export_model
from robustdistill.models import Classifier, ModelSpec, build_arch, load_model
from robustdistill.models.sources import bundled_path
from robustdistill.exported import (
    EXPORT_JSON, ExportedModel, exported_format, load_exported, read_export_json,
)
from robustdistill.evaluation.square import square

pytest.importorskip("onnxruntime")
FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def test_batch(digits) -> tuple[torch.Tensor, torch.Tensor]:
    x, y, _ = next(iter(digits.test.batches(360, torch.device("cpu"))))
    return x, y


@pytest.fixture(scope="module")
def student_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly distilled tiny_cnn student (1 short epoch of the default method) from the bundled teacher."""
    from robustdistill import distill

    out = tmp_path_factory.mktemp("student") / "run"
    result = distill("bundled:digits", "tiny_cnn", epochs=1, attack_steps=2, val_pgd_steps=2, eval_attacks="clean",
                     eval_n_examples=20, device="cpu", out=str(out))
    return Path(result.student_path)


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory, student_file: Path) -> dict[tuple[str, str], ExportResult]:
    """Teacher and student, each exported to ONNX and TorchScript (dynamic batch), all files in one folder."""
    folder = tmp_path_factory.mktemp("exports")
    results = {}
    for role, model in (("teacher", "bundled:digits"), ("student", str(student_file))):
        for fmt, suffix in FORMATS.items():
            results[role, fmt] = export_model(model, format=fmt, out=folder / f"{role}{suffix}", dynamic_batch=True,
                                              profile=(role == "student"))
    return results


def _pytorch(role: str, student_file: Path) -> Classifier:
    return load_model("bundled:digits" if role == "teacher" else str(student_file)).eval()


# --------------------------------------------------------------------------- parity
@pytest.mark.slow  # shares the module's export fixture (~12 s to build)
@pytest.mark.parametrize("role", ["teacher", "student"])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_parity_on_digits(exports, role: str, fmt: str) -> None:
    result = exports[role, fmt]
    rows = {row.inputs: row for row in result.parity.rows}
    assert result.path.is_file() and result.parity.passed
    assert result.parity.n_examples == 360 and result.parity.settings.eps == pytest.approx(0.2)
    assert rows["clean"].n == 360 and rows["clean"].agreement == 1.0
    assert rows["pgd"].n == 360 and rows["pgd"].agreement >= 0.999
    assert rows["clean"].max_abs_logit_diff < 1e-3
    assert {"batch 1", "batch 7"} <= set(rows) and rows["batch 7"].n == 7
    per_class = rows["pgd"].per_class
    assert len(per_class) == 10 and sum(n for _, n, _ in per_class) == 360


@pytest.mark.slow  # shares the module's export fixture (~12 s to build)
def test_adversarial_examples_are_the_ones_evaluate_makes(exports) -> None:
    """The parity PGD reproduces the bundled teacher's recorded PGD-20 accuracy (71.1 % at eps 0.2)."""
    row = next(r for r in exports["teacher", "onnx"].parity.rows if r.inputs == "pgd")
    assert row.accuracy_pytorch == pytest.approx(256 / 360, abs=1e-9)
    assert row.accuracy_exported == row.accuracy_pytorch


@pytest.mark.slow  # shares the module's export fixture (~12 s to build)
def test_export_json_records_evidence(exports, student_file: Path) -> None:
    result = exports["student", "onnx"]
    index = json.loads(result.export_json.read_text())
    assert set(index["exports"]) == {"teacher.onnx", "teacher.pt", "student.onnx", "student.pt"}
    record = index["exports"]["student.onnx"]
    assert record["sha256"] == hashlib.sha256(result.path.read_bytes()).hexdigest()
    assert record["format"] == "onnx" and isinstance(record["opset"], int) and record["opset"] >= 18
    assert record["exporter"] == "torch.onnx.export(dynamo=True)"
    assert record["eps"] == pytest.approx(0.2) and record["dataset"] == "digits"
    assert record["teacher"] == "bundled:digits"
    assert record["teacher_sha256"] == hashlib.sha256(bundled_path("digits").read_bytes()).hexdigest()
    assert record["parity"]["min_agreement"] == 0.999 and record["parity"]["seed"] == 0
    assert record["parity"]["attacks"]["pgd"]["steps"] == 20
    assert {"torch", "onnx", "onnxruntime", "onnxscript"} <= set(record["versions"])
    assert record["cost"]["engine"] == "onnxruntime" and record["cost"]["macs_per_image"] == 599_680
    assert read_export_json(result.path) == record


@pytest.mark.slow  # shares the module's export fixture (~12 s to build)
def test_metadata_inside_the_files(exports) -> None:
    import onnx

    proto = onnx.load(str(exports["student", "onnx"].path))
    props = {p.key: p.value for p in proto.metadata_props}
    assert ModelSpec.from_json(props["robustdistill.spec"]).arch == "tiny_cnn"
    assert props["robustdistill.teacher"] == "bundled:digits" and len(props["robustdistill.teacher_sha256"]) == 64
    assert json.loads(props["robustdistill.export"])["eps"] == pytest.approx(0.2)
    extra = {"robustdistill.json": ""}
    torch.jit.load(str(exports["student", "torchscript"].path), _extra_files=extra)
    meta = json.loads(extra["robustdistill.json"])
    assert meta["robustdistill.teacher"] == "bundled:digits"
    assert json.loads(meta["robustdistill.export"])["format"] == "torchscript"


# --------------------------------------------------------------------------- running exported files
@pytest.mark.slow  # shares the module's export fixture (~12 s to build)
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_dynamic_batch_runs_batch_1_and_7(exports, student_file: Path, test_batch, fmt: str) -> None:
    runtime = load_exported(exports["student", fmt].path)
    model = _pytorch("student", student_file)
    x = test_batch[0]
    assert runtime.batch_size is None
    for n in (1, 7):
        with torch.no_grad():
            got, want = runtime(x[:n]), model(x[:n])
        assert got.shape == (n, 10)
        assert torch.equal(got.argmax(1), want.argmax(1)) and (got - want).abs().max() < 1e-4


def test_fixed_batch_export_runs_in_chunks(tmp_path: Path, test_batch) -> None:
    result = export_model("bundled:digits", format="onnx", out=tmp_path / "fixed.onnx", batch_size=4, parity_n=30, profile=False)
    runtime = load_exported(result.path)
    assert runtime.batch_size == 4 and result.record["input"]["shape"] == [4, 1, 8, 8]
    with torch.no_grad():
        got, want = runtime(test_batch[0][:10]), load_model("bundled:digits").eval()(test_batch[0][:10])
    assert got.shape == (10, 10) and torch.equal(got.argmax(1), want.argmax(1))


@pytest.mark.slow  # shares the module's export fixture (~12 s to build)
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_clean_evaluation_of_an_export(exports, digits, fmt: str) -> None:
    runtime = load_exported(exports["teacher", fmt].path)
    settings = eval_settings(0.2)
    pytorch = evaluate_model(load_model("bundled:digits"), digits.test, digits.info.class_names, attacks=["clean"],
                             settings=settings)
    exported = evaluate_model(runtime, digits.test, digits.info.class_names, attacks=["clean"], settings=settings)
    assert torch.equal(exported.correct["clean"], pytorch.correct["clean"])


@pytest.mark.slow  # shares the module's export fixture (~12 s to build)
def test_square_on_an_export_matches_pytorch(exports, test_batch) -> None:
    """Square is score-based: with the same seed it takes the same steps on both, so the flags agree."""
    x, y = test_batch[0][:60], test_batch[1][:60]
    runtime = load_exported(exports["teacher", "onnx"].path)
    pytorch = load_model("bundled:digits").eval()
    rng = torch.get_rng_state()
    flags = square(runtime, x, y, eps=0.2, n_queries=100, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG is untouched
    assert torch.equal(flags, square(pytorch, x, y, eps=0.2, n_queries=100, seed=3))
    with torch.no_grad():
        clean = pytorch(x).argmax(1).eq(y)
    assert 0 < int(flags.sum()) < int(clean.sum())  # the attack fools some clean-correct images, not all
    assert not bool((flags & ~clean).any())


@pytest.mark.slow  # shares the module's export fixture (~12 s to build)
def test_gradient_attacks_are_refused(exports, test_batch) -> None:
    runtime = load_exported(exports["teacher", "torchscript"].path)
    x, y = test_batch[0][:4], test_batch[1][:4]
    with pytest.raises(ModelError, match="evaluate the source model") as info:
        atk.pgd(runtime, x, y, eps=0.2, step_size=0.05, steps=2)
    assert "\n" not in str(info.value) and "bundled:digits" in str(info.value)
    with pytest.raises(UsageError, match="pgd, aa.*evaluate the source model"):
        refuse_gradient_attacks(["clean", "pgd", "aa"], runtime.path)
    refuse_gradient_attacks(["clean", "square"], runtime.path)


@pytest.mark.slow  # shares the module's export fixture (~12 s to build)
def test_cost_profile_of_an_export(exports) -> None:
    runtime = load_exported(exports["teacher", "onnx"].path)
    profile = cost_profile(runtime, file=runtime.path, batch_sizes=(1, 5), threads=1, min_repeats=3, min_seconds=0.0)
    assert isinstance(profile, CostProfile) and profile.engine == "onnxruntime"
    assert profile.macs_per_image == 2_379_008 and profile.parameters == 94_186
    assert profile.file_bytes == runtime.path.stat().st_size
    assert [(lat.batch_size, lat.threads) for lat in profile.latency] == [(1, 1), (5, 1)]


# --------------------------------------------------------------------------- damaged files
def _copy(path: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(path, folder / path.name))


def _assert_refused(path: Path, *needles: str) -> None:
    with pytest.raises(CheckpointError) as info:
        load_exported(path)
    message = str(info.value)
    assert "\n" not in message and path.name in message
    for needle in needles:
        assert needle in message, message


@pytest.mark.slow  # shares the module's export fixture (~12 s to build)
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_truncated_export_is_refused(exports, tmp_path: Path, fmt: str) -> None:
    path = _copy(exports["teacher", fmt].path, tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert exported_format(path) == fmt  # still recognised (TorchScript: by its first zip entry), so refused as an export
    _assert_refused(path, "truncated")


@pytest.mark.slow  # shares the module's export fixture (~12 s to build)
@pytest.mark.parametrize(("fmt", "reason"), [("onnx", "modified after export"), ("torchscript", "fails its CRC check")])
def test_bytes_changed_in_place_are_refused(exports, tmp_path: Path, fmt: str, reason: str) -> None:
    path = _copy(exports["teacher", fmt].path, tmp_path)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2  # inside the weights of both formats
    data[middle : middle + 4] = bytes(b ^ 0xFF for b in data[middle : middle + 4])
    path.write_bytes(bytes(data))
    _assert_refused(path, reason)


@pytest.mark.slow  # shares the module's export fixture (~12 s to build)
def test_changed_weights_and_metadata_in_a_valid_onnx_file_are_refused(exports, tmp_path: Path) -> None:
    """A file re-saved with onnx (valid protobuf, passes onnx.checker) but different content."""
    import onnx
    from onnx import numpy_helper

    source = exports["teacher", "onnx"].path
    proto = onnx.load(str(source))
    init = proto.graph.initializer[0]
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.01, init.name))
    onnx.save(proto, str(tmp_path / "weights.onnx"))
    _assert_refused(tmp_path / "weights.onnx", "modified after export")
    proto = onnx.load(str(source))
    for prop in proto.metadata_props:
        if prop.key == "robustdistill.export":
            prop.value = prop.value.replace('"eps": 0.2', '"eps": 0.5')
    onnx.save(proto, str(tmp_path / "meta.onnx"))
    _assert_refused(tmp_path / "meta.onnx", "modified after export")


@pytest.mark.slow  # shares the module's export fixture (~12 s to build)
def test_export_json_sha256_is_checked(exports, tmp_path: Path) -> None:
    folder = exports["teacher", "onnx"].path.parent
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    (copy / "teacher.onnx").write_bytes((folder / "student.onnx").read_bytes())  # a valid export, but not this one
    _assert_refused(copy / "teacher.onnx", EXPORT_JSON, "sha256 mismatch")


def test_files_that_are_not_exports_are_refused(tmp_path: Path) -> None:
    import onnx

    plain = tmp_path / "plain.onnx"
    model = load_model("bundled:digits").eval()
    torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(plain), dynamo=False)
    _assert_refused(plain, "no robustdistill metadata")
    assert onnx.load(str(plain)) is not None
    (tmp_path / "empty.onnx").write_bytes(b"")
    _assert_refused(tmp_path / "empty.onnx", "empty")
    (tmp_path / "weights.pt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="neither an .onnx file nor a TorchScript archive"):
        load_exported(tmp_path / "weights.pt")
    assert exported_format(tmp_path / "weights.pt") is None


# --------------------------------------------------------------------------- refusals of export
class Branchy(nn.Module):
    """A data-dependent Python branch: tracing keeps only the branch its example took."""

    def __init__(self) -> None:
        super().__init__()
        self.body = build_arch("tiny_cnn", 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if x.mean() > 0.0:
            out = out.flip(1)
        return out


def _branchy() -> Classifier:
    torch.manual_seed(0)
    spec = ModelSpec(arch="tiny_cnn", num_classes=10, input_size=(1, 8, 8), mean=(0.3,), std=(0.37,), source="branchy")
    return Classifier(Branchy(), spec).eval()


@pytest.mark.parametrize(("fmt", "exporter", "message"), [
    ("torchscript", "dynamo", "disagrees with PyTorch on"),
    ("onnx", "legacy", "disagrees with PyTorch on"),
    ("onnx", "dynamo", "could not export"),
])
def test_disagreeing_export_is_refused_and_leaves_nothing(tmp_path: Path, fmt: str, exporter: str, message: str) -> None:
    out = tmp_path / f"branchy{FORMATS[fmt]}"
    # parity batch 1: the PyTorch model takes each image's own branch, the traced file always the same one
    with pytest.raises(ModelError, match=message) as info:
        export_model(_branchy(), format=fmt, exporter=exporter, out=out, dataset="digits", eps=0.2, parity_n=40,
                     parity_batch_size=1, profile=False)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="min-agreement"):
        export_model("bundled:digits", out=tmp_path / "m.onnx", min_agreement=1.01)
    with pytest.raises(UsageError, match=r"\*\.onnx"):
        export_model("bundled:digits", format="onnx", out=tmp_path / "m.pt")
    with pytest.raises(UsageError, match="export format"):
        export_model("bundled:digits", format="tflite", out=tmp_path / "m.tflite")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="records no training budget; pass --eps"):
        export_model(_branchy(), out=tmp_path / "m.onnx", dataset="digits")
    (tmp_path / "taken.onnx").write_bytes(b"x")
    with pytest.raises(UsageError, match="--overwrite"):
        export_model("bundled:digits", out=tmp_path / "taken.onnx")
    with pytest.raises(UsageError, match="opset 17.*--exporter legacy"):
        export_model("bundled:digits", out=tmp_path / "o.onnx", opset=17, parity_n=10, profile=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.onnx"]


@pytest.mark.slow  # shares the module's export fixture (~12 s to build)
def test_exporting_an_export_is_refused(exports) -> None:
    with pytest.raises(UsageError, match="already an exported model"):
        export_model(str(exports["teacher", "onnx"].path), out=exports["teacher", "onnx"].path.parent / "again.onnx")


@pytest.mark.slow  # shares the module's export fixture (~12 s to build)
def test_missing_onnx_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, exports) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an environment without the extra looks like
    with pytest.raises(UsageError, match=r'pip install "robustdistill\[export\]"') as info:
        export_model("bundled:digits", out=tmp_path / "m.onnx")
    assert "\n" not in str(info.value)
    with pytest.raises(UsageError, match=r"robustdistill\[export\]"):
        load_exported(exports["teacher", "onnx"].path)
    assert isinstance(load_exported(exports["teacher", "torchscript"].path), ExportedModel)  # TorchScript needs no extra
