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
Per layer: L messages of 64K reals up and L of 64K reals down (2 * 64 * L * K reals).  The MAX over
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
* Power features in units of the AP's budget: p_kl / P_t (initial 1/K, as the paper's p = 1/K).
The update network's output s_kl in (0, 1) gives p_kl = P_t s_kl / sum_i s_il (27), in W.

Batch normalization: in training (local engine, ``module.train()``) batch statistics over all edges /
nodes of the minibatch (every AP's rows are in one block there; the distinct messages are the dense
graph's edges each repeated L times, so mean and variance are the same); at inference ``module.eval()``
(the registry build always uses eval mode): running statistics, so every AP computes alone and the
local and Ray engines agree exactly.  The running statistics are re-estimated at the current weights
before every validation of a training run (``Learnable.calibrate``, :func:`recalibrate_bn`, "precise
BN"): with momentum 0.1 they lag behind the weights that Adam keeps moving, which alone cost ~10 % of
the sum-SE at inference.

Training (``python -m dsim train scenarios/train_icgnn.yaml``): loss (28) = -mean sum-SE (bit/s/Hz) at
the last layer, Adam lr 1e-3, batch 100 (Sec. V).  ``adapt_steps: n`` (:func:`adapt`): before inference,
n Adam steps of (28) on fresh samples of the run's own scenario configuration (``net.info
["scenario_config"]``, seed ``adapt_seed``, different from the evaluated topologies) with
``dsim.train.fine_tune`` ("four gradient descents", Sec. V-B), batch norm in training mode, then the
running statistics re-estimated on the same samples; wall time and samples go to the protocol's ``meta``
(``adapt_s``, ``adapt_samples``; ``dsim run`` reports them as ``protocol_adapt_s`` ...).

Shipped model ``agents/models/icgnn_L7K5N2.pt``: see ``scenarios/train_icgnn.yaml``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from agents.cellfree_alloc import ap_local_statistics, equal_ap
from agents.gcn_wmmse import Learnable
from agents.registry import AlgorithmSpec, register
from dsim.protocol import AgentBlock, EdgeView, Inbox, Local, Message, Output, Protocol
from dsim.protocol import Field as MsgField

Tensor = torch.Tensor

MODELS_DIR = Path(__file__).resolve().parent / "models"
SHIPPED = MODELS_DIR / "icgnn_L7K5N2.pt"
MSG_UNITS = (3, 32, 128, 64)
UPD_UNITS = (66, 128, 32, 1)


# =============================================================================== networks
class MLP(nn.Module):
    """Fully connected net: Linear -> BatchNorm -> Tanh for the hidden layers, Linear -> ``out`` last.

    Parameters are stored in float64; :meth:`forward` computes in the input's dtype (float32 or float64)
    in eval mode, and in float64 in training mode (so batch norm updates its running statistics in place).
    """

    def __init__(self, units: tuple[int, ...], out: str) -> None:
        super().__init__()
        self.units, self.out = tuple(units), out
        self.linear = nn.ModuleList(nn.Linear(a, b, dtype=torch.float64) for a, b in zip(units[:-1], units[1:]))
        self.norm = nn.ModuleList(nn.BatchNorm1d(b, dtype=torch.float64) for b in units[1:-1])

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


class ICGNNParams(nn.Module):
    """The trainable set Theta: per layer t a message net M_t {3,32,128,64} and an update net U_t
    {66,128,32,1} (Sec. IV-B).  Initialization: PyTorch's default (Kaiming-uniform) from seed ``seed``."""

    def __init__(self, layers: int = 2, seed: int = 0) -> None:
        super().__init__()
        self.layers = layers
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.msg = nn.ModuleList(MLP(MSG_UNITS, "tanh") for _ in range(layers))
            self.upd = nn.ModuleList(MLP(UPD_UNITS, "sigmoid") for _ in range(layers))

    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def observe(self, net) -> None:  # no running statistics besides batch norm's
        return None


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


def _pairs(K: int) -> tuple[Tensor, Tensor]:
    """(sender UE k, receiving UE m) for all k != m, k-major."""
    k = torch.arange(K).repeat_interleave(K)
    m = torch.arange(K).repeat(K)
    keep = k != m
    return k[keep], m[keep]


def premax_messages(msg: MLP, a: Tensor, p_rel: Tensor, interf: Tensor) -> Tensor:
    """Step 1 at every AP of the block: mhat[.., m, :] = max_{k != m} M(a_kl, p_kl / P_t, I^m_kl).

    a, p_rel (B, n, K); interf (B, n, K, K) [k, m].  Returns (B, n, K, 64) (0 for K = 1: no in-edges).
    """
    B, n, K = a.shape
    ks, ms = _pairs(K)
    x = torch.stack([a.index_select(2, ks), p_rel.index_select(2, ks), interf[:, :, ks, ms]], dim=-1)
    out = msg(x)  # (B, n, K(K-1), 64)
    d = out.shape[-1]
    if K == 1:
        return torch.zeros(B, n, K, d, dtype=a.dtype, device=a.device)
    idx = ms.to(a.device).reshape(1, 1, -1, 1).expand(B, n, -1, d)
    init = torch.full((B, n, K, d), -2.0, dtype=out.dtype, device=out.device)  # below tanh's range
    return init.scatter_reduce(2, idx, out, reduce="amax", include_self=False)


def update_powers(upd: MLP, agg: Tensor, a: Tensor, p_rel: Tensor, power: Tensor) -> Tensor:
    """Step 3 at every AP of the block: s = U(m_mj, a_mj, p_mj / P_t) in (0, 1), then (27).

    agg (B, n, K, 64), a / p_rel (B, n, K), power (B, n) [W] -> p (B, n, K) [W], sum_k p_kl = P_t.
    """
    s = upd(torch.cat([agg, a[..., None], p_rel[..., None]], dim=-1))[..., 0]
    return power[..., None] * s / s.sum(-1, keepdim=True)


# =============================================================================== protocol
def icgnn_protocol(params: ICGNNParams, net, meta: dict[str, Any] | None = None) -> Protocol:
    """The ``params.layers``-round ICGNN protocol (autograd flows into ``params`` on the local engine)."""
    K = int(net.info["n_ues"])
    d = MSG_UNITS[-1]
    noise_w = float(net.info["noise_w"])

    def init_ap(block: AgentBlock) -> None:
        mean, second = ap_local_statistics(block)
        power = block.local["power"]
        block.state["a_feat"], block.state["i_feat"] = channel_features(mean, second, power, noise_w)
        block.state["p"] = equal_ap(block)
        block.state["layer"] = 0

    def send_msg(block: AgentBlock, ev: EdgeView) -> dict[str, Tensor]:
        t = int(block.state["layer"])
        if t >= params.layers:
            raise RuntimeError(f"icgnn has {params.layers} layers; round {t + 1} asked for")
        p_rel = block.state["p"] / block.local["power"][..., None]
        pre = premax_messages(params.msg[t], block.state["a_feat"], p_rel, block.state["i_feat"])
        return {"m": ev.gather_src(pre)}

    def recv_msg(block: AgentBlock, inbox: Inbox) -> None:  # CPU: elementwise max over the APs
        block.state["agg"] = inbox.edges.max_dst(inbox["m"])

    def send_agg(block: AgentBlock, ev: EdgeView) -> dict[str, Tensor]:
        return {"m": ev.gather_src(block.state["agg"])}

    def recv_agg(block: AgentBlock, inbox: Inbox) -> None:  # AP: its single in-edge from the CPU
        block.state["agg"] = inbox["m"].index_select(1, torch.argsort(inbox.edges.dst_local))

    def ap_update(block: AgentBlock) -> None:
        t = int(block.state["layer"])
        power = block.local["power"]
        p_rel = block.state["p"] / power[..., None]
        block.state["p"] = update_powers(params.upd[t], block.state["agg"], block.state["a_feat"], p_rel, power)
        block.state["layer"] = t + 1

    phases = [
        Message("fh_msg", "ap>cpu", (MsgField("m", "real", (K, d)),), send_msg, recv_msg),
        Message("fh_agg", "cpu>ap", (MsgField("m", "real", (K, d)),), send_agg, recv_agg),
        Local("ap_update", "ap", ap_update),
    ]
    info = {"layers": params.layers, "trainable_parameters": params.n_trainable()} | dict(meta or {})
    return Protocol("icgnn", ("ap", "cpu"), {"ap": init_ap}, phases, params.layers, Output("ap", "p"),
                    unit="bit/s/Hz", meta=info)


# =============================================================================== options, checkpoints
class ICGNNOptions(BaseModel):
    """YAML options of ``name: icgnn``.

    checkpoint: 'shipped' (the packaged model, trained on L = 7, N = 2, K = 5), 'untrained' (seeded by
    ``init_seed``) or a path to a ``dsim train`` checkpoint.  adapt_steps: Adam steps of loss (28) on
    fresh samples of the run's own scenario configuration before inference (batch ``adapt_batch``,
    lr ``adapt_lr``, seed ``adapt_seed``; default: derived from the run seed, distinct from it).
    """

    model_config = ConfigDict(extra="forbid")
    checkpoint: str = "shipped"
    layers: int | None = Field(None, ge=1, description="GNN layers; default: the checkpoint's (2 untrained)")
    init_seed: int = 0
    adapt_steps: int = Field(0, ge=0, description="gradient steps of (28) on the target configuration")
    adapt_batch: int = Field(100, ge=1, description="topologies per adaptation step")
    adapt_lr: float = Field(1e-3, gt=0)
    adapt_seed: int | None = Field(None, description="seed of the adaptation samples; default from the run's")
    bn_batches: int = Field(10, ge=0, description="training: minibatches of the batch-norm calibration before "
                            "each validation (and so of the final checkpoint); 0: none")
    bn_batch: int = Field(100, ge=1, description="training: topologies per calibration minibatch")


def load_params(path: str | Path) -> ICGNNParams:
    """An :class:`ICGNNParams` from a ``dsim train`` checkpoint, an exported file or 'shipped'."""
    from dsim.train import read_checkpoint

    ck = read_checkpoint(path, SHIPPED, "icgnn", "scenarios/train_icgnn.yaml")
    params = ICGNNParams(int(ck["hparams"]["layers"]))
    params.load_state_dict(ck["model"])
    return params


def recalibrate_bn(params: ICGNNParams, sample: Callable[[int, int], tuple[Any, Any]], seeds: list[int],
                   batch: int) -> None:
    """"Precise BN": set every batch-norm layer's running statistics to the plain average of its batch
    statistics over the minibatches ``sample(batch, seed)`` for ``seeds``, at fixed weights (train-mode
    forward passes without gradient; the module's mode is restored).

    Why: during training the running statistics (momentum 0.1) lag behind the weights, which Adam keeps
    moving at lr 1e-3; the update net's first batch norm sees features of small variance, so the lag alone
    cost ~0.7 bit/s/Hz at inference (eval mode) against the same weights with batch statistics.
    """
    from dsim.train import wsr_per_round

    norms = [m for m in params.modules() if isinstance(m, nn.BatchNorm1d)]
    saved, was = [m.momentum for m in norms], params.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    params.train()
    try:
        with torch.no_grad():
            for seed in seeds:
                net, air = sample(batch, seed)
                proto = icgnn_protocol(params, net)
                wsr_per_round(proto, net, air, [proto.rounds])
    finally:
        for m, mom in zip(norms, saved):
            m.momentum = mom
        params.train(was)


def calibration_seeds(seed: int, n: int) -> list[int]:
    """Minibatch seeds of the batch-norm calibration of a training run with seed ``seed``: s * 1_000_003
    - 1000 - i, never a training (s * 1_000_003 + t, t >= 1) or validation (s * 1_000_003 - 1) minibatch."""
    return [seed * 1_000_003 - 1000 - i for i in range(n)]


def export_checkpoint(src: str | Path, dst: str | Path, recalibrate: bool = False, bn_batches: int = 10,
                      bn_batch: int = 100) -> Path:
    """The shipped-model file from a ``dsim train`` checkpoint: model (with its batch-norm statistics), hparams,
    step and meta; no optimizer state or log.  ``recalibrate``: re-estimate the batch-norm statistics as the
    training run's final ``calibrate`` does (same seeds, :func:`calibration_seeds`), for checkpoints written
    without it."""
    from dsim.train import scenario_sampler

    ck = torch.load(src, map_location="cpu", weights_only=True)
    out = {k: ck[k] for k in ("step", "model", "hparams", "meta") if k in ck}
    if recalibrate:
        params = ICGNNParams(int(ck["hparams"]["layers"]))
        params.load_state_dict(ck["model"])
        meta = ck["meta"]
        sample = scenario_sampler(dict(meta["scenario"]), meta.get("precision", "double"))
        recalibrate_bn(params, sample, calibration_seeds(int(meta.get("seed", 0)), bn_batches), bn_batch)
        out["model"] = params.state_dict()
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, dst)
    return dst


