"""The air interface: the ground truth (DESIGN.md §3).

It alone holds the global channels.  It turns what transmitters send into what receivers measure and
evaluates decisions.  Its traffic is physics, not signaling: never lost, never faulted, no bytes.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


class Air:
    """Base of every family's air interface: the ground truth of a batch of B realizations.

    A family subclasses it (in its module under ``dsim/scenarios/``) and provides:

    * :meth:`measure` -- what receivers measure when transmitters send ``signals`` (physics, no bytes);
    * :meth:`evaluate` -- the decision's utility: (WSR or sum-SE per realization (B,), per-user rate
      (B, n_users)), in :attr:`unit`;
    * :meth:`power_ratio` -- each transmitter's used power over its budget (B, n_tx) (<= 1 when the
      power constraint holds);
    * :meth:`repeat` -- the same air with its batch repeated n times (realization-major blocks
      b + B*r), which the runner's ``restarts`` (best of n random initialisations) needs.
    """

    unit: str = "nat/Hz"
    #: what evaluate's first value is called in tables and plots (e.g. 'WSR', 'sum-SE')
    metric: str = "WSR"

    def measure(self, name: str, signals: dict[str, Tensor]) -> dict[str, Tensor]:
        raise KeyError(f"{type(self).__name__} has no measurement {name!r}")

    def evaluate(self, decision: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(f"{type(self).__name__}.evaluate")

    def power_ratio(self, decision: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__}.power_ratio")

    def repeat(self, n: int) -> Air:
        if n == 1:
            return self
        raise NotImplementedError(f"{type(self).__name__}.repeat: restarts are not defined for this family")
