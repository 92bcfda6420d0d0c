"""The shipped ENGNN and WCGCN Ex1 models against the issue's "Done when" (ENGNN paper Sec. IV-A) on held-out
seeds of their own (5000+: never used for training, validation or examples/engnn_study.py, which uses 1000+).
Slow: ``python -m pytest -m slow tests/test_engnn_paper.py``.  The numbers come from the example's functions
(one implementation).  Thresholds: with 100 training samples ENGNN above WCGCN trained on the same samples and
>= 95 % of WMMSE (100 iterations); trained at K = 20 and tested at K = 100, ENGNN >= WMMSE truncated to ENGNN's
rounds (the shipped 100-sample model has L = 2 layers: one round = one layer's Tx -> Rx and Rx -> Tx exchange, so
WMMSE after 2 rounds)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

_EXAMPLE = Path(__file__).parents[1] / "examples" / "engnn_study.py"
_spec = importlib.util.spec_from_file_location("engnn_study", _EXAMPLE)
study = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(study)  # type: ignore[union-attr]

SEED, LAYOUTS = 5000, 100


@pytest.fixture(scope="module")
def k20_100_samples() -> dict:
    entries = {"wmmse": ("wmmse", {"init": "mrc", "rounds": 100}, [100]),
               "engnn": ("engnn", study.model("engnn", 100), [study.model_rounds("engnn", 100)]),
               "wcgcn": ("wcgcn", study.model("wcgcn", 100), [study.model_rounds("wcgcn", 100)])}
    res = study.evaluate(study.EX1, entries, LAYOUTS, SEED, 50)
    return {"wmmse": res["wmmse"]["rate"][100], "engnn": res["engnn"]["rate"][study.model_rounds("engnn", 100)],
            "wcgcn": res["wcgcn"]["rate"][study.model_rounds("wcgcn", 100)]}


def test_ex1_100_samples_engnn_above_wcgcn(k20_100_samples: dict) -> None:
    r = k20_100_samples
    assert r["engnn"] > r["wcgcn"], r


def test_ex1_100_samples_shipped_level(k20_100_samples: dict) -> None:
    """The level of the shipped models (scenarios/train_{engnn,wcgcn}_ex1_100.yaml; ENGNN: L = 2, d_E = 32,
    feature_norm frame_conj, best validation at step 1400), measured on these seeds: ENGNN 88.53, WCGCN 78.38,
    WMMSE-100 93.05 bit/s/Hz (95.1 % / 84.2 %); tolerance 1 point of WMMSE.  (Before session 8 ENGNN, L = 1,
    d_E = 8, measured 81.24, 87.3 %.)"""
    r = k20_100_samples
    assert r["engnn"] >= 0.941 * r["wmmse"], r
    assert r["wcgcn"] >= 0.832 * r["wmmse"], r


def test_ex1_100_samples_engnn_95_percent_of_wmmse(k20_100_samples: dict) -> None:
    """Met on these seeds by a thin margin: 88.53 vs 0.95 x 93.05 = 88.39 (95.1 %); on seeds 1000-1001 88.59 vs
    93.06 (95.2 %), on seeds 2000-2001 85.69 vs 90.86 (94.3 %, below): the model sits at ~95 %, not clearly above."""
    r = k20_100_samples
    assert r["engnn"] >= 0.95 * r["wmmse"], r


@pytest.mark.xfail(strict=True, reason="issue 14: at K = 100 the 100-sample model (L = 2) reaches 166.0 vs 182.7 "
                   "bit/s/Hz for WMMSE after 2 rounds (50 held-out layouts, seeds 5000-5001; 165.7 vs 183.6 on 100 "
                   "layouts, seeds 1000-1003 in chunks of 25); it is above WMMSE after 1 round (160.2)")
def test_ex1_generalisation_k100_engnn_above_truncated_wmmse() -> None:
    row = study.ex1_generalisation([100], 50, SEED, 25, "float32", 100)[0]
    assert row["engnn"] >= row["wmmse_engnn"], row  # WMMSE truncated to ENGNN's rounds (its layers)
    assert 0 < row["engnn_pct"] and 0 < row["wcgcn_pct"]  # both reported (the example's table)
