"""MPGNN / WCGCN for power control and beamforming in K-pair interference channels (MPGNN paper eq. (7)-(8),
Sec. V; SPECS §1).

Graph: node k = pair k (hosted by agent ``bs`` k: Tx k with its Rx k); edge j -> i (edge set ``pair``,
link class ``d2d``) when dist(Tx j, Rx i) <= range_m (Gaussian layout: complete graph).  One layer, eq. (8):

    m_i = MAX_{j in N(i)} MLP1(x_j, e_ji),    y_i = MLP2(x_i, m_i),    x_i <- sigma(y_i),

ReLU after every layer of MLP1 and after the hidden layers of MLP2; the same weights in all
``layers`` (3) layers (Sec. V).  Features (``f`` below is the feature map of a channel):

* power control (N_t = 1, Sec. V-A/B): x_k = [f(|h_kk|), w_k, p_k/P_max] (p initialised to P_max),
  e_ji = [f(|h_ji|), f(|h_ij|)]; MLP1 {5, 32, 32}, MLP2 {35, 16, 1}, sigma = sigmoid:
  p_k = P_max sigmoid(y_k), v_k = sqrt(p_k) -- the power constraint holds by construction.
* beamforming (Sec. V-C): x_k = [v_k, f(h_kk)] (4 N_t reals, complex as (re, im)), e_ji = f(h_ji)
  (2 N_t reals); MLP1 {6 N_t, 64, 64}, MLP2 {64 + 4 N_t, 32, 2 N_t} with a linear last layer,
  sigma(y) = y / max(||y||, 1), v_k = sqrt(P_max) sigma(y_k), so ||v_k||^2 <= P_max exactly;
  v initialised to (1, ..., 1) / sqrt(N_t).
  Options of the beamforming model (hyper-parameters stored in the checkpoint; defaults = eq. (8) as printed):
  ``edge_feature`` 'in' (default): e_ji = f(h_ji), the interference Tx j causes at Rx i; 'out': e_ji = f(h_ij),
  the interference Tx i causes at Rx j -- the direction Tx i must steer away from, which f(h_ji) does not
  carry; it is what the authors' public code feeds (their edge attribute of j -> i is the channel from the
  receiving node's Tx to the sender's Rx) and keeps MLP1 {6 N_t, 64, 64}; Rx j measured it, so j sends it
  (2 N_t more reals per edge); 'both': [f(h_ji), f(h_ij)], MLP1 {8 N_t, 64, 64}.  ``receiver_state``: MLP1
  also takes the receiver's state, MLP1(x_j, e_ji, x_i) (4 N_t more inputs; nothing more is sent).
  The shipped beamforming model uses edge_feature 'out' (scenarios/train_wcgcn_d2d_bf.yaml).
  ``node_carry`` 'channel' (default): the update keeps f(h_kk), x_k <- [sigma(y_k), f(h_kk)] in every layer
  (eq. (8): the node feature stays in the state); 'beam': the update of the authors' public code,
  x_k <- [sigma(y_k), v_k], the new beam beside the previous one, so f(h_kk) enters layer 1 only (through the
  first update) -- same sizes, same message.  Side by side on the layout mpgnn_code (the recipe of
  scenarios/train_wcgcn_mpgnn_code_bf.yaml, same seeds and validation set), validation after 500 / 1000 / 1500
  steps: 'channel' 118.51 / 121.70 / 123.05, 'beam' 95.08 / 120.64 / 122.92 bit/s/Hz (slower start, no gain).

Feature map (channels span ~100 dB in the D2D layouts, so raw amplitudes cannot be fed): for a channel
h (N_t,) seen by a receiver with noise sigma^2, snr = ||h||^2 P_max / sigma^2 and
f(h) = (h / ||h||) ln(1 + snr) / s  (power control: the magnitude ln(1 + snr) / s), with s the mean
of ln(1 + snr) over the training set -- one s for the direct links, one for the edges -- stored in the
checkpoint (buffer ``scale``, set from the first training minibatch by :meth:`WCGCNParams.observe`).
Monotone in |h|, so no information is lost; the direction of h (beamforming) is kept.
Option ``feature_norm`` (a hyper-parameter stored in the checkpoint; the default 'mean' is the map above, so
every earlier checkpoint gives the same outputs): 'std' keeps f but takes s = the standard deviation of f's
real components over the training set, sqrt(E[ln(1 + snr)^2] / n) with n = 2 N_t (power control n = 1), so
that every input component has unit variance (their mean is 0: the Rayleigh phase is uniform); 'linear' is the
authors' public code's standardisation (their edge CSI, h - mean over std per class): no log,
f(h) = sqrt(P_max / sigma^2) h / s with s = sqrt(E[snr] / n), the standard deviation of those components
(power control: the magnitude).  Both are statistics of the direct links and of the edges separately, from the
first training minibatch, in ``scale``.  Side by side from the untrained beamforming model (the recipe of
scenarios/train_wcgcn_d2d_bf.yaml with batch 64, same seeds), validation after 100 / 200 / 300 steps: 'mean'
201.5 / 216.7 / 220.4, 'std' 202.8 / 215.5 / 220.5, 'linear' 191.2 (100 steps) bit/s/Hz: no gain there (P.1411
channels span ~100 dB).  On the layout mpgnn_code (the authors' channel, ~30 dB of direct gains) 'linear' learns
faster: the recipe of scenarios/train_wcgcn_mpgnn_code_bf.yaml (batch 16, same seeds and validation set), validation
after 500 / 1000 / 1500 steps: 'mean' 118.51 / 121.70 / 123.05, 'linear' 120.81 / 123.47 / 124.68 bit/s/Hz
(WMMSE 134.81): 'linear' at 1500 steps = 'mean' at ~2700.  Run on (resumed, lr x 0.85 every 500 steps from
1500) it flattened at 127.29 (step 8700) and gave T V 94.14 / 94.15 % (seeds 900+ / 200+, 500 layouts), below the
'mean' model of the same budget (mpgnn_code_bf_v1: 127.36; 94.41 / 94.46 %): faster early, not higher, so
mpgnn_code_bf keeps 'mean'.

Distributed (one protocol round = one layer, DESIGN §4):
  1. ``state`` (``pair`` edges, ``d2d``): node j sends its state x_j to each neighbour i -- power control
     3 reals plus f(|h_ij|), the reverse gain Rx j measured (it differs per neighbour): 4 reals per
     edge; beamforming 4 N_t reals per edge (+ 2 N_t, f(h_ij), with edge_feature 'out' | 'both').
     Receiver i evaluates MLP1(x_j, e_ji) with the edge feature
     it measured itself (``combine``) and the inbox is their MAX, declared on the message (``aggr='max'``).
  2. ``update`` (local): y_i = MLP2(x_i, m_i), x_i <- sigma(y_i).
The ledger counts reals per neighbour edge: dsim delivers (and loses) every message per edge, and the
power-control message carries a per-neighbour reverse gain; a radio broadcast of the node state alone
would cost 3 (4 N_t) reals once per node, i.e. the edge count divided by the mean degree.

Training (``python -m dsim train scenarios/train_wcgcn_*.yaml``): unsupervised, loss = -mean over the
minibatch of sum_k w_k log2(1 + SINR_k) at the last layer (Sec. V), Adam lr 1e-3, batch 64 (:data:`TRAIN_DEFAULTS`).
Shipped models ``agents/models/wcgcn_*.pt`` (:data:`SHIPPED_MODELS`), each reproduced by its train YAML.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from dsim.learn import LearnableSpec, LearnedModule, LearnedOptions, current_layer
from dsim.network import Network
from dsim.protocol import AgentBlock, EdgeView, Inbox, Local, Message, Output, Protocol
from dsim.protocol import Field as MsgField
from dsim.registry import AlgorithmSpec, register_algorithm

Tensor = torch.Tensor

EDGES = "pair"
MODELS = Path(__file__).resolve().parent / "models"
#: shipped checkpoints by name (``checkpoint: shipped:<name>``); ``shipped`` picks one from the scenario
SHIPPED_MODELS = {
    **{f"gauss_K{k}_{s}dB": MODELS / f"wcgcn_gauss_K{k}_{s}dB.pt" for k in (10, 30, 50) for s in (0, 10)},
    **{f"gauss_K50_10dB_L{n}": MODELS / f"wcgcn_gauss_K50_10dB_L{n}.pt" for n in (1, 2)},  # Fig. 3
    "d2d_pc": MODELS / "wcgcn_d2d_pc_K50.pt",
    "d2d_bf": MODELS / "wcgcn_d2d_bf_K50_Nt2.pt",
    "d2d_bf_v1": MODELS / "wcgcn_d2d_bf_K50_Nt2_v1.pt",  # its session-8 model (2000 x 16 + 3600 x 64 steps)
    "d2d_bf_v2": MODELS / "wcgcn_d2d_bf_K50_Nt2_v2.pt",  # its stage-3 model (session 13, + 6000 x 64 steps)
    "mpgnn_code_bf": MODELS / "wcgcn_mpgnn_code_bf_K50_Nt2.pt",  # layout mpgnn_code (the authors' code's channel)
    "mpgnn_code_bf_v1": MODELS / "wcgcn_mpgnn_code_bf_K50_Nt2_v1.pt",  # its session-9 model (15 500 steps of 16)
    "mpgnn_code_bf_v2": MODELS / "wcgcn_mpgnn_code_bf_K50_Nt2_v2.pt",  # its stage-3 model (session 12, step 19 900)
    "mpgnn_code_bf_v3": MODELS / "wcgcn_mpgnn_code_bf_K50_Nt2_v3.pt",  # its stage-4 model (session 12, step 22 100)
    "mpgnn_code_bf_v4": MODELS / "wcgcn_mpgnn_code_bf_K50_Nt2_v4.pt",  # its stage-6 model (session 13, step 28 200)
}
#: training defaults (Sec. V and the authors' recipe): Adam lr 1e-3, batch 64, lr x 0.9 every 20 epochs of
#: 10^4 samples (~3125 steps of 64)
TRAIN_DEFAULTS = {"steps": 2000, "batch": 64, "lr": 1e-3, "lr_decay_every": 3125, "lr_decay": 0.9,
                  "betas": (0.9, 0.999), "weight_decay": 0.0, "clip": 100.0}


#: beamforming edge features e_ji (``edge_feature``): 'in' = f(h_ji), the interference Tx j causes at Rx i,
#: measured by Rx i (eq. (8) as printed, SPECS §1); 'out' = f(h_ij), the interference Tx i causes at Rx j
#: (measured by Rx j and sent by j); 'both' = [f(h_ji), f(h_ij)]
BF_EDGE_FEATURES = ("in", "out", "both")
#: input normalisations (``feature_norm``, module docstring): 'mean' (default) | 'std' | 'linear'
FEATURE_NORMS = ("mean", "std", "linear")
#: beamforming node update (``node_carry``, module docstring): what x keeps beside the new beam, 'channel' = f(h_kk)
#: (default, eq. (8)) | 'beam' = the previous beam (the authors' public code)
NODE_CARRY = ("channel", "beam")


def units(mode: str, n_t: int, edge_feature: str = "in", receiver_state: bool = False
          ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(MLP1 units, MLP2 units) of SPECS §1 for ``mode`` 'pc' | 'bf' with N_t antennas (beamforming with
    ``edge_feature`` 'both': 2 N_t more MLP1 inputs; with ``receiver_state``: 4 N_t more, x_i)."""
    if mode == "pc":
        return (5, 32, 32), (35, 16, 1)
    n_in = (8 if edge_feature == "both" else 6) * n_t + (4 * n_t if receiver_state else 0)
    return (n_in, 64, 64), (64 + 4 * n_t, 32, 2 * n_t)


