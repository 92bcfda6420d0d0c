"""ICGNN power allocation for cell-free massive MIMO (ICGNN paper Sec. III-B, IV-B; eq. (4), (27), (28)).

Wireless virtual graph (Sec. IV-B): one virtual node v_kl per (UE k, AP l), hosted by AP l, with
node feature x_kl = (a_kl, p_kl) and a directed edge v_kl -> v_mj for every m != k and every l, j (no
edges among the nodes of one UE), edge feature I^m_kl.  One GNN layer (eq. (4a)/(4b), MAX aggregation):

    m_mj = max_{k != m, l} M_t(a_kl, p_kl, I^m_kl)            (64 reals; the same for every j)
    p_mj <- U_t(m_mj, a_mj, p_mj),   p_kl <- P_t p_kl / sum_i p_il   (27)

M_t: {3, 32, 128, 64}, U_t: {66, 128, 32, 1} fully connected, batch normalization + Tanh after every
hidden layer, output Tanh (M) / Sigmoid (U) (Sec. III-C); 2 layers; p initialised to equal power.
Eq. (4) writes one (M, U) for all layers, eq. (2)-(3) index them by layer; we give every layer its
own (M_t, U_t), which also gives every layer its own batch-norm running statistics (layer 1 sees
p = 1/K everywhere, layer 2 the learned powers).

Distributed (one protocol round = one GNN layer, link class ``fh``):
  1. ``fh_msg`` (ap>cpu): AP l evaluates M_t for its own nodes and every receiving UE m and
     pre-aggregates (MAX is associative): mhat_lm = max_{k != m} M_t(a_kl, p_kl, I^m_kl) -> (K, 64) reals.
  2. ``fh_agg`` (cpu>ap): the CPU takes the elementwise max over APs, m_m = max_l mhat_lm, and sends the
     (K, 64) result back to every AP.
  3. ``ap_update`` (local): AP l runs U_t for its K nodes and normalises (27) with its own budget.
Per layer: L messages of 64K reals up and L of 64K reals down (2 * 64 * L * K reals).
Silent neighbours (a lost or late message; declared once, on the phases): an AP's pre-aggregate that does
not reach the CPU is excluded from the MAX (``silent='exclude'``: the MAX over the APs heard -- a previous
layer's message would be another layer's, and 0 is not neutral for Tanh outputs); an AP that misses the
CPU's aggregate keeps the last one it received (``silent='last'``).  The MAX over
APs and UEs is exactly the dense graph's MAX over in-edges (tests/test_icgnn.py checks it against an
explicit KL x KL edge-list implementation).

Features (chosen here; the paper gives no scaling, and the raw statistics are ~1e-6):
* a_kl = Re E{h_kl^H w_kl} (AP l's Monte-Carlo statistic, eq. (25)).
* I^m_kl: the paper writes E{h_ml^H w_kl} "in R".  For m != k that mean is exactly zero: the rotation
  h_ml -> e^{j theta} h_ml leaves the channel distribution (circularly symmetric) and the L-MMSE w_kl of
  eq. (22) unchanged and turns h_ml^H w_kl into e^{-j theta} h_ml^H w_kl.  Its Monte-Carlo value is pure
  sampling noise (|mean|^2 / second moment ~ 1/S, measured), and so are the cross-AP terms of B_mk built
  from it.  We use the real RMS interference amplitude I^m_kl = sqrt(E{|h_ml^H w_kl|^2}) = sqrt([B_mk]_ll),
  the quantity through which v_kl's power hurts UE m in (24), in the same units as a_kl.
* Channel features are given the AP-local SNR scaling  f(x) = asinh(x sqrt(P_t / sigma^2))  (P_t: the
  AP's budget, sigma^2 the noise power, both known at the AP): ~ linear in the received amplitude below
  the noise, ~ log (dB-like) above it, so the 70 dB of path-loss spread maps to [0, ~8].
* Power features in units of the AP's budget: p_kl / P_t (initial 1/K, as the paper's p = 1/K), read by the
  layers as :func:`power_reading`: unchanged (``power_ref_nodes`` 0, every checkpoint written before the option
  existed) or K p_kl / (K_0 P_t) (``power_ref_nodes`` K_0 > 0: the power in units of the equal share P_t / K,
  over a constant; 1 / K_0 at equal power for every K).
The update network's output s_kl in (0, 1) gives p_kl = P_t s_kl / sum_i s_il (27), in W.

Batch normalization: in training (local engine, ``module.train()``) batch statistics over all edges /
nodes of the minibatch (every AP's rows are in one block there; the distinct messages are the dense
graph's edges each repeated L times, so mean and variance are the same); at inference ``module.eval()``
(the registry build always uses eval mode): running statistics, so every AP computes alone and the
local and Ray engines agree exactly.  The running statistics are re-estimated at the current weights
before every validation of a training run (``dsim.learn.Learnable.calibrate``,
:func:`dsim.learn.recalibrate_bn`, "precise BN"): with momentum 0.1 they lag behind the weights that Adam
keeps moving, which alone cost ~10 % of the sum-SE at inference.

Training (``python -m dsim train scenarios/train_icgnn.yaml``): loss (28) = -mean sum-SE (bit/s/Hz) at
the last layer, Adam lr 1e-3, batch 100 (Sec. V; :data:`TRAIN_DEFAULTS`).  ``adapt_steps: n``
(:func:`dsim.learn.adapt`): before inference, n Adam steps of (28) on fresh samples of the run's own
scenario configuration (``net.info["scenario_config"]``, seed ``adapt_seed``, different from the
evaluated topologies) ("four gradient descents", Sec. V-B), batch norm in training mode, then the
running statistics re-estimated on the same samples; wall time and samples go to the protocol's ``meta``
(``adapt_s``, ``adapt_samples``; ``dsim run`` reports them as ``protocol_adapt_s`` ...).  Options,
checkpoints, adaptation and calibration are :mod:`dsim.learn`'s, declared by :data:`MODEL`.

Shipped model (``checkpoint: shipped``, the default) ``agents/models/icgnn_general.pt``: trained across
configurations to need no adaptation (``scenarios/train_icgnn_general.yaml``: stage 1
``agents/models/icgnn_general_v1.pt`` (``scenarios/train_icgnn_general_v1.yaml``, old reading), then fine-tuned
with ``power_ref_nodes`` 5, which it carries); the paper-style base model
``agents/models/icgnn_L7K5N2.pt`` (L = 7, N = 2, K = 5): ``scenarios/train_icgnn.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from agents.cellfree_alloc import ap_local_statistics, equal_ap
from dsim.learn import AdaptOptions, BatchNormOptions, LearnableSpec, LearnedModule, current_layer
from dsim.network import Network
from dsim.protocol import AgentBlock, EdgeView, Inbox, Local, Message, Output, Protocol, segment_reduce
from dsim.protocol import Field as MsgField
from dsim.registry import AlgorithmSpec, OptionError, register_algorithm

Tensor = torch.Tensor

SHIPPED = Path(__file__).resolve().parent / "models" / "icgnn_general.pt"
MSG_UNITS = (3, 32, 128, 64)
UPD_UNITS = (66, 128, 32, 1)


def layer_units(width: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Units of the message net M_t and the update net U_t with their hidden layers ``width`` times the
    paper's (Sec. IV-B; width 1: {3,32,128,64} and {66,128,32,1}).  The message size 64 (and so U_t's input
    2 + 64) is kept, so the bytes on the fronthaul do not depend on the width."""
    m = (MSG_UNITS[0], *(width * u for u in MSG_UNITS[1:-1]), MSG_UNITS[-1])
    u = (UPD_UNITS[0], *(width * v for v in UPD_UNITS[1:-1]), UPD_UNITS[-1])
    return m, u


