"""The Ray engine's contracts (DESIGN §6, §9): local engine == Ray engine bit for bit, for every protocol of
every family, one actor per agent and sharded, with and without faults, with random initialisations and
restarts; the ledger's bytes equal the message bytes the actors really send, for every wire dtype; faults
at probability 0 are exactly fault-free on both engines; one actor pool serves every algorithm of a run;
a dead actor ends its algorithm with an error naming its agents; a two-node cluster gives the same numbers.

One pool per (family, layout) serves all the tests of this module that use it (the engines take the fault
model and the wire policy per run), which keeps actor start-ups -- the expensive part -- few.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from dsim import registry
from dsim.config import config_from_dict
from dsim.engine.local import LocalEngine
from dsim.engine.ray import ActorLost, RayEngine
from dsim.faults import FaultModel
from dsim.scenarios.build import scenario_from_config
from tests.test_devices import EX2_SMALL, EX3_SMALL, OWN_SCENARIO

SCENARIOS = {
    # 2 BSs x 3 UEs (8 actors with one per agent); BSs hear only UEs within 150 m: masked edges
    "multicell": {"family": "multicell", "layout": "hex", "n_bs": 2, "ues_per_bs": 3, "bs_antennas": 6,
                  "range_m": 150.0},
    "cellfree": {"family": "cellfree", "n_aps": 4, "n_ues": 3, "realizations": 20},
    # the ENGNN paper's multicell problems (their protocols run on them only: tests/test_devices.OWN_SCENARIO)
    "multicell-ex2": EX2_SMALL,
    "multicell-ex3": EX3_SMALL,
}


def protocols(key: str) -> list[str]:
    """The registered protocols that run on scenario ``key``: the family's, each on its own problem's scenario
    where it has one (OWN_SCENARIO), else on the family's generic one."""
    sc = SCENARIOS[key]
    return [n for n in registry.algorithm_names(sc["family"])
            if (OWN_SCENARIO.get(n) is sc) or (n not in OWN_SCENARIO and key == sc["family"])]
OPTIONS = {"wmmse": {"rounds": 3}, "wmmse_admm": {"rounds": 3}, "icgnn_cellular": {"checkpoint": "untrained"},
           "licgnn": {"checkpoint": "untrained"}, "model_gnn_mc": {"checkpoint": "untrained", "hidden": [4, 6]}}
#: protocols whose numbers may differ in the last bits between hosts of different sizes: ICGNN's MLPs are
#: GEMMs over a host's stacked agents, and BLAS picks its kernel (so its summation order) by matrix size;
#: measured: 4e-15 relative with one AP per actor, 0 with 2 shards.  DESIGN §1's tolerance is 1e-9.
#: The cooperative (every BS serves every UE) protocols sum their per-BS terms in host order: measured 2e-16
#: (ENGNN Ex3), 8e-16 (gradient projection), 2e-15 (WMMSE) relative, ledgers identical.
NOT_BITWISE = {"icgnn": 1e-12, "icgnn_cellular": 1e-12, "licgnn": 1e-12, "coop_gp": 1e-12, "coop_wmmse": 1e-12,
               "engnn_ex3": 1e-12}
FAULTS = FaultModel(message_loss=0.3, missing_links=0.2, seed=7)


def _scenario(key: str, faults: FaultModel | None = None):
    f = faults or FaultModel()
    if key != "multicell":
        f = FaultModel(message_loss=f.message_loss, seed=f.seed)  # missing links: multicell BS-UE links only
    cfg = config_from_dict({"seed": 11, "batch": 2, "scenario": SCENARIOS[key],
                            "algorithms": [{"name": protocols(key)[0]}],
                            "faults": {"message_loss": f.message_loss, "missing_links": f.missing_links,
                                       "seed": f.seed}, "output": "unused"})
    return scenario_from_config(cfg), f


def _run(engine, name: str, net, air, restarts: int = 1):
    """(decision after every round (R+1, B, ...), ledger) of ``name`` with its test options."""
    spec = registry.algorithm(name)
    if restarts > 1:
        net, air = net.repeat(restarts), air.repeat(restarts)
    proto = spec.build(spec.options(**OPTIONS.get(name, {})), net)
    dec = []
    trace = engine.run(proto, net, air, on_round=lambda r, V: dec.append(V.detach().clone()))
    return torch.stack(dec), trace.ledger


def _ledger_bytes(ledger) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for row in ledger:
        if row.link != "air":
            out[row.phase] += row.bytes
    return dict(out)


