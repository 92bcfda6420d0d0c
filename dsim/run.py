"""``dsim run``: a scenario's algorithms on an engine, the clock, and the run directory.

For each algorithm entry: build its protocol on the scenario's network, run it round by round on the
engine (evaluating the decision on the air after every round), turn the ledger into simulated time with
the SimPy clock, and write the result before moving to the next algorithm (a later failure keeps what
was computed).  Ledger and signaling in the outputs are per realization (batch totals / B).
"""

from __future__ import annotations

import math
import time
import traceback
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dsim import registry
from dsim.air import Air
from dsim.clock import ClockConfig, LinkSpec, MessageTrace, PhaseTrace, RoundClock
from dsim.devices import resolve_device
from dsim.engine.base import Engine, LedgerRow
from dsim.faults import FaultModel
from dsim.network import Network
from dsim.protocol import Local, Measure, Message, Protocol, runs_in
from dsim.results import AlgorithmResult, RunWriter
from dsim.scenarios.build import Scenario, fault_model, scenario_from_config
from dsim.wire import message_nbytes

if TYPE_CHECKING:
    from collections.abc import Callable

    from dsim.config import AlgorithmConfig, RunConfig


def make_engine(cfg: RunConfig) -> Engine:
    """Engine of a RunConfig (``engine.kind`` local | ray; the local engine on ``engine.device``)."""
    faults = fault_model(cfg)
    e = cfg.engine
    if e.kind == "local":
        from dsim.engine.local import LocalEngine

        return LocalEngine(cfg.wire.dtype, faults, device=e.device)
    from dsim.engine.ray import RayEngine

    return RayEngine(cfg.wire.dtype, faults, shards=e.shards, address=e.address, gpus=e.gpus,
                     num_cpus=e.num_cpus, placement=e.placement, compiled=e.compiled)


def clock_config(cfg: RunConfig, with_delay: bool = True) -> ClockConfig:
    """The SimPy clock's settings of a RunConfig (link classes, fixed compute times per role, air).

    The faults' deadlines are the links' (``faults.deadline_s``) and the message phases' own
    (``faults.phase_deadline_s``); ``with_delay``: the faults' mean
    extra latency (``faults.delay``) is added to each link's latency (the simulated time is the mean-field
    one; the engine draws each message's own delay, :mod:`dsim.faults`)."""
    c = cfg.clock
    f = cfg.faults
    delay = f.delay if with_delay else {}
    links = {name: LinkSpec(latency_s=s.latency_s + delay.get(name, 0.0), bandwidth_bps=s.bandwidth_bps,
                            shared=s.shared, deadline_s=f.deadline_s.get(name, math.inf))
             for name, s in c.links.items()}
    fixed = {role: float(v) for role, v in c.compute_s.items() if v != "measured"}
    return ClockConfig(links=links, compute_s=fixed, air_symbol_s=c.air_symbol_s,
                       air_latency_s=c.air_latency_s, phase_deadline_s=dict(f.phase_deadline_s))


# ------------------------------------------------------------------------------------------ clock traces
def message_flights(proto: Protocol, net: Network, wire: str, clock: RoundClock, phases: Iterable[int]
                    ) -> dict[int, torch.Tensor]:
    """Phase index -> (B, E) flight time [s] of each message of the protocol's message phases ``phases``
    (indices into ``proto.phases``; edges absent in a realization: 0), from the SimPy clock's round 1 of each
    realization's structure."""
    want = {k for k in phases if isinstance(proto.phases[k], Message)}
    if not want:
        return {}
    traces, inv, edge_of = _round_traces(proto, net, wire, 1, None)
    out = {k: np.zeros((net.batch, net.edges[proto.phases[k].edges].size)) for k in want}
    for u, phases in enumerate(traces):
        flight = clock.round_time(phases).flight_s
        rows = np.nonzero(inv == u)[0]
        for t, (k, eids) in edge_of[u].items():
            if k in want:
                vals = np.array([flight.get((t, j), 0.0) for j in range(len(eids))])
                out[k][np.ix_(rows, eids)] = vals
    return {k: torch.from_numpy(v) for k, v in out.items()}


