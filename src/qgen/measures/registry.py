"""The measure registry: name -> :class:`Measure`, filled by the :func:`register` decorator.

Each entry says which formula it implements (``equation``, citing the paper), what it needs
(``needs``: the shared ingredients from the context, e.g. 'search.pacbayes', 'w0', 'margin'),
and how to compute it (``compute(ctx) -> MeasureValue``). The entries themselves live in
:mod:`qgen.measures.catalog`, which the package imports (so any import of
``qgen.measures.*`` fills the registry).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qgen.errors import QgenError

if TYPE_CHECKING:
    from qgen.measures.context import MeasureContext


@dataclass(frozen=True)
class MeasureValue:
    """A computed measure: its value and per-measure diagnostics (JSON-able)."""

    value: float
    diagnostics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Measure:
    """One registered measure."""

    name: str
    equation: str
    needs: tuple[str, ...]
    compute: Callable[[MeasureContext], MeasureValue]
    family: str

    def describe(self) -> dict[str, Any]:
        """Name, family, equation and needs (for listings and reports)."""
        return {"name": self.name, "family": self.family, "equation": self.equation,
                "needs": list(self.needs)}


_REGISTRY: dict[str, Measure] = {}


def register(name: str, *, equation: str, needs: Iterable[str] = (),
             family: str | None = None
             ) -> Callable[[Callable[[MeasureContext], Any]], Callable[[MeasureContext], Any]]:
    """Decorator: register ``fn(ctx)`` (returning a float or a :class:`MeasureValue`)."""

    def decorate(fn: Callable[[MeasureContext], Any]) -> Callable[[MeasureContext], Any]:
        if name in _REGISTRY:
            raise ValueError(f"measure {name!r} is already registered")

        def compute(ctx: MeasureContext) -> MeasureValue:
            out = fn(ctx)
            return out if isinstance(out, MeasureValue) else MeasureValue(float(out))

        _REGISTRY[name] = Measure(name, equation, tuple(needs), compute,
                                  family or name.rsplit(".", 1)[0])
        return fn

    return decorate


def measure_names() -> list[str]:
    """Every registered measure name, sorted."""
    return sorted(_REGISTRY)


def get_measure(name: str) -> Measure:
    """The registered measure ``name`` (QgenError listing the names if unknown)."""
    if name not in _REGISTRY:
        raise QgenError(f"unknown measure {name!r}; allowed: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def resolve_names(patterns: Iterable[str]) -> list[str]:
    """Expand names/shell patterns into registered names (registry order); empty = all."""
    known = measure_names()
    patterns = list(patterns)
    if not patterns:
        return known
    out: list[str] = []
    for pat in patterns:
        hits = fnmatch.filter(known, pat)
        if not hits:
            raise QgenError(f"measures: {pat!r} matches no measure; allowed: {', '.join(known)}")
        out.extend(h for h in hits if h not in out)
    return sorted(out)
