"""The network: roles, agents, signaling edge sets and each agent's local data (DESIGN.md §3).

A :class:`Network` holds only what agents may know; the global channels live in the air interface
(:mod:`dsim.air`).  Edge sets are fixed over the batch; whether an edge exists in realization ``b``
(range cut-off, missing links) is the edge set's ``mask[b, e]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

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
