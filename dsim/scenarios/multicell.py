"""Multicell MU-MIMO downlink family (GCN-WMMSE paper Sec. II-A and Sec. IV / Tab. II; DESIGN §7).

K BSs with M antennas serve I UEs with N antennas; UE i is served by BS ``assign[i]``.  The channel
from BS k to UE i is H_ik (N x M) with i.i.d. CN(0, 10^(-PL_ik/10)) entries (Rayleigh fading, no
shadowing), PL_ik the path loss in dB at the BS-UE distance in metres:

* ``pico``      PL = 27.9 + 36.7 log10(d)        (the paper's picocell model, DESIGN §7)
* ``macro``     PL = 15.3 + 37.6 log10(d)        (3GPP macro, 128.1 + 37.6 log10(d / km))
* ``exponent``  PL = pathloss_ref_db + 10 * pathloss_exponent * log10(d)

Layouts:

* ``triangle`` (Tab. II): 3 BSs at (0, 0), (d, 0), (d/2, sqrt(3) d/2).  The UEs of BS k are uniform over
  the 60-degree sector [2 pi k/3, 2 pi k/3 + pi/3] of radius R = d/sqrt(3) around BS k -- the sextant
  that faces the triangle's interior: its bisector 2 pi k/3 + pi/6 points at the centroid
  (d/2, d/(2 sqrt 3)), which lies exactly at distance R from every BS -- and at least r0 =
  ``min_distance_m`` from it: r = R sqrt(u (1 - r0^2/R^2) + r0^2/R^2), u ~ U(0, 1), i.e. uniform in
  area (CDF (r^2 - r0^2) / (R^2 - r0^2)).
* ``hex``: ``n_bs`` sites of a hexagonal grid with inter-site distance D (site 0 at the origin, then
  ring 1 (6 sites), ring 2 (12 sites), ..., each ring counter-clockwise from its site on the +x axis).
  Each UE is uniform in its own cell's hexagon (apothem D/2, circumradius D/sqrt(3)) at least r0 from
  its BS.  n_bs = 1 is single-cell MU-MIMO; ues_per_bs = 1 an interference channel.
* ``iid`` (Model-GNN paper Sec. IV-A): no geometry; every entry of every H_ik is i.i.d. CN(0, 1) (no path
  loss, no positions).  With ``snr_db`` set, sigma^2 = P_k / 10^(snr_db/10) (SNR = P/sigma^2), else
  ``noise_dbm``.
* ``disk`` (ICGNN paper Sec. V-A): ``n_bs`` sites of the hex grid (one BS at the origin for n_bs = 1),
  each UE in the disk of radius ``disk_radius_m`` around its BS at least r0 from it, at a uniform angle and
  a distance per ``user_distribution``: ``area`` (default) uniform in area, CDF (r^2 - r0^2) / (R^2 - r0^2)
  (:func:`annulus_radius`); ``radius`` uniform in distance, CDF (r - r0) / (R - r0) (:func:`uniform_radius`;
  denser near the BS, density proportional to 1/r per unit area).  Path loss per ``pathloss`` (ICGNN:
  exponent, 30.5 dB + 36.7 log10 d).

* ``field`` (ENGNN paper Sec. IV, SPECS §4): ``n_bs`` BSs uniform in a ``field_m`` x ``field_m`` square,
  pairwise at least ``bs_separation_m`` apart (:func:`field_sites`, sequential rejection).  With ``serve:
  cell`` each UE is in the annulus ``min_distance_m`` <= r <= ``disk_radius_m`` around its BS, uniform in area
  (or in distance with ``user_distribution: radius``) (Ex2: 50-250 m, the paper's Sec. IV-B); with ``serve:
  all`` (cooperative beamforming, Ex3: every BS serves every UE) the ``n_ue`` UEs are uniform in the square,
  their BS distances floored at ``min_distance_m``.

Cooperative option ``serve: all`` (layout ``field`` only, single-antenna UEs, ENGNN paper (13)-(15)): UE i
is served by every BS; the decision is one beamformer v_ki (M x 1) per (UE i, BS k) pair on the ``ue>bs``
edges (edge id i*K + k), the air is :class:`CoopAir` (rate (14), per-BS power (15b)).  ``assign`` is then
i mod K (only a label).

Hotspot option (any geometric layout; the analogue of DeepMIMO S4b in GCN-WMMSE Sec. IV-D): with
``hotspot_radius_m`` set, the first round(``hotspot_fraction`` * ues_per_bs) UEs of every BS are placed
uniformly (in area) in the disk of that radius around ``hotspot_xy_m`` instead (still served by their BS);
their BS distances are floored at ``min_distance_m``.

UE i = k * ues_per_bs + j is the j-th UE of BS k.  Power budgets P_k and noise powers sigma_i^2 (per
receive antenna) are in W, positions in m.  Rates on these channels are in nat/Hz.

Network (:func:`multicell_network`): roles ``bs`` (K agents) and ``ue`` (I agents); edge sets on link
class ``ul``:

* ``ue>bs``       -- every (UE i, BS k) pair, edge id ``i*K + k``; present where BS k has CSI of UE i
  (range cut-off, minus missing links; the serving pair is always present).
* ``ue>bs:serve`` -- (UE i, serving BS a(i)), edge id ``i``.
* ``bs>ue`` (``dl``) -- the reverse of ``ue>bs`` (same pairs, ids and masks): BS -> UE signaling (ENGNN's
  Tx -> Rx messages, ``agents.engnn_multicell``).

and on link class ``bh`` (:func:`backhaul_edges`):

* ``bs>bs``       -- every ordered pair (BS k, BS k') with k != k', edge id ``k*(K-1) + k' - [k' > k]``; always
  present (no edge for K = 1).  Coordinated protocols exchange over it (e.g. multi-cell Model-GNN).

Local data (only what the agent may know):

* ``bs``: ``H`` (B, K, I, N, M) channels of the UEs in range (zeros elsewhere, by reciprocity from
  uplink pilots), ``csi`` (B, K, I) bool, ``alpha`` (B, K, I) WSR weights, ``noise`` (B, K, I) W,
  ``power`` (B, K) W.
* ``ue``: ``alpha`` (B, I), ``noise`` (B, I) W.

Air (:class:`MulticellAir`): measurement ``dl_pilots`` (the UEs' received covariance and effective
channel under precoded pilots), evaluation by the WSR in nat/Hz, per-BS power check.

Channel file (``.npz``, :func:`save_multicell` / :func:`load_multicell`; B realizations, I UEs, K BSs,
N UE antennas, M BS antennas):

=========  ==========================  ==========================================================
key        dtype, shape                meaning
=========  ==========================  ==========================================================
H          complex (B, I, K, N, M)     channel from BS k to UE i (finite)
assign     int (I,)                    serving BS of UE i, in [0, K)
power_w    real (K,)                   BS power budget P_k [W], > 0
noise_w    real (I,)                   noise power sigma_i^2 per receive antenna [W], > 0
weights    real (I,)                   WSR weights alpha_i, > 0
inrange    bool (B, I, K), optional    BS k has CSI of / a link with UE i (default all True; the
                                       serving pair must be True)
family     str (), optional            'multicell' (files without it are multicell)
bs_xy      real (B, K, 2), optional    BS positions [m]
ue_xy      real (B, I, 2), optional    UE positions [m]
serve_all  bool (), optional           every BS serves every UE (cooperative; default False)
=========  ==========================  ==========================================================

"real" means a floating or integer (not bool, not complex) array.  Any other key, a missing key, a wrong
dtype or shape, a NaN / infinite or out-of-range value raises
:class:`dsim.scenarios.channel_file.ChannelFileError` naming the file, the key, what was expected and
what was found.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, Literal, get_args

import numpy as np
import torch
from pydantic import ConfigDict, Field

from dsim.air import Air
from dsim.faults import FaultModel
from dsim.metrics import weighted_sum_rate
from dsim.network import EdgeSet, Network
from dsim.protocol import group_slots
from dsim.registry import CrossChecked, FamilySpec, LinkClass, register_family
from dsim.scenarios.channel_file import ChannelFileError, check_array, found, read_family_file, write_npz
from dsim.units import DBM_LIMIT, dbm_to_w, log_distance_db

Tensor = torch.Tensor

FAMILY = "multicell"
UNIT = "nat/Hz"
Pathloss = Literal["pico", "macro", "exponent"]
PATHLOSS_MODELS: tuple[str, ...] = get_args(Pathloss)

_F64 = torch.float64


# --------------------------------------------------------------------------------------------------
# options (the YAML ``scenario:`` mapping; the one place the family's defaults live)
# --------------------------------------------------------------------------------------------------
class MulticellScenario(CrossChecked):
    """Multicell MU-MIMO family options (DESIGN §7; defaults = GCN-WMMSE Tab. II).

    Distances in m, powers in dBm (P_k per BS, sigma^2 per UE antenna), path loss in dB; ``range_m``:
    BS k has CSI of / a link with UE i when their distance is at most range_m (or k serves i); None =
    every BS hears every UE.
    """

    model_config = ConfigDict(extra="forbid")
    family: Literal["multicell"] = "multicell"
    layout: Literal["triangle", "hex", "iid", "disk", "field"] = "triangle"
    bs_distance_m: float = Field(200.0, gt=0)
    n_bs: int = Field(3, ge=1)
    ues_per_bs: int = Field(4, ge=1)
    bs_antennas: int = Field(12, ge=1)
    ue_antennas: int = Field(2, ge=1)
    bs_power_dbm: float = Field(30.0, ge=-DBM_LIMIT, le=DBM_LIMIT)
    noise_dbm: float = Field(-100.0, ge=-DBM_LIMIT, le=DBM_LIMIT)
    pathloss: Pathloss = "pico"
    pathloss_exponent: float = Field(3.0, gt=0)
    pathloss_ref_db: float = Field(30.0, allow_inf_nan=False)
    hotspot_radius_m: float | None = Field(None, gt=0, description="UEs clustered in a disk of this radius [m]")
    hotspot_xy_m: tuple[float, float] = Field((100.0, 57.735), description="hotspot centre [m] (default: the "
                                              "triangle's centroid for d = 200 m)")
    hotspot_fraction: float = Field(1.0, gt=0, le=1, description="share of each BS's UEs in the hotspot")
    min_distance_m: float = Field(10.0, gt=0)
    range_m: float | None = Field(None, gt=0)
    ue_weight: float = Field(1.0, gt=0, allow_inf_nan=False)
    snr_db: float | None = Field(None, allow_inf_nan=False,
                                 description="SNR = P/sigma^2 [dB]; overrides noise_dbm")
    disk_radius_m: float = Field(500.0, gt=0, description="layouts disk / field: cell radius [m]")
    user_distribution: Literal["area", "radius"] = Field(
        "area", description="layouts disk / field (serve cell): UE distance from its BS uniform in area (CDF "
        "(r^2 - r0^2)/(R^2 - r0^2)) or uniform in radius (CDF (r - r0)/(R - r0)) on [min_distance_m, disk_radius_m]")
    field_m: float = Field(2000.0, gt=0, description="layout field: side of the square field [m]")
    bs_separation_m: float = Field(500.0, ge=0, description="layout field: least BS-BS distance [m]")
    serve: Literal["cell", "all"] = Field("cell", description="cell: each UE served by its own BS; all: every "
                                          "BS serves every UE (cooperative beamforming, layout field)")
    n_ue: int | None = Field(None, ge=1, description="serve all: number of UEs (default n_bs * ues_per_bs)")

    def cross_errors(self) -> list[tuple[str, str]]:
        errs = []
        if self.serve == "all" or self.layout == "field" or self.n_ue is not None:
            return _field_errors(self)
        if self.layout in ("iid", "disk"):
            return _iid_disk_errors(self)
        if self.user_distribution != "area":
            errs.append(("user_distribution", f"layout {self.layout!r} places UEs uniformly in area (got "
                                              f"{self.user_distribution!r}); allowed: area ('radius' only with "
                                              "layouts disk / field)"))
        if self.layout == "triangle" and self.n_bs != 3:
            errs.append(("n_bs", f"layout 'triangle' has exactly 3 BSs (got {self.n_bs}); allowed: 3 "
                                 "(use layout: hex for other counts)"))
        triangle = self.layout == "triangle"
        limit = self.bs_distance_m / math.sqrt(3.0) if triangle else self.bs_distance_m / 2
        if not self.min_distance_m < limit:
            what = "sector radius d/sqrt(3)" if triangle else "hex apothem d/2"
            errs.append(("min_distance_m", f"must be below the {what} = {limit:.6g} m (d = bs_distance_m) "
                                           f"(got {self.min_distance_m:g})"))
        return errs


# --------------------------------------------------------------------------------------------------
# channels
# --------------------------------------------------------------------------------------------------
@dataclass
class MulticellChannels:
    """One batch of multicell MU-MIMO scenario realizations (B realizations side by side).

    H (B, I, K, N, M) complex: channel from BS k to UE i; assign (I,) int64 serving BS; power_w (K,)
    float64 BS power budget P_k [W]; noise_w (I,) float64 noise power sigma_i^2 per antenna [W];
    weights (I,) float64 WSR weights alpha_i; inrange (B, I, K) bool: BS k has CSI of / a signaling
    link with UE i (always True for the serving BS); bs_xy (B, K, 2), ue_xy (B, I, 2) positions [m]
    or None (e.g. channels read from a file without positions); serve_all: every BS serves every UE
    (cooperative beamforming, :class:`CoopAir`).
    """

    H: Tensor
    assign: Tensor
    power_w: Tensor
    noise_w: Tensor
    weights: Tensor
    inrange: Tensor
    bs_xy: Tensor | None = None
    ue_xy: Tensor | None = None
    serve_all: bool = False

    family: ClassVar[str] = FAMILY

    def __post_init__(self) -> None:
        if self.H.ndim != 5 or not self.H.is_complex():
            raise ValueError(f"H must be complex (B, I, K, N, M), got {self.H.dtype} {tuple(self.H.shape)}")
        B, I, K = self.H.shape[:3]
        expect = {"assign": (I,), "power_w": (K,), "noise_w": (I,), "weights": (I,), "inrange": (B, I, K),
                  "bs_xy": (B, K, 2), "ue_xy": (B, I, 2)}
        for name, shape in expect.items():
            t = getattr(self, name)
            if t is not None and tuple(t.shape) != shape:
                raise ValueError(f"{name} must have shape {shape} for H of shape {tuple(self.H.shape)}, "
                                 f"got {tuple(t.shape)}")

    @property
    def batch(self) -> int:
        return self.H.shape[0]

    @property
    def n_ue(self) -> int:
        return self.H.shape[1]

    @property
    def n_bs(self) -> int:
        return self.H.shape[2]

    @property
    def ue_antennas(self) -> int:
        return self.H.shape[3]

    @property
    def bs_antennas(self) -> int:
        return self.H.shape[4]

    @property
    def dtype(self) -> torch.dtype:
        return self.H.dtype

    def to(self, dtype: torch.dtype | None = None,
           device: torch.device | str | None = None) -> MulticellChannels:
        """A copy with H cast to the complex ``dtype`` and all tensors moved to ``device``.

        The real tensors keep their dtypes (float64 / int64 / bool)."""
        if dtype is not None and dtype not in (torch.complex64, torch.complex128):
            raise ValueError(f"dtype must be complex64 or complex128, got {dtype}")

        def mv(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device=device)

        return replace(self, H=self.H.to(device=device, dtype=dtype or self.H.dtype), assign=mv(self.assign),
                       power_w=mv(self.power_w), noise_w=mv(self.noise_w), weights=mv(self.weights),
                       inrange=mv(self.inrange), bs_xy=mv(self.bs_xy), ue_xy=mv(self.ue_xy))

    def subset(self, idx: Tensor | Sequence[int] | slice | int) -> MulticellChannels:
        """The realizations ``idx`` of the batch (an int keeps the batch dimension, size 1)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1) if idx != -1 else slice(-1, None)
        elif not isinstance(idx, slice):
            idx = torch.as_tensor(idx, dtype=torch.long, device=self.H.device)

        def sel(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[idx]

        return replace(self, H=self.H[idx], inrange=self.inrange[idx], bs_xy=sel(self.bs_xy),
                       ue_xy=sel(self.ue_xy))


# --------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------
def pathloss_db(distance_m: Tensor, model: str, pathloss_exponent: float, pathloss_ref_db: float) -> Tensor:
    """Path loss PL [dB] at distance ``distance_m`` [m] (any shape) under ``model`` (module docstring);
    ``pathloss_exponent`` and ``pathloss_ref_db`` are used by the model ``exponent``."""
    if model == "pico":
        return log_distance_db(distance_m, 27.9, 36.7)
    if model == "macro":
        return log_distance_db(distance_m, 15.3, 37.6)
    if model == "exponent":
        return log_distance_db(distance_m, pathloss_ref_db, 10.0 * pathloss_exponent)
    raise ValueError(f"pathloss must be one of {', '.join(PATHLOSS_MODELS)}, got {model!r}")


def annulus_radius(u: Tensor, r_min: float, r_max: float) -> Tensor:
    """Radius uniform in area on [r_min, r_max] from u ~ U(0, 1) (any shape).

    r = r_max sqrt(u (1 - q) + q), q = (r_min / r_max)^2 -- DESIGN §7's r = R sqrt(u (1 - 100/R^2) + 100/R^2)
    for r_min = 10 m.  CDF: (r^2 - r_min^2) / (r_max^2 - r_min^2).
    """
    q = (r_min / r_max) ** 2
    return r_max * torch.sqrt(u * (1.0 - q) + q)


def uniform_radius(u: Tensor, r_min: float, r_max: float) -> Tensor:
    """Radius uniform in distance on [r_min, r_max] from u ~ U(0, 1) (any shape): r = r_min + u (r_max - r_min).

    CDF (r - r_min) / (r_max - r_min); with a uniform angle the density per unit area is proportional to 1/r
    (users crowd the BS), unlike :func:`annulus_radius`.
    """
    return r_min + u * (r_max - r_min)


def triangle_sites(bs_distance_m: float, device: torch.device | str = "cpu") -> Tensor:
    """BS positions (3, 2) [m] of the triangle layout: (0, 0), (d, 0), (d/2, sqrt(3) d/2)."""
    d = float(bs_distance_m)
    return torch.tensor([[0.0, 0.0], [d, 0.0], [d / 2, math.sqrt(3.0) * d / 2]], dtype=_F64, device=device)


def hex_sites(n_sites: int, isd_m: float, device: torch.device | str = "cpu") -> Tensor:
    """First ``n_sites`` sites (n_sites, 2) [m] of a hexagonal grid with inter-site distance ``isd_m``.

    Site 0 at the origin; ring n (6n sites) holds n e_j + t e_{j+2} for j = 0..5, t = 0..n-1, with
    e_j = isd (cos(j pi/3), sin(j pi/3)): counter-clockwise from (n isd, 0)."""
    ang = torch.arange(6, dtype=_F64, device=device) * (math.pi / 3)
    e = isd_m * torch.stack([torch.cos(ang), torch.sin(ang)], dim=-1)  # (6, 2)
    rings, count, n = [torch.zeros(1, 2, dtype=_F64, device=device)], 1, 1
    while count < n_sites:
        j = torch.arange(6, device=device).repeat_interleave(n)
        t = torch.arange(n, dtype=_F64, device=device).repeat(6)
        rings.append(n * e[j] + t[:, None] * e[(j + 2) % 6])
        count, n = count + 6 * n, n + 1
    return torch.cat(rings)[:n_sites]


def in_hexagon(xy: Tensor, apothem: float) -> Tensor:
    """Whether offsets ``xy`` (..., 2) lie inside the hexagon of ``apothem`` centred at 0 whose edges face
    the directions 0, 60, ..., 300 degrees (the hex-grid cell of :func:`hex_sites` with isd = 2 apothem)."""
    x, y = xy[..., 0], xy[..., 1]
    s = math.sqrt(3.0) / 2
    return (x.abs() <= apothem) & ((0.5 * x + s * y).abs() <= apothem) & ((-0.5 * x + s * y).abs() <= apothem)


def hotspot_positions(ue_xy: Tensor, ues_per_bs: int, options: MulticellScenario, gen: torch.Generator) -> Tensor:
    """UE positions (B, I, 2) with the hotspot UEs (the first round(hotspot_fraction * ues_per_bs) of every
    BS) moved uniformly in area into the disk of radius ``hotspot_radius_m`` around ``hotspot_xy_m``.
    Draws u_r (B, I) then u_phi (B, I) (for every UE, so the draws do not depend on the fraction)."""
    B, I, _ = ue_xy.shape
    dev = gen.device
    u_r = torch.rand(B, I, generator=gen, dtype=_F64, device=dev)
    u_phi = torch.rand(B, I, generator=gen, dtype=_F64, device=dev)
    r = float(options.hotspot_radius_m) * torch.sqrt(u_r)
    phi = 2 * math.pi * u_phi
    centre = torch.tensor(options.hotspot_xy_m, dtype=_F64, device=dev)
    spot = centre + torch.stack([r * torch.cos(phi), r * torch.sin(phi)], dim=-1)
    inside = torch.arange(I, device=dev) % ues_per_bs < round(options.hotspot_fraction * ues_per_bs)
    return torch.where(inside[None, :, None], spot, ue_xy.to(dev))


def _triangle_offsets(B: int, n_bs: int, ues_per_bs: int, d: float, r0: float,
                      gen: torch.Generator) -> Tensor:
    """UE offsets from their BS (B, I, 2): uniform on the interior-facing sextant, r0 <= r <= d/sqrt(3).

    Draws u_r (B, I) then u_phi (B, I)."""
    I = n_bs * ues_per_bs
    dev = gen.device
    u_r = torch.rand(B, I, generator=gen, dtype=_F64, device=dev)
    u_phi = torch.rand(B, I, generator=gen, dtype=_F64, device=dev)
    r = annulus_radius(u_r, r0, d / math.sqrt(3.0))
    start = (2 * math.pi / 3) * torch.arange(n_bs, dtype=_F64, device=dev).repeat_interleave(ues_per_bs)  # (I,)
    phi = start + (math.pi / 3) * u_phi
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi)], dim=-1)


