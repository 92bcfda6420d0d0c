"""Math of the cell-free scenario and its power allocation (dsim.scenarios.cellfree, agents.cellfree_power).

Every number is checked against an independent computation: scipy quadrature for the local scattering
model, hand-computed geometry / path loss / noise, a brute-force simulation of the received downlink
signal for eq. (23)-(25), a projected-gradient optimality test for the inner ADMM and autograd for the
stationarity of WMMSE-ADMM.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.optimize import minimize

from agents.cellfree_power import (
    admm_qp,
    equal_power,
    lsf_power,
    project_power,
    weighted_sum_se,
    wmmse_admm,
    wmmse_admm_init,
    wmmse_quadratic,
)
from dsim.scenarios.build import generate_channels
from dsim.scenarios.cellfree import (
    CellfreeScenario,
    ap_statistics,
    combine_statistics,
    generate_cellfree,
    lmmse_precoders,
    load_cellfree,
    local_scattering_R,
    save_cellfree,
    sum_se,
    wrapped_displacement,
)
from dsim.scenarios.channel_file import ChannelFileError
from dsim.units import thermal_noise_w

C128 = torch.complex128


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def draw(batch: int, generator: torch.Generator, dtype: torch.dtype = C128, **options):
    return generate_cellfree(CellfreeScenario(**options), batch, generator, dtype)


def cpu_inputs(ch):
    w = lmmse_precoders(ch.h_hat_per_ap, ch.ue_power_w, ch.noise_w, ch.error_cov_per_ap())
    return combine_statistics(*ap_statistics(ch.h_per_ap, w))


# ----------------------------------------------------------------------------------------------
# local scattering model
# ----------------------------------------------------------------------------------------------
def _quad_first_row(theta: float, col: int, sd: float) -> complex:
    """Björnson's integral (2.23), adaptive Gauss-Kronrod (scipy.quad) on [-20 sd, 20 sd]."""
    def pdf(d: float) -> float:
        return math.exp(-d * d / (2 * sd * sd)) / (math.sqrt(2 * math.pi) * sd)

    def part(fn):
        return quad(lambda d: fn(math.pi * col * math.sin(theta + d)) * pdf(d), -20 * sd, 20 * sd,
                    limit=400, epsabs=1e-13, points=[0.0])[0]
    return complex(part(math.cos), part(math.sin))


@pytest.mark.parametrize("n,asd_deg", [(2, 15.0), (4, 10.0), (8, 15.0), (16, 5.0), (6, 40.0)])
def test_local_scattering_matches_quadrature(n, asd_deg):
    theta = torch.tensor([-2.5, -0.3, 0.0, 0.7, 1.4], dtype=torch.float64)
    R = local_scattering_R(n, theta, math.radians(asd_deg)).numpy()
    for t_i, th in enumerate(theta.tolist()):
        for col in range(n):
            assert abs(R[t_i, 0, col] - _quad_first_row(th, col, math.radians(asd_deg))) < 1e-9
    # Toeplitz / Hermitian structure
    assert np.allclose(R[:, 1:, 1:], R[:, :-1, :-1], atol=1e-14)


def test_local_scattering_hermitian_psd_trace():
    theta = torch.linspace(-math.pi, math.pi, 37)
    for n, asd in [(2, 15.0), (8, 15.0), (32, 10.0), (64, 2.0)]:
        R = local_scattering_R(n, theta, math.radians(asd))
        assert R.shape == (37, n, n)
        assert torch.allclose(R, R.mH, atol=0)
        trace = R.diagonal(dim1=-2, dim2=-1).real.sum(-1)
        assert torch.allclose(trace, torch.full((37,), float(n), dtype=torch.float64), atol=1e-12)
        eig = torch.linalg.eigvalsh(R)
        assert eig.min() > -1e-10 * n


