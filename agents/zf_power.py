"""WMMSE power allocation over fixed zero-forcing beams (ENGNN paper Ex2, problem (7)-(9); SPECS §4).

Each BS b precodes its served UEs with unit-norm intra-cell ZF beams w_q (``agents.baselines.zf_precoders``,
normalised per UE: ||w_q||_F = 1), fixed for the whole run; only the powers p_q >= 0 with
sum_{q in I_b} p_q <= P_b (9b) are optimised, for the sum rate (9a) of the SINR (8).  V_q = v_q w_q with a
complex scalar v_q, p_q = |v_q|^2.

This is WMMSE (Shi et al. 2011, as written in the GCN-WMMSE paper eq. (3a)-(9), ``agents.wmmse``)
restricted to V_q in span{w_q}: the U- and W-steps (3a)-(3b) and the uplink messages are WMMSE's own
phases; the V-step (3d) minimises the same quadratic over the scalar v_q:

    v_q = w_q^H V~_q / (w_q^H R_b w_q + mu_b)        (tr(.) of both for matrix beams, N > 1)

with R_b (4) and V~_q (5) of WMMSE, and the per-BS multiplier mu_b >= 0 of (9b) from the same secular
equation (6)-(7) sum_q |w_q^H V~_q|^2 / (w_q^H R_b w_q + mu_b)^2 = P_b, solved by the rational update (9)
(``dsim.linalg.solve_mu``, mu_b = 0 when the unconstrained solution meets the budget).  Every step
minimises the WMMSE objective exactly over its block, so the sum rate is non-decreasing (monotone).

Distributed, one round = one iteration: ``dl_pilots`` (measure), ``ue_update`` (local), ``ul_uwu`` (UE ->
every BS in range, U W U^H), ``ul_uw`` (UE -> serving BS, U W), ``zf_power`` (local BS: the scalar V-step
above).  Round 0: equal power P_b/|I_b| on every beam.  With one BS and N_bs >= Q, ZF removes all
interference and the optimum is water-filling (the test's closed form).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from agents.baselines import zf_precoders
from agents.wmmse import (
    SERVE,
    UL,
    _fix_fields,
    candidate_beamformers,
    edge_channels,
    edge_weights,
    keep_unheard,
    power_share,
    served_counts,
    uplink_covariance,
    wmmse_phases,
)
from dsim.linalg import solve_mu
from dsim.network import Network
from dsim.protocol import AgentBlock, EdgeView, Local, Output, Protocol
from dsim.registry import AlgorithmSpec, register_algorithm

Tensor = torch.Tensor


def unit_zf_beams(H_s: Tensor, sv: EdgeView) -> Tensor:
    """Intra-cell ZF beams normalised per UE, w_q / ||w_q||_F: H_s (B, S, N, M) served channels -> (B, S, M, N)."""
    W = zf_precoders(H_s, sv, None)
    nrm = torch.linalg.matrix_norm(W).clamp_min(torch.finfo(W.real.dtype).tiny)
    return W / nrm[..., None, None].to(W.dtype)


def per_bs(x: Tensor, sv: EdgeView, fill: float) -> Tensor:
    """Per-served-edge reals (B, S) -> (B, n_bs, U) packed by BS (slot order), ``fill`` where a BS has fewer UEs."""
    slot, U = sv.dst_slots()
    out = torch.full((x.shape[0], sv.n_dst * max(U, 1)), fill, dtype=x.dtype, device=x.device)
    out = out.index_copy(1, sv.dst_local * max(U, 1) + slot, x)
    return out.reshape(x.shape[0], sv.n_dst, max(U, 1))


def beam_power_step(R: Tensor, Vt: Tensor, W: Tensor, power: Tensor, sv: EdgeView) -> Tensor:
    """The restricted V-step (module docstring): scalars v_q (B, S) complex.

    R (B, n_bs, M, M) from (4), Vt (B, S, M, N) from (5), W (B, S, M, N) the fixed unit beams, power
    (B, n_bs) W."""
    R_s = R.index_select(1, sv.dst_local)
    a = (W.conj() * Vt).sum(dim=(-1, -2))                         # tr(w^H V~)
    lam = (W.conj() * (R_s @ W)).sum(dim=(-1, -2)).real.clamp_min(0.0)   # tr(w^H R w) >= 0
    phi = a.abs() ** 2
    mu = solve_mu(per_bs(phi, sv, 0.0) / power.unsqueeze(-1), per_bs(lam, sv, 1.0))   # (B, n_bs)
    den = lam + mu.index_select(1, sv.dst_local)
    ok = den > 0
    return torch.where(ok, a / torch.where(ok, den, torch.ones_like(den)).to(a.dtype), torch.zeros_like(a))


class ZFPowerOptions(BaseModel):
    """YAML options of ``name: zf_power``."""

    model_config = ConfigDict(extra="forbid")
    rounds: int = Field(100, ge=0, description="WMMSE iterations = communication rounds")


def build(opts: ZFPowerOptions, net: Network) -> Protocol:
    """The zf_power protocol (module docstring) on a multicell network (serve: cell)."""
    if net.info.get("serve", "cell") != "cell":
        raise ValueError("zf_power needs a cellular multicell scenario (serve: cell)")

    def init(block: AgentBlock) -> None:
        sv = block.edges[SERVE]
        W = unit_zf_beams(edge_channels(block.local["H"], sv), sv)
        block.state["beam"] = W
        share = power_share(block.local["power"], served_counts(sv, block.local["power"].dtype))
        block.state["V"] = sv.gather_dst(share)[..., None, None].to(W.dtype) * W

    def bs_power(block: AgentBlock) -> None:
        ul, sv = block.edges[UL], block.edges[SERVE]
        H, alpha, power = block.local["H"], block.local["alpha"], block.local["power"]
        R = uplink_covariance(edge_channels(H, ul), block.state["X_in"], edge_weights(alpha, ul), ul)
        Vt = candidate_beamformers(edge_channels(H, sv), block.state["Y_in"], edge_weights(alpha, sv))
        W = block.state["beam"]
        v = beam_power_step(R, Vt, W, power, sv)
        V = v[..., None, None].to(W.dtype) * W
        block.state["V"] = keep_unheard(V, block.state["V"], block.state["Y_fresh"], power, sv)

    phases = _fix_fields(wmmse_phases(), int(net.info["ue_antennas"]))[:4] + [Local("zf_power", "bs", bs_power)]
    return Protocol(name="zf_power", roles=("bs", "ue"), init={"bs": init}, phases=phases, rounds=opts.rounds,
                    output=Output("bs", "V", SERVE), unit="nat/Hz")


register_algorithm(AlgorithmSpec("zf_power", ("multicell",), ZFPowerOptions, build,
                                 "WMMSE power allocation over fixed unit ZF beams per BS (ENGNN Ex2, (7)-(9))"))
