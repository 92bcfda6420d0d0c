"""GCN-WMMSE: WMMSE unrolled into L trainable layers (Schynol & Pesavento, GCN-WMMSE paper, Sec. III).

One layer = one communication round with exactly WMMSE's phases and messages (DESIGN §4): the protocol
is :func:`agents.wmmse.wmmse_phases` with two hooks, so the U-step (3a), the MMSE weight (3b), R (4),
V~ (5), the eigendecomposition, phi (7) and the mu sub-steps (9) are WMMSE's own code.

* UE (W-hook), weight-matrix graph filter (12) with non-negative taps a_W (|raw|) and trace normalization:
      W = a_0 I + sum_{g=1}^G a_g W^^g / (tr(W^)/N)^(g-1),   W^ = (3b).
* BS (V-hook), downlink GCN layer (13) with F complex features, per served UE i and stream d:
      P~_id = (R_k + mu_k I)^dagger v~_id a_V1^T + v~_id a_V0^T                    (M x F)
      (the second term, "diagonal loading", is hyper-parameter ``diag_loading``; false = Tab. VI's ablation)
      P_id  = P~_id + P_id^(l-1) D_l   (skip connection, Sec. III-B4; l >= 2)
      v^_id = modReLU(P_id, sqrt(P_k/|I_k|)/b_S 1 b_l^T) c_l                      (13), (14)
  then the power projection (15) V_i = sqrt(P_k) V^_i / sqrt(max(sum_{I_k} ||V^_j||_F^2, P_k)).
* mu_k: P = 8 rational sub-steps (9) from mu^(l,0) = 1e-12 in the forward pass; backward by the
  implicit-function gradient of Proposition 1, eq. (17)-(18) (:class:`ImplicitMu`).
* Initialization V^(0): MRC, V_i = c_k H_ik^H with one factor per BS using exactly P_k (the paper's and
  its authors' convention, ``agents.wmmse.mrc_init``); hyper-parameter ``init: mrc_equal`` gives each UE
  P_k/|I_k| instead (``agents.wmmse.mrc_equal_init``, models trained before the convention was fixed).

Trainable parameters (complex ones counted once, as the paper does): L(4F + G + 1) + (L-1)F^2
(229 for L=7, G=2, F=4); L(3F + G + 1) + (L-1)F^2 without diagonal loading (201).  b_S is a buffer: the
running mean of sqrt(P_k/|I_k|) over the training scenarios (updated by :meth:`GCNWMMSEParams.observe`).
Rates in nat/Hz, powers in W.

Learned-protocol machinery (options checkpoint shipped|untrained|PATH, checkpoints, training with the
loss (16) and the Tab. I defaults :data:`TRAIN_DEFAULTS`) is :mod:`dsim.learn`'s, declared by :data:`MODEL`.
The first PT model (pivot-trained on the Tab. II base scenario), ``agents/models/gcn_wmmse_L7_v1.pt``
(``checkpoint: shipped:L7v1``), is produced by ``python -m dsim train scenarios/train_gcn_wmmse.yaml`` and its
later stages (see that file's header); ``agents/models/gcn_wmmse_L7_dt.pt`` (DT, Sec. IV-B.5: that PT model
fine-tuned on random scenario configurations, ``checkpoint: shipped-dt``) by ``scenarios/train_gcn_wmmse_dt.yaml``.
The shipped L = 7 PT model ``agents/models/gcn_wmmse_L7.pt`` (``checkpoint: shipped``) has no diagonal loading
(Tab. VI's ablation) and is trained from scratch with Tab. I's schedule: ``scenarios/train_gcn_wmmse_L7_nodl.yaml``;
``agents/models/gcn_wmmse_L6.pt`` (``checkpoint: shipped:L6``, Tab. VIII's row L = 6) is trained the same way with
L = 6 (``scenarios/train_gcn_wmmse_L6_nodl.yaml``); ``gcn_wmmse_L8.pt`` (``shipped:L8``) is ``shipped`` warm-started
into 8 layers (:meth:`GCNWMMSEParams.resized`) and fine-tuned (``scenarios/train_gcn_wmmse_L8_nodl.yaml``).
The models with diagonal loading shipped before them: ``gcn_wmmse_L6_dl.pt`` / ``gcn_wmmse_L8_dl.pt``
(``shipped:L6dl`` / ``shipped:L8dl``: the first PT model warm-started into 6 / 8 layers and fine-tuned,
``scenarios/train_gcn_wmmse_L6.yaml`` / ``_L8.yaml``) and ``gcn_wmmse_L7_dl.pt`` (``shipped:L7dl``: ``shipped:L8dl``
cut back to its first 7 layers and fine-tuned, ``scenarios/train_gcn_wmmse_L7_ft*.yaml``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from agents.wmmse import (
    SERVE,
    _fix_fields,
    edge_channels,
    mrc_equal_init,
    mrc_init,
    power_share,
    scale_to_budget,
    served_counts,
    v_step,
    wmmse_phases,
)
from dsim.engine.host import edge_view
from dsim.learn import LearnableSpec, LearnedModule, LearnedOptions, current_layer
from dsim.network import Network
from dsim.protocol import AgentBlock, Output, Protocol
from dsim.registry import AlgorithmSpec, OptionError, register_algorithm

Tensor = torch.Tensor

#: the folder of the shipped checkpoints
MODELS = Path(__file__).resolve().parent / "models"
SHIPPED = MODELS / "gcn_wmmse_L7.pt"
#: the DT model (Sec. IV-B.5: trained on random scenario configurations), ``checkpoint: shipped:dt``
SHIPPED_DT = MODELS / "gcn_wmmse_L7_dt.pt"
#: PT models with L = 6 and L = 8 layers (Tab. VIII's other rows), ``checkpoint: shipped:L6`` / ``shipped:L8``, no
#: diagonal loading: L = 6 trained from scratch, L = 8 the shipped L = 7 model warm-started into 8 layers
SHIPPED_L6 = MODELS / "gcn_wmmse_L6.pt"
SHIPPED_L8 = MODELS / "gcn_wmmse_L8.pt"
#: the L = 6 / 8 models with diagonal loading shipped before them (from shipped:L7v1), ``checkpoint: shipped:L6dl`` /
#: ``shipped:L8dl``
SHIPPED_L6DL = MODELS / "gcn_wmmse_L6_dl.pt"
SHIPPED_L8DL = MODELS / "gcn_wmmse_L8_dl.pt"
#: the first shipped PT model with L = 7 (stages 1-4, scenarios/train_gcn_wmmse*.yaml), ``checkpoint: shipped:L7v1``:
#: what the DT model and the L = 6 / 8 models with diagonal loading were fine-tuned from
SHIPPED_L7V1 = MODELS / "gcn_wmmse_L7_v1.pt"
#: the L = 7 PT model with diagonal loading that was ``shipped`` before the one without it (the L = 8 model cut back
#: to 7 layers and fine-tuned, scenarios/train_gcn_wmmse_L7_ft*.yaml), ``checkpoint: shipped:L7dl``
SHIPPED_L7DL = MODELS / "gcn_wmmse_L7_dl.pt"
#: shipped checkpoints other than 'shipped' (the PT model): ``checkpoint: shipped:<name>``
SHIPPED_MODELS = {"dt": SHIPPED_DT, "L6": SHIPPED_L6, "L8": SHIPPED_L8, "L7v1": SHIPPED_L7V1, "L7dl": SHIPPED_L7DL,
                  "L6dl": SHIPPED_L6DL, "L8dl": SHIPPED_L8DL}
#: the DT model's first name, kept: ``checkpoint: shipped-dt`` is ``shipped:dt``
SHIPPED_ALIASES = {"shipped-dt": "dt"}
#: training defaults of the paper's Tab. I (10 000 steps, lr 0.01 divided by 10 every 2 500, AdamW)
#: first beamformers V^(0) by name (hyper-parameter ``init``)
INITS = {"mrc": mrc_init, "mrc_equal": mrc_equal_init}

TRAIN_DEFAULTS = {"steps": 10_000, "batch": 100, "lr": 0.01, "lr_decay_every": 2500, "lr_decay": 0.1,
                  "betas": (0.9, 0.99), "weight_decay": 1e-3, "clip": 1.0}


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
    eye = torch.eye(N, dtype=What.dtype, device=What.device)
    norm = (What.diagonal(dim1=-2, dim2=-1).real.sum(-1) / N)[..., None, None].to(What.dtype)
    t = taps.to(What.dtype)
    out = t[0] * eye + t[1] * What
    power = What
    for g in range(2, taps.numel()):
        power = power @ What / norm
        out = out + t[g] * power
    return 0.5 * (out + out.mH)


def nonneg(a: Tensor) -> Tensor:
    """|a| elementwise, the non-negative weight taps of (12), with gradient +1 at a = 0 (``abs``'s is 0, which
    would freeze a tap that starts at 0, e.g. one added by :meth:`GCNWMMSEParams.resized`)."""
    return torch.where(a >= 0, a, -a)


def modrelu(x: Tensor, bias: Tensor) -> Tensor:
    """(14) modReLU(x, b) = (|x| + b) x/|x| where |x| + b > 0, else 0.  Complex x, real b (broadcast)."""
    mag = x.abs()
    return torch.relu(mag + bias).to(x.dtype) * torch.sgn(x)


# =============================================================================== parameters
class GCNWMMSEParams(LearnedModule):
    """Trainable set Gamma of an L-layer GCN-WMMSE (Sec. III-B5) plus the buffer b_S (Sec. III-C).

    a_W (L, G+1) real (used as |a_W|, non-negative), a_V1, a_V0, c (L, F) complex, b (L, F) real,
    D (L-1, F, F) complex (skip connections of layers 2..L); a_V0 is None when ``diag_loading`` is False.
    Initialization as the paper / its code: complex taps CN(0, 1/(F+1)), D ~ CN(0, 1/(2F)), biases 0, weight
    taps 1/(G+1).  Untrained defaults: L = 7, G = 2, F = 4 (Tab. I), with diagonal loading.
    """

    hparam_names: ClassVar[tuple[str, ...]] = ("layers", "degree", "features", "init", "diag_loading")
    free_hparams: ClassVar[tuple[str, ...]] = ("init",)
    resizable_hparams: ClassVar[tuple[str, ...]] = ("layers", "degree", "features", "diag_loading")

    def __init__(self, layers: int = 7, degree: int = 2, features: int = 4, init: str = "mrc",
                 diag_loading: bool = True, seed: int = 0) -> None:
        super().__init__()
        if init not in INITS:
            raise ValueError(f"gcn_wmmse: init={init!r}; allowed: {', '.join(INITS)}")
        self.layers, self.degree, self.features, self.init = layers, degree, features, init
        self.diag_loading = bool(diag_loading)
        g = torch.Generator(device="cpu")
        g.manual_seed(seed)
        L, G, F = layers, degree, features
        cpu = torch.device("cpu")  # built on the CPU (the protocol moves it where it runs: Protocol.to)

        def cn(*shape: int, var: float) -> Tensor:
            re = torch.randn(*shape, generator=g, dtype=torch.float64, device=cpu)
            im = torch.randn(*shape, generator=g, dtype=torch.float64, device=cpu)
            return torch.complex(re, im) * (var / 2) ** 0.5

        self.a_w = nn.Parameter(torch.full((L, G + 1), 1.0 / (G + 1), dtype=torch.float64, device=cpu))
        self.a_v1 = nn.Parameter(cn(L, F, var=1.0 / (F + 1)))
        a_v0 = cn(L, F, var=1.0 / (F + 1))  # drawn either way: the other draws do not depend on diag_loading
        if self.diag_loading:
            self.a_v0 = nn.Parameter(a_v0)
        else:  # Tab. VI's "w/o diagonal loading": no v~ a_V0^T term in (13)
            self.register_parameter("a_v0", None)
        self.b = nn.Parameter(torch.zeros(L, F, dtype=torch.float64, device=cpu))
        self.c = nn.Parameter(cn(L, F, var=1.0 / (F + 1)))
        self.d = nn.Parameter(cn(max(L - 1, 0), F, F, var=1.0 / (2 * F)))
        self.register_buffer("bias_scale_sum", torch.zeros((), dtype=torch.float64, device=cpu))
        self.register_buffer("bias_scale_count", torch.zeros((), dtype=torch.float64, device=cpu))

    def resized(self, layers: int | None = None, degree: int | None = None, features: int | None = None,
                diag_loading: bool | None = None) -> GCNWMMSEParams:
        """A copy with L' = ``layers``, G' = ``degree`` >= G, F' = ``features`` >= F and diagonal loading on / off
        warm-started from this model.

        Layers: layer l' <= min(L, L') has layer l''s parameters (a_W, a_V1, a_V0, b, c and, for l' >= 2, the
        skip matrix D); layers past L repeat layer L's (how the L = 6 and L = 8 models were started).
        Degree and features grow so that the function is exactly unchanged (any L' <= L model computes the
        source's first L' rounds bit for bit up to rounding):

        * G' > G: weight filter (12) with taps a_g = 0 for g > G, so W is the same; the taps enter as |a|
          (:func:`nonneg`, whose gradient at 0 is 1, so a zero tap still learns).
        * F' > F: GCN layer (13) with extra feature columns f > F whose read-out c_f = 0 and bias b_f = 0, and
          D_l[f, f'] = 0 for f > F >= f' (new features never feed the old ones' skip, Sec. III-B4); their
          a_V1, a_V0 and D_l[:, f > F] are the untrained draws (seed 0), so the new features carry a signal and
          c_f has a gradient (all-zero new features would be a stationary point).

        * ``diag_loading`` False on a model that has it: the term v~ a_V0^T of (13) is dropped and every other
          parameter kept (a warm start that changes the function: Tab. VI's ablation on a trained model); True on
          one without it: the term comes back with a_V0 = 0 (same function).

        The buffer b_S is kept.  G' < G or F' < F (not function-preserving) is an :class:`OptionError`.
        """
        L = self.layers if layers is None else int(layers)
        G = self.degree if degree is None else int(degree)
        F = self.features if features is None else int(features)
        if L < 1:
            raise OptionError("layers", f"{L}; allowed: >= 1")
        for key, want, have in (("degree", G, self.degree), ("features", F, self.features)):
            if want < have:
                raise OptionError(key, f"{want} but the checkpoint has {key}={have}; allowed: >= {have} (a larger "
                                       f"{key} is grown from it with the same function) or leave {key} out")
        g0, f0 = self.degree + 1, self.features
        dl = self.diag_loading if diag_loading is None else bool(diag_loading)
        new = GCNWMMSEParams(L, G, F, self.init, dl)
        src = torch.arange(L).clamp_max(self.layers - 1)                # layer l' <- layer min(l', L)
        src_d = torch.arange(max(L - 1, 0)).clamp_max(max(self.layers - 2, 0))
        with torch.no_grad():
            new.a_w.zero_()
            new.a_w[:, :g0].copy_(self.a_w.index_select(0, src.to(self.a_w.device)))
            for name in ("b", "c"):
                getattr(new, name).zero_()
            if new.a_v0 is not None and self.a_v0 is None:
                new.a_v0.zero_()
            for name in ("a_v1", "a_v0", "b", "c"):
                if getattr(new, name) is not None and getattr(self, name) is not None:
                    getattr(new, name)[:, :f0].copy_(getattr(self, name).index_select(0, src.to(self.a_w.device)))
            if L > 1 and self.layers > 1:
                new.d[:, f0:, :f0] = 0.0
                new.d[:, :f0, :f0].copy_(self.d.index_select(0, src_d.to(self.d.device)))
            elif L > 1:  # a one-layer source has no skip matrix: zero skips (plain layers)
                new.d.zero_()
            new.bias_scale_sum.copy_(self.bias_scale_sum)
            new.bias_scale_count.copy_(self.bias_scale_count)
        return new

    @property
    def b_s(self) -> Tensor:
        """b_S: running mean of sqrt(P_k/|I_k|) (W^1/2) over the training scenarios seen; 1 before any."""
        if float(self.bias_scale_count) == 0.0:
            return torch.ones_like(self.bias_scale_sum)
        return self.bias_scale_sum / self.bias_scale_count

    @torch.no_grad()
    def observe(self, net: Network) -> None:
        """Add a training batch to the running mean b_S over (realization, BS) pairs of sqrt(P_k/|I_k|)."""
        self.bias_scale_sum += bias_scale(net).sum()
        self.bias_scale_count += float(net.batch * net.counts["bs"])

    def reduce_to_wmmse(self) -> GCNWMMSEParams:
        """Set the taps that make every layer a plain WMMSE iteration: W = W^, V = (R+mu I)^dagger V~."""
        with torch.no_grad():
            self.a_w.zero_()
            self.a_w[:, 1] = 1.0
            for p in (self.a_v1, self.a_v0, self.c, self.d):
                if p is not None:
                    p.zero_()
            self.a_v1[:, 0] = 1.0
            self.c[:, 0] = 1.0
            self.b.zero_()
        return self


def bias_scale(net: Network) -> Tensor:
    """sqrt(P_k / |I_k|) per realization and BS (B, K), W^1/2 (float64)."""
    sv = edge_view(net, SERVE, None, torch.arange(net.counts["bs"], device=net.device))
    return power_share(net.local["bs"]["power"].to(torch.float64), served_counts(sv))


# =============================================================================== protocol
def _hooks(params: GCNWMMSEParams) -> tuple[Callable, Callable]:
    def weight_hook(block: AgentBlock, What: Tensor, U: Tensor) -> Tensor:
        ell = current_layer(block, params.layers, "gcn_wmmse")
        return weight_filter(What, nonneg(params.a_w[ell - 1]))

    def v_hook(block: AgentBlock, pieces: dict[str, Tensor]) -> Tensor:
        ell = current_layer(block, params.layers, "gcn_wmmse")
        cdt = block.info["dtype"]
        rdt = block.info["real_dtype"]
        sv = block.edges[SERVE]
        mu = mu_implicit(pieces["phi"], pieces["lam"], pieces["mu"])
        mu_s = mu.index_select(1, sv.dst_local)
        Vt = pieces["Vt"]                                              # (B, S, M, N)
        X = v_step(pieces["D_s"], pieces["proj"], pieces["lam_s"], mu_s)  # (R + mu I)^dagger V~
        P = X.unsqueeze(-1) * params.a_v1[ell - 1].to(cdt)            # (B, S, M, N, F)
        if params.a_v0 is not None:                                     # diagonal loading
            P = P + Vt.unsqueeze(-1) * params.a_v0[ell - 1].to(cdt)
        if ell > 1:
            P = P + block.state["P"] @ params.d[ell - 2].to(cdt)
        block.state["P"] = P
        power = block.local["power"]
        scale = sv.gather_dst(power_share(power, served_counts(sv, power.dtype))) / params.b_s.to(rdt)  # (B, S)
        bias = scale[..., None, None, None] * params.b[ell - 1].to(rdt)
        Vh = modrelu(P, bias) @ params.c[ell - 1].to(cdt)              # (B, S, M, N)
        return scale_to_budget(Vh, power, sv, cap=True)                # (15)

    return weight_hook, v_hook


def gcn_wmmse_protocol(params: GCNWMMSEParams, net, mu_steps: int | None = 8, mu0: float = 1e-12) -> Protocol:
    """The L-round GCN-WMMSE protocol using ``params`` (autograd flows into them on the local engine).

    ``mu_steps=None`` solves the mu-step to convergence (as ``wmmse``) instead of P fixed sub-steps.
    """
    weight_hook, v_hook = _hooks(params)
    phases = _fix_fields(wmmse_phases(weight_hook=weight_hook, v_hook=v_hook, mu_steps=mu_steps,
                                      mu0=mu0 if mu_steps is not None else None),
                         int(net.info["ue_antennas"]))

    first = INITS[params.init]

    def init_bs(block: AgentBlock) -> None:
        sv = block.edges[SERVE]
        block.state["V"] = first(edge_channels(block.local["H"], sv), block.local["power"], sv)

    return Protocol(name="gcn_wmmse", roles=("bs", "ue"), init={"bs": init_bs}, phases=phases,
                    rounds=params.layers, output=Output("bs", "V", SERVE), unit="nat/Hz",
                    meta={"layers": params.layers, "trainable_parameters": params.n_trainable()}, module=params)


# =============================================================================== options, declaration
class GCNWMMSEOptions(LearnedOptions):
    """YAML options of ``name: gcn_wmmse`` (checkpoint, init_seed: :class:`dsim.learn.LearnedOptions`;
    'shipped' is the PT model trained on the Tab. II base scenario, 'shipped-dt' the DT model trained on
    random scenario configurations, Sec. IV-B.5).

    layers/degree/features (L, G, F of Tab. I) must match the checkpoint's when one is loaded for inference;
    in ``train.options`` (``dsim train``) ``layers`` may differ: the checkpoint's model is then warm-started
    into L layers (:meth:`GCNWMMSEParams.resized`: its first L layers, or all of them and copies of its
    last), as the L = 6 and L = 8 models were from the L = 7 one; a larger ``degree`` or ``features`` grows it
    with exactly the same function (zero extra taps of (12), zero read-out of the extra features of (13)).
    """

    layers: int | None = Field(None, ge=1, description="L; default: the checkpoint's (7 untrained); in dsim "
                               "train's options another L warm-starts from the checkpoint (its first L layers; "
                               "extra ones copy its last)")
    degree: int | None = Field(None, ge=1, description="G; default: the checkpoint's (2 untrained); in dsim "
                               "train's options a larger G grows the checkpoint (zero extra taps, same function)")
    features: int | None = Field(None, ge=1, description="F; default: the checkpoint's (4 untrained); in dsim "
                                 "train's options a larger F grows the checkpoint (zero read-out, same function)")
    init: Literal["mrc", "mrc_equal"] | None = Field(
        None, description="V^(0): mrc (the paper's, DESIGN §7) | mrc_equal; default: the checkpoint's (mrc untrained)")
    diag_loading: bool | None = Field(
        None, description="the diagonal-loading term v~ a_V0^T of (13) (Tab. VI); default: the checkpoint's (true "
                          "untrained); in dsim train's options false drops it from a checkpoint that has it")
    mu_steps: int | None = Field(8, ge=1, description="P rational sub-steps (9); null: to convergence")
    mu0: float = Field(1e-12, ge=0.0, description="mu^(l,0)")


def _protocol(params: GCNWMMSEParams, net: Network, opts: GCNWMMSEOptions) -> Protocol:
    return gcn_wmmse_protocol(params, net, opts.mu_steps, opts.mu0)


MODEL = LearnableSpec("gcn_wmmse", GCNWMMSEParams, GCNWMMSEOptions, _protocol, SHIPPED,
                      "scenarios/train_gcn_wmmse_L7_nodl.yaml", TRAIN_DEFAULTS, named=SHIPPED_MODELS,
                      aliases=SHIPPED_ALIASES,
                      recipes={"dt": "scenarios/train_gcn_wmmse_dt.yaml",
                               "L6": "scenarios/train_gcn_wmmse_L6_nodl.yaml",
                               "L8": "scenarios/train_gcn_wmmse_L8_nodl.yaml",
                               "L7v1": "scenarios/train_gcn_wmmse.yaml",
                               "L7dl": "scenarios/train_gcn_wmmse_L7_ft.yaml",
                               "L6dl": "scenarios/train_gcn_wmmse_L6.yaml",
                               "L8dl": "scenarios/train_gcn_wmmse_L8.yaml"})

register_algorithm(AlgorithmSpec("gcn_wmmse", ("multicell",), GCNWMMSEOptions, MODEL.build,
                                 "GCN-WMMSE unrolled WMMSE, eq. (12)-(18); checkpoint shipped (PT, L = 7)|shipped:L6|"
                                 "shipped:L8 (PT, L = 6 / 8)|shipped:L7v1 (the first PT L = 7)|shipped:L6dl|"
                                 "shipped:L7dl|shipped:L8dl (PT, L = 6 / 7 / 8 with diagonal loading)|shipped:dt = "
                                 "shipped-dt (DT, Sec. IV-B.5)|untrained|PATH",
                                 learnable=MODEL.learnable,
                                 check=MODEL.check))
