"""Cooperative beamforming baselines (ENGNN paper Ex3, problem (13)-(15); SPECS §4): every BS serves every UE.

Multicell family with ``serve: all`` (single-antenna UEs): BS m holds v_mk (M antennas) for every UE k on
its ``ue>bs`` in-edge (k -> m); the air is :class:`dsim.scenarios.multicell.CoopAir`.  Notation: h_mk^H
the channel row BS m -> UE k (the family's H), s_jk = sum_m h_mj^H v_mk the effective channel of stream
k at UE j, J_j = sum_k |s_jk|^2 + sigma_j^2, rates (14) in nat/Hz, power sum_k ||v_mk||^2 <= P_m (15b).

Both protocols run one round per iteration: ``coop_pilots`` (measure: the BSs send one precoded pilot
per stream; UE j measures its row s_j. and J_j), ``ue_update`` (local), one uplink message UE -> every BS
(``ue>bs``, ``ul``), ``bs_update`` (local).

``coop_wmmse`` -- WMMSE (Shi et al. 2011; the GCN-WMMSE paper's (3a)-(9) in scalar form) with per-BS
constraints.  U/W-steps at UE j (3a)-(3b): u_j = s_jj / J_j, w_j = J_j / (J_j - |s_jj|^2).  The V-step
minimises f(V) = sum_k v_k^H A v_k - 2 Re(b_k^H v_k) s.t. (15b), A = sum_j alpha_j w_j |u_j|^2 h_j h_j^H over
the stacked h_j = [h_1j; ...; h_Mj], b_k = alpha_k w_k u_k h_k; the per-BS constraints couple the BSs
through A's off-diagonal blocks (no closed form).  Per-BS multipliers: majorisation-minimisation of the
V-step.  By Cauchy-Schwarz, |sum_m h_mj^H x_m|^2 <= M sum_m |h_mj^H x_m|^2, so A <= M blkdiag(A_mm) and
f(V) <= f(V0) + 2 Re(g^H (V - V0)) + (V - V0)^H M blkdiag(A_mm) (V - V0), g_mk = (A v0_k)_m - b_mk; the
bound is tight at V0 and separates over BSs.  BS m minimises its part under its own constraint:

    v_mk = (R_m + mu_m I)^-1 V~_mk,   R_m = M A_mm (the analogue of (4)),
                                      V~_mk = R_m v0_mk - (A v0_k)_m + b_mk (the analogue of (5)),

mu_m >= 0 from R_m's eigendecomposition and the secular equation (6)-(7) sum_i |d_i^H V~_m|^2 /
(lambda_i + mu_m)^2 = P_m by the rational update (9) (``dsim.linalg.solve_mu``; mu_m = 0 if the
pseudo-inverse solution meets the budget) -- the GCN-WMMSE BS update (3c)-(3d) verbatim (``v_step``).
Each step decreases the WMMSE objective, so the sum rate is monotone (the test checks it).  (A v0_k)_m =
sum_j alpha_j c_j h_mj s_jk needs the UEs' measured rows s_j.: UE j sends [c_j = w_j |u_j|^2, y_j = w_j u_j,
s_j.] (1 + 2 + 2K reals) to every BS.  Initialisation (round 0): random CN(0, 1) beams scaled to P_m
(``init: random``, drawn on the CPU from the run seed) or MRT (``init: mrt``: v_mk = c_m h_mk, c_m so
that BS m uses P_m).

``coop_gp`` -- gradient projection (Bertsekas; the paper's baseline [7]) on the sum rate.  UE j computes
q_jk = alpha_j s_jk (1/J_j - [k != j] / (J_j - |s_jj|^2)) (the derivative of its rate w.r.t. s_jk^*) and
sends q_j. (2K reals) to every BS; BS m's gradient is g_mk = sum_j h_mj q_jk = dR/dv_mk^*.  Step
v_m <- P_m(v_m + t_r sqrt(P_m) g_m / ||g_m||_F), a normalised step t_r = step / sqrt(r) in round r, and
P_m the projection onto {sum_k ||v_mk||^2 <= P_m} (scale down when above).  MRT initialisation.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from agents.wmmse import UL, edge_channels, edge_weights, power_terms, uplink_covariance, v_step
from dsim.linalg import solve_mu
from dsim.network import Network
from dsim.protocol import AgentBlock, EdgeView, Inbox, Local, Measure, Message, Output, Protocol
from dsim.protocol import Field as MsgField
from dsim.registry import AlgorithmSpec, register_algorithm

Tensor = torch.Tensor


# =============================================================================== the math
def ue_mmse(S_row: Tensor, J: Tensor, ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(3a)-(3b) at UE j: S_row (B, n, K) its measured s_j., J (B, n), ids (n,) global UE index ->
    (u (B, n) complex, w (B, n) real, s_jj (B, n) complex)."""
    own = S_row.gather(2, ids.reshape(1, -1, 1).expand(S_row.shape[0], -1, 1))[..., 0]
    u = own / J.to(own.dtype)
    w = J / (J - own.abs() ** 2)
    return u, w, own


