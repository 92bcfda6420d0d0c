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


#: how a message phase's inbox is aggregated over each receiver's in-edges
AGGREGATIONS = ("none", "sum", "mean", "max")
#: what a message that did not arrive means to its receiver (:class:`Message` ``silent``)
SILENT = ("last", "exclude")


def group_slots(index: Tensor, n: int) -> tuple[Tensor, int]:
    """Position of each item among the items with the same ``index`` (stable order), and the largest group.

    index: (E,) int64 in [0, n).  Returns (slot (E,) int64, max group size (0 when E = 0)).  E.g. the
    slot of each in-edge among its receiver's in-edges, or of each served UE among its BS's UEs.
    """
    E = int(index.numel())
    order = torch.argsort(index, stable=True)
    counts = torch.bincount(index, minlength=n)
    start = torch.cumsum(counts, 0) - counts
    slot = torch.empty(E, dtype=torch.int64, device=index.device)
    slot[order] = torch.arange(E, device=index.device) - start[index[order]]
    return slot, int(counts.max()) if E else 0


def segment_reduce(x: Tensor, index: Tensor, n: int, how: str, dim: int = 1, mask: Tensor | None = None) -> Tensor:
    """Scatter-reduce ``x`` along ``dim`` onto ``n`` slots: out[.., j, ..] = how_{e: index[e] = j} x[.., e, ..].

    x:     (..., E, ...) with the items along ``dim``; index: (E,) int64 in [0, n).
    how:   'sum' | 'mean' | 'max' (max: real x only).
    mask:  bool, broadcastable to x's leading dims up to and including ``dim`` (e.g. (B, E) for dim 1):
           items where it is False are left out.  A slot with no item gets 0.
    Returns x's shape with dim ``dim`` of size n.
    """
    if how not in AGGREGATIONS[1:]:
        raise ValueError(f"aggregation {how!r} not in {AGGREGATIONS[1:]}")
    dim = dim % x.dim()
    shape = x.shape[:dim] + (n,) + x.shape[dim + 1:]
    m = None if mask is None else mask.reshape(mask.shape + (1,) * (x.dim() - mask.dim()))
    if how == "max":
        # the items of each slot side by side (padded to the largest group with -inf, left-out items -inf),
        # then a dense amax: much faster than a scatter, forward and backward; empty slots get 0
        slot, deg = group_slots(index, n)
        if deg == 0:
            return torch.zeros(shape, dtype=x.dtype, device=x.device)
        neg = torch.full((), -torch.inf, dtype=x.dtype, device=x.device)
        xm = x if m is None else torch.where(m, x, neg)
        pad = torch.full(x.shape[:dim] + (n * deg,) + x.shape[dim + 1:], -torch.inf, dtype=x.dtype, device=x.device)
        pad = pad.index_copy(dim, index * deg + slot, xm)
        out = pad.reshape(x.shape[:dim] + (n, deg) + x.shape[dim + 1:]).amax(dim=dim + 1)
        return torch.where(out == neg, torch.zeros((), dtype=x.dtype, device=x.device), out)
    xm = x if m is None else torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))
    out = torch.zeros(shape, dtype=x.dtype, device=x.device).index_add_(dim, index, xm)
    if how == "mean":
        ones = torch.ones(x.shape[: dim + 1], dtype=x.real.dtype, device=x.device)
        if m is not None:
            ones = m.reshape(m.shape[: dim + 1]).expand(ones.shape).to(ones.dtype)
        cnt = torch.zeros(shape[: dim + 1], dtype=ones.dtype, device=x.device).index_add_(dim, index, ones)
        out = out / cnt.clamp_min(1.0).reshape(cnt.shape + (1,) * (x.dim() - dim - 1))
    return out


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
        return torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))

    def reduce_dst(self, x: Tensor, how: str) -> Tensor:
        """Aggregate a per-edge tensor ``(B, E, ...)`` onto receivers -> ``(B, n_dst, ...)``:
        ``how`` = sum | mean | max over each receiver's present in-edges (absent edges left out, no edge: 0)."""
        return segment_reduce(x, self.dst_local, self.n_dst, how, mask=self.mask)

    def sum_dst(self, x: Tensor) -> Tensor:
        """Scatter-sum a per-edge tensor ``(B, E, ...)`` onto receivers -> ``(B, n_dst, ...)`` (absent edges masked)."""
        return self.reduce_dst(x, "sum")

    def mean_dst(self, x: Tensor) -> Tensor:
        """Mean of a per-edge tensor over each receiver's present in-edges -> ``(B, n_dst, ...)`` (no edge: 0)."""
        return self.reduce_dst(x, "mean")

    def max_dst(self, x: Tensor) -> Tensor:
        """Max of a real per-edge tensor over each receiver's present in-edges -> ``(B, n_dst, ...)`` (no edge: 0)."""
        return self.reduce_dst(x, "max")

    def sum_src(self, x: Tensor) -> Tensor:
        """Scatter-sum a per-edge tensor ``(B, E, ...)`` onto senders -> ``(B, n_src, ...)`` (absent edges masked)."""
        return segment_reduce(x, self.src_local, self.n_src, "sum", mask=self.mask)

    def sum_dst_gram(self, a: Tensor, b: Tensor) -> Tensor:
        """sum over each receiver's in-edges of ``a_e^H b_e``: per-edge ``(B, E, r, c)`` pairs -> ``(B, n_dst, c, c)``.

        Absent edges are masked.  One batched matmul per receiver instead of E outer products and a
        scatter: the edges of a receiver are stacked along the inner (r) dimension, zero-padded to the
        largest in-degree.
        """
        slot, deg = self.dst_slots()
        B, _, r, c = a.shape
        flat = self.dst_local * deg + slot
        shape = (B, self.n_dst * deg, r, c)
        pa = torch.zeros(shape, dtype=a.dtype, device=a.device).index_copy(1, flat, self.masked(a))
        pb = torch.zeros(shape, dtype=b.dtype, device=b.device).index_copy(1, flat, b)
        return pa.reshape(B, self.n_dst, deg * r, c).mH @ pb.reshape(B, self.n_dst, deg * r, c)

    def dst_slots(self) -> tuple[Tensor, int]:
        """(E,) position of each edge among its receiver's in-edges, and the largest in-degree (cached)."""
        cached = self.__dict__.get("_slots")
        if cached is None:
            cached = group_slots(self.dst_local, self.n_dst)
            self.__dict__["_slots"] = cached
        return cached