class MLP(nn.Module):
    """Fully connected net, ReLU after every hidden layer and, when ``relu_out``, after the last one.
    Parameters in float64; :meth:`forward` computes in the input's dtype."""

    def __init__(self, sizes: tuple[int, ...], relu_out: bool) -> None:
        super().__init__()
        self.relu_out = relu_out
        self.linear = nn.ModuleList(nn.Linear(a, b, dtype=torch.float64, device="cpu")
                                    for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x: Tensor) -> Tensor:
        n = len(self.linear)
        for i, lin in enumerate(self.linear):
            x = F.linear(x, lin.weight.to(x.device, x.dtype), lin.bias.to(x.device, x.dtype))
            if i < n - 1 or self.relu_out:
                x = torch.relu(x)
        return x


def split_first_layer(mlp1: MLP, mode: str, n_t: int, edge_feature: str = "in") -> tuple[Tensor, Tensor, Tensor]:
    """MLP1's first layer W [x_j, e_ji] + b split as W_send [sender's fields] + (W_recv e_recv + b).

    Power control: inputs (x_j (3), f(|h_ji|) measured by the receiver, f(|h_ij|) sent by j); beamforming:
    (x_j (4 N_t), then per ``edge_feature`` f(h_ji) (2 N_t) measured by the receiver and/or f(h_ij) (2 N_t)
    sent by j).  The sender's fields are (x_j, f(h_ij) if sent).  Returns (W_send, W_recv, b)."""
    lin = mlp1.linear[0]
    W, b = lin.weight, lin.bias
    if mode == "pc":
        return torch.cat([W[:, :3], W[:, 4:5]], 1), W[:, 3:4], b
    x, e = 4 * n_t, 2 * n_t
    W = W[:, :x + e * (2 if edge_feature == "both" else 1)]  # without the receiver-state columns
    if edge_feature == "in":
        return W[:, :x], W[:, x:], b
    if edge_feature == "out":
        return W, W[:, :0], b
    return torch.cat([W[:, :x], W[:, x + e:]], 1), W[:, x:x + e], b


