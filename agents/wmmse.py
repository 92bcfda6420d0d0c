"""Distributed WMMSE (Shi et al. 2011) as written in the GCN-WMMSE paper, Sec. II-B, eq. (3a)–(7), (9).

One round (= one WMMSE iteration, DESIGN §4):

1. ``dl_pilots`` (measure, air): the BSs transmit precoded pilots with V^(l-1); UE i measures
   J_i = sum_j H_{i a(j)} V_j V_j^H H^H + sigma_i^2 I and its effective channel H_{i a(i)} V_i.
2. ``ue_update`` (local, UE): U_i = J_i^{-1} H V_i (3a); W_i = (I - (H V_i)^H U_i)^{-1} (3b).
3. ``ul_uwu`` (``ul``, UE -> every BS in range): U_i W_i U_i^H, Hermitian N x N (N^2 reals).
4. ``ul_uw`` (``ul``, UE -> serving BS): U_i W_i, N x N complex (2 N^2 reals).
5. ``bs_update`` (local, BS): R_k (4), candidates V~_i (5), mu_k by (3c) with the rational update (9),
   V_i = (R_k + mu_k I)^dagger V~_i (3d).

Silent neighbours (:data:`SILENT`, the one place this protocol decides it, whatever the fault --
message loss, a late message, a crashed UE): a BS keeps the last U W U^H and U W it received on each
edge (the engine's "last value" substitution; before anything arrived on an ``ue>bs`` edge the UE's
term is absent from R_k).  A served UE whose U W did not reach its BS this round keeps the beamformer the
BS held for it in the previous round, instead of one computed from a stale U W -- or from the zero a
never-received U W is (V~_i = 0, hence V_i = 0, U_i = 0, U_i W_i = 0 next round: an absorbing state,
WSR 0 under heavy loss); the BS's beamformers are then scaled down if they exceed its budget (the
projection (15)).  Without faults every U W arrives, so this changes nothing (bit for bit).

The math lives in the functions below (one implementation); GCN-WMMSE (``agents.gcn_wmmse``) reuses
them through the hooks of :func:`wmmse_phases`.  Numerics per DESIGN §8: power terms phi_m are computed
by projecting each candidate (phi = sum_i ||D^H V~_i||^2 per row), tolerances relative to ||R_k||,
Moore–Penrose inverse at mu = 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from dsim.linalg import hermitian_part, inv_shifted, solve_mu
from dsim.protocol import AgentBlock, EdgeView, Inbox, Local, Measure, Message, Output, Protocol
from dsim.protocol import Field as MsgField
from dsim.registry import AlgorithmSpec, register_algorithm

Tensor = torch.Tensor

UL = "ue>bs"
SERVE = "ue>bs:serve"

#: what a silent neighbour means for WMMSE / GCN-WMMSE (see the module docstring): the last value received;
#: a served UE not heard from this round keeps its previous beamformer
SILENT = "last value; serving U W not fresh: keep the previous beamformer"


# =============================================================================== the math
def receive_beamformer(J: Tensor, HV: Tensor) -> Tensor:
    """(3a) U_i = J_i^{-1} H_{ik} V_i.  J: (..., N, N) Hermitian PD, HV: (..., N, N) -> (..., N, N)."""
    return torch.linalg.solve(J, HV)


def mmse_weight(HV: Tensor, U: Tensor) -> Tensor:
    """(3b) W_i = (I - V_i^H H_{ik}^H U_i)^{-1}, the inverse MMSE error covariance.  (..., N, N)."""
    eye = torch.eye(HV.shape[-1], dtype=HV.dtype, device=HV.device)
    return hermitian_part(torch.linalg.inv(eye - HV.mH @ U))


def edge_channels(H: Tensor, ev: EdgeView) -> Tensor:
    """BS-local channels on BS in-edges: H (B, n_bs, I, N, M) -> (B, E, N, M) (H_{src ue, dst bs})."""
    return H[:, ev.dst_local, ev.src]


def edge_weights(alpha: Tensor, ev: EdgeView) -> Tensor:
    """alpha (B, n_bs, I) -> (B, E): WSR weight of each in-edge's UE."""
    return alpha[:, ev.dst_local, ev.src]