def make_params(opts: ICGNNOptions) -> ICGNNParams:
    if opts.checkpoint == "untrained":
        return ICGNNParams(opts.layers or 2, seed=opts.init_seed)
    params = load_params(opts.checkpoint)
    if opts.layers is not None and opts.layers != params.layers:
        raise ValueError(f"icgnn: layers={opts.layers} but checkpoint {opts.checkpoint!r} has {params.layers}")
    return params


# =============================================================================== training interface
def sum_se_loss(wsr: dict[int, Tensor]) -> Tensor:
    """Loss (28): -mean over samples (and loss layers) of the sum-SE [bit/s/Hz]."""
    return -torch.stack([w.mean() for w in wsr.values()]).mean()


@dataclass
class ICGNNLearnable(Learnable):
    """:class:`agents.gcn_wmmse.Learnable` plus the loss (28) (``dsim.train`` uses ``loss`` when set)."""

    loss: Callable[[dict[int, Tensor]], Tensor] | None = None
    calibrate: Callable[[Any, int], None] | None = None


def _learnable_of(params: ICGNNParams, bn_batches: int = 10, bn_batch: int = 100) -> ICGNNLearnable:
    def calibrate(sample, seed: int) -> None:
        recalibrate_bn(params, sample, calibration_seeds(seed, bn_batches), bn_batch)

    return ICGNNLearnable(module=params, protocol=lambda net: icgnn_protocol(params, net),
                          observe=params.observe, hparams={"layers": params.layers}, loss=sum_se_loss,
                          calibrate=calibrate if bn_batches > 0 else None)


