"""Evaluation attacks: one object per attack, registered by name.

Each attack is a frozen dataclass whose fields are its parameters (with the protocol's
defaults), and which owns its display label, its description, a version string, a *stable*
``seed_id`` (the random start of batch ``b`` is drawn from ``derive_seed(seed, seed_id, b)``, so
adding or reordering attacks never re-seeds another) and the identity the evaluation cache keys
on. The evaluation runner, the cache, reports, the CLI and the Python API read only these objects.

Threat model: L-infinity, inputs in [0, 1] (normalisation lives inside the model), model in
eval mode. A sample counts as robust only if it is also classified correctly clean.

Adding an attack is one new class with ``@register_attack`` (see CONTRIBUTING.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal, Mapping, Sequence, TypeVar

import torch
from torch import nn

from .. import attacks as atk
from ..errors import UsageError
from ..params import as_dict, coerce, field_types, require
from ..registry import Registry

#: Version of robustdistill's own attack code; bump when a change alters results for the same seed.
ATTACK_CODE_VERSION = "1"


@dataclass(frozen=True)
class EvalAttack:
    """Base class of an evaluation attack (subclasses are frozen dataclasses of their parameters).

    Class attributes:
        name: registry name used on the command line (``pgd``).
        title: display name without parameters (``PGD``).
        description: one line for ``robustdistill list attacks``.
        seed_id: stable number mixed into each batch's seed (unique per attack, never reused).
        needs_gradients: white-box (input gradients); refused on exported models.
        seed_per_batch: each batch gets ``derive_seed(seed, seed_id, batch)``; otherwise the
            evaluation seed itself (pyautoattack, which seeds every call on its own).
        in_all: part of ``--attacks all`` (Square is not: AutoAttack runs it already).
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    description: ClassVar[str] = ""
    seed_id: ClassVar[int] = -1
    needs_gradients: ClassVar[bool] = True
    seed_per_batch: ClassVar[bool] = True
    in_all: ClassVar[bool] = True

    @property
    def reference(self) -> bool:
        """Whether this is the attack's reference form (a cheaper variant says so wherever it appears)."""
        return True

    @property
    def label(self) -> str:
        """How tables and plots name this attack (``PGD-20``)."""
        return self.title

    def parameters(self, eps: float) -> dict[str, Any]:
        """The exact parameters of a run at ``eps`` (the evidence stored next to its numbers)."""
        return {"eps": eps, "norm": "Linf", **as_dict(self)}

    def implementation(self) -> str:
        """Which code computed the number (part of the cache identity)."""
        return f"robustdistill {ATTACK_CODE_VERSION} / torch {torch.__version__}"

    def identity(self, eps: float) -> dict[str, Any]:
        """Everything about this attack that determines its per-sample results."""
        return {"attack": self.name, "parameters": self.parameters(eps), "implementation": self.implementation()}

    def adversarial(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, seed: int) -> torch.Tensor:
        """The attacked batch (in [0, 1], within eps of ``x``), drawn with this batch's ``seed``.

        Attacks that only report verdicts (AutoAttack's ensemble) do not implement it.
        """
        raise NotImplementedError(f"attack {self.name!r} reports per-sample verdicts, not adversarial examples")

    def correct(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, seed: int,
                num_classes: int) -> torch.Tensor:
        """Per-sample bool: is ``model`` right on the attacked ``x`` (``seed``: this batch's seed)."""
        return predicts(model, self.adversarial(model, x, y, eps=eps, seed=seed), y)


def predicts(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1).eq(y)


def seeded(seed: int) -> None:
    """Seed the global generators for one batch's random start (the caller forked the RNG)."""
    torch.manual_seed(seed)


ATTACKS: Registry[EvalAttack] = Registry("attack")
A = TypeVar("A", bound=type)


def register_attack(*, aliases: tuple[str, ...] = ()) -> Callable[[A], A]:
    """Class decorator: register the attack's default instance (its fields' defaults = the protocol)."""

    def decorator(cls: A) -> A:
        if cls.seed_id < 0 or cls.seed_id in {a.seed_id for a in ATTACKS}:
            raise ValueError(f"attack {cls.name!r} needs a seed_id of its own (taken: {sorted(a.seed_id for a in ATTACKS)})")
        ATTACKS.add(cls(), aliases=aliases)
        return cls

    return decorator


# --------------------------------------------------------------------------- the built-in attacks
@register_attack(aliases=("natural",))
@dataclass(frozen=True)
class Clean(EvalAttack):
    """No attack: clean accuracy."""

    name: ClassVar[str] = "clean"
    title: ClassVar[str] = "Clean"
    description: ClassVar[str] = "no attack"
    seed_id: ClassVar[int] = 0
    needs_gradients: ClassVar[bool] = False

    def parameters(self, eps: float) -> dict[str, Any]:
        return {}

    def adversarial(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, seed: int) -> torch.Tensor:
        return x


