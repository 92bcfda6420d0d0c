"""Cell-free massive MIMO downlink family (ICGNN paper Sec. IV / V-B; DESIGN.md section 7 "cellfree").

Geometry and large-scale fading
    L APs with N antennas (ULA, half-wavelength spacing) and K single-antenna UEs, all uniform in an
    ``area_m`` x ``area_m`` square with wrap-around (every AP-UE pair uses the nearest of the 9 periodic
    images of the UE).  AP height ``ap_height_m`` above the UE: d = sqrt(h^2 + horizontal^2) [m].
    beta_kl [dB] = pathloss_ref_db - 10 * pathloss_exponent * log10(d) (+ shadowing_db * N(0, 1), i.i.d. per
    AP-UE pair when shadowing_db > 0).  Default: -30.5 - 36.7 log10(d).
Small-scale fading
    Spatially correlated Rayleigh: h_kl = R_kl^(1/2) z, z ~ CN(0, I_N), R_kl = beta_kl * R(theta_kl) with the
    local scattering model (:func:`local_scattering_R`, Gaussian angular spread ``asd_deg`` around the
    azimuth theta_kl from AP l to UE k).  Each of the ``batch`` topologies has ``realizations`` (= S)
    independent draws, used for the Monte-Carlo statistics of eq. (25).
CSI
    'perfect': h_hat = h.  'mmse': tau_p orthogonal uplink pilots (``pilots``), UE k uses pilot k mod tau_p
    with power rho = ``ue_power_mw``; AP l observes
    y_tl = sqrt(tau_p rho) sum_{i: t_i = t} h_il + n_tl, n_tl ~ CN(0, sigma^2 I), and forms the MMSE estimate
    h_hat_kl = sqrt(tau_p rho) R_kl Psi_tl^-1 y_tl, Psi_tl = tau_p rho sum_{i: t_i = t} R_il + sigma^2 I,
    with error covariance C_kl = R_kl - tau_p rho R_kl Psi_tl^-1 R_kl (:meth:`CellfreeChannels.error_cov`).
Units
    Powers in W (``power_w`` per AP = 10^(ap_power_dbm/10) mW, default 20 dBm = 0.1 W; ``ue_power_w`` = rho,
    default 10 mW), noise_w = sigma^2 = -174 dBm/Hz + 10 log10(bandwidth_hz) + noise_figure_db (default
    -90.99 dBm), distances in m, beta and R linear (power gains); spectral efficiencies in bit/s/Hz.

AP-local functions (an AP uses only its own slice of the channels; every function takes any leading dims,
e.g. (B,) for one AP or (B, L') for a subset of L' APs stacked agent-major):

* :func:`lmmse_precoders` -- local L-MMSE precoders of eq. (22), normalised to unit norm per realization;
* :func:`ap_statistics` -- Monte-Carlo means E{h_kl^H w_il} and second moments E{|h_kl^H w_il|^2} over
  the S draws, the AP's upload to the CPU (combined by :func:`combine_statistics`).

Downlink SE (the evaluation physics, also what the CPU's power allocation optimises), B topologies:

* ``a`` (B, K, L): a_kl = E{h_kl^H w_kl} (real, >= 0 for L-MMSE); ``Bmat`` (B, K, K, L, L):
  Bmat[:, k, i] = B_ki with [B_ki]_lm = Re E{h_kl^H w_il w_im^H h_km} (eq. (25), :func:`combine_statistics`);
* ``mu`` (B, K, L) = sqrt(p), p_kl the power [W] AP l spends on UE k; ``noise`` sigma^2 [W], float or (B,);
* SINR_k of eq. (24) (:func:`sinr`) and SE_k = tau_d / tau_c log2(1 + SINR_k) of eq. (23)
  (:func:`downlink_se`, :func:`sum_se`), in bit/s/Hz.

Network (:func:`cellfree_network`): roles ``ap`` (L agents) and ``cpu`` (one agent); UEs are evaluated by
the air only (they run no protocol step in power allocation).  Edge sets, link class ``fh`` (fronthaul):
``ap>cpu`` (AP l -> CPU, edge id l) and ``cpu>ap`` (CPU -> AP l, edge id l).  Local data:

* ``ap``: ``h_hat`` (B, L, S, K, N) its channel estimates (S Monte-Carlo draws per topology) and ``h``
  (B, L, S, K, N) the true channels of the same draws -- an AP forms its statistics E{h_kl^H w_il}
  from its own pilots/data, i.e. only from its own slice; ``beta`` (B, L, K) large-scale fading;
  ``power`` (B, L) budget P_t [W]; ``error_cov`` (B, L, K, N, N) for MMSE CSI; ``mean`` (B, L, K, K)
  complex and ``second`` (B, L, K, K) real: the AP's Monte-Carlo statistics of eq. (25) from its own
  channels and L-MMSE precoders (:func:`ap_statistics`) -- a function of the AP's own data, computed once
  per scenario (the air evaluates with the very same numbers) instead of again by every protocol run.
* ``cpu``: ``power`` (B, 1, L) every AP's budget [W], ``noise`` (B, 1) sigma^2 [W].

Air (:class:`CellfreeAir`): evaluates power allocations p (B, L, K) (AP-major) by the SE bound.

Channel file (``.npz``, written by :func:`save_cellfree`, read by :func:`load_cellfree`); keys:

    family       str ``'cellfree'``
    beta         float (B, K, L)          large-scale fading (linear)
    R            complex (B, K, L, N, N)  spatial correlation matrices, scaled by beta
    h            complex (B, S, K, L, N)  channel draws (h[b, s, k, l] = channel from AP l to UE k)
    h_hat        complex (B, S, K, L, N)  channel estimates (optional when csi = 'perfect': then = h)
    noise_w      float ()                 noise power sigma^2 [W]
    power_w      float (L,)               per-AP power budget P_t [W]
    ue_power_w   float ()                 UE uplink (pilot) power rho [W]
    tau_c        int ()                   coherence block length [symbols]
    tau_d        int ()                   downlink data symbols per block
    csi          str ``'perfect'`` | ``'mmse'``
    tau_p        int ()                   number of orthogonal pilots (0 for perfect CSI)
    pilot_index  int (K,)                 pilot of each UE (ignored for perfect CSI)
    ap_xy        float (B, L, 2)          AP positions [m]
    ue_xy        float (B, K, 2)          UE positions [m]
    area_m       float ()                 side of the square area [m]

Errors on loading name the file and the offending key
(:class:`dsim.scenarios.channel_file.ChannelFileError`, a ``ValueError``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from pydantic import ConfigDict, Field

from dsim.air import Air
from dsim.faults import FaultModel
from dsim.network import EdgeSet, Network
from dsim.registry import CrossChecked, FamilySpec, LinkClass, register_family
from dsim.scenarios.channel_file import ChannelFileError, check_family, read_npz, write_npz
from dsim.units import DBM_LIMIT, db_to_linear, dbm_to_w, log_distance_db, thermal_noise_w

Tensor = torch.Tensor

FAMILY = "cellfree"
UNIT = "bit/s/Hz"
Csi = Literal["perfect", "mmse"]
CSI_MODES: tuple[str, ...] = get_args(Csi)


# --------------------------------------------------------------------------------------------------
# options (the YAML ``scenario:`` mapping; the one place the family's defaults live)
# --------------------------------------------------------------------------------------------------
class CellfreeScenario(CrossChecked):
    """Cell-free massive MIMO family options (ICGNN Sec. IV; module docstring).

    Area in m (square side), heights in m, ASD in degrees, powers in dBm (UE: mW), bandwidth in Hz,
    ``tau_c`` / ``tau_d`` coherence / downlink symbols, ``pilots`` tau_p (needed with ``csi: mmse``).
    """

    model_config = ConfigDict(extra="forbid")
    family: Literal["cellfree"] = "cellfree"
    n_aps: int = Field(7, ge=1)
    ap_antennas: int = Field(2, ge=1)
    n_ues: int = Field(5, ge=1)
    area_m: float = Field(1000.0, gt=0)
    ap_height_m: float = Field(10.0, ge=0)
    asd_deg: float = Field(15.0, ge=0)
    shadowing_db: float = Field(0.0, ge=0)
    realizations: int = Field(100, ge=1)
    csi: Csi = "perfect"
    pilots: int | None = Field(None, ge=1)
    noise_figure_db: float = Field(10.0, ge=-DBM_LIMIT, le=DBM_LIMIT)
    bandwidth_hz: float = Field(2e7, gt=0)
    ap_power_dbm: float = Field(20.0, ge=-DBM_LIMIT, le=DBM_LIMIT)
    ue_power_mw: float = Field(10.0, gt=0, allow_inf_nan=False)
    tau_c: int = Field(20, ge=1)
    tau_d: int = Field(19, ge=1)
    pathloss_ref_db: float = Field(-30.5, allow_inf_nan=False)
    pathloss_exponent: float = Field(3.67, gt=0)

    def cross_errors(self) -> list[tuple[str, str]]:
        errs = []
        if self.csi == "mmse" and self.pilots is None:
            errs.append(("pilots", "required when csi is 'mmse'; allowed: an integer >= 1 "
                                   "(orthogonal pilots tau_p)"))
        if self.tau_d > self.tau_c:
            errs.append(("tau_d", f"must be <= tau_c (= {self.tau_c}) (got {self.tau_d})"))
        return errs


# --------------------------------------------------------------------------------------------------
# local scattering correlation
# --------------------------------------------------------------------------------------------------
def _real_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype == torch.complex64 else torch.float64


def local_scattering_R(
    n_antennas: int,
    theta_rad: torch.Tensor,
    asd_rad: float,
    antenna_spacing: float = 0.5,
    dtype: torch.dtype = torch.complex128,
) -> torch.Tensor:
    """Normalised local-scattering correlation matrix of a ULA, Gaussian angular spread.

    Björnson, Hoydis, Sanguinetti, "Massive MIMO Networks" (2017), eq. (2.23) / ``functionRlocalscattering``:
    ``R[m, n] = E_delta{ exp(j 2 pi d (n - m) sin(theta + delta)) }``, delta ~ N(0, asd^2), d the spacing
    in wavelengths, i.e. ``R = E{a a^H}`` with steering vector ``a[n] = exp(-j 2 pi d n sin(theta + delta))``.
    R is Hermitian Toeplitz, PSD, with unit diagonal (trace N).

    Integration: composite trapezoid rule on delta in [-20 asd, 20 asd] (the Gaussian is 1e-87 at the ends,
    so the rule is spectrally accurate).  The integrand's bandwidth in delta is at most
    Omega = 2 pi d (N - 1) (plus a Bessel margin); the node spacing h satisfies
    (2 pi / h - Omega) * asd >= 9, so the aliasing error is below exp(-81 / 2) ~ 1e-18.  The Gaussian
    weights are renormalised to sum to one so the diagonal is exactly 1.  asd = 0 gives the rank-one
    closed form ``a(theta) a(theta)^H``.

    theta_rad: (...) nominal angles [rad]; asd_rad: angular standard deviation [rad].
    Returns (..., N, N) complex.
    """
    theta = torch.as_tensor(theta_rad, dtype=_real_dtype(dtype),
                            device=theta_rad.device if isinstance(theta_rad, torch.Tensor) else "cpu")
    n = torch.arange(n_antennas, dtype=theta.dtype, device=theta.device)
    phase_scale = 2.0 * math.pi * antenna_spacing
    if asd_rad < 0:
        raise ValueError(f"asd_rad must be >= 0, got {asd_rad}")
    if asd_rad == 0.0:
        a = torch.exp(-1j * phase_scale * n * torch.sin(theta)[..., None]).to(dtype)  # (..., N)
        return a[..., :, None] * a[..., None, :].conj()
    omega = phase_scale * (n_antennas - 1)
    omega = omega + 6.0 * omega ** (1.0 / 3.0) + 10.0  # Jacobi-Anger (Bessel) tail margin
    h = 2.0 * math.pi / (omega + 9.0 / asd_rad)
    half = max(math.ceil(20.0 * asd_rad / h), 16)
    delta = torch.linspace(-20.0 * asd_rad, 20.0 * asd_rad, 2 * half + 1, dtype=theta.dtype,
                           device=theta.device)
    wts = torch.exp(-0.5 * (delta / asd_rad) ** 2)
    wts = wts / wts.sum()  # trapezoid weights (ends ~ 0), normalised: sum of the discrete pdf = 1
    # first row c[n] = sum_j w_j exp(j 2 pi d n sin(theta + delta_j)): (..., N)
    s = torch.sin(theta[..., None] + delta)  # (..., J)
    c = torch.einsum("...jn,j->...n", torch.exp(1j * phase_scale * s[..., None] * n).to(dtype), wts.to(dtype))
    # Toeplitz: R[m, n] = c[n - m] for n >= m, conj(c[m - n]) otherwise
    idx = n[None, :] - n[:, None]  # (N, N) = n - m
    lag = idx.abs().long()
    full = c[..., lag]  # (..., N, N)
    return torch.where(idx >= 0, full, full.conj())


def _psd_sqrt(R: torch.Tensor) -> torch.Tensor:
    """Hermitian PSD square root (eigenvalues clipped at 0) of (..., N, N)."""
    lam, U = torch.linalg.eigh(R)
    return (U * lam.clamp_min(0).sqrt().to(U.dtype)[..., None, :]) @ U.mH


# --------------------------------------------------------------------------------------------------
# channels
# --------------------------------------------------------------------------------------------------
@dataclass
class CellfreeChannels:
    """One batch of cell-free topologies and their channel draws (shapes: B topologies, S draws).

    beta (B, K, L) linear; R (B, K, L, N, N) complex, scaled by beta; h, h_hat (B, S, K, L, N) complex
    (h[b, s, k, l] is the channel from AP l to UE k; h_hat == h for perfect CSI); noise_w sigma^2 [W];
    power_w (L,) per-AP budget [W]; ue_power_w rho [W]; tau_c, tau_d [symbols]; csi 'perfect' | 'mmse';
    tau_p pilots (0 for perfect CSI); pilot_index (K,); ap_xy (B, L, 2), ue_xy (B, K, 2) positions [m].
    """

    beta: torch.Tensor
    R: torch.Tensor
    h: torch.Tensor
    h_hat: torch.Tensor
    noise_w: float
    power_w: torch.Tensor
    ue_power_w: float
    tau_c: int
    tau_d: int
    csi: str
    tau_p: int
    pilot_index: torch.Tensor
    ap_xy: torch.Tensor
    ue_xy: torch.Tensor
    area_m: float

    family = FAMILY

    @property
    def batch(self) -> int:
        return self.h.shape[0]

    @property
    def realizations(self) -> int:
        return self.h.shape[1]

    @property
    def n_ues(self) -> int:
        return self.h.shape[2]

    @property
    def n_aps(self) -> int:
        return self.h.shape[3]

    @property
    def ap_antennas(self) -> int:
        return self.h.shape[4]

    @property
    def prelog(self) -> float:
        """tau_d / tau_c of eq. (23)."""
        return self.tau_d / self.tau_c

    @property
    def dtype(self) -> torch.dtype:
        return self.h.dtype

    @property
    def h_per_ap(self) -> torch.Tensor:
        """True channels agent-major: (B, L, S, K, N) -- AP l's slice is [:, l]."""
        return self.h.permute(0, 3, 1, 2, 4)

    @property
    def h_hat_per_ap(self) -> torch.Tensor:
        """Channel estimates agent-major: (B, L, S, K, N)."""
        return self.h_hat.permute(0, 3, 1, 2, 4)

    def error_cov(self) -> torch.Tensor | None:
        """Estimation error covariance C_kl (B, K, L, N, N) of the MMSE estimate; None for perfect CSI."""
        if self.csi == "perfect":
            return None
        return _mmse_parts(self.R, self.pilot_index, self.tau_p, self.ue_power_w, self.noise_w)[1]

    def error_cov_per_ap(self) -> torch.Tensor | None:
        """:meth:`error_cov` agent-major, (B, L, K, N, N) (AP l's slice [:, l]); None for perfect CSI."""
        C = self.error_cov()
        return None if C is None else C.permute(0, 2, 1, 3, 4)

    def to(self, dtype: torch.dtype | None = None,
           device: torch.device | str | None = None) -> CellfreeChannels:
        """A copy with complex tensors cast to ``dtype`` (complex) and everything moved to ``device``."""
        cdt = dtype or self.dtype
        rdt = _real_dtype(cdt)
        return replace(
            self, beta=self.beta.to(device=device, dtype=rdt), R=self.R.to(device=device, dtype=cdt),
            h=self.h.to(device=device, dtype=cdt), h_hat=self.h_hat.to(device=device, dtype=cdt),
            power_w=self.power_w.to(device=device, dtype=rdt), pilot_index=self.pilot_index.to(device=device),
            ap_xy=self.ap_xy.to(device=device, dtype=rdt), ue_xy=self.ue_xy.to(device=device, dtype=rdt),
        )