def _hex_offsets(B: int, I: int, isd: float, r0: float, gen: torch.Generator,
                 miss_prob: float = 1e-9) -> Tensor:
    """UE offsets from their BS (B, I, 2): uniform in the hexagon cell minus the disk of radius r0.

    Rejection sampling, batched: each of the B*I slots draws C candidates uniform on the annulus
    r0 <= r <= isd/sqrt(3) (u_r (m, C) then u_phi (m, C)) and keeps its first one inside the hexagon; C
    is set so that a slot finds none with probability <= ``miss_prob``; the m slots without one draw
    again (same rule), until all are filled.  Conditioning a uniform point of the annulus on the hexagon
    makes it uniform on hexagon minus disk."""
    apothem, rc = isd / 2, isd / math.sqrt(3.0)
    accept = (math.sqrt(3.0) / 2 * isd ** 2 - math.pi * r0 ** 2) / (math.pi * (rc ** 2 - r0 ** 2))
    C = max(4, math.ceil(math.log(miss_prob) / math.log1p(-min(accept, 1 - 1e-12))))
    dev = gen.device
    out = torch.empty(B * I, 2, dtype=_F64, device=dev)
    todo = torch.arange(B * I, device=dev)
    while todo.numel() > 0:
        m = todo.numel()
        r = annulus_radius(torch.rand(m, C, generator=gen, dtype=_F64, device=dev), r0, rc)
        phi = (2 * math.pi) * torch.rand(m, C, generator=gen, dtype=_F64, device=dev)
        xy = torch.stack([r * torch.cos(phi), r * torch.sin(phi)], dim=-1)  # (m, C, 2)
        ok = in_hexagon(xy, apothem)
        found = ok.any(-1)
        first = ok.to(torch.int32).argmax(-1)  # index of the first candidate inside
        out[todo[found]] = xy[found, first[found]]
        todo = todo[~found]
    return out.reshape(B, I, 2)