def with_deadline_flights(faults: FaultModel, proto: Protocol, net: Network, wire: str, clock: RoundClock
                          ) -> FaultModel:
    """``faults`` with the flights (:meth:`dsim.faults.FaultModel.with_flights`) of every message phase of
    ``proto`` that has a finite deadline (its link's or its own): the deadline fault needs each message's
    flight time on the clock ``clock`` (without the mean extra delays)."""
    if not faults.has_deadlines:
        return faults
    limit = {k: faults.phase_deadline(net.edges[ph.edges].link, ph.name) for k, ph in enumerate(proto.phases)
             if isinstance(ph, Message)}
    limit = {k: d for k, d in limit.items() if math.isfinite(d)}
    flights = message_flights(proto, net, wire, clock, limit)
    return faults.with_flights({k: (f, faults.link_delay(net.edges[proto.phases[k].edges].link), limit[k])
                                for k, f in flights.items()})


def check_phase_deadlines(faults: FaultModel, built: dict[str, tuple[Protocol, Network]], source: str) -> None:
    """Every message phase named in ``faults.phase_deadline_s`` is a message phase of at least one of the
    run's algorithms (``built``: label -> (protocol, network)); else a :class:`dsim.config.ConfigError`
    naming the key and the message phases there are."""
    from dsim.config import ConfigError

    there = sorted({ph.name for proto, _ in built.values() for ph in proto.phases if isinstance(ph, Message)})
    for name, _ in faults.phase_deadlines:
        if name not in there:
            raise ConfigError(f"{source}: faults.phase_deadline_s.{name}: no algorithm of this run has a message "
                              f"phase {name!r}; allowed: {', '.join(there) or '(none: no algorithm sends messages)'}")


def round_traces(proto: Protocol, net: Network, wire: str, rnd: int = 1, measured: dict[str, float] | None = None
                 ) -> tuple[list[list[PhaseTrace]], np.ndarray]:
    """The phase traces of round ``rnd`` for each distinct realization structure.

    ``measured``: local phase name -> compute time per agent (s) replacing the role's configured constant.

    Returns (traces per structure, structure index per realization (B,)).  A realization's structure
    is which edges of the protocol's message phases exist in it (lost messages are still sent, so loss
    does not change it).
    """
    traces, inv, _ = _round_traces(proto, net, wire, rnd, measured)
    return traces, inv


def _round_traces(proto: Protocol, net: Network, wire: str, rnd: int, measured: dict[str, float] | None
                  ) -> tuple[list[list[PhaseTrace]], np.ndarray, list[dict[int, tuple[int, np.ndarray]]]]:
    """:func:`round_traces`, plus per structure: trace phase index -> (protocol phase index, edge id of each
    of its messages)."""
    sets = sorted({ph.edges for ph in proto.phases if isinstance(ph, Message)})
    if sets:
        key = torch.cat([net.edges[s].mask for s in sets], dim=1).cpu().numpy()
        uniq, inv = np.unique(key, axis=0, return_inverse=True)
    else:
        uniq, inv = np.zeros((1, 0), dtype=bool), np.zeros(net.batch, dtype=np.int64)
    ids = {role: net.agent_ids(role) for role in net.counts}
    traces, edge_of = [], []
    for u in uniq:
        offset, mask_of = 0, {}
        for s in sets:
            n = net.edges[s].size
            mask_of[s] = u[offset: offset + n]
            offset += n
        phases = []
        edges_here: dict[int, tuple[int, np.ndarray]] = {}
        for k, ph in enumerate(proto.phases):
            if not runs_in(ph, rnd, proto.rounds):
                continue
            if isinstance(ph, Measure):
                sym = int(ph.pilots(net.info))
                pil = tuple((t, r, sym) for t in ids[ph.transmitter] for r in ids[ph.receiver])
                phases.append(PhaseTrace(ph.name, "measure", tuple(ids[ph.transmitter] + ids[ph.receiver]),
                                         pilots=pil))
            elif isinstance(ph, Message):
                es = net.edges[ph.edges]
                nb = message_nbytes(ph.fields, wire)
                on = np.nonzero(mask_of[ph.edges])[0]
                src, dst = es.src.cpu()[on].tolist(), es.dst.cpu()[on].tolist()
                msgs = tuple(MessageTrace(ids[es.src_role][a], ids[es.dst_role][b], es.link, nb)
                             for a, b in zip(src, dst))
                agents = tuple(dict.fromkeys([m.src for m in msgs] + [m.dst for m in msgs]))
                edges_here[len(phases)] = (k, on)
                phases.append(PhaseTrace(ph.name, "message", agents, messages=msgs))
            elif isinstance(ph, Local):
                agents = tuple(ids[ph.role])
                comp = {a: measured[ph.name] for a in agents} if measured and ph.name in measured else None
                phases.append(PhaseTrace(ph.name, "local", agents, compute_s=comp))
        traces.append(phases)
        edge_of.append(edges_here)
    return traces, inv.reshape(-1), edge_of