def uplink_covariance(H_e: Tensor, X_e: Tensor, alpha_e: Tensor, ev: EdgeView) -> Tensor:
    """(4) R_k = sum_j alpha_j H_jk^H (U_j W_j U_j^H) H_jk over the BS's in-edges.

    H_e: (B, E, N, M), X_e = U W U^H: (B, E, N, N), alpha_e: (B, E) -> R: (B, n_bs, M, M).
    """
    weighted = alpha_e[..., None, None].to(H_e.dtype) * (X_e @ H_e)       # alpha_j X_j H_jk, (B, E, N, M)
    return hermitian_part(ev.sum_dst_gram(H_e, weighted))


def candidate_beamformers(H_s: Tensor, Y_s: Tensor, alpha_s: Tensor) -> Tensor:
    """(5) V~_i = alpha_i H_ik^H U_i W_i.  H_s: (B, S, N, M), Y_s = U W: (B, S, N, N) -> (B, S, M, N)."""
    return alpha_s[..., None, None].to(H_s.dtype) * (H_s.mH @ Y_s)


def power_terms(D_s: Tensor, Vt: Tensor, power: Tensor, sv: EdgeView) -> tuple[Tensor, Tensor]:
    """phi_km of (7) by projecting each candidate (DESIGN §8): phi_k = sum_{i in I_k} |D_k^H V~_i|^2 / P_k.

    D_s: (B, S, M, M) eigenvectors of R at each served UE's BS, Vt: (B, S, M, N), power: (B, n_bs).
    Returns (projections D^H V~ (B, S, M, N), phi (B, n_bs, M)).
    """
    proj = D_s.mH @ Vt
    phi = sv.sum_dst((proj.abs() ** 2).sum(-1))
    return proj, phi / power.unsqueeze(-1)


def v_step(D_s: Tensor, proj: Tensor, lam_s: Tensor, mu_s: Tensor) -> Tensor:
    """(3d) V_i = (R_k + mu_k I)^dagger V~_i = D diag(1/(lam+mu)) D^H V~_i (Moore–Penrose at mu = 0).

    D_s (B, S, M, M), proj = D^H V~ (B, S, M, N), lam_s (B, S, M), mu_s (B, S) -> (B, S, M, N).
    """
    return D_s @ (inv_shifted(lam_s, mu_s).unsqueeze(-1).to(proj.dtype) * proj)


def served_counts(sv: EdgeView, dtype: torch.dtype = torch.float64) -> Tensor:
    """|I_k|: number of UEs each BS serves (present serving edges), (B, n_bs) in ``dtype``."""
    return sv.sum_dst(sv.mask.to(dtype))


def power_share(power: Tensor, n_served: Tensor) -> Tensor:
    """sqrt(P_k / |I_k|) (W^1/2), a BS's power split equally over its UEs; power, n_served (B, n_bs).

    A BS serving no UE counts as serving one.  Computed in ``power``'s dtype."""
    return torch.sqrt(power / n_served.to(power.dtype).clamp_min(1.0))


def mrc_init(H_s: Tensor, power: Tensor, sv: EdgeView) -> Tensor:
    """MRC/MRT initialisation of the GCN-WMMSE paper and its authors' code (DESIGN §7): V_i = c_k H_ik^H.

    One factor per BS, c_k = sqrt(P_k / sum_{j in I_k} ||H_jk||_F^2), so that BS k uses exactly P_k and
    stronger UEs get more power.  H_s (B, S, N, M) per served UE, power (B, n_bs) W -> V (B, S, M, N).
    """
    return scale_to_budget(H_s.mH, power, sv)


def mrc_equal_init(H_s: Tensor, power: Tensor, sv: EdgeView) -> Tensor:
    """Equal-power MRC: V_i = sqrt(P_k/|I_k|) H_ik^H / ||H_ik||_F (every served UE gets P_k/|I_k|).

    Not the paper's initialisation (that is :func:`mrc_init`); the GCN-WMMSE models trained before the
    convention was fixed start from it.  H_s (B, S, N, M) -> (B, S, M, N)."""
    scale = sv.gather_dst(power_share(power, served_counts(sv, power.dtype)))
    nrm = torch.linalg.matrix_norm(H_s).clamp_min(torch.finfo(power.dtype).tiny)
    return (scale / nrm)[..., None, None].to(H_s.dtype) * H_s.mH