#: training defaults (Sec. V): Adam lr 1e-3 without decay (AdamW, weight decay 0), batch 100; clipping at
#: 100 only as a safety net (norms stay < 10)
TRAIN_DEFAULTS = {"steps": 2500, "batch": 100, "lr": 1e-3, "lr_decay_every": 1_000_000, "lr_decay": 0.1,
                  "betas": (0.9, 0.999), "weight_decay": 0.0, "clip": 100.0}


# =============================================================================== networks
class MLP(nn.Module):
    """Fully connected net: Linear -> BatchNorm -> Tanh for the hidden layers, Linear -> ``out`` last.

    Parameters are stored in float64; :meth:`forward` computes in the input's dtype (float32 or float64)
    in eval mode, and in float64 in training mode (so batch norm updates its running statistics in place).
    """

    def __init__(self, units: tuple[int, ...], out: str) -> None:
        super().__init__()
        self.units, self.out = tuple(units), out
        cpu = torch.device("cpu")  # built on the CPU (the protocol moves it where it runs: Protocol.to)
        self.linear = nn.ModuleList(nn.Linear(a, b, dtype=torch.float64, device=cpu)
                                    for a, b in zip(units[:-1], units[1:]))
        self.norm = nn.ModuleList(nn.BatchNorm1d(b, dtype=torch.float64, device=cpu) for b in units[1:-1])

    def forward(self, x: Tensor) -> Tensor:
        """x (..., units[0]) -> (..., units[-1]); batch norm over all leading dims."""
        lead = x.shape[:-1]
        dtype = x.dtype
        work = torch.float64 if self.training else dtype
        h = x.reshape(-1, x.shape[-1]).to(work)
        for i, lin in enumerate(self.linear):
            h = F.linear(h, lin.weight.to(h.device, work), lin.bias.to(h.device, work))
            if i < len(self.norm):
                bn = self.norm[i]
                if self.training:
                    h = bn(h)
                else:
                    h = F.batch_norm(h, bn.running_mean.to(h.device, work), bn.running_var.to(h.device, work),
                                     bn.weight.to(h.device, work), bn.bias.to(h.device, work), False, 0.0, bn.eps)
                h = torch.tanh(h)
        # sigmoid written as 1 / (1 + exp(-h)): torch.sigmoid's vectorized and scalar (tail) CPU kernels differ
        # in the last bit, which would make the result depend on how many agents a host holds
        h = torch.tanh(h) if self.out == "tanh" else 1.0 / (1.0 + torch.exp(-h))
        return h.to(dtype).reshape(lead + (h.shape[-1],))


