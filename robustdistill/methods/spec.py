"""Method specs: what each registered strategy is, owns and imposes on a run.

A method module defines its :class:`~robustdistill.methods.base.Strategy` subclass with a frozen
``Params`` dataclass and registers it with :func:`register_method`, which builds its
:class:`MethodSpec` (name, one-line summary, parameters with defaults, attack and BatchNorm mode,
teacher needs, whether Fair-ARD may wrap it, lr schedule, weight decay, epochs per dataset).
Everything else - CLI flags, ``robustdistill list methods``, config validation, the run's
defaults - reads the spec.

``fair-<base>`` is not registered: :func:`parse_method` is the one place that reads the prefix.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any, Callable, Mapping, TypeVar

from ..errors import UsageError, did_you_mean
from ..params import defaults, hyperparameter, require
from ..registry import Registry

FAIR_PREFIX = "fair-"
#: Papers' run length when neither the method nor the dataset says otherwise.
PAPER_EPOCHS = 200


class AttackMode(str, Enum):
    """BatchNorm mode of the student during the inner maximisation."""

    TRAIN = "train"  # batch statistics (the ARD-family released code)
    EVAL = "eval"  # running statistics (RSLAD, AdaAD, PGD-AT, TRADES)
    NONE = "none"  # the method has no inner maximisation


@dataclass(frozen=True)
class MethodSpec:
    """A registered training method.

    Attributes:
        name: registry name (``ard``).
        summary: one line for ``robustdistill list methods`` (paper and venue).
        strategy: the :class:`Strategy` subclass implementing it.
        params: frozen dataclass of its hyperparameters with the paper defaults.
        attack_mode: student BatchNorm mode during :meth:`Strategy.perturb`.
        needs_teacher: distils from a teacher (``False``: adversarial training).
        fair_wrappable: ``fair-<name>`` exists (Fair-ARD reweighting of its per-sample terms).
        schedule: default learning-rate schedule (see :mod:`robustdistill.train`).
        weight_decay: default weight decay.
        epochs: the paper's run length.
        dataset_epochs: run length on particular datasets (chosen on their validation split).
        extra_teachers: names of teachers besides the robust one (e.g. MTARD's ``natural``).
        lr: default peak learning rate (FRL fine-tunes at 1e-3).
        requires_init: the method fine-tunes a given model (``--student-weights`` / ``--init``; FRL's hot start).
        fair_note: appended to the one-line summary of ``fair-<name>`` (e.g. that no paper proposes it).
        reference_batch: the batch size of the paper's recipe (its learning rate goes with it); a
            DDP run whose global batch differs is warned.
        double_backward: the loss differentiates through an input gradient (``create_graph``), which
            SyncBatchNorm cannot do (``--sync-bn`` is refused).
    """

    name: str
    summary: str
    strategy: type
    params: type
    attack_mode: AttackMode
    needs_teacher: bool = True
    fair_wrappable: bool = True
    schedule: str = "ard"
    weight_decay: float = 2e-4
    epochs: int = PAPER_EPOCHS
    dataset_epochs: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    extra_teachers: tuple[str, ...] = ()
    lr: float = 0.1
    requires_init: bool = False
    fair_note: str = ""
    reference_batch: int = 128
    double_backward: bool = False

    def default_params(self) -> dict[str, Any]:
        return defaults(self.params)

    def epochs_for(self, dataset: str, dataset_default: int | None) -> int:
        """Run length on ``dataset``: the method's value for it, else the dataset's, else the paper's."""
        return self.dataset_epochs.get(dataset) or dataset_default or self.epochs


METHODS: Registry[MethodSpec] = Registry("method")
S = TypeVar("S", bound=type)


def register_method(
    *, name: str, summary: str, attack_mode: AttackMode, needs_teacher: bool = True, fair_wrappable: bool | None = None,
    schedule: str = "ard", weight_decay: float = 2e-4, epochs: int = PAPER_EPOCHS,
    dataset_epochs: Mapping[str, int] | None = None, extra_teachers: tuple[str, ...] = (), lr: float = 0.1,
    requires_init: bool = False, fair_note: str = "", reference_batch: int = 128, double_backward: bool = False,
) -> Callable[[S], S]:
    """Class decorator: register a :class:`Strategy` subclass and attach its :class:`MethodSpec` as ``cls.spec``.

    Fair-ARD's own hyperparameters (``beta``, ``clip_min``, ...) may not be reused by a method it
    can wrap, so every hyperparameter name of ``fair-<name>`` has exactly one owner.
    """

    def decorator(cls: S) -> S:
        if not dataclasses.is_dataclass(cls.Params):
            raise TypeError(f"{cls.__name__}.Params must be a dataclass")
        wrappable = needs_teacher if fair_wrappable is None else fair_wrappable
        if wrappable:
            _check_no_clash_with_fair(name, cls.Params)
        spec = MethodSpec(
            name=name, summary=summary, strategy=cls, params=cls.Params, attack_mode=AttackMode(attack_mode),
            needs_teacher=needs_teacher, fair_wrappable=wrappable, schedule=schedule, weight_decay=weight_decay,
            epochs=epochs, dataset_epochs=MappingProxyType(dict(dataset_epochs or {})), extra_teachers=extra_teachers,
            lr=lr, requires_init=requires_init, fair_note=fair_note, reference_batch=reference_batch,
            double_backward=double_backward,
        )
        METHODS.add(spec)
        cls.spec = spec
        return cls

    return decorator


def _check_no_clash_with_fair(name: str, params: type) -> None:
    clash = {f.name for f in dataclasses.fields(params)} & {f.name for f in dataclasses.fields(FairParams)}
    if clash:
        raise ValueError(f"method {name!r} reuses Fair-ARD's hyperparameter name(s) {sorted(clash)}; rename them")


@dataclass(frozen=True)
class FairParams:
    """Fair-ARD hyperparameters (released-code defaults)."""

    beta: float = hyperparameter(2.0, "Fair-ARD: sharpness of the class reweighting (0 = the base method)")
    clip_min: float = hyperparameter(5 / 6, "Fair-ARD: lower bound of the class weights")
    clip_max: float = hyperparameter(5 / 2, "Fair-ARD: upper bound of the class weights")
    eps_floor: float = hyperparameter(1e-5, "Fair-ARD: the 1e-5 in (kappa + 1e-5)^-beta")
    kappa_steps: int = hyperparameter(10, "Fair-KD/Fair-KDIGA: PGD steps that measure class difficulty")

    def __post_init__(self) -> None:
        require(self.beta >= 0, f"fair: beta must be >= 0, got {self.beta}")
        require(
            0 < self.clip_min <= self.clip_max,
            f"fair: need 0 < clip_min <= clip_max, got clip_min={self.clip_min}, clip_max={self.clip_max}",
        )
        require(self.eps_floor >= 0, f"fair: eps_floor must be >= 0, got {self.eps_floor}")
        require(self.kappa_steps >= 1, f"fair: kappa_steps must be >= 1, got {self.kappa_steps}")



@dataclass(frozen=True)
class MethodChoice:
    """A method name as the user wrote it: a registered base, optionally under Fair-ARD reweighting."""

    base: MethodSpec
    fair: bool = False

    @property
    def name(self) -> str:
        return FAIR_PREFIX + self.base.name if self.fair else self.base.name

    @property
    def summary(self) -> str:
        if not self.fair:
            return self.base.summary
        note = f"; {self.base.fair_note}" if self.base.fair_note else ""
        return f"Fair-ARD class reweighting by per-class kappa over {self.base.name} (Yue et al., NeurIPS 2023){note}"


def method_names() -> list[str]:
    """Every method a user can name: the registered ones, then their ``fair-`` variants."""
    specs = list(METHODS)
    return [s.name for s in specs] + [FAIR_PREFIX + s.name for s in specs if s.fair_wrappable]


def parse_method(name: str) -> MethodChoice:
    """The one place that reads the ``fair-`` prefix; unknown names raise :class:`UsageError`."""
    text = str(name).strip().lower()
    fair = text.startswith(FAIR_PREFIX)
    base = text[len(FAIR_PREFIX):] if fair else text
    if base not in METHODS or (fair and not METHODS.get(base).fair_wrappable):
        raise UsageError(did_you_mean(str(name), method_names(), "method"))
    return MethodChoice(METHODS.get(base), fair)


def list_methods() -> list[MethodChoice]:
    """Every method, including the ``fair-`` variants, in :func:`method_names` order."""
    return [parse_method(n) for n in method_names()]
