"""Interference family (K Tx-Rx pairs): generator, channel files, and WMMSE on it against an independent
scalar/MISO numpy WMMSE (Shi et al. 2011; MPGNN App. D) written here, on both engines."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dsim import registry
from dsim.engine.local import LocalEngine
from dsim.evaluate import evaluate_rounds
from dsim.scenarios.build import build_scenario, generate_channels, load_channels_file, save_channels_file
from dsim.scenarios.interference import InterferenceScenario, p1411_pathloss_db

ITERS = 50


# ------------------------------------------------------------------------------ independent reference
def numpy_wmmse(H: np.ndarray, P: np.ndarray, noise: np.ndarray, w: np.ndarray, iters: int) -> list[np.ndarray]:
    """MISO interference-channel WMMSE, one realization.  H (K rx, K tx, M): row channel from Tx j to Rx k
    (received amplitude H[k, j] @ v_j); P, noise (K,), w (K,).  Init: v_k = sqrt(P_k) conj(H[k,k]) / |H[k,k]|.
    Returns the beamformers after each iteration (iters + 1 arrays (K, M), index 0 = init)."""
    K, _, M = H.shape
    v = np.sqrt(P)[:, None] * H[np.arange(K), np.arange(K)].conj()
    v /= np.linalg.norm(H[np.arange(K), np.arange(K)], axis=1)[:, None]
    out = [v.copy()]
    for _ in range(iters):
        amp = np.einsum("kjm,jm->kj", H, v)                 # received amplitude at Rx k from Tx j
        total = (np.abs(amp) ** 2).sum(1) + noise            # J_k
        own = amp[np.arange(K), np.arange(K)]
        u = own / total                                      # MMSE receiver
        wt = 1.0 / (1.0 - np.conj(own) * u).real             # MMSE weight 1 / e_k
        new = np.empty_like(v)
        for k in range(K):
            A = sum(w[j] * wt[j] * abs(u[j]) ** 2 * np.outer(H[j, k].conj(), H[j, k]) for j in range(K))
            b = w[k] * wt[k] * u[k] * H[k, k].conj()
            lam, D = np.linalg.eigh(A)
            c = np.abs(D.conj().T @ b) ** 2

            def norm2(mu: float, lam=lam, c=c) -> float:
                return float((c / (lam + mu) ** 2).sum())

            if lam.min() > 1e-14 * lam.max() and norm2(0.0) <= P[k]:
                new[k] = np.linalg.solve(A, b)
                continue
            lo, hi = 0.0, 1.0
            while norm2(hi) > P[k]:
                hi *= 2.0
            for _ in range(200):
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if norm2(mid) > P[k] else (lo, mid)
            new[k] = D @ ((D.conj().T @ b) / (lam + hi))
        v = new
        out.append(v.copy())
    return out


def numpy_wsr_bits(H: np.ndarray, v: np.ndarray, noise: np.ndarray, w: np.ndarray) -> float:
    amp = np.abs(np.einsum("kjm,jm->kj", H, v)) ** 2
    own = np.diag(amp)
    sinr = own / (amp.sum(1) - own + noise)
    return float((w * np.log2(1.0 + sinr)).sum())


SCENARIOS = [
    {"family": "interference", "layout": "gaussian", "n_pairs": 6, "snr_db": 10.0},
    {"family": "interference", "layout": "d2d", "n_pairs": 6, "tx_antennas": 2, "field_m": 150.0,
     "d_min_m": 5.0, "d_max_m": 40.0},
]


@pytest.mark.parametrize("scn,engine_kind", [(SCENARIOS[0], "local"), (SCENARIOS[1], "local"), (SCENARIOS[1], "ray")],
                         ids=["gaussian_pc-local", "d2d_bf-local", "d2d_bf-ray"])
def test_wmmse_equals_numpy_reference(scn, engine_kind, tmp_path: Path, request) -> None:
    """The multicell WMMSE protocol run on this family (one UE per BS) = the scalar/MISO numpy WMMSE, 50
    iterations, on a channel file written and read back (the runner's path)."""
    family, ch = generate_channels(scn, 3, 11, "double")
    path = save_channels_file(family, ch, tmp_path / "ic.npz")
    fam2, ch2 = load_channels_file(path, "double")
    assert fam2 == "interference"
    s = build_scenario(fam2, ch2, None, 0)
    spec = registry.algorithm("wmmse")
    proto = spec.build(spec.options(init="mrc", rounds=ITERS), s.net)
    decisions: dict[int, torch.Tensor] = {}
    if engine_kind == "ray":
        request.getfixturevalue("ray_session")
        from dsim.engine.ray import RayEngine
        engine = RayEngine("float64", shards=2)
    else:
        engine = LocalEngine("float64")
    try:
        engine.run(proto, s.net, s.air, on_round=lambda r, d: decisions.__setitem__(r, d.clone()))
    finally:
        engine.close()
    wsr = s.air.evaluate(decisions[ITERS])[0]
    H = ch2.H[:, :, :, 0, :].numpy()
    P, nz = ch2.power_w.numpy(), ch2.noise_w.numpy()
    for b in range(H.shape[0]):
        w = ch2.weights[b].numpy()
        ref = numpy_wmmse(H[b], P, nz, w, ITERS)
        for r in (0, 1, 10, ITERS):
            got = decisions[r][b, :, :, 0].numpy()
            assert np.abs(got - ref[r]).max() <= 1e-6 * np.abs(ref[r]).max(), (b, r)
        assert abs(float(wsr[b]) - numpy_wsr_bits(H[b], ref[ITERS], nz, w)) <= 1e-6 * abs(float(wsr[b]))
        # WMMSE's WSR is non-decreasing (float tolerance)
        seq = [numpy_wsr_bits(H[b], ref[r], nz, w) for r in range(ITERS + 1)]
        assert all(b2 >= a - 1e-9 * abs(a) for a, b2 in zip(seq, seq[1:]))


# ------------------------------------------------------------------------------ generator and files
def test_p1411_two_slope_by_hand() -> None:
    """PL at the breakpoint and one decade beyond it, from the formula (2.4 GHz, 1.5 m antennas)."""
    lam = 2.998e8 / 2.4e9
    rbp = 4 * 1.5 * 1.5 / lam
    lbp = abs(20 * math.log10(lam**2 / (8 * math.pi * 1.5 * 1.5)))
    d = torch.tensor([rbp / 10, rbp, 10 * rbp], dtype=torch.float64)
    got = p1411_pathloss_db(d, 2.4e9, 1.5, 1.5)
    want = torch.tensor([lbp + 6 - 20, lbp + 6, lbp + 6 + 40], dtype=torch.float64)
    assert torch.allclose(got, want, atol=1e-9)


def test_density_preserving_field_and_geometry() -> None:
    assert InterferenceScenario(n_pairs=1000).side_m() == pytest.approx(4472.136, abs=1e-3)
    assert InterferenceScenario(n_pairs=50).side_m() == 1000.0
    scn = {"family": "interference", "layout": "d2d", "n_pairs": 40, "d_min_m": 10.0, "d_max_m": 50.0}
    _, ch = generate_channels(scn, 8, 3, "double")
    d = torch.linalg.vector_norm(ch.rx_xy - ch.tx_xy, dim=-1)
    assert bool(((d >= 10.0 - 1e-9) & (d <= 50.0 + 1e-9)).all())
    assert bool(((ch.tx_xy >= 0) & (ch.tx_xy <= 1000.0 * math.sqrt(40 / 50))).all())
    dist = torch.cdist(ch.rx_xy, ch.tx_xy)
    eye = torch.eye(40, dtype=torch.bool)
    assert torch.equal(ch.inrange, (dist <= 500.0) | eye)
    assert bool(((ch.weights >= 0) & (ch.weights <= 1)).all())
    # channel power = path gain x shadowing: direct links (antenna gain) vs by-hand P.1411 at their distance
    ratio_db = 10 * torch.log10((ch.H[..., 0, 0].abs() ** 2) / 1.0)
    pl = p1411_pathloss_db(dist, 2.4e9, 1.5, 1.5) - 2.5 * eye
    resid = (ratio_db + pl)  # shadowing (8 dB) + Rayleigh (log of Exp(1)) in dB
    assert abs(float(resid.mean()) - (-2.507)) < 0.5  # E[10 log10 Exp(1)] = -2.507 dB, shadowing mean 0


def test_gaussian_statistics_and_network_shapes() -> None:
    scn = {"family": "interference", "layout": "gaussian", "n_pairs": 20, "snr_db": 0.0}
    fam, ch = generate_channels(scn, 50, 1, "double")
    assert float((ch.H.abs() ** 2).mean()) == pytest.approx(1.0, rel=0.03)
    assert float(ch.noise_w[0]) == pytest.approx(1.0)
    s = build_scenario(fam, ch, None, 0)
    assert s.net.edges["pair"].size == 20 * 19 and s.net.edges["ue>bs"].size == 400
    assert s.air.unit == "bit/s/Hz"


def test_channel_file_roundtrip_and_errors(tmp_path: Path) -> None:
    scn = {"family": "interference", "layout": "d2d", "n_pairs": 5, "tx_antennas": 2}
    fam, ch = generate_channels(scn, 2, 4, "double")
    p = save_channels_file(fam, ch, tmp_path / "a.npz")
    with np.load(p) as z:
        assert z["H"].shape == (2, 5, 5, 1, 2) and z["assign"].tolist() == list(range(5))
    _, back = load_channels_file(p, "double")
    assert torch.equal(back.H, ch.H) and torch.equal(back.weights, ch.weights) and torch.equal(back.inrange, ch.inrange)
    with np.load(p) as z:
        bad = dict(z)
    bad["assign"] = np.array([1, 0, 2, 3, 4])
    np.savez(tmp_path / "b.npz", **bad)
    from dsim.scenarios.channel_file import ChannelFileError
    with pytest.raises(ChannelFileError, match="assign"):
        load_channels_file(tmp_path / "b.npz", "double")


def test_strongest_switches_on_the_top_fraction() -> None:
    scn = {"family": "interference", "layout": "d2d", "n_pairs": 30}
    fam, ch = generate_channels(scn, 4, 9, "double")
    s = build_scenario(fam, ch, None, 0)
    spec = registry.algorithm("strongest")
    proto = spec.build(spec.options(), s.net)
    V = {}
    LocalEngine("float64").run(proto, s.net, s.air, on_round=lambda r, d: V.__setitem__(r, d))
    p = (V[1].abs() ** 2).sum((-1, -2))
    g = (ch.H.diagonal(dim1=1, dim2=2)[:, 0].abs() ** 2).sum(1)  # (B, K)
    top = torch.topk(g, 3, dim=1).indices
    want = torch.zeros_like(p, dtype=torch.bool).scatter(1, top, True)
    assert torch.equal(p > 0, want)
    assert torch.allclose(p[want], ch.power_w[0].expand(12).to(p.dtype))
    wsr = evaluate_rounds(proto, s.net, s.air, [1])[1]
    assert bool((wsr > 0).all())


# ------------------------------------------------------------------------------ symmetry (train.augment)
SYM_SCENARIOS = [
    {"family": "interference", "layout": "engnn", "n_pairs": 6},
    {"family": "interference", "layout": "d2d", "n_pairs": 5, "tx_antennas": 3, "field_m": 200.0},
    {"family": "interference", "layout": "gaussian", "n_pairs": 4},
]


@pytest.mark.parametrize("scn", SYM_SCENARIOS, ids=["engnn", "d2d_N3", "gaussian_N1"])
def test_symmetry_leaves_every_sum_rate_unchanged(scn) -> None:
    """h_jk^H -> e^{j phi_k} h_jk^H Q_j with v_j -> Q_j^H v_j: every per-pair rate of a fixed beamformer is the
    same to 1e-10 (relative), and WMMSE (MRC start, 20 rounds), run on the rotated channels, reaches the same
    sum rate; path gains ||h_jk||, positions and weights are untouched; Q_j is unitary."""
    from dsim.scenarios.interference import apply_symmetry, symmetry_draw

    fam, ch = generate_channels(scn, 3, 21, "double")
    B, K, N = ch.batch, ch.n_pairs, ch.tx_antennas
    g = torch.Generator(device="cpu").manual_seed(8)
    phase, Q = symmetry_draw(B, K, N, g)
    assert torch.allclose(Q.mH @ Q, torch.eye(N, dtype=Q.dtype).expand_as(Q), atol=1e-13, rtol=0)
    assert torch.allclose(phase.abs(), torch.ones(B, K, dtype=torch.float64), atol=1e-15, rtol=0)
    rot = apply_symmetry(ch, phase, Q)
    assert not torch.allclose(rot.H, ch.H)
    assert torch.allclose(torch.linalg.vector_norm(rot.H, dim=-1), torch.linalg.vector_norm(ch.H, dim=-1),
                          rtol=1e-13, atol=0)
    assert rot.tx_xy is ch.tx_xy and rot.weights is ch.weights and rot.inrange is ch.inrange
    s0, s1 = build_scenario(fam, ch, None, 0), build_scenario(fam, rot, None, 0)
    gen = torch.Generator(device="cpu").manual_seed(3)
    V = torch.complex(torch.randn(B, K, N, 1, generator=gen, dtype=torch.float64),
                      torch.randn(B, K, N, 1, generator=gen, dtype=torch.float64))
    wsr0, r0 = s0.air.evaluate(V)
    wsr1, r1 = s1.air.evaluate(Q.mH @ V)
    assert torch.allclose(r1, r0, rtol=1e-10, atol=0) and torch.allclose(wsr1, wsr0, rtol=1e-10, atol=0)
    spec = registry.algorithm("wmmse")
    rates = []
    for s in (s0, s1):
        proto = spec.build(spec.options(init="mrc", rounds=20), s.net)
        rates.append(evaluate_rounds(proto, s.net, s.air, [20])[20])
    assert torch.allclose(rates[1], rates[0], rtol=1e-10, atol=0)


def test_symmetry_augmented_pool_is_reproducible_from_the_seed() -> None:
    """`train.augment: symmetry` on a fixed training set: minibatch s is a function of s alone (same s, same
    channels bit for bit), a different s rotates differently, and the rotation keeps the pool's path gains."""
    from dsim.learn import pool_sampler

    scn = {"family": "interference", "layout": "engnn", "n_pairs": 5}
    plain = pool_sampler(scn, 6, 77, "double")
    aug = pool_sampler(scn, 6, 77, "double", augment="symmetry")
    aug2 = pool_sampler(scn, 6, 77, "double", augment="symmetry")
    (_, air0), (net1, air1), (net2, air2) = plain(6, 123), aug(6, 123), aug2(6, 123)  # the whole pool
    assert torch.equal(air1.H, air2.H) and torch.equal(net1.local["bs"]["H_rx"], net2.local["bs"]["H_rx"])
    assert not torch.allclose(air1.H, air0.H)
    norms = torch.linalg.vector_norm(air0.H, dim=-1)
    assert torch.allclose(torch.linalg.vector_norm(air1.H, dim=-1), norms, rtol=1e-13, atol=0)
    other = aug(6, 124)[1].H  # the same 6 realizations, another rotation
    assert not torch.allclose(other, air1.H)
    assert torch.allclose(torch.linalg.vector_norm(other, dim=-1), norms, rtol=1e-13, atol=0)
    assert torch.equal(plain(6, 124)[1].H, air0.H)  # without augmentation the whole pool is the pool


# ------------------------------------------------------------------------------ sub-networks (train.augment)
@pytest.mark.parametrize("scn", SYM_SCENARIOS[:2], ids=["engnn", "d2d_N3"])
def test_subnetwork_is_the_sub_tensor_and_silences_the_dropped_pairs(scn) -> None:
    """`train.augment: subnetwork`: minibatch s is a function of s alone; K' lies in ceil(K/2) .. K; the kept
    pairs (recovered by matching their direct channels against the pool's, not from the implementation's
    draw) carry exactly the pool's channels, ranges, weights and positions (the sub-tensor, checked entry by
    entry); and every kept pair's rate under any beamformers equals its rate in the full layout with the
    dropped pairs' beamformers set to zero (relative 1e-10)."""
    from dsim.learn import pool_sampler

    size, K = 4, scn["n_pairs"]
    plain = pool_sampler(scn, size, 31, "double")
    aug, aug2 = (pool_sampler(scn, size, 31, "double", augment="subnetwork") for _ in range(2))
    _, ch0 = generate_channels(scn, size, 31, "double")
    fam = ch0.family
    seen = set()
    for s in range(12):
        (_, air0), (net1, air1), (net2, air2) = plain(size, s), aug(size, s), aug2(size, s)
        assert torch.equal(air1.H, air2.H) and torch.equal(net1.local["bs"]["H_rx"], net2.local["bs"]["H_rx"])
        assert torch.equal(air0.H, ch0.H)  # the whole pool, in order
        k = air1.H.shape[1]
        assert (K + 1) // 2 <= k <= K
        seen.add(k)
        keep = []
        for i in range(k):
            match = [j for j in range(K) if torch.equal(air1.H[:, i, i], ch0.H[:, j, j])]
            assert len(match) == 1
            keep.append(match[0])
        assert keep == sorted(set(keep))
        for i, a in enumerate(keep):
            for m, c in enumerate(keep):
                assert torch.equal(air1.H[:, i, m], ch0.H[:, a, c])
        full_sc = build_scenario(fam, ch0, None, 0)
        gen = torch.Generator(device="cpu").manual_seed(s)
        N = ch0.tx_antennas
        V = torch.complex(torch.randn(size, K, N, 1, generator=gen, dtype=torch.float64),
                          torch.randn(size, K, N, 1, generator=gen, dtype=torch.float64))
        drop = [j for j in range(K) if j not in keep]
        V0 = V.clone()
        V0[:, drop] = 0
        _, r_full = full_sc.air.evaluate(V0)
        _, r_sub = air1.evaluate(V[:, keep])
        assert torch.allclose(r_sub, r_full[:, keep], rtol=1e-10, atol=0)
    assert len(seen) > 1  # K' varies with the minibatch
    # the channels object itself: ranges, weights, positions and per-pair constants are the sub-tensors
    from dsim.scenarios.interference import select_pairs

    keep = torch.tensor([0, 2, K - 1])
    cut = select_pairs(ch0, keep)
    kl = keep.tolist()
    for i, a in enumerate(kl):
        assert torch.equal(cut.weights[:, i], ch0.weights[:, a])
        assert torch.equal(cut.power_w[i], ch0.power_w[a]) and torch.equal(cut.noise_w[i], ch0.noise_w[a])
        if ch0.tx_xy is not None:
            assert torch.equal(cut.tx_xy[:, i], ch0.tx_xy[:, a]) and torch.equal(cut.rx_xy[:, i], ch0.rx_xy[:, a])
        for m, c in enumerate(kl):
            assert torch.equal(cut.inrange[:, i, m], ch0.inrange[:, a, c])


def test_mpgnn_code_layout_is_the_authors_formula() -> None:
    """layout mpgnn_code: every channel entry equals the authors' beamforming-code formula computed here from the
    same random stream -- power gain 4.4e5 / (d^1.88 10^(6.3 X / 20)), one X ~ N(0, 1) per antenna (X = minus
    the stream's draw), Rayleigh,
    P_max = sigma^2 = 1 -- and the layout's defaults are (2, 65) m, N_t = 2, 500 m, w = 1."""
    scn = {"family": "interference", "layout": "mpgnn_code", "n_pairs": 30}
    _, ch = generate_channels(scn, 3, 5, "double")
    B, K, M = 3, 30, 2
    gen = torch.Generator(device="cpu")
    gen.manual_seed(5)
    rng = np.random.Generator(np.random.PCG64(int(torch.randint(0, 2**62, (1,), generator=gen))))
    side = 1000.0 * math.sqrt(K / 50)
    tx = side * rng.random((B, K, 2))
    dist = 2.0 + 63.0 * rng.random((B, K))
    ang = 2 * math.pi * rng.random((B, K))
    rx = tx + np.stack([dist * np.cos(ang), dist * np.sin(ang)], -1)
    z = rng.standard_normal((B, K, K, 1, M, 2))
    x = -rng.standard_normal((B, K, K, M))
    d = np.linalg.norm(rx[:, :, None, :] - tx[:, None, :, :], axis=-1)  # [b, Rx i, Tx k]
    gain = 4.4e5 / (d[..., None] ** 1.88 * 10 ** (x * 6.3 / 20))
    want = (z[..., 0] + 1j * z[..., 1]) * np.sqrt(gain / 2)[:, :, :, None, :]
    np.testing.assert_allclose(ch.H.numpy(), want, rtol=1e-10)
    assert float(ch.power_w[0]) == pytest.approx(1.0) and float(ch.noise_w[0]) == pytest.approx(1.0)
    assert torch.equal(ch.inrange, torch.as_tensor((d <= 500.0) | np.eye(K, dtype=bool)))
    assert bool((ch.weights == 1).all())
