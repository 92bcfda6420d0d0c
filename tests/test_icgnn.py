"""ICGNN cell-free power allocation (agents/icgnn.py): equivariance, power constraint, the distributed
forward == an explicit dense graph implementation, the fronthaul ledger, training, adaptation and the
shipped checkpoint."""

from __future__ import annotations

import copy
from dataclasses import replace

import msgpack
import numpy as np
import pytest
import torch

from agents.cellfree_alloc import build_lsf
from agents.icgnn import MODEL, MSG_UNITS, ICGNNOptions, icgnn_protocol
from dsim.engine.local import LocalEngine
from dsim.registry import OptionError
from dsim.scenarios.cellfree import CellfreeScenario, cellfree_network, generate_cellfree

build, learnable = MODEL.build, MODEL.learnable


def _channels(batch=3, seed=0, dtype=torch.complex128, **kw):
    kw = {"n_aps": 4, "ap_antennas": 2, "n_ues": 3, "realizations": 20} | kw
    return generate_cellfree(CellfreeScenario(**kw), batch, torch.Generator().manual_seed(seed), dtype)


def _powers(proto, net, air, wire="float64"):
    out = {}
    trace = LocalEngine(wire).run(proto, net, air, on_round=lambda r, p: out.__setitem__(r, p))
    return out[proto.rounds], trace


@pytest.fixture(scope="module")
def shipped():
    params = MODEL.load("shipped")
    params.eval().requires_grad_(False)
    return params


def _perm_ues(ch, perm):
    return replace(ch, beta=ch.beta[:, perm], R=ch.R[:, perm], h=ch.h[:, :, perm], h_hat=ch.h_hat[:, :, perm],
                   pilot_index=ch.pilot_index[perm], ue_xy=ch.ue_xy[:, perm])


def _perm_aps(ch, perm):
    return replace(ch, beta=ch.beta[:, :, perm], R=ch.R[:, :, perm], h=ch.h[:, :, :, perm],
                   h_hat=ch.h_hat[:, :, :, perm], power_w=ch.power_w[perm], ap_xy=ch.ap_xy[:, perm])


def test_permutation_equivariance_and_power_constraint(shipped):
    ch = _channels(n_aps=5, n_ues=4)
    net, air = cellfree_network(ch)
    p, _ = _powers(icgnn_protocol(shipped, net), net, air)  # (B, L, K)
    torch.testing.assert_close(p.sum(-1), ch.power_w.reshape(1, -1).expand_as(p.sum(-1)), rtol=0, atol=1e-9)
    assert bool((p > 0).all())
    ue = torch.tensor([2, 0, 3, 1])
    net_u, air_u = cellfree_network(_perm_ues(ch, ue))
    pu, _ = _powers(icgnn_protocol(shipped, net_u), net_u, air_u)
    torch.testing.assert_close(pu, p[:, :, ue], rtol=0, atol=1e-10)
    ap = torch.tensor([4, 2, 0, 1, 3])
    net_a, air_a = cellfree_network(_perm_aps(ch, ap))
    pa, _ = _powers(icgnn_protocol(shipped, net_a), net_a, air_a)
    torch.testing.assert_close(pa, p[:, ap], rtol=0, atol=1e-10)
    torch.testing.assert_close(air_a.evaluate(pa)[0], air.evaluate(p)[0], rtol=1e-12, atol=0)


