"""ICGNN paper Tab. III, IV and V: cell-free power allocation generalization over K, L and N.

For every configuration this runs the full dsim pipeline (``dsim.run.run`` on the local engine: AP-local
L-MMSE precoding and statistics, then each protocol) with Equal, LSF, WMMSE-ADMM (100 outer iterations),
the shipped default ICGNN (``agents/models/icgnn_general.pt``, trained across configurations:
``scenarios/train_icgnn_general.yaml``) without adaptation and with ``adapt_steps: 4`` (four Adam steps,
lr 1e-4, of loss (28) on fresh samples of the target configuration), and prints / writes:

* Tab. III: L = 7, N = 2, K = 3..7;      * Tab. IV: N = 2, K = 3, L = 6..10;
* Tab. V:   L = 7, K = 3, N = 1..4,
each row with the paper's values next to ours (sum-SE in bit/s/Hz, ICGNN also as % of WMMSE-ADMM).
The paper trained a separate base model per table (K = 5; L = 8; N = 2); here the one shipped model
serves all three.

Outputs in ``--out``: ``cellfree_tables.md``, ``cellfree_tables.csv``, ``cellfree_tables.png`` and one
run directory per configuration.

    python examples/cellfree_tables.py [--topologies 100] [--draws 100] [--tables III IV V]
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

# paper values: (WMMSE-ADMM, Equal, LSF, ICGNN) in bit/s/Hz
PAPER = {
    "III": {3: (4.68, 3.57, 4.36, 4.47), 4: (5.68, 3.98, 5.17, 5.59), 5: (6.41, 4.21, 5.73, 6.31),
            6: (7.16, 4.44, 6.30, 6.98), 7: (7.84, 4.63, 6.80, 7.59)},
    "IV": {6: (4.11, 3.12, 3.83, 4.12), 7: (4.68, 3.57, 4.36, 4.66), 8: (5.24, 4.00, 4.89, 5.23),
           9: (5.66, 4.44, 5.23, 5.61), 10: (6.25, 4.77, 5.78, 6.17)},
    "V": {1: (3.59, 1.73, 3.17, 3.60), 2: (4.65, 3.55, 4.33, 4.64), 3: (5.47, 4.54, 5.10, 5.41),
          4: (6.14, 5.31, 5.72, 6.02)},
}
SWEEP = {"III": ("n_ues", "K", dict(n_aps=7, ap_antennas=2)),
         "IV": ("n_aps", "L", dict(ap_antennas=2, n_ues=3)),
         "V": ("ap_antennas", "N", dict(n_aps=7, n_ues=3))}
METHODS = ("wmmse_admm", "equal", "lsf", "icgnn", "icgnn_adapt4")


def run_config(table: str, value: int, a: argparse.Namespace) -> dict[str, float]:
    """Mean final sum-SE per method for one configuration (and the adaptation time)."""
    key, _, fixed = SWEEP[table]
    scenario = {"family": "cellfree", **fixed, key: value, "realizations": a.draws, "csi": a.csi}
    if a.csi == "mmse":
        scenario["pilots"] = scenario["n_ues"]
    out = Path(a.out) / f"tab{table}_{key}{value}"
    cfg = config_from_dict({
        "seed": a.seed, "precision": "double", "batch": a.topologies, "scenario": scenario,
        "algorithms": [{"name": "wmmse_admm", "rounds": a.outer}, {"name": "equal"}, {"name": "lsf"},
                       {"name": "icgnn", "label": "icgnn"},
                       {"name": "icgnn", "adapt_steps": 4, "label": "icgnn_adapt4"}],
        "engine": {"kind": "local"}, "wire": {"dtype": "float64"}, "output": str(out)},
        source=f"<cellfree_tables {table} {key}={value}>")
    run(cfg, progress=False, echo=lambda *_: None)
    summary = json.loads((out / "summary.json").read_text())["algorithms"]
    res = {m: summary[m]["final_wsr"]["mean"] for m in METHODS}
    res["adapt_s"] = float(summary["icgnn_adapt4"].get("protocol_adapt_s", float("nan")))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--topologies", type=int, default=100)
    ap.add_argument("--draws", type=int, default=100, help="channel draws per topology (statistics)")
    ap.add_argument("--outer", type=int, default=100, help="WMMSE-ADMM outer iterations")
    ap.add_argument("--csi", choices=["perfect", "mmse"], default="perfect")
    ap.add_argument("--tables", nargs="*", default=["III", "IV", "V"], choices=list(PAPER))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/cellfree_tables")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    md = [f"# ICGNN Tab. III-V, {a.topologies} topologies x {a.draws} draws, csi {a.csi}; sum-SE [bit/s/Hz], "
          "ours (paper)", ""]
    for table in a.tables:
        key, sym, fixed = SWEEP[table]
        md += [f"## Tab. {table}: {sym} varies, " + ", ".join(f"{k}={v}" for k, v in fixed.items()), "",
               f"| {sym} | WMMSE-ADMM | Equal | LSF | ICGNN (no adapt.) | ICGNN (4 steps) | adapt. s |",
               "|---|---|---|---|---|---|---|"]
        for value, paper in PAPER[table].items():
            r = run_config(table, value, a)
            w = r["wmmse_admm"]
            rows.append({"table": table, sym: value, **r, "paper_wmmse_admm": paper[0], "paper_equal": paper[1],
                         "paper_lsf": paper[2], "paper_icgnn": paper[3]})
            md.append(f"| {value} | {w:.2f} ({paper[0]:.2f}) | {r['equal']:.2f} ({paper[1]:.2f}) | "
                      f"{r['lsf']:.2f} ({paper[2]:.2f}) | {r['icgnn']:.2f} = {100 * r['icgnn'] / w:.1f} % | "
                      f"{r['icgnn_adapt4']:.2f} = {100 * r['icgnn_adapt4'] / w:.1f} % "
                      f"({paper[3]:.2f} = {100 * paper[3] / paper[0]:.1f} %) | {r['adapt_s']:.2f} |")
            print(md[-1], flush=True)
        md.append("")
    (Path(a.out) / "cellfree_tables.md").write_text("\n".join(md) + "\n")
    fields = sorted({k for r in rows for k in r}, key=lambda k: (k != "table", k))
    write_csv(Path(a.out) / "cellfree_tables.csv", fields, ([r.get(k, "") for k in fields] for r in rows))
    plot(rows, a, Path(a.out) / "cellfree_tables.png")
    print(f"wrote {a.out}/cellfree_tables.md, cellfree_tables.csv, cellfree_tables.png")


def plot(rows: list[dict], a: argparse.Namespace, path: Path) -> None:
    """One panel per table: ours (solid) and the paper's (dotted, hollow markers) per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tables = [t for t in a.tables if any(r["table"] == t for r in rows)]
    fig, axes = plt.subplots(1, len(tables), figsize=(4.6 * len(tables), 4.0), squeeze=False)
    style = {"wmmse_admm": ("C0", "WMMSE-ADMM", 0), "equal": ("C1", "Equal", 1), "lsf": ("C2", "LSF", 2),
             "icgnn": ("C3", "ICGNN", 3), "icgnn_adapt4": ("C4", "ICGNN + 4 steps", None)}
    for ax, table in zip(axes[0], tables):
        _, sym, fixed = SWEEP[table]
        rs = [r for r in rows if r["table"] == table]
        x = [r[sym] for r in rs]
        for m, (color, name, pi) in style.items():
            ax.plot(x, [r[m] for r in rs], "o-", color=color, label=name)
            if pi is not None:
                ax.plot(x, [PAPER[table][v][pi] for v in x], "o:", color=color, mfc="none", alpha=0.7)
        ax.set_xlabel(sym)
        ax.set_ylabel("sum-SE [bit/s/Hz]")
        ax.set_title(f"Tab. {table}: " + ", ".join(f"{k}={v}" for k, v in fixed.items()), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, title="solid: dsim, dotted: paper", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
