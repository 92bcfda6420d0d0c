"""A host: the agents of one role held together by an engine, and how it runs each phase.

Both engines use this class -- the local engine with one host per role holding all agents, the Ray
engine with one host per actor (a single agent or a shard).  It contains no algorithm math: it slices
local data and edges for its agents, calls the protocol's functions and keeps the per-edge "last value
received" buffers that message loss needs.
"""

from __future__ import annotations

import torch

from dsim.faults import FaultModel
from dsim.network import Network
from dsim.protocol import AgentBlock, EdgeView, Inbox, Measure, Message, Protocol

Tensor = torch.Tensor


def _positions(ids: Tensor, n_total: int) -> Tensor:
    """Map global agent index -> position within ``ids`` (-1 for agents not held)."""
    pos = torch.full((n_total,), -1, dtype=torch.int64, device=ids.device)
    pos[ids] = torch.arange(ids.numel(), device=ids.device)
    return pos


def edge_view(net: Network, name: str, src_ids: Tensor | None, dst_ids: Tensor | None) -> EdgeView:
    """The edges of set ``name`` whose sender is in ``src_ids`` (or receiver in ``dst_ids``), by edge id.

    Exactly one of ``src_ids`` / ``dst_ids`` selects the edges; the other side's local index is
    relative to that side's ids when given, else global.
    """
    es = net.edges[name]
    n_src_all, n_dst_all = net.counts[es.src_role], net.counts[es.dst_role]
    if src_ids is not None:
        sel = torch.isin(es.src, src_ids)
    else:
        sel = torch.isin(es.dst, dst_ids)
    eid = torch.nonzero(sel).flatten()
    src, dst = es.src[eid], es.dst[eid]
    src_local = _positions(src_ids, n_src_all)[src] if src_ids is not None else src
    dst_local = _positions(dst_ids, n_dst_all)[dst] if dst_ids is not None else dst
    return EdgeView(src=src, dst=dst, src_local=src_local, dst_local=dst_local, eid=eid,
                    mask=es.mask[:, eid], n_src=src_ids.numel() if src_ids is not None else n_src_all,
                    n_dst=dst_ids.numel() if dst_ids is not None else n_dst_all)


