"""Hostile model files: each is refused with a one-line domain error that says what to do.

No traceback, no huge allocation, nothing executed. The safetensors cases start from the real
bundled digits teacher (a 380 KB file) with its metadata or tensors altered; the torch cases
from small real checkpoints. The CLI maps these errors to ``error: ...`` (tests/test_cli.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from robustdistill.errors import CheckpointError, ModelError, RobustDistillError, UsageError
from robustdistill.models import DataHint, build_student, load_model, model_file, recorded_config, recorded_eps
from robustdistill.models.checkpoint import META_CONFIG, META_EPS, META_SPEC
from robustdistill.models.weightsio import read_metadata

DIGITS = model_file("bundled:digits")
SAVE_AGAIN = "save the model again"


# --------------------------------------------------------------------------- building hostile files
def _digits_spec() -> dict[str, Any]:
    return json.loads(read_metadata(DIGITS)[META_SPEC])


def _altered(tmp: Path, *, spec: str | None = None, tensors: Callable[[dict], dict] | None = None,
             **metadata: str) -> Path:
    """The bundled digits file with its spec text, tensors or other metadata replaced."""
    from safetensors.torch import load_file, save_file

    meta = {**read_metadata(DIGITS), **metadata}
    if spec is not None:
        meta[META_SPEC] = spec
    state = load_file(str(DIGITS))
    path = tmp / "hostile.safetensors"
    save_file(tensors(state) if tensors else state, str(path), metadata=meta)
    return path


def _spec_with(**changes: Any) -> str:
    return json.dumps({**_digits_spec(), **changes})


def _spec_without(key: str) -> str:
    return json.dumps({k: v for k, v in _digits_spec().items() if k != key})


def _as_dtype(dtype: torch.dtype) -> Callable[[dict], dict]:
    return lambda state: {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}


def _load(path: Path, **kwargs: Any) -> Callable[[], Any]:
    return lambda: load_model(str(path), **kwargs)


def _spec_case(spec: str) -> Callable[[Path], Callable[[], Any]]:
    return lambda tmp: _load(_altered(tmp, spec=spec))


def _declared_storage(tmp: Path, numel: int, *, legacy: bool) -> Path:
    """A real torch file whose pickle declares a storage of ``numel`` bytes-worth elements (the data holds 4)."""
    path = tmp / "declares.pt"
    torch.save({"w": torch.zeros(4)}, path, _use_new_zipfile_serialization=not legacy)
    encoded = numel.to_bytes((numel.bit_length() + 8) // 8, "little", signed=True)
    long1 = b"\x8a" + bytes([len(encoded)]) + encoded  # pickle LONG1 opcode

    def patch(data: bytes) -> bytes:
        out, count = re.subn(rb"(X\x03\x00\x00\x00cpuq.)K\x04", lambda m: m.group(1) + long1, data)
        assert count == 1
        return out

    if legacy:
        path.write_bytes(patch(path.read_bytes()))
        return path
    with zipfile.ZipFile(path) as src:
        members = {name: src.read(name) for name in src.namelist()}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as dst:
        for name, data in members.items():
            dst.writestr(name, patch(data) if name.endswith("data.pkl") else data)
    return path


def _torch_file(tmp: Path, obj: Any) -> Path:
    path = tmp / "obj.pt"
    torch.save(obj, path)
    return path


def _directory(tmp: Path) -> Path:
    (tmp / "weights.pt").mkdir()
    return tmp / "weights.pt"


def _fifo(tmp: Path) -> Path:
    path = tmp / "pipe.pt"
    os.mkfifo(path)
    return path


def _symlink_loop(tmp: Path) -> Path:
    (tmp / "a.pt").symlink_to(tmp / "b.pt")
    (tmp / "b.pt").symlink_to(tmp / "a.pt")
    return tmp / "a.pt"


def _huge_header(tmp: Path) -> Path:
    path = tmp / "header.safetensors"
    path.write_bytes((2**60).to_bytes(8, "little") + b'{"__metadata__": {}}' + b"\0" * 64)
    return path


def _tiny_cnn_file(tmp: Path, dtype: torch.dtype) -> Path:
    state = build_student("tiny_cnn", DataHint(10, (1, 8, 8))).net.state_dict()
    return _torch_file(tmp, {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()})


@dataclass(frozen=True)
class Case:
    make: Callable[[Path], Callable[[], Any]]
    error: type[RobustDistillError]
    needles: tuple[str, ...]  # what went wrong, and the fix


CASES: dict[str, Case] = {
    # --- safetensors metadata
    "spec-not-json": Case(_spec_case('{"arch": '), CheckpointError, ("not valid JSON", SAVE_AGAIN, "--arch ARCH")),
    "spec-200000-deep": Case(_spec_case("[" * 200_000 + "]" * 200_000), CheckpointError, ("nests 200000 levels", SAVE_AGAIN)),
    "spec-3-MB": Case(lambda t: _load(_altered(t, spec=_spec_with(source="x" * 3_000_000))), CheckpointError,
                      ("3.0 MB of JSON", SAVE_AGAIN)),
    "spec-is-a-list": Case(_spec_case("[1, 2]"), CheckpointError, ("not an object", SAVE_AGAIN)),
    "spec-without-arch": Case(lambda t: _load(_altered(t, spec=_spec_without("arch"))), CheckpointError,
                              ("arch must be", SAVE_AGAIN)),
    "spec-without-num-classes": Case(lambda t: _load(_altered(t, spec=_spec_without("num_classes"))), CheckpointError,
                                     ("num_classes must be an integer in [2, 100000], got None", SAVE_AGAIN)),
    "spec-without-input-size": Case(lambda t: _load(_altered(t, spec=_spec_without("input_size"))), CheckpointError,
                                    ("input_size must be [channels, height, width]", SAVE_AGAIN)),
    "num-classes-text": Case(lambda t: _load(_altered(t, spec=_spec_with(num_classes="ten"))), CheckpointError,
                             ("num_classes must be an integer", "'ten'", SAVE_AGAIN)),
    "num-classes-bool": Case(lambda t: _load(_altered(t, spec=_spec_with(num_classes=True))), CheckpointError,
                             ("num_classes must be an integer", SAVE_AGAIN)),
    "num-classes-10**12": Case(lambda t: _load(_altered(t, spec=_spec_with(num_classes=10**12))), CheckpointError,
                               ("[2, 100000], got 1000000000000", SAVE_AGAIN)),
    "input-size-10**9": Case(lambda t: _load(_altered(t, spec=_spec_with(input_size=[1, 10**9, 10**9]))), CheckpointError,
                             ("out of range", SAVE_AGAIN)),
    "std-negative": Case(lambda t: _load(_altered(t, spec=_spec_with(std=[-1.0]))), CheckpointError, ("std > 0", SAVE_AGAIN)),
    "mean-wrong-length": Case(lambda t: _load(_altered(t, spec=_spec_with(mean=[0.1, 0.2]))), CheckpointError,
                              ("mean must be null or 1 finite numbers", SAVE_AGAIN)),
    "mean-nan": Case(_spec_case(_spec_with(mean=[0.5]).replace("[0.5]", "[NaN]")), CheckpointError,
                     ("mean must be null or 1 finite numbers", SAVE_AGAIN)),
    "class-names-count": Case(lambda t: _load(_altered(t, spec=_spec_with(class_names=["a"]))), CheckpointError,
                              ("class_names must be null or 10 texts", SAVE_AGAIN)),
    "eps-5": Case(lambda t: _load(_altered(t, spec=_spec_with(eps=5))), CheckpointError, ("eps must be null or a number in [0, 1]",)),
    "width-131072": Case(lambda t: _load(_altered(t, spec=_spec_with(arch_kwargs={"width": 131072}))), ModelError,
                         ("[131072, 1, 3, 3] in the model", "does not describe its tensors", SAVE_AGAIN)),
    "width-text": Case(lambda t: _load(_altered(t, spec=_spec_with(arch_kwargs={"width": "abc"}))), ModelError,
                       ("cannot build the architecture", "ValueError", SAVE_AGAIN)),
    "width-10**30": Case(lambda t: _load(_altered(t, spec=_spec_with(arch_kwargs={"width": 10**30}))), ModelError,
                         ("cannot build the architecture", SAVE_AGAIN)),
    "arch-kwargs-nested": Case(lambda t: _load(_altered(t, spec=_spec_with(arch_kwargs={"width": {"a": [1]}}))),
                               CheckpointError, ("arch_kwargs must map", SAVE_AGAIN)),
    "arch-unknown": Case(lambda t: _load(_altered(t, spec=_spec_with(arch="resnet19"))), ModelError,
                         ("names an architecture robustdistill cannot build", "did you mean 'resnet18'")),
    "arch-wrn-6000004-1": Case(lambda t: _load(_altered(t, spec=_spec_with(arch="wrn-6000004-1"))), ModelError,
                               ("names an architecture", "depth <= 1000")),
    "int8-tensors": Case(lambda t: _load(_altered(t, tensors=_as_dtype(torch.int8))), ModelError,
                         ("tensor normalize.mean is int8", "float32", "export float weights")),
    "header-2**60": Case(lambda t: _load(_huge_header(t)), CheckpointError, ("not a readable safetensors file", "copy it again")),
    "config-not-json": Case(lambda t: lambda: recorded_config(str(_altered(t, **{META_CONFIG: "{'eps': 1"}))), CheckpointError,
                            ("robustdistill.config", "not valid JSON", "pass --dataset and --eps explicitly")),
    "config-100-deep": Case(lambda t: lambda: recorded_config(str(_altered(t, **{META_CONFIG: '{"a":' * 100 + "1" + "}" * 100}))),
                            CheckpointError, ("nests 100 levels", "pass --dataset and --eps explicitly")),
    "config-is-a-list": Case(lambda t: lambda: recorded_config(str(_altered(t, **{META_CONFIG: "[1]"}))), CheckpointError,
                             ("not a JSON object", "pass --dataset and --eps explicitly")),
    "eps-metadata-text": Case(lambda t: lambda: recorded_eps(str(_altered(t, **{META_EPS: "a lot"}))), CheckpointError,
                              ("'a lot'", "pass --eps explicitly")),
    # --- torch files
    "bool-tensors": Case(lambda t: _load(_tiny_cnn_file(t, torch.bool), arch="tiny_cnn", hint=DataHint(10, (1, 8, 8))), ModelError,
                         ("is bool where the model's", "export float weights")),
    "legacy-declares-400-GB": Case(lambda t: _load(_declared_storage(t, 10**11, legacy=True), arch="resnet18"),
                                   CheckpointError, ("declares tensors larger than the data", "fetch it again")),
    "legacy-declares-4-GB": Case(lambda t: _load(_declared_storage(t, 10**9, legacy=True), arch="resnet18"),
                                 CheckpointError, ("declares tensors larger than the data", "fetch it again")),
    "zip-declares-4-GB": Case(lambda t: _load(_declared_storage(t, 10**9, legacy=False), arch="resnet18"),
                              CheckpointError, ("declares tensors larger than the data", "fetch it again")),
    "pickled-int": Case(lambda t: _load(_torch_file(t, 7), arch="resnet18"), CheckpointError,
                        ("holds a int", "save model.state_dict() instead")),
    "num-classes-flag-10**12": Case(lambda t: _load(_tiny_cnn_file(t, torch.float32), arch="tiny_cnn", num_classes=10**12),
                                    UsageError, ("--num-classes must be between 2 and 100000",)),
    # --- the file system
    "directory": Case(lambda t: _load(_directory(t), arch="resnet18"), CheckpointError, ("is a directory", "pass the weights file inside it")),
    "fifo": Case(lambda t: _load(_fifo(t), arch="resnet18"), CheckpointError, ("not a regular file", "pass a weights file")),
    "symlink-loop": Case(lambda t: _load(_symlink_loop(t), arch="resnet18"), CheckpointError, ("cannot open", "check the path")),
    "bundled-path-traversal": Case(lambda t: lambda: load_model("bundled:../assets/digits"), ModelError,
                                   ("no bundled model", "available: bundled:digits")),
}


@pytest.fixture()
def real_builds(monkeypatch) -> list[str]:
    """Devices of every SmallCNN construction (the digits architecture): meta for checks, cpu for real."""
    from robustdistill.models import archs

    seen: list[str] = []
    original, register = archs.SmallCNN.__init__, torch.nn.Module.register_parameter

    def spy(self, *args, **kwargs):
        # "meta": built on the meta device or with parameters moved there as they are registered.
        on_meta = torch.empty(0).device.type == "meta" or torch.nn.Module.register_parameter is not register
        seen.append("meta" if on_meta else torch.empty(0).device.type)
        original(self, *args, **kwargs)

    monkeypatch.setattr(archs.SmallCNN, "__init__", spy)
    return seen


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 20


def test_the_unaltered_file_loads(tmp_path: Path, real_builds: list[str]) -> None:
    model = load_model(str(_altered(tmp_path)))
    assert model.spec.arch == "small_cnn" and real_builds == ["meta", "cpu"]  # the spy sees real builds


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input_is_a_one_line_domain_error(name: str, tmp_path: Path, real_builds: list[str]) -> None:
    case = CASES[name]
    assert issubclass(case.error, RobustDistillError)
    call = case.make(tmp_path)
    real_builds.clear()  # making a case may build a model itself
    with pytest.raises(RobustDistillError) as exc:
        call()
    text = str(exc.value)
    assert type(exc.value) is case.error, f"{type(exc.value).__name__}: {text}"
    assert "\n" not in text and len(text) < 1000, text
    for needle in case.needles:
        assert needle in text, f"{needle!r} not in {text!r}"
    assert "cpu" not in real_builds  # nothing real was built for a file that does not fit


# --------------------------------------------------------------------------- unreadable files
def _readable(path: Path) -> bool:
    try:
        path.open("rb").close()
    except PermissionError:
        return False
    return True


def test_unreadable_file(tmp_path: Path, model_test_pt: Path) -> None:
    path = tmp_path / "locked.pt"
    shutil.copyfile(model_test_pt, path)
    path.chmod(0)
    try:
        if not _readable(path):
            with pytest.raises(CheckpointError) as exc:
                load_model(str(path), arch="resnet18")
            text = str(exc.value)
        elif os.geteuid() == 0 and shutil.which("setpriv"):
            # root reads anything; without the two capabilities that let it, it is an ordinary user.
            code = ("from robustdistill.models import load_model\n"
                    f"try:\n    load_model({str(path)!r}, arch='resnet18')\n"
                    "except Exception as e:\n    print(type(e).__name__, e)\n")
            proc = subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search", sys.executable, "-c", code],
                                  capture_output=True, text=True, timeout=120, env=_env())
            assert proc.returncode == 0, proc.stderr
            assert proc.stdout.startswith("CheckpointError "), proc.stdout + proc.stderr
            text = proc.stdout.strip()
        else:
            pytest.skip("this user can read a chmod-000 file and setpriv is not available")
    finally:
        path.chmod(0o644)
    assert "\n" not in text and "permission denied" in text and f"chmod u+r {path}" in text


# --------------------------------------------------------------------------- the environment
def _env(**extra: str) -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", ROBUSTDISTILL_NO_PROGRESS="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


BOTH = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "TORCH_FORCE_WEIGHTS_ONLY_LOAD": "1"}


def test_torch_itself_refuses_every_load_with_both_variables(model_test_pt: Path) -> None:
    """The situation robustdistill handles: plain torch.load fails when both variables are set."""
    code = f"import torch\ntry:\n    torch.load({str(model_test_pt)!r}, weights_only=True)\nexcept RuntimeError as e:\n    print(e)\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=_env(**BOTH))
    assert "both were set" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("variables", [BOTH, {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}], ids=["both", "no-weights-only"])
def test_loads_work_and_stay_safe_whatever_the_environment(variables: dict[str, str], tmp_path: Path, model_test_pt: Path,
                                                           model_test_state, robustbench_cache: Path, helpers) -> None:
    marker = tmp_path / "PAYLOAD_RAN"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": model_test_state, "x": helpers.Marker(str(marker))}, evil)
    code = textwrap.dedent(f"""
        import os, torch
        from robustdistill.errors import CheckpointError
        from robustdistill.models import load_model
        names = ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_WEIGHTS_ONLY_LOAD")
        before = [os.environ.get(n) for n in names]
        plain = load_model({str(model_test_pt)!r}, arch="resnet18")
        zoo = load_model("robustbench:{helpers.ROBUSTBENCH_NAME}", model_dir={str(robustbench_cache)!r})
        x = torch.rand(2, 3, 32, 32)
        # two implementations of the same ResNet-18 (ours and robustbench's) with the same weights
        torch.testing.assert_close(plain(x), zoo(x), rtol=0, atol=1e-5)
        try:
            load_model({str(evil)!r}, arch="resnet18")
        except CheckpointError as e:
            print("refused:", e)
        assert [os.environ.get(n) for n in names] == before  # the user's environment is left as it was
        print("loaded", plain.spec.arch, zoo.spec.arch)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, env=_env(**variables))
    assert proc.returncode == 0, proc.stderr
    assert "loaded resnet18 robustbench:" in proc.stdout and "refused:" in proc.stdout and "beyond tensors" in proc.stdout
    assert not marker.exists()


@pytest.mark.slow
def test_cli_evaluates_a_checkpoint_with_the_unsafe_variable_in_the_shell(model_test_pt: Path, image_folder: Path,
                                                                         tmp_path: Path, monkeypatch, helpers) -> None:
    """The CLI sets TORCH_FORCE_WEIGHTS_ONLY_LOAD=1 itself, so the user's variable makes both set."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    proc = helpers.run_module("evaluate", model_test_pt, "--arch", "resnet18", "--dataset", "imagefolder", "--data-dir",
                              image_folder, "--attacks", "clean", "-n", "8", "--device", "cpu", "--out", tmp_path / "run",
                              "--fresh", "--eps", "8/255")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and (tmp_path / "run" / "report.json").exists()
