"""What every engine does the same way: the round loop, the air's measurements and the ledger.

An engine subclass only decides where hosts live and how messages travel between them
(:meth:`Engine._message`).  The ledger is a list of :class:`LedgerRow`, totals over the batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from dsim.engine.restart import down_messages
from dsim.faults import FaultModel
from dsim.network import Network
from dsim.protocol import Local, Measure, Message, Protocol, runs_in
from dsim.wire import message_nbytes

Tensor = torch.Tensor


@dataclass(frozen=True)
class LedgerRow:
    """Signaling of one phase of one round, totals over the batch of realizations.

    For link class ``air`` (physics, not signaling) ``messages`` counts pilot symbols and reals/bytes are 0.
    """

    round: int
    phase: str
    link: str
    messages: int
    reals: int
    bytes: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class RunTrace:
    """What an engine returns: the ledger and wall time per phase name (s, summed over rounds)."""

    ledger: list[LedgerRow]
    phase_wall_s: dict[str, float]
    wall_s: float


RoundCallback = Callable[[int, Tensor], None]


class Engine:
    """Runs a protocol round by round.  Subclasses provide hosts and message transport."""

    kind = "abstract"

    def __init__(self, wire: str = "float32", faults: FaultModel | None = None) -> None:
        self.wire = wire
        self.faults = faults or FaultModel()

    # ------------------------------------------------------------- to implement
    def _setup(self, proto: Protocol, net: Network) -> None: ...
    def _init(self) -> None: ...
    def _transmit(self, k: int, rnd: int, role: str) -> list[tuple[Tensor, dict[str, Tensor]]]: ...
    def _measured(self, k: int, rnd: int, role: str, meas: dict[str, Tensor]) -> None: ...
    def _compute(self, k: int, rnd: int, role: str) -> None: ...
    def _message(self, k: int, rnd: int) -> int: ...  # returns number of messages sent (batch total)
    def _output(self) -> list[tuple[Tensor, Tensor]]: ...
    def close(self) -> None: ...

    def _place(self, net: Network, air) -> tuple[Network, object]:
        """The network and air the run uses (an engine with a device of its own moves them there)."""
        return net, air

    def _phase_wall(self, wall: dict[str, float]) -> dict[str, float]:
        """Wall time per phase name (s, summed over rounds) to report; ``wall``: the driver's measurement."""
        return wall

    # ------------------------------------------------------------- shared logic
    @staticmethod
    def assemble(parts: list[tuple[Tensor, Tensor]]) -> Tensor:
        """Concatenate per-host (ids, (B, n, ...)) parts into the global tensor ordered by id."""
        ids = torch.cat([p[0] for p in parts])
        x = torch.cat([p[1] for p in parts], dim=1)
        order = torch.argsort(ids)
        return x.index_select(1, order)

    def decision(self) -> Tensor:
        return self.assemble(self._output())

    def run(self, proto: Protocol, net: Network, air, on_round: RoundCallback | None = None,
            rounds: int | None = None) -> RunTrace:
        """Run ``rounds`` (default ``proto.rounds``) rounds; ``on_round(r, decision)`` after init (r=0)
        and after every round, the decision on the device of ``air`` (the caller evaluates it there).
        ``air`` supplies measurements: ``air.measure(name, signals) -> {..}``."""
        rounds = proto.rounds if rounds is None else rounds
        t0 = time.perf_counter()
        home = getattr(air, "device", None)
        net, air = self._place(net, air)

        def decided() -> Tensor:
            d = self.decision()
            return d if home is None else d.to(home)

        self._setup(proto, net)
        self._init()
        if on_round is not None:
            on_round(0, decided())
        ledger: list[LedgerRow] = []
        wall: dict[str, float] = {ph.name: 0.0 for ph in proto.phases}
        for r in range(1, rounds + 1):
            for k, ph in enumerate(proto.phases):
                if not runs_in(ph, r, rounds):
                    continue
                tp = time.perf_counter()
                if isinstance(ph, Measure):
                    parts = self._transmit(k, r, ph.transmitter)
                    signals = {name: self.assemble([(p[0], p[1][name]) for p in parts]) for name in parts[0][1]}
                    meas = air.measure(ph.observe, signals)
                    self._measured(k, r, ph.receiver, meas)
                    ledger.append(LedgerRow(r, ph.name, "air", int(ph.pilots(net.info)) * net.batch, 0, 0))
                elif isinstance(ph, Message):
                    n_msgs = self._message(k, r) - down_messages(self.faults, net, ph.edges, r)
                    reals = sum(f.reals for f in ph.fields)
                    nb = message_nbytes(ph.fields, self.wire)
                    link = net.edges[ph.edges].link
                    ledger.append(LedgerRow(r, ph.name, link, n_msgs, n_msgs * reals, n_msgs * nb))
                elif isinstance(ph, Local):
                    self._compute(k, r, ph.role)
                else:  # pragma: no cover - Phase is a closed union
                    raise TypeError(f"unknown phase type {type(ph)}")
                wall[ph.name] += time.perf_counter() - tp
            if on_round is not None:
                on_round(r, decided())
        return RunTrace(ledger=ledger, phase_wall_s=self._phase_wall(wall), wall_s=time.perf_counter() - t0)