def round_time_s(proto: Protocol, net: Network, wire: str, clock: RoundClock, rnd: int = 1,
                 measured: dict[str, float] | None = None) -> float:
    """Mean simulated time of round ``rnd`` over the realizations (s)."""
    traces, inv = round_traces(proto, net, wire, rnd, measured)
    per = np.array([clock.round_time(t).total_s for t in traces])
    return float(per[inv].mean()) if len(inv) else 0.0


def cumulative_sim_time(proto: Protocol, net: Network, wire: str, clock: RoundClock,
                        measured: dict[str, float] | None = None) -> np.ndarray:
    """(R+1,) cumulative simulated time after each round (0 at the initialisation).

    Rounds differ only through phases that run in the first or last round only, so at most three
    distinct rounds are simulated."""
    R = proto.rounds
    t = np.zeros(R + 1)
    cache: dict[tuple[bool, ...], float] = {}
    for r in range(1, R + 1):
        key = tuple(runs_in(ph, r, R) for ph in proto.phases)
        if key not in cache:
            cache[key] = round_time_s(proto, net, wire, clock, r, measured)
        t[r] = cache[key]
    return np.cumsum(t)


# ------------------------------------------------------------------------------------------ one algorithm
@dataclass
class AlgorithmRun:
    result: AlgorithmResult
    ledger: list[LedgerRow]
    max_power_ratio: float


def ledger_per_realization(ledger: list[LedgerRow], batch: int) -> list[dict[str, Any]]:
    rows = []
    for r in ledger:
        d = r.as_dict()
        for k in ("messages", "reals", "bytes"):
            v = d[k] / batch
            d[k] = int(v) if float(v).is_integer() else v
        rows.append(d)
    return rows


def measured_compute(proto: Protocol, net: Network, phase_wall_s: dict[str, float],
                     roles: Iterable[str]) -> dict[str, float]:
    """Local phase -> measured compute time per agent and round (s) for the phases of ``roles``: the
    engine's wall time of the phase divided by the rounds it ran in and by realizations x agents of
    its role (the amortized cost of one agent's step; the engines batch agents and realizations)."""
    roles = set(roles)
    out = {}
    for ph in proto.phases:
        if isinstance(ph, Local) and ph.role in roles and ph.name in phase_wall_s:
            runs = sum(runs_in(ph, r, proto.rounds) for r in range(1, proto.rounds + 1))
            per = phase_wall_s[ph.name] / max(runs, 1) / (net.batch * net.counts[ph.role])
            out[ph.name] = float(per)
    return out


def build_algorithm(alg: AlgorithmConfig, scn: Scenario) -> tuple[Protocol, Network, Air, float]:
    """(protocol, network, air, build time in s) of one algorithm entry on a built scenario: the network and
    air repeated ``alg.restarts`` times when > 1 (realization-major blocks b + B*r, each block seeded
    differently; algorithms with a random initialisation only)."""
    spec = registry.algorithm(alg.name)
    if scn.family not in spec.families:
        raise ValueError(f"algorithm {alg.name!r} does not run on family {scn.family!r}; "
                         f"allowed there: {', '.join(registry.algorithm_names(scn.family))}")
    restarts = alg.restarts
    if restarts > 1 and not spec.random_init:
        raise ValueError(f"algorithm {alg.name!r} has no random initialisation: restarts must be 1 (got {restarts})")
    net, air = (scn.net.repeat(restarts), scn.air.repeat(restarts)) if restarts > 1 else (scn.net, scn.air)
    t_build = time.perf_counter()
    proto = spec.build(alg.options, net)
    return proto, net, air, time.perf_counter() - t_build  # e.g. loading a model, a learned one's adaptation