def edge_constant(params: WCGCNParams, e_recv: Tensor) -> Tensor:
    """W_recv e_ji + b for each in-edge (B, E, d1): the part of MLP1's first layer that only depends on what
    the receiver measured, the same in every layer (computed once)."""
    _, W_r, b = split_first_layer(params.mlp1, params.mode, params.tx_antennas, params.edge_feature)
    return F.linear(e_recv, W_r.to(e_recv.device, e_recv.dtype), b.to(e_recv.device, e_recv.dtype))


def edge_messages(params: WCGCNParams, sent: Tensor, const: Tensor, own: Tensor | None = None) -> Tensor:
    """MLP1(x_j, e_ji) per edge (..., d): ``sent`` (..., n_send) the sender's fields, ``const`` (..., d1) from
    :func:`edge_constant` (eq. (8), inner part); ``own`` (..., 4 N_t) the receiver's state x_i per edge when
    the model has ``receiver_state`` (MLP1(x_j, e_ji, x_i))."""
    W_s, _, _ = split_first_layer(params.mlp1, params.mode, params.tx_antennas, params.edge_feature)
    pre = F.linear(sent, W_s.to(sent.device, sent.dtype)) + const
    if params.receiver_state:
        W_o = params.mlp1.linear[0].weight[:, -4 * params.tx_antennas:]
        pre = pre + F.linear(own, W_o.to(own.device, own.dtype))
    h = torch.relu(pre)
    for lin in params.mlp1.linear[1:]:
        h = torch.relu(F.linear(h, lin.weight.to(h.device, h.dtype), lin.bias.to(h.device, h.dtype)))
    return h


