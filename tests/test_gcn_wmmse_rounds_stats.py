"""The rounds statistic of ``examples/gcn_wmmse_rounds.py`` (rounds WMMSE RI needs to match GCN-WMMSE) and its
spread over subsets of the held-out realizations, against brute-force counting."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

_EXAMPLE = Path(__file__).parents[1] / "examples" / "gcn_wmmse_rounds.py"
_spec = importlib.util.spec_from_file_location("gcn_wmmse_rounds", _EXAMPLE)
ex = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ex)  # type: ignore[union-attr]


def _curves(R: int = 30, B: int = 25, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ri = np.cumsum(rng.exponential(1.0, (R + 1, B)), axis=0)       # increasing WSR per realization
    target = ri[R // 2] + rng.normal(0.0, 2.0, B)                  # matched somewhere mid-way on average
    return ri, target


def _brute(ri: np.ndarray, target: np.ndarray) -> int | None:
    goal = sum(target) / len(target)
    for r in range(ri.shape[0]):
        if sum(ri[r]) / ri.shape[1] >= goal:
            return r
    return None


def test_rounds_to_match_is_the_first_round_reaching_the_mean():
    for seed in range(20):
        ri, target = _curves(seed=seed)
        assert ex.rounds_to_match(ri, target) == _brute(ri, target)
    ri, target = _curves()
    assert ex.rounds_to_match(ri, target + 1e6) is None


def test_subset_rounds():
    ri, target = _curves(B=25)
    full = ex.rounds_to_match(ri, target)
    # subsets of every realization: every draw is the whole set's statistic
    assert (ex.subset_rounds(ri, target, 25, 7) == full).all()
    # smaller subsets: each draw is the brute-force count on the realizations it drew (same seed, same draws)
    got = ex.subset_rounds(ri, target, 10, 50, seed=4)
    rng = np.random.default_rng(4)
    want = []
    for _ in range(50):
        idx = rng.choice(25, 10, replace=False)
        n = _brute(ri[:, idx], target[idx])
        want.append(ri.shape[0] if n is None else n)
    assert got.tolist() == want
    assert len(set(want)) > 1                                       # the statistic does move between subsets
    assert (ex.subset_rounds(ri, target + 1e6, 10, 5) == ri.shape[0]).all()   # never matched: R + 1
    with pytest.raises(ValueError, match="subset size 26"):
        ex.subset_rounds(ri, target, 26, 5)


def test_bad_subset_is_one_line_and_exit_2(capsys):
    argv = sys.argv
    try:
        for args in (["--batch", "10", "--subset", "11"], ["--subset", "5", "--subset-draws", "0"]):
            sys.argv = ["gcn_wmmse_rounds.py", *args]
            with pytest.raises(SystemExit) as e:
                ex.main()                                            # refused before any channel is drawn
            assert e.value.code == 2
            assert "--subset" in capsys.readouterr().err
    finally:
        sys.argv = argv
