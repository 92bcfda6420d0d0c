"""Scenario config -> (network of local knowledge, air interface): the one entry point of every family."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsim.faults import FaultModel
from dsim.network import Network


@dataclass
class Scenario:
    """A built scenario: ``family``, the agents' ``net``, the ``air`` (ground truth) and the raw channels."""

    family: str
    net: Network
    air: Any
    channels: Any

    @property
    def unit(self) -> str:
        return self.air.unit


def complex_dtype(precision: str) -> torch.dtype:
    """'double' -> complex128, 'single' -> complex64."""
    return torch.complex128 if precision == "double" else torch.complex64


def file_family(path: str | Path) -> str:
    """Family stored in a channel file (``family`` key; files without one are multicell, DESIGN §5)."""
    from dsim.scenarios.channel_file import ChannelFileError

    try:
        with np.load(path, allow_pickle=False) as z:
            return str(z["family"]) if "family" in z.files else "multicell"
    except (OSError, ValueError) as exc:
        raise ChannelFileError(f"{path}: not a readable .npz channel file ({exc})") from exc


def generate_channels(scn, batch: int, seed: int, precision: str):
    """Draw the channels of a family scenario config (``scn.family``) -> (family, channels)."""
    gen = torch.Generator()
    gen.manual_seed(seed)
    dtype = complex_dtype(precision)
    if scn.family == "multicell":
        from dsim.scenarios.multicell import multicell_from_options

        return "multicell", multicell_from_options(scn, batch, gen, dtype)
    if scn.family == "cellfree":
        from dsim.scenarios.cellfree import cellfree_from_options

        return "cellfree", cellfree_from_options(scn, batch, gen, dtype)
    raise ValueError(f"unknown scenario family {scn.family!r}; allowed: multicell, cellfree")


def load_channels_file(path: str | Path, precision: str):
    """Read a channel file of any family -> (family, channels)."""
    family = file_family(path)
    dtype = complex_dtype(precision)
    if family == "multicell":
        from dsim.scenarios.channel_file import load_channels

        return family, load_channels(path, dtype)
    if family == "cellfree":
        from dsim.scenarios.cellfree import load_cellfree

        return family, load_cellfree(path, dtype)
    from dsim.scenarios.channel_file import ChannelFileError

    raise ChannelFileError(f"{path}: family: {family!r} not allowed; allowed: multicell, cellfree")


def build_scenario(family: str, channels, faults: FaultModel | None, seed: int) -> Scenario:
    """Network + air of drawn/loaded channels."""
    if family == "multicell":
        from dsim.scenarios.network_multicell import multicell_network

        net, air = multicell_network(channels, faults, seed)
        return Scenario(family, net, air, channels)
    if family == "cellfree":
        from dsim.scenarios.network_cellfree import cellfree_network

        net, air = cellfree_network(channels, faults, seed)
        return Scenario(family, net, air, channels)
    raise ValueError(f"unknown scenario family {family!r}; allowed: multicell, cellfree")


def scenario_from_config(cfg) -> Scenario:
    """The scenario of a :class:`dsim.config.RunConfig` (family draw or channel file).

    A drawn (family) scenario also puts its configuration into ``net.info``: ``scenario_config`` (the
    scenario mapping, JSON types) and ``precision``, so that a protocol can draw fresh samples of the
    same configuration (e.g. ICGNN's ``adapt_steps``), with a seed of its own.
    """
    scn = cfg.scenario
    if getattr(scn, "file", None) is not None:
        family, ch = load_channels_file(scn.file, cfg.precision)
        return build_scenario(family, ch, fault_model(cfg), cfg.seed)
    family, ch = generate_channels(scn, cfg.batch, cfg.seed, cfg.precision)
    s = build_scenario(family, ch, fault_model(cfg), cfg.seed)
    s.net.info["scenario_config"] = scn.model_dump(mode="json") if hasattr(scn, "model_dump") else dict(vars(scn))
    s.net.info["precision"] = cfg.precision
    return s


def fault_model(cfg) -> FaultModel:
    f = cfg.faults
    return FaultModel(message_loss=f.message_loss, missing_links=f.missing_links,
                      seed=cfg.seed if f.seed is None else f.seed)


def save_channels_file(family: str, channels, path: Path) -> Path:
    """Write a channel file of ``family`` (``dsim sample``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if family == "multicell":
        from dsim.scenarios.channel_file import save_channels

        save_channels(path, channels)
    else:
        from dsim.scenarios.cellfree import save_cellfree

        save_cellfree(path, channels)
    return path
