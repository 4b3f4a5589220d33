"""Models: the Classifier contract, architectures, checkpoints and model sources."""

from .checkpoint import load_classifier, read_state_dict, save_classifier
from .classifier import Classifier, Normalize, count_parameters, freeze, unwrap
from .registry import build_arch, list_archs, register_arch
from .sources import DataHint, build_student, check_fits, list_bundled, load_model, parse_model_id
from .spec import ModelSpec

__all__ = [
    "Classifier", "DataHint", "ModelSpec", "Normalize", "build_arch", "build_student", "check_fits",
    "count_parameters", "freeze", "list_archs", "list_bundled", "load_classifier", "load_model",
    "parse_model_id", "read_state_dict", "register_arch", "save_classifier", "unwrap",
]
