"""ICGNN / L-ICGNN cellular precoding (ICGNN paper Sec. III): CG recovery equal to the direct solve when
T >= N_t, the layer against an explicit per-node loop, permutation equivariance over users and over a user's
receive antennas, the power constraint met exactly, local engine == Ray engine."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from agents.icgnn import pair_max_messages, update_nodes
from agents.icgnn_cellular import (
    LMODEL,
    MODEL,
    ICGNNCellularParams,
    icgnn_cellular_protocol,
    icgnn_layers,
    recover_precoders,
    vn_features,
)
from dsim.engine.local import LocalEngine
from dsim.linalg import conjugate_gradient
from dsim.scenarios.multicell import MulticellScenario, generate_multicell, multicell_network

DISK = {"layout": "disk", "n_bs": 1, "ues_per_bs": 3, "bs_antennas": 6, "ue_antennas": 2, "disk_radius_m": 500.0,
        "min_distance_m": 10.0, "pathloss": "exponent", "pathloss_ref_db": 30.5, "pathloss_exponent": 3.67,
        "bs_power_dbm": 10.0, "noise_dbm": -101.0}


def _channels(batch=3, seed=0, **kw):
    return generate_multicell(MulticellScenario(**(DISK | kw)), batch, torch.Generator().manual_seed(seed))


def _params(spec=MODEL, antennas=6, seed=1):
    m = spec.learnable({"checkpoint": "untrained", "antennas": antennas, "init_seed": seed}).module
    return m.eval().requires_grad_(False)


def _decide(proto, net, air, engine=None):
    out = {}
    (engine or LocalEngine("float64")).run(proto, net, air, on_round=lambda r, V: out.__setitem__(r, V))
    return out[proto.rounds]


def test_cg_equals_direct_solve_at_nt_steps():
    g = torch.Generator().manual_seed(4)
    n, V = 8, 5
    G = torch.complex(torch.randn(3, V, n, generator=g, dtype=torch.float64),
                      torch.randn(3, V, n, generator=g, dtype=torch.float64))
    lam = torch.rand(3, V, generator=g, dtype=torch.float64) * 10
    A = torch.eye(n, dtype=G.dtype) + (G.mH * lam[:, None, :].to(G.dtype)) @ G
    b = G.mH
    ref = torch.linalg.solve(A, b)
    for T in (n, n + 3):
        x = conjugate_gradient(A, b, b, T)
        assert float(((x - ref).norm(dim=-2) / ref.norm(dim=-2)).max()) < 1e-8
    few = conjugate_gradient(A, b, b, 2)
    assert float(((few - ref).norm(dim=-2) / ref.norm(dim=-2)).max()) > 1e-4  # T = 2 is not yet exact


def test_cg_recovery_equals_inverse_recovery():
    ch = _channels(batch=4)
    G = ch.H[:, :, 0].reshape(4, -1, 6)                                          # (B, V, N_t)
    g = torch.Generator().manual_seed(2)
    p = torch.rand(4, 6, generator=g, dtype=torch.float64)
    p = 0.01 * p / p.sum(-1, keepdim=True)
    lam = torch.rand(4, 6, generator=g, dtype=torch.float64)
    lam = 0.01 * lam / lam.sum(-1, keepdim=True)
    noise = torch.full((4, 6), 10 ** (-13.1), dtype=torch.float64)
    a = recover_precoders(G, p, lam, noise)
    b = recover_precoders(G, p, lam, noise, cg_steps=6)
    assert float(((a - b).norm(dim=-2) / a.norm(dim=-2)).max()) < 1e-8
    torch.testing.assert_close((a.abs() ** 2).sum(-2), p, rtol=1e-12, atol=0)
    # (16) by hand for one column: sqrt(p) A^-1 h / ||A^-1 h||
    h = G[0].conj().T.resolve_conj().numpy()                                                 # (N_t, V)
    A = np.eye(6) + sum(lam[0, j].item() / noise[0, j].item() * np.outer(h[:, j], h[:, j].conj()) for j in range(6))
    u = np.linalg.solve(A, h[:, 2])
    np.testing.assert_allclose(a[0, :, 2].numpy(), np.sqrt(p[0, 2].item()) * u / np.linalg.norm(u), rtol=1e-9)


@pytest.mark.parametrize("ref", [0, 1, 10])
def test_layers_equal_per_node_loop(ref):
    """(4a)-(4b) + (17) written node by node: m_i = max_{j != i} M([x_j, c Gamma_j, x_i]), U([m_i, x_i, c Gamma_i]),
    with c = 1 (power_ref_nodes 0: fraction of P_t) or c = V / V_0 (power in units of the equal share, / V_0)."""
    params = _params()
    params.power_ref_nodes = ref
    ch = _channels(batch=2)
    G = ch.H[:, :, 0].reshape(2, -1, 6)
    V = G.shape[1]
    c = 1.0 if ref == 0 else V / ref
    x = vn_features(G, torch.full((2,), 0.01, dtype=torch.float64), torch.full((2, V), 1e-13, dtype=torch.float64))
    got = icgnn_layers(params, x)
    gamma = torch.full((2, V, 2), 1.0 / V, dtype=torch.float64)
    for _ in range(params.layers):
        new = []
        for i in range(V):
            msgs = [params.msg(torch.cat([x[:, j], c * gamma[:, j], x[:, i]], -1)) for j in range(V) if j != i]
            m = torch.stack(msgs).amax(0)
            new.append(params.upd(torch.cat([m, x[:, i], c * gamma[:, i]], -1)))
        s = torch.stack(new, 1)
        gamma = s / s.sum(1, keepdim=True)
    torch.testing.assert_close(got, gamma, rtol=1e-12, atol=1e-14)


def test_equal_powers_give_equal_power_rzf():
    """(16) with p = lambda = P_t / V for every node (what a saturated update net gives after (17)) is equal-power
    regularised ZF, by the push-through identity (I + c H^H H)^-1 H^H = H^H (I + c H H^H)^-1, c = P_t / (V sigma^2):
    column i of H^H (H H^H + V sigma^2 / P_t I)^-1, scaled to norm sqrt(P_t / V) -- computed here in numpy, also on
    the square full-rank case V = N_t."""
    for K, Nr, nt in ((3, 2, 6), (3, 1, 6), (2, 3, 6)):
        ch = _channels(batch=3, ues_per_bs=K, ue_antennas=Nr, bs_antennas=nt, seed=K + Nr)
        G = ch.H[:, :, 0].reshape(3, -1, nt)                                     # (B, V, N_t) rows h_i^H
        V = G.shape[1]
        P, s2 = 0.01, 10 ** (-12.5)
        eq = torch.full((3, V), P / V, dtype=torch.float64)
        got = recover_precoders(G, eq, eq, torch.full((3, V), s2, dtype=torch.float64)).numpy()
        for b in range(3):
            H = G[b].numpy()                                                     # (V, N_t)
            W = H.conj().T @ np.linalg.inv(H @ H.conj().T + V * s2 / P * np.eye(V))
            W = W / np.linalg.norm(W, axis=0, keepdims=True) * np.sqrt(P / V)
            np.testing.assert_allclose(got[b], W, rtol=1e-8, atol=1e-12 * np.abs(W).max())


def test_power_ref_nodes_reads_the_training_features_at_v0():
    """A model read with power_ref_nodes V_0 gives at V = V_0 nodes exactly what it gives with 0 (the features it
    was trained on), and elsewhere exactly what the 0-model gives on the features of the V_0 graph (Gamma V / V_0
    fed as if it were the fraction of P_t): the size-invariant reading needs no retraining.  A checkpoint without
    the key loads with 0; 'untrained' takes 1."""
    params = _params()
    ch = _channels(batch=2)                                                      # V = 6
    G = ch.H[:, :, 0].reshape(2, -1, 6)
    x = vn_features(G, torch.full((2,), 0.01, dtype=torch.float64), torch.full((2, 6), 1e-13, dtype=torch.float64))
    params.power_ref_nodes = 0
    legacy = icgnn_layers(params, x)
    params.power_ref_nodes = 6
    torch.testing.assert_close(icgnn_layers(params, x), legacy, rtol=0, atol=0)
    params.power_ref_nodes = 10
    got = icgnn_layers(params, x)
    assert float((got - legacy).abs().max()) > 1e-6
    # by hand with the 0-reading: the layers fed 0.6 * Gamma
    one = torch.ones(2, dtype=torch.float64)
    edge = x.unsqueeze(-3).expand(2, 6, 6, x.shape[-1])
    gamma = torch.full((2, 6, 2), 1 / 6, dtype=torch.float64)
    for _ in range(params.layers):
        node = torch.cat([x, 0.6 * gamma], -1)
        gamma = update_nodes(params.upd, pair_max_messages(params.msg, node, edge), node, one)
    torch.testing.assert_close(got, gamma, rtol=0, atol=0)
    assert ICGNNCellularParams(antennas=6).power_ref_nodes == 0
    assert MODEL.learnable({"checkpoint": "untrained", "antennas": 6}).module.power_ref_nodes == 1


@pytest.mark.parametrize("spec", [MODEL, LMODEL], ids=["icgnn_cellular", "licgnn"])
def test_equivariance_and_power(spec):
    params = _params(spec)
    cg = 6 if spec is LMODEL else None
    ch = _channels(batch=3)
    net, air = multicell_network(ch)
    V = _decide(icgnn_cellular_protocol(spec.name, params, net, cg), net, air)      # (B, K, N_t, N_r)
    torch.testing.assert_close(air.power(V), ch.power_w.expand(3, 1), rtol=1e-12, atol=0)
    ue = torch.tensor([2, 0, 1])
    ch_u = replace(ch, H=ch.H[:, ue], ue_xy=ch.ue_xy[:, ue])
    net_u, air_u = multicell_network(ch_u)
    Vu = _decide(icgnn_cellular_protocol(spec.name, params, net_u, cg), net_u, air_u)
    torch.testing.assert_close(Vu, V[:, ue], rtol=0, atol=1e-12 * float(V.abs().max()))
    swap = torch.tensor([1, 0])
    ch_a = replace(ch, H=ch.H[:, :, :, swap])
    net_a, air_a = multicell_network(ch_a)
    Va = _decide(icgnn_cellular_protocol(spec.name, params, net_a, cg), net_a, air_a)
    torch.testing.assert_close(Va, V[..., swap], rtol=0, atol=1e-12 * float(V.abs().max()))
    torch.testing.assert_close(air_a.evaluate(Va)[0], air.evaluate(V)[0], rtol=1e-10, atol=0)


def test_wrong_antenna_count_is_one_clear_error():
    ch = _channels(batch=1, bs_antennas=4)
    net, _ = multicell_network(ch)
    with pytest.raises(ValueError, match="N_t = 6"):
        icgnn_cellular_protocol("icgnn_cellular", _params(), net, None)

# local engine == Ray engine: tests/test_model_gnn.py::test_local_equals_ray (one actor pool for both families of
# precoders) and tests/test_ray_engine.py (every registered protocol)


def test_checkpoint_without_power_ref_nodes_loads_as_before(tmp_path):
    """A checkpoint written before ``power_ref_nodes`` existed (hparams antennas, layers only) loads with 0, the
    reading it was trained with; the option (a free hyper-parameter) may set another on it."""
    params = _params()
    path = tmp_path / "old.pt"
    torch.save({"format_version": 1, "step": 0, "model": params.state_dict(), "hparams": {"antennas": 6, "layers": 2},
                "meta": {}}, path)
    assert MODEL.load(str(path)).power_ref_nodes == 0
    opts = MODEL.options(checkpoint=str(path), power_ref_nodes=6)
    assert MODEL.make(opts).power_ref_nodes == 6