class Host:
    """Agents ``ids`` of ``role`` running ``proto`` on ``net``'s local data."""

    def __init__(self, proto: Protocol, net: Network, role: str, ids: Tensor, faults: FaultModel,
                 presliced: bool = False) -> None:
        """``presliced``: ``net.local[role]`` already holds only these agents (Ray actors get just theirs).

        The host runs where ``net``'s data is (``net.device``): the agent ids and the protocol's learned
        parameters (:meth:`Protocol.to`) are moved there."""
        self.proto, self.role, self.faults = proto, role, faults
        device = net.device
        self.ids = ids.to(device=device, dtype=torch.int64)
        proto.to(device)
        src = net.local.get(role, {})
        local = dict(src) if presliced else {k: v.index_select(1, self.ids) for k, v in src.items()}
        edges: dict[str, EdgeView] = {}
        self.out_edges: dict[str, EdgeView] = {}
        self.in_edges: dict[str, EdgeView] = {}
        for name, es in net.edges.items():
            if es.dst_role == role:
                self.in_edges[name] = edge_view(net, name, None, self.ids)
                edges[name] = self.in_edges[name]
            if es.src_role == role:
                self.out_edges[name] = edge_view(net, name, self.ids, None)
                if es.dst_role != role:
                    edges[name] = self.out_edges[name]
        self.n_edges = {name: es.size for name, es in net.edges.items()}
        self.src_role = {name: es.src_role for name, es in net.edges.items()}
        self.singles = {r for r, n in net.counts.items() if n == 1 and net.agent_ids(r) == [r]}
        self.block = AgentBlock(role=role, ids=self.ids, local=local, state={}, edges=edges, info=dict(net.info))
        self.last: dict[str, dict[str, Tensor]] = {}

    # ---------------------------------------------------------------- lifecycle
    def init(self) -> None:
        self.block.round = 0
        fn = self.proto.init.get(self.role)
        if fn is not None:
            fn(self.block)
        self.last = {}

    def output(self) -> tuple[Tensor, Tensor]:
        """(global ids of the items, decision tensor (B, n_items, ...)) for the protocol's output."""
        out = self.proto.output
        x = self.block.state[out.key]
        idx = self.ids if out.index == "agents" else self.in_edges[out.index].eid
        return idx, x

    def _crashed(self, role: str, ids: Tensor, rnd: int) -> Tensor:
        return self.faults.crashed(role, ids, rnd, role if role in self.singles else None)

    # ---------------------------------------------------------------- phases
    def transmit(self, k: int, rnd: int) -> tuple[Tensor, dict[str, Tensor]]:
        ph = self.proto.phases[k]
        assert isinstance(ph, Measure)
        self.block.round = rnd
        sig = ph.transmit(self.block)
        idx = self.ids if ph.index == "agents" else self.in_edges[ph.index].eid
        return idx, sig

    def measured(self, k: int, rnd: int, meas: dict[str, Tensor]) -> None:
        ph = self.proto.phases[k]
        assert isinstance(ph, Measure)
        self.block.round = rnd
        ph.receive(self.block, meas)

    def compute(self, k: int, rnd: int) -> None:
        self.block.round = rnd
        self.proto.phases[k].compute(self.block)  # type: ignore[union-attr]

    def send(self, k: int, rnd: int) -> tuple[EdgeView, dict[str, Tensor]]:
        """The payload of phase ``k`` on every out-edge of this host: (edges, {field: (B, E_out, ...)})."""
        ph = self.proto.phases[k]
        assert isinstance(ph, Message)
        self.block.round = rnd
        ev = self.out_edges[ph.edges]
        payload = ph.send(self.block, ev)
        for f in ph.fields:
            x = payload[f.name]
            want = (x.shape[0], ev.size) + f.shape
            if tuple(x.shape) != want:
                raise ValueError(f"phase {ph.name!r}: field {f.name!r} has shape {tuple(x.shape)}, expected {want}")
        return ev, payload

    def deliver(self, k: int, rnd: int, eids: Tensor, payload: dict[str, Tensor]) -> None:
        """Receive phase ``k``'s messages on in-edges ``eids`` (any order; all in-edges of this host).

        Lost and late messages are replaced by the edge's last value (or the phase's initial one); a late one
        becomes the edge's last value for the next round (:mod:`dsim.faults`) -- or, for a phase with
        ``silent='exclude'``, left out like absent edges this round; then the phase's ``combine`` (if any)
        maps them per in-edge; then, for a phase with ``aggr`` != 'none', they are aggregated over each
        receiver's present in-edges.
        """
        ph = self.proto.phases[k]
        assert isinstance(ph, Message)
        self.block.round = rnd
        ev = self.in_edges[ph.edges]
        if eids.numel() != ev.size or not torch.equal(eids, ev.eid):
            order = torch.argsort(eids)
            eids = eids[order]
            if not torch.equal(eids, ev.eid):
                raise RuntimeError(f"phase {ph.name!r}: host got edges {eids.tolist()}, expects {ev.eid.tolist()}")
            payload = {n: v.index_select(1, order) for n, v in payload.items()}
        payload = {n: ev.masked(v) for n, v in payload.items()}  # nothing travels on an absent edge
        ok, late = self.faults.arrivals(rnd, k, ev.eid, self.block.batch, self.n_edges[ph.edges])
        if self.faults.crash:  # a sender that is down is silent (its host runs nothing: dsim.engine.restart)
            alive = ~self._crashed(self.src_role[ph.edges], ev.src, rnd)
            ok, late = ok & alive, late & alive
        if ph.silent == "exclude":  # a missing message is an absent edge this round
            if self.faults.substitutes:
                ev = EdgeView(ev.src, ev.dst, ev.src_local, ev.dst_local, ev.eid, ev.mask & ok, ev.n_src, ev.n_dst)
                payload = {n: ev.masked(v) for n, v in payload.items()}
        elif self.faults.substitutes:
            last = self.last.get(ph.name)
            if last is None:
                last = (ph.initial(self.block, ev) if ph.initial
                        else {n: torch.zeros_like(v) for n, v in payload.items()})
            merged, held = {}, {}
            for n, v in payload.items():
                m = ok.reshape(ok.shape + (1,) * (v.dim() - 2))
                merged[n] = torch.where(m, v, last[n])
                held[n] = torch.where(late.reshape(m.shape), v, merged[n])  # a late message arrives for next round
            payload = merged
            self.last[ph.name] = held
        if ph.combine is not None:
            payload = ph.combine(self.block, ev, payload)
        if ph.aggr != "none":
            payload = {n: ev.reduce_dst(v, ph.aggr) for n, v in payload.items()}
        ph.receive(self.block, Inbox(payload=payload, delivered=ok & ev.mask, edges=ev))