@pytest.fixture(scope="module")
def pools(ray_session):
    """(family, shards) -> a RayEngine whose actor pool lives for the whole module."""
    made: dict[tuple[str, int | None, bool], RayEngine] = {}

    def get(family: str, shards: int | None, compiled: bool = False) -> RayEngine:
        if (family, shards, compiled) not in made:
            made[(family, shards, compiled)] = RayEngine("float64", shards=shards, compiled=compiled)
        return made[(family, shards, compiled)]

    yield get
    for e in made.values():
        e.close()


@pytest.fixture(scope="module")
def scenarios():
    cache = {}

    def get(family: str, faulty: bool):
        if (family, faulty) not in cache:
            cache[(family, faulty)] = _scenario(family, FAULTS if faulty else None)
        return cache[(family, faulty)]

    return get


#: (shards, faulty, compiled) per test id; the compiled-graph transport is checked on the two families' own
#: scenarios (the ENGNN problems' protocols move their messages through the same plans)
ENGINE_CASES = {"actor-per-agent": (None, False, False), "2-shards": (2, False, False),
                "2-shards-faults": (2, True, False), "2-shards-faults-compiled": (2, True, True)}


@pytest.mark.parametrize("family,shards,faulty,compiled", [
    pytest.param(family, *case, id=f"{cid}-{family}") for cid, case in ENGINE_CASES.items()
    for family in sorted(SCENARIOS) if not case[2] or family in ("multicell", "cellfree")])
def test_local_equals_ray_every_protocol(pools, scenarios, family, shards, faulty, compiled):
    """Decisions bit for bit and identical ledgers; the bytes the actors send equal the ledger's.  With
    ``engine.compiled`` every protocol's steady rounds run as a Ray compiled graph (checked: one was built)."""
    scn, faults = scenarios(family, faulty)
    wire = "float32" if faulty else "float64"
    ray_engine = pools(SCENARIOS[family]["family"], shards, compiled)
    ray_engine.faults, ray_engine.wire = faults, wire
    for name in protocols(family):
        restarts = 2 if registry.algorithm(name).random_init else 1
        a, la = _run(LocalEngine(wire, faults), name, scn.net, scn.air, restarts)
        before = ray_engine.compiled_executions
        b, lb = _run(ray_engine, name, scn.net, scn.air, restarts)
        if name in NOT_BITWISE:
            torch.testing.assert_close(a, b, rtol=NOT_BITWISE[name], atol=0)
        else:
            assert torch.equal(a, b), f"{name}: local and Ray decisions differ"
        assert la == lb, f"{name}: ledgers differ"
        assert ray_engine.sent_bytes() == _ledger_bytes(la), f"{name}: bytes sent != ledger bytes"
        if compiled and len(a) > 3:  # 3 rounds or more: the steady rounds repeat, so they ran compiled
            assert ray_engine.compiled_executions > before, f"{name}: no round ran as a compiled graph"


@pytest.mark.parametrize("wire", ["float64", "float32", "float16", "q8"])
def test_ledger_bytes_are_the_bytes_sent(pools, scenarios, wire):
    """Per phase, the msgpack bytes of the messages the actors send equal the ledger's bytes, and each
    phase's bytes are messages x the size of one message under the policy (msgpack of one bin per field)."""
    import msgpack
    import numpy as np

    from dsim.wire import _FLOAT

    scn, faults = scenarios("cellfree", True)  # ICGNN's messages are tanh outputs: float16 represents them
    eng = pools("cellfree", 2)
    eng.faults, eng.wire = faults, wire
    spec = registry.algorithm("icgnn")
    proto = spec.build(spec.options(), scn.net)
    trace = eng.run(proto, scn.net, scn.air)
    assert eng.sent_bytes() == _ledger_bytes(trace.ledger)
    fields = {ph.name: ph.fields for ph in proto.phases if hasattr(ph, "fields")}
    for row in trace.ledger:
        if row.link == "air":
            continue
        bins = []
        for f in fields[row.phase]:  # one bin per field: the reals as the wire dtype, or lo, hi + packed codes
            n = f.reals
            size = n * np.dtype(_FLOAT[wire]).itemsize if wire in _FLOAT else 8 + (n * int(wire[1:]) + 7) // 8
            bins.append(b"\0" * size)
        assert row.bytes == row.messages * len(msgpack.packb(bins, use_bin_type=True))


@pytest.mark.parametrize("family", sorted(SCENARIOS))
def test_faults_at_probability_zero_are_fault_free(pools, scenarios, family):
    """message_loss = missing_links = 0 with another seed: identical to no fault model, both engines."""
    scn, _ = scenarios(family, False)
    zero = FaultModel(message_loss=0.0, missing_links=0.0, seed=123)
    eng = pools(SCENARIOS[family]["family"], 2)
    eng.wire = "float32"
    for name in protocols(family):
        ref, lref = _run(LocalEngine("float32"), name, scn.net, scn.air)
        for engine in (LocalEngine("float32", zero), eng):
            engine.faults = zero
            got, lgot = _run(engine, name, scn.net, scn.air)
            if name in NOT_BITWISE and engine is eng:
                torch.testing.assert_close(got, ref, rtol=NOT_BITWISE[name], atol=0)
            else:
                assert torch.equal(ref, got), f"{name} on {engine.kind}"
            assert lref == lgot, f"{name} on {engine.kind}"


