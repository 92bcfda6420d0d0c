"""Crashed agents on both engines: hosting them alone, running nothing while they are down, snapshots,
the Ray engine's real kill and restart (the ``crash`` fault of :mod:`dsim.faults`).

A crash entry (agent, round ``a``, down rounds ``d``; ``d = 0``: for good) takes the agent down for rounds
``a .. a + d - 1``.  What "down" means is the same on both engines, so both give the same numbers:

* the agent's host runs none of its measure-receive, compute, send or deliver steps in those rounds:
  its protocol state (and the last values it holds per in-edge) stays that of the end of round ``a - 1``;
* nothing it would send is heard: its receivers see a silent sender (:meth:`dsim.faults.FaultModel.crashed`)
  and apply their protocol's silent-neighbour rule; the engines carry nothing (the local engine zeros, the
  Ray engine an empty bundle, :func:`complete_inbox` fills the receiver's inbox with zeros the receiver
  then replaces by its last values);
* what the air and the run need from it -- its pilots (``transmit``) and its share of the decision
  (``output``) -- come from that frozen state: a crashed transmitter keeps its last setting;
* when it is back (round ``a + d``) it goes on from that state as if nothing happened.

Every crashed agent is hosted alone (:func:`isolate`), so "its host runs nothing" freezes exactly its state.
The local engine simulates the crash with a :class:`HostGroup` (one host per crashed agent, one for the
rest of the role) that skips the down hosts' steps.  The Ray engine does it for real (:class:`CrashPlan`):
the actors that host a crashed agent snapshot their host state (:func:`snapshot`, kept in Ray's object
store, owned by the driver) after every round before the crash; at the crash round the driver kills the
actor (``ray.kill``).  With a restart (``d > 0``) Ray restarts it (the actor was created with
``max_restarts=-1``; the constructor runs again), the driver re-configures it with the run's protocol and
restores the snapshot (:func:`restore`), and it stays down (:func:`muted` steps answer with silence) until
round ``a + d``.  Without a restart the killed actor stays dead and a stand-in actor (same agents, same
local data) holding the snapshot answers for it, down for good: the transport needs no special case.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from dsim.engine.host import Host
from dsim.faults import FaultModel
from dsim.network import Network
from dsim.protocol import EdgeView, Field, Message, Protocol

Tensor = torch.Tensor


# ---------------------------------------------------------------------------------------------- layout
def crash_indices(faults: FaultModel, net: Network) -> dict[str, set[int]]:
    """role -> global indices of its agents that have a ``crash`` entry."""
    where = {name: (role, i) for role in net.counts for i, name in enumerate(net.agent_ids(role))}
    out: dict[str, set[int]] = {}
    for agent, _, _ in faults.crash_windows():
        if agent in where:
            role, i = where[agent]
            out.setdefault(role, set()).add(i)
    return out


def isolate(parts: dict[str, list[Tensor]], crashed: dict[str, set[int]]) -> dict[str, list[Tensor]]:
    """Host layout (role -> id tensors, one per host) with every crashed agent alone in a host of its own,
    the other agents in their hosts as before (emptied hosts dropped)."""
    out = {}
    for role, hosts in parts.items():
        dead = crashed.get(role, set())
        if not dead:
            out[role] = list(hosts)
            continue
        kept = []
        for ids in hosts:
            alive = torch.tensor([i for i in ids.tolist() if i not in dead], dtype=ids.dtype)
            if alive.numel():
                kept.append(alive)
        out[role] = kept + [torch.tensor([i], dtype=torch.int64) for i in sorted(dead)]
    return out


def host_down(faults: FaultModel, role: str, ids: Tensor, rnd: int, name: str | None) -> bool:
    """Whether the host of agents ``ids`` of ``role`` is down in round ``rnd`` (any of its agents: a crashed
    agent is hosted alone)."""
    return bool(faults.crash) and bool(faults.crashed(role, ids, rnd, name).any())


def down_messages(faults: FaultModel, net: Network, edges: str, rnd: int) -> int:
    """Messages on edge set ``edges`` in round ``rnd`` (present edges, all realizations) whose sender is down:
    never sent, so not in the ledger (a lost message was sent and is counted; a down agent sends nothing)."""
    if not faults.crash:
        return 0
    es = net.edges[edges]
    role = es.src_role
    name = role if net.counts[role] == 1 and net.agent_ids(role) == [role] else None
    down = faults.crashed(role, es.src, rnd, name)
    return int(es.mask[:, down.to(es.mask.device)].sum()) if bool(down.any()) else 0


def _silent_payload(fields: tuple[Field, ...], size: int, batch: int, cdtype: torch.dtype, device: Any
                    ) -> dict[str, Tensor]:
    """Zeros (B, size, *shape) per field: what stands for a down sender's messages (never heard)."""
    rdt = cdtype.to_real()
    return {f.name: torch.zeros((batch, size) + f.shape, dtype=rdt if f.kind == "real" else cdtype, device=device)
            for f in fields}


