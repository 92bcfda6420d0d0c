"""Federated fine-tuning of the shipped GCN-WMMSE across four multicell sites (GCN-WMMSE paper Sec. IV-D,
Tab. IX-X, as a federation): runs ``scenarios/federated.yaml`` (or another finetune YAML) and prints, per
method, the relative WSR of every site on its held-out samples, the fl bytes it cost and its simulated time,
then the hotspot site's gain over transfer only next to the bytes of the pooled alternative.

    python examples/federated_finetune.py [--config scenarios/federated.yaml] [--engine local|ray]
                                          [--out runs/federated] [--wire float16]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dsim.federated import finetune, summary_lines  # noqa: E402
from dsim.fl_config import load_finetune  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="scenarios/federated.yaml")
    ap.add_argument("--engine", choices=["local", "ray"], default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--wire", default=None, help="wire policy of the parameters (float32, float16, q8, ...)")
    ap.add_argument("--hotspot", default="hotspot", help="name of the site whose gain is reported")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sets = [f"federated.wire={args.wire}"] if args.wire else []
    cfg = load_finetune(args.config, sets, out=args.out, engine=args.engine)
    results = finetune(cfg)
    print("\n".join(summary_lines(results)))
    names = [s.name for s in cfg.federated.sites]
    by = {r.label: r for r in results}
    if args.hotspot in names and "transfer" in by:
        i = names.index(args.hotspot)
        base = by["transfer"].rel[-1, i]
        print(f"\n{args.hotspot}: transfer only {base:.2f} %")
        for r in results:
            if r.label != "transfer":
                print(f"  {r.label:>12}: {r.rel[-1, i]:.2f} % ({r.rel[-1, i] - base:+.2f} points), "
                      f"fl bytes {int(r.cum_bytes[-1]):,}")
    print(f"run directory: {cfg.output}")


if __name__ == "__main__":
    main()
