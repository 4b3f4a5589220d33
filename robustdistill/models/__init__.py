"""Models: the Classifier contract, architectures, weight files and model sources.

Importing this package registers every built-in model source (bundled, robustbench, timm,
exported, safetensors, checkpoint, arch) in :data:`MODEL_SOURCES`, in that order.
"""

# The order of these imports is the order of `robustdistill list teachers` (exported files are
# recognised before plain .pt checkpoints, which would otherwise claim a TorchScript export).
from . import bundled_source, robustbench_source, timm_source, exported_source, file_sources, arch_source  # noqa: F401, I001 - registration
from .checkpoint import load_classifier, save_classifier
from .classifier import Classifier, Normalize, count_parameters, freeze, unwrap
from .model_source import MODEL_SOURCES, ModelRef, ModelSource, resolve_model
from .registry import build_arch, list_archs, register_arch
from .sources import (
    build_student, check_fits, list_bundled, list_teachers, load_model, model_file, parse_model_id, recorded_config,
    recorded_eps,
)
from .spec import DataHint, ModelOptions, ModelSpec
from .weightsio import read_metadata, read_state_dict

__all__ = [
    "Classifier", "DataHint", "MODEL_SOURCES", "ModelOptions", "ModelRef", "ModelSource", "ModelSpec", "Normalize",
    "build_arch", "build_student", "check_fits", "count_parameters", "freeze", "list_archs", "list_bundled",
    "list_teachers", "load_classifier", "load_model", "model_file", "parse_model_id", "read_metadata",
    "read_state_dict", "recorded_config", "recorded_eps", "register_arch", "resolve_model", "save_classifier", "unwrap",
]
