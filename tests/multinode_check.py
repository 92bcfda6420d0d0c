"""Two-node Ray cluster on this machine (head + worker node, each with its own resources): a scenario run
on it with ``engine.address`` and ``placement: spread`` must spread the shards over both nodes and give
numbers and a ledger identical to the local engine.  Run by ``tests/test_ray_engine.py`` in a subprocess
(a process joins one Ray instance, and the test session already has its own); prints one JSON line."""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def main() -> int:
    import ray
    import torch
    from ray.cluster_utils import Cluster

    from dsim import registry
    from dsim.config import config_from_dict
    from dsim.run import make_engine
    from dsim.scenarios.build import scenario_from_config

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()  # both nodes registered before any actor is placed
    try:
        cfg = config_from_dict({
            "seed": 2, "batch": 2, "scenario": {"family": "multicell"},
            "algorithms": [{"name": "wmmse", "rounds": 3}],
            "engine": {"kind": "ray", "address": cluster.address, "shards": 2, "placement": "spread"},
            "wire": {"dtype": "float32"}, "faults": {"message_loss": 0.2, "missing_links": 0.2},
            "output": "unused"})
        scn = scenario_from_config(cfg)
        spec = registry.algorithm("wmmse")
        out = {}
        for kind in ("local", "ray"):
            engine = make_engine(cfg.model_copy(update={"engine": cfg.engine.model_copy(update={"kind": kind})}))
            proto = spec.build(cfg.algorithms[0].options, scn.net)
            dec: list = []
            trace = engine.run(proto, scn.net, scn.air, on_round=lambda r, V, dec=dec: dec.append(V.clone()))
            nodes = sorted({n for ns in getattr(engine, "nodes", {}).values() for n in ns})
            engine.close()
            out[kind] = (torch.stack(dec), [r.as_dict() for r in trace.ledger], nodes)
        alive = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
        print(json.dumps({"equal": bool(torch.equal(out["local"][0], out["ray"][0])),
                          "ledger_equal": out["local"][1] == out["ray"][1],
                          "nodes_used": len(out["ray"][2]), "nodes_alive": len(alive)}))
    finally:
        ray.shutdown()
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
