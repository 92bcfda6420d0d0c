"""dsim/jit.py (``train.compile``): eager outside ``compiling``, compiled inside with the same loss and gradients
(float64: to rounding), and a clear config line where torch.compile cannot run."""

from __future__ import annotations

import pytest
import torch

import dsim.jit as jit
import dsim.train as train_mod
from dsim.config import ConfigError
from dsim.learn import forward_loss, get_learnable, pool_sampler
from dsim.train import train_main


def test_compilable_is_the_eager_function_outside_compiling(monkeypatch):
    calls = []

    @jit.compilable
    def f(x: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return x * 3.0

    def no_compile(*a, **k):
        raise AssertionError("torch.compile called outside compiling()")

    monkeypatch.setattr(torch, "compile", no_compile)
    x = torch.arange(4.0)
    assert torch.equal(f(x), x * 3.0) and calls == [1]
    assert f.eager(x).tolist() == [0.0, 3.0, 6.0, 9.0]
    with jit.compiling(False):
        assert torch.equal(f(x), x * 3.0)
    assert not jit.enabled()


def test_compiling_restores_mode_and_limit_on_error():
    limit = torch._dynamo.config.recompile_limit
    with pytest.raises(RuntimeError, match="boom"):
        with jit.compiling(True):
            assert jit.enabled() and torch._dynamo.config.recompile_limit >= jit.RECOMPILE_LIMIT
            raise RuntimeError("boom")
    assert not jit.enabled() and torch._dynamo.config.recompile_limit == limit


def test_train_compile_unavailable_is_one_config_line(tmp_path, monkeypatch):
    monkeypatch.setattr(train_mod, "compile_unavailable", lambda device: "InvalidCxxCompiler: No working C++ "
                                                                        "compiler found")
    cfg = {"seed": 1, "source": "t.yaml", "precision": "double",
           "scenario": {"family": "multicell", "layout": "iid", "n_bs": 1, "ues_per_bs": 2, "bs_antennas": 4,
                        "ue_antennas": 1, "snr_db": 10.0},
           "train": {"algorithm": "model_gnn", "options": {"checkpoint": "untrained"}, "steps": 2, "batch": 2,
                     "val_size": 2, "progress": False, "compile": True}}
    with pytest.raises(ConfigError) as err:
        train_main(cfg, tmp_path / "out")
    assert err.value.lines == ["t.yaml: train.compile: torch.compile does not work here (InvalidCxxCompiler: No "
                               "working C++ compiler found); allowed: false"]
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("algorithm, options, n_bs, n_ant, ues", [
    ("model_gnn_mc", {"checkpoint": "untrained", "hidden": [8, 8, 4], "aggr": "mean", "taylor_split": "self",
                      "user_gate": True}, 2, 4, 2),
    ("model_gnn", {"checkpoint": "untrained", "hidden": [8, 8, 4]}, 1, 6, 3),
])
def test_compiled_training_step_equals_eager(algorithm, options, n_bs, n_ant, ues):
    """The loss and every gradient of one training step, compiled against eager, in float64 (where the only
    difference, the order of floating-point operations, is at rounding level).  Slow: ~1 min of compilation."""
    if jit.compile_unavailable() is not None:
        pytest.skip(f"torch.compile unavailable: {jit.compile_unavailable()}")
    scn = {"family": "multicell", "layout": "iid", "n_bs": n_bs, "ues_per_bs": ues, "bs_antennas": n_ant,
           "ue_antennas": 1, "snr_db": 10.0}
    net, air = pool_sampler(scn, 6, 11, "double")(6, 1)
    learn = get_learnable(algorithm, options)

    def step(on: bool) -> tuple[float, list[torch.Tensor]]:
        learn.module.zero_grad()
        with jit.compiling(on):
            loss, _ = forward_loss(learn, net, air)
            loss.backward()
        return float(loss.detach()), [p.grad.clone() for p in learn.module.parameters()]

    from torch._dynamo.utils import counters

    counters.clear()
    eager, compiled = step(False), step(True)
    assert counters["stats"]["unique_graphs"] >= 3  # the layer functions did run compiled
    assert compiled[0] == pytest.approx(eager[0], rel=1e-12)
    for g_e, g_c in zip(eager[1], compiled[1]):
        torch.testing.assert_close(g_c, g_e, rtol=1e-9, atol=1e-12)
