"""Ray transport benchmark: a dsim round against bare Ray fan-outs to the same actors, side by side.

For the base multicell scenario (Tab. II: 3 BSs, 12 UEs) and distributed WMMSE (5 phases per round: the
precoded pilots, the UE update, two uplink messages, the BS update), with one actor per agent and with
2 shards per role, in one Ray session on the pool the engine keeps for the run:

* ``dsim``: wall time of one round as the runner runs it (the decision fetched after every round);
* ``bare``: one no-op call to every actor of the pool and a ``ray.get`` of all of them -- the cheapest
  possible synchronous phase -- repeated once per phase of the round.

The ratio dsim / bare per round is dsim's cost per phase over a bare fan-out's (issue target <= 1.5).
Medians over ``--reps`` repetitions, after a warm-up.

    python benchmarks/bench_ray_transport.py [--batch 20] [--rounds 10] [--reps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dsim.engine.ray import RayEngine, ensure_ray  # noqa: E402
from dsim.registry import algorithm  # noqa: E402
from dsim.scenarios.build import build_scenario, generate_channels  # noqa: E402


def measure(batch: int, rounds: int, reps: int, shards: int | None, wire: str) -> dict:
    import ray

    _, ch = generate_channels({"family": "multicell"}, batch, 0, "double")
    scn = build_scenario("multicell", ch, None, 0)
    spec = algorithm("wmmse")
    proto = spec.build(spec.options(rounds=rounds), scn.net)
    engine = RayEngine(wire, shards=shards)
    try:
        engine.run(proto, scn.net, scn.air, on_round=lambda r, V: None)  # starts the pool; warm-up
        actors = [a for acts in engine.actors.values() for a in acts]
        phases = len(proto.phases)
        dsim, bare = [], []
        for _ in range(reps):
            t = time.perf_counter()
            engine.run(proto, scn.net, scn.air, on_round=lambda r, V: None)
            dsim.append((time.perf_counter() - t) / rounds)
            t = time.perf_counter()
            for _ in range(rounds * phases):
                ray.get([a.noop.remote() for a in actors])
            bare.append((time.perf_counter() - t) / rounds)
        d, b = statistics.median(dsim), statistics.median(bare)
        return {"actors": len(actors), "phases_per_round": phases, "dsim_round_s": d, "bare_round_s": b,
                "dsim_per_phase_s": d / phases, "bare_fanout_s": b / phases, "ratio": d / b}
    finally:
        engine.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--wire", default="float32")
    ap.add_argument("--num-cpus", type=int, default=2)
    a = ap.parse_args()
    ensure_ray(num_cpus=a.num_cpus)
    out = {"one_actor_per_agent": measure(a.batch, a.rounds, a.reps, None, a.wire),
           "2_shards": measure(a.batch, a.rounds, a.reps, 2, a.wire)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