# ------------------------------------------------------------------------------------ dense reference
def dense_icgnn(params, ch) -> torch.Tensor:
    """The paper's graph written out: KL virtual nodes v_kl (index k*L + l), an explicit edge list
    v_kl -> v_mj for all m != k and all l, j, one message per edge, scatter-amax onto the receivers, U,
    (27).  Features from the raw channels (L-MMSE of eq. (22) per draw, Monte-Carlo moments); the power
    feature p_kl / P_t, times K / K_0 when ``params.power_ref_nodes`` = K_0 > 0."""
    B, S, K, L, N = ch.h.shape
    noise, P = float(ch.noise_w), ch.power_w.to(torch.float64)
    rho = ch.ue_power_w
    # L-MMSE precoders per AP and draw, unit norm
    Hl = ch.h_hat.permute(0, 1, 3, 4, 2)  # (B, S, L, N, K)
    A = rho * Hl @ Hl.mH + noise * torch.eye(N, dtype=Hl.dtype)
    W = torch.linalg.solve(A, Hl)
    W = W / torch.linalg.vector_norm(W, dim=-2, keepdim=True)  # (B, S, L, N, K): w_kl = W[..., l, :, k]
    G = ch.h.permute(0, 1, 3, 4, 2).mH @ W  # (B, S, L, K, K): G[.., l, m, k] = h_ml^H w_kl
    a = G.diagonal(dim1=-2, dim2=-1).mean(1).real  # (B, L, K)
    rms = (G.abs() ** 2).mean(1).sqrt()  # (B, L, m, k)
    snr = (P / noise).sqrt().reshape(1, L, 1)
    fa = torch.asinh(a * snr)                       # node feature of v_kl, [b, l, k]
    fi = torch.asinh(rms * snr[..., None])          # edge feature I^m_kl, [b, l, m, k]
    node_k = torch.arange(K).repeat_interleave(L)   # node i = k*L + l
    node_l = torch.arange(L).repeat(K)
    src, dst = [], []
    for i in range(K * L):
        for j in range(K * L):
            if node_k[i] != node_k[j]:
                src.append(i)
                dst.append(j)
    src, dst = torch.tensor(src), torch.tensor(dst)
    x_a = fa[:, node_l, node_k]                      # (B, KL)
    e_i = fi[:, node_l[src], node_k[dst], node_k[src]]  # (B, E): I^m_kl, sender (k,l), receiver UE m
    p = (P[node_l] / K).expand(B, K * L).clone()
    ref = params.power_ref_nodes
    for t in range(params.layers):
        p_rel = p / P[node_l] * (K / ref if ref > 0 else 1.0)
        msg = params.msg[t](torch.stack([x_a[:, src], p_rel[:, src], e_i], dim=-1))  # (B, E, 64)
        agg = torch.full((B, K * L, MSG_UNITS[-1]), -5.0, dtype=torch.float64)
        agg = agg.scatter_reduce(1, dst.reshape(1, -1, 1).expand_as(msg), msg, reduce="amax", include_self=False)
        s = params.upd[t](torch.cat([agg, x_a[..., None], p_rel[..., None]], dim=-1))[..., 0]  # (B, KL)
        tot = torch.zeros(B, L, dtype=torch.float64).index_add_(1, node_l, s)
        p = P[node_l] * s / tot[:, node_l]
    return p.reshape(B, K, L).transpose(1, 2)  # (B, L, K)


@pytest.mark.parametrize("ref", [0, 1, 3, 8])
def test_distributed_forward_equals_dense_graph(shipped, ref):
    """Also for every reading of the power feature (power_ref_nodes K_0: K p / (K_0 P_t))."""
    ch = _channels(n_aps=4, n_ues=3, seed=5)
    net, air = cellfree_network(ch)
    shipped = copy.deepcopy(shipped)
    shipped.power_ref_nodes = ref
    p, _ = _powers(icgnn_protocol(shipped, net), net, air)
    torch.testing.assert_close(p, dense_icgnn(shipped, ch), rtol=1e-12, atol=1e-15)
    # training mode: batch-norm statistics over the distinct messages == over the dense graph's edges
    a_params, b_params = copy.deepcopy(shipped).train(), copy.deepcopy(shipped).train()
    pt, _ = _powers(icgnn_protocol(a_params, net), net, air)
    with torch.no_grad():
        torch.testing.assert_close(pt, dense_icgnn(b_params, ch), rtol=1e-9, atol=1e-12)


