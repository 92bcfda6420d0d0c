"""Issue 14 Done-when items for ENGNN Ex2 / Ex3 with the shipped models, on held-out layouts (seeds >= 100;
training used seed 7's streams): Ex2 trained on <= 10 samples reaches >= 95 % of zf_power; Ex3 within 3 % of
cooperative WMMSE and faster per sample (the benchmark's side-by-side timing).  Slow: run with -m slow."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def load(rel: str, name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_ex2_few_samples_reach_95_percent_of_zf_power() -> None:
    parts = load("examples/engnn_multicell_parts.py", "engnn_multicell_parts")
    res = parts.ex2_table(layouts=200, seed=100)
    rows = {r["method"]: r for r in res["rows"]}
    for n in (2, 5, 10):
        assert rows[f"engnn n={n}"]["pct_of_zf_power"] >= 95.0, res["markdown"]


@pytest.fixture(scope="module")
def ex3_bench() -> dict[str, float]:
    bench = load("benchmarks/bench_engnn_coop.py", "bench_engnn_coop")
    return bench.compare(layouts=100, batch=100, repeats=1, wmmse_rounds=200, seed=100)


def test_ex3_faster_than_wmmse_per_sample(ex3_bench: dict[str, float]) -> None:
    assert ex3_bench["speedup"] > 1.0, ex3_bench


def test_ex3_within_3_percent_of_wmmse(ex3_bench: dict[str, float]) -> None:
    """The shipped per-BS-frame model (scenarios/train_engnn_ex3.yaml) reaches 98.46 % of WMMSE on these
    layouts (seeds 100+, 100 layouts): margin 1.46 points (shipped:ex3_k2 98.3 %; the absolute-coordinate
    shipped:ex3_plain, the stage both were fine-tuned from, 95.0 %)."""
    assert ex3_bench["pct"] >= 97.0, ex3_bench


@pytest.mark.parametrize("model,pct", [("shipped:ex3_k2", 97.0), ("shipped:ex3_plain", 94.5)])
def test_ex3_other_shipped_models_level(model: str, pct: float) -> None:
    """The K = 2 frame model (98.3 % on seeds 100+) and the absolute-coordinate model (95.0 %) stay at their
    level (margins 1.3 and 0.5 points)."""
    bench = load("benchmarks/bench_engnn_coop.py", "bench_engnn_coop")
    res = bench.compare(layouts=100, batch=100, repeats=1, wmmse_rounds=200, seed=100, model=model)
    assert res["pct"] >= pct, res
