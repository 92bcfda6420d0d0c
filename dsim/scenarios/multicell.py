"""Multicell MU-MIMO downlink channels (GCN-WMMSE paper Sec. II-A and Sec. IV / Tab. II; DESIGN §7).

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

UE i = k * ues_per_bs + j is the j-th UE of BS k.  Power budgets P_k and noise powers sigma_i^2 (per
receive antenna) are in W, positions in m.  Rates on these channels are in nat/Hz.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

Tensor = torch.Tensor

FAMILY = "multicell"
LAYOUTS = ("triangle", "hex")
PATHLOSS_MODELS = ("pico", "macro", "exponent")

# keyword arguments of generate_multicell read by multicell_from_options (names shared with dsim.config)
OPTION_NAMES = (
    "layout", "bs_distance_m", "n_bs", "ues_per_bs", "bs_antennas", "ue_antennas", "bs_power_dbm",
    "noise_dbm", "pathloss", "pathloss_exponent", "pathloss_ref_db", "min_distance_m", "range_m", "ue_weight",
)

_F64 = torch.float64


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
    or None (e.g. channels read from a file without positions).
    """

    H: Tensor
    assign: Tensor
    power_w: Tensor
    noise_w: Tensor
    weights: Tensor
    inrange: Tensor
    bs_xy: Tensor | None = None
    ue_xy: Tensor | None = None

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
            idx = torch.as_tensor(idx, dtype=torch.long)

        def sel(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[idx]

        return replace(self, H=self.H[idx], inrange=self.inrange[idx], bs_xy=sel(self.bs_xy),
                       ue_xy=sel(self.ue_xy))


# --------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------
def dbm_to_w(dbm: float) -> float:
    """Power in W of ``dbm`` dBm."""
    return 10.0 ** ((dbm - 30.0) / 10.0)


def pathloss_db(distance_m: Tensor, model: str = "pico", pathloss_exponent: float = 3.0,
                pathloss_ref_db: float = 30.0) -> Tensor:
    """Path loss PL [dB] at distance ``distance_m`` [m] (any shape) under ``model`` (module docstring)."""
    lg = torch.log10(distance_m)
    if model == "pico":
        return 27.9 + 36.7 * lg
    if model == "macro":
        return 15.3 + 37.6 * lg
    if model == "exponent":
        return pathloss_ref_db + 10.0 * pathloss_exponent * lg
    raise ValueError(f"pathloss must be one of {', '.join(PATHLOSS_MODELS)}, got {model!r}")


def annulus_radius(u: Tensor, r_min: float, r_max: float) -> Tensor:
    """Radius uniform in area on [r_min, r_max] from u ~ U(0, 1) (any shape).

    r = r_max sqrt(u (1 - q) + q), q = (r_min / r_max)^2 -- DESIGN §7's r = R sqrt(u (1 - 100/R^2) + 100/R^2)
    for r_min = 10 m.  CDF: (r^2 - r_min^2) / (r_max^2 - r_min^2).
    """
    q = (r_min / r_max) ** 2
    return r_max * torch.sqrt(u * (1.0 - q) + q)


def triangle_sites(bs_distance_m: float) -> Tensor:
    """BS positions (3, 2) [m] of the triangle layout: (0, 0), (d, 0), (d/2, sqrt(3) d/2)."""
    d = float(bs_distance_m)
    return torch.tensor([[0.0, 0.0], [d, 0.0], [d / 2, math.sqrt(3.0) * d / 2]], dtype=_F64)


def hex_sites(n_sites: int, isd_m: float) -> Tensor:
    """First ``n_sites`` sites (n_sites, 2) [m] of a hexagonal grid with inter-site distance ``isd_m``.

    Site 0 at the origin; ring n (6n sites) holds n e_j + t e_{j+2} for j = 0..5, t = 0..n-1, with
    e_j = isd (cos(j pi/3), sin(j pi/3)): counter-clockwise from (n isd, 0)."""
    ang = torch.arange(6, dtype=_F64) * (math.pi / 3)
    e = isd_m * torch.stack([torch.cos(ang), torch.sin(ang)], dim=-1)  # (6, 2)
    rings, count, n = [torch.zeros(1, 2, dtype=_F64)], 1, 1
    while count < n_sites:
        j = torch.arange(6).repeat_interleave(n)
        t = torch.arange(n, dtype=_F64).repeat(6)
        rings.append(n * e[j] + t[:, None] * e[(j + 2) % 6])
        count, n = count + 6 * n, n + 1
    return torch.cat(rings)[:n_sites]


def in_hexagon(xy: Tensor, apothem: float) -> Tensor:
    """Whether offsets ``xy`` (..., 2) lie inside the hexagon of ``apothem`` centred at 0 whose edges face
    the directions 0, 60, ..., 300 degrees (the hex-grid cell of :func:`hex_sites` with isd = 2 apothem)."""
    x, y = xy[..., 0], xy[..., 1]
    s = math.sqrt(3.0) / 2
    return (x.abs() <= apothem) & ((0.5 * x + s * y).abs() <= apothem) & ((-0.5 * x + s * y).abs() <= apothem)


def _triangle_offsets(B: int, n_bs: int, ues_per_bs: int, d: float, r0: float,
                      gen: torch.Generator) -> Tensor:
    """UE offsets from their BS (B, I, 2): uniform on the interior-facing sextant, r0 <= r <= d/sqrt(3).

    Draws u_r (B, I) then u_phi (B, I)."""
    I = n_bs * ues_per_bs
    u_r = torch.rand(B, I, generator=gen, dtype=_F64)
    u_phi = torch.rand(B, I, generator=gen, dtype=_F64)
    r = annulus_radius(u_r, r0, d / math.sqrt(3.0))
    start = (2 * math.pi / 3) * torch.arange(n_bs, dtype=_F64).repeat_interleave(ues_per_bs)  # (I,)
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
    out = torch.empty(B * I, 2, dtype=_F64)
    todo = torch.arange(B * I)
    while todo.numel() > 0:
        m = todo.numel()
        r = annulus_radius(torch.rand(m, C, generator=gen, dtype=_F64), r0, rc)
        phi = (2 * math.pi) * torch.rand(m, C, generator=gen, dtype=_F64)
        xy = torch.stack([r * torch.cos(phi), r * torch.sin(phi)], dim=-1)  # (m, C, 2)
        ok = in_hexagon(xy, apothem)
        found = ok.any(-1)
        first = ok.to(torch.int32).argmax(-1)  # index of the first candidate inside
        out[todo[found]] = xy[found, first[found]]
        todo = todo[~found]
    return out.reshape(B, I, 2)


def _check(layout: str, bs_distance_m: float, n_bs: int, ues_per_bs: int, bs_antennas: int, ue_antennas: int,
           pathloss: str, min_distance_m: float, range_m: float | None, ue_weight: float, batch: int) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if pathloss not in PATHLOSS_MODELS:
        raise ValueError(f"pathloss must be one of {', '.join(PATHLOSS_MODELS)}, got {pathloss!r}")
    for name, v in (("batch", batch), ("n_bs", n_bs), ("ues_per_bs", ues_per_bs),
                    ("bs_antennas", bs_antennas), ("ue_antennas", ue_antennas)):
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if layout == "triangle" and n_bs != 3:
        raise ValueError(f"n_bs must be 3 for layout 'triangle', got {n_bs} "
                         "(use layout 'hex' for other counts)")
    if not bs_distance_m > 0:
        raise ValueError(f"bs_distance_m must be > 0, got {bs_distance_m!r}")
    limit = bs_distance_m / math.sqrt(3.0) if layout == "triangle" else bs_distance_m / 2
    if not 0 < min_distance_m < limit:
        what = "sector radius d/sqrt(3)" if layout == "triangle" else "hex apothem d/2"
        raise ValueError(f"min_distance_m must be > 0 and below the {what} = {limit:.6g} m "
                         f"(d = bs_distance_m), got {min_distance_m!r}")
    if range_m is not None and not range_m > 0:
        raise ValueError(f"range_m must be > 0 or None, got {range_m!r}")
    if not (ue_weight > 0 and math.isfinite(ue_weight)):
        raise ValueError(f"ue_weight must be a finite number > 0, got {ue_weight!r}")


def generate_multicell(
    batch: int,
    generator: torch.Generator,
    dtype: torch.dtype = torch.complex128,
    *,
    layout: str = "triangle",
    bs_distance_m: float = 200.0,
    n_bs: int = 3,
    ues_per_bs: int = 4,
    bs_antennas: int = 12,
    ue_antennas: int = 2,
    bs_power_dbm: float = 30.0,
    noise_dbm: float = -100.0,
    pathloss: str = "pico",
    pathloss_exponent: float = 3.0,
    pathloss_ref_db: float = 30.0,
    min_distance_m: float = 10.0,
    range_m: float | None = None,
    ue_weight: float = 1.0,
) -> MulticellChannels:
    """Draw ``batch`` multicell scenario realizations (module docstring; defaults = Tab. II).

    B = batch, K = n_bs, I = n_bs * ues_per_bs, M = bs_antennas, N = ue_antennas.  Random draws from
    ``generator`` (CPU), in this order, all in float64: the UE positions (triangle: u_r (B, I), u_phi
    (B, I); hex: the rejection rounds of :func:`_hex_offsets`), then the fading (B, I, K, N, M, 2) ~ N(0, 1)
    (real, imaginary parts).  Only the final cast depends on ``dtype``, so complex64 channels equal
    complex128 channels of the same seed cast to complex64.  ``range_m``: inrange[b, i, k] =
    dist <= range_m, or the serving BS; None: all in range.  Powers in dBm (P_k, sigma_i^2 per antenna).
    """
    _check(layout, bs_distance_m, n_bs, ues_per_bs, bs_antennas, ue_antennas, pathloss, min_distance_m,
           range_m, ue_weight, batch)
    if dtype not in (torch.complex64, torch.complex128):
        raise ValueError(f"dtype must be complex64 or complex128, got {dtype}")
    B, K, N, M = int(batch), int(n_bs), int(ue_antennas), int(bs_antennas)
    I = K * int(ues_per_bs)
    assign = torch.arange(K).repeat_interleave(int(ues_per_bs))  # (I,) int64
    if layout == "triangle":
        sites = triangle_sites(bs_distance_m)
        offsets = _triangle_offsets(B, K, int(ues_per_bs), float(bs_distance_m), float(min_distance_m),
                                    generator)
    else:
        sites = hex_sites(K, float(bs_distance_m))
        offsets = _hex_offsets(B, I, float(bs_distance_m), float(min_distance_m), generator)
    bs_xy = sites.expand(B, K, 2).clone()
    ue_xy = sites[assign] + offsets  # (B, I, 2)
    dist = torch.linalg.vector_norm(ue_xy[:, :, None, :] - bs_xy[:, None, :, :], dim=-1)  # (B, I, K)
    pl = pathloss_db(dist, pathloss, pathloss_exponent, pathloss_ref_db)
    amp = 10.0 ** (-pl / 20.0)  # sqrt of the per-entry variance 10^(-PL/10)
    z = torch.randn(B, I, K, N, M, 2, generator=generator, dtype=_F64)
    H = amp[..., None, None] * torch.view_as_complex(z) / math.sqrt(2.0)  # CN(0, 10^(-PL/10)) entries
    serving = torch.zeros(B, I, K, dtype=torch.bool)
    serving[:, torch.arange(I), assign] = True
    inrange = torch.ones(B, I, K, dtype=torch.bool) if range_m is None else (dist <= range_m) | serving
    return MulticellChannels(
        H=H.to(dtype), assign=assign,
        power_w=torch.full((K,), dbm_to_w(bs_power_dbm), dtype=_F64),
        noise_w=torch.full((I,), dbm_to_w(noise_dbm), dtype=_F64),
        weights=torch.full((I,), float(ue_weight), dtype=_F64),
        inrange=inrange, bs_xy=bs_xy, ue_xy=ue_xy,
    )


def multicell_from_options(opts: Any, batch: int, generator: torch.Generator,
                           dtype: torch.dtype = torch.complex128) -> MulticellChannels:
    """:func:`generate_multicell` with keyword arguments read from ``opts`` by name (OPTION_NAMES).

    ``opts`` is an object with those attributes (e.g. the pydantic scenario model of dsim.config) or a
    mapping; names it lacks or sets to None take the defaults of :func:`generate_multicell`."""
    kwargs: dict[str, Any] = {}
    for name in OPTION_NAMES:
        value = opts.get(name) if isinstance(opts, Mapping) else getattr(opts, name, None)
        if value is not None:
            kwargs[name] = value
    return generate_multicell(batch, generator, dtype, **kwargs)
