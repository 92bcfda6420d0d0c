"""The Ray engine: agents live in Ray actors; messages travel actor to actor as msgpack bytes.

* One agent per actor by default (``shards=None``); ``shards=n`` hosts each role's agents in
  ``min(n, n_role)`` actors (contiguous id ranges), keeping one call per actor per phase.
* **One actor pool per run**: the actors are created once for a network (per role and shard, each
  holding only its agents' local data) and reused by every algorithm run on it; each algorithm
  re-configures them with its protocol (fresh protocol state, never leaked between algorithms) and,
  for best-of-n restarts, the number of times the batch is repeated.
* **Actor to actor** (DESIGN §9): a sender actor's ``send`` returns one object ref per receiving actor
  (``num_returns``) and those refs go straight into the receivers' ``deliver`` calls; the driver never
  waits on or holds message bytes.  Calls are submitted without waiting (Ray runs the calls of one
  submitter on one actor in submission order), so the driver synchronizes only where it needs a value:
  the transmitted signals of a measurement phase (the air lives in the driver) and the decision at the
  end of every round -- one ``ray.get`` each, which also surfaces any failed call of the round.
* The ledger needs no bytes in the driver: the number of messages is fixed by the edge masks, their
  size by the fields and the wire policy.  Each message travels as its own msgpack blob
  (:func:`dsim.wire.encode_message`), so the bytes the actors send equal the ledger's.
* ``address`` joins an existing cluster; ``placement='spread'`` spreads the actors over its nodes;
  ``gpus`` (a fraction per actor) places actors on GPUs when the cluster has any, and the actor then
  computes on CUDA.
* A dead actor (killed, its node lost) ends the algorithm with :class:`ActorLost` naming the agents it
  hosted; the pool is rebuilt for the next algorithm.
* Logical agents keep their ids (``bs0``, ``ue12``) whatever actor hosts them; results are assembled
  sorted by agent id, never in completion order (DESIGN §9).
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from typing import Any

import torch

from dsim.engine.base import Engine
from dsim.engine.host import Host
from dsim.faults import FaultModel
from dsim.network import Network
from dsim.protocol import Message, Protocol
from dsim.wire import decode_bundle, encode_bundle

Tensor = torch.Tensor

#: actor placement over the nodes of a cluster: Ray's default packing, or spread over the nodes
PLACEMENTS = ("pack", "spread")


class ActorLost(RuntimeError):
    """An actor of the pool died during a run; the message names the agents it hosted."""


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Start (or join) Ray once per process.  A running session (e.g. a test fixture's) is reused."""
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "configure_logging": True, "logging_level": "error"}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if address:
        kwargs["address"] = address
    elif num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    # workers import dsim/agents from this checkout (an existing cluster's workers too, when they share it)
    kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}}
    ray.init(**kwargs)


