"""The local engine: every role's agents in one in-process host; messages as batched tensors.

A role with crashed agents (``faults.crash``) is held by a :class:`dsim.engine.restart.HostGroup` that
simulates the crash (each crashed agent in its own host, which runs nothing while it is down).

A message phase is a gather along the edge index (the sender's ``send`` returns one payload per edge),
the wire's numeric round trip (:func:`dsim.wire.roundtrip`), the seeded fault mask, and a scatter onto
the receivers (inside the protocol's ``receive``).  Fast, differentiable (autograd flows through when
the wire policy is float64), the reference for the Ray engine.

``device`` (``cpu`` | ``cuda`` | ``auto`` | a torch device; None: wherever the network's data is): the
network's local data and edge tensors and the air are moved there and every phase runs there; the
decisions handed to ``on_round`` come back on the device of the air the caller passed (DESIGN §11).
"""

from __future__ import annotations

import torch

from dsim.devices import resolve_device
from dsim.engine.base import Engine
from dsim.engine.restart import role_host
from dsim.faults import FaultModel
from dsim.network import Network
from dsim.protocol import Message, Protocol
from dsim.wire import roundtrip

Tensor = torch.Tensor


class LocalEngine(Engine):
    """Vectorized in-process engine (one :class:`Host` per role)."""

    kind = "local"

    def __init__(self, wire: str = "float32", faults: FaultModel | None = None,
                 device: str | torch.device | None = None) -> None:
        super().__init__(wire, faults)
        self.device = None if device is None else resolve_device(device)

    def _place(self, net: Network, air):
        if self.device is None:
            return net, air
        return net.to(self.device), (air.to(self.device) if hasattr(air, "to") else air)

    def _setup(self, proto: Protocol, net: Network) -> None:
        self.proto, self.net = proto, net
        self.hosts = {role: role_host(proto, net, role, self.faults) for role in net.counts}

    def _init(self) -> None:
        for h in self.hosts.values():
            h.init()

    def _transmit(self, k: int, rnd: int, role: str):
        return [self.hosts[role].transmit(k, rnd)]

    def _measured(self, k: int, rnd: int, role: str, meas: dict[str, Tensor]) -> None:
        self.hosts[role].measured(k, rnd, meas)

    def _compute(self, k: int, rnd: int, role: str) -> None:
        self.hosts[role].compute(k, rnd)

    def _message(self, k: int, rnd: int) -> int:
        ph = self.proto.phases[k]
        assert isinstance(ph, Message)
        es = self.net.edges[ph.edges]
        ev, payload = self.hosts[es.src_role].send(k, rnd)
        payload = roundtrip(payload, ph.fields, self.wire)
        self.hosts[es.dst_role].deliver(k, rnd, ev.eid, payload)
        return int(ev.mask.sum())

    def _output(self):
        return [self.hosts[self.proto.output.role].output()]

    def block(self, role: str):
        """The AgentBlock of ``role`` (tests and training read protocol state through it)."""
        return self.hosts[role].block
