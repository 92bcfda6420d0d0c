"""GCN-WMMSE vs WMMSE on the base scenario: the paper's Tab. IV row (shipped L) and Tab. VIII.

On held-out Tab. II realizations (seed different from training and validation):
* GCN-WMMSE (shipped model) WSR after each of its L layers;
* WMMSE RI: random initialisations (CN(0,1), scaled to full power), mean over ``--inits`` inits per
  realization, 100 rounds; WMMSE RI TR = truncated to L rounds; WMMSE-best = best of the inits
  (the paper's WMMSE50 with 50 inits); WMMSE MRC for reference;
* rounds WMMSE RI needs to match GCN-WMMSE's mean WSR, and the compute time (local engine, one thread,
  whole batch, ms per realization) of GCN-WMMSE's L layers and of WMMSE RI's needed rounds.
Both send exactly the same messages per round, so cumulative bytes = rounds x bytes per round.

Writes ``<out>/gcn_wmmse_rounds.csv`` (WSR per round), ``<out>/gcn_wmmse_table.md`` and
``<out>/gcn_wmmse_rounds.png`` (WSR vs rounds and vs cumulative bytes).  Rates in nat/Hz.

    python examples/gcn_wmmse_rounds.py [--batch 200] [--inits 10] [--out runs/gcn_wmmse_rounds]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dsim.engine.local import LocalEngine  # noqa: E402
from dsim.evaluate import evaluate_rounds  # noqa: E402
from dsim.registry import algorithm  # noqa: E402
from dsim.results import write_csv  # noqa: E402
from dsim.scenarios.build import build_scenario, generate_channels  # noqa: E402

HELD_OUT_SEED = 20240917  # never used by training (seeds seed*1_000_003 + step) or validation


def setup(name: str, opts: dict, ch, seed: int = 0):
    """(protocol, net, air) of algorithm ``name`` with ``opts`` on the multicell channels ``ch``."""
    s = build_scenario("multicell", ch, None, seed)
    spec = algorithm(name)
    return spec.build(spec.options(**opts), s.net), s.net, s.air


def run(name: str, opts: dict, ch, seed: int = 0) -> np.ndarray:
    """WSR per round (R+1, B) on the local engine (float64 wire)."""
    with torch.no_grad():
        wsr = evaluate_rounds(*setup(name, opts, ch, seed))
    return torch.stack([wsr[r] for r in sorted(wsr)]).numpy()


def timed(name: str, opts: dict, ch, reps: int = 3) -> float:
    """Best-of-``reps`` wall time (s) of a run without per-round evaluation."""
    proto, net, air = setup(name, opts, ch)
    best = float("inf")
    for _ in range(reps):
        with torch.no_grad():
            best = min(best, LocalEngine("float64").run(proto, net, air).wall_s)
    return best


def bytes_per_round(ledger, batch: int) -> float:
    rows = [r for r in ledger if r.round == 1]
    return sum(r.bytes for r in rows) / batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=200, help="held-out realizations")
    ap.add_argument("--inits", type=int, default=10, help="WMMSE random initialisations per realization")
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--checkpoint", default="shipped")
    ap.add_argument("--wire", default="float32", help="wire policy for the bytes (numbers use float64)")
    ap.add_argument("--out", default="runs/gcn_wmmse_rounds")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    _, ch = generate_channels({"family": "multicell"}, a.batch, HELD_OUT_SEED, "double")  # Tab. II base
    gcn = run("gcn_wmmse", {"checkpoint": a.checkpoint}, ch)
    L = gcn.shape[0] - 1
    ri = np.stack([run("wmmse", {"init": "random", "rounds": a.rounds}, ch, seed=s) for s in range(a.inits)])
    mrc = run("wmmse", {"init": "mrc", "rounds": a.rounds}, ch)
    ri_mean = ri.mean(axis=(0, 2))                      # (R+1,) mean over inits and realizations
    best = ri[:, -1].max(axis=0).mean()                 # best of the inits per realization, at 100 rounds
    target = gcn[-1].mean()
    hit = np.nonzero(ri_mean >= target)[0]
    needed = int(hit[0]) if hit.size else None

    t_gcn = timed("gcn_wmmse", {"checkpoint": a.checkpoint}, ch)
    t_ri = timed("wmmse", {"init": "random", "rounds": needed}, ch) if needed else float("nan")
    bpr = bytes_per_round(LocalEngine(a.wire).run(*setup("wmmse", {"rounds": 1}, ch)).ledger, a.batch)

    # ---- table
    lines = [
        f"# GCN-WMMSE (L = {L}, checkpoint {a.checkpoint}) vs WMMSE, base scenario (Tab. II), "
        f"{a.batch} held-out realizations, WMMSE RI over {a.inits} inits; nat/Hz",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| GCN-WMMSE WSR after L = {L} layers (Tab. IV row) | {target:.2f} |",
        f"| relative to WMMSE best-of-{a.inits} (paper: WMMSE50) | {100 * target / best:.2f} % |",
        f"| WMMSE RI, {a.rounds} rounds | {ri_mean[-1]:.2f} ({100 * target / ri_mean[-1]:.1f} % reached) |",
        f"| WMMSE RI TR, {L} rounds | {ri_mean[L]:.2f} (GCN-WMMSE = {100 * target / ri_mean[L]:.1f} %) |",
        f"| WMMSE MRC, {a.rounds} rounds / {L} rounds | {mrc[-1].mean():.2f} / {mrc[L].mean():.2f} |",
        f"| WMMSE best of {a.inits}, {a.rounds} rounds | {best:.2f} |",
        "",
        "Tab. VIII: communication rounds and compute time (local engine, "
        f"{a.threads} thread(s), ms per realization)",
        "",
        "| | GCN-WMMSE | WMMSE RI |",
        "|---|---|---|",
        f"| rounds to reach GCN-WMMSE's WSR | {L} | {needed if needed else f'> {a.rounds}'} |",
        f"| compute time [ms] | {1e3 * t_gcn / a.batch:.3f} | {1e3 * t_ri / a.batch:.3f} |",
        f"| signaling [bytes, wire {a.wire}] | {L * bpr:.0f} | "
        f"{(needed * bpr) if needed else float('nan'):.0f} |",
    ]
    (out / "gcn_wmmse_table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    # ---- per-round CSV
    write_csv(out / "gcn_wmmse_rounds.csv", ("round", "cum_bytes", "gcn_wmmse", "wmmse_ri", "wmmse_mrc"),
              ((r, round(r * bpr), gcn[r].mean() if r <= L else "", ri_mean[r], mrc[r].mean())
               for r in range(a.rounds + 1)))

    # ---- plot
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    rr = np.arange(a.rounds + 1)
    panels = ((axes[0], rr, "communication rounds"), (axes[1], rr * bpr, f"cumulative bytes (wire {a.wire})"))
    for ax, x, xl in panels:
        ax.plot(x, ri_mean, label=f"WMMSE RI (mean of {a.inits} inits)")
        ax.plot(x, mrc.mean(axis=1), label="WMMSE MRC")
        ax.plot(x[: L + 1], gcn.mean(axis=1), "o-", label=f"GCN-WMMSE (L = {L})")
        ax.axhline(best, color="0.5", ls=":", label=f"WMMSE best of {a.inits}")
        if needed:
            ax.axvline(x[needed], color="C0", ls="--", lw=0.8)
        ax.set_xscale("symlog", linthresh=10 if ax is axes[0] else 10 * bpr)
        ax.set_xlabel(xl)
        ax.set_ylabel("mean WSR [nat/Hz]")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Base scenario, {a.batch} held-out realizations: WMMSE RI needs {needed} rounds to match "
                 f"GCN-WMMSE's {L}")
    fig.tight_layout()
    fig.savefig(out / "gcn_wmmse_rounds.png", dpi=120)
    print(f"wrote {out}/gcn_wmmse_table.md, gcn_wmmse_rounds.csv, gcn_wmmse_rounds.png")


if __name__ == "__main__":
    main()