def _iid_disk_errors(o: MulticellScenario) -> list[tuple[str, str]]:
    """Cross-field errors of the layouts ``iid`` / ``disk``."""
    if o.layout == "disk" and not o.min_distance_m < o.disk_radius_m:
        return [("min_distance_m", f"must be below disk_radius_m = {o.disk_radius_m:g} m (got {o.min_distance_m:g})")]
    if o.layout == "iid" and o.user_distribution != "area":
        return [("user_distribution", f"layout 'iid' has no geometry (got {o.user_distribution!r}); allowed: area "
                                      "(the default; 'radius' only with layouts disk / field)")]
    return []


def _field_errors(o: MulticellScenario) -> list[tuple[str, str]]:
    """Cross-field errors of the layout ``field`` and the option ``serve: all``."""
    errs = []
    if o.serve == "all" and o.layout != "field":
        errs.append(("serve", f"'all' (cooperative) needs layout 'field' (got {o.layout!r}); allowed: cell | all "
                              "with layout field"))
    if o.n_ue is not None and o.serve != "all":
        errs.append(("n_ue", "is only used with serve: all (cell layouts have n_bs * ues_per_bs UEs); allowed: null"))
    if o.serve == "all" and o.ue_antennas != 1:
        errs.append(("ue_antennas", f"serve: all has single-antenna UEs (got {o.ue_antennas}); allowed: 1"))
    if o.serve == "all" and o.range_m is not None:
        errs.append(("range_m", "serve: all needs every BS-UE link (got a range cut-off); allowed: null"))
    if o.layout != "field" and o.user_distribution != "area":
        errs.append(("user_distribution", f"layout {o.layout!r} places UEs uniformly in area (got "
                                          f"{o.user_distribution!r}); allowed: area ('radius' only with layouts disk "
                                          "/ field)"))
    if o.serve == "all" and o.user_distribution != "area":
        errs.append(("user_distribution", f"serve: all places UEs uniformly in the square (got "
                                          f"{o.user_distribution!r}); allowed: area"))
    if o.layout == "field":
        if o.serve == "cell" and not o.min_distance_m < o.disk_radius_m:
            errs.append(("min_distance_m", f"must be below disk_radius_m = {o.disk_radius_m:g} m "
                                           f"(got {o.min_distance_m:g})"))
        # hexagonal packing bound: n_bs disks of radius sep/2 must fit in the field grown by sep/2 on each side
        need = o.n_bs * math.sqrt(3.0) / 2 * o.bs_separation_m ** 2
        if need > (o.field_m + o.bs_separation_m) ** 2:
            errs.append(("bs_separation_m", f"{o.n_bs} BSs cannot be {o.bs_separation_m:g} m apart in a "
                                            f"{o.field_m:g} m square; allowed: a smaller separation or n_bs"))
    return errs


