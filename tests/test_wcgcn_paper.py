"""The shipped WCGCN models against the MPGNN paper's tables (% of WMMSE, 100 iterations, full CSI) on held-out
seeds of their own (900+: never used for training, validation or examples/wcgcn_tables.py).  Slow: run with
``python -m pytest -m slow tests/test_wcgcn_paper.py``.  Thresholds are the issue's: T I within 2 points of the
paper, T II (10, 50) >= 95.5 %, T V (2, 65) >= 95 %, T III (10, 50) at K = 1000 >= 96.9 %, T VI (2, 65) at
K = 1000 >= 95 %; Fig. 3 (K = 50, 10 dB): the 1-layer model >= WMMSE at 10 iterations, the 2-layer model >= WMMSE
at 30 (both WMMSE from full power, as the authors' code initialises it)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
#: why the beamforming tables fail (examples/wcgcn_tables.py seeds: T V 500 layouts 200+, T VI 10 layouts 300+)
BF_OPEN = ("issue 10 open: the beamforming model reaches ~92 % of WMMSE (T V 91.7 %, T VI 92.0-92.3 %); on the "
           "authors' code's channel (layout mpgnn_code) the same recipe, trained longer, reaches 95.2-95.3 % / "
           "95.7-95.9 %")

_EXAMPLE = Path(__file__).parents[1] / "examples" / "wcgcn_tables.py"
_spec = importlib.util.spec_from_file_location("wcgcn_tables", _EXAMPLE)
tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tables)  # type: ignore[union-attr]


@pytest.mark.parametrize("K,snr", [(10, 0), (30, 0), (50, 0), (10, 10), (30, 10), (50, 10)])
def test_table_1_gaussian(K: int, snr: int) -> None:
    scn = {"family": "interference", "layout": "gaussian", "n_pairs": K, "snr_db": float(snr)}
    r = tables.evaluate(scn, f"gauss_K{K}_{snr}dB", 500, 900, 100)
    assert abs(tables.pct(r, "wcgcn@3") - tables.PAPER["T I"][(K, snr)]) <= 2.0


def test_table_2_d2d_power_control() -> None:
    r = tables.evaluate(tables.D2D_PC | {"n_pairs": 50}, "d2d_pc", 500, 900, 50)
    assert tables.pct(r, "wcgcn@3") >= 95.5


@pytest.mark.xfail(strict=True, reason=BF_OPEN)
def test_table_5_d2d_beamforming() -> None:
    r = tables.evaluate(tables.D2D_BF | {"n_pairs": 50}, "d2d_bf", 500, 900, 50)
    assert tables.pct(r, "wcgcn@3") >= 95.0


def test_table_5_beamforming_authors_channel() -> None:
    """T V on the layout mpgnn_code (the channel of the authors' public beamforming code) with its own model
    (15 500 steps of batch 16, then 16 000 of batch 64 over five lr restarts).  Measured: 95.24 % on these seeds
    (seeds 200+ of the example: 95.29 %; unused seed sets 3100+ / 4100+ / 5100+: 95.18 / 95.22 / 95.25 %; 500 layouts
    each); the authors' public code, run to 246k samples, gives 94.81 % here."""
    r = tables.evaluate(tables.D2D_BF_CODE | {"n_pairs": 50}, "mpgnn_code_bf", 500, 900, 50)
    assert tables.pct(r, "wcgcn@3") >= 95.0


def test_table_6_beamforming_k1000_authors_channel() -> None:
    """T VI on the layout mpgnn_code at K = 1000 (same density as K = 50) with the K = 50 model, 10 layouts
    (seeds 900-909).  Measured: 95.71 % (seeds 300-309 of the example: 95.95 %)."""
    r = tables.evaluate(tables.D2D_BF_CODE | {"n_pairs": 1000}, "mpgnn_code_bf", 10, 900, 1)
    assert tables.pct(r, "wcgcn@3") >= 95.0


def test_table_3_power_control_k1000() -> None:
    r = tables.evaluate(tables.D2D_PC | {"n_pairs": 1000}, "d2d_pc", 3, 900, 1)
    assert tables.pct(r, "wcgcn@3") >= 96.9


@pytest.mark.xfail(strict=True, reason=BF_OPEN)
def test_table_6_beamforming_k1000() -> None:
    r = tables.evaluate(tables.D2D_BF | {"n_pairs": 1000}, "d2d_bf", 3, 900, 1)
    assert tables.pct(r, "wcgcn@3") >= 95.0


FIG3 = {"family": "interference", "layout": "gaussian", "n_pairs": 50, "snr_db": 10.0}


@pytest.mark.parametrize("layers,iterations", [(1, 10), (2, 30)])
def test_fig_3_layers_vs_wmmse_iterations(layers: int, iterations: int) -> None:
    """Fig. 3's claim: the WCGCN trained with ``layers`` layers is at least WMMSE stopped after ``iterations``
    iterations (sum rate; K = 50, 10 dB, WMMSE from full power), on held-out seeds 900+, 500 layouts.  Measured:
    1 layer 6.7902 vs 6.7558 (+0.51 %), 2 layers 7.8401 vs 7.8328 (+0.09 %): narrow margins.  On the example's
    seeds 400+ (200 layouts): 1 layer 6.5257 vs 6.5221 (+0.06 %), 2 layers 2.9 % above."""
    r = tables.evaluate(FIG3, f"gauss_K50_10dB_L{layers}", 500, 900, 100, wmmse_rounds=(iterations,))
    assert r[f"wcgcn@{layers}"] >= r[f"wmmse@{iterations}"]
