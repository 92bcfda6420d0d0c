"""Cell-free downlink power allocation: the CPU-side algorithms (ICGNN paper Sec. IV, eq. (26)).

Who computes what: every AP computes its local L-MMSE precoders and Monte-Carlo statistics
(``dsim.scenarios.cellfree.lmmse_precoders`` / ``ap_statistics``) and uploads them; the CPU combines them
into a_k and B_ki of eq. (25) (``dsim.scenarios.cellfree.combine_statistics``) and allocates the powers
(:func:`equal_power`, :func:`lsf_power`, :func:`wmmse_admm` / :func:`wmmse_admm_step`).  The SE of
eq. (23)-(24) these maximise is the scenario's physics (``dsim.scenarios.cellfree.downlink_se``).
Pure batched functions, no protocol.

Conventions (B topologies, K UEs, L APs):

* ``p`` (B, K, L): power p_kl [W] that AP l spends on UE k; per-AP constraint sum_k p_kl <= P_t,l.
  ``mu`` = sqrt(p) (the paper's mu_kl, in sqrt(W)).  WMMSE-ADMM keeps mu >= 0, so p <-> mu is one-to-one.
* ``a`` (B, K, L), ``Bmat`` (B, K, K, L, L): eq. (25), as in ``dsim.scenarios.cellfree``.
* ``noise``: sigma^2 [W], float or (B,); ``power``: P_t [W], float, (L,) or (B, L);
  ``weights``: alpha_k, None (all ones), (K,) or (B, K).
* SE in bit/s/Hz (log2), including the pre-log factor tau_d / tau_c of eq. (23).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dsim.scenarios.cellfree import downlink_se, per_batch, sinr_terms


def _power(power: float | torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """P_t as (B or 1, 1, L) [W]."""
    t = torch.as_tensor(power, dtype=ref.dtype, device=ref.device)
    if t.ndim == 0:
        t = t.expand(ref.shape[-1])
    return t.reshape(-1, 1, ref.shape[-1])


def _weights(weights: torch.Tensor | None, ref: torch.Tensor) -> torch.Tensor:
    """alpha as (B or 1, K)."""
    if weights is None:
        return torch.ones(1, ref.shape[1], dtype=ref.dtype, device=ref.device)
    return torch.as_tensor(weights, dtype=ref.dtype, device=ref.device).reshape(-1, ref.shape[1])


# --------------------------------------------------------------------------------------------------
# heuristics
# --------------------------------------------------------------------------------------------------
def equal_power(batch: int, n_ues: int, power: float | torch.Tensor, n_aps: int | None = None, *,
                dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """Equal power (DESIGN section 7): p_kl = P_t,l / K.  Returns (B, K, L) [W].

    power [W]: (L,) or (B, L), or a float together with ``n_aps`` = L.  dtype / device: default the dtype /
    device of a tensor ``power``, float64 / cpu for a float.
    """
    if dtype is None:
        dtype = power.dtype if isinstance(power, torch.Tensor) else torch.float64
    if device is None:
        device = power.device if isinstance(power, torch.Tensor) else "cpu"
    P = torch.as_tensor(power, dtype=dtype, device=device)
    if P.ndim == 0:
        if n_aps is None:
            raise ValueError("equal_power: give n_aps when power is a scalar")
        P = P.expand(n_aps)
    P = P.reshape(-1, 1, P.shape[-1])
    return (P / n_ues).expand(batch, n_ues, P.shape[-1]).clone()


def lsf_power(beta: torch.Tensor, power: float | torch.Tensor) -> torch.Tensor:
    """Large-scale-fading power (DESIGN section 7): p_kl = P_t,l sqrt(beta_kl) / sum_i sqrt(beta_il).

    beta (B, K, L) linear; power [W] float, (L,) or (B, L).  Returns (B, K, L) [W].  Each AP needs only
    its own beta_il, so this is AP-local.
    """
    s = beta.sqrt()
    return _power(power, beta) * s / s.sum(dim=1, keepdim=True)


# --------------------------------------------------------------------------------------------------
# WMMSE-ADMM (Chakraborty, Demir, Björnson, Giselsson 2021)
# --------------------------------------------------------------------------------------------------
@dataclass
class WmmseAdmmState:
    """State between outer WMMSE iterations.

    mu (B, K, L) current feasible amplitudes [sqrt(W)], mu >= 0; lam (B, K, L) ADMM multipliers of
    mu = z (unscaled; warm start of the next inner loop); se (B,) weighted sum-SE at mu [bit/s/Hz];
    inner_iters (B,) ADMM iterations the last outer step needed (0 at initialisation); iteration: outer count.
    """

    mu: torch.Tensor
    lam: torch.Tensor
    se: torch.Tensor
    inner_iters: torch.Tensor
    iteration: int = 0

    @property
    def p(self) -> torch.Tensor:
        """Powers p = mu^2 (B, K, L) [W]."""
        return self.mu ** 2


def weighted_sum_se(a: torch.Tensor, Bmat: torch.Tensor, mu: torch.Tensor, noise: float | torch.Tensor,
                    weights: torch.Tensor | None = None, *, tau_c: int, tau_d: int) -> torch.Tensor:
    """Objective of P5 (eq. (26)): sum_k alpha_k SE_k [bit/s/Hz], (B,), for amplitudes mu (B, K, L)."""
    return (_weights(weights, a) * downlink_se(a, Bmat, mu, noise, tau_c, tau_d)).sum(-1)


def project_power(x: torch.Tensor, power: float | torch.Tensor) -> torch.Tensor:
    """Euclidean projection of x (B, K, L) onto {mu >= 0, sum_k mu_kl^2 <= P_t,l for every l}.

    The set is a product over APs of (nonnegative orthant) cap (ball of radius sqrt(P_t,l)); for a ball
    centred at the origin the projection onto that intersection is: clip at 0, then scale into the ball.
    """
    y = x.clamp_min(0)
    norm = torch.linalg.vector_norm(y, dim=1, keepdim=True)  # (B, 1, L)
    radius = _power(power, x).sqrt()
    shrink = radius / norm.clamp_min(torch.finfo(x.dtype).tiny)
    return y * torch.where(norm > radius, shrink, torch.ones_like(norm))


def wmmse_admm_init(a: torch.Tensor, Bmat: torch.Tensor, noise: float | torch.Tensor,
                    power: float | torch.Tensor, weights: torch.Tensor | None = None, *,
                    tau_c: int, tau_d: int) -> WmmseAdmmState:
    """Initial state: equal power p_kl = P_t,l / K (as in the ICGNN paper's benchmark), zero multipliers."""
    B, K, L = a.shape
    mu = equal_power(B, K, power, L, dtype=a.dtype, device=a.device).sqrt()
    se = weighted_sum_se(a, Bmat, mu, noise, weights, tau_c=tau_c, tau_d=tau_d)
    zeros = torch.zeros(B, dtype=torch.long, device=a.device)
    return WmmseAdmmState(mu=mu, lam=torch.zeros_like(mu), se=se, inner_iters=zeros, iteration=0)


def wmmse_quadratic(a: torch.Tensor, Bmat: torch.Tensor, mu: torch.Tensor, noise: float | torch.Tensor,
                    weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form WMMSE receiver/weight updates and the resulting convex QP in mu.

    With s_k = a_k^T mu_k, T_k = sum_i mu_i^T B_ki mu_i + sigma^2 (current mu):
    receiver v_k = s_k / T_k, MSE e_k = 1 - s_k^2 / T_k, MSE weight u_k = 1 / e_k.  The mu-step then minimises
    sum_i mu_i^T A_i mu_i - 2 b_i^T mu_i with A_i = sum_k alpha_k u_k v_k^2 B_ki (L x L, PSD) and
    b_i = alpha_i u_i v_i a_i.  Returns (A (B, K, L, L), b (B, K, L)).
    """
    signal, total = sinr_terms(a, Bmat, mu)
    T = total + per_batch(noise, a)
    v = signal / T
    u = 1.0 / (1.0 - signal * v)  # 1 / e_k, e_k = 1 - s^2 / T >= sigma^2 / T > 0
    alpha = _weights(weights, a)
    c = alpha * u * v ** 2  # (B, K)
    A = torch.einsum("bk,bkilm->bilm", c, Bmat)
    b = (alpha * u * v)[..., None] * a
    return A, b


def admm_penalty(A: torch.Tensor, rho: float | None = None) -> torch.Tensor:
    """Per-AP ADMM penalty xi_l (B, L), relative to the curvature of the QP (DESIGN section 8).

    xi_l = rho * geometric mean over UEs i of 2 [A_i]_ll: the typical curvature of the objective along
    AP l's variables (the [A_i]_ll of one AP span decades between near and far UEs, so the geometric mean,
    not the arithmetic one), hence the penalty follows the scale of A, i.e. however powers and noise are
    normalised.  rho is dimensionless (default 1: on L = 7, N = 2, K = 3, 5, 7 it needed 1.1-3x fewer inner
    iterations than 0.3, 0.5, 2 or 4, and ~9x fewer than the arithmetic mean over UEs).  A penalty constant
    within each AP's block keeps the z-step a Euclidean projection per AP.
    """
    rel = 1.0 if rho is None else float(rho)
    curv = 2.0 * A.diagonal(dim1=-2, dim2=-1)  # (B, K, L), > 0 ([B_ki]_ll = E|h_kl^H w_il|^2 > 0)
    curv = curv.clamp_min(torch.finfo(A.dtype).tiny).log().mean(dim=1).exp()  # (B, L)
    floor = curv.amax(dim=-1, keepdim=True) * 1e-12 + torch.finfo(A.dtype).tiny
    return rel * torch.maximum(curv, floor)


def admm_qp(A: torch.Tensor, b: torch.Tensor, power: float | torch.Tensor, z0: torch.Tensor,
            lam0: torch.Tensor, *, max_iter: int, rho: float | None = None, tol: float | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inner ADMM: min sum_i mu_i^T A_i mu_i - 2 b_i^T mu_i  s.t. mu >= 0, sum_k mu_kl^2 <= P_t,l.

    Splitting mu = z, f(mu) the quadratic, g(z) the indicator of the per-AP sets; penalty Xi = diag(xi_l)
    (:func:`admm_penalty`), scaled multiplier u = lam / xi:
        x_i = (2 A_i + Xi)^-1 (2 b_i + Xi (z_i - u_i))     (per UE: L x L, factorised once)
        z   = project_power(x + u)                            (per AP: orthant + ball)
        u   = u + x - z
    Stops per topology when ||x - z|| <= tol max(||x||, ||z||) and
    ||Xi (z - z_prev)|| <= tol max(||lam||, ||2b||) (relative primal / dual residuals), or after max_iter.
    A topology whose ``2 A_i + Xi`` is not positive definite (or whose A, b are not finite) keeps the
    projected warm start z0.
    A (B, K, L, L), b (B, K, L), z0 / lam0 (B, K, L) warm start.  Returns (z (B, K, L) feasible,
    lam (B, K, L), iterations (B,) until each topology met the tolerance (max_iter if it did not)).
    """
    B, K, L = b.shape
    if tol is None:
        tol = 1e-9 if b.dtype == torch.float64 else 1e-5
    xi = admm_penalty(A, rho)[:, None, :]  # (B, 1, L)
    M = 2.0 * A + torch.diag_embed(xi.expand(B, K, L))
    # statistics that do not give a positive-definite QP (e.g. under a float16 wire the fronthaul statistics,
    # ~1e-14 ... 1e-7, underflow to 0, or an AP's statistics never arrived): that topology keeps z0
    chol, info = torch.linalg.cholesky_ex(M)
    bad = (info != 0).any(dim=1) | ~torch.isfinite(M).all(dim=(1, 2, 3)) | ~torch.isfinite(b).all(dim=(1, 2))
    eye = torch.eye(L, dtype=M.dtype, device=M.device).expand(B, K, L, L)
    chol = torch.where(bad[:, None, None, None], eye, chol)
    Minv = torch.cholesky_inverse(chol)
    b = torch.where(bad[:, None, None], torch.zeros((), dtype=b.dtype, device=b.device), b)
    z = project_power(z0, power)
    u = lam0 / xi
    b2 = 2.0 * b
    b2_norm = torch.linalg.vector_norm(b2, dim=(1, 2))
    iters = torch.full((B,), max_iter, dtype=torch.long, device=b.device)
    done = torch.zeros(B, dtype=torch.bool, device=b.device)
    for it in range(1, max_iter + 1):
        x = torch.einsum("bklm,bkm->bkl", Minv, b2 + xi * (z - u))
        z_prev = z
        z = project_power(x + u, power)
        u = u + x - z
        r = torch.linalg.vector_norm(x - z, dim=(1, 2))
        s = torch.linalg.vector_norm(xi * (z - z_prev), dim=(1, 2))
        scale_p = torch.maximum(torch.linalg.vector_norm(x, dim=(1, 2)),
                                torch.linalg.vector_norm(z, dim=(1, 2)))
        scale_d = torch.maximum(torch.linalg.vector_norm(xi * u, dim=(1, 2)), b2_norm)
        ok = (r <= tol * scale_p) & (s <= tol * scale_d)
        newly = ok & ~done
        iters = torch.where(newly, torch.full_like(iters, it), iters)
        done = done | ok
        if bool(done.all()):
            break
    z = torch.where(bad[:, None, None], project_power(z0, power), z)
    return z, xi * u, iters


def wmmse_admm_step(state: WmmseAdmmState, a: torch.Tensor, Bmat: torch.Tensor, noise: float | torch.Tensor,
                    power: float | torch.Tensor, weights: torch.Tensor | None = None, *,
                    max_inner: int, tau_c: int, tau_d: int, inner_tol: float | None = None,
                    rho: float | None = None) -> WmmseAdmmState:
    """One outer WMMSE iteration: closed-form v, u (:func:`wmmse_quadratic`), then the mu-QP by ADMM
    (:func:`admm_qp`, warm-started from the previous mu and multipliers).  Returns the new state (new mu
    feasible; its weighted sum-SE in ``se``)."""
    A, b = wmmse_quadratic(a, Bmat, state.mu, noise, weights)
    mu, lam, iters = admm_qp(A, b, power, state.mu, state.lam, rho=rho, tol=inner_tol, max_iter=max_inner)
    se = weighted_sum_se(a, Bmat, mu, noise, weights, tau_c=tau_c, tau_d=tau_d)
    return WmmseAdmmState(mu=mu, lam=lam, se=se, inner_iters=iters, iteration=state.iteration + 1)


def wmmse_admm(a: torch.Tensor, Bmat: torch.Tensor, noise: float | torch.Tensor, power: float | torch.Tensor,
               weights: torch.Tensor | None = None, *, outer: int, max_inner: int, tau_c: int, tau_d: int,
               inner_tol: float | None = None, rho: float | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """WMMSE-ADMM power allocation for P5 (eq. (26)), ``outer`` outer iterations from equal power.

    a (B, K, L), Bmat (B, K, K, L, L), noise [W], power P_t [W], weights alpha (K,) / (B, K) / None.
    Returns (p (B, K, L) [W], sum-SE history (B, outer + 1) [bit/s/Hz], entry 0 = equal power).
    """
    state = wmmse_admm_init(a, Bmat, noise, power, weights, tau_c=tau_c, tau_d=tau_d)
    hist = [state.se]
    for _ in range(outer):
        state = wmmse_admm_step(state, a, Bmat, noise, power, weights, inner_tol=inner_tol,
                                max_inner=max_inner, rho=rho, tau_c=tau_c, tau_d=tau_d)
        hist.append(state.se)
    return state.p, torch.stack(hist, dim=1)


__all__ = [
    "WmmseAdmmState", "admm_penalty", "admm_qp", "equal_power", "lsf_power", "project_power", "weighted_sum_se",
    "wmmse_admm", "wmmse_admm_init", "wmmse_admm_step", "wmmse_quadratic",
]
