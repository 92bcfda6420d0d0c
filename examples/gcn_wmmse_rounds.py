"""GCN-WMMSE vs WMMSE on the base scenario: the paper's Tab. IV rows L = 6, 7, 8 and Tab. VIII.

On held-out Tab. II realizations (seed different from training and validation):
* GCN-WMMSE (shipped models L = 6, 7, 8: ``checkpoint`` shipped:L6, shipped, shipped:L8) WSR after each of
  its L layers, and relative to WMMSE RI(100) and to the best of the inits;
* WMMSE RI: random initialisations (CN(0,1), scaled to full power), mean over ``--inits`` inits per
  realization (default 50, as the paper's WMMSE RI), 100 rounds; WMMSE RI TR = truncated to L rounds;
  WMMSE-best = best of the inits (the paper's WMMSE50 with the default 50 inits: best of 10 is ~1.2 nat/Hz
  lower, so "% of best" is comparable with the paper's "% of WMMSE50" only at 50); WMMSE MRC for reference;
* per model, Tab. VIII's row: rounds WMMSE RI needs to match GCN-WMMSE's mean WSR, and the compute time
  (local engine, one thread, whole batch, best of 3, ms per realization) of GCN-WMMSE's L layers and of
  WMMSE RI's needed rounds; the paper's numbers beside ours (Tab. IV WSR; its % of RI = Tab. IV's % of
  WMMSE50 / 95.20 %, RI's % of WMMSE50; Tab. VIII rounds and ms on its AMD R7 2700X).
Both send exactly the same messages per round, so cumulative bytes = rounds x bytes per round.

The rounds statistic moves with the realizations drawn: ``--subset N`` (with ``--batch`` well above N) also
reports, per model, its spread over ``--subset-draws`` random subsets of N of the held-out realizations
(drawn without replacement, seed 0): mean, standard deviation, 5 / 50 / 95 % percentiles and the share of
subsets below 8 L rounds (eight WMMSE rounds per GCN-WMMSE layer) -- how often a held-out set of N
realizations would show fewer rounds than the whole set does.

Writes ``<out>/gcn_wmmse_rounds.csv`` (WSR per round), ``<out>/gcn_wmmse_table.md`` and
``<out>/gcn_wmmse_rounds.png`` (WSR vs rounds and vs cumulative bytes).  Rates in nat/Hz.

    python examples/gcn_wmmse_rounds.py [--batch 200] [--seed 20240917] [--inits 50]
                                        [--checkpoints shipped:L6,shipped,shipped:L8] [--out runs/gcn_wmmse_rounds]
                                        [--subset 200]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

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


#: the paper's numbers per L: Tab. IV WSR (nat/Hz) and % of WMMSE50, Tab. VIII rounds WMMSE RI needs and
#: compute time [ms] of GCN-WMMSE / WMMSE RI; WMMSE RI(100) is 95.20 % of WMMSE50 (Sec. IV-A.1)
PAPER = {6: (91.67, 93.35, 42, 3.07, 17.82), 7: (92.56, 94.26, 63, 3.57, 26.70), 8: (93.46, 95.17, 98, 4.12, 41.83)}
PAPER_RI_REL = 95.20
#: the paper's WMMSE RI(100) [nat/Hz]: Tab. IV's L = 7 WSR / its % of WMMSE50 x 95.20 %
PAPER_RI_WSR = PAPER[7][0] / PAPER[7][1] * PAPER_RI_REL


def rounds_to_match(ri: np.ndarray, target: np.ndarray) -> int | None:
    """First round at which WMMSE RI's mean WSR over the realizations reaches the mean of ``target``.

    ``ri`` (R+1, B): WSR per round and realization, already averaged over the inits; ``target`` (B,): the
    model's WSR per realization.  None if RI never reaches it within R rounds."""
    hit = np.nonzero(ri.mean(axis=1) >= target.mean())[0]
    return int(hit[0]) if hit.size else None


def subset_rounds(ri: np.ndarray, target: np.ndarray, size: int, draws: int, seed: int = 0) -> np.ndarray:
    """:func:`rounds_to_match` on ``draws`` random subsets of ``size`` realizations (without replacement);
    R+1 where RI never matches."""
    if not 0 < size <= target.shape[0]:
        raise ValueError(f"subset size {size}: allowed 1..{target.shape[0]} (the realizations)")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        idx = rng.choice(target.shape[0], size, replace=False)
        n = rounds_to_match(ri[:, idx], target[idx])
        out.append(ri.shape[0] if n is None else n)
    return np.array(out)


