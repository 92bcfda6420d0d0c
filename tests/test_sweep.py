"""``dsim sweep``: grid points, sweep.csv, plots, failing points, resuming."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

import dsim.run as run_mod
from dsim.cli import main
from dsim.config import ConfigError
from dsim.sweep import grid_points, parse_grid


def _cfg(tmp_path, **over):
    data = {"seed": 0, "batch": 2, "scenario": {"family": "multicell", "layout": "triangle"},
            "algorithms": [{"name": "wmmse", "rounds": 2}, {"name": "zf"}], "engine": {"kind": "local"},
            "output": str(tmp_path / "sw")} | over
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_parse_grid_and_cartesian_points():
    g = parse_grid(["faults.message_loss=0,0.25", "wire.dtype=float32,q8", "scenario.range_m=[1, 2],null"])
    assert g == {"faults.message_loss": [0, 0.25], "wire.dtype": ["float32", "q8"],
                 "scenario.range_m": [[1, 2], None]}
    pts = grid_points({"a": g})
    assert len(pts) == 8 and len({p.name for p in pts}) == 8
    assert pts[0].overrides() == ["faults.message_loss=0", 'wire.dtype="float32"', "scenario.range_m=[1, 2]"]
    for bad in ["faults.message_loss", "=1,2", "x=1,,2"]:
        with pytest.raises(ConfigError):
            parse_grid([bad])


def test_sweep_rows_failures_and_resume(tmp_path, monkeypatch, capsys):
    cfg = _cfg(tmp_path)
    real_alg, real_scn = run_mod.run_algorithm, run_mod.scenario_from_config
    calls = []

    def alg(a, scn, *args, **kw):
        calls.append(a.label)
        if a.label == "wmmse" and scn.net.info.get("_loss") == 0.5:
            raise ValueError("boom")
        return real_alg(a, scn, *args, **kw)

    def scenario(cfg):
        if cfg.faults.message_loss == 0.25:
            raise OSError("disk gone")
        s = real_scn(cfg)
        s.net.info["_loss"] = cfg.faults.message_loss
        return s

    monkeypatch.setattr(run_mod, "run_algorithm", alg)
    monkeypatch.setattr(run_mod, "scenario_from_config", scenario)
    argv = ["sweep", str(cfg), "--grid", "faults.message_loss=0,0.25,0.5", "--no-progress"]
    assert main(argv) == 1
    rows = list(csv.DictReader(open(tmp_path / "sw" / "sweep.csv")))
    by = {(r["faults.message_loss"], r["algorithm"]): r for r in rows}
    assert by[("0", "wmmse")]["status"] == "ok" and by[("0", "zf")]["status"] == "ok"
    assert by[("0.5", "wmmse")]["status"] == "failed" and "boom" in by[("0.5", "wmmse")]["error"]
    assert by[("0.5", "zf")]["status"] == "ok"
    assert by[("0.25", "")]["status"] == "error" and "disk gone" in by[("0.25", "")]["error"]
    assert (tmp_path / "sw" / "grid" / "faults.message_loss=0.25" / "error.txt").is_file()
    # the numbers are the point's own run
    s = json.loads((tmp_path / "sw" / "grid" / "faults.message_loss=0" / "summary.json").read_text())
    assert float(by[("0", "wmmse")]["wsr_mean"]) == s["algorithms"]["wmmse"]["final_wsr"]["mean"]
    assert float(by[("0", "wmmse")]["bytes_per_round"]) == s["algorithms"]["wmmse"]["bytes_per_round"]
    assert (tmp_path / "sw" / "plots" / "grid__wsr_vs_faults.message_loss.png").is_file()
    # re-run: finished points are skipped, the point that could not run is retried
    calls.clear()
    monkeypatch.setattr(run_mod, "scenario_from_config", real_scn)
    assert main(argv) == 1
    assert calls == ["wmmse", "zf"]
    rows = list(csv.DictReader(open(tmp_path / "sw" / "sweep.csv")))
    assert {r["status"] for r in rows if r["faults.message_loss"] == "0.25"} == {"ok"}


def test_sweep_bad_grid_key_is_one_line_before_running(tmp_path, capsys):
    cfg = _cfg(tmp_path)
    rc = main(["sweep", str(cfg), "--grid", "faults.mesage_loss=0,0.1", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "faults.mesage_loss" in err and "message_loss" in err and "Traceback" not in err
    rc = main(["sweep", str(cfg), "--grid", "faults.message_loss=0,1.5", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "faults.message_loss" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "sw" / "grid").exists()
    rc = main(["sweep", str(cfg), "--no-progress"])
    assert rc == 2 and "nothing to sweep" in capsys.readouterr().err


def test_sweep_section_of_the_config(tmp_path):
    cfg = _cfg(tmp_path, algorithms=[{"name": "zf"}],
               sweep={"loss": {"faults.message_loss": [0, 0.5]}, "power": {"scenario.bs_power_dbm": [20, 30]}})
    assert main(["sweep", str(cfg), "--no-progress"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "sw" / "sweep.csv")))
    assert [(r["study"], r["faults.message_loss"], r["scenario.bs_power_dbm"]) for r in rows] == [
        ("loss", "0", ""), ("loss", "0.5", ""), ("power", "", "20"), ("power", "", "30")]
    # ZF sends no messages: loss changes nothing; more power, more rate
    assert rows[0]["wsr_mean"] == rows[1]["wsr_mean"]
    assert float(rows[3]["wsr_mean"]) > float(rows[2]["wsr_mean"])
    assert (tmp_path / "sw" / "plots" / "power__wsr_vs_scenario.bs_power_dbm.png").is_file()


def test_interrupted_sweep_keeps_finished_points_and_resumes(tmp_path, monkeypatch, capsys):
    cfg = _cfg(tmp_path, algorithms=[{"name": "zf"}])
    real = run_mod.run_algorithm
    seen = []

    def alg(a, scn, *args, **kw):
        seen.append(scn.net.info.get("seed"))
        if len(seen) == 2:
            raise KeyboardInterrupt
        return real(a, scn, *args, **kw)

    monkeypatch.setattr(run_mod, "run_algorithm", alg)
    argv = ["sweep", str(cfg), "--grid", "seed=1,2,3", "--no-progress"]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("dsim: interrupted; finished sweep points are kept")
    rows = list(csv.DictReader(open(tmp_path / "sw" / "sweep.csv")))
    assert [(r["seed"], r["status"]) for r in rows if r["status"] == "ok"] == [("1", "ok")]
    seen.clear()
    monkeypatch.setattr(run_mod, "run_algorithm", real)
    assert main(argv) == 0
    rows = list(csv.DictReader(open(tmp_path / "sw" / "sweep.csv")))
    assert [(r["seed"], r["status"]) for r in rows] == [("1", "ok"), ("2", "ok"), ("3", "ok")]
