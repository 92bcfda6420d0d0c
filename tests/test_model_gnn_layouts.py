"""Multicell layouts ``iid`` (Model-GNN Sec. IV-A) and ``disk`` (ICGNN Sec. V-A): their statistics.

Bounds of about 6 standard deviations or a KS level of 1e-3 on fixed seeds (as test_multicell_scenario)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from dsim.scenarios.multicell import MulticellScenario
from dsim.units import dbm_to_w
from tests.test_multicell_scenario import draw, ks_bound, ks_distance, own_offsets


def test_iid_entries_are_standard_complex_gaussian():
    ch = draw(400, seed=11, layout="iid", n_bs=2, ues_per_bs=3, bs_antennas=8, ue_antennas=2, snr_db=10.0)
    assert tuple(ch.H.shape) == (400, 6, 2, 2, 8)
    assert ch.bs_xy is None and ch.ue_xy is None and bool(ch.inrange.all())
    h = ch.H.flatten().numpy()
    n = h.size  # 76 800 i.i.d. CN(0, 1) entries
    for part in (h.real, h.imag):
        assert abs(part.mean()) < 6 * math.sqrt(0.5 / n)
        # Var(X^2) = 2 sigma^4 = 0.5 for X ~ N(0, 1/2)
        assert abs((part ** 2).mean() - 0.5) < 6 * math.sqrt(0.5 / n)
    assert abs(np.mean(h.real * h.imag)) < 6 * math.sqrt(0.25 / n)
    # |h|^2 ~ Exp(1): KS against 1 - exp(-x)
    assert ks_distance(np.abs(h) ** 2, lambda x: 1 - np.exp(-x)) < ks_bound(n)


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 20.0])
def test_iid_snr_sets_noise(snr_db):
    ch = draw(2, layout="iid", n_bs=1, ues_per_bs=4, ue_antennas=1, bs_antennas=8, snr_db=snr_db, bs_power_dbm=7.0)
    p = dbm_to_w(7.0)
    np.testing.assert_allclose(ch.power_w.numpy(), p, rtol=1e-15)
    np.testing.assert_allclose(ch.noise_w.numpy(), p / 10 ** (snr_db / 10), rtol=1e-15)


def test_iid_without_snr_uses_noise_dbm():
    ch = draw(1, layout="iid", n_bs=1, noise_dbm=-90.0)
    np.testing.assert_allclose(ch.noise_w.numpy(), dbm_to_w(-90.0), rtol=1e-15)


def test_disk_positions_and_pathloss():
    R, r0 = 500.0, 10.0
    kw = dict(layout="disk", n_bs=1, ues_per_bs=6, bs_antennas=4, ue_antennas=2, disk_radius_m=R,
              min_distance_m=r0, pathloss="exponent", pathloss_ref_db=30.5, pathloss_exponent=3.67)
    ch = draw(3000, seed=5, **kw)
    np.testing.assert_allclose(ch.bs_xy.numpy(), 0.0)
    off = own_offsets(ch).reshape(-1, 2).numpy()
    r = np.hypot(off[:, 0], off[:, 1])
    n = r.size
    assert r.min() >= r0 * (1 - 1e-12) and r.max() <= R * (1 + 1e-12)
    assert ks_distance(r, lambda x: (x ** 2 - r0 ** 2) / (R ** 2 - r0 ** 2)) < ks_bound(n)
    phi = np.remainder(np.arctan2(off[:, 1], off[:, 0]), 2 * math.pi)
    assert ks_distance(phi, lambda x: np.clip(x / (2 * math.pi), 0, 1)) < ks_bound(n)
    # fading normalised by the path loss of the paper (gain -30.5 - 36.7 log10 d dB) is CN(0, 1)
    gain = 10 ** ((-30.5 - 36.7 * np.log10(r)) / 10)  # (B*I,)
    h = ch.H[:, :, 0].reshape(n, -1).numpy() / np.sqrt(gain)[:, None]
    m = h.size
    assert abs((np.abs(h) ** 2).mean() - 1.0) < 6 * math.sqrt(1.0 / m)
    assert ks_distance((np.abs(h) ** 2).ravel(), lambda x: 1 - np.exp(-x)) < ks_bound(m)


def test_disk_rejects_min_distance_beyond_radius():
    with pytest.raises(ValidationError, match="disk_radius_m"):
        MulticellScenario(layout="disk", n_bs=1, disk_radius_m=20.0, min_distance_m=30.0)


def test_disk_user_distribution_radius_is_uniform_in_distance():
    # user_distribution: radius -- d ~ U(r0, R): empirical CDF against (r - r0) / (R - r0), angle uniform;
    # the uniform-in-area CDF (r^2 - r0^2) / (R^2 - r0^2) is rejected on the same draws
    R, r0 = 500.0, 10.0
    ch = draw(3000, seed=5, layout="disk", n_bs=1, ues_per_bs=6, disk_radius_m=R, min_distance_m=r0,
              user_distribution="radius")
    off = own_offsets(ch).reshape(-1, 2).numpy()
    r = np.hypot(off[:, 0], off[:, 1])
    n = r.size
    assert r.min() >= r0 * (1 - 1e-12) and r.max() <= R * (1 + 1e-12)
    assert ks_distance(r, lambda x: (x - r0) / (R - r0)) < ks_bound(n)
    assert ks_distance(r, lambda x: (x ** 2 - r0 ** 2) / (R ** 2 - r0 ** 2)) > 10 * ks_bound(n)
    phi = np.remainder(np.arctan2(off[:, 1], off[:, 0]), 2 * math.pi)
    assert ks_distance(phi, lambda x: np.clip(x / (2 * math.pi), 0, 1)) < ks_bound(n)
    # mean distance (R + r0) / 2 within 6 standard deviations (R - r0) / sqrt(12 n)
    assert abs(r.mean() - (R + r0) / 2) < 6 * (R - r0) / math.sqrt(12 * n)
    # the default is uniform in area and draws the same random numbers: same angles, radii mapped by the CDFs
    area = own_offsets(draw(3000, seed=5, layout="disk", n_bs=1, ues_per_bs=6, disk_radius_m=R,
                            min_distance_m=r0)).reshape(-1, 2).numpy()
    np.testing.assert_allclose(np.remainder(np.arctan2(area[:, 1], area[:, 0]), 2 * math.pi), phi, atol=1e-9)
    u = (r - r0) / (R - r0)
    np.testing.assert_allclose(np.hypot(area[:, 0], area[:, 1]), np.sqrt(u * (R ** 2 - r0 ** 2) + r0 ** 2),
                               rtol=1e-12)


@pytest.mark.parametrize("kw", [{"layout": "triangle"}, {"layout": "hex", "n_bs": 7},
                                {"layout": "iid", "n_bs": 1},
                                {"layout": "field", "serve": "all", "ue_antennas": 1, "n_bs": 2}])
def test_user_distribution_radius_only_on_disk_layouts(kw):
    with pytest.raises(ValidationError, match="user_distribution") as info:
        MulticellScenario(user_distribution="radius", **kw)
    assert "allowed: area" in str(info.value)
    with pytest.raises(ValidationError, match="user_distribution"):
        MulticellScenario(layout="disk", n_bs=1, user_distribution="volume")
    MulticellScenario(layout="field", n_bs=2, user_distribution="radius", disk_radius_m=150.0)
