"""Property-based fuzzing (hypothesis): random configs and corrupt channel files give one-line errors naming
the file and key, never a traceback; NaN / Inf never get through (issue 11)."""

from __future__ import annotations

import functools
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsim.config import ConfigError, RunConfig, config_from_dict, load_config, resolved_dict
from dsim.scenarios.build import ScenarioError, build_scenario, load_channels_file
from dsim.scenarios.channel_file import ChannelFileError

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
values = st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=3),
                                                    st.dictionaries(st.text(max_size=6), c, max_size=3)),
                      max_leaves=6)
TOP = ["seed", "precision", "batch", "scenario", "algorithms", "engine", "wire", "clock", "faults", "output",
       "train", "sweep"]
SCENARIO_KEYS = ["family", "layout", "n_bs", "ues_per_bs", "bs_antennas", "ue_antennas", "bs_power_dbm",
                 "noise_dbm", "range_m", "n_aps", "n_ues", "ap_power_dbm", "realizations", "file"]
FAULT_KEYS = ["message_loss", "missing_links", "stale_csi", "csi_error", "delay", "deadline_s",
              "phase_deadline_s", "seed"]


def _has_nan(x) -> bool:
    if isinstance(x, float):
        return math.isnan(x)
    if isinstance(x, dict):
        return any(_has_nan(v) for v in x.values())
    if isinstance(x, list):
        return any(_has_nan(v) for v in x)
    return False


@st.composite
def configs(draw):
    """Mostly-valid configs with a few keys replaced by random values (or random keys added)."""
    data = {"seed": 0, "batch": 2, "scenario": {"family": draw(st.sampled_from(["multicell", "cellfree"]))},
            "algorithms": [{"name": draw(st.sampled_from(["wmmse", "zf", "equal", "icgnn", "bogus"]))}],
            "faults": {}, "output": "out"}
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(["top", "scenario", "faults", "algorithm", "clock"]))
        if where == "top":
            data[draw(st.one_of(st.sampled_from(TOP), st.text(max_size=6)))] = draw(values)
        elif where == "scenario":
            data["scenario"][draw(st.sampled_from(SCENARIO_KEYS))] = draw(values)
        elif where == "faults":
            data["faults"][draw(st.sampled_from(FAULT_KEYS))] = draw(values)
        elif where == "algorithm":
            data["algorithms"][0][draw(st.sampled_from(["rounds", "init", "label", "restarts", "x"]))] = draw(values)
        else:
            data["clock"] = {"links": {draw(st.sampled_from(["ul", "fh", "zz"])): {
                draw(st.sampled_from(["latency_s", "bandwidth_bps", "shared"])): draw(values)}},
                "coherence_s": draw(values)}
    return data


def _check_error(exc: ConfigError, source: str) -> None:
    assert exc.lines, "empty error"
    for line in exc.lines:
        assert "\n" not in line and line.startswith(f"{source}: "), line
        assert "Traceback" not in line


@SETTINGS
@given(configs())
def test_random_configs_validate_or_give_one_line_errors(data):
    try:
        cfg = config_from_dict(data, "fuzz.yaml", base_dir=Path("/nonexistent"))
    except ConfigError as exc:
        _check_error(exc, "fuzz.yaml")
        return
    assert isinstance(cfg, RunConfig)
    assert not _has_nan(data), "a NaN got through validation"


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(["batch", "faults.message_loss", "scenario.noise_dbm", "seed",
                                           "algorithms.0.rounds", "faults.stale_csi.rho", "clock.coherence_s",
                                           "faults.deadline_s.ul", "x.y", "algorithms.3.name", "scenario"]),
                          st.sampled_from([".nan", ".inf", "-.inf", "1e400", "-1", "0", "[1, 2]", "{a: 1}", "'x'",
                                           "null", "true", "0.5", "1e6", "{", "]"])), min_size=1, max_size=3))
def test_random_overrides_give_one_line_errors(tmp_path_factory, sets):
    path = _base_yaml(tmp_path_factory)
    try:
        cfg = load_config(path, [f"{k}={v}" for k, v in sets])
    except ConfigError as exc:
        for line in exc.lines:
            assert "\n" not in line and "Traceback" not in line
            assert line.startswith(f"{path}: ") or line.startswith("--set "), line
        return
    assert not _has_nan(resolved_dict(cfg)), "a NaN got through validation"


