"""One small registry class for every kind of component (methods, attacks, datasets, optimizers, ...).

Each kind keeps one :class:`Registry` of frozen spec objects. A spec owns its name, its
description, its typed parameters and the defaults it imposes on a run; everything else in the
package (CLI options, ``robustdistill list``, config validation, report evidence, the evaluation
cache key) reads the specs instead of keeping its own table of names.

Registration happens when the module defining a spec is imported, and every built-in module is
imported explicitly by its package ``__init__`` (no registration side-module, no dependence on the
user's imports). Tests and plug-ins register their own specs the same way and may take them out
again with :meth:`Registry.unregister` or the :meth:`Registry.temporarily` context manager.
"""

from __future__ import annotations

import contextlib
from typing import Generic, Iterator, Protocol, TypeVar

from .errors import UsageError, did_you_mean


class Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=Named)


class Registry(Generic[T]):
    """Specs of one kind of component, by name, in registration order.

    Args:
        kind: singular noun used in messages ("method", "attack", "dataset").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._specs: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def add(self, spec: T, *, aliases: tuple[str, ...] = ()) -> T:
        """Register ``spec`` under ``spec.name`` (and ``aliases``); a name may be registered once."""
        for name in (spec.name, *aliases):
            if not name or name in self._specs or name in self._aliases:
                raise ValueError(f"{self.kind} name {name!r} is empty or registered twice")
        self._specs[spec.name] = spec
        self._aliases.update({alias: spec.name for alias in aliases})
        return spec

    def unregister(self, name: str) -> None:
        """Remove ``name`` and its aliases (tests and plug-ins clean up after themselves)."""
        self._specs.pop(name, None)
        self._aliases = {a: n for a, n in self._aliases.items() if n != name}

    @contextlib.contextmanager
    def temporarily(self, spec: T, *, aliases: tuple[str, ...] = ()) -> Iterator[T]:
        """Register ``spec`` for the duration of a ``with`` block."""
        self.add(spec, aliases=aliases)
        try:
            yield spec
        finally:
            self.unregister(spec.name)

    def canonical(self, name: str) -> str:
        """The registered name behind ``name`` or one of its aliases; unknown names raise :class:`UsageError`."""
        if name in self._specs:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise UsageError(did_you_mean(name, self.names(), self.kind))

    def get(self, name: str) -> T:
        """The spec called ``name`` (or an alias of it); unknown names raise :class:`UsageError` listing the valid ones."""
        return self._specs[self.canonical(name)]

    def names(self) -> list[str]:
        return list(self._specs)

    def __contains__(self, name: object) -> bool:
        return name in self._specs or name in self._aliases

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._specs.values()))

    def __len__(self) -> int:
        return len(self._specs)
