"""Multi-cell Model-GNN (Model-GNN paper Sec. III-E, problem P2): permutation equivariance (users within a
cell, antennas within a BS, BS relabelling), the per-BS power constraint met exactly, the protocol (local
phases + ``bs>bs`` backhaul messages) against a direct full-graph implementation in numpy, the backhaul
ledger rows, and the local engine equal to the Ray engine (decisions and ledger)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from agents.model_gnn import MODEL_MC, complex_block, model_gnn_mc_protocol
from dsim.engine.local import LocalEngine
from dsim.scenarios.multicell import MulticellScenario, backhaul_edges, generate_multicell, multicell_network


def _channels(batch=2, seed=0, **kw):
    kw = {"layout": "iid", "n_bs": 3, "ues_per_bs": 3, "bs_antennas": 4, "ue_antennas": 1, "snr_db": 10.0} | kw
    return generate_multicell(MulticellScenario(**kw), batch, torch.Generator().manual_seed(seed))


#: the shipped models' departures from the paper's layer (scenarios/train_model_gnn_mc_*.yaml)
SHIPPED_VARIANT = {"aggr": "mean", "taylor_split": "self", "user_gate": True}


def _params(hidden=(6, 4), seed=3, complex_weights=False, **variant):
    m = MODEL_MC.learnable({"checkpoint": "untrained", "hidden": hidden, "init_seed": seed,
                            "complex_weights": complex_weights} | variant).module
    if getattr(m, "user_gate", False):
        with torch.no_grad():                                          # untrained gamma = 0: give it a value
            m.gamma.copy_(torch.tensor([[0.7, -0.4], [-0.3, 1.1]], dtype=torch.float64))
    if getattr(m, "gate_floor", False):
        with torch.no_grad():                                          # untrained beta = 0: a floor and a cut
            m.beta.copy_(torch.tensor([[0.3, -0.6], [-0.2, 0.5]], dtype=torch.float64))
    return m.eval().requires_grad_(False)


def _run(params, ch, engine=None):
    net, air = multicell_network(ch)
    eng = engine or LocalEngine("float64")
    trace = eng.run(model_gnn_mc_protocol(params, net), net, air)
    return eng.decision(), air, trace.ledger


def test_backhaul_edges_every_ordered_pair():
    es = backhaul_edges(4, 2)
    pairs = list(zip(es.src.tolist(), es.dst.tolist()))
    assert pairs == [(k, j) for k in range(4) for j in range(4) if j != k]
    assert es.link == "bh" and es.src_role == es.dst_role == "bs" and bool(es.mask.all())
    assert backhaul_edges(1, 2).size == 0


def _direct(params, ch) -> np.ndarray:
    """The P2 Model-GNN on the whole graph, written from the paper's equations with explicit loops over the
    BSs m (no engine, no messages): edges (n_m, u) for every antenna n of BS m and every user u; with the
    options aggr: mean, taylor_split: cell | self, user_gate, self_per_type and norm: graph written out per edge
    as well."""
    mean = params.aggr == "mean"
    split = params.taylor_split
    H = ch.H.numpy()[:, :, :, 0, :]                                   # (B, I, K, M): row H_ik = h^H
    B, I, K, M = H.shape
    assign = ch.assign.numpy()
    P = ch.power_w.numpy()
    ws = [params.real_weights(ell, torch.float64)[0].numpy() for ell in range(params.layers)]
    wa = [params.real_weights(ell, torch.float64)[1].numpy() for ell in range(params.layers)]
    # d^(0)_{n_m u} = [Re h, Im h] with h = conj(H row)
    x = np.stack([np.stack([H[:, :, m].real.transpose(0, 2, 1), -H[:, :, m].imag.transpose(0, 2, 1)], -1)
                  for m in range(K)], 1)                              # (B, K, M, I, 2)
    V = np.zeros((B, I, M), complex)
    for ell in range(len(ws)):
        J = x.shape[-1]
        parts = 2 if split == "none" else 3
        c = np.zeros(x.shape[:-1] + (parts * J,))
        for m in range(K):
            D = x[:, m, :, :, 0::2] + 1j * x[:, m, :, :, 1::2]         # (B, M, I, J/2)
            A = np.einsum("bjn,bnkf->bjkf", H[:, :, m], D)            # a_jk = h_{j,m}^H d_{m,k}
            if split == "none":
                blocks = [np.einsum("bnjf,bjkf->bnkf", D, A)]
            else:
                first = np.zeros(D.shape, complex)
                for k in range(I):
                    for j in range(I):
                        if (split == "self" and j == k) or (split == "cell" and assign[j] == m):
                            first[:, :, k] += D[:, :, j] * A[:, j, k][:, None]
                blocks = [first, np.einsum("bnjf,bjkf->bnkf", D, A) - first]
            c[:, m, :, :, :J] = x[:, m]
            for i, Z in enumerate(blocks):
                c[:, m, :, :, (i + 1) * J:(i + 2) * J:2], c[:, m, :, :, (i + 1) * J + 1:(i + 2) * J:2] = Z.real, Z.imag
        y = np.zeros(x.shape[:-1] + (ws[ell].shape[-1],))
        for b in range(B):
            for m in range(K):
                for n in range(M):
                    for u in range(I):
                        t = 0 if assign[u] == m else 1
                        same = [v for v in range(I) if (assign[v] == m) == (assign[u] == m)]
                        other = [v for v in range(I) if v not in same]
                        terms = [c[b, m, :, u].sum(0),
                                 sum(c[b, mm, :, u].sum(0) for mm in range(K) if mm != m),
                                 c[b, m, n, same].sum(0), c[b, m, n, other].sum(0)]
                        if mean:
                            terms = [v / max(cnt, 1) for v, cnt in zip(terms, (M, M * (K - 1), len(same), len(other)))]
                        s = ws[ell][t] if ws[ell].ndim == 3 else ws[ell]  # self_per_type: s_t
                        y[b, m, n, u] = c[b, m, n, u] @ s + sum(v @ wa[ell][t, i] for i, v in enumerate(terms))
        if ell < len(ws) - 1 and params.user_gate:
            gamma = params.gamma[ell].numpy()
            for b in range(B):
                for m in range(K):
                    e = (y[b, m] ** 2).mean(axis=(0, 2))                # (I,) energy of each user at BS m
                    for u in range(I):
                        t = 0 if assign[u] == m else 1
                        grp = [v for v in range(I) if (assign[v] == m) == (assign[u] == m)]
                        gain = (e[u] / e[grp].mean()) ** gamma[t]
                        if params.gate_floor:                  # max(gain + beta_t, 0)
                            gain = max(gain + float(params.beta[ell, t]), 0.0)
                        y[b, m, :, u] *= gain
        if ell < len(ws) - 1 and params.norm == "graph":                # sigma over the whole sample's edges
            x = y / np.linalg.norm(y.reshape(B, -1), axis=-1)[:, None, None, None, None]
        elif ell < len(ws) - 1:
            x = y / np.linalg.norm(y.reshape(B, K, -1), axis=-1)[:, :, None, None, None]
        else:
            for m in range(K):
                own = assign == m
                Vm = y[:, m, :, own, 0] + 1j * y[:, m, :, own, 1]     # (own, B, M) by numpy's rule
                Vm = np.moveaxis(Vm, 0, 1)
                Vm = Vm * np.sqrt(P[m]) / np.linalg.norm(Vm.reshape(B, -1), axis=-1)[:, None, None]
                V[:, own] = Vm
    return V


@pytest.mark.parametrize("complex_weights,variant", [
    (True, {}), (False, {}), (False, SHIPPED_VARIANT), (True, {"aggr": "mean", "taylor_split": "cell"}),
    (False, SHIPPED_VARIANT | {"self_per_type": True}), (True, {"self_per_type": True}),
    (False, SHIPPED_VARIANT | {"norm": "graph"}), (False, SHIPPED_VARIANT | {"self_per_type": True, "norm": "graph"}),
    (False, SHIPPED_VARIANT | {"gate_floor": True})],
    ids=["complex", "real", "shipped-variant", "complex-mean-cell", "self-per-type", "complex-self-per-type",
         "graph-norm", "self-per-type-graph-norm", "gate-floor"])
def test_protocol_equals_direct_full_graph_and_power_exact(complex_weights, variant):
    params = _params(complex_weights=complex_weights, **variant)
    ch = _channels(batch=2, n_bs=3, ues_per_bs=2, bs_antennas=3)
    V, air, _ = _run(params, ch)
    np.testing.assert_allclose(V[..., 0].numpy(), _direct(params, ch), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(air.power(V), ch.power_w.expand(2, 3), rtol=1e-13, atol=0)


@pytest.mark.parametrize("variant,parts", [({}, 2), (SHIPPED_VARIANT, 3)], ids=["paper", "shipped-variant"])
def test_backhaul_ledger_per_layer(variant, parts):
    params = _params(hidden=(6, 4), **variant)
    ch = _channels(batch=2, n_bs=3, ues_per_bs=2, bs_antennas=3, ue_antennas=2)
    _, _, ledger = _run(params, ch)
    bh = [r for r in ledger if r.link == "bh"]
    U = 6 * 2                                                           # virtual users: I UEs x N_r antennas
    assert [r.phase for r in bh] == ["bh_sums_l1", "bh_sums_l2", "bh_sums_l3"]
    assert [r.messages for r in bh] == [2 * 3 * 2] * 3                  # B x K (K - 1) ordered BS pairs
    assert [r.reals for r in bh] == [12 * U * parts * J for J in (2, 6, 4)]  # U x parts J_l reals per message
    assert all(r.bytes >= 8 * r.reals for r in bh)                     # float64 wire
    assert not [r for r in ledger if r.link != "bh"]                   # nothing but the backhaul travels
    _, _, one = _run(params, _channels(batch=2, n_bs=1, ues_per_bs=3))
    assert all(r.messages == 0 for r in one)                           # one cell: nothing is sent


def _relabelled(ch, bs, ue_in_cell, ant):
    """ch with BSs relabelled (new BS k = old bs[k], with its cell), users permuted within each cell
    (ue_in_cell), antennas of BS k permuted by ant[k]; returns (ch', UE order: new UE i = old UE order[i])."""
    K, U = len(bs), len(ue_in_cell)
    order = torch.cat([bs[k] * U + ue_in_cell for k in range(K)])
    H = ch.H[:, order][:, :, bs]                                       # (B, I, K, N, M)
    H = torch.stack([H[:, :, k][..., ant[k]] for k in range(K)], dim=2)
    return replace(ch, H=H), order


@pytest.mark.parametrize("variant", [{}, SHIPPED_VARIANT, SHIPPED_VARIANT | {"gate_floor": True}],
                         ids=["paper", "shipped-variant", "gate-floor"])
def test_permutation_equivariance(variant):
    params = _params(**variant)
    ch = _channels(batch=2, n_bs=3, ues_per_bs=3, bs_antennas=4)
    V, air, _ = _run(params, ch)
    bs = torch.tensor([2, 0, 1])
    ant = [torch.tensor(p) for p in ([3, 1, 0, 2], [0, 2, 3, 1], [1, 0, 3, 2])]
    ch_p, order = _relabelled(ch, bs, torch.tensor([1, 2, 0]), ant)
    Vp, air_p, _ = _run(params, ch_p)
    ref = V[:, order]                                                   # (B, I, M, 1), antennas of the serving BS
    ref = torch.stack([ref[:, i][:, ant[int(i) // 3]] for i in range(ref.shape[1])], dim=1)
    torch.testing.assert_close(Vp, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(air_p.evaluate(Vp)[0], air.evaluate(V)[0], rtol=1e-12, atol=0)


def test_complex_block_is_complex_multiplication():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(3, 2, 2))
    z = rng.normal(size=(5, 3)) + 1j * rng.normal(size=(5, 3))
    zr = np.stack([z.real, z.imag], -1).reshape(5, 6)                    # interleaved (Re, Im)
    out = (zr @ complex_block(torch.as_tensor(w)).numpy()).reshape(5, 2, 2)
    ref = z @ (w[..., 0] + 1j * w[..., 1])
    np.testing.assert_allclose(out[..., 0] + 1j * out[..., 1], ref, rtol=1e-13, atol=1e-13)


def test_complex_weights_commute_with_a_common_phase():
    """H -> e^{j theta} H (rows h^H) gives h -> e^{-j theta} h and so V -> e^{-j theta} V, the same rates."""
    params = _params(complex_weights=True)
    ch = _channels(batch=2)
    V, air, _ = _run(params, ch)
    rot = torch.polar(torch.ones((), dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64))
    Vr, air_r, _ = _run(params, replace(ch, H=ch.H * rot))
    torch.testing.assert_close(Vr, V * rot.conj(), rtol=0, atol=1e-12)
    torch.testing.assert_close(air_r.evaluate(Vr)[0], air.evaluate(V)[0], rtol=1e-12, atol=0)


def test_user_gate_at_zero_is_the_paper_layer_and_selects_users():
    """gamma = 0 gives exactly the layer without the gate; gamma > 0 spreads the per-user powers (soft selection)."""
    ch = _channels(batch=2)
    base = _params(aggr="mean", taylor_split="self")
    gated = _params(aggr="mean", taylor_split="self", user_gate=True)
    with torch.no_grad():
        gated.gamma.zero_()
    V0, air, _ = _run(base, ch)
    Vg, _, _ = _run(gated, ch)
    torch.testing.assert_close(Vg, V0, rtol=0, atol=1e-13)
    with torch.no_grad():
        gated.gamma.fill_(1.5)
    Vs, _, _ = _run(gated, ch)
    spread = [float(((V.abs() ** 2).sum((-1, -2))).std(-1).mean()) for V in (V0, Vs)]
    assert spread[1] > 1.2 * spread[0]
    torch.testing.assert_close(air.power(Vs), ch.power_w.expand(2, 3), rtol=1e-13, atol=0)


def test_new_options_default_to_the_old_layer():
    """self_per_type with s_intra = s_inter = the shared s, and norm: graph with one BS, give the old layer
    exactly; a checkpoint saved without the two options (an old one) loads with their old defaults."""
    ch = _channels(batch=2)
    base = _params(**SHIPPED_VARIANT)
    assert (base.self_per_type, base.norm) == (False, "bs")
    typed = _params(**SHIPPED_VARIANT, self_per_type=True)
    with torch.no_grad():
        for ws, wt in zip(base.w_self, typed.w_self):
            wt.copy_(ws.expand_as(wt))
        for wa, wt in zip(base.w_agg, typed.w_agg):
            wt.copy_(wa)
    V0, _, _ = _run(base, ch)
    V1, _, _ = _run(typed, ch)
    torch.testing.assert_close(V1, V0, rtol=0, atol=1e-13)
    one = _channels(batch=2, n_bs=1, ues_per_bs=3)
    graph = _params(**SHIPPED_VARIANT, norm="graph")
    graph.load_state_dict(base.state_dict())
    torch.testing.assert_close(_run(graph, one)[0], _run(base, one)[0], rtol=0, atol=0)
    hp = {k: v for k, v in base.hparams.items() if k not in ("self_per_type", "norm")}
    old = type(base)(**hp)
    old.load_state_dict(base.state_dict())
    assert (old.self_per_type, old.norm) == (False, "bs")


def test_graph_norm_sends_one_real_per_bs_pair_per_hidden_layer():
    params = _params(hidden=(6, 4), **SHIPPED_VARIANT, norm="graph")
    ch = _channels(batch=2, n_bs=3, ues_per_bs=2, bs_antennas=3)
    _, _, ledger = _run(params, ch)
    bh = [r for r in ledger if r.phase.startswith("bh_norm")]
    assert [r.phase for r in bh] == ["bh_norm_l1", "bh_norm_l2"]
    assert [r.reals for r in bh] == [2 * 3 * 2] * 2                    # B x K (K - 1) messages of one real


def test_coordination_uses_the_backhaul():
    """Without the p_r weights (the only cross-cell term) the decision changes: the backhaul carries information."""
    params = _params()
    ch = _channels(batch=2)
    V, _, _ = _run(params, ch)
    cut = _params()
    for w in cut.w_agg:
        w[:, 1] = 0
    Vc, _, _ = _run(cut, ch)
    assert float((V - Vc).abs().max()) > 1e-3


def test_local_equals_ray_with_backhaul_ledger(ray_session):
    """3 BSs on 2 shards (backhaul messages inside a host and across hosts): identical decisions and ledger
    (the shipped models' variant; the paper's layer is in tests/test_ray_engine.py's every-protocol test)."""
    from dsim.engine.ray import RayEngine

    params = _params(**SHIPPED_VARIANT)
    ch = _channels(batch=2, n_bs=3, ues_per_bs=2, bs_antennas=3, ue_antennas=2)
    a, _, la = _run(params, ch)
    engine = RayEngine("float64", shards=2)
    try:
        b, _, lb = _run(params, ch, engine)
    finally:
        engine.close()
    assert torch.equal(a, b)
    assert [r.as_dict() for r in la] == [r.as_dict() for r in lb]
    assert any(r.link == "bh" and r.messages > 0 for r in lb)


@pytest.mark.parametrize("complex_weights,variant", [
    (False, SHIPPED_VARIANT), (True, {}), (False, SHIPPED_VARIANT | {"self_per_type": True, "norm": "graph"}),
    (True, {"self_per_type": True, "user_gate": True})],
    ids=["shipped-variant", "complex", "self-per-type-graph-norm", "complex-self-per-type-gate"])
def test_resized_inserts_identity_layers(complex_weights, variant):
    """resized(hidden=...) inserts identity layers (net2deeper): the deeper model's precoders equal the source's
    (to the rounding of sigma's norm), its old layers are the source's weights, the inserted ones are s = [I; 0],
    W = 0, gamma = 0; a copy, not a view; and the deeper model differs once the inserted layer's weights move."""
    src = _params(hidden=(6, 4), complex_weights=complex_weights, **variant)
    ch = _channels(batch=2)
    V0, air, _ = _run(src, ch)
    for hidden, inserted in [((6, 6, 4), [1]), ((6, 6, 6, 4, 4), [1, 2, 4])]:
        new = src.resized(hidden=hidden).eval().requires_grad_(False)
        assert new.hidden == hidden and new.layers == len(hidden) + 1
        V1, _, _ = _run(new, ch)
        torch.testing.assert_close(V1, V0, rtol=0, atol=1e-14)
        old = [ell for ell in range(new.layers) if ell not in inserted]
        for ell, s in zip(old, range(src.layers)):
            assert torch.equal(new.w_self[ell], src.w_self[s]) and torch.equal(new.w_agg[ell], src.w_agg[s])
            if src.user_gate and s < len(src.hidden):
                assert torch.equal(new.gamma[ell], src.gamma[s])
        for ell in inserted:
            S = complex_block(new.w_self[ell]) if complex_weights else new.w_self[ell]
            J = new.widths[ell]
            eye = torch.zeros_like(S)
            eye[..., :J, :] = torch.eye(J, dtype=S.dtype)
            assert torch.equal(S, eye) and not bool(new.w_agg[ell].any())
            if src.user_gate:
                assert not bool(new.gamma[ell].any())
    with torch.no_grad():
        new.w_agg[1].add_(0.05)                                        # an inserted layer moves
    V2 = _run(new, ch)[0]
    assert (V2 - V0).abs().max() > 1e-3
    torch.testing.assert_close(air.power(V2), ch.power_w.expand(2, 3), rtol=1e-13, atol=0)
    with torch.no_grad():
        new.w_self[0].add_(1.0)                                        # a copy: the source does not move
    assert torch.equal(src.w_self[0], _params(hidden=(6, 4), complex_weights=complex_weights, **variant).w_self[0])


def test_resized_refuses_what_is_not_an_inserted_identity():
    """Removing a layer, changing or reordering widths, or inserting before the first hidden layer (whose input,
    the raw channel, is not normalised) is an OptionError at the key ``hidden``."""
    src = _params(hidden=(6, 4), **SHIPPED_VARIANT)
    for bad in [(6,), (4, 6), (6, 4, 6), (6, 8, 4), (2, 6, 4), (6, 6)]:
        with pytest.raises(ValueError, match="hidden: .*cannot grow"):
            src.resized(hidden=bad)


def test_training_options_grow_hidden_layers_inference_does_not(tmp_path):
    """``dsim train`` options {checkpoint, hidden: deeper} warm-start the deeper model (:meth:`resized`) with the
    checkpoint's other hyper-parameters; inference with other widths than the checkpoint's is an option error."""
    from dsim.learn import Learnable, save_checkpoint
    src = _params(hidden=(6, 4), **SHIPPED_VARIANT)
    path = tmp_path / "m.pt"
    save_checkpoint(path, Learnable(MODEL_MC, src, MODEL_MC.options(checkpoint="untrained")), 0, {})
    got = MODEL_MC.learnable({"checkpoint": str(path), "hidden": [6, 6, 4]}).module
    want = src.resized(hidden=(6, 6, 4))
    assert got.hparams == want.hparams
    a, b = got.state_dict(), want.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    net, _ = multicell_network(_channels(batch=1))
    with pytest.raises(ValueError, match="hidden"):
        MODEL_MC.build(MODEL_MC.options(checkpoint=str(path), hidden=[6, 6, 4]), net)


def test_gate_floor_switched_on_keeps_the_precoders_and_refuses_the_reverse():
    """gate_floor at a checkpoint without it (training's warm start, resized(gate_floor=True)): beta = 0, the
    same precoders bit for bit, old parameters copied; growing with it keeps beta; switching it off, or on
    without user_gate, is an OptionError at gate_floor."""
    src = _params(hidden=(6, 4), **SHIPPED_VARIANT)
    ch = _channels(batch=2)
    V0 = _run(src, ch)[0]
    new = src.resized(gate_floor=True).eval().requires_grad_(False)
    assert new.gate_floor and new.beta.shape == (2, 2) and not bool(new.beta.any())
    assert torch.equal(_run(new, ch)[0], V0) and torch.equal(new.gamma, src.gamma)
    with torch.no_grad():
        new.beta.copy_(torch.tensor([[0.3, -0.6], [-0.2, 0.5]], dtype=torch.float64))
    deeper = new.resized(hidden=(6, 6, 4))
    assert torch.equal(deeper.beta[0], new.beta[0]) and torch.equal(deeper.beta[2], new.beta[1])
    assert not bool(deeper.beta[1].any())
    with pytest.raises(ValueError, match="gate_floor: false but the checkpoint has gate_floor=true"):
        new.resized(gate_floor=False)
    with pytest.raises(ValueError, match="gate_floor: model_gnn_mc: gate_floor needs user_gate"):
        _params(hidden=(6, 4)).resized(gate_floor=True)