# ---------------------------------------------------------------------------------------- local engine
class HostGroup:
    """The agents of one role on the local engine when some of them crash: one :class:`Host` per crashed
    agent and one for the others, with the :class:`Host` interface; a host that is down runs nothing."""

    def __init__(self, proto: Protocol, net: Network, role: str, faults: FaultModel, parts: list[Tensor]) -> None:
        self.proto, self.role, self.faults = proto, role, faults
        self.hosts = [Host(proto, net, role, ids.to(net.device), faults) for ids in parts]
        self.name = role if net.counts[role] == 1 and net.agent_ids(role) == [role] else None
        self.n_edges = {name: es.size for name, es in net.edges.items()}
        self.cdtype = net.info.get("dtype", torch.complex128)

    def _down(self, h: Host, rnd: int) -> bool:
        return host_down(self.faults, self.role, h.ids, rnd, self.name)

    def init(self) -> None:
        for h in self.hosts:
            h.init()

    def transmit(self, k: int, rnd: int) -> tuple[Tensor, dict[str, Tensor]]:
        parts = [h.transmit(k, rnd) for h in self.hosts]  # a down host's pilots: from its frozen state
        return torch.cat([p[0] for p in parts]), {n: torch.cat([p[1][n] for p in parts], dim=1) for n in parts[0][1]}

    def measured(self, k: int, rnd: int, meas: dict[str, Tensor]) -> None:
        for h in self.hosts:
            if not self._down(h, rnd):
                h.measured(k, rnd, {n: v.index_select(1, h.ids.to(v.device)) for n, v in meas.items()})

    def compute(self, k: int, rnd: int) -> None:
        for h in self.hosts:
            if not self._down(h, rnd):
                h.compute(k, rnd)

    def send(self, k: int, rnd: int) -> tuple[EdgeView, dict[str, Tensor]]:
        ph = self.proto.phases[k]
        assert isinstance(ph, Message)
        views, payloads = [], []
        for h in self.hosts:
            ev = h.out_edges[ph.edges]
            views.append(ev)
            if self._down(h, rnd):
                payloads.append(_silent_payload(ph.fields, ev.size, h.block.batch, self.cdtype, ev.eid.device))
            else:
                payloads.append(h.send(k, rnd)[1])
        ev = EdgeView(*(torch.cat([getattr(v, a) for v in views]) for a in ("src", "dst", "src_local", "dst_local",
                                                                              "eid")),
                      mask=torch.cat([v.mask for v in views], dim=1), n_src=sum(v.n_src for v in views),
                      n_dst=views[0].n_dst)
        dtypes = {n: v.dtype for p, h in zip(payloads, self.hosts) if not self._down(h, rnd) for n, v in p.items()}
        payload = {f.name: torch.cat([p[f.name].to(dtypes.get(f.name, p[f.name].dtype)) for p in payloads], dim=1)
                   for f in ph.fields}
        return ev, payload

    def deliver(self, k: int, rnd: int, eids: Tensor, payload: dict[str, Tensor]) -> None:
        ph = self.proto.phases[k]
        assert isinstance(ph, Message)
        pos = torch.full((self.n_edges[ph.edges],), -1, dtype=torch.int64, device=eids.device)
        pos[eids] = torch.arange(eids.numel(), device=eids.device)
        for h in self.hosts:
            if self._down(h, rnd):
                continue
            sel = pos[h.in_edges[ph.edges].eid.to(eids.device)]
            h.deliver(k, rnd, eids.index_select(0, sel), {n: v.index_select(1, sel) for n, v in payload.items()})

    def output(self) -> tuple[Tensor, Tensor]:
        parts = [h.output() for h in self.hosts]  # a down host's share: from its frozen state
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts], dim=1)

    @property
    def block(self):
        raise AttributeError("a role with crashed agents is held by several hosts; read each host's block")


def role_host(proto: Protocol, net: Network, role: str, faults: FaultModel) -> Host | HostGroup:
    """The local engine's host of ``role``: one :class:`Host`, or a :class:`HostGroup` when some of its agents
    crash."""
    ids = torch.arange(net.counts[role], device=net.device)
    dead = crash_indices(faults, net).get(role) if faults.crash else None
    if not dead:
        return Host(proto, net, role, ids, faults)
    return HostGroup(proto, net, role, faults, isolate({role: [ids.cpu()]}, {role: dead})[role])


# ------------------------------------------------------------------------------ snapshots (Ray actors)
def _tree(x: Any, fn) -> Any:
    if isinstance(x, Tensor):
        return fn(x)
    if isinstance(x, dict):
        return {k: _tree(v, fn) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_tree(v, fn) for v in x)
    return x