def field_sites(B: int, n_bs: int, field_m: float, separation_m: float, gen: torch.Generator,
                 max_rounds: int = 10_000) -> Tensor:
    """BS positions (B, n_bs, 2) [m] uniform in [0, field_m]^2, pairwise >= ``separation_m`` apart.

    Sequential rejection, batched over realizations: BS k draws a candidate (m, 2) ~ U(0, field_m)^2 for the
    m realizations still without one and keeps it where it is ``separation_m`` from BSs 0..k-1 (the
    conditional law of k given the others: uniform on the allowed set).  ``ValueError`` after ``max_rounds``
    rounds (an arrangement that leaves no room)."""
    dev = gen.device
    out = torch.empty(B, n_bs, 2, dtype=_F64, device=dev)
    for k in range(n_bs):
        todo = torch.arange(B, device=dev)
        for _ in range(max_rounds):
            if todo.numel() == 0:
                break
            cand = field_m * torch.rand(todo.numel(), 2, generator=gen, dtype=_F64, device=dev)
            if k == 0:
                ok = torch.ones(todo.numel(), dtype=torch.bool, device=dev)
            else:
                d = torch.linalg.vector_norm(out[todo, :k] - cand[:, None, :], dim=-1)
                ok = (d >= separation_m).all(-1)
            out[todo[ok], k] = cand[ok]
            todo = todo[~ok]
        if todo.numel():
            raise ValueError(f"could not place BS {k} at least {separation_m:g} m from the others in a "
                             f"{field_m:g} m square after {max_rounds} draws")
    return out


def _generate_field(o: MulticellScenario, B: int, generator: torch.Generator,
                     dtype: torch.dtype) -> MulticellChannels:
    """Layout ``field`` (module docstring).  Draws: the BS sites (:func:`field_sites`), then the UE positions
    (serve cell: u_r (B, I), u_phi (B, I) of :func:`_disk_offsets`; serve all: (B, I, 2) ~ U(0, field_m)), then
    the fading (B, I, K, N, M, 2) ~ N(0, 1), all float64 on the generator's device."""
    K, U = int(o.n_bs), int(o.ues_per_bs)
    dev = generator.device
    serve_all = o.serve == "all"
    I = (int(o.n_ue) if o.n_ue is not None else K * U) if serve_all else K * U
    bs_xy = field_sites(B, K, float(o.field_m), float(o.bs_separation_m), generator)
    if serve_all:
        assign = torch.arange(I, device=dev) % K
        ue_xy = float(o.field_m) * torch.rand(B, I, 2, generator=generator, dtype=_F64, device=dev)
    else:
        assign = torch.arange(K, device=dev).repeat_interleave(U)
        off = _disk_offsets(B, I, float(o.disk_radius_m), float(o.min_distance_m), generator, o.user_distribution)
        ue_xy = bs_xy[:, assign] + off
    dist = torch.linalg.vector_norm(ue_xy[:, :, None, :] - bs_xy[:, None, :, :], dim=-1)  # (B, I, K)
    dist = dist.clamp_min(float(o.min_distance_m))
    return _rayleigh_channels(o, dist, assign, bs_xy, ue_xy, generator, dtype, serve_all)


