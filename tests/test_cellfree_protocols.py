"""Cell-free protocols on the engine: per-AP power constraints, ordering, fronthaul accounting."""

from __future__ import annotations

import torch

from agents.cellfree_power import wmmse_admm
from agents.registry import get
from dsim.engine.local import LocalEngine
from tests.test_engines import _cellfree


def _decisions(name, net, air, **opts):
    spec = get(name)
    proto = spec.build(spec.options(**opts), net)
    out = []
    trace = LocalEngine("float64").run(proto, net, air, on_round=lambda r, p: out.append(p))
    return out, trace


def test_power_constraints_and_order():
    net, air = _cellfree(batch=4, seed=1, n_aps=5, n_ues=4, realizations=40)
    se = {}
    for name, opts in (("equal", {}), ("lsf", {}), ("wmmse_admm", {"rounds": 15})):
        ps, _ = _decisions(name, net, air, **opts)
        for p in ps:
            assert bool((p >= 0).all())
            assert bool((air.power_ratio(p) <= 1 + 1e-9).all()), name
        se[name] = air.evaluate(ps[-1])[0]
    assert float(se["wmmse_admm"].mean()) >= float(se["lsf"].mean()) >= float(se["equal"].mean())


def test_distributed_wmmse_admm_equals_centralized_math():
    """The protocol (statistics uploaded by APs, combined at the CPU) == the math on the air's a, B."""
    net, air = _cellfree(batch=3, seed=2)
    ps, trace = _decisions("wmmse_admm", net, air, rounds=6)
    p_ref, hist = wmmse_admm(air.a, air.Bmat, air.noise_w, air.power_w, outer=6)
    torch.testing.assert_close(ps[-1], p_ref.transpose(1, 2), rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(air.evaluate(ps[-1])[0], hist[:, -1], rtol=1e-9, atol=0)
    # ledger: statistics once (3 K^2 reals per AP), powers every round (K reals per AP)
    L, K, B = net.counts["ap"], net.info["n_ues"], net.batch
    stats = [r for r in trace.ledger if r.phase == "fh_stats"]
    assert len(stats) == 1 and stats[0].reals == B * L * 3 * K * K
    pw = [r for r in trace.ledger if r.phase == "fh_powers"]
    assert len(pw) == 6 and all(r.reals == B * L * K for r in pw)
