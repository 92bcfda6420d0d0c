"""Scenario config -> (network of local knowledge, air interface): the one entry point of every family.

Nothing here names a family: each family module registers a :class:`dsim.registry.FamilySpec` (options
model, generator, ``Network`` + ``Air`` builder, channel-file I/O and keys), and the functions below
dispatch on the family's name through :func:`dsim.registry.family`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from dsim import registry
from dsim.air import Air
from dsim.faults import FaultModel
from dsim.network import Network
from dsim.scenarios.channel_file import ChannelFileError, found, read_npz


class FileScenario(BaseModel):
    """``scenario: {file: ...}``: a channel file (``.npz``, DESIGN §5); :mod:`dsim.config` resolves a
    relative ``file`` against the YAML file's directory."""

    model_config = ConfigDict(extra="forbid")
    file: str = Field(min_length=1)


@dataclass
class Scenario:
    """A built scenario: ``family``, the agents' ``net``, the ``air`` (ground truth) and the raw channels."""

    family: str
    net: Network
    air: Air
    channels: Any

    @property
    def unit(self) -> str:
        """The rate unit of the air's evaluation ('nat/Hz' | 'bit/s/Hz')."""
        return self.air.unit


def complex_dtype(precision: str) -> torch.dtype:
    """'double' -> complex128, 'single' -> complex64."""
    return torch.complex128 if precision == "double" else torch.complex64


def file_family(path: str | Path) -> str:
    """The family of a channel file: its ``family`` key, else the one family whose ``file_keys`` the file
    holds; :class:`ChannelFileError` naming the file when it is unreadable or no family (or several) fit."""
    data = read_npz(Path(path))
    keys = set(data)
    named = None
    if "family" in keys:
        fam = data["family"]
        if fam.dtype.kind not in "US" or fam.shape != ():
            raise ChannelFileError(f"{path}: key 'family': expected a string scalar, found {found(fam)}")
        named = str(fam)
    families = registry.family_names()
    if named is not None:
        if named not in families:
            raise ChannelFileError(f"{path}: key 'family': {named!r} is not allowed; allowed: {', '.join(families)}")
        return named
    fits = [f for f in families if set(registry.family(f).file_keys) <= keys]
    if len(fits) == 1:
        return fits[0]
    expected = "; ".join(f"{f}: {', '.join(registry.family(f).file_keys)}" for f in families)
    what = f"the keys of several families ({', '.join(fits)})" if fits else "the keys of no family"
    raise ChannelFileError(f"{path}: no 'family' key and {what}; expected a 'family' key or the keys of "
                           f"one family ({expected})")


def generate_channels(scn: BaseModel | Mapping[str, Any], batch: int, seed: int, precision: str
                      ) -> tuple[str, Any]:
    """Draw ``batch`` realizations of a family scenario -> (family, channels).

    ``scn``: the family's options model, or a plain mapping with a ``family`` key (validated by that
    family's options model; pydantic's ``ValidationError`` if invalid).  The draw uses a CPU generator
    seeded with ``seed`` and the complex dtype of ``precision`` ('double' | 'single').
    """
    name = scn.get("family") if isinstance(scn, Mapping) else scn.family
    if not isinstance(name, str):
        raise ValueError(f"a scenario mapping needs a 'family' key; allowed: {', '.join(registry.family_names())}")
    spec = registry.family(name)
    opts = spec.options.model_validate(dict(scn)) if isinstance(scn, Mapping) else scn
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    return name, spec.generate(opts, batch, gen, complex_dtype(precision))


def load_channels_file(path: str | Path, precision: str) -> tuple[str, Any]:
    """Read a channel file of any registered family -> (family, channels)."""
    family = file_family(path)
    return family, registry.family(family).load(path, complex_dtype(precision))