def scale_to_budget(V: Tensor, power: Tensor, sv: EdgeView, cap: bool = False) -> Tensor:
    """Scale each BS's beamformers to its budget P_k.  V (B, S, M, N) per served UE, power (B, n_bs) W.

    cap=False: V_i sqrt(P_k / u_k), every BS uses exactly P_k, where u_k = sum_{j in I_k} ||V_j||_F^2.
    cap=True:  the GCN-WMMSE projection (15), V_i sqrt(P_k) / sqrt(max(u_k, P_k)): only BSs above budget
               are scaled down.
    """
    used = sv.sum_dst((V.abs() ** 2).sum(dim=(-1, -2)))
    denom = torch.maximum(used, power) if cap else used.clamp_min(torch.finfo(power.dtype).tiny)
    return sv.gather_dst(torch.sqrt(power / denom))[..., None, None].to(V.dtype) * V


def keep_unheard(V: Tensor, V_prev: Tensor, heard: Tensor, power: Tensor, sv: EdgeView) -> Tensor:
    """The silent-neighbour rule (:data:`SILENT`): V_i for served UEs whose U W arrived this round, the
    previous V_i for the others; a BS holding such a kept beamformer is projected onto its budget (15).

    V, V_prev: (B, S, M, N) per served UE; heard: (B, S) bool; power: (B, n_bs) W.  Where every served UE
    was heard the result is V exactly (returned as is: the common fault-free case costs nothing)."""
    if bool(heard.all()):
        return V
    m = heard.reshape(heard.shape + (1, 1))
    mixed = torch.where(m, V, V_prev)
    kept = sv.sum_dst((~heard & sv.mask).to(power.dtype)) > 0          # (B, n_bs): BS keeps some V_i
    used = sv.sum_dst((mixed.abs() ** 2).sum(dim=(-1, -2)))
    scale = torch.where(kept, torch.sqrt(power / torch.maximum(used, power)), torch.ones_like(power))
    return sv.gather_dst(scale)[..., None, None].to(V.dtype) * mixed


def random_init(block: AgentBlock, sv: EdgeView, salt: int = 17) -> Tensor:
    """Random V_i with i.i.d. CN(0, 1) entries scaled to full per-BS power; drawn globally on the CPU then
    moved and sliced, so every host/engine/device gets the same numbers."""
    info = block.info
    I, M, N = info["n_ue"], info["bs_antennas"], info["ue_antennas"]
    g = block.generator(salt)
    re = torch.randn(block.batch, I, M, N, generator=g, dtype=torch.float64, device="cpu")
    im = torch.randn(block.batch, I, M, N, generator=g, dtype=torch.float64, device="cpu")
    V = (torch.complex(re, im) / 2**0.5).to(info["dtype"]).to(block.device).index_select(1, sv.eid)
    return scale_to_budget(V, block.local["power"], sv)


# =============================================================================== phases
WeightHook = Callable[[AgentBlock, Tensor, Tensor], Tensor]  # (block, What, U) -> W
VHook = Callable[[AgentBlock, dict[str, Tensor]], Tensor]    # (block, pieces) -> V per served UE


def bs_pieces(block: AgentBlock, *, steps: int | None = None, mu0: float | None = None) -> dict[str, Tensor]:
    """Everything a BS computes from its inbox before the V-step: R (4), V~ (5), eigendecomposition,
    phi (7) and mu (3c/9).  Used by WMMSE and GCN-WMMSE."""
    ul, sv = block.edges[UL], block.edges[SERVE]
    H, alpha, power = block.local["H"], block.local["alpha"], block.local["power"]
    R = uplink_covariance(edge_channels(H, ul), block.state["X_in"], edge_weights(alpha, ul), ul)
    H_s = edge_channels(H, sv)
    Vt = candidate_beamformers(H_s, block.state["Y_in"], edge_weights(alpha, sv))
    lam, D = torch.linalg.eigh(R)
    D_s = D.index_select(1, sv.dst_local)
    proj, phi = power_terms(D_s, Vt, power, sv)
    if steps is None:
        mu = solve_mu(phi, lam)
    else:
        m0 = torch.full(lam.shape[:-1], mu0 if mu0 is not None else 0.0, dtype=lam.dtype, device=lam.device)
        mu = solve_mu(phi, lam, steps=steps, mu0=m0)
    return {"R": R, "Vt": Vt, "lam": lam, "D_s": D_s, "proj": proj, "phi": phi, "mu": mu,
            "lam_s": lam.index_select(1, sv.dst_local), "mu_s": mu.index_select(1, sv.dst_local)}


