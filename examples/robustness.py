"""Robustness study: how WMMSE, GCN-WMMSE (multicell), WMMSE-ADMM, ICGNN (cell-free) and WMMSE, WCGCN
(interference, K = 50 D2D) degrade under the faults of a real network (DESIGN §12).

Runs the sweeps ``scenarios/robustness.yaml`` (missing links 0-50 %, message loss 0-50 %, stale CSI
rho 1 -> 0.9, deadline on the uplink with random extra latency) and ``scenarios/robustness_cellfree.yaml``
(message loss, deadline on the fronthaul) and ``scenarios/robustness_interference.yaml`` (missing links,
message loss, stale CSI, deadline on WCGCN's d2d links) -- finished points are reused, so a second call only
redraws --
then writes into ``<out>``:

* ``robustness_<fault>.png``: final WSR (mean ± std over realizations) vs the fault's parameter, one line
  per algorithm, one panel per family (nat/Hz multicell, bit/s/Hz cell-free);
* ``robustness_table.md``: final WSR at 10 % and 30 % loss / missing links, relative to fault-free;
* a check that WMMSE's WSR is non-increasing in the loss / missing-link fraction (within the std of the
  mean over realizations), printed.

    python examples/robustness.py [--out runs/robustness_study] [--no-cellfree] [--no-interference]
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from dsim.sweep import sweep_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STUDIES = {  # study -> (swept key, axis label)
    "missing_links": ("faults.missing_links", "missing-link fraction"),
    "message_loss": ("faults.message_loss", "message-loss probability"),
    "stale_csi": ("faults.stale_csi.rho", "CSI correlation rho (Gauss-Markov)"),
    "deadline": (None, "deadline [s] (exponential extra latency)"),
}
UNITS = {"multicell": "nat/Hz", "cellfree": "bit/s/Hz", "interference": "bit/s/Hz"}


def read_sweep(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def series(rows: list[dict[str, str]], study: str, key: str) -> dict[str, list[tuple[float, float, float]]]:
    """algorithm -> [(x, mean, std)] sorted by x, for the finished points of ``study``."""
    out: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for r in rows:
        if r["study"] == study and r["status"] == "ok":
            out[r["algorithm"]].append((float(r[key]), float(r["wsr_mean"]), float(r["wsr_std"])))
    return {a: sorted(v) for a, v in out.items()}


def deadline_key(rows: list[dict[str, str]]) -> str | None:
    return next((k for k in (rows[0] if rows else {}) if k.startswith("faults.deadline_s.")), None)


def plot_fault(study: str, label: str, data: dict[str, list[dict[str, str]]], out: Path) -> Path | None:
    panels = [(fam, rows) for fam, rows in data.items() if any(r["study"] == study for r in rows)]
    if not panels:
        return None
    fig = Figure(figsize=(6.0 * len(panels), 4.4), dpi=110)
    FigureCanvasAgg(fig)
    for i, (fam, rows) in enumerate(panels):
        key = STUDIES[study][0] or deadline_key(rows)
        ax = fig.add_subplot(1, len(panels), i + 1)
        for alg, pts in series(rows, study, key).items():
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                        capsize=3, label=alg)
        if study == "deadline":
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(f"final WSR [{UNITS[fam]}] (mean ± std)")
        ax.set_title(f"{fam}: {study.replace('_', ' ')}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    path = out / f"robustness_{study}.png"
    fig.savefig(path, format="png", bbox_inches="tight")
    return path


def table(data: dict[str, list[dict[str, str]]]) -> str:
    lines = ["| family | fault | algorithm | fault-free | 10 % | 30 % | 30 % / fault-free |",
             "|---|---|---|---|---|---|---|"]
    for fam, rows in data.items():
        for study in ("missing_links", "message_loss"):
            key = STUDIES[study][0]
            for alg, pts in series(rows, study, key).items():
                at = {round(p[0], 6): p for p in pts}
                if not {0.0, 0.1, 0.3} <= set(at):
                    continue
                f0, f1, f3 = at[0.0], at[0.1], at[0.3]
                rel = f3[1] / f0[1] if f0[1] else math.nan
                lines.append(f"| {fam} | {study} | {alg} | {f0[1]:.2f} ± {f0[2]:.2f} | {f1[1]:.2f} ± {f1[2]:.2f} | "
                             f"{f3[1]:.2f} ± {f3[2]:.2f} | {rel:.3f} |")
    return "\n".join(lines) + "\n\nUnits: " + ", ".join(f"{f} {u}" for f, u in UNITS.items()) + ".\n"


def monotone_check(rows: list[dict[str, str]], alg: str, batch: int) -> list[str]:
    """WSR non-increasing in the loss / missing fraction within the std of the mean (std / sqrt(B))."""
    notes = []
    for study in ("missing_links", "message_loss"):
        pts = series(rows, study, STUDIES[study][0]).get(alg, [])
        for (x0, m0, s0), (x1, m1, s1) in zip(pts, pts[1:]):
            tol = math.hypot(s0, s1) / math.sqrt(batch)
            ok = m1 <= m0 + tol
            notes.append(f"{alg} {study} {x0:g} -> {x1:g}: {m0:.2f} -> {m1:.2f} (tol {tol:.2f}) "
                         f"{'ok' if ok else 'INCREASES'}")
    return notes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/robustness_study")
    ap.add_argument("--no-cellfree", action="store_true", help="leave out the cell-free sweep")
    ap.add_argument("--no-interference", action="store_true", help="leave out the interference sweep")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    configs = {"multicell": ROOT / "scenarios" / "robustness.yaml"}
    if not args.no_cellfree:
        configs["cellfree"] = ROOT / "scenarios" / "robustness_cellfree.yaml"
    if not args.no_interference:
        configs["interference"] = ROOT / "scenarios" / "robustness_interference.yaml"
    data = {}
    for fam, cfg in configs.items():
        sweep_dir = out / fam
        sweep_main(str(cfg), [], out=str(sweep_dir))
        data[fam] = read_sweep(sweep_dir / "sweep.csv")
    for study, (_, label) in STUDIES.items():
        p = plot_fault(study, label, data, out)
        if p:
            print(f"wrote {p}")
    text = table(data)
    (out / "robustness_table.md").write_text(text)
    print(text)
    import yaml

    for fam in ("multicell", "interference"):
        if fam in data:
            batch = int(yaml.safe_load(open(configs[fam]))["batch"])
            for line in monotone_check(data[fam], "wmmse", batch):
                print(f"{fam}: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
