"""Model-GNN and Vanilla-GNN MISO precoding (Model-GNN paper, Sec. II-B eq. (7), Sec. III-C eq. (12)/(15)).

Problem P1 (1): BS k with M antennas serves its |I_k| single-antenna UEs, max sum_i log(1 + SINR_i),
Tr(V^H V) <= P_k (a sum-power constraint per BS).  The paper's N antennas / K users are this family's
``bs_antennas`` M / a BS's served UEs; its h_k (the channel vector, y_k = h_k^H v) is the conjugate of
the family's row H_k (1 x M).

Graph: bipartite antennas x users of one BS; features live on the edges (n, k): d_nk in R^J, input
d_nk^(0) = [Re h_nk, Im h_nk] (J_0 = 2), output d_nk^(L) = [Re v^_nk, Im v^_nk] (J_L = 2).

Model-GNN layer l (SPECS §2, eq. (12) with (15), term (c) dropped):
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
[64, 512, 512, 64]; Adam lr 0.01.  Weights initialised U(-1/sqrt(2 J), 1/sqrt(2 J)) per layer from
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
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn

from agents.wmmse import SERVE, edge_channels
from dsim.learn import LearnableSpec, LearnedModule, LearnedOptions
from dsim.network import Network
from dsim.protocol import AgentBlock, EdgeView, Local, Output, Protocol
from dsim.registry import AlgorithmSpec, register_algorithm

Tensor = torch.Tensor

MODELS = Path(__file__).resolve().parent / "models"
#: training defaults (Tab. I: Adam, lr 0.01); batch and steps chosen here (the paper gives epochs only)
TRAIN_DEFAULTS = {"steps": 2000, "batch": 100, "lr": 0.01, "lr_decay_every": 1_000_000, "lr_decay": 0.1,
                  "betas": (0.9, 0.999), "weight_decay": 0.0, "clip": 1e6}


# =============================================================================== parameters
class EdgeGNNParams(LearnedModule):
    """Per-layer weights S_l, P_l, Q_l (in_l x out_l) of an edge GNN on the antenna-user graph.

    widths = (2, *hidden, 2); in_l = 2 J_l with the Taylor half (Model-GNN), J_l without (Vanilla-GNN)."""

    hparam_names: ClassVar[tuple[str, ...]] = ("hidden",)
    taylor: ClassVar[bool] = True

    def __init__(self, hidden: tuple[int, ...] = (32, 32, 8), seed: int = 0) -> None:
        super().__init__()
        self.hidden = tuple(int(h) for h in hidden)
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

    def __init__(self, hidden: tuple[int, ...] = (64, 512, 512, 64), seed: int = 0) -> None:
        super().__init__(hidden, seed)


# =============================================================================== the layer maths
def taylor_features(G: Tensor, x: Tensor) -> Tensor:
    """c = [d, D A] of Step 1 (Sec. III-C): x (..., M, K, J) real edge features, G (..., K, M) complex channel
    rows (G_k = h_k^H) -> (..., M, K, 2J): per complex feature pair f, A_f = G D_f (K x K) and D_f A_f (M x K)."""
    *lead, M, K, J = x.shape
    D = torch.view_as_complex(x.reshape(*lead, M, K, J // 2, 2).movedim(-2, -4).contiguous())  # (..., J/2, M, K)
    A = G.unsqueeze(-3) @ D                                   # (..., J/2, K, K), a_jk = h_j^H d_k
    DA = D @ A                                                # (..., J/2, M, K)
    DA = torch.view_as_real(DA).movedim(-4, -2).reshape(*lead, M, K, J)
    return torch.cat([x, DA], dim=-1)


def edge_layer(c: Tensor, S: Tensor, P: Tensor, Q: Tensor, mask: Tensor) -> Tensor:
    """S^T c_nk + P^T sum_i c_ik + Q^T sum_j c_nj (12)/(7) before the activation.

    c (..., M, K, F) real, S/P/Q (F, F'), mask (..., 1, K, 1) real 1 for a present user, 0 for a padding slot.
    Returns (..., M, K, F') with padding users zeroed."""
    y = c @ S + c.sum(-3, keepdim=True) @ P + c.sum(-2, keepdim=True) @ Q
    return y * mask


def normalize(y: Tensor) -> Tensor:
    """sigma(X) = X / ||X||_F over a sample's edges and features: y (..., M, K, J)."""
    nrm = torch.linalg.vector_norm(y, dim=(-3, -2, -1), keepdim=True)
    return y / nrm.clamp_min(torch.finfo(y.dtype).tiny)


def gnn_precoders(params: EdgeGNNParams, G: Tensor, user_mask: Tensor, power: Tensor) -> Tensor:
    """The GNN's precoders for each BS's users: G (B, C, K, M) complex channel rows (zero rows for padding
    slots), user_mask (C, K) bool, power (B, C) W -> V (B, C, M, K) complex with ||V[b, c]||_F^2 = P_c."""
    rdt = G.real.dtype
    mask = user_mask.to(rdt)[None, :, None, :, None]                           # (1, C, 1, K, 1)
    x = torch.stack([G.real, -G.imag], dim=-1).transpose(-3, -2)               # (B, C, M, K, 2) = [Re h, Im h]
    L = params.layers
    for ell in range(L):
        c = taylor_features(G, x) if params.taylor else x
        y = edge_layer(c, params.s[ell].to(rdt), params.p[ell].to(rdt), params.q[ell].to(rdt), mask)
        x = normalize(y) if ell < L - 1 else y
    V = torch.complex(x[..., 0], x[..., 1])                                    # (B, C, M, K)
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
    """YAML options of ``name: model_gnn``: checkpoint ('shipped' = N = 32, K = 16 at 10 dB; or a path such as
    agents/models/model_gnn_N8K4.pt), init_seed, hidden widths (must match the checkpoint's)."""

    hidden: tuple[int, ...] | None = Field(None, description="hidden widths J_1..J_{L-1}; default the checkpoint's")


class VanillaGNNOptions(ModelGNNOptions):
    """YAML options of ``name: vanilla_gnn`` (as model_gnn; 'shipped' = N = 8, K = 4 at 10 dB)."""


def sum_rate_loss(wsr: dict[int, Tensor]) -> Tensor:
    """-mean over samples of the sum rate (nat/Hz) at the loss rounds (Sec. III-C, unsupervised)."""
    return -torch.stack([w.mean() for w in wsr.values()]).mean()


MODEL = LearnableSpec("model_gnn", ModelGNNParams, ModelGNNOptions,
                      lambda params, net, opts: gnn_protocol("model_gnn", params, net),
                      MODELS / "model_gnn_N32K16.pt", "scenarios/train_model_gnn_N32K16.yaml", TRAIN_DEFAULTS,
                      loss=sum_rate_loss)
VANILLA = LearnableSpec("vanilla_gnn", VanillaGNNParams, VanillaGNNOptions,
                        lambda params, net, opts: gnn_protocol("vanilla_gnn", params, net),
                        MODELS / "vanilla_gnn_N8K4.pt", "scenarios/train_vanilla_gnn_N8K4.yaml", TRAIN_DEFAULTS,
                        loss=sum_rate_loss)

register_algorithm(AlgorithmSpec("model_gnn", ("multicell",), ModelGNNOptions, MODEL.build,
                                 "Model-GNN MISO precoding per BS, eq. (12)/(15); checkpoint shipped|untrained|PATH",
                                 learnable=MODEL.learnable))
register_algorithm(AlgorithmSpec("vanilla_gnn", ("multicell",), VanillaGNNOptions, VANILLA.build,
                                 "Vanilla edge-GNN MISO precoding per BS, eq. (7) (Model-GNN paper's baseline)",
                                 learnable=VANILLA.learnable))
