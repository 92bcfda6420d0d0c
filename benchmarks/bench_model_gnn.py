"""Inference time per sample: Model-GNN vs WMMSE vs ZF at N = 64 antennas, K = 32 users (Model-GNN Tab. II).

Each algorithm runs as its dsim protocol on the local engine (one BS, i.i.d. CN(0, 1) channels, SNR 10 dB) over
``--samples`` realizations at once; wall time / samples, best of ``--repeat``, on ``--threads`` CPU threads (the
paper, Tab. II CPU column at 10 dB: Model-GNN 0.21 s, WMMSE 93.05 s for its 100 test samples).
Also the sum rate relative to WMMSE, so speed is read beside quality.  ``model_gnn (compiled)`` is the same
protocol with its layer functions through torch.compile (``dsim.jit``, as ``train.compile``); its compilation is a
warm-up run, not timed (skipped where torch.compile cannot run).

    python benchmarks/bench_model_gnn.py --samples 100 --threads 1
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from dsim import registry
from dsim.engine.local import LocalEngine
from dsim.jit import compile_unavailable, compiling
from dsim.scenarios.build import build_scenario, generate_channels

SHIPPED = Path(__file__).resolve().parents[1] / "agents" / "models" / "model_gnn_N64K32.pt"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--wmmse", type=int, default=100, help="WMMSE iterations")
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    scn = {"family": "multicell", "layout": "iid", "n_bs": 1, "ues_per_bs": 32, "bs_antennas": 64, "ue_antennas": 1,
           "snr_db": 10.0}
    family, ch = generate_channels(scn, args.samples, args.seed, "double")
    s = build_scenario(family, ch, None, args.seed)
    ck = str(SHIPPED) if SHIPPED.exists() else "untrained"
    algos = {"model_gnn": ("model_gnn", {"checkpoint": ck}, False), "zf": ("zf", {}, False),
             "wmmse": ("wmmse", {"init": "mrc", "rounds": args.wmmse}, False)}
    if compile_unavailable() is None:
        algos["model_gnn (compiled)"] = ("model_gnn", {"checkpoint": ck}, True)
    rows = {}
    for label, (name, opts, jit) in algos.items():
        spec = registry.algorithm(name)
        proto = spec.build(spec.options(**opts), s.net)
        best, V = float("inf"), None
        for i in range((args.repeat if name != "wmmse" else 1) + int(jit)):
            dec = {}
            t0 = time.perf_counter()
            with torch.no_grad(), compiling(jit):
                LocalEngine("float64").run(proto, s.net, s.air, on_round=lambda r, d, dec=dec: dec.__setitem__(r, d),
                                           rounds=proto.rounds)
            if not (jit and i == 0):  # the compiled protocol's first run compiles it
                best = min(best, time.perf_counter() - t0)
            V = dec[proto.rounds]
        rows[label] = (best / args.samples, float(s.air.evaluate(V)[0].mean()))
    ref = rows["wmmse"][1]
    print(f"N = 64, K = 32, SNR 10 dB, {args.samples} samples, {args.threads} thread(s), model: {ck}")
    print("| algorithm | time per sample [ms] | sum rate [nat/Hz] | % of WMMSE |")
    print("|---|---|---|---|")
    for label, (t, r) in rows.items():
        print(f"| {label} | {1e3 * t:.3f} | {r:.3f} | {100 * r / ref:.2f} |")


if __name__ == "__main__":
    main()
