"""Linear precoding baselines for multicell MU-MIMO: MRC/MRT, ZF, RZF (one round, no signaling).

Each BS k precodes its own UEs I_k from its local CSI (channels of its served UEs, by reciprocity),
then scales to its power budget P_k (per-BS power normalization):

* ``mrc``: V_i = sqrt(P_k/|I_k|) H_ik^H / ||H_ik||_F (maximum ratio transmission).
* ``zf``:  V_k = H_k^H (H_k H_k^H)^{-1}, H_k = [H_i]_{i in I_k} stacked (|I_k| N x M); intra-cell zero forcing.
* ``rzf``: V_k = H_k^H (H_k H_k^H + delta_k I)^{-1}, delta_k = |I_k| N mean(sigma_i^2) / P_k (regularized ZF).

Round 0 (before the BS computes anything) has no beamformers (WSR 0); round 1 is the baseline.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

from agents.wmmse import SERVE, edge_channels, mrc_init, scale_to_budget, served_counts
from dsim.protocol import AgentBlock, EdgeView, Local, Output, Protocol
from dsim.registry import AlgorithmSpec, register_algorithm

Tensor = torch.Tensor


def zf_precoders(H_s: Tensor, sv: EdgeView, delta: Tensor | None) -> Tensor:
    """(R)ZF per BS from the served UEs' channels H_s (B, S, N, M) -> V (B, S, M, N) (unnormalized).

    delta: (B, n_bs) regularization or None (ZF).  BSs serving fewer UEs than the maximum are padded with
    identity rows in the Gram matrix, which leaves their real UEs' precoders unchanged.
    """
    B, S, N, M = H_s.shape
    slot, U = sv.dst_slots()
    dev = H_s.device
    Hk = torch.zeros(B, sv.n_dst, U, N, M, dtype=H_s.dtype, device=dev)
    Hk[:, sv.dst_local, slot] = H_s
    Hk = Hk.reshape(B, sv.n_dst, U * N, M)
    G = Hk @ Hk.mH
    filled = torch.zeros(sv.n_dst, U, dtype=torch.bool, device=dev)
    filled[sv.dst_local, slot] = True
    pad = (~filled).repeat_interleave(N, dim=1).to(H_s.dtype)  # (n_bs, U*N)
    G = G + torch.diag_embed(pad).unsqueeze(0)
    if delta is not None:
        G = G + delta[..., None, None].to(H_s.dtype) * torch.eye(U * N, dtype=H_s.dtype, device=dev)
    Vk = Hk.mH @ torch.linalg.inv(G)  # (B, n_bs, M, U*N)
    Vk = Vk.reshape(B, sv.n_dst, M, U, N).permute(0, 1, 3, 2, 4)  # (B, n_bs, U, M, N)
    return Vk[:, sv.dst_local, slot]


class BaselineOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _builder(kind: Literal["mrc", "zf", "rzf"]):
    def precode(block: AgentBlock) -> None:
        sv = block.edges[SERVE]
        H_s = edge_channels(block.local["H"], sv)
        power = block.local["power"]
        if kind == "mrc":
            V = mrc_init(H_s, power, sv)
        else:
            delta = None
            if kind == "rzf":
                n_served = served_counts(sv, power.dtype)
                noise = block.local["noise"][:, sv.dst_local, sv.src]  # (B, S) noise of each served UE
                mean_noise = sv.sum_dst(noise) / n_served.clamp_min(1.0)
                delta = n_served * H_s.shape[-2] * mean_noise / power
            V = scale_to_budget(zf_precoders(H_s, sv, delta), power, sv)
        block.state["V"] = V

    def init(block: AgentBlock) -> None:
        sv = block.edges[SERVE]
        info = block.info
        block.state["V"] = torch.zeros(block.batch, sv.size, info["bs_antennas"], info["ue_antennas"],
                                       dtype=info["dtype"], device=block.device)

    def build(opts: BaselineOptions, net) -> Protocol:
        return Protocol(name=kind, roles=("bs", "ue"), init={"bs": init}, phases=[Local("bs_precode", "bs", precode)],
                        rounds=1, output=Output("bs", "V", SERVE), unit="nat/Hz")

    return build


for _k, _txt in (("mrc", "maximum ratio transmission per BS"), ("zf", "intra-cell zero forcing per BS"),
                 ("rzf", "regularized zero forcing per BS")):
    register_algorithm(AlgorithmSpec(_k, ("multicell",), BaselineOptions, _builder(_k), _txt))
