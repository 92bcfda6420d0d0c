"""ENGNN: a GNN with node AND edge updates on a complete bipartite Tx/Rx graph (ENGNN paper Sec. III,
eq. (19)-(26); SPECS §4), and its protocol for beamforming in interference channels (Ex1, problem (4)).

Layer math (family-agnostic, batched, dense over the bipartite graph; every function below is the one
implementation, used by the centralized forward :func:`engnn_forward`, by the distributed protocols and
by other problems' protocols).  Shapes: B realizations, M Tx nodes, K Rx nodes; all real tensors.

* ``mask`` (B, M, K) bool: edge (m, k) present (None: all).  Absent edges are left out of every MAX and
  their states are 0.
* Every MLP is 3 linear layers, each followed by a ReLU (Sec. IV), so every representation is >= 0 and a
  MAX over an empty set is 0 exactly (the neutral element on [0, inf)).
* Node states "per edge" are node states broadcast onto the edges: Rx states (B, 1, K, d) or (B, M, K, d),
  Tx states (B, M, 1, d) or (B, M, K, d) (a distributed receiver holds what each neighbour sent).

Signatures (stable; ``w`` is one :class:`LayerWeights`, ``core`` an :class:`ENGNNCore`):

    preprocess(core, E_in (B,M,K,d_in), f_tx_in (B,M,dT_in), f_rx_in (B,K,dR_in)) -> (E0, f_tx0, f_rx0)   (20)
    tx_update(w, f_tx (B,M,dT), f_rx_e (B,1|M,K,dR), E (B,M,K,dE), mask) -> f_tx' (B,M,dT)               (21)
    rx_update(w, f_rx (B,K,dR), f_tx_e (B,M,1|K,dT), E, mask) -> f_rx' (B,K,dR)                           (22)
    tx_edge_branch(w, E, f_tx (B,M,dT), mask) -> (B,M,K,dm): MAX_{k1 != k} MLP5(E_mk1, f_tx,m)          (24)
    rx_edge_branch(w, E, f_rx_e (B,1|M,K,dR), mask) -> (B,M,K,dm): MAX_{m1 != m} MLP6(E_m1k, f_rx,k)   (24)
    edge_update(w, E, branch_tx, branch_rx, mask) -> E' (B,M,K,dE): MLP7(E_mk, max(branch_tx, branch_rx)) (24)
    engnn_layer(w, f_tx, f_rx, E, mask) -> (f_tx', f_rx', E')      one updating layer, all from layer l-1
    engnn_forward(core, E_in, f_tx_in, f_rx_in, mask) -> (E_L, f_tx_L, f_rx_L)  pre-processing + L layers
    post_edge(core, E) / post_tx(core, f_tx) / post_rx(core, f_rx) -> complex (..., n_out)              (26)
    leave_one_out_max(x, dim, mask) -> LOO max along dim (top-2), absent entries left out, empty -> 0
    ex1_power_normalize(v (..., N) complex, p_max (...)) -> v sqrt(P) / max(||v||, sqrt(P))   (Ex1, ||v||^2 <= P)

Ex1 (problem (4)-(6), SPECS §4) on the ``interference`` family: Tx m = ``bs`` m, Rx k = ``ue`` k.
Features: Tx P_m [W]; Rx sigma_k / sigma_k = 1 (channels are normalised by the noise std, so the
normalised noise std is 1); edge (5): [h_mk / sigma_k; 0] on the direct link (m = k), [0; h_mk / sigma_k]
on interfering links, split Re/Im (19c) -> 4N reals.  Option ``feature_norm`` (a hyper-parameter in the
checkpoint; 'none', the paper's h / sigma, is the default and what files without it hold): 'linear' feeds
sqrt(P_m) h_mk / sigma_k / s, 'mean' (h_mk / ||h_mk||) ln(1 + P_m ||h_mk||^2 / sigma_k^2) / s -- the maps of
:func:`agents.wcgcn.channel_feature` -- with s the training-set statistic of the direct links for m = k and of
the interfering links otherwise (buffer ``scale``, set from the first training minibatch by
:meth:`ENGNNParams.observe`).  Both keep the direction of h (so the beamformer can follow it); 'mean' also
compresses the ~100 dB span of the gains, which h / sigma feeds raw to a linear layer.  'frame' (issue 14)
builds the problem's symmetry into the model instead of teaching it by augmentation: each Tx m measures its
channels in its own canonical frame U_m (:func:`tx_frame`: u_1 along the direct channel h_mm, then the
Krylov directions of the interference covariance it causes), the edge input is the per-link-phase-invariant
:func:`frame_edge_features` of U_m^H h_mk / sigma_k (3N - 2 reals per slot: log SNRs along the frame directions and
the relative phases), scaled by s as 'mean' (E ln(1 + snr), direct / interfering apart), and the beamformer is
U_m v' with v' the read-out.  The sum rate the model produces is then exactly invariant under a unitary per Tx
and a phase per link (the family's symmetry and more); MRT is the constant v' = (sqrt(P), 0, ...).  U_m needs
only Tx m's own CSI: no message is added.  'frame_conj' also fixes each Tx's complex conjugation
(:func:`conj_flip`; h_mk -> h_mk^*, v_m -> v_m^* for one Tx m is a symmetry too).
Beamformer v_k = post-processing of the direct edge's state E_kk (ENGNN-E, ``readout: edge``) or of Tx k's
state (ENGNN-N, ``readout: node``), then v_k sqrt(P) / max(||v_k||, sqrt(P)).  Paper: L = 1, d_E = 8
(Sec. IV-A); node states d_node = 8, MLP hidden width 32 and message width d_msg = 8 are this
implementation's defaults (the paper gives none).  The shipped 100-sample model (issue 14) has L = 2, d_E = d_msg
= 32, hidden 64, ``feature_norm: frame_conj`` (scenarios/train_engnn_ex1_100.yaml says why), trained with the
interference family's ``subnetwork`` augmentation (session 10; ``ex1_100_sym`` is the session-8 model trained with
``symmetry`` only).

Distributed (one protocol round = one updating layer, every quantity from layer l-1; DESIGN §4).  Tx m
holds its edges' states E_mk (it has the CSI of its channels h_mk, as WMMSE's BSs do) and f_tx,m; Rx k
holds f_rx,k:
  1. ``tx_edge`` (``bs>ue``, ``dl``): Tx m -> Rx k: [f_tx,m, E_mk] (d_node + d_E reals per edge).
  2. ``rx_layer`` (local, Rx): (22) f_rx,k' from the MLP3's of what arrived, and for each Tx m the
     leave-one-out MAX_{m1 != m} MLP6(E_m1k, f_rx,k) (top-2 of the per-edge MLP6's).
  3. ``rx_reply`` (``ue>bs``, ``ul``): Rx k -> Tx m: [f_rx,k (layer l-1), LOO_mk] (d_node + d_msg reals).
  4. ``tx_layer`` (local, Tx): (21) f_tx,m', the Tx-side branch MAX_{k1 != k} MLP5 (its own edges) and
     (24) E_mk' = MLP7(E_mk, max(Tx branch, LOO_mk)); then the beamformer.
At the last layer only what the read-out needs is computed (ENGNN-E: E^(L); ENGNN-N: f_tx^(L)); the
messages are the same in every layer.
Both directions are counted per edge in the ledger (M K messages each way per layer, complete graph).

Training (``python -m dsim train scenarios/train_engnn_ex1_*.yaml``): unsupervised, loss = -mean sum rate
[bit/s/Hz] (problem (6a)), RMSProp (Sec. IV; lr 1e-3 in the recipes), on a fixed set of 10 / 100 / 1000 samples
(``train.train_samples``, Fig. 8), which the recipes augment with the interference family's exact symmetry
(``train.augment: symmetry``: a random phase per Rx and unitary per Tx, under which the sum rate is invariant;
:func:`dsim.scenarios.interference.apply_symmetry`).  Shipped models ``agents/models/engnn_ex1_*.pt``.
``engnn_ex1_fresh.pt`` (issue 14, generalisation in K): the 1000-sample model fine-tuned on fresh K = 20
minibatches, the paper's own training (Sec. IV: fresh layouts and fading for every sample), which its Fig. 5 (K 20
-> 100) uses; scenarios/train_engnn_ex1_fresh.yaml; the default ``checkpoint: shipped`` since session 10.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from agents.wcgcn import channel_feature
from dsim.learn import LearnableSpec, LearnedModule, LearnedOptions, current_layer
from dsim.network import Network
from dsim.protocol import AgentBlock, EdgeView, Inbox, Local, Message, Output, Protocol
from dsim.protocol import Field as MsgField
from dsim.registry import AlgorithmSpec, register_algorithm

Tensor = torch.Tensor

DL, UL = "bs>ue", "ue>bs"
MODELS = Path(__file__).resolve().parent / "models"
#: shipped Ex1 checkpoints by name (``checkpoint: shipped:<name>``); ``shipped`` = ex1_fresh (ex1_1000 before
#: session 10)
SHIPPED_MODELS = {f"ex1_{n}": MODELS / f"engnn_ex1_{n}.pt" for n in (10, 100, 1000, "fresh", "100_sym")}
#: the training YAML of each shipped model
SHIPPED_RECIPES = {name: f"scenarios/train_engnn_{name}.yaml" for name in SHIPPED_MODELS}
#: input feature maps (``feature_norm``): 'none' the paper's h / sigma; 'linear' / 'mean' as WCGCN's (agents/wcgcn.py)
FEATURE_NORMS = ("none", "linear", "mean", "frame", "frame_conj")
#: training defaults (Sec. IV): RMSProp lr 1e-4, batch 256; no lr decay
TRAIN_DEFAULTS = {"steps": 2000, "batch": 256, "lr": 1e-4, "lr_decay_every": 10**9, "lr_decay": 1.0,
                  "betas": (0.9, 0.999), "weight_decay": 0.0, "clip": 100.0, "optimizer": "rmsprop"}


# =============================================================================== weights
def _linear(x: Tensor, lin: nn.Linear) -> Tensor:
    """lin(x) in x's dtype and device (parameters are stored in float64 on their own device)."""
    return F.linear(x, lin.weight.to(x.device, x.dtype), lin.bias.to(x.device, x.dtype))


