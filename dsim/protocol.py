"""Protocol, phase and message types (DESIGN.md §3).

A protocol is a fixed sequence of phases run once per communication round.  Each phase is one of

* :class:`Measure` -- agents of one role transmit (precoded pilots); the air interface computes what
  agents of another role measure; the receivers store it.  Physics: no signaling bytes.
* :class:`Message` -- agents of the sending role compute a payload per outgoing edge of an edge set
  (a signaling link class such as ``ul``); the engine carries it (wire policy, faults) to the
  receivers, whose ``receive`` stores/aggregates the inbox.
* :class:`Local` -- agents of one role update their state from what they hold (compute only).

Protocol functions only ever see an :class:`AgentBlock`: the agents of one role that one engine host
holds (all of them on the local engine, a shard or a single agent on the Ray engine), their *local*
data and the edges touching them.  All tensors have leading dims ``(B, n_local, ...)`` (per agent) or
``(B, E_local, ...)`` (per edge, edges in increasing global edge id).  Written this way, the same
function runs unchanged on every engine and sharding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

Tensor = torch.Tensor

#: kinds of message fields and how many reals one message carries for each
FIELD_KINDS = ("real", "complex", "hermitian")


@dataclass(frozen=True)
class Field:
    """One named tensor of a message payload.

    kind:  'real' | 'complex' | 'hermitian' (a Hermitian ``n x n`` matrix travels as its ``n^2`` reals:
           the real diagonal and the real/imaginary parts of the strict upper triangle).
    shape: shape of the tensor in ONE message (without batch/edge dims); hermitian: ``(n, n)``.
    """

    name: str
    kind: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.kind not in FIELD_KINDS:
            raise ValueError(f"field {self.name!r}: kind {self.kind!r} not in {FIELD_KINDS}")
        if self.kind == "hermitian" and (len(self.shape) != 2 or self.shape[0] != self.shape[1]):
            raise ValueError(f"field {self.name!r}: hermitian fields are square matrices, got {self.shape}")

    @property
    def reals(self) -> int:
        """Real numbers one message of this field carries."""
        n = 1
        for s in self.shape:
            n *= s
        if self.kind == "real":
            return n
        if self.kind == "complex":
            return 2 * n
        return self.shape[0] * self.shape[0]


@dataclass
class EdgeView:
    """The edges of one edge set that touch one host, in increasing global edge id.

    src, dst:             (E,) global agent indices of sender / receiver.
    src_local, dst_local: (E,) index of the sender in the sending host's agents and of the receiver in
                          the receiving host's agents (on the local engine: equal to src, dst).
    eid:                  (E,) global edge ids.
    mask:                 (B, E) bool, the edge exists in realization b (in range, not a missing link).
    n_src, n_dst:         number of agents in the sender's / receiver's host.
    """

    src: Tensor
    dst: Tensor
    src_local: Tensor
    dst_local: Tensor
    eid: Tensor
    mask: Tensor
    n_src: int
    n_dst: int

    @property
    def size(self) -> int:
        return int(self.eid.numel())

    def gather_src(self, x: Tensor) -> Tensor:
        """Per-sender tensor ``(B, n_src, ...)`` -> per-edge ``(B, E, ...)``."""
        return x.index_select(1, self.src_local)

    def gather_dst(self, x: Tensor) -> Tensor:
        """Per-receiver tensor ``(B, n_dst, ...)`` -> per-edge ``(B, E, ...)``."""
        return x.index_select(1, self.dst_local)

    def masked(self, x: Tensor) -> Tensor:
        """Zero the entries of a per-edge tensor ``(B, E, ...)`` on edges absent in a realization."""
        m = self.mask.reshape(self.mask.shape + (1,) * (x.dim() - 2))
        return torch.where(m, x, torch.zeros((), dtype=x.dtype))

    def sum_dst(self, x: Tensor) -> Tensor:
        """Scatter-sum a per-edge tensor ``(B, E, ...)`` onto receivers -> ``(B, n_dst, ...)`` (absent edges masked)."""
        out = torch.zeros((x.shape[0], self.n_dst) + tuple(x.shape[2:]), dtype=x.dtype)
        return out.index_add_(1, self.dst_local, self.masked(x))

    def sum_src(self, x: Tensor) -> Tensor:
        """Scatter-sum a per-edge tensor ``(B, E, ...)`` onto senders -> ``(B, n_src, ...)`` (absent edges masked)."""
        out = torch.zeros((x.shape[0], self.n_src) + tuple(x.shape[2:]), dtype=x.dtype)
        return out.index_add_(1, self.src_local, self.masked(x))

    def sum_dst_gram(self, a: Tensor, b: Tensor) -> Tensor:
        """sum over each receiver's in-edges of ``a_e^H b_e``: per-edge ``(B, E, r, c)`` pairs -> ``(B, n_dst, c, c)``.

        Absent edges are masked.  One batched matmul per receiver instead of E outer products and a
        scatter: the edges of a receiver are stacked along the inner (r) dimension, zero-padded to the
        largest in-degree.
        """
        slot, deg = self._dst_slots()
        B, _, r, c = a.shape
        flat = self.dst_local * deg + slot
        shape = (B, self.n_dst * deg, r, c)
        pa = torch.zeros(shape, dtype=a.dtype).index_copy(1, flat, self.masked(a))
        pb = torch.zeros(shape, dtype=b.dtype).index_copy(1, flat, b)
        return pa.reshape(B, self.n_dst, deg * r, c).mH @ pb.reshape(B, self.n_dst, deg * r, c)

    def _dst_slots(self) -> tuple[Tensor, int]:
        """(E,) position of each edge among its receiver's in-edges, and the largest in-degree (cached)."""
        cached = self.__dict__.get("_slots")
        if cached is None:
            E = self.size
            order = torch.argsort(self.dst_local, stable=True)
            counts = torch.bincount(self.dst_local, minlength=self.n_dst)
            start = torch.cumsum(counts, 0) - counts
            slot = torch.empty(E, dtype=torch.int64)
            slot[order] = torch.arange(E) - start[self.dst_local[order]]
            cached = (slot, int(counts.max()) if E else 0)
            self.__dict__["_slots"] = cached
        return cached

    def max_dst(self, x: Tensor, empty: float = 0.0) -> Tensor:
        """Scatter-max of a real per-edge tensor ``(B, E, ...)`` onto receivers (no edge: ``empty``)."""
        fill = torch.finfo(x.dtype).min
        m = self.mask.reshape(self.mask.shape + (1,) * (x.dim() - 2))
        xm = torch.where(m, x, torch.full((), fill, dtype=x.dtype))
        out = torch.full((x.shape[0], self.n_dst) + tuple(x.shape[2:]), fill, dtype=x.dtype)
        idx = self.dst_local.reshape(1, -1, *([1] * (x.dim() - 2))).expand_as(xm)
        out = out.scatter_reduce(1, idx, xm, reduce="amax", include_self=True)
        return torch.where(out == fill, torch.full((), empty, dtype=x.dtype), out)