def learnable(options: dict[str, Any]) -> ICGNNLearnable:
    """The trainable ICGNN for ``dsim.train`` (options as the YAML entry; default: untrained, 2 layers)."""
    opts = ICGNNOptions(**({"checkpoint": "untrained"} | dict(options)))
    return _learnable_of(make_params(opts), opts.bn_batches, opts.bn_batch)


def adapt(params: ICGNNParams, net, opts: ICGNNOptions) -> dict[str, Any]:
    """``opts.adapt_steps`` Adam steps of (28) on fresh samples of ``net``'s scenario configuration.

    The samples: ``dsim.train.scenario_sampler`` on ``net.info["scenario_config"]`` (set by
    ``dsim.scenarios.build.scenario_from_config``), seed ``adapt_seed`` (default: run seed * 1_000_003 +
    999_983; minibatch t uses adapt_seed * 1_000_003 + t), so never the evaluated topologies.  The steps
    run as in training (``dsim.train.fine_tune``, batch-norm in training mode: batch statistics); then the
    batch-norm running statistics are re-estimated at the adapted weights on the same minibatches
    (:func:`recalibrate_bn`, no further samples).  Like training, this is an offline, central computation
    on simulated samples of the target configuration; the APs then run the adapted model.
    Returns the meta entries adapt_steps, adapt_samples (topologies drawn), adapt_s (wall time, sampling
    included), adapt_seed, adapt_loss_first/last (loss (28) of the first/last minibatch, bit/s/Hz).
    """
    from dsim.train import fine_tune, scenario_sampler

    scn = net.info.get("scenario_config")
    if scn is None:
        raise ValueError("icgnn: adapt_steps needs a drawn scenario (scenario.family ...), not a channel file: "
                         "the adaptation samples fresh topologies of the same configuration")
    seed = opts.adapt_seed if opts.adapt_seed is not None else int(net.info.get("seed", 0)) * 1_000_003 + 999_983
    sample = scenario_sampler(dict(scn), net.info.get("precision", "double"))
    drawn: dict[int, tuple[Any, Any]] = {}

    def sample_once(batch: int, s: int):
        if s not in drawn:
            drawn[s] = sample(batch, s)
        return drawn[s]

    t0 = time.perf_counter()
    params.train()
    params.requires_grad_(True)
    try:
        res = fine_tune(_learnable_of(params, 0), sample_once, opts.adapt_steps, batch=opts.adapt_batch,
                        seed=seed, lr=opts.adapt_lr)
    finally:
        params.requires_grad_(False)
    recalibrate_bn(params, sample_once, list(drawn), opts.adapt_batch)
    params.eval()
    return {"adapt_steps": opts.adapt_steps, "adapt_samples": int(res["samples"]),
            "adapt_s": round(time.perf_counter() - t0, 6), "adapt_seed": seed,
            "adapt_loss_first": res["loss_first"], "adapt_loss_last": res["loss_last"]}


def build(opts: ICGNNOptions, net) -> Protocol:
    """Registry builder: the ICGNN protocol in eval mode, after ``adapt_steps`` adaptation steps if asked."""
    params = make_params(opts)
    params.eval()
    params.requires_grad_(False)
    meta: dict[str, Any] = {"adapt_steps": 0, "adapt_samples": 0, "adapt_s": 0.0}
    if opts.adapt_steps > 0:
        meta |= adapt(params, net, opts)
    params.eval()
    return icgnn_protocol(params, net, meta)


register(AlgorithmSpec("icgnn", ("cellfree",), ICGNNOptions, build,
                       "ICGNN power allocation, eq. (4), (27)-(28); MAX pre-aggregated over fh; "
                       "checkpoint shipped|untrained|PATH, adapt_steps"))
