"""Model-GNN and Vanilla-GNN MISO precoding (Model-GNN paper, Sec. II-B eq. (7), Sec. III-C eq. (12)/(15)).

Problem P1 (1): BS k with M antennas serves its |I_k| single-antenna UEs, max sum_i log(1 + SINR_i),
Tr(V^H V) <= P_k (a sum-power constraint per BS).  The paper's N antennas / K users are this family's
``bs_antennas`` M / a BS's served UEs; its h_k (the channel vector, y_k = h_k^H v) is the conjugate of
the family's row H_k (1 x M).

Graph: bipartite antennas x users of one BS; features live on the edges (n, k): d_nk in R^J, input
d_nk^(0) = [Re h_nk, Im h_nk] (J_0 = 2), output d_nk^(L) = [Re v^_nk, Im v^_nk] (J_L = 2).

Model-GNN layer l (SPECS §2, eq. (12) with (15); SPECS drops (15)'s term (c) by aggregating only d_ik over the
antennas, P^T sum_i d_ik; this layer keeps it, P acting on the antenna sum of the whole c_ik -- a superset of
SPECS' layer, P's Taylor rows at zero give it back; it costs compute, no signaling in the single cell):
    the J reals of d_nk are read as J/2 complex features D_f (M x K) ("complex feature pairs");
    A_f = H D_f (K x K), a_jk = h_j^H d_k           (Taylor step D <- 2D - D H D of the pseudo-inverse;
    c_nk = [d_nk, (D_f A_f)_nk for every f]          the paper's (5) writes the factors the other way round)
    d_nk <- sigma(S^T c_nk + P^T sum_i c_ik + Q^T sum_j c_nj)     (12), sums over all antennas / all users
with separate S, P, Q (2J x J') per layer and sigma(X) = X / ||X||_F over the whole sample (all n, k and
features; Sec. IV-A).  The self-including sums are the paper's reparametrisation s = s' - p - q of (12).
Vanilla-GNN (7): the same layer without the Taylor half (c_nk = d_nk), the baseline the paper argues
against.  Output normalisation: V = sqrt(P_k) V^ / ||V^||_F (the paper writes P_max V^/||V^||; the power
constraint Tr(V^H V) <= P_max needs the square root), so every BS transmits exactly P_k.

Hidden widths (Tab. I): Model-GNN [32, 32, 8] (L = 4 layers: 2 -> 32 -> 32 -> 8 -> 2), Vanilla-GNN
[64, 512, 512, 64]; Adam lr 0.01.  Option ``aggr: mean`` (hyper-parameter of the checkpoint; default ``sum``, the
paper's equations): the two aggregations of (12) are means, as the authors' public code pools -- the same function
class (P_sum = P_mean / M, Q_sum = Q_mean / K), but under Adam the sums hold training on a plateau at ~3.5 % of
WMMSE for hundreds of steps at N = 64 (:class:`EdgeGNNParams`); the N = 64 models are trained with means.
Weights initialised U(-1/sqrt(2 J), 1/sqrt(2 J)) per layer from
``seed``.  Unsupervised loss: -mean sum rate (nat/Hz; the paper's bit/s/Hz up to the factor ln 2).

UEs with N > 1 antennas: one virtual user per (UE, receive antenna) (as ICGNN's virtual nodes), V_i's
column r being the precoder of antenna r; N = 1 is the paper's MISO case.

Distributed reading (SPECS §2): the single-cell Model-GNN runs inside each BS on its own CSI (one local
phase, no signaling); with several BSs every BS precodes its own UEs alone (no coordination).

Training: ``python -m dsim train scenarios/train_model_gnn_N8K4.yaml`` (etc.; the YAML headers say how each
shipped model ``agents/models/model_gnn_N{N}K{K}.pt`` was produced).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from agents.wmmse import SERVE, edge_channels
from dsim.jit import compilable
from dsim.learn import LearnableSpec, LearnedModule, LearnedOptions
from dsim.network import Network
from dsim.protocol import AgentBlock, EdgeView, Inbox, Local, Message, Output, Protocol
from dsim.protocol import Field as MsgField
from dsim.registry import AlgorithmSpec, OptionError, register_algorithm

Tensor = torch.Tensor

MODELS = Path(__file__).resolve().parent / "models"
#: training defaults (Tab. I: Adam, lr 0.01); batch and steps chosen here (the paper gives epochs only)
TRAIN_DEFAULTS = {"steps": 2000, "batch": 100, "lr": 0.01, "lr_decay_every": 1_000_000, "lr_decay": 0.1,
                  "betas": (0.9, 0.999), "weight_decay": 0.0, "clip": 1e6}


# =============================================================================== parameters
class EdgeGNNParams(LearnedModule):
    """Per-layer weights S_l, P_l, Q_l (in_l x out_l) of an edge GNN on the antenna-user graph.

    widths = (2, *hidden, 2); in_l = 2 J_l with the Taylor half (Model-GNN), J_l without (Vanilla-GNN).

    ``aggr``: the pooling of the two aggregations of (12)/(7), ``sum`` (the paper's equations, the default) or
    ``mean`` (sum over the M antennas / M, sum over the K users / K, as the authors' public code pools; the paper
    allows both, Sec. II-B).  The two span the same functions (P_sum = P_mean / M, Q_sum = Q_mean / K for a
    given N, K), but not the same training: Adam moves every weight by about lr per step whatever its gradient,
    so with sums a step of P changes the layer's output M times (Q: K times) as much as a step of S, and at
    N = 64 the antenna-sum term (constant over the antennas: a beam that ignores h_k) swamps the per-edge term
    from the first steps; training then sits near 3.5 % of WMMSE for ~250-400 steps (see
    scenarios/train_model_gnn_N64K16.yaml).  Means make the three steps comparable.

    ``taylor_scale`` (Model-GNN only; not in the paper): ``none`` (the paper's layer, the default) or
    ``spectral``, the channel of the Taylor terms scaled per sample by its spectral norm
    (:func:`spectral_scaled`)."""

    hparam_names: ClassVar[tuple[str, ...]] = ("hidden", "aggr", "taylor_scale")
    taylor: ClassVar[bool] = True

    def __init__(self, hidden: tuple[int, ...] = (32, 32, 8), aggr: str = "sum", taylor_scale: str = "none",
                 seed: int = 0) -> None:
        super().__init__()
        self.hidden = tuple(int(h) for h in hidden)
        self.aggr = str(aggr)
        self.taylor_scale = str(taylor_scale)
        if self.aggr not in ("sum", "mean"):
            raise ValueError(f"model_gnn: aggr must be sum or mean, got {self.aggr!r}")
        if self.taylor_scale not in ("none", "spectral") or (self.taylor_scale != "none" and not self.taylor):
            raise ValueError(f"taylor_scale must be none or spectral (Model-GNN only), got {self.taylor_scale!r}")
        if self.taylor and any(h % 2 for h in self.hidden):
            raise ValueError(f"model_gnn: hidden widths must be even (complex feature pairs), got {self.hidden}")
        widths = (2, *self.hidden, 2)
        g = torch.Generator(device="cpu")
        g.manual_seed(seed)
        cpu = torch.device("cpu")

        def init(a: int, b: int) -> nn.Parameter:
            bound = 1.0 / math.sqrt(a)
            return nn.Parameter((2 * torch.rand(a, b, generator=g, dtype=torch.float64, device=cpu) - 1) * bound)

        mult = 2 if self.taylor else 1
        self.s = nn.ParameterList(init(mult * a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.p = nn.ParameterList(init(mult * a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.q = nn.ParameterList(init(mult * a, b) for a, b in zip(widths[:-1], widths[1:]))

    @property
    def layers(self) -> int:
        return len(self.s)


class ModelGNNParams(EdgeGNNParams):
    """Model-GNN (12)/(15), Tab. I widths [32, 32, 8]."""


class VanillaGNNParams(EdgeGNNParams):
    """Vanilla-GNN (7), Tab. I widths [64, 512, 512, 64]."""

    taylor: ClassVar[bool] = False

    def __init__(self, hidden: tuple[int, ...] = (64, 512, 512, 64), aggr: str = "sum", taylor_scale: str = "none",
                 seed: int = 0) -> None:
        super().__init__(hidden, aggr, taylor_scale, seed)


# =============================================================================== the layer maths
# Layouts.  The single-cell layers keep the edge features "feature-major", X (..., J, M, K) real with row
# 2 f + r = Re (r = 0) / Im (r = 1) of complex feature pair f (the order of the rows of S, P, Q), so that
# [Re D_f; Im D_f] is the contiguous (2 M x K) block X[..., 2 f : 2 f + 2, :, :] and both Taylor products and
# the linear maps are plain real (batched) matmuls without layout copies.  The multi-cell code keeps the
# edge-major layout x (..., M, K, J) (:func:`taylor_features`, a view change around the same maths).
def complex_rows(G: Tensor) -> Tensor:
    """The real (2K x 2M) matrix of complex G (..., K, M): [[Re G, -Im G], [Im G, Re G]], acting on stacked
    [Re d; Im d] as G d does on d."""
    return torch.cat([torch.cat([G.real, -G.imag], -1), torch.cat([G.imag, G.real], -1)], -2)


@compilable
def taylor_blocks(Gc: Tensor, X: Tensor, group: Tensor | None = None, own_gain: bool = False) -> list[Tensor]:
    """The Taylor half of c = [d, D A] (Step 1, Sec. III-C) in the feature-major layout: X (..., J, M, K) real
    features, Gc (..., 2K, 2M) = :func:`complex_rows` of the channel rows G (..., K, M) (G_k = h_k^H) -> a list
    of (..., J, M, K) blocks: per complex feature pair f, A_f = G D_f (K x K, a_jk = h_j^H d_k) and D_f A_f
    (M x K) ([D A]; the paper's term).

    ``group`` (..., K) bool: [sum_{j in group} d_nj a_jk, sum_{j not in group} d_nj a_jk] (their sum is D A);
    ``own_gain``: [d_nk a_kk, sum_{j != k} d_nj a_jk] (see :func:`taylor_features`)."""
    *lead, J, M, K = X.shape
    F = J // 2
    Ds = X.reshape(*lead, F, 2 * M, K)                                         # [Re D_f; Im D_f] (2M x K)
    dr, di = X.reshape(*lead, F, 2, M, K).unbind(-3)                           # Re D_f, Im D_f (M x K)
    Dflip = torch.stack([-di, dr], -3).reshape(*lead, F, 2 * M, K)             # [-Im D_f; Re D_f]
    # A_f = G D_f for every f at once: Gc (2K x 2M) @ [Ds_1 ... Ds_F] (2M x F K), one GEMM per sample
    Dcols = Ds.movedim(-3, -2).reshape(*lead, 2 * M, F * K)
    ar, ai = (Gc @ Dcols).reshape(*lead, 2, K, F, K).movedim(-2, -4).unbind(-3)   # Re A_f, Im A_f (..., F, K, K)

    def times_A(Dst: Tensor, Dfl: Tensor) -> Tensor:
        """complex D_f A_f as [Re; Im] (..., J, M, K): [Dr; Di] Ar + [-Di; Dr] Ai."""
        return (Dst @ ar + Dfl @ ai).reshape(*lead, J, M, K)

    DA = times_A(Ds, Dflip)
    if own_gain:
        akr = torch.diagonal(ar, dim1=-2, dim2=-1).unsqueeze(-2)               # Re a_kk (..., F, 1, K)
        aki = torch.diagonal(ai, dim1=-2, dim2=-1).unsqueeze(-2)
        own = torch.stack([dr * akr - di * aki, dr * aki + di * akr], -3).reshape(*lead, J, M, K)  # d_nk a_kk
        return [own, DA - own]
    if group is None:
        return [DA]
    g = group.to(X.dtype).unsqueeze(-2).unsqueeze(-3)                          # (..., 1, 1, K) over columns j
    DA_in = times_A(Ds * g, Dflip * g)
    return [DA_in, DA - DA_in]


@compilable
def taylor_features(G: Tensor, x: Tensor, group: Tensor | None = None, own_gain: bool = False) -> Tensor:
    """c = [d, D A] of Step 1 (Sec. III-C) in the edge-major layout: x (..., M, K, J) real edge features (pairs
    (Re, Im) of J/2 complex features), G (..., K, M) complex channel rows (G_k = h_k^H) -> (..., M, K, 2J):
    per complex feature pair f, A_f = G D_f (K x K) and D_f A_f (M x K) (:func:`taylor_blocks`).

    With ``group`` (..., K) bool (multi-cell ``taylor_split: cell``: the users served by the BS), the Taylor sum
    (D A)_nk = sum_j d_nj a_jk is split into its own-group and other-group parts, c = [d, sum_{j in group},
    sum_{j not in group}] (..., M, K, 3J); their sum is the paper's term.  With ``own_gain`` (``taylor_split:
    self``) the split is j = k against j != k: c = [d, d_nk a_kk, sum_{j != k} d_nj a_jk], the user's own
    effective gain a_kk = h_k^H d_k apart from the interference-cancelling part."""
    X = x.movedim(-1, -3).contiguous()                                         # (..., J, M, K)
    blocks = taylor_blocks(complex_rows(G), X, group, own_gain)
    return torch.cat([x, *(b.movedim(-3, -1) for b in blocks)], dim=-1)


@compilable
def edge_layer(blocks: list[Tensor], S: Tensor, P: Tensor, Q: Tensor, mask: Tensor | None,
               mean: bool = False) -> Tensor:
    """S^T c_nk + P^T sum_i c_ik + Q^T sum_j c_nj (12)/(7) before the activation, feature-major; with ``mean``
    the two sums are means (over the M antennas, over the users present; :class:`EdgeGNNParams` ``aggr``).

    blocks: c split along its features, each (..., J_b, M, K) real (c = [d] or [d, D A], :func:`taylor_blocks`);
    S/P/Q (sum_b J_b, F') with rows in block order; mask (..., 1, 1, K) real 1 for a present user, 0 for a
    padding slot (None: every user present).  Returns (..., F', M, K) with padding users zeroed."""
    *lead, _, M, K = blocks[0].shape
    y = p = q = 0
    r0 = 0
    for c in blocks:
        rows = slice(r0, r0 + c.shape[-3])
        r0 = rows.stop

        def w(W: Tensor, rows: slice = rows) -> Tensor:                        # W^T broadcast: a plain bmm
            return W[rows].T.expand(*lead, -1, -1)

        y = y + w(S) @ c.reshape(*lead, -1, M * K)                            # (..., F', M K)
        p = p + w(P) @ c.sum(-2)                                               # (..., F', K): sums over antennas
        q = q + w(Q) @ c.sum(-1)                                               # (..., F', M): sums over users
    if mean:
        p = p / M
        q = q / (K if mask is None else mask.sum(-1).clamp_min(1))                # mask.sum: (..., 1, 1) users
    y = y.reshape(*lead, -1, M, K) + p.unsqueeze(-2) + q.unsqueeze(-1)
    return y if mask is None else y * mask


@compilable
def normalize(y: Tensor) -> Tensor:
    """sigma(X) = X / ||X||_F over a sample's edges and features: y (..., J, M, K) (or any order of the last
    three axes)."""
    nrm = torch.linalg.vector_norm(y, dim=(-3, -2, -1), keepdim=True)
    return y / nrm.clamp_min(torch.finfo(y.dtype).tiny)


def spectral_scaled(G: Tensor, user_mask: Tensor) -> Tensor:
    """Option ``taylor_scale: spectral`` (not in the paper): G (B, C, K, M) -> G (sqrt(M) + sqrt(K_c)) /
    sigma_max(G), per sample and BS c, with K_c its present users (user_mask (C, K)).  sqrt(M) + sqrt(K) is
    about sigma_max of an i.i.d. CN(0, 1) channel, so a typical draw keeps its scale.  The Taylor step
    D <- 2 D - D H^H D is Newton-Schulz's pseudo-inverse iteration, which converges only for
    ||I - H D|| < 1.  A fixed learned step therefore overshoots on draws whose spectrum is concentrated in one
    direction: the paper's layer at (32, 16) gets 27.6 % of WMMSE on one draw of 200 (README).  With this
    scaling the step sees the same largest singular value on every draw (the input features d = h stay as
    they are).  A BS computes sigma_max from its own channel, so no signaling is added."""
    K = user_mask.sum(-1).to(G.real.dtype)                                     # (C,)
    ref = math.sqrt(G.shape[-1]) + K.sqrt()
    smax = torch.linalg.matrix_norm(G, ord=2).clamp_min(torch.finfo(G.real.dtype).tiny)   # (B, C)
    return G * (ref / smax)[..., None, None].to(G.dtype)


def gnn_precoders(params: EdgeGNNParams, G: Tensor, user_mask: Tensor, power: Tensor) -> Tensor:
    """The GNN's precoders for each BS's users: G (B, C, K, M) complex channel rows (zero rows for padding
    slots), user_mask (C, K) bool, power (B, C) W -> V (B, C, M, K) complex with ||V[b, c]||_F^2 = P_c.

    Features feature-major (..., J, M, K) (:func:`taylor_blocks`), input d_nk = [Re h_nk, Im h_nk]."""
    rdt = G.real.dtype
    # (1, C, 1, 1, K); None when no slot is padding (nothing to zero)
    mask = None if bool(user_mask.all()) else user_mask.to(rdt)[None, :, None, None, :]
    x = torch.stack([G.real, -G.imag], dim=-3).transpose(-2, -1).contiguous()  # (B, C, 2, M, K) = [Re h, Im h]
    if params.taylor:
        Gc = complex_rows(spectral_scaled(G, user_mask) if params.taylor_scale == "spectral" else G)
    else:
        Gc = None
    L = params.layers
    for ell in range(L):
        blocks = [x, *taylor_blocks(Gc, x)] if Gc is not None else [x]
        y = edge_layer(blocks, params.s[ell].to(rdt), params.p[ell].to(rdt), params.q[ell].to(rdt), mask,
                       params.aggr == "mean")
        x = normalize(y) if ell < L - 1 else y
    V = torch.complex(x[..., 0, :, :], x[..., 1, :, :])                        # (B, C, M, K)
    nrm = torch.linalg.vector_norm(V, dim=(-2, -1)).clamp_min(torch.finfo(rdt).tiny)
    return (power.to(rdt).sqrt() / nrm)[..., None, None].to(V.dtype) * V


def pack_served(H: Tensor, sv: EdgeView) -> tuple[Tensor, Tensor, Tensor]:
    """Each BS's served UEs' channel rows, one virtual user per (UE, receive antenna), zero-padded to the
    largest cell.

    H (B, n_bs, I, N, M) -> (G (B, n_bs, U N, M) with row u N + r = antenna r of the BS's u-th served UE,
    filled (n_bs, U N) bool, slot (S,) of each served edge among its BS's)."""
    H_s = sv.masked(edge_channels(H, sv))                                      # (B, S, N, M)
    slot, U = sv.dst_slots()
    B, _, N, M = H_s.shape
    G = torch.zeros(B, sv.n_dst, U, N, M, dtype=H_s.dtype, device=H_s.device)
    G[:, sv.dst_local, slot] = H_s
    filled = torch.zeros(sv.n_dst, U, N, dtype=torch.bool, device=H_s.device)
    filled[sv.dst_local, slot] = True
    return G.reshape(B, sv.n_dst, U * N, M), filled.reshape(sv.n_dst, U * N), slot


# =============================================================================== protocol
#: a BS's precoders from its packed served channels: (block, G (B, n_bs, U N, M), filled, slot) -> (B, n_bs, M, U N)
Precoders = Callable[[AgentBlock, Tensor, Tensor, Tensor], Tensor]


def bs_precoding_protocol(name: str, net: Network, precoders: Precoders, module: nn.Module,
                          meta: dict[str, Any]) -> Protocol:
    """One round in which every BS computes its own users' precoders from its own CSI (local phase
    ``bs_precode``, no signaling); decision V per served UE (B, S, M, N): column r of V_i is the precoder of
    UE i's virtual user r (its receive antenna r).  ``precoders`` maps the BS's packed channels
    (:func:`pack_served`) to one precoder column per virtual user."""
    N = int(net.info["ue_antennas"])

    def init(block: AgentBlock) -> None:
        sv = block.edges[SERVE]
        block.state["V"] = torch.zeros(block.batch, sv.size, block.info["bs_antennas"], N,
                                       dtype=block.info["dtype"], device=block.device)

    def precode(block: AgentBlock) -> None:
        sv = block.edges[SERVE]
        G, filled, slot = pack_served(block.local["H"], sv)
        V = precoders(block, G, filled, slot)                                   # (B, n_bs, M, U N)
        B, C, M, _ = V.shape
        V = V.reshape(B, C, M, -1, N).movedim(3, 1)                             # (B, U, n_bs, M, N)
        block.state["V"] = V[:, slot, sv.dst_local]                             # (B, S, M, N)

    return Protocol(name, ("bs", "ue"), {"bs": init}, [Local("bs_precode", "bs", precode)], 1,
                    Output("bs", "V", SERVE), unit="nat/Hz", meta=meta, module=module)


def gnn_protocol(name: str, params: EdgeGNNParams, net: Network) -> Protocol:
    """Model-GNN / Vanilla-GNN at every BS (:func:`bs_precoding_protocol` with :func:`gnn_precoders`)."""
    return bs_precoding_protocol(
        name, net, lambda block, G, filled, slot: gnn_precoders(params, G, filled, block.local["power"]), params,
        {"layers": params.layers, "trainable_parameters": params.n_trainable()})


class ModelGNNOptions(LearnedOptions):
    """YAML options of ``name: model_gnn``: checkpoint ('shipped' = N = 32, K = 16 at 10 dB; 'shipped:N{N}K{K}' for
    each of :data:`SHIPPED_SIZES` at 10 dB, 'shipped:N{N}K{K}_snr0' / '_snr20' at 0 / 20 dB; 'shipped:N32Kvar' =
    N = 32 trained on K ~ U{2..12} (Fig. 6); 'shipped:N32Kexp' = N = 32 trained on K ~ Exp(mean 4) rounded, >= 2
    (Fig. 6's law, SPECS §2); 'shipped:N32K16_spectral' = the (32, 16) model with taylor_scale: spectral; or a
    path such as agents/models/model_gnn_N8K4.pt), init_seed, hidden widths, aggregation and taylor_scale (must
    match the checkpoint's)."""

    hidden: tuple[int, ...] | None = Field(None, description="hidden widths J_1..J_{L-1}; default the checkpoint's")
    aggr: Literal["sum", "mean"] | None = Field(None, description="the aggregations of (12): the paper's sums or "
                                                "means (the authors' code; trains without the initial plateau at "
                                                "large N); default the checkpoint's (untrained: sum)")
    taylor_scale: Literal["none", "spectral"] | None = Field(
        None, description="channel of the Taylor terms: none (the paper's) | spectral (scaled by its spectral norm "
        "per sample: no failure on concentrated spectra; not in the paper); default the checkpoint's (untrained: "
        "none); model_gnn only")


class VanillaGNNOptions(ModelGNNOptions):
    """YAML options of ``name: vanilla_gnn`` (as model_gnn; 'shipped' = N = 8, K = 4 at 10 dB; no Taylor terms, so
    no taylor_scale but none)."""

    taylor_scale: Literal["none"] | None = Field(None, description="none only (the Vanilla-GNN has no Taylor terms)")


def sum_rate_loss(wsr: dict[int, Tensor]) -> Tensor:
    """-mean over samples of the sum rate (nat/Hz) at the loss rounds (Sec. III-C, unsupervised)."""
    return -torch.stack([w.mean() for w in wsr.values()]).mean()


#: the packaged single-cell Model-GNN models (Tab. II, 1000 training samples): ``checkpoint: shipped:N{N}K{K}``
#: at SNR 10 dB and ``shipped:N{N}K{K}_snr{S}`` at S = 0 and 20 dB (:data:`SHIPPED_SNRS`, each trained at its
#: own SNR); each recipe scenarios/train_model_gnn_N{N}K{K}[_snr{S}].yaml says how it was produced.  Also
#: ``shipped:N32Kvar`` / ``shipped:N32Kexp``: N = 32 trained on K drawn per minibatch, uniform on 2..12 / the
#: paper's Exp(mean 4) (Fig. 6, scenarios/train_model_gnn_N32Kvar.yaml / _N32Kexp.yaml); ``shipped:N32K16_spectral``:
#: the (32, 16) 10 dB recipe with ``taylor_scale: spectral`` (:func:`spectral_scaled`)
SHIPPED_SIZES = ((8, 4), (32, 16), (64, 16), (64, 32))
SHIPPED_SNRS = (0, 20)
_SHIPPED = ([f"N{n}K{k}" for n, k in SHIPPED_SIZES]
            + [f"N{n}K{k}_snr{s}" for n, k in SHIPPED_SIZES for s in SHIPPED_SNRS] + ["N32Kvar", "N32Kexp"]
            + ["N32K16_spectral"])
MODEL = LearnableSpec("model_gnn", ModelGNNParams, ModelGNNOptions,
                      lambda params, net, opts: gnn_protocol("model_gnn", params, net),
                      MODELS / "model_gnn_N32K16.pt", "scenarios/train_model_gnn_N32K16.yaml", TRAIN_DEFAULTS,
                      loss=sum_rate_loss, named={tag: MODELS / f"model_gnn_{tag}.pt" for tag in _SHIPPED},
                      recipes={tag: f"scenarios/train_model_gnn_{tag}.yaml" for tag in _SHIPPED})
VANILLA = LearnableSpec("vanilla_gnn", VanillaGNNParams, VanillaGNNOptions,
                        lambda params, net, opts: gnn_protocol("vanilla_gnn", params, net),
                        MODELS / "vanilla_gnn_N8K4.pt", "scenarios/train_vanilla_gnn_N8K4.yaml", TRAIN_DEFAULTS,
                        loss=sum_rate_loss)

register_algorithm(AlgorithmSpec("model_gnn", ("multicell",), ModelGNNOptions, MODEL.build,
                                 "Model-GNN MISO precoding per BS, eq. (12)/(15); checkpoint shipped|untrained|PATH",
                                 learnable=MODEL.learnable, check=MODEL.check))
register_algorithm(AlgorithmSpec("vanilla_gnn", ("multicell",), VanillaGNNOptions, VANILLA.build,
                                 "Vanilla edge-GNN MISO precoding per BS, eq. (7) (Model-GNN paper's baseline)",
                                 learnable=VANILLA.learnable, check=VANILLA.check))


# =============================================================================== multi-cell P2 (Sec. III-E)
#: the aggregations of the multi-cell layer whose weights depend on the edge type, in the order of W_agg's axis 1
MC_TERMS = ("p_a", "p_r", "q_a", "q_r")
#: the backhaul edge set the multi-cell Model-GNN exchanges its cross-cell antenna sums over (link class bh)
BACKHAUL = "bs>bs"


class ModelGNNMCParams(LearnedModule):
    """Weights of the multi-cell Model-GNN (Sec. III-E), per layer l: ``w_self[l]`` = s and ``w_agg[l]`` =
    (2, 4) blocks for p_a, p_r, q_a, q_r of the P2 update: axis 0 the edge type (0: intra-cell edge, the user
    is served by the antenna's BS; 1: inter-cell edge), axis 1 the terms :data:`MC_TERMS`.  s is shared by
    both types (the type enters through the aggregations: the per-edge product c s is the layer's one large
    matmul).  Widths (2, *hidden, 2) as the single-cell Model-GNN (Tab. I: [32, 32, 8]).

    ``complex_weights`` (default False: the paper's unconstrained real weights): every weight is complex-linear
    on the complex feature pairs, a (J_l x J_{l+1}/2) complex matrix w = w_r + j w_i acting as the real block
    [[w_r, w_i], [-w_i, w_r]] on (Re, Im) -- a subset of the paper's real weights (2 J_l x J_{l+1}) that never
    mixes h with conj(h), so the policy commutes with a common phase rotation of all channels (as the optimal
    P2 policy does).
    Measured at (3, 8, 4): no faster escape from the initial plateau than real weights (2.7 nat/Hz after 80
    steps either way).  Init U(-1/sqrt(p J_l), 1/sqrt(p J_l)) from ``seed`` (p = :attr:`taylor_parts`).

    Options beyond the paper (all off by default = the paper's layer; the shipped models use all three):

    * ``aggr: mean`` -- Step-2 aggregations are means (:func:`mc_edge_layer`), as the authors' public code pools;
      escapes the initial plateau in ~50 steps instead of ~200 at (3, 8, 4).
    * ``taylor_split`` -- ``self``: c = [d, d_k a_kk, sum_{j != k} d_j a_jk] (the user's own gain apart from the
      interference-cancelling part); ``cell``: own-cell / other-cell users j (:func:`taylor_features`).
    * ``user_gate`` -- the per-user soft selection :func:`user_gate` with learned exponents ``gamma``
      (hidden layers x 2 edge types, init 0).
    * ``self_per_type`` -- the self weight s has its own value per edge type (``w_self[l]`` (2, p J_l, J_{l+1})),
      as the paper's "inter-cell edges are updated similarly" reads (its own weight set); default False: one s.
    * ``norm: graph`` -- sigma = X/||X||_F over the whole sample's edges (every BS's; SPECS §2), which costs one
      scalar ||X_m||_F^2 per BS per hidden layer over the backhaul; default ``bs``: over each BS's edges.

    Why: with the paper's layer the trained policy equals coordinated RZF over all users (each BS inverting its
    channel to every user, equal weights): 62-63 % of WMMSE at (M, N, K) = (3, 8, 4), 84 % at (2, 16, 8), where
    the previous shipped models stopped.  WMMSE serves only 2.25 of the 4 users per cell at (3, 8, 4) (about 6 of
    8 at (2, 16, 8)); coordinated RZF over WMMSE's served users reaches 98 % of WMMSE, over the 2 strongest users
    per cell 93 % (held-out seed 900).  A policy near the paper's T V must switch users off, which the
    homogeneous layer with sigma = X/||X|| does not learn.  Short runs (300 steps, (3, 8, 4), validation nat/Hz,
    WMMSE 19.0): sum 10.8 (the earlier helper's curve), mean 11.81, mean + self 12.45, mean + self + gate 14.34
    and rising."""

    hparam_names: ClassVar[tuple[str, ...]] = ("hidden", "complex_weights", "aggr", "taylor_split", "user_gate",
                                               "self_per_type", "norm", "gate_floor")
    resizable_hparams: ClassVar[tuple[str, ...]] = ("hidden", "gate_floor")

    def __init__(self, hidden: tuple[int, ...] = (32, 32, 8), complex_weights: bool = False, aggr: str = "sum",
                 taylor_split: str = "none", user_gate: bool = False, self_per_type: bool = False,
                 norm: str = "bs", gate_floor: bool = False, seed: int = 0) -> None:
        super().__init__()
        self.hidden = tuple(int(h) for h in hidden)
        self.complex_weights = bool(complex_weights)
        self.aggr = str(aggr)
        self.taylor_split = str(taylor_split)
        self.user_gate = bool(user_gate)
        self.self_per_type = bool(self_per_type)
        self.norm = str(norm)
        self.gate_floor = bool(gate_floor)
        if self.gate_floor and not self.user_gate:
            raise ValueError("model_gnn_mc: gate_floor needs user_gate: true")
        if self.aggr not in ("sum", "mean"):
            raise ValueError(f"model_gnn_mc: aggr must be sum or mean, got {self.aggr!r}")
        if self.norm not in ("bs", "graph"):
            raise ValueError(f"model_gnn_mc: norm must be bs or graph, got {self.norm!r}")
        if self.taylor_split not in ("none", "cell", "self"):
            raise ValueError(f"model_gnn_mc: taylor_split must be none, cell or self, got {self.taylor_split!r}")
        if any(h % 2 for h in self.hidden):
            raise ValueError(f"model_gnn_mc: hidden widths must be even (complex feature pairs), got {self.hidden}")
        widths = (2, *self.hidden, 2)
        g = torch.Generator(device="cpu")
        g.manual_seed(seed)
        cw = self.complex_weights

        parts = self.taylor_parts

        def init(*lead: int, a: int, b: int) -> nn.Parameter:
            # complex: parts * J_l / 2 input pairs
            shape = (*lead, parts * a // 2, b // 2, 2) if cw else (*lead, parts * a, b)
            u = torch.rand(*shape, generator=g, dtype=torch.float64, device="cpu")
            return nn.Parameter((2 * u - 1) / math.sqrt(parts * a))

        self.w_self = nn.ParameterList(init(*((2,) if self.self_per_type else ()), a=a, b=b)
                                       for a, b in zip(widths[:-1], widths[1:]))
        self.w_agg = nn.ParameterList(init(2, len(MC_TERMS), a=a, b=b) for a, b in zip(widths[:-1], widths[1:]))
        if self.user_gate:  # gamma[l, t]: the gate exponent of hidden layer l, edge type t; 0 = the paper's layer
            self.gamma = nn.Parameter(torch.zeros(len(self.hidden), 2, dtype=torch.float64, device="cpu"))
        if self.gate_floor:  # beta[l, t]: the gate's additive term (user_gate); 0 = the plain gate
            self.beta = nn.Parameter(torch.zeros(len(self.hidden), 2, dtype=torch.float64, device="cpu"))

    def resized(self, hidden: tuple[int, ...] | None = None, gate_floor: bool | None = None) -> ModelGNNMCParams:
        """A deeper copy with the same precoders (a training start, e.g. six hidden layers from a shipped
        five-layer model; "net2deeper"): ``hidden`` is this model's widths with extra entries, each equal to the
        hidden width before it (an inserted layer maps J -> J; never first, as the input features are not
        normalised).  The old widths are matched from the left, so an inserted layer goes after the last old layer
        of its width ([32, 32, 8] -> [32, 32, 32, 8]: after the second).  Old layers keep their weights (and gate
        exponents); an inserted layer is the identity: s = [I; 0] on c = [d, D A] (it passes d, its input x,
        through), every aggregation weight 0 and gamma 0, so y = x and sigma(y) = x / ||x|| = x (x was normalised
        by the layer before).  The precoders equal the source's up to the rounding of that norm.  Removing layers
        or changing a width is an OptionError.  ``gate_floor`` switched on adds the gate's beta = 0 (the same
        precoders); switching it off is an OptionError."""
        new_hidden = self.hidden if hidden is None else tuple(int(h) for h in hidden)
        src, pos = [], 0                    # src[j]: old hidden layer copied into new hidden layer j (None: new)
        for j, w in enumerate(new_hidden):
            if pos < len(self.hidden) and self.hidden[pos] == w:
                src.append(pos)
                pos += 1
            elif j > 0 and w == new_hidden[j - 1]:
                src.append(None)
            else:
                break
        if pos < len(self.hidden) or len(src) < len(new_hidden):
            raise OptionError("hidden", f"{list(new_hidden)} cannot grow from the checkpoint's {list(self.hidden)}; "
                                        "allowed: the checkpoint's widths with extra entries, each equal to the "
                                        "hidden width before it (inserted identity layers)")
        floor = self.gate_floor if gate_floor is None else bool(gate_floor)
        if self.gate_floor and not floor:
            raise OptionError("gate_floor", "false but the checkpoint has gate_floor=true; allowed: true or leave "
                                            "gate_floor out")
        hp = self.hparams | {"hidden": new_hidden, "gate_floor": floor}
        try:
            new = ModelGNNMCParams(**hp)
        except ValueError as exc:
            raise OptionError("gate_floor", str(exc)) from None
        src.append(self.layers - 1)                                               # the output layer
        with torch.no_grad():
            for ell, s in enumerate(src):
                if s is not None:
                    new.w_self[ell].copy_(self.w_self[s])
                    new.w_agg[ell].copy_(self.w_agg[s])
                    if self.user_gate and ell < len(new_hidden):
                        new.gamma[ell].copy_(self.gamma[s])
                    if self.gate_floor and ell < len(new_hidden):
                        new.beta[ell].copy_(self.beta[s])
                    continue
                ws = new.w_self[ell]
                ws.zero_()
                new.w_agg[ell].zero_()
                if self.user_gate:
                    new.gamma[ell].zero_()
                if floor:
                    new.beta[ell].zero_()
                if self.complex_weights:            # (.., p J/2, J/2, 2): w_r = I on the pairs of d, w_i = 0
                    ws[..., : ws.shape[-3] // self.taylor_parts, :, 0] = torch.eye(ws.shape[-2], dtype=ws.dtype)
                else:                               # (.., p J, J): I on the rows of d
                    ws[..., : ws.shape[-2] // self.taylor_parts, :] = torch.eye(ws.shape[-1], dtype=ws.dtype)
        return new

    @property
    def layers(self) -> int:
        return len(self.w_self)

    @property
    def widths(self) -> tuple[int, ...]:
        return (2, *self.hidden, 2)

    @property
    def taylor_parts(self) -> int:
        """Blocks of J_l reals in the Step-1 features c: [d, D A] (2) or [d, (D A)_own, (D A)_other] (3)."""
        return 2 if self.taylor_split == "none" else 3

    def real_weights(self, ell: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(s (p J_l, J_{l+1}), or (2, p J_l, J_{l+1}) per edge type with ``self_per_type``; W (2, 4, p J_l,
        J_{l+1})) of layer ``ell`` as real matrices on the interleaved (Re, Im) features (:func:`complex_block` of
        the complex weights)."""
        S, W = self.w_self[ell].to(dtype), self.w_agg[ell].to(dtype)
        return (complex_block(S), complex_block(W)) if self.complex_weights else (S, W)


def complex_block(w: Tensor) -> Tensor:
    """Complex weights (..., P, Q, 2) = (w_r, w_i) -> the real matrix (..., 2 P, 2 Q) acting on interleaved
    (Re, Im) row features as z -> z w: out_r = z_r w_r - z_i w_i, out_i = z_r w_i + z_i w_r."""
    wr, wi = w[..., 0], w[..., 1]
    top = torch.stack([wr, wi], dim=-1)                                        # row Re z: (..., P, Q, 2)
    bot = torch.stack([-wi, wr], dim=-1)                                       # row Im z
    blk = torch.stack([top, bot], dim=-3)                                      # (..., P, 2, Q, 2)
    *lead, P, _, Q, _ = blk.shape
    return blk.reshape(*lead, 2 * P, 2 * Q)


def antenna_sums(c: Tensor) -> Tensor:
    """What a BS sends every other BS over the backhaul in one layer: the sums over its antennas of the
    Step-1 features, sum_n c_{n_m, u} for every (virtual) user u.  c (B, n_bs, M, U, F) -> (B, n_bs, U, F)."""
    return c.sum(-3)


@compilable
def mc_edge_layer(c: Tensor, remote: Tensor, S: Tensor, W: Tensor, own: Tensor, csi: Tensor,
                  mean_over: tuple[int, int] | None = None) -> Tensor:
    """The P2 update of Sec. III-E before the activation, for the edges (n_m, u) of BS m's antennas:

        y = s^T c_{n u} + p_a,t^T sum_{n'} c_{n' u} + p_r,t^T sum_{m' != m} sum_{n'} c_{n'_{m'} u}
            + q_a,t^T sum_{u' ~ u} c_{n u'} + q_r,t^T sum_{u' !~ u} c_{n u'}

    with t the edge type (intra-cell: u served by BS m; inter-cell: not), u' ~ u: u' in the same group as u
    relative to BS m (both served by m, or both not) -- for an intra-cell edge exactly the paper's
    q_a (its cell's users) and q_r (the other cells' users); sums include the edge itself (the s = s' - p - q
    reparametrisation of (12)).

    c (B, n_bs, M, U, F) Step-1 features [d, D A] (:func:`taylor_features`), remote (B, n_bs, U, F) the other
    BSs' :func:`antenna_sums` summed (the ``bh`` inbox), S (F, F') (or (2, F, F'): s_t per edge type t),
    W (2, 4, F, F') (:class:`ModelGNNMCParams`),
    own (n_bs, U) bool (u served by the BS), csi (B, n_bs, U) bool (the BS has u's CSI).  Returns
    (B, n_bs, M, U, F'), zero on edges without CSI.

    ``mean_over`` = (antennas per BS, number of BSs) (option ``aggr: mean``): every aggregation is a mean over
    its terms instead of a sum (p_a: the BS's M antennas, p_r: the (n_bs - 1) M other antennas, q_a / q_r:
    the users of each group with CSI), as the Model-GNN authors' mean pooling; None: the paper's sums."""
    rdt = c.dtype
    ownf = own.to(rdt)[None, :, None, :, None]                                  # (1, n_bs, 1, U, 1)
    s_own = (c * ownf).sum(-2, keepdim=True)                                   # (B, n_bs, M, 1, F)
    s_other = c.sum(-2, keepdim=True) - s_own
    s_ant = c.sum(-3, keepdim=True)                                            # (B, n_bs, 1, U, F)
    remote = remote.unsqueeze(-3)
    if mean_over is not None:
        n_ant, n_bs = mean_over
        s_ant, remote = s_ant / n_ant, remote / max(n_ant * (n_bs - 1), 1)
        csif = csi.to(rdt)
        n_own = (csif * own.to(rdt)).sum(-1)[:, :, None, None, None]           # (B, n_bs, 1, 1, 1)
        s_own = s_own / n_own.clamp_min(1)
        s_other = s_other / (csif.sum(-1)[:, :, None, None, None] - n_own).clamp_min(1)
    per_user = torch.cat([s_ant, remote], dim=-1)                              # (B, n_bs, 1, U, 2F)
    per_ant = (torch.cat([s_own, s_other], dim=-1), torch.cat([s_other, s_own], dim=-1))  # (B, n_bs, M, 1, 2F)
    agg = [per_user @ W[t, :2].flatten(0, 1) + per_ant[t] @ W[t, 2:].flatten(0, 1) for t in (0, 1)]
    if S.dim() == 3:  # option self_per_type: s_t per edge type t
        y = ownf * (c @ S[0] + agg[0]) + (1 - ownf) * (c @ S[1] + agg[1])
    else:
        y = c @ S + ownf * agg[0] + (1 - ownf) * agg[1]
    return y * csi.to(rdt)[:, :, None, :, None]


#: largest exponent of the user gate's gain, e^50 ~ 5e21 (:func:`user_gate`)
GATE_EXPONENT_CAP = 50.0


@compilable
def user_gate(y: Tensor, gamma: Tensor, own: Tensor, csi: Tensor, beta: Tensor | None = None) -> Tensor:
    """Option ``user_gate`` (not in the paper): a per-user soft selection between the update and the activation,

        y_{n u} <- y_{n u} (e_u / e_bar_t)^gamma_t,  e_u = mean_{n, f} y_{n u f}^2 (the user's energy at BS m),

    e_bar_t the mean of e over the BS's users of the same edge type t (intra-cell: its own users, inter-cell:
    the others) with CSI, gamma (2,) the layer's learned exponents (0: the paper's layer).  Users above their
    group's mean grow, those below shrink, so repeated layers can switch users off (the WMMSE optimum of P2
    serves about half of them, see scenarios/train_model_gnn_mc_M3N8K4.yaml) and the Taylor terms of the next
    layer stop spending degrees of freedom on nulling towards them.  Permutation equivariant and invariant to a
    common phase; needs no message.  y (B, n_bs, M, U, F), own (n_bs, U), csi (B, n_bs, U).

    ``beta`` (2,) (option ``gate_floor``, init 0: the gate above): y_{n u} <- y_{n u} max((e_u / e_bar_t)^gamma_t +
    beta_t, 0).  The power law is scale-free (only the ratios between users survive sigma = X/||X||), so after
    many layers it keeps the users above their group's mean energy; beta > 0 is a floor that lets users below
    the mean through, beta < 0 a hard cut."""
    rdt = y.dtype
    tiny = torch.finfo(rdt).tiny
    e = y.pow(2).mean(dim=(-3, -1))                                           # (B, n_bs, U)
    csif, ownf = csi.to(rdt), own.to(rdt).expand_as(e)
    grp = (ownf, 1 - ownf)
    g = torch.zeros_like(e)
    for t in (0, 1):
        w = grp[t] * csif
        ebar = (e * w).sum(-1, keepdim=True) / w.sum(-1, keepdim=True).clamp_min(1)
        expo = gamma[t].to(rdt) * (torch.log(e.clamp_min(tiny)) - torch.log(ebar.clamp_min(tiny)))
        # capped so that a user with no energy (e = 0: no CSI, lost message) under gamma < 0 gives a finite
        # gain (0 * inf would be NaN); the shipped models' precoders are bit-identical with and without the cap
        # (50 iid samples each at (M, N, K) = (3, 8, 4) and (2, 16, 8))
        gain = torch.exp(expo.clamp_max(GATE_EXPONENT_CAP))
        if beta is not None:
            gain = (gain + beta[t].to(rdt)).clamp_min(0)
        g = g + grp[t] * gain
    return y * g[:, :, None, :, None]


def mc_output(x: Tensor, own: Tensor, power: Tensor) -> Tensor:
    """Precoders of the last layer: V_m = sqrt(P_m) V^_m / ||V^_m||_F over BS m's intra-cell edges (the per-BS
    constraint Tr(V_m^H V_m) <= P_max of P2, met with equality).  x (B, n_bs, M, U, 2) real, own (n_bs, U),
    power (B, n_bs) W -> (B, n_bs, M, U) complex, zero on inter-cell edges."""
    rdt = x.dtype
    V = torch.complex(x[..., 0], x[..., 1]) * own.to(rdt)[None, :, None, :]
    nrm = torch.linalg.vector_norm(V, dim=(-2, -1)).clamp_min(torch.finfo(rdt).tiny)
    return (power.to(rdt).sqrt() / nrm)[..., None, None].to(V.dtype) * V


def mc_inputs(block: AgentBlock) -> tuple[Tensor, Tensor, Tensor]:
    """A BS block's view of the graph: (G (B, n_bs, U, M) complex rows h_u^H of BS m's channel to every
    virtual user u = i N + r (UE i, receive antenna r), own (n_bs, U) bool served by the BS, csi (B, n_bs, U))."""
    H = block.local["H"]                                                       # (B, n_bs, I, N, M)
    B, nb, I, N, M = H.shape
    sv = block.edges[SERVE]
    own = torch.zeros(nb, I, dtype=torch.bool, device=H.device)
    own[sv.dst_local, sv.src] = True
    return (H.reshape(B, nb, I * N, M), own.repeat_interleave(N, dim=-1),
            block.local["csi"].repeat_interleave(N, dim=-1))


def model_gnn_mc_protocol(params: ModelGNNMCParams, net: Network) -> Protocol:
    """Multi-cell Model-GNN for P2: every BS m holds the edges of its own antennas to every user (its local
    CSI H_m, the Gram terms a_{j k} = h_{j,m}^H d_{m,k} of Step 1 need nothing else) and runs, per layer l:

    * ``taylor_l`` (local): c = [D_m, D_m A_m] (:func:`taylor_features`) and the antenna sums to send;
    * ``bh_sums_l`` (message on ``bs>bs``, link ``bh``, aggr sum): each BS sends every other BS the antenna sums
      (U x 2 J_l reals, U x 3 J_l with ``taylor_split``; U = I N virtual users) -- the only cross-cell term of
      the update, p_r's;
    * ``update_l`` (local): :func:`mc_edge_layer`, then sigma = X/||X||_F over the BS's edges (hidden layers)
      or the per-BS power normalisation :func:`mc_output` (last layer);
    * with option ``norm: graph``, after each hidden layer's update: ``bh_norm_l`` (message on ``bs>bs``: the
      BS's ||X_m||_F^2, one real) and ``norm_l`` (local: X_m / sqrt(sum over all BSs of ||X_m'||_F^2)).

    One round; decision V per served UE (B, S, M, N).  With one BS nothing is sent."""
    N = int(net.info["ue_antennas"])
    U = int(net.info["n_ue"]) * N
    L = params.layers
    mean_over = (int(net.info["bs_antennas"]), int(net.info["n_bs"])) if params.aggr == "mean" else None

    def init(block: AgentBlock) -> None:
        G, _, _ = mc_inputs(block)
        block.state["x"] = torch.stack([G.real, -G.imag], dim=-1).transpose(-3, -2)   # (B, n_bs, M, U, 2)
        block.state["V"] = torch.zeros(block.batch, block.edges[SERVE].size, block.info["bs_antennas"], N,
                                       dtype=block.info["dtype"], device=block.device)

    def taylor(block: AgentBlock) -> None:
        G, own, _ = mc_inputs(block)
        block.state["c"] = taylor_features(G, block.state["x"], own if params.taylor_split == "cell" else None,
                                           params.taylor_split == "self")
        block.state["sums"] = antenna_sums(block.state["c"])

    def send(block: AgentBlock, ev: EdgeView) -> dict[str, Tensor]:
        return {"sums": ev.gather_src(block.state["sums"])}

    def receive(block: AgentBlock, inbox: Inbox) -> None:
        block.state["remote"] = inbox["sums"]

    def update(ell: int) -> Callable[[AgentBlock], None]:
        def run(block: AgentBlock) -> None:
            _, own, csi = mc_inputs(block)
            rdt = block.state["c"].dtype
            y = mc_edge_layer(block.state["c"], block.state["remote"], *params.real_weights(ell, rdt), own, csi,
                              mean_over)
            if ell < L - 1:
                if params.user_gate:
                    y = user_gate(y, params.gamma[ell], own, csi, params.beta[ell] if params.gate_floor else None)
                if params.norm == "graph":  # sigma over the whole sample: after the bh_norm message
                    block.state["y"] = y
                    block.state["sq"] = y.pow(2).sum(dim=(-3, -2, -1))[..., None]          # (B, n_bs, 1)
                else:
                    block.state["x"] = normalize(y)
                return
            V = mc_output(y, own, block.local["power"])                       # (B, n_bs, M, U)
            B, nb, M, _ = V.shape
            sv = block.edges[SERVE]
            V = V.reshape(B, nb, M, -1, N).permute(0, 1, 3, 2, 4)              # (B, n_bs, I, M, N)
            block.state["V"] = V[:, sv.dst_local, sv.src]
        return run

    def send_sq(block: AgentBlock, ev: EdgeView) -> dict[str, Tensor]:
        return {"sq": ev.gather_src(block.state["sq"])}

    def receive_sq(block: AgentBlock, inbox: Inbox) -> None:
        block.state["sq_remote"] = inbox["sq"]

    def graph_norm(block: AgentBlock) -> None:
        """sigma = X/||X||_F over every BS's edges of the sample: ||X||^2 = own + the other BSs' (option norm)."""
        y = block.state.pop("y")
        sq = block.state.pop("sq") + block.state.pop("sq_remote", 0.0)
        nrm = sq.clamp_min(0).sqrt().clamp_min(torch.finfo(y.dtype).tiny)
        block.state["x"] = y / nrm[..., None, None]

    phases: list = []
    for ell in range(L):
        F = params.taylor_parts * params.widths[ell]
        phases += [Local(f"taylor_l{ell + 1}", "bs", taylor),
                   Message(f"bh_sums_l{ell + 1}", BACKHAUL, (MsgField("sums", "real", (U, F)),), send, receive,
                           aggr="sum", silent="exclude"),
                   Local(f"update_l{ell + 1}", "bs", update(ell))]
        if params.norm == "graph" and ell < L - 1:
            phases += [Message(f"bh_norm_l{ell + 1}", BACKHAUL, (MsgField("sq", "real", (1,)),), send_sq,
                               receive_sq, aggr="sum", silent="exclude"),
                       Local(f"norm_l{ell + 1}", "bs", graph_norm)]
    meta = {"layers": L, "trainable_parameters": params.n_trainable(),
            "bh_reals_per_message": [U * params.taylor_parts * w for w in params.widths[:-1]]}
    return Protocol("model_gnn_mc", ("bs", "ue"), {"bs": init}, phases, 1, Output("bs", "V", SERVE),
                    unit="nat/Hz", meta=meta, module=params)


class ModelGNNMCOptions(LearnedOptions):
    """YAML options of ``name: model_gnn_mc``: checkpoint ('shipped' = M = 3, N = 8, K = 4 at 10 dB; or a path
    such as agents/models/model_gnn_mc_M2N16K8.pt), init_seed, hidden widths (must match the checkpoint's, except
    in training, where a deeper list warm-starts from it: :meth:`ModelGNNMCParams.resized`)."""

    hidden: tuple[int, ...] | None = Field(None, description="hidden widths J_1..J_{L-1}; default the checkpoint's; "
                                           "in training, the checkpoint's widths with extra entries grow it by "
                                           "identity layers (ModelGNNMCParams.resized)")
    complex_weights: bool | None = Field(None, description="complex-linear weights on the (Re, Im) pairs (True) or "
                                         "the paper's unconstrained real weights; default the checkpoint's")
    user_gate: bool | None = Field(None, description="per-user soft selection (y_u (e_u / e_bar)^gamma, learned "
                                   "gamma per layer and edge type; not in the paper); default the checkpoint's")
    aggr: Literal["sum", "mean"] | None = Field(None, description="Step-2 aggregations: the paper's sums or means; "
                                                "default the checkpoint's")
    taylor_split: Literal["none", "cell", "self"] | None = Field(
        None, description="Step-1 Taylor sum sum_j d_nj a_jk kept whole (none, the paper's), split into own-cell "
        "and other-cell users j (cell) or into j = k and j != k (self); default the checkpoint's")
    self_per_type: bool | None = Field(None, description="the self weight s per edge type (intra-/inter-cell) "
                                       "instead of one shared s; default the checkpoint's")
    norm: Literal["bs", "graph"] | None = Field(
        None, description="hidden-layer sigma = X/||X||_F over each BS's edges (bs) or over the whole sample's "
        "(graph, one scalar per BS over the backhaul per layer); default the checkpoint's")
    gate_floor: bool | None = Field(None, description="user_gate with a learned additive term beta per layer and "
                                    "edge type, max((e_u / e_bar)^gamma + beta, 0) (init 0; in training switched on "
                                    "at a checkpoint without it, the same precoders); default the checkpoint's")


MODEL_MC = LearnableSpec("model_gnn_mc", ModelGNNMCParams, ModelGNNMCOptions,
                         lambda params, net, opts: model_gnn_mc_protocol(params, net),
                         MODELS / "model_gnn_mc_M3N8K4.pt", "scenarios/train_model_gnn_mc_M3N8K4.yaml",
                         TRAIN_DEFAULTS, loss=sum_rate_loss)

register_algorithm(AlgorithmSpec("model_gnn_mc", ("multicell",), ModelGNNMCOptions, MODEL_MC.build,
                                 "multi-cell Model-GNN coordinated beamforming (P2, Sec. III-E), antenna sums "
                                 "over bs>bs backhaul; checkpoint shipped|untrained|PATH",
                                 learnable=MODEL_MC.learnable, check=MODEL_MC.check))
