"""Ray transport benchmark: a dsim round against bare Ray fan-outs to the same actors, side by side.

For the base multicell scenario (Tab. II: 3 BSs, 12 UEs) and distributed WMMSE (5 phases per round: the
precoded pilots, the UE update, two uplink messages, the BS update), with one actor per agent and with
2 shards per role, in one Ray session on the pool the engine keeps for the run:

* ``dsim``: wall time of one round as the runner runs it (the decision fetched after every round);
* ``bare``: one no-op call to every actor of the pool and a ``ray.get`` of all of them -- the cheapest
  possible synchronous phase -- repeated once per phase of the round.

The ratio dsim / bare per round is dsim's cost per phase over a bare fan-out's (issue target <= 1.5).
dsim's round also computes: the actors' WMMSE steps (per phase the busiest actor, from the engine's
timings) and the driver's air (the pilots' measurements); ``transport_ratio`` is what is left -- Ray calls,
msgpack encoding and decoding, waiting -- over the bare fan-outs.  Medians over ``--reps`` repetitions,
after a warm-up; at ``--batch`` and at batch 1 (where the computation is small).  Each configuration is run
twice: with ordinary actor calls (the default engine) and with ``engine.compiled`` (the steady round as a
Ray compiled graph; its one-time compilation happens in the warm-up).  The bare fan-outs are ordinary calls
in both: the issue's unit.

    python benchmarks/bench_ray_transport.py [--batch 20] [--rounds 10] [--reps 5] [--modes ordinary compiled]
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


def measure(batch: int, rounds: int, reps: int, shards: int | None, wire: str, compiled: bool = False) -> dict:
    import ray

    _, ch = generate_channels({"family": "multicell"}, batch, 0, "double")
    scn = build_scenario("multicell", ch, None, 0)
    air_s = [0.0]
    measure_air = scn.air.measure

    def timed_measure(name, signals):  # the driver's physics (the air), timed to separate it out
        t = time.perf_counter()
        out = measure_air(name, signals)
        air_s[0] += time.perf_counter() - t
        return out

    scn.air.measure = timed_measure
    spec = algorithm("wmmse")
    proto = spec.build(spec.options(rounds=rounds), scn.net)
    engine = RayEngine(wire, shards=shards, compiled=compiled)
    try:
        engine.run(proto, scn.net, scn.air, on_round=lambda r, V: None)  # starts the pool; warm-up
        actors = [a for acts in engine.actors.values() for a in acts]
        phases = len(proto.phases)
        dsim, bare, compute, air = [], [], [], []
        for _ in range(reps):
            air_s[0] = 0.0
            t = time.perf_counter()
            trace = engine.run(proto, scn.net, scn.air, on_round=lambda r, V: None)
            dsim.append((time.perf_counter() - t) / rounds)
            compute.append(sum(trace.phase_wall_s.values()) / rounds)  # per phase the busiest actor
            air.append(air_s[0] / rounds)
            t = time.perf_counter()
            for _ in range(rounds * phases):
                ray.get([a.noop.remote() for a in actors])
            bare.append((time.perf_counter() - t) / rounds)
        d, b, c, a = (statistics.median(x) for x in (dsim, bare, compute, air))
        return {"batch": batch, "actors": len(actors), "phases_per_round": phases, "dsim_round_s": d,
                "bare_round_s": b, "ratio": d / b, "actor_compute_round_s": c, "driver_air_round_s": a,
                "transport_round_s": d - c - a, "transport_ratio": (d - c - a) / b}
    finally:
        engine.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--wire", default="float32")
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--modes", nargs="+", default=["ordinary", "compiled"], choices=["ordinary", "compiled"])
    a = ap.parse_args()
    ensure_ray(num_cpus=a.num_cpus)
    out = {f"{name}_batch{b}_{mode}": measure(b, a.rounds, a.reps, shards, a.wire, mode == "compiled")
           for b in (a.batch, 1) for name, shards in (("one_actor_per_agent", None), ("2_shards", 2))
           for mode in a.modes}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
