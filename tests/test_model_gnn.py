"""Model-GNN / Vanilla-GNN (Model-GNN paper eq. (7), (12)/(15)): the Taylor features against a direct
complex computation, the layer against an explicit edge loop, 2D permutation equivariance (users and
antennas), the power constraint met exactly, the local engine equal to the Ray engine, N_r > 1."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from agents.model_gnn import MODEL, VANILLA, edge_layer, gnn_precoders, gnn_protocol, taylor_features
from dsim.engine.local import LocalEngine
from dsim.scenarios.multicell import MulticellScenario, generate_multicell, multicell_network


def _channels(batch=3, seed=0, **kw):
    kw = {"layout": "iid", "n_bs": 1, "ues_per_bs": 4, "bs_antennas": 6, "ue_antennas": 1, "snr_db": 10.0} | kw
    return generate_multicell(MulticellScenario(**kw), batch, torch.Generator().manual_seed(seed))


def _decide(proto, net, air, engine=None):
    out = {}
    (engine or LocalEngine("float64")).run(proto, net, air, on_round=lambda r, V: out.__setitem__(r, V))
    return out[proto.rounds]


def _params(spec, hidden, seed=3):
    m = spec.learnable({"checkpoint": "untrained", "hidden": hidden, "init_seed": seed}).module
    return m.eval().requires_grad_(False)


def _direct_taylor(G, x):
    """numpy loops: per complex pair f, A = [h_j^H d_k], (D A)_nk = sum_j d_nj a_jk; x (M, K, J) -> list of DA."""
    M, K, J = x.shape
    h = G.conj().T  # (M, K): column k = h_k
    out = []
    for f in range(J // 2):
        D = x[..., 2 * f] + 1j * x[..., 2 * f + 1]
        A = np.array([[h[:, j].conj() @ D[:, k] for k in range(K)] for j in range(K)])  # a_jk = h_j^H d_k
        out.append((D, A))
    return out


def test_taylor_features_equal_direct_complex_products():
    rng = np.random.default_rng(0)
    K, M, J = 3, 5, 4
    G = rng.normal(size=(K, M)) + 1j * rng.normal(size=(K, M))
    x = rng.normal(size=(M, K, J))
    grp = np.array([True, False, True])
    c = taylor_features(torch.as_tensor(G), torch.as_tensor(x)).numpy()
    cg = taylor_features(torch.as_tensor(G), torch.as_tensor(x), group=torch.as_tensor(grp)).numpy()
    cs = taylor_features(torch.as_tensor(G), torch.as_tensor(x), own_gain=True).numpy()
    assert c.shape == (M, K, 2 * J) and cg.shape == cs.shape == (M, K, 3 * J)
    for arr in (c, cg, cs):
        np.testing.assert_array_equal(arr[..., :J], x)
    for f, (D, A) in enumerate(_direct_taylor(G, x)):
        DA = np.array([[sum(D[n, j] * A[j, k] for j in range(K)) for k in range(K)] for n in range(M)])
        DA_in = np.array([[sum(D[n, j] * A[j, k] for j in range(K) if grp[j]) for k in range(K)] for n in range(M)])
        DA_self = np.array([[D[n, k] * A[k, k] for k in range(K)] for n in range(M)])
        for arr, parts in ((c, [DA]), (cg, [DA_in, DA - DA_in]), (cs, [DA_self, DA - DA_self])):
            for b, part in enumerate(parts):
                np.testing.assert_allclose(arr[..., (b + 1) * J + 2 * f], part.real, rtol=1e-12, atol=1e-12)
                np.testing.assert_allclose(arr[..., (b + 1) * J + 2 * f + 1], part.imag, rtol=1e-12, atol=1e-12)


def test_edge_layer_equals_edge_loop():
    """Feature-major blocks (J_b, M, K): S^T c_nk + P^T sum_i c_ik + Q^T sum_j c_nj with c the blocks stacked."""
    rng = np.random.default_rng(1)
    M, K, F, F2 = 4, 3, 6, 5
    c = rng.normal(size=(M, K, F))
    S, P, Q = (rng.normal(size=(F, F2)) for _ in range(3))
    blocks = [torch.as_tensor(c[..., :2]).permute(2, 0, 1), torch.as_tensor(c[..., 2:]).permute(2, 0, 1)]
    mask = np.array([1.0, 0.0, 1.0])
    for m in (None, torch.as_tensor(mask).reshape(1, 1, K)):
        y = edge_layer(blocks, *(torch.as_tensor(a) for a in (S, P, Q)), m).numpy()
        assert y.shape == (F2, M, K)
        for n in range(M):
            for k in range(K):
                ref = c[n, k] @ S + sum(c[i, k] for i in range(M)) @ P + sum(c[n, j] for j in range(K)) @ Q
                ref = ref * (1.0 if m is None else mask[k])
                np.testing.assert_allclose(y[:, n, k], ref, rtol=1e-12, atol=1e-12)


def test_precoders_equal_direct_layers():
    """The whole Model-GNN forward (12)/(15) against numpy loops over edges: c_nk = [d_nk, (D A)_nk], y = S^T c_nk
    + P^T sum_i c_ik + Q^T sum_j c_nj, sigma = X / ||X||_F between layers, V = sqrt(P) V^ / ||V^||_F."""
    rng = np.random.default_rng(2)
    K, M, power = 3, 5, 2.5
    G = rng.normal(size=(K, M)) + 1j * rng.normal(size=(K, M))
    params = _params(MODEL, (4, 6))
    V = gnn_precoders(params, torch.as_tensor(G)[None, None], torch.ones(1, K, dtype=torch.bool),
                      torch.tensor([[power]], dtype=torch.float64))[0, 0].numpy()
    x = np.stack([G.real, -G.imag], -1).transpose(1, 0, 2)                   # (M, K, 2) = [Re h, Im h]
    for ell in range(params.layers):
        DA = [np.array([[sum(D[n, j] * A[j, k] for j in range(K)) for k in range(K)] for n in range(M)])
              for D, A in _direct_taylor(G, x)]
        c = np.concatenate([x, np.stack([p for d in DA for p in (d.real, d.imag)], -1)], -1)
        S, P, Q = (w[ell].detach().numpy() for w in (params.s, params.p, params.q))
        y = np.array([[c[n, k] @ S + c[:, k].sum(0) @ P + c[n].sum(0) @ Q for k in range(K)] for n in range(M)])
        x = y / np.linalg.norm(y) if ell < params.layers - 1 else y
    Vd = x[..., 0] + 1j * x[..., 1]
    np.testing.assert_allclose(V, np.sqrt(power) * Vd / np.linalg.norm(Vd), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("spec,hidden", [(MODEL, (8, 6)), (VANILLA, (8, 6))], ids=["model_gnn", "vanilla_gnn"])
def test_permutation_equivariance_and_power(spec, hidden):
    params = _params(spec, hidden)
    ch = _channels(batch=3, ues_per_bs=4, bs_antennas=6)
    net, air = multicell_network(ch)
    V = _decide(gnn_protocol(spec.name, params, net), net, air)                 # (B, I, M, 1)
    torch.testing.assert_close(air.power(V), ch.power_w.expand(3, 1), rtol=1e-13, atol=0)
    ue = torch.tensor([2, 0, 3, 1])
    ant = torch.tensor([5, 1, 0, 4, 2, 3])
    ch_p = replace(ch, H=ch.H[:, ue][..., ant])
    net_p, air_p = multicell_network(ch_p)
    Vp = _decide(gnn_protocol(spec.name, params, net_p), net_p, air_p)
    torch.testing.assert_close(Vp, V[:, ue][:, :, ant], rtol=0, atol=1e-12)
    torch.testing.assert_close(air_p.evaluate(Vp)[0], air.evaluate(V)[0], rtol=1e-12, atol=0)


def test_several_cells_and_receive_antennas():
    """Each BS precodes its own UEs at exactly its budget; with N_r = 2 the virtual users of one UE are
    permuted along with the UE, and swapping a UE's two receive antennas swaps its precoder's columns."""
    params = _params(MODEL, (4,))
    ch = _channels(batch=2, n_bs=2, ues_per_bs=3, bs_antennas=5, ue_antennas=2, bs_power_dbm=20.0)
    net, air = multicell_network(ch)
    V = _decide(gnn_protocol("model_gnn", params, net), net, air)              # (B, I, M, 2)
    torch.testing.assert_close(air.power(V), ch.power_w.expand(2, 2), rtol=1e-13, atol=0)
    swap = torch.tensor([1, 0])
    ch_s = replace(ch, H=ch.H[:, :, :, swap])
    net_s, air_s = multicell_network(ch_s)
    Vs = _decide(gnn_protocol("model_gnn", params, net_s), net_s, air_s)
    torch.testing.assert_close(Vs, V[..., swap], rtol=0, atol=1e-12)


def test_untrained_gnn_is_not_zf():
    """A non-trivial check that the decisions depend on the weights (two seeds differ)."""
    ch = _channels(batch=2)
    net, air = multicell_network(ch)
    a = _decide(gnn_protocol("model_gnn", _params(MODEL, (4,), seed=1), net), net, air)
    b = _decide(gnn_protocol("model_gnn", _params(MODEL, (4,), seed=2), net), net, air)
    assert float((a - b).abs().max()) > 1e-3


def test_local_equals_ray(ray_session):
    """Model-GNN and L-ICGNN on 2 BSs, one BS per actor (2 shards): the Ray engine's decisions equal the local
    engine's (Model-GNN bit for bit; L-ICGNN's MLP GEMMs depend on the host's size in the last bits)."""
    from agents.icgnn_cellular import LMODEL, icgnn_cellular_protocol
    from dsim.engine.ray import RayEngine

    ch = _channels(batch=2, n_bs=2, ues_per_bs=3, bs_antennas=4, ue_antennas=2)
    net, air = multicell_network(ch)
    gnn = _params(MODEL, (8, 6))
    lic = LMODEL.learnable({"checkpoint": "untrained", "antennas": 4, "init_seed": 2}).module.eval()
    engine = RayEngine("float64", shards=2)
    try:
        for make, exact in ((lambda: gnn_protocol("model_gnn", gnn, net), True),
                            (lambda: icgnn_cellular_protocol("licgnn", lic, net, 3), False)):
            a = _decide(make(), net, air)
            b = _decide(make(), net, air, engine)
            if exact:
                assert torch.equal(a, b)
            else:
                torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    finally:
        engine.close()