def _rayleigh_channels(o: MulticellScenario, dist: Tensor, assign: Tensor, bs_xy: Tensor, ue_xy: Tensor,
                       generator: torch.Generator, dtype: torch.dtype, serve_all: bool = False) -> MulticellChannels:
    """The channels of UEs at distances ``dist`` (B, I, K) [m] from the BSs: path loss ``o.pathloss`` and
    Rayleigh fading, H = 10^(-PL/20) (x + j y)/sqrt(2) with (B, I, K, N, M, 2) ~ N(0, 1) drawn from
    ``generator`` (float64 on its device), then the per-BS power, per-UE noise and weights of ``o``, and the
    in-range mask (``o.range_m``; serving links always in range)."""
    B, I, K = dist.shape
    N, M, dev = int(o.ue_antennas), int(o.bs_antennas), generator.device
    pl = pathloss_db(dist, o.pathloss, o.pathloss_exponent, o.pathloss_ref_db)
    amp = 10.0 ** (-pl / 20.0)  # sqrt of the per-entry variance 10^(-PL/10)
    z = torch.randn(B, I, K, N, M, 2, generator=generator, dtype=_F64, device=dev)
    H = amp[..., None, None] * torch.view_as_complex(z) / math.sqrt(2.0)  # CN(0, 10^(-PL/10)) entries
    serving = torch.zeros(B, I, K, dtype=torch.bool, device=dev)
    serving[:, torch.arange(I, device=dev), assign] = True
    inrange = (torch.ones(B, I, K, dtype=torch.bool, device=dev) if o.range_m is None
               else (dist <= o.range_m) | serving)
    return MulticellChannels(
        H=H.to(dtype), assign=assign,
        power_w=torch.full((K,), dbm_to_w(o.bs_power_dbm), dtype=_F64, device=dev),
        noise_w=torch.full((I,), noise_power_w(o), dtype=_F64, device=dev),
        weights=torch.full((I,), float(o.ue_weight), dtype=_F64, device=dev),
        inrange=inrange, bs_xy=bs_xy, ue_xy=ue_xy, serve_all=serve_all)


def noise_power_w(o: MulticellScenario) -> float:
    """sigma^2 [W] per receive antenna: P / 10^(snr_db/10) when ``snr_db`` is set, else ``noise_dbm``."""
    if o.snr_db is not None:
        return dbm_to_w(o.bs_power_dbm) / 10.0 ** (o.snr_db / 10.0)
    return dbm_to_w(o.noise_dbm)


def _disk_offsets(B: int, I: int, radius: float, r0: float, gen: torch.Generator,
                  distribution: str = "area") -> Tensor:
    """UE offsets from their BS (B, I, 2) on r0 <= r <= radius at a uniform angle, r uniform in area
    (``distribution`` area, :func:`annulus_radius`) or in distance (radius, :func:`uniform_radius`): draws
    u_r (B, I) then u_phi (B, I)."""
    dev = gen.device
    radial = annulus_radius if distribution == "area" else uniform_radius
    r = radial(torch.rand(B, I, generator=gen, dtype=_F64, device=dev), r0, radius)
    phi = (2 * math.pi) * torch.rand(B, I, generator=gen, dtype=_F64, device=dev)
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi)], dim=-1)


def _generate_iid(o: MulticellScenario, B: int, generator: torch.Generator, dtype: torch.dtype) -> MulticellChannels:
    """Layout ``iid``: H (B, I, K, N, M) i.i.d. CN(0, 1) from one draw (B, I, K, N, M, 2) ~ N(0, 1), no positions."""
    K, N, M, U = int(o.n_bs), int(o.ue_antennas), int(o.bs_antennas), int(o.ues_per_bs)
    I, dev = K * U, generator.device
    z = torch.randn(B, I, K, N, M, 2, generator=generator, dtype=_F64, device=dev)
    H = torch.view_as_complex(z) / math.sqrt(2.0)
    return MulticellChannels(
        H=H.to(dtype), assign=torch.arange(K, device=dev).repeat_interleave(U),
        power_w=torch.full((K,), dbm_to_w(o.bs_power_dbm), dtype=_F64, device=dev),
        noise_w=torch.full((I,), noise_power_w(o), dtype=_F64, device=dev),
        weights=torch.full((I,), float(o.ue_weight), dtype=_F64, device=dev),
        inrange=torch.ones(B, I, K, dtype=torch.bool, device=dev))


def generate_multicell(options: MulticellScenario, batch: int, generator: torch.Generator,
                       dtype: torch.dtype = torch.complex128) -> MulticellChannels:
    """Draw ``batch`` multicell scenario realizations of ``options`` (module docstring).

    B = batch, K = n_bs, I = n_bs * ues_per_bs, M = bs_antennas, N = ue_antennas.  Random draws from
    ``generator`` (CPU), in this order, all in float64: the UE positions (triangle: u_r (B, I), u_phi
    (B, I); hex: the rejection rounds of :func:`_hex_offsets`), then the fading (B, I, K, N, M, 2) ~ N(0, 1)
    (real, imaginary parts).  Only the final cast depends on ``dtype``, so complex64 channels equal
    complex128 channels of the same seed cast to complex64.  ``range_m``: inrange[b, i, k] =
    dist <= range_m, or the serving BS; None: all in range.
    """
    if dtype not in (torch.complex64, torch.complex128):
        raise ValueError(f"dtype must be complex64 or complex128, got {dtype}")
    o = options
    B, K, U = int(batch), int(o.n_bs), int(o.ues_per_bs)
    if o.layout == "iid":
        return _generate_iid(o, B, generator, dtype)
    if o.layout == "field":
        return _generate_field(o, B, generator, dtype)
    I = K * U
    dev = generator.device  # the channels live on the generator's device (the CPU: DESIGN §11)
    assign = torch.arange(K, device=dev).repeat_interleave(U)  # (I,) int64
    if o.layout == "triangle":
        sites = triangle_sites(o.bs_distance_m, dev)
        offsets = _triangle_offsets(B, K, U, float(o.bs_distance_m), float(o.min_distance_m), generator)
    elif o.layout == "disk":
        sites = hex_sites(K, float(o.bs_distance_m), dev)
        offsets = _disk_offsets(B, I, float(o.disk_radius_m), float(o.min_distance_m), generator,
                                o.user_distribution)
    else:
        sites = hex_sites(K, float(o.bs_distance_m), dev)
        offsets = _hex_offsets(B, I, float(o.bs_distance_m), float(o.min_distance_m), generator)
    bs_xy = sites.expand(B, K, 2).clone()
    ue_xy = sites[assign] + offsets  # (B, I, 2)
    if o.hotspot_radius_m is not None:
        ue_xy = hotspot_positions(ue_xy, U, o, generator)
    dist = torch.linalg.vector_norm(ue_xy[:, :, None, :] - bs_xy[:, None, :, :], dim=-1)  # (B, I, K)
    if o.hotspot_radius_m is not None:
        dist = dist.clamp_min(float(o.min_distance_m))
    return _rayleigh_channels(o, dist, assign, bs_xy, ue_xy, generator, dtype)