def wrapped_displacement(ap_xy: torch.Tensor, ue_xy: torch.Tensor, area_m: float) -> torch.Tensor:
    """Horizontal displacement AP -> UE on the torus of side ``area_m``: (B, K, L, 2) [m].

    ap_xy (B, L, 2), ue_xy (B, K, 2).  Each pair uses the nearest of the 9 periodic images of the UE.
    """
    d = ue_xy[:, :, None, :] - ap_xy[:, None, :, :]  # (B, K, L, 2)
    return torch.remainder(d + 0.5 * area_m, area_m) - 0.5 * area_m


def _mmse_parts(R: torch.Tensor, pilot_index: torch.Tensor, tau_p: int, rho: float, noise_w: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(R_kl Psi_{t_k l}^-1 (B, K, L, N, N), error covariance C_kl (B, K, L, N, N)) for MMSE estimation."""
    n = R.shape[-1]
    eye = torch.eye(n, dtype=R.dtype, device=R.device)
    onehot = torch.nn.functional.one_hot(pilot_index.long(), tau_p).to(R.dtype)  # (K, T)
    psi = tau_p * rho * torch.einsum("kt,bklmn->btlmn", onehot, R) + noise_w * eye  # (B, T, L, N, N)
    psi_k = psi[:, pilot_index.long()]  # (B, K, L, N, N)
    r_psi_inv = torch.linalg.solve(psi_k, R, left=False)  # R Psi^-1 (Psi, R Hermitian)
    C = R - tau_p * rho * r_psi_inv @ R
    return r_psi_inv, 0.5 * (C + C.mH)


def generate_cellfree(options: CellfreeScenario, batch: int, generator: torch.Generator,
                      dtype: torch.dtype = torch.complex128) -> CellfreeChannels:
    """Draw ``batch`` cell-free topologies of ``options`` with ``realizations`` channel draws each
    (module docstring).

    Random draws, in this order from ``generator``: AP positions (B, L, 2), UE positions (B, K, 2),
    shadowing N(0, 1) (B, K, L) (always drawn, used when shadowing_db > 0), fading z (B, S, K, L, N),
    and for csi='mmse' the pilot noise (B, S, tau_p, L, N).  Tensors live on the generator's device.
    """
    if dtype not in (torch.complex64, torch.complex128):
        raise ValueError(f"dtype must be complex64 or complex128, got {dtype}")
    o = options
    B, L, K, N, S = batch, o.n_aps, o.n_ues, o.ap_antennas, o.realizations
    dev = generator.device
    f64 = torch.float64  # geometry and statistics generated in double, then cast
    ap_xy = o.area_m * torch.rand(B, L, 2, generator=generator, dtype=f64, device=dev)
    ue_xy = o.area_m * torch.rand(B, K, 2, generator=generator, dtype=f64, device=dev)
    shadow = torch.randn(B, K, L, generator=generator, dtype=f64, device=dev)
    disp = wrapped_displacement(ap_xy, ue_xy, o.area_m)  # (B, K, L, 2)
    dist = torch.sqrt(o.ap_height_m ** 2 + (disp ** 2).sum(-1))
    beta_db = log_distance_db(dist, o.pathloss_ref_db, -10.0 * o.pathloss_exponent)
    if o.shadowing_db > 0:
        beta_db = beta_db + o.shadowing_db * shadow
    beta = db_to_linear(beta_db)
    theta = torch.atan2(disp[..., 1], disp[..., 0])  # azimuth AP -> UE
    R = beta[..., None, None].to(torch.complex128) * local_scattering_R(N, theta, math.radians(o.asd_deg))
    z = torch.randn(B, S, K, L, N, generator=generator, dtype=torch.complex128, device=dev)
    h = torch.einsum("bklmn,bskln->bsklm", _psd_sqrt(R), z)
    noise_w = thermal_noise_w(o.bandwidth_hz, o.noise_figure_db)
    rho = o.ue_power_mw * 1e-3
    if o.csi == "perfect":
        tau_p = 0
        pilot_index = torch.zeros(K, dtype=torch.long, device=dev)
        h_hat = h
    else:
        tau_p = int(o.pilots)
        pilot_index = torch.arange(K, device=dev) % tau_p
        onehot = torch.nn.functional.one_hot(pilot_index, tau_p).to(h.dtype)  # (K, T)
        noise = torch.randn(B, S, tau_p, L, N, generator=generator, dtype=torch.complex128, device=dev)
        y = math.sqrt(tau_p * rho) * torch.einsum("kt,bskln->bstln", onehot, h) + math.sqrt(noise_w) * noise
        r_psi_inv = _mmse_parts(R, pilot_index, tau_p, rho, noise_w)[0]
        h_hat = math.sqrt(tau_p * rho) * torch.einsum("bklmn,bskln->bsklm", r_psi_inv, y[:, :, pilot_index])
    power = torch.full((L,), dbm_to_w(o.ap_power_dbm), dtype=f64, device=dev)
    ch = CellfreeChannels(beta=beta, R=R, h=h, h_hat=h_hat, noise_w=noise_w, power_w=power, ue_power_w=rho,
                          tau_c=int(o.tau_c), tau_d=int(o.tau_d), csi=o.csi, tau_p=tau_p,
                          pilot_index=pilot_index, ap_xy=ap_xy, ue_xy=ue_xy, area_m=float(o.area_m))
    return ch if dtype == torch.complex128 else ch.to(dtype)


# --------------------------------------------------------------------------------------------------
# AP-local computations
# --------------------------------------------------------------------------------------------------
def lmmse_precoders(
    h_hat_l: torch.Tensor,
    ue_power_w: float | torch.Tensor,
    noise_w: float,
    error_cov_l: torch.Tensor | None = None,
) -> torch.Tensor:
    """Local L-MMSE precoders of eq. (22), one AP (or a stack of APs), unit norm per realization.

    w_kl = (sum_i rho_i (h_il h_il^H + C_il) + sigma^2 I)^-1 rho_k h_kl, then w_bar_kl = w_kl / ||w_kl||
    (eq. (22) normalises every realization, so sum_k p_kl ||w_bar_kl||^2 = sum_k p_kl is AP l's transmit
    power).  C_il (estimation error covariance) is 0 for perfect CSI, as in eq. (22).

    h_hat_l: (..., S, K, N) the AP's channel estimates to the K UEs (e.g. (B, S, K, N) for one AP or
    (B, L', S, K, N) for a stack); ue_power_w: rho [W], scalar or (K,); noise_w: sigma^2 [W];
    error_cov_l: (..., K, N, N) or None.  Returns w_bar (..., S, K, N).
    """
    K, N = h_hat_l.shape[-2], h_hat_l.shape[-1]
    rho = torch.as_tensor(ue_power_w, dtype=h_hat_l.real.dtype, device=h_hat_l.device).expand(K)
    g = h_hat_l * (rho / noise_w).sqrt().to(h_hat_l.dtype)[:, None]  # sqrt(rho_i / sigma^2) h_i
    G = g.transpose(-1, -2)  # (..., S, N, K)
    M = G @ G.mH + torch.eye(N, dtype=h_hat_l.dtype, device=h_hat_l.device)
    if error_cov_l is not None:
        scaled_c = torch.einsum("k,...kmn->...mn", (rho / noise_w).to(h_hat_l.dtype), error_cov_l)
        M = M + scaled_c[..., None, :, :]
    W = torch.linalg.solve(M, h_hat_l.transpose(-1, -2))  # (..., S, N, K); the factor rho_k cancels
    norm = torch.linalg.vector_norm(W, dim=-2, keepdim=True)
    W = W / torch.where(norm > 0, norm, torch.ones_like(norm))
    return W.transpose(-1, -2)


def ap_statistics(h_l: torch.Tensor, w_l: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte-Carlo statistics one AP uploads to the CPU (eq. (25) ingredients), over its S draws.

    h_l: (..., S, K, N) true channels of the AP, w_l: (..., S, K, N) its precoders (same draws).
    Returns ``mean`` (..., K, K) complex with mean[..., k, i] = E{h_kl^H w_il}, and ``second``
    (..., K, K) real with second[..., k, i] = E{|h_kl^H w_il|^2} (sample means over S).
    """
    g = torch.einsum("...skn,...sin->...ski", h_l.conj(), w_l)  # h_kl^H w_il per draw
    return g.mean(dim=-3), (g.real ** 2 + g.imag ** 2).mean(dim=-3)


# --------------------------------------------------------------------------------------------------
# downlink SE: eq. (23)-(25) (the evaluation physics; the CPU's power allocation optimises it)
# --------------------------------------------------------------------------------------------------
def combine_statistics(mean: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (25) at the CPU from the APs' uploads.

    mean (B, L, K, K) complex, mean[:, l, k, i] = E{h_kl^H w_il}; second (B, L, K, K) real,
    second[:, l, k, i] = E{|h_kl^H w_il|^2} (the stacked outputs of :func:`ap_statistics`, AP-major).
    Returns a (B, K, L) with a_kl = Re E{h_kl^H w_kl}, and Bmat (B, K, K, L, L) with
    [B_ki]_ll = E{|h_kl^H w_il|^2} and, for l != m, [B_ki]_lm = Re(E{h_kl^H w_il} E{h_km^H w_im}^*)
    (different APs' channels are independent, so the cross moment is the product of the means).
    """
    m = mean.permute(0, 2, 3, 1)  # (B, K, K, L): [k, i, l]
    Bmat = (m[..., :, None] * m[..., None, :].conj()).real  # (B, K, K, L, L)
    Bmat = Bmat.clone()
    Bmat.diagonal(dim1=-2, dim2=-1).copy_(second.permute(0, 2, 3, 1))
    a = m.diagonal(dim1=1, dim2=2).real.transpose(1, 2)  # (B, L, K) diag over (k, i) -> (B, K, L)
    return a.contiguous(), Bmat


def per_batch(x: float | torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """A scalar or (B,) quantity (e.g. the noise power sigma^2 [W]) as a (B or 1, 1) tensor like ``ref``."""
    return torch.as_tensor(x, dtype=ref.dtype, device=ref.device).reshape(-1, 1)


def sinr_terms(a: torch.Tensor, Bmat: torch.Tensor, mu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a_k^T mu_k (B, K), sum_i mu_i^T B_ki mu_i (B, K)) for amplitudes mu (B, K, L)."""
    signal = (a * mu).sum(-1)
    total = torch.einsum("bil,bkilm,bim->bk", mu, Bmat, mu)
    return signal, total


def sinr(a: torch.Tensor, Bmat: torch.Tensor, mu: torch.Tensor, noise: float | torch.Tensor) -> torch.Tensor:
    """Effective SINR of eq. (24) (B, K) for amplitudes mu = sqrt(p) (B, K, L) [sqrt(W)], noise [W]."""
    signal, total = sinr_terms(a, Bmat, mu)
    s2 = signal ** 2
    return s2 / (total - s2 + per_batch(noise, a))


def downlink_se(a: torch.Tensor, Bmat: torch.Tensor, mu: torch.Tensor, noise: float | torch.Tensor,
                tau_c: int, tau_d: int) -> torch.Tensor:
    """Per-UE downlink SE of eq. (23) [bit/s/Hz], (B, K): SE_k = tau_d / tau_c * log2(1 + SINR_k), for
    amplitudes mu = sqrt(p) (B, K, L) [sqrt(W)]."""
    return (tau_d / tau_c) * torch.log2(1.0 + sinr(a, Bmat, mu, noise))


def sum_se(a: torch.Tensor, Bmat: torch.Tensor, p: torch.Tensor, noise: float | torch.Tensor,
           tau_c: int, tau_d: int) -> torch.Tensor:
    """Per-UE downlink SE [bit/s/Hz] of eq. (23)-(24), (B, K), for powers p (B, K, L) [W] (mu = sqrt(p));
    its sum over k (weighted by alpha_k) is the sum-SE."""
    return downlink_se(a, Bmat, p.clamp_min(0).sqrt(), noise, tau_c, tau_d)


class CellfreeAir(Air):
    """Cell-free downlink with local L-MMSE precoding (ICGNN paper Sec. IV, eq. (22)–(25)).

    The ground truth holds a_kl (B, K, L) and B_ki (B, K, K, L, L) of eq. (25), computed from every AP's
    true channels and precoders (same Monte-Carlo draws the APs use, :meth:`from_statistics`), and
    evaluates power allocations p (B, L, K) [W] (AP-major, the decision layout of the cell-free
    protocols) by the SE bound (23)–(24), in bit/s/Hz.  power_w (L,) per-AP budget [W]; noise_w sigma^2 [W].
    """

    unit = UNIT
    metric = "sum-SE"

    def __init__(self, a: Tensor, Bmat: Tensor, power_w: Tensor, noise_w: float, tau_c: int, tau_d: int) -> None:
        self.a, self.Bmat, self.power_w, self.noise_w = a, Bmat, power_w, noise_w
        self.tau_c, self.tau_d = tau_c, tau_d

    @classmethod
    def from_statistics(cls, ch: CellfreeChannels, mean: Tensor, second: Tensor) -> CellfreeAir:
        """The air from the per-AP statistics of eq. (25) (mean, second (B, L, K, K)) of ``ch``."""
        a, Bmat = combine_statistics(mean, second)
        return cls(a, Bmat, ch.power_w.to(a.dtype), float(ch.noise_w), int(ch.tau_c), int(ch.tau_d))

    def evaluate(self, p_ap: Tensor) -> tuple[Tensor, Tensor]:
        """(sum-SE (B,), per-UE SE (B, K)) [bit/s/Hz] of powers p_ap (B, L, K) [W]."""
        se = sum_se(self.a, self.Bmat, p_ap.transpose(1, 2).to(self.a.dtype), self.noise_w, self.tau_c, self.tau_d)
        return se.sum(-1), se

    def power_ratio(self, p_ap: Tensor) -> Tensor:
        """Per-AP used power over budget (B, L)."""
        return p_ap.sum(-1) / self.power_w.reshape(1, -1)

    def repeat(self, n: int) -> CellfreeAir:
        if n == 1:
            return self
        return CellfreeAir(self.a.repeat(n, 1, 1), self.Bmat.repeat(n, 1, 1, 1, 1), self.power_w, self.noise_w,
                           self.tau_c, self.tau_d)


# --------------------------------------------------------------------------------------------------
# network of local knowledge
# --------------------------------------------------------------------------------------------------
def cellfree_network(ch: CellfreeChannels, faults: FaultModel | None = None,
                     seed: int = 0) -> tuple[Network, CellfreeAir]:
    """Network (module docstring) and air of a :class:`CellfreeChannels` batch.

    Stale / noisy CSI (``faults.stale_csi``, ``faults.csi_error``, :meth:`dsim.faults.FaultModel.csi`, per
    draw s and link (k, l) with the link's large-scale gain beta_kl): the channel the air evaluates (the
    statistics E{h_kl^H w_il}, E{|h_kl^H w_il|^2} of eq. (25)) is the aged h_air = rho h + sqrt(1 - rho^2)
    beta^(1/2) e, while the APs' precoders (22) use their estimates h_hat (+ sqrt(csi_error beta) e')
    of the channel before it aged."""
    if faults is not None and faults.missing_links > 0:
        raise ValueError("faults.missing_links applies to multicell BS-UE links; cellfree has no such links "
                         "(use faults.message_loss)")
    B, S, K, L, N = ch.h.shape
    real = ch.beta.dtype
    P = ch.power_w.to(real).reshape(1, L).expand(B, L).clone()
    h_hat, h = ch.h_hat, ch.h
    if faults is not None and faults.csi_faulty:  # per link (draw s, UE k, AP l) with its gain beta_kl
        h_hat, h = faults.csi(ch.h, link_dims=1, gain=ch.beta[:, None, :, :, None], estimate=ch.h_hat)
    h_l, h_hat_l = h.permute(0, 3, 1, 2, 4), h_hat.permute(0, 3, 1, 2, 4)  # agent-major (B, L, S, K, N)
    local_ap = {"h": h_l, "h_hat": h_hat_l, "beta": ch.beta.permute(0, 2, 1).contiguous(), "power": P}
    C = ch.error_cov_per_ap()
    if C is not None:
        local_ap["error_cov"] = C.contiguous()
    local_ap["mean"], local_ap["second"] = stats = ap_statistics(
        h_l, lmmse_precoders(h_hat_l, ch.ue_power_w, ch.noise_w, C))
    dev = ch.h.device
    local_cpu = {"power": P.reshape(B, 1, L).clone(),
                 "noise": torch.full((B, 1), float(ch.noise_w), dtype=real, device=dev)}
    ones = torch.ones(B, L, dtype=torch.bool, device=dev)
    idx, zero = torch.arange(L, device=dev), torch.zeros(L, dtype=torch.int64, device=dev)
    edges = {
        "ap>cpu": EdgeSet("ap>cpu", "ap", "cpu", "fh", idx, zero, ones),
        "cpu>ap": EdgeSet("cpu>ap", "cpu", "ap", "fh", zero.clone(), idx.clone(), ones.clone()),
    }
    info = {"family": FAMILY, "batch": B, "n_aps": L, "n_ues": K, "ap_antennas": N, "realizations": S,
            "noise_w": float(ch.noise_w), "ue_power_w": float(ch.ue_power_w), "tau_c": int(ch.tau_c),
            "tau_d": int(ch.tau_d), "seed": seed, "unit": UNIT, "dtype": ch.h.dtype, "real_dtype": real}
    net = Network(FAMILY, B, {"ap": L, "cpu": 1}, edges, {"ap": local_ap, "cpu": local_cpu}, info)
    return net, CellfreeAir.from_statistics(ch, *stats)


# --------------------------------------------------------------------------------------------------
# channel file
# --------------------------------------------------------------------------------------------------
_REQUIRED = ("family", "beta", "R", "h", "noise_w", "power_w", "ue_power_w", "tau_c", "tau_d", "csi", "tau_p",
             "pilot_index", "ap_xy", "ue_xy", "area_m")


def save_cellfree(path: str | Path, ch: CellfreeChannels) -> None:
    """Write ``ch`` to an ``.npz`` file with the keys listed in the module docstring."""
    arrays: dict[str, Any] = {
        "family": np.array(FAMILY), "beta": ch.beta.cpu().numpy(), "R": ch.R.cpu().numpy(),
        "h": ch.h.cpu().numpy(), "noise_w": np.array(float(ch.noise_w)), "power_w": ch.power_w.cpu().numpy(),
        "ue_power_w": np.array(float(ch.ue_power_w)), "tau_c": np.array(int(ch.tau_c)),
        "tau_d": np.array(int(ch.tau_d)), "csi": np.array(ch.csi), "tau_p": np.array(int(ch.tau_p)),
        "pilot_index": ch.pilot_index.cpu().numpy(), "ap_xy": ch.ap_xy.cpu().numpy(),
        "ue_xy": ch.ue_xy.cpu().numpy(), "area_m": np.array(float(ch.area_m)),
    }
    if ch.csi != "perfect":
        arrays["h_hat"] = ch.h_hat.cpu().numpy()
    write_npz(path, arrays)


def _shape_check(key: str, arr: np.ndarray, shape: tuple[int, ...], path: Path) -> None:
    if tuple(arr.shape) != shape:
        raise ChannelFileError(f"{path}: key {key!r} has shape {tuple(arr.shape)}, expected {shape}")


def load_cellfree(path: str | Path, dtype: torch.dtype = torch.complex128) -> CellfreeChannels:
    """Read a channel file written by :func:`save_cellfree`; errors name the offending key."""
    path = Path(path)
    data = read_npz(path)
    for key in _REQUIRED:
        if key not in data:
            need = ", ".join(_REQUIRED)
            raise ChannelFileError(f"{path}: missing key {key!r} (cellfree files need {need})")
    check_family(path, data, FAMILY)
    csi = str(data["csi"])
    if csi not in CSI_MODES:
        raise ChannelFileError(f"{path}: key 'csi' is {csi!r}, allowed: {', '.join(CSI_MODES)}")
    h = data["h"]
    if h.ndim != 5 or not np.iscomplexobj(h):
        raise ChannelFileError(f"{path}: key 'h' must be complex (B, S, K, L, N), got {h.dtype} {h.shape}")
    B, S, K, L, N = h.shape
    h_hat = data.get("h_hat", h if csi == "perfect" else None)
    if h_hat is None:
        raise ChannelFileError(f"{path}: missing key 'h_hat' (required when csi = 'mmse')")
    for key, shape in (("beta", (B, K, L)), ("R", (B, K, L, N, N)), ("h_hat", (B, S, K, L, N)),
                       ("power_w", (L,)), ("pilot_index", (K,)), ("ap_xy", (B, L, 2)), ("ue_xy", (B, K, 2)),
                       ("noise_w", ()), ("ue_power_w", ()), ("tau_c", ()), ("tau_d", ()), ("tau_p", ()),
                       ("area_m", ())):
        _shape_check(key, h_hat if key == "h_hat" else data[key], shape, path)
    for key in ("h", "h_hat", "R", "beta", "power_w", "noise_w", "ue_power_w", "ap_xy", "ue_xy", "area_m"):
        a = h_hat if key == "h_hat" else data[key]
        if a.dtype.kind not in "iufc":
            raise ChannelFileError(f"{path}: key {key!r}: expected a numeric array, found {a.dtype} {a.shape}")
        bad = int((~np.isfinite(a)).sum())
        if bad:
            raise ChannelFileError(f"{path}: key {key!r}: expected finite values, found {bad} NaN/infinite entries")
    for key, lo in (("noise_w", "> 0"), ("power_w", "> 0"), ("ue_power_w", "> 0"), ("area_m", "> 0"),
                    ("beta", ">= 0")):
        a = np.asarray(data[key])
        if a.dtype.kind == "c" or not (a > 0 if lo == "> 0" else a >= 0).all():
            raise ChannelFileError(f"{path}: key {key!r}: expected real values {lo}, found min "
                                   f"{np.real(a).min():g}")
    for key in ("tau_c", "tau_d", "tau_p", "pilot_index"):
        if data[key].dtype.kind not in "iu":
            raise ChannelFileError(f"{path}: key {key!r}: expected integers, found {data[key].dtype}")
    tau_c, tau_d, tau_p = int(data["tau_c"]), int(data["tau_d"]), int(data["tau_p"])
    if tau_p < 0 or (csi == "mmse" and tau_p < 1):
        raise ChannelFileError(f"{path}: key 'tau_p': expected >= 1 with csi 'mmse' (>= 0 otherwise), found {tau_p}")
    pil = data["pilot_index"]
    if pil.size and (int(pil.min()) < 0 or int(pil.max()) >= max(tau_p, 1)):
        raise ChannelFileError(f"{path}: key 'pilot_index': expected values in [0, {max(tau_p, 1)}) "
                               f"(tau_p = {tau_p}), found [{int(pil.min())}, {int(pil.max())}]")
    if not 0 < tau_d <= tau_c:
        raise ChannelFileError(f"{path}: keys 'tau_d'/'tau_c' need 0 < tau_d <= tau_c, got {tau_d}/{tau_c}")
    pilot_index = torch.as_tensor(data["pilot_index"], dtype=torch.long, device="cpu")  # files load on the CPU
    if csi == "mmse" and (tau_p < 1 or int(pilot_index.min()) < 0 or int(pilot_index.max()) >= tau_p):
        raise ChannelFileError(f"{path}: key 'pilot_index' must lie in [0, tau_p) with tau_p >= 1")
    ch = CellfreeChannels(
        beta=torch.as_tensor(data["beta"], dtype=torch.float64, device="cpu"),
        R=torch.as_tensor(data["R"], device="cpu"), h=torch.as_tensor(h, device="cpu"),
        h_hat=torch.as_tensor(h_hat, device="cpu"), noise_w=float(data["noise_w"]),
        power_w=torch.as_tensor(data["power_w"], dtype=torch.float64, device="cpu"),
        ue_power_w=float(data["ue_power_w"]), tau_c=tau_c, tau_d=tau_d, csi=csi, tau_p=tau_p,
        pilot_index=pilot_index, ap_xy=torch.as_tensor(data["ap_xy"], dtype=torch.float64, device="cpu"),
        ue_xy=torch.as_tensor(data["ue_xy"], dtype=torch.float64, device="cpu"), area_m=float(data["area_m"]),
    )
    return ch.to(dtype)


register_family(FamilySpec(
    name=FAMILY, options=CellfreeScenario, generate=generate_cellfree, build=cellfree_network,
    save=save_cellfree, load=load_cellfree, file_keys=_REQUIRED, roles=("ap", "cpu"),
    links=(LinkClass("fh", 1e-4, 1e9, "AP <-> CPU fronthaul"),),
    unit=UNIT, summary="cell-free massive MIMO downlink power allocation: L APs (N antennas), K UEs",
))
