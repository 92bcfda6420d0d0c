"""Interference-channel family: K transmitter-receiver pairs (MPGNN paper Sec. III-A, V; SPECS §1; DESIGN §7).

Pair k: transmitter Tx k with N_t antennas serves its single-antenna receiver Rx k; every other Tx j
interferes.  Problem (4) of the MPGNN paper:

    max sum_k w_k log2(1 + SINR_k),  SINR_k = |h_kk^H v_k|^2 / (sum_{j != k} |h_jk^H v_j|^2 + sigma_k^2),
    ||v_k||^2 <= P_max,

h_jk (N_t,) the channel from Tx j to Rx k.  Rates in bit/s/Hz (log2), powers in W, distances in m.

Layouts:

* ``gaussian`` (Sec. V-A, Tab. I): h_jk ~ CN(0, I), P_max = 1 W, sigma^2 = 10^(-SNR/10) W, w_k = 1
  (or U[0, 1] with ``weights: uniform``); every pair hears every other (complete graph).
* ``d2d`` (Sec. V-B/C, Tab. II-VII): Tx uniform in an A x A field; Rx k at a distance U[d_min, d_max]
  from Tx k at a uniform angle (it may lie outside the field); A = ``field_m``, or, when None, the side
  that keeps the density of 50 pairs per 1000 m x 1000 m: A = 1000 sqrt(K / 50) (K = 1000 -> 4472 m).
  Channel h_jk = sqrt(g_jk) s_jk z_jk with
    - ITU-R P.1411 short-range LoS two-slope path loss (DESIGN §7): breakpoint R_bp = 4 h_t h_r / lambda,
      L_bp = |20 log10(lambda^2 / (8 pi h_t h_r))|,
      PL(d) = L_bp + 6 + 20 log10(d / R_bp) for d <= R_bp and L_bp + 6 + 40 log10(d / R_bp) beyond,
      at 2.4 GHz with 1.5 m antennas; g_jk = 10^(-(PL - G)/10) with the antenna gain G = 2.5 dB on
      direct links (j = k) only;
    - log-normal shadowing s_jk^2 = 10^(X/10), X ~ N(0, 8^2) dB, one per (Tx, Rx) link;
    - Rayleigh fading z_jk ~ CN(0, I).
  P_max = 40 dBm, sigma^2 = -169 dBm/Hz x 5 MHz; w_k ~ U[0, 1] (``weights: uniform``, default) or 1.
  ``range_m`` (500 m): Rx k hears / has CSI of Tx j, and the pairs j -> k exchange signaling, only when
  dist(Tx j, Rx k) <= range_m (a pair always knows its own link).
* ``engnn`` (ENGNN paper Sec. IV, Ex1; SPECS §4): the d2d geometry with the ENGNN paper's channel and its
  defaults (:data:`ENGNN_DEFAULTS`, each overridable): K = 20 pairs, N_t = 2, 2000 m x 2000 m field, Rx at
  U[50, 250] m from its Tx, PL = 30.5 + 36.7 log10 d [dB] (d in m, clamped to >= 1 m), no shadowing, no
  antenna gain, Rayleigh fading, P_max = 33 dBm, noise -99 dBm (``noise_dbm``), w_k = 1, complete graph
  (``range_m`` None).
* ``mpgnn_code`` (the channel of the MPGNN authors' public beamforming code, D2D/Beamforming/
  wireless_networks_generator.py of yshenaw/GNN-Resource-Management, which the paper's Sec. V-C cites as "the
  channel model in [19]"): the d2d geometry (defaults K = 50, N_t = 2, (d_min, d_max) = (2, 65) m, 1000 m field
  at the d2d density, ``range_m`` 500 m, w_k = 1) with the power gain, per (Tx j, Rx k, antenna n),
  g_jkn = 10^(G0/10) d^(-1.88) 10^(-X_jkn sigma_s/10), X ~ N(0, 1) *per antenna* (the stream's normal
  draw is -X: the same law), sigma_s = ``shadowing_db``
  = 3.15 dB (their 10^(6.3 X / 20)), G0 = 10 log10(4.4e5) = 56.43 dB, P_max = sigma^2 = 1 (``tx_power_dbm``
  = ``noise_dbm`` = 30): direct SNRs 22 to 51 dB at 65 to 2 m, INR 5.6 dB at 500 m (P.1411 at 40 dBm over
  -102 dBm: 68 to 98 dB and 31 dB).  Rayleigh fading; no antenna gain.  (Their generator redraws a Rx that
  falls outside the field; here, as in ``d2d``, it may lie outside.)

Random draws: one 62-bit seed from the run's CPU torch generator seeds a numpy PCG64 stream
(:func:`draw_rng`), which draws, in float64 and in this order: d2d/engnn -- Tx positions (B, K, 2),
Rx distance (B, K), Rx angle (B, K); all -- weights (B, K) when uniform; all -- fading (B, K, K, 1, N_t, 2);
d2d/engnn -- shadowing (B, K, K); mpgnn_code -- shadowing (B, K, K, N_t).  Only the final cast depends on the precision.

Network (:func:`interference_network`) -- the multicell network of DESIGN §5 with one UE per BS, so
that the multicell protocols (WMMSE) run unchanged: role ``bs`` = the K transmitters (bs k also is
pair k's agent for the GNN protocols), role ``ue`` = the K receivers, ``assign`` = 0..K-1.

* ``ue>bs`` (``ul``): Rx i -> Tx k, edges (i, k) present in some realization; mask: Tx k has CSI of Rx i
  (``wmmse_csi: full``: every pair, the tables' denominator; ``range``: within ``range_m``).
* ``bs>ue`` (``dl``): Tx k -> Rx i, the reverse of ``ue>bs`` (same pairs, same masks; ENGNN's Tx -> Rx messages).
* ``ue>bs:serve`` (``ul``): Rx i -> Tx i.
* ``pair`` (``d2d``, bs -> bs): pair j -> pair i for j != i within ``range_m`` (edges present in some
  realization of the batch, so a single K = 1000 layout has about 40 K edges, not K^2); the GNN's graph.

Local data: ``bs`` holds the multicell keys (``H`` (B, K, I, 1, N_t) its channels to the receivers it
has CSI of, ``csi``, ``alpha``, ``noise``, ``power``) and, for pair k, ``h_own`` (B, K, N_t) its
direct channel h_kk, ``w`` (B, K), ``sigma2`` (B, K) W, ``p_max`` (B, K) W, and ``H_rx`` (B, K, K, N_t):
H_rx[b, k, j] = h_jk as Rx k measured it (zero outside ``range_m``; the diagonal holds h_kk);
``ue`` holds ``alpha`` (B, K), ``noise`` (B, K) and ``direct_gain`` (B, K) = ||h_kk||^2 (its measurement).

Symmetry (``train.augment: symmetry``, :func:`apply_symmetry`): the sum rate of problem (4) is invariant under
h_jk^H -> e^{j phi_k} h_jk^H Q_j (a phase per Rx k, a unitary Q_j in U(N_t) per Tx j) with v_j -> Q_j^H v_j; a
fixed training set is augmented with random elements of this group (the geometry is left as it is).
Sub-networks (``train.augment: subnetwork``, :func:`subnetwork_transform`): each minibatch keeps a random
subset of K' in ceil(K/2) .. K pairs of every layout (their channels unchanged): new graphs from the same layouts.

Channel file: the multicell format (DESIGN §5, :mod:`dsim.scenarios.multicell`) with I = K, assign =
0..K-1, N = 1, M = N_t and ``family`` = 'interference'; ``H`` (B, K, K, 1, N_t) [Rx i, Tx k] holds
h_ki^H as a row; ``weights`` may also be (B, K) (per-realization weights of the d2d layout);
``inrange`` (B, K, K) [Rx i, Tx k]: dist(Tx k, Rx i) <= range_m; ``bs_xy`` / ``ue_xy`` the Tx / Rx
positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import ConfigDict, Field, model_validator

from dsim.faults import FaultModel
from dsim.network import EdgeSet, Network
from dsim.registry import CrossChecked, FamilySpec, LinkClass, register_family
from dsim.scenarios.channel_file import ChannelFileError, check_array, found, read_family_file, write_npz
from dsim.scenarios.multicell import MulticellAir, haar_unitary
from dsim.units import dbm_to_w

Tensor = torch.Tensor

FAMILY = "interference"
UNIT = "bit/s/Hz"
LN2 = math.log(2.0)
SPEED_OF_LIGHT = 2.998e8
#: density reference of the d2d layout: 50 pairs per 1000 m x 1000 m (MPGNN Sec. V-B)
REF_PAIRS, REF_FIELD_M = 50, 1000.0
_F64 = torch.float64
#: defaults of the ``engnn`` layout (ENGNN paper Sec. IV-A, Ex1; SPECS §4), for the keys a config leaves out
ENGNN_DEFAULTS = {"n_pairs": 20, "tx_antennas": 2, "field_m": 2000.0, "d_min_m": 50.0, "d_max_m": 250.0,
                  "range_m": None, "weights": "fixed", "shadowing_db": 0.0, "antenna_gain_db": 0.0,
                  "tx_power_dbm": 33.0, "noise_dbm": -99.0}


#: defaults of the ``mpgnn_code`` layout (module docstring), for the keys a config leaves out
MPGNN_CODE_DEFAULTS = {"n_pairs": 50, "tx_antennas": 2, "d_min_m": 2.0, "d_max_m": 65.0, "range_m": 500.0,
                       "weights": "fixed", "shadowing_db": 3.15, "antenna_gain_db": 0.0, "tx_power_dbm": 30.0,
                       "noise_dbm": 30.0}
#: G0 of the ``mpgnn_code`` layout: the authors' code's constant 4.4e5 in dB
MPGNN_CODE_G0_DB = 10.0 * math.log10(4.4e5)


def mpgnn_code_pathloss_db(distance_m: Tensor) -> Tensor:
    """The MPGNN authors' beamforming-code path loss [dB] (module docstring): 18.8 log10 d - G0, d in m."""
    return 18.8 * torch.log10(distance_m) - MPGNN_CODE_G0_DB


