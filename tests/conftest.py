"""Shared fixtures for the foundation tests.

Everything is offline and small: a real third-party CIFAR-10 ResNet-18 checkpoint shipped by
pyautoattack, real 8x8 digits images (scikit-learn) written out as 32x32 RGB PNGs with CIFAR-10
class-folder names, and a RobustBench cache directory with a checkpoint placed where robustbench
looks for it. No test downloads anything; tests that would otherwise touch the network block it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

# Before anything imports rich/huggingface_hub: no progress bars, and huggingface_hub in offline
# mode, so that a test that forgets to block the network still cannot reach it.
os.environ["ROBUSTDISTILL_NO_PROGRESS"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Stored evaluations (robustdistill.eval_cache) go to a fresh directory per test session, so no
# test reuses a result left behind by an earlier session or by the user.
os.environ["ROBUSTDISTILL_CACHE"] = __import__("tempfile").mkdtemp(prefix="robustdistill-cache-")
# Hypothesis keeps caches in ./.hypothesis by default; keep the checkout clean.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(__import__("tempfile").gettempdir(), "robustdistill-hypothesis"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

# No example database: a clean checkout stays clean, and every run draws fresh examples.
settings.register_profile("robustdistill", database=None, deadline=None)
settings.load_profile("robustdistill")

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGES_PER_CLASS = 6
ROBUSTBENCH_NAME = "Sehwag2021Proxy_R18"


# --------------------------------------------------------------------------- helpers
def first_error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def assert_one_line_error(stderr: str, *needles: str) -> str:
    """stderr is exactly one non-empty line starting with 'error:' and mentioning each needle."""
    lines = first_error_lines(stderr)
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    line = lines[0]
    assert line.startswith("error:"), line
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle.lower() in line.lower(), f"{needle!r} not in {line!r}"
    return line


def block_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every outgoing connection fail at once (so gdown/requests/huggingface give up fast)."""

    def refuse(*_args, **_kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


class Marker:
    """A pickle payload: unpickling it would create ``path`` (proves nothing was executed)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (shutil.copyfile, (os.devnull, self.path))


# --------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="session")
def model_test_pt() -> Path:
    """pyautoattack's CIFAR-10 ResNet-18 (kuangliu keys; a legacy-format pickle with CUDA storages)."""
    spec = importlib.util.find_spec("pyautoattack")
    assert spec is not None and spec.origin is not None
    path = Path(spec.origin).parent / "examples" / "model_test.pt"
    assert path.is_file(), path
    return path


@pytest.fixture(scope="session")
def model_test_state(model_test_pt: Path) -> dict[str, torch.Tensor]:
    return torch.load(model_test_pt, map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def reference_resnet(model_test_state) -> torch.nn.Module:
    """The checkpoint loaded directly (strict) into our resnet18 architecture, in eval mode."""
    from robustdistill.models.archs import ResNet

    net = ResNet((2, 2, 2, 2), num_classes=10, in_chans=3)
    net.load_state_dict(model_test_state, strict=True)
    return net.eval()


@pytest.fixture(scope="session")
def robustbench_cache(tmp_path_factory: pytest.TempPathFactory, model_test_pt: Path) -> Path:
    """A RobustBench model_dir with model_test.pt placed as cifar10/Linf/Sehwag2021Proxy_R18.pt."""
    root = tmp_path_factory.mktemp("rb-cache")
    target = root / "cifar10" / "Linf" / f"{ROBUSTBENCH_NAME}.pt"
    target.parent.mkdir(parents=True)
    shutil.copyfile(model_test_pt, target)
    return root


# --------------------------------------------------------------------------- image folders
def _digits_by_class(per_class: int) -> list[list[np.ndarray]]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    out: list[list[np.ndarray]] = [[] for _ in range(10)]
    for image, label in zip(bunch.images, bunch.target):
        if len(out[label]) < per_class:
            out[label].append(image)
    return out


def _write_png(array8: np.ndarray, path: Path, size: int | tuple[int, int] = 32, mode: str = "RGB") -> None:
    from PIL import Image

    img = Image.fromarray((array8 / 16.0 * 255).round().astype(np.uint8), mode="L")
    wh = (size, size) if isinstance(size, int) else size
    img = img.resize(wh, Image.NEAREST).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def make_image_folder(root: Path, classes=CIFAR10_CLASSES, per_class: int = IMAGES_PER_CLASS,
                      size: int | tuple[int, int] = 32, offset: int = 0) -> Path:
    digits = _digits_by_class(offset + per_class)
    for label, name in enumerate(classes):
        for k in range(per_class):
            _write_png(digits[label][offset + k], root / name / f"{k:03d}.png", size)
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10 CIFAR-10 class folders x 6 real digits images, 32x32 RGB PNG (no train/test split)."""
    return make_image_folder(tmp_path_factory.mktemp("imgs") / "cifar_like")


@pytest.fixture(scope="session")
def image_folder_3class(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("imgs3") / "three", classes=CIFAR10_CLASSES[:3], per_class=4)


@pytest.fixture(scope="session")
def split_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train/ (5 per class) and test/ (3 per class) sub-folders, 3 classes."""
    root = tmp_path_factory.mktemp("imgs-split") / "split"
    make_image_folder(root / "train", classes=CIFAR10_CLASSES[:3], per_class=5)
    make_image_folder(root / "test", classes=CIFAR10_CLASSES[:3], per_class=3, offset=5)
    return root


def load_folder_images(root: Path, files: list[str]) -> torch.Tensor:
    """Read PNGs the test's own way (PIL -> float tensor in [0, 1]) for hand-computed checks."""
    from PIL import Image

    out = []
    for f in files:
        with Image.open(f) as img:
            out.append(torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1))
    return torch.stack(out)


# --------------------------------------------------------------------------- CLI
@pytest.fixture()
def cli(monkeypatch: pytest.MonkeyPatch):
    """Run ``robustdistill ARGS`` in-process through Typer's CliRunner (stderr kept separate)."""
    from typer.testing import CliRunner

    from robustdistill import cli as cli_module

    monkeypatch.setitem(cli_module._state, "debug", False)
    monkeypatch.setenv("ROBUSTDISTILL_NO_PROGRESS", "1")
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(cli_module.app, [str(a) for a in args], catch_exceptions=True)

    return run


def run_module(*args: str, cwd: Path | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``python -m robustdistill ARGS`` in a fresh interpreter (offline, no progress bars)."""
    env = dict(os.environ, ROBUSTDISTILL_NO_PROGRESS="1", HF_HUB_OFFLINE="1", COLUMNS="200",
               OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "robustdistill", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout,
    )


def spurious_abort(result: subprocess.CompletedProcess) -> bool:
    """ecosystem.md §5.3: a gloo worker sometimes dies of SIGABRT in this sandbox (not our code)."""
    text = result.stderr + result.stdout
    return result.returncode != 0 and ("SIGABRT" in text or "Signal 6" in text or result.returncode in (-6, 134))


def run_torchrun(args: list[str], *, env: dict[str, str], cwd: Path, fresh: tuple[Path, ...] = (),
                 timeout: float = 600) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=2 ARGS``; a spurious gloo abort is retried once.

    The aborted attempt may already have written into the run directory (or stored evaluations in
    the cache); every path in ``fresh`` is removed before the retry, so the retry starts from what
    the test set up - not from the half-run the abort left (the run directory would be refused).
    """
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    if spurious_abort(result):
        for path in fresh:
            shutil.rmtree(path, ignore_errors=True)
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    return result


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The machine is shared: keep torch to one intra-op thread."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every socket connection (and DNS lookup) fails at once for the duration of the test."""
    block_network(monkeypatch)


@pytest.fixture(scope="session")
def helpers() -> SimpleNamespace:
    """Helper functions for the test modules (``conftest`` itself is not importable under importlib mode)."""
    return SimpleNamespace(
        assert_one_line_error=assert_one_line_error, block_network=block_network, Marker=Marker,
        make_image_folder=make_image_folder, load_folder_images=load_folder_images, run_module=run_module,
        run_torchrun=run_torchrun,
        CIFAR10_CLASSES=CIFAR10_CLASSES, ROBUSTBENCH_NAME=ROBUSTBENCH_NAME,
    )