def test_power_ref_nodes_equals_the_old_model_fed_rescaled_features(shipped, monkeypatch):
    """power_ref_nodes K_0 is exactly the old reading (0) fed p / P_t times K / K_0 (atol 0), and at K = K_0 it is
    bit-identical to the old reading; any other K_0 changes the powers."""
    import agents.icgnn as icgnn

    ch = _channels(n_aps=4, n_ues=3, seed=11)
    net, air = cellfree_network(ch)
    shipped = copy.deepcopy(shipped)
    shipped.power_ref_nodes = 0
    new = copy.deepcopy(shipped)
    new.power_ref_nodes = 5
    p_new, _ = _powers(icgnn_protocol(new, net), net, air)
    p_old, _ = _powers(icgnn_protocol(shipped, net), net, air)
    assert not torch.allclose(p_new, p_old, rtol=1e-3, atol=0)
    orig_pre, orig_upd = icgnn.premax_messages, icgnn.update_powers
    monkeypatch.setattr(icgnn, "premax_messages", lambda m, a, pr, i: orig_pre(m, a, pr * (3 / 5), i))
    monkeypatch.setattr(icgnn, "update_powers", lambda u, g, a, pr, pw: orig_upd(u, g, a, pr * (3 / 5), pw))
    p_fed, _ = _powers(icgnn_protocol(shipped, net), net, air)
    torch.testing.assert_close(p_new, p_fed, rtol=0, atol=0)
    monkeypatch.undo()
    new.power_ref_nodes = 3
    p_same, _ = _powers(icgnn_protocol(new, net), net, air)
    assert torch.equal(p_same, p_old)


def test_checkpoint_without_power_ref_nodes_loads_with_the_old_reading(tmp_path, shipped):
    """A checkpoint written before ``power_ref_nodes`` existed (hparams: layers only) loads with 0 (p / P_t); the
    option (a free hyper-parameter) may set another; an untrained model takes 0; the option round-trips."""
    path = tmp_path / "old.pt"
    torch.save({"format_version": 1, "step": 0, "model": shipped.state_dict(), "hparams": {"layers": 2},
                "meta": {}}, path)
    assert MODEL.load(str(path)).power_ref_nodes == 0
    assert MODEL.make(MODEL.options(checkpoint=str(path), power_ref_nodes=5)).power_ref_nodes == 5
    assert MODEL.make(MODEL.options(checkpoint="untrained")).power_ref_nodes == 0
    # the shipped default is fine-tuned with K_0 = 5 (scenarios/train_icgnn_general.yaml); its stage 1 read p / P_t
    assert MODEL.load("shipped").power_ref_nodes == 5
    assert MODEL.load("agents/models/icgnn_general_v1.pt").power_ref_nodes == 0
    assert MODEL.make(MODEL.options(checkpoint="untrained", power_ref_nodes=4)).hparams["power_ref_nodes"] == 4


def test_width_scales_the_hidden_units_only(shipped):
    """``width`` w multiplies the hidden units of M_t and U_t ({3,32w,128w,64}, {66,128w,32w,1}): the parameter
    count equals the closed form sum over linear layers (a b + b) plus 2 b per batch-normed hidden layer; w = 1 is
    the paper's net and what checkpoints without the key (the shipped one) load as; a checkpoint's width is not
    changed by options (it shapes the parameters)."""
    def count(units):
        return sum(a * b + b for a, b in zip(units[:-1], units[1:])) + sum(2 * b for b in units[1:-1])

    for w in (1, 2, 3):
        msg = (3, 32 * w, 128 * w, 64)
        upd = (66, 128 * w, 32 * w, 1)
        params = MODEL.make(MODEL.options(checkpoint="untrained", width=w, layers=2))
        assert params.n_trainable() == 2 * (count(msg) + count(upd))
        assert params.hparams["width"] == w
    assert shipped.width == 1 and shipped.n_trainable() == 2 * (count((3, 32, 128, 64)) + count((66, 128, 32, 1)))
    with pytest.raises(OptionError, match="width"):
        MODEL.make(MODEL.options(checkpoint="shipped", width=2), resize=True)
    # a wider model runs the same protocol (same message size on the fronthaul) and meets the power budget
    ch = _channels(batch=2)
    net, air = cellfree_network(ch)
    wide = MODEL.make(MODEL.options(checkpoint="untrained", width=2)).eval().requires_grad_(False)
    p, _ = _powers(icgnn_protocol(wide, net), net, air)
    torch.testing.assert_close(p.sum(-1), ch.power_w.reshape(1, -1).expand_as(p.sum(-1)), rtol=0, atol=1e-9)