def engnn_pathloss_db(distance_m: Tensor) -> Tensor:
    """ENGNN paper Sec. IV: PL = 30.5 + 36.7 log10 d [dB], d in m (clamped to >= 1 m)."""
    return 30.5 + 36.7 * torch.log10(distance_m.clamp_min(1.0))


# --------------------------------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------------------------------
class InterferenceScenario(CrossChecked):
    """Interference-channel family options (module docstring; defaults = MPGNN Sec. V-C, K = 50 D2D).

    Powers in dBm (``tx_power_dbm``) or dB (``snr_db``), noise density in dBm/Hz, distances in m.
    """

    model_config = ConfigDict(extra="forbid")
    family: Literal["interference"] = "interference"
    layout: Literal["gaussian", "d2d", "engnn", "mpgnn_code"] = "d2d"
    n_pairs: int = Field(50, ge=1, description="K transmitter-receiver pairs")
    tx_antennas: int = Field(1, ge=1, description="N_t (1: power control)")
    snr_db: float = Field(10.0, description="gaussian: sigma^2 = 10^(-snr_db/10), P_max = 1")
    weights: Literal["uniform", "fixed"] | None = Field(
        None, description="w_k ~ U[0,1] (uniform) or 1 (fixed); default: fixed (gaussian), uniform (d2d)")
    field_m: float | None = Field(None, gt=0, description="d2d field side; None: 1000 sqrt(K/50)")
    d_min_m: float = Field(2.0, gt=0)
    d_max_m: float = Field(65.0, gt=0)
    range_m: float | None = Field(500.0, gt=0, description="d2d CSI/signaling range; None: everyone")
    shadowing_db: float = Field(8.0, ge=0)
    carrier_hz: float = Field(2.4e9, gt=0)
    antenna_height_m: float = Field(1.5, gt=0)
    antenna_gain_db: float = 2.5
    tx_power_dbm: float = 40.0
    noise_dbm_hz: float = -169.0
    bandwidth_hz: float = Field(5e6, gt=0)
    noise_dbm: float | None = Field(None, description="total noise power sigma^2 [dBm]; None: noise_dbm_hz + "
                                    "10 log10(bandwidth_hz) (engnn layout default: -99)")
    wmmse_csi: Literal["full", "range"] = Field(
        "full", description="edges ue>bs: WMMSE with full CSI (tables' denominator) or within range_m")

    @model_validator(mode="before")
    @classmethod
    def _layout_defaults(cls, data: object) -> object:
        """The engnn / mpgnn_code layouts' defaults (:data:`ENGNN_DEFAULTS`, :data:`MPGNN_CODE_DEFAULTS`) for the
        keys the config leaves out."""
        if isinstance(data, dict) and data.get("layout") == "engnn":
            return ENGNN_DEFAULTS | data
        if isinstance(data, dict) and data.get("layout") == "mpgnn_code":
            return MPGNN_CODE_DEFAULTS | data
        return data

    def noise_w(self) -> float:
        """sigma^2 [W] of the geometric layouts: ``noise_dbm``, else noise_dbm_hz + 10 log10(bandwidth_hz)."""
        dbm = self.noise_dbm if self.noise_dbm is not None else self.noise_dbm_hz + 10.0 * math.log10(self.bandwidth_hz)
        return float(dbm_to_w(dbm))

    def cross_errors(self) -> list[tuple[str, str]]:
        errs = []
        if self.d_min_m > self.d_max_m:
            errs.append(("d_min_m", f"must be <= d_max_m = {self.d_max_m:g} (got {self.d_min_m:g})"))
        return errs

    def side_m(self) -> float:
        """The d2d field side A [m] (``field_m`` or the density-preserving 1000 sqrt(K / 50))."""
        return float(self.field_m) if self.field_m is not None else REF_FIELD_M * math.sqrt(self.n_pairs / REF_PAIRS)

    def resolved_weights(self) -> str:
        return self.weights or ("fixed" if self.layout == "gaussian" else "uniform")


