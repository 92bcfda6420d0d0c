"""dsim.config: scenario YAML + overrides -> RunConfig; every user error is one clear ConfigError line.

The algorithm entries use fake algorithms registered by a fixture; the names of the real families,
algorithms, roles and link classes are read from the registry at test time.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dsim import registry
from dsim.config import (
    ConfigError,
    EngineConfig,
    RunConfig,
    config_from_dict,
    default_links,
    load_config,
    resolved_dict,
)
from dsim.scenarios.build import FileScenario
from dsim.scenarios.cellfree import CellfreeScenario
from dsim.scenarios.multicell import MulticellScenario
from dsim.train import TrainOptions

DEFAULT_LINKS = default_links()
LINK_CLASSES = list(registry.link_classes())
ROLES = registry.roles()
FAMILIES = ", ".join(registry.family_names())
LEARNABLE = ", ".join(registry.algorithm_names(learnable=True))
ENGINE_KEYS = ", ".join(sorted(EngineConfig.model_fields))

FAKE = "_cfgtest_fake"
FAKE_CF = "_cfgtest_fake_cf"


class FakeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rounds: int = Field(10, ge=1)
    init: Literal["random", "mrc"] = "random"
    step: float = Field(0.5, gt=0)
    betas: tuple[float, float] = (0.9, 0.99)


@pytest.fixture
def fake_alg():
    """Two fake algorithms: FAKE (multicell only) and FAKE_CF (cellfree only); removed afterwards."""
    registry.discover()
    registry.register_algorithm(registry.AlgorithmSpec(FAKE, ("multicell",), FakeOptions, lambda o, n: None, "test",
                                                       random_init=True))
    registry.register_algorithm(registry.AlgorithmSpec(FAKE_CF, ("cellfree",), FakeOptions, lambda o, n: None,
                                                       "test"))
    yield FAKE
    for n in (FAKE, FAKE_CF):
        registry.ALGORITHMS.pop(n, None)


def base() -> dict:
    return {"scenario": {"family": "multicell"}, "algorithms": [{"name": FAKE}]}


def write(tmp_path: Path, data, name: str = "bad.yaml") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return p


def error_of(tmp_path: Path, data, overrides=(), **kw) -> str:
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, data), overrides, **kw)
    return str(ei.value)


def line_for(msg: str, path: str) -> str:
    """The one line of ``msg`` about key ``path``; each line starts with the file name."""
    lines = msg.splitlines()
    for line in lines:
        assert line.split(": ")[0].endswith("bad.yaml"), line
    hits = [ln for ln in lines if ln.split(": ")[1] == path]
    assert len(hits) == 1, f"no single line for {path!r} in:\n{msg}"
    return hits[0]


# ============================================================================== valid configs
FULL_YAML = """\
seed: 7
precision: single
batch: 5
scenario: {family: multicell, layout: hex, n_bs: 7, bs_distance_m: 500, pathloss: macro}
algorithms:
  - {name: _cfgtest_fake, rounds: 3, label: a}
  - {name: _cfgtest_fake, init: mrc, betas: [0.1, 0.2]}
engine: {kind: local}
wire: {dtype: q8}
clock:
  links: {ul: {latency_s: 2e-3}, bh: {bandwidth_bps: inf, shared: true}}
  compute_s: {bs: 1e-4}