class ICGNNParams(LearnedModule):
    """The trainable set Theta: per layer t a message net M_t {3,32,128,64} and an update net U_t
    {66,128,32,1} (Sec. IV-B); ``width`` w > 1 multiplies the hidden units ({3,32w,128w,64}, {66,128w,32w,1}:
    beyond the paper, :func:`layer_units`).  Initialization: PyTorch's default (Kaiming-uniform) from seed
    ``seed``.

    ``power_ref_nodes`` (K_0) fixes the units of the power feature the layers read (:func:`power_reading`):
    0 = p_kl / P_t (equal power = 1 / K; checkpoints written before the option existed load with 0), K_0 > 0 =
    K p_kl / (K_0 P_t) (equal power = 1 / K_0 whatever K).  It does not shape the parameters (a free
    hyper-parameter: ``power_ref_nodes`` in the options may change a checkpoint's)."""

    hparam_names: ClassVar[tuple[str, ...]] = ("layers", "power_ref_nodes", "width")
    free_hparams: ClassVar[tuple[str, ...]] = ("power_ref_nodes",)
    resizable_hparams: ClassVar[tuple[str, ...]] = ("layers",)

    def __init__(self, layers: int = 2, power_ref_nodes: int = 0, width: int = 1, seed: int = 0) -> None:
        super().__init__()
        self.layers, self.power_ref_nodes, self.width = int(layers), int(power_ref_nodes), int(width)
        msg_units, upd_units = layer_units(self.width)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.msg = nn.ModuleList(MLP(msg_units, "tanh") for _ in range(layers))
            self.upd = nn.ModuleList(MLP(upd_units, "sigmoid") for _ in range(layers))

    def resized(self, layers: int | None = None) -> ICGNNParams:
        """A copy with T' = ``layers`` GNN layers warm-started from this model (a training start, e.g. a
        3-layer model from the shipped 2-layer one): layer t' <= min(T, T') is layer t' (M_t, U_t of eq. (2)-(3),
        parameters and batch-norm statistics); layers past T repeat layer T's.  Not function-preserving for
        T' > T (U_t of eq. (3) outputs the power itself, not a residual, so an extra layer re-applies layer T);
        T' < T keeps the first T' layers, the source's first T' rounds exactly."""
        T = self.layers if layers is None else int(layers)
        if T < 1:
            raise OptionError("layers", f"{T}; allowed: >= 1")
        new = ICGNNParams(T, self.power_ref_nodes, self.width)
        for t in range(T):
            s = min(t, self.layers - 1)
            new.msg[t].load_state_dict(self.msg[s].state_dict())
            new.upd[t].load_state_dict(self.upd[s].state_dict())
        return new


# =============================================================================== the layer maths
def channel_features(mean: Tensor, second: Tensor, power: Tensor, noise_w: float) -> tuple[Tensor, Tensor]:
    """AP-local graph features from the AP's statistics (module docstring, "Features").

    mean (B, n, K, K) complex, mean[.., k, i] = E{h_kl^H w_il}; second (B, n, K, K) real (E|.|^2);
    power (B, n) P_t [W]; noise_w sigma^2 [W].  Returns (a (B, n, K): f(a_kl) of node v_kl,
    I (B, n, K, K): I[.., k, m] = f(sqrt(E|h_ml^H w_kl|^2)), the edge feature of v_kl -> v_m*), with
    f(x) = asinh(x sqrt(P_t / sigma^2)).
    """
    scale = (power / noise_w).sqrt()[..., None]  # (B, n, 1)
    a = torch.asinh(mean.diagonal(dim1=-2, dim2=-1).real * scale)
    interf = torch.asinh(second.clamp_min(0).sqrt().transpose(-1, -2) * scale[..., None])
    return a, interf


