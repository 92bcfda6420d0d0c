"""Batched complex linear-algebra helpers shared by protocols.

Shapes: leading dims are arbitrary batch dims (realizations, agents, edges).
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def hermitian_part(x: Tensor) -> Tensor:
    """(X + X^H) / 2."""
    return 0.5 * (x + x.mH)


def pinv_tol(lam: Tensor) -> Tensor:
    """Relative threshold below which an eigenvalue of a PSD matrix counts as zero (Moore–Penrose).

    lam: (..., M) eigenvalues; returns (..., 1): ``M * eps * max|lam|`` (DESIGN §8: relative, never absolute).
    """
    eps = torch.finfo(lam.dtype).eps
    return lam.shape[-1] * eps * lam.abs().amax(dim=-1, keepdim=True)


def power_value(phi: Tensor, lam: Tensor, mu: Tensor) -> tuple[Tensor, Tensor]:
    """v(mu) = sum_m phi_m / (lam_m + mu)^2 and its derivative v'(mu) (GCN-WMMSE eq. (7)).

    phi, lam: (..., M) real (phi >= 0, lam >= 0); mu: (...,) > 0.  Returns (v, v') of shape (...,).
    """
    d = lam + mu.unsqueeze(-1)
    v = (phi / d**2).sum(-1)
    dv = (-2.0 * phi / d**3).sum(-1)
    return v, dv


def solve_mu(phi: Tensor, lam: Tensor, max_steps: int = 200, mu0: Tensor | None = None,
             steps: int | None = None) -> Tensor:
    """Dual variable of the per-BS power constraint: the mu-step (3c) solved with the rational update (9).

    mu = 0 when the Moore–Penrose solution already meets the budget (v_pinv(0) <= 1, eigenvalues below
    :func:`pinv_tol` dropped); else the root of v(mu) = 1, eq. (6)–(7), found by iterating (9)
        mu <- mu + 2 v/v' (1 - sqrt(v)),  negative iterates mapped to 0,
    which converges monotonically from below.  ``phi`` must already be divided by the power budget.

    phi, lam: (..., M); returns mu (...,) >= 0.  With ``steps`` given exactly that many sub-steps are
    taken from ``mu0`` (the unrolled network's fixed P); otherwise iterate to floating-point convergence.
    """
    lam = lam.clamp_min(0.0)
    tol = pinv_tol(lam)
    keep = lam > tol
    v0 = torch.where(keep, phi / torch.where(keep, lam, torch.ones_like(lam)) ** 2, torch.zeros_like(lam)).sum(-1)
    need = v0 > 1.0
    if steps is not None:
        mu = phi.new_zeros(phi.shape[:-1]) if mu0 is None else mu0.clone()
        for _ in range(steps):
            v, dv = power_value(phi, lam, torch.where(mu > 0, mu, torch.full_like(mu, 1e-300)))
            mu = (mu + 2.0 * v / dv * (1.0 - torch.sqrt(v))).clamp_min(0.0)
        return torch.where(need, mu, torch.zeros_like(mu))
    # start from below the root: the Moore–Penrose value at 0 restricted to the kept directions
    # is v0 > 1; iterate (9) on the full function for mu > 0.
    mu = phi.new_zeros(phi.shape[:-1])
    # first step from mu = 0 using the kept terms only (the dropped ones have phi ~ 0 and lam ~ 0)
    lam_k = torch.where(keep, lam, torch.ones_like(lam))
    phi_k = torch.where(keep, phi, torch.zeros_like(phi))
    v, dv = power_value(phi_k, lam_k, mu)
    mu = torch.where(need, (2.0 * v / dv * (1.0 - torch.sqrt(v))).clamp_min(0.0), mu)
    for _ in range(max_steps):
        v, dv = power_value(phi, lam, torch.where(mu > 0, mu, torch.ones_like(mu)))
        step = 2.0 * v / dv * (1.0 - torch.sqrt(v))
        # monotone from below: an update that does not increase mu is rounding noise -> converged
        cand = (mu + step).clamp_min(0.0)
        new = torch.where(need & (mu > 0) & (cand > mu), cand, mu)
        done = (new - mu) <= 4 * torch.finfo(mu.dtype).eps * new
        mu = new
        if bool(done.all()):
            break
    return mu


def inv_shifted(lam: Tensor, mu: Tensor) -> Tensor:
    """Diagonal of (Lambda + mu I)^dagger: 1/(lam+mu), eigenvalues below tolerance -> 0 when mu = 0.

    lam: (..., M), mu: (...,); returns (..., M).
    """
    lam = lam.clamp_min(0.0)
    d = lam + mu.unsqueeze(-1)
    tol = pinv_tol(lam)
    ok = d > tol
    return torch.where(ok, 1.0 / torch.where(ok, d, torch.ones_like(d)), torch.zeros_like(d))


def conjugate_gradient(A: Tensor, b: Tensor, x0: Tensor, steps: int) -> Tensor:
    """``steps`` conjugate-gradient iterations for A x = b, A Hermitian positive definite (Nocedal & Wright
    Alg. 5.2; Fletcher-Reeves beta = ||r_{t+1}||^2 / ||r_t||^2), every column of b solved independently.

    A (..., n, n), b and x0 (..., n, c) -> x (..., n, c).  Residual r = A x - b, direction p_0 = -r_0,
    step delta_t = ||r_t||^2 / p_t^H A p_t.  In exact arithmetic x equals A^{-1} b after n steps; a column
    whose residual is exactly 0 stays where it is (no 0/0).  Differentiable (autograd through the steps).
    """
    x = x0
    r = A @ x - b
    p = -r
    rr = (r.abs() ** 2).sum(-2, keepdim=True)
    for _ in range(steps):
        Ap = A @ p
        pAp = (p.conj() * Ap).real.sum(-2, keepdim=True)
        ok = pAp > 0
        delta = torch.where(ok, rr / torch.where(ok, pAp, torch.ones_like(pAp)), torch.zeros_like(pAp))
        x = x + delta.to(x.dtype) * p
        r = r + delta.to(r.dtype) * Ap
        rr_new = (r.abs() ** 2).sum(-2, keepdim=True)
        pos = rr > 0
        beta = torch.where(pos, rr_new / torch.where(pos, rr, torch.ones_like(rr)), torch.zeros_like(rr))
        p = -r + beta.to(p.dtype) * p
        rr = rr_new
    return x