def rate_gradient_terms(S_row: Tensor, J: Tensor, ids: Tensor, alpha: Tensor) -> Tensor:
    """q_jk = alpha_j s_jk (1/J_j - [k != j]/(J_j - |s_jj|^2)): d R_j / d s_jk^* (R_j in nat/Hz).
    S_row (B, n, K), J (B, n), ids (n,), alpha (B, n) -> (B, n, K) complex."""
    own = S_row.gather(2, ids.reshape(1, -1, 1).expand(S_row.shape[0], -1, 1))[..., 0]
    interf = J - own.abs() ** 2
    is_own = ids.reshape(1, -1, 1) == torch.arange(S_row.shape[-1], device=S_row.device).reshape(1, 1, -1)
    d = torch.where(is_own, (1.0 / J)[..., None], (1.0 / J - 1.0 / interf)[..., None])
    return (alpha[..., None] * d).to(S_row.dtype) * S_row


def bs_stream_sums(H_e: Tensor, coef: Tensor, ev: EdgeView) -> Tensor:
    """sum_j h_mj coef_jk for every BS m and stream k: H_e (B, E, 1, M) rows h_mj^H on the in-edges (j -> m),
    coef (B, E, K) complex -> (B, n_bs, M, K)."""
    return ev.sum_dst(H_e[:, :, 0, :].conj()[..., :, None] * coef[..., None, :])


def own_streams(G: Tensor, ev: EdgeView) -> Tensor:
    """Column k of BS m's (B, n_bs, M, K) at its in-edge (k -> m): -> (B, E, M, 1)."""
    idx = ev.src.reshape(1, -1, 1, 1).expand(G.shape[0], -1, G.shape[2], 1)
    return G.index_select(1, ev.dst_local).gather(3, idx)


def mm_vstep(H_e: Tensor, V0: Tensor, c: Tensor, y: Tensor, S_in: Tensor, alpha_e: Tensor, power: Tensor,
             n_coop: int, ev: EdgeView) -> tuple[Tensor, Tensor]:
    """The majorised V-step of ``coop_wmmse`` (module docstring) at every BS.

    H_e (B, E, 1, M) channel rows on the in-edges (j -> m); V0 (B, E, M, 1) current v_mj; c (B, E) real
    w_j |u_j|^2; y (B, E) complex w_j u_j; S_in (B, E, K) the UEs' rows s_j.; alpha_e (B, E); power (B, n_bs)
    W; n_coop: M, the number of cooperating BSs.  Returns (V (B, E, M, 1), mu (B, n_bs))."""
    dt = H_e.dtype
    X = c.to(dt)[..., None, None]                                              # c_j as 1 x 1 "U W U^H"
    R = n_coop * uplink_covariance(H_e, X, alpha_e, ev)                        # M A_mm  (B, n_bs, M, M)
    AV = own_streams(bs_stream_sums(H_e, (alpha_e * c).to(dt)[..., None] * S_in, ev), ev)   # (A v0_k)_m
    b = alpha_e.to(dt)[..., None, None] * H_e.mH * y.to(dt)[..., None, None]   # b_mk = alpha_k w_k u_k h_mk
    Vt = R.index_select(1, ev.dst_local) @ V0 - AV + b
    lam, D = torch.linalg.eigh(R)
    D_s = D.index_select(1, ev.dst_local)
    proj, phi = power_terms(D_s, Vt, power, ev)
    mu = solve_mu(phi, lam)
    return v_step(D_s, proj, lam.index_select(1, ev.dst_local), mu.index_select(1, ev.dst_local)), mu


