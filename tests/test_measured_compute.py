"""Clock with measured compute time: the run's local-phase wall time, amortized per agent, drives the clock."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from agents.registry import get
from dsim.clock import ClockConfig, LinkSpec, RoundClock
from dsim.config import ConfigError, config_from_dict
from dsim.engine.local import LocalEngine
from dsim.run import cumulative_sim_time, run_algorithm
from dsim.scenarios.build import Scenario
from dsim.scenarios.network_multicell import multicell_network
from tests.conftest import base_channels


def test_measured_compute_equals_constant_clock_with_the_measured_values():
    ch = base_channels(batch=2, seed=3)
    net, air = multicell_network(ch)
    scn = Scenario("multicell", net, air, ch)
    links = {"ul": LinkSpec(latency_s=1e-3, bandwidth_bps=1e6)}
    clock = RoundClock(ClockConfig(links=links))
    spec = get("wmmse")
    alg = SimpleNamespace(name="wmmse", label="w", options=spec.options(rounds=4))
    res = run_algorithm(alg, scn, LocalEngine("float64"), clock, "float64", progress=False,
                        measured_roles=["bs", "ue"]).result
    m = res.extra["measured_compute_s_per_agent"]
    assert set(m) == {"ue_update", "bs_update"} and all(v > 0 for v in m.values())
    # one local phase per role: the same clock with those values as per-role constants
    const = RoundClock(ClockConfig(links=links, compute_s={"ue": m["ue_update"], "bs": m["bs_update"]}))
    want = cumulative_sim_time(spec.build(alg.options, net), net, "float64", const)
    assert res.sim_time_s == pytest.approx(want, rel=1e-12, abs=0)
    assert want[-1] > 4 * (m["ue_update"] + m["bs_update"])


def test_measured_is_the_only_non_number_allowed():
    base = {"scenario": {"family": "multicell"}, "algorithms": [{"name": "mrc"}]}
    cfg = config_from_dict(base | {"clock": {"compute_s": {"bs": "measured", "ue": 1e-4}}})
    assert cfg.clock.compute_s["bs"] == "measured"
    with pytest.raises(ConfigError, match="compute_s"):
        config_from_dict(base | {"clock": {"compute_s": {"bs": "fast"}}})
