"""An independent, deliberately plain WMMSE (Shi et al. 2011 / GCN-WMMSE eq. (3)-(7)) in numpy.

Loops over realizations, BSs and UEs; centralized (reads the global channels); mu by bisection on
sum_i ||(R_k + mu I)^+ V~_i||_F^2 = P_k with numpy's pinv -- a different route than dsim's
(eigendecomposition + rational update (9)).  Used only by tests and benchmarks.
"""

from __future__ import annotations

import numpy as np


def rates(H, assign, V, noise):
    """Per-UE rates (nat/Hz). H (I, K, N, M), V list of (M, N)."""
    I = H.shape[0]
    out = np.zeros(I)
    for i in range(I):
        N = H.shape[2]
        J = noise[i] * np.eye(N, dtype=complex)
        for j in range(I):
            hv = H[i, assign[j]] @ V[j]
            J = J + hv @ hv.conj().T
        hv = H[i, assign[i]] @ V[i]
        Z = J - hv @ hv.conj().T
        out[i] = np.linalg.slogdet(J)[1] - np.linalg.slogdet(Z)[1]
    return out


def _bs_power(R, Vt_list, mu):
    A = np.linalg.pinv(R + mu * np.eye(R.shape[0]), hermitian=True)
    return sum(np.linalg.norm(A @ vt) ** 2 for vt in Vt_list), A


def wmmse_iteration(H, assign, V, noise, alpha, power):
    I, K, N, M = H.shape
    U, W = [], []
    for i in range(I):
        J = noise[i] * np.eye(N, dtype=complex)
        for j in range(I):
            hv = H[i, assign[j]] @ V[j]
            J = J + hv @ hv.conj().T
        hv = H[i, assign[i]] @ V[i]
        u = np.linalg.solve(J, hv)
        w = np.linalg.inv(np.eye(N) - hv.conj().T @ u)
        U.append(u)
        W.append(w)
    newV = [None] * I
    for k in range(K):
        R = np.zeros((M, M), dtype=complex)
        for j in range(I):
            R += alpha[j] * H[j, k].conj().T @ U[j] @ W[j] @ U[j].conj().T @ H[j, k]
        R = 0.5 * (R + R.conj().T)
        served = [i for i in range(I) if assign[i] == k]
        Vt = [alpha[i] * H[i, k].conj().T @ U[i] @ W[i] for i in served]
        p0, A = _bs_power(R, Vt, 0.0)
        if p0 <= power[k]:
            mu = 0.0
        else:
            lo, hi = 0.0, 1.0
            while _bs_power(R, Vt, hi)[0] > power[k]:
                hi *= 2.0
            for _ in range(200):
                mid = 0.5 * (lo + hi)
                if _bs_power(R, Vt, mid)[0] > power[k]:
                    lo = mid
                else:
                    hi = mid
            mu = hi
            A = np.linalg.pinv(R + mu * np.eye(M), hermitian=True)
        for i, vt in zip(served, Vt):
            newV[i] = A @ vt
    return newV


def mrc(H, assign, power):
    """The authors' MRC start: V_i = c_k H_ik^H, one c_k per BS so that BS k uses exactly P_k."""
    I = H.shape[0]
    V = [H[i, assign[i]].conj().T for i in range(I)]
    for k in set(int(a) for a in assign):
        mine = [i for i in range(I) if assign[i] == k]
        c = np.sqrt(power[k] / sum(np.linalg.norm(V[i]) ** 2 for i in mine))
        for i in mine:
            V[i] = c * V[i]
    return V


def run(H, assign, noise, alpha, power, rounds, V0=None):
    """WSR after init and after each of ``rounds`` iterations: (rounds+1,)."""
    V = mrc(H, assign, power) if V0 is None else list(V0)
    out = [float(alpha @ rates(H, assign, V, noise))]
    for _ in range(rounds):
        V = wmmse_iteration(H, assign, V, noise, alpha, power)
        out.append(float(alpha @ rates(H, assign, V, noise)))
    return np.array(out), V
