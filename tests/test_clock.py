"""Tests of dsim.clock: hand-computed timings and an independent event-free reference."""

import random

import pytest

from dsim.clock import (
    ClockConfig,
    LinkSpec,
    MessageTrace,
    PhaseTrace,
    RoundClock,
    RoundTiming,
    role_of,
    simulate_round,
)

MS = 1e-3
UL = LinkSpec(latency_s=1 * MS, bandwidth_bps=1e6)  # 100 B -> 0.8 ms on the radio


def two_link_round() -> list[PhaseTrace]:
    msgs = (MessageTrace("ue0", "bs0", "ul", 100), MessageTrace("ue0", "bs0", "ul", 50),
            MessageTrace("ue1", "bs0", "ul", 100))
    return [PhaseTrace("uplink", "message", ("ue0", "ue1", "bs0"), messages=msgs),
            PhaseTrace("update", "local", ("bs0",))]


def test_two_link_example():
    # ue0's radio: 0-0.8 ms, 0.8-1.2 ms -> delivered 1.8, 2.2 ms; ue1's: 0-0.8 -> 1.8 ms.
    # bs0 has everything at 2.2 ms, computes 2 ms -> 4.2 ms.
    cfg = ClockConfig(links={"ul": UL}, compute_s={"bs": 2 * MS, "ue": 7.0})
    t = simulate_round(two_link_round(), cfg)
    assert t.total_s == pytest.approx(4.2 * MS, abs=1e-12)
    assert t.phase_end_s["uplink"] == pytest.approx(2.2 * MS, abs=1e-12)
    assert t.phase_end_s["update"] == pytest.approx(4.2 * MS, abs=1e-12)


def test_shared_medium_serializes_all_senders():
    # one medium: 0.8 + 0.4 + 0.8 ms of transmissions back to back -> last delivery 2.0 + 1 ms.
    cfg = ClockConfig(links={"ul": LinkSpec(1 * MS, 1e6, shared=True)}, compute_s={"bs": 2 * MS})
    t = simulate_round(two_link_round(), cfg)
    assert t.phase_end_s["uplink"] == pytest.approx(3.0 * MS, abs=1e-12)
    assert t.total_s == pytest.approx(5.0 * MS, abs=1e-12)


def test_missing_link_class_and_role_are_free():
    t = simulate_round(two_link_round(), ClockConfig(links={}, compute_s={}))
    assert t.total_s == 0.0 and t.phase_end_s == {"uplink": 0.0, "update": 0.0}
    assert simulate_round([], ClockConfig()) == RoundTiming(0.0, {})


def test_measure_then_local_with_overrides():
    # bs0 sends max(2, 1) = 2 symbols (0.2 ms), bs1 4 symbols (0.4 ms); air latency 0.05 ms.
    # ue0 hears bs0: 0.25 ms; ue1 hears bs0 and bs1: 0.45 ms.
    # local: ue0 +1 ms (override) = 1.25 ms; ue1 +0.2 ms (override) = 0.65 ms;
    # ue2 (no override, not in the measure phase) role time 0.3 ms from t=0.
    cfg = ClockConfig(links={}, compute_s={"ue": 0.3 * MS, "bs": 9.0},
                      air_symbol_s=0.1 * MS, air_latency_s=0.05 * MS)
    phases = [
        PhaseTrace("pilots", "measure", ("bs0", "bs1", "ue0", "ue1"),
                   pilots=(("bs0", "ue0", 2), ("bs0", "ue1", 1), ("bs1", "ue1", 4))),
        PhaseTrace("solve", "local", ("ue0", "ue1", "ue2"), compute_s={"ue0": 1 * MS, "ue1": 0.2 * MS}),
    ]
    t = simulate_round(phases, cfg)
    assert t.phase_end_s["pilots"] == pytest.approx(0.45 * MS, abs=1e-12)
    assert t.phase_end_s["solve"] == pytest.approx(1.25 * MS, abs=1e-12)
    assert t.total_s == pytest.approx(1.25 * MS, abs=1e-12)
    # ue0 is the critical agent: shortening its compute shortens the round to ue1's 0.65 ms.
    phases[1] = PhaseTrace("solve", "local", ("ue0", "ue1", "ue2"), compute_s={"ue0": 0.1 * MS, "ue1": 0.2 * MS})
    assert simulate_round(phases, cfg).total_s == pytest.approx(0.65 * MS, abs=1e-12)