#: lower clamp of the power-control pre-activation: sigmoid(-60) = 8.8e-27 > 0 in float32 and float64, so
#: p_k > 0, sqrt(p_k) has a finite gradient and exp(60) does not overflow; outputs change only where y < -60
SIGMOID_FLOOR = -60.0


def node_update(params: WCGCNParams, x: Tensor, m: Tensor) -> Tensor:
    """x <- sigma(MLP2(x, m)) (eq. (8), outer part): power control x = [f(|h_kk|), w_k, p_k / P_max] gets the
    new p; beamforming x = [v_k, f(h_kk)] the new v with ||v|| <= 1.  x (..., n_x), m (..., d)."""
    y = params.mlp2(torch.cat([x, m], -1))
    if params.mode == "pc":  # sigmoid (identical on any host size); y floored at SIGMOID_FLOOR so that exp(-y)
        # cannot overflow (float32: y < -88.7 gave exp = inf, p = 0 and NaN gradients through 1/(1+inf) and sqrt(p))
        return torch.cat([x[..., :2], 1.0 / (1.0 + torch.exp(-y.clamp_min(SIGMOID_FLOOR)))], -1)
    # node_carry 'beam': x = [new v, previous v] (module docstring)
    keep = x[..., :2 * params.tx_antennas] if params.node_carry == "beam" else x[..., 2 * params.tx_antennas:]
    return torch.cat([ball(y), keep], -1)


