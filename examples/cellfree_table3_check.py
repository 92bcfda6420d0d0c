"""Reproduction check of ICGNN Tab. III (cell-free power allocation, L = 7 APs, N = 2 antennas, K = 3..7).

Prints the mean sum-SE [bit/s/Hz] of Equal, LSF and WMMSE-ADMM (100 outer iterations, inner ADMM to
convergence) over ``--topologies`` random topologies, each with ``--realizations`` channel draws for the
statistics of eq. (25), next to the paper's values.  Uses only the math layer (no protocol / engine):
AP-local L-MMSE precoding and statistics, CPU combination and power allocation.

    python examples/cellfree_table3_check.py --topologies 100 --realizations 200
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from tqdm import tqdm

from agents.cellfree_alloc import WmmseAdmmOptions
from agents.cellfree_power import equal_power, lsf_power, wmmse_admm_init, wmmse_admm_step
from dsim.scenarios.build import generate_channels
from dsim.scenarios.cellfree import ap_statistics, combine_statistics, lmmse_precoders, sum_se

PAPER = {  # ICGNN Tab. III: K -> (WMMSE-ADMM, Equal, LSF) [bit/s/Hz]
    3: (4.68, 3.57, 4.36), 4: (5.68, 3.98, 5.17), 5: (6.41, 4.21, 5.73), 6: (7.16, 4.44, 6.30),
    7: (7.84, 4.63, 6.80),
}


def run(n_ues: int, topologies: int, realizations: int, seed: int, outer: int,
        csi: str) -> tuple[float, float, float, dict]:
    _, ch = generate_channels({"family": "cellfree", "n_aps": 7, "ap_antennas": 2, "n_ues": n_ues,
                               "realizations": realizations, "csi": csi}, topologies, seed + n_ues, "double")
    w = lmmse_precoders(ch.h_hat_per_ap, ch.ue_power_w, ch.noise_w, ch.error_cov_per_ap())  # AP-local
    a, Bmat = combine_statistics(*ap_statistics(ch.h_per_ap, w))  # AP uploads -> CPU
    se_eq = sum_se(a, Bmat, equal_power(ch.batch, n_ues, ch.power_w), ch.noise_w, ch.tau_c, ch.tau_d).sum(-1)
    se_lsf = sum_se(a, Bmat, lsf_power(ch.beta, ch.power_w), ch.noise_w, ch.tau_c, ch.tau_d).sum(-1)
    state = wmmse_admm_init(a, Bmat, ch.noise_w, ch.power_w, tau_c=ch.tau_c, tau_d=ch.tau_d)
    hist, used_inner, max_inner = [state.se], 0, WmmseAdmmOptions().max_inner
    for _ in range(outer):  # one call per outer iteration, as a protocol round would make it
        state = wmmse_admm_step(state, a, Bmat, ch.noise_w, ch.power_w, max_inner=max_inner, tau_c=ch.tau_c,
                                tau_d=ch.tau_d)
        hist.append(state.se)
        used_inner = max(used_inner, int(state.inner_iters.max()))
    p, steps = state.p, torch.diff(torch.stack(hist, dim=1), dim=1)
    se_w = sum_se(a, Bmat, p, ch.noise_w, ch.tau_c, ch.tau_d).sum(-1)
    info = {
        "max_power_excess_w": float((p.sum(1) - ch.power_w).max()),
        "min_step": float(steps.min()),
        "max_inner": used_inner,
        "lsf_ge_equal": float((se_lsf >= se_eq).double().mean()),
        "wmmse_ge_lsf": float((se_w >= se_lsf).double().mean()),
    }
    return float(se_w.mean()), float(se_eq.mean()), float(se_lsf.mean()), info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--topologies", type=int, default=100)
    ap.add_argument("--realizations", type=int, default=200)
    ap.add_argument("--outer", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--users", type=int, nargs="*", default=[3, 4, 5, 6, 7])
    ap.add_argument("--csi", choices=["perfect", "mmse"], default="perfect")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"L=7, N=2, csi={args.csi}, {args.topologies} topologies x {args.realizations} draws, "
          "sum-SE [bit/s/Hz] "
          "(ours / paper Tab. III, deviation)")
    for k in tqdm(args.users, desc="K", unit="row"):
        t0 = time.perf_counter()
        w, e, lsf, info = run(k, args.topologies, args.realizations, args.seed, args.outer, args.csi)
        pw, pe, pl = PAPER.get(k, (float("nan"),) * 3)
        tqdm.write(f"K={k}: WMMSE-ADMM {w:.2f} / {pw:.2f} ({100 * (w / pw - 1):+.1f}%)  "
                   f"Equal {e:.2f} / {pe:.2f} ({100 * (e / pe - 1):+.1f}%)  "
                   f"LSF {lsf:.2f} / {pl:.2f} ({100 * (lsf / pl - 1):+.1f}%)  "
                   f"[{time.perf_counter() - t0:.0f} s; max power excess {info['max_power_excess_w']:.1e} W; "
                   f"min outer step {info['min_step']:.1e}; max inner ADMM iterations {info['max_inner']}; "
                   f"LSF>=Equal in {100 * info['lsf_ge_equal']:.0f}%, "
                   f"WMMSE>=LSF in {100 * info['wmmse_ge_lsf']:.0f}% of topologies]")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
