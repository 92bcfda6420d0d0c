"""GCN-WMMSE benchmark, measured side by side in one run (ratios, not timed assertions).

1. Training step time: batch of B base-scenario realizations (Tab. II), L = 7, complex128 — forward on
   the local engine, loss (16), backward (with the Prop. 1 mu-gradient), clipping, AdamW step.
2. Inference time per round on the local engine, GCN-WMMSE vs WMMSE (same batch, same messages).

    python benchmarks/bench_gcn_wmmse.py [--batch 100] [--steps 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agents.registry import get  # noqa: E402
from dsim.engine.local import LocalEngine  # noqa: E402
from dsim.scenarios.multicell import generate_multicell  # noqa: E402
from dsim.scenarios.network_multicell import multicell_network  # noqa: E402
from dsim.train import get_learnable, normalized_loss, wsr_per_round  # noqa: E402


def sample(batch: int, seed: int, dtype=torch.complex128):
    g = torch.Generator().manual_seed(seed)
    return multicell_network(generate_multicell(batch, g, dtype))


def training_step_time(batch: int, steps: int) -> dict:
    learn = get_learnable("gcn_wmmse", {"checkpoint": "untrained"})
    opt = torch.optim.AdamW(learn.module.parameters(), lr=0.01, betas=(0.9, 0.99), weight_decay=1e-3)
    times, fwd = [], []
    for t in range(steps + 1):  # step 0 is a warm-up
        net, air = sample(batch, 1000 + t)
        t0 = time.perf_counter()
        learn.observe(net)
        proto = learn.protocol(net)
        loss = normalized_loss(wsr_per_round(proto, net, air, [proto.rounds]))
        t1 = time.perf_counter()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(learn.module.parameters(), 1.0)
        opt.step()
        if t:
            times.append(time.perf_counter() - t0)
            fwd.append(t1 - t0)
    return {"batch": batch, "layers": 7, "step_s_mean": sum(times) / len(times), "step_s_min": min(times),
            "forward_s_mean": sum(fwd) / len(fwd)}


def inference_per_round(batch: int, reps: int) -> dict:
    net, air = sample(batch, 7)
    out = {}
    for name, opts in (("gcn_wmmse", {}), ("wmmse", {"init": "mrc", "rounds": 7})):
        spec = get(name)
        proto = spec.build(spec.options(**opts), net)
        best = float("inf")
        for _ in range(reps):
            eng = LocalEngine("float64")
            with torch.no_grad():
                tr = eng.run(proto, net, air)
            best = min(best, tr.wall_s)
        ms = 1e3 * best / proto.rounds
        out[name] = {"round_ms": ms, "round_ms_per_realization": ms / batch}
    out["ratio_gcn_over_wmmse_per_round"] = out["gcn_wmmse"]["round_ms"] / out["wmmse"]["round_ms"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    res = {"threads": a.threads, "training": training_step_time(a.batch, a.steps),
           "inference": inference_per_round(a.batch, a.reps)}
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