class WCGCNParams(LearnedModule):
    """WCGCN weights (MLP1, MLP2 shared by all layers) and the feature scales ``scale`` = [s_direct, s_edge]
    (0 until observed: then 1 is used)."""

    hparam_names: ClassVar[tuple[str, ...]] = ("mode", "tx_antennas", "layers", "edge_feature", "receiver_state",
                                               "feature_norm", "node_carry")

    def __init__(self, mode: str = "pc", tx_antennas: int = 1, layers: int = 3, edge_feature: str = "in",
                 receiver_state: bool = False, feature_norm: str = "mean", node_carry: str = "channel",
                 seed: int = 0) -> None:
        super().__init__()
        if mode not in ("pc", "bf"):
            raise ValueError(f"wcgcn mode must be 'pc' or 'bf', got {mode!r}")
        if edge_feature not in BF_EDGE_FEATURES:
            raise ValueError(f"wcgcn edge_feature must be one of {BF_EDGE_FEATURES}, got {edge_feature!r}")
        if feature_norm not in FEATURE_NORMS:
            raise ValueError(f"wcgcn feature_norm must be one of {FEATURE_NORMS}, got {feature_norm!r}")
        if node_carry not in NODE_CARRY:
            raise ValueError(f"wcgcn node_carry must be one of {NODE_CARRY}, got {node_carry!r}")
        self.feature_norm = feature_norm
        self.node_carry = node_carry if mode == "bf" else "channel"
        self.mode, self.tx_antennas, self.layers = mode, int(tx_antennas), int(layers)
        self.edge_feature = edge_feature if mode == "bf" else "in"  # power control: always [|h_ji|, |h_ij|]
        self.receiver_state = bool(receiver_state) and mode == "bf"
        u1, u2 = units(mode, self.tx_antennas, self.edge_feature, self.receiver_state)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.mlp1 = MLP(u1, relu_out=True)
            self.mlp2 = MLP(u2, relu_out=False)
        if mode == "bf":  # start inside the unit ball: where ||y|| > 1, sigma(y) = y/||y|| has no radial gradient,
            with torch.no_grad():  # so power control could never be learned for that node
                self.mlp2.linear[-1].weight.mul_(0.1)
                self.mlp2.linear[-1].bias.zero_()
        self.register_buffer("scale", torch.zeros(2, dtype=torch.float64, device="cpu"))

    def observe(self, net: Network) -> None:
        """Set ``scale`` from the first training minibatch: per ``feature_norm`` (module docstring) the mean of
        ln(1 + snr), the standard deviation of f's components (log or linear) of direct links / present edges."""
        if float(self.scale[0]) > 0:
            return
        loc = net.local["bs"]
        c2 = loc["p_max"] / loc["sigma2"]
        n = 1 if self.mode == "pc" else 2 * self.tx_antennas  # real components of f per channel

        def stat(snr: Tensor) -> Tensor:
            if self.feature_norm == "mean":
                return torch.log1p(snr).mean()
            return ((torch.log1p(snr) ** 2) if self.feature_norm == "std" else snr).mean().div(n).sqrt()

        own = stat(c2 * (loc["h_own"].abs() ** 2).sum(-1))
        es = net.edges[EDGES]
        if es.size:
            g = (loc["H_rx"][:, es.dst, es.src].abs() ** 2).sum(-1) * c2[:, es.dst]
            edge = stat(g[es.mask])
        else:
            edge = own
        with torch.no_grad():
            self.scale.copy_(torch.stack([own, edge]).to(torch.float64).clamp_min(1e-6))


