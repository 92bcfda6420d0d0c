"""The "strongest links" baseline of the MPGNN paper (Sec. V-A; SPECS §1) on the interference family.

The ``fraction`` (10 %) of pairs with the largest direct gain ||h_kk||^2 transmit at P_max (beamforming:
maximum-ratio v_k = sqrt(P_max) h_kk / ||h_kk||), the others stay silent: n_on = max(1, round(fraction K)).
No knowledge of interference links is used.

Distributed, one round:
  1. ``ul_gain`` (``ue>bs``, ``ul``): Rx i sends its measured direct gain ||h_ii||^2 (1 real) to every Tx
     it has a signaling link with (with ``wmmse_csi: full``, the default, every Tx: the ranking is global as
     in the paper; with ``range``, the ranking is among the pairs within range).
  2. ``decide`` (local): Tx k counts the received gains above its own (ties: lower pair index first) and
     transmits when fewer than n_on(fraction, n + 1) are, n the number of gains it received (n + 1 = K with
     full CSI).
The decision is made at the end of round 1; round 0 (initialisation) is all pairs at P_max.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from dsim.protocol import AgentBlock, EdgeView, Inbox, Local, Message, Output, Protocol
from dsim.protocol import Field as MsgField
from dsim.registry import AlgorithmSpec, register_algorithm

Tensor = torch.Tensor
UL = "ue>bs"


class StrongestOptions(BaseModel):
    """YAML options of ``name: strongest``."""

    model_config = ConfigDict(extra="forbid")
    fraction: float = Field(0.1, gt=0, le=1, description="fraction of pairs switched on")


def n_on(fraction: float, K: int) -> int:
    """Number of pairs switched on: max(1, round(fraction K))."""
    return max(1, int(round(fraction * K)))


def full_power(block: AgentBlock) -> Tensor:
    """v_k = sqrt(P_max) h_kk / ||h_kk|| (B, n, N_t, 1) (power control, N_t = 1: sqrt(P_max) times a phase)."""
    h, p = block.local["h_own"], block.local["p_max"]
    nrm = torch.linalg.vector_norm(h, dim=-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
    return (h * (p.sqrt()[..., None] / nrm).to(h.dtype))[..., None]


def build(opts: StrongestOptions, net) -> Protocol:
    K = int(net.info["n_pairs"])
    top = n_on(opts.fraction, K)

    def init_bs(block: AgentBlock) -> None:
        block.state["V"] = full_power(block)

    def send_gain(block: AgentBlock, ev: EdgeView) -> dict[str, Tensor]:
        return {"g": ev.gather_src(block.local["direct_gain"])[..., None]}

    def recv_gain(block: AgentBlock, inbox: Inbox) -> None:
        ev = inbox.edges
        own = (block.local["h_own"].abs() ** 2).sum(-1)  # (B, n)
        g = inbox["g"][..., 0]
        mine = ev.gather_dst(own)
        ahead = (g > mine) | ((g == mine) & (ev.src < ev.dst))
        other = (ev.src != ev.dst).to(own.dtype)
        block.state["ahead"] = ev.sum_dst((ahead & (ev.src != ev.dst)).to(own.dtype))
        block.state["heard"] = ev.sum_dst(other * ev.mask.to(own.dtype))  # gains received from other pairs

    def decide(block: AgentBlock) -> None:
        # n_on(fraction, pairs ranked against): K with full CSI (the paper), the neighbourhood with range CSI
        heard = block.state["heard"]
        quota = torch.clamp(torch.round(opts.fraction * (heard + 1.0)), min=1.0)
        on = (block.state["ahead"] < quota).to(block.local["h_own"].dtype)
        block.state["V"] = full_power(block) * on[..., None, None]

    phases = [Message("ul_gain", UL, (MsgField("g", "real", (1,)),), send_gain, recv_gain),
              Local("decide", "bs", decide)]
    return Protocol("strongest", ("bs", "ue"), {"bs": init_bs}, phases, 1, Output("bs", "V"), unit="bit/s/Hz",
                    meta={"n_on": top})


register_algorithm(AlgorithmSpec("strongest", ("interference",), StrongestOptions, build,
                                 "strongest-links baseline (MPGNN Sec. V-A): the top fraction of direct gains "
                                 "at P_max, the rest off"))
