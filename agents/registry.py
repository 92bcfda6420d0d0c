"""Registry of the algorithms (protocol families) a scenario YAML can name.

Every protocol module registers an :class:`AlgorithmSpec` at import time.  The config module validates
an ``algorithms:`` entry by looking its ``name`` up here and validating the remaining keys (except
``name`` and ``label``) with the spec's pydantic ``options`` model (``extra='forbid'``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel


@dataclass(frozen=True)
class AlgorithmSpec:
    """What the runtime needs to know about one algorithm.

    name:     the YAML ``name`` of the algorithm.
    families: scenario families it runs on ('multicell', 'cellfree', ...).
    options:  pydantic model of its options (everything in the YAML entry but ``name``/``label``).
    build:    ``build(options, net) -> Protocol`` (``net`` is a :class:`dsim.network.Network`).
    summary:  one line shown in error messages and ``--help``.
    """

    name: str
    families: tuple[str, ...]
    options: type[BaseModel]
    build: Callable[[Any, Any], Any]
    summary: str = ""


REGISTRY: dict[str, AlgorithmSpec] = {}


def register(spec: AlgorithmSpec) -> AlgorithmSpec:
    """Add ``spec`` to the registry (a second registration under the same name replaces the first)."""
    REGISTRY[spec.name] = spec
    return spec


def get(name: str) -> AlgorithmSpec:
    """The spec registered as ``name``; ``KeyError`` listing the allowed names otherwise."""
    load_all()
    if name not in REGISTRY:
        raise KeyError(f"unknown algorithm {name!r}; allowed: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def names(family: str | None = None) -> list[str]:
    """Registered algorithm names (those that run on ``family`` when given), sorted."""
    load_all()
    return sorted(n for n, s in REGISTRY.items() if family is None or family in s.families)


def load_all() -> None:
    """Import every protocol module so that each registers itself."""
    import importlib

    for mod in _MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:  # a module of a later issue not written yet
            if exc.name != mod:
                raise


_MODULES = (
    "agents.baselines",
    "agents.wmmse",
    "agents.gcn_wmmse",
    "agents.cellfree_alloc",
    "agents.icgnn",
)