def run_algorithm(alg: AlgorithmConfig, scn: Scenario, engine: Engine, clock: RoundClock, wire: str,
                  progress: bool = True, measured_roles: Iterable[str] = (),
                  flight_clock: RoundClock | None = None, built: tuple | None = None) -> AlgorithmRun:
    """Run one algorithm entry (``alg.name``, ``alg.label``, ``alg.restarts``, ``alg.options``) on a built
    scenario.

    ``alg.restarts`` = n > 1 (algorithms with a random initialisation only): the protocol runs once on the
    network and air repeated n times (realization-major blocks b + B*r, each block seeded differently);
    per realization the final WSR (and per-user rate) is the best of the n, while the per-round WSR is
    the mean over the n initialisations.  ``measured_roles``: roles whose local-phase compute time in the
    simulated clock is the measured one (:func:`measured_compute`) instead of the configured constant.
    ``flight_clock``: the clock without the faults' mean extra delays, whose message flight times the
    deadline fault uses (default ``clock``).  ``built``: :func:`build_algorithm`'s result, when the caller
    built the protocol already."""
    from tqdm.auto import tqdm

    proto, net, air, build_s = built if built is not None else build_algorithm(alg, scn)
    restarts, base = alg.restarts, scn.net.batch
    wsr_rounds: list[np.ndarray] = []
    last: dict[str, Any] = {}
    power_ratio = [0.0]
    bar = tqdm(total=proto.rounds, desc=alg.label, unit="round", delay=2.0, disable=not progress, leave=False)

    def on_round(r: int, decision: torch.Tensor) -> None:
        with torch.no_grad():
            wsr, per_user = air.evaluate(decision)
            power_ratio[0] = max(power_ratio[0], float(air.power_ratio(decision).max()))
        wsr_rounds.append(wsr.detach().double().cpu().numpy())
        last["per_user"] = per_user.detach().double().cpu().numpy()
        if r:
            bar.update(1)

    faults = engine.faults
    engine.faults = with_deadline_flights(faults, proto, net, wire, flight_clock if flight_clock is not None
                                          else clock)
    t0 = time.perf_counter()
    try:
        trace = engine.run(proto, net, air, on_round=on_round)
    finally:
        engine.faults = faults
    wall = time.perf_counter() - t0
    bar.close()
    W = np.stack(wsr_rounds)  # (R+1, restarts*B)
    per_user = last["per_user"]
    if not (np.isfinite(W).all() and np.isfinite(per_user).all()):  # never let NaN/Inf reach the results
        bad = sorted({int(r) for r in np.nonzero(~np.isfinite(W))[0]})
        more = " ..." if len(bad) > 5 else ""
        raise FloatingPointError(f"non-finite {air.metric} (NaN/Inf) in rounds {bad[:5]}{more}; not written")
    extra: dict[str, Any] = {"max_power_ratio": power_ratio[0], "build_s": round(build_s, 6),
                             "phase_wall_s": {k: round(v, 6) for k, v in trace.phase_wall_s.items()}}
    # the protocol's own facts (trainable parameters, adaptation steps/time/samples, ...)
    extra.update({f"protocol_{k}": v for k, v in proto.meta.items() if isinstance(v, (bool, int, float, str))})
    if restarts > 1:
        Wr = W.reshape(W.shape[0], restarts, base)
        best = Wr[-1].argmax(axis=0)
        final = Wr[-1, best, np.arange(base)]
        extra.update(restarts=restarts, final_mean_over_inits=float(Wr[-1].mean()),
                     final_best_of_inits=float(final.mean()))
        per_user = per_user.reshape(restarts, base, -1)[best, np.arange(base)]
        W = Wr.mean(axis=1)  # per-round WSR: mean over inits
    else:
        final = W[-1]
    rows = ledger_per_realization(trace.ledger, net.batch)
    measured = measured_compute(proto, net, trace.phase_wall_s, measured_roles)
    if measured:
        extra["measured_compute_s_per_agent"] = dict(measured)
    R = proto.rounds
    reals = np.zeros(R + 1)
    nbytes = np.zeros(R + 1)
    for row in rows:
        if row["link"] != "air":
            reals[row["round"]] += row["reals"]
            nbytes[row["round"]] += row["bytes"]
    result = AlgorithmResult(label=alg.label, name=alg.name, wsr=W,
                             sim_time_s=cumulative_sim_time(proto, net, wire, clock, measured or None),
                             cum_reals=np.cumsum(reals), cum_bytes=np.cumsum(nbytes), ledger=rows, final=final,
                             wall_time_s=wall, per_user=per_user, extra=extra)
    return AlgorithmRun(result, trace.ledger, power_ratio[0])