def test_local_scattering_zero_spread_is_rank_one_steering():
    theta = torch.tensor([0.3, -1.1])
    n = 5
    R0 = local_scattering_R(n, theta, 0.0)
    k = torch.arange(n, dtype=torch.float64)
    for i, th in enumerate(theta.tolist()):
        a = torch.exp(-1j * math.pi * k * math.sin(th))
        assert torch.allclose(R0[i], torch.outer(a, a.conj()), atol=1e-14)
    # continuity: a tiny spread gives (almost) the same matrix
    R_small = local_scattering_R(n, theta, 1e-5)
    assert (R_small - R0).abs().max() < 1e-8


# ----------------------------------------------------------------------------------------------
# geometry, path loss, noise
# ----------------------------------------------------------------------------------------------
def test_wraparound_distance_by_hand_and_brute_force():
    ap = torch.tensor([[[10.0, 10.0]]])
    ue = torch.tensor([[[990.0, 500.0], [500.0, 995.0], [400.0, 300.0]]])
    d = wrapped_displacement(ap, ue, 1000.0)[0, :, 0]
    assert torch.allclose(d, torch.tensor([[-20.0, 490.0], [490.0, -15.0], [390.0, 290.0]], dtype=d.dtype))
    g = gen(3)
    ap = 1000 * torch.rand(2, 4, 2, generator=g, dtype=torch.float64)
    ue = 1000 * torch.rand(2, 6, 2, generator=g, dtype=torch.float64)
    dist = wrapped_displacement(ap, ue, 1000.0).norm(dim=-1)
    shifts = torch.tensor(list(itertools.product((-1000.0, 0.0, 1000.0), repeat=2)), dtype=torch.float64)
    brute = (ue[:, :, None, None, :] + shifts - ap[:, None, :, None, :]).norm(dim=-1).amin(-1)
    assert torch.allclose(dist, brute, atol=1e-9)


def test_beta_noise_and_power_by_hand():
    ch = draw(2, gen(7), n_aps=3, n_ues=4, realizations=3)
    ap, ue = ch.ap_xy.numpy(), ch.ue_xy.numpy()
    for b in range(2):
        for k in range(4):
            for l_ in range(3):
                dx = min(abs(ue[b, k, 0] - ap[b, l_, 0]), 1000 - abs(ue[b, k, 0] - ap[b, l_, 0]))
                dy = min(abs(ue[b, k, 1] - ap[b, l_, 1]), 1000 - abs(ue[b, k, 1] - ap[b, l_, 1]))
                d = math.sqrt(10.0 ** 2 + dx * dx + dy * dy)
                beta = 10 ** ((-30.5 - 36.7 * math.log10(d)) / 10)
                assert ch.beta[b, k, l_].item() == pytest.approx(beta, rel=1e-12)
                assert ch.R[b, k, l_].diagonal().real.sum().item() == pytest.approx(2 * beta, rel=1e-12)
    # -174 dBm/Hz + 73.0103 dB(20 MHz) + 10 dB = -90.9897 dBm
    assert ch.noise_w == pytest.approx(10 ** ((-90.98970004336019 - 30) / 10), rel=1e-12)
    assert thermal_noise_w(1e6, 0.0) == pytest.approx(10 ** ((-174 + 60 - 30) / 10), rel=1e-12)
    assert torch.allclose(ch.power_w, torch.full((3,), 0.1, dtype=torch.float64))
    assert ch.ue_power_w == pytest.approx(0.01)
    assert ch.prelog == pytest.approx(19 / 20)


def test_shadowing_uses_documented_draw_order():
    g = gen(11)
    ch0 = draw(2, gen(11), n_aps=3, n_ues=4, realizations=2)
    ch4 = draw(2, gen(11), n_aps=3, n_ues=4, realizations=2, shadowing_db=4.0)
    torch.rand(2, 3, 2, generator=g, dtype=torch.float64)
    torch.rand(2, 4, 2, generator=g, dtype=torch.float64)
    z = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    diff_db = 10 * torch.log10(ch4.beta / ch0.beta)
    assert torch.allclose(diff_db, 4.0 * z, atol=1e-9)


