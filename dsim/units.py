"""Units and radio-propagation helpers shared by the scenario families (one implementation each).

Powers: dBm <-> W (``P[W] = 10^((P[dBm] - 30) / 10)``); decibels <-> linear power ratios; log-distance
path loss in dB.  Every function takes Python floats or tensors (elementwise).
"""

from __future__ import annotations

import math

import torch

Number = float | torch.Tensor

#: largest |value| a dBm / dB setting may take: 10^(300/10) W squared (1e60) is still far inside float64,
#: while 10^(1e6/10) overflows it
DBM_LIMIT = 300.0


def db_to_linear(db: Number) -> Number:
    """Power ratio of ``db`` decibels: 10^(db / 10)."""
    return 10.0 ** (db / 10.0)


def dbm_to_w(dbm: Number) -> Number:
    """Power in W of ``dbm`` dBm: 10^((dbm - 30) / 10)."""
    return db_to_linear(dbm - 30.0)


def log_distance_db(distance_m: torch.Tensor, intercept_db: float, slope_db: float) -> torch.Tensor:
    """Log-distance model in dB: intercept_db + slope_db * log10(d), d in m (any shape).

    A path loss (PL = 27.9 + 36.7 log10 d: slope > 0) or a large-scale gain (beta = -30.5 - 36.7 log10 d:
    slope < 0); slope_db = 10 x the path-loss exponent.
    """
    return intercept_db + slope_db * torch.log10(distance_m)


def thermal_noise_w(bandwidth_hz: float, noise_figure_db: float, density_dbm_hz: float = -174.0) -> float:
    """Receiver noise power [W]: density [dBm/Hz] + 10 log10(bandwidth [Hz]) + noise figure [dB]."""
    return float(dbm_to_w(density_dbm_hz + 10.0 * math.log10(bandwidth_hz) + noise_figure_db))