def wmmse_phases(weight_hook: WeightHook | None = None, v_hook: VHook | None = None,
                 mu_steps: int | None = None, mu0: float | None = None) -> list:
    """The five phases of one round; hooks replace the W-step and V-step (GCN-WMMSE, eq. (12)–(15))."""
    def transmit(block: AgentBlock) -> dict[str, Tensor]:
        return {"V": block.state["V"]}

    def measured(block: AgentBlock, meas: dict[str, Tensor]) -> None:
        block.state["J"], block.state["HV"] = meas["J"], meas["HV"]

    def ue_update(block: AgentBlock) -> None:
        J, HV = block.state["J"], block.state["HV"]
        U = receive_beamformer(J, HV)
        What = mmse_weight(HV, U)
        W = What if weight_hook is None else weight_hook(block, What, U)
        block.state["U"], block.state["W"] = U, W
        block.state["UWU"] = hermitian_part(U @ W @ U.mH)
        block.state["UW"] = U @ W

    def send_uwu(block: AgentBlock, ev: EdgeView) -> dict[str, Tensor]:
        return {"X": ev.gather_src(block.state["UWU"])}

    def recv_uwu(block: AgentBlock, inbox: Inbox) -> None:
        block.state["X_in"] = inbox["X"]

    def send_uw(block: AgentBlock, ev: EdgeView) -> dict[str, Tensor]:
        return {"Y": ev.gather_src(block.state["UW"])}

    def recv_uw(block: AgentBlock, inbox: Inbox) -> None:
        block.state["Y_in"] = inbox["Y"]
        block.state["Y_fresh"] = inbox.delivered

    def bs_update(block: AgentBlock) -> None:
        pieces = bs_pieces(block, steps=mu_steps, mu0=mu0)
        if v_hook is None:
            V = v_step(pieces["D_s"], pieces["proj"], pieces["lam_s"], pieces["mu_s"])
        else:
            V = v_hook(block, pieces)
        block.state["V"] = keep_unheard(V, block.state["V"], block.state["Y_fresh"], block.local["power"],
                                        block.edges[SERVE])
        block.state["mu"] = pieces["mu"]

    def pilots(info: dict) -> int:
        return int(info["n_ue"]) * int(info["ue_antennas"])

    return [
        Measure("dl_pilots", "bs", "ue", transmit, SERVE, "dl_pilots", measured, pilots),
        Local("ue_update", "ue", ue_update),
        Message("ul_uwu", UL, (MsgField("X", "hermitian", (0, 0)),), send_uwu, recv_uwu),
        Message("ul_uw", SERVE, (MsgField("Y", "complex", (0, 0)),), send_uw, recv_uw),
        Local("bs_update", "bs", bs_update),
    ]


def _fix_fields(phases: list, N: int) -> list:
    """Set the message fields' shapes to the scenario's UE antenna count N."""
    for ph in phases:
        if isinstance(ph, Message):
            ph.fields = tuple(MsgField(f.name, f.kind, (N, N)) for f in ph.fields)
    return phases


# =============================================================================== protocol
class WMMSEOptions(BaseModel):
    """YAML options of ``name: wmmse``."""

    model_config = ConfigDict(extra="forbid")
    init: Literal["random", "mrc"] = "random"
    rounds: int = Field(100, ge=0, description="WMMSE iterations = communication rounds")


def init_bs(kind: str) -> Callable[[AgentBlock], None]:
    def init(block: AgentBlock) -> None:
        sv = block.edges[SERVE]
        if kind == "mrc":
            block.state["V"] = mrc_init(edge_channels(block.local["H"], sv), block.local["power"], sv)
        else:
            block.state["V"] = random_init(block, sv)
    return init


def build(opts: WMMSEOptions, net) -> Protocol:
    phases = _fix_fields(wmmse_phases(), int(net.info["ue_antennas"]))
    return Protocol(name="wmmse", roles=("bs", "ue"), init={"bs": init_bs(opts.init)}, phases=phases,
                    rounds=opts.rounds, output=Output("bs", "V", SERVE), unit="nat/Hz")


register_algorithm(AlgorithmSpec("wmmse", ("multicell", "interference"), WMMSEOptions, build,
                                 "distributed WMMSE, GCN-WMMSE paper eq. (3)-(9); init random|mrc",
                                 random_init=True))