def test_channel_covariance_matches_R():
    ch = draw(1, gen(5), n_aps=2, ap_antennas=3, n_ues=2, realizations=20000)
    h = ch.h[0]  # (S, K, L, N)
    emp = torch.einsum("skln,sklm->klnm", h, h.conj()) / h.shape[0]
    R = ch.R[0]
    scale = R.diagonal(dim1=-2, dim2=-1).real.mean(-1)[..., None, None]
    assert ((emp - R).abs() / scale).max() < 0.05  # ~ 4 / sqrt(S) statistical tolerance


def test_mmse_estimates_error_covariance():
    ch = draw(1, gen(6), n_aps=2, ap_antennas=2, n_ues=3, realizations=20000, csi="mmse",
                           pilots=2)
    assert ch.tau_p == 2 and ch.pilot_index.tolist() == [0, 1, 0]
    err = (ch.h - ch.h_hat)[0]
    emp = torch.einsum("skln,sklm->klnm", err, err.conj()) / err.shape[0]
    C = ch.error_cov()[0]
    scale = ch.R[0].diagonal(dim1=-2, dim2=-1).real.mean(-1)[..., None, None]
    assert ((emp - C).abs() / scale).max() < 0.05
    assert torch.linalg.eigvalsh(C).min() > -1e-12 * scale.max()
    perfect = draw(1, gen(6), n_aps=2, n_ues=3, realizations=5)
    assert torch.equal(perfect.h, perfect.h_hat) and perfect.error_cov() is None


# ----------------------------------------------------------------------------------------------
# AP-local precoding and statistics
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("csi", ["perfect", "mmse"])
def test_lmmse_precoder_matches_direct_formula(csi):
    ch = draw(2, gen(8), n_aps=3, ap_antennas=3, n_ues=4, realizations=5, csi=csi, pilots=3)
    C = ch.error_cov_per_ap()
    w = lmmse_precoders(ch.h_hat_per_ap, ch.ue_power_w, ch.noise_w, C)  # (B, L, S, K, N)
    h = ch.h_hat_per_ap.numpy()
    rho, s2 = ch.ue_power_w, ch.noise_w
    for b, l_, s in itertools.product(range(2), range(3), range(5)):
        H = h[b, l_, s]  # (K, N)
        M = rho * H.T @ H.conj() + s2 * np.eye(3)  # sum_i rho (h_i h_i^H + C_i) + sigma^2 I
        if C is not None:
            M = M + rho * C[b, l_].numpy().sum(0)
        Wd = np.linalg.inv(M) @ (rho * H.T)  # columns: unnormalised w_k
        Wd = Wd / np.linalg.norm(Wd, axis=0)
        assert np.allclose(w[b, l_, s].numpy().T, Wd, atol=1e-12)
    assert torch.allclose(w.norm(dim=-1), torch.ones(w.shape[:-1], dtype=torch.float64), atol=1e-13)


def test_lmmse_single_ue_is_mrt_and_statistics_shapes():
    ch = draw(1, gen(9), n_aps=2, ap_antennas=4, n_ues=1, realizations=6)
    w = lmmse_precoders(ch.h_per_ap, ch.ue_power_w, ch.noise_w)
    h = ch.h_per_ap
    assert torch.allclose(w, h / h.norm(dim=-1, keepdim=True), atol=1e-13)
    mean, second = ap_statistics(h, w)
    assert mean.shape == (1, 2, 1, 1) and second.shape == (1, 2, 1, 1)
    assert torch.allclose(mean[..., 0, 0], h.norm(dim=-1).mean(dim=2)[..., 0].to(C128), atol=1e-20)
    assert torch.allclose(second[..., 0, 0], (h.norm(dim=-1) ** 2).mean(dim=2)[..., 0], rtol=1e-12)
    # an AP subset / single AP gives the same numbers as the stacked call
    m1, s1 = ap_statistics(h[:, 1], w[:, 1])
    assert torch.allclose(m1, mean[:, 1]) and torch.allclose(s1, second[:, 1])


