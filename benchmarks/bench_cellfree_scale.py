"""Cell-free at scale on the Ray engine (sharded): L = 100 APs, K = 40 UEs, N = 4, end to end.

Reports wall time of scenario generation, actor start-up, every phase (per round) and the total, for
equal, lsf and wmmse_admm (and icgnn when registered), side by side in one run, plus the fronthaul
ledger.  Defaults are the issue's; shrink with flags on a busy machine.

    python benchmarks/bench_cellfree_scale.py [--aps 100 --ues 40 --antennas 4 --batch 2 --draws 50
                                              --rounds 10 --shards 4]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dsim.engine.ray import RayEngine, ensure_ray  # noqa: E402
from dsim.registry import algorithm, algorithm_names  # noqa: E402
from dsim.scenarios.build import build_scenario, generate_channels  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--aps", type=int, default=100)
    ap.add_argument("--ues", type=int, default=40)
    ap.add_argument("--antennas", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--draws", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--shards", type=int, default=4)
    a = ap.parse_args()
    torch.set_num_threads(1)
    out: dict = {"config": vars(a)}
    t = time.perf_counter()
    _, ch = generate_channels({"family": "cellfree", "n_aps": a.aps, "ap_antennas": a.antennas, "n_ues": a.ues,
                               "realizations": a.draws}, a.batch, 0, "double")
    s = build_scenario("cellfree", ch, None, 0)
    net, air = s.net, s.air
    out["generate_and_air_s"] = time.perf_counter() - t
    ensure_ray(num_cpus=2)
    for name in algorithm_names("cellfree"):
        spec = algorithm(name)
        opts = {"rounds": a.rounds} if "rounds" in spec.options.model_fields else {}
        proto = spec.build(spec.options(**opts), net)
        eng = RayEngine("float32", shards=a.shards)
        t = time.perf_counter()
        eng._setup(proto, net)
        setup = time.perf_counter() - t
        eng.close()
        trace = eng.run(proto, net, air)
        sum_se_final = float(air.evaluate(eng.decision())[0].mean())  # the decision after the last round
        eng.close()
        fh = {}
        for r in trace.ledger:
            if r.link == "fh":
                fh[r.phase] = fh.get(r.phase, 0) + r.bytes / net.batch
        out[name] = {"actor_setup_s": setup, "total_s": trace.wall_s, "phase_s": trace.phase_wall_s,
                     "rounds": proto.rounds, "sum_se_final": sum_se_final, "fh_bytes_per_realization": fh}
        print(name, json.dumps(out[name]), flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