def test_queueing_carries_over_between_phases():
    # phase 1: ue0 -> bs0 1000 B holds ue0's 'ul' radio 0-8 ms (delivered 9 ms).
    # phase 2: ue0 reaches it at t=0 but its 100 B 'ul' message waits for the radio: 8-8.8 ms,
    # delivered 9.8 ms; ue1's message uses ue1's own radio: delivered 1.8 ms;
    # ue0's 'bh' message uses a different radio of ue0 (2e6 bit/s, no latency): delivered 0.4 ms.
    cfg = ClockConfig(links={"ul": UL, "bh": LinkSpec(0.0, 2e6)})
    phases = [
        PhaseTrace("p1", "message", ("ue0", "bs0"), messages=(MessageTrace("ue0", "bs0", "ul", 1000),)),
        PhaseTrace("p2", "message", ("ue0", "ue1", "bs1", "bs2"),
                   messages=(MessageTrace("ue0", "bs1", "ul", 100), MessageTrace("ue1", "bs2", "ul", 100),
                             MessageTrace("ue0", "bs2", "bh", 100))),
    ]
    t = simulate_round(phases, cfg)
    assert t.phase_end_s["p1"] == pytest.approx(9.0 * MS, abs=1e-12)
    assert t.phase_end_s["p2"] == pytest.approx(9.8 * MS, abs=1e-12)
    # without ue0's message to bs1 the slowest phase-2 receiver is bs2 (ue1's message, 1.8 ms);
    # the round still lasts until bs0 finishes phase 1 and passes through phase 2 (9 ms).
    phases[1] = PhaseTrace("p2", "message", ("ue0", "ue1", "bs2"),
                           messages=phases[1].messages[1:])
    t = simulate_round(phases, cfg)
    assert t.total_s == pytest.approx(9.0 * MS, abs=1e-12)
    # a shared 'ul' medium also makes ue1 wait behind ue0's phase-1 message: 8.8 + 1 ms.
    cfg_shared = ClockConfig(links={"ul": LinkSpec(1 * MS, 1e6, shared=True), "bh": LinkSpec(0.0, 2e6)})
    assert simulate_round(phases, cfg_shared).total_s == pytest.approx(9.8 * MS, abs=1e-12)


def test_pipelining_without_global_barrier():
    # p1: ue0 -> bs0 100 B, delivered 1.8 ms.  p2: ue1 computes 5 ms from t=0, bs0 1 ms from 1.8 ms.
    # p3: ue1 -> bs0 100 B sent at 5 ms, delivered 6.8 ms.  (A barrier per phase would give 8.6 ms.)
    cfg = ClockConfig(links={"ul": UL}, compute_s={"ue": 5 * MS, "bs": 1 * MS})
    phases = [
        PhaseTrace("p1", "message", ("ue0", "bs0"), messages=(MessageTrace("ue0", "bs0", "ul", 100),)),
        PhaseTrace("p2", "local", ("ue1", "bs0")),
        PhaseTrace("p3", "message", ("ue1", "bs0"), messages=(MessageTrace("ue1", "bs0", "ul", 100),)),
    ]
    t = simulate_round(phases, cfg)
    assert t.phase_end_s == pytest.approx({"p1": 1.8 * MS, "p2": 5.0 * MS, "p3": 6.8 * MS}, abs=1e-12)
    assert t.total_s == pytest.approx(6.8 * MS, abs=1e-12)


