"""Performance metrics shared by the scenario families' air interfaces.

Units: a family's rates are in nat/Hz (natural-log log-det) or bit/s/Hz (log2), as its papers use; the
family's air states which (``Air.unit``) and every function here keeps the unit of its input.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def weighted_sum_rate(rates: Tensor, weights: Tensor) -> Tensor:
    """sum_i alpha_i R_i: rates (B, I), weights (I,) or (B, I) -> (B,) (same unit as rates)."""
    return (rates * weights.to(rates.dtype)).sum(-1)