# ------------------------------------------------------------------------------------------ a whole run
def place_scenario(scn: Scenario, device: torch.device | str) -> Scenario:
    """The scenario with its network and air on ``device`` (the channels stay where they were drawn)."""
    return Scenario(scn.family, scn.net.to(device), scn.air.to(device), scn.channels)


def run(cfg: RunConfig, *, progress: bool = True, echo: Callable[[str], Any] = print, plots: bool = True,
        source: str = "config") -> Path:
    """Run every algorithm of ``cfg``; returns the run directory.  Raises after writing if any failed.
    ``plots=False``: the tables only (a sweep's points); ``source``: the config's name in error messages."""
    from dsim.config import resolved_dict

    torch.manual_seed(cfg.seed)
    scn = scenario_from_config(cfg)
    device = cfg.engine.device if cfg.engine.kind == "local" else "cpu"
    if device != "cpu":  # protocols are built, run and evaluated there; results come back to the CPU
        scn = place_scenario(scn, resolve_device(device))
    out = Path(cfg.output)
    writer = RunWriter(out, resolved_dict(cfg), unit=scn.unit, metric=scn.air.metric, seed=cfg.seed,
                       engine=cfg.engine.kind, family=scn.family, coherence_s=cfg.clock.coherence_s)
    engine = make_engine(cfg)
    clock = RoundClock(clock_config(cfg))
    flight_clock = RoundClock(clock_config(cfg, with_delay=False)) if cfg.faults.delay else clock
    failures: dict[str, str] = defaultdict(str)
    built: dict[str, tuple] = {}
    if engine.faults.phase_deadlines:  # per-phase deadlines name phases: check them before running any
        built = {alg.label: build_algorithm(alg, scn) for alg in cfg.algorithms}
        check_phase_deadlines(engine.faults, {k: b[:2] for k, b in built.items()}, source)
    try:
        for i, alg in enumerate(cfg.algorithms):
            try:
                res = run_algorithm(alg, scn, engine, clock, cfg.wire.dtype, progress,
                                    [r for r, v in cfg.clock.compute_s.items() if v == "measured"],
                                    flight_clock, built.pop(alg.label, None))
            except KeyboardInterrupt:  # Ctrl-C / SIGTERM: the finished algorithms stay written, with plots
                writer.fail(alg.label, "interrupted")
                for later in cfg.algorithms[i + 1:]:
                    writer.fail(later.label, "not run (interrupted)")
                if plots:
                    writer.plots()
                raise
            except Exception as exc:  # keep what was computed, record the failure, go on
                msg = f"{type(exc).__name__}: {exc}"
                failures[alg.label] = msg
                writer.fail(alg.label, msg)
                (out / f"error-{alg.label}.txt").write_text(traceback.format_exc())
                continue
            writer.add(res.result)
    finally:
        engine.close()
    if plots:
        writer.plots()
    echo(writer.summary_table())
    echo(f"run directory: {out}")
    if failures:
        raise RuntimeError("; ".join(f"{k}: {v}" for k, v in failures.items()))
    return out
