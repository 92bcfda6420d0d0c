"""ENGNN paper Ex3 (cooperative beamforming, M = 5 BSs x N = 2, K = 2 UEs): per-sample time and sum rate of
the shipped ENGNN (2 layers = 2 rounds) and of cooperative WMMSE (``coop_wmmse``, 200 iterations) side by
side, in one run, both as dsim protocols on the local engine (float64 wire, one CPU thread), on the same
held-out layouts (seeds >= 100); the ratio of the times is printed.  Paper (Fig. 13b): ENGNN > 1000x faster
than WMMSE (on a GPU).

    OMP_NUM_THREADS=1 python benchmarks/bench_engnn_coop.py [--layouts 100] [--batch 100] [--repeats 3]
        [--wmmse-rounds 200]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from dsim import registry
from dsim.engine.local import LocalEngine
from dsim.scenarios.build import build_scenario, generate_channels

EX3 = {"family": "multicell", "layout": "field", "serve": "all", "n_bs": 5, "n_ue": 2, "bs_antennas": 2,
       "ue_antennas": 1, "min_distance_m": 10.0, "pathloss": "exponent", "pathloss_ref_db": 30.5,
       "pathloss_exponent": 3.67, "bs_power_dbm": 33.0, "noise_dbm": -99.0, "field_m": 2000.0,
       "bs_separation_m": 500.0}


def timed(fn, repeats: int) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` calls after one warm-up."""
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2]


def compare(layouts: int = 100, batch: int = 100, repeats: int = 3, wmmse_rounds: int = 200, seed: int = 100,
            model: str = "shipped") -> dict[str, float]:
    """{'engnn_ms', 'wmmse_ms' (per sample), 'speedup', 'engnn_rate', 'wmmse_rate' (bit/s/Hz), 'pct'}."""
    torch.set_num_threads(1)
    runs = {"engnn": ("engnn_ex3", {"checkpoint": model}), "wmmse": ("coop_wmmse", {"rounds": wmmse_rounds})}
    t_sum = dict.fromkeys(runs, 0.0)
    r_sum = dict.fromkeys(runs, 0.0)
    n = 0
    for c in range((layouts + batch - 1) // batch):
        b = min(batch, layouts - c * batch)
        fam, ch = generate_channels(EX3, b, seed + c, "double")
        s = build_scenario(fam, ch, None, seed + c)
        for key, (name, opts) in runs.items():
            spec = registry.algorithm(name)
            proto = spec.build(spec.options(**opts), s.net)
            out: dict[int, torch.Tensor] = {}

            def go(proto=proto, out=out, s=s) -> None:
                with torch.no_grad():
                    LocalEngine("float64").run(proto, s.net, s.air, on_round=lambda r, d: out.__setitem__(r, d))

            t_sum[key] += timed(go, repeats)
            r_sum[key] += float(s.air.evaluate(out[proto.rounds])[0].sum()) / math.log(2.0)
        n += b
    res = {"engnn_ms": 1e3 * t_sum["engnn"] / n, "wmmse_ms": 1e3 * t_sum["wmmse"] / n,
           "engnn_rate": r_sum["engnn"] / n, "wmmse_rate": r_sum["wmmse"] / n}
    res["speedup"] = res["wmmse_ms"] / res["engnn_ms"]
    res["pct"] = 100 * res["engnn_rate"] / res["wmmse_rate"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layouts", type=int, default=100)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--wmmse-rounds", type=int, default=200)
    ap.add_argument("--model", default="shipped")
    args = ap.parse_args()
    r = compare(args.layouts, args.batch, args.repeats, args.wmmse_rounds, model=args.model)
    print(f"Ex3 M = 5, N = 2, K = 2; {args.layouts} held-out layouts, batches of {args.batch}, 1 thread")
    print(f"{'method':<22}{'ms / sample':>12}{'sum rate [bit/s/Hz]':>22}")
    print(f"{'ENGNN (2 layers)':<22}{r['engnn_ms']:>12.4f}{r['engnn_rate']:>22.3f}")
    print(f"{f'WMMSE ({args.wmmse_rounds} it.)':<22}{r['wmmse_ms']:>12.4f}{r['wmmse_rate']:>22.3f}")
    print(f"ratio WMMSE / ENGNN time: {r['speedup']:.1f}x;  ENGNN at {r['pct']:.1f} % of WMMSE")


if __name__ == "__main__":
    main()
