"""The air interface: the ground truth (DESIGN.md §3).

It alone holds the global channels.  It turns what transmitters send into what receivers measure and
evaluates decisions.  Its traffic is physics, not signaling: never lost, never faulted, no bytes.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod

import torch

from dsim.devices import same_device

Tensor = torch.Tensor


class Air(ABC):
    """Base of every family's air interface: the ground truth of a batch of B realizations.

    A family subclasses it (in its module under ``dsim/scenarios/``) and provides:

    * :meth:`measure` -- what receivers measure when transmitters send ``signals`` (physics, no bytes);
    * :meth:`evaluate` -- the decision's utility: (WSR or sum-SE per realization (B,), per-user rate
      (B, n_users)), in :attr:`unit`;
    * :meth:`power_ratio` -- each transmitter's used power over its budget (B, n_tx) (<= 1 when the
      power constraint holds);
    * :meth:`repeat` -- the same air with its batch repeated n times (realization-major blocks
      b + B*r), which the runner's ``restarts`` (best of n random initialisations) needs.

    :meth:`to` (the air on another device) and :attr:`device` are generic: they move / read the tensor
    attributes; a family whose air keeps tensors elsewhere (in containers) overrides :meth:`to`.
    """

    unit: str = "nat/Hz"
    #: what evaluate's first value is called in tables and plots (e.g. 'WSR', 'sum-SE')
    metric: str = "WSR"

    @property
    def device(self) -> torch.device:
        """The device of the air's tensors (cpu when it has none); it evaluates decisions there."""
        for v in vars(self).values():
            if isinstance(v, Tensor):
                return v.device
        return torch.device("cpu")

    def to(self, device: torch.device | str) -> Air:
        """A shallow copy with every tensor attribute on ``device`` (self when already there)."""
        moved = {k: v.to(device) for k, v in vars(self).items()
                 if isinstance(v, Tensor) and not same_device(v.device, device)}
        if not moved:
            return self
        out = copy.copy(self)
        out.__dict__.update(moved)
        return out

    def measure(self, name: str, signals: dict[str, Tensor]) -> dict[str, Tensor]:
        raise KeyError(f"{type(self).__name__} has no measurement {name!r}")

    @abstractmethod
    def evaluate(self, decision: Tensor) -> tuple[Tensor, Tensor]:
        """(WSR or sum-SE per realization (B,), per-user rate (B, n_users)) of ``decision``, in :attr:`unit`."""

    @abstractmethod
    def power_ratio(self, decision: Tensor) -> Tensor:
        """Each transmitter's used power over its budget (B, n_tx)."""

    @abstractmethod
    def repeat(self, n: int) -> Air:
        """The same air with its batch repeated ``n`` times (realization-major blocks b + B*r)."""
