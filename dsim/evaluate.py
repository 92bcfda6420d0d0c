"""Run a protocol and collect the air's evaluation after its rounds: the one loop every caller shares
(training and its loss, batch-norm calibration, examples, benchmarks, tests)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from dsim.engine.base import Engine
from dsim.engine.local import LocalEngine
from dsim.network import Network
from dsim.protocol import Protocol

Tensor = torch.Tensor


def evaluate_rounds(proto: Protocol, net: Network, air, rounds: Iterable[int] | None = None,
                    engine: Engine | None = None, wire: str = "float64") -> dict[int, Tensor]:
    """Run ``proto`` on ``net`` / ``air`` -> {round r: WSR (B,)} for the rounds asked for.

    rounds: the rounds r (0 = after the initialisation, r = after round r) whose decision the air
            evaluates (``air.evaluate(decision)[0]``, in the air's unit, nat/Hz or bit/s/Hz);
            default: every round 0..``proto.rounds``.
    engine: the engine to run on; default a fresh local engine with wire policy ``wire`` (``wire`` is
            ignored when an engine is given).  On the local engine with a float64 wire the result is
            differentiable (autograd flows into the protocol's parameters); wrap the call in
            ``torch.no_grad()`` when it need not be.
    """
    want = set(range(proto.rounds + 1)) if rounds is None else set(rounds)
    out: dict[int, Tensor] = {}

    def on_round(r: int, decision: Tensor) -> None:
        if r in want:
            out[r] = air.evaluate(decision)[0]

    (engine if engine is not None else LocalEngine(wire)).run(proto, net, air, on_round=on_round)
    return out
