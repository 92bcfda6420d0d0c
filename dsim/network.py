"""The network: roles, agents, signaling edge sets and each agent's local data (DESIGN.md §3).

A :class:`Network` holds only what agents may know; the global channels live in the air interface
(:mod:`dsim.air`).  Edge sets are fixed over the batch; whether an edge exists in realization ``b``
(range cut-off, missing links) is the edge set's ``mask[b, e]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from dsim.devices import same_device

Tensor = torch.Tensor


@dataclass
class EdgeSet:
    """Directed edges ``src -> dst`` between two roles on one link class.

    src, dst: (E,) int64 global agent indices; mask: (B, E) bool, edge present in realization b.
    """

    name: str
    src_role: str
    dst_role: str
    link: str
    src: Tensor
    dst: Tensor
    mask: Tensor

    @property
    def size(self) -> int:
        return int(self.src.numel())

    def to(self, device: torch.device | str) -> EdgeSet:
        """The edge set with its index and mask tensors on ``device`` (self when already there)."""
        if all(same_device(t.device, device) for t in (self.src, self.dst, self.mask)):
            return self
        return EdgeSet(self.name, self.src_role, self.dst_role, self.link, self.src.to(device),
                       self.dst.to(device), self.mask.to(device))


@dataclass
class Network:
    """Agents, edges and local data of a batch of ``batch`` scenario realizations.

    counts: role -> number of agents (``bs``: K, ``ue``: I, ...).
    edges:  edge-set name -> EdgeSet.
    local:  role -> {name: (B, n_role, ...)} what each agent knows.
    info:   static facts every agent knows (dims, seed, family, unit, dtype).
    origin: for a network made by :meth:`repeat`, the network repeated (else None); ``times``: how often.
    """

    family: str
    batch: int
    counts: dict[str, int]
    edges: dict[str, EdgeSet]
    local: dict[str, dict[str, Tensor]]
    info: dict[str, Any] = field(default_factory=dict)
    origin: Network | None = None
    times: int = 1

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(self.counts)

    @property
    def device(self) -> torch.device:
        """The device of the local data (else of the edge sets; cpu when there is neither)."""
        for d in self.local.values():
            for v in d.values():
                return v.device
        for e in self.edges.values():
            return e.src.device
        return torch.device("cpu")

    def to(self, device: torch.device | str) -> Network:
        """The network with its local data and edge tensors on ``device`` (self when already there);
        a repeated network's ``origin`` moves with it."""
        tensors = [v for d in self.local.values() for v in d.values()]
        tensors += [t for e in self.edges.values() for t in (e.src, e.dst, e.mask)]
        if all(same_device(t.device, device) for t in tensors):
            return self
        local = {r: {k: v.to(device) for k, v in d.items()} for r, d in self.local.items()}
        edges = {k: e.to(device) for k, e in self.edges.items()}
        origin = None if self.origin is None else self.origin.to(device)
        return Network(self.family, self.batch, dict(self.counts), edges, local, dict(self.info), origin, self.times)

    def agent_ids(self, role: str) -> list[str]:
        """Logical agent ids, e.g. ``['bs0', 'bs1', 'bs2']``; ``cpu`` when the role has one agent named so."""
        n = self.counts[role]
        if role == "cpu" and n == 1:
            return ["cpu"]
        return [f"{role}{i}" for i in range(n)]

    def edge_roles(self) -> dict[str, tuple[str, str]]:
        return {name: (e.src_role, e.dst_role) for name, e in self.edges.items()}

    def repeat(self, n: int) -> Network:
        """The network with its batch repeated ``n`` times (realization-major blocks: b + B*r)."""
        if n == 1:
            return self
        edges = {k: EdgeSet(e.name, e.src_role, e.dst_role, e.link, e.src, e.dst, e.mask.repeat(n, 1))
                 for k, e in self.edges.items()}
        local = {r: {k: v.repeat(n, *([1] * (v.dim() - 1))) for k, v in d.items()} for r, d in self.local.items()}
        info = dict(self.info, batch=self.batch * n)
        base = self.origin or self
        return Network(self.family, self.batch * n, dict(self.counts), edges, local, info, base, self.times * n)