# --------------------------------------------------------------------------------------------------
# channels
# --------------------------------------------------------------------------------------------------
@dataclass
class InterferenceChannels:
    """A batch of B interference-channel realizations.

    H (B, K, K, 1, N_t) complex [b, Rx i, Tx k]: the row h_ki^H; power_w (K,) P_max [W]; noise_w (K,)
    sigma_k^2 [W]; weights (B, K) float64; inrange (B, K, K) bool [Rx i, Tx k] (always True on the
    diagonal); tx_xy, rx_xy (B, K, 2) [m] or None.
    """

    H: Tensor
    power_w: Tensor
    noise_w: Tensor
    weights: Tensor
    inrange: Tensor
    tx_xy: Tensor | None = None
    rx_xy: Tensor | None = None
    #: edges ue>bs follow ``inrange`` ('range') or are all present ('full')
    wmmse_csi: str = "full"

    family: ClassVar[str] = FAMILY

    def __post_init__(self) -> None:
        if self.H.ndim != 5 or not self.H.is_complex() or self.H.shape[1] != self.H.shape[2] or self.H.shape[3] != 1:
            raise ValueError(f"H must be complex (B, K, K, 1, N_t), got {self.H.dtype} {tuple(self.H.shape)}")
        B, K = self.H.shape[:2]
        for name, shape in {"power_w": (K,), "noise_w": (K,), "weights": (B, K), "inrange": (B, K, K),
                            "tx_xy": (B, K, 2), "rx_xy": (B, K, 2)}.items():
            t = getattr(self, name)
            if t is not None and tuple(t.shape) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")

    @property
    def batch(self) -> int:
        return self.H.shape[0]

    @property
    def n_pairs(self) -> int:
        return self.H.shape[1]

    @property
    def tx_antennas(self) -> int:
        return self.H.shape[4]

    def subset(self, idx: slice | int) -> InterferenceChannels:
        """Realizations ``idx`` (an int keeps the batch dimension)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1)

        def sel(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[idx]

        return replace(self, H=self.H[idx], weights=self.weights[idx], inrange=self.inrange[idx],
                       tx_xy=sel(self.tx_xy), rx_xy=sel(self.rx_xy))


def p1411_pathloss_db(distance_m: Tensor, carrier_hz: float, h_tx_m: float, h_rx_m: float) -> Tensor:
    """ITU-R P.1411 LoS two-slope path loss [dB] (module docstring), any shape, d in m."""
    lam = SPEED_OF_LIGHT / carrier_hz
    r_bp = 4.0 * h_tx_m * h_rx_m / lam
    l_bp = abs(20.0 * math.log10(lam**2 / (8.0 * math.pi * h_tx_m * h_rx_m)))
    ratio = 20.0 * torch.log10(distance_m / r_bp)
    return l_bp + 6.0 + ratio + torch.where(distance_m > r_bp, ratio, torch.zeros_like(ratio))


def draw_rng(generator: torch.Generator) -> np.random.Generator:
    """A numpy PCG64 generator seeded by one draw of the (CPU) torch ``generator``: the same seed gives the
    same stream everywhere; numpy's ziggurat normals are ~5x faster than torch's float64 ones on a CPU."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device="cpu"))
    return np.random.Generator(np.random.PCG64(seed))