@register_attack()
@dataclass(frozen=True)
class FGSM(EvalAttack):
    """One signed CE step of size eps from ``x + 0.001 N(0, I)`` (the Fair-ARD evaluation FGSM)."""

    name: ClassVar[str] = "fgsm"
    title: ClassVar[str] = "FGSM"
    description: ClassVar[str] = "one signed CE step of size eps from x + 0.001 N(0, I)"
    seed_id: ClassVar[int] = 1

    def parameters(self, eps: float) -> dict[str, Any]:
        return {"eps": eps, "norm": "Linf", "steps": 1, "step_size": eps, "loss": "ce", "start": "gaussian(0.001)"}

    def adversarial(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, seed: int) -> torch.Tensor:
        seeded(seed)
        return atk.fgsm(model, x, y, eps=eps)


@register_attack()
@dataclass(frozen=True)
class PGD(EvalAttack):
    """PGD on the cross-entropy: ``steps`` sign steps of ``step_size`` (default eps/4), uniform start clipped to [0, 1].

    Madry et al., ICLR 2018; the Fair-ARD evaluation uses 20 steps of 2/255 at eps 8/255.
    With ``restarts > 1`` a sample is robust only if it survives every restart.
    """

    name: ClassVar[str] = "pgd"
    title: ClassVar[str] = "PGD"
    description: ClassVar[str] = "PGD-20, step eps/4, CE loss, uniform start (--pgd-steps)"
    seed_id: ClassVar[int] = 2

    steps: int = 20
    step_size: float | None = None
    restarts: int = 1

    def __post_init__(self) -> None:
        require(self.steps >= 1, f"pgd: steps must be at least 1, got {self.steps}")
        require(self.restarts >= 1, f"pgd: restarts must be at least 1, got {self.restarts}")
        require(self.step_size is None or 0 < self.step_size <= 1, f"pgd: step_size must be in (0, 1], got {self.step_size}")

    @property
    def label(self) -> str:
        return f"{self.title}-{self.steps}"

    def parameters(self, eps: float) -> dict[str, Any]:
        return {"eps": eps, "norm": "Linf", "steps": self.steps, "step_size": _step(self.step_size, eps), "loss": "ce",
                "start": "uniform", "restarts": self.restarts}

    def adversarial(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, seed: int) -> torch.Tensor:
        seeded(seed)
        return atk.pgd(model, x, y, eps=eps, step_size=_step(self.step_size, eps), steps=self.steps,
                       restarts=self.restarts, clip_start=True).x_adv


@register_attack(aliases=("cw-inf", "cwinf"))
@dataclass(frozen=True)
class CW(EvalAttack):
    """CW-infinity: PGD on the Carlini-Wagner margin loss (confidence 50), ``steps`` steps of eps/4."""

    name: ClassVar[str] = "cw"
    title: ClassVar[str] = "CW∞"
    description: ClassVar[str] = "CW-inf: PGD-20, step eps/4, margin loss with confidence 50"
    seed_id: ClassVar[int] = 3

    steps: int = 20
    step_size: float | None = None
    confidence: float = 50.0

    def __post_init__(self) -> None:
        require(self.steps >= 1, f"cw: steps must be at least 1, got {self.steps}")
        require(self.step_size is None or 0 < self.step_size <= 1, f"cw: step_size must be in (0, 1], got {self.step_size}")

    @property
    def label(self) -> str:
        return f"{self.title}-{self.steps}"

    def parameters(self, eps: float) -> dict[str, Any]:
        return {"eps": eps, "norm": "Linf", "steps": self.steps, "step_size": _step(self.step_size, eps),
                "loss": f"cw-margin(confidence={self.confidence:g})", "start": "uniform"}

    def adversarial(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, seed: int) -> torch.Tensor:
        seeded(seed)
        return atk.pgd(model, x, y, eps=eps, step_size=_step(self.step_size, eps), steps=self.steps, loss="cw",
                       confidence=self.confidence, clip_start=True).x_adv


AutoAttackVersion = Literal["standard", "fast"]


@register_attack(aliases=("autoattack",))
@dataclass(frozen=True)
class AutoAttack(EvalAttack):
    """AutoAttack (Croce & Hein, ICML 2020) through pyautoattack, with eps and the device passed explicitly.

    ``standard`` is the reference (APGD-CE, APGD-T, FAB-T, Square 5,000 queries). ``fast`` runs
    only APGD-CE and APGD-T: cheaper, and labelled "not the reference AutoAttack" wherever it
    appears. With fewer than 10 classes the targeted attacks use C - 1 targets. pyautoattack seeds
    itself from the evaluation seed (not from the batch).
    """

    name: ClassVar[str] = "aa"
    title: ClassVar[str] = "AutoAttack"
    description: ClassVar[str] = "AutoAttack standard (APGD-CE, APGD-T, FAB-T, Square) via pyautoattack"
    seed_id: ClassVar[int] = 4
    seed_per_batch: ClassVar[bool] = False

    version: AutoAttackVersion = "standard"

    def __post_init__(self) -> None:
        coerce("attack 'aa'", "version", field_types(type(self))["version"], self.version)

    @property
    def reference(self) -> bool:
        return self.version == "standard"

    @property
    def label(self) -> str:
        return self.title if self.reference else "AutoAttack-fast (not the reference AutoAttack)"

    def implementation(self) -> str:
        from importlib import metadata

        return f"pyautoattack {metadata.version('pyautoattack')} / torch {torch.__version__}"

    def parameters(self, eps: float) -> dict[str, Any]:
        return {"eps": eps, "norm": "Linf", "implementation": self.implementation().split(" / ")[0],
                "version": self.version}

    def correct(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, seed: int,
                num_classes: int) -> torch.Tensor:
        return atk.autoattack(model, x, y, eps=eps, num_classes=num_classes, version=self.version, seed=seed,
                              batch_size=x.shape[0])


