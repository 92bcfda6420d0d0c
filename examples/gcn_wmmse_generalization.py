"""Generalization of the shipped GCN-WMMSE model (trained on the Tab. II base scenario), in the spirit of
the paper's Fig. 4 (the "PT" curves: pivot-trained model, one parameter swept at a time).

For each swept parameter (BS power, UE noise power, BS distance, UEs per BS, BS antennas M with 2 UEs
per BS, UE antennas N with 3 UEs per BS) and each value: mean WSR (nat/Hz) over ``--batch``
realizations of
* GCN-WMMSE, shipped L = 7 model, unchanged (7 rounds);
* WMMSE RI, 100 rounds, mean over ``--inits`` random initialisations;
* WMMSE RI TR, the same runs truncated to L = 7 rounds (same signaling as GCN-WMMSE).
Writes ``<out>/gcn_wmmse_generalization.csv`` and one figure ``<out>/gcn_wmmse_generalization.png``.

    python examples/gcn_wmmse_generalization.py [--batch 50] [--inits 2] [--out runs/gcn_wmmse_generalization]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dsim.evaluate import evaluate_rounds  # noqa: E402
from dsim.registry import algorithm  # noqa: E402
from dsim.results import write_csv  # noqa: E402
from dsim.scenarios.build import build_scenario, generate_channels  # noqa: E402

# (title, multicell scenario option, values, other options held fixed, pivot = training value)
SWEEPS = [
    ("BS power P_BS [dBm]", "bs_power_dbm", [15, 20, 25, 30, 35, 40, 45], {}, 30),
    ("UE noise power [dBm]", "noise_dbm", [-120, -110, -100, -90, -80], {}, -100),
    ("BS distance d_BS [m]", "bs_distance_m", [50, 100, 200, 400, 800], {}, 200),
    ("UEs per BS (I = 3 x)", "ues_per_bs", [1, 2, 3, 4, 5, 6], {}, 4),
    ("BS antennas M (I = 6)", "bs_antennas", [4, 6, 8, 12, 16, 24], {"ues_per_bs": 2}, 12),
    ("UE antennas N (I = 9)", "ue_antennas", [1, 2, 3, 4], {"ues_per_bs": 3}, 2),
]
SEED = 777_000  # held out from training


def mean_wsr(name: str, opts: dict, ch, seed: int = 0) -> np.ndarray:
    """Mean WSR over the batch after every round (R+1,), local engine, float64 wire."""
    s = build_scenario("multicell", ch, None, seed)
    spec = algorithm(name)
    with torch.no_grad():
        wsr = evaluate_rounds(spec.build(spec.options(**opts), s.net), s.net, s.air)
    return np.array([float(wsr[r].mean()) for r in sorted(wsr)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--inits", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--checkpoint", default="shipped")
    ap.add_argument("--out", default="runs/gcn_wmmse_generalization")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for j, (_, key, values, fixed, _) in enumerate(SWEEPS):
        for v in values:
            _, ch = generate_channels({"family": "multicell"} | fixed | {key: v}, a.batch, SEED + 100 * j, "double")
            gcn = mean_wsr("gcn_wmmse", {"checkpoint": a.checkpoint}, ch)
            L = len(gcn) - 1
            ri = np.mean([mean_wsr("wmmse", {"init": "random", "rounds": a.rounds}, ch, seed=s)
                          for s in range(a.inits)], axis=0)
            rows.append({"parameter": key, "value": v, "gcn_wmmse": gcn[-1], "wmmse_ri": ri[-1],
                         "wmmse_ri_tr": ri[L]})
            print(f"{key}={v}: GCN-WMMSE {gcn[-1]:.2f}  WMMSE RI {ri[-1]:.2f}  RI TR({L}) {ri[L]:.2f}",
                  flush=True)
    columns = ("parameter", "value", "gcn_wmmse", "wmmse_ri", "wmmse_ri_tr")
    write_csv(out / "gcn_wmmse_generalization.csv", columns, ([r[c] for c in columns] for r in rows))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 2, figsize=(10, 11))
    for ax, (title, key, _, _, pivot) in zip(axes.flat, SWEEPS):
        sel = [r for r in rows if r["parameter"] == key]
        x = [r["value"] for r in sel]
        ax.plot(x, [r["wmmse_ri"] for r in sel], "s-", label=f"WMMSE RI ({a.rounds} rounds)")
        ax.plot(x, [r["wmmse_ri_tr"] for r in sel], "v--", label="WMMSE RI TR (7 rounds)")
        ax.plot(x, [r["gcn_wmmse"] for r in sel], "o-", label=f"GCN-WMMSE ({a.checkpoint}, 7 layers)")
        ax.axvline(pivot, color="0.6", ls=":", lw=1)
        ax.annotate("trained", (pivot, ax.get_ylim()[0]), fontsize=7, color="0.4")
        ax.set_xlabel(title)
        ax.set_ylabel("mean WSR [nat/Hz]")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"Generalization of the base-scenario model ({a.batch} realizations per point)")
    fig.tight_layout()
    fig.savefig(out / "gcn_wmmse_generalization.png", dpi=120)
    print(f"wrote {out}/gcn_wmmse_generalization.csv, gcn_wmmse_generalization.png")


if __name__ == "__main__":
    main()
