"""WCGCN inference on a K = 1000 beamforming layout (N_t = 2, the K = 50 density: 4472 m field, edges within
500 m), one CPU thread, float32: time per layout of

* ``dsim protocol``  -- the ``wcgcn`` protocol run by the local engine (3 rounds: messages over the ~36 K
  present pair edges, receiver-side MLP1, declared MAX, MLP2), features included, evaluation excluded;
* ``edge-list layers`` -- the same three layers as one function on the edge list (what the protocol computes,
  without the engine);
* ``dense adjacency`` -- a straightforward dense implementation of the same layer: MLP1 on all K x K
  (sender, receiver) pairs, masked max over senders (the adjacency as a K x K mask).

All three give the same beamformers (checked).  The authors' PyG implementation: 14.8 ms per layout on one
CPU thread (issue 10); target <= 7 ms for ours.

    OMP_NUM_THREADS=1 python benchmarks/bench_wcgcn.py [--repeats 20] [--model shipped:d2d_bf|untrained]
"""

from __future__ import annotations

import argparse
import time

import torch

from dsim import registry
from dsim.engine.local import LocalEngine
from dsim.scenarios.build import build_scenario, generate_channels


def timed(fn, repeats: int) -> tuple[float, float]:
    """(min, median) wall seconds of ``fn()`` over ``repeats`` calls after one warm-up."""
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    ts.sort()
    return ts[0], ts[len(ts) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--model", default="shipped:d2d_bf")
    ap.add_argument("--pairs", type=int, default=1000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from agents.wcgcn import as_complex, as_reals, ball, channel_feature, edge_constant, edge_messages, node_update

    scn = {"family": "interference", "layout": "d2d", "n_pairs": args.pairs, "tx_antennas": 2, "d_min_m": 2.0,
           "d_max_m": 65.0, "weights": "fixed", "range_m": 500.0}
    t = time.perf_counter()
    fam, ch = generate_channels(scn, 1, 500, "single")
    gen_s = time.perf_counter() - t
    s = build_scenario(fam, ch, None, 500)
    spec = registry.algorithm("wcgcn")
    opts = spec.options(checkpoint=args.model) if args.model != "untrained" else spec.options(checkpoint="untrained")
    proto = spec.build(opts, s.net)
    params = proto.module
    es = s.net.edges["pair"]
    K = args.pairs
    print(f"K = {K}, present edges {int(es.mask.sum())} (mean degree {float(es.mask.sum()) / K:.1f}); "
          f"generator {gen_s * 1e3:.0f} ms for this layout")

    out = {}

    def run_protocol() -> None:
        LocalEngine("float32").run(proto, s.net, s.air, on_round=lambda r, d: out.__setitem__(r, d))

    # inputs of the layer functions (what every node holds), float32
    loc = s.net.local["bs"]
    s_own, s_edge = (float(v) if float(v) > 0 else 1.0 for v in params.scale)
    c2 = loc["p_max"] / loc["sigma2"]
    own = channel_feature(loc["h_own"], c2, s_own)[0]                 # (K, 2) complex
    src, dst = es.src, es.dst
    e_in = as_reals(channel_feature(loc["H_rx"][0, dst, src], c2[0, dst], s_edge))  # (E, 4) f(h_ji) at Rx i
    e_rev = as_reals(channel_feature(loc["H_rx"][0, src, dst], c2[0, src], s_edge))  # (E, 4) f(h_ij), sent by j
    edge = params.edge_feature  # which channels form e_ji (agents.wcgcn.BF_EDGE_FEATURES)
    e_recv = e_in[:, :0] if edge == "out" else e_in
    x0 = torch.cat([as_reals(torch.full_like(own, 2 ** -0.5)), as_reals(own)], -1)   # (K, 8)
    order_slot = torch.zeros_like(dst)
    deg = torch.bincount(dst, minlength=K)
    start = torch.cumsum(deg, 0) - deg
    order_slot = torch.arange(dst.numel()) - start[dst]  # edges are sorted by receiver (dst-major)
    dmax = int(deg.max())

    def edge_layers() -> torch.Tensor:
        """The protocol's layer functions (agents.wcgcn) on the whole edge list, without the engine."""
        x = x0
        const = edge_constant(params, e_recv)
        for _ in range(3):
            sent = x[src] if edge == "in" else torch.cat([x[src], e_rev], -1)
            m = edge_messages(params, sent, const, x[dst] if params.receiver_state else None)
            pad = torch.full((K * dmax, m.shape[1]), -torch.inf).index_copy_(0, dst * dmax + order_slot, m)
            agg = pad.view(K, dmax, -1).amax(1).clamp_min(0.0)  # MLP1 ends in ReLU: empty rows -> 0
            x = node_update(params, x, agg)
        return x

    adj = torch.zeros(K, K, dtype=torch.bool)
    adj[dst, src] = True  # adj[i, j]: edge j -> i
    H_dense = as_reals(channel_feature(loc["H_rx"][0], c2[0][:, None], s_edge))  # (K i, K j, 4) f(h_ji) at Rx i
    H_rev = H_dense.transpose(0, 1)  # [i, j] = f(h_ij) as Rx j measured it
    E_dense = {"in": H_dense, "out": H_rev, "both": torch.cat([H_dense, H_rev], -1)}[edge]

    def dense_layers() -> torch.Tensor:
        x = x0
        for _ in range(3):
            z = torch.cat([x[None, :, :].expand(K, K, -1), E_dense]  # [i, j] = (x_j, e_ji[, x_i])
                          + ([x[:, None, :].expand(K, K, -1)] if params.receiver_state else []), -1)
            m = params.mlp1(z).masked_fill(~adj[..., None], -torch.inf).amax(1).clamp_min(0.0)
            x = torch.cat([ball(params.mlp2(torch.cat([x, m], -1))), x[:, 4:]], -1)
        return x

    with torch.no_grad():
        run_protocol()
        v_proto = out[3][0, :, :, 0]
        a, b = edge_layers(), dense_layers()
        P = loc["p_max"][0, 0].sqrt()
        assert torch.allclose(P * as_complex(a[:, :4]), v_proto, rtol=1e-4, atol=1e-5 * float(P))
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
        rows = [("dsim protocol (local engine)", timed(run_protocol, args.repeats)),
                ("edge-list layers", timed(edge_layers, args.repeats)),
                ("dense adjacency", timed(dense_layers, max(3, args.repeats // 4)))]
    print(f"{'implementation':32s} {'min ms':>8s} {'median ms':>10s}")
    for name, (mn, med) in rows:
        print(f"{name:32s} {mn * 1e3:8.2f} {med * 1e3:10.2f}")
    print(f"dense / edge-list (median): {rows[2][1][1] / rows[1][1][1]:.1f}x; authors' PyG: 14.8 ms; target <= 7 ms")


if __name__ == "__main__":
    main()
