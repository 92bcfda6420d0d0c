"""Multicell channels -> (Network of local knowledge, air interface).

Roles ``bs`` (K agents) and ``ue`` (I agents).  Edge sets (link class ``ul``):

* ``ue>bs``       -- every (UE i, BS k) pair, edge id ``i*K + k``; present where BS k has CSI of UE i
  (range cut-off, minus missing links; the serving pair is always present).
* ``ue>bs:serve`` -- (UE i, serving BS a(i)), edge id ``i``.

Local data (only what the agent may know):

* ``bs``: ``H`` (B, K, I, N, M) channels of the UEs in range (zeros elsewhere, by reciprocity from
  uplink pilots), ``csi`` (B, K, I) bool, ``alpha`` (B, K, I) WSR weights, ``noise`` (B, K, I) W,
  ``power`` (B, K) W.
* ``ue``: ``alpha`` (B, I), ``noise`` (B, I) W.
"""

from __future__ import annotations

import torch

from dsim.air import MulticellAir
from dsim.faults import FaultModel
from dsim.network import EdgeSet, Network


def multicell_network(ch, faults: FaultModel | None = None, seed: int = 0) -> tuple[Network, MulticellAir]:
    """Build the network and air of a :class:`dsim.scenarios.multicell.MulticellChannels` batch."""
    faults = faults or FaultModel()
    H, assign = ch.H, ch.assign.to(torch.int64)
    B, I, K, N, M = H.shape
    real = torch.float64 if H.dtype == torch.complex128 else torch.float32
    serving = torch.zeros(B, I, K, dtype=torch.bool)
    serving[:, torch.arange(I), assign] = True
    present = ch.inrange.to(torch.bool) & faults.link_present((B, I, K), serving)
    present |= serving
    ue_idx = torch.arange(I).repeat_interleave(K)
    bs_idx = torch.arange(K).repeat(I)
    edges = {
        "ue>bs": EdgeSet("ue>bs", "ue", "bs", "ul", ue_idx, bs_idx, present.reshape(B, I * K)),
        "ue>bs:serve": EdgeSet("ue>bs:serve", "ue", "bs", "ul", torch.arange(I), assign.clone(),
                               torch.ones(B, I, dtype=torch.bool)),
    }
    csi = present.permute(0, 2, 1)  # (B, K, I)
    Hb = H.permute(0, 2, 1, 3, 4) * csi[..., None, None].to(H.dtype)  # (B, K, I, N, M)
    w = ch.weights.to(real)
    nz = ch.noise_w.to(real)
    local = {
        "bs": {"H": Hb, "csi": csi, "alpha": w.reshape(1, 1, I).expand(B, K, I).clone(),
               "noise": nz.reshape(1, 1, I).expand(B, K, I).clone(),
               "power": ch.power_w.to(real).reshape(1, K).expand(B, K).clone()},
        "ue": {"alpha": w.reshape(1, I).expand(B, I).clone(), "noise": nz.reshape(1, I).expand(B, I).clone()},
    }
    info = {"family": "multicell", "batch": B, "n_bs": K, "n_ue": I, "bs_antennas": M, "ue_antennas": N,
            "seed": seed, "unit": "nat/Hz", "dtype": H.dtype, "real_dtype": real}
    net = Network("multicell", B, {"bs": K, "ue": I}, edges, local, info)
    air = MulticellAir(H, assign, nz, w, ch.power_w.to(real))
    return net, air