def generate_interference(options: InterferenceScenario, batch: int, generator: torch.Generator,
                          dtype: torch.dtype = torch.complex128) -> InterferenceChannels:
    """Draw ``batch`` realizations of ``options`` (module docstring: order of the random draws).

    Vectorized over (B, K, K): K = 1000 draws in well under 0.1 s per layout on one core.
    """
    if dtype not in (torch.complex64, torch.complex128):
        raise ValueError(f"dtype must be complex64 or complex128, got {dtype}")
    o = options
    B, K, Nt = int(batch), int(o.n_pairs), int(o.tx_antennas)
    dev = generator.device
    rng = draw_rng(generator)

    def uniform(*shape: int) -> Tensor:
        return torch.from_numpy(rng.random(shape)).to(dev)

    def normal(*shape: int) -> Tensor:
        return torch.from_numpy(rng.standard_normal(shape)).to(dev)

    tx_xy = rx_xy = None
    geometric = o.layout in ("d2d", "engnn", "mpgnn_code")
    if geometric:
        tx_xy = o.side_m() * uniform(B, K, 2)
        dist = o.d_min_m + (o.d_max_m - o.d_min_m) * uniform(B, K)
        ang = 2.0 * math.pi * uniform(B, K)
        rx_xy = tx_xy + torch.stack([dist * torch.cos(ang), dist * torch.sin(ang)], dim=-1)
    weights = uniform(B, K) if o.resolved_weights() == "uniform" else torch.ones(B, K, dtype=_F64, device=dev)
    eye = torch.eye(K, dtype=torch.bool, device=dev)
    H = torch.view_as_complex(normal(B, K, K, 1, Nt, 2))  # CN(0, 2): scaled below
    if geometric:
        d = torch.cdist(rx_xy, tx_xy)  # (B, K rx, K tx)
        pl = (engnn_pathloss_db(d) if o.layout == "engnn" else mpgnn_code_pathloss_db(d) if o.layout == "mpgnn_code"
              else p1411_pathloss_db(d, o.carrier_hz, o.antenna_height_m, o.antenna_height_m))
        gain_db = o.antenna_gain_db * eye - pl
        if o.layout == "mpgnn_code":  # one shadowing per antenna (the draw X enters as -X: same law)
            gain_db = gain_db[..., None] + o.shadowing_db * normal(B, K, K, Nt)
        else:
            gain_db = (gain_db + o.shadowing_db * normal(B, K, K))[..., None]
        amp = torch.exp(gain_db * (math.log(10.0) / 20.0) - 0.5 * math.log(2.0))  # sqrt(g s^2 / 2)
        H = H * amp[..., None, :]
        inrange = torch.ones_like(d, dtype=torch.bool) if o.range_m is None else (d <= o.range_m) | eye
        power, noise = dbm_to_w(o.tx_power_dbm), o.noise_w()
    else:
        H = H * math.sqrt(0.5)
        inrange = torch.ones(B, K, K, dtype=torch.bool, device=dev)
        power, noise = 1.0, 10.0 ** (-o.snr_db / 10.0)
    return InterferenceChannels(
        H=H.to(dtype), power_w=torch.full((K,), float(power), dtype=_F64, device=dev),
        noise_w=torch.full((K,), float(noise), dtype=_F64, device=dev), weights=weights, inrange=inrange,
        tx_xy=tx_xy, rx_xy=rx_xy, wmmse_csi=o.wmmse_csi)