class HostActorImpl:
    """Body of the actor class: the agents ``ids`` of ``role`` (a :class:`Host` per algorithm) and the
    msgpack transport.  ``net`` holds only these agents' local data (and every edge set); ``owners``:
    role -> the actor index hosting each agent."""

    def __init__(self, net: Network, role: str, ids: Tensor, owners: dict[str, Tensor], device: str = "cpu") -> None:
        torch.set_num_threads(1)
        self.device = device
        if device != "cpu":
            torch.set_default_device(device)
            net = _to_device(net, device)
        self.net, self.role, self.ids, self.owners = net, role, ids, owners
        self.host: Host | None = None
        self.spent: dict[str, float] = defaultdict(float)
        self.sent: dict[str, int] = defaultdict(int)

    def node(self) -> tuple[int, str]:
        """(process id, Ray node id) of this actor."""
        import ray

        return os.getpid(), ray.get_runtime_context().get_node_id()

    def noop(self) -> None:
        """Nothing: a bare call, the unit of the transport benchmark."""

    def configure(self, proto: Protocol, times: int, faults: FaultModel, wire: str) -> None:
        """Host ``proto`` on this actor's agents, the batch repeated ``times`` times, under ``faults`` and
        the wire policy ``wire``; fresh protocol state."""
        net = self.net.repeat(times)
        self.proto, self.wire = proto, wire
        self.host = Host(proto, net, self.role, self.ids, faults, presliced=True)
        self.cdtype = net.info.get("dtype", torch.complex128)
        self.spent = defaultdict(float)
        self.sent = defaultdict(int)

    def _timed(self, k: int, t0: float) -> None:
        self.spent[self.proto.phases[k].name] += time.perf_counter() - t0

    def init(self) -> None:
        self.host.init()

    def transmit(self, k: int, rnd: int):
        t0 = time.perf_counter()
        idx, sig = self.host.transmit(k, rnd)
        out = idx.cpu(), {n: v.cpu() for n, v in sig.items()}
        self._timed(k, t0)
        return out

    def measured(self, k: int, rnd: int, meas: dict[str, Tensor]) -> None:
        t0 = time.perf_counter()
        self.host.measured(k, rnd, {n: v.to(self.device) for n, v in meas.items()})
        self._timed(k, t0)

    def compute(self, k: int, rnd: int) -> None:
        t0 = time.perf_counter()
        self.host.compute(k, rnd)
        self._timed(k, t0)

    def send(self, k: int, rnd: int, n_dst: int):
        """This actor's messages of phase ``k``: one bundle per receiving actor (``n_dst`` of them; an
        empty ``b''`` where none goes), each message its own msgpack blob."""
        t0 = time.perf_counter()
        ph = self.proto.phases[k]
        assert isinstance(ph, Message)
        ev, payload = self.host.send(k, rnd)
        dst_actor = self.owners[self.net.edges[ph.edges].dst_role][ev.dst.cpu()]
        mask = ev.mask.cpu()
        out = []
        for a in range(n_dst):
            sel = torch.nonzero(dst_actor == a).flatten()
            if not sel.numel():
                out.append(b"")
                continue
            part = {n: v.index_select(1, sel.to(v.device)).cpu() for n, v in payload.items()}
            blob, nbytes = encode_bundle(ev.eid.cpu()[sel], mask[:, sel], part, ph.fields, self.wire)
            self.sent[ph.name] += nbytes
            out.append(blob)
        self._timed(k, t0)
        return out[0] if n_dst == 1 else tuple(out)

    def deliver(self, k: int, rnd: int, *bundles: bytes) -> None:
        t0 = time.perf_counter()
        ph = self.proto.phases[k]
        assert isinstance(ph, Message)
        B = self.host.block.batch
        eids, parts = [torch.zeros(0, dtype=torch.int64)], []
        for blob in bundles:
            if blob:
                e, p = decode_bundle(blob, ph.fields, self.wire, self.cdtype)
                eids.append(e)
                parts.append(p)
        if not parts:  # no in-edges on this actor: an empty inbox
            rdt = self.cdtype.to_real()
            parts = [{f.name: torch.zeros((B, 0) + f.shape, dtype=self.cdtype if f.kind != "real" else rdt)
                      for f in ph.fields}]
        eid = torch.cat(eids)
        payload = {f.name: torch.cat([p[f.name] for p in parts], dim=1).to(self.device) for f in ph.fields}
        self.host.deliver(k, rnd, eid, payload)
        self._timed(k, t0)

    def output(self):
        ids, x = self.host.output()
        return ids.cpu(), x.detach().cpu()

    def timings(self) -> dict[str, float]:
        """Seconds this actor spent in each phase (summed over rounds) since :meth:`configure`."""
        return dict(self.spent)

    def sent_bytes(self) -> dict[str, int]:
        """Message bytes (msgpack, headers excluded) this actor sent per phase since :meth:`configure`."""
        return dict(self.sent)


def _to_device(net: Network, device: str) -> Network:
    local = {r: {k: v.to(device) for k, v in d.items()} for r, d in net.local.items()}
    return Network(net.family, net.batch, net.counts, net.edges, local, net.info)


