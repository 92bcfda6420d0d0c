"""The Ray engine: agents live in Ray actors; messages travel actor to actor as msgpack bytes.

* One agent per actor by default (``shards=None``); ``shards=n`` hosts each role's agents in
  ``min(n, n_role)`` actors (contiguous id ranges), keeping one call per actor per phase.
* **One actor pool per run**: the actors are created once for a network (per role and shard, each
  holding only its agents' local data) and reused by every algorithm run on it; each algorithm
  re-configures them with its protocol (fresh protocol state, never leaked between algorithms) and,
  for best-of-n restarts, the number of times the batch is repeated.
* **Actor to actor** (DESIGN §9): a sender's call returns one object ref per receiving actor
  (``num_returns``) and those refs go straight into the receivers' calls; the driver never waits on or
  holds message bytes.  The driver plans the phases between two synchronisation points -- the
  transmitted signals of a measurement phase (the air lives in the driver) and the decision at the end of
  every round -- and sends each actor ONE call (:meth:`HostActorImpl.run_steps`) for the consecutive
  phases it takes part in, split only where it must wait for another actor's messages that depend on it
  (Ray runs one submitter's calls on an actor in submission order).  Each synchronisation point is one
  ``ray.get``, which also surfaces any failed call.  WMMSE: per round the BSs transmit (sync), the UEs
  measure, update and send both uplink messages in one call, the BSs receive, update and return the
  decision in one call (sync) -- three calls per actor group instead of one per phase.
* The ledger needs no bytes in the driver: the number of messages is fixed by the edge masks, their
  size by the fields and the wire policy.  Each message travels as its own msgpack blob
  (:func:`dsim.wire.encode_message`), so the bytes the actors send equal the ledger's.
* ``address`` joins an existing cluster; ``placement='spread'`` spreads the actors over its nodes;
  ``gpus`` (a fraction per actor) places actors on GPUs when the cluster has any, and the actor then
  computes on CUDA.
* A dead actor (killed, its node lost) ends the algorithm with :class:`ActorLost` naming the agents it
  hosted; the pool is rebuilt for the next algorithm.
* ``faults.crash`` is a real crash: each crashed agent gets an actor of its own, which snapshots its state
  after every round and is killed at its crash round, then restarted by Ray (``max_restarts``) and restored,
  or replaced by a stand-in that stays down (:mod:`dsim.engine.restart`; :attr:`RayEngine.crash_log`).
* Logical agents keep their ids (``bs0``, ``ue12``) whatever actor hosts them; results are assembled
  sorted by agent id, never in completion order (DESIGN §9).
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch

from dsim.engine.base import Engine
from dsim.engine.host import Host
from dsim.engine.restart import CrashEvent, CrashPlan, complete_inbox, crash_indices, isolate, muted, silence
from dsim.engine.restart import restore as restore_host
from dsim.engine.restart import snapshot as snapshot_host
from dsim.faults import FaultModel
from dsim.network import Network
from dsim.protocol import Measure, Message, Protocol, runs_in
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
    path = root + os.pathsep + os.environ.get("PYTHONPATH", "")
    if address:
        kwargs["address"] = address
        # an existing cluster's workers import dsim/agents from this checkout (when they share it)
        kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": path}}
        ray.init(**kwargs)
        return
    if num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    # An instance started here: its raylet inherits the environment, so workers import this checkout
    # without a job runtime_env -- which would make Ray's prestarted idle workers unusable for the actors
    # (two wasted worker start-ups, ~1 CPU-s each, and a runtime-env round trip per actor).
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = path
    try:
        ray.init(**kwargs)
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old


class HostActorImpl:
    """Body of the actor class: the agents ``ids`` of ``role`` (a :class:`Host` per algorithm) and the
    msgpack transport.  ``net`` holds only these agents' local data (and every edge set); ``owners``:
    role -> the actor index hosting each agent."""

    def __init__(self, net: Network, role: str, ids: Tensor, owners: dict[str, Tensor], device: str = "cpu") -> None:
        torch.set_num_threads(1)
        self.device = device
        net = net.to(device)
        self.net, self.role, self.ids, self.owners = net, role, ids, owners
        self.host: Host | None = None
        self.down_until: float | None = None  # a crashed actor: down until this round (dsim.engine.restart)
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
        self.down_until = None

    def snapshot(self) -> dict[str, Any]:
        """This actor's host state and counters after the last round (:func:`dsim.engine.restart.snapshot`)."""
        return snapshot_host(self.host, {"spent": self.spent, "sent": self.sent})

    def revive(self, proto: Protocol, times: int, faults: FaultModel, wire: str, snap: dict[str, Any],
               until: float) -> None:
        """After a crash (a restart or a stand-in): :meth:`configure`, restore ``snap``, down until round ``until``."""
        self.configure(proto, times, faults, wire)
        counters = restore_host(self.host, snap)
        self.spent.update(counters["spent"])
        self.sent.update(counters["sent"])
        self.down_until = until

    def _timed(self, k: int, t0: float) -> None:
        self.spent[self.proto.phases[k].name] += time.perf_counter() - t0

    def run_steps(self, steps: list[tuple], *bundles: bytes) -> Any:
        """Run consecutive steps of a round in one call (one call per actor for the phases it takes part in
        between two synchronisation points).  Steps, in order:

        ('init',) | ('measured', k, rnd, measurement) | ('compute', k, rnd) | ('send', k, rnd, n_dst) |
        ('deliver', k, rnd, lo, hi) (its bundles: ``bundles[lo:hi]``, one per sending actor) |
        ('transmit', k, rnd) | ('output',).

        Returns the outputs in step order -- n_dst bundles per send, one value per transmit / output --
        followed by ``None`` (the call's completion, which the driver waits on to surface errors).
        """
        out: list[Any] = []
        for step in steps:
            kind = step[0]
            if self.down_until is not None and muted(step, self.down_until):
                out.extend(silence(step))
            elif kind == "init":
                self.host.init()
            elif kind == "measured":
                self._measured(*step[1:])
            elif kind == "compute":
                t0 = time.perf_counter()
                self.host.compute(step[1], step[2])
                self._timed(step[1], t0)
            elif kind == "send":
                out.extend(self._send(*step[1:]))
            elif kind == "deliver":
                _, k, rnd, lo, hi = step
                self._deliver(k, rnd, bundles[lo:hi])
            elif kind == "transmit":
                out.append(self._transmit(step[1], step[2]))
            elif kind == "output":
                ids, x = self.host.output()
                out.append((_to_numpy(ids), _to_numpy(x)))
            else:  # pragma: no cover - the engine builds the steps
                raise ValueError(f"unknown step {kind!r}")
        out.append(None)
        return out[0] if len(out) == 1 else tuple(out)

    def _transmit(self, k: int, rnd: int):
        t0 = time.perf_counter()
        idx, sig = self.host.transmit(k, rnd)
        out = _to_numpy(idx), _to_numpy(sig)
        self._timed(k, t0)
        return out

    def _measured(self, k: int, rnd: int, meas: dict[str, Tensor]) -> None:
        t0 = time.perf_counter()
        self.host.measured(k, rnd, _to_torch(meas, self.device))
        self._timed(k, t0)

    def _send(self, k: int, rnd: int, n_dst: int) -> list[bytes]:
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
        return out

    def _deliver(self, k: int, rnd: int, bundles: tuple[bytes, ...]) -> None:
        t0 = time.perf_counter()
        ph = self.proto.phases[k]
        assert isinstance(ph, Message)
        B = self.host.block.batch
        eids, parts = [torch.zeros(0, dtype=torch.int64, device="cpu")], []
        for blob in bundles:
            if blob:
                e, p = decode_bundle(blob, ph.fields, self.wire, self.cdtype)
                eids.append(e)
                parts.append(p)
        if not parts:  # no in-edges on this actor: an empty inbox
            rdt = self.cdtype.to_real()
            parts = [{f.name: torch.zeros((B, 0) + f.shape, dtype=self.cdtype if f.kind != "real" else rdt,
                                          device="cpu")
                      for f in ph.fields}]
        eid = torch.cat(eids).to(self.device)
        payload = {f.name: torch.cat([p[f.name] for p in parts], dim=1).to(self.device) for f in ph.fields}
        if self.host.faults.crash:  # a down sender's bundle is empty
            eid, payload = complete_inbox(self.host.in_edges[ph.edges].eid, eid, payload, ph.fields, self.cdtype)
        self.host.deliver(k, rnd, eid, payload)
        self._timed(k, t0)

    def timings(self) -> dict[str, float]:
        """Seconds this actor spent in each phase (summed over rounds) since :meth:`configure`."""
        return dict(self.spent)

    def sent_bytes(self) -> dict[str, int]:
        """Message bytes (msgpack, headers excluded) this actor sent per phase since :meth:`configure`."""
        return dict(self.sent)