def test_combine_statistics_structure():
    ch = draw(2, gen(10), n_aps=3, n_ues=4, realizations=30)
    w = lmmse_precoders(ch.h_hat_per_ap, ch.ue_power_w, ch.noise_w)
    mean, second = ap_statistics(ch.h_per_ap, w)
    a, Bm = combine_statistics(mean, second)
    assert a.shape == (2, 4, 3) and Bm.shape == (2, 4, 4, 3, 3)
    assert (a > 0).all()
    assert torch.allclose(a, mean.diagonal(dim1=-2, dim2=-1).real.transpose(1, 2))
    assert torch.allclose(Bm.diagonal(dim1=-2, dim2=-1), second.permute(0, 2, 3, 1))
    assert torch.allclose(Bm, Bm.transpose(-1, -2))
    assert torch.linalg.eigvalsh(Bm).min() > -1e-12 * Bm.abs().amax()
    # B_kk - a_k a_k^T is PSD (the SINR denominator exceeds the noise)
    Bkk = Bm.diagonal(dim1=1, dim2=2).permute(0, 3, 1, 2)
    assert torch.linalg.eigvalsh(Bkk - a[..., :, None] * a[..., None, :]).min() > -1e-12 * Bm.abs().amax()


# ----------------------------------------------------------------------------------------------
# SE of eq. (23)-(24) vs a brute-force simulation of the received signal
# ----------------------------------------------------------------------------------------------
QPSK = [complex(x, y) / math.sqrt(2) for x in (-1, 1) for y in (-1, 1)]


def brute_force_se(h: np.ndarray, w: np.ndarray, p: np.ndarray, noise: float, prelog: float,
                   joint: bool) -> np.ndarray:
    """Use-and-then-forget SE from simulated received symbols, without a_k / B_ki.

    h, w: (S, K, L, N) of one topology, p (K, L).  Every UE symbol vector of a QPSK alphabet is enumerated
    (so E{s_i s_j^*} = delta_ij exactly).  joint=False: AP l uses draw s_l independently of the other APs
    (all S^L combinations: the independence eq. (25) assumes); joint=True: all APs use the same draw index.
    y_k = sum_l h_kl^H sum_i sqrt(p_il) w_il s_i; the UE decodes with the known gain c_k = Re E{y_k s_k^*}
    (eq. (25) keeps the real part: E{h_kl^H w_kl} is real in expectation, its sample mean only for perfect
    CSI) and treats the rest as noise: SINR_k = c_k^2 / (E{|y_k - c_k s_k|^2} + sigma^2).
    """
    S, K, L, _ = h.shape
    g = np.einsum("skln,siln->skil", h.conj(), w) * np.sqrt(p)[None, None]  # (S, K, i, L)
    if joint:
        G = g.sum(-1)[None]  # (1, S, K, K): effective channel from s_i to UE k per draw
    else:
        idx = np.array(list(itertools.product(range(S), repeat=L)))  # (S^L, L)
        G = sum(g[idx[:, l_], :, :, l_] for l_ in range(L))[None]  # (1, S^L, K, K)
    sym = np.array(list(itertools.product(QPSK, repeat=K)))  # (4^K, K)
    y = np.einsum("aski,ti->atsk", G, sym)[0]  # (4^K, draws, K)
    c = (y * sym.conj()[:, None, :]).mean(axis=(0, 1)).real  # (K,)
    eff_noise = (np.abs(y - c * sym[:, None, :]) ** 2).mean(axis=(0, 1))
    return prelog * np.log2(1 + c ** 2 / (eff_noise + noise))


@pytest.mark.parametrize("csi", ["perfect", "mmse"])
def test_se_matches_brute_force_with_independent_ap_draws(csi):
    ch = draw(2, gen(12), n_aps=2, ap_antennas=2, n_ues=3, realizations=14, csi=csi, pilots=2)
    w = lmmse_precoders(ch.h_hat_per_ap, ch.ue_power_w, ch.noise_w, ch.error_cov_per_ap())
    a, Bm = combine_statistics(*ap_statistics(ch.h_per_ap, w))
    p = torch.rand(2, 3, 2, generator=gen(1), dtype=torch.float64) * 0.05
    se = sum_se(a, Bm, p, ch.noise_w, ch.tau_c, ch.tau_d)
    wk = w.permute(0, 2, 3, 1, 4).numpy()  # (B, S, K, L, N)
    for b in range(2):
        ref = brute_force_se(ch.h[b].numpy(), wk[b], p[b].numpy(), ch.noise_w, ch.prelog, joint=False)
        assert np.allclose(se[b].numpy(), ref, rtol=1e-10, atol=0)