# --------------------------------------------------------------------------------------------------
# air: physics of the downlink (GCN-WMMSE paper Sec. II-A / II-B)
# --------------------------------------------------------------------------------------------------
def effective_channels(H: Tensor, assign: Tensor, V: Tensor) -> Tensor:
    """H_{i, a(j)} V_j for every receiver i and stream owner j.

    H: (B, I, K, N, M) channel BS k -> UE i; assign: (I,) serving BS; V: (B, I, M, N) beamformer of UE j.
    Returns (B, I, I, N, N) indexed [b, i (receiver), j (owner of the beamformer)].
    """
    B, I, K, N, M = H.shape
    # group the beamformers by serving BS (zero-padded to the largest cell) so that each BS needs one
    # GEMM (I*N x M) @ (M x S*N) instead of I*S tiny (N x M) @ (M x N) products
    slot, S = group_slots(assign, K)
    Vp = torch.zeros(B, K * S, M, N, dtype=V.dtype, device=V.device).index_copy(1, assign * S + slot, V)
    Vp = Vp.reshape(B, K, S, M, N).permute(0, 1, 3, 2, 4).reshape(B, K, M, S * N)
    G = H.permute(0, 2, 1, 3, 4).reshape(B, K, I * N, M)
    X = (G @ Vp).reshape(B, K, I, N, S, N)                 # [b, k, i, :, s, :] = H_ik V_(k, s)
    return X[:, assign, :, :, slot, :].permute(1, 2, 0, 3, 4)  # (B, I(i), I(j), N, N)


def received_covariance(HV: Tensor, noise_w: Tensor) -> Tensor:
    """J_i = sum_j H_{i a(j)} V_j V_j^H H^H + sigma_i^2 I  (GCN-WMMSE Sec. II-B).

    HV: (B, I, I, N, N) from :func:`effective_channels`; noise_w: (I,) or (B, I) W.  Returns (B, I, N, N).
    """
    J = (HV @ HV.mH).sum(dim=2)
    eye = torch.eye(J.shape[-1], dtype=J.dtype, device=J.device)
    nz = noise_w.to(J.real.dtype)
    nz = nz.reshape(1, -1, 1, 1) if nz.dim() == 1 else nz.reshape(nz.shape[0], -1, 1, 1)
    return J + nz * eye


def multicell_rates(H: Tensor, assign: Tensor, V: Tensor, noise_w: Tensor) -> Tensor:
    """Per-UE rate R_i = log det(I + Q_i Z_i^{-1}) = log det J_i - log det Z_i, nat/Hz (B = 1 Hz).

    Shapes as :func:`effective_channels`; returns (B, I).
    """
    HV = effective_channels(H, assign, V)
    J = received_covariance(HV, noise_w)
    idx = torch.arange(H.shape[1], device=H.device)
    own = HV[:, idx, idx]  # (B, I, N, N)
    Z = J - own @ own.mH
    return torch.linalg.slogdet(J)[1] - torch.linalg.slogdet(Z)[1]


def bs_power(V: Tensor, assign: Tensor, n_bs: int) -> Tensor:
    """Transmit power of each BS, sum_{i in I_k} ||V_i||_F^2 (W).  V: (B, I, M, N) -> (B, K)."""
    p = (V.abs() ** 2).sum(dim=(-1, -2))
    out = torch.zeros(V.shape[0], n_bs, dtype=p.dtype, device=p.device)
    return out.index_add_(1, assign, p)


class MulticellAir(Air):
    """Multicell MU-MIMO downlink (GCN-WMMSE paper Sec. II-A).

    H: (B, I, K, N, M) channel from BS k to UE i; assign (I,); noise_w (I,) W; weights (I,); power_w (K,) W.
    Measurements:
      ``dl_pilots`` -- BSs transmit precoded pilots with beamformers ``V`` (B, I, M, N) (one pilot
      symbol per stream); UE i measures its received covariance J_i (B, I, N, N) and its effective
      channel H_{i a(i)} V_i (B, I, N, N).
    """

    unit = UNIT

    def __init__(self, H: Tensor, assign: Tensor, noise_w: Tensor, weights: Tensor, power_w: Tensor) -> None:
        self.H, self.assign, self.noise_w, self.weights, self.power_w = H, assign, noise_w, weights, power_w

    def measure(self, name: str, signals: dict[str, Tensor]) -> dict[str, Tensor]:
        if name != "dl_pilots":
            raise KeyError(f"{FAMILY} air has no measurement {name!r}; allowed: dl_pilots")
        HV = effective_channels(self.H, self.assign, signals["V"])
        J = received_covariance(HV, self.noise_w)
        idx = torch.arange(self.H.shape[1], device=self.H.device)
        return {"J": J, "HV": HV[:, idx, idx]}

    def rates(self, V: Tensor) -> Tensor:
        """Per-UE rates (B, I), nat/Hz."""
        return multicell_rates(self.H, self.assign, V, self.noise_w)

    def evaluate(self, V: Tensor) -> tuple[Tensor, Tensor]:
        """(WSR (B,), per-UE rate (B, I)) of beamformers V (B, I, M, N), nat/Hz."""
        r = self.rates(V)
        return weighted_sum_rate(r, self.weights), r

    def power(self, V: Tensor) -> Tensor:
        """Per-BS transmit power (B, K), W."""
        return bs_power(V, self.assign, self.H.shape[2])

    def power_ratio(self, V: Tensor) -> Tensor:
        """Per-BS transmit power over its budget P_k (B, K)."""
        return self.power(V) / self.power_w.reshape(1, -1)

    def repeat(self, n: int) -> MulticellAir:
        if n == 1:
            return self
        return MulticellAir(self.H.repeat(n, 1, 1, 1, 1), self.assign, self.noise_w, self.weights, self.power_w)


def coop_effective(H: Tensor, V: Tensor) -> Tensor:
    """s_ji = sum_k h_kj^H v_ki, the effective channel of stream i at UE j (ENGNN paper (13)).

    H: (B, I, K, 1, M) channel BS k -> UE j (the row h_kj^H); V: (B, I*K, M, 1) beamformer v_ki of BS k for
    UE i on edge i*K + k.  Returns (B, I (receiver j), I (stream i)) complex."""
    B, I, K, _, M = H.shape
    return torch.einsum("bjkm,bikm->bji", H[:, :, :, 0, :], V.reshape(B, I, K, M))


def coop_rates(S: Tensor, noise_w: Tensor) -> Tensor:
    """Rates (14): log(1 + |s_jj|^2 / (sum_{i != j} |s_ji|^2 + sigma_j^2)) nat/Hz, the interference-plus-noise
    summed without the own stream (not as J_j - |s_jj|^2, J_j = sum_i |s_ji|^2 + sigma_j^2: that difference
    cancels in single precision once the SINR passes ~1e7 and gave an infinite training loss).
    S (B, I, I), noise_w (I,) W -> (B, I)."""
    g = S.abs() ** 2
    own = torch.diagonal(g, dim1=-2, dim2=-1)
    others = g.masked_fill(torch.eye(g.shape[-1], dtype=torch.bool, device=g.device), 0.0).sum(-1)
    return torch.log1p(own / (others + noise_w.to(g.dtype)))


def coop_power(V: Tensor, n_ue: int, n_bs: int) -> Tensor:
    """Per-BS power sum_i ||v_ki||^2 (15b) [W]: V (B, I*K, M, 1) -> (B, K)."""
    p = (V.abs() ** 2).sum(dim=(-1, -2))
    return p.reshape(V.shape[0], n_ue, n_bs).sum(1)