def project_budget(V: Tensor, power: Tensor, ev: EdgeView) -> Tensor:
    """Projection onto sum_k ||v_mk||^2 <= P_m: scale BS m's beams by sqrt(P_m / max(used, P_m)).
    V (B, E, M, 1), power (B, n_bs)."""
    used = ev.sum_dst((V.abs() ** 2).sum(dim=(-1, -2)))
    return ev.gather_dst(torch.sqrt(power / torch.maximum(used, power)))[..., None, None].to(V.dtype) * V


def scale_full(V: Tensor, power: Tensor, ev: EdgeView) -> Tensor:
    """Scale BS m's beams to use exactly P_m.  V (B, E, M, 1), power (B, n_bs)."""
    used = ev.sum_dst((V.abs() ** 2).sum(dim=(-1, -2))).clamp_min(torch.finfo(power.dtype).tiny)
    return ev.gather_dst(torch.sqrt(power / used))[..., None, None].to(V.dtype) * V


def mrt_init(H_e: Tensor, power: Tensor, ev: EdgeView) -> Tensor:
    """MRT v_mk = c_m h_mk with BS m at full power: H_e (B, E, 1, M) -> (B, E, M, 1)."""
    return scale_full(H_e.mH, power, ev)


# =============================================================================== protocols
class CoopWMMSEOptions(BaseModel):
    """YAML options of ``name: coop_wmmse``."""

    model_config = ConfigDict(extra="forbid")
    init: Literal["random", "mrt"] = "mrt"
    rounds: int = Field(200, ge=0, description="WMMSE iterations = communication rounds")


class CoopGPOptions(BaseModel):
    """YAML options of ``name: coop_gp``."""

    model_config = ConfigDict(extra="forbid")
    rounds: int = Field(200, ge=0, description="gradient-projection iterations = communication rounds")
    step: float = Field(0.3, gt=0, description="normalised step t_1 (t_r = step / sqrt(r)), times sqrt(P_m)")


def _check(net: Network, name: str) -> None:
    if net.info.get("serve") != "all":
        raise ValueError(f"{name} needs a cooperative multicell scenario (serve: all)")


def _measure_phase() -> Measure:
    def transmit(block: AgentBlock) -> dict[str, Tensor]:
        return {"V": block.state["V"]}

    def measured(block: AgentBlock, meas: dict[str, Tensor]) -> None:
        block.state["S"], block.state["J"] = meas["S"], meas["J"]

    return Measure("coop_pilots", "bs", "ue", transmit, UL, "coop_pilots", measured,
                   lambda info: int(info["n_ue"]))


def _init_bs(kind: str):
    def init(block: AgentBlock) -> None:
        ev = block.edges[UL]
        H_e, power = edge_channels(block.local["H"], ev), block.local["power"]
        if kind == "mrt":
            block.state["V"] = mrt_init(H_e, power, ev)
            return
        info = block.info
        g = block.generator(23)
        shape = (block.batch, int(info["n_ue"]) * int(info["n_bs"]), int(info["bs_antennas"]), 1)
        z = torch.complex(torch.randn(shape, generator=g, dtype=torch.float64, device="cpu"),
                          torch.randn(shape, generator=g, dtype=torch.float64, device="cpu")) / math.sqrt(2.0)
        V = z.to(info["dtype"]).to(block.device).index_select(1, ev.eid)
        block.state["V"] = scale_full(V, power, ev)
    return init


def _send(*names: str):
    def send(block: AgentBlock, ev: EdgeView) -> dict[str, Tensor]:
        return {n: ev.gather_src(block.state[n]) for n in names}
    return send