def _scales(params: WCGCNParams) -> tuple[float, float]:
    s = [float(v) for v in params.scale]
    return (s[0] if s[0] > 0 else 1.0, s[1] if s[1] > 0 else 1.0)


def channel_feature(h: Tensor, c2: Tensor, s: float, norm: str = "mean") -> Tensor:
    """f(h) = (h/||h||) ln(1 + c2 ||h||^2) / s (``norm`` 'mean' | 'std'; 'linear': sqrt(c2) h / s): h (..., N_t)
    complex, c2 = P_max / sigma^2 (...) -> (..., N_t) complex (a zero channel maps to 0)."""
    if norm == "linear":
        return h * (c2.sqrt() / s)[..., None].to(h.dtype)
    g = (h.abs() ** 2).sum(-1)
    nrm = g.sqrt().clamp_min(torch.finfo(g.dtype).tiny)
    mag = torch.log1p(c2 * g) / s
    return h * (mag / nrm)[..., None].to(h.dtype)


def as_reals(z: Tensor) -> Tensor:
    """(..., n) complex -> (..., 2n) real: (re_1, im_1, ..., re_n, im_n)."""
    return torch.view_as_real(z).flatten(-2)


def as_complex(x: Tensor) -> Tensor:
    """(..., 2n) real -> (..., n) complex (inverse of :func:`as_reals`)."""
    return torch.view_as_complex(x.reshape(x.shape[:-1] + (-1, 2)).contiguous())


def ball(y: Tensor) -> Tensor:
    """sigma(y) = y / max(||y||, 1) over the last dim (beamforming output, Sec. V-C): ||sigma(y)|| <= 1."""
    return y / torch.linalg.vector_norm(y, dim=-1, keepdim=True).clamp_min(1.0)