def _to_numpy(x: dict[str, Tensor] | Tensor) -> Any:
    """Tensors that cross the driver boundary travel as numpy arrays (Ray pickles them without copies;
    a torch tensor takes torch's much slower pickling)."""
    if isinstance(x, dict):
        return {n: v.detach().cpu().numpy() for n, v in x.items()}
    return x.detach().cpu().numpy()


def _to_torch(x: Any, device: str = "cpu") -> Any:
    """Inverse of :func:`_to_numpy` (a copy: arrays from Ray's object store are read-only)."""
    if isinstance(x, dict):
        return {n: torch.from_numpy(v.copy()).to(device) for n, v in x.items()}
    return torch.from_numpy(x.copy()).to(device)


@dataclass
class _Segment:
    """One planned call per actor of ``role``: its ``steps`` (see :meth:`HostActorImpl.run_steps`), how many
    outputs each actor returns, the segments it must run after, and its refs once submitted (per actor)."""

    role: str
    steps: list[tuple]
    n_out: int
    deps: set[int]
    refs: list[list[Any]] = field(default_factory=list)


class _NoRefs:
    """Stands in for a sender's refs where only the step lists are wanted (every index gives ``None``)."""

    def __getitem__(self, i: int) -> None:
        return None


_NO_REFS = _NoRefs()


