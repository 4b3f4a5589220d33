"""Model sources: one registered object per kind of model identifier, and the one dispatcher.

A :class:`ModelSource` owns everything about its identifiers: how they look (its ``prefix``, or
:meth:`ModelSource.claims` for files and names), its description for ``robustdistill list
teachers``, how to load them, which file to hash, and what the file records about its training
(run config, L-inf budget). :func:`resolve_model` is the only place that turns an identifier
into a :class:`ModelRef`; every other function looks the source up in :data:`MODEL_SOURCES`.

The built-in sources register themselves when their modules are imported, and
``robustdistill.models`` imports every one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..registry import Registry
from .classifier import Classifier
from .spec import DataHint, ModelOptions

MAX_IDENTIFIER = 4096  # characters; longer than any path a file system accepts


@dataclass(frozen=True)
class ModelRef:
    """A resolved model identifier.

    Attributes:
        source: name of the :class:`ModelSource` that reads it.
        name: the identifier without its prefix (a path for files).
        raw: the identifier as given (stripped).
    """

    source: str
    name: str
    raw: str

    @property
    def kind(self) -> str:
        """Same as :attr:`source` (the name earlier versions used)."""
        return self.source


@dataclass(frozen=True)
class ModelSource:
    """One kind of model identifier. Subclasses override the methods that apply to them.

    Attributes:
        name: registry key, also :attr:`ModelRef.source`.
        syntax: how its identifiers look, for listings and messages (``timm:NAME``).
        description: one line for ``robustdistill list teachers``.
        prefix: the text before ``:`` that selects this source (``timm``), or ``None`` for
            sources that recognise their identifiers with :meth:`claims` (files, names).
        trained: whether it yields trained weights (``False`` for bare architectures).
    """

    name: str = ""
    syntax: str = ""
    description: str = ""
    prefix: str | None = None
    trained: bool = True

    def claims(self, text: str) -> bool:
        """Whether a prefix-less identifier is this source's (sources with a ``prefix`` never need it)."""
        return False

    def form(self) -> str:
        """How its identifiers look, for the message that lists the valid forms."""
        return self.syntax

    def rows(self) -> list[tuple[str, str]]:
        """(identifier form, description) lines for ``robustdistill list teachers``."""
        return [(self.syntax, self.description)]

    def load(self, ref: ModelRef, options: ModelOptions, hint: DataHint | None) -> Classifier:
        """Load the model behind ``ref`` (raises a :class:`~robustdistill.errors.RobustDistillError` subclass)."""
        raise NotImplementedError

    def file(self, ref: ModelRef, options: ModelOptions = ModelOptions()) -> Path | None:
        """The file whose bytes are the model (to hash), or ``None``; it need not exist yet."""
        return None

    def recorded_config(self, ref: ModelRef, options: ModelOptions = ModelOptions()) -> dict[str, Any]:
        """The robustdistill run config stored with the model (``{}`` if none)."""
        return {}

    def recorded_eps(self, ref: ModelRef, options: ModelOptions = ModelOptions()) -> float | None:
        """The L-inf budget (in [0, 1] pixel units) the model was trained at, when known."""
        return None


MODEL_SOURCES: Registry[ModelSource] = Registry("model source")


def is_existing_file(text: str) -> bool:
    """``Path(text).is_file()`` that answers ``False`` instead of raising on names the OS refuses."""
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False


def resolve_model(identifier: str) -> ModelRef:
    """Turn a model identifier into a :class:`ModelRef`; the one parser of identifiers.

    ``NAME:REST`` goes to the source whose ``prefix`` is ``NAME``; anything else to the first
    prefix-less source that :meth:`~ModelSource.claims` it (their claims do not overlap).

    Raises:
        ModelError: empty, too long, or nothing claims it (the message lists the valid forms).
    """
    text = identifier.strip()
    if not text:
        raise ModelError("empty model identifier; pass e.g. bundled:digits, robustbench:NAME, timm:NAME or a file")
    if len(text) > MAX_IDENTIFIER:
        raise ModelError(f"model identifier of {len(text)} characters is too long; pass a model name or a file path")
    head, colon, rest = text.partition(":")
    for source in MODEL_SOURCES:
        if colon and source.prefix == head:
            return ModelRef(source.name, rest, text)
    for source in MODEL_SOURCES:
        if source.prefix is None and source.claims(text):
            return ModelRef(source.name, text, text)
    forms = ", ".join(source.form() for source in MODEL_SOURCES)
    raise ModelError(f"{text[:200]!r} is neither a file nor a known model; use {forms}")


def source_of(ref: ModelRef) -> ModelSource:
    """The registered source that reads ``ref``."""
    return MODEL_SOURCES.get(ref.source)
