"""The shipped ENGNN and WCGCN Ex1 models against the issue's "Done when" (ENGNN paper Sec. IV-A) on held-out
seeds of their own (5000+: never used for training, validation or examples/engnn_study.py, which uses 1000+).
Slow: ``python -m pytest -m slow tests/test_engnn_paper.py``.  The numbers come from the example's functions
(one implementation).  Thresholds: with 100 training samples ENGNN above WCGCN trained on the same samples and
>= 95 % of WMMSE (100 iterations); trained at K = 20 and tested at K = 100, ENGNN >= WMMSE truncated to ENGNN's
rounds (the Ex1 models have L = 2 layers: one round = one layer's Tx -> Rx and Rx -> Tx exchange, so WMMSE after 2
rounds), with the model trained as the paper's Fig. 5 model is, on fresh samples (``engnn_ex1_fresh.pt``); the
100-sample model stays below there (strict xfail)."""

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
               "engnn_fresh": ("engnn", study.model("engnn", "fresh"), [study.model_rounds("engnn", "fresh")]),
               "wcgcn": ("wcgcn", study.model("wcgcn", 100), [study.model_rounds("wcgcn", 100)])}
    res = study.evaluate(study.EX1, entries, LAYOUTS, SEED, 50)
    return {"wmmse": res["wmmse"]["rate"][100], "engnn": res["engnn"]["rate"][study.model_rounds("engnn", 100)],
            "wcgcn": res["wcgcn"]["rate"][study.model_rounds("wcgcn", 100)],
            "engnn_fresh": res["engnn_fresh"]["rate"][study.model_rounds("engnn", "fresh")]}


def test_ex1_100_samples_engnn_above_wcgcn(k20_100_samples: dict) -> None:
    r = k20_100_samples
    assert r["engnn"] > r["wcgcn"], r


def test_ex1_100_samples_shipped_level(k20_100_samples: dict) -> None:
    """The level of the shipped models (scenarios/train_{engnn,wcgcn}_ex1_100.yaml; ENGNN: L = 2, d_E = 32,
    feature_norm frame_conj, augment subnetwork, best validation at step 2700), measured on these seeds: ENGNN 89.22,
    WCGCN 78.38, WMMSE-100 93.05 bit/s/Hz (95.9 % / 84.2 %); tolerance 1 point of WMMSE.  (Session 8's model,
    augment symmetry, now ``shipped:ex1_100_sym``: 88.53, 95.1 %; before session 8, L = 1, d_E = 8: 81.24, 87.3 %.)"""
    r = k20_100_samples
    assert r["engnn"] >= 0.949 * r["wmmse"], r
    assert r["wcgcn"] >= 0.832 * r["wmmse"], r


def test_ex1_100_samples_engnn_95_percent_of_wmmse(k20_100_samples: dict) -> None:
    """Met on these seeds: 89.22 vs 0.95 x 93.05 = 88.39 (95.9 %); on seeds 1000-1001 89.21 vs 93.06 (95.9 %), on
    seeds 2000-2001 86.57 vs 90.86 (95.3 %): met on all three held-out sets since the subnetwork augmentation
    (session 10; the symmetry-only model ex1_100_sym: 95.1 / 95.2 / 94.3 %)."""
    r = k20_100_samples
    assert r["engnn"] >= 0.95 * r["wmmse"], r


def test_ex1_fresh_model_level_k20(k20_100_samples: dict) -> None:
    """The fresh-sample model (scenarios/train_engnn_ex1_fresh.yaml, the default ``shipped``) at K = 20, measured on
    these seeds: 90.90 bit/s/Hz = 97.7 % of WMMSE-100 93.05 (seeds 1000-1001: 90.89, 97.7 %; 2000-2001: 88.04,
    96.9 %), above the 100-sample model (89.22); tolerance 1 point of WMMSE."""
    r = k20_100_samples
    assert r["engnn_fresh"] >= 0.967 * r["wmmse"], r
    assert r["engnn_fresh"] > r["engnn"], r


def test_ex1_generalisation_k100_engnn_above_truncated_wmmse() -> None:
    """Issue 14 / paper Fig. 5: trained at K = 20 (fresh samples), tested at K = 100 in the same field.  Measured on
    these 50 layouts (seeds 5000-5001, chunks of 25): ENGNN 189.48 vs WMMSE after 2 rounds 182.70 (WMMSE-1 160.22,
    WMMSE-3 192.76, WMMSE-100 213.73: ENGNN 88.7 %); seeds 1000-1001 (100 layouts, examples/engnn_study.py): 187.53
    vs 181.71 (88.3 %, WCGCN's 1000-sample model 50.9 %)."""
    row = study.ex1_generalisation([100], 50, SEED, 25, "float32", "fresh")[0]
    assert row["engnn"] >= row["wmmse_engnn"], row  # WMMSE truncated to ENGNN's rounds (its layers)
    assert 0 < row["engnn_pct"] and 0 < row["wcgcn_pct"]  # both reported (the example's table)


@pytest.mark.xfail(strict=True, reason="issue 14: at K = 100 the 100-sample model (L = 2) reaches 169.3 vs 182.7 "
                   "bit/s/Hz for WMMSE after 2 rounds (50 held-out layouts, seeds 5000-5001); it overfits its 100 "
                   "layouts (with the subnetwork augmentation; 166.0 with symmetry only): the same recipe on 1000 "
                   "samples reaches 180.9, on fresh samples 189.5 (the test above)")
def test_ex1_generalisation_k100_100_samples_above_truncated_wmmse() -> None:
    row = study.ex1_generalisation([100], 50, SEED, 25, "float32", 100)[0]
    assert row["engnn"] >= row["wmmse_engnn"], row