def test_sender_and_receiver_does_not_wait_for_its_own_sending():
    # bs0 sends 10 kB on 'bh' (80 ms) and receives 100 B on 'ul' (1.8 ms); then computes 1 ms.
    # bs0 finishes the local phase at 2.8 ms; bs1 gets the backhaul message at 80 ms.
    cfg = ClockConfig(links={"ul": UL, "bh": LinkSpec(0.0, 1e6)}, compute_s={"bs": 1 * MS})
    phases = [
        PhaseTrace("x", "message", ("ue0", "bs0", "bs1"),
                   messages=(MessageTrace("bs0", "bs1", "bh", 10_000), MessageTrace("ue0", "bs0", "ul", 100))),
        PhaseTrace("upd", "local", ("bs0",)),
    ]
    t = simulate_round(phases, cfg)
    assert t.phase_end_s["x"] == pytest.approx(80 * MS, abs=1e-12)
    assert t.total_s == pytest.approx(80 * MS, abs=1e-12)
    phases[1] = PhaseTrace("upd", "local", ("bs0",), compute_s={"bs0": 100 * MS})
    assert simulate_round(phases, cfg).total_s == pytest.approx(101.8 * MS, abs=1e-12)


def reference_round(phases, cfg):
    """Event-free second implementation for dedicated (non-shared) radios: phase by phase, each
    sender's radio serves its messages in request order, which is phase order then list order."""
    agents = {a for ph in phases for a in ph.agents}
    agents |= {a for ph in phases for m in ph.messages for a in (m.src, m.dst)}
    agents |= {a for ph in phases for tx, rx, _ in ph.pilots for a in (tx, rx)}
    now = dict.fromkeys(agents, 0.0)  # time each agent finished the previous phase
    radio_free: dict = {}
    ends = []
    for ph in phases:
        done = dict(now)
        if ph.kind == "local":
            for a in ph.agents:
                done[a] = now[a] + (ph.compute_s or {}).get(a, cfg.compute_s.get(role_of(a), 0.0))
        elif ph.kind == "message":
            for m in ph.messages:
                spec = cfg.links.get(m.link, LinkSpec())
                start = max(now[m.src], radio_free.get((m.src, m.link), 0.0))
                radio_free[(m.src, m.link)] = start + m.nbytes * 8 / spec.bandwidth_bps
                done[m.dst] = max(done[m.dst], radio_free[(m.src, m.link)] + spec.latency_s)
        else:
            sym = {}
            for tx, _, n in ph.pilots:
                sym[tx] = max(sym.get(tx, 0), n)
            sent = {tx: now[tx] + n * cfg.air_symbol_s for tx, n in sym.items()}
            for tx, t in sent.items():
                done[tx] = max(done[tx], t)
            for tx, rx, _ in ph.pilots:
                done[rx] = max(done[rx], sent[tx] + cfg.air_latency_s)
        now = done
        ends.append(max(now.values()))
    return ends