@dataclass
class Inbox:
    """What a receiving host got in one message phase.

    payload:   field name -> (B, E_in, ...) as the receiver sees it (after the wire policy; a lost message
               is replaced by the last value received on that edge, or the phase's initial value).
    delivered: (B, E_in) bool, a fresh message arrived on the edge this round.
    edges:     the host's in-edges of the phase's edge set.
    """

    payload: dict[str, Tensor]
    delivered: Tensor
    edges: EdgeView

    def __getitem__(self, name: str) -> Tensor:
        return self.payload[name]


@dataclass
class AgentBlock:
    """The agents of one role held by one engine host, as a protocol function sees them.

    role:   'bs' | 'ue' | 'ap' | 'cpu' ...
    ids:    (n,) global indices of the agents, increasing.
    local:  name -> (B, n, ...) what these agents may know (their own CSI, budgets, weights).
    state:  name -> tensor; the protocol's variables (per agent or per edge); protocol functions write it.
    edges:  edge-set name -> EdgeView of the edges touching these agents (as sender or receiver).
    info:   static scenario facts every agent knows (antenna counts, seed, ...).
    """

    role: str
    ids: Tensor
    local: dict[str, Tensor]
    state: dict[str, Any]
    edges: dict[str, EdgeView]
    info: dict[str, Any]

    @property
    def n(self) -> int:
        return int(self.ids.numel())

    @property
    def batch(self) -> int:
        return int(self.info["batch"])

    def generator(self, salt: int = 0) -> torch.Generator:
        """A generator seeded from the run seed and ``salt``: identical on every host and engine.

        Draw the *global* tensor with it and slice by ``ids``/edge ids, so shards see the same numbers.
        """
        g = torch.Generator()
        g.manual_seed(int(self.info.get("seed", 0)) * 1_000_003 + salt)
        return g


