"""Performance metrics: weighted sum rate (WSR) / spectral efficiency and power checks.

Units: multicell MU-MIMO rates in nat/Hz (natural-log log-det, GCN-WMMSE paper Sec. II-A); the GNN
papers' tables use bit/s/Hz (log2).  Every function says which it returns.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def effective_channels(H: Tensor, assign: Tensor, V: Tensor) -> Tensor:
    """H_{i, a(j)} V_j for every receiver i and stream owner j.

    H: (B, I, K, N, M) channel BS k -> UE i; assign: (I,) serving BS; V: (B, I, M, N) beamformer of UE j.
    Returns (B, I, I, N, N) indexed [b, i (receiver), j (owner of the beamformer)].
    """
    B, I, K, N, M = H.shape
    # group the beamformers by serving BS (zero-padded to the largest cell) so that each BS needs one
    # GEMM (I*N x M) @ (M x S*N) instead of I*S tiny (N x M) @ (M x N) products
    order = torch.argsort(assign, stable=True)
    counts = torch.bincount(assign, minlength=K)
    S = int(counts.max())
    slot = torch.empty(I, dtype=torch.int64)
    slot[order] = torch.arange(I) - (torch.cumsum(counts, 0) - counts)[assign[order]]
    Vp = torch.zeros(B, K * S, M, N, dtype=V.dtype).index_copy(1, assign * S + slot, V)
    Vp = Vp.reshape(B, K, S, M, N).permute(0, 1, 3, 2, 4).reshape(B, K, M, S * N)
    G = H.permute(0, 2, 1, 3, 4).reshape(B, K, I * N, M)
    X = (G @ Vp).reshape(B, K, I, N, S, N)                 # [b, k, i, :, s, :] = H_ik V_(k, s)
    return X[:, assign, :, :, slot, :].permute(1, 2, 0, 3, 4)  # (B, I(i), I(j), N, N)


def received_covariance(HV: Tensor, noise_w: Tensor) -> Tensor:
    """J_i = sum_j H_{i a(j)} V_j V_j^H H^H + sigma_i^2 I  (GCN-WMMSE Sec. II-B).

    HV: (B, I, I, N, N) from :func:`effective_channels`; noise_w: (I,) or (B, I) W.  Returns (B, I, N, N).
    """
    J = (HV @ HV.mH).sum(dim=2)
    eye = torch.eye(J.shape[-1], dtype=J.dtype)
    nz = noise_w.to(J.real.dtype)
    nz = nz.reshape(1, -1, 1, 1) if nz.dim() == 1 else nz.reshape(nz.shape[0], -1, 1, 1)
    return J + nz * eye


def multicell_rates(H: Tensor, assign: Tensor, V: Tensor, noise_w: Tensor) -> Tensor:
    """Per-UE rate R_i = log det(I + Q_i Z_i^{-1}) = log det J_i - log det Z_i, nat/Hz (B = 1 Hz).

    Shapes as :func:`effective_channels`; returns (B, I).
    """
    HV = effective_channels(H, assign, V)
    J = received_covariance(HV, noise_w)
    idx = torch.arange(H.shape[1])
    own = HV[:, idx, idx]  # (B, I, N, N)
    Z = J - own @ own.mH
    return torch.linalg.slogdet(J)[1] - torch.linalg.slogdet(Z)[1]


def weighted_sum_rate(rates: Tensor, weights: Tensor) -> Tensor:
    """sum_i alpha_i R_i: rates (B, I), weights (I,) or (B, I) -> (B,) (same unit as rates)."""
    return (rates * weights.to(rates.dtype)).sum(-1)


def bs_power(V: Tensor, assign: Tensor, n_bs: int) -> Tensor:
    """Transmit power of each BS, sum_{i in I_k} ||V_i||_F^2 (W).  V: (B, I, M, N) -> (B, K)."""
    p = (V.abs() ** 2).sum(dim=(-1, -2))
    out = torch.zeros(V.shape[0], n_bs, dtype=p.dtype)
    return out.index_add_(1, assign, p)
