"""The local engine: every role's agents in one in-process host; messages as batched tensors.

A message phase is a gather along the edge index (the sender's ``send`` returns one payload per edge),
the wire's numeric round trip (:func:`dsim.wire.roundtrip`), the seeded fault mask, and a scatter onto
the receivers (inside the protocol's ``receive``).  Fast, differentiable (autograd flows through when
the wire policy is float64), the reference for the Ray engine.
"""

from __future__ import annotations

import torch

from dsim.engine.base import Engine
from dsim.engine.host import Host
from dsim.network import Network
from dsim.protocol import Message, Protocol
from dsim.wire import roundtrip

Tensor = torch.Tensor


class LocalEngine(Engine):
    """Vectorized in-process engine (one :class:`Host` per role)."""

    kind = "local"

    def _setup(self, proto: Protocol, net: Network) -> None:
        self.proto, self.net = proto, net
        self.hosts = {role: Host(proto, net, role, torch.arange(net.counts[role]), self.faults)
                      for role in net.counts}

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