class _CompiledPlan:
    """A plan of segments (one call per actor, see :meth:`RayEngine._flush`) compiled once with Ray's compiled
    graphs (``ray.dag``, ``experimental_compile``) and executed once per round: the same calls, the same
    bundles passed from sender to receiver actor, over shared-memory channels instead of one task
    submission per call.  The input of each call is its step list (round number and measurements
    included); the outputs not consumed by another call of the plan come back to the driver.
    ``leaf[(position of the segment in the plan, actor, output)]`` is the index of that output among them."""

    def __init__(self, engine: RayEngine, order: list[int], key: tuple) -> None:
        from ray.dag import InputNode, MultiOutputNode

        self.key = key
        segs, actors = engine._segs, engine.actors
        nodes: dict[int, list[list[Any]]] = {}
        consumed: set[tuple[int, int, int]] = set()
        with InputNode() as inp:
            n_in = 0
            for i in order:
                seg = segs[i]
                per_actor = []
                for j, (actor, ids) in enumerate(zip(actors[seg.role], engine.parts[seg.role])):
                    _, args = engine._actor_steps(seg, j, ids, lambda src, a: nodes[src][a])
                    for st in seg.steps:
                        if st[0] == "deliver":
                            consumed.update((st[3], a, st[4] + j) for a in range(len(nodes[st[3]])))
                    n = seg.n_out + 1
                    node = actor.run_steps.options(num_returns=n).bind(inp[n_in], *args)
                    per_actor.append([node] if n == 1 else [node[q] for q in range(n)])
                    n_in += 1
                nodes[i] = per_actor
            leaves = [(i, j, q) for i in order for j, outs in enumerate(nodes[i]) for q in range(len(outs))
                      if (i, j, q) not in consumed]
            dag = MultiOutputNode([nodes[i][j][q] for i, j, q in leaves])
        at = {i: n for n, i in enumerate(order)}  # by position in the plan, as the plan's key
        self.leaf = {(at[i], j, q): n for n, (i, j, q) in enumerate(leaves)}
        self.graph = dag.experimental_compile()
        self.engine = engine

    def execute(self, inputs: list[list[tuple]]) -> list[Any]:
        """One execution: the values of the leaves (a call's failure raised as the ordinary path raises it)."""
        refs = self.graph.execute(*inputs)
        return [r.get(timeout=-1) for r in (refs if isinstance(refs, list) else [refs])]

    def teardown(self) -> None:
        self.graph.teardown()


