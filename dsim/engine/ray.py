"""The Ray engine: agents live in Ray actors; messages travel between actors as msgpack bytes.

* One agent per actor by default (``shards=None``); ``shards=n`` hosts each role's agents in
  ``min(n, n_role)`` actors (contiguous id ranges), keeping one call per actor per phase.
* The embedded default starts a local Ray instance (``ray.init``); ``address`` joins an existing
  cluster; ``gpus`` (a fraction per actor) places actors on GPUs when the cluster has any, and the
  actor then computes on CUDA.
* The driver plays the air interface (physics: the precoded pilots' measurements are computed from the
  global channels and handed to the receiving actors, not signaling) and routes each sender actor's
  per-destination msgpack bundle (:func:`dsim.wire.encode_bundle`) to the receiving actor, which
  decodes it.  Faults are drawn from the same seeded :class:`dsim.faults.FaultModel` as on the local
  engine, so numbers and ledger are identical (DESIGN §6).
* Logical agents keep their ids (``bs0``, ``ue12``) whatever actor hosts them; results are assembled
  sorted by agent id, never in completion order (DESIGN §9).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from dsim.engine.base import Engine
from dsim.engine.host import Host
from dsim.faults import FaultModel
from dsim.network import Network
from dsim.protocol import Message, Protocol
from dsim.wire import decode_bundle, encode_bundle

Tensor = torch.Tensor


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
    else:
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        # workers of an embedded instance import dsim/agents from this checkout
        kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}}
    ray.init(**kwargs)


class HostActorImpl:
    """Body of the actor class: a :class:`Host` plus the msgpack transport."""

    def __init__(self, proto: Protocol, net: Network, role: str, ids: Tensor, faults: FaultModel, wire: str,
                 owners: dict[str, Tensor], device: str = "cpu") -> None:
        torch.set_num_threads(1)
        self.device = device
        if device != "cpu":
            torch.set_default_device(device)
            net = _to_device(net, device)
        self.host = Host(proto, net, role, ids, faults, presliced=True)
        self.wire, self.owners, self.proto = wire, owners, proto
        self.cdtype = net.info.get("dtype", torch.complex128)

    def pid(self) -> int:
        return os.getpid()

    def init(self) -> None:
        self.host.init()

    def transmit(self, k: int):
        idx, sig = self.host.transmit(k)
        return idx.cpu(), {n: v.cpu() for n, v in sig.items()}

    def measured(self, k: int, meas: dict[str, Tensor]) -> None:
        self.host.measured(k, {n: v.to(self.device) for n, v in meas.items()})

    def compute(self, k: int) -> None:
        self.host.compute(k)

    def send(self, k: int) -> tuple[int, dict[int, bytes]]:
        """Encode this actor's messages of phase ``k``, one msgpack bundle per destination actor."""
        ph = self.proto.phases[k]
        assert isinstance(ph, Message)
        ev, payload = self.host.send(k)
        es_dst_role = self.host.block.info["_edge_roles"][ph.edges][1]
        dst_actor = self.owners[es_dst_role][ev.dst.cpu()]
        out: dict[int, bytes] = {}
        for a in torch.unique(dst_actor).tolist():
            sel = torch.nonzero(dst_actor == a).flatten()
            part = {n: v.index_select(1, sel.to(v.device)).cpu() for n, v in payload.items()}
            out[int(a)] = encode_bundle(ev.eid.cpu()[sel], part, ph.fields, self.wire)
        return int(ev.mask.sum()), out

    def deliver(self, k: int, rnd: int, bundles: list[bytes]) -> None:
        ph = self.proto.phases[k]
        assert isinstance(ph, Message)
        eids, parts = [], []
        for blob in bundles:
            e, p = decode_bundle(blob, ph.fields, self.wire, self.cdtype)
            eids.append(e)
            parts.append(p)
        if not eids:  # no in-edges on this actor: an empty inbox
            B = self.host.block.batch
            eids = [torch.zeros(0, dtype=torch.int64)]
            parts = [{f.name: torch.zeros((B, 0) + f.shape, dtype=self.cdtype if f.kind != "real"
                                          else self.cdtype.to_real()) for f in ph.fields}]
        eid = torch.cat(eids)
        payload = {f.name: torch.cat([p[f.name] for p in parts], dim=1).to(self.device) for f in ph.fields}
        self.host.deliver(k, rnd, eid, payload)

    def output(self):
        ids, x = self.host.output()
        return ids.cpu(), x.detach().cpu()