def test_se_matches_physical_joint_draw_simulation():
    """Same draw index at every AP (the physical channel): agrees up to the sample correlation of
    independent APs' statistics, O(1/sqrt(S))."""
    ch = draw(1, gen(13), n_aps=3, ap_antennas=2, n_ues=3, realizations=3000)
    a, Bm = cpu_inputs(ch)
    p = lsf_power(ch.beta, ch.power_w)
    se = sum_se(a, Bm, p, ch.noise_w, ch.tau_c, ch.tau_d)[0].numpy()
    w = lmmse_precoders(ch.h_hat_per_ap, ch.ue_power_w, ch.noise_w).permute(0, 2, 3, 1, 4)[0].numpy()
    ref = brute_force_se(ch.h[0].numpy(), w, p[0].numpy(), ch.noise_w, ch.prelog, joint=True)
    assert np.allclose(se, ref, rtol=0.01)


# ----------------------------------------------------------------------------------------------
# power allocation
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def k5():
    ch = draw(6, gen(21), n_aps=7, ap_antennas=2, n_ues=5, realizations=60)
    a, Bm = cpu_inputs(ch)
    p_w, hist = wmmse_admm(a, Bm, ch.noise_w, ch.power_w, outer=40, max_inner=5000,
                           tau_c=ch.tau_c, tau_d=ch.tau_d)
    return ch, a, Bm, p_w, hist


def test_per_ap_power_constraints_every_method(k5):
    ch, a, Bm, p_w, _ = k5
    P = ch.power_w
    p_eq = equal_power(ch.batch, ch.n_ues, P)
    assert torch.allclose(p_eq, torch.full_like(p_eq, 0.1 / 5))
    assert torch.allclose(equal_power(ch.batch, ch.n_ues, 0.1, n_aps=7), p_eq)
    p_lsf = lsf_power(ch.beta, P)
    assert torch.allclose(p_lsf.sum(1), P.expand(ch.batch, -1), rtol=1e-13)
    b, k, l_ = 1, 2, 4
    sb = ch.beta[b, :, l_].sqrt()
    assert p_lsf[b, k, l_].item() == pytest.approx(0.1 * sb[k].item() / sb.sum().item(), rel=1e-13)
    for p in (p_eq, p_lsf, p_w):
        assert (p >= 0).all()
        assert (p.sum(1) <= P * (1 + 1e-12)).all()


def test_wmmse_admm_monotone_and_ordering(k5):
    ch, a, Bm, p_w, hist = k5
    assert hist.shape == (6, 41)
    steps = hist[:, 1:] - hist[:, :-1]
    assert (steps >= -1e-9 * hist[:, 1:]).all()
    se_eq = sum_se(a, Bm, equal_power(ch.batch, ch.n_ues, ch.power_w), ch.noise_w, ch.tau_c, ch.tau_d).sum(-1)
    se_lsf = sum_se(a, Bm, lsf_power(ch.beta, ch.power_w), ch.noise_w, ch.tau_c, ch.tau_d).sum(-1)
    se_w = sum_se(a, Bm, p_w, ch.noise_w, ch.tau_c, ch.tau_d).sum(-1)
    assert torch.allclose(hist[:, 0], se_eq, rtol=1e-12)  # starts from equal power
    assert torch.allclose(hist[:, -1], se_w, rtol=1e-12)
    assert (se_w >= se_eq * (1 - 1e-9)).all()  # monotone from the equal-power start
    assert se_eq.mean() <= se_lsf.mean() <= se_w.mean()