def test_mean_aggregation_is_rescaled_sum():
    """aggr: mean (the authors' pooling) spans the paper's sum layer: the same forward as sums with P / M and
    Q / K_present (per BS: a padding slot is no user), for every layer."""
    rng = np.random.default_rng(4)
    B, C, K, M = 2, 2, 4, 6
    G = torch.as_tensor(rng.normal(size=(B, C, K, M)) + 1j * rng.normal(size=(B, C, K, M)))
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    G = G * mask[None, :, :, None]
    power = torch.tensor([[1.0, 2.0], [0.5, 1.5]], dtype=torch.float64)
    mean = MODEL.module(hidden=(4, 6), aggr="mean", seed=5)
    for cell in range(C):
        k = int(mask[cell].sum())
        summ = MODEL.module(hidden=(4, 6), aggr="sum", seed=5)
        with torch.no_grad():
            for ell in range(summ.layers):
                summ.p[ell].div_(M)
                summ.q[ell].div_(k)
        want = gnn_precoders(summ, G, mask, power)[:, cell]
        got = gnn_precoders(mean, G, mask, power)[:, cell]
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_spectral_taylor_scale_against_numpy_svd_and_equivariant():
    """taylor_scale: spectral (agents/model_gnn.py spectral_scaled): (i) the Taylor channel equals
    G (sqrt(M) + sqrt(K)) / sigma_max(G) with sigma_max from numpy's SVD, and the same for c G with any c > 0 (the
    Taylor operator no longer carries the channel's scale); (ii) the model with it differs from the paper's layer
    with the same weights; (iii) permutation equivariance (users, antennas) and the power constraint still hold."""
    from agents.model_gnn import spectral_scaled

    rng = np.random.default_rng(5)
    K, M = 3, 5
    G = rng.normal(size=(2, 1, K, M)) + 1j * rng.normal(size=(2, 1, K, M))
    want = G * ((np.sqrt(M) + np.sqrt(K)) / np.linalg.svd(G, compute_uv=False)[..., 0])[..., None, None]
    mask = torch.ones(1, K, dtype=torch.bool)
    for c in (1.0, 0.01, 250.0):
        got = spectral_scaled(torch.as_tensor(c * G), mask).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-12)

    m = MODEL.learnable({"checkpoint": "untrained", "hidden": (8, 6), "init_seed": 3,
                         "taylor_scale": "spectral"}).module.eval().requires_grad_(False)
    paper = _params(MODEL, (8, 6))
    Gt, power = torch.as_tensor(G), torch.ones(2, 1, dtype=torch.float64)
    assert not torch.allclose(gnn_precoders(m, Gt, mask, power), gnn_precoders(paper, Gt, mask, power), atol=1e-6)

    ch = _channels(batch=3, ues_per_bs=4, bs_antennas=6)
    net, air = multicell_network(ch)
    V = _decide(gnn_protocol("model_gnn", m, net), net, air)
    torch.testing.assert_close(air.power(V), ch.power_w.expand(3, 1), rtol=1e-13, atol=0)
    ue, ant = torch.tensor([2, 0, 3, 1]), torch.tensor([5, 1, 0, 4, 2, 3])
    net_p, air_p = multicell_network(replace(ch, H=ch.H[:, ue][..., ant]))
    torch.testing.assert_close(_decide(gnn_protocol("model_gnn", m, net_p), net_p, air_p), V[:, ue][:, :, ant],
                               rtol=0, atol=1e-12)


def test_taylor_scale_is_model_gnn_only_and_checked_against_the_checkpoint():
    with pytest.raises(ValueError, match="taylor_scale"):
        VANILLA.learnable({"checkpoint": "untrained", "taylor_scale": "spectral"})
    with pytest.raises(ValueError, match="taylor_scale"):
        VANILLA.module(taylor_scale="spectral")
    from dsim.learn import OptionError

    with pytest.raises(OptionError, match="taylor_scale"):
        MODEL.learnable({"checkpoint": "shipped:N32K16", "taylor_scale": "spectral"})
    assert MODEL.learnable({"checkpoint": "shipped:N32K16_spectral"}).module.taylor_scale == "spectral"