def test_fronthaul_ledger_per_layer(shipped):
    B, L, K = 3, 4, 3
    net, air = cellfree_network(_channels(batch=B, n_aps=L, n_ues=K))
    proto = icgnn_protocol(shipped, net)
    _, trace = _powers(proto, net, air, wire="float32")
    rows = [r for r in trace.ledger if r.link == "fh"]
    assert len(rows) == 2 * proto.rounds
    # one message: a msgpack array of one bin holding K x 64 float32 (a bin16 header: 768 bytes)
    nb = len(msgpack.packb([np.zeros(K * 64, dtype=np.float32).tobytes()], use_bin_type=True))
    assert nb == 1 + 3 + 4 * K * 64
    for r in rows:
        assert r.phase in ("fh_msg", "fh_agg") and r.messages == B * L and r.reals == B * L * K * 64
        assert r.bytes == B * L * nb
    per_layer = sum(r.reals for r in rows if r.round == 1) / B
    assert per_layer == 2 * L * K * 64


def test_single_precision_matches_double(shipped):
    ch = _channels(n_aps=4, n_ues=3, seed=9)
    net, air = cellfree_network(ch)
    p64, _ = _powers(icgnn_protocol(shipped, net), net, air)
    net32, air32 = cellfree_network(ch.to(torch.complex64))
    p32, _ = _powers(icgnn_protocol(shipped, net32), net32, air32, wire="float32")
    assert p32.dtype == torch.float32
    torch.testing.assert_close(p32.double(), p64, rtol=2e-3, atol=1e-6)


def test_short_training_lowers_loss(tmp_path):
    from dsim.learn import forward_loss
    from dsim.train import TrainOptions, train

    def sample(batch, seed):
        return cellfree_network(_channels(batch=batch, seed=seed, n_aps=4, n_ues=3, realizations=10))

    learn = learnable({"checkpoint": "untrained"})
    net, air = sample(32, 424242)

    def fixed_loss():
        with torch.no_grad():
            return float(forward_loss(learn, net, air)[0])

    learn.module.train()
    before = fixed_loss()
    opts = TrainOptions(algorithm="icgnn", steps=30, batch=16, lr=3e-3, weight_decay=0.0, lr_decay_every=10**6,
                        val_every=30, val_size=8, checkpoint_every=30, progress=False)
    train(learn, sample, opts, tmp_path, seed=3)
    learn.module.train()
    after = fixed_loss()
    assert after < before - 0.05, (before, after)  # loss (28) = -mean sum-SE [bit/s/Hz]
    assert (tmp_path / "checkpoint.pt").exists()
    assert MODEL.load(tmp_path / "checkpoint.pt").layers == 2


def test_shipped_beats_lsf_and_adaptation_meta(shipped):
    from dsim.config import config_from_dict
    from dsim.scenarios.build import scenario_from_config

    cfg = config_from_dict({"seed": 77, "precision": "double", "batch": 20,
                            "scenario": {"family": "cellfree", "n_aps": 7, "ap_antennas": 2, "n_ues": 5,
                                         "realizations": 50},
                            "algorithms": [{"name": "icgnn"}], "engine": {"kind": "local"}})
    scn = scenario_from_config(cfg)
    net, air = scn.net, scn.air
    proto = build(ICGNNOptions(), net)
    assert proto.meta["adapt_steps"] == 0 and proto.meta["trainable_parameters"] > 0
    p, _ = _powers(proto, net, air)
    p_lsf, _ = _powers(build_lsf(None, net), net, air)
    se, se_lsf = air.evaluate(p)[0].mean(), air.evaluate(p_lsf)[0].mean()
    assert se > se_lsf, (float(se), float(se_lsf))
    # the shipped model was trained with frozen normalization (train.freeze_norm): adaptation keeps it frozen
    for norm, frozen in ((None, True), ("batch", False)):
        adapted = build(ICGNNOptions(adapt_steps=1, adapt_batch=4, adapt_norm=norm), net)
        assert adapted.meta["adapt_steps"] == 1 and adapted.meta["adapt_samples"] == 4
        pa, _ = _powers(adapted, net, air)
        torch.testing.assert_close(pa.sum(-1), p.sum(-1), rtol=0, atol=1e-9)
        want = _one_adam_step_reference(net, air, seed=77, batch=4, frozen=frozen)
        torch.testing.assert_close(pa, want, rtol=1e-9, atol=1e-12)