@dataclass
class Inbox:
    """What a receiving host got in one message phase.

    payload:   field name -> (B, E_in, ...) as the receiver sees it (after the wire policy; a lost message
               is replaced by the last value received on that edge, or the phase's initial value); for a
               phase with ``aggr`` != 'none' already aggregated over each receiver's present in-edges:
               (B, n, ...) in the block's agent order.
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
    round:  the communication round being run: 0 during the initialisation, r (1-based) during every
            phase of round r (an unrolled / GNN protocol's layer index).
    """

    role: str
    ids: Tensor
    local: dict[str, Tensor]
    state: dict[str, Any]
    edges: dict[str, EdgeView]
    info: dict[str, Any]
    round: int = 0

    @property
    def n(self) -> int:
        return int(self.ids.numel())

    @property
    def batch(self) -> int:
        return int(self.info["batch"])

    @property
    def device(self) -> torch.device:
        """The device of the block's local data (else of its agent ids; cpu when there is nothing): create
        every tensor there (``device=block.device``), never on the default device (DESIGN §11)."""
        for v in self.local.values():
            if isinstance(v, Tensor):
                return v.device
        return self.ids.device if isinstance(self.ids, Tensor) else torch.device("cpu")

    def generator(self, salt: int = 0) -> torch.Generator:
        """A CPU generator seeded from the run seed and ``salt``: identical on every host, engine and device.

        Draw the *global* tensor with it on the CPU (``device="cpu"``), move it to :attr:`device`, and slice
        by ``ids``/edge ids, so shards and devices see the same numbers.
        """
        g = torch.Generator(device="cpu")
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
    aggr:                     'none' (default): the inbox holds one message per in-edge (B, E_in, ...);
                              'sum' | 'mean' | 'max': the host aggregates the messages over each receiver's
                              present in-edges (after the fault model's substitutions) and the inbox holds
                              (B, n, ...) per receiving agent (no in-edge: 0).  With a single in-edge per
                              receiver, 'sum' hands each agent its message in agent order.
    when:                     'every' round (default), only the 'first' or only the 'last' round.
    initial(block, in_edges) -> {field: (B, E_in, ...)}: what a receiver holds before any message arrived
                              (default zeros); kept when messages are lost.
    silent:                   what a message that did not arrive (lost, late, its sender crashed) means to
                              the receiver -- the protocol's one declaration, whatever the fault:
                              'last' (default): the last value received on the edge (or ``initial``);
                              'exclude': the edge is left out this round, like an absent edge (the
                              aggregation runs over the messages that arrived; with aggr 'none' the payload
                              is 0 there and ``inbox.delivered`` says so).
    combine(block, in_edges, payload) -> {name: (B, E_in, ...)}: optional receiver-side map of each
                              in-edge's message (what arrived, after the fault model's substitutions) with
                              what the receiver holds about that edge (e.g. a GNN's message function of the
                              sender's state and the edge feature the receiver measured), applied before
                              ``aggr``; compute only, the ledger counts the fields sent.
    """

    name: str
    edges: str
    fields: tuple[Field, ...]
    send: Send
    receive: Receive
    initial: Callable[[AgentBlock, EdgeView], dict[str, Tensor]] | None = None
    aggr: str = "none"
    when: str = "every"
    silent: str = "last"
    combine: Callable[[AgentBlock, EdgeView, dict[str, Tensor]], dict[str, Tensor]] | None = None
    kind: str = field(default="message", init=False)

    def __post_init__(self) -> None:
        if self.aggr not in AGGREGATIONS:
            raise ValueError(f"phase {self.name!r}: aggr={self.aggr!r} not in {AGGREGATIONS}")
        if self.silent not in SILENT:
            raise ValueError(f"phase {self.name!r}: silent={self.silent!r} not in {SILENT}")


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
    #: the learned parameters the protocol's functions use (an ``nn.Module``), or None; engines move it to
    #: the device the protocol runs on (:meth:`to`)
    module: Any = None

    def to(self, device: torch.device | str) -> Protocol:
        """Move :attr:`module` (in place) to ``device``, where the protocol's functions will run; returns self."""
        if self.module is not None:
            self.module.to(device)
        return self
