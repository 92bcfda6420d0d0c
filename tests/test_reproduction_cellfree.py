"""ICGNN paper Tab. III-V and the main job's configuration, slow: ``python -m pytest -q -m slow``.

100 topologies per configuration on a held-out seed (5150 + row index: never used by training, which
draws from seeds 2024, 4048 and 4057, nor by validation: 8800+), 100 channel draws each, through the full pipeline on
the local engine:
* Tab. III K = 5: WMMSE-ADMM, Equal, LSF within +-10 % of the paper's 6.41, 4.21, 5.73 bit/s/Hz;
* every row: WMMSE-ADMM >= LSF >= Equal (means);
* every row of Tab. III (L = 7, N = 2, K = 3..7), Tab. IV (N = 2, K = 3, L = 6..10), Tab. V (L = 7, K = 3,
  N = 1..4) and scenarios/cellfree.yaml (L = 16, N = 2, K = 8): the shipped ICGNN (trained across
  configurations, agents/models/icgnn_general.pt) >= 95 % of WMMSE-ADMM without adaptation (issue 9; the
  paper's per-configuration models: 95.5-100.2 % with four adaptation steps).
"""

from __future__ import annotations

import json

import pytest

from dsim.config import config_from_dict
from dsim.run import run

pytestmark = pytest.mark.slow

PAPER_K5 = {"wmmse_admm": 6.41, "equal": 4.21, "lsf": 5.73}
ROWS = ([("III", 7, 2, k) for k in range(3, 8)] + [("IV", n, 2, 3) for n in range(6, 11)]
        + [("V", 7, n, 3) for n in range(1, 5)] + [("cellfree.yaml", 16, 2, 8)])


def means(row: int, n_aps: int, n_ant: int, n_ues: int, out) -> dict[str, float]:
    cfg = config_from_dict({
        "seed": 5150 + row, "precision": "double", "batch": 100,
        "scenario": {"family": "cellfree", "n_aps": n_aps, "ap_antennas": n_ant, "n_ues": n_ues,
                     "realizations": 100},
        "algorithms": [{"name": "wmmse_admm", "rounds": 100}, {"name": "equal"}, {"name": "lsf"},
                       {"name": "icgnn"}],
        "engine": {"kind": "local"}, "wire": {"dtype": "float64"}, "output": str(out)})
    run(cfg, progress=False, echo=lambda *_: None)
    summary = json.loads((out / "summary.json").read_text())["algorithms"]
    return {k: v["final_wsr"]["mean"] for k, v in summary.items()}


@pytest.mark.parametrize("row", range(len(ROWS)), ids=[f"{t}-L{a}N{n}K{k}" for t, a, n, k in ROWS])
def test_icgnn_rows_without_adaptation(row, tmp_path):
    table, n_aps, n_ant, n_ues = ROWS[row]
    m = means(row, n_aps, n_ant, n_ues, tmp_path)
    assert m["wmmse_admm"] >= m["lsf"] >= m["equal"], m
    assert m["icgnn"] >= 0.95 * m["wmmse_admm"], (ROWS[row], m)
    if (table, n_ues) == ("III", 5):
        for k, paper in PAPER_K5.items():
            assert abs(m[k] / paper - 1) <= 0.10, (k, m[k], paper)
