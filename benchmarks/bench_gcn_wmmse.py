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

from dsim.engine.local import LocalEngine  # noqa: E402
from dsim.learn import forward_loss, get_learnable, scenario_sampler  # noqa: E402
from dsim.registry import algorithm  # noqa: E402

sample = scenario_sampler({"family": "multicell"})  # Tab. II base scenario, complex128


def training_step_time(batch: int, steps: int) -> dict:
    learn = get_learnable("gcn_wmmse", {"checkpoint": "untrained"})
    hp = learn.train_defaults  # Tab. I
    opt = torch.optim.AdamW(learn.module.parameters(), lr=hp["lr"], betas=hp["betas"], weight_decay=hp["weight_decay"])
    times, fwd = [], []
    for t in range(steps + 1):  # step 0 is a warm-up
        net, air = sample(batch, 1000 + t)
        t0 = time.perf_counter()
        loss, _ = forward_loss(learn, net, air)
        t1 = time.perf_counter()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(learn.module.parameters(), hp["clip"])
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
        spec = algorithm(name)
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
