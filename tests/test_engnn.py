"""ENGNN (eq. (19)-(26)): exact properties -- the edge update (24) against an implementation with explicit
loops written here, permutation equivariance (Tx and Rx relabelled independently in the layer math, pairs
relabelled in the Ex1 protocol), the Ex1 power constraint, local engine == Ray engine (numbers and ledger),
the ledger rows of the edge messages with their bytes counted by hand -- the ``engnn`` layout's channel
model, and one training step (RMSProp)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from dsim import registry
from dsim.engine.local import LocalEngine
from dsim.faults import FaultModel
from dsim.scenarios.build import build_scenario, generate_channels
from dsim.scenarios.interference import InterferenceChannels

EX1 = {"family": "interference", "layout": "engnn", "n_pairs": 6}
RANGED = {"family": "interference", "layout": "engnn", "n_pairs": 7, "field_m": 600.0, "range_m": 300.0,
          "wmmse_csi": "range"}  # some Tx-Rx edges absent


def scenario(scn: dict, batch: int = 3, seed: int = 21, faults: FaultModel | None = None):
    fam, ch = generate_channels(scn, batch, seed, "double")
    return ch, build_scenario(fam, ch, faults, 0)


def params(layers: int = 2, readout: str = "edge", seed: int = 3):
    from agents.engnn import ENGNNParams

    return ENGNNParams(2, layers, readout=readout, seed=seed)


def run(p, s, engine=None) -> tuple[dict[int, torch.Tensor], list]:
    from agents.engnn import engnn_protocol

    out: dict[int, torch.Tensor] = {}
    trace = (engine or LocalEngine("float64")).run(engnn_protocol(p, s.net), s.net, s.air,
                                                   on_round=lambda r, d: out.__setitem__(r, d))
    return out, trace.ledger


# ----------------------------------------------------------------------------------------- layer math
def loop_layer(w, f_tx, f_rx, E, mask):
    """(21), (22), (24) with explicit loops over Tx, Rx and neighbours (one realization at a time)."""
    B, M, K, _ = E.shape
    new_tx, new_rx, new_E = torch.zeros_like(f_tx), torch.zeros_like(f_rx), torch.zeros_like(E)
    for b in range(B):
        for m in range(M):
            msgs = [w.mlp1(torch.cat([f_rx[b, k], E[b, m, k]])) for k in range(K) if mask[b, m, k]]
            agg = torch.stack(msgs).amax(0) if msgs else torch.zeros(w.mlp2.linear[0].in_features - f_tx.shape[-1],
                                                                   dtype=E.dtype)
            new_tx[b, m] = w.mlp2(torch.cat([f_tx[b, m], agg]))
        for k in range(K):
            msgs = [w.mlp3(torch.cat([f_tx[b, m], E[b, m, k]])) for m in range(M) if mask[b, m, k]]
            agg = torch.stack(msgs).amax(0) if msgs else torch.zeros(w.mlp4.linear[0].in_features - f_rx.shape[-1],
                                                                   dtype=E.dtype)
            new_rx[b, k] = w.mlp4(torch.cat([f_rx[b, k], agg]))
        for m in range(M):
            for k in range(K):
                if not mask[b, m, k]:
                    continue
                nb = [w.mlp5(torch.cat([E[b, m, k1], f_tx[b, m]])) for k1 in range(K) if k1 != k and mask[b, m, k1]]
                nb += [w.mlp6(torch.cat([E[b, m1, k], f_rx[b, k]])) for m1 in range(M) if m1 != m and mask[b, m1, k]]
                agg = torch.stack(nb).amax(0) if nb else torch.zeros(w.mlp7.linear[0].in_features - E.shape[-1],
                                                                   dtype=E.dtype)
                new_E[b, m, k] = w.mlp7(torch.cat([E[b, m, k], agg]))
    return new_tx, new_rx, new_E


def random_graph(B=2, M=3, K=4, d_in=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    E_in = torch.randn(B, M, K, d_in, dtype=torch.float64, generator=g)
    f_tx = torch.rand(B, M, 2, dtype=torch.float64, generator=g)
    f_rx = torch.rand(B, K, 1, dtype=torch.float64, generator=g)
    mask = torch.rand(B, M, K, generator=g) > 0.3
    mask[0] = True
    mask[1, 0, :] = False  # a Tx without edges
    mask[1, :, 1] = False  # an Rx without edges
    return E_in, f_tx, f_rx, mask


def test_layer_equals_loop_implementation() -> None:
    from agents.engnn import ENGNNCore, engnn_layer, preprocess

    E_in, f_tx_in, f_rx_in, mask = random_graph()
    core = ENGNNCore(5, 2, 1, d_edge=4, d_node=3, hidden=6, d_msg=5, layers=2, seed=1)
    with torch.no_grad():
        E, f_tx, f_rx = preprocess(core, E_in, f_tx_in, f_rx_in, mask)
        for w in core.layers:
            got = engnn_layer(w, f_tx, f_rx, E, mask)
            want = loop_layer(w, f_tx, f_rx, E, mask)
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
            f_tx, f_rx, E = got
        assert float(E.abs().max()) > 0


def test_leave_one_out_max_brute_force() -> None:
    from agents.engnn import leave_one_out_max

    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 4, (3, 5, 6, 2), generator=g).to(torch.float64)  # ties on purpose
    mask = torch.rand(3, 5, 6, generator=g) > 0.4
    for dim in (1, 2):
        got = leave_one_out_max(x, dim, mask)
        want = torch.zeros_like(x)
        for idx in torch.cartesian_prod(*(torch.arange(n) for n in x.shape[:3])):
            b, m, k = idx.tolist()
            others = [x[b, i, k] if dim == 1 else x[b, m, i] for i in range(x.shape[dim])
                      if i != (m if dim == 1 else k) and (mask[b, i, k] if dim == 1 else mask[b, m, i])]
            if others:
                want[b, m, k] = torch.stack(others).amax(0)
        assert torch.equal(got, want), dim


def test_layer_permutation_equivariance_tx_and_rx() -> None:
    """Tx and Rx relabelled independently: the outputs are relabelled the same way (Proposition 1)."""
    from agents.engnn import ENGNNCore, engnn_forward

    E_in, f_tx, f_rx, mask = random_graph(M=4, K=5)
    core = ENGNNCore(5, 2, 1, d_edge=4, d_node=3, hidden=6, d_msg=5, layers=2, seed=4)
    pt, pr = torch.tensor([2, 0, 3, 1]), torch.tensor([4, 1, 0, 2, 3])
    with torch.no_grad():
        E, ft, fr = engnn_forward(core, E_in, f_tx, f_rx, mask)
        E2, ft2, fr2 = engnn_forward(core, E_in[:, pt][:, :, pr], f_tx[:, pt], f_rx[:, pr], mask[:, pt][:, :, pr])
    torch.testing.assert_close(E2, E[:, pt][:, :, pr], rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(ft2, ft[:, pt], rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(fr2, fr[:, pr], rtol=1e-13, atol=1e-15)


# ----------------------------------------------------------------------------------------- Ex1 protocol
def permuted(ch: InterferenceChannels, perm: torch.Tensor) -> InterferenceChannels:
    return replace(ch, H=ch.H[:, perm][:, :, perm], weights=ch.weights[:, perm],
                   inrange=ch.inrange[:, perm][:, :, perm], tx_xy=ch.tx_xy[:, perm], rx_xy=ch.rx_xy[:, perm])


@pytest.mark.parametrize("readout", ["edge", "node"])
def test_protocol_equals_centralized_forward_equivariance_and_power(readout: str) -> None:
    from agents.engnn import engnn_forward, ex1_edge_features, ex1_power_normalize, post_edge, post_tx

    ch, s = scenario(RANGED)
    p = params(2, readout)
    with torch.no_grad():
        V, _ = run(p, s)
        # centralized: dense features of the whole graph, Tx m x Rx k, edges where Tx m has CSI of Rx k
        B, K = ch.H.shape[:2]
        h = ch.H[:, :, :, 0, :].conj().transpose(1, 2)  # [b, m, k] = h_mk
        mask = ch.inrange.transpose(1, 2)
        eye = torch.eye(K, dtype=torch.bool).expand(B, K, K)
        e_in = ex1_edge_features(h / ch.noise_w.sqrt()[None, None, :, None], eye)
        E, f_tx, _ = engnn_forward(p.core, e_in * mask[..., None], ch.power_w[None, :, None].expand(B, K, 1),
                                   torch.ones(B, K, 1, dtype=torch.float64), mask)
        v = (post_edge(p.core, E.diagonal(dim1=1, dim2=2).transpose(1, 2)) if readout == "edge"
             else post_tx(p.core, f_tx))
        want = ex1_power_normalize(v, ch.power_w[None].expand(B, K))
        torch.testing.assert_close(V[2][..., 0], want, rtol=1e-12, atol=1e-12)
        perm = torch.randperm(K, generator=torch.Generator().manual_seed(5))
        V2, _ = run(p, build_scenario("interference", permuted(ch, perm), None, 0))
    for r in V:
        torch.testing.assert_close(V2[r], V[r][:, perm], rtol=1e-10, atol=1e-13)
    pw = (V[2].abs() ** 2).sum((-1, -2))
    assert bool((pw <= ch.power_w[0] * (1 + 1e-12)).all()) and float(pw.max()) > 1e-3 * float(ch.power_w[0])


def test_power_normalization_exact() -> None:
    from agents.engnn import ex1_power_normalize

    g = torch.Generator().manual_seed(1)
    v = torch.complex(torch.randn(500, 2, dtype=torch.float64, generator=g),
                      torch.randn(500, 2, dtype=torch.float64, generator=g)) * torch.logspace(-3, 3, 500)[:, None]
    P = torch.full((500,), 2.0, dtype=torch.float64)
    out = ex1_power_normalize(v, P)
    nrm2 = (out.abs() ** 2).sum(-1)
    inside = (v.abs() ** 2).sum(-1) <= 2.0
    assert bool((nrm2 <= 2.0 * (1 + 1e-15)).all())
    torch.testing.assert_close(nrm2[~inside], P[~inside], rtol=1e-15, atol=0)  # on the boundary when outside
    assert torch.equal(out[inside], v[inside])  # untouched inside


def test_local_equals_ray_and_ledger(ray_session) -> None:
    """Message loss on (a lost message: the last value received) and agents in 2 shards."""
    from dsim.engine.ray import RayEngine

    faults = FaultModel(message_loss=0.3, seed=4)
    _, s = scenario(RANGED, batch=2, faults=faults)
    p = params(2)
    with torch.no_grad():
        V_loc, led_loc = run(p, s, LocalEngine("float64", faults))
        eng = RayEngine("float64", faults, shards=2)
        try:
            V_ray, led_ray = run(p, s, eng)
        finally:
            eng.close()
    for r in V_loc:
        torch.testing.assert_close(V_ray[r], V_loc[r], rtol=1e-12, atol=1e-14)
    assert [x.as_dict() for x in led_ray] == [x.as_dict() for x in led_loc]
    # per layer: one tx_edge (dl) and one rx_reply (ul) message per present Tx-Rx edge, 16 reals each
    # (f_tx 8 + E 8; f_rx 8 + leave-one-out max 8); msgpack: fixarray (1 byte) + per field bin8 header (2)
    # + 8 float64 (64) -> 1 + 2 * 66 = 133 bytes
    present = int(s.net.edges["ue>bs"].mask.sum())
    assert present < 2 * 7 * 7  # some edges absent
    for phase, link in (("tx_edge", "dl"), ("rx_reply", "ul")):
        rows = [x for x in led_loc if x.phase == phase]
        assert [x.round for x in rows] == [1, 2]
        assert all(x.link == link and x.messages == present and x.reals == 16 * present for x in rows)
        assert all(x.bytes == 133 * present for x in rows)


def test_ledger_float32_bytes() -> None:
    _, s = scenario(EX1, batch=1)
    with torch.no_grad():
        _, led = run(params(1), s, LocalEngine("float32"))
    # complete graph K = 6: 36 edges each way; float32: 1 + 2 * (2 + 32) = 69 bytes a message
    assert {(x.phase, x.messages, x.bytes) for x in led} == {("tx_edge", 36, 36 * 69), ("rx_reply", 36, 36 * 69)}


# ----------------------------------------------------------------------------------------- engnn layout
def test_engnn_layout_channel_model() -> None:
    """Geometry and the ENGNN paper's channel: Rx 50-250 m from its Tx, 33 dBm, -99 dBm, and |h|^2 / N over
    the path gain 10^(-(30.5 + 36.7 log10 d)/10) is Exp(1) (Rayleigh): mean 1 over many links."""
    from dsim.scenarios.interference import InterferenceScenario

    o = InterferenceScenario(family="interference", layout="engnn")
    assert (o.n_pairs, o.tx_antennas, o.side_m(), o.range_m) == (20, 2, 2000.0, None)
    ch, s = scenario({"family": "interference", "layout": "engnn"}, batch=40, seed=3)
    d_own = (ch.rx_xy - ch.tx_xy).norm(dim=-1)
    assert float(d_own.min()) >= 50.0 - 1e-9 and float(d_own.max()) <= 250.0 + 1e-9
    assert 0.0 <= float(ch.tx_xy.min()) and float(ch.tx_xy.max()) <= 2000.0
    assert float(ch.power_w[0]) == pytest.approx(10 ** 0.3, rel=1e-12)
    assert float(ch.noise_w[0]) == pytest.approx(10 ** (-12.9), rel=1e-12)
    d = torch.cdist(ch.rx_xy, ch.tx_xy)  # [b, rx, tx]
    gain = 10 ** (-(30.5 + 36.7 * torch.log10(d)) / 10)
    ratio = (ch.H[:, :, :, 0, :].abs() ** 2).sum(-1) / (2 * gain)
    n = ratio.numel()  # 16000 links, mean of Exp(1): std 1/sqrt(n)
    assert abs(float(ratio.mean()) - 1.0) < 5 / math.sqrt(n)
    assert bool(ch.inrange.all()) and s.net.edges["bs>ue"].size == 400


# ----------------------------------------------------------------------------------------- training
def test_registry_and_one_rmsprop_training_step(tmp_path) -> None:
    from dsim.learn import forward_loss, get_learnable, scenario_sampler
    from dsim.train import TrainOptions, train

    _, s = scenario(EX1, batch=2)
    spec = registry.algorithm("engnn")
    proto = spec.build(spec.options(checkpoint="untrained"), s.net)
    assert proto.rounds == 1 and proto.meta["readout"] == "edge"
    learn = get_learnable("engnn", {"tx_antennas": 2})
    loss, wsr = forward_loss(learn, s.net, s.air)
    loss.backward()
    core = learn.module.core  # L = 1, read-out on the edge: (21), (22) do not reach the beamformer
    used = [core.pre_edge, core.pre_tx, core.pre_rx, core.layers[0].mlp5, core.layers[0].mlp6, core.layers[0].mlp7,
            core.post_edge]
    grads = [q.grad for mod in used for q in mod.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and float(g.abs().sum()) > 0 for g in grads[:2] + grads[-2:])
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert float(loss.detach()) == pytest.approx(-float(wsr[1].detach().mean()))
    # one dsim-train step with RMSProp (the model's default optimizer) moves the weights
    learn = get_learnable("engnn", {"tx_antennas": 2})
    before = [q.detach().clone() for q in learn.module.parameters()]
    opts = TrainOptions(algorithm="engnn", options={"tx_antennas": 2}, steps=1, batch=2, val_size=2, progress=False)
    train(learn, scenario_sampler(EX1, "double"), opts, tmp_path, seed=3)
    from dsim.learn import load_checkpoint

    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ck["meta"]["train_options"]["optimizer"] == "rmsprop" and "square_avg" in str(ck["optimizer"])
    assert any(not torch.equal(a, b) for a, b in zip(before, learn.module.parameters()))


@pytest.mark.parametrize("norm", ["linear", "mean"])
def test_feature_norm_scales_and_edge_inputs(norm: str, tmp_path) -> None:
    """``feature_norm``: the scales observed on a batch are the statistics computed here by hand (direct links /
    interfering links with CSI apart), the protocol equals the centralized forward fed the hand-made features
    (linear: sqrt(P) h / sigma / s; mean: h/||h|| ln(1 + P ||h||^2 / sigma^2) / s), a relabelling of the pairs
    relabels the beamformers, and a checkpoint written before the option loads as 'none'."""
    from agents.engnn import ENGNNParams, engnn_forward, ex1_edge_features, ex1_power_normalize, post_edge

    ch, s = scenario(RANGED)
    p = ENGNNParams(2, 2, feature_norm=norm, seed=3)
    p.observe(s.net)
    B, K = ch.H.shape[:2]
    h = ch.H[:, :, :, 0, :].conj().transpose(1, 2) / ch.noise_w.sqrt()[None, None, :, None]  # [b, m, k] h_mk / sigma
    snr = ch.power_w[0] * (h.abs() ** 2).sum(-1)
    mask = ch.inrange.transpose(1, 2)
    eye = torch.eye(K, dtype=torch.bool).expand(B, K, K)
    if norm == "mean":
        want_s = [float(torch.log1p(snr[eye & mask]).mean()), float(torch.log1p(snr[~eye & mask]).mean())]
        f = h / h.abs().pow(2).sum(-1, keepdim=True).sqrt() * torch.log1p(snr)[..., None]
    else:
        want_s = [math.sqrt(float(snr[eye & mask].mean()) / 4), math.sqrt(float(snr[~eye & mask].mean()) / 4)]
        f = h * math.sqrt(float(ch.power_w[0]))
    assert p.scale.tolist() == pytest.approx(want_s, rel=1e-12)
    f = f / torch.where(eye, want_s[0], want_s[1])[..., None]
    with torch.no_grad():
        V, _ = run(p, s)
        E, _, _ = engnn_forward(p.core, ex1_edge_features(f, eye) * mask[..., None],
                                ch.power_w[None, :, None].expand(B, K, 1), torch.ones(B, K, 1, dtype=torch.float64),
                                mask)
        want = ex1_power_normalize(post_edge(p.core, E.diagonal(dim1=1, dim2=2).transpose(1, 2)),
                                   ch.power_w[None].expand(B, K))
        torch.testing.assert_close(V[2][..., 0], want, rtol=1e-9, atol=1e-9)
        perm = torch.randperm(K, generator=torch.Generator().manual_seed(5))
        V2, _ = run(p, build_scenario("interference", permuted(ch, perm), None, 0))
    torch.testing.assert_close(V2[2], V[2][:, perm], rtol=1e-10, atol=1e-13)
    # a file written before the option (hparams without feature_norm, no scale buffer) loads as 'none'
    plain = ENGNNParams(2, 1, seed=4)
    hp = {k: v for k, v in plain.hparams.items() if k != "feature_norm"}
    path = tmp_path / "old.pt"
    torch.save({"format_version": 1, "step": 0, "model": plain.state_dict(), "hparams": hp, "meta": {}}, path)
    spec = registry.algorithm("engnn")
    old = spec.learnable(spec.options(checkpoint=str(path)))
    assert old.hparams["feature_norm"] == "none" and "scale" not in old.module.state_dict()


# ----------------------------------------------------------------------------------------- per-Tx frame
def random_channels(B: int, M: int, K: int, N: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = torch.logspace(-2, 2, M * K, dtype=torch.float64)[torch.randperm(M * K, generator=g)].reshape(M, K, 1)
    return torch.complex(torch.randn(B, M, K, N, dtype=torch.float64, generator=g),
                         torch.randn(B, M, K, N, dtype=torch.float64, generator=g)) * scale


@pytest.mark.parametrize("N", [1, 2, 3])
def test_tx_frame_unitary_and_equivariant(N: int) -> None:
    """U_m unitary, u_1 = h_mm / ||h_mm||, u_2 in span{h_mm, R_m h_mm} with u_2^H R_m u_1 real > 0 (N = 2, by
    hand); h_mk -> e^{j theta_mk} Q_m h_mk gives U_m -> Q_m U_m e^{j theta_mm} (1e-10)."""
    from agents.engnn import tx_frame
    from dsim.scenarios.interference import haar_unitary

    B, M, K = 3, 4, 5
    h = random_channels(B, M, K, N, 7)
    direct = torch.eye(M, K, dtype=torch.bool)
    interf = (~direct).expand(B, M, K).clone()
    U = tx_frame(h, direct, interf)
    eye = torch.eye(N, dtype=h.dtype).expand(B, M, N, N)
    torch.testing.assert_close(U.mH @ U, eye, rtol=0, atol=1e-12)
    own = h[:, torch.arange(M), torch.arange(M)]
    torch.testing.assert_close(U[..., 0], own / own.norm(dim=-1, keepdim=True), rtol=0, atol=1e-12)
    if N == 2:
        R = sum(h[:, :, k, :, None] * h[:, :, k, None, :].conj() * interf[:, :, k, None, None] for k in range(K))
        u1 = U[..., 0]
        w = (R @ u1[..., None])[..., 0]
        w = w - u1 * (u1.conj() * w).sum(-1, keepdim=True)
        torch.testing.assert_close(U[..., 1], w / w.norm(dim=-1, keepdim=True), rtol=0, atol=1e-12)
        x = (U[..., 1].conj()[..., None, :] @ R @ u1[..., None])[..., 0, 0]
        assert float(x.imag.abs().max()) < 1e-10 * float(x.real.abs().max()) and bool((x.real > 0).all())
    g = torch.Generator().manual_seed(8)
    Q = haar_unitary(B, M, N, g)
    theta = torch.polar(torch.ones(B, M, K, dtype=torch.float64), 6.3 * torch.rand(B, M, K, generator=g,
                                                                                   dtype=torch.float64))
    U2 = tx_frame(theta[..., None] * (Q[:, :, None] @ h[..., None])[..., 0], direct, interf)
    want = Q @ U * theta[:, torch.arange(M), torch.arange(M)][..., None, None]
    torch.testing.assert_close(U2, want, rtol=0, atol=1e-10)


def test_tx_frame_degenerate_is_unitary() -> None:
    """No interfering link (R_m = 0) or fewer interferers than N - 1: still a unitary frame with u_1 = h_mm's
    direction (the completion of tx_frame's docstring)."""
    from agents.engnn import tx_frame

    h = random_channels(2, 3, 3, 3, 9)
    direct = torch.eye(3, dtype=torch.bool)
    for interf in (torch.zeros(2, 3, 3, dtype=torch.bool), (~direct & (torch.arange(3) == 0)).expand(2, 3, 3)):
        U = tx_frame(h, direct, interf)
        torch.testing.assert_close(U.mH @ U, torch.eye(3, dtype=h.dtype).expand(2, 3, 3, 3), rtol=0, atol=1e-12)
        own = h[:, torch.arange(3), torch.arange(3)]
        torch.testing.assert_close(U[..., 0], own / own.norm(dim=-1, keepdim=True), rtol=0, atol=1e-12)


def test_frame_edge_features_by_hand() -> None:
    """c = (3, 4j), P = 2: [ln(1 + 18), ln(1 + 32), Re x, Im x], x = ln(1 + 50) * 3 * conj(4j) / 25; a phase per link
    changes nothing; a zero channel gives 0."""
    from agents.engnn import frame_edge_dim, frame_edge_features

    c = torch.tensor([[3 + 0j, 4j], [0j, 0j]], dtype=torch.complex128)
    P = torch.tensor([2.0, 2.0], dtype=torch.float64)
    f = frame_edge_features(c, P)
    x = math.log(51.0) * 3 * (-4j) / 25
    assert f[0].tolist() == pytest.approx([math.log(19.0), math.log(33.0), x.real, x.imag], rel=1e-14, abs=1e-15)
    assert f[1].tolist() == [0.0, 0.0, 0.0, 0.0]
    z = torch.polar(torch.tensor(1.0, dtype=torch.float64), torch.tensor(2.1, dtype=torch.float64))
    torch.testing.assert_close(frame_edge_features(c * z, P), f, rtol=0, atol=1e-14)
    assert frame_edge_dim(2) == 8 and frame_edge_dim(3) == 14 and frame_edge_dim(1) == 2


@pytest.mark.parametrize("N,norm", [(2, "frame"), (3, "frame"), (2, "frame_conj"), (3, "frame_conj")])
def test_frame_protocol_invariant_equivariant_power(N: int, norm: str, tmp_path) -> None:
    """``feature_norm: frame``: (i) the sum rate of every Rx is exactly invariant (1e-10) under the family's
    symmetry (a phase per Rx, a unitary per Tx) and a further arbitrary phase per link; the beamformer turns into
    Q_m^H v_m up to a phase (apply_symmetry's v_j -> Q_j^H v_j); (ii) the protocol equals the centralized
    forward fed features built here (frame by QR of the Krylov vectors [h_mm, R_m h_mm, ...]); (iii) relabelled
    pairs relabel the beamformers; (iv) ||v_m||^2 <= P; (v) the scales are E ln(1 + snr) over direct /
    interfering links, as 'mean'; (vi) 'frame_conj': conjugating one Tx's channels conjugates its beamformer and
    leaves every rate unchanged (1e-10), which 'frame' alone does not."""
    from agents.engnn import ENGNNParams, engnn_forward, ex1_power_normalize, post_edge
    from dsim.scenarios.interference import apply_symmetry, symmetry_draw

    ch, s = scenario(RANGED | {"tx_antennas": N})
    p = ENGNNParams(N, 2, feature_norm=norm, seed=3)
    p.observe(s.net)
    B, K = ch.H.shape[:2]
    h = ch.H[:, :, :, 0, :].conj().transpose(1, 2) / ch.noise_w.sqrt()[None, None, :, None]  # [b, m, k] h_mk / sigma
    P = float(ch.power_w[0])
    snr = P * (h.abs() ** 2).sum(-1)
    mask = ch.inrange.transpose(1, 2)
    eye = torch.eye(K, dtype=torch.bool).expand(B, K, K)
    want_s = [float(torch.log1p(snr[eye & mask]).mean()), float(torch.log1p(snr[~eye & mask]).mean())]
    assert p.scale.tolist() == pytest.approx(want_s, rel=1e-12)
    # the frame by hand, one Tx at a time: Krylov vectors [h_mm, R_m h_mm, ...] (a vector already in the span
    # of the previous ones -- a Tx with fewer than N - 1 interferers in range -- replaced by the standard basis
    # vector farthest from that span), then QR with the phases fixed by R's positive diagonal
    hm = h * mask[..., None]
    R = torch.einsum("bmki,bmkj->bmij", hm * (~eye)[..., None], hm.conj())
    U = torch.zeros(B, K, N, N, dtype=h.dtype)
    degenerate = 0
    for b in range(B):
        for m in range(K):
            cols = [h[b, m, m]]
            for _ in range(1, N):
                basis = torch.linalg.qr(torch.stack(cols, -1))[0]
                w = R[b, m] @ cols[-1]
                res = w - basis @ (basis.mH @ w)
                if float(res.norm()) <= 1e-6 * float(R[b, m].diagonal().real.sum()):
                    e = torch.eye(N, dtype=h.dtype)
                    resid = e - basis @ (basis.mH @ e)
                    w = e[:, int(resid.norm(dim=0).argmax())]
                    degenerate += 1
                cols.append(w)
            Qr, Rr = torch.linalg.qr(torch.stack(cols, -1))
            d = Rr.diagonal()
            U[b, m] = Qr * (d / d.abs())[None, :]
    assert degenerate > 0  # RANGED has such a Tx: the completion is exercised
    c = (U.mH[:, :, None] @ h[..., None])[..., 0]
    flip = torch.zeros(B, K, dtype=torch.bool)
    if norm == "frame_conj":  # t_m = sum over interfering links in range, i >= 2, of Im(c_1 c_i^*) |c_1 c_i| < -tol
        for b in range(B):
            for m in range(K):
                xs = [complex(c[b, m, k, 0] * c[b, m, k, i].conj()) for k in range(K) if k != m and mask[b, m, k]
                      for i in range(1, N)]
                flip[b, m] = sum(x.imag * abs(x) for x in xs) < -1e-9 * sum(abs(x) ** 2 for x in xs)
        assert bool(flip.any()) and not bool(flip.all())
        c = torch.where(flip[..., None, None], c.conj(), c)
    g = c.abs() ** 2
    tot = g.sum(-1, keepdim=True)
    xs = c[..., :1] * c[..., 1:].conj() * torch.log1p(P * tot) / tot
    f = torch.cat([torch.log1p(P * g), xs.real, xs.imag], -1) / torch.where(eye, want_s[0], want_s[1])[..., None]
    e_in = torch.cat([f * eye[..., None], f * (~eye)[..., None]], -1) * mask[..., None]
    with torch.no_grad():
        V, _ = run(p, s)
        E, _, _ = engnn_forward(p.core, e_in, ch.power_w[None, :, None].expand(B, K, 1),
                                torch.ones(B, K, 1, dtype=torch.float64), mask)
        v = post_edge(p.core, E.diagonal(dim1=1, dim2=2).transpose(1, 2))
        v = torch.where(flip[..., None], v.conj(), v)
        want = ex1_power_normalize((U @ v[..., None])[..., 0], ch.power_w[None].expand(B, K))
        torch.testing.assert_close(V[2][..., 0], want, rtol=1e-9, atol=1e-9)
        # (i) symmetry + a phase per link, on the complete graph (every Tx has >= N - 1 interferers: the generic
        # case of tx_frame; RANGED has a Tx without any, whose completed frame is not equivariant)
        chc, sc = scenario(EX1 | {"tx_antennas": N}, batch=4, seed=23)
        Vc, _ = run(p, sc)
        gen = torch.Generator().manual_seed(11)
        phase, Q = symmetry_draw(4, 6, N, gen)
        link = torch.polar(torch.ones(4, 6, 6, dtype=torch.float64),
                           6.3 * torch.rand(4, 6, 6, generator=gen, dtype=torch.float64))
        rot = apply_symmetry(chc, phase, Q)
        rot = replace(rot, H=rot.H * link[..., None, None])
        s2 = build_scenario("interference", rot, None, 0)
        V2, _ = run(p, s2)
        torch.testing.assert_close(s2.air.rates(V2[2]), sc.air.rates(Vc[2]), rtol=0, atol=1e-10)
        back = (Q @ V2[2])[..., 0]  # v_m' = Q_m^H v_m e^{j phi}: |v_m^H Q_m v_m'| = ||v_m||^2
        inner = (Vc[2][..., 0].conj() * back).sum(-1).abs()
        torch.testing.assert_close(inner, (Vc[2][..., 0].abs() ** 2).sum(-1), rtol=1e-10, atol=1e-12)
        # (vi) Tx 2 and Tx 4 conjugate their channels (H[b, k, j] is the row h_jk^H)
        Hc = chc.H.clone()
        Hc[:, :, [2, 4]] = Hc[:, :, [2, 4]].conj()
        s4 = build_scenario("interference", replace(chc, H=Hc), None, 0)
        V4, _ = run(p, s4)
        gap = float((s4.air.rates(V4[2]) - sc.air.rates(Vc[2])).abs().max())
        if norm == "frame_conj":
            assert gap < 1e-10
            torch.testing.assert_close(V4[2][:, [2, 4]], Vc[2][:, [2, 4]].conj(), rtol=1e-10, atol=1e-12)
        else:
            assert gap > 1e-6
        # (iii) pairs relabelled
        perm = torch.randperm(K, generator=torch.Generator().manual_seed(5))
        V3, _ = run(p, build_scenario("interference", permuted(ch, perm), None, 0))
    torch.testing.assert_close(V3[2], V[2][:, perm], rtol=1e-10, atol=1e-13)
    pw = (V[2].abs() ** 2).sum((-1, -2))
    assert bool((pw <= P * (1 + 1e-12)).all()) and float(pw.max()) > 1e-3 * P