def test_one_pool_serves_every_algorithm(pools, scenarios):
    """Three algorithms in one pool (wmmse, gcn_wmmse, wmmse again): each equals its solo run on a fresh
    engine (its own pool: one actor per role, a layout that gives the same numbers), and no actor of the
    shared pool is restarted (same processes)."""
    scn, _ = scenarios("multicell", False)
    eng = pools("multicell", 2)
    eng.faults, eng.wire = FaultModel(), "float64"
    _run(eng, "zf", scn.net, scn.air)
    before = dict(eng.pids)
    pooled = [_run(eng, n, scn.net, scn.air)[0] for n in ("wmmse", "gcn_wmmse", "wmmse")]
    assert eng.pids == before
    assert torch.equal(pooled[0], pooled[2])  # the first wmmse left no state behind
    for name, got in zip(("wmmse", "gcn_wmmse"), pooled):
        solo = RayEngine("float64", shards=1)
        try:
            ref, _ = _run(solo, name, scn.net, scn.air)
        finally:
            solo.close()
        assert torch.equal(ref, got), name


@pytest.mark.parametrize("compiled", [False, True], ids=["ordinary", "compiled"])
def test_dead_actor_names_its_agents_and_the_run_keeps_the_rest(ray_session, tmp_path, monkeypatch, compiled):
    """An actor killed from outside during ``wmmse`` ends that algorithm with one error naming the agents it
    hosted; the algorithms before and after it are on disk (the pool is rebuilt for them).  Compiled: the
    kill falls on wmmse's first compiled round (its steady plan seen twice in a row)."""
    import ray

    from dsim.run import run

    cfg = config_from_dict({"seed": 1, "batch": 2, "scenario": {"family": "multicell"},
                            "algorithms": [{"name": "mrc"}, {"name": "wmmse", "rounds": 4}, {"name": "zf"}],
                            "engine": {"kind": "ray", "shards": 1, "compiled": compiled},
                            "output": str(tmp_path / "run")})
    real_output = RayEngine._output
    calls = {"n": 0}

    def killing_output(self):
        calls["n"] += 1
        if self.proto.name == "wmmse" and calls["n"] == 4:  # wmmse's round 1 decision: kill the UE actor
            victim = self.actors["ue"][0]
            ray.kill(victim)
            for _ in range(100):  # ray.kill is asynchronous: go on once the actor is really gone
                try:
                    ray.get(victim.noop.remote(), timeout=30)
                except ray.exceptions.RayActorError:
                    break
                time.sleep(0.1)
            else:
                pytest.fail("the killed actor still answers after 10 s")
        return real_output(self)

    monkeypatch.setattr(RayEngine, "_output", killing_output)
    with pytest.raises(RuntimeError, match="wmmse"):
        run(cfg, progress=False, echo=lambda *_: None)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())["algorithms"]
    assert "error" in summary["wmmse"]
    assert "ue agents " + ", ".join(f"ue{i}" for i in range(12)) in summary["wmmse"]["error"]
    assert "bs agents" not in summary["wmmse"]["error"]  # the BS actor lives: only the dead one is named
    assert ActorLost.__name__ in summary["wmmse"]["error"]
    # the others equal a local-engine run of the same entries (the pool rebuilt after the death for zf)
    monkeypatch.undo()
    local = cfg.model_copy(update={"engine": cfg.engine.model_copy(update={"kind": "local", "compiled": False}),
                                   "algorithms": [cfg.algorithms[0], cfg.algorithms[2]],
                                   "output": str(tmp_path / "local")})
    run(local, progress=False, echo=lambda *_: None)
    ref = json.loads((tmp_path / "local" / "summary.json").read_text())["algorithms"]
    for ok in ("mrc", "zf"):
        assert "error" not in summary[ok] and summary[ok]["final_wsr"] == ref[ok]["final_wsr"]


def test_two_node_cluster(tmp_path):
    """``engine.address`` of a two-node cluster with ``placement: spread``: the shards land on both nodes and
    the numbers and ledger equal the local engine's (in a subprocess: a process joins one Ray instance)."""
    script = Path(__file__).with_name("multinode_check.py")
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240,
                         cwd=Path(__file__).parents[1])
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out == {"equal": True, "ledger_equal": True, "nodes_used": 2, "nodes_alive": 2}
