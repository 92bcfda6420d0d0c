"""Training-step time of Model-GNN (forward + backward of the -sum-rate loss, Adam step), this tree against the
``agents/model_gnn.py`` of an older git revision, side by side in one process (interleaved repetitions, so both
see the same machine state).

One step = a minibatch of ``--batch`` i.i.d. CN(0, 1) channels (one BS, N antennas, K users, SNR 10 dB, drawn once),
the protocol on the local engine, the loss :func:`agents.model_gnn.sum_rate_loss`, ``backward()`` and an AdamW step,
on ``--threads`` CPU threads.  Also checks that both revisions give the same loss and gradients (float tolerance).

    python benchmarks/bench_model_gnn_train.py --N 64 --K 16 --batch 50 --precision single --against e23fd12
"""

from __future__ import annotations

import argparse
import subprocess
import time
import types
from pathlib import Path

import torch

import agents.model_gnn as current
import dsim.registry as registry
from dsim.evaluate import evaluate_rounds
from dsim.learn import pool_sampler

ROOT = Path(__file__).resolve().parents[1]


def module_at(rev: str) -> types.ModuleType:
    """agents/model_gnn.py as of git revision ``rev``, loaded as a separate module (its registrations skipped)."""
    src = subprocess.run(["git", "show", f"{rev}:agents/model_gnn.py"], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout
    mod = types.ModuleType(f"model_gnn_{rev}")
    mod.__file__ = current.__file__
    keep = registry.register_algorithm
    registry.register_algorithm = lambda *a, **k: None
    try:
        exec(compile(src, f"model_gnn@{rev}", "exec"), mod.__dict__)
    finally:
        registry.register_algorithm = keep
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--N", type=int, default=64)
    ap.add_argument("--K", type=int, default=16)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--precision", choices=("single", "double"), default="single")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--against", default="e23fd12", help="git revision of the old agents/model_gnn.py")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    scn = {"family": "multicell", "layout": "iid", "n_bs": 1, "ues_per_bs": args.K, "bs_antennas": args.N,
           "ue_antennas": 1, "snr_db": 10.0}
    net, air = pool_sampler(scn, args.batch, 7, args.precision)(args.batch, 1)
    mods = {"old": module_at(args.against), "new": current}
    params = {k: current.ModelGNNParams(seed=0) for k in mods}
    opts = {k: torch.optim.AdamW(params[k].parameters(), lr=0.0) for k in mods}   # lr 0: same weights every step

    def step(k: str) -> tuple[float, list[torch.Tensor]]:
        proto = mods[k].gnn_protocol("model_gnn", params[k], net)
        opts[k].zero_grad()
        loss = current.sum_rate_loss(evaluate_rounds(proto, net, air, [proto.rounds]))
        loss.backward()
        opts[k].step()
        return float(loss.detach()), [p.grad.clone() for p in params[k].parameters()]

    ref = {k: step(k) for k in mods}
    dl = abs(ref["old"][0] - ref["new"][0]) / abs(ref["old"][0])
    dg = max(float((a - b).abs().max() / a.abs().max()) for a, b in zip(ref["old"][1], ref["new"][1]))
    times: dict[str, list[float]] = {k: [] for k in mods}
    for _ in range(args.repeat):
        for k in mods:
            t0 = time.perf_counter()
            step(k)
            times[k].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    print(f"Model-GNN training step, N = {args.N}, K = {args.K}, batch {args.batch}, {args.precision}, "
          f"{args.threads} thread(s), {args.repeat} interleaved repetitions")
    print("| code | median ms/step | min ms/step |\n|---|---|---|")
    for k, v in times.items():
        print(f"| {k} ({args.against if k == 'old' else 'this tree'}) | {1e3 * med[k]:.1f} | {1e3 * min(v):.1f} |")
    print(f"speed-up (median): {med['old'] / med['new']:.2f}x; loss rel. diff {dl:.1e}, max grad rel. diff {dg:.1e}")


if __name__ == "__main__":
    main()