def _one_adam_step_reference(net, air, seed: int, batch: int, frozen: bool) -> torch.Tensor:
    """ICGNN's powers after ``adapt_steps: 1`` rebuilt from the documented recipe: one minibatch of the run's
    scenario (adaptation seed s = seed * 1_000_003 + 999_983, minibatch seed s * 1_000_003 + 1), the
    gradient g of loss (28) in training mode, Adam's first step in closed form (the bias-corrected moments
    are g and g^2: theta - lr g / (|g| + eps)), then, with batch statistics (``frozen`` False), batch-norm
    statistics of that minibatch at the new weights; with ``frozen`` the batch-norm layers keep their
    running statistics throughout.  Eval mode."""
    from dsim.evaluate import evaluate_rounds
    from dsim.learn import recalibrate_bn, scenario_sampler

    learn = learnable({"checkpoint": "shipped"})
    module = learn.module.train()
    if frozen:
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
    s = seed * 1_000_003 + 999_983
    sample = scenario_sampler(dict(net.info["scenario_config"]), "double")
    mb = sample(batch, s * 1_000_003 + 1)
    proto = learn.protocol(mb[0])
    loss = -evaluate_rounds(proto, *mb, [proto.rounds])[proto.rounds].mean()
    grads = torch.autograd.grad(loss, list(module.parameters()), allow_unused=True)
    with torch.no_grad():
        for p, g in zip(module.parameters(), grads):
            if g is not None:
                p -= ICGNNOptions().adapt_lr * g / (g.abs() + 1e-8)
    if not frozen:
        recalibrate_bn(learn, lambda b, sd: mb, [0], batch)
    module.eval().requires_grad_(False)
    return _powers(icgnn_protocol(module, net), net, air)[0]


@pytest.mark.parametrize("which", ["all", "norm", "last"])
def test_adapt_params_changes_only_the_chosen_parameters(shipped, which):
    """``adapt_params`` (:func:`dsim.learn.adapted_parameters`): one adaptation step changes exactly the chosen
    parameters (all | the batch-norm layers' weight and bias | the last linear layer, U_2's output layer) and
    leaves every other parameter and the frozen running statistics bit for bit as shipped."""
    from dsim.config import config_from_dict
    from dsim.scenarios.build import scenario_from_config

    cfg = config_from_dict({"seed": 78, "precision": "double", "batch": 4,
                            "scenario": {"family": "cellfree", "n_aps": 4, "ap_antennas": 2, "n_ues": 3,
                                         "realizations": 10},
                            "algorithms": [{"name": "icgnn"}], "engine": {"kind": "local"}})
    net = scenario_from_config(cfg).net
    proto = build(ICGNNOptions(adapt_steps=1, adapt_batch=4, adapt_params=which), net)
    after = proto.module.state_dict()
    chosen = {"all": lambda k: "running" not in k and "num_batches" not in k,
              "norm": lambda k: ".norm." in k and k.endswith(("weight", "bias")),
              "last": lambda k: k.startswith("upd.1.linear.2.")}[which]
    changed = {k for k, v in shipped.state_dict().items() if not torch.equal(v, after[k])}
    want = {k for k in after if chosen(k)}
    assert want and changed == want, (which, sorted(changed ^ want))


def _round_powers(proto, net, air):
    out = {}
    LocalEngine("float64").run(proto, net, air, on_round=lambda r, p: out.__setitem__(r, p))
    return out


