"""Model-GNN Tab. V read as joint transmission (issue 13): the single-cell Model-GNN on the concatenated channel of
all M BSs (M N antennas, M K users, ONE total-power budget P), the problem the authors' released code solves for
n_marco > 1 (docs/model_gnn_tab5_authors_code.md).
examples/model_gnn_tables.py :func:`joint_scenario`, :data:`JOINT_T5`.

The layout test is fast; the table test is slow (``python -m pytest -q -m slow tests/test_model_gnn_joint.py``).
Held-out seed 1, 200 samples (training used 2024 * 1_000_003 + t); WMMSE: 100 iterations from MRT, total power P.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from dsim.scenarios.build import generate_channels

_EXAMPLE = Path(__file__).parents[1] / "examples" / "model_gnn_tables.py"
_spec = importlib.util.spec_from_file_location("model_gnn_tables", _EXAMPLE)
tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tables)  # type: ignore[union-attr]


@pytest.mark.parametrize("M,N,K", [(2, 16, 8), (3, 16, 8), (3, 8, 4)])
def test_joint_scenario_is_the_concatenated_multicell_draw(M, N, K):
    """Exact: the joint scenario's draw (seed s) is the multi-cell draw (seed s) with user k's M channel rows
    concatenated, [h_{1k}^H, ..., h_{Mk}^H] (BS-major antenna index m N + n), the same users in the same order with
    the same noise, and one BS's budget P as the single total power."""
    B, seed = 3, 7
    _, mc = generate_channels(tables.iid(N, K, M=M), B, seed, "double")
    _, jt = generate_channels(tables.joint_scenario(M, N, K), B, seed, "double")
    assert mc.H.shape == (B, M * K, M, 1, N) and jt.H.shape == (B, M * K, 1, 1, M * N)
    for m in range(M):
        assert torch.equal(jt.H[:, :, 0, 0, m * N:(m + 1) * N], mc.H[:, :, m, 0, :])
    assert torch.equal(jt.noise_w, mc.noise_w)
    assert torch.equal(jt.power_w, mc.power_w[:1]) and bool((jt.assign == 0).all())


@pytest.mark.slow
@pytest.mark.parametrize("M,N,K", [(2, 16, 8), (3, 16, 8), (3, 8, 4)])
def test_joint_reading_table5(M, N, K):
    """% of single-BS WMMSE of the shipped single-cell model :data:`JOINT_T5` at (M N, M K), against Tab. V.

    Measured (seed 1, 200 samples; seed 3 in brackets): (2, 16, 8) -> (32, 16), N32K16: 98.90 % [99.24] (paper
    98.88); (3, 16, 8) -> (48, 24), N64K32: 98.87 % [98.79] (paper 97.33); (3, 8, 4) -> (24, 12), N32K16: 98.31 %
    [98.39] (paper 96.39).  The first two are asserted within +-2 points of the paper.  At (3, 8, 4) the model
    EXCEEDS the paper by 1.92 [2.00] points, so a +-2 band would hinge on the seed's last digit: only the lower
    bound (the paper's number) is asserted there."""
    paper = tables.PAPER_T5[(M, N, K)][0]
    r = tables.sum_rates(tables.joint_scenario(M, N, K),
                         {"wmmse": ("wmmse", {"init": "mrc", "rounds": 100}),
                          "gnn": ("model_gnn", {"checkpoint": f"shipped:{tables.JOINT_T5[(M, N, K)]}"})}, 200, seed=1)
    ratio = 100 * r["gnn"] / r["wmmse"]
    if (M, N, K) == (3, 8, 4):
        assert ratio >= paper, ratio
    else:
        assert abs(ratio - paper) <= 2.0, ratio


def test_selection_gap_premise_wmmse_on_a_subset_of_users():
    """examples/model_gnn_tables.py :func:`selection_gap` runs WMMSE with the unserved users' channels zeroed and
    reads its rate on the full channel.  Exact premises: those users get precoder 0 in every round (MRT start
    H^H = 0, and every update of a zero channel stays 0), so on the full channel they have rate 0 and the served
    users see exactly the interference they saw on the zeroed one: the two evaluations agree per sample."""
    import dataclasses

    from dsim.scenarios.build import build_scenario

    M, N, K, B, seed = 3, 8, 4, 4, 5
    scn = tables.iid(N, K, M=M)
    _, ch = generate_channels(scn, B, seed, "double")
    g = torch.Generator().manual_seed(0)
    keep = torch.rand(B, M * K, generator=g) < 0.6
    keep[:, ::K] = True                                                       # at least one user per cell
    sub = dataclasses.replace(ch, H=ch.H * keep[:, :, None, None, None].to(ch.H.dtype))
    dec: dict = {}
    tables.sum_rates(scn, {"w": ("wmmse", {"init": "mrc", "rounds": 20})}, B, seed, dec, channels=sub)
    V = dec["w"]                                                               # (B, S, M, N): S = M K served UEs
    assert bool((V[~keep] == 0).all()) and bool((V[keep].abs().sum((-2, -1)) > 0).all())
    full = build_scenario("multicell", ch, None, seed).air.evaluate(V)[0]
    zeroed = build_scenario("multicell", sub, None, seed).air.evaluate(V)[0]
    torch.testing.assert_close(full, zeroed, rtol=1e-12, atol=1e-12)
