"""The shipped precoding GNNs against their papers' tables on held-out samples (slow:
``python -m pytest -q -m slow tests/test_model_gnn_shipped.py``).

Test seeds are small integers; training used seed 2024 * 1_000_003 + t (fixed training sets 2024 * 1_000_003 - 2,
validation 2024 * 1_000_003 - 1), so no test sample was seen in training or validation.  WMMSE: 100 iterations
from MRT (the papers' baseline), sum-power constraint.  Tolerances: the issue's (T II +-1 point, ICGNN T I +-2).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
MODELS = Path(__file__).resolve().parents[1] / "agents" / "models"


_EXAMPLE = Path(__file__).parents[1] / "examples" / "model_gnn_tables.py"
_spec = importlib.util.spec_from_file_location("model_gnn_tables", _EXAMPLE)
tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tables)  # type: ignore[union-attr]
mean_rates = tables.sum_rates  # mean sum rate per algorithm, power constraint asserted (one implementation)


@pytest.mark.parametrize("N,K,paper", [(8, 4, 97.74), (32, 16, 99.03), (64, 16, 99.65), (64, 32, 99.41)])
def test_model_gnn_table2_10db(N, K, paper):
    """T II at 10 dB within the issue's +-1 point on held-out seed 1 (200 samples), and above ZF.  Measured:
    (8, 4) 97.69 % (ZF 94.93 %), (32, 16) 98.90 % (ZF 96.23 %), (64, 16) 99.77 % (ZF 99.46 %), (64, 32) 99.61 %
    (ZF 96.59 %)."""
    scn = {"family": "multicell", "layout": "iid", "n_bs": 1, "ues_per_bs": K, "bs_antennas": N, "ue_antennas": 1,
           "snr_db": 10.0}
    r = mean_rates(scn, {"wmmse": ("wmmse", {"init": "mrc", "rounds": 100}),
                         "gnn": ("model_gnn", {"checkpoint": str(MODELS / f"model_gnn_N{N}K{K}.pt")}),
                         "zf": ("zf", {})}, 200, seed=1)
    ratio = 100 * r["gnn"] / r["wmmse"]
    assert abs(ratio - paper) <= 1.0, ratio
    assert r["gnn"] > r["zf"]


@pytest.mark.parametrize("N,K", [(8, 4), (32, 16)])
def test_model_gnn_table3_100_samples(N, K, tmp_path):
    """T III: trained on 100 fixed samples (examples/model_gnn_tables.py table3: (8, 4) the paper's sums, 600 steps;
    (32, 16) aggr mean, 1400 steps; checkpoint = best validation on 200 fresh validation-seed samples), the model
    reaches >= 95 % of WMMSE on held-out seed 1 (200 samples), the paper's claim.  Measured: (8, 4) 95.57 %
    (best validation at step 400, 24 s), (32, 16) 98.90 % (best validation at step 1400, ~12 min on a shared core)."""
    row = tables.table3([(N, K)], 200, 1, 100, tmp_path)[0]
    assert row["model_gnn"] >= 95.0, row


def test_model_gnn_fig6_k_generalisation():
    """Fig. 6 (N = 32, SNR 10 dB): the models trained on K drawn per minibatch (shipped:N32Kexp, the paper's
    K ~ Exp(mean 4); shipped:N32Kvar, K ~ U{2..12}) generalise in K where the model trained at K = 16 does not.
    Held-out seeds 1 + K (examples/model_gnn_tables.py fig6), 200 samples.  Measured: K = 4: N32Kexp 99.65 %,
    N32Kvar 99.49 %, N32K16 22.02 %; K = 24: N32Kexp 87.00 %, N32Kvar 90.98 %, N32K16 76.25 %, ZF 78.55 %."""
    rows = {r["K"]: r for r in tables.fig6([4, 24], 200, 1, 100)}
    for tag, at24 in (("N32Kvar", 90.0), ("N32Kexp", 86.0)):
        m = f"model_gnn_{tag}"
        assert rows[4][m] >= 99.0 and rows[4][m] > rows[4]["model_gnn_N32K16"] + 10, rows[4]
        assert rows[24][m] >= at24 and rows[24][m] > rows[24]["zf"], rows[24]


_ICG = Path(__file__).parents[1] / "examples" / "icgnn_cellular_tables.py"
_icg_spec = importlib.util.spec_from_file_location("icgnn_cellular_tables", _ICG)
icg_tables = importlib.util.module_from_spec(_icg_spec)
_icg_spec.loader.exec_module(icg_tables)  # type: ignore[union-attr]


@pytest.mark.parametrize("K,paper", [(5, 101.4), (7, 101.7)])
def test_icgnn_cellular_table1(K, paper):
    """T I at K = 5 (the training configuration) and K = 7 on the calibrated cell of
    examples/icgnn_cellular_tables.py (users uniform in distance, 7.5 dB noise figure): ICGNN within the issue's
    +-2 points of the paper's % of WMMSE (measured on this seed and sample count: 100.7 % at K = 5, 101.6 % at
    K = 7; L-ICGNN 100.6 %, 101.0 %); L-ICGNN (T = 6 CG steps) within 1 % of ICGNN (the issue's target).
    Held-out seed 3 (+ 100 K + 2), 200 samples.  K = 3 is not asserted: the shipped model reaches ~83 % there
    (paper 95.6 %), see the README."""
    r = mean_rates(icg_tables.cell(K, 2), {"wmmse": ("wmmse", {"init": "mrc", "rounds": 100}),
                                           "icgnn": ("icgnn_cellular", {"checkpoint": "shipped"}),
                                           "licgnn": ("licgnn", {"checkpoint": "shipped", "cg_steps": 6})},
                   200, seed=3 + 100 * K + 2)
    assert abs(100 * r["icgnn"] / r["wmmse"] - paper) <= 2.0, r
    assert abs(r["licgnn"] / r["icgnn"] - 1) <= 0.01, r


def _table5_rates(M, N, K):
    ck = MODELS / f"model_gnn_mc_M{M}N{N}K{K}.pt"
    if not ck.exists():
        pytest.skip(f"{ck.name} not shipped (recipe: scenarios/train_model_gnn_mc_M{M}N{N}K{K}.yaml)")
    r = mean_rates(tables.iid(N, K, M=M), {"wmmse": ("wmmse", {"init": "mrc", "rounds": 100}),
                                           "gnn": ("model_gnn_mc", {"checkpoint": str(ck)}),
                                           "zf": ("zf", {})}, 200, seed=1)
    r["coord_rzf"] = tables.coordinated_rzf(tables.iid(N, K, M=M), 200, seed=1)
    return r


@pytest.mark.parametrize("M,N,K", [(3, 8, 4), (2, 16, 8), (3, 16, 8)])
def test_model_gnn_mc_coordinates(M, N, K):
    """The shipped multi-cell Model-GNN beats per-cell ZF (no coordination) by far on held-out seed 1, and its
    ledger has the backhaul bytes of every layer."""
    r = _table5_rates(M, N, K)
    assert r["gnn"] > 1.5 * r["zf"], r
    assert len(r["gnn_bh"]) == 4 and all(v > 0 for v in r["gnn_bh"].values())


@pytest.mark.parametrize("M,N,K,margin", [(3, 8, 4, 1.15), (2, 16, 8, 1.02), (3, 16, 8, 1.15)])
def test_model_gnn_mc_beats_coordinated_rzf(M, N, K, margin):
    """The paper's P2 layer converges to coordinated RZF over all users (closed form, second implementation in
    examples/model_gnn_tables.py: 62 % of WMMSE at (3, 8, 4), where the previously shipped model stopped at 62.18 %);
    the shipped variant (aggr mean, taylor_split self, user_gate) schedules users and must clear it by ``margin``
    on held-out seed 1 (measured 76.98 vs 61.82 % of WMMSE at (3, 8, 4), 88.65 vs 84.41 % at (2, 16, 8),
    80.01 vs 63.64 % at (3, 16, 8))."""
    r = _table5_rates(M, N, K)
    assert r["gnn"] > margin * r["coord_rzf"], r


@pytest.mark.xfail(strict=True, reason="T V not reached: measured 76.98 % (3, 8, 4) and 88.65 % "
                   "(2, 16, 8) of WMMSE (examples/model_gnn_tables.py --t5, seed 1, 200 samples); see the issue's note")
@pytest.mark.parametrize("M,N,K", [(3, 8, 4), (2, 16, 8)])
def test_model_gnn_mc_table5(M, N, K):
    """T V (coordinated beamforming, 10 dB): within the issue's +-2 points of the paper on held-out seed 1."""
    r = _table5_rates(M, N, K)
    ratio = 100 * r["gnn"] / r["wmmse"]
    assert abs(ratio - tables.PAPER_T5[(M, N, K)][0]) <= 2.0, ratio
