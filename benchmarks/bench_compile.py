"""Training-step time, eager against ``train.compile`` (dsim/jit.py: the model's compilable layer functions
through torch.compile), side by side in one process (interleaved repetitions, so both see the same machine state).

One step = a fixed minibatch of ``--batch`` i.i.d. CN(0, 1) channels at SNR 10 dB, the protocol on the local engine,
the model's loss and ``backward()`` on ``--threads`` CPU threads.  Cases: the shipped multi-cell Model-GNN at
(M, N, K) = (3, 16, 8) and the shipped single-cell Model-GNN at (N, K) = (32, 16).  The first compiled step
(compilation, reported apart) is not timed.  Also prints the relative difference of the loss and of the largest
gradient entry between the two (float rounding through the layers; float64 agrees to ~1e-12, tests/test_jit.py).

    python benchmarks/bench_compile.py --threads 1 --repeat 5
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from dsim.jit import compile_unavailable, compiling
from dsim.learn import forward_loss, get_learnable, pool_sampler

MODELS = Path(__file__).resolve().parents[1] / "agents" / "models"
CASES = {
    "model_gnn_mc (3, 16, 8)": ("model_gnn_mc", "model_gnn_mc_M3N16K8.pt", 3, 16, 8),
    "model_gnn (32, 16)": ("model_gnn", "model_gnn_N32K16.pt", 1, 32, 16),
}


def step(learn: Any, net: Any, air: Any, on: bool) -> tuple[float, list[torch.Tensor]]:
    """One forward + backward of the model's loss, compiled (``on``) or eager: (loss, gradients)."""
    learn.module.zero_grad()
    with compiling(on):
        loss, _ = forward_loss(learn, net, air)
        loss.backward()
    return float(loss.detach()), [p.grad.clone() for p in learn.module.parameters()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--precision", choices=("single", "double"), default="single")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    args = ap.parse_args()
    why = compile_unavailable()
    if why:
        raise SystemExit(f"bench_compile: torch.compile does not work here ({why})")
    torch.set_num_threads(args.threads)
    print(f"Training step, batch {args.batch}, {args.precision}, {args.threads} thread(s), {args.repeat} interleaved "
          "repetitions (median / min ms)")
    print("| model | eager | compiled | speed-up | first compiled step (s) | loss rel. diff | grad rel. diff |")
    print("|---|---|---|---|---|---|---|")
    for name in args.cases:
        algo, ck, n_bs, n_ant, ues = CASES[name]
        scn = {"family": "multicell", "layout": "iid", "n_bs": n_bs, "ues_per_bs": ues, "bs_antennas": n_ant,
               "ue_antennas": 1, "snr_db": 10.0}
        net, air = pool_sampler(scn, args.batch, 7, args.precision)(args.batch, 1)
        learn = get_learnable(algo, {"checkpoint": str(MODELS / ck)})

        t0 = time.perf_counter()
        comp = step(learn, net, air, True)
        first = time.perf_counter() - t0
        eager = step(learn, net, air, False)
        dl = abs(eager[0] - comp[0]) / abs(eager[0])
        dg = max(float((a - b).abs().max() / a.abs().max().clamp_min(1e-30)) for a, b in zip(eager[1], comp[1]))
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.repeat):
            for on in (False, True):
                t0 = time.perf_counter()
                step(learn, net, air, on)
                times[on].append(time.perf_counter() - t0)
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        print(f"| {name} | {1e3 * med[False]:.0f} / {1e3 * min(times[False]):.0f} | {1e3 * med[True]:.0f} / "
              f"{1e3 * min(times[True]):.0f} | {med[False] / med[True]:.2f}x | {first:.1f} | {dl:.1e} | {dg:.1e} |")


if __name__ == "__main__":
    main()
