"""RobustBench zoo models, loaded offline from robustbench's own cache layout.

RobustBench 1.1.1 from PyPI cannot be imported as shipped: it imports ``autoattack``, but PyPI's
AutoAttack distribution installs the module ``pyautoattack``. :func:`import_robustbench` is the one
place that fixes this, by registering ``autoattack`` and ``autoattack.state`` as aliases of the
pyautoattack modules before robustbench is imported. Only robustbench's model zoo and
``load_model`` are used; its ``benchmark()`` does not work with pyautoattack 0.2.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType

from torch import nn

from ..errors import CheckpointError, ModelError, did_you_mean
from .classifier import Classifier
from .spec import ModelSpec
from .weightsio import sniff, weights_only_loads

MODEL_DIR_ENV = "ROBUSTDISTILL_MODEL_DIR"
DATASETS = {"cifar10": (10, (3, 32, 32)), "cifar100": (100, (3, 32, 32)), "imagenet": (1000, (3, 224, 224))}
THREATS = ("Linf", "L2", "corruptions")
# The budgets of RobustBench's L-inf leaderboards (Croce et al., "RobustBench", NeurIPS 2021 D&B).
LINF_EPS = {"cifar10": 8 / 255, "cifar100": 8 / 255, "imagenet": 4 / 255}


def import_robustbench() -> ModuleType:
    """Import robustbench, aliasing PyPI's ``pyautoattack`` as the ``autoattack`` it expects."""
    if "robustbench" in sys.modules:
        return sys.modules["robustbench"]
    if importlib.util.find_spec("autoattack") is None:
        import pyautoattack
        import pyautoattack.state

        # Alias the submodule too, or Python would import state.py a second time as
        # ``autoattack.state`` and there would be two EvaluationState classes.
        sys.modules["autoattack"] = pyautoattack
        sys.modules["autoattack.state"] = pyautoattack.state
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        import robustbench
    return robustbench


def parse_robustbench_id(identifier: str) -> tuple[str, str, str]:
    """``robustbench:NAME[@DATASET/THREAT]`` -> (name, dataset, threat); defaults cifar10/Linf."""
    body = identifier.split(":", 1)[1] if identifier.startswith("robustbench:") else identifier
    name, _, where = body.partition("@")
    dataset, threat = "cifar10", "Linf"
    if where:
        dataset, _, threat = where.partition("/")
        threat = threat or "Linf"
    if not name:
        raise ModelError("robustbench model id is empty; write robustbench:NAME, e.g. robustbench:Sehwag2021Proxy_R18")
    if dataset not in DATASETS:
        raise ModelError(did_you_mean(dataset, list(DATASETS), "RobustBench dataset"))
    threat_norm = {t.lower(): t for t in THREATS}.get(threat.lower())
    if threat_norm is None:
        raise ModelError(did_you_mean(threat, list(THREATS), "RobustBench threat model"))
    return name, dataset, threat_norm


def _zoo_entry(name: str, dataset: str, threat: str) -> dict:
    rb = import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    del rb
    zoo = model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat)]
    if name not in zoo:
        # The whole list (not cut mid-name): one long line beats a truncated one.
        raise ModelError(did_you_mean(name, sorted(zoo), f"RobustBench {dataset}/{threat} model"))
    return zoo[name]


def build_robustbench_arch(arch: str, num_classes: int) -> nn.Module:
    """The (untrained) architecture of a zoo entry, for loading weights saved elsewhere."""
    name, dataset, threat = parse_robustbench_id(arch)
    expected = DATASETS[dataset][0]
    if num_classes != expected:
        raise ModelError(f"{arch} has {expected} classes, not {num_classes}")
    entry = _zoo_entry(name, dataset, threat)
    if isinstance(entry.get("gdrive_id"), list):
        raise ModelError(f"{arch} is an ensemble; load it as robustbench:{name} instead of as an --arch")
    return entry["model"]()


def default_model_dir() -> Path:
    """The RobustBench cache root when none is given: ``$ROBUSTDISTILL_MODEL_DIR``, else ``./models``."""
    return Path(os.environ.get(MODEL_DIR_ENV, "models"))


def checkpoint_path(name: str, dataset: str, threat: str, model_dir: str | Path | None) -> Path:
    """Where robustbench keeps ``NAME``: ``MODEL_DIR/DATASET/THREAT/NAME.pt``."""
    return Path(model_dir or default_model_dir()) / dataset / threat / f"{name}.pt"


def load_robustbench(identifier: str, model_dir: str | Path | None = None) -> Classifier:
    """Load ``robustbench:NAME[@DATASET/THREAT]`` through robustbench's own ``load_model``.

    Works offline when the checkpoint already sits in robustbench's layout under ``model_dir``
    (``--model-dir``, else ``$ROBUSTDISTILL_MODEL_DIR``, else ``./models``).
    """
    name, dataset, threat = parse_robustbench_id(identifier)
    entry = _zoo_entry(name, dataset, threat)
    model_dir = Path(model_dir or default_model_dir())
    path = checkpoint_path(name, dataset, threat, model_dir)
    existed = path.exists()
    if existed and not isinstance(entry.get("gdrive_id"), list):
        sniff(path)
    from robustbench.utils import load_model

    try:
        with weights_only_loads(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = load_model(name, model_dir=str(model_dir), dataset=dataset, threat_model=threat)
    except (ModelError, CheckpointError):
        raise
    except Exception as exc:  # noqa: BLE001 - robustbench raises anything from gdown/requests/torch
        text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        if not existed:
            raise CheckpointError(
                f"robustbench:{name} is not in the local cache and could not be downloaded ({text}); "
                f"place its checkpoint at {path} (or pass --model-dir / set {MODEL_DIR_ENV})"
            ) from None
        raise CheckpointError(f"robustbench could not load {path} ({text}); the file may be truncated or wrong") from None
    num_classes, input_size = DATASETS[dataset]
    spec = ModelSpec(
        arch=f"robustbench:{name}@{dataset}/{threat}",
        num_classes=num_classes,
        input_size=input_size,
        mean=None,  # RobustBench models take [0, 1] inputs and normalise inside, if at all
        std=None,
        source=f"robustbench:{name}@{dataset}/{threat}",
    )
    return Classifier(net, spec).eval()


def list_robustbench(dataset: str = "cifar10", threat: str = "Linf") -> list[str]:
    """Sorted names of the zoo entries for ``dataset``/``threat``."""
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    return sorted(model_dicts[BenchmarkDataset(dataset)][ThreatModel(threat)])