def bytes_per_round(ledger, batch: int) -> float:
    rows = [r for r in ledger if r.round == 1]
    return sum(r.bytes for r in rows) / batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=200, help="held-out realizations")
    ap.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="held-out channel seed (never a training or "
                    "validation seed: those are s*1_000_003 + t, t >= -1, for the small data seeds s of the recipes)")
    ap.add_argument("--inits", type=int, default=50, help="WMMSE random initialisations per realization (the "
                    "paper: RI = mean over 50, WMMSE50 = best of 50)")
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--checkpoints", default="shipped:L6,shipped,shipped:L8",
                    help="GCN-WMMSE checkpoints, comma-separated (one row each)")
    ap.add_argument("--mu-steps", type=int, default=8, help="GCN-WMMSE's P mu sub-steps (9)")
    ap.add_argument("--wire", default="float32", help="wire policy for the bytes (numbers use float64)")
    ap.add_argument("--out", default="runs/gcn_wmmse_rounds")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--subset", type=int, default=0, help="also the spread of the rounds statistic over random "
                    "subsets of this many realizations (0: off)")
    ap.add_argument("--subset-draws", type=int, default=2000, help="random subsets for --subset")
    a = ap.parse_args()
    if a.subset and not 0 < a.subset <= a.batch:
        ap.error(f"--subset {a.subset}: allowed 0 (off) or 1..{a.batch} (--batch)")
    if a.subset_draws < 1:
        ap.error(f"--subset-draws {a.subset_draws}: allowed >= 1")
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    _, ch = generate_channels({"family": "multicell"}, a.batch, a.seed, "double")  # Tab. II base
    ri = np.stack([run("wmmse", {"init": "random", "rounds": a.rounds}, ch, seed=s)
                   for s in tqdm(range(a.inits), desc="WMMSE RI", unit="init")])
    mrc = run("wmmse", {"init": "mrc", "rounds": a.rounds}, ch)
    ri_real = ri.mean(axis=0)                           # (R+1, B) mean over inits
    ri_mean = ri_real.mean(axis=1)                      # (R+1,) and over realizations
    best = ri[:, -1].max(axis=0).mean()                 # best of the inits per realization, at 100 rounds
    bpr = bytes_per_round(LocalEngine(a.wire).run(*setup("wmmse", {"rounds": 1}, ch)).ledger, a.batch)

    # ---- table (rewritten after every checkpoint's row: an interrupted run keeps the rows it finished)
    def paper(L: int, i: int, fmt: str) -> str:
        return format(PAPER[L][i], fmt) if L in PAPER else "-"

    table_head = [
        f"# GCN-WMMSE vs WMMSE, base scenario (Tab. II), {a.batch} held-out realizations (seed {a.seed}), "
        f"WMMSE RI over {a.inits} inits; nat/Hz; ours (paper)",
        "",
        f"WMMSE RI {a.rounds} rounds {ri_mean[-1]:.2f} (paper {PAPER_RI_WSR:.2f} = {PAPER_RI_REL} % of WMMSE50); "
        f"best of {a.inits} inits {best:.2f} (RI = {100 * ri_mean[-1] / best:.2f} % of it; paper {PAPER_RI_REL} % "
        f"of best of 50); "
        f"WMMSE MRC {a.rounds} rounds {mrc[-1].mean():.2f}",
        "",
        "WMMSE RI's curve at Tab. VIII's rounds " + ", ".join(
            f"{PAPER[L][2]}: {100 * ri_mean[PAPER[L][2]] / ri_mean[-1]:.2f} % of RI({a.rounds})"
            f" (paper {100 * PAPER[L][0] / PAPER_RI_WSR:.2f})" for L in sorted(PAPER) if PAPER[L][2] <= a.rounds)
        + " -- the paper's: its GCN-WMMSE WSR / its RI(100), the WSR RI has reached after those rounds",
        "",
        "Tab. IV / VIII rows (compute time: local engine, "
        f"{a.threads} thread(s), ms per realization; paper: AMD R7 2700X)",
        "",
        f"| L | checkpoint | GCN-WMMSE WSR | % of WMMSE RI({a.rounds}) | % of best of {a.inits} (paper: WMMSE50) "
        "| % of RI TR (L rounds) | rounds RI needs to match | GCN-WMMSE [ms] | WMMSE RI [ms] "
        f"| signaling GCN / RI [bytes, wire {a.wire}] |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def table(rows: list[tuple]) -> list[str]:
        return table_head + [
            f"| {L} | {ck} | {target:.2f} ({paper(L, 0, '.2f')}) | {100 * target / ri_mean[-1]:.1f} "
            f"({f'{100 * PAPER[L][1] / PAPER_RI_REL:.1f}' if L in PAPER else '-'}) "
            f"| {100 * target / best:.2f} ({paper(L, 1, '.2f')}) | {100 * target / ri_mean[L]:.1f} "
            f"| {needed if needed else f'> {a.rounds}'} ({paper(L, 2, 'd')}) | {ms_gcn:.3f} ({paper(L, 3, '.2f')}) "
            f"| {ms_ri:.3f} ({paper(L, 4, '.2f')}) | {L * bpr:.0f} / "
            f"{(needed * bpr) if needed else float('nan'):.0f} |"
            for L, ck, target, needed, ms_gcn, ms_ri in rows]

    rows, curves, spread = [], [], []                   # curves: (L, checkpoint, mean WSR per round)

    def spread_lines() -> list[str]:
        return ["", f"Rounds RI needs to match, over {a.subset_draws} random subsets of {a.subset} of these "
                f"realizations: mean / sd / 5, 50, 95 % / share below 8 L", ""] + [
            f"* L = {L} ({ck}): {v.mean():.1f} / {v.std():.1f} / {np.percentile(v, 5):.0f}, "
            f"{np.percentile(v, 50):.0f}, {np.percentile(v, 95):.0f} / {np.mean(v < 8 * L):.3f}"
            for L, ck, v in spread] if spread else []
    for ck in tqdm(a.checkpoints.split(","), desc="GCN-WMMSE", unit="model"):
        opts = {"checkpoint": ck, "mu_steps": a.mu_steps}
        gcn = run("gcn_wmmse", opts, ch)
        L = gcn.shape[0] - 1
        target = gcn[-1].mean()
        needed = rounds_to_match(ri_real, gcn[-1])
        if a.subset:
            spread.append((L, ck, subset_rounds(ri_real, gcn[-1], a.subset, a.subset_draws)))
        t_gcn = timed("gcn_wmmse", opts, ch)
        t_ri = timed("wmmse", {"init": "random", "rounds": needed}, ch) if needed else float("nan")
        curves.append((L, ck, gcn.mean(axis=1)))
        rows.append((L, ck, target, needed, 1e3 * t_gcn / a.batch, 1e3 * t_ri / a.batch))
        (out / "gcn_wmmse_table.md").write_text("\n".join(table(rows) + spread_lines()) + "\n")
    print("\n".join(table(rows) + spread_lines()))

    # ---- per-round CSV (column gcn_wmmse_L<L>, with the checkpoint appended when two models have the same L)
    n_of = Counter(L for L, _, _ in curves)
    names = [f"gcn_wmmse_L{L}" + (f"_{ck}" if n_of[L] > 1 else "") for L, ck, _ in curves]
    write_csv(out / "gcn_wmmse_rounds.csv", ("round", "cum_bytes", *names, "wmmse_ri", "wmmse_mrc"),
              ((r, round(r * bpr), *(c[r] if r <= L else "" for L, _, c in curves), ri_mean[r], mrc[r].mean())
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
        for L, ck, c in curves:
            ax.plot(x[: L + 1], c, "o-", ms=3, label=f"GCN-WMMSE (L = {L}, {ck})")
        ax.axhline(best, color="0.5", ls=":", label=f"WMMSE best of {a.inits}")
        for _, _, _, needed, _, _ in rows:
            if needed:
                ax.axvline(x[needed], color="C0", ls="--", lw=0.8)
        ax.set_xscale("symlog", linthresh=10 if ax is axes[0] else 10 * bpr)
        ax.set_xlabel(xl)
        ax.set_ylabel("mean WSR [nat/Hz]")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    need = ", ".join(f"L = {L}: {n}" for L, _, _, n, _, _ in rows)
    fig.suptitle(f"Base scenario, {a.batch} held-out realizations: rounds WMMSE RI needs to match GCN-WMMSE ({need})")
    fig.tight_layout()
    fig.savefig(out / "gcn_wmmse_rounds.png", dpi=120)
    print(f"wrote {out}/gcn_wmmse_table.md, gcn_wmmse_rounds.csv, gcn_wmmse_rounds.png")


if __name__ == "__main__":
    main()