def save_channels_file(family: str, channels: Any, path: str | Path) -> Path:
    """Write a channel file of ``family`` (``dsim sample``); creates the parent directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    registry.family(family).save(path, channels)
    return path


class ScenarioError(ValueError):
    """A scenario whose numbers cannot be simulated (non-finite agent data, too large for memory); one line."""


def check_finite(net: Network, where: str) -> None:
    """Every floating/complex tensor an agent holds is finite; else :class:`ScenarioError` naming it.

    A non-finite setting (``noise_dbm: .inf``, a dBm value whose power overflows) must stop the run before an
    algorithm turns it into NaN results."""
    for role, data in net.local.items():
        for key, t in data.items():
            if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()):
                bad = int((~torch.isfinite(t)).sum())
                if bad:
                    raise ScenarioError(f"{where}: the {role} agents' {key!r} has {bad} NaN/infinite entries "
                                        "(check the powers, noise and path-loss settings)")


def _tensor_bytes(obj: Any) -> int:
    """Bytes of every tensor / array held by ``obj`` (a dataclass of channels, a mapping, a tensor)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, Mapping):
        return sum(_tensor_bytes(v) for v in obj.values())
    if hasattr(obj, "__dict__"):
        return sum(_tensor_bytes(v) for v in vars(obj).values())
    return 0


def physical_memory_bytes() -> int | None:
    """Total physical memory of this machine (bytes), None where unknown."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(scn: BaseModel, batch: int, seed: int, precision: str, restarts: int = 1) -> None:
    """Estimate the channels' memory up front: draw one realization, scale by ``batch`` x ``restarts``;
    :class:`ScenarioError` naming ``batch`` when it exceeds half of this machine's memory (the algorithms
    need several times the channels' size on top)."""
    total = physical_memory_bytes()
    if total is None or batch <= 1:
        return
    _, one = generate_channels(scn, 1, seed, precision)
    need = _tensor_bytes(one) * batch * max(restarts, 1)
    if need > total // 2:
        fit = max(1, (total // 2) // max(_tensor_bytes(one) * max(restarts, 1), 1))
        raise ScenarioError(f"batch: {batch} realizations need about {need / 1e9:.3g} GB for the channels alone "
                            f"({_tensor_bytes(one) / 1e6:.3g} MB each), more than half of this machine's "
                            f"{total / 1e9:.3g} GB; allowed here: batch <= {fit}")


def build_scenario(family: str, channels: Any, faults: FaultModel | None, seed: int) -> Scenario:
    """Network + air of drawn/loaded channels of ``family``; :class:`ScenarioError` if an agent's data is
    not finite."""
    try:
        net, air = registry.family(family).build(channels, faults, seed)
    except ValueError as exc:  # e.g. a fault the family does not have
        raise ScenarioError(str(exc)) from None
    check_finite(net, "scenario")
    ids = [a for role in net.counts for a in net.agent_ids(role)]
    for agent, *_ in (faults.crash if faults is not None else ()):
        if agent not in ids:
            raise ScenarioError(f"faults.crash: agent {agent!r} is not in this scenario; allowed: "
                                f"{', '.join(ids[:12])}{' ...' if len(ids) > 12 else ''}")
    return Scenario(family, net, air, channels)


def fault_model(cfg: Any) -> FaultModel:
    """The :class:`FaultModel` of a :class:`dsim.config.RunConfig` (its seed defaults to the run's)."""
    f = cfg.faults
    stale = getattr(f, "stale_csi", None)
    return FaultModel(message_loss=f.message_loss, missing_links=f.missing_links,
                      seed=cfg.seed if f.seed is None else f.seed,
                      csi_rho=1.0 if stale is None else stale.resolved_rho(),
                      csi_error=float(getattr(f, "csi_error", 0.0)),
                      delay=tuple(sorted(getattr(f, "delay", {}).items())),
                      deadline=tuple(sorted(getattr(f, "deadline_s", {}).items())),
                      phase_deadlines=tuple(sorted(getattr(f, "phase_deadline_s", {}).items())),
                      crash=tuple(c.entry() for c in getattr(f, "crash", [])))


def scenario_from_config(cfg: Any) -> Scenario:
    """The scenario of a :class:`dsim.config.RunConfig` (family draw or channel file).

    A drawn (family) scenario also puts its configuration into ``net.info``: ``scenario_config`` (the
    scenario mapping, JSON types) and ``precision``, so that a protocol can draw fresh samples of the
    same configuration (e.g. adaptation steps of a learned protocol), with a seed of its own.
    """
    scn = cfg.scenario
    if isinstance(scn, FileScenario):
        family, ch = load_channels_file(scn.file, cfg.precision)
        return build_scenario(family, ch, fault_model(cfg), cfg.seed)
    family, ch = generate_channels(scn, cfg.batch, cfg.seed, cfg.precision)
    s = build_scenario(family, ch, fault_model(cfg), cfg.seed)
    s.net.info["scenario_config"] = scn.model_dump(mode="json")
    s.net.info["precision"] = cfg.precision
    return s
