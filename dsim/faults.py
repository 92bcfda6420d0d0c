"""Faults at the message layer, seeded and identical on every engine (DESIGN.md §1, §6).

* ``missing_links`` -- each link a family marks as optional (e.g. a non-serving transmitter–receiver
  pair; a serving link, without which the receiver could not be served at all, is always kept) is
  absent with this probability for the whole run, independently per realization: no CSI of it is held
  and no signaling flows on it.  Physics is unaffected (the air still carries that link's signal).
* ``message_loss`` -- each message (one edge, one realization, one phase, one round) is lost with this
  probability.  The receiver keeps the last value it got on that edge (or the phase's initial value).

* ``delay`` + ``deadline_s`` (per link class, or per message phase of a link class) -- each message's flight
  time is the SimPy clock's (queueing, transmission, latency: :attr:`dsim.clock.RoundTiming.flight_s`) plus a
  random extra latency, exponential with the link class's mean ``delay`` [s], drawn per (round, phase, edge,
  realization).  A message whose flight exceeds its phase's deadline (:meth:`FaultModel.phase_deadline`) is
  *late*: lost for this round, and the receiver holds it from the next round on (delivered stale: it
  replaces the receiver's last value unless a fresher message arrives).  The flights per message phase are
  set per protocol run with :meth:`FaultModel.with_flights`.
* ``crash`` -- (agent id, round[, down rounds]) entries: the agent goes down right after round ``round - 1``
  ends and stays down for ``down rounds`` rounds (0 or absent: for good).  While down it takes part in
  nothing: none of its messages is delivered (each receiver applies its protocol's silent-neighbour rule),
  it receives, measures and computes nothing, so its protocol state stays that of the end of round
  ``round - 1``; the air keeps seeing its pilots and the run keeps its share of the decision as that frozen
  state gives them (a crashed transmitter keeps its last setting).  When it is back (a restart) it goes on
  from that state.  The engines host each crashed agent alone (:mod:`dsim.engine.restart`): the local
  engine simulates the crash by skipping that host's phases; the Ray engine really kills the hosting actor
  at the crash round (``ray.kill``) and lets Ray restart it (``max_restarts``) -- or, without a restart,
  replaces it by a stand-in that stays down -- restoring the state it snapshotted after each round.  Both
  give the same numbers.
* ``csi_rho`` (``stale_csi``) -- the CSI a node holds was measured a while before the channel the air
  evaluates: Gauss–Markov aging h_now = rho h_held + sqrt(1 - rho^2) g^(1/2) e, e ~ CN(0, 1) i.i.d., g the
  link's average gain (mean |h|^2 over its antenna pairs).  rho is given, or Jakes' rho = J0(2 pi f_D tau)
  from the Doppler frequency f_D [Hz] and the CSI's age tau [s] (:func:`jakes_rho`).  rho = 1: fresh.
* ``csi_error`` -- the nodes' channel estimates carry an error: h_held = h + sqrt(csi_error g) e', the error
  variance relative to the link's gain (an MMSE-like estimation error of fixed relative size).
  A family applies both with :meth:`FaultModel.csi` to its channels: the nodes' local CSI gets the
  estimate, the air the aged channel.  Measurements the air makes for the nodes (e.g. precoded pilots) use
  the air's channel: they are fresh.

Masks are drawn from generators seeded by (seed, what, round, phase): no engine-dependent state, so
every engine and every sharding sees the same faults.  The draws use CPU generators and are moved to the
device of the data afterwards, so every device sees the same faults too.  Probability 0 draws nothing
and changes nothing: the run is exactly the fault-free one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

Tensor = torch.Tensor


def jakes_rho(doppler_hz: float, delay_s: float) -> float:
    """Jakes' temporal correlation rho = J0(2 pi f_D tau) of a channel seen tau [s] apart at Doppler f_D [Hz]
    (Clarke's isotropic scattering); in [-0.403, 1]."""
    x = torch.tensor(2.0 * math.pi * doppler_hz * delay_s, dtype=torch.float64)
    return float(torch.special.bessel_j0(x))


def _cn(shape: tuple[int, ...], gen: torch.Generator, dtype: torch.dtype) -> Tensor:
    """i.i.d. CN(0, 1) of ``shape`` on the CPU in complex ``dtype``."""
    re = torch.randn(shape, generator=gen, dtype=torch.float64, device="cpu")
    im = torch.randn(shape, generator=gen, dtype=torch.float64, device="cpu")
    return (torch.complex(re, im) / math.sqrt(2.0)).to(dtype)


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
    csi_rho:       Gauss–Markov correlation between the CSI held and the channel evaluated, in [-1, 1].
    csi_error:     channel-estimation error variance relative to the link gain, >= 0.
    delay, deadline: (link class, mean extra latency s) / (link class, deadline s) pairs.
    phase_deadlines: (message phase name, deadline s) pairs, each replacing its phase's link deadline.
    crash:         (agent id, round) or (agent id, round, down rounds) entries: the agent is down from that
                   round on, for good or (down rounds > 0) for that many rounds, then back (a restart).
    """

    message_loss: float = 0.0
    missing_links: float = 0.0
    seed: int = 0
    csi_rho: float = 1.0
    csi_error: float = 0.0
    delay: tuple[tuple[str, float], ...] = ()
    deadline: tuple[tuple[str, float], ...] = ()
    phase_deadlines: tuple[tuple[str, float], ...] = ()
    crash: tuple[tuple[str, int] | tuple[str, int, int], ...] = ()
    #: phase index -> (base flight times (B, E) s of the phase's edges, mean extra delay s, deadline s)
    flights: dict[int, tuple[Tensor, float, float]] = field(default_factory=dict, compare=False, hash=False)

    def link_delay(self, link: str) -> float:
        """Mean extra latency [s] of messages on ``link`` (0: none)."""
        return dict(self.delay).get(link, 0.0)

    def phase_deadline(self, link: str, phase: str) -> float:
        """Deadline [s] of the messages of message phase ``phase`` on ``link`` (inf: none): the phase's own
        (``phase_deadlines``) if it has one, else the link class's (``deadline``)."""
        return dict(self.phase_deadlines).get(phase, dict(self.deadline).get(link, math.inf))

    @property
    def has_deadlines(self) -> bool:
        """Whether any message phase may have a finite deadline."""
        return bool(self.deadline or self.phase_deadlines)

    def with_flights(self, flights: dict[int, tuple[Tensor, float, float]]) -> FaultModel:
        """This model with the base flight times of a protocol's message phases (:attr:`flights`); only
        phases on a link with a finite deadline need one."""
        return replace(self, flights=dict(flights))

    @property
    def substitutes(self) -> bool:
        """Whether a receiver may miss a message (loss, lateness, a crashed sender): the engines keep last
        values then."""
        return self.message_loss > 0.0 or bool(self.flights) or bool(self.crash)

    def crash_windows(self) -> list[tuple[str, int, float]]:
        """(agent id, first round down, first round back (inf: never)) of every ``crash`` entry."""
        out = []
        for entry in self.crash:
            agent, at = entry[0], int(entry[1])
            down = int(entry[2]) if len(entry) > 2 else 0
            out.append((agent, at, at + down if down > 0 else math.inf))
        return out

    def crashed(self, role: str, ids: Tensor, rnd: int, name: str | None = None) -> Tensor:
        """(len(ids),) bool: agents ``ids`` (global indices) of ``role`` are down in round ``rnd``.
        Agent ids are ``<role><index>`` (``name``: a role whose single agent has its own id, e.g. 'cpu')."""
        out = torch.zeros(ids.shape, dtype=torch.bool, device=ids.device)
        for agent, at, back in self.crash_windows():
            if not at <= rnd < back:
                continue
            if agent == name:
                out |= ids == 0
            elif agent.startswith(role) and agent[len(role):].isdigit():
                out |= ids == int(agent[len(role):])
        return out

    def arrivals(self, rnd: int, phase: int, eids: Tensor, batch: int, n_edges: int) -> tuple[Tensor, Tensor]:
        """(on time, late): (B, len(eids)) bool masks of the messages of round ``rnd``, phase ``phase`` on the
        edges ``eids`` (drawn over all ``n_edges`` edges of the set, then sliced: every host agrees).  A
        message neither on time nor late was lost."""
        ok = self.delivered(rnd, phase, eids, batch, n_edges)
        timing = self.flights.get(phase)
        if timing is None:
            return ok, torch.zeros_like(ok)
        base, mean, deadline = timing
        flight = base.to(torch.float64).cpu()
        if mean > 0.0:
            u = torch.rand((batch, n_edges), generator=_gen(self.seed, 5, rnd, phase), dtype=torch.float64,
                           device="cpu")
            flight = flight - mean * torch.log1p(-u)  # + Exp(mean)
        in_time = (flight <= deadline).to(eids.device).index_select(1, eids)
        return ok & in_time, ok & ~in_time

    @property
    def csi_faulty(self) -> bool:
        """Whether the nodes' CSI differs from the air's channel (stale or noisy)."""
        return self.csi_rho != 1.0 or self.csi_error > 0.0

    def csi(self, H: Tensor, link_dims: int = 2, gain: Tensor | None = None,
            estimate: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(CSI the nodes hold, channel the air evaluates) of channels ``H`` (complex, any shape whose last
        ``link_dims`` dims are one link's antenna pairs, e.g. (B, I, K, N, M) with link_dims = 2).

        held = H_est + sqrt(csi_error g) e'  and  air = csi_rho H + sqrt(1 - csi_rho^2) sqrt(g) e, with g the
        link's average gain -- ``gain`` (real, broadcastable to H, e.g. a large-scale fading coefficient), else
        the mean |H|^2 over each link's antenna pairs -- H_est the nodes' own estimate ``estimate`` (same
        shape as H; default H: perfect CSI before the fault), and e, e' i.i.d. CN(0, 1) drawn on seeded CPU
        generators (identical on every engine and device).  Without a CSI fault: (H_est, H)."""
        est = H if estimate is None else estimate
        if not self.csi_faulty:
            return est, H
        dims = tuple(range(H.dim() - link_dims, H.dim()))
        g = (H.abs() ** 2).mean(dim=dims, keepdim=True) if gain is None else gain.to(H.real.dtype)
        held, air = est, H
        if self.csi_error > 0.0:
            e = _cn(tuple(H.shape), _gen(self.seed, 3), H.dtype).to(H.device)
            held = est + torch.sqrt(self.csi_error * g).to(H.dtype) * e
        if self.csi_rho != 1.0:
            e = _cn(tuple(H.shape), _gen(self.seed, 4), H.dtype).to(H.device)
            air = self.csi_rho * H + math.sqrt(max(0.0, 1.0 - self.csi_rho ** 2)) * torch.sqrt(g).to(H.dtype) * e
        return held, air

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
