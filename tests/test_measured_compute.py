"""Clock with measured compute time: the run's local-phase wall time, amortized per agent, drives the clock."""

from __future__ import annotations

import numpy as np
import pytest

from dsim.clock import ClockConfig, LinkSpec, RoundClock
from dsim.config import AlgorithmConfig, ConfigError, config_from_dict
from dsim.engine.local import LocalEngine
from dsim.registry import algorithm
from dsim.run import cumulative_sim_time, run_algorithm
from dsim.scenarios.build import Scenario
from dsim.scenarios.multicell import multicell_network
from tests.conftest import base_channels


def test_measured_compute_equals_constant_clock_with_the_measured_values():
    ch = base_channels(batch=2, seed=3)
    net, air = multicell_network(ch)
    scn = Scenario("multicell", net, air, ch)
    links = {"ul": LinkSpec(latency_s=1e-3, bandwidth_bps=1e6)}
    clock = RoundClock(ClockConfig(links=links))
    spec = algorithm("wmmse")
    alg = AlgorithmConfig(name="wmmse", label="w", options=spec.options(rounds=4))
    res = run_algorithm(alg, scn, LocalEngine("float64"), clock, "float64", progress=False,
                        measured_roles=["bs", "ue"]).result
    m = res.extra["measured_compute_s_per_agent"]
    # each: the phase's wall time over its 4 rounds, 2 realizations and the role's agents (3 BSs, 12 UEs)
    wall = res.extra["phase_wall_s"]  # rounded to 1e-6 s in summary.json
    assert set(m) == {"ue_update", "bs_update"}
    assert m["ue_update"] == pytest.approx(wall["ue_update"] / (4 * 2 * 12), abs=0.51e-6 / (4 * 2 * 12))
    assert m["bs_update"] == pytest.approx(wall["bs_update"] / (4 * 2 * 3), abs=0.51e-6 / (4 * 2 * 3))
    # one local phase per role: the same clock with those values as per-role constants
    proto = spec.build(alg.options, net)
    const = RoundClock(ClockConfig(links=links, compute_s={"ue": m["ue_update"], "bs": m["bs_update"]}))
    want = cumulative_sim_time(proto, net, "float64", const)
    assert res.sim_time_s == pytest.approx(want, rel=1e-12, abs=0)
    # the two local phases lie on every round's critical path (all UEs compute, send, then the BSs compute),
    # so each round takes exactly their sum longer than with zero compute time
    zero = cumulative_sim_time(proto, net, "float64", RoundClock(ClockConfig(links=links)))
    np.testing.assert_allclose(want - zero, np.arange(5) * (m["ue_update"] + m["bs_update"]), rtol=1e-9, atol=1e-15)


def test_measured_is_the_only_non_number_allowed():
    base = {"scenario": {"family": "multicell"}, "algorithms": [{"name": "mrc"}]}
    cfg = config_from_dict(base | {"clock": {"compute_s": {"bs": "measured", "ue": 1e-4}}})
    assert cfg.clock.compute_s["bs"] == "measured"
    with pytest.raises(ConfigError, match="compute_s"):
        config_from_dict(base | {"clock": {"compute_s": {"bs": "fast"}}})