class CoopAir(Air):
    """Cooperative downlink (ENGNN paper (13)-(15)): every BS serves every single-antenna UE.

    H: (B, I, K, 1, M); decisions V (B, I*K, M, 1) on the ``ue>bs`` edges (edge i*K + k: v_ki).
    Measurement ``coop_pilots``: the BSs send precoded pilots (one per stream) with V; UE j measures
    S (B, I, I): row j the effective channels s_ji of every stream, and J (B, I) its received power
    sum_i |s_ji|^2 + sigma_j^2."""

    unit = UNIT

    def __init__(self, H: Tensor, noise_w: Tensor, weights: Tensor, power_w: Tensor) -> None:
        self.H, self.noise_w, self.weights, self.power_w = H, noise_w, weights, power_w

    def _check(self, V: Tensor) -> None:
        B, I, K, _, M = self.H.shape
        if V.dim() != 4 or V.shape[1] != I * K:
            raise ValueError(f"{FAMILY} with serve: all needs one beamformer per (UE, BS) edge, (B, {I * K}, {M}, 1)"
                             f"; got {tuple(V.shape)} (use a cooperative protocol: coop_wmmse, coop_gp, engnn_ex3)")

    def measure(self, name: str, signals: dict[str, Tensor]) -> dict[str, Tensor]:
        if name != "coop_pilots":
            raise KeyError(f"{FAMILY} cooperative air has no measurement {name!r}; allowed: coop_pilots")
        self._check(signals["V"])
        S = coop_effective(self.H, signals["V"])
        return {"S": S, "J": (S.abs() ** 2).sum(-1) + self.noise_w.to(S.real.dtype)}

    def rates(self, V: Tensor) -> Tensor:
        """Per-UE rates (B, I), nat/Hz."""
        self._check(V)
        return coop_rates(coop_effective(self.H, V), self.noise_w)

    def evaluate(self, V: Tensor) -> tuple[Tensor, Tensor]:
        r = self.rates(V)
        return weighted_sum_rate(r, self.weights), r

    def power(self, V: Tensor) -> Tensor:
        """Per-BS transmit power (B, K), W."""
        return coop_power(V, self.H.shape[1], self.H.shape[2])

    def power_ratio(self, V: Tensor) -> Tensor:
        return self.power(V) / self.power_w.reshape(1, -1)

    def repeat(self, n: int) -> CoopAir:
        if n == 1:
            return self
        return CoopAir(self.H.repeat(n, 1, 1, 1, 1), self.noise_w, self.weights, self.power_w)


# --------------------------------------------------------------------------------------------------
# network of local knowledge
# --------------------------------------------------------------------------------------------------
def backhaul_edges(n_bs: int, batch: int, device: torch.device | str = "cpu") -> EdgeSet:
    """Edge set ``bs>bs`` on link class ``bh``: every ordered pair (k, k'), k != k', of the ``n_bs`` BSs, in
    order of k then k' (edge id k (K - 1) + k' - [k' > k]), present in every realization; empty for one BS."""
    K = int(n_bs)
    src = torch.arange(K, device=device).repeat_interleave(K)
    dst = torch.arange(K, device=device).repeat(K)
    keep = src != dst
    src, dst = src[keep], dst[keep]
    return EdgeSet("bs>bs", "bs", "bs", "bh", src, dst, torch.ones(batch, src.numel(), dtype=torch.bool, device=device))


def multicell_network(ch: MulticellChannels, faults: FaultModel | None = None,
                      seed: int = 0) -> tuple[Network, MulticellAir]:
    """The network (module docstring) and air of a :class:`MulticellChannels` batch."""
    faults = faults or FaultModel()
    H, assign = ch.H, ch.assign.to(torch.int64)
    B, I, K, N, M = H.shape
    real = torch.float64 if H.dtype == torch.complex128 else torch.float32
    dev = H.device
    serving = torch.zeros(B, I, K, dtype=torch.bool, device=dev)
    serving[:, torch.arange(I, device=dev), assign] = True
    present = ch.inrange.to(torch.bool) & faults.link_present((B, I, K), serving)
    present |= serving
    ue_idx = torch.arange(I, device=dev).repeat_interleave(K)
    bs_idx = torch.arange(K, device=dev).repeat(I)
    edges = {
        "ue>bs": EdgeSet("ue>bs", "ue", "bs", "ul", ue_idx, bs_idx, present.reshape(B, I * K)),
        "ue>bs:serve": EdgeSet("ue>bs:serve", "ue", "bs", "ul", torch.arange(I, device=dev), assign.clone(),
                               torch.ones(B, I, dtype=torch.bool, device=dev)),
        "bs>ue": EdgeSet("bs>ue", "bs", "ue", "dl", bs_idx.clone(), ue_idx.clone(), present.reshape(B, I * K).clone()),
        "bs>bs": backhaul_edges(K, B, dev),
    }
    csi = present.permute(0, 2, 1)  # (B, K, I)
    H_held, H_air = faults.csi(H)  # stale / noisy CSI (dsim.faults): the BSs hold H_held, the air is H_air
    Hb = H_held.permute(0, 2, 1, 3, 4) * csi[..., None, None].to(H.dtype)  # (B, K, I, N, M)
    w = ch.weights.to(real)
    nz = ch.noise_w.to(real)
    local = {
        "bs": {"H": Hb, "csi": csi, "alpha": w.reshape(1, 1, I).expand(B, K, I).clone(),
               "noise": nz.reshape(1, 1, I).expand(B, K, I).clone(),
               "power": ch.power_w.to(real).reshape(1, K).expand(B, K).clone()},
        "ue": {"alpha": w.reshape(1, I).expand(B, I).clone(), "noise": nz.reshape(1, I).expand(B, I).clone()},
    }
    info = {"family": FAMILY, "batch": B, "n_bs": K, "n_ue": I, "bs_antennas": M, "ue_antennas": N,
            "seed": seed, "unit": UNIT, "dtype": H.dtype, "real_dtype": real,
            "serve": "all" if getattr(ch, "serve_all", False) else "cell"}
    net = Network(FAMILY, B, {"bs": K, "ue": I}, edges, local, info)
    if getattr(ch, "serve_all", False):
        return net, CoopAir(H_air, nz, w, ch.power_w.to(real))
    air = MulticellAir(H_air, assign, nz, w, ch.power_w.to(real))
    return net, air


# --------------------------------------------------------------------------------------------------
# channel file
# --------------------------------------------------------------------------------------------------
REQUIRED = ("H", "assign", "power_w", "noise_w", "weights")
OPTIONAL = ("inrange", "family", "bs_xy", "ue_xy", "serve_all")


def save_multicell(path: str | Path, ch: MulticellChannels) -> None:
    """Write ``ch`` to ``path`` (an ``.npz`` with the keys of the module docstring; H keeps its dtype)."""
    arrays = {
        "family": np.array(FAMILY), "H": ch.H.detach().cpu().numpy(),
        "assign": ch.assign.cpu().numpy().astype(np.int64),
        "power_w": ch.power_w.cpu().numpy(), "noise_w": ch.noise_w.cpu().numpy(),
        "weights": ch.weights.cpu().numpy(), "inrange": ch.inrange.cpu().numpy().astype(bool),
    }
    if ch.serve_all:
        arrays["serve_all"] = np.array(True)
    for key in ("bs_xy", "ue_xy"):
        t = getattr(ch, key)
        if t is not None:
            arrays[key] = t.cpu().numpy()
    write_npz(path, arrays)


