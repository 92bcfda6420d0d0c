"""``faults.crash`` with and without restart (:mod:`dsim.engine.restart`, issue 11).

The reference is a second implementation of "the agent never crashed but was silent (and idle) for the
same rounds": the toy gossip protocol of ``tests/test_extension.py`` written out as a plain recurrence.
In round r every transmitter that is up sends x_j, every transmitter k that is up takes the mean of what it
holds from the others (a fresh x_j from a sender that is up, else the last value it received from j) and
mixes x_k <- (x_k + m_k) / 2, p_k = P g_k / (g_k + x_k); a transmitter that is down does nothing, so its
x and p stay those of the round before its crash.

On the local engine the crash is simulated; on the Ray engine the hosting actor is really killed (its
process is gone), restarted by Ray from its snapshot or replaced by a stand-in; both equal the reference.
"""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch

from dsim.engine.local import LocalEngine
from dsim.faults import FaultModel
from tests.test_extension import ToyGossipOptions, ToyScenario, toy_build, toy_generate, toy_gossip

P, K, ROUNDS = 2.0, 4, 6


def toy(batch: int = 3, seed: int = 5):
    ch = toy_generate(ToyScenario(n_links=K, power_w=P, noise_w=0.5), batch, torch.Generator().manual_seed(seed),
                      torch.float64)
    net, air = toy_build(ch, None, seed)
    return ch.g, net, air, toy_gossip(ToyGossipOptions(rounds=ROUNDS), net)


def silent_reference(g: torch.Tensor, down: dict[int, tuple[int, float]]) -> torch.Tensor:
    """Powers p after rounds 0..ROUNDS (R+1, B, K) when transmitter k is silent and idle in rounds
    [a, b) for each ``down[k] = (a, b)`` (b = inf: for good); everything else as without faults."""
    B = g.shape[0]
    x, p = g.clone(), torch.full((B, K), P, dtype=torch.float64)  # round 1's feedback makes x = g
    held = torch.zeros(B, K, K, dtype=torch.float64)  # held[:, k, j]: what transmitter k holds from j

    def up(k: int, r: int) -> bool:
        a, b = down.get(k, (math.inf, math.inf))
        return not a <= r < b

    out = [p.clone()]
    for r in range(1, ROUNDS + 1):
        for k in range(K):
            for j in range(K):
                if j != k and up(k, r) and up(j, r):
                    held[:, k, j] = x[:, j]
        new = x.clone()
        for k in range(K):
            if up(k, r):
                m = sum(held[:, k, j] for j in range(K) if j != k) / (K - 1)
                new[:, k] = 0.5 * (x[:, k] + m)
                p[:, k] = P * g[:, k] / (g[:, k] + new[:, k])
        x = new
        out.append(p.clone())
    return torch.stack(out)


def run_engine(engine, net, air, proto, ledger: bool = False):
    """Powers after every round (R+1, B, K) (and the ledger)."""
    dec = []
    trace = engine.run(proto, net, air, on_round=lambda r, p: dec.append(p.clone()))
    return (torch.stack(dec), trace.ledger) if ledger else torch.stack(dec)


CASES = {"restart": (("tx1", 2, 2),), "for_good": (("tx1", 3),), "two": (("tx0", 2, 3), ("tx2", 4))}


def _down(crash) -> dict[int, tuple[int, float]]:
    return {int(a[2:]): (at, at + rest[0] if rest else math.inf) for a, at, *rest in crash}


