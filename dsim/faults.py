"""Faults at the message layer, seeded and identical on every engine (DESIGN.md §1, §6).

* ``missing_links`` -- each link a family marks as optional (e.g. a non-serving transmitter–receiver
  pair; a serving link, without which the receiver could not be served at all, is always kept) is
  absent with this probability for the whole run, independently per realization: no CSI of it is held
  and no signaling flows on it.  Physics is unaffected (the air still carries that link's signal).
* ``message_loss`` -- each message (one edge, one realization, one phase, one round) is lost with this
  probability.  The receiver keeps the last value it got on that edge (or the phase's initial value).

Masks are drawn from generators seeded by (seed, what, round, phase): no engine-dependent state, so
every engine and every sharding sees the same faults.  The draws use CPU generators and are moved to the
device of the data afterwards, so every device sees the same faults too.  Probability 0 draws nothing
and changes nothing: the run is exactly the fault-free one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Tensor = torch.Tensor


def _gen(seed: int, *salt: int) -> torch.Generator:
    g = torch.Generator(device="cpu")
    h = seed
    for s in salt:
        h = (h * 1_000_003 + s) % (2**62)
    g.manual_seed(h)
    return g


@dataclass(frozen=True)
class FaultModel:
    """Seeded fault probabilities.

    message_loss:  probability that a message is lost, in [0, 1).
    missing_links: probability that an interfering link is absent for the whole run, in [0, 1).
    seed:          seed of the fault draws.
    """

    message_loss: float = 0.0
    missing_links: float = 0.0
    seed: int = 0

    def link_present(self, shape: tuple[int, ...], serving: Tensor) -> Tensor:
        """Bool mask ``shape`` (e.g. (B, I, K)) of links that are present; ``serving`` (same shape, bool)
        marks serving links, which are always present."""
        if self.missing_links <= 0.0:
            return torch.ones(shape, dtype=torch.bool, device=serving.device)
        u = torch.rand(shape, generator=_gen(self.seed, 1), dtype=torch.float64, device="cpu")
        return (u >= self.missing_links).to(serving.device) | serving

    def delivered(self, rnd: int, phase: int, eids: Tensor, batch: int, n_edges: int) -> Tensor:
        """(B, len(eids)) bool: the message of round ``rnd``, phase index ``phase`` on each edge arrives.

        The draw is over all ``n_edges`` edges of the set and sliced by ``eids``, so hosts holding
        different edges agree.
        """
        if self.message_loss <= 0.0:
            return torch.ones((batch, eids.numel()), dtype=torch.bool, device=eids.device)
        u = torch.rand((batch, n_edges), generator=_gen(self.seed, 2, rnd, phase), dtype=torch.float64, device="cpu")
        return (u >= self.message_loss).to(eids.device).index_select(1, eids)
