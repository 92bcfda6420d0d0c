"""Multicell scenario (GCN-WMMSE Tab. II triangle, hex grid) and the multicell channel file (DESIGN §5, §7).

Statistical checks use i.i.d. samples and bounds of about 6 standard deviations (or a KS level of
1e-3), so a correct implementation fails them with negligible probability while the seeds are fixed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from dsim.scenarios.build import generate_channels
from dsim.scenarios.channel_file import ChannelFileError
from dsim.scenarios.multicell import (
    MulticellChannels,
    MulticellScenario,
    generate_multicell,
    hex_sites,
    pathloss_db,
    triangle_sites,
)
from dsim.scenarios.multicell import load_multicell as load_channels
from dsim.scenarios.multicell import save_multicell as save_channels

SQ3 = math.sqrt(3.0)


def draw(batch: int, seed: int = 0, dtype: torch.dtype = torch.complex128, **kw) -> MulticellChannels:
    g = torch.Generator()
    g.manual_seed(seed)
    return generate_multicell(MulticellScenario(**kw), batch, g, dtype)


def ks_distance(samples: np.ndarray, cdf) -> float:
    """Kolmogorov-Smirnov statistic sup |F_n - F| of ``samples`` against the closed-form ``cdf``."""
    s = np.sort(samples)
    n = s.size
    f = cdf(s)
    i = np.arange(1, n + 1)
    return float(max((i / n - f).max(), (f - (i - 1) / n).max()))


def ks_bound(n: int, alpha: float = 1e-3) -> float:
    """Asymptotic KS critical value sqrt(-ln(alpha/2)/2)/sqrt(n) at level alpha."""
    return math.sqrt(-math.log(alpha / 2) / 2) / math.sqrt(n)


def own_offsets(ch: MulticellChannels) -> torch.Tensor:
    """UE position minus its serving BS position, (B, I, 2)."""
    return ch.ue_xy - ch.bs_xy[:, ch.assign]


# ------------------------------------------------------------------------------------------------
# triangle geometry (Tab. II)
# ------------------------------------------------------------------------------------------------
def test_triangle_sites_and_assignment():
    ch = draw(3)
    d = 200.0
    want = torch.tensor([[0.0, 0.0], [d, 0.0], [d / 2, SQ3 * d / 2]], dtype=torch.float64)
    assert torch.equal(ch.bs_xy, want.expand(3, 3, 2))
    assert ch.assign.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert (ch.batch, ch.n_ue, ch.n_bs, ch.ue_antennas, ch.bs_antennas) == (3, 12, 3, 2, 12)
    assert ch.H.shape == (3, 12, 3, 2, 12) and ch.H.dtype == torch.complex128
    assert ch.power_w.tolist() == [1.0] * 3  # 30 dBm
    np.testing.assert_allclose(ch.noise_w.numpy(), 1e-13, rtol=1e-12)  # -100 dBm
    assert ch.weights.tolist() == [1.0] * 12 and bool(ch.inrange.all())


def test_triangle_ues_in_their_sector():
    d, r0 = 200.0, 10.0
    R = d / SQ3
    ch = draw(500, seed=1)
    off = own_offsets(ch)
    r = off.norm(dim=-1)
    assert float(r.min()) >= r0 * (1 - 1e-12) and float(r.max()) <= R * (1 + 1e-12)
    start = (2 * math.pi / 3) * ch.assign.to(torch.float64)  # sector [2 pi k/3, 2 pi k/3 + pi/3]
    tol = 1e-9
    rel = torch.remainder(torch.atan2(off[..., 1], off[..., 0]) - start + tol, 2 * math.pi) - tol
    assert float(rel.min()) >= -tol and float(rel.max()) <= math.pi / 3 + tol


def test_triangle_sector_faces_centroid():
    d = 200.0
    ch = draw(2000, seed=2)
    centroid = torch.tensor([d / 2, d / (2 * SQ3)], dtype=torch.float64)
    bs = triangle_sites(d)
    for k in range(3):
        ue = ch.ue_xy[:, ch.assign == k].reshape(-1, 2)
        mean = ue.mean(0)
        assert float((mean - centroid).norm()) < float((bs[k] - centroid).norm())
        # The mean offset lies on the sector bisector, which points at the centroid.  Per UE the component
        # perpendicular to the bisector has std ~0.21 R and the parallel one mean ~0.64 R, so over n = 8000
        # UEs the angle of the mean has std ~0.33 / sqrt(n) = 0.0037 rad; 0.02 rad is > 5 sigma.
        a_mean = torch.atan2(*(mean - bs[k]).flip(0))
        a_cent = torch.atan2(*(centroid - bs[k]).flip(0))
        diff = float(torch.remainder(a_mean - a_cent + math.pi, 2 * math.pi) - math.pi)
        assert abs(diff) < 0.02


def test_triangle_radial_and_angular_distribution_ks():
    d, r0 = 200.0, 10.0
    R = d / SQ3
    ch = draw(2000, seed=3)
    off = own_offsets(ch).reshape(-1, 2).numpy()
    n = off.shape[0]  # 24000 i.i.d. UEs
    r = np.hypot(off[:, 0], off[:, 1])
    # closed form of r = R sqrt(u (1 - r0^2/R^2) + r0^2/R^2): P(r <= x) = (x^2 - r0^2) / (R^2 - r0^2)
    assert ks_distance(r, lambda x: (x ** 2 - r0 ** 2) / (R ** 2 - r0 ** 2)) < ks_bound(n)
    start = (2 * math.pi / 3) * ch.assign.repeat(2000).numpy()
    rel = np.remainder(np.arctan2(off[:, 1], off[:, 0]) - start + 1e-9, 2 * math.pi) - 1e-9
    assert ks_distance(rel, lambda x: np.clip(x / (math.pi / 3), 0, 1)) < ks_bound(n)
    # the same radial law with another minimum distance
    ch2 = draw(1000, seed=4, min_distance_m=40.0)
    r2 = own_offsets(ch2).norm(dim=-1).flatten().numpy()
    assert r2.min() >= 40.0 * (1 - 1e-12)
    assert ks_distance(r2, lambda x: (x ** 2 - 40.0 ** 2) / (R ** 2 - 40.0 ** 2)) < ks_bound(r2.size)


# ------------------------------------------------------------------------------------------------
# path loss and fading
# ------------------------------------------------------------------------------------------------
def test_pathloss_hand_values_at_100m():
    d = torch.tensor([100.0], dtype=torch.float64)
    assert abs(float(pathloss_db(d, "pico", 3.0, 30.0)) - (27.9 + 36.7 * 2)) < 1e-12  # 101.3 dB
    assert abs(float(pathloss_db(d, "macro", 3.0, 30.0)) - (15.3 + 37.6 * 2)) < 1e-12  # 90.5 dB
    assert abs(float(pathloss_db(d, "exponent", 3.0, 30.0)) - 90.0) < 1e-12  # 30 + 10 * 3 * 2
    assert abs(float(pathloss_db(d, "exponent", 2.0, 20.0)) - 60.0) < 1e-12
    with pytest.raises(ValueError, match="pathloss"):
        pathloss_db(d, "cost231", 3.0, 30.0)


@pytest.mark.parametrize("kw, formula", [
    ({}, lambda x: 27.9 + 36.7 * np.log10(x)),
    ({"layout": "hex", "n_bs": 7, "ues_per_bs": 2, "bs_distance_m": 500.0, "pathloss": "macro"},
     lambda x: 15.3 + 37.6 * np.log10(x)),
    ({"layout": "hex", "n_bs": 4, "pathloss": "exponent", "pathloss_exponent": 3.5, "pathloss_ref_db": 35.0},
     lambda x: 35.0 + 35.0 * np.log10(x)),
])
def test_fading_variance_matches_pathloss(kw, formula):
    ch = draw(300, seed=5, **kw)
    ue, bs = ch.ue_xy.numpy(), ch.bs_xy.numpy()
    dist = np.linalg.norm(ue[:, :, None, :] - bs[:, None, :, :], axis=-1)  # (B, I, K)
    var = 10.0 ** (-formula(dist) / 10.0)
    h = ch.H.numpy() / np.sqrt(var)[..., None, None]  # should be i.i.d. CN(0, 1)
    serving = np.zeros(dist.shape[1:], bool)
    serving[np.arange(ch.n_ue), ch.assign.numpy()] = True
    for sel in (serving, ~serving):
        if not sel.any():
            continue
        x = h[:, sel].ravel()
        n = x.size  # >= 25000 samples; |x|^2 ~ Exp(1): mean 1, std 1/sqrt(n)
        assert abs(np.mean(np.abs(x) ** 2) - 1.0) < 6 / math.sqrt(n)
        assert abs(np.mean(x.real ** 2) - 0.5) < 6 * math.sqrt(0.5 / n)  # Var(Re^2) = 1/2
        assert abs(np.mean(x.real * x.imag)) < 6 * math.sqrt(0.25 / n)  # Var(Re Im) = 1/4
        assert abs(np.mean(x.real)) < 6 * math.sqrt(0.5 / n) and abs(np.mean(x.imag)) < 6 * math.sqrt(0.5 / n)


# ------------------------------------------------------------------------------------------------
# hex layout
# ------------------------------------------------------------------------------------------------
def test_hex_grid_sites_and_ring_order():
    D = 500.0
    sites = hex_sites(19, D).numpy()
    # independent construction: axial coordinates (q, r) with hex distance <= 2, xy = D (q + r/2, r sqrt(3)/2)
    want = np.array([(D * (q + r / 2), D * r * SQ3 / 2) for q in range(-2, 3) for r in range(-2, 3)
                     if max(abs(q), abs(r), abs(q + r)) <= 2])
    assert want.shape == sites.shape == (19, 2)
    match = np.linalg.norm(sites[:, None] - want[None], axis=-1)
    assert np.allclose(match.min(1), 0, atol=1e-9) and np.allclose(match.min(0), 0, atol=1e-9)
    norms = np.linalg.norm(sites, axis=1)
    assert norms[0] == 0.0
    np.testing.assert_allclose(norms[1:7], D, rtol=1e-12)  # ring 1
    np.testing.assert_allclose(np.sort(norms[7:]), [SQ3 * D] * 6 + [2 * D] * 6, rtol=1e-12)  # ring 2
    np.testing.assert_allclose(sites[1], [D, 0], atol=1e-9)  # ring 1 starts on +x, counter-clockwise
    np.testing.assert_allclose(sites[2], [D / 2, SQ3 * D / 2], atol=1e-9)
    pair = np.linalg.norm(sites[:, None] - sites[None], axis=-1) + np.eye(19) * 1e9
    np.testing.assert_allclose(pair.min(1), D, rtol=1e-12)  # inter-site distance
    assert int((np.abs(pair - D) < 1e-6).sum()) // 2 == 42  # edges of the 19-site hex patch
    # a partial first ring of 3 sites is the triangle
    np.testing.assert_allclose(hex_sites(3, D).numpy(), triangle_sites(D).numpy(), atol=1e-9)


def test_hex_ues_uniform_in_own_cell():
    D, r0 = 300.0, 35.0
    a, Rc = D / 2, D / SQ3
    ch = draw(300, seed=6, layout="hex", n_bs=7, ues_per_bs=3, bs_distance_m=D, min_distance_m=r0)
    assert ch.bs_xy.shape == (300, 7, 2) and ch.assign.tolist() == [k for k in range(7) for _ in range(3)]
    dist = torch.cdist(ch.ue_xy, ch.bs_xy)  # (B, I, K)
    own = dist[:, torch.arange(ch.n_ue), ch.assign]
    assert float(own.min()) >= r0 * (1 - 1e-12) and float(own.max()) <= Rc * (1 + 1e-12)
    assert bool((own <= dist.min(-1).values + 1e-9).all())  # inside its own (Voronoi) cell
    off = own_offsets(ch).reshape(-1, 2).numpy()
    # inside the hexagon: projections on the three edge normals (0, 60, 120 degrees) at most the apothem
    for t in (0.0, math.pi / 3, 2 * math.pi / 3):
        assert np.abs(off @ np.array([math.cos(t), math.sin(t)])).max() <= a * (1 + 1e-12)
    # radial CDF of the uniform law on hexagon minus disk: area of {|x| <= r} in the hexagon,
    # pi r^2 minus six circular segments beyond the edges for r > a
    hex_area = 2 * SQ3 * a ** 2

    def cdf(x):
        seg = x ** 2 * np.arccos(np.minimum(a / x, 1)) - a * np.sqrt(np.maximum(x ** 2 - a ** 2, 0))
        return (math.pi * x ** 2 - 6 * seg - math.pi * r0 ** 2) / (hex_area - math.pi * r0 ** 2)

    r = np.hypot(off[:, 0], off[:, 1])
    assert ks_distance(r, cdf) < ks_bound(r.size)


def test_single_cell_and_interference_channel():
    one = draw(4, seed=7, layout="hex", n_bs=1, ues_per_bs=5, bs_antennas=8, ue_antennas=1)
    assert one.H.shape == (4, 5, 1, 1, 8) and one.assign.tolist() == [0] * 5
    assert torch.equal(one.bs_xy, torch.zeros(4, 1, 2, dtype=torch.float64))
    ic = draw(4, seed=7, layout="hex", n_bs=7, ues_per_bs=1, bs_antennas=1, ue_antennas=1)
    assert ic.H.shape == (4, 7, 7, 1, 1) and ic.assign.tolist() == list(range(7))


def test_range_cutoff():
    # serving distances span [10, 115.5] m, the nearest other BS is >= 200 - 115.5 = 84.5 m away
    ch = draw(200, seed=8, range_m=100.0)
    dist = torch.cdist(ch.ue_xy, ch.bs_xy)
    serving = torch.zeros_like(ch.inrange)
    serving[:, torch.arange(ch.n_ue), ch.assign] = True
    assert torch.equal(ch.inrange, (dist <= 100.0) | serving)
    # the cut-off is active on both sides, and serving links beyond it are kept
    assert bool((serving & (dist > 100.0)).any()) and bool(ch.inrange[serving & (dist > 100.0)].all())
    assert bool((~ch.inrange).any()) and bool((ch.inrange & ~serving).any())
    assert bool(draw(2, seed=8).inrange.all())  # range_m=None: everything in range


def test_invalid_options_name_the_parameter():
    for kw, name in (({"n_bs": 4}, "n_bs"), ({"layout": "square"}, "layout"), ({"pathloss": "x"}, "pathloss"),
                     ({"min_distance_m": 200.0}, "min_distance_m"), ({"ues_per_bs": 0}, "ues_per_bs"),
                     ({"range_m": -1.0}, "range_m"), ({"ue_weight": 0.0}, "ue_weight"),
                     ({"bs_distance_m": 0.0}, "bs_distance_m")):
        with pytest.raises(ValidationError, match=name):
            MulticellScenario(**kw)


# ------------------------------------------------------------------------------------------------
# determinism, options, helpers
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [{}, {"layout": "hex", "n_bs": 7, "ues_per_bs": 2}])
def test_determinism_and_dtype_independence(kw):
    a, b = draw(5, seed=11, **kw), draw(5, seed=11, **kw)
    for f in ("H", "assign", "power_w", "noise_w", "weights", "inrange", "bs_xy", "ue_xy"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    c = draw(5, seed=12, **kw)
    assert not torch.equal(a.H, c.H) and not torch.equal(a.ue_xy, c.ue_xy)
    s = draw(5, seed=11, dtype=torch.complex64, **kw)
    assert s.H.dtype == torch.complex64 and torch.equal(s.H, a.H.to(torch.complex64))
    assert torch.equal(s.ue_xy, a.ue_xy)


def test_generate_channels_reads_the_option_names():
    kw = {"layout": "hex", "bs_distance_m": 400.0, "n_bs": 4, "ues_per_bs": 2, "bs_antennas": 6,
          "ue_antennas": 3, "bs_power_dbm": 40.0, "noise_dbm": -90.0, "pathloss": "exponent",
          "pathloss_exponent": 3.2, "pathloss_ref_db": 33.0, "min_distance_m": 20.0, "range_m": 300.0,
          "ue_weight": 2.0}
    want = draw(3, seed=13, **kw)
    assert want.H.shape == (3, 8, 4, 3, 6)
    for scn in (MulticellScenario(**kw), {"family": "multicell"} | kw):
        family, got = generate_channels(scn, 3, 13, "double")
        assert family == "multicell"
        assert torch.equal(got.H, want.H) and torch.equal(got.inrange, want.inrange)
    assert float(want.power_w[0]) == pytest.approx(10.0) and float(want.noise_w[0]) == pytest.approx(1e-12)
    assert want.weights.tolist() == [2.0] * 8
    _, default = generate_channels({"family": "multicell"}, 2, 0, "double")
    assert torch.equal(default.H, draw(2, seed=0).H)


def test_subset_and_to():
    ch = draw(4, seed=14, range_m=90.0)
    sub = ch.subset([2, 0])
    assert torch.equal(sub.H, ch.H[[2, 0]]) and torch.equal(sub.inrange, ch.inrange[[2, 0]])
    assert torch.equal(sub.ue_xy, ch.ue_xy[[2, 0]]) and sub.batch == 2
    assert ch.subset(1).batch == 1 and torch.equal(ch.subset(slice(1, 3)).H, ch.H[1:3])
    lo = ch.to(torch.complex64)
    assert lo.H.dtype == torch.complex64 and lo.power_w.dtype == torch.float64
    assert torch.equal(lo.H, ch.H.to(torch.complex64))


# ------------------------------------------------------------------------------------------------
# channel file
# ------------------------------------------------------------------------------------------------
FIELDS = ("H", "assign", "power_w", "noise_w", "weights", "inrange", "bs_xy", "ue_xy")


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
def test_save_load_round_trip_exact(tmp_path, dtype):
    ch = draw(3, seed=15, dtype=dtype, layout="hex", n_bs=3, ues_per_bs=2, range_m=250.0)
    path = tmp_path / "chans.npz"
    save_channels(path, ch)
    with np.load(path) as z:
        assert str(z["family"]) == "multicell"
    back = load_channels(path, dtype)
    for f in FIELDS:
        x, y = getattr(ch, f), getattr(back, f)
        assert x.dtype == y.dtype and torch.equal(x, y), f
    # a file with only the required keys: all in range, no positions
    bare = tmp_path / "bare"  # any file name: no '.npz' is appended
    np.savez(open(bare, "wb"), **{k: getattr(ch, k).numpy() for k in ("H", "assign", "power_w", "noise_w",
                                                                        "weights")})
    got = load_channels(bare)
    assert bool(got.inrange.all()) and got.bs_xy is None and got.ue_xy is None
    assert got.H.dtype == torch.complex128 and torch.equal(got.H, ch.H.to(torch.complex128))


def _base_arrays() -> dict[str, np.ndarray]:
    ch = draw(2, seed=16, range_m=100.0)
    arrays = {f: getattr(ch, f).numpy() for f in FIELDS}
    arrays["family"] = np.array("multicell")
    return arrays


def _bad(arrays: dict, key: str, value) -> dict:
    out = dict(arrays)
    if value is None:
        del out[key]
    else:
        out[key] = value(out[key]) if callable(value) else value
    return out


def _nan_at_0(a):
    a = a.copy()
    a.flat[0] = np.nan
    return a


MALFORMED = [
    # missing required keys
    *[(k, None, "missing") for k in ("H", "assign", "power_w", "noise_w", "weights")],
    # wrong shape
    ("H", lambda a: a[0], "shape"),
    ("power_w", lambda a: np.ones(4), "shape"),
    ("noise_w", lambda a: np.ones(13), "shape"),
    ("inrange", lambda a: np.ones(a.shape[:2] + (4,), bool), "shape"),
    ("ue_xy", lambda a: np.zeros(a.shape[:2] + (3,)), "shape"),
    # wrong dtype
    ("H", lambda a: a.real.copy(), "complex"),
    ("assign", lambda a: a.astype(np.float64), "integer"),
    ("inrange", lambda a: a.astype(np.int64), "bool"),
    ("weights", lambda a: a.astype(np.complex128), "real"),
    ("family", lambda a: np.array(1), "string"),
    # bad values
    ("assign", lambda a: np.where(np.arange(a.size) == 5, 3, a), "[0, 3)"),
    ("assign", lambda a: np.where(np.arange(a.size) == 0, -1, a), "[0, 3)"),
    ("H", _nan_at_0, "NaN"),
    ("noise_w", _nan_at_0, "NaN"),
    ("bs_xy", lambda a: np.full_like(a, np.inf), "NaN"),
    ("power_w", lambda a: np.zeros_like(a), "> 0"),
    ("weights", lambda a: -a, "> 0"),
    ("inrange", lambda a: np.zeros_like(a), "serving"),
    ("family", lambda a: np.array("cellfree"), "cellfree"),
    ("foo", np.ones(3), "unknown"),
]


@pytest.mark.parametrize("key, value, phrase", MALFORMED)
def test_malformed_file_names_file_and_key(tmp_path, key, value, phrase):
    path = tmp_path / "bad.npz"
    with open(path, "wb") as f:
        np.savez(f, **_bad(_base_arrays(), key, value))
    with pytest.raises(ChannelFileError) as info:
        load_channels(path)
    msg = str(info.value)
    assert str(path) in msg and f"'{key}'" in msg and phrase in msg, msg


def test_not_a_channel_file(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("not an archive")
    npy = tmp_path / "single.npy"
    np.save(npy, np.zeros(3))
    for path in (tmp_path / "missing.npz", tmp_path, text, npy):
        with pytest.raises(ChannelFileError, match=str(path)):
            load_channels(path)
    assert issubclass(ChannelFileError, ValueError)


# ------------------------------------------------------------------------------------------------
# symmetry augmentation (train.augment: symmetry)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(layout="iid", n_bs=3, ues_per_bs=2, bs_antennas=4, ue_antennas=1, snr_db=10),
                                dict(layout="hex", n_bs=3, ues_per_bs=2, bs_antennas=4, ue_antennas=2)],
                         ids=["iid_N1", "hex_N2"])
def test_symmetry_leaves_every_rate_unchanged(kw):
    """H_ik -> P_i H_ik Q_k with V_i -> Q_{a(i)}^H V_i: every per-UE rate of fixed random precoders is the same to
    1e-10 (relative), as the per-BS power and the WMMSE sum rate (MRC start, 20 rounds) on the rotated channels;
    P_i, Q_k are unitary; the path gains ||H_ik||_F, positions, weights and CSI ranges are untouched."""
    from dsim import registry
    from dsim.evaluate import evaluate_rounds
    from dsim.scenarios.build import build_scenario
    from dsim.scenarios.multicell import apply_symmetry, haar_unitary, symmetry_transform

    ch = draw(3, seed=5, **kw)
    B, I, K, N, M = ch.H.shape
    g = torch.Generator(device="cpu").manual_seed(8)
    P, Q = haar_unitary(B, I, N, g), haar_unitary(B, K, M, g)
    for U, n in ((P, N), (Q, M)):
        assert torch.allclose(U.mH @ U, torch.eye(n, dtype=U.dtype).expand_as(U), atol=1e-13, rtol=0)
    rot = apply_symmetry(ch, P, Q)
    assert not torch.allclose(rot.H, ch.H)
    assert torch.allclose(torch.linalg.matrix_norm(rot.H), torch.linalg.matrix_norm(ch.H), rtol=1e-13, atol=0)
    assert rot.inrange is ch.inrange and rot.weights is ch.weights and rot.ue_xy is ch.ue_xy
    s0, s1 = build_scenario("multicell", ch, None, 0), build_scenario("multicell", rot, None, 0)
    gen = torch.Generator(device="cpu").manual_seed(3)
    V = torch.complex(torch.randn(B, I, M, N, generator=gen, dtype=torch.float64),
                      torch.randn(B, I, M, N, generator=gen, dtype=torch.float64)) * 0.3
    Vr = Q[:, ch.assign].mH @ V
    wsr0, r0 = s0.air.evaluate(V)
    wsr1, r1 = s1.air.evaluate(Vr)
    assert torch.allclose(r1, r0, rtol=1e-10, atol=0) and torch.allclose(wsr1, wsr0, rtol=1e-10, atol=0)
    assert torch.allclose(s1.air.power_ratio(Vr), s0.air.power_ratio(V), rtol=1e-12, atol=0)
    spec = registry.algorithm("wmmse")
    rates = [evaluate_rounds(spec.build(spec.options(init="mrc", rounds=20), s.net), s.net, s.air, [20])[20]
             for s in (s0, s1)]
    assert torch.allclose(rates[1], rates[0], rtol=1e-10, atol=0)
    # the augmentation is a function of the generator's state alone
    a1 = symmetry_transform(ch, torch.Generator(device="cpu").manual_seed(1))
    a2 = symmetry_transform(ch, torch.Generator(device="cpu").manual_seed(1))
    assert torch.equal(a1.H, a2.H)