@pytest.mark.parametrize("case", sorted(CASES))
def test_local_crash_equals_silent_for_the_same_rounds(case):
    g, net, air, proto = toy()
    got = run_engine(LocalEngine("float64", FaultModel(crash=CASES[case])), net, air, proto)
    ref = silent_reference(g, _down(CASES[case]))
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)
    clean = silent_reference(g, {})
    assert not torch.allclose(ref, clean)  # the crash matters
    a = min(at for _, at, *_ in CASES[case])
    torch.testing.assert_close(got[:a], clean[:a], rtol=1e-12, atol=0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_ledger_leaves_out_the_messages_of_down_agents(case):
    """A down agent sends nothing: per round and message phase, the ledger has the fault-free count minus
    (realizations x present out-edges) of each agent down in that round (the toy's complete graph: K - 1
    out-edges per transmitter, all present)."""
    g, net, air, proto = toy()
    _, clean = run_engine(LocalEngine("float64", FaultModel()), net, air, proto, ledger=True)
    _, crashed = run_engine(LocalEngine("float64", FaultModel(crash=CASES[case])), net, air, proto, ledger=True)
    down = _down(CASES[case])
    B = g.shape[0]
    assert len(clean) == len(crashed)
    for c, d in zip(clean, crashed):
        if c.link == "air":
            assert d == c
            continue
        n_down = sum(a <= c.round < b for a, b in down.values())
        assert d.messages == c.messages - B * (K - 1) * n_down, (c, d)
        assert d.bytes * c.messages == c.bytes * d.messages


def test_restart_after_the_last_round_is_a_crash_for_good():
    g, net, air, proto = toy()
    late = run_engine(LocalEngine("float64", FaultModel(crash=(("tx1", 3, ROUNDS),))), net, air, proto)
    good = run_engine(LocalEngine("float64", FaultModel(crash=(("tx1", 3),))), net, air, proto)
    assert torch.equal(late, good)
    frozen = good[2, :, 1]
    for r in range(3, ROUNDS + 1):  # down from round 3: its power is that of round 2
        assert torch.equal(good[r, :, 1], frozen)


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_real_crash_on_ray_equals_the_silent_run(ray_session):
    """One pool (the crashed transmitter hosted alone): a crash with restart -- the actor's process is
    killed, Ray restarts it (new process), it is restored from its snapshot and is back after 2 rounds --
    ends with the numbers of the silent-for-the-same-rounds reference and of the local engine, bit for bit;
    then a crash for good: the actor is killed, a stand-in holds it down, same equalities; the ledger equals
    the local engine's."""
    import ray.cloudpickle

    from dsim.engine.ray import RayEngine

    ray.cloudpickle.register_pickle_by_value(sys.modules["tests.test_extension"])
    g, net, air, proto = toy()
    engine = RayEngine("float64", shards=1)
    try:
        for crash, restarted in ((CASES["restart"], True), (CASES["for_good"], False)):
            engine.faults = FaultModel(crash=crash)
            want, want_ledger = run_engine(LocalEngine("float64", engine.faults), net, air, proto, ledger=True)
            got, ledger = run_engine(engine, net, air, proto, ledger=True)
            assert torch.equal(got, want) and ledger == want_ledger
            torch.testing.assert_close(got, silent_reference(g, _down(crash)), rtol=1e-12, atol=0)
            (event,) = engine.crash_log
            assert (event.agents, event.round, event.restarted) == (["tx1"], crash[0][1], restarted)
            assert event.new_pid != event.old_pid and _process_gone(event.old_pid)
            assert len(engine.actors["tx"]) == 2  # tx1 alone, the others together (shards=1)
    finally:
        engine.close()
        ray.cloudpickle.unregister_pickle_by_value(sys.modules["tests.test_extension"])


# ------------------------------------------------------------------------------------ configuration
def _crash_cfg(tmp_path, crash) -> str:
    import yaml

    data = {"seed": 0, "batch": 2, "scenario": {"family": "multicell", "layout": "triangle"},
            "algorithms": [{"name": "wmmse", "rounds": 4}], "engine": {"kind": "local"},
            "faults": {"crash": crash}, "output": str(tmp_path / "run")}
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


@pytest.mark.parametrize("entry,needles", [
    ({"agent": "ue1", "round": 2, "down_rounds": 2}, ["faults.crash[0].down_rounds", "needs restart: true"]),
    ({"agent": "ue1", "round": 2, "restart": True, "down_rounds": 0}, ["faults.crash[0].down_rounds", ">= 1"]),
    ({"agent": "ue1", "round": 2, "restart": "maybe"}, ["faults.crash[0].restart", "true or false"]),
    ({"agent": "ue1", "round": 2, "restrat": True}, ["faults.crash[0].restrat", "down_rounds", "restart"]),
    ({"agent": "ue99", "round": 2, "restart": True}, ["faults.crash", "'ue99'"]),
])
def test_bad_crash_entries_one_line(tmp_path, capsys, entry, needles):
    from dsim.cli import main

    rc = main(["run", _crash_cfg(tmp_path, [entry]), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err


def test_crash_restart_config_reaches_the_engines(tmp_path):
    from dsim.config import load_config
    from dsim.scenarios.build import fault_model

    cfg = load_config(_crash_cfg(tmp_path, [{"agent": "ue1", "round": 2, "restart": True, "down_rounds": 3},
                                            {"agent": "bs0", "round": 3}]))
    fm = fault_model(cfg)
    assert fm.crash == (("ue1", 2, 3), ("bs0", 3))
    assert fm.crash_windows() == [("ue1", 2, 5), ("bs0", 3, math.inf)]
