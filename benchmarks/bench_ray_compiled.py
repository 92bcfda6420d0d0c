"""Ray compiled graphs (``experimental_compile``) against ordinary actor calls for dsim's per-round call graph.

Issue 8 asks whether Ray's compiled graphs cut the per-call cost of the fixed per-round call graph enough to
be worth an engine option.  This benchmark answers it without touching the engine: it replays the call
pattern of one distributed-WMMSE round with 2 shards per role (the Ray engine's plan, see
``dsim.engine.ray``) on stand-in actors that do no computation, so only the transport differs:

* ``ordinary``: the UE actors' calls return one object per receiving BS actor (plus a completion marker),
  those refs go straight into the BS actors' calls, the driver waits once for the BS outputs -- what the
  engine submits every round;
* ``compiled``: the same graph built with ``ray.dag`` and compiled once (shared-memory channels), executed
  once per round;
* ``bare``: one no-op call to each of the 4 actors and a ``ray.get`` of all of them (the transport
  benchmark's unit, ``bench_ray_transport.py``).

Payloads are the sizes dsim sends in that round (measured from a real run of the base multicell scenario at
``--batch``): each UE actor sends one bundle per BS actor per uplink phase, each BS actor returns its
decision and next pilots.  Medians over ``--reps`` repetitions of ``--rounds`` rounds, after a warm-up.

    python benchmarks/bench_ray_compiled.py [--batch 20] [--rounds 50] [--reps 5]
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


class Stub:
    """A stand-in host actor: returns payloads of given sizes, computes nothing."""

    def __init__(self, sizes: list[int]) -> None:
        self.blobs = [b"\0" * n for n in sizes]

    def noop(self) -> None:
        """A bare call."""

    def step(self, _round: int, *inbox: bytes) -> tuple[bytes, ...]:
        """One round's call: consume the inbox, return this actor's bundles."""
        return tuple(self.blobs)

    def step_ordinary(self, _round: int, *inbox: bytes) -> tuple:
        """As :meth:`step`, plus the completion marker the engine waits on."""
        return tuple(self.blobs) + (None,)


def round_sizes(batch: int, wire: str) -> tuple[list[int], list[int]]:
    """Bytes of one round per UE actor (one bundle per BS actor and uplink phase) and per BS actor (its
    decision and pilots), from a real 2-shard run of the base multicell scenario."""
    _, ch = generate_channels({"family": "multicell"}, batch, 0, "double")
    scn = build_scenario("multicell", ch, None, 0)
    spec = algorithm("wmmse")
    rounds = 3
    proto = spec.build(spec.options(rounds=rounds), scn.net)
    engine = RayEngine(wire, shards=2)
    try:
        engine.run(proto, scn.net, scn.air, on_round=lambda r, V: None)
        sent = engine.sent_bytes()
    finally:
        engine.close()
    ue_bundle = [max(1, sent[name] // (rounds * 4)) for name in ("ul_uwu", "ul_uw")]  # 2 UE x 2 BS actors
    info = scn.net.info  # a BS actor returns V (complex128) of about half the UEs twice: decision and pilots
    v_bytes = 16 * batch * (info["n_ue"] // 2) * info["bs_antennas"] * info["ue_antennas"]
    return [ue_bundle[0], ue_bundle[0], ue_bundle[1], ue_bundle[1]], [v_bytes, v_bytes]


def measure(batch: int, rounds: int, reps: int, wire: str) -> dict:
    import ray
    from ray.dag import InputNode, MultiOutputNode

    ue_sizes, bs_sizes = round_sizes(batch, wire)
    Actor = ray.remote(num_cpus=0)(Stub)
    ue = [Actor.remote(ue_sizes) for _ in range(2)]
    bs = [Actor.remote(bs_sizes) for _ in range(2)]
    actors = ue + bs
    ray.get([a.noop.remote() for a in actors])
    n_ue, n_bs = len(ue_sizes), len(bs_sizes)
    ue_h = [a.step_ordinary.options(num_returns=n_ue + 1) for a in ue]
    bs_h = [a.step_ordinary.options(num_returns=n_bs + 1) for a in bs]

    def ordinary(r: int) -> None:
        out = [h.remote(r) for h in ue_h]
        # bundle j of a UE actor goes to BS actor j % 2 (phase uwu: 0, 1; phase uw: 2, 3)
        got = [h.remote(r, *[o[q] for o in out for q in (j, j + 2)]) for j, h in enumerate(bs_h)]
        ray.get([o[-1] for o in out] + [x for g in got for x in g[:-1]])

    def bare(_r: int) -> None:
        for _ in range(5):  # the transport benchmark's unit: one fan-out per phase of the round
            ray.get([a.noop.remote() for a in actors])

    def timed(fn) -> float:
        fn(0)
        runs = []
        for _ in range(reps):
            t = time.perf_counter()
            for r in range(rounds):
                fn(r)
            runs.append((time.perf_counter() - t) / rounds)
        return statistics.median(runs)

    out = {"batch": batch, "ue_bundle_bytes": ue_sizes, "bs_output_bytes": bs_sizes,
           "ordinary_round_s": timed(ordinary), "bare_5_fanouts_s": timed(bare)}
    compiled = None
    try:
        with InputNode() as inp:
            u = [a.step.options(num_returns=n_ue).bind(inp) for a in ue]
            b = [a.step.options(num_returns=n_bs).bind(inp, *[o[q] for o in u for q in (j, j + 2)])
                 for j, a in enumerate(bs)]
            dag = MultiOutputNode([x for g in b for x in g])
        t = time.perf_counter()
        compiled = dag.experimental_compile()
        out["compile_s"] = time.perf_counter() - t
        out["compiled_round_s"] = timed(lambda r: ray.get(compiled.execute(r)))
        out["compiled_over_ordinary"] = out["compiled_round_s"] / out["ordinary_round_s"]
    except Exception as exc:  # report, not fail: compiled graphs are experimental in Ray
        out["compiled_error"] = f"{type(exc).__name__}: {exc}"
    finally:
        if compiled is not None:
            compiled.teardown()
        for a in actors:
            ray.kill(a)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--wire", default="float32")
    ap.add_argument("--num-cpus", type=int, default=2)
    a = ap.parse_args()
    ensure_ray(num_cpus=a.num_cpus)
    print(json.dumps(measure(a.batch, a.rounds, a.reps, a.wire), indent=2))


if __name__ == "__main__":
    main()
