"""The air interface: the ground truth (DESIGN.md §3).

It alone holds the global channels.  It turns what transmitters send into what receivers measure and
evaluates decisions.  Its traffic is physics, not signaling: never lost, never faulted, no bytes.
"""

from __future__ import annotations

import torch

from dsim.metrics import bs_power, effective_channels, multicell_rates, received_covariance, weighted_sum_rate

Tensor = torch.Tensor


class MulticellAir:
    """Multicell MU-MIMO downlink (GCN-WMMSE paper Sec. II-A).

    H: (B, I, K, N, M) channel from BS k to UE i; assign (I,); noise_w (I,) W; weights (I,).
    Measurements:
      ``dl_pilots`` -- BSs transmit precoded pilots with beamformers ``V`` (B, I, M, N) (one pilot
      symbol per stream); UE i measures its received covariance J_i (B, I, N, N) and its effective
      channel H_{i a(i)} V_i (B, I, N, N).
    """

    unit = "nat/Hz"

    def __init__(self, H: Tensor, assign: Tensor, noise_w: Tensor, weights: Tensor, power_w: Tensor) -> None:
        self.H, self.assign, self.noise_w, self.weights, self.power_w = H, assign, noise_w, weights, power_w

    def measure(self, name: str, signals: dict[str, Tensor]) -> dict[str, Tensor]:
        if name != "dl_pilots":
            raise KeyError(f"multicell air has no measurement {name!r}; allowed: dl_pilots")
        V = signals["V"]
        HV = effective_channels(self.H, self.assign, V)
        J = received_covariance(HV, self.noise_w)
        idx = torch.arange(self.H.shape[1])
        return {"J": J, "HV": HV[:, idx, idx]}

    def rates(self, V: Tensor) -> Tensor:
        """Per-UE rates (B, I), nat/Hz."""
        return multicell_rates(self.H, self.assign, V, self.noise_w)

    def evaluate(self, V: Tensor) -> tuple[Tensor, Tensor]:
        """(WSR (B,), per-UE rate (B, I)) of beamformers V (B, I, M, N), nat/Hz."""
        r = self.rates(V)
        return weighted_sum_rate(r, self.weights), r

    def power(self, V: Tensor) -> Tensor:
        """Per-BS transmit power (B, K), W."""
        return bs_power(V, self.assign, self.H.shape[2])

    def repeat(self, n: int) -> MulticellAir:
        if n == 1:
            return self
        return MulticellAir(self.H.repeat(n, 1, 1, 1, 1), self.assign, self.noise_w, self.weights, self.power_w)


class CellfreeAir:
    """Cell-free downlink with local L-MMSE precoding (ICGNN paper Sec. IV, eq. (22)–(25)).

    The ground truth computes a_kl and B_ki of eq. (25) from every AP's true channels and precoders
    (same Monte-Carlo draws the APs use) and evaluates power allocations p (B, L, K) (AP-major, the
    decision layout of the cell-free protocols) by the SE bound (23)–(24), in bit/s/Hz.
    """

    unit = "bit/s/Hz"

    def __init__(self, ch) -> None:
        from agents.cellfree_power import combine_statistics
        from dsim.scenarios.cellfree import ap_statistics, lmmse_precoders

        self.ch = ch
        C = ch.error_cov()
        w = lmmse_precoders(ch.h_hat_per_ap, ch.ue_power_w, ch.noise_w,
                            None if C is None else C.permute(0, 2, 1, 3, 4))
        mean, second = ap_statistics(ch.h_per_ap, w)
        self.a, self.Bmat = combine_statistics(mean, second)
        self.power_w = ch.power_w.to(self.a.dtype)
        self.noise_w = float(ch.noise_w)

    def measure(self, name: str, signals: dict[str, Tensor]) -> dict[str, Tensor]:
        raise KeyError(f"cellfree air has no measurement {name!r}")

    def evaluate(self, p_ap: Tensor) -> tuple[Tensor, Tensor]:
        """(sum-SE (B,), per-UE SE (B, K)) [bit/s/Hz] of powers p_ap (B, L, K) [W]."""
        from agents.cellfree_power import sum_se

        se = sum_se(self.a, self.Bmat, p_ap.transpose(1, 2).to(self.a.dtype), self.noise_w,
                    self.ch.tau_c, self.ch.tau_d)
        return se.sum(-1), se

    def power_ratio(self, p_ap: Tensor) -> Tensor:
        """Per-AP used power over budget (B, L)."""
        return p_ap.sum(-1) / self.power_w.reshape(1, -1)

    def repeat(self, n: int) -> CellfreeAir:
        if n != 1:
            raise ValueError("restarts are not defined for cell-free power allocation")
        return self
