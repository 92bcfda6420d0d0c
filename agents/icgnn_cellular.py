"""ICGNN and L-ICGNN MU-MIMO precoding at a BS (ICGNN paper Sec. III; SPECS §3).

Problem P2 (5)-(8): a BS with N_t antennas serves K users with N_r antennas (d_k = N_r streams), max
sum_k log det(I + SINR_k), sum_k Tr(V_k V_k^H) <= P_t (sum power).  In this family: N_t = ``bs_antennas``,
N_r = ``ue_antennas``, the paper's h_{i,k} (y = h^H v) is the conjugate of row i of the family's H_k.

Wireless virtual graph (Sec. III-B): one virtual node (VN) per (user k, receive antenna i), |V| = K N_r,
complete directed graph without self-loops.  Node features x_i = [Re f(h_i), Im f(h_i)] (2 N_t reals)
and Gamma_i = (p_i, lambda_i) / P_t, read by the layers as V Gamma_i / V_0 (the power in units of the equal
share P_t / V, over a constant V_0 = ``power_ref_nodes``; :func:`target_features`): the paper's raw p, lambda
(initially P_t / (K N_r), Sec. III-C) shift with the graph size, and a model trained at K N_r = 10 read them
at K N_r = 6 or 3 as out-of-range inputs and fell back to equal power (README, "ICGNN cellular"); edge j -> i
feature h_i (the receiver's channel: both its signal and its interference arrive through it, eq. (13)).
Layer (4a)-(4b), MAX aggregation (Gamma standing for the features read):

    m_i = max_{j != i} M([x_j, Gamma_j, x_i]),     (s_p, s_lambda)_i = U([m_i, x_i, Gamma_i]) in (0, 1)^2
    p_i = P_t s_p,i / sum_j s_p,j,  lambda_i = P_t s_lambda,i / sum_j s_lambda,j              (17)

M {4 N_t + 2, 128, 256, 64}, U {2 N_t + 66, 128, 32, 2}; batch norm + Tanh after hidden layers, Tanh on
M's output, Sigmoid on U's; 2 layers sharing the same M and U (SPECS §3); p = lambda = P_t / (K N_r)
initially.  The message and update steps are the cell-free ICGNN's own functions
(:func:`agents.icgnn.pair_max_messages`, :func:`agents.icgnn.update_nodes`, :class:`agents.icgnn.MLP`):
one implementation of the layer.

Feature scaling (the paper gives none; raw channels are ~1e-4..1e-7): f(h) = asinh(h sqrt(P_t / sigma^2))
per real component, the AP-side scaling of the cell-free ICGNN (~ linear below the noise, log above).

Recovery (16): v_i = sqrt(p_i) A^{-1} h_i / ||A^{-1} h_i||, A = I + sum_j (lambda_j / sigma_j^2) h_j h_j^H.
L-ICGNN (Alg. 1): A^{-1} h_i replaced by T conjugate-gradient iterations on A u = h_i from u^0 = h_i
(:func:`dsim.linalg.conjugate_gradient`; the paper's residual update carries a stray H and its q_{k,i}
needs ||A^{-1} h|| -- solving A u = h and normalising is the same direction), then
v_i = sqrt(p_i) u_i / ||u_i||, so sum_i ||v_i||^2 = P_t exactly (the paper's final scaling to P_t).

Loss (18a-b) in log-det form: -mean over samples of sum_k log det(I + SINR_k) (nat/Hz here; the paper's
log2 up to ln 2), i.e. the family's WSR with alpha = 1.  Training per Sec. V-A: Adam lr 1e-3, batch 100,
K = 5, N_r = 2, N_t = 16, layout ``disk`` calibrated to the paper's WMMSE column (users uniform in distance,
``user_distribution: radius``, and a 7.5 dB receiver noise figure; scenarios/train_icgnn_cellular.yaml,
train_licgnn.yaml; README "ICGNN cellular: the calibrated cell").

Distributed reading: the whole graph lives in one BS (one local phase, no signaling); with several BSs
every BS precodes its own users alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from agents.icgnn import MLP, pair_max_messages, power_reading, update_nodes
from agents.model_gnn import bs_precoding_protocol
from agents.wmmse import SERVE
from dsim.learn import BatchNormOptions, LearnableSpec, LearnedModule
from dsim.linalg import conjugate_gradient
from dsim.network import Network
from dsim.protocol import AgentBlock, Protocol
from dsim.registry import AlgorithmSpec, register_algorithm

Tensor = torch.Tensor

MODELS = Path(__file__).resolve().parent / "models"
#: Sec. V-A: Adam lr 1e-3 without decay, batch 100; clipping only as a safety net
TRAIN_DEFAULTS = {"steps": 2000, "batch": 100, "lr": 1e-3, "lr_decay_every": 1_000_000, "lr_decay": 0.1,
                  "betas": (0.9, 0.999), "weight_decay": 0.0, "clip": 100.0}


class ICGNNCellularParams(LearnedModule):
    """M {4 N_t + 2, 128, 256, 64} and U {2 N_t + 66, 128, 32, 2}, shared by all layers (SPECS §3).

    ``power_ref_nodes`` (V_0) fixes the units of the target features (p, lambda) the layers read
    (:func:`target_features`): 0 = the fraction of the budget (p, lambda) / P_t, whose equal-power value 1 / V
    moves with the graph size (checkpoints written before it existed load with 0); V_0 > 0 = (p, lambda) /
    (P_t / V) / V_0, the power in units of the equal share, 1 / V_0 at equal power for every V.  It does not
    shape the parameters (a free hyper-parameter: ``power_ref_nodes`` in the options may change a checkpoint's).
    A model trained with 0 at V_0 nodes reads with ``power_ref_nodes: V_0`` exactly the features it was trained
    on at V_0 nodes, and size-invariant ones elsewhere.  Untrained models take 1 (:meth:`default_hparams`).

    Initialisation: PyTorch's default from ``seed``; parameters in float64."""

    hparam_names: ClassVar[tuple[str, ...]] = ("antennas", "layers", "power_ref_nodes")
    free_hparams: ClassVar[tuple[str, ...]] = ("power_ref_nodes",)

    def __init__(self, antennas: int = 16, layers: int = 2, power_ref_nodes: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.antennas, self.layers, self.power_ref_nodes = int(antennas), int(layers), int(power_ref_nodes)
        n = self.antennas
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.msg: nn.Module = MLP((4 * n + 2, 128, 256, 64), "tanh")
            self.upd: nn.Module = MLP((2 * n + 66, 128, 32, 2), "sigmoid")

    @classmethod
    def default_hparams(cls) -> dict:
        """An untrained model reads size-invariant target features (``power_ref_nodes`` 1: V (p, lambda) / P_t);
        the ``__init__`` default 0 is what a checkpoint without the key was trained with."""
        return super().default_hparams() | {"power_ref_nodes": 1}


# =============================================================================== the maths
def vn_features(G: Tensor, power: Tensor, noise: Tensor) -> Tensor:
    """x_i = [Re f(h_i), Im f(h_i)], f(h) = asinh(h sqrt(P_t / sigma_i^2)).

    G (..., V, N_t) complex channel rows (h_i = conj(G_i)), power (...) W, noise (..., V) W -> (..., V, 2 N_t)."""
    scale = (power[..., None] / noise).sqrt()[..., None]                       # (..., V, 1)
    return torch.cat([torch.asinh(G.real * scale), torch.asinh(-G.imag * scale)], dim=-1)


def target_features(gamma: Tensor, power_ref_nodes: int) -> Tensor:
    """The target features the layers read from Gamma = (p, lambda) / P_t (..., V, 2): Gamma itself for
    ``power_ref_nodes`` 0 (the paper's raw p, lambda of Sec. III-C up to the constant P_t; equal power = 1 / V),
    else Gamma V / V_0 (equal power = 1 / V_0 whatever V).  (..., V, 2) -> (..., V, 2).

    Why (measured, README "ICGNN cellular: why K = 3 collapsed"): with the budget fraction, a model trained at
    V = 10 sees 1 / 6 or 1 / 3 at K = 3 (N_r = 2, 1), far outside what it was trained on; the update net's
    sigmoids then all saturate near 1, (17) turns them into p = lambda = P_t / V for every node and (16)
    reduces to equal-power regularised ZF (:func:`recover_precoders`)."""
    return power_reading(gamma, gamma.shape[-2], power_ref_nodes)


def icgnn_layers(params: ICGNNCellularParams, x: Tensor) -> Tensor:
    """The ``params.layers`` ICGNN layers (4a)-(4b) with (17) from p = lambda = 1/V: x (..., V, 2 N_t) ->
    Gamma (..., V, 2) = (p, lambda) / P_t, every column summing to 1 over the V nodes.  The nodes read their
    target features in the units of :func:`target_features` (``params.power_ref_nodes``)."""
    V = x.shape[-2]
    gamma = torch.full(x.shape[:-1] + (2,), 1.0 / V, dtype=x.dtype, device=x.device)
    one = torch.ones(x.shape[:-2], dtype=x.dtype, device=x.device)
    edge = x.unsqueeze(-3).expand(*x.shape[:-2], V, V, x.shape[-1])            # [j, i] = x_i
    ref = params.power_ref_nodes
    for _ in range(params.layers):
        node = torch.cat([x, target_features(gamma, ref)], dim=-1)
        agg = pair_max_messages(params.msg, node, edge)
        gamma = update_nodes(params.upd, agg, node, one)
    return gamma


def recover_precoders(G: Tensor, p: Tensor, lam: Tensor, noise: Tensor, cg_steps: int | None = None) -> Tensor:
    """(16): v_i = sqrt(p_i) u_i / ||u_i||, u_i = A^{-1} h_i (``cg_steps`` None) or ``cg_steps`` CG iterations
    on A u = h_i from u = h_i (L-ICGNN, Alg. 1); A = I + sum_j (lambda_j / sigma_j^2) h_j h_j^H.

    G (..., V, N_t) rows (h_i = G_i^H), p / lam / noise (..., V) [W] -> V (..., N_t, V), column i = v_i."""
    Hc = G.mH                                                                  # (..., N_t, V): column i = h_i
    w = (lam / noise).to(G.dtype)
    eye = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    A = eye + (Hc * w[..., None, :]) @ G
    U = torch.linalg.solve(A, Hc) if cg_steps is None else conjugate_gradient(A, Hc, Hc, cg_steps)
    nrm = torch.linalg.vector_norm(U, dim=-2, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
    return U * (p.sqrt()[..., None, :] / nrm).to(U.dtype)


# =============================================================================== protocol
def icgnn_cellular_protocol(name: str, params: ICGNNCellularParams, net: Network, cg_steps: int | None) -> Protocol:
    """One round: every BS runs the GNN on its own users' virtual nodes and recovers V (local phase)."""
    N = int(net.info["ue_antennas"])
    if int(net.info["bs_antennas"]) != params.antennas:
        raise ValueError(f"{name}: the model has N_t = {params.antennas} antennas, the scenario bs_antennas = "
                         f"{net.info['bs_antennas']}; use a model trained for it or checkpoint: untrained")

    def precoders(block: AgentBlock, G: torch.Tensor, filled: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        sv = block.edges[SERVE]
        if not bool(filled.all()):
            raise ValueError(f"{name}: every BS must serve the same number of UEs")
        B, C, V, M = G.shape                                                    # (B, n_bs, U N, M)
        power = block.local["power"]                                           # (B, n_bs)
        noise = block.local["noise"][:, sv.dst_local, sv.src]                   # (B, S) of each served UE
        nz = torch.zeros(B, C, V // N, dtype=noise.dtype, device=noise.device)
        nz[:, sv.dst_local, slot] = noise
        nz = nz.repeat_interleave(N, dim=-1)                                    # (B, n_bs, V)
        gamma = icgnn_layers(params, vn_features(G, power, nz))
        p, lam = power[..., None] * gamma[..., 0], power[..., None] * gamma[..., 1]
        return recover_precoders(G, p, lam, nz, cg_steps)                       # (B, n_bs, M, U N)

    return bs_precoding_protocol(name, net, precoders, params, {"layers": params.layers, "cg_steps": cg_steps,
                                                                "trainable_parameters": params.n_trainable()})


class ICGNNCellularOptions(BatchNormOptions):
    """YAML options of ``name: icgnn_cellular`` (exact inverse in (16)): checkpoint ('shipped' = trained at
    N_t = 16, K = 5, N_r = 2), init_seed, bn_* (training), antennas N_t and layers (must match the
    checkpoint's; untrained: the scenario's N_t)."""

    antennas: int | None = Field(None, ge=1, description="N_t; default: the checkpoint's (untrained: the scenario's)")
    layers: int | None = Field(None, ge=1, description="GNN layers; default: the checkpoint's (2 untrained)")
    power_ref_nodes: int | None = Field(None, ge=0, description="units of the target features (p, lambda): 0 = "
                                        "fraction of P_t, V_0 > 0 = V (p, lambda) / (P_t V_0), size-invariant; "
                                        "default: the checkpoint's (1 untrained)")


class LICGNNOptions(ICGNNCellularOptions):
    """YAML options of ``name: licgnn`` (L-ICGNN: CG recovery, Alg. 1): as icgnn_cellular, plus cg_steps T."""

    cg_steps: int = Field(6, ge=1, description="T conjugate-gradient iterations replacing A^-1 h")


def logdet_loss(wsr: dict[int, Tensor]) -> Tensor:
    """(18a): -mean over samples of sum_k log det(I + SINR_k) (nat/Hz)."""
    return -torch.stack([w.mean() for w in wsr.values()]).mean()


def _spec(name: str, options: type[ICGNNCellularOptions], shipped: str, recipe: str) -> LearnableSpec:
    def protocol(params: ICGNNCellularParams, net: Network, opts: ICGNNCellularOptions) -> Protocol:
        return icgnn_cellular_protocol(name, params, net, getattr(opts, "cg_steps", None))

    return LearnableSpec(name, ICGNNCellularParams, options, protocol, MODELS / shipped, recipe, TRAIN_DEFAULTS,
                         loss=logdet_loss)


def _build(spec: LearnableSpec):
    """``AlgorithmSpec.build``: an untrained model without ``antennas`` takes the scenario's N_t."""

    def build(opts: ICGNNCellularOptions, net: Network) -> Protocol:
        if opts.checkpoint == "untrained" and opts.antennas is None:
            opts = opts.model_copy(update={"antennas": int(net.info["bs_antennas"])})
        return spec.build(opts, net)

    return build


MODEL = _spec("icgnn_cellular", ICGNNCellularOptions, "icgnn_cellular_K5N2.pt", "scenarios/train_icgnn_cellular.yaml")
LMODEL = _spec("licgnn", LICGNNOptions, "licgnn_K5N2.pt", "scenarios/train_licgnn.yaml")

register_algorithm(AlgorithmSpec("icgnn_cellular", ("multicell",), ICGNNCellularOptions, _build(MODEL),
                                 "ICGNN precoding per BS, eq. (4), (16)-(18); checkpoint shipped|untrained|PATH",
                                 learnable=MODEL.learnable, check=MODEL.check))
register_algorithm(AlgorithmSpec("licgnn", ("multicell",), LICGNNOptions, _build(LMODEL),
                                 "L-ICGNN: ICGNN precoding with T-step CG recovery (Alg. 1); cg_steps",
                                 learnable=LMODEL.learnable, check=LMODEL.check))
