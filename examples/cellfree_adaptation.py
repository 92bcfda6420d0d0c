"""ICGNN with and without adaptation on every row of the paper's Tab. III-V and on scenarios/cellfree.yaml.

For each row (Tab. III: L = 7, N = 2, K = 3..7; Tab. IV: N = 2, K = 3, L = 6..10; Tab. V: L = 7, K = 3,
N = 1..4; cellfree.yaml: L = 16, N = 2, K = 8) this draws ``--topologies`` topologies (100 channel draws
each) exactly as ``dsim run`` does (``scenario_from_config``: same seed, same topologies as
``examples/cellfree_tables.py`` and a run YAML with that seed), runs WMMSE-ADMM (100 outer iterations) and
the shipped ICGNN under each set of options given (``--variants NAME='{"adapt_steps": 4, ...}'``; always
also ``none``: no adaptation) on the local engine, and prints / writes (``--out``, JSON) the ICGNN sum-SE
as % of WMMSE-ADMM per row.  Every adaptation draws its own samples (``dsim.learn.adapt``), never the
evaluated topologies.

Seeds: ``--seed S`` uses S for every row (the held-out check of the shipped model: 909), ``--seed-base B``
uses B + row index (validation: 8800+).

    python examples/cellfree_adaptation.py --seed 909 --variants 'adapt4={"adapt_steps": 4}'
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dsim import registry  # noqa: E402
from dsim.config import config_from_dict  # noqa: E402
from dsim.evaluate import evaluate_rounds  # noqa: E402
from dsim.results import write_json  # noqa: E402
from dsim.scenarios.build import scenario_from_config  # noqa: E402

ROWS = ([("III", 7, 2, k) for k in range(3, 8)] + [("IV", n, 2, 3) for n in range(6, 11)]
        + [("V", 7, n, 3) for n in range(1, 5)] + [("cellfree.yaml", 16, 2, 8)])


def final_mean(name: str, options: dict, net, air) -> float:
    """Mean final sum-SE [bit/s/Hz] of algorithm ``name`` with ``options`` (adaptation, if any, included)."""
    spec = registry.algorithm(name)
    proto = spec.build(spec.options(**options), net)
    with torch.no_grad():
        return float(evaluate_rounds(proto, net, air, [proto.rounds])[proto.rounds].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    seeds = ap.add_mutually_exclusive_group(required=True)
    seeds.add_argument("--seed", type=int, help="one seed for every row")
    seeds.add_argument("--seed-base", type=int, help="row r uses seed-base + r")
    ap.add_argument("--topologies", type=int, default=100)
    ap.add_argument("--rows", type=int, nargs="*", default=list(range(len(ROWS))), help="row indices (0..14)")
    ap.add_argument("--variants", nargs="*", default=[], help="NAME=JSON options of icgnn")
    ap.add_argument("--out", help="JSON file of the results")
    a = ap.parse_args()
    torch.set_num_threads(1)
    variants = {"none": {}} | {v.split("=", 1)[0]: json.loads(v.split("=", 1)[1]) for v in a.variants}
    rows = []
    for r in tqdm(a.rows, desc="rows", unit="row"):
        table, n_aps, n_ant, n_ues = ROWS[r]
        seed = a.seed if a.seed is not None else a.seed_base + r
        t0 = time.perf_counter()
        cfg = config_from_dict({
            "seed": seed, "precision": "double", "batch": a.topologies,
            "scenario": {"family": "cellfree", "n_aps": n_aps, "ap_antennas": n_ant, "n_ues": n_ues,
                         "realizations": 100},
            "algorithms": [{"name": "icgnn"}], "engine": {"kind": "local"}, "wire": {"dtype": "float64"}})
        scn = scenario_from_config(cfg)
        w = final_mean("wmmse_admm", {"rounds": 100}, scn.net, scn.air)
        row = {"table": table, "L": n_aps, "N": n_ant, "K": n_ues, "seed": seed, "wmmse_admm": w}
        row |= {k: 100 * final_mean("icgnn", v, scn.net, scn.air) / w for k, v in variants.items()}
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        rows.append(row)
        if a.out:  # rewritten after every row: an interrupted run keeps the rows it finished
            write_json(Path(a.out), {"topologies": a.topologies, "variants": variants, "rows": rows})
        tqdm.write(f"{table:>13} L={n_aps:2d} N={n_ant} K={n_ues}  WMMSE-ADMM {w:6.3f}  "
                   + "  ".join(f"{k} {row[k]:.2f} %" for k in variants))
        sys.stdout.flush()
    print("min over rows: " + "  ".join(f"{k} {min(x[k] for x in rows):.2f} %" for k in variants))


if __name__ == "__main__":
    main()
