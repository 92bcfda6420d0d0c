"""ENGNN on the multicell family: Ex2 power allocation over fixed ZF beams (problem (7)-(12)) and Ex3
cooperative beamforming (problem (13)-(16)) (ENGNN paper; SPECS §4).

The layer math is ``agents.engnn``'s (one implementation: :func:`agents.engnn.preprocess` (20),
:func:`~agents.engnn.tx_update` (21), :func:`~agents.engnn.rx_update` (22),
:func:`~agents.engnn.tx_edge_branch` / :func:`~agents.engnn.rx_edge_branch` / :func:`~agents.engnn.edge_update`
(24) with MAX aggregations, :func:`~agents.engnn.post_edge` (26c)); this module builds the graphs, features,
read-outs and the distributed protocol.

Graph (complete bipartite).  Tx nodes: BS b hosts ``U`` Tx nodes (b, s), global index b U + s -- Ex2: one
per served UE (U = the largest cell; slot s = the s-th served UE in edge order, empty slots masked out),
Ex3: U = 1 (Tx node = BS).  Rx nodes: the UEs.  Edge (m, k) for every Tx node m and UE k in range.

Features (channels normalised by the noise std, as SPECS §4 asks; magnitudes on a log scale -- a
monotone map, so no information is lost -- because the gains span ~80 dB and raw values do not train):
* Tx: P_m [W] (19a); Rx: sigma_k / sigma_k = 1 (19b).
* Ex2 edge (10)-(11): g_mk = |h_{b,k}^H w_m| of Tx node m = (b, s) with its unit ZF beam w_m, as
  x_mk = ln(1 + P_b g_mk^2 / sigma_k^2), in the one-hot 3-slot vector [direct, intra-cell, inter-cell].
* Ex3 edge: h_mk / sigma_k as f = (h / ||h||) ln(1 + P_m ||h||^2 / sigma_k^2), Re/Im split (19c): 2 N reals.
  With ``frame: gram_schmidt | eigen`` (Ex3 only) the same map of c_mk = U_m^H h_mk, in BS m's own frame
  U_m (:func:`coop_frame`): 'gram_schmidt' orthonormalises BS m's channels in the order of decreasing
  ||h_mk||; 'eigen' takes the eigenvectors of R_m = sum_k h_mk h_mk^H (decreasing eigenvalue), each with the
  phase that makes the largest coordinate max_k |u_i^H h_mk| real positive.  A unitary per BS,
  h_mk -> Q_m h_mk for every k (with v_mk -> Q_m v_mk), leaves every |sum_m h_mk^H v_mj| in (14) and every
  per-BS power (16) unchanged, and U_m(Q_m H_m) = Q_m U_m(H_m), so c_mk and the decision's rates are exactly
  invariant to it; the read-out v'_mk is rotated back, v_mk = U_m v'_mk (unitary: the power is unchanged).
  A phase per UE common to all BSs (h_mk -> e^{j phi_k} h_mk for every m) is a symmetry too, but c_mk turns
  with it (its coordinates by e^{j (phi_k - phi_(i))}, phi_(i) the phase of the UE that fixed u_i): handled
  by the data (fresh Rayleigh samples are invariant in law), not exactly; a phase per (BS, UE) link is no
  symmetry under joint transmission.  The frame is computed by the BS from its own CSI: no message is added.

Read-out and power normalisation (SPECS §4):
* Ex2: logit of Tx node m = Re of (26c) on its direct edge E_{m, k(m)}; p = P_b softmax over BS b's slots,
  V_q = sqrt(p_q) w_q: sum_q p_q = P_b exactly.
* Ex3: v_mk = (26c) on edge (m, k) (N complex); per-BS scaling v_mk sqrt(P_m) / ||[v_m1 .. v_mK]||_F: BS m
  uses exactly P_m.
Paper sizes: Ex2 L = 1, d_E = 32; Ex3 L = 2, d_E = 64.  Node width, MLP hidden width and message width
(what is aggregated) are this implementation's choices: Ex2 16 / 64 / 32, Ex3 32 / 64 / 64.

Distributed, one protocol round = one updating layer, every quantity from layer l-1 (as ``agents.engnn``'s
Ex1 protocol).  BS b holds its Tx nodes' states f_tx and their edges' states E (it has the CSI of its
channels to every UE, by reciprocity, and its own beams), UE k holds f_rx,k:
  1. ``tx_edge`` (``bs>ue``, ``dl``): BS b -> UE k: for each of its U Tx nodes [f_tx,m, E_mk]
     (U (d_node + d_E) reals; Ex2 also the slots' occupancy, U reals).
  2. ``rx_layer`` (local, UE): (22) and, for every Tx node m, the leave-one-out MAX_{m1 != m}
     MLP6(E_m1k, f_rx,k) (top-2).
  3. ``rx_reply`` (``ue>bs``, ``ul``): UE k -> BS b: [f_rx,k (layer l-1), LOO_mk for b's U Tx nodes]
     (d_node + U d_msg reals).
  4. ``tx_layer`` (local, BS): (21), the Tx-side branch MAX_{k1 != k} MLP5 over its own edges and (24)
     E' = MLP7(E, max(Tx branch, LOO)); then the read-out.
Both directions are counted per (BS, UE) edge in the ledger.  At the last layer only what the edge read-out
needs is computed (E^(L); the node updates reach no decision); the messages are the same in every layer.

Training: ``python -m dsim train scenarios/train_engnn_ex2_n{2,5,10}.yaml`` / ``train_engnn_ex3_plain.yaml``
(stage 1, frame: none), ``train_engnn_ex3_k2.yaml`` (stage 2, frame: eigen) then ``train_engnn_ex3.yaml``
(stage 3, K = 2..8) (loss -mean sum rate in nat/Hz).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from agents.engnn import (
    ENGNNCore,
    as_reals,
    edge_update,
    loss_sum_rate,
    post_edge,
    preprocess,
    rx_edge_branch,
    rx_update,
    tx_edge_branch,
    tx_update,
)
from agents.wmmse import SERVE, UL, edge_channels
from agents.zf_power import unit_zf_beams
from dsim.learn import LearnableSpec, LearnedModule, LearnedOptions, current_layer
from dsim.network import Network
from dsim.protocol import AgentBlock, EdgeView, Inbox, Local, Message, Output, Protocol
from dsim.protocol import Field as MsgField
from dsim.registry import AlgorithmSpec, register_algorithm

Tensor = torch.Tensor

DL = "bs>ue"
MODELS = Path(__file__).resolve().parent / "models"
SHIPPED_EX2 = {f"ex2_n{n}": MODELS / f"engnn_ex2_n{n}.pt" for n in (2, 5, 10)}
#: 'ex3' (the default): per-BS frame (frame: eigen), trained at K = 2 then K = 2..8; 'ex3_k2': the same trained at
#: K = 2 only (what 'ex3' was fine-tuned from); 'ex3_plain': absolute coordinates, K = 2 (what 'ex3_k2' was
#: fine-tuned from; the shipped engnn_ex3.pt until session 9).  README: "ENGNN on the multicell family".
SHIPPED_EX3 = {"ex3": MODELS / "engnn_ex3.pt", "ex3_k2": MODELS / "engnn_ex3_k2.pt",
               "ex3_plain": MODELS / "engnn_ex3_plain.pt"}
#: training defaults (Sec. IV): RMSProp lr 1e-4, batch 256, no lr decay
TRAIN_DEFAULTS = {"steps": 2000, "batch": 256, "lr": 1e-4, "lr_decay_every": 10**9, "lr_decay": 1.0,
                  "betas": (0.9, 0.999), "weight_decay": 0.0, "clip": 100.0, "optimizer": "rmsprop"}
#: per problem: (L, d_E, d_node, hidden, d_msg)
SIZES = {"ex2": (1, 32, 16, 64, 32), "ex3": (2, 64, 32, 64, 64)}
#: values of ``frame`` (module docstring)
FRAMES = ("none", "gram_schmidt", "eigen")


# =============================================================================== parameters
class ENGNNMulticellParams(LearnedModule):
    """An :class:`agents.engnn.ENGNNCore` for Ex2 (edge input 3, read-out 1 complex of which the real part is
    the logit) or Ex3 (edge input 2 N, read-out N complex)."""

    hparam_names: ClassVar[tuple[str, ...]] = ("bs_antennas", "layers", "d_edge", "d_node", "hidden", "d_msg",
                                               "frame")
    #: ``frame`` changes the input coordinates, not the parameter set: a checkpoint trained without it ('none')
    #: may be fine-tuned with it (a warm start: the same weights on the per-BS frame coordinates)
    free_hparams: ClassVar[tuple[str, ...]] = ("frame",)

    def __init__(self, problem: str = "ex2", bs_antennas: int = 2, layers: int | None = None,
                 d_edge: int | None = None, d_node: int | None = None, hidden: int | None = None,
                 d_msg: int | None = None, frame: str = "none", seed: int = 0) -> None:
        super().__init__()
        if problem not in SIZES:
            raise ValueError(f"engnn multicell problem must be one of {', '.join(SIZES)}, got {problem!r}")
        if frame not in FRAMES:
            raise ValueError(f"engnn multicell frame must be one of {', '.join(FRAMES)}, got {frame!r}")
        if frame != "none" and problem != "ex3":
            raise ValueError(f"engnn multicell frame: {frame} is for Ex3 (cooperative beamforming) only")
        self.frame = str(frame)
        dflt = SIZES[problem]
        self.problem, self.bs_antennas = problem, int(bs_antennas)
        self.layers, self.d_edge, self.d_node, self.hidden, self.d_msg = (
            int(v if v is not None else d) for v, d in zip((layers, d_edge, d_node, hidden, d_msg), dflt))
        ex2 = problem == "ex2"
        self.core = ENGNNCore(3 if ex2 else 2 * self.bs_antennas, 1, 1, d_edge=self.d_edge, d_node=self.d_node,
                              hidden=self.hidden, d_msg=self.d_msg, layers=self.layers,
                              out_edge=1 if ex2 else self.bs_antennas, seed=seed)


class ENGNNEx2Params(ENGNNMulticellParams):
    """Ex2 parameters (untrained default: the paper's Ex2 sizes)."""

    def __init__(self, bs_antennas: int = 2, layers: int | None = None, d_edge: int | None = None,
                 d_node: int | None = None, hidden: int | None = None, d_msg: int | None = None,
                 frame: str = "none", seed: int = 0) -> None:
        super().__init__("ex2", bs_antennas, layers, d_edge, d_node, hidden, d_msg, frame, seed)


class ENGNNEx3Params(ENGNNMulticellParams):
    """Ex3 parameters (untrained default: the paper's Ex3 sizes)."""

    def __init__(self, bs_antennas: int = 2, layers: int | None = None, d_edge: int | None = None,
                 d_node: int | None = None, hidden: int | None = None, d_msg: int | None = None,
                 frame: str = "none", seed: int = 0) -> None:
        super().__init__("ex3", bs_antennas, layers, d_edge, d_node, hidden, d_msg, frame, seed)


# =============================================================================== features, read-outs
def log_snr(gain2: Tensor, power: Tensor, noise: Tensor) -> Tensor:
    """ln(1 + P g^2 / sigma^2): gain2 = g^2 (...), power, noise broadcastable [W] -> (...) real."""
    return torch.log1p(power * gain2 / noise)


def ex2_edge_features(H: Tensor, beams: Tensor, kind: Tensor, power: Tensor, noise: Tensor) -> Tensor:
    """(10)-(11): the one-hot 3-slot edge feature of every (Tx node, UE) pair at a BS block.

    H (B, n, I, 1, M) the BSs' channel rows; beams (B, n, U, M, 1) unit beams per slot; kind (B|1, n, U, I)
    int64 0 direct / 1 intra-cell / 2 inter-cell; power (B, n) W; noise (B, n, I) W.
    Returns (B, n, U, I, 3) real."""
    g2 = (H[:, :, None, :, 0, :] @ beams).abs()[..., 0] ** 2                  # |h_bk^H w_m|^2 (B, n, U, I)
    x = log_snr(g2, power[:, :, None, None], noise[:, :, None, :])
    one_hot = nn.functional.one_hot(kind, 3).to(x.dtype)
    return x[..., None] * one_hot


def coop_frame(h: Tensor, mask: Tensor, kind: str = "gram_schmidt") -> Tensor:
    """Per-BS frame of ``frame: kind`` (module docstring): U_m = [u_1 .. u_N] (B, n, N, N) complex unitary.

    h (B, n, I, N) complex: column h_mk of BS m's channel to UE k; mask (B, n, I) bool: UE k in range of BS m.
    'eigen': eigenvectors of R_m = sum_k h_mk h_mk^H over the UEs in range (left singular vectors of
    [h_m1 .. h_mI]), decreasing eigenvalue; u_i's phase
    makes u_i^H h_mk real positive for the UE k with the largest |u_i^H h_mk| (the best-conditioned choice;
    none: the SVD's phase; a degenerate case, as equal eigenvalues).  'gram_schmidt': the UEs in range
    are taken in the order of decreasing ||h_mk|| and Gram-Schmidt orthonormalised (twice per
    vector); a channel whose residual is below sqrt(eps) ||h_mk|| adds nothing.  With fewer than N vectors
    (fewer UEs in range than antennas, or collinear channels) the frame is completed with the standard basis
    vectors of largest residual (then no longer equivariant: a degenerate case).  U_m(Q_m h_m.) = Q_m U_m(h_m.)
    for every unitary Q_m, and relabelling the UEs leaves U_m unchanged (except at exact ties of ||h_mk||)."""
    B, n, I, N = h.shape
    real = h.real.dtype
    tol = math.sqrt(torch.finfo(real).eps)
    key = torch.where(mask, (h.abs() ** 2).sum(-1), torch.full((), -1.0, dtype=real, device=h.device))
    order = torch.argsort(key, dim=-1, descending=True, stable=True)
    hs = torch.gather(h, 2, order[..., None].expand(B, n, I, N))
    ms = torch.gather(mask, 2, order)
    if kind == "eigen":
        hm = torch.where(ms[..., None], hs, torch.zeros((), dtype=h.dtype, device=h.device))
        # eigenvectors of R_m = X X^H, X = [h_m1 .. h_mI] (N, I): X's left singular vectors, decreasing (more
        # accurate than eigh of R, whose eigenvalues span the square of the path-loss range)
        U = torch.linalg.svd(hm.transpose(-1, -2), full_matrices=True)[0]
        A = U.conj().transpose(-1, -2) @ hm.transpose(-1, -2)                  # u_i^H h_k (B, n, N, I)
        mag = torch.where(ms[:, :, None, :], A.abs(), torch.full((), -1.0, dtype=real, device=h.device))
        best = mag.argmax(-1)                                                  # (B, n, N): largest |u_i^H h_k|
        a = torch.gather(A, -1, best[..., None])[..., 0]
        one = torch.ones((), dtype=h.dtype, device=h.device)
        ph = torch.where(a.abs() > 0, a / a.abs().clamp_min(torch.finfo(real).tiny).to(h.dtype), one)
        return U * ph[..., None, :]                                            # u_i e^{j arg a_i}: u_i^H h real > 0
    U = h.new_zeros(B, n, N, N)
    count = torch.zeros(B, n, dtype=torch.int64, device=h.device)

    def orth(w: Tensor) -> Tensor:  # w (B, n, N) minus its components on the columns of U (twice)
        for _ in range(2):
            w = w - (U @ (U.conj().transpose(-1, -2) @ w[..., None]))[..., 0]
        return w

    def put(U: Tensor, w: Tensor, take: Tensor) -> Tensor:  # column `count` := w / ||w|| where take
        rn = torch.linalg.vector_norm(w, dim=-1)
        col = nn.functional.one_hot(count.clamp(max=N - 1), N).bool() & take[..., None]   # (B, n, N)
        u = w / rn.clamp_min(torch.finfo(real).tiny)[..., None].to(w.dtype)
        return torch.where(col[..., None, :], u[..., :, None], U)

    for j in range(I):
        w = orth(hs[:, :, j])
        hn = torch.linalg.vector_norm(hs[:, :, j], dim=-1)
        take = ms[:, :, j] & (count < N) & (torch.linalg.vector_norm(w, dim=-1) > tol * hn) & (hn > 0)
        U = put(U, w, take)
        count = count + take.long()
    eye = torch.eye(N, dtype=h.dtype, device=h.device)
    for _ in range(N):
        take = count < N
        if not bool(take.any()):
            break
        res = eye - U @ (U.conj().transpose(-1, -2) @ eye)                    # (B, n, N, N): residual of e_i
        best = torch.linalg.vector_norm(res, dim=-2).argmax(-1)                 # (B, n)
        w = orth(torch.gather(res, -1, best[..., None, None].expand(B, n, N, 1))[..., 0])
        U = put(U, w, take)
        count = count + take.long()
    return U


def ex3_edge_features(H: Tensor, power: Tensor, noise: Tensor, U: Tensor | None = None) -> Tensor:
    """h_mk / sigma_k on a log scale (module docstring), Re/Im split (19c): H (B, n, I, 1, M) rows h^H,
    power (B, n), noise (B, n, I) -> (B, n, I, 2 M) real.  ``U`` (B, n, M, M) (``frame``): the map
    is applied to the frame coordinates c_mk = U_m^H h_mk instead (same norm)."""
    h = H[:, :, :, 0, :].conj()
    if U is not None:
        h = (U.conj().transpose(-1, -2)[:, :, None] @ h[..., None])[..., 0]
    g2 = (h.abs() ** 2).sum(-1)
    mag = log_snr(g2, power[..., None], noise) / g2.sqrt().clamp_min(torch.finfo(g2.dtype).tiny)
    return as_reals(h * mag[..., None].to(h.dtype))


def softmax_power(logit: Tensor, filled: Tensor, power: Tensor) -> Tensor:
    """Ex2 normalisation p = P_b softmax over the filled slots: logit (B, n, U), filled (n, U) bool,
    power (B, n) W -> p (B, n, U) (0 on empty slots, sum = P_b)."""
    neg = torch.full((), -torch.inf, dtype=logit.dtype, device=logit.device)
    return power[..., None] * torch.softmax(torch.where(filled, logit, neg), dim=-1)


def per_bs_full_power(v: Tensor, mask: Tensor, power: Tensor) -> Tensor:
    """Ex3 normalisation: v (B, n, I, N) complex, mask (B, n, I), power (B, n) -> v sqrt(P_m)/||v_m||_F."""
    v = torch.where(mask[..., None], v, torch.zeros((), dtype=v.dtype, device=v.device))
    nrm = torch.linalg.vector_norm(v, dim=(-2, -1)).clamp_min(torch.finfo(power.dtype).tiny)
    return v * (power.sqrt() / nrm)[..., None, None].to(v.dtype)


def _dense(x: Tensor, rows: Tensor, cols: Tensor, n_rows: int, n_cols: int) -> Tensor:
    """Per-edge (B, E, ...) -> (B, n_rows, n_cols, ...) at (rows, cols), 0 elsewhere (differentiable)."""
    tail = tuple(x.shape[2:])
    out = torch.zeros((x.shape[0], n_rows * n_cols) + tail, dtype=x.dtype, device=x.device)
    return out.index_copy(1, rows * n_cols + cols, x).reshape((x.shape[0], n_rows, n_cols) + tail)


def _slots(net: Network) -> int:
    """U: Tx nodes per BS (Ex2: the largest cell, from the serving edges; Ex3: 1)."""
    sv = net.edges[SERVE]
    counts = torch.bincount(sv.dst.cpu(), minlength=int(net.info["n_bs"]))
    return max(int(counts.max()), 1)


# =============================================================================== protocol
def engnn_multicell_protocol(params: ENGNNMulticellParams, net: Network) -> Protocol:
    """The ``params.layers``-round ENGNN protocol of Ex2 / Ex3 on a multicell network (module docstring)."""
    ex2 = params.problem == "ex2"
    name = f"engnn_{params.problem}"
    want = "cell" if ex2 else "all"
    if net.info.get("serve", "cell") != want:
        raise ValueError(f"{name} needs a multicell scenario with serve: {want}")
    if not ex2 and int(net.info["bs_antennas"]) != params.bs_antennas:
        raise ValueError(f"{name} model has bs_antennas={params.bs_antennas}, the scenario has "
                         f"{net.info['bs_antennas']}")
    if int(net.info["ue_antennas"]) != 1:
        raise ValueError(f"{name} needs single-antenna UEs (ue_antennas: 1)")
    core, L = params.core, params.layers
    d_node, d_edge, d_msg = params.d_node, params.d_edge, params.d_msg
    I, K_bs = int(net.info["n_ue"]), int(net.info["n_bs"])
    U = _slots(net) if ex2 else 1

    def tx_mask(block: AgentBlock) -> Tensor:
        ev = block.edges[UL]                                                   # in-edges UE k -> BS b
        present = _dense(ev.mask, ev.dst_local, ev.src, block.n, I)            # (B, n, I)
        return present[:, :, None, :] & block.state["filled"][None, :, :, None]   # (B, n, U, I)

    def readout(block: AgentBlock) -> None:
        E, loc = block.state["E"], block.local
        B = E.shape[0]
        if ex2:
            sv = block.edges[SERVE]
            slot, _ = sv.dst_slots()
            E_direct = E.reshape(B, block.n, U, I, d_edge)[:, sv.dst_local, slot, sv.src]   # (B, S, d_E)
            logit = torch.zeros(B, block.n, U, dtype=E.dtype, device=E.device)
            logit[:, sv.dst_local, slot] = post_edge(core, E_direct)[..., 0].real
            p = softmax_power(logit, block.state["filled"], loc["power"])[:, sv.dst_local, slot]   # (B, S)
            beams = block.state["beams_s"]
            block.state["V"] = p.sqrt()[..., None, None].to(beams.dtype) * beams
        else:
            ev = block.edges[UL]
            v = post_edge(core, E.reshape(B, block.n, I, d_edge)).to(block.info["dtype"])     # (B, n, I, N)
            if "U" in block.state:  # frame: v'_mk in BS m's frame -> v_mk = U_m v'_mk
                v = (block.state["U"][:, :, None] @ v[..., None])[..., 0]
            v = per_bs_full_power(v, block.state["mask"], loc["power"])
            block.state["V"] = v[:, ev.dst_local, ev.src][..., None]                          # (B, E, M, 1)

    def init_bs(block: AgentBlock) -> None:
        loc, dev = block.local, block.device
        B = block.batch
        H = loc["H"]                                                           # (B, n, I, 1, M)
        if ex2:
            sv = block.edges[SERVE]
            slot, _ = sv.dst_slots()
            filled = torch.zeros(block.n, U, dtype=torch.bool, device=dev)
            filled[sv.dst_local, slot] = True
            beams_s = unit_zf_beams(edge_channels(H, sv), sv)                  # (B, S, M, 1)
            beams = torch.zeros(B, block.n, U, H.shape[-1], 1, dtype=H.dtype, device=dev)
            beams[:, sv.dst_local, slot] = beams_s
            kind = torch.full((block.n, U, I), 2, dtype=torch.int64, device=dev)
            mine = torch.zeros(block.n, I, dtype=torch.bool, device=dev)
            mine[sv.dst_local, sv.src] = True
            kind[mine[:, None, :].expand(block.n, U, I)] = 1
            kind[sv.dst_local, slot, sv.src] = 0
            e_in = ex2_edge_features(H, beams, kind[None], loc["power"], loc["noise"])   # (B, n, U, I, 3)
            block.state["beams_s"] = beams_s
        else:
            filled = torch.ones(block.n, 1, dtype=torch.bool, device=dev)
            Uf = None
            if params.frame != "none":
                ev = block.edges[UL]
                Uf = coop_frame(H[:, :, :, 0, :].conj(), _dense(ev.mask, ev.dst_local, ev.src, block.n, I),
                                params.frame)
                block.state["U"] = Uf
            e_in = ex3_edge_features(H, loc["power"], loc["noise"], Uf)[:, :, None]      # (B, n, 1, I, 2M)
        block.state["filled"] = filled
        mask = tx_mask(block).reshape(B, block.n * U, I)
        f_tx_in = loc["power"][:, :, None, None].expand(B, block.n, U, 1).reshape(B, block.n * U, 1)
        f_rx_dummy = torch.ones(B, 1, 1, dtype=f_tx_in.dtype, device=dev)
        E0, f_tx0, _ = preprocess(core, e_in.reshape(B, block.n * U, I, -1).to(f_tx_in.dtype), f_tx_in,
                                  f_rx_dummy, mask)
        block.state.update(E=E0, f_tx=f_tx0, mask=mask)
        readout(block)

    def init_ue(block: AgentBlock) -> None:
        ones = torch.ones_like(block.local["noise"])[..., None]                # sigma_k / sigma_k, (B, n, 1)
        no_edges = ones.new_zeros(ones.shape[0], 1, 1, core.pre_edge.in_features)
        _, _, f_rx0 = preprocess(core, no_edges, ones[:, :1], ones)          # (20b) (the Rx part only is kept)
        block.state["f_rx"] = f_rx0

    def send_tx(block: AgentBlock, ev: EdgeView) -> dict[str, Tensor]:
        B = block.batch
        E = block.state["E"].reshape(B, block.n, U, I, d_edge).permute(0, 1, 3, 2, 4)[:, ev.src_local, ev.dst]
        out = {"f_tx": ev.gather_src(block.state["f_tx"].reshape(B, block.n, U, d_node)), "E": E}  # (B, E, U, .)
        if ex2:
            out["filled"] = ev.gather_src(block.state["filled"][None].expand(B, -1, -1).to(out["f_tx"].dtype))
        return out

    def recv(key: str):
        def store(block: AgentBlock, inbox: Inbox) -> None:
            block.state[key] = inbox
        return store

    def rx_layer(block: AgentBlock) -> None:
        layer = current_layer(block, L, name)
        w = core.layers[layer - 1]
        inbox = block.state.pop("from_tx")
        ev = inbox.edges                                                       # in-edges BS b -> UE k
        n_tx = K_bs * U
        E = _dense(inbox["E"], ev.src, ev.dst_local, K_bs, block.n)            # (B, K, n, U, d)
        E = E.movedim(3, 2).reshape(-1, n_tx, block.n, d_edge)
        f_tx = _dense(inbox["f_tx"], ev.src, ev.dst_local, K_bs, block.n).movedim(3, 2).reshape(-1, n_tx, block.n,
                                                                                                d_node)
        present = _dense(ev.mask, ev.src, ev.dst_local, K_bs, block.n)         # (B, K, n)
        if ex2:
            filled = _dense(inbox["filled"], ev.src, ev.dst_local, K_bs, block.n) > 0.5   # (B, K, n, U)
            mask = (present[..., None] & filled).movedim(3, 2).reshape(-1, n_tx, block.n)
        else:
            mask = present
        f_rx = block.state["f_rx"]
        loo = rx_edge_branch(w, E, f_rx[:, None], mask)                        # (B, K U, n, d_msg)
        block.state["loo"] = loo.reshape(-1, K_bs, U, block.n, d_msg)
        block.state["f_rx_prev"] = f_rx
        if layer < L:  # f_rx^(L) reaches no decision (the read-out is on the edges): not computed
            block.state["f_rx"] = rx_update(w, f_rx, f_tx, E, mask)

    def send_rx(block: AgentBlock, ev: EdgeView) -> dict[str, Tensor]:
        loo = block.state["loo"]                                               # (B, K, U, n, d)
        return {"f_rx": ev.gather_src(block.state["f_rx_prev"]),
                "loo": loo.permute(0, 1, 3, 2, 4)[:, ev.dst, ev.src_local]}   # (B, E, U, d)

    def tx_layer(block: AgentBlock) -> None:
        layer = current_layer(block, L, name)
        w = core.layers[layer - 1]
        inbox = block.state.pop("from_rx")
        ev = inbox.edges                                                       # in-edges UE k -> BS b
        B, n_tx = block.batch, block.n * U
        f_rx_e = _dense(inbox["f_rx"], ev.dst_local, ev.src, block.n, I)       # (B, n, I, d)
        f_rx_e = f_rx_e[:, :, None].expand(-1, -1, U, -1, -1).reshape(B, n_tx, I, d_node)
        loo = _dense(inbox["loo"], ev.dst_local, ev.src, block.n, I)           # (B, n, I, U, d)
        loo = loo.movedim(3, 2).reshape(B, n_tx, I, d_msg)
        E, f_tx, mask = block.state["E"], block.state["f_tx"], block.state["mask"]
        if layer < L:  # f_tx^(L) reaches no decision: not computed
            block.state["f_tx"] = tx_update(w, f_tx, f_rx_e, E, mask)
        block.state["E"] = edge_update(w, E, tx_edge_branch(w, E, f_tx, mask), loo, mask)
        readout(block)

    tx_fields = (MsgField("f_tx", "real", (U, d_node)), MsgField("E", "real", (U, d_edge)))
    if ex2:
        tx_fields += (MsgField("filled", "real", (U,)),)
    phases = [
        Message("tx_edge", DL, tx_fields, send_tx, recv("from_tx")),
        Local("rx_layer", "ue", rx_layer),
        Message("rx_reply", UL, (MsgField("f_rx", "real", (d_node,)), MsgField("loo", "real", (U, d_msg))),
                send_rx, recv("from_rx")),
        Local("tx_layer", "bs", tx_layer),
    ]
    return Protocol(name, ("bs", "ue"), {"bs": init_bs, "ue": init_ue}, phases, L,
                    Output("bs", "V", SERVE if ex2 else UL), unit="nat/Hz",
                    meta={"layers": L, "d_edge": d_edge, "tx_nodes_per_bs": U,
                          "trainable_parameters": params.n_trainable()}, module=params)


# =============================================================================== options, declaration
class ENGNNMulticellOptions(LearnedOptions):
    """YAML options of ``name: engnn_ex2`` / ``engnn_ex3``: checkpoint 'shipped' (Ex2: the model trained on 10
    samples; Ex3: the Ex3 model), 'shipped:<name>', 'untrained' or a path; sizes default to the checkpoint's
    (untrained: the paper's, SIZES)."""

    bs_antennas: int | None = Field(None, ge=1, description="Ex3: BS antennas N of the model; default: the scenario's")
    layers: int | None = Field(None, ge=1, description="updating layers L (= communication rounds)")
    d_edge: int | None = Field(None, ge=1, description="edge representation width d_E")
    d_node: int | None = Field(None, ge=1, description="node representation width")
    hidden: int | None = Field(None, ge=1, description="MLP hidden width")
    d_msg: int | None = Field(None, ge=1, description="width of the aggregated MLP outputs (and the Rx reply)")
    frame: Literal["none", "gram_schmidt", "eigen"] | None = Field(
        None, description="Ex3: features and read-out in each BS's own frame (module docstring); default: the "
        "checkpoint's (untrained: none)")


def _spec(problem: Literal["ex2", "ex3"]) -> LearnableSpec:
    shipped = SHIPPED_EX2 if problem == "ex2" else SHIPPED_EX3
    default = "ex2_n10" if problem == "ex2" else "ex3"
    recipe = "scenarios/train_engnn_ex2_n10.yaml" if problem == "ex2" else "scenarios/train_engnn_ex3.yaml"

    params = ENGNNEx2Params if problem == "ex2" else ENGNNEx3Params
    recipes = {} if problem == "ex2" else {"ex3_plain": "scenarios/train_engnn_ex3_plain.yaml",
                                           "ex3_k2": "scenarios/train_engnn_ex3_k2.yaml"}
    return LearnableSpec(f"engnn_{problem}", params, ENGNNMulticellOptions,
                         lambda params, net, opts: engnn_multicell_protocol(params, net), shipped[default], recipe,
                         TRAIN_DEFAULTS, loss=loss_sum_rate, named=shipped, recipes=recipes)


def _register(problem: Literal["ex2", "ex3"], summary: str) -> LearnableSpec:
    spec = _spec(problem)

    def build(opts: ENGNNMulticellOptions, net: Network) -> Protocol:
        if opts.checkpoint == "untrained" and problem == "ex3":
            opts = opts.model_copy(update={"bs_antennas": opts.bs_antennas or int(net.info["bs_antennas"])})
        return spec.build(opts, net)

    register_algorithm(AlgorithmSpec(f"engnn_{problem}", ("multicell",), ENGNNMulticellOptions, build, summary,
                                     learnable=spec.learnable, check=spec.check))
    return spec


MODEL_EX2 = _register("ex2", "ENGNN Ex2: power allocation over fixed ZF beams (L = 1, d_E = 32, softmax x P_b); "
                             "checkpoint shipped|shipped:ex2_n{2,5,10}|untrained|PATH")
MODEL_EX3 = _register("ex3", "ENGNN Ex3: cooperative beamforming, every BS serves every UE (L = 2, d_E = 64, "
                             "per-BS power scaling); checkpoint shipped|shipped:ex3|shipped:ex3_k2|shipped:ex3_plain|"
                             "untrained|PATH")