@pytest.mark.parametrize("T", [1, 2, 3, 4])
def test_resized_layers_copies_and_repeats_the_last(shipped, T):
    """resized(layers=T'): layer t <= min(T, T') is the source's layer t (parameters and batch-norm statistics),
    layers past T repeat layer T; so the first min(T, T') rounds are the source's bit for bit, and further rounds
    re-apply layer T (the dense graph's forward of the same layers agrees)."""
    new = shipped.resized(layers=T)
    assert new.layers == T and new.power_ref_nodes == shipped.power_ref_nodes
    for t in range(T):
        s = min(t, shipped.layers - 1)
        for mine, theirs in ((new.msg[t], shipped.msg[s]), (new.upd[t], shipped.upd[s])):
            a, b = mine.state_dict(), theirs.state_dict()
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ch = _channels(n_aps=5, n_ues=4, seed=21)
    net, air = cellfree_network(ch)
    src = _round_powers(icgnn_protocol(shipped, net), net, air)
    new.eval().requires_grad_(False)
    got = _round_powers(icgnn_protocol(new, net), net, air)
    assert sorted(got) == list(range(T + 1))  # round 0: equal power
    for r in range(1, min(T, shipped.layers) + 1):
        torch.testing.assert_close(got[r], src[r], rtol=0, atol=0)
    if T > shipped.layers:  # the extra layers change the powers (not an identity); the dense reference agrees
        assert not torch.allclose(got[T], got[shipped.layers])
        torch.testing.assert_close(got[T], dense_icgnn(new, ch), rtol=1e-12, atol=1e-15)
    with torch.no_grad():  # a copy, not a view
        next(new.parameters()).add_(1.0)
    assert not torch.equal(next(new.parameters()), next(shipped.parameters()))


def test_training_options_grow_layers_inference_does_not(tmp_path, shipped):
    """``dsim train`` options {checkpoint, layers: 3} warm-start a 3-layer model (:meth:`ICGNNParams.resized`);
    inference with another layer count than the checkpoint's is an option error; layers 0 is refused."""
    got = learnable({"checkpoint": "shipped", "layers": 3}).module
    want = shipped.resized(layers=3)
    assert got.layers == 3
    a, b = got.state_dict(), want.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    net, _ = cellfree_network(_channels())
    with pytest.raises(ValueError, match="layers"):
        build(ICGNNOptions(layers=3), net)
    with pytest.raises(ValueError, match="layers"):
        shipped.resized(layers=0)


@pytest.mark.parametrize("norm", ["frozen", "batch"])
def test_adaptation_keeps_minibatches_only_for_recalibration(shipped, monkeypatch, norm):
    """:func:`dsim.learn.adapt` draws each minibatch once.  With frozen statistics no minibatch outlives its step
    (at each draw, at most the previous step's is still referenced); with batch statistics all of them are kept,
    because the batch-norm recalibration reuses them, and it draws nothing more (draws = steps)."""
    import gc
    import weakref

    import dsim.learn as learn_mod
    from dsim.config import config_from_dict
    from dsim.scenarios.build import scenario_from_config

    real = learn_mod.scenario_sampler
    refs: list[weakref.ref] = []
    alive_at_draw: list[int] = []

    def spying_sampler(*args, **kwargs):
        draw = real(*args, **kwargs)

        def sample(batch, seed):
            gc.collect()
            alive_at_draw.append(sum(r() is not None for r in refs))
            out = draw(batch, seed)
            refs.append(weakref.ref(out[0]))
            return out
        return sample

    monkeypatch.setattr(learn_mod, "scenario_sampler", spying_sampler)
    cfg = config_from_dict({"seed": 79, "precision": "double", "batch": 4,
                            "scenario": {"family": "cellfree", "n_aps": 4, "ap_antennas": 2, "n_ues": 3,
                                         "realizations": 10},
                            "algorithms": [{"name": "icgnn"}], "engine": {"kind": "local"}})
    net = scenario_from_config(cfg).net
    steps = 5
    build(ICGNNOptions(adapt_steps=steps, adapt_batch=2, adapt_norm=norm), net)
    assert len(alive_at_draw) == steps
    if norm == "frozen":
        assert max(alive_at_draw) <= 1, alive_at_draw
    else:
        assert alive_at_draw == list(range(steps)), alive_at_draw