def _to_device(net: Network, device: str) -> Network:
    local = {r: {k: v.to(device) for k, v in d.items()} for r, d in net.local.items()}
    return Network(net.family, net.batch, net.counts, net.edges, local, net.info)


class RayEngine(Engine):
    """Agents hosted by Ray actors (see module docstring)."""

    kind = "ray"

    def __init__(self, wire: str = "float32", faults: FaultModel | None = None, *, shards: int | None = None,
                 address: str | None = None, gpus: float = 0.0, num_cpus: int | None = None) -> None:
        super().__init__(wire, faults)
        self.shards, self.address, self.gpus, self.num_cpus = shards, address, gpus, num_cpus
        self.actors: dict[str, list[Any]] = {}

    def placement(self, net: Network) -> dict[str, list[Tensor]]:
        """role -> list of id tensors, one per actor."""
        out = {}
        for role, n in net.counts.items():
            parts = n if self.shards is None else min(self.shards, n)
            out[role] = [t for t in torch.tensor_split(torch.arange(n), parts) if t.numel()]
        return out

    def _setup(self, proto: Protocol, net: Network) -> None:
        import ray

        ensure_ray(self.address, self.num_cpus)
        self.close()
        self.proto, self.net = proto, net
        self.layout = self.placement(net)
        owners = {}
        for role, parts in self.layout.items():
            own = torch.empty(net.counts[role], dtype=torch.int64)
            for a, ids in enumerate(parts):
                own[ids] = a
            owners[role] = own
        use_gpu = self.gpus > 0 and ray.cluster_resources().get("GPU", 0) > 0
        Actor = ray.remote(HostActorImpl).options(num_cpus=0, num_gpus=self.gpus if use_gpu else 0)
        info = dict(net.info, _edge_roles=net.edge_roles())
        self.actors = {}
        proto_ref = ray.put(proto)
        for role, parts in self.layout.items():
            acts = []
            for ids in parts:  # each actor receives only its own agents' local data
                mine = {k: v.index_select(1, ids) for k, v in net.local.get(role, {}).items()}
                lite = Network(net.family, net.batch, net.counts, net.edges, {role: mine}, info)
                acts.append(Actor.remote(proto_ref, lite, role, ids, self.faults, self.wire, owners,
                                         "cuda" if use_gpu else "cpu"))
            self.actors[role] = acts
        ray.get([a.pid.remote() for acts in self.actors.values() for a in acts])

    def _init(self) -> None:
        import ray

        ray.get([a.init.remote() for acts in self.actors.values() for a in acts])

    def _transmit(self, k: int, role: str):
        import ray

        return ray.get([a.transmit.remote(k) for a in self.actors[role]])

    def _measured(self, k: int, role: str, meas: dict[str, Tensor]) -> None:
        import ray

        calls = []
        for a, ids in zip(self.actors[role], self.layout[role]):
            calls.append(a.measured.remote(k, {n: v.index_select(1, ids) for n, v in meas.items()}))
        ray.get(calls)

    def _compute(self, k: int, role: str) -> None:
        import ray

        ray.get([a.compute.remote(k) for a in self.actors[role]])

    def _message(self, k: int, rnd: int) -> int:
        import ray

        ph = self.proto.phases[k]
        assert isinstance(ph, Message)
        es = self.net.edges[ph.edges]
        sent = ray.get([a.send.remote(k) for a in self.actors[es.src_role]])
        inbox: dict[int, list[bytes]] = {i: [] for i in range(len(self.actors[es.dst_role]))}
        n_msgs = 0
        for n, bundles in sent:
            n_msgs += n
            for dst, blob in bundles.items():
                inbox[dst].append(blob)
        ray.get([a.deliver.remote(k, rnd, inbox[i]) for i, a in enumerate(self.actors[es.dst_role])])
        return n_msgs

    def _output(self):
        import ray

        return ray.get([a.output.remote() for a in self.actors[self.proto.output.role]])

    def close(self) -> None:
        import ray

        for acts in self.actors.values():
            for a in acts:
                ray.kill(a)
        self.actors = {}
