"""SimPy clock: turns the traffic of one communication round into simulated time.

An engine describes one round as a sequence of :class:`PhaseTrace` (what the ledger saw: who
computes, who sends how many bytes to whom on which link class, who transmits pilots to whom).
:func:`simulate_round` plays that round in a SimPy model and returns its :class:`RoundTiming`.

Model (all times in seconds, sizes in bytes, rates in bit/s):

* **Agents.** Every agent id that appears in any phase (listed agents, message endpoints, pilot
  endpoints) is one SimPy process. All start at t = 0 and walk through the phases in order. There
  is no global barrier: an agent moves on as soon as *its own* part of a phase is done, so
  phases pipeline. An agent that takes no part in a phase passes through it instantly.
* **'local' phase.** Each listed agent holds for its compute time: ``PhaseTrace.compute_s[agent]``
  if given (measured compute), else ``ClockConfig.compute_s[role_of(agent)]``, else 0.
* **'message' phase.** When a sender reaches the phase it queues its messages of the phase, in the
  order given, on its radio for the message's link class: one ``simpy.Resource(capacity=1)`` per
  (sender, link class), or, with ``LinkSpec.shared``, one per link class for all senders (a shared
  medium; senders queue on it first come, first served). A transmission holds the radio for
  ``nbytes * 8 / bandwidth_bps``; the message then propagates ``latency_s`` (radio already free)
  and is delivered. Sending is asynchronous: the sender does not wait for its transmissions, but
  its radio stays busy, so queueing carries over into later phases that use the same radio. A
  receiver finishes the phase once it has reached the phase and every message addressed to it in
  this phase has been delivered (messages that arrive early are buffered) or has passed its link's
  ``deadline_s`` after its hand-over to the radio (then it is late: lost this round).  Each message's
  flight time (hand-over to delivery) is in ``RoundTiming.flight_s``. An agent that only
  sends finishes the phase on reaching it.
* **'measure' phase.** Pilots over the air (class ``air``: no bytes, no radio queueing). When a
  transmitter reaches the phase it sends ``S * air_symbol_s`` of pilots, S the largest symbol count
  of its ``(transmitter, receiver, symbols)`` entries; transmitters use orthogonal pilots and do not
  queue on each other. A transmitter finishes the phase when its pilots are sent; a receiver when it
  has reached the phase and every transmitter it hears has finished plus ``air_latency_s``.
* **Result.** ``phase_end_s[name]``: time at which the last agent finished the phase (every agent is
  then past it; non-decreasing over the phases; for a repeated name the latest). ``total_s``: time
  at which the last agent finished the last phase (0 for an empty round). Rounds are simulated
  independently, each from t = 0 with all agents ready; the caller sums them.

:class:`RoundClock` caches results by the round's structure (rounds of one protocol repeat it).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import simpy

PHASE_KINDS = ("measure", "message", "local")


@dataclass(frozen=True)
class LinkSpec:
    """One link class: per-message delay ``latency_s`` (s), radio rate ``bandwidth_bps`` (bit/s), and a
    ``deadline_s`` (s): a receiver waits for a message at most that long after its sender handed it to the
    radio (a later one is lost for this round, :mod:`dsim.faults`)."""

    latency_s: float = 0.0
    bandwidth_bps: float = math.inf
    shared: bool = False  # True: one medium shared by all senders of this link class
    deadline_s: float = math.inf

    def __post_init__(self) -> None:
        if not self.latency_s >= 0.0:
            raise ValueError(f"LinkSpec.latency_s must be >= 0, got {self.latency_s}")
        if not self.bandwidth_bps > 0.0:
            raise ValueError(f"LinkSpec.bandwidth_bps must be > 0, got {self.bandwidth_bps}")


@dataclass(frozen=True)
class ClockConfig:
    """Link classes ('ul', 'dl', 'bh', 'fh', ...; missing -> ``LinkSpec()``), compute time (s) of one
    'local' phase per role (missing -> 0), pilot symbol duration and air latency (s)."""

    links: dict[str, LinkSpec] = field(default_factory=dict)
    compute_s: dict[str, float] = field(default_factory=dict)
    air_symbol_s: float = 0.0
    air_latency_s: float = 0.0
    #: message phase name -> deadline (s) of that phase's messages, replacing its link class's
    phase_deadline_s: dict[str, float] = field(default_factory=dict)

    def link(self, name: str) -> LinkSpec:
        return self.links.get(name) or LinkSpec()

    def deadline(self, link: str, phase: str) -> float:
        """Deadline (s) of the messages of ``phase`` on ``link``: the phase's own, else the link's."""
        return self.phase_deadline_s.get(phase, self.link(link).deadline_s)


@dataclass(frozen=True)
class MessageTrace:
    """One message of ``nbytes`` bytes from agent ``src`` to ``dst`` (ids like 'ue3') on ``link``."""

    src: str
    dst: str
    link: str
    nbytes: int


@dataclass(frozen=True)
class PhaseTrace:
    """One phase of a round as the ledger saw it (see the module docstring for the semantics)."""

    name: str
    kind: str  # 'measure' | 'message' | 'local'
    agents: tuple[str, ...]
    messages: tuple[MessageTrace, ...] = ()
    pilots: tuple[tuple[str, str, int], ...] = ()  # (transmitter, receiver, pilot symbols)
    compute_s: dict[str, float] | None = None  # 'local': per-agent compute time override, s

    def __post_init__(self) -> None:
        if self.kind not in PHASE_KINDS:
            raise ValueError(f"phase {self.name!r}: kind {self.kind!r} not in {PHASE_KINDS}")
        if self.messages and self.kind != "message":
            raise ValueError(f"phase {self.name!r}: messages given for a {self.kind!r} phase")
        if self.pilots and self.kind != "measure":
            raise ValueError(f"phase {self.name!r}: pilots given for a {self.kind!r} phase")
        if self.compute_s and not set(self.compute_s) <= set(self.agents):
            extra = sorted(set(self.compute_s) - set(self.agents))
            raise ValueError(f"phase {self.name!r}: compute_s for agents not listed: {extra}")


@dataclass(frozen=True)
class RoundTiming:
    total_s: float  # makespan of the round, s
    phase_end_s: dict[str, float]  # time the last agent finished each phase, s
    #: (phase index, message index in the phase) -> flight time of the message, s: from its sender handing it
    #: to the radio (reaching the phase) to its delivery (queueing + transmission + latency)
    flight_s: dict[tuple[int, int], float] = field(default_factory=dict)


def role_of(agent_id: str) -> str:
    """Role of an agent id: 'ue12' -> 'ue', 'ap3' -> 'ap', 'cpu' -> 'cpu'."""
    role = agent_id.rstrip("0123456789")
    if not role:
        raise ValueError(f"agent id {agent_id!r} has no role prefix")
    return role


@dataclass
class _Step:
    """What each agent does in one phase of the SimPy model."""

    compute: dict[str, float] = field(default_factory=dict)  # agent -> hold time
    outbox: dict[str, list] = field(default_factory=dict)  # sender -> [(radio, tx_s, latency_s, event)]
    pilots: dict[str, tuple] = field(default_factory=dict)  # transmitter -> (tx_s, latency_s, sent, heard)
    waits: dict[str, list] = field(default_factory=dict)  # agent -> events it waits for


def _transmit(env: simpy.Environment, radio: simpy.Resource, tx_s: float, latency_s: float,
              delivered: simpy.Event, deadline_s: float, flight: dict, key: tuple[int, int]):
    """One message: queue on the radio, hold it while transmitting, then propagate; the receiver's wait
    (``delivered``) ends at the delivery or ``deadline_s`` after the hand-over, whichever is first."""
    start = env.now
    if math.isfinite(deadline_s):
        env.process(_deadline(env, deadline_s, delivered))
    with radio.request() as turn:
        yield turn
        yield env.timeout(tx_s)
    yield env.timeout(latency_s)
    flight[key] = env.now - start
    if not delivered.triggered:
        delivered.succeed()


def _deadline(env: simpy.Environment, deadline_s: float, delivered: simpy.Event):
    yield env.timeout(deadline_s)
    if not delivered.triggered:
        delivered.succeed()


def _send_pilots(env: simpy.Environment, tx_s: float, latency_s: float, sent: simpy.Event,
                 heard: simpy.Event):
    yield env.timeout(tx_s)
    sent.succeed()
    yield env.timeout(latency_s)
    heard.succeed()


def _agent(env: simpy.Environment, me: str, steps: list[_Step], finished: list[float]):
    """One agent walking through the phases; ``finished[p]`` = time it finished phase p."""
    for p, step in enumerate(steps):
        if me in step.compute:
            yield env.timeout(step.compute[me])
        for message in step.outbox.get(me, ()):
            env.process(_transmit(env, *message))
        if me in step.pilots:
            env.process(_send_pilots(env, *step.pilots[me]))
        if me in step.waits:
            yield env.all_of(step.waits[me])
        finished[p] = env.now


def _build_step(env: simpy.Environment, phase: PhaseTrace, cfg: ClockConfig, radios: dict, p: int = 0,
                flight: dict | None = None) -> _Step:
    step = _Step()
    flight = {} if flight is None else flight
    if phase.kind == "local":
        override = phase.compute_s or {}
        for a in phase.agents:
            step.compute[a] = override.get(a, cfg.compute_s.get(role_of(a), 0.0))
    elif phase.kind == "message":
        for j, m in enumerate(phase.messages):
            spec = cfg.link(m.link)
            key = m.link if spec.shared else (m.src, m.link)
            if key not in radios:
                radios[key] = simpy.Resource(env, capacity=1)
            delivered = env.event()
            tx_s = m.nbytes * 8 / spec.bandwidth_bps
            step.outbox.setdefault(m.src, []).append((radios[key], tx_s, spec.latency_s, delivered,
                                                      cfg.deadline(m.link, phase.name), flight, (p, j)))
            step.waits.setdefault(m.dst, []).append(delivered)
    else:
        symbols: dict[str, int] = {}
        hears: dict[str, dict[str, None]] = {}
        for tx, rx, n in phase.pilots:
            symbols[tx] = max(symbols.get(tx, 0), n)
            hears.setdefault(rx, {})[tx] = None
        for tx, n in symbols.items():
            sent, heard = env.event(), env.event()
            step.pilots[tx] = (n * cfg.air_symbol_s, cfg.air_latency_s, sent, heard)
            step.waits.setdefault(tx, []).append(sent)
        for rx, txs in hears.items():
            step.waits.setdefault(rx, []).extend(step.pilots[tx][3] for tx in txs)
    return step


def _agents_of(phases: Sequence[PhaseTrace]) -> list[str]:
    """Every agent id in the round, in order of first appearance (fixes SimPy's tie order)."""
    seen: dict[str, None] = {}
    for ph in phases:
        seen.update(dict.fromkeys(ph.agents))
        for m in ph.messages:
            seen.update(dict.fromkeys((m.src, m.dst)))
        for tx, rx, _ in ph.pilots:
            seen.update(dict.fromkeys((tx, rx)))
    return list(seen)


def simulate_round(phases: Sequence[PhaseTrace], cfg: ClockConfig) -> RoundTiming:
    """Simulate one round from t = 0 (semantics in the module docstring); times in s."""
    env = simpy.Environment()
    radios: dict[Hashable, simpy.Resource] = {}
    flight: dict[tuple[int, int], float] = {}
    steps = [_build_step(env, ph, cfg, radios, p, flight) for p, ph in enumerate(phases)]
    finished = {a: [0.0] * len(phases) for a in _agents_of(phases)}
    for a, times in finished.items():
        env.process(_agent(env, a, steps, times))
    env.run()
    phase_end: dict[str, float] = {}
    for p, ph in enumerate(phases):
        end = max((times[p] for times in finished.values()), default=0.0)
        phase_end[ph.name] = max(end, phase_end.get(ph.name, 0.0))
    total = max((times[-1] for times in finished.values()), default=0.0)
    return RoundTiming(total_s=total, phase_end_s=phase_end, flight_s=flight)


def _round_key(phases: Sequence[PhaseTrace]) -> tuple:
    return tuple(
        (ph.name, ph.kind, ph.agents, ph.messages, ph.pilots,
         tuple(sorted(ph.compute_s.items())) if ph.compute_s else ())
        for ph in phases
    )


class RoundClock:
    """:func:`simulate_round` with an LRU cache keyed by the round's structure (phase names and
    kinds, agents, messages, pilots, compute overrides); ``hits`` / ``misses`` count lookups."""

    def __init__(self, cfg: ClockConfig, maxsize: int = 1024) -> None:
        self.cfg = cfg
        self.maxsize = maxsize
        self.hits = 0
        self.misses = 0
        self._cache: OrderedDict[tuple, RoundTiming] = OrderedDict()

    def round_time(self, phases: Sequence[PhaseTrace]) -> RoundTiming:
        key = _round_key(phases)
        if key in self._cache:
            self.hits += 1
            self._cache.move_to_end(key)
            return self._cache[key]
        self.misses += 1
        timing = simulate_round(phases, self.cfg)
        self._cache[key] = timing
        if len(self._cache) > self.maxsize:
            self._cache.popitem(last=False)
        return timing
