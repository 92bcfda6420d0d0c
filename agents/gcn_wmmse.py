"""GCN-WMMSE: WMMSE unrolled into L trainable layers (Schynol & Pesavento, GCN-WMMSE paper, Sec. III).

One layer = one communication round with exactly WMMSE's phases and messages (DESIGN §4): the protocol
is :func:`agents.wmmse.wmmse_phases` with two hooks, so the U-step (3a), the MMSE weight (3b), R (4),
V~ (5), the eigendecomposition, phi (7) and the mu sub-steps (9) are WMMSE's own code.

* UE (W-hook), weight-matrix graph filter (12) with non-negative taps a_W (|raw|) and trace normalization:
      W = a_0 I + sum_{g=1}^G a_g W^^g / (tr(W^)/N)^(g-1),   W^ = (3b).
* BS (V-hook), downlink GCN layer (13) with F complex features, per served UE i and stream d:
      P~_id = (R_k + mu_k I)^dagger v~_id a_V1^T + v~_id a_V0^T                    (M x F)
      P_id  = P~_id + P_id^(l-1) D_l   (skip connection, Sec. III-B4; l >= 2)
      v^_id = modReLU(P_id, sqrt(P_k/|I_k|)/b_S 1 b_l^T) c_l                      (13), (14)
  then the power projection (15) V_i = sqrt(P_k) V^_i / sqrt(max(sum_{I_k} ||V^_j||_F^2, P_k)).
* mu_k: P = 8 rational sub-steps (9) from mu^(l,0) = 1e-12 in the forward pass; backward by the
  implicit-function gradient of Proposition 1, eq. (17)-(18) (:class:`ImplicitMu`).
* Initialization V^(0): normalized MRC (``agents.wmmse.mrc_init``).

Trainable parameters (complex ones counted once, as the paper does): L(4F + G + 1) + (L-1)F^2
(229 for L=7, G=2, F=4).  b_S is a buffer: the running mean of sqrt(P_k/|I_k|) over the training
scenarios (updated by :meth:`GCNWMMSEParams.observe`).  Rates in nat/Hz, powers in W.

The shipped model ``agents/models/gcn_wmmse_L7.pt`` is produced by
``python -m dsim train scenarios/train_gcn_wmmse.yaml`` (see that file's header).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from agents.registry import AlgorithmSpec, register
from agents.wmmse import SERVE, _fix_fields, edge_channels, mrc_init, v_step, wmmse_phases
from dsim.protocol import AgentBlock, Output, Protocol

Tensor = torch.Tensor

MODELS_DIR = Path(__file__).resolve().parent / "models"
SHIPPED = MODELS_DIR / "gcn_wmmse_L7.pt"


# =============================================================================== mu-block gradient
class ImplicitMu(torch.autograd.Function):
    """mu_k = f(phi_k, lam_k), the root of (6)-(7), with the implicit-function gradient of Prop. 1.

    Forward returns the given iterate ``mu`` (the P-th sub-step of (9), computed without a graph).
    Backward, with d_m = lam_m + mu and S = sum_m phi_m / d_m^3 (eq. (17)):
        d mu / d phi_i = d_i^-2 / (2 S),    d mu / d lam_i = -phi_i d_i^-3 / S,
    and zero where mu = 0 (eq. (18); the undefined boundary point is set to 0 as in the paper).
    phi, lam: (..., M) real; mu: (...,) real.
    """

    @staticmethod
    def forward(ctx: Any, phi: Tensor, lam: Tensor, mu: Tensor) -> Tensor:
        ctx.save_for_backward(phi, lam, mu)
        return mu.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        phi, lam, mu = ctx.saved_tensors
        pos = mu > 0
        d = lam.clamp_min(0.0) + torch.where(pos, mu, torch.ones_like(mu)).unsqueeze(-1)
        S = (phi / d**3).sum(-1, keepdim=True)
        S = torch.where(S > 0, S, torch.ones_like(S))
        g = torch.where(pos, grad, torch.zeros_like(grad)).unsqueeze(-1)
        g_phi = g / (2.0 * S * d**2)
        g_lam = -g * phi / (S * d**3)
        need = ctx.needs_input_grad
        return (g_phi if need[0] else None), (g_lam if need[1] else None), None


def mu_implicit(phi: Tensor, lam: Tensor, mu: Tensor) -> Tensor:
    """``mu`` (value, detached) carrying the Proposition-1 gradient w.r.t. ``phi`` and ``lam``."""
    return ImplicitMu.apply(phi, lam, mu.detach())


# =============================================================================== layer functions
def weight_filter(What: Tensor, taps: Tensor) -> Tensor:
    """(12) W = a_0 I + sum_{g>=1} a_g What^g / (tr(What)/N)^(g-1).

    What: (..., N, N) Hermitian PD, taps: (G+1,) real >= 0 -> (..., N, N).
    """
    N = What.shape[-1]
    eye = torch.eye(N, dtype=What.dtype)
    norm = (What.diagonal(dim1=-2, dim2=-1).real.sum(-1) / N)[..., None, None].to(What.dtype)
    t = taps.to(What.dtype)
    out = t[0] * eye + t[1] * What
    power = What
    for g in range(2, taps.numel()):
        power = power @ What / norm
        out = out + t[g] * power
    return 0.5 * (out + out.mH)


def modrelu(x: Tensor, bias: Tensor) -> Tensor:
    """(14) modReLU(x, b) = (|x| + b) x/|x| where |x| + b > 0, else 0.  Complex x, real b (broadcast)."""
    mag = x.abs()
    return torch.relu(mag + bias).to(x.dtype) * torch.sgn(x)


def power_projection(Vh: Tensor, power: Tensor, sv) -> Tensor:
    """(15) V_i = sqrt(P_k) V^_i / sqrt(max(sum_{j in I_k} ||V^_j||_F^2, P_k)).

    Vh (B, S, M, N) per served UE, power (B, n_bs) W -> (B, S, M, N).
    """
    used = sv.sum_dst((Vh.abs() ** 2).sum(dim=(-1, -2)))
    factor = torch.sqrt(power / torch.maximum(used, power))
    return sv.gather_dst(factor)[..., None, None].to(Vh.dtype) * Vh


# =============================================================================== parameters
class GCNWMMSEParams(nn.Module):
    """Trainable set Gamma of an L-layer GCN-WMMSE (Sec. III-B5) plus the buffer b_S (Sec. III-C).

    a_W (L, G+1) real (used as |a_W|, non-negative), a_V1, a_V0, c (L, F) complex, b (L, F) real,
    D (L-1, F, F) complex (skip connections of layers 2..L).  Initialization as the paper / its code:
    complex taps CN(0, 1/(F+1)), D ~ CN(0, 1/(2F)), biases 0, weight taps 1/(G+1).
    """

    def __init__(self, layers: int = 7, degree: int = 2, features: int = 4, seed: int = 0) -> None:
        super().__init__()
        self.layers, self.degree, self.features = layers, degree, features
        g = torch.Generator()
        g.manual_seed(seed)
        L, G, F = layers, degree, features

        def cn(*shape: int, var: float) -> Tensor:
            re = torch.randn(*shape, generator=g, dtype=torch.float64)
            im = torch.randn(*shape, generator=g, dtype=torch.float64)
            return torch.complex(re, im) * (var / 2) ** 0.5

        self.a_w = nn.Parameter(torch.full((L, G + 1), 1.0 / (G + 1), dtype=torch.float64))
        self.a_v1 = nn.Parameter(cn(L, F, var=1.0 / (F + 1)))
        self.a_v0 = nn.Parameter(cn(L, F, var=1.0 / (F + 1)))
        self.b = nn.Parameter(torch.zeros(L, F, dtype=torch.float64))
        self.c = nn.Parameter(cn(L, F, var=1.0 / (F + 1)))
        self.d = nn.Parameter(cn(max(L - 1, 0), F, F, var=1.0 / (2 * F)))
        self.register_buffer("bias_scale_sum", torch.zeros((), dtype=torch.float64))
        self.register_buffer("bias_scale_count", torch.zeros((), dtype=torch.float64))

    @property
    def b_s(self) -> Tensor:
        """b_S: running mean of sqrt(P_k/|I_k|) (W^1/2) over the training scenarios seen; 1 before any."""
        if float(self.bias_scale_count) == 0.0:
            return torch.ones((), dtype=torch.float64)
        return self.bias_scale_sum / self.bias_scale_count

    @torch.no_grad()
    def observe(self, net) -> None:
        """Add a training batch to the running mean b_S over (realization, BS) pairs of sqrt(P_k/|I_k|)."""
        self.bias_scale_sum += bias_scale(net).sum()
        self.bias_scale_count += float(net.batch * net.counts["bs"])

    def n_trainable(self) -> int:
        """Trainable parameters, a complex one counted once (the paper's count L(4F+G+1)+(L-1)F^2)."""
        return sum(p.numel() for p in self.parameters())

    def reduce_to_wmmse(self) -> GCNWMMSEParams:
        """Set the taps that make every layer a plain WMMSE iteration: W = W^, V = (R+mu I)^dagger V~."""
        with torch.no_grad():
            self.a_w.zero_()
            self.a_w[:, 1] = 1.0
            for p in (self.a_v1, self.a_v0, self.c, self.d):
                p.zero_()
            self.a_v1[:, 0] = 1.0
            self.c[:, 0] = 1.0
            self.b.zero_()
        return self


def bias_scale(net) -> Tensor:
    """sqrt(P_k / |I_k|) per realization and BS (B, K), W^1/2."""
    serve = net.edges[SERVE]
    n_served = torch.zeros(net.counts["bs"], dtype=torch.float64).index_add_(
        0, serve.dst, torch.ones(serve.size, dtype=torch.float64))
    return torch.sqrt(net.local["bs"]["power"].to(torch.float64) / n_served.clamp_min(1.0))


# =============================================================================== protocol
def _hooks(params: GCNWMMSEParams) -> tuple[Callable, Callable]:
    def layer_of(block: AgentBlock) -> int:
        layer = int(block.state.get("layer", 0)) + 1
        if layer > params.layers:
            raise RuntimeError(f"gcn_wmmse has {params.layers} layers; round {layer} asked for")
        block.state["layer"] = layer
        return layer

    def weight_hook(block: AgentBlock, What: Tensor, U: Tensor) -> Tensor:
        ell = layer_of(block)
        return weight_filter(What, params.a_w[ell - 1].abs())

    def v_hook(block: AgentBlock, pieces: dict[str, Tensor]) -> Tensor:
        ell = layer_of(block)
        cdt = block.info["dtype"]
        rdt = block.info["real_dtype"]
        sv = block.edges[SERVE]
        mu = mu_implicit(pieces["phi"], pieces["lam"], pieces["mu"])
        mu_s = mu.index_select(1, sv.dst_local)
        Vt = pieces["Vt"]                                              # (B, S, M, N)
        X = v_step(pieces["D_s"], pieces["proj"], pieces["lam_s"], mu_s)  # (R + mu I)^dagger V~
        a1, a0 = params.a_v1[ell - 1].to(cdt), params.a_v0[ell - 1].to(cdt)
        P = X.unsqueeze(-1) * a1 + Vt.unsqueeze(-1) * a0               # (B, S, M, N, F)
        if ell > 1:
            P = P + block.state["P"] @ params.d[ell - 2].to(cdt)
        block.state["P"] = P
        power = block.local["power"]
        n_served = sv.sum_dst(torch.ones(Vt.shape[:2], dtype=power.dtype))
        scale = sv.gather_dst(torch.sqrt(power / n_served.clamp_min(1.0))) / params.b_s.to(rdt)  # (B, S)
        bias = scale[..., None, None, None] * params.b[ell - 1].to(rdt)
        Vh = modrelu(P, bias) @ params.c[ell - 1].to(cdt)              # (B, S, M, N)
        return power_projection(Vh, power, sv)

    return weight_hook, v_hook


def gcn_wmmse_protocol(params: GCNWMMSEParams, net, mu_steps: int | None = 8, mu0: float = 1e-12) -> Protocol:
    """The L-round GCN-WMMSE protocol using ``params`` (autograd flows into them on the local engine).

    ``mu_steps=None`` solves the mu-step to convergence (as ``wmmse``) instead of P fixed sub-steps.
    """
    weight_hook, v_hook = _hooks(params)
    phases = _fix_fields(wmmse_phases(weight_hook=weight_hook, v_hook=v_hook, mu_steps=mu_steps,
                                      mu0=mu0 if mu_steps is not None else None),
                         int(net.info["ue_antennas"]))

    def init_bs(block: AgentBlock) -> None:
        sv = block.edges[SERVE]
        block.state["V"] = mrc_init(edge_channels(block.local["H"], sv), block.local["power"], sv)
        block.state["layer"] = 0

    def init_ue(block: AgentBlock) -> None:
        block.state["layer"] = 0

    return Protocol(name="gcn_wmmse", roles=("bs", "ue"), init={"bs": init_bs, "ue": init_ue}, phases=phases,
                    rounds=params.layers, output=Output("bs", "V", SERVE), unit="nat/Hz",
                    meta={"layers": params.layers, "trainable_parameters": params.n_trainable()})


# =============================================================================== options, checkpoints
class GCNWMMSEOptions(BaseModel):
    """YAML options of ``name: gcn_wmmse``.

    checkpoint: 'shipped' (the packaged model, trained on the Tab. II base scenario), 'untrained'
    (the paper's initialization, seeded by ``init_seed``) or a path to a ``dsim train`` checkpoint.
    layers/degree/features (L, G, F of Tab. I) must match the checkpoint's when one is loaded.
    """

    model_config = ConfigDict(extra="forbid")
    checkpoint: str = "shipped"
    layers: int | None = Field(None, ge=1, description="L; default: the checkpoint's (7 untrained)")
    degree: int | None = Field(None, ge=1, description="G; default: the checkpoint's (2 untrained)")
    features: int | None = Field(None, ge=1, description="F; default: the checkpoint's (4 untrained)")
    mu_steps: int | None = Field(8, ge=1, description="P rational sub-steps (9); null: to convergence")
    mu0: float = Field(1e-12, ge=0.0, description="mu^(l,0)")
    init_seed: int = 0


def load_params(path: str | Path) -> GCNWMMSEParams:
    """A :class:`GCNWMMSEParams` from a ``dsim train`` checkpoint, a bare {hparams, model} file or 'shipped'."""
    from dsim.train import read_checkpoint

    ck = read_checkpoint(path, SHIPPED, "gcn_wmmse", "scenarios/train_gcn_wmmse.yaml")
    hp = ck["hparams"]
    params = GCNWMMSEParams(hp["layers"], hp["degree"], hp["features"])
    params.load_state_dict(ck["model"])
    return params


def make_params(opts: GCNWMMSEOptions) -> GCNWMMSEParams:
    """Parameters per the options: untrained (seeded) or loaded, with hyper-parameter checks."""
    want = {"layers": opts.layers, "degree": opts.degree, "features": opts.features}
    if opts.checkpoint == "untrained":
        hp = {"layers": 7, "degree": 2, "features": 4} | {k: v for k, v in want.items() if v is not None}
        return GCNWMMSEParams(hp["layers"], hp["degree"], hp["features"], seed=opts.init_seed)
    params = load_params(opts.checkpoint)
    for k, v in want.items():
        if v is not None and getattr(params, k) != v:
            raise ValueError(f"gcn_wmmse: {k}={v} but checkpoint {opts.checkpoint!r} has "
                             f"{k}={getattr(params, k)}")
    return params


def build(opts: GCNWMMSEOptions, net) -> Protocol:
    """Registry builder: the GCN-WMMSE protocol with the options' (inference-only) parameters."""
    params = make_params(opts)
    params.requires_grad_(False)
    return gcn_wmmse_protocol(params, net, opts.mu_steps, opts.mu0)


# =============================================================================== training interface
@dataclass
class Learnable:
    """What ``dsim.train`` needs of a learnable protocol.

    module:   the trainable parameters (and buffers such as running statistics).
    protocol: net -> Protocol using ``module``'s current parameters (differentiable on the local engine).
    observe:  net -> None, update running statistics from a training batch (called before its forward).
    hparams:  what is needed to rebuild ``module`` from a checkpoint.
    """

    module: nn.Module
    protocol: Callable[[Any], Protocol]
    observe: Callable[[Any], None]
    hparams: dict[str, Any]


def learnable(options: dict[str, Any]) -> Learnable:
    """The trainable GCN-WMMSE for ``dsim.train`` (options as the YAML entry; default: untrained Tab. I)."""
    opts = GCNWMMSEOptions(**({"checkpoint": "untrained"} | dict(options)))
    params = make_params(opts)
    hp = {"layers": params.layers, "degree": params.degree, "features": params.features}

    def protocol(net) -> Protocol:
        return gcn_wmmse_protocol(params, net, opts.mu_steps, opts.mu0)

    return Learnable(module=params, protocol=protocol, observe=params.observe, hparams=hp)


register(AlgorithmSpec("gcn_wmmse", ("multicell",), GCNWMMSEOptions, build,
                       "GCN-WMMSE unrolled WMMSE, eq. (12)-(18); checkpoint shipped|untrained|PATH"))
