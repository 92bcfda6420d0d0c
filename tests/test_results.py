"""dsim.results: every file of the run directory read back and checked against numbers computed here."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from matplotlib.image import imread

from dsim.results import AlgorithmResult, RunWriter, load_metrics, write_json

CONFIG = {
    "seed": 7,
    "precision": "double",
    "batch": 4,
    "scenario": {"family": "multicell", "layout": "triangle", "bs_distance_m": 200},
    "algorithms": [{"name": "wmmse", "init": "random", "rounds": 5, "label": "wmmse-ri"},
                   {"name": "zf", "rounds": 0, "label": "zf"}],
    "engine": {"kind": "local"},
    "wire": {"dtype": "float32"},
    "output": "runs/test",
}


def _wmmse_like() -> AlgorithmResult:
    """5 rounds, 4 realizations; per round 3 UL rows (one per BS) + 1 air row, non-integer per-realization
    counts; round 0 has signaling too (must be excluded from the per-round means)."""
    rng = np.random.default_rng(11)
    rounds, batch = 5, 4
    wsr = np.cumsum(rng.uniform(0.5, 3.0, size=(rounds + 1, batch)), axis=0) + 80.0
    ledger = [{"round": 0, "phase": "init", "link": "dl", "messages": 12, "reals": 96, "bytes": 500}]
    for t in range(1, rounds + 1):
        ledger.append({"round": t, "phase": "pilots", "link": "air", "messages": 24, "reals": 0, "bytes": 0})
        for k in range(3):
            ledger.append({"round": t, "phase": "feedback", "link": "ul", "messages": 4.0,
                           "reals": 80.0 + k, "bytes": 350.5 + 10 * k + t})
        ledger.append({"round": t, "phase": "exchange", "link": "bh", "messages": 6, "reals": 12, "bytes": 99})
    per_round_bytes = np.array([500.0] + [sum(350.5 + 10 * k + t for k in range(3)) + 99 for t in range(1, 6)])
    per_round_reals = np.array([96.0] + [sum(80.0 + k for k in range(3)) + 12 for _ in range(5)])
    return AlgorithmResult(
        label="wmmse-ri", name="wmmse", wsr=wsr,
        sim_time_s=np.concatenate([[0.0], np.cumsum(np.full(rounds, 0.0125))]),
        cum_reals=np.cumsum(per_round_reals), cum_bytes=np.cumsum(per_round_bytes), ledger=ledger,
        final=wsr[-1] + np.array([0.0, 0.25, 0.0, 1.0]), wall_time_s=1.5,
        per_user=rng.uniform(0.0, 15.0, size=(batch, 12)),
        extra={"restarts": 3, "final_mean_over_inits": np.float64(91.25), "bad": float("nan")})


def _zf_like() -> AlgorithmResult:
    """A centralized baseline: 0 rounds, no signaling, no simulated time."""
    wsr = np.array([[70.0, 72.5, 69.0, 75.5]])
    return AlgorithmResult(label="zf", name="zf", wsr=wsr, sim_time_s=np.zeros(1), cum_reals=np.zeros(1),
                           cum_bytes=np.zeros(1), ledger=[], final=wsr[0].copy(), wall_time_s=0.01)


def _read_csv(path: Path) -> tuple[str, list[list[str]]]:
    text = path.read_text()
    rows = list(csv.reader(text.splitlines()))
    return text.splitlines()[0], rows[1:]


@pytest.fixture
def run(tmp_path: Path) -> tuple[RunWriter, AlgorithmResult, AlgorithmResult]:
    writer = RunWriter(tmp_path / "run", CONFIG, unit="nat/Hz", seed=7, engine="local", family="multicell")
    return writer, _wmmse_like(), _zf_like()


def test_config_round_trips_and_plots_dir(run):
    writer, _, _ = run
    assert (writer.out_dir / "plots").is_dir()
    text = (writer.out_dir / "config.yaml").read_text()
    assert yaml.safe_load(text) == CONFIG
    assert [ln.split(":")[0] for ln in text.splitlines() if not ln.startswith(" ")
            and not ln.startswith("-")] == list(CONFIG)  # key order kept


def test_metrics_csv_exact(run):
    writer, a, b = run
    writer.add(a)
    writer.add(b)
    header, rows = _read_csv(writer.out_dir / "metrics.csv")
    assert header == "algorithm,round,wsr_mean,wsr_std,wsr_min,wsr_max,sim_time_s,cum_reals,cum_bytes"
    assert len(rows) == 6 + 1
    for res, chunk in ((a, rows[:6]), (b, rows[6:])):
        for t, row in enumerate(chunk):
            assert row[0] == res.label and int(row[1]) == t
            vals = [float(v) for v in row[2:]]
            expect = [np.mean(res.wsr[t]), np.std(res.wsr[t]), np.min(res.wsr[t]), np.max(res.wsr[t]),
                      res.sim_time_s[t], res.cum_reals[t], res.cum_bytes[t]]
            assert vals == [float(e) for e in expect]  # repr round-trip: bit-exact
    m = load_metrics(writer.out_dir)
    assert list(m) == ["wmmse-ri", "zf"]
    np.testing.assert_array_equal(m["wmmse-ri"]["round"], np.arange(6))
    assert m["wmmse-ri"]["round"].dtype == np.int64
    np.testing.assert_array_equal(m["wmmse-ri"]["wsr_std"], a.wsr.std(axis=1))
    np.testing.assert_array_equal(m["wmmse-ri"]["cum_bytes"], a.cum_bytes)
    np.testing.assert_array_equal(m["zf"]["wsr_mean"], [71.75])
    assert set(m["zf"]) == {"round", "wsr_mean", "wsr_std", "wsr_min", "wsr_max", "sim_time_s", "cum_reals",
                            "cum_bytes"}


def test_overhead_and_wsr_csv_exact(run):
    writer, a, b = run
    writer.add(a)
    writer.add(b)
    header, rows = _read_csv(writer.out_dir / "overhead.csv")
    assert header == "algorithm,round,phase,link,messages,reals,bytes"
    assert len(rows) == len(a.ledger)  # zf has no ledger rows
    for row, led in zip(rows, a.ledger):
        assert row[0] == "wmmse-ri"
        assert (int(row[1]), row[2], row[3]) == (led["round"], led["phase"], led["link"])
        assert [float(v) for v in row[4:]] == [float(led[k]) for k in ("messages", "reals", "bytes")]
    assert rows[0][4:] == ["12", "96", "500"]  # integer counts stay integers
    header, rows = _read_csv(writer.out_dir / "wsr.csv")
    assert header == "algorithm,realization,wsr"
    expect = [("wmmse-ri", i, float(w)) for i, w in enumerate(a.final)]
    expect += [("zf", i, float(w)) for i, w in enumerate(b.final)]
    assert [(r[0], int(r[1]), float(r[2])) for r in rows] == expect


def test_summary_json(run):
    writer, a, b = run
    writer.add(a)
    writer.add(b)
    text = (writer.out_dir / "summary.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    s = json.loads(text)
    assert (s["unit"], s["seed"], s["engine"], s["family"]) == ("nat/Hz", 7, "local", "multicell")
    assert set(s["versions"]) == {"python", "dsim", "torch", "numpy", "ray", "simpy", "msgpack"}
    assert s["versions"]["numpy"] == np.__version__
    assert list(s["algorithms"]) == ["wmmse-ri", "zf"]
    sa = s["algorithms"]["wmmse-ri"]
    assert sa["name"] == "wmmse" and sa["rounds"] == 5
    assert sa["final_wsr"] == {"mean": float(np.mean(a.final)), "std": float(np.std(a.final)),
                               "min": float(np.min(a.final)), "max": float(np.max(a.final)),
                               "median": float(np.median(a.final))}
    # per-round signaling from the ledger, summed independently: rounds 1..5, 'air' and round 0 excluded
    ul = [sum(r["bytes"] for r in a.ledger if r["round"] == t and r["link"] == "ul") for t in range(1, 6)]
    bh = [sum(r["bytes"] for r in a.ledger if r["round"] == t and r["link"] == "bh") for t in range(1, 6)]
    assert sa["bytes_per_round_by_link"] == pytest.approx({"ul": np.mean(ul), "bh": np.mean(bh)}, rel=1e-15)
    assert sa["bytes_per_round"] == pytest.approx(np.mean(np.array(ul) + np.array(bh)), rel=1e-15)
    assert sa["bytes_per_round"] == pytest.approx(np.diff(a.cum_bytes).mean(), rel=1e-15)
    assert sa["reals_per_round"] == pytest.approx(80 + 81 + 82 + 12, rel=1e-15)
    assert sa["reals_per_round_by_link"] == pytest.approx({"ul": 243.0, "bh": 12.0}, rel=1e-15)
    assert sa["air_symbols_per_round"] == 24.0
    assert sa["sim_time_s"] == pytest.approx(0.0625, rel=1e-15) and sa["wall_time_s"] == 1.5
    assert sa["restarts"] == 3 and sa["final_mean_over_inits"] == 91.25 and sa["bad"] is None
    sb = s["algorithms"]["zf"]
    assert sb["rounds"] == 0 and sb["reals_per_round"] == 0 and sb["bytes_per_round"] == 0
    assert sb["bytes_per_round_by_link"] == {} and sb["sim_time_s"] == 0.0
    assert sb["final_wsr"]["median"] == 71.25  # (70 + 72.5) / 2


def test_partial_writing_and_fail(run):
    writer, a, b = run
    writer.add(a)
    m = load_metrics(writer.out_dir)
    assert list(m) == ["wmmse-ri"]
    assert len(_read_csv(writer.out_dir / "wsr.csv")[1]) == 4
    assert len(_read_csv(writer.out_dir / "overhead.csv")[1]) == len(a.ledger)
    assert list(json.loads((writer.out_dir / "summary.json").read_text())["algorithms"]) == ["wmmse-ri"]
    writer.fail("wmmse-mrc", "RuntimeError: diverged\nat round 3")
    s = json.loads((writer.out_dir / "summary.json").read_text())
    assert s["algorithms"]["wmmse-mrc"] == {"error": "RuntimeError: diverged\nat round 3"}
    assert list(load_metrics(writer.out_dir)) == ["wmmse-ri"]  # tables still hold the finished one
    writer.add(b)
    s = json.loads((writer.out_dir / "summary.json").read_text())
    assert list(s["algorithms"]) == ["wmmse-ri", "wmmse-mrc", "zf"]
    table = writer.summary_table()
    lines = table.splitlines()
    assert "[nat/Hz]" in lines[0] and len(lines) == 2 + 3
    assert f"{np.mean(a.final):.3f} ± {np.std(a.final):.3f}" in lines[2]
    assert "FAILED: RuntimeError: diverged at round 3" in lines[3]
    assert max(len(ln) for ln in lines) <= 110
    with pytest.raises(ValueError, match="already recorded"):
        writer.add(_zf_like())
    with pytest.raises(ValueError, match="already recorded"):
        writer.fail("zf", "x")


def test_validation(tmp_path):
    writer = RunWriter(tmp_path / "v", {}, unit="bit/s/Hz", seed=0, engine="local", family="cellfree")
    bad = _zf_like()
    bad.final = np.zeros(3)
    with pytest.raises(ValueError, match=r"final must have shape \(4,\)"):
        writer.add(bad)
    bad = _wmmse_like()
    bad.ledger = [{"round": 6, "phase": "p", "link": "ul", "messages": 1, "reals": 1, "bytes": 1}]
    with pytest.raises(ValueError, match="allowed 0..5"):
        writer.add(bad)
    bad = _wmmse_like()
    bad.extra = {"rounds": 9}
    with pytest.raises(ValueError, match="clash"):
        writer.add(bad)
    with pytest.raises(ValueError, match="not allowed"):
        RunWriter(tmp_path / "u", {}, unit="bit/Hz", seed=0, engine="local", family="x")
    assert writer.plots() == []


def test_plots(run):
    writer, a, b = run
    writer.add(a)
    writer.add(b)
    paths = writer.plots()
    names = {"wsr_vs_round.png", "wsr_vs_bytes.png", "wsr_vs_time.png", "final_wsr.png", "per_user_cdf.png"}
    assert {p.name for p in paths} == names
    for p in paths:
        assert p.parent == writer.out_dir / "plots" and p.stat().st_size > 5000
        img = imread(p)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300 and img.shape[2] in (3, 4)
        assert not np.all(img == img[0, 0])
        assert math.isclose(float(img.max()), 1.0)  # white background present


def test_no_per_user_no_cdf(tmp_path):
    writer = RunWriter(tmp_path / "n", {}, unit="nat/Hz", seed=0, engine="local", family="multicell")
    writer.add(_zf_like())
    assert {p.name for p in writer.plots()} == {"wsr_vs_round.png", "wsr_vs_bytes.png", "wsr_vs_time.png",
                                               "final_wsr.png"}
    assert not (writer.out_dir / "plots" / "per_user_cdf.png").exists()


def test_write_json_atomic(tmp_path, monkeypatch):
    """write_json: the object as JSON (tuples as lists, numpy / torch values plain, NaN kept), no .tmp left
    behind; a write that fails half-way leaves the previous file whole."""
    import torch

    path = tmp_path / "rows.json"
    write_json(path, {"t5": [{"M": np.int64(3), "x": np.float64(94.5), "v": torch.tensor([1.0, 2.0]),
                              "nan": float("nan"), "size": (3, 8, 4)}]})
    got = json.loads(path.read_text())
    assert got["t5"][0]["M"] == 3 and got["t5"][0]["x"] == 94.5 and got["t5"][0]["v"] == [1.0, 2.0]
    assert math.isnan(got["t5"][0]["nan"]) and got["t5"][0]["size"] == [3, 8, 4]
    assert [p.name for p in tmp_path.iterdir()] == ["rows.json"]
    before = path.read_text()

    real_write_text = Path.write_text

    def half_then_fail(self, text, *args, **kwargs):  # the disk fills up half-way through the write
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", half_then_fail)
    with pytest.raises(OSError):
        write_json(path, {"t5": [{"M": 2, "x": 97.0}]})
    assert path.read_text() == before  # a direct (non-atomic) write would have left half a file here