def load_multicell(path: str | Path, dtype: torch.dtype = torch.complex128) -> MulticellChannels:
    """Read a multicell channel file (module docstring) -> :class:`MulticellChannels` with H in ``dtype``.

    Raises :class:`ChannelFileError` (a ValueError) naming the file and the key for any defect."""
    if dtype not in (torch.complex64, torch.complex128):
        raise ValueError(f"dtype must be complex64 or complex128, got {dtype}")
    path = Path(path)
    data = read_family_file(path, FAMILY, REQUIRED, OPTIONAL)
    H = data["H"]
    if H.dtype.kind != "c" or H.ndim != 5 or min(H.shape, default=0) < 1:
        raise ChannelFileError(f"{path}: key 'H': expected a complex array of shape (B, I, K, N, M) with "
                               f"all sizes >= 1, found {found(H)}")
    B, I, K = H.shape[:3]
    check_array(path, "H", H, "c", "a complex array", H.shape, "(B, I, K, N, M)")
    assign = data["assign"]
    check_array(path, "assign", assign, "iu", "an integer array", (I,), "(I,)")
    if (int(assign.min()) < 0 or int(assign.max()) >= K):
        bad = assign[(assign < 0) | (assign >= K)]
        raise ChannelFileError(f"{path}: key 'assign': expected serving BS indices in [0, {K}), "
                               f"found {bad.tolist()[:8]}")
    for key, shape, shape_txt, unit in (("power_w", (K,), "(K,)", " W"), ("noise_w", (I,), "(I,)", " W"),
                                        ("weights", (I,), "(I,)", "")):
        a = data[key]
        check_array(path, key, a, "fiu", "a real array", shape, shape_txt)
        if not (a > 0).all():
            raise ChannelFileError(f"{path}: key {key!r}: expected values > 0{unit}, "
                                   f"found {a[a <= 0].tolist()[:8]}")
    for key, shape, shape_txt in (("bs_xy", (B, K, 2), "(B, K, 2)"), ("ue_xy", (B, I, 2), "(B, I, 2)")):
        if key in data:
            check_array(path, key, data[key], "fiu", "a real array [m]", shape, shape_txt)
    assign_t = torch.as_tensor(assign.astype(np.int64), device="cpu")  # channel files load on the CPU (DESIGN §11)
    if "inrange" in data:
        check_array(path, "inrange", data["inrange"], "b", "a bool array", (B, I, K), "(B, I, K)")
        inrange = torch.as_tensor(data["inrange"], device="cpu")
        serving_ok = inrange[:, torch.arange(I, device="cpu"), assign_t]  # (B, I)
        if not bool(serving_ok.all()):
            b, i = (int(v) for v in torch.nonzero(~serving_ok)[0])
            raise ChannelFileError(f"{path}: key 'inrange': expected True for every UE's serving BS, found "
                                   f"False at realization {b}, UE {i}, BS {int(assign_t[i])}")
    else:
        inrange = torch.ones(B, I, K, dtype=torch.bool, device="cpu")

    def real(key: str) -> torch.Tensor | None:
        return torch.as_tensor(data[key], device="cpu").to(torch.float64) if key in data else None

    serve_all = False
    if "serve_all" in data:
        a = data["serve_all"]
        if a.dtype.kind != "b" or a.shape != ():
            raise ChannelFileError(f"{path}: key 'serve_all': expected a bool scalar, found {found(a)}")
        serve_all = bool(a)
        if serve_all and H.shape[3] != 1:
            raise ChannelFileError(f"{path}: key 'serve_all': cooperative channels need single-antenna UEs "
                                   f"(N = 1), found N = {H.shape[3]}")

    return MulticellChannels(H=torch.as_tensor(H, device="cpu").to(dtype), assign=assign_t, power_w=real("power_w"),
                             noise_w=real("noise_w"), weights=real("weights"), inrange=inrange,
                             bs_xy=real("bs_xy"), ue_xy=real("ue_xy"), serve_all=serve_all)


# --------------------------------------------------------------------------------------------------
# symmetry (data augmentation of a fixed training set)
# --------------------------------------------------------------------------------------------------
def haar_unitary(batch: int, n_pairs: int, n: int, generator: torch.Generator) -> Tensor:
    """(B, K, n, n) complex128 unitaries drawn from the Haar measure on U(n): QR of a CN(0, I) matrix, each
    column of Q multiplied by the phase of R's diagonal entry (Mezzadri 2007), so the law is exactly Haar."""
    z = torch.complex(torch.randn(batch, n_pairs, n, n, generator=generator, dtype=torch.float64, device="cpu"),
                      torch.randn(batch, n_pairs, n, n, generator=generator, dtype=torch.float64, device="cpu"))
    q, r = torch.linalg.qr(z)
    d = r.diagonal(dim1=-2, dim2=-1)
    return q * (d / d.abs())[..., None, :]


def apply_symmetry(ch: MulticellChannels, ue_unitary: Tensor, bs_unitary: Tensor) -> MulticellChannels:
    """The channels rotated by a symmetry of the WSR problem: H_ik -> P_i H_ik Q_k for every UE i and BS k,
    P_i in U(N) (a phase e^{j phi_i} for single-antenna UEs), Q_k in U(M).

    Invariance: with the precoders V_i -> Q_{a(i)}^H V_i (every beam of BS k rotated by Q_k^H; with ``serve_all``
    each per-BS beam v_ki -> Q_k^H v_ki), every received signal H_ik V_j becomes P_i H_ik V_j, so UE i's
    signal and interference-plus-noise covariances are conjugated by the unitary P_i and its rate
    log det(I + ...) is unchanged, as is every ||V||_F^2 (the per-BS power).  A precoder is feasible / optimal
    for the rotated channels iff its rotation back is for the original ones.  Path losses (the norms of the
    H_ik), positions, weights, noise and CSI ranges are untouched.  For the ``iid`` layout the rotated draw has
    the law of a fresh one, but it poses the same problem instance (the same Grams H_k H_k^H up to the P_i).
    ue_unitary (B, I, N, N), bs_unitary (B, K, M, M) complex (any precision; the result keeps ``ch.H``'s dtype
    and device)."""
    H = ch.H
    P = ue_unitary.to(H.device, H.dtype)[:, :, None]                          # (B, I, 1, N, N)
    Q = bs_unitary.to(H.device, H.dtype)[:, None]                              # (B, 1, K, M, M)
    return replace(ch, H=P @ H @ Q)


def symmetry_transform(ch: MulticellChannels, generator: torch.Generator) -> MulticellChannels:
    """The family's ``symmetry`` augmentation (``train.augment: symmetry``): :func:`apply_symmetry` with P_i ~
    Haar on U(N) and Q_k ~ Haar on U(M) drawn from ``generator`` (in this order), independently per
    realization."""
    P = haar_unitary(ch.batch, ch.n_ue, ch.ue_antennas, generator)
    Q = haar_unitary(ch.batch, ch.n_bs, ch.bs_antennas, generator)
    return apply_symmetry(ch, P, Q)


register_family(FamilySpec(
    name=FAMILY, options=MulticellScenario, generate=generate_multicell, build=multicell_network,
    save=save_multicell, load=load_multicell, file_keys=REQUIRED, roles=("bs", "ue"),
    links=(LinkClass("ul", 1e-3, 1e6, "UE -> BS uplink signaling"),
           LinkClass("dl", 1e-3, 1e6, "BS -> UE downlink signaling"),
           LinkClass("bh", 1e-4, 1e9, "BS <-> BS backhaul")),
    unit=UNIT, summary="multicell MU-MIMO downlink: K BSs (M antennas) serve I UEs (N antennas)",
    augment={"symmetry": symmetry_transform},
))
