"""Server-side aggregation strategies of federated fine-tuning, with Flower's names and parameters.

Every strategy maps the current global parameter vector x_t (P,) and the updates the server received this
round -- client vectors y_c (P,) with their example counts n_c -- to x_{t+1}.  One implementation each:

* ``fedavg``  (McMahan et al. 2017; Flower ``FedAvg``): x_{t+1} = sum_c n_c y_c / sum_c n_c.
* ``fedprox`` (Li et al. 2020; Flower ``FedProx``): the server aggregates as FedAvg; the clients add the
  proximal term (mu/2) ||w - x_t||^2 to their local loss (``proximal_mu``, :func:`proximal_term`).
* ``fedadam`` (Reddi et al. 2021, "Adaptive Federated Optimization", Alg. 2; Flower ``FedAdam``): the
  pseudo-gradient Delta_t = FedAvg(y) - x_t drives a server Adam step
  m_t = beta_1 m_{t-1} + (1 - beta_1) Delta_t,  v_t = beta_2 v_{t-1} + (1 - beta_2) Delta_t^2,
  x_{t+1} = x_t + eta_t m_t / (sqrt(v_t) + tau),  eta_t = eta sqrt(1 - beta_2^t) / (1 - beta_1^t)
  (the bias correction Flower's FedAdam applies).  ``eta``, ``beta_1``, ``beta_2``, ``tau`` as in Flower.

``fraction_fit`` and ``min_fit_clients`` (client sampling, and whether a round happens) are used by
:mod:`dsim.federated`, not here.  A strategy's state (FedAdam's moments) lives in the object; the server
agent holds it for the whole run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

Tensor = torch.Tensor

STRATEGIES = ("fedavg", "fedprox", "fedadam")


def weighted_mean(updates: Tensor, examples: Tensor) -> Tensor:
    """sum_c n_c y_c / sum_c n_c over the rows of ``updates`` (C, P), ``examples`` (C,) > 0 -> (P,)."""
    w = examples.to(updates.dtype)
    return (w[:, None] * updates).sum(0) / w.sum()


def proximal_term(params: list[Tensor], anchor: list[Tensor], mu: float) -> Tensor:
    """FedProx's (mu/2) sum_j ||w_j - x_j||^2 over the trainable tensors ``params`` and their values
    ``anchor`` at the start of the round (complex tensors: squared modulus)."""
    total = params[0].new_zeros((), dtype=params[0].real.dtype) if params else torch.zeros((), device="cpu")
    for p, a in zip(params, anchor):
        total = total + (p - a).abs().pow(2).sum()
    return 0.5 * mu * total


@dataclass
class Strategy:
    """One aggregation rule (see the module docstring).  ``name``: fedavg | fedprox | fedadam."""

    name: str = "fedavg"
    proximal_mu: float = 0.0
    eta: float = 1e-1
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-9
    m: Tensor | None = field(default=None, repr=False)
    v: Tensor | None = field(default=None, repr=False)
    t: int = 0

    def __post_init__(self) -> None:
        if self.name not in STRATEGIES:
            raise ValueError(f"strategy {self.name!r} not in {STRATEGIES}")

    @property
    def client_mu(self) -> float:
        """The proximal coefficient the clients use (FedProx only; 0 otherwise)."""
        return self.proximal_mu if self.name == "fedprox" else 0.0

    def aggregate(self, current: Tensor, updates: Tensor, examples: Tensor) -> Tensor:
        """x_{t+1} from x_t = ``current`` (P,), the received ``updates`` (C, P) and ``examples`` (C,), C >= 1."""
        avg = weighted_mean(updates, examples)
        if self.name in ("fedavg", "fedprox"):
            return avg
        delta = avg - current
        if self.m is None:
            self.m, self.v = torch.zeros_like(current), torch.zeros_like(current)
        self.t += 1
        self.m = self.beta_1 * self.m + (1 - self.beta_1) * delta
        self.v = self.beta_2 * self.v + (1 - self.beta_2) * delta * delta
        eta_t = self.eta * (1 - self.beta_2 ** self.t) ** 0.5 / (1 - self.beta_1 ** self.t)
        return current + eta_t * self.m / (self.v.sqrt() + self.tau)
