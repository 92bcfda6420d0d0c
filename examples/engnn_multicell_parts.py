"""ENGNN paper Ex2 and Ex3 on the multicell family: the parts of ``examples/engnn_study.py`` (and a CLI).

* :func:`ex2_table` -- Ex2 (power allocation over fixed ZF beams, Sec. IV-B / Fig. 12): the shipped ENGNN
  models trained on 2, 5 and 10 samples against the baseline ``zf_power`` (WMMSE power allocation over the
  same beams, 100 iterations), in bit/s/Hz and % of the baseline; also equal power (the baseline's round 0)
  and plain ZF (channel-inversion power, ``zf``).  Paper: ENGNN 77.30-77.52 vs PGNN 73.89-75.12 (2-5 samples).
* :func:`ex3_generalisation` -- Ex3 (cooperative beamforming, Sec. IV-C / Fig. 13-14): the shipped ENGNN
  models (all at M = 5 BSs: 'ex3' per-BS frame trained at K = 2 then 2..8, 'ex3_k2' per-BS frame trained at
  K = 2, 'ex3_plain' absolute coordinates trained at K = 2) tested at K = 2..8 (M = 5) and M = 5..8 (K = 2),
  against ``coop_wmmse`` (200 iterations, MRT start) and ``coop_gp`` (200 iterations), % of WMMSE.  Only
  'ex3_k2' and 'ex3_plain' generalise in K (trained at K = 2); all three generalise in M.

Held-out layouts: seeds >= 100 (training used seed 7's streams; scenarios/train_engnn_ex*.yaml).  Each part
returns {"rows": [...], "markdown": str, "figure": path or None}.

    OMP_NUM_THREADS=1 python examples/engnn_multicell_parts.py [--layouts 200] [--out runs/engnn_multicell]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from dsim import registry
from dsim.evaluate import evaluate_rounds
from dsim.scenarios.build import build_scenario, generate_channels

MODELS = Path(__file__).resolve().parents[1] / "agents" / "models"
PL = {"pathloss": "exponent", "pathloss_ref_db": 30.5, "pathloss_exponent": 3.67, "bs_power_dbm": 33.0,
      "noise_dbm": -99.0, "field_m": 2000.0, "bs_separation_m": 500.0}
#: SPECS §4 Ex2 and Ex3 scenarios (the training recipes')
EX2 = {"family": "multicell", "layout": "field", "n_bs": 5, "ues_per_bs": 2, "bs_antennas": 16, "ue_antennas": 1,
       "min_distance_m": 50.0, "disk_radius_m": 250.0, **PL}
EX3 = {"family": "multicell", "layout": "field", "serve": "all", "n_bs": 5, "n_ue": 2, "bs_antennas": 2,
       "ue_antennas": 1, "min_distance_m": 10.0, **PL}
PAPER_EX2 = "ENGNN 77.30-77.52 vs PGNN 73.89-75.12 bit/s/Hz with 2-5 training samples (Sec. IV-B)"
LN2 = math.log(2.0)


def mean_rates(scn: dict[str, Any], runs: dict[str, tuple[str, dict[str, Any], int]], layouts: int, seed: int,
               batch: int = 100, desc: str = "") -> dict[str, float]:
    """Mean sum rate [bit/s/Hz] over ``layouts`` held-out layouts (seeds seed, seed + 1, ... per chunk of
    ``batch``) of each run label -> (algorithm, options, round evaluated)."""
    sums = dict.fromkeys(runs, 0.0)
    n, chunks = 0, (layouts + batch - 1) // batch
    for c in tqdm(range(chunks), desc=desc, leave=False, disable=chunks < 2):
        b = min(batch, layouts - c * batch)
        fam, ch = generate_channels(scn, b, seed + c, "double")
        s = build_scenario(fam, ch, None, seed + c)
        for label, (name, opts, rnd) in runs.items():
            spec = registry.algorithm(name)
            proto = spec.build(spec.options(**opts), s.net)
            with torch.no_grad():
                wsr = evaluate_rounds(proto, s.net, s.air, [rnd])[rnd]
            sums[label] += float(wsr.sum()) / LN2
        n += b
    return {k: v / n for k, v in sums.items()}


def _figure(path: Path | None, draw) -> Path | None:
    if path is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = draw(plt)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def ex2_table(layouts: int = 200, seed: int = 100, samples: tuple[int, ...] = (2, 5, 10),
              figure: Path | None = None) -> dict[str, Any]:
    """Ex2: ENGNN trained on ``samples`` samples vs zf_power (module docstring)."""
    runs = {"zf_power": ("zf_power", {"rounds": 100}, 100), "equal power": ("zf_power", {"rounds": 1}, 0),
            "zf (inversion)": ("zf", {}, 1)}
    for n in samples:
        runs[f"engnn n={n}"] = ("engnn_ex2", {"checkpoint": str(MODELS / f"engnn_ex2_n{n}.pt")}, 1)
    res = mean_rates(EX2, runs, layouts, seed, desc="Ex2")
    base = res["zf_power"]
    rows = [{"method": k, "sum_rate": v, "pct_of_zf_power": 100 * v / base} for k, v in res.items()]
    md = [f"Ex2, {layouts} held-out layouts (seeds {seed}+), 5 BSs x 2 UEs, N = 16, bit/s/Hz. Paper: {PAPER_EX2}.",
          "", "| method | sum rate | % of zf_power |", "|---|---:|---:|"]
    md += [f"| {r['method']} | {r['sum_rate']:.2f} | {r['pct_of_zf_power']:.1f} |" for r in rows]

    def draw(plt):
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.bar([r["method"] for r in rows], [r["sum_rate"] for r in rows], color="tab:blue")
        ax.set_ylabel("sum rate [bit/s/Hz]")
        ax.set_ylim(min(r["sum_rate"] for r in rows) * 0.95, max(r["sum_rate"] for r in rows) * 1.01)
        ax.set_title("ENGNN Ex2: power over fixed ZF beams")
        ax.tick_params(axis="x", rotation=30)
        return fig

    return {"rows": rows, "markdown": "\n".join(md), "figure": _figure(figure, draw)}


def ex3_generalisation(layouts: int = 100, seed: int = 200, ues: tuple[int, ...] = (2, 4, 6, 8),
                       bss: tuple[int, ...] = (5, 6, 7, 8), figure: Path | None = None,
                       models: dict[str, str] | None = None) -> dict[str, Any]:
    """Ex3: the shipped ENGNN models (``models``: {label: checkpoint}, default the three of the module
    docstring) at K = ``ues`` (M = 5) and M = ``bss`` (K = 2) vs coop_wmmse and coop_gp."""
    models = models or {"engnn": "shipped", "engnn_k2": "shipped:ex3_k2", "engnn_plain": "shipped:ex3_plain"}
    runs = {label: ("engnn_ex3", {"checkpoint": ref}, 2) for label, ref in models.items()}
    runs |= {
        "coop_wmmse": ("coop_wmmse", {"rounds": 200, "init": "mrt"}, 200),
        "coop_gp": ("coop_gp", {"rounds": 200}, 200)}
    rows = []
    cases = [("K", k, EX3 | {"n_ue": k}) for k in ues] + [("M", m, EX3 | {"n_bs": m}) for m in bss]
    for i, (axis, val, scn) in enumerate(cases):
        res = mean_rates(scn, runs, layouts, seed + 1000 * i, desc=f"Ex3 {axis}={val}")
        rows.append({"vary": axis, "M": scn["n_bs"], "K": scn["n_ue"], **res,
                     **{f"{label}_pct_of_wmmse": 100 * res[label] / res["coop_wmmse"] for label in models},
                     "gp_pct_of_wmmse": 100 * res["coop_gp"] / res["coop_wmmse"]})
    md = [f"Ex3 generalisation, {layouts} held-out layouts per point (seeds {seed}+), N = 2, ENGNN trained at "
          f"M = 5 ({', '.join(f'{k} = {v}' for k, v in models.items())}); bit/s/Hz and % of WMMSE.", "",
          "| M | K | " + " | ".join(models) + " | WMMSE | GP | " + " | ".join(f"{k} %" for k in models) + " | GP % |",
          "|" + "---:|" * (2 * len(models) + 5)]
    md += [f"| {r['M']} | {r['K']} | " + " | ".join(f"{r[k]:.2f}" for k in models) +
           f" | {r['coop_wmmse']:.2f} | {r['coop_gp']:.2f} | " +
           " | ".join(f"{r[f'{k}_pct_of_wmmse']:.1f}" for k in models) + f" | {r['gp_pct_of_wmmse']:.1f} |"
           for r in rows]

    def draw(plt):
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
        for ax, axis, key in ((axes[0], "K", "K"), (axes[1], "M", "M")):
            sel = [r for r in rows if r["vary"] == axis]
            for label, st in [*((k, "o-") for k in models), ("coop_wmmse", "s--"), ("coop_gp", "^:")]:
                ax.plot([r[key] for r in sel], [r[label] for r in sel], st, label=label)
            ax.set_xlabel(f"{'UEs K (M = 5)' if axis == 'K' else 'BSs M (K = 2)'}")
            ax.set_ylabel("sum rate [bit/s/Hz]")
            ax.grid(alpha=0.3)
        axes[0].legend()
        fig.suptitle("ENGNN Ex3: cooperative beamforming, trained at M = 5")
        return fig

    return {"rows": rows, "markdown": "\n".join(md), "figure": _figure(figure, draw)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layouts", type=int, default=200)
    ap.add_argument("--out", default="runs/engnn_multicell")
    ap.add_argument("--part", choices=("ex2", "ex3", "both"), default="both")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    parts = {}
    if args.part in ("ex2", "both"):
        parts["ex2"] = ex2_table(args.layouts, figure=out / "ex2_table.png")
    if args.part in ("ex3", "both"):
        parts["ex3"] = ex3_generalisation(max(args.layouts // 2, 1), figure=out / "ex3_generalisation.png")
    md = "\n\n".join(p["markdown"] for p in parts.values())
    (out / "tables.md").write_text(md + "\n")
    (out / "tables.json").write_text(json.dumps({k: p["rows"] for k, p in parts.items()}, indent=1))
    print(md)


if __name__ == "__main__":
    main()
