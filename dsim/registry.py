"""Registries of scenario families and algorithms (DESIGN §10), filled by the modules themselves.

A scenario family is one module ``dsim/scenarios/<family>.py`` that calls :func:`register_family` with a
:class:`FamilySpec`; an algorithm is one module ``agents/<name>.py`` that calls
:func:`register_algorithm` with an :class:`AlgorithmSpec`.  Nothing lists them by hand: :func:`discover`
imports every module of the packages :data:`PACKAGES` (``pkgutil``), and each registers what it holds.
A module that fails to import is a :class:`RegistryError` naming it, never a silent skip.  Tests and
users may also register specs at runtime (a toy family inside a test module, say).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

#: packages whose modules are imported by :func:`discover` (scenario families, algorithms)
PACKAGES = ("dsim.scenarios", "agents")


class RegistryError(Exception):
    """A module could not be imported, a spec is malformed, or a name is not registered."""


class OptionError(ValueError):
    """A configuration value found bad where it is used, not by the config's schema (e.g. options that do not
    match the checkpoint they load, a loss round past the protocol's last).

    ``key``: its key path (``'layers'``, ``'train.layers_in_loss'``), ``problem``: what is wrong and what is
    allowed; ``str()`` is ``'<key>: <problem>'``.  Code that knows the config file turns it into a
    :class:`dsim.config.ConfigError` line (``dsim train``, ``dsim finetune``: exit 2, no traceback); any other
    ``ValueError`` is a bug and keeps its traceback.
    """

    def __init__(self, key: str, problem: str) -> None:
        self.key, self.problem = key, problem
        super().__init__(f"{key}: {problem}")

    def within(self, prefix: str) -> OptionError:
        """The same problem at ``<prefix>.<key>`` (e.g. an option's key inside ``train.options``)."""
        return OptionError(f"{prefix}.{self.key}", self.problem)


class CrossChecked(BaseModel):
    """An options model with checks across its fields (:meth:`cross_errors`).

    Validation raises the first of them (a ``cross_field`` error naming the field in its ``ctx``);
    with ``context={'defer_cross': True}`` it does not, so that :mod:`dsim.config` can report all.
    """

    def cross_errors(self) -> list[tuple[str, str]]:
        """[(field name, message)] of the violated cross-field rules."""
        return []

    @model_validator(mode="after")
    def _cross_checks(self, info: ValidationInfo) -> Any:
        if not (info.context or {}).get("defer_cross"):
            for name, msg in self.cross_errors()[:1]:
                raise PydanticCustomError("cross_field", "{message}", {"field": name, "message": msg})
        return self


@dataclass(frozen=True)
class LinkClass:
    """A signaling link class a family uses, with the clock's defaults (latency in s, bandwidth in bit/s)."""

    name: str
    latency_s: float = 1e-3
    bandwidth_bps: float = 1e6
    summary: str = ""


@dataclass(frozen=True)
class FamilySpec:
    """What the runtime needs to know about one scenario family.

    name:      the YAML ``scenario.family`` value.
    options:   pydantic model of ``scenario:`` (``extra='forbid'``; a field ``family: Literal[name]``);
               its field defaults are the family's defaults (one place).  Cross-field rules: a method
               ``cross_errors() -> [(field, message)]`` (see :class:`CrossChecked`).
    generate:  ``generate(options, batch, generator, dtype) -> channels`` (``generator``: a seeded CPU
               ``torch.Generator``; ``dtype``: complex dtype of the run's precision).
    build:     ``build(channels, faults, seed) -> (Network, Air)``.
    save:      ``save(path, channels)`` writes a channel file (``dsim sample``).
    load:      ``load(path, dtype) -> channels`` reads one.
    file_keys: the ``.npz`` keys a channel file of the family holds (a file names its family in a
               ``family`` key; a file without one belongs to the family whose ``file_keys`` it has).
    roles:     agent roles of its networks.
    links:     signaling link classes of its networks (with clock defaults).
    unit:      rate unit of its evaluation ('nat/Hz' | 'bit/s/Hz').
    summary:   one line for error messages and the README.
    augment:   named data augmentations of a fixed training set (``train.augment``, :func:`dsim.learn.pool_sampler`):
               ``name -> transform(channels, generator) -> channels`` maps a batch of channels to an
               equally likely batch with the same optimal objective (an invariance of the family's problem,
               e.g. a rotation of the channels), drawing its randomness from ``generator`` (a seeded CPU
               ``torch.Generator``) only.  Empty: the family offers none.
    """

    name: str
    options: type[BaseModel]
    generate: Callable[..., Any]
    build: Callable[..., Any]
    save: Callable[..., Any]
    load: Callable[..., Any]
    file_keys: tuple[str, ...]
    roles: tuple[str, ...]
    links: tuple[LinkClass, ...]
    unit: str
    summary: str = ""
    augment: dict[str, Callable[..., Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class AlgorithmSpec:
    """What the runtime needs to know about one algorithm.

    name:        the YAML ``name`` of the algorithm.
    families:    scenario families it runs on.
    options:     pydantic model of its options (everything in the YAML entry but the runner's keys
                 ``name``, ``label``, ``restarts``).
    build:       ``build(options, net) -> Protocol``.
    summary:     one line shown in error messages.
    random_init: its initialisation is random, so the runner's ``restarts: n`` (best of n) applies.
    learnable:   ``learnable(options) -> dsim.learn.Learnable`` for a trainable protocol, else None.
    check:       ``check(options, files) -> [(field, problem)]``: what the validated options model cannot see
                 by itself (e.g. whether the checkpoint it names is a packaged one); ``files``: also whether the
                 files the options name exist (the command is about to read them).  Config validation reports
                 each as ``<file>: <key path>.<field>: <problem>`` (:func:`dsim.learn.LearnableSpec.check`).
    """

    name: str
    families: tuple[str, ...]
    options: type[BaseModel]
    build: Callable[[Any, Any], Any]
    summary: str = ""
    random_init: bool = False
    learnable: Callable[[Any], Any] | None = None
    check: Callable[[Any, bool], list[tuple[str, str]]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


FAMILIES: dict[str, FamilySpec] = {}
ALGORITHMS: dict[str, AlgorithmSpec] = {}
_discovered = False


def register_family(spec: FamilySpec) -> FamilySpec:
    """Add ``spec`` (a second registration under the same name replaces the first)."""
    FAMILIES[spec.name] = spec
    return spec


def register_algorithm(spec: AlgorithmSpec) -> AlgorithmSpec:
    """Add ``spec`` (a second registration under the same name replaces the first)."""
    ALGORITHMS[spec.name] = spec
    return spec


def discover() -> None:
    """Import every module of :data:`PACKAGES` once, so that each registers its specs."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for pkg_name in PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for mod in pkgutil.iter_modules(pkg.__path__, prefix=pkg_name + "."):
            try:
                importlib.import_module(mod.name)
            except Exception as exc:
                _discovered = False
                raise RegistryError(f"module {mod.name} failed to import: {type(exc).__name__}: {exc}") from exc


def family(name: str) -> FamilySpec:
    """The family registered as ``name``; :class:`RegistryError` listing the allowed names otherwise."""
    discover()
    if name not in FAMILIES:
        raise RegistryError(f"unknown scenario family {name!r}; allowed: {', '.join(family_names())}")
    return FAMILIES[name]


def algorithm(name: str) -> AlgorithmSpec:
    """The algorithm registered as ``name``; :class:`RegistryError` listing the allowed names otherwise."""
    discover()
    if name not in ALGORITHMS:
        raise RegistryError(f"unknown algorithm {name!r}; allowed: {', '.join(algorithm_names())}")
    return ALGORITHMS[name]


def family_names() -> list[str]:
    """Registered family names, sorted."""
    discover()
    return sorted(FAMILIES)


def algorithm_names(family: str | None = None, *, learnable: bool = False) -> list[str]:
    """Registered algorithm names (those that run on ``family`` when given; learnable ones only when
    ``learnable``), sorted."""
    discover()
    return sorted(n for n, s in ALGORITHMS.items()
                  if (family is None or family in s.families) and (not learnable or s.learnable is not None))


def link_classes() -> dict[str, LinkClass]:
    """Every link class of the registered families (name -> the first family's declaration)."""
    discover()
    out: dict[str, LinkClass] = {}
    for spec in FAMILIES.values():
        for lc in spec.links:
            out.setdefault(lc.name, lc)
    return out


def roles() -> list[str]:
    """Every role of the registered families, sorted."""
    discover()
    return sorted({r for spec in FAMILIES.values() for r in spec.roles})
