"""ICGNN paper Tab. III reproduction (L = 7 APs, N = 2, K = 3..7), slow: ``python -m pytest -q -m slow``.

100 topologies per K (seed distinct from ICGNN training, which draws from the training config's seed),
100 channel draws each, through the full pipeline on the local engine:
* K = 5: WMMSE-ADMM, Equal, LSF within +-10 % of the paper's 6.41, 4.21, 5.73 bit/s/Hz;
* every K: WMMSE-ADMM >= LSF >= Equal (means);
* every K: ICGNN (shipped, with the paper's four adaptation steps) >= 95 % of WMMSE-ADMM; at the training
  configuration K = 5 also without adaptation.
"""

from __future__ import annotations

import json

import pytest

from dsim.config import config_from_dict
from dsim.run import run

pytestmark = pytest.mark.slow

PAPER_K5 = {"wmmse_admm": 6.41, "equal": 4.21, "lsf": 5.73}


def tab3_means(n_ues: int, out) -> dict[str, float]:
    cfg = config_from_dict({
        "seed": 4242 + n_ues, "precision": "double", "batch": 100,
        "scenario": {"family": "cellfree", "n_aps": 7, "ap_antennas": 2, "n_ues": n_ues, "realizations": 100},
        "algorithms": [{"name": "wmmse_admm", "rounds": 100}, {"name": "equal"}, {"name": "lsf"},
                       {"name": "icgnn"}, {"name": "icgnn", "adapt_steps": 4, "label": "icgnn4"}],
        "engine": {"kind": "local"}, "wire": {"dtype": "float64"}, "output": str(out)})
    run(cfg, progress=False, echo=lambda *_: None)
    summary = json.loads((out / "summary.json").read_text())["algorithms"]
    return {k: v["final_wsr"]["mean"] for k, v in summary.items()}


@pytest.mark.parametrize("n_ues", [3, 4, 5, 6, 7])
def test_table3(n_ues, tmp_path):
    m = tab3_means(n_ues, tmp_path / f"K{n_ues}")
    assert m["wmmse_admm"] >= m["lsf"] >= m["equal"], m
    assert m["icgnn4"] >= 0.95 * m["wmmse_admm"], m
    if n_ues == 5:
        for k, paper in PAPER_K5.items():
            assert abs(m[k] / paper - 1) <= 0.10, (k, m[k], paper)
        assert m["icgnn"] >= 0.95 * m["wmmse_admm"], m
