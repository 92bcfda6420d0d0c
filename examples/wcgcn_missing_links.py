"""MPGNN paper's claim: MAX aggregation tolerates missing edges.  WCGCN (the shipped D2D power-control model,
trained with MAX) with its aggregation swapped to sum and mean at inference, and WMMSE, under
``faults.missing_links`` (interfering CSI/signaling links absent for the whole run, the pair's own link
kept; WMMSE has full CSI but for the missing links), K = 50 D2D pairs, (d_min, d_max) = (10, 50) m, on held-out layouts.

Reports each method's sum rate in % of fault-free full-CSI WMMSE (100 iterations), per missing fraction:
``<out>/wcgcn_missing_links.csv`` and ``.png``.

    python examples/wcgcn_missing_links.py [--layouts 200] [--out runs/wcgcn_missing_links]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dsim.config import config_from_dict  # noqa: E402
from dsim.results import write_csv  # noqa: E402
from dsim.run import run  # noqa: E402

HELD_OUT_SEED = 600  # never used by training (seed 7's stream) or validation
SCENARIO = {"family": "interference", "layout": "d2d", "n_pairs": 50, "d_min_m": 10, "d_max_m": 50}
METHODS = {"wcgcn-max": {"name": "wcgcn"}, "wcgcn-sum": {"name": "wcgcn", "aggr": "sum"},
           "wcgcn-mean": {"name": "wcgcn", "aggr": "mean"}, "wmmse": {"name": "wmmse", "rounds": 100}}


def point(missing: float, a: argparse.Namespace) -> dict[str, float]:
    """Mean final sum rate [bit/s/Hz] of every method at one missing-link fraction."""
    out = Path(a.out) / f"missing_{missing:g}"
    cfg = config_from_dict({"seed": HELD_OUT_SEED, "precision": "double", "batch": a.layouts,
                            "scenario": SCENARIO,
                            "algorithms": [{**m, "label": k} for k, m in METHODS.items()],
                            "faults": {"missing_links": missing, "seed": 1},
                            "engine": {"kind": "local"}, "wire": {"dtype": "float64"}, "output": str(out)},
                           source="<wcgcn_missing_links>")
    run(cfg, progress=False, echo=lambda *_: None)
    summary = json.loads((out / "summary.json").read_text())["algorithms"]
    return {k: summary[k]["final_wsr"]["mean"] for k in METHODS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layouts", type=int, default=200)
    ap.add_argument("--fractions", type=float, nargs="*", default=[0.0, 0.1, 0.2, 0.3, 0.5])
    ap.add_argument("--out", default="runs/wcgcn_missing_links")
    a = ap.parse_args()
    torch.set_num_threads(1)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    res = {f: point(f, a) for f in tqdm(a.fractions, desc="missing fraction")}
    ref = res[0.0]["wmmse"] if 0.0 in res else point(0.0, a)["wmmse"]
    rows = [[f] + [round(100 * res[f][k] / ref, 2) for k in METHODS] for f in a.fractions]
    write_csv(Path(a.out) / "wcgcn_missing_links.csv", ["missing_links"] + [f"{k}_pct" for k in METHODS], rows)
    print(f"% of fault-free WMMSE ({ref:.2f} bit/s/Hz), {a.layouts} held-out layouts")
    print("missing  " + "  ".join(f"{k:>10}" for k in METHODS))
    for r in rows:
        print(f"{r[0]:7.2f}  " + "  ".join(f"{v:10.2f}" for v in r[1:]))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for j, k in enumerate(METHODS):
        ax.plot([r[0] for r in rows], [r[1 + j] for r in rows], "o-", label=k)
    ax.set_xlabel("missing-link fraction")
    ax.set_ylabel("sum rate, % of fault-free WMMSE")
    ax.set_title("K = 50 D2D, power control")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(Path(a.out) / "wcgcn_missing_links.png", dpi=120)
    print(f"wrote {Path(a.out) / 'wcgcn_missing_links.csv'} and .png")


if __name__ == "__main__":
    main()