class MLP(nn.Module):
    """3 linear layers (sizes[0] -> sizes[1] -> sizes[2] -> sizes[3]), each followed by a ReLU (Sec. IV)."""

    def __init__(self, sizes: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.linear = nn.ModuleList(nn.Linear(a, b, dtype=torch.float64, device="cpu")
                                    for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for lin in self.linear:
            x = torch.relu(_linear(x, lin))
        return x


class LayerWeights(nn.Module):
    """The seven MLPs of one updating layer l: mlp1, mlp2 (21), mlp3, mlp4 (22), mlp5, mlp6, mlp7 (24).

    d_tx, d_rx, d_edge: representation widths; hidden: hidden width; d_msg: output width of MLP1, 3, 5, 6
    (what is aggregated)."""

    def __init__(self, d_tx: int, d_rx: int, d_edge: int, hidden: int, d_msg: int) -> None:
        super().__init__()
        h = hidden
        self.mlp1 = MLP((d_rx + d_edge, h, h, d_msg))
        self.mlp2 = MLP((d_tx + d_msg, h, h, d_tx))
        self.mlp3 = MLP((d_tx + d_edge, h, h, d_msg))
        self.mlp4 = MLP((d_rx + d_msg, h, h, d_rx))
        self.mlp5 = MLP((d_edge + d_tx, h, h, d_msg))
        self.mlp6 = MLP((d_edge + d_rx, h, h, d_msg))
        self.mlp7 = MLP((d_edge + d_msg, h, h, d_edge))


class ENGNNCore(nn.Module):
    """Pre-processing (20) linears, ``layers`` :class:`LayerWeights` (per-layer weights) and the
    post-processing (26) linears (width 2 n_out: Re/Im of n_out complex outputs; 0: none).

    Parameters float64 on the CPU, initialised from ``seed`` (torch's default init, CPU generator)."""

    def __init__(self, d_edge_in: int, d_tx_in: int, d_rx_in: int, *, d_edge: int = 8, d_node: int = 8,
                 hidden: int = 32, d_msg: int = 8, layers: int = 1, out_edge: int = 0, out_tx: int = 0,
                 out_rx: int = 0, seed: int = 0) -> None:
        super().__init__()

        def lin(a: int, b: int) -> nn.Linear | None:
            return nn.Linear(a, b, dtype=torch.float64, device="cpu") if b > 0 else None

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.pre_edge, self.pre_tx, self.pre_rx = lin(d_edge_in, d_edge), lin(d_tx_in, d_node), lin(d_rx_in, d_node)
            self.layers = nn.ModuleList(LayerWeights(d_node, d_node, d_edge, hidden, d_msg) for _ in range(layers))
            self.post_edge, self.post_tx = lin(d_edge, 2 * out_edge), lin(d_node, 2 * out_tx)
            self.post_rx = lin(d_node, 2 * out_rx)


# =============================================================================== layer math
def _masked(x: Tensor, mask: Tensor | None) -> Tensor:
    """x (B, M, K, d) with the entries of absent edges set to 0."""
    if mask is None:
        return x
    return torch.where(mask[..., None], x, torch.zeros((), dtype=x.dtype, device=x.device))


def _on_edges(x: Tensor, like: Tensor) -> Tensor:
    """Per-edge node states (B, 1|M, 1|K, d) expanded to ``like``'s edge dims (B, M, K, d)."""
    return x.expand(like.shape[:-1] + x.shape[-1:])


def masked_max(x: Tensor, dim: int, mask: Tensor | None) -> Tensor:
    """MAX of x (B, M, K, d) >= 0 along edge dim ``dim`` (1: over Tx, 2: over Rx), absent edges left out
    (an empty set gives 0: x >= 0)."""
    return _masked(x, mask).amax(dim)


def leave_one_out_max(x: Tensor, dim: int, mask: Tensor | None = None) -> Tensor:
    """out[.., j, ..] = MAX_{i != j} x[.., i, ..] along ``dim`` (elementwise, x >= 0), absent entries (mask
    False) left out, an empty set -> 0.  Elementwise top-2: the maximum everywhere except at the argmax,
    which gets the second largest.  x (B, M, K, d), mask (B, M, K)."""
    xm = _masked(x, mask)
    if xm.shape[dim] < 2:
        return torch.zeros_like(xm)
    top, idx = xm.topk(2, dim=dim)
    first, second = top.narrow(dim, 0, 1), top.narrow(dim, 1, 1)
    pos = torch.arange(xm.shape[dim], device=xm.device).reshape([-1 if i == dim % xm.dim() else 1
                                                                for i in range(xm.dim())])
    return torch.where(pos == idx.narrow(dim, 0, 1), second, first)


def preprocess(core: ENGNNCore, E_in: Tensor, f_tx_in: Tensor, f_rx_in: Tensor,
               mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(20): E0 = ReLU(W_pre e + b), f_tx0 = ReLU(W_tx f_tx + b), f_rx0 = ReLU(W_rx f_rx + b) on the real
    features (19) (complex ones split Re/Im by the caller).  E_in (B, M, K, d_in), f_tx_in (B, M, dT_in),
    f_rx_in (B, K, dR_in) -> (E0 (B, M, K, d_E), f_tx0 (B, M, d_node), f_rx0 (B, K, d_node))."""
    E0 = _masked(torch.relu(_linear(E_in, core.pre_edge)), mask)
    return E0, torch.relu(_linear(f_tx_in, core.pre_tx)), torch.relu(_linear(f_rx_in, core.pre_rx))


def tx_update(w: LayerWeights, f_tx: Tensor, f_rx_e: Tensor, E: Tensor, mask: Tensor | None = None) -> Tensor:
    """(21) f_tx,m' = MLP2(f_tx,m, MAX_k MLP1(f_rx,k, E_mk)).  f_tx (B, M, dT), f_rx_e (B, 1|M, K, dR),
    E (B, M, K, dE) -> (B, M, dT)."""
    m = masked_max(w.mlp1(torch.cat([_on_edges(f_rx_e, E), E], -1)), 2, mask)
    return w.mlp2(torch.cat([f_tx, m], -1))


def rx_update(w: LayerWeights, f_rx: Tensor, f_tx_e: Tensor, E: Tensor, mask: Tensor | None = None) -> Tensor:
    """(22) f_rx,k' = MLP4(f_rx,k, MAX_m MLP3(f_tx,m, E_mk)).  f_rx (B, K, dR), f_tx_e (B, M, 1|K, dT),
    E (B, M, K, dE) -> (B, K, dR)."""
    m = masked_max(w.mlp3(torch.cat([_on_edges(f_tx_e, E), E], -1)), 1, mask)
    return w.mlp4(torch.cat([f_rx, m], -1))


def tx_edge_branch(w: LayerWeights, E: Tensor, f_tx: Tensor, mask: Tensor | None = None) -> Tensor:
    """The Tx-side part of (24): MAX_{k1 != k} MLP5(E_mk1, f_tx,m) for every edge (m, k) -> (B, M, K, d_msg).
    E (B, M, K, dE), f_tx (B, M, dT)."""
    return leave_one_out_max(w.mlp5(torch.cat([E, _on_edges(f_tx[:, :, None], E)], -1)), 2, mask)


def rx_edge_branch(w: LayerWeights, E: Tensor, f_rx_e: Tensor, mask: Tensor | None = None) -> Tensor:
    """The Rx-side part of (24): MAX_{m1 != m} MLP6(E_m1k, f_rx,k) for every edge (m, k) -> (B, M, K, d_msg).
    E (B, M, K, dE), f_rx_e (B, 1|M, K, dR)."""
    return leave_one_out_max(w.mlp6(torch.cat([E, _on_edges(f_rx_e, E)], -1)), 1, mask)


def edge_update(w: LayerWeights, E: Tensor, branch_tx: Tensor, branch_rx: Tensor,
                mask: Tensor | None = None) -> Tensor:
    """(24) E_mk' = MLP7(E_mk, MAX over both neighbour sets) = MLP7(E_mk, max(branch_tx, branch_rx))
    (MAX is associative).  All (B, M, K, .) -> (B, M, K, dE), absent edges 0."""
    return _masked(w.mlp7(torch.cat([E, torch.maximum(branch_tx, branch_rx)], -1)), mask)


def engnn_layer(w: LayerWeights, f_tx: Tensor, f_rx: Tensor, E: Tensor,
                mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One updating layer, (21), (22), (24), every input from layer l-1: f_tx (B, M, dT), f_rx (B, K, dR),
    E (B, M, K, dE) -> (f_tx', f_rx', E')."""
    f_rx_e, f_tx_e = f_rx[:, None], f_tx[:, :, None]
    new_tx = tx_update(w, f_tx, f_rx_e, E, mask)
    new_rx = rx_update(w, f_rx, f_tx_e, E, mask)
    new_E = edge_update(w, E, tx_edge_branch(w, E, f_tx, mask), rx_edge_branch(w, E, f_rx_e, mask), mask)
    return new_tx, new_rx, new_E


def engnn_forward(core: ENGNNCore, E_in: Tensor, f_tx_in: Tensor, f_rx_in: Tensor,
                  mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Pre-processing (20) and the ``len(core.layers)`` updating layers -> (E_L, f_tx_L, f_rx_L)."""
    E, f_tx, f_rx = preprocess(core, E_in, f_tx_in, f_rx_in, mask)
    for w in core.layers:
        f_tx, f_rx, E = engnn_layer(w, f_tx, f_rx, E, mask)
    return E, f_tx, f_rx


def as_complex(x: Tensor) -> Tensor:
    """(..., 2n) real [Re; Im] -> (..., n) complex."""
    n = x.shape[-1] // 2
    return torch.complex(x[..., :n], x[..., n:])


def as_reals(z: Tensor) -> Tensor:
    """(..., n) complex -> (..., 2n) real [Re; Im] (19)."""
    return torch.cat([z.real, z.imag], -1)


def post_edge(core: ENGNNCore, E: Tensor) -> Tensor:
    """(26c) [Re; Im] = W_post E + b -> complex (..., out_edge)."""
    return as_complex(_linear(E, core.post_edge))


def post_tx(core: ENGNNCore, f_tx: Tensor) -> Tensor:
    """(26a) -> complex (..., out_tx)."""
    return as_complex(_linear(f_tx, core.post_tx))


def post_rx(core: ENGNNCore, f_rx: Tensor) -> Tensor:
    """(26b) -> complex (..., out_rx)."""
    return as_complex(_linear(f_rx, core.post_rx))


def ex1_power_normalize(v: Tensor, p_max: Tensor) -> Tensor:
    """Ex1 normalisation v sqrt(P) / max(||v||, sqrt(P)): ||v||^2 <= P exactly.  v (..., N) complex,
    p_max (...) W."""
    sp = p_max.sqrt().to(v.real.dtype)
    nrm = torch.linalg.vector_norm(v, dim=-1)
    return v * (sp / torch.maximum(nrm, sp))[..., None].to(v.dtype)


# =============================================================================== Ex1 per-Tx reference frame
def tx_frame(h: Tensor, direct: Tensor, interf: Tensor) -> Tensor:
    """Per-Tx canonical frame (``feature_norm: frame``): U_m = [u_1 ... u_N] (B, M, N, N) complex unitary, with
    u_1 = h_mm / ||h_mm|| (the direct channel's direction) and u_2, ..., u_N the Lanczos (Krylov) vectors of
    R_m = sum_{k interfering} h_mk h_mk^H (the interference covariance Tx m causes, channels over the noise
    std): w_i = R_m u_{i-1} orthogonalised against u_1 .. u_{i-1} (Gram-Schmidt, twice), u_i = w_i / ||w_i||.

    Equivariance (the symmetry of :func:`dsim.scenarios.interference.apply_symmetry`, and more): with every
    h_mk -> e^{j theta_mk} Q_m h_mk (any phase per link, any unitary per Tx), R_m -> Q_m R_m Q_m^H and
    U_m -> Q_m U_m e^{j theta_mm}: the coordinates U_m^H h_mk only gain the phase e^{j(theta_mk - theta_mm)},
    which :func:`frame_edge_features` removes, and a beamformer U_m v' turns into Q_m U_m v' e^{j theta_mm}, the
    rotated beamformer up to a phase no rate depends on.  A w_i of norm ~0 (no interference, or fewer
    interferers than N - 1) is replaced by the standard basis vector with the largest residual: any completion
    is then a valid frame (the equivariance holds in the generic case only).
    h (B, M, K, N) complex: Tx m's channel h_mk to Rx k (received amplitude h_mk^H v_m); direct (M, K) or
    (B, M, K) bool: k is Tx m's own Rx (one per row); interf (B, M, K) bool: the links summed in R_m."""
    B, M, K, N = h.shape
    real = h.real.dtype
    tiny = torch.finfo(real).tiny
    u1 = (h * direct.expand(B, M, K)[..., None].to(real)).sum(2)  # (B, M, N)
    u1 = u1 / torch.linalg.vector_norm(u1, dim=-1, keepdim=True).clamp_min(tiny)
    hw = h * interf[..., None].to(real)
    R = torch.einsum("bmki,bmkj->bmij", hw, hw.conj())  # (B, M, N, N) sum_k h_mk h_mk^H
    trace = torch.diagonal(R, dim1=-2, dim2=-1).real.sum(-1, keepdim=True)  # (B, M, 1)
    us = [u1]

    def orth(w: Tensor) -> Tensor:  # w (B, M, [n,] N) minus its components on u_1 .. u_i (twice)
        for _ in range(2):
            for u in us:
                u = u if w.dim() == 3 else u[:, :, None]
                w = w - u * (u.conj() * w).sum(-1, keepdim=True)
        return w

    for _ in range(1, N):
        w = orth((R @ us[-1][..., None])[..., 0])
        nw = torch.linalg.vector_norm(w, dim=-1, keepdim=True)
        bad = nw <= 1e-6 * trace.clamp_min(tiny)
        if bool(bad.any()):  # degenerate Krylov step: the standard basis vector with the largest residual
            res = orth(torch.eye(N, dtype=h.dtype, device=h.device).expand(B, M, N, N))  # rows: e_i's residuals
            pick = torch.linalg.vector_norm(res, dim=-1).argmax(-1)  # (B, M)
            alt = res.gather(2, pick[..., None, None].expand(B, M, 1, N))[:, :, 0]
            w = torch.where(bad, alt, w)
            nw = torch.linalg.vector_norm(w, dim=-1, keepdim=True)
        us.append(w / nw.clamp_min(tiny))
    return torch.stack(us, -1)


def frame_edge_features(c: Tensor, p_max: Tensor) -> Tensor:
    """Invariant link features in the Tx frame: c = U_m^H h_mk (..., N) complex (a channel over the noise std
    in :func:`tx_frame`'s coordinates), p_max (...) W -> (..., 3N - 2) real
    [ln(1 + P|c_1|^2), ..., ln(1 + P|c_N|^2), Re x_2 .. x_N, Im x_2 .. x_N], x_i = ln(1 + P||c||^2) c_1 c_i^* / ||c||^2:
    the log SNR along each frame direction (ln(1 + P|c_1|^2): the link's SNR / INR under MRT) and the relative
    phases weighted by the link's log gain.  Every entry is invariant under c -> e^{j theta} c (a phase per
    link) and continuous in c (a zero channel maps to 0)."""
    pw = p_max.to(c.real.dtype)[..., None]
    g = c.abs() ** 2
    tot = g.sum(-1, keepdim=True)
    x = c[..., :1] * c[..., 1:].conj() * (torch.log1p(pw * tot) / tot.clamp_min(torch.finfo(g.dtype).tiny))
    return torch.cat([torch.log1p(pw * g), x.real, x.imag], -1)


def conj_flip(c: Tensor, interf: Tensor) -> Tensor:
    """``feature_norm: frame_conj``: whether Tx m conjugates its frame coordinates (B, M) bool.  Conjugating all of
    Tx m's channels and its beamformer (h_mk -> h_mk^*, v_m -> v_m^*) leaves every |h_mk^H v_m| unchanged (and the
    Rayleigh law), a symmetry the unitary frame does not remove (it maps c -> c^*); the sign of the
    conjugation-odd t_m = sum_{k interf} sum_{i >= 2} Im(c_1k c_ik^*) |c_1k c_ik| fixes it: flip where t_m < 0
    (t_m -> -t_m under the conjugation; N = 1: never).  |t_m| <= 1e-9 sum |c_1k c_ik|^2 counts as 0 (no flip):
    t_m = 0 exactly when the frame coordinates are real up to a phase per link (e.g. N = 2 and one interferer,
    as u_2^H R_m u_1 > 0), where the features are conjugation-symmetric and rounding must not decide.
    c (B, M, K, N) = U_m^H h_mk, interf (B, M, K) bool."""
    x = c[..., :1] * c[..., 1:].conj() * interf[..., None].to(c.real.dtype)  # (B, M, K, N - 1)
    a = x.abs()
    return (x.imag * a).sum((-1, -2)) < -1e-9 * (a ** 2).sum((-1, -2))


def frame_edge_dim(tx_antennas: int) -> int:
    """Edge input width with ``feature_norm: frame``: two slots (direct / interfering, (5)) of 3N - 2 reals."""
    return 2 * (3 * tx_antennas - 2)


# =============================================================================== Ex1 parameters
class ENGNNParams(LearnedModule):
    """ENGNN for Ex1 (beamforming in interference channels): an :class:`ENGNNCore` with edge input 4N
    (5), Tx input P_m, Rx input the normalised noise std, and the beamformer read-out (26) from the edge
    (``readout='edge'``, ENGNN-E) or the Tx node (``'node'``, ENGNN-N)."""

    hparam_names: ClassVar[tuple[str, ...]] = ("tx_antennas", "layers", "d_edge", "d_node", "mlp_width", "d_msg",
                                               "readout", "feature_norm")

    def __init__(self, tx_antennas: int = 1, layers: int = 1, d_edge: int = 8, d_node: int = 8, mlp_width: int = 32,
                 d_msg: int = 8, readout: str = "edge", feature_norm: str = "none", seed: int = 0) -> None:
        super().__init__()
        if readout not in ("edge", "node"):
            raise ValueError(f"engnn readout must be 'edge' or 'node', got {readout!r}")
        if feature_norm not in FEATURE_NORMS:
            raise ValueError(f"engnn feature_norm must be one of {FEATURE_NORMS}, got {feature_norm!r}")
        self.feature_norm = feature_norm
        if feature_norm != "none":  # [s_direct, s_interfering], set by observe(); absent for 'none' (older files)
            self.register_buffer("scale", torch.zeros(2, dtype=torch.float64, device="cpu"))
        self.tx_antennas, self.layers = int(tx_antennas), int(layers)
        self.d_edge, self.d_node = int(d_edge), int(d_node)
        self.mlp_width, self.d_msg, self.readout = int(mlp_width), int(d_msg), readout
        n = self.tx_antennas
        d_in = frame_edge_dim(n) if feature_norm in ("frame", "frame_conj") else 4 * n
        self.core = ENGNNCore(d_in, 1, 1, d_edge=self.d_edge, d_node=self.d_node, hidden=self.mlp_width,
                              d_msg=self.d_msg, layers=self.layers, out_edge=n if readout == "edge" else 0,
                              out_tx=n if readout == "node" else 0, seed=seed)


    def observe(self, net: Network) -> None:
        """Set ``scale`` from the first training minibatch (``feature_norm`` 'linear' | 'mean', module docstring):
        the statistic of :func:`agents.wcgcn.channel_feature` over the direct links and, separately, over the
        interfering links the Tx hold (their CSI), at snr = P_m ||h_mk||^2 / sigma_k^2."""
        if self.feature_norm == "none" or float(self.scale[0]) > 0:
            return
        loc = net.local["bs"]
        snr = (loc["H"][:, :, :, 0, :].abs() ** 2).sum(-1) * loc["p_max"][..., None] / loc["noise"]  # (B, M, K)
        M, K = snr.shape[1:]
        direct = torch.eye(M, K, dtype=torch.bool, device=snr.device).expand_as(snr)
        csi = loc["csi"].to(torch.bool)

        def stat(x: Tensor) -> Tensor:  # 'mean': E ln(1 + snr); 'linear': the std of sqrt(snr) h/||h||'s reals
            if self.feature_norm == "linear":
                return x.mean().div(2 * self.tx_antennas).sqrt()
            return torch.log1p(x).mean()  # 'mean' and 'frame'

        own, cross = stat(snr[direct & csi]), stat(snr[~direct & csi]) if bool((~direct & csi).any()) else None
        with torch.no_grad():
            self.scale.copy_(torch.stack([own, own if cross is None else cross]).to(torch.float64).clamp_min(1e-6))


def ex1_edge_features(h: Tensor, direct: Tensor) -> Tensor:
    """(5) + (19c): h (..., N) complex channel over the noise std, direct (...) bool -> (..., 4N) real
    [Re(h 1{direct}); Re(h 1{interf}); Im(...); Im(...)]."""
    z = torch.zeros((), dtype=h.dtype, device=h.device)
    d = direct[..., None]
    return as_reals(torch.cat([torch.where(d, h, z), torch.where(d, z, h)], -1))


def _dense(x: Tensor, rows: Tensor, cols: Tensor, n_rows: int, n_cols: int, shape_tail: tuple[int, ...]) -> Tensor:
    """Per-edge (B, E, ...) -> dense (B, n_rows, n_cols, ...) at (rows, cols), 0 elsewhere (differentiable)."""
    B = x.shape[0]
    out = torch.zeros((B, n_rows * n_cols) + shape_tail, dtype=x.dtype, device=x.device)
    return out.index_copy(1, rows * n_cols + cols, x).reshape((B, n_rows, n_cols) + shape_tail)


def engnn_protocol(params: ENGNNParams, net: Network) -> Protocol:
    """The ``params.layers``-round ENGNN protocol for Ex1 on an interference network (module docstring)."""
    n_t, L, core = params.tx_antennas, params.layers, params.core
    if int(net.info["bs_antennas"]) != n_t:
        raise ValueError(f"engnn model has tx_antennas={n_t}, the scenario has {net.info['bs_antennas']}")
    if DL not in net.edges:
        raise ValueError("engnn needs the interference network's 'bs>ue' edges")
    d_node, d_edge, d_msg = params.d_node, params.d_edge, params.d_msg
    norm = {"linear": "linear", "mean": "mean"}.get(params.feature_norm, "none")
    frame = params.feature_norm in ("frame", "frame_conj")
    n_rx_all = int(net.info["n_ue"])
    n_tx_all = int(net.info["n_bs"])

    def tx_view(block: AgentBlock) -> tuple[EdgeView, Tensor]:
        """Tx block's in-edges k -> m of ``ue>bs`` and their dense mask (B, n, K)."""
        ev = block.edges[UL]
        return ev, _dense(ev.mask, ev.dst_local, ev.src, block.n, n_rx_all, ())

    def readout(block: AgentBlock) -> None:
        loc = block.local
        if params.readout == "edge":
            E = block.state["E"]
            ar = torch.arange(block.n, device=E.device)
            v = post_edge(core, E[:, ar, block.ids.to(E.device)])  # E_kk: Tx k's direct edge
        else:
            v = post_tx(core, block.state["f_tx"])
        v = v.to(loc["h_own"].dtype)
        if "flip" in block.state:  # frame_conj: v' for the conjugated coordinates -> v'^*
            v = torch.where(block.state["flip"][..., None], v.conj(), v)
        if "U" in block.state:  # feature_norm 'frame': v' in Tx m's frame -> v_m = U_m v'
            v = (block.state["U"] @ v[..., None])[..., 0]
        block.state["V"] = ex1_power_normalize(v, loc["p_max"])[..., None]

    def init_bs(block: AgentBlock) -> None:
        loc = block.local
        ev, mask = tx_view(block)
        H = loc["H"][:, :, :, 0, :].conj()  # h_mk (B, n, K, N): Tx m's channel to every Rx it has CSI of
        sigma = loc["noise"].sqrt()  # (B, n, K) noise std of each Rx
        direct = (block.ids.to(H.device)[:, None] == torch.arange(n_rx_all, device=H.device)[None, :])
        h = H / sigma[..., None].to(H.dtype)
        if frame:  # invariant features in Tx m's frame (tx_frame), scaled per class
            csi = loc["csi"].to(torch.bool)
            U = tx_frame(h, direct, csi & ~direct)
            block.state["U"] = U
            sv = torch.where(params.scale > 0, params.scale, 1.0).to(H.device, sigma.dtype)  # unobserved: 1
            c = (U.mH[:, :, None] @ h[..., None])[..., 0]  # (B, n, K, N): U_m^H h_mk
            if params.feature_norm == "frame_conj":  # conjugated coordinates where t_m < 0 (conj_flip)
                flip = conj_flip(c, csi & ~direct)
                block.state["flip"] = flip
                c = torch.where(flip[..., None, None], c.conj(), c)
            f = frame_edge_features(c, loc["p_max"][..., None].expand_as(sigma))
            f = f / sv[(~direct).long()][..., None].to(f.dtype)
            z = torch.zeros((), dtype=f.dtype, device=f.device)
            d = direct.expand(mask.shape)[..., None]
            e_in = torch.cat([torch.where(d, f, z), torch.where(d, z, f)], -1)
        elif params.feature_norm != "none":  # per-class scaled (module docstring): direct / interfering links
            sv = torch.where(params.scale > 0, params.scale, 1.0).to(H.device, sigma.dtype)  # unobserved: 1
            s_mk = sv[(~direct).long()]  # (n, K): s_direct on Tx k's own link, s_interfering elsewhere
            h = channel_feature(h, loc["p_max"][..., None].expand_as(sigma), 1.0, norm) / s_mk[..., None].to(H.dtype)
        if not frame:
            e_in = ex1_edge_features(h, direct.expand(mask.shape))
        E0 = _masked(torch.relu(_linear(e_in, core.pre_edge)), mask)
        block.state["E"] = E0
        block.state["f_tx"] = torch.relu(_linear(loc["p_max"][..., None], core.pre_tx))
        block.state["mask"] = mask
        readout(block)

    def init_ue(block: AgentBlock) -> None:
        ones = torch.ones_like(block.local["noise"])[..., None]  # sigma_k / sigma_k: channels normalised
        block.state["f_rx"] = torch.relu(_linear(ones, core.pre_rx))

    def send_tx(block: AgentBlock, ev: EdgeView) -> dict[str, Tensor]:
        E = block.state["E"][:, ev.src_local, ev.dst]  # E_mk for out-edge m -> k
        return {"f_tx": ev.gather_src(block.state["f_tx"]), "E": E}

    def recv_tx(block: AgentBlock, inbox: Inbox) -> None:
        block.state["from_tx"] = inbox

    def rx_layer(block: AgentBlock) -> None:
        layer = current_layer(block, L, "engnn")
        w = core.layers[layer - 1]
        inbox = block.state.pop("from_tx")
        ev = inbox.edges  # in-edges m -> k, k in this block
        mask = _dense(ev.mask, ev.src, ev.dst_local, n_tx_all, block.n, ())
        E = _dense(inbox["E"], ev.src, ev.dst_local, n_tx_all, block.n, (d_edge,))
        f_rx = block.state["f_rx"]
        loo = rx_edge_branch(w, E, f_rx[:, None], mask)  # (B, M, n, d_msg)
        block.state["loo"], block.state["f_rx_prev"] = loo, f_rx
        if layer < L:  # f_rx^(L) reaches no decision: not computed
            f_tx_e = _dense(inbox["f_tx"], ev.src, ev.dst_local, n_tx_all, block.n, (d_node,))
            block.state["f_rx"] = rx_update(w, f_rx, f_tx_e, E, mask)

    def send_rx(block: AgentBlock, ev: EdgeView) -> dict[str, Tensor]:
        return {"f_rx": ev.gather_src(block.state["f_rx_prev"]), "loo": block.state["loo"][:, ev.dst, ev.src_local]}

    def recv_rx(block: AgentBlock, inbox: Inbox) -> None:
        block.state["from_rx"] = inbox

    def tx_layer(block: AgentBlock) -> None:
        layer = current_layer(block, L, "engnn")
        w = core.layers[layer - 1]
        inbox = block.state.pop("from_rx")
        ev = inbox.edges  # in-edges k -> m, m in this block
        mask = block.state["mask"]
        E, f_tx = block.state["E"], block.state["f_tx"]
        last = layer == L  # at the last layer only what the read-out needs is computed
        if not last or params.readout == "node":
            f_rx_e = _dense(inbox["f_rx"], ev.dst_local, ev.src, block.n, n_rx_all, (d_node,))
            block.state["f_tx"] = tx_update(w, f_tx, f_rx_e, E, mask)
        if not last or params.readout == "edge":
            loo = _dense(inbox["loo"], ev.dst_local, ev.src, block.n, n_rx_all, (d_msg,))
            block.state["E"] = edge_update(w, E, tx_edge_branch(w, E, f_tx, mask), loo, mask)
        readout(block)

    phases = [
        Message("tx_edge", DL, (MsgField("f_tx", "real", (d_node,)), MsgField("E", "real", (d_edge,))),
                send_tx, recv_tx),
        Local("rx_layer", "ue", rx_layer),
        Message("rx_reply", UL, (MsgField("f_rx", "real", (d_node,)), MsgField("loo", "real", (d_msg,))),
                send_rx, recv_rx),
        Local("tx_layer", "bs", tx_layer),
    ]
    return Protocol("engnn", ("bs", "ue"), {"bs": init_bs, "ue": init_ue}, phases, L, Output("bs", "V"),
                    unit="bit/s/Hz", meta={"layers": L, "readout": params.readout, "d_edge": d_edge,
                                           "trainable_parameters": params.n_trainable()}, module=params)


# =============================================================================== options, declaration
class ENGNNOptions(LearnedOptions):
    """YAML options of ``name: engnn``.  checkpoint: 'shipped' (Ex1 model trained on fresh samples, ex1_fresh),
    'shipped:<name>' (one of :data:`SHIPPED_MODELS`), 'untrained' or a path; hyper-parameters default to
    the checkpoint's (untrained: ``tx_antennas`` from the scenario)."""

    tx_antennas: int | None = Field(None, ge=1)
    layers: int | None = Field(None, ge=1, description="updating layers L (= communication rounds); "
                                    "paper Ex1: 1")
    d_edge: int | None = Field(None, ge=1, description="edge representation width d_E; paper Ex1: 8")
    d_node: int | None = Field(None, ge=1, description="node representation width")
    mlp_width: int | None = Field(None, ge=1, description="MLP hidden width")
    d_msg: int | None = Field(None, ge=1, description="width of the aggregated MLP outputs (and the Rx reply)")
    readout: Literal["edge", "node"] | None = Field(None, description="beamformer from the direct edge "
                                                    "(ENGNN-E) or the Tx node (ENGNN-N)")
    feature_norm: Literal["none", "linear", "mean", "frame", "frame_conj"] | None = Field(
        None, description="edge input: none (h / sigma, the paper) | linear (h / sigma over its training-set std) "
        "| mean (direction of h times ln(1 + snr) over its training-set mean) | frame (invariant features in each "
        "Tx's canonical frame, beamformer rotated back) | frame_conj (frame, and each Tx's conjugation fixed), "
        "direct / interfering links apart")


def loss_sum_rate(wsr: dict[int, Tensor]) -> Tensor:
    """-mean over samples (and loss layers) of the sum rate [bit/s/Hz] (problem (6a))."""
    return -torch.stack([w.mean() for w in wsr.values()]).mean()


def _protocol(params: ENGNNParams, net: Network, opts: ENGNNOptions) -> Protocol:
    return engnn_protocol(params, net)


MODEL = LearnableSpec("engnn", ENGNNParams, ENGNNOptions, _protocol, SHIPPED_MODELS["ex1_fresh"],
                      SHIPPED_RECIPES["ex1_fresh"], TRAIN_DEFAULTS, loss=loss_sum_rate, named=SHIPPED_MODELS,
                      recipes=SHIPPED_RECIPES)


def build(opts: ENGNNOptions, net: Network) -> Protocol:
    """Inference protocol (an untrained model takes ``tx_antennas`` from the scenario)."""
    if opts.checkpoint == "untrained":
        opts = opts.model_copy(update={"tx_antennas": opts.tx_antennas or int(net.info["bs_antennas"])})
    return MODEL.build(opts, net)


register_algorithm(AlgorithmSpec("engnn", ("interference",), ENGNNOptions, build,
                                 "ENGNN eq. (19)-(26): node + edge updates on the Tx/Rx graph, MAX "
                                 "aggregations; Ex1 beamforming (readout edge|node); checkpoint "
                                 "shipped|shipped:NAME|untrained|PATH", learnable=MODEL.learnable, check=MODEL.check))

__all__ = ["ENGNNCore", "LayerWeights", "MLP", "edge_update", "engnn_forward", "engnn_layer", "ex1_power_normalize",
           "leave_one_out_max", "post_edge", "post_rx", "post_tx", "preprocess", "rx_edge_branch", "rx_update",
           "tx_edge_branch", "tx_update"]