def snapshot(host: Host, counters: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Everything a host changes while it runs -- its agents' protocol state, the round, the last values it
    holds per in-edge -- and the actor's ``counters`` (phase seconds, bytes sent), as CPU copies."""
    copy = lambda t: t.detach().to("cpu", copy=True)  # noqa: E731
    return {"state": _tree(host.block.state, copy), "round": host.block.round, "last": _tree(host.last, copy),
            "counters": {k: dict(v) for k, v in counters.items()}}


def restore(host: Host, snap: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Put ``snap`` (:func:`snapshot`) back into ``host`` (on its device); returns the counters."""
    dev = host.ids.device
    move = lambda t: t.to(dev)  # noqa: E731
    host.block.state = _tree(snap["state"], move)
    host.block.round = snap["round"]
    host.last = _tree(snap["last"], move)
    return snap["counters"]


def muted(step: tuple, until: float) -> bool:
    """Whether an actor that is down until round ``until`` skips ``step`` (see :class:`HostActorImpl.run_steps`):
    every step of a round before ``until`` but its pilots (``transmit``) and its decision (``output``)."""
    return step[0] in ("measured", "compute", "send", "deliver") and step[2] < until


def silence(step: tuple) -> list[bytes]:
    """The outputs of a skipped step: an empty bundle per receiving actor for a ``send``, else none."""
    return [b""] * step[3] if step[0] == "send" else []


def complete_inbox(expected: Tensor, eids: Tensor, payload: dict[str, Tensor], fields: tuple[Field, ...],
                   cdtype: torch.dtype) -> tuple[Tensor, dict[str, Tensor]]:
    """The inbox with zeros on the in-edges ``expected`` that no bundle carried (their sender is down; the
    receiving host treats them as silent)."""
    if eids.numel() == expected.numel():
        return eids, payload
    missing = expected[~torch.isin(expected, eids.to(expected.device))].to(eids.device)
    batch = next(iter(payload.values())).shape[0]
    zeros = _silent_payload(fields, int(missing.numel()), batch, cdtype, eids.device)
    return torch.cat([eids, missing]), {n: torch.cat([v, zeros[n].to(v.dtype)], dim=1) for n, v in payload.items()}


# ----------------------------------------------------------------------------------- the Ray driver
@dataclass
class CrashEvent:
    """A real crash on the Ray engine: the agents of the killed actor, the round, the process ids of the
    actor before and after (``restarted``: Ray restarted it; else a stand-in took its place)."""

    role: str
    agents: list[str]
    round: int
    old_pid: int
    new_pid: int
    restarted: bool


@dataclass
class _Victim:
    role: str
    index: int  # the actor's index among the role's actors
    at: int
    back: float
    snap: Any = None


class CrashPlan:
    """The crashes of one protocol run on a :class:`dsim.engine.ray.RayEngine` (see module docstring)."""

    def __init__(self, engine: Any) -> None:
        net = engine.pool_net
        where = {}
        for role, parts in engine.parts.items():
            for j, ids in enumerate(parts):
                for i in ids.tolist():
                    where[net.agent_ids(role)[i]] = (role, j)
        self.victims = [_Victim(*where[agent], at, back) for agent, at, back in engine.faults.crash_windows()
                        if agent in where]

    def before_round(self, eng: Any, rnd: int) -> None:
        """At the first call of round ``rnd``: every actor still to crash snapshots its state (that of the end
        of round ``rnd - 1``); the actors whose crash round is ``rnd`` are killed and restarted or replaced."""
        import ray

        due = [v for v in self.victims if rnd <= v.at]
        if not due:
            return
        if eng._segs:
            eng._flush()
        eng._sync([])
        for v in due:
            v.snap = eng.actors[v.role][v.index].snapshot.remote()
        eng._get([v.snap for v in due])  # done before any kill (a failure here is the engine's ActorLost)
        for v in due:
            if v.at == rnd:
                self._crash(eng, v, ray)

    def _crash(self, eng: Any, v: _Victim, ray: Any) -> None:
        role, j = v.role, v.index
        actor, old = eng.actors[role][j], eng.pids[(role, j)]
        restart = not math.isinf(v.back)
        ray.kill(actor, no_restart=not restart)
        pid = _await(actor, old, restart, ray)
        if not restart:
            actor = eng.spawn(role, j)
            pid = ray.get(actor.node.remote())[0]
        eng._get([actor.revive.remote(eng._proto_ref, eng._times, eng.faults, eng.wire, v.snap, v.back)])
        eng.pids[(role, j)] = pid
        names = eng.pool_net.agent_ids(role)
        eng.crash_log.append(CrashEvent(role, [names[i] for i in eng.parts[role][j].tolist()], v.at, old, pid,
                                        restart))


def _await(actor: Any, old_pid: int, restart: bool, ray: Any, limit_s: float = 120.0) -> int:
    """Wait until the killed ``actor`` is gone (``restart``: until it answers from a new process); its new
    process id (or ``old_pid``)."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        try:
            pid = ray.get(actor.node.remote(), timeout=30)[0]
            if restart and pid != old_pid:
                return pid
        except ray.exceptions.RayActorError:
            if not restart:
                return old_pid
        except ray.exceptions.GetTimeoutError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"the killed actor (pid {old_pid}) did not {'restart' if restart else 'die'} "
                       f"within {limit_s:.0f} s")
