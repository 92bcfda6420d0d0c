"""ENGNN paper (Sec. IV-A, Ex1) studies with the shipped models: sample efficiency, generalisation in K and
sum rate vs signaling, ENGNN beside WCGCN (MPGNN) and WMMSE.

* Sample efficiency (Fig. 8): ENGNN-E and WCGCN trained on the same 10 / 100 / 1000 samples
  (``agents/models/{engnn,wcgcn}_ex1_<n>.pt``, recipes ``scenarios/train_{engnn,wcgcn}_ex1_<n>.yaml``), sum
  rate at K = 20 beside WMMSE (100 iterations, full-power MRC start, full CSI).
* Generalisation in K (Fig. 5): the models trained at K = 20 (``--n-train``: 10 / 100 / 1000 samples, or
  ``fresh``, the default: the paper's Fig. 5 model is trained on fresh minibatches, and so is
  ``engnn_ex1_fresh.pt``, the 1000-sample model fine-tuned on fresh K = 20 minibatches; WCGCN has no such model
  and is then its 1000-sample one) tested at K = 20 ... 100
  in the same 2 km x 2 km field; WMMSE truncated to ENGNN's rounds (its L layers, from the checkpoint: one
  round = one layer's Tx -> Rx and Rx -> Tx exchange), to WCGCN's (3) and full (100);
  % of full WMMSE for ENGNN and WCGCN.
* Signaling: bytes per realization per layer / round from dsim's ledger (wire ``--wire``), and sum rate vs
  cumulative signaling bytes (WMMSE after each of its rounds, the GNNs after their last layer).

* Ex2 (interference-broadcast power allocation) and Ex3 (cooperative beamforming), from
  ``examples/engnn_multicell_parts.py``: ENGNN trained on 2 / 5 / 10 samples vs the ``zf_power`` baseline, and
  Ex3's generalisation K 2 -> 8, M 5 -> 8 vs ``coop_wmmse`` and ``coop_gp``.

Held-out layouts only: seeds >= 1000 (``--seed``) for Ex1, 100+ / 200+ for Ex2 / Ex3; the training sets and
validation sets were drawn from seed 7's streams (scenarios/train_*_ex*.yaml).  Rates in bit/s/Hz.

    OMP_NUM_THREADS=1 python examples/engnn_study.py [--parts ex1 ex2 ex3] [--layouts 100] [--quick]

Writes ``study.md`` (markdown tables), ``study.json``, ``ex1_sample_efficiency.png``,
``ex1_generalisation.png``, ``ex1_rate_vs_bytes.png``, ``ex2_table.png`` and ``ex3_generalisation.png`` to
``--out`` (default runs/engnn_study).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from dsim import registry
from dsim.engine.local import LocalEngine
from dsim.learn import load_checkpoint
from dsim.scenarios.build import build_scenario, generate_channels

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engnn_multicell_parts import ex2_table, ex3_generalisation  # noqa: E402  (Ex2 / Ex3 studies)

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "agents" / "models"
EX1 = {"family": "interference", "layout": "engnn"}
SAMPLES = (10, 100, 1000)
#: training sets of the generalisation / signaling studies: a fixed set's size, or 'fresh' (fresh minibatches)
TRAIN_SETS = (*SAMPLES, "fresh")
#: the paper's Ex1 numbers (Sec. IV-A-4, bit/s/Hz): ENGNN and MPGNN trained on 10 and 100 samples
PAPER_EX1 = {10: {"engnn": 83.39, "wcgcn": 68.60}, 100: {"engnn": 89.68, "wcgcn": 82.10}}


def model_file(algo: str, n: int | str) -> Path:
    """The shipped Ex1 model of ``algo`` ('engnn' | 'wcgcn') trained on ``n`` samples (one of :data:`TRAIN_SETS`;
    'fresh': ENGNN's fresh-sample model, WCGCN's 1000-sample model, as it has none trained on fresh samples)."""
    if n == "fresh" and algo == "wcgcn":
        n = 1000
    return MODELS / f"{algo}_ex1_{n}.pt"


def model(algo: str, n: int | str) -> dict:
    """Options of the shipped Ex1 model of ``algo`` trained on ``n`` samples (:func:`model_file`)."""
    return {"checkpoint": str(model_file(algo, n))}


def model_rounds(algo: str, n: int | str) -> int:
    """Protocol rounds of the shipped Ex1 model: its updating layers (ENGNN: one round = one layer's Tx -> Rx and
    Rx -> Tx exchange, ``tx_edge`` + ``rx_reply``; WCGCN: one round = one layer), read from the checkpoint."""
    return int(load_checkpoint(model_file(algo, n))["hparams"]["layers"])


def train_set_label(n: int | str) -> str:
    """Markdown words for a training set of :data:`TRAIN_SETS`."""
    if n == "fresh":
        return ("fresh samples (ENGNN: `engnn_ex1_fresh.pt`, the 1000-sample model fine-tuned on fresh minibatches; "
                "WCGCN: its 1000-sample model)")
    return f"{n} samples"


def evaluate(scn: dict, entries: dict[str, tuple[str, dict, list[int]]], layouts: int, seed: int, batch: int,
             wire: str = "float32", desc: str = "") -> dict[str, dict]:
    """Run every entry label -> (algorithm, options, rounds to report) on ``layouts`` held-out layouts (chunks
    of ``batch`` drawn with seeds seed, seed + 1, ...) on the local engine with wire policy ``wire``.

    Returns label -> {"rate": {round: mean sum rate}, "bytes": {round: signaling bytes per realization in
    that round}} (bytes: the ledger's rows of every link but ``air``, whose pilots are physics)."""
    out: dict[str, dict] = {k: {"rate": {}, "bytes": {}} for k in entries}
    n = 0
    chunks = (layouts + batch - 1) // batch
    for c in tqdm(range(chunks), desc=desc, leave=False):
        b = min(batch, layouts - c * batch)
        fam, ch = generate_channels(scn, b, seed + c, "double")
        s = build_scenario(fam, ch, None, seed + c)
        for label, (algo, opts, rounds) in entries.items():
            spec = registry.algorithm(algo)
            proto = spec.build(spec.options(**opts), s.net)
            got: dict[int, float] = {}

            def on_round(r: int, d: torch.Tensor, got=got, rounds=rounds, air=s.air) -> None:
                if r in rounds:
                    got[r] = float(air.evaluate(d)[0].sum())

            with torch.no_grad():
                trace = LocalEngine(wire).run(proto, s.net, s.air, on_round=on_round)
            acc = out[label]
            for r, v in got.items():
                acc["rate"][r] = acc["rate"].get(r, 0.0) + v
            for row in trace.ledger:
                if row.link != "air":
                    acc["bytes"][row.round] = acc["bytes"].get(row.round, 0.0) + row.bytes
        n += b
    for acc in out.values():
        acc["rate"] = {r: v / n for r, v in sorted(acc["rate"].items())}
        acc["bytes"] = {r: v / n for r, v in sorted(acc["bytes"].items())}
    return out


# =============================================================================== Ex1 studies
def ex1_sample_efficiency(layouts: int, seed: int, batch: int, wire: str) -> list[dict]:
    """ENGNN vs WCGCN trained on 10 / 100 / 1000 samples, K = 20, beside WMMSE-100: one row per n."""
    entries = {"wmmse": ("wmmse", {"init": "mrc", "rounds": 100}, [100])}
    for n in SAMPLES:
        entries[f"engnn_{n}"] = ("engnn", model("engnn", n), [model_rounds("engnn", n)])
        entries[f"wcgcn_{n}"] = ("wcgcn", model("wcgcn", n), [model_rounds("wcgcn", n)])
    res = evaluate(EX1, entries, layouts, seed, batch, wire, "Ex1 sample efficiency")
    wm = res["wmmse"]["rate"][100]
    rows = []
    for n in SAMPLES:
        e, w = res[f"engnn_{n}"]["rate"][model_rounds("engnn", n)], res[f"wcgcn_{n}"]["rate"][model_rounds("wcgcn", n)]
        rows.append({"samples": n, "engnn": e, "wcgcn": w, "wmmse": wm, "engnn_pct": 100 * e / wm,
                     "engnn_rounds": model_rounds("engnn", n),
                     "wcgcn_pct": 100 * w / wm, "paper": PAPER_EX1.get(n)})
    return rows


def ex1_generalisation(pairs: list[int], layouts: int, seed: int, batch: int, wire: str,
                       n_train: int | str) -> list[dict]:
    """Models trained at K = 20 on ``n_train`` samples (:data:`TRAIN_SETS`), tested at each K in ``pairs`` (2 km
    field): ENGNN (L_E rounds, its layers), WCGCN (L_W = 3 rounds), WMMSE after 1, 3, L_E, L_W and 100 rounds; one
    row per K (``wmmse_engnn`` / ``wmmse_wcgcn``: WMMSE truncated to ENGNN's / WCGCN's rounds)."""
    rows = []
    le, lw = model_rounds("engnn", n_train), model_rounds("wcgcn", n_train)
    for K in tqdm(pairs, desc="Ex1 generalisation"):
        entries = {"wmmse": ("wmmse", {"init": "mrc", "rounds": 100}, sorted({1, 3, le, lw, 100})),
                   "engnn": ("engnn", model("engnn", n_train), [le]),
                   "wcgcn": ("wcgcn", model("wcgcn", n_train), [lw])}
        res = evaluate(EX1 | {"n_pairs": K}, entries, layouts, seed, batch, wire, f"K={K}")
        wm = res["wmmse"]["rate"]
        e, w = res["engnn"]["rate"][le], res["wcgcn"]["rate"][lw]
        rows.append({"K": K, "engnn": e, "wcgcn": w, "wmmse_1": wm[1], "wmmse_3": wm[3], "wmmse": wm[100],
                     "engnn_rounds": le, "wcgcn_rounds": lw, "wmmse_engnn": wm[le], "wmmse_wcgcn": wm[lw],
                     "engnn_pct": 100 * e / wm[100], "wcgcn_pct": 100 * w / wm[100]})
    return rows


def ex1_signaling(layouts: int, seed: int, batch: int, wire: str, n_train: int | str, K: int = 20) -> dict:
    """Per-realization signaling bytes per layer / round and the sum rate after every WMMSE round, K = 20."""
    entries = {"wmmse": ("wmmse", {"init": "mrc", "rounds": 100}, list(range(101))),
               "engnn": ("engnn", model("engnn", n_train), [model_rounds("engnn", n_train)]),
               "wcgcn": ("wcgcn", model("wcgcn", n_train), [model_rounds("wcgcn", n_train)])}
    res = evaluate(EX1 | {"n_pairs": K}, entries, layouts, seed, batch, wire, "Ex1 signaling")
    out = {}
    for label, acc in res.items():
        rounds = sorted(acc["bytes"])
        cum, total = {}, 0.0
        for r in rounds:
            total += acc["bytes"][r]
            cum[r] = total
        out[label] = {"bytes_per_round": acc["bytes"][rounds[0]] if rounds else 0.0, "rounds": len(rounds),
                      "rate": acc["rate"], "cumulative_bytes": cum}
    return out


# =============================================================================== output
def ex1_markdown(eff: list[dict], gen: list[dict], sig: dict, n_train: int | str, layouts: int, wire: str) -> str:
    lines = ["## Ex1: beamforming in interference channels (K = 20 training, N = 2, 2 km x 2 km)", "",
             f"Held-out layouts: {layouts} per point (seeds >= 1000).  Sum rate [bit/s/Hz]; % of WMMSE (100 "
             "iterations, MRC start).", "", "### Sample efficiency (K = 20)", "",
             "| training samples | ENGNN | ENGNN rounds | WCGCN | WMMSE | ENGNN % | WCGCN % | paper ENGNN / MPGNN |",
             "|---|---|---|---|---|---|---|---|"]
    for r in eff:
        paper = f"{r['paper']['engnn']:.2f} / {r['paper']['wcgcn']:.2f}" if r["paper"] else "-"
        lines.append(f"| {r['samples']} | {r['engnn']:.2f} | {r['engnn_rounds']} | {r['wcgcn']:.2f} | "
                     f"{r['wmmse']:.2f} | {r['engnn_pct']:.1f} | {r['wcgcn_pct']:.1f} | {paper} |")
    le, lw = (gen[0]["engnn_rounds"], gen[0]["wcgcn_rounds"]) if gen else (1, 3)
    lines += ["", f"### Generalisation in K (models trained at K = 20 on {train_set_label(n_train)})", "",
              f"| K | ENGNN ({le} round{'s' * (le > 1)}) | WMMSE {le} round{'s' * (le > 1)} | WCGCN ({lw} rounds) | "
              f"WMMSE {lw} rounds | WMMSE 100 | ENGNN % | WCGCN % |", "|---|---|---|---|---|---|---|---|"]
    for r in gen:
        lines.append(f"| {r['K']} | {r['engnn']:.2f} | {r['wmmse_engnn']:.2f} | {r['wcgcn']:.2f} | "
                     f"{r['wmmse_wcgcn']:.2f} | {r['wmmse']:.2f} | {r['engnn_pct']:.1f} | {r['wcgcn_pct']:.1f} |")
    lines += ["", f"### Signaling per realization (K = 20, wire {wire})", "",
              "| method | bytes per layer / round | rounds | total bytes | sum rate |", "|---|---|---|---|---|"]
    last_round = {label: max(sig[label]["rate"]) for label in ("engnn", "wcgcn")}
    for label, last in (("engnn", last_round["engnn"]), ("wcgcn", last_round["wcgcn"]), ("wmmse", 100)):
        s = sig[label]
        lines.append(f"| {label} | {s['bytes_per_round']:.0f} | {s['rounds']} | "
                     f"{s['cumulative_bytes'].get(last, 0.0):.0f} | {s['rate'][last]:.2f} |")
    wm = sig["wmmse"]
    for label, last in last_round.items():
        rate, spent = sig[label]["rate"][last], sig[label]["cumulative_bytes"].get(last, 0.0)
        hit = [r for r in range(1, 101) if wm["rate"][r] >= rate]
        if hit:
            lines.append(f"\nWMMSE reaches {label}'s sum rate after {hit[0]} rounds, "
                         f"{wm['cumulative_bytes'][hit[0]]:.0f} bytes ({label}: {spent:.0f}).")
    return "\n".join(lines) + "\n"


def ex1_plots(out: Path, eff: list[dict], gen: list[dict], sig: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    ns = [r["samples"] for r in eff]
    ax.semilogx(ns, [r["engnn"] for r in eff], "o-", label="ENGNN-E")
    ax.semilogx(ns, [r["wcgcn"] for r in eff], "s-", label="WCGCN")
    ax.axhline(eff[0]["wmmse"], color="k", ls="--", label="WMMSE (100 it.)")
    ax.set_xlabel("training samples")
    ax.set_ylabel("sum rate [bit/s/Hz]")
    ax.set_title("Ex1 sample efficiency, K = 20")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "ex1_sample_efficiency.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    ks = [r["K"] for r in gen]
    le, lw = gen[0]["engnn_rounds"], gen[0]["wcgcn_rounds"]
    for key, style, label in (("engnn", "o-", f"ENGNN-E ({le} round(s))"), ("wcgcn", "s-", f"WCGCN ({lw} rounds)"),
                              ("wmmse", "k--", "WMMSE 100"), ("wmmse_engnn", "k:", f"WMMSE {le} round(s)"),
                              ("wmmse_wcgcn", "k-.", f"WMMSE {lw} rounds")):
        ax.plot(ks, [r[key] for r in gen], style, label=label)
    ax.set_xlabel("K (trained at K = 20)")
    ax.set_ylabel("sum rate [bit/s/Hz]")
    ax.set_title("Ex1 generalisation in K, 2 km x 2 km")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "ex1_generalisation.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    wm = sig["wmmse"]
    rs = [r for r in range(1, 101) if r in wm["cumulative_bytes"]]
    ax.semilogx([wm["cumulative_bytes"][r] for r in rs], [wm["rate"][r] for r in rs], "k.-", ms=3, label="WMMSE rounds")
    for label, marker in (("engnn", "o"), ("wcgcn", "s")):
        last = max(sig[label]["rate"])
        ax.semilogx([sig[label]["cumulative_bytes"][last]], [sig[label]["rate"][last]], marker, ms=8,
                    label=label.upper())
    ax.set_xlabel("signaling bytes per realization (cumulative)")
    ax.set_ylabel("sum rate [bit/s/Hz]")
    ax.set_title("Ex1: sum rate vs signaling, K = 20")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "ex1_rate_vs_bytes.png", dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layouts", type=int, default=100, help="held-out layouts per point (the paper tests 100)")
    ap.add_argument("--batch", type=int, default=50, help="layouts per chunk")
    ap.add_argument("--seed", type=int, default=1000, help="first held-out seed (>= 1000: never trained on)")
    ap.add_argument("--pairs", type=int, nargs="+", default=[20, 40, 60, 80, 100], help="K of the generalisation")
    ap.add_argument("--n-train", type=lambda x: x if x == "fresh" else int(x), default="fresh", choices=TRAIN_SETS,
                    help="training set (10 | 100 | 1000 samples | fresh) of the models "
                    "in the generalisation and signaling studies")
    ap.add_argument("--wire", default="float32", help="wire policy of the ledger")
    ap.add_argument("--out", default="runs/engnn_study")
    ap.add_argument("--quick", action="store_true", help="20 layouts, K in {20, 60, 100}")
    ap.add_argument("--parts", nargs="+", default=["ex1", "ex2", "ex3"], choices=["ex1", "ex2", "ex3"])
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.quick:
        a.layouts, a.pairs = 20, [20, 60, 100]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    mds, data = [], {"layouts": a.layouts, "seed": a.seed}
    if "ex1" in a.parts:
        eff = ex1_sample_efficiency(a.layouts, a.seed, a.batch, a.wire)
        gen = ex1_generalisation(a.pairs, a.layouts, a.seed, a.batch, a.wire, a.n_train)
        sig = ex1_signaling(a.layouts, a.seed, a.batch, a.wire, a.n_train)
        mds.append(ex1_markdown(eff, gen, sig, a.n_train, a.layouts, a.wire))
        data["ex1"] = {"sample_efficiency": eff, "generalisation": gen, "signaling": sig}
        ex1_plots(out, eff, gen, sig)
    if "ex2" in a.parts:
        ex2 = ex2_table(a.layouts, figure=out / "ex2_table.png")
        mds.append(ex2["markdown"])
        data["ex2"] = ex2["rows"]
    if "ex3" in a.parts:
        ex3 = ex3_generalisation(a.layouts, figure=out / "ex3_generalisation.png")
        mds.append(ex3["markdown"])
        data["ex3"] = ex3["rows"]
    md = "\n\n".join(mds)
    (out / "study.md").write_text(md + "\n")
    (out / "study.json").write_text(json.dumps(data, indent=1))
    print(md)
    print(f"written to {out} in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