def wcgcn_protocol(params: WCGCNParams, net: Network, aggr: str = "max") -> Protocol:
    """The ``params.layers``-round WCGCN protocol on an interference network (module docstring).

    ``aggr``: the aggregation of eq. (7), MAX as in the paper; 'sum' / 'mean' swap it at inference for the
    same trained weights (the robustness check of the MPGNN paper's claim that MAX tolerates missing edges)."""
    mode, n_t, edge_feature, norm = params.mode, params.tx_antennas, params.edge_feature, params.feature_norm
    sends_reverse = mode == "pc" or edge_feature != "in"  # j sends what Rx j measured from Tx i
    if int(net.info["bs_antennas"]) != n_t:
        raise ValueError(f"wcgcn model has tx_antennas={n_t}, the scenario has {net.info['bs_antennas']}")
    if mode == "pc" and n_t != 1:
        raise ValueError("wcgcn power control needs tx_antennas = 1")
    s_own, s_edge = _scales(params)

    def init_bs(block: AgentBlock) -> None:
        loc = block.local
        c2 = loc["p_max"] / loc["sigma2"]
        own = channel_feature(loc["h_own"], c2, s_own, norm)  # (B, n, N_t) complex
        ev = block.edges[EDGES]  # in-edges j -> i, i in this block
        h_in = loc["H_rx"][:, ev.dst_local, ev.src]  # h_ji as Rx i measured it, (B, E, N_t)
        e_in = channel_feature(h_in, ev.gather_dst(c2), s_edge, norm)
        real = loc["p_max"].dtype
        if mode == "pc":
            block.state["x"] = torch.stack([own[..., 0].abs(), loc["w"], torch.ones_like(loc["w"])], -1)
            e_recv = e_in[..., 0].abs()[..., None]
            block.state["V"] = loc["p_max"].sqrt().to(loc["h_own"].dtype)[..., None, None]
        else:
            v = torch.full(own.shape, 1.0 / math.sqrt(n_t), dtype=real, device=block.device).to(own.dtype)
            block.state["x"] = torch.cat([as_reals(v), as_reals(own)], -1)
            e_recv = as_reals(e_in) if edge_feature != "out" else e_in.real[..., :0]
            block.state["V"] = (loc["p_max"].sqrt()[..., None].to(v.dtype) * v)[..., None]
        block.state["edge_const"] = edge_constant(params, e_recv)

    def send_state(block: AgentBlock, ev: EdgeView) -> dict[str, Tensor]:
        out = {"x": ev.gather_src(block.state["x"])}
        if sends_reverse:  # f(h_ij): the reverse channel Rx j (the sender's receiver) measured from Tx i
            loc = block.local
            h_rev = loc["H_rx"][:, ev.src_local, ev.dst]
            c2 = ev.gather_src(loc["p_max"] / loc["sigma2"])
            f_rev = channel_feature(h_rev, c2, s_edge, norm)
            out["g"] = f_rev[..., 0].abs()[..., None] if mode == "pc" else as_reals(f_rev)
        return out

    def message_fn(block: AgentBlock, ev: EdgeView, payload: dict[str, Tensor]) -> dict[str, Tensor]:
        """MLP1(x_j, e_ji) on the present in-edges (absent ones: 0, left out of the MAX by the engine)."""
        sent = torch.cat([payload["x"], payload["g"]], -1) if sends_reverse else payload["x"]
        const = block.state["edge_const"]
        own = ev.gather_dst(block.state["x"]) if params.receiver_state else None
        if bool(ev.mask.all()):
            return {"m": edge_messages(params, sent, const, own)}
        m = edge_messages(params, sent[ev.mask], const[ev.mask], None if own is None else own[ev.mask])
        out = torch.zeros(sent.shape[:-1] + (m.shape[-1],), dtype=m.dtype, device=m.device)
        return {"m": out.index_put((ev.mask,), m)}

    def store(block: AgentBlock, inbox: Inbox) -> None:
        block.state["m"] = inbox["m"]

    def update(block: AgentBlock) -> None:
        current_layer(block, params.layers, "wcgcn")
        loc = block.local
        x = block.state["x"] = node_update(params, block.state["x"], block.state["m"])
        if mode == "pc":
            block.state["V"] = (x[..., 2] * loc["p_max"]).sqrt().to(loc["h_own"].dtype)[..., None, None]
        else:
            v = as_complex(x[..., :2 * n_t])
            block.state["V"] = (loc["p_max"].sqrt()[..., None].to(v.dtype) * v)[..., None]

    if mode == "pc":
        fields = (MsgField("x", "real", (3,)), MsgField("g", "real", (1,)))
    else:
        fields = (MsgField("x", "real", (4 * n_t,)),) + ((MsgField("g", "real", (2 * n_t,)),) if sends_reverse else ())
    phases = [Message("state", EDGES, fields, send_state, store, aggr=aggr, combine=message_fn),
              Local("update", "bs", update)]
    return Protocol("wcgcn", ("bs",), {"bs": init_bs}, phases, params.layers, Output("bs", "V"), unit="bit/s/Hz",
                    meta={"layers": params.layers, "mode": mode, "trainable_parameters": params.n_trainable()},
                    module=params)


