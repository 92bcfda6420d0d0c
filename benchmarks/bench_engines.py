"""Engine benchmark, measured side by side in one run (DESIGN: ratios, not timed assertions).

1. Local engine: WMMSE iterations per second on B base-scenario realizations (Tab. II), double and
   single precision, against a straightforward per-BS/per-UE Python-loop implementation vectorized only
   over the batch (benchmarks/loop_wmmse.py).
2. Ray engine: wall time per round and per phase, one actor per agent vs 2 shards.

    python benchmarks/bench_engines.py [--batch 100] [--iters 20] [--ray-rounds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.loop_wmmse import loop_wmmse_iteration  # noqa: E402
from dsim.engine.local import LocalEngine  # noqa: E402
from dsim.registry import algorithm  # noqa: E402
from dsim.scenarios.build import build_scenario, generate_channels  # noqa: E402


def base_scenario(batch: int, precision: str = "double"):
    """(channels, net, air) of ``batch`` Tab. II base-scenario realizations, seed 0."""
    _, ch = generate_channels({"family": "multicell"}, batch, 0, precision)
    s = build_scenario("multicell", ch, None, 0)
    return ch, s.net, s.air


def local_rate(batch, iters, dtype):
    ch, net, air = base_scenario(batch, "double" if dtype == torch.complex128 else "single")
    spec = algorithm("wmmse")
    proto = spec.build(spec.options(init="mrc", rounds=iters), net)
    eng = LocalEngine("float64" if dtype == torch.complex128 else "float32")
    t = time.perf_counter()
    eng.run(proto, net, air)
    dt = time.perf_counter() - t
    V = eng.decision()
    # loop implementation from the same start point (the protocol's round 0), same number of iterations
    eng0 = LocalEngine("float64")
    proto0 = spec.build(spec.options(init="mrc", rounds=0), net)
    eng0.run(proto0, net, air)
    V0 = eng0.decision()
    Vl = [V0[:, i] for i in range(V0.shape[1])]
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    noise, alpha, power = ch.noise_w.to(real), ch.weights.to(real), ch.power_w.to(real)
    t = time.perf_counter()
    for _ in range(iters):
        Vl = loop_wmmse_iteration(ch.H, ch.assign, Vl, noise, alpha, power)
    dl = time.perf_counter() - t
    Vloop = torch.stack(Vl, 1)
    agree = float((air.evaluate(V)[0] - air.evaluate(Vloop)[0]).abs().max() / air.evaluate(V)[0].abs().max())
    return {"iters_per_s_engine": iters / dt, "iters_per_s_loop": iters / dl, "speedup": dl / dt,
            "wsr_rel_diff_engine_vs_loop": agree}


def ray_times(rounds, shards):
    from dsim.engine.ray import RayEngine, ensure_ray

    ensure_ray(num_cpus=2)
    _, net, air = base_scenario(20)
    spec = algorithm("wmmse")
    proto = spec.build(spec.options(rounds=rounds), net)
    eng = RayEngine("float32", shards=shards)
    t = time.perf_counter()
    eng._setup(proto, net)
    setup = time.perf_counter() - t
    eng.close()
    tr = eng.run(proto, net, air)
    eng.close()
    per_phase = {k: v / rounds for k, v in tr.phase_wall_s.items()}
    return {"actor_setup_s": setup, "per_round_s": sum(per_phase.values()), "per_phase_s": per_phase,
            "actors": "one per agent" if shards is None else f"{shards} shards per role"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--ray-rounds", type=int, default=10)
    ap.add_argument("--no-ray", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = {"local_double": local_rate(a.batch, a.iters, torch.complex128),
           "local_single": local_rate(a.batch, a.iters, torch.complex64)}
    if not a.no_ray:
        out["ray_one_actor_per_agent"] = ray_times(a.ray_rounds, None)
        out["ray_2_shards"] = ray_times(a.ray_rounds, 2)
        out["ray_ratio_per_round_1apa_over_2shards"] = (out["ray_one_actor_per_agent"]["per_round_s"]
                                                       / out["ray_2_shards"]["per_round_s"])
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
