"""Cell-free channels -> (Network of local knowledge, air interface) (ICGNN paper Sec. IV).

Roles ``ap`` (L agents) and ``cpu`` (one agent); UEs are evaluated by the air only (they run no
protocol step in power allocation).  Edge sets, link class ``fh`` (fronthaul):

* ``ap>cpu`` -- AP l -> CPU, edge id l;   * ``cpu>ap`` -- CPU -> AP l, edge id l.

Local data:

* ``ap``: ``h_hat`` (B, L, S, K, N) its channel estimates (S Monte-Carlo draws per topology) and ``h``
  (B, L, S, K, N) the true channels of the same draws -- an AP forms its statistics E{h_kl^H w_il}
  from its own pilots/data, i.e. only from its own slice; ``beta`` (B, L, K) large-scale fading;
  ``power`` (B, L) budget P_t [W]; ``error_cov`` (B, L, K, N, N) for MMSE CSI.
* ``cpu``: ``power`` (B, 1, L) every AP's budget [W], ``noise`` (B, 1) sigma^2 [W].
"""

from __future__ import annotations

import torch

from dsim.air import CellfreeAir
from dsim.faults import FaultModel
from dsim.network import EdgeSet, Network


def cellfree_network(ch, faults: FaultModel | None = None, seed: int = 0) -> tuple[Network, CellfreeAir]:
    """Network and air of a :class:`dsim.scenarios.cellfree.CellfreeChannels` batch."""
    if faults is not None and faults.missing_links > 0:
        raise ValueError("faults.missing_links applies to multicell BS-UE links; cellfree has no such links "
                         "(use faults.message_loss)")
    B, S, K, L, N = ch.h.shape
    real = ch.beta.dtype
    P = ch.power_w.to(real).reshape(1, L).expand(B, L).clone()
    local_ap = {"h": ch.h_per_ap, "h_hat": ch.h_hat_per_ap, "beta": ch.beta.permute(0, 2, 1).contiguous(),
                "power": P}
    C = ch.error_cov()
    if C is not None:
        local_ap["error_cov"] = C.permute(0, 2, 1, 3, 4).contiguous()
    local_cpu = {"power": P.reshape(B, 1, L).clone(),
                 "noise": torch.full((B, 1), float(ch.noise_w), dtype=real)}
    ones = torch.ones(B, L, dtype=torch.bool)
    edges = {
        "ap>cpu": EdgeSet("ap>cpu", "ap", "cpu", "fh", torch.arange(L), torch.zeros(L, dtype=torch.int64), ones),
        "cpu>ap": EdgeSet("cpu>ap", "cpu", "ap", "fh", torch.zeros(L, dtype=torch.int64), torch.arange(L),
                          ones.clone()),
    }
    info = {"family": "cellfree", "batch": B, "n_aps": L, "n_ues": K, "ap_antennas": N, "realizations": S,
            "noise_w": float(ch.noise_w), "ue_power_w": float(ch.ue_power_w), "tau_c": int(ch.tau_c),
            "tau_d": int(ch.tau_d), "seed": seed, "unit": "bit/s/Hz", "dtype": ch.h.dtype, "real_dtype": real}
    net = Network("cellfree", B, {"ap": L, "cpu": 1}, edges, {"ap": local_ap, "cpu": local_cpu}, info)
    return net, CellfreeAir(ch)
