"""Robustness (issue 11): silent neighbours, faults, one-line errors, interrupts, no NaN in results."""

from __future__ import annotations

import pytest
import torch

from dsim.faults import FaultModel
from dsim.scenarios.multicell import multicell_network
from tests.conftest import base_channels
from tests.test_wmmse import run_local


@pytest.mark.parametrize("loss", [0.5, 0.9])
def test_wmmse_message_loss_never_below_its_initialisation(loss):
    """Probe: a lost U W left a zero beamformer (an absorbing state, WSR 0).  Now every realization ends at
    or above its own round-0 WSR, and every beamformer stays within its BS's budget."""
    ch = base_channels(batch=6, seed=21)
    f = FaultModel(message_loss=loss, seed=5)
    net, air = multicell_network(ch, f)
    Vs, _ = run_local("wmmse", net, air, faults=f, rounds=20)
    wsr = torch.stack([air.evaluate(V)[0] for V in Vs])
    assert bool((wsr[-1] >= wsr[0]).all()), (wsr[0], wsr[-1])
    assert bool((wsr > 0).all())
    for V in Vs:
        assert bool((air.power(V) <= ch.power_w * (1 + 1e-9)).all())


def test_wmmse_silent_rule_changes_nothing_without_faults():
    ch = base_channels(batch=2, seed=3)
    net, air = multicell_network(ch)
    a, _ = run_local("wmmse", net, air, rounds=4)
    f = FaultModel(message_loss=0.0, seed=1)
    b, _ = run_local("wmmse", *multicell_network(ch, f), rounds=4, faults=f)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