# =============================================================================== options, declaration
class WCGCNOptions(LearnedOptions):
    """YAML options of ``name: wcgcn``.  checkpoint: 'shipped' (picked from the scenario: beamforming
    model when N_t > 1 (on the mpgnn_code layout its own), the Gaussian model of the same K and SNR, else the
    D2D power-control model),
    'shipped:<name>' (one of :data:`SHIPPED_MODELS`), 'untrained' or a path; the hyper-parameters must
    match the checkpoint's."""

    mode: Literal["pc", "bf"] | None = Field(None, description="power control | beamforming; default: checkpoint's")
    tx_antennas: int | None = Field(None, ge=1)
    layers: int | None = Field(None, ge=1, description="GNN layers (shared weights); default 3")
    edge_feature: Literal["in", "out", "both"] | None = Field(
        None, description="beamforming edge feature e_ji: in = h_ji (eq. (8) as printed; default) | out = h_ij "
        "(the interference Tx i causes at Rx j, sent by j) | both = [h_ji, h_ij]; default: checkpoint's")
    receiver_state: bool | None = Field(
        None, description="beamforming: MLP1 also takes the receiver's own state, MLP1(x_j, e_ji, x_i) (default "
        "false, eq. (8)); default: checkpoint's")
    feature_norm: Literal["mean", "std", "linear"] | None = Field(
        None, description="input normalisation: mean = f(h) with s the mean log-SNR (default) | std = same map, "
        "unit-variance components | linear = the authors' code: h standardised per class, no log; default: "
        "checkpoint's")
    node_carry: Literal["channel", "beam"] | None = Field(
        None, description="beamforming node update: x <- [v_new, f(h_kk)] (channel, eq. (8); default) | "
        "[v_new, v_old] (beam, the authors' public code); default: checkpoint's")
    aggr: Literal["max", "sum", "mean"] = Field(
        "max", description="aggregation of eq. (7) at inference: max (the paper's, what the models were trained "
        "with) | sum | mean (a swap for robustness studies)")


def shipped_for(net: Network) -> str:
    """Name of the shipped model that fits ``net`` (WCGCNOptions docstring): what ``checkpoint: shipped``
    means at inference (``LearnableSpec.default_for``; without a network, e.g. training: d2d_pc); beamforming:
    mpgnn_code_bf on the layout mpgnn_code, else d2d_bf."""
    scn = net.info.get("scenario_config") or {}
    if int(net.info["bs_antennas"]) > 1:
        return "mpgnn_code_bf" if scn.get("layout") == "mpgnn_code" else "d2d_bf"
    if scn.get("layout") == "gaussian":
        name = f"gauss_K{int(net.info['n_pairs'])}_{int(round(float(scn.get('snr_db', 10.0))))}dB"
        if name in SHIPPED_MODELS:
            return name
    return "d2d_pc"


def loss_wsr(wsr: dict[int, Tensor]) -> Tensor:
    """-mean over samples (and loss layers) of the WSR [bit/s/Hz] (Sec. V)."""
    return -torch.stack([w.mean() for w in wsr.values()]).mean()


def _protocol(params: WCGCNParams, net: Network, opts: WCGCNOptions) -> Protocol:
    return wcgcn_protocol(params, net, opts.aggr)


MODEL = LearnableSpec("wcgcn", WCGCNParams, WCGCNOptions, _protocol, SHIPPED_MODELS["d2d_pc"],
                      "scenarios/train_wcgcn_d2d_pc.yaml", TRAIN_DEFAULTS, loss=loss_wsr, named=SHIPPED_MODELS,
                      default_for=shipped_for)


def build(opts: WCGCNOptions, net: Network) -> Protocol:
    """Inference protocol (shipped checkpoints resolved against the scenario; an untrained model without
    ``mode`` / ``tx_antennas`` takes them from the scenario: beamforming when N_t > 1)."""
    if opts.checkpoint == "untrained":
        n_t = int(net.info["bs_antennas"])
        opts = opts.model_copy(update={"mode": opts.mode or ("bf" if n_t > 1 else "pc"),
                                       "tx_antennas": opts.tx_antennas or n_t})
    return MODEL.build(opts, net)


register_algorithm(AlgorithmSpec("wcgcn", ("interference",), WCGCNOptions, build,
                                 "MPGNN/WCGCN eq. (7)-(8): 3 layers, shared weights, MAX aggregation; "
                                 "power control (N_t = 1) or beamforming; checkpoint shipped|shipped:NAME|"
                                 "untrained|PATH", learnable=MODEL.learnable, check=MODEL.check))