class RayEngine(Engine):
    """Agents hosted by Ray actors (see module docstring)."""

    kind = "ray"

    def __init__(self, wire: str = "float32", faults: FaultModel | None = None, *, shards: int | None = None,
                 address: str | None = None, gpus: float = 0.0, num_cpus: int | None = None,
                 placement: str = "pack") -> None:
        super().__init__(wire, faults)
        if placement not in PLACEMENTS:
            raise ValueError(f"placement {placement!r} not in {PLACEMENTS}")
        self.shards, self.address, self.gpus, self.num_cpus, self.placement = shards, address, gpus, num_cpus, placement
        self.actors: dict[str, list[Any]] = {}
        self.pool_net: Network | None = None
        self.nodes: dict[str, list[str]] = {}  # role -> Ray node id of each actor
        self.pids: dict[tuple[str, int], int] = {}  # (role, actor index) -> process id
        self._pending: list[Any] = []

    # ------------------------------------------------------------------ the pool
    def layout(self, net: Network) -> dict[str, list[Tensor]]:
        """role -> list of id tensors, one per actor."""
        out = {}
        for role, n in net.counts.items():
            parts = n if self.shards is None else min(self.shards, n)
            out[role] = [t for t in torch.tensor_split(torch.arange(n), parts) if t.numel()]
        return out

    def _start_pool(self, net: Network) -> None:
        """Create the actors for ``net`` (each gets only its agents' local data)."""
        import ray

        self.close()
        self.parts = self.layout(net)
        owners = {}
        for role, parts in self.parts.items():
            own = torch.empty(net.counts[role], dtype=torch.int64)
            for a, ids in enumerate(parts):
                own[ids] = a
            owners[role] = own
        use_gpu = self.gpus > 0 and ray.cluster_resources().get("GPU", 0) > 0
        opts: dict[str, Any] = {"num_cpus": 0, "num_gpus": self.gpus if use_gpu else 0}
        if self.placement == "spread":
            opts["scheduling_strategy"] = "SPREAD"
        Actor = ray.remote(HostActorImpl).options(**opts)
        self.actors = {}
        for role, parts in self.parts.items():
            acts = []
            for ids in parts:
                mine = {k: v.index_select(1, ids) for k, v in net.local.get(role, {}).items()}
                lite = Network(net.family, net.batch, net.counts, net.edges, {role: mine}, dict(net.info))
                acts.append(Actor.remote(lite, role, ids, owners, "cuda" if use_gpu else "cpu"))
            self.actors[role] = acts
        where = iter(self._get([a.node.remote() for acts in self.actors.values() for a in acts]))
        placed = {(role, i): next(where) for role, acts in self.actors.items() for i in range(len(acts))}
        self.pids = {key: pid for key, (pid, _) in placed.items()}
        self.nodes = {role: [placed[(role, i)][1] for i in range(len(acts))] for role, acts in self.actors.items()}
        self.pool_net = net

    def _hosted(self) -> dict[str, tuple[str, list[str]]]:
        """actor id (hex) -> (role, the logical ids of the agents it hosts)."""
        out = {}
        for role, acts in self.actors.items():
            names = self.pool_net.agent_ids(role)
            for a, ids in zip(acts, self.parts[role]):
                out[a._actor_id.hex()] = (role, [names[i] for i in ids.tolist()])
        return out

    def _get(self, refs: list[Any]) -> list[Any]:
        """``ray.get`` with a dead actor turned into :class:`ActorLost` naming its agents."""
        import ray

        try:
            return ray.get(refs)
        except ray.exceptions.RayActorError as exc:
            hosted = self._hosted() if self.pool_net is not None else {}
            aid = getattr(exc, "actor_id", None)
            lost = [hosted[aid]] if aid in hosted else list(hosted.values())
            self._pending = []
            self.close()
            what = "; ".join(f"{role} agents {', '.join(ids)}" for role, ids in lost)
            raise ActorLost(f"a Ray actor died during the run; it hosted {what}") from exc

    def _submit(self, refs: list[Any]) -> None:
        self._pending.extend(refs)

    def _sync(self, refs: list[Any]) -> list[Any]:
        """Wait for the pending calls and ``refs`` at once; the values of ``refs``."""
        pending, self._pending = self._pending, []
        return self._get(pending + refs)[len(pending):]

    # ------------------------------------------------------------------ Engine
    def _setup(self, proto: Protocol, net: Network) -> None:
        import ray

        ensure_ray(self.address, self.num_cpus)
        base, times = net.origin or net, net.times
        alive = self.actors and self.pool_net is base
        if not alive:
            self._start_pool(base)
        self.proto, self.net = proto, net
        proto_ref = ray.put(proto)
        self._pending = []
        self._submit([a.configure.remote(proto_ref, times, self.faults, self.wire)
                      for acts in self.actors.values() for a in acts])

    def _init(self) -> None:
        self._submit([a.init.remote() for acts in self.actors.values() for a in acts])

    def _transmit(self, k: int, rnd: int, role: str):
        return self._sync([a.transmit.remote(k, rnd) for a in self.actors[role]])

    def _measured(self, k: int, rnd: int, role: str, meas: dict[str, Tensor]) -> None:
        self._submit([a.measured.remote(k, rnd, {n: v.index_select(1, ids) for n, v in meas.items()})
                      for a, ids in zip(self.actors[role], self.parts[role])])

    def _compute(self, k: int, rnd: int, role: str) -> None:
        self._submit([a.compute.remote(k, rnd) for a in self.actors[role]])

    def _message(self, k: int, rnd: int) -> int:
        ph = self.proto.phases[k]
        assert isinstance(ph, Message)
        es = self.net.edges[ph.edges]
        dst = self.actors[es.dst_role]
        n = len(dst)
        sent = [a.send.options(num_returns=n).remote(k, rnd, n) for a in self.actors[es.src_role]]
        sent = [[s] if n == 1 else list(s) for s in sent]
        self._submit([a.deliver.remote(k, rnd, *[s[j] for s in sent]) for j, a in enumerate(dst)])
        return int(es.mask.sum())

    def _output(self):
        return self._sync([a.output.remote() for a in self.actors[self.proto.output.role]])

    def _phase_wall(self, wall: dict[str, float]) -> dict[str, float]:
        """Per phase, the largest time one actor spent in it (the actors run in parallel)."""
        spent = self._sync([a.timings.remote() for acts in self.actors.values() for a in acts])
        return {name: max((s.get(name, 0.0) for s in spent), default=0.0) for name in wall}

    def sent_bytes(self) -> dict[str, int]:
        """Message bytes the actors sent per phase name in the last run (all rounds, whole batch)."""
        out: dict[str, int] = defaultdict(int)
        for s in self._sync([a.sent_bytes.remote() for acts in self.actors.values() for a in acts]):
            for name, n in s.items():
                out[name] += n
        return dict(out)

    def close(self) -> None:
        import ray

        for acts in self.actors.values():
            for a in acts:
                ray.kill(a)
        self.actors = {}
        self.pool_net = None
