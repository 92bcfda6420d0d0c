"""Local engine == Ray engine: numbers and ledger (DESIGN §6), for every multicell protocol."""

from __future__ import annotations

import pytest
import torch

from agents.registry import get, names
from dsim.engine.local import LocalEngine
from dsim.engine.ray import RayEngine
from dsim.faults import FaultModel
from dsim.scenarios.network_multicell import multicell_network
from tests.conftest import base_channels


def _run(engine, name, net, air, **opts):
    spec = get(name)
    proto = spec.build(spec.options(**opts), net)
    out = []
    trace = engine.run(proto, net, air, on_round=lambda r, V: out.append(air.evaluate(V)[0]))
    engine.close()
    return torch.stack(out), trace.ledger


PROTOCOL_OPTS = {"wmmse": {"rounds": 4}, "mrc": {}, "zf": {}, "rzf": {}, "gcn_wmmse": {}}


@pytest.mark.parametrize("name", [n for n in names("multicell")])
def test_local_equals_ray_one_actor_per_agent(ray_session, name):
    net, air = multicell_network(base_channels(batch=2, seed=11))
    opts = PROTOCOL_OPTS.get(name, {})
    a, la = _run(LocalEngine("float64"), name, net, air, **opts)
    b, lb = _run(RayEngine("float64"), name, net, air, **opts)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=0)
    assert la == lb


def test_local_equals_ray_sharded_with_faults_float32(ray_session):
    f = FaultModel(message_loss=0.2, missing_links=0.2, seed=3)
    ch = base_channels(batch=2, seed=12)
    net, air = multicell_network(ch, f)
    a, la = _run(LocalEngine("float32", f), "wmmse", net, air, rounds=4)
    b, lb = _run(RayEngine("float32", f, shards=2), "wmmse", net, air, rounds=4)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=0)
    assert la == lb


def _cellfree(batch=2, seed=0, **kw):
    from dsim.scenarios.cellfree import generate_cellfree
    from dsim.scenarios.network_cellfree import cellfree_network

    g = torch.Generator().manual_seed(seed)
    kw = {"n_aps": 4, "ap_antennas": 2, "n_ues": 3, "realizations": 20} | kw
    return cellfree_network(generate_cellfree(batch, g, torch.complex128, **kw))


CELLFREE_OPTS = {"wmmse_admm": {"rounds": 3}, "icgnn": {}}


@pytest.mark.parametrize("name", [n for n in names("cellfree")])
def test_local_equals_ray_cellfree(ray_session, name):
    net, air = _cellfree()
    opts = CELLFREE_OPTS.get(name, {})
    a, la = _run(LocalEngine("float64"), name, net, air, **opts)
    b, lb = _run(RayEngine("float64", shards=2), name, net, air, **opts)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=0)
    assert la == lb
    fh = [r for r in la if r.link == "fh"]
    if name in ("equal", "lsf"):
        assert not fh
    else:
        assert fh and all(r.bytes > 0 for r in fh)