@pytest.mark.parametrize("seed", range(20))
def test_matches_event_free_reference(seed):
    rng = random.Random(seed)
    ues, bss = [f"ue{i}" for i in range(6)], [f"bs{k}" for k in range(3)]
    cfg = ClockConfig(
        links={"ul": LinkSpec(rng.uniform(0, 2e-3), rng.uniform(1e5, 1e7)),
               "dl": LinkSpec(rng.uniform(0, 2e-3), rng.uniform(1e5, 1e7)),
               "bh": LinkSpec(rng.uniform(0, 1e-3), rng.uniform(1e6, 1e8))},
        compute_s={"ue": rng.uniform(0, 1e-3), "bs": rng.uniform(0, 3e-3)},
        air_symbol_s=rng.uniform(1e-5, 1e-4), air_latency_s=rng.uniform(0, 1e-4))
    phases = []
    for p in range(8):
        kind = rng.choice(["measure", "message", "local"])
        if kind == "local":
            who = tuple(rng.sample(ues + bss, rng.randint(1, 9)))
            over = {a: rng.uniform(0, 2e-3) for a in who if rng.random() < 0.3} or None
            phases.append(PhaseTrace(f"p{p}", kind, who, compute_s=over))
        elif kind == "message":
            msgs = []
            for _ in range(rng.randint(1, 20)):
                link = rng.choice(["ul", "dl", "bh"])
                src, dst = {"ul": (ues, bss), "dl": (bss, ues), "bh": (bss, bss)}[link]
                msgs.append(MessageTrace(rng.choice(src), rng.choice(dst), link, rng.randint(8, 4000)))
            who = tuple(sorted({a for m in msgs for a in (m.src, m.dst)}))
            phases.append(PhaseTrace(f"p{p}", kind, who, messages=tuple(msgs)))
        else:
            pil = tuple((rng.choice(bss), rng.choice(ues), rng.randint(1, 4)) for _ in range(rng.randint(1, 8)))
            who = tuple(sorted({a for tx, rx, _ in pil for a in (tx, rx)}))
            phases.append(PhaseTrace(f"p{p}", kind, who, pilots=pil))
    t = simulate_round(phases, cfg)
    ref = reference_round(phases, cfg)
    assert [t.phase_end_s[ph.name] for ph in phases] == pytest.approx(ref, abs=1e-12)
    assert t.total_s == pytest.approx(ref[-1], abs=1e-12)


def test_round_clock_caches_by_structure():
    cfg = ClockConfig(links={"ul": UL}, compute_s={"bs": 2 * MS})
    clock = RoundClock(cfg)
    first = clock.round_time(two_link_round())
    again = clock.round_time(two_link_round())  # equal structure, new objects -> cache hit
    assert again is first and (clock.hits, clock.misses) == (1, 1)
    assert first == simulate_round(two_link_round(), cfg)
    bigger = two_link_round()
    bigger[0] = PhaseTrace("uplink", "message", bigger[0].agents,
                           messages=bigger[0].messages[:2] + (MessageTrace("ue1", "bs0", "ul", 200),))
    # ue1's 200 B: 1.6 ms + 1 ms = 2.6 ms > 2.2 ms -> 4.6 ms
    assert clock.round_time(bigger).total_s == pytest.approx(4.6 * MS, abs=1e-12)
    measured = two_link_round()
    measured[1] = PhaseTrace("update", "local", ("bs0",), compute_s={"bs0": 3 * MS})
    assert clock.round_time(measured).total_s == pytest.approx(5.2 * MS, abs=1e-12)
    assert (clock.hits, clock.misses) == (1, 3)


def test_round_clock_lru_bound():
    clock = RoundClock(ClockConfig(compute_s={"ue": 1.0}), maxsize=2)
    rounds = [[PhaseTrace("c", "local", (f"ue{i}",))] for i in range(3)]
    for r in rounds:
        clock.round_time(r)
    clock.round_time(rounds[2])
    clock.round_time(rounds[0])  # evicted by the third round
    assert (clock.hits, clock.misses) == (1, 4)


def test_role_of_and_validation():
    assert [role_of(a) for a in ("ue12", "bs0", "ap3", "cpu")] == ["ue", "bs", "ap", "cpu"]
    with pytest.raises(ValueError):
        role_of("17")
    with pytest.raises(ValueError):
        PhaseTrace("x", "broadcast", ("ue0",))
    with pytest.raises(ValueError):
        PhaseTrace("x", "local", ("ue0",), messages=(MessageTrace("ue0", "bs0", "ul", 1),))
    with pytest.raises(ValueError):
        PhaseTrace("x", "local", ("ue0",), compute_s={"ue1": 1.0})
    with pytest.raises(ValueError):
        LinkSpec(bandwidth_bps=0.0)