def _store(block: AgentBlock, inbox: Inbox) -> None:
    block.state["inbox"] = dict(inbox.payload)


def coop_wmmse_protocol(opts: CoopWMMSEOptions, net: Network) -> Protocol:
    """``coop_wmmse`` (module docstring)."""
    _check(net, "coop_wmmse")
    K, n_coop = int(net.info["n_ue"]), int(net.info["n_bs"])

    def ue_update(block: AgentBlock) -> None:
        u, w, _ = ue_mmse(block.state["S"], block.state["J"], block.ids.to(block.device))
        block.state["c"] = w * u.abs() ** 2
        block.state["y"] = w.to(u.dtype) * u
        block.state["s"] = block.state["S"]

    def bs_update(block: AgentBlock) -> None:
        ev = block.edges[UL]
        m = block.state.pop("inbox")
        H_e = edge_channels(block.local["H"], ev)
        V, mu = mm_vstep(H_e, block.state["V"], m["c"][..., 0], m["y"][..., 0], m["s"],
                         edge_weights(block.local["alpha"], ev), block.local["power"], n_coop, ev)
        block.state["V"], block.state["mu"] = V, mu

    phases = [_measure_phase(), Local("ue_update", "ue", ue_update),
              Message("ul_coop", UL, (MsgField("c", "real", (1,)), MsgField("y", "complex", (1,)),
                                      MsgField("s", "complex", (K,))),
                      lambda b, ev: {"c": ev.gather_src(b.state["c"])[..., None],
                                     "y": ev.gather_src(b.state["y"])[..., None],
                                     "s": ev.gather_src(b.state["s"])}, _store),
              Local("bs_update", "bs", bs_update)]
    return Protocol("coop_wmmse", ("bs", "ue"), {"bs": _init_bs(opts.init)}, phases, opts.rounds,
                    Output("bs", "V", UL), unit="nat/Hz")


def coop_gp_protocol(opts: CoopGPOptions, net: Network) -> Protocol:
    """``coop_gp`` (module docstring)."""
    _check(net, "coop_gp")
    K = int(net.info["n_ue"])

    def ue_update(block: AgentBlock) -> None:
        block.state["q"] = rate_gradient_terms(block.state["S"], block.state["J"], block.ids.to(block.device),
                                               block.local["alpha"])

    def bs_update(block: AgentBlock) -> None:
        ev = block.edges[UL]
        q = block.state.pop("inbox")["q"]
        H_e, power = edge_channels(block.local["H"], ev), block.local["power"]
        G = own_streams(bs_stream_sums(H_e, q, ev), ev)                          # dR/dv_mk^* (B, E, M, 1)
        gn = ev.sum_dst((G.abs() ** 2).sum(dim=(-1, -2))).sqrt().clamp_min(torch.finfo(power.dtype).tiny)
        t = opts.step / math.sqrt(max(block.round, 1))
        scale = ev.gather_dst(t * power.sqrt() / gn)[..., None, None].to(G.dtype)
        block.state["V"] = project_budget(block.state["V"] + scale * G, power, ev)

    phases = [_measure_phase(), Local("ue_update", "ue", ue_update),
              Message("ul_grad", UL, (MsgField("q", "complex", (K,)),), _send("q"), _store),
              Local("bs_update", "bs", bs_update)]
    return Protocol("coop_gp", ("bs", "ue"), {"bs": _init_bs("mrt")}, phases, opts.rounds,
                    Output("bs", "V", UL), unit="nat/Hz")


register_algorithm(AlgorithmSpec("coop_wmmse", ("multicell",), CoopWMMSEOptions, coop_wmmse_protocol,
                                 "cooperative WMMSE (every BS serves every UE, per-BS power (15b), "
                                 "majorised V-step); init random|mrt", random_init=True))
register_algorithm(AlgorithmSpec("coop_gp", ("multicell",), CoopGPOptions, coop_gp_protocol,
                                 "cooperative beamforming by gradient projection on the sum rate (15)"))