@functools.cache
def _files(root: str) -> dict[str, Path]:
    from dsim.scenarios.build import generate_channels, save_channels_file

    out = {}
    for fam, scn in (("multicell", {"family": "multicell", "n_bs": 2, "ues_per_bs": 2, "bs_antennas": 4,
                                    "layout": "hex"}),
                     ("cellfree", {"family": "cellfree", "n_aps": 3, "ap_antennas": 2, "n_ues": 2,
                                   "realizations": 4})):
        out[fam] = save_channels_file(*generate_channels(scn, 2, 0, "double"), Path(root) / f"{fam}.npz")
    return out


def _base_yaml(factory) -> Path:
    root = factory.getbasetemp() / "fuzz_base"
    root.mkdir(exist_ok=True)
    p = root / "base.yaml"
    if not p.exists():
        p.write_text("seed: 0\nbatch: 2\nscenario: {family: multicell}\nalgorithms: [{name: zf}]\noutput: out\n")
    return p


def _mutate(data: dict[str, np.ndarray], draw) -> dict[str, np.ndarray]:
    data = dict(data)
    key = draw(st.sampled_from(sorted(data)))
    how = draw(st.sampled_from(["drop", "nan", "inf", "neg", "zero", "shape", "dtype", "string", "huge", "extra"]))
    a = data[key]
    if how == "drop":
        del data[key]
    elif how in ("nan", "inf", "neg", "zero", "huge") and a.dtype.kind in "fciu" and a.size:
        b = a.astype(np.complex128 if a.dtype.kind == "c" else np.float64).copy()
        idx = draw(st.integers(0, b.size - 1))
        b.flat[idx] = {"nan": np.nan, "inf": np.inf, "neg": -abs(b.flat[idx]) - 1, "zero": 0.0, "huge": 1e308}[how]
        data[key] = b if a.dtype.kind in "fc" or how in ("nan", "inf", "huge") else b.astype(a.dtype)
    elif how == "shape":
        data[key] = np.zeros(tuple(draw(st.lists(st.integers(0, 3), max_size=3))))
    elif how == "dtype":
        data[key] = a.astype(bool) if a.dtype.kind != "U" else np.array(3)
    elif how == "string":
        data[key] = np.array("x")
    else:
        data["unexpected"] = np.zeros(2)
    return data


@SETTINGS
@given(st.sampled_from(["multicell", "cellfree"]), st.data())
def test_corrupt_channel_files_are_rejected_or_finite(tmp_path_factory, family, data):
    root = tmp_path_factory.getbasetemp() / "fuzz_files"
    root.mkdir(exist_ok=True)
    src = _files(str(root))[family]
    bad = root / "bad.npz"
    kind = data.draw(st.sampled_from(["mutate", "mutate", "mutate", "truncate", "garbage"]))
    if kind == "mutate":
        arrays = _mutate(dict(np.load(src)), data.draw)
        with open(bad, "wb") as f:
            np.savez(f, **arrays)
    elif kind == "truncate":
        raw = src.read_bytes()
        bad.write_bytes(raw[: data.draw(st.integers(0, len(raw) - 1))])
    else:
        bad.write_bytes(data.draw(st.binary(max_size=64)))
    try:
        fam, ch = load_channels_file(bad, "double")
        scn = build_scenario(fam, ch, None, 0)
    except (ChannelFileError, ScenarioError) as exc:
        msg = str(exc)
        assert "\n" not in msg and str(bad) in msg or isinstance(exc, ScenarioError), msg
        return
    except (zipfile.BadZipFile, EOFError, OSError, TypeError, KeyError, IndexError, RuntimeError) as exc:
        pytest.fail(f"{type(exc).__name__} escaped: {exc}")
    for role, d in scn.net.local.items():
        for k, t in d.items():
            if hasattr(t, "is_floating_point") and (t.is_floating_point() or t.is_complex()):
                assert bool(np.isfinite(t.numpy()).all()), (role, k)