def _step(step_size: float | None, eps: float) -> float:
    return step_size if step_size is not None else eps / 4


# --------------------------------------------------------------------------- choosing attacks
def attack_names(text: str | Sequence[str]) -> list[str]:
    """``clean,pgd,aa`` -> registered names in registry order; ``all`` = every attack; clean always included."""
    raw = text.split(",") if isinstance(text, str) else list(text)
    if not all(isinstance(t, str) for t in raw):
        raise UsageError(f"attacks must be names such as clean, pgd, aa; got {list(raw)!r}")
    names = [t.strip().lower() for t in raw if t.strip()]
    if names == ["all"]:
        return [a.name for a in ATTACKS if a.in_all]
    wanted = {ATTACKS.canonical(n) for n in names} | {"clean"}
    return [n for n in ATTACKS.names() if n in wanted]


def refuse_gradient_attacks(attacks: Sequence[str], model_name: str) -> None:
    """Raise :class:`UsageError` if ``attacks`` ask a model without gradients (an exported file) for a white-box attack."""
    free = [a.name for a in ATTACKS if not a.needs_gradients]
    needs = [a for a in attack_names(list(attacks)) if a not in free]
    if needs:
        raise UsageError(f"{Path(model_name).name} is an exported model without gradients, so {', '.join(needs)} cannot "
                         f"run on it; use --attacks {','.join(free)} here and evaluate the source model for gradient attacks")


@dataclass(frozen=True)
class EvalSettings:
    """The evaluation protocol: budget, seed and the parameters of each attack that differ from its defaults.

    ``params`` maps an attack name to parameter overrides, e.g. ``{"pgd": {"steps": 50}}``; use
    :func:`eval_settings` for the flat form ``pgd_steps=50``.
    """

    eps: float
    seed: int = 0
    params: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        eps = self.eps
        require(isinstance(eps, (int, float)) and not isinstance(eps, bool) and 0 <= eps <= 1,
                f"eps must be a number in [0, 1] (pixel units), got {eps!r}")
        require(isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed < 2**63,
                f"the evaluation seed must be an integer in [0, 2^63), got {self.seed!r}")
        for name, values in self.params.items():
            self.attack(name) if values else None  # validates names and values now, not mid-run

    def attack(self, name: str) -> EvalAttack:
        """The attack ``name`` with this protocol's parameters."""
        default = ATTACKS.get(name)
        values = self.params.get(default.name) or {}
        types = field_types(type(default))
        unknown = sorted(k for k in values if k not in types)
        if unknown:
            raise UsageError(f"attack {default.name!r} has no parameter(s) {', '.join(unknown)}; "
                             f"it has: {', '.join(types) or 'none'}")
        owner = f"attack {default.name!r}"
        return dataclasses.replace(default, **{k: coerce(owner, k, _plain(types[k]), v) for k, v in values.items()})

    def attacks(self, names: str | Sequence[str]) -> tuple[EvalAttack, ...]:
        return tuple(self.attack(n) for n in attack_names(names))


def _plain(kind: Any) -> Any:
    """``float | None`` -> float (None is handled by the caller's default)."""
    args = [a for a in getattr(kind, "__args__", ()) if a is not type(None)]
    return args[0] if len(args) == 1 and type(None) in getattr(kind, "__args__", ()) else kind


def eval_settings(eps: float, seed: int = 0, *, step_size: float | None = None, **flat: Any) -> EvalSettings:
    """:class:`EvalSettings` from flat names ``<attack>_<parameter>`` (``pgd_steps=50``, ``aa_version="fast"``).

    ``step_size`` (no prefix) applies to every attack that has a ``step_size`` parameter.
    ``None`` values mean "the attack's default".
    """
    params: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        attack, _, param = key.partition("_")
        if attack not in ATTACKS or not param:
            raise UsageError(f"unknown evaluation setting {key!r}; use <attack>_<parameter>, e.g. pgd_steps")
        if value is not None:
            params.setdefault(ATTACKS.canonical(attack), {})[param] = value
    if step_size is not None:
        for spec in ATTACKS:
            if "step_size" in field_types(type(spec)):
                params.setdefault(spec.name, {})["step_size"] = step_size
    return EvalSettings(eps=eps, seed=seed, params=params)