class RayEngine(Engine):
    """Agents hosted by Ray actors (see module docstring)."""

    kind = "ray"

    def __init__(self, wire: str = "float32", faults: FaultModel | None = None, *, shards: int | None = None,
                 address: str | None = None, gpus: float = 0.0, num_cpus: int | None = None,
                 placement: str = "pack", compiled: bool = False) -> None:
        super().__init__(wire, faults)
        if placement not in PLACEMENTS:
            raise ValueError(f"placement {placement!r} not in {PLACEMENTS}")
        self.shards, self.address, self.gpus, self.num_cpus, self.placement = shards, address, gpus, num_cpus, placement
        #: run a plan that repeats (a protocol's steady round) as a Ray compiled graph (:class:`_CompiledPlan`)
        self.compiled = compiled
        self._cplan: _CompiledPlan | None = None
        self._last_key: tuple | None = None
        #: plans executed as a compiled graph (all runs of this engine)
        self.compiled_executions = 0
        self.actors: dict[str, list[Any]] = {}
        self.pool_net: Network | None = None
        self.nodes: dict[str, list[str]] = {}  # role -> Ray node id of each actor
        self._segs: list[_Segment] = []
        self._open: dict[str, int] = {}
        self.pids: dict[tuple[str, int], int] = {}  # (role, actor index) -> process id
        self._pending: list[Any] = []
        self._handles: dict[tuple[str, int, int], tuple[Any, Any]] = {}  # (role, actor, n) -> run_steps handle
        self._pool_crash: dict[str, set[int]] = {}  # the crashed agents the pool's layout isolates
        self._crash_plan: CrashPlan | None = None
        #: the real crashes of the last run (:class:`dsim.engine.restart.CrashEvent`)
        self.crash_log: list[CrashEvent] = []

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
        self.parts = isolate(self.layout(net), crash_indices(self.faults, net))
        self._pool_crash = crash_indices(self.faults, net)
        owners = {}
        for role, parts in self.parts.items():
            own = torch.empty(net.counts[role], dtype=torch.int64)
            for a, ids in enumerate(parts):
                own[ids] = a
            owners[role] = own
        use_gpu = self.gpus > 0 and ray.cluster_resources().get("GPU", 0) > 0
        opts: dict[str, Any] = {"num_cpus": 0, "num_gpus": self.gpus if use_gpu else 0}
        base_cls = ray.remote(HostActorImpl)
        spread = self._spread_nodes(use_gpu) if self.placement == "spread" else []
        self.actors, self._actor_args, self._actor_cls = {}, {}, {}
        n_placed = 0
        for role, parts in self.parts.items():
            acts = []
            for ids in parts:
                mine = {k: v.index_select(1, ids) for k, v in net.local.get(role, {}).items()}
                lite = Network(net.family, net.batch, net.counts, net.edges, {role: mine}, dict(net.info))
                self._actor_args[(role, len(acts))] = (lite, role, ids, owners, "cuda" if use_gpu else "cpu")
                mine_opts = dict(opts)
                if spread:  # round-robin over the nodes
                    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

                    node = spread[n_placed % len(spread)]
                    mine_opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
                n_placed += 1
                if set(ids.tolist()) & self._pool_crash.get(role, set()):  # Ray restarts it after a crash
                    mine_opts["max_restarts"] = -1
                self._actor_cls[(role, len(acts))] = base_cls.options(**mine_opts)
                acts.append(self._actor_cls[(role, len(acts))].remote(*self._actor_args[(role, len(acts))]))
            self.actors[role] = acts
        self.pool_net = net
        where = iter(self._get([a.node.remote() for acts in self.actors.values() for a in acts]))
        placed = {(role, i): next(where) for role, acts in self.actors.items() for i in range(len(acts))}
        self.pids = {key: pid for key, (pid, _) in placed.items()}
        self.nodes = {role: [placed[(role, i)][1] for i in range(len(acts))] for role, acts in self.actors.items()}

    @staticmethod
    def _spread_nodes(use_gpu: bool) -> list[str]:
        """Ids of the cluster's alive nodes (with a GPU when the actors take one), in a fixed order: the
        actors of ``placement='spread'`` go round-robin over them.  Ray's own ``SPREAD`` strategy is best
        effort and put every shard on one node when the cluster was busy."""
        import ray

        nodes = [n for n in ray.nodes() if n.get("Alive")]
        if use_gpu:
            nodes = [n for n in nodes if n.get("Resources", {}).get("GPU", 0) > 0]
        return sorted(n["NodeID"] for n in nodes)

    def spawn(self, role: str, j: int) -> Any:
        """A new actor for the agents of ``role``'s actor ``j`` (a stand-in for one killed for good)."""
        actor = self._actor_cls[(role, j)].remote(*self._actor_args[(role, j)])
        self.actors[role][j] = actor
        return actor

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
            raise self._lost(exc) from exc

    def _dead_actors(self) -> list[str]:
        """Ids (hex) of the pool's actors that no longer answer a call."""
        import ray

        dead = []
        for acts in self.actors.values():
            for a in acts:
                try:
                    ray.get(a.noop.remote(), timeout=30)
                except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                    dead.append(a._actor_id.hex())
        return dead

    def _lost(self, exc: Exception, dead: list[str] | None = None) -> ActorLost:
        """The error for an actor that died (``exc``, or the actors ``dead``): the agents it hosted (all of the
        pool's when Ray does not say which actor); the pool is closed, the next algorithm gets a new one."""
        hosted = self._hosted() if self.pool_net is not None else {}
        aid = getattr(exc, "actor_id", None)
        ids = [a for a in (dead or [aid]) if a in hosted]
        lost = [hosted[a] for a in ids] if ids else list(hosted.values())
        self._pending, self._segs, self._open = [], [], {}
        self.close()
        what = "; ".join(f"{role} agents {', '.join(ids)}" for role, ids in lost)
        return ActorLost(f"a Ray actor died during the run; it hosted {what}")

    def _sync(self, refs: list[Any]) -> list[Any]:
        """Wait for the pending calls and ``refs`` at once; the values of ``refs``."""
        pending, self._pending = self._pending, []
        return self._get(pending + refs)[len(pending):]

    # ------------------------------------------------------------------ the plan of a round
    def _segment(self, role: str, after: int | None = None) -> int:
        """The open segment of ``role`` (its next call's steps), a new one when there is none or when the
        open one cannot run after segment ``after`` (it is ``after``, or ``after`` waits on it)."""
        i = self._open.get(role)
        if i is None or (after is not None and (i == after or self._waits_on(after, i))):
            deps = {i} if i is not None else set()  # an actor runs its calls in submission order
            self._segs.append(_Segment(role, [], 0, deps))
            i = self._open[role] = len(self._segs) - 1
        return i

    def _waits_on(self, a: int, b: int) -> bool:
        """Whether segment ``a`` depends (transitively) on segment ``b``."""
        todo, seen = [a], set()
        while todo:
            x = todo.pop()
            if x == b:
                return True
            if x not in seen:
                seen.add(x)
                todo.extend(self._segs[x].deps)
        return False

    def _flush(self, *want: tuple[int, int]) -> list[list[Any]]:
        """Submit every planned segment (dependencies first) and wait for all of them at once; for each
        ``(segment, position)`` in ``want`` the output at that position, one per actor of its role."""
        order, placed = [], set()

        def place(i: int) -> None:
            if i not in placed:
                for d in sorted(self._segs[i].deps):
                    place(d)
                placed.add(i)
                order.append(i)

        for i in range(len(self._segs)):
            place(i)
        if self.compiled and self._crash_plan is None:
            got = self._flush_compiled(order, want)
            if got is not None:
                self._segs, self._open = [], {}
                return got
        done = []
        for i in order:
            seg = self._segs[i]
            seg.refs = []
            for j, (actor, ids) in enumerate(zip(self.actors[seg.role], self.parts[seg.role])):
                steps, args = self._actor_steps(seg, j, ids, lambda src, a: self._segs[src].refs[a])
                refs = self._run_steps(seg.role, j, actor, seg.n_out + 1).remote(steps, *args)
                refs = [refs] if seg.n_out == 0 else list(refs)
                seg.refs.append(refs)
                done.append(refs[-1])
        wanted = [refs[pos] for i, pos in want for refs in self._segs[i].refs]
        values = iter(self._sync(done + wanted)[len(done):])
        out = [[next(values) for _ in self._segs[i].refs] for i, _ in want]
        self._segs, self._open = [], {}
        return out

    def _run_steps(self, role: str, j: int, actor: Any, n: int) -> Any:
        """``actor.run_steps`` returning ``n`` refs: the ``.options`` handle built once per actor and ``n``
        (building it costs the driver more than the call's own submission at small sizes)."""
        hit = self._handles.get((role, j, n))
        if hit is None or hit[0] is not actor:  # a replaced actor (crash stand-in) gets its own
            hit = self._handles[(role, j, n)] = (actor, actor.run_steps.options(num_returns=n))
        return hit[1]

    def _actor_steps(self, seg: _Segment, j: int, ids: Tensor, refs_of) -> tuple[list[tuple], list[Any]]:
        """Actor ``j``'s step list of ``seg`` as :meth:`HostActorImpl.run_steps` takes it, and its bundle
        arguments: ``refs_of(src, a)`` gives the outputs of sending segment ``src``'s actor ``a`` (refs, or graph
        nodes when the plan is being compiled)."""
        steps, args = [], []
        for step in seg.steps:
            if step[0] == "measured":
                steps.append(step[:3] + (_to_numpy({n: v.index_select(1, ids) for n, v in step[3].items()}),))
            elif step[0] == "deliver":
                _, k, rnd, src, offset = step
                lo = len(args)
                args.extend(refs_of(src, a)[offset + j] for a in range(len(self.actors[self._segs[src].role])))
                steps.append(("deliver", k, rnd, lo, len(args)))
            else:
                steps.append(step)
        return steps, args

    def _plan_key(self, order: list[int]) -> tuple | None:
        """The structure of the planned segments (roles, step kinds and phases, wiring; not the round number
        or the measurements), or ``None`` when a role has two segments (a compiled graph would have to keep
        their order on the actor)."""
        pos = {i: n for n, i in enumerate(order)}
        roles = [self._segs[i].role for i in order]
        if len(set(roles)) != len(roles):
            return None
        key = []
        for i in order:
            seg = self._segs[i]
            steps = tuple((st[0], st[1], pos[st[3]], st[4]) if st[0] == "deliver" else
                          (st[0],) + st[1:2] + (st[3:4] if st[0] == "send" else ()) for st in seg.steps)
            key.append((seg.role, steps, seg.n_out, tuple(sorted(pos[d] for d in seg.deps))))
        return tuple(key)

    def _flush_compiled(self, order: list[int], want: tuple[tuple[int, int], ...]) -> list[list[Any]] | None:
        """Run the planned segments as a compiled graph when their structure is the compiled one, or repeats
        the previous flush's (the steady round: compiled now); ``None``: run them as ordinary calls."""
        key = self._plan_key(order)
        if key is None:
            return None
        import ray

        if self._cplan is None or self._cplan.key != key:
            last, self._last_key = self._last_key, key
            if key != last:  # compiled only once it repeats in consecutive flushes (the steady round)
                return None
            self._drop_compiled()
        if self._pending:  # configure calls of this run: done before the graph touches the actors
            self._get(self._pending)
            self._pending = []
        inputs = []
        for i in order:
            seg = self._segs[i]
            for j, ids in enumerate(self.parts[seg.role]):
                inputs.append(self._actor_steps(seg, j, ids, lambda src, a: _NO_REFS)[0])
        try:
            if self._cplan is None:
                self._cplan = _CompiledPlan(self, order, key)
            values = self._cplan.execute(inputs)
        except (ray.exceptions.RayActorError, ray.exceptions.RayChannelError) as exc:
            # a dead actor closes the graph's channels: which actor died, the pool's own calls tell
            self._drop_compiled()
            raise self._lost(exc, self._dead_actors()) from exc
        except Exception:
            self._drop_compiled()
            raise
        self.compiled_executions += 1
        at = {i: n for n, i in enumerate(order)}
        return [[values[self._cplan.leaf[(at[i], j, pos)]] for j in range(len(self.actors[self._segs[i].role]))]
                for i, pos in want]

    def _drop_compiled(self) -> None:
        """Tear down the compiled graph (the actors stay)."""
        if self._cplan is not None:
            cplan, self._cplan = self._cplan, None
            cplan.teardown()

    def _add(self, role: str, step: tuple, outputs: int = 0, after: int | None = None) -> tuple[int, int]:
        """Append ``step`` to ``role``'s open segment; (segment, position of the step's first output)."""
        i = self._segment(role, after)
        seg = self._segs[i]
        seg.steps.append(step)
        pos, seg.n_out = seg.n_out, seg.n_out + outputs
        if after is not None:
            seg.deps.add(after)
        return i, pos

    # ------------------------------------------------------------------ Engine
    def _setup(self, proto: Protocol, net: Network) -> None:
        import ray

        ensure_ray(self.address, self.num_cpus)
        base, times = net.origin or net, net.times
        alive = self.actors and self.pool_net is base and self._pool_crash == crash_indices(self.faults, base)
        if not alive:
            self._start_pool(base)
        self.proto, self.net = proto, net
        self._proto_ref = proto_ref = ray.put(proto)
        self._times, self.crash_log = times, []
        self._crash_plan = CrashPlan(self) if self.faults.crash else None
        self._segs, self._open, self._last_key = [], {}, None
        self._pending = [a.configure.remote(proto_ref, times, self.faults, self.wire)
                         for acts in self.actors.values() for a in acts]

    def _init(self) -> None:
        for role in self.actors:
            self._add(role, ("init",))

    def run(self, proto: Protocol, net: Network, air, on_round=None, rounds: int | None = None):
        self._rounds = proto.rounds if rounds is None else rounds
        self._round = 0
        self._prefetched: dict[tuple[int, int], list[Any]] = {}
        return super().run(proto, net, air, on_round=on_round, rounds=rounds)

    def _enter(self, rnd: int) -> None:
        """The engine is at round ``rnd`` (its first call there: real crashes happen, :class:`CrashPlan`)."""
        if rnd != self._round and self._crash_plan is not None:
            self._crash_plan.before_round(self, rnd)
        self._round = rnd

    def _transmit(self, k: int, rnd: int, role: str):
        self._enter(rnd)
        got = self._prefetched.pop((k, rnd), None)
        if got is None:
            got = self._flush(self._add(role, ("transmit", k, rnd), 1))[0]
        return [(_to_torch(i), _to_torch(sig)) for i, sig in got]

    def _measured(self, k: int, rnd: int, role: str, meas: dict[str, Tensor]) -> None:
        self._enter(rnd)
        self._add(role, ("measured", k, rnd, meas))

    def _compute(self, k: int, rnd: int, role: str) -> None:
        self._enter(rnd)
        self._add(role, ("compute", k, rnd))

    def _message(self, k: int, rnd: int) -> int:
        self._enter(rnd)
        ph = self.proto.phases[k]
        assert isinstance(ph, Message)
        es = self.net.edges[ph.edges]
        n_dst = len(self.actors[es.dst_role])
        src, offset = self._add(es.src_role, ("send", k, rnd, n_dst), outputs=n_dst)
        self._add(es.dst_role, ("deliver", k, rnd, src, offset), after=src)
        return int(es.mask.sum())

    def _output(self):
        """The decision after the current round.  When the next round opens with a measurement that the
        deciding role transmits (WMMSE's precoded pilots), its transmission rides in the same call, so a
        round costs one synchronisation point instead of two."""
        role = self.proto.output.role
        want = [self._add(role, ("output",), 1)]
        nxt = self._round + 1
        first = next((k for k, ph in enumerate(self.proto.phases) if runs_in(ph, nxt, self._rounds)), None)
        ph = self.proto.phases[first] if first is not None and nxt <= self._rounds else None
        if isinstance(ph, Measure) and ph.transmitter == role:
            want.append(self._add(role, ("transmit", first, nxt), 1))
        got = self._flush(*want)
        if len(got) > 1:
            self._prefetched[(first, nxt)] = got[1]
        return [(_to_torch(i), _to_torch(x)) for i, x in got[0]]

    def _phase_wall(self, wall: dict[str, float]) -> dict[str, float]:
        """Per phase, the largest time one actor spent in it (the actors run in parallel).  Called at the end
        of a run: first runs what is still planned (a run without ``on_round`` never waits for a decision)."""
        if self._segs:
            self._flush()
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

        self._drop_compiled()
        self._last_key = None
        for acts in self.actors.values():
            for a in acts:
                ray.kill(a)
        self.actors, self._handles = {}, {}
        self.pool_net = None
