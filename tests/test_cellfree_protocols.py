"""Cell-free protocols on the engine: per-AP power constraints, ordering, fronthaul accounting."""

from __future__ import annotations

import numpy as np
import torch

from agents.cellfree_power import wmmse_admm
from dsim.engine.local import LocalEngine
from dsim.registry import algorithm
from dsim.scenarios.cellfree import CellfreeScenario, cellfree_network, generate_cellfree
from tests.conftest import small_cellfree


def _decisions(name, net, air, **opts):
    spec = algorithm(name)
    proto = spec.build(spec.options(**opts), net)
    out = []
    trace = LocalEngine("float64").run(proto, net, air, on_round=lambda r, p: out.append(p))
    return out, trace


def test_power_constraints_and_order():
    net, air = small_cellfree(batch=4, seed=1, n_aps=5, n_ues=4, realizations=40)
    se = {}
    for name, opts in (("equal", {}), ("lsf", {}), ("wmmse_admm", {"rounds": 15})):
        ps, _ = _decisions(name, net, air, **opts)
        for p in ps:
            assert bool((p >= 0).all())
            assert bool((air.power_ratio(p) <= 1 + 1e-9).all()), name
        se[name] = air.evaluate(ps[-1])[0]
    assert float(se["wmmse_admm"].mean()) >= float(se["lsf"].mean()) >= float(se["equal"].mean())


def centralized_statistics(ch) -> tuple[np.ndarray, np.ndarray]:
    """a (B, K, L) and B_ki (B, K, K, L, L) of eq. (25) from the global channels, with plain loops: per
    topology, AP and draw the L-MMSE precoders of eq. (22) (perfect CSI: inv(rho H^T H^* + sigma^2 I) rho H^T,
    unit-norm columns), g_ki = h_kl^H w_il, then a_kl = Re E g_kk, [B_ki]_ll = E |g_ki|^2 and
    [B_ki]_lm = Re(E g_ki(l) (E g_ki(m))^*) for l != m (sample means over the draws)."""
    h = ch.h.numpy()  # (B, S, K, L, N)
    Bt, S, K, L, N = h.shape
    rho, s2 = ch.ue_power_w, ch.noise_w
    g = np.zeros((Bt, S, L, K, K), dtype=complex)
    for b in range(Bt):
        for s in range(S):
            for l_ in range(L):
                H = h[b, s, :, l_]  # (K, N): row k = h_kl
                W = np.linalg.inv(rho * H.T @ H.conj() + s2 * np.eye(N)) @ (rho * H.T)  # columns w_il
                W = W / np.linalg.norm(W, axis=0)
                g[b, s, l_] = H.conj() @ W  # [k, i] = h_kl^H w_il
    mean, second = g.mean(axis=1), (np.abs(g) ** 2).mean(axis=1)  # (B, L, K, K)
    a = np.zeros((Bt, K, L))
    Bm = np.zeros((Bt, K, K, L, L))
    for b in range(Bt):
        for k in range(K):
            for i in range(K):
                for l_ in range(L):
                    a[b, k, l_] = mean[b, l_, k, k].real
                    for m in range(L):
                        Bm[b, k, i, l_, m] = (second[b, l_, k, i] if l_ == m
                                              else (mean[b, l_, k, i] * np.conj(mean[b, m, k, i])).real)
    return a, Bm


def test_distributed_wmmse_admm_equals_centralized_reference():
    """The protocol (statistics computed and uploaded by the APs, combined at the CPU, powers sent back)
    == WMMSE-ADMM run centrally on statistics computed here from the global channels; the air's SE of the
    result == eq. (23)-(24) evaluated here on those statistics."""
    opts = CellfreeScenario(n_aps=4, ap_antennas=2, n_ues=3, realizations=20)
    ch = generate_cellfree(opts, 3, torch.Generator().manual_seed(2), torch.complex128)
    net, air = cellfree_network(ch)
    ps, trace = _decisions("wmmse_admm", net, air, rounds=6)
    a, Bm = centralized_statistics(ch)
    p_ref, _ = wmmse_admm(torch.from_numpy(a), torch.from_numpy(Bm), ch.noise_w, ch.power_w, outer=6,
                          max_inner=5000, tau_c=ch.tau_c, tau_d=ch.tau_d)
    torch.testing.assert_close(ps[-1], p_ref.transpose(1, 2), rtol=1e-7, atol=1e-12)
    mu = np.sqrt(ps[-1].transpose(1, 2).numpy())  # (B, K, L)
    s = (a * mu).sum(-1)
    total = np.einsum("bil,bkilm,bim->bk", mu, Bm, mu)
    se = ch.tau_d / ch.tau_c * np.log2(1 + s ** 2 / (total - s ** 2 + ch.noise_w))
    np.testing.assert_allclose(air.evaluate(ps[-1])[0].numpy(), se.sum(-1), rtol=1e-10)
    # ledger: statistics once (3 K^2 reals per AP), powers every round (K reals per AP)
    L, K, B = net.counts["ap"], net.info["n_ues"], net.batch
    stats = [r for r in trace.ledger if r.phase == "fh_stats"]
    assert len(stats) == 1 and stats[0].reals == B * L * 3 * K * K
    pw = [r for r in trace.ledger if r.phase == "fh_powers"]
    assert len(pw) == 6 and all(r.reals == B * L * K for r in pw)