def reference_wmmse(a: np.ndarray, Bm: np.ndarray, noise: float, P: np.ndarray, outer: int, prelog: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """A second, plain WMMSE for P5 on one topology: the closed-form receiver v_k = s_k / T_k and weight
    u_k = 1 / (1 - s_k v_k), then the weighted-MSE minimisation over the amplitudes by scipy's SLSQP
    (instead of ADMM) under mu >= 0 and sum_k mu_kl^2 <= P_l.  a (K, L), Bm (K, K, L, L).
    Returns (p = mu^2 (K, L), sum-SE history (outer + 1,)), starting from equal power."""
    K, L = a.shape

    def parts(mu):
        s = (a * mu).sum(1)
        return s, np.einsum("il,kilm,im->k", mu, Bm, mu) + noise

    def se(mu):
        s, T = parts(mu)
        return prelog * np.log2(1 + s ** 2 / (T - s ** 2)).sum()

    mu = np.sqrt(np.broadcast_to(P / K, (K, L))).copy()
    hist = [se(mu)]
    for _ in range(outer):
        s, T = parts(mu)
        v = s / T
        u = 1 / (1 - s * v)

        def mse(x, u=u, v=v):  # sum_k u_k E|v_k y_k - s_k|^2 as a function of the amplitudes
            x = x.reshape(K, L)
            return float((u * (v ** 2 * (np.einsum("il,kilm,im->k", x, Bm, x) + noise)
                               - 2 * v * (a * x).sum(1) + 1)).sum())

        def grad(x, u=u, v=v):
            x = x.reshape(K, L)
            return (2 * np.einsum("k,kilm,im->il", u * v ** 2, Bm, x) - 2 * (u * v)[:, None] * a).ravel()

        budget = {"type": "ineq", "fun": lambda x: P - (x.reshape(K, L) ** 2).sum(0),
                  "jac": lambda x: -2 * np.einsum("kl,lm->lkm", x.reshape(K, L), np.eye(L)).reshape(L, K * L)}
        res = minimize(mse, mu.ravel(), jac=grad, bounds=[(0, None)] * (K * L), constraints=[budget],
                       method="SLSQP", options={"ftol": 1e-16, "maxiter": 1000})
        mu = res.x.reshape(K, L)
        hist.append(se(mu))
    return mu ** 2, np.array(hist)


def test_wmmse_admm_equals_a_second_implementation():
    """WMMSE-ADMM's outer iterations == a plain WMMSE whose amplitude step is solved by SLSQP."""
    ch = draw(2, gen(23), n_aps=3, ap_antennas=2, n_ues=3, realizations=30)
    a, Bm = cpu_inputs(ch)
    p, hist = wmmse_admm(a, Bm, ch.noise_w, ch.power_w, outer=5, max_inner=5000, tau_c=ch.tau_c, tau_d=ch.tau_d)
    for b in range(2):
        p_ref, h_ref = reference_wmmse(a[b].numpy(), Bm[b].numpy(), ch.noise_w, ch.power_w.numpy(), 5, ch.prelog)
        np.testing.assert_allclose(hist[b].numpy(), h_ref, rtol=1e-7)
        np.testing.assert_allclose(p[b].numpy(), p_ref, rtol=0, atol=1e-6 * float(ch.power_w.max()))


def test_admm_solves_the_inner_qp(k5):
    """Optimality of the ADMM output: fixed point of the projected gradient map (convex QP)."""
    ch, a, Bm, _, _ = k5
    mu0 = wmmse_admm_init(a, Bm, ch.noise_w, ch.power_w, tau_c=ch.tau_c, tau_d=ch.tau_d).mu
    A, b = wmmse_quadratic(a, Bm, mu0, ch.noise_w)
    z, _, iters = admm_qp(A, b, ch.power_w, mu0, torch.zeros_like(mu0), tol=1e-10, max_iter=20000)
    assert (iters < 20000).all()
    grad = 2 * torch.einsum("bklm,bkm->bkl", A, z) - 2 * b
    for t in (1e-3, 1e-1, 10.0):  # step sizes relative to 1 / curvature, per AP
        step = t / (2 * A.diagonal(dim1=-2, dim2=-1).amax(1, keepdim=True))
        moved = project_power(z - step * grad, ch.power_w)
        assert ((moved - z).norm(dim=(1, 2)) <= 1e-6 * z.norm(dim=(1, 2))).all()
    # and no feasible point of a random sample does better
    f = lambda m: (torch.einsum("bkl,bklm,bkm->b", m, A, m) - 2 * (b * m).sum((1, 2)))  # noqa: E731
    cand = project_power(torch.rand(200, *z.shape, generator=gen(2), dtype=torch.float64) * 0.5, ch.power_w)
    assert (torch.stack([f(c) for c in cand]) >= f(z) - 1e-9 * f(z).abs()).all()


def test_wmmse_admm_converges_to_stationary_point():
    """After many outer iterations the projected gradient of the sum-SE (autograd) vanishes (KKT of P5)."""
    ch = draw(2, gen(22), n_aps=4, ap_antennas=2, n_ues=3, realizations=40)
    a, Bm = cpu_inputs(ch)
    p, _ = wmmse_admm(a, Bm, ch.noise_w, ch.power_w, outer=100, max_inner=5000, tau_c=ch.tau_c, tau_d=ch.tau_d)
    mu = p.sqrt().requires_grad_(True)
    f = weighted_sum_se(a, Bm, mu, ch.noise_w, tau_c=ch.tau_c, tau_d=ch.tau_d).sum()
    (g,) = torch.autograd.grad(f, mu)
    step = 1e-3 * mu.detach().norm() / g.norm()
    moved = project_power(mu.detach() + step * g, ch.power_w)
    assert ((moved - mu.detach()).norm() / (step * g.norm())) < 1e-6  # ~0.9 at the equal-power start


# ----------------------------------------------------------------------------------------------
# options and files
# ----------------------------------------------------------------------------------------------
def test_generate_channels_from_model_or_mapping():
    opts = {"n_aps": 3, "ap_antennas": 1, "n_ues": 2, "realizations": 4, "asd_deg": 10.0, "csi": "mmse",
            "pilots": 2, "shadowing_db": 4.0}
    ref = draw(2, gen(30), **opts)
    for scn in (CellfreeScenario(**opts), {"family": "cellfree"} | opts):
        family, ch = generate_channels(scn, 2, 30, "double")
        assert family == "cellfree"
        assert torch.equal(ch.h, ref.h) and torch.equal(ch.h_hat, ref.h_hat) and ch.tau_p == 2
    _, ch32 = generate_channels(CellfreeScenario(**opts), 2, 30, "single")
    assert ch32.h.dtype == torch.complex64 and ch32.beta.dtype == torch.float32
    assert torch.equal(ch32.h, ref.h.to(torch.complex64))


@pytest.mark.parametrize("csi", ["perfect", "mmse"])
def test_file_roundtrip(tmp_path, csi):
    ch = draw(2, gen(31), n_aps=3, n_ues=2, realizations=3, csi=csi, pilots=2 if csi == "mmse" else None)
    f = tmp_path / "cf.npz"
    save_cellfree(f, ch)
    back = load_cellfree(f)
    for name in ("beta", "R", "h", "h_hat", "power_w", "pilot_index", "ap_xy", "ue_xy"):
        assert torch.equal(getattr(back, name), getattr(ch, name)), name
    for name in ("noise_w", "ue_power_w", "tau_c", "tau_d", "csi", "tau_p", "area_m"):
        assert getattr(back, name) == getattr(ch, name), name


def test_file_errors_name_the_key(tmp_path):
    ch = draw(1, gen(32), n_aps=2, n_ues=2, realizations=2)
    good = tmp_path / "good.npz"
    save_cellfree(good, ch)
    data = dict(np.load(good))
    cases = {"beta": ("drop", None), "R": ("shape", np.zeros((1, 2, 2, 2, 3), complex)),
             "family": ("set", np.array("multicell")), "csi": ("set", np.array("blind"))}
    for key, (kind, value) in cases.items():
        bad = dict(data)
        if kind == "drop":
            del bad[key]
        else:
            bad[key] = value
        path = tmp_path / f"bad_{key}.npz"
        np.savez(path, **bad)
        with pytest.raises(ChannelFileError, match=repr(key)):
            load_cellfree(path)
    assert issubclass(ChannelFileError, ValueError)
