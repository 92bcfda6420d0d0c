"""Paper reproduction on the GCN-WMMSE base scenario (Tab. II), slow: ``python -m pytest -q -m slow``.

* WMMSE with random init, 100 rounds, 120 realizations: mean WSR within 92-96.5 nat/Hz (paper: 93.5).
* The shipped GCN-WMMSE models L = 6, 7, 8 (``checkpoint`` shipped:L6, shipped, shipped:L8; Tab. IV / VIII rows;
  and shipped:L6dl, shipped:L7dl, shipped:L8dl, the models with diagonal loading shipped before them)
  on 200 held-out realizations of this file's own seed (777 000 111: no recipe's training, seeds s*1_000_003 + t,
  or validation, s*1_000_003 - 1, uses it (the GCN-WMMSE recipes' data seeds s are below 100), nor
  examples/gcn_wmmse_rounds.py),
  against WMMSE RI averaged over 10 random inits: % of RI at 100 rounds, % of RI truncated to L rounds and
  the rounds WMMSE RI needs to match, each at least the value measured when the model was shipped less a
  margin for nothing but the numerics (the numbers are deterministic; see ``HELD_OUT``).
"""

from __future__ import annotations

import functools

import pytest
import torch

from dsim.evaluate import evaluate_rounds
from dsim.registry import algorithm
from dsim.scenarios.multicell import multicell_network
from tests.conftest import base_channels

pytestmark = pytest.mark.slow

HELD_OUT_SEED = 777_000_111


def wsr_per_round(name: str, ch, seed: int = 0, **opts) -> torch.Tensor:
    """(rounds + 1, B) WSR [nat/Hz] of algorithm ``name`` on the local engine, float64 wire."""
    net, air = multicell_network(ch, seed=seed)
    spec = algorithm(name)
    proto = spec.build(spec.options(**opts), net)
    with torch.no_grad():
        wsr = evaluate_rounds(proto, net, air)
    return torch.stack([wsr[r] for r in range(proto.rounds + 1)])


def test_wmmse_random_init_base_scenario_mean_wsr():
    ch = base_channels(batch=120, seed=2024)
    wsr = wsr_per_round("wmmse", ch, init="random", rounds=100)
    assert torch.isfinite(wsr).all()
    mean = float(wsr[-1].mean())
    assert 92.0 <= mean <= 96.5, mean


@functools.cache
def _held_out() -> tuple[torch.Tensor, torch.Tensor]:
    """(channels, WMMSE RI mean WSR per round (101,)) of the held-out set: 200 realizations, 10 inits."""
    ch = base_channels(batch=200, seed=HELD_OUT_SEED)
    ri = torch.stack([wsr_per_round("wmmse", ch, seed=s, init="random", rounds=100) for s in range(10)])
    return ch, ri.mean(dim=(0, 2))                    # mean over inits and realizations, per round


#: checkpoint: (L, % of RI(100), % of RI TR(L), rounds RI needs) measured on HELD_OUT_SEED, 200 realizations, RI
#: over 10 inits (mean 93.56 nat/Hz at 100 rounds), when the models were shipped (session 8; the first L = 7 model,
#: shipped:L7v1: 97.84 %, 113.09 %, 39 rounds; the *dl models when they were `shipped`, `shipped:L6`, `shipped:L8`;
#: the models without diagonal loading in session 22).  The issue's L = 7 targets: 98.5 %, 112 %, 56 rounds.
HELD_OUT = {"shipped:L6dl": (6, 96.89, 116.01, 28), "shipped:L7dl": (7, 98.58, 113.94, 53),
            "shipped:L8dl": (8, 99.21, 111.93, 70),
            "shipped:L6": (6, 97.61, 116.88, 36), "shipped": (7, 99.01, 114.45, 64),
            "shipped:L8": (8, 100.06, 112.89, 101)}  # 101: RI does not reach it in 100 rounds
#: the issue's targets for the shipped L = 7 model (% of RI(100), % of RI TR(7), rounds RI needs), asserted as they
#: are (not the measured values less a margin)
ISSUE_TARGETS = {"shipped": (98.5, 112.0, 56)}


@pytest.mark.parametrize("checkpoint", sorted(HELD_OUT))
def test_shipped_gcn_wmmse_against_wmmse_ri_on_held_out_data(checkpoint):
    L, pct_ri, pct_tr, rounds = HELD_OUT[checkpoint]
    ch, ri_mean = _held_out()
    gcn = wsr_per_round("gcn_wmmse", ch, checkpoint=checkpoint)
    assert gcn.shape[0] - 1 == L
    target = float(gcn[-1].mean())
    assert 100 * target / float(ri_mean[-1]) >= pct_ri - 0.05, (target, float(ri_mean[-1]))
    assert 100 * target / float(ri_mean[L]) >= pct_tr - 0.05, (target, float(ri_mean[L]))
    reached = torch.nonzero(ri_mean >= target).flatten()
    needed = int(reached[0]) if reached.numel() else 101
    assert needed >= rounds, needed
    if checkpoint in ISSUE_TARGETS:
        want_ri, want_tr, want_rounds = ISSUE_TARGETS[checkpoint]
        assert 100 * target / float(ri_mean[-1]) >= want_ri and 100 * target / float(ri_mean[L]) >= want_tr
        assert needed >= want_rounds, needed
