"""The straightforward comparison point: WMMSE with Python loops over BSs and UEs, vectorized only
over the batch of realizations (torch), centralized.  Same math as agents/wmmse.py (eigendecomposition
+ rational mu update), written the way a first notebook would.  Benchmarks only."""

from __future__ import annotations

import torch

from dsim.linalg import inv_shifted, solve_mu


def loop_wmmse_iteration(H, assign, V, noise, alpha, power):
    """H (B, I, K, N, M); V list of I tensors (B, M, N); returns the new list."""
    B, I, K, N, M = H.shape
    eye = torch.eye(N, dtype=H.dtype)
    U, W = [], []
    for i in range(I):
        J = noise[i] * eye.expand(B, N, N)
        for j in range(I):
            hv = H[:, i, assign[j]] @ V[j]
            J = J + hv @ hv.mH
        hv = H[:, i, assign[i]] @ V[i]
        u = torch.linalg.solve(J, hv)
        U.append(u)
        W.append(torch.linalg.inv(eye - hv.mH @ u))
    newV = [None] * I
    for k in range(K):
        R = torch.zeros(B, M, M, dtype=H.dtype)
        for j in range(I):
            R = R + alpha[j] * H[:, j, k].mH @ U[j] @ W[j] @ U[j].mH @ H[:, j, k]
        R = 0.5 * (R + R.mH)
        lam, D = torch.linalg.eigh(R)
        served = [i for i in range(I) if int(assign[i]) == k]
        phi = torch.zeros(B, M, dtype=lam.dtype)
        projs = []
        for i in served:
            vt = alpha[i] * H[:, i, k].mH @ U[i] @ W[i]
            p = D.mH @ vt
            projs.append(p)
            phi = phi + (p.abs() ** 2).sum(-1)
        mu = solve_mu(phi / power[k], lam)
        d = inv_shifted(lam, mu)
        for i, p in zip(served, projs):
            newV[i] = D @ (d.unsqueeze(-1).to(p.dtype) * p)
    return newV