Send = Callable[[AgentBlock, EdgeView], dict[str, Tensor]]
Receive = Callable[[AgentBlock, Inbox], None]


@dataclass
class Measure:
    """Transmitters emit a signal; the air computes what receivers measure (no signaling bytes).

    transmit(block) -> {name: (B, n_items, ...)} where items are the block's agents (``index='agents'``)
                       or the block's in-edges of edge set ``index`` (e.g. beamformers per served UE).
    observe:           name of the air measurement (``air.measure(observe, signals)``).
    receive(block, measurement) with measurement tensors ``(B, n, ...)`` for the block's agents.
    pilots(info) -> pilot symbols sent over the air per realization (ledger link class ``air``).
    """

    name: str
    transmitter: str
    receiver: str
    transmit: Callable[[AgentBlock], dict[str, Tensor]]
    index: str
    observe: str
    receive: Callable[[AgentBlock, dict[str, Tensor]], None]
    pilots: Callable[[dict[str, Any]], int]
    kind: str = field(default="measure", init=False)


@dataclass
class Message:
    """A signaling phase over the edges of one edge set (sender/receiver roles and link class from it).

    send(block, out_edges) -> {field: (B, E_out, *field.shape)}: one message per outgoing edge.
    receive(block, inbox):    update the receivers' state from the inbox.
    when:                     'every' round (default), only the 'first' or only the 'last' round.
    initial(block, in_edges) -> {field: (B, E_in, ...)}: what a receiver holds before any message arrived
                              (default zeros); kept when messages are lost.
    """

    name: str
    edges: str
    fields: tuple[Field, ...]
    send: Send
    receive: Receive
    initial: Callable[[AgentBlock, EdgeView], dict[str, Tensor]] | None = None
    when: str = "every"
    kind: str = field(default="message", init=False)


@dataclass
class Local:
    """Agents of ``role`` update their state from what they hold (compute only)."""

    name: str
    role: str
    compute: Callable[[AgentBlock], None]
    when: str = "every"
    kind: str = field(default="local", init=False)


Phase = Measure | Message | Local

#: when a phase runs: every round, only in the first, only in the last round
WHEN = ("every", "first", "last")


def runs_in(phase: Phase, rnd: int, rounds: int) -> bool:
    """Whether ``phase`` runs in round ``rnd`` (1-based) of ``rounds`` (``when``: every | first | last)."""
    when = getattr(phase, "when", "every")
    if when == "every":
        return True
    if when == "first":
        return rnd == 1
    if when == "last":
        return rnd == rounds
    raise ValueError(f"phase {phase.name!r}: when={when!r} not in {WHEN}")


@dataclass
class Output:
    """Where the protocol's decision lives: ``state[key]`` of role ``role``, indexed by its agents
    (``index='agents'``) or by its in-edges of edge set ``index``; assembled by global id."""

    role: str
    key: str
    index: str = "agents"


@dataclass
class Protocol:
    """A distributed algorithm: per-role initialisation, the phases of one round, the decision.

    ``rounds`` communication rounds are run; the decision is evaluated after the initialisation
    (round 0) and after every round.
    """

    name: str
    roles: tuple[str, ...]
    init: dict[str, Callable[[AgentBlock], None]]
    phases: list[Phase]
    rounds: int
    output: Output
    unit: str = "nat/Hz"
    meta: dict[str, Any] = field(default_factory=dict)

    def phase_roles(self, phase: Phase, edge_roles: dict[str, tuple[str, str]]) -> tuple[str, str]:
        """(acting role, receiving role) of a phase; for Local both are its role."""
        if isinstance(phase, Measure):
            return phase.transmitter, phase.receiver
        if isinstance(phase, Message):
            return edge_roles[phase.edges]
        return phase.role, phase.role