def power_reading(frac: Tensor, nodes: int, power_ref_nodes: int) -> Tensor:
    """The power features the ICGNN layers read, from ``frac`` = power / budget of each of the ``nodes`` nodes
    that share one budget (cell-free: the K UEs of an AP, (27); cellular: the V = K N_r virtual nodes of a BS,
    (17)): ``frac`` itself for ``power_ref_nodes`` 0 (the paper's raw powers up to the constant budget; equal
    power = 1 / nodes, which moves with the graph size), else ``frac`` nodes / V_0 (the power in units of the
    equal share budget / nodes, over the constant V_0 = ``power_ref_nodes``: equal power = 1 / V_0 for every
    size).  Any shape -> the same shape.  A model trained with 0 at V_0 nodes reads with V_0 exactly the features
    it was trained on at V_0 nodes (the factor is exactly 1.0 there)."""
    if power_ref_nodes <= 0:
        return frac
    return frac * (nodes / power_ref_nodes)


def _pairs(K: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """(sender UE k, receiving UE m) for all k != m, k-major."""
    k = torch.arange(K, device=device).repeat_interleave(K)
    m = torch.arange(K, device=device).repeat(K)
    keep = k != m
    return k[keep], m[keep]


def pair_max_messages(msg: MLP, sender: Tensor, edge: Tensor) -> Tensor:
    """MAX aggregation (4a) over a complete directed graph without self-loops, per block of V nodes:
    m_i = max_{j != i} M([sender_j, edge_ji]).  The one implementation of the ICGNN message step, used by
    the cell-free power allocation (here) and the cellular precoder (``agents.icgnn_cellular``).

    sender (..., V, Fs) node features, edge (..., V, V, Fe) edge features [sender j, receiver i].
    Returns (..., V, d) (0 for V = 1: no in-edges)."""
    V = sender.shape[-2]
    ks, ms = _pairs(V, sender.device)
    x = torch.cat([sender.index_select(-2, ks), edge[..., ks, ms, :]], dim=-1)
    return segment_reduce(msg(x), ms, V, "max", dim=-2)  # msg: (..., V(V-1), d)


def update_nodes(upd: MLP, agg: Tensor, node: Tensor, budget: Tensor) -> Tensor:
    """Update (4b) with the budget scaling (27)/(17): s = U([m_i, node_i]) in (0, 1)^C, then every output
    column scaled to sum to the budget over the block's V nodes.

    agg (..., V, d), node (..., V, F), budget (...) -> (..., V, C), sum over V of every column = budget."""
    s = upd(torch.cat([agg, node], dim=-1))
    return budget[..., None, None] * s / s.sum(-2, keepdim=True)


def premax_messages(msg: MLP, a: Tensor, p_rel: Tensor, interf: Tensor) -> Tensor:
    """Step 1 at every AP of the block: mhat[.., m, :] = max_{k != m} M(a_kl, p_rel_kl, I^m_kl), p_rel the power
    feature (:func:`power_reading` of p_kl / P_t).

    a, p_rel (B, n, K); interf (B, n, K, K) [k, m].  Returns (B, n, K, 64) (0 for K = 1: no in-edges).
    """
    return pair_max_messages(msg, torch.stack([a, p_rel], dim=-1), interf[..., None])


def update_powers(upd: MLP, agg: Tensor, a: Tensor, p_rel: Tensor, power: Tensor) -> Tensor:
    """Step 3 at every AP of the block: s = U(m_mj, a_mj, p_rel_mj) in (0, 1) (p_rel: :func:`power_reading` of
    p_mj / P_t), then (27).

    agg (B, n, K, 64), a / p_rel (B, n, K), power (B, n) [W] -> p (B, n, K) [W], sum_k p_kl = P_t.
    """
    return update_nodes(upd, agg, torch.stack([a, p_rel], dim=-1), power)[..., 0]


# =============================================================================== protocol
def icgnn_protocol(params: ICGNNParams, net: Network) -> Protocol:
    """The ``params.layers``-round ICGNN protocol (autograd flows into ``params`` on the local engine).

    Layer t = ``block.round`` (1-based) uses (M_t, U_t)."""
    K = int(net.info["n_ues"])
    d = MSG_UNITS[-1]
    noise_w = float(net.info["noise_w"])

    def init_ap(block: AgentBlock) -> None:
        mean, second = ap_local_statistics(block)
        power = block.local["power"]
        block.state["a_feat"], block.state["i_feat"] = channel_features(mean, second, power, noise_w)
        block.state["p"] = equal_ap(block)

    def layer_of(block: AgentBlock) -> int:
        """0-based index of the layer (round - 1)."""
        return current_layer(block, params.layers, "icgnn") - 1

    ref = params.power_ref_nodes

    def send_msg(block: AgentBlock, ev: EdgeView) -> dict[str, Tensor]:
        p_rel = power_reading(block.state["p"] / block.local["power"][..., None], K, ref)
        pre = premax_messages(params.msg[layer_of(block)], block.state["a_feat"], p_rel, block.state["i_feat"])
        return {"m": ev.gather_src(pre)}

    def store_agg(block: AgentBlock, inbox: Inbox) -> None:
        """CPU: the elementwise max over the APs (aggr='max'); AP: the CPU's message (aggr='sum' over its
        single in-edge)."""
        block.state["agg"] = inbox["m"]

    def send_agg(block: AgentBlock, ev: EdgeView) -> dict[str, Tensor]:
        return {"m": ev.gather_src(block.state["agg"])}

    def ap_update(block: AgentBlock) -> None:
        power = block.local["power"]
        p_rel = power_reading(block.state["p"] / power[..., None], K, ref)
        block.state["p"] = update_powers(params.upd[layer_of(block)], block.state["agg"], block.state["a_feat"],
                                         p_rel, power)

    phases = [
        Message("fh_msg", "ap>cpu", (MsgField("m", "real", (K, d)),), send_msg, store_agg, aggr="max",
                silent="exclude"),
        Message("fh_agg", "cpu>ap", (MsgField("m", "real", (K, d)),), send_agg, store_agg, aggr="sum",
                silent="last"),
        Local("ap_update", "ap", ap_update),
    ]
    return Protocol("icgnn", ("ap", "cpu"), {"ap": init_ap}, phases, params.layers, Output("ap", "p"),
                    unit="bit/s/Hz", meta={"layers": params.layers, "trainable_parameters": params.n_trainable()},
                    module=params)


# =============================================================================== options, declaration
class ICGNNOptions(AdaptOptions, BatchNormOptions):
    """YAML options of ``name: icgnn``: checkpoint, init_seed (:class:`dsim.learn.LearnedOptions`; 'shipped'
    is the model trained across configurations, scenarios/train_icgnn_general.yaml), adapt_*
    (:class:`dsim.learn.AdaptOptions`), bn_* (:class:`dsim.learn.BatchNormOptions`), the number of layers
    (must match the checkpoint's at inference; in ``dsim train``'s options another count warm-starts from it,
    :meth:`ICGNNParams.resized`) and the width of the MLPs (:func:`layer_units`; must match the checkpoint's)."""

    layers: int | None = Field(None, ge=1, description="GNN layers; default: the checkpoint's (2 untrained); "
                                   "inference: must match it; training: another count is warm-started from it "
                                   "(ICGNNParams.resized)")
    width: int | None = Field(None, ge=1, description="hidden units of M_t and U_t times the paper's (beyond the "
                              "paper); default: the checkpoint's (1 untrained)")
    power_ref_nodes: int | None = Field(None, ge=0, description="units of the power feature: 0 = p / P_t, K_0 > 0 = "
                                        "K p / (K_0 P_t), size-invariant; default: the checkpoint's (0 untrained)")
    adapt_lr: float = Field(1e-4, gt=0, description="Adam lr of the adaptation steps (1e-4: on validation "
                            "configurations, seeds 8800+, 1e-3 lowered the shipped model by up to 2.7 points)")


def sum_se_loss(wsr: dict[int, Tensor]) -> Tensor:
    """Loss (28): -mean over samples (and loss layers) of the sum-SE [bit/s/Hz]."""
    return -torch.stack([w.mean() for w in wsr.values()]).mean()


def _protocol(params: ICGNNParams, net: Network, opts: ICGNNOptions) -> Protocol:
    return icgnn_protocol(params, net)


MODEL = LearnableSpec("icgnn", ICGNNParams, ICGNNOptions, _protocol, SHIPPED, "scenarios/train_icgnn.yaml",
                      TRAIN_DEFAULTS, loss=sum_se_loss)

register_algorithm(AlgorithmSpec("icgnn", ("cellfree",), ICGNNOptions, MODEL.build,
                                 "ICGNN power allocation, eq. (4), (27)-(28); MAX pre-aggregated over fh; "
                                 "checkpoint shipped|untrained|PATH, adapt_steps", learnable=MODEL.learnable,
                                 check=MODEL.check))