# --------------------------------------------------------------------------------------------------
# symmetry (data augmentation of a fixed training set)
# --------------------------------------------------------------------------------------------------
def symmetry_draw(batch: int, n_pairs: int, tx_antennas: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One element of the problem's symmetry group per realization (:func:`apply_symmetry`): Rx phases
    e^{j phi_k}, phi_k ~ U[0, 2 pi) (B, K) complex128, and Tx unitaries Q_j ~ Haar on U(N_t) (B, K, N_t, N_t);
    drawn from ``generator`` (CPU) in this order."""
    phi = 2.0 * math.pi * torch.rand(batch, n_pairs, generator=generator, dtype=_F64, device="cpu")
    return torch.polar(torch.ones_like(phi), phi), haar_unitary(batch, n_pairs, tx_antennas, generator)


def apply_symmetry(ch: InterferenceChannels, rx_phase: Tensor, tx_unitary: Tensor) -> InterferenceChannels:
    """The channels rotated by a symmetry of problem (4): h_jk^H -> e^{j phi_k} h_jk^H Q_j for every Tx j and
    Rx k (H[b, k, j] is the row h_jk^H), i.e. every Rx k's channels get one common phase and every Tx j's
    channels one common unitary Q_j in U(N_t).

    Invariance: with the beamformers v_j -> Q_j^H v_j, every received amplitude h_jk^H v_j only gains the
    phase e^{j phi_k}, so every |h_jk^H v_j|^2, SINR_k, rate and ||v_j||^2 (the power constraint) is unchanged:
    a beamformer is feasible / optimal for the rotated channels iff its rotation back is for the original
    ones.  Path losses ||h_jk||, positions, weights, noise and ranges are untouched (they are the geometry);
    what changes is only the frame in which each node measures its channels, a nuisance the sum rate does
    not depend on.  rx_phase (B, K) complex, tx_unitary (B, K, N_t, N_t) complex (any precision: the result
    keeps ``ch.H``'s dtype and device)."""
    H = ch.H
    ph = rx_phase.to(H.device, H.dtype)[:, :, None, None, None]  # (B, K rx, 1, 1, 1)
    Q = tx_unitary.to(H.device, H.dtype)[:, None]  # (B, 1, K tx, N, N)
    return replace(ch, H=ph * (H @ Q))


def symmetry_transform(ch: InterferenceChannels, generator: torch.Generator) -> InterferenceChannels:
    """The family's ``symmetry`` augmentation (``train.augment: symmetry``): :func:`apply_symmetry` with a
    fresh draw of :func:`symmetry_draw` from ``generator``, independently per realization."""
    phase, Q = symmetry_draw(ch.batch, ch.n_pairs, ch.tx_antennas, generator)
    return apply_symmetry(ch, phase, Q)


def subnetwork_size(n_pairs: int, generator: torch.Generator) -> int:
    """K' of the ``subnetwork`` augmentation: uniform on the integers ceil(K/2) .. K (K = ``n_pairs``), one
    draw from ``generator`` (CPU)."""
    low = (n_pairs + 1) // 2
    return int(torch.randint(low, n_pairs + 1, (1,), generator=generator, device="cpu"))


def select_pairs(ch: InterferenceChannels, keep: Tensor) -> InterferenceChannels:
    """The sub-network of every realization made of the pairs ``keep`` (1-D long tensor of distinct pair
    indices, in the order to keep): H[b, i, k] -> H[b, keep[i], keep[k]] (B, K', K', 1, N_t), the same for
    ``inrange``; weights, power_w, noise_w and positions restricted to ``keep``.  A sub-network of a layout is a
    layout of the same field with fewer pairs: every kept link keeps its channel, the dropped pairs are silent
    (no signal, no interference) — problem (4) over the kept pairs."""
    keep = keep.to(dtype=torch.long)

    def sel(t: Tensor | None, dims: int = 1) -> Tensor | None:
        if t is None:
            return None
        k = keep.to(t.device)
        return t[:, k][:, :, k] if dims == 2 else t[:, k]

    return replace(ch, H=sel(ch.H, 2), inrange=sel(ch.inrange, 2), weights=sel(ch.weights),
                   power_w=ch.power_w[keep.to(ch.power_w.device)], noise_w=ch.noise_w[keep.to(ch.noise_w.device)],
                   tx_xy=sel(ch.tx_xy), rx_xy=sel(ch.rx_xy))


def subnetwork_transform(ch: InterferenceChannels, generator: torch.Generator) -> InterferenceChannels:
    """The family's ``subnetwork`` augmentation (``train.augment: subnetwork``): every realization of the
    minibatch is cut to the same random K' pairs (:func:`subnetwork_size`: K' uniform on ceil(K/2) .. K, then
    K' of the K pair indices uniformly without replacement, sorted; both drawn from ``generator``, so a
    minibatch is a function of its seed).  One K' and one index set per minibatch keeps the tensors batched;
    since the pairs of a layout are exchangeable (i.i.d. placements), every realization is still a uniformly
    random sub-network of its layout.  Unlike ``symmetry`` this makes new graphs (new interference
    environments for every kept link) out of a fixed training set."""
    K = ch.n_pairs
    k_keep = subnetwork_size(K, generator)
    keep = torch.randperm(K, generator=generator, device="cpu")[:k_keep].sort().values
    return select_pairs(ch, keep)


# --------------------------------------------------------------------------------------------------
# air
# --------------------------------------------------------------------------------------------------
class InterferenceAir(MulticellAir):
    """The multicell air with one UE per BS (assign = 0..K-1), evaluated in bit/s/Hz (problem (4)).

    ``weights`` may be (B, K) (per-realization weights).  Decisions: V (B, K, N_t, 1) beamformers
    (power control: sqrt(p_k) with N_t = 1), ordered by pair.
    """

    unit = UNIT

    def rates(self, V: Tensor) -> Tensor:
        """Per-pair rates (B, K) in nat/Hz: ln(1 + SINR_k) with SINR_k of problem (4).

        The SISO/MISO case of the multicell rate ln det J - ln det Z computed without its subtraction
        J - |h_kk^H v_k|^2 (which loses the interference to rounding at the D2D layouts' ~100 dB SNRs in
        single precision): received powers |h_jk^H v_j|^2 (B, K rx, K tx), interference = their sum over
        j != k plus sigma_k^2."""
        amp = (self.H[:, :, :, 0, :] * V[:, None, :, :, 0]).sum(-1)  # (B, K rx, K tx)
        pw = amp.real ** 2 + amp.imag ** 2
        own = pw.diagonal(dim1=1, dim2=2)
        eye = torch.eye(pw.shape[1], dtype=torch.bool, device=pw.device)
        interf = pw.masked_fill(eye, 0.0).sum(-1) + self.noise_w.to(pw.dtype)
        return torch.log1p(own / interf)

    def evaluate(self, V: Tensor) -> tuple[Tensor, Tensor]:
        """(WSR (B,), per-pair rate (B, K)) in bit/s/Hz (:meth:`rates` over ln 2)."""
        r = self.rates(V) / LN2
        return (r * self.weights.to(r.dtype)).sum(-1), r

    def repeat(self, n: int) -> InterferenceAir:
        if n == 1:
            return self
        w = self.weights.repeat(n, 1) if self.weights.dim() == 2 else self.weights
        return InterferenceAir(self.H.repeat(n, 1, 1, 1, 1), self.assign, self.noise_w, w, self.power_w)


# --------------------------------------------------------------------------------------------------
# network
# --------------------------------------------------------------------------------------------------
def _union_edges(present: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """present (B, n_dst, n_src) bool -> (src (E,), dst (E,), mask (B, E)) of the pairs present in some
    realization, dst-major (edge order: by receiver, then sender)."""
    any_b = present.any(0)
    dst, src = torch.nonzero(any_b, as_tuple=True)
    return src, dst, present[:, dst, src]


def interference_network(ch: InterferenceChannels, faults: FaultModel | None = None,
                         seed: int = 0) -> tuple[Network, InterferenceAir]:
    """Network and air of a batch (module docstring).  Missing links (faults) remove CSI/signaling edges
    (never a pair's own link); stale / noisy CSI (``faults.stale_csi``, ``faults.csi_error``) ages the
    channel the air evaluates and perturbs what every node holds (``H``, ``h_own``, ``H_rx``,
    ``direct_gain``), per link h_jk (1 x N_t) with its own mean gain (:meth:`dsim.faults.FaultModel.csi`)."""
    faults = faults or FaultModel()
    H, H_air = faults.csi(ch.H)  # stale / noisy CSI (dsim.faults): the nodes hold H, the air evaluates H_air
    B, K = H.shape[:2]
    Nt = H.shape[4]
    real = torch.float64 if H.dtype == torch.complex128 else torch.float32
    dev = H.device
    eye = torch.eye(K, dtype=torch.bool, device=dev).expand(B, K, K)
    serving = eye.clone()
    link = faults.link_present((B, K, K), serving)  # [rx, tx]
    inr = ch.inrange.to(torch.bool)
    csi = (inr if ch.wmmse_csi == "range" else torch.ones_like(inr)) & link  # [rx i, tx k]
    ue_src, bs_dst, ue_mask = _union_edges(csi.transpose(1, 2))  # present [tx k (dst), rx i (src)]
    pair = inr & link & ~eye  # [rx i, tx j]: pair j -> pair i
    p_src, p_dst, p_mask = _union_edges(pair)
    ar = torch.arange(K, device=dev)
    edges = {
        "ue>bs": EdgeSet("ue>bs", "ue", "bs", "ul", ue_src, bs_dst, ue_mask),
        "bs>ue": EdgeSet("bs>ue", "bs", "ue", "dl", bs_dst.clone(), ue_src.clone(), ue_mask.clone()),
        "ue>bs:serve": EdgeSet("ue>bs:serve", "ue", "bs", "ul", ar.clone(), ar.clone(),
                               torch.ones(B, K, dtype=torch.bool, device=dev)),
        "pair": EdgeSet("pair", "bs", "bs", "d2d", p_src, p_dst, p_mask),
    }
    csi_bs = csi.transpose(1, 2)  # (B, K tx, K rx)
    Hb = H.transpose(1, 2) * csi_bs[..., None, None].to(H.dtype)  # (B, K, I, 1, Nt)
    w = ch.weights.to(real)
    nz = ch.noise_w.to(real)
    pw = ch.power_w.to(real)
    H_rx = H[..., 0, :].conj() * (inr & link)[..., None].to(H.dtype)  # h_jk (column) at Rx k: (B, K, K, Nt)
    diag = H.diagonal(dim1=1, dim2=2)  # (B, 1, Nt, K)
    local = {
        "bs": {"H": Hb, "csi": csi_bs, "alpha": w[:, None, :].expand(B, K, K).clone(),
               "noise": nz.reshape(1, 1, K).expand(B, K, K).clone(), "power": pw.reshape(1, K).expand(B, K).clone(),
               "h_own": diag[:, 0].permute(0, 2, 1).conj().contiguous(), "w": w.clone(),
               "sigma2": nz.reshape(1, K).expand(B, K).clone(), "p_max": pw.reshape(1, K).expand(B, K).clone(),
               "H_rx": H_rx},
        "ue": {"alpha": w.clone(), "noise": nz.reshape(1, K).expand(B, K).clone(),
               "direct_gain": (diag[:, 0].abs() ** 2).sum(-2)},
    }
    info = {"family": FAMILY, "batch": B, "n_bs": K, "n_ue": K, "n_pairs": K, "bs_antennas": Nt, "ue_antennas": 1,
            "seed": seed, "unit": UNIT, "dtype": H.dtype, "real_dtype": real}
    net = Network(FAMILY, B, {"bs": K, "ue": K}, edges, local, info)
    air = InterferenceAir(H_air, ar.clone(), nz, w, pw)
    return net, air


# --------------------------------------------------------------------------------------------------
# channel file
# --------------------------------------------------------------------------------------------------
REQUIRED = ("H", "assign", "power_w", "noise_w", "weights")
OPTIONAL = ("inrange", "family", "bs_xy", "ue_xy")


def save_interference(path: str | Path, ch: InterferenceChannels) -> None:
    """Write ``ch`` in the multicell file format (module docstring), ``family`` = 'interference'."""
    K = ch.n_pairs
    arrays = {"family": np.array(FAMILY), "H": ch.H.detach().cpu().numpy(), "assign": np.arange(K, dtype=np.int64),
              "power_w": ch.power_w.cpu().numpy(), "noise_w": ch.noise_w.cpu().numpy(),
              "weights": ch.weights.cpu().numpy(), "inrange": ch.inrange.cpu().numpy().astype(bool)}
    if ch.tx_xy is not None:
        arrays["bs_xy"] = ch.tx_xy.cpu().numpy()
    if ch.rx_xy is not None:
        arrays["ue_xy"] = ch.rx_xy.cpu().numpy()
    write_npz(path, arrays)


def load_interference(path: str | Path, dtype: torch.dtype = torch.complex128) -> InterferenceChannels:
    """Read an interference channel file -> :class:`InterferenceChannels` (WMMSE edges: full CSI).

    Raises :class:`ChannelFileError` naming the file and the key for any defect."""
    if dtype not in (torch.complex64, torch.complex128):
        raise ValueError(f"dtype must be complex64 or complex128, got {dtype}")
    path = Path(path)
    data = read_family_file(path, FAMILY, REQUIRED, OPTIONAL)
    H = data["H"]
    if H.dtype.kind != "c" or H.ndim != 5 or H.shape[1] != H.shape[2] or H.shape[3] != 1 or min(H.shape) < 1:
        raise ChannelFileError(f"{path}: key 'H': expected a complex array of shape (B, K, K, 1, N_t), "
                               f"found {found(H)}")
    B, K = H.shape[:2]
    check_array(path, "H", H, "c", "a complex array", H.shape, "(B, K, K, 1, N_t)")
    assign = data["assign"]
    check_array(path, "assign", assign, "iu", "an integer array", (K,), "(K,)")
    if not np.array_equal(assign, np.arange(K)):
        raise ChannelFileError(f"{path}: key 'assign': expected 0..{K - 1} (pair k's Tx serves Rx k), "
                               f"found {assign.tolist()[:8]}")
    for key in ("power_w", "noise_w"):
        a = data[key]
        check_array(path, key, a, "fiu", "a real array", (K,), "(K,)")
        if not (a > 0).all():
            raise ChannelFileError(f"{path}: key {key!r}: expected values > 0 W, found {a[a <= 0].tolist()[:8]}")
    wts = data["weights"]
    shape = (K,) if wts.ndim == 1 else (B, K)
    check_array(path, "weights", wts, "fiu", "a real array", shape, "(K,) or (B, K)")
    if not (wts >= 0).all():
        raise ChannelFileError(f"{path}: key 'weights': expected values >= 0, found {wts[wts < 0].tolist()[:8]}")
    weights = torch.as_tensor(np.broadcast_to(wts, (B, K)).copy(), device="cpu").to(_F64)
    if "inrange" in data:
        check_array(path, "inrange", data["inrange"], "b", "a bool array", (B, K, K), "(B, K, K)")
        inrange = torch.as_tensor(data["inrange"], device="cpu") | torch.eye(K, dtype=torch.bool, device="cpu")
    else:
        inrange = torch.ones(B, K, K, dtype=torch.bool, device="cpu")
    xy = {}
    for key in ("bs_xy", "ue_xy"):
        if key in data:
            check_array(path, key, data[key], "fiu", "a real array [m]", (B, K, 2), "(B, K, 2)")
            xy[key] = torch.as_tensor(data[key], device="cpu").to(_F64)
    return InterferenceChannels(H=torch.as_tensor(H, device="cpu").to(dtype),
                                power_w=torch.as_tensor(data["power_w"], device="cpu").to(_F64),
                                noise_w=torch.as_tensor(data["noise_w"], device="cpu").to(_F64),
                                weights=weights, inrange=inrange, tx_xy=xy.get("bs_xy"), rx_xy=xy.get("ue_xy"))


register_family(FamilySpec(
    name=FAMILY, options=InterferenceScenario, generate=generate_interference, build=interference_network,
    save=save_interference, load=load_interference, file_keys=REQUIRED + ("family",), roles=("bs", "ue"),
    links=(LinkClass("ul", 1e-3, 1e6, "Rx -> Tx signaling"),
           LinkClass("d2d", 1e-3, 1e6, "pair -> pair signaling (GNN node states)"),
           LinkClass("dl", 1e-3, 1e6, "Tx -> Rx signaling (ENGNN node and edge states)")),
    unit=UNIT, summary="interference channel: K Tx-Rx pairs (N_t antennas), layouts gaussian | d2d | engnn",
    augment={"symmetry": symmetry_transform, "subnetwork": subnetwork_transform},
))