faults: {message_loss: 0.25}
train: {algorithm: gcn_wmmse, steps: 3, lr: 1e-2, options: {layers: 2}}
"""


def test_full_yaml_loads_with_defaults_filled(tmp_path, fake_alg):
    cfg = load_config(write(tmp_path, FULL_YAML, "full.yaml"))
    assert isinstance(cfg, RunConfig)
    assert (cfg.seed, cfg.precision, cfg.batch) == (7, "single", 5)
    s = cfg.scenario
    assert isinstance(s, MulticellScenario)
    assert (s.layout, s.n_bs, s.bs_distance_m, s.pathloss) == ("hex", 7, 500.0, "macro")
    assert (s.ues_per_bs, s.bs_antennas, s.ue_antennas, s.noise_dbm, s.range_m) == (4, 12, 2, -100.0, None)
    a0, a1 = cfg.algorithms
    assert (a0.name, a0.label, a0.options.rounds, a0.options.init) == (FAKE, "a", 3, "random")
    assert (a1.label, a1.options.init, a1.options.betas, a1.options.rounds) == (FAKE, "mrc", (0.1, 0.2), 10)
    assert isinstance(a0.options, FakeOptions)
    e = cfg.engine
    assert (e.kind, e.shards, e.address, e.gpus) == ("local", None, None, 0.0)
    assert cfg.wire.dtype == "q8"
    links = cfg.clock.links
    assert set(links) == set(LINK_CLASSES)
    # a given field wins, an omitted one takes its class's default (YAML 1.2 floats: 2e-3, inf)
    assert (links["ul"].latency_s, links["ul"].bandwidth_bps) == (2e-3, DEFAULT_LINKS["ul"]["bandwidth_bps"])
    assert links["bh"].latency_s == DEFAULT_LINKS["bh"]["latency_s"] and math.isinf(links["bh"].bandwidth_bps)
    assert links["bh"].shared and not links["fh"].shared
    assert (links["fh"].latency_s, links["fh"].bandwidth_bps) == (1e-4, 1e9)
    assert (links["dl"].latency_s, links["dl"].bandwidth_bps) == (1e-3, 1e6)
    assert cfg.clock.compute_s == {"bs": 1e-4} and cfg.clock.air_symbol_s == 71.4e-6
    assert (cfg.faults.message_loss, cfg.faults.missing_links, cfg.faults.seed) == (0.25, 0.0, None)
    assert cfg.output == "runs/full" and cfg.source.endswith("full.yaml")
    assert cfg.train == TrainOptions(algorithm="gcn_wmmse", steps=3, lr=0.01, options={"layers": 2})


def test_minimal_config_defaults(fake_alg):
    cfg = config_from_dict(base())
    got = (cfg.seed, cfg.precision, cfg.batch, cfg.engine.kind, cfg.wire.dtype)
    assert got == (0, "double", 20, "ray", "float32")
    assert cfg.scenario == MulticellScenario()
    assert cfg.clock.compute_s == {} and cfg.clock.air_latency_s == 0.0
    assert {k: (v.latency_s, v.bandwidth_bps) for k, v in cfg.clock.links.items()} == \
        {k: (v["latency_s"], v["bandwidth_bps"]) for k, v in DEFAULT_LINKS.items()}
    assert cfg.train is None and cfg.output == "runs/run"


def test_cellfree_defaults_and_mmse_with_pilots(fake_alg):
    cfg = config_from_dict({"scenario": {"family": "cellfree", "csi": "mmse", "pilots": 3, "tau_d": 20},
                            "algorithms": [{"name": FAKE_CF}]})
    s = cfg.scenario
    assert isinstance(s, CellfreeScenario)
    assert (s.csi, s.pilots, s.tau_c, s.tau_d, s.n_aps, s.bandwidth_hz) == ("mmse", 3, 20, 20, 7, 2e7)


def test_every_family_registers_a_strict_options_model():
    """Each registered family's options model is the YAML mapping: ``family`` defaults to its name,
    unknown keys are rejected, every other field has a default (a bare ``{family: name}`` is valid)."""
    for name in registry.family_names():
        model = registry.family(name).options
        assert model.model_config.get("extra") == "forbid", name
        assert model().family == name
        with pytest.raises(ValidationError):
            model(no_such_key=1)


def test_resolved_dict_round_trips(tmp_path, fake_alg):
    cfg = load_config(write(tmp_path, FULL_YAML, "full.yaml"))
    d = resolved_dict(cfg)
    text = yaml.safe_dump(d, sort_keys=False)  # YAML-dumpable (inf, tuples, nested models)
    again = load_config(write(tmp_path, text, "again.yaml"))
    assert resolved_dict(again) == d
    assert d["algorithms"][1] == {"name": FAKE, "label": FAKE, "rounds": 10, "init": "mrc", "step": 0.5,
                                  "betas": [0.1, 0.2]}
    assert d["scenario"]["ue_weight"] == 1.0 and d["clock"]["links"]["fh"]["bandwidth_bps"] == 1e9
    assert "source" not in d and d["output"] == "runs/full"


def test_direct_construction_runs_cross_field_checks():
    with pytest.raises(ValidationError, match="exactly 3 BSs"):
        MulticellScenario(n_bs=4)
    assert MulticellScenario(layout="hex", n_bs=4).n_bs == 4
    with pytest.raises(ValidationError, match="tau_c"):
        CellfreeScenario(tau_c=10, tau_d=11)


# ============================================================================== schema errors
def _set(d: dict, path: str, value) -> dict:
    keys = path.split(".")
    node = d
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node.setdefault(k, {})
    if isinstance(node, list):
        node[int(keys[-1])] = value
    else:
        node[keys[-1]] = value
    return d


TOP = "algorithms, batch, clock, engine, faults, output, precision, scenario, seed, sweep, train, wire"
WIRE = "is not allowed; allowed: float64, float32, float16, q2 ... q16"
# (key to set, value, key path in the message, fragments the line must contain)
CASES = [
    ("colck", {}, "colck", [f"unknown key; allowed: {TOP}", "did you mean 'clock'"]),
    ("scenario.bs_antenas", 4, "scenario.bs_antenas",
     ["unknown key; allowed:", "bs_antennas", "bs_distance_m", "ues_per_bs"]),
    ("engine.shard", 2, "engine.shard", [f"unknown key; allowed: {ENGINE_KEYS}"]),
    ("faults.loss", 0.1, "faults.loss",
     ["allowed: crash, csi_error, deadline_s, delay, message_loss, missing_links, phase_deadline_s, seed, stale_csi"]),
    ("clock.links.ul.delay", 1, "clock.links.ul.delay", ["allowed: bandwidth_bps, latency_s, shared"]),
    ("batch", "20", "batch", ["must be an integer >= 1 (got '20')"]),
    ("batch", 2.5, "batch", ["must be an integer >= 1 (got 2.5)"]),
    ("scenario.bs_distance_m", "far", "scenario.bs_distance_m", ["must be a number > 0 (got 'far')"]),
    ("clock.links.ul.shared", "maybe", "clock.links.ul.shared", ["must be true or false (got 'maybe')"]),
    ("engine", 3, "engine", ["must be a mapping (got 3)"]),
    ("algorithms.0.rounds", -3, "algorithms[0].rounds", ["must be an integer >= 1 (got -3)"]),
    ("algorithms.0.rounds", "5", "algorithms[0].rounds", ["must be an integer >= 1 (got '5')"]),
    ("seed", -1, "seed", ["must be an integer >= 0 (got -1)"]),
    ("scenario.range_m", 0, "scenario.range_m", ["must be a number > 0 or null (got 0)"]),
    ("faults.message_loss", 1.0, "faults.message_loss", ["must be a number in [0, 1) (got 1.0)"]),
    ("faults.missing_links", -0.1, "faults.missing_links", ["must be a number in [0, 1) (got -0.1)"]),
    ("engine.gpus", -1, "engine.gpus", ["must be a number >= 0"]),
    ("clock.compute_s.bs", -1, "clock.compute_s.bs", ["must be a number of seconds >= 0 or 'measured' (got -1)"]),
    ("precision", "quad", "precision", ["'quad' is not allowed; allowed: double, single"]),
    ("engine.kind", "rayy", "engine.kind", ["'rayy' is not allowed; allowed: local, ray"]),
    ("wire.dtype", "q1", "wire.dtype", [f"'q1' {WIRE}"]),
    ("wire.dtype", "q17", "wire.dtype", [f"'q17' {WIRE}"]),
    ("wire.dtype", "int8", "wire.dtype", [f"'int8' {WIRE}"]),
    ("clock.links.xx", {}, "clock.links.xx", ["'xx' is not allowed; allowed: " + ", ".join(LINK_CLASSES)]),
    ("clock.compute_s.gpu", 1.0, "clock.compute_s.gpu",
     ["'gpu' is not allowed; allowed: " + ", ".join(ROLES)]),
    ("scenario.layout", "square", "scenario.layout", ["'square' is not allowed; allowed: triangle, hex"]),
    ("scenario.pathloss", "umi", "scenario.pathloss", ["allowed: pico, macro, exponent"]),
    ("scenario", {"n_bs": 3}, "scenario.family", [f"required key missing; allowed: {FAMILIES}"]),
    ("scenario", {"family": "femto"}, "scenario.family", [f"'femto' is not allowed; allowed: {FAMILIES}"]),
    ("scenario", {"family": ["multicell"]}, "scenario.family", [f"a list is not allowed; allowed: {FAMILIES}"]),
    ("scenario.n_bs", 4, "scenario.n_bs", ["layout 'triangle' has exactly 3 BSs (got 4); allowed: 3"]),
    ("scenario", {"family": "cellfree", "csi": "mmse"}, "scenario.pilots",
     ["required when csi is 'mmse'; allowed: an integer >= 1"]),
    ("scenario", {"family": "cellfree", "tau_c": 20, "tau_d": 21}, "scenario.tau_d",
     ["must be <= tau_c (= 20) (got 21)"]),
    ("algorithms.0.roundz", 3, "algorithms[0].roundz",
     ["unknown key; allowed: betas, init, label, name, restarts, rounds, step", "did you mean 'rounds'"]),
    ("algorithms.0.init", "zero", "algorithms[0].init", ["'zero' is not allowed; allowed: random, mrc"]),
    ("algorithms.0.label", 3, "algorithms[0].label", ["must be a string"]),
    ("algorithms.0", {"rounds": 3}, "algorithms[0].name", ["required key missing; allowed:", FAKE]),
    ("algorithms.0", "wmmse", "algorithms[0]", ["must be a mapping (got 'wmmse')"]),
    ("algorithms", {"name": FAKE}, "algorithms", ["must be a list"]),
    ("output", 3, "output", ["must be a string or null (got 3)"]),
    ("train", [1], "train", ["must be a mapping"]),
    ("algorithms.0.restarts", 0, "algorithms[0].restarts", ["must be an integer >= 1 (got 0)"]),
    ("train", {"steps": 3}, "train.algorithm", [f"required key missing; allowed: {LEARNABLE}"]),
    ("train", {"algorithm": "nope"}, "train.algorithm",
     [f"'nope' is not allowed; allowed (learnable algorithms): {LEARNABLE}"]),
    ("train", {"algorithm": "gcn_wmmse", "stepz": 3}, "train.stepz", ["unknown key; allowed:", "steps"]),
    ("train", {"algorithm": "gcn_wmmse", "steps": -1}, "train.steps", ["must be an integer >= 0"]),
    ("train", {"algorithm": "gcn_wmmse", "options": {"layerz": 2}}, "train.options.layerz",
     ["unknown key; allowed:", "layers"]),
]


@pytest.mark.parametrize("key,value,path,fragments", CASES, ids=[f"{c[0]}={c[1]}" for c in CASES])
def test_error_names_file_key_and_allowed(tmp_path, fake_alg, key, value, path, fragments):
    msg = error_of(tmp_path, _set(base(), key, value))
    line = line_for(msg, path)
    for f in fragments:
        assert f in line, f"{f!r} not in {line!r}"


def test_missing_scenario_and_algorithms(tmp_path, fake_alg):
    msg = error_of(tmp_path, {"seed": 1})
    assert "required key missing" in line_for(msg, "scenario")
    assert "required key missing" in line_for(msg, "algorithms")


def test_empty_algorithms_lists_the_names(tmp_path, fake_alg):
    line = line_for(error_of(tmp_path, {**base(), "algorithms": []}), "algorithms")
    assert "must not be empty; allowed names:" in line
    for name in registry.algorithm_names():
        assert name in line


def test_unknown_algorithm(tmp_path, fake_alg):
    line = line_for(error_of(tmp_path, {**base(), "algorithms": [{"name": "nope"}]}), "algorithms[0].name")
    assert "unknown algorithm 'nope'; allowed: " + ", ".join(registry.algorithm_names()) in line
    assert FAKE in line


def test_algorithm_not_for_the_family(tmp_path, fake_alg):
    data = {"scenario": {"family": "cellfree"}, "algorithms": [{"name": FAKE_CF}, {"name": FAKE}]}
    msg = error_of(tmp_path, data)
    line = line_for(msg, "algorithms[1].name")
    assert f"'{FAKE}' does not run on family 'cellfree'; allowed for cellfree: " in line
    assert line.endswith(", ".join(registry.algorithm_names("cellfree")))
    assert FAKE_CF in line and "algorithms[0]" not in msg
    # a channel file's family is read from the file at validation (issue 11): same check, same exit
    from dsim.scenarios.build import generate_channels, save_channels_file

    save_channels_file(*generate_channels({"family": "cellfree", "n_aps": 2, "n_ues": 2, "realizations": 2},
                                          1, 0, "double"), tmp_path / "ch.npz")
    cfg = load_config(write(tmp_path, {"scenario": {"file": "ch.npz"}, "algorithms": [{"name": FAKE_CF}]}))
    assert cfg.algorithms[0].name == FAKE_CF
    msg = error_of(tmp_path, {"scenario": {"file": "ch.npz"}, "algorithms": [{"name": FAKE}]})
    assert f"'{FAKE}' does not run on family 'cellfree'" in line_for(msg, "algorithms[0].name")
    # an unreadable file is a scenario.file error at validation
    (tmp_path / "empty.npz").write_bytes(b"")
    msg = error_of(tmp_path, {"scenario": {"file": "empty.npz"}, "algorithms": [{"name": FAKE_CF}]})
    assert "not a readable .npz channel file" in line_for(msg, "scenario.file")


def test_restarts_only_for_a_random_initialisation(tmp_path, fake_alg):
    cfg = config_from_dict({**base(), "algorithms": [{"name": FAKE, "restarts": 3, "rounds": 2}]})
    assert (cfg.algorithms[0].restarts, cfg.algorithms[0].options.rounds) == (3, 2)
    assert config_from_dict(base()).algorithms[0].restarts == 1
    data = {"scenario": {"family": "cellfree"}, "algorithms": [{"name": FAKE_CF, "restarts": 2}]}
    line = line_for(error_of(tmp_path, data), "algorithms[0].restarts")
    assert f"not allowed for '{FAKE_CF}' (its initialisation is not random)" in line


def test_duplicate_labels(tmp_path, fake_alg):
    msg = error_of(tmp_path, {**base(), "algorithms": [{"name": FAKE}, {"name": FAKE, "init": "mrc"}]})
    assert f"duplicate label '{FAKE}' (also algorithms[0], the label defaults to the name)" in \
        line_for(msg, "algorithms[1].label")
    algs = [{"name": FAKE, "label": "x"}, {"name": FAKE, "label": "y"}, {"name": FAKE, "label": "x"}]
    line = line_for(error_of(tmp_path, {**base(), "algorithms": algs}), "algorithms[2].label")
    assert "duplicate label 'x' (also algorithms[0])" in line


def test_several_errors_one_message_one_line_each(tmp_path, fake_alg):
    data = _set(_set(_set(base(), "engine.kind", "rayy"), "batch", 0), "algorithms.0.rounds", 0)
    data["scenario"]["n_bs"] = 4
    msg = error_of(tmp_path, data)
    paths = [ln.split(": ")[1] for ln in msg.splitlines()]
    assert sorted(paths) == sorted(["batch", "engine.kind", "scenario.n_bs", "algorithms[0].rounds"])


def test_cross_field_errors_reported_together(tmp_path, fake_alg):
    msg = error_of(tmp_path, {"scenario": {"family": "cellfree", "csi": "mmse", "tau_d": 30},
                              "algorithms": [{"name": FAKE_CF}]})
    assert "csi is 'mmse'" in line_for(msg, "scenario.pilots") and "tau_c" in line_for(msg, "scenario.tau_d")


# ============================================================================== file errors
def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such file"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_syntax_error_has_line_number(tmp_path):
    msg = error_of(tmp_path, "seed: 1\nbatch: 2\nscenario: {family: multicell\nalgorithms: []\n")
    assert msg.startswith(str(tmp_path / "bad.yaml") + ": line 4") and "invalid YAML" in msg
    msg = error_of(tmp_path, "seed: 1\nengine:\n  kind: local\n   shards: 2\n")
    assert "bad.yaml: line 4" in msg


def test_duplicate_yaml_key(tmp_path):
    msg = error_of(tmp_path, "seed: 1\nbatch: 2\nseed: 3\n")
    assert "bad.yaml: line 3" in msg and "duplicate key 'seed' (first given on line 1)" in msg


@pytest.mark.parametrize("text,fragment", [("- a\n- b\n", "got a list"), ("42\n", "got int 42"),
                                           ("", "the file is empty")])
def test_non_mapping_top_level(tmp_path, text, fragment):
    msg = error_of(tmp_path, text)
    assert msg.startswith(str(tmp_path / "bad.yaml") + ": ") and fragment in msg
    assert "\n" not in msg


def test_scenario_file_resolved_relative_to_yaml(tmp_path, monkeypatch, fake_alg):
    from dsim.scenarios.build import generate_channels, save_channels_file

    (tmp_path / "sub").mkdir()
    save_channels_file(*generate_channels({"family": "multicell"}, 1, 0, "double"), tmp_path / "sub" / "ch.npz")
    data = {"scenario": {"file": "ch.npz"}, "algorithms": [{"name": FAKE}]}
    cfg_path = write(tmp_path / "sub", data, "c.yaml")
    monkeypatch.chdir(tmp_path)
    cfg = load_config("sub/c.yaml")
    assert isinstance(cfg.scenario, FileScenario)
    assert Path(cfg.scenario.file) == tmp_path / "sub" / "ch.npz" and Path(cfg.scenario.file).is_absolute()
    other = tmp_path / "elsewhere.npz"
    other.write_bytes((tmp_path / "sub" / "ch.npz").read_bytes())
    cfg = load_config(cfg_path, [f"scenario.file={other}"])
    assert cfg.scenario.file == str(other)


def test_scenario_file_that_does_not_exist(tmp_path, fake_alg):
    line = line_for(error_of(tmp_path, {"scenario": {"file": "none.npz"}, "algorithms": [{"name": FAKE}]}),
                    "scenario.file")
    assert "no such channel file 'none.npz'" in line and str(tmp_path / "none.npz") in line
    line = line_for(error_of(tmp_path, {"scenario": {"file": "c.npz", "family": "multicell"},
                                        "algorithms": [{"name": FAKE}]}), "scenario.family")
    assert "unknown key; allowed: file" in line


# ============================================================================== overrides
def test_overrides_nested_list_index_and_types(tmp_path, fake_alg):
    p = write(tmp_path, {**base(), "algorithms": [{"name": FAKE}, {"name": FAKE, "label": "b"}]}, "o.yaml")
    cfg = load_config(p, ["engine.shards=4", "clock.links.bh.latency_s=1e-3", "batch=7", "seed=3",
                          "clock.links.ul.shared=true", "algorithms.0.rounds=5", "algorithms[1].init=mrc",
                          "algorithms.1.betas=[0.5, 0.6]", "train={algorithm: gcn_wmmse, steps: 3}", "train.lr=1e-2",
                          "scenario.range_m=150.5", "engine.address=", "clock.compute_s.ue=2e-4"])
    assert cfg.engine.shards == 4 and cfg.engine.address is None
    assert cfg.clock.links["bh"].latency_s == 1e-3 and cfg.clock.links["bh"].bandwidth_bps == 1e9
    assert (cfg.batch, cfg.seed) == (7, 3) and cfg.clock.links["ul"].shared is True
    assert cfg.algorithms[0].options.rounds == 5 and cfg.algorithms[1].options.init == "mrc"
    assert cfg.algorithms[1].options.betas == (0.5, 0.6)
    assert (cfg.train.algorithm, cfg.train.steps, cfg.train.lr) == ("gcn_wmmse", 3, 0.01)
    assert cfg.scenario.range_m == 150.5
    assert cfg.clock.compute_s == {"ue": 2e-4}
    # the family may be switched from the command line
    cfg = load_config(p, ["scenario={family: cellfree, n_ues: 3}", "algorithms.0.name=" + FAKE_CF,
                          "algorithms.1.name=" + FAKE_CF])
    assert isinstance(cfg.scenario, CellfreeScenario) and cfg.scenario.n_ues == 3


@pytest.mark.parametrize("item,fragments", [
    ("engine.shardz=4", [f"engine.shardz: unknown key; allowed: {ENGINE_KEYS}"]),
    ("sed=4", ["sed: unknown key; allowed:", "did you mean 'seed'"]),
    ("scenario.bs_antenas=3", ["scenario.bs_antenas: unknown key; allowed:", "bs_antennas"]),
    ("algorithms.0.roundz=3",
     ["algorithms[0].roundz: unknown key; allowed: betas, init, label, name, restarts, rounds, step"]),
    ("algorithms.5.rounds=1", ["algorithms[5]: index out of range; algorithms has 1 entries"]),
    ("algorithms.rounds=1", ["algorithms is a list; use an index"]),
    ("clock.links.xx.latency_s=1", ["clock.links.xx: 'xx' is not allowed; allowed: " + ", ".join(LINK_CLASSES)]),
    ("clock.compute_s.gpu=1", ["'gpu' is not allowed; allowed: " + ", ".join(ROLES)]),
    ("batch.x=1", ["batch.x: batch is a value, not a mapping"]),
    ("batch", ["expected KEY.PATH=VALUE"]),
    ("batch=[1,", ["invalid YAML"]),
])
def test_override_errors(tmp_path, fake_alg, item, fragments):
    msg = error_of(tmp_path, base(), [item])
    assert msg.startswith(f"--set {item}: ") and "\n" not in msg
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"


def test_override_value_errors_name_the_override(tmp_path, fake_alg):
    msg = error_of(tmp_path, base(), ["batch=0", "algorithms.0.rounds=abc"])
    assert "(from --set batch=0)" in line_for(msg, "batch") and "must be an integer >= 1 (got 0)" in msg
    assert "(got 'abc') (from --set algorithms.0.rounds=abc)" in line_for(msg, "algorithms[0].rounds")


def test_override_over_scalar_in_file(tmp_path, fake_alg):
    msg = error_of(tmp_path, {**base(), "engine": "ray"}, ["engine.kind=local"])
    assert msg == "--set engine.kind=local: engine is 'ray' in the file, not a mapping"


def test_out_and_engine_overrides(tmp_path, fake_alg):
    p = write(tmp_path, {**base(), "engine": {"kind": "ray", "shards": 2}, "output": "runs/a"}, "oe.yaml")
    cfg = load_config(p, out="elsewhere/b", engine="local")
    assert cfg.output == "elsewhere/b" and cfg.engine.kind == "local" and cfg.engine.shards == 2
    cfg = load_config(write(tmp_path, base(), "noengine.yaml"), engine="local")
    assert cfg.engine.kind == "local" and cfg.output == "runs/noengine"
    msg = error_of(tmp_path, base(), engine="rayy")
    assert "'rayy' is not allowed; allowed: local, ray (from --engine rayy)" in line_for(msg, "engine.kind")


def test_learned_checkpoint_is_checked_at_validation(tmp_path, monkeypatch):
    """``checkpoint`` of a learned protocol (``algorithms[i]`` and ``train.options``): an unknown packaged name
    or a path with no file is one line naming the file, the key and the allowed values (AlgorithmSpec.check);
    a packaged name, 'untrained' and an existing file validate."""
    monkeypatch.chdir(tmp_path)
    allowed = ("allowed: shipped, shipped:dt, shipped:L6, shipped:L8, shipped:L7v1, shipped:L7dl, shipped:L6dl, "
               "shipped:L8dl, shipped-dt, untrained or a path")
    base = {"scenario": {"family": "multicell"}, "algorithms": [{"name": "mrc"}]}
    bad = base | {"algorithms": [{"name": "mrc"}, {"name": "gcn_wmmse", "checkpoint": "shipped:nope"},
                                 {"name": "gcn_wmmse", "label": "b", "checkpoint": "gone.pt"}],
                  "train": {"algorithm": "gcn_wmmse", "options": {"checkpoint": "shipped-xx"}}}
    with pytest.raises(ConfigError) as err:
        config_from_dict(bad, "x.yaml", reads=("algorithms", "train"))
    assert err.value.lines == [
        f"x.yaml: algorithms[1].checkpoint: 'shipped:nope' is not allowed; {allowed}",
        f"x.yaml: algorithms[2].checkpoint: no such checkpoint file 'gone.pt': {tmp_path / 'gone.pt'} (a relative "
        f"path is read from the current directory); {allowed}",
        f"x.yaml: train.options.checkpoint: 'shipped-xx' is not allowed; {allowed}"]
    # a file is checked only in the sections the command reads (a training YAML's `algorithms:` may name the
    # checkpoint its training writes); a name that is no packaged model always
    for reads in ((), ("train",)):
        with pytest.raises(ConfigError) as err:
            config_from_dict(bad, "x.yaml", reads=reads)
        assert [line.split(": ")[1] for line in err.value.lines] == ["algorithms[1].checkpoint",
                                                                    "train.options.checkpoint"]
    with pytest.raises(ValueError, match="reads"):
        config_from_dict(base, "x.yaml", reads=("sweep",))
    (tmp_path / "gone.pt").write_bytes(b"")
    ok = base | {"algorithms": [{"name": "gcn_wmmse", "checkpoint": c, "label": str(i)}
                                for i, c in enumerate(["shipped", "shipped:dt", "shipped-dt", "untrained", "gone.pt"])],
                 "train": {"algorithm": "gcn_wmmse", "options": {"checkpoint": "gone.pt"}}}
    cfg = config_from_dict(ok, "x.yaml", reads=("algorithms", "train"))
    assert [a.options.checkpoint for a in cfg.algorithms][-1] == "gone.pt"


def test_train_vary_with_train_samples_is_one_config_line():
    cfg = {"scenario": {"family": "multicell"}, "algorithms": [{"name": "mrc"}],
           "train": {"algorithm": "gcn_wmmse", "train_samples": 10, "vary": {"ues_per_bs": [1, 2]}}}
    with pytest.raises(ConfigError) as err:
        config_from_dict(cfg, "t.yaml")
    assert err.value.lines == ["t.yaml: train.vary: cannot be combined with train.train_samples (a fixed pool has "
                               "one configuration); allowed: one of them"]
    with pytest.raises(ValidationError, match="cannot be combined"):
        TrainOptions(algorithm="gcn_wmmse", train_samples=10, vary={"ues_per_bs": (1, 2)})
