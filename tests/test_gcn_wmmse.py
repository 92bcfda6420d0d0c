"""GCN-WMMSE (agents/gcn_wmmse.py): Prop. 1 gradient, reduction to WMMSE, equivariance, parameter count."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError

import agents.gcn_wmmse as G
import agents.wmmse as W
from dsim.engine.local import LocalEngine
from dsim.linalg import solve_mu
from dsim.scenarios.multicell import multicell_network
from tests.conftest import base_channels


def _run(proto, net, air):
    wsr, dec = [], []

    def on_round(r, V):
        wsr.append(air.evaluate(V)[0])
        dec.append(V)

    with torch.no_grad():
        trace = LocalEngine("float64").run(proto, net, air, on_round=on_round)
    return torch.stack(wsr), dec, trace.ledger


def _random_params(seed: int = 3) -> G.GCNWMMSEParams:
    """Untrained parameters with non-zero biases (so modReLU's threshold is active)."""
    p = G.GCNWMMSEParams(seed=seed)
    g = torch.Generator()
    g.manual_seed(seed + 1)
    with torch.no_grad():
        p.b.copy_(0.3 * torch.randn(p.b.shape, generator=g, dtype=torch.float64))
        p.a_w.copy_(torch.rand(p.a_w.shape, generator=g, dtype=torch.float64))
        p.bias_scale_sum.fill_(1.0)
        p.bias_scale_count.fill_(2.0)
    return p


# ------------------------------------------------------------------------------------------ Prop. 1
def _mu_problem(seed: int, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator()
    g.manual_seed(seed)
    lam = torch.rand(3, 6, generator=g, dtype=torch.float64) * 2.0 + 0.05
    phi = (torch.rand(3, 6, generator=g, dtype=torch.float64) + 0.1) * scale
    return phi, lam


def test_implicit_mu_gradient_matches_finite_differences():
    phi, lam = _mu_problem(0, scale=5.0)
    assert bool((solve_mu(phi, lam) > 0).all())  # budget active: eq. (17)

    def f(ph, la):
        return G.mu_implicit(ph, la, solve_mu(ph.detach(), la.detach()))

    assert torch.autograd.gradcheck(f, (phi.requires_grad_(), lam.requires_grad_()), eps=1e-6, atol=1e-7,
                                    rtol=1e-5)


def test_implicit_mu_gradient_closed_form_and_zero_when_inactive():
    phi, lam = _mu_problem(1, scale=5.0)
    mu = solve_mu(phi, lam)
    ph, la = phi.clone().requires_grad_(), lam.clone().requires_grad_()
    G.mu_implicit(ph, la, mu).sum().backward()
    d = lam + mu.unsqueeze(-1)
    s = (phi / d**3).sum(-1, keepdim=True)
    torch.testing.assert_close(ph.grad, d**-2 / (2 * s), rtol=1e-12, atol=0)
    torch.testing.assert_close(la.grad, -phi * d**-3 / s, rtol=1e-12, atol=0)
    # eq. (18): mu = 0 (budget not binding) -> zero gradient, and finite differences agree
    phi0 = phi * 1e-4
    assert bool((solve_mu(phi0, lam) == 0).all())
    assert torch.autograd.gradcheck(lambda a, b: G.mu_implicit(a, b, solve_mu(a.detach(), b.detach())),
                                    (phi0.requires_grad_(), lam.clone().requires_grad_()), eps=1e-9,
                                    atol=1e-12)


# ------------------------------------------------------------------------------------------ pieces
@pytest.mark.parametrize("L,Gd,F", [(7, 2, 4), (3, 1, 2), (1, 3, 5)])
def test_parameter_count(L, Gd, F):
    p = G.GCNWMMSEParams(L, Gd, F)
    assert p.n_trainable() == L * (4 * F + Gd + 1) + (L - 1) * F**2
    assert G.GCNWMMSEParams().n_trainable() == 229  # the paper's count (Sec. IV-A5)
    # without diagonal loading (Tab. VI): no a_V0, L F parameters fewer
    assert G.GCNWMMSEParams(L, Gd, F, diag_loading=False).n_trainable() == L * (3 * F + Gd + 1) + (L - 1) * F**2


def test_weight_filter_acts_on_eigenvalues():
    g = torch.Generator()
    g.manual_seed(5)
    A = torch.complex(torch.randn(4, 3, 3, generator=g, dtype=torch.float64),
                      torch.randn(4, 3, 3, generator=g, dtype=torch.float64))
    What = A @ A.mH + torch.eye(3, dtype=torch.complex128)
    taps = torch.tensor([0.2, 0.7, 0.4, 0.1], dtype=torch.float64)
    Wf = G.weight_filter(What, taps)
    lam, U = torch.linalg.eigh(What)
    m = lam.mean(-1, keepdim=True)
    want = taps[0] + taps[1] * lam + taps[2] * lam**2 / m + taps[3] * lam**3 / m**2
    torch.testing.assert_close(Wf, U @ torch.diag_embed(want.to(U.dtype)) @ U.mH, rtol=1e-10, atol=1e-12)


def test_modrelu_definition():
    x = torch.tensor([3 + 4j, -0.6 + 0.8j, 1j], dtype=torch.complex128)
    b = torch.tensor([-1.0, -2.0, 0.5], dtype=torch.float64)
    want = torch.tensor([4 * (3 + 4j) / 5, 0, 1.5j], dtype=torch.complex128)
    torch.testing.assert_close(G.modrelu(x, b), want, rtol=0, atol=1e-15)


# ------------------------------------------------------------------------------------------ protocol
def test_wmmse_taps_reproduce_wmmse_and_its_ledger():
    net, air = multicell_network(base_channels(batch=3, seed=4))
    p = G.GCNWMMSEParams(layers=6).reduce_to_wmmse()
    a, Va, la = _run(G.gcn_wmmse_protocol(p, net, mu_steps=None), net, air)
    b, Vb, lb = _run(W.build(W.WMMSEOptions(init="mrc", rounds=6), net), net, air)
    # same iteration, different rounding: the projection (15) multiplies by sqrt(P/max(u, P)) = 1 + O(eps)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=0)
    torch.testing.assert_close(Va[-1], Vb[-1], rtol=1e-9, atol=1e-9 * float(Vb[-1].abs().max()))
    assert la == lb
    # P = 16 rational sub-steps from mu = 1e-12 reach the same beamformers here; the paper's P = 8 do not
    # from its MRC start (2.8 % off after 6 rounds in one realization: mu is still far from its root)
    c, _, _ = _run(G.gcn_wmmse_protocol(p, net, mu_steps=16), net, air)
    torch.testing.assert_close(c, b, rtol=1e-9, atol=0)
    c8, _, _ = _run(G.gcn_wmmse_protocol(p, net, mu_steps=8), net, air)
    assert float(((c8 - b).abs() / b).max()) > 1e-3


def test_messages_per_round_are_wmmse_messages():
    net, air = multicell_network(base_channels(batch=2, seed=5))
    _, _, la = _run(G.gcn_wmmse_protocol(_random_params(), net), net, air)
    _, _, lb = _run(W.build(W.WMMSEOptions(init="mrc", rounds=7), net), net, air)
    assert la == lb
    ul = [r for r in la if r.round == 1 and r.link == "ul"]
    assert sum(r.reals for r in ul) == 240 * 2  # DESIGN §4: 240 reals per round and realization


def test_power_constraint_met():
    net, air = multicell_network(base_channels(batch=4, seed=6))
    _, V, _ = _run(G.gcn_wmmse_protocol(_random_params(), net), net, air)
    for v in V:
        assert bool((air.power(v) <= net.local["bs"]["power"] * (1 + 1e-12)).all())


def _relabel(ch, ue_perm, bs_perm, ant_perm):
    """Channels with UE i' = ue_perm[i'], BS k' = bs_perm[k'] and BS antenna m' = ant_perm[m']."""
    inv_bs = torch.argsort(bs_perm)
    H = ch.H[:, ue_perm][:, :, bs_perm][..., ant_perm]
    return SimpleNamespace(H=H, assign=inv_bs[ch.assign[ue_perm]], power_w=ch.power_w[bs_perm],
                           noise_w=ch.noise_w[ue_perm], weights=ch.weights[ue_perm],
                           inrange=ch.inrange[:, ue_perm][:, :, bs_perm])


def test_permutation_equivariance():
    ch = base_channels(batch=3, seed=7)
    I, K, M = ch.H.shape[1], ch.H.shape[2], ch.H.shape[-1]
    g = torch.Generator()
    g.manual_seed(8)
    ue_perm, bs_perm, ant_perm = (torch.randperm(n, generator=g) for n in (I, K, M))
    p = _random_params()
    net, air = multicell_network(ch)
    w, V, _ = _run(G.gcn_wmmse_protocol(p, net), net, air)
    ch2 = _relabel(ch, ue_perm, bs_perm, ant_perm)
    net2, air2 = multicell_network(ch2)
    w2, V2, _ = _run(G.gcn_wmmse_protocol(p, net2), net2, air2)
    torch.testing.assert_close(w2, w, rtol=1e-9, atol=0)
    want = V[-1][:, ue_perm][:, :, ant_perm]
    torch.testing.assert_close(V2[-1], want, rtol=0, atol=1e-9 * float(want.abs().max()))


def test_bias_scale_is_running_mean_of_power_per_ue():
    p = G.GCNWMMSEParams()
    assert float(p.b_s) == 1.0
    n1, _ = multicell_network(base_channels(batch=2, seed=1))
    n2, _ = multicell_network(base_channels(batch=3, seed=2, bs_power_dbm=40.0))
    p.observe(n1)
    p.observe(n2)
    # 30 dBm = 1 W, 40 dBm = 10 W, 4 UEs per BS: sqrt(P/4) for 2*3 and 3*3 (realization, BS) pairs
    want = (6 * 0.5 + 9 * (10 / 4) ** 0.5) / 15
    assert abs(float(p.b_s) - want) < 1e-12


def test_registry_options_and_shipped_model():
    from dsim.registry import algorithm

    spec = algorithm("gcn_wmmse")
    with pytest.raises(ValidationError):
        spec.options(bogus=1)
    net, air = multicell_network(base_channels(batch=2, seed=9))
    proto = spec.build(spec.options(checkpoint="untrained", layers=3), net)
    assert proto.rounds == 3 and proto.meta["trainable_parameters"] == 3 * 19 + 2 * 16
    # the shipped file is committed: its absence is a failure, not a skip
    assert G.SHIPPED.is_file(), f"shipped checkpoint {G.SHIPPED} missing"
    shipped = G.MODEL.load("shipped")
    assert shipped.n_trainable() == 201 and shipped.layers == 7 and not shipped.diag_loading  # Tab. VI w/o loading
    assert abs(float(shipped.b_s) - 0.5) < 1e-12  # trained on the base scenario: sqrt(1 W / 4)
    with pytest.raises(ValueError, match="layers"):
        spec.build(spec.options(layers=5), net)


# ------------------------------------------------------------------------------------------ warm start across L
@pytest.mark.parametrize("L", [1, 3, 6, 7, 8, 10])
def test_resized_copies_layers_exactly(L):
    src = _random_params(seed=11)  # L = 7
    new = src.resized(layers=L)
    assert new.layers == L and (new.degree, new.features, new.init) == (src.degree, src.features, src.init)
    assert new.n_trainable() == L * (4 * 4 + 2 + 1) + (L - 1) * 16
    for name in ("a_w", "a_v1", "a_v0", "b", "c"):
        a, b = getattr(new, name), getattr(src, name)
        n = min(L, 7)
        assert torch.equal(a[:n], b[:n]), name                   # layers 1..min(L, 7): the source's
        for extra in range(7, L):                                # layers past 7: copies of layer 7
            assert torch.equal(a[extra], b[6]), name
    n = min(L - 1, 6)
    assert torch.equal(new.d[:n], src.d[:n])                     # skip matrices of layers 2..min(L, 7)
    for extra in range(6, L - 1):
        assert torch.equal(new.d[extra], src.d[5])
    assert torch.equal(new.bias_scale_sum, src.bias_scale_sum)
    assert torch.equal(new.bias_scale_count, src.bias_scale_count)
    # a copy, not a view: training the new model leaves the source alone
    with torch.no_grad():
        new.c.add_(1.0)
    assert not torch.equal(new.c[:1], src.c[:1])


def test_truncated_model_equals_the_source_up_to_its_last_layer():
    """Layer l runs only on rounds < l's outputs, so the L = 4 copy's output is the L = 7 model's at round 4."""
    net, air = multicell_network(base_channels(batch=3, seed=12))
    src = _random_params(seed=13)
    w7, V7, _ = _run(G.gcn_wmmse_protocol(src, net), net, air)
    w4, V4, _ = _run(G.gcn_wmmse_protocol(src.resized(layers=4), net), net, air)
    assert len(V4) == 5 and len(V7) == 8  # round 0 (MRC) and one per layer
    torch.testing.assert_close(w4, w7[:5], rtol=0, atol=0)
    torch.testing.assert_close(V4[-1], V7[4], rtol=0, atol=0)


@pytest.mark.parametrize("L, deg, F", [(7, 4, 4), (7, 2, 6), (7, 3, 5), (4, 4, 4), (9, 4, 6)])
def test_grown_degree_and_features_keep_the_function(L, deg, F):
    """resized(degree=G' >= G, features=F' >= F): zero extra taps of (12), zero read-out c and bias b of the
    new features of (13) and no skip from new to old features, so every round equals the source's (to 1e-12 in
    float64, rounding only) on random channels; the new features are live (non-zero a_V1) and their read-out
    gets a gradient (so training can use them); a smaller G or F is one OptionError line."""
    from dsim.registry import OptionError

    net, air = multicell_network(base_channels(batch=4, seed=21))
    src = _random_params(seed=17)                                  # L = 7, G = 2, F = 4, non-zero biases
    new = src.resized(layers=L, degree=deg, features=F)
    assert (new.layers, new.degree, new.features) == (L, deg, F)
    assert new.n_trainable() == L * (4 * F + deg + 1) + (L - 1) * F * F
    assert torch.equal(new.a_w[:, 3:], torch.zeros(L, deg - 2, dtype=torch.float64))
    assert torch.equal(new.c[:, 4:], torch.zeros(L, F - 4, dtype=torch.complex128))
    assert torch.equal(new.d[:, 4:, :4], torch.zeros(L - 1, F - 4, 4, dtype=torch.complex128))
    assert F == 4 or bool((new.a_v1[:, 4:].abs() > 0).all())
    w_src, V_src, _ = _run(G.gcn_wmmse_protocol(src, net), net, air)
    w_new, V_new, _ = _run(G.gcn_wmmse_protocol(new, net), net, air)
    n = min(L, 7) + 1
    torch.testing.assert_close(w_new[:n], w_src[:n], rtol=1e-12, atol=0)
    for r in range(n):
        torch.testing.assert_close(V_new[r], V_src[r], rtol=0, atol=1e-12 * float(V_src[r].abs().max()))
    # the new parameters learn: loss (16) at the last layer has non-zero gradients on the added taps / read-outs
    def last_wsr(V):
        return air.evaluate(V)[0]

    proto = G.gcn_wmmse_protocol(new, net)
    out = []
    LocalEngine("float64").run(proto, net, air, on_round=lambda r, V: out.append(V))
    last_wsr(out[-1]).sum().backward()
    if deg > 2:
        assert bool((new.a_w.grad[:, 3:].abs() > 0).any())
    if F > 4:
        assert bool((new.c.grad[:, 4:].abs() > 0).all())
    for key, kw in (("degree", {"degree": 1}), ("features", {"features": 3})):
        with pytest.raises(OptionError, match=f"^{key}: .* allowed: >= "):
            src.resized(**kw)


def test_without_diagonal_loading_is_the_model_with_a_v0_zero():
    """diag_loading=False (Tab. VI's ablation) drops v~ a_V0^T from (13): the same rounds as the diagonally loaded
    model with a_V0 set to 0 (a second way to compute it), every other parameter kept by ``resized``; turning it
    back on (a_V0 = 0) keeps the function exactly; an untrained draw matches the loaded model's other draws."""
    net, air = multicell_network(base_channels(batch=3, seed=31))
    src = _random_params(seed=19)
    off = src.resized(diag_loading=False)
    assert off.a_v0 is None and "a_v0" not in off.state_dict() and not off.diag_loading
    assert off.n_trainable() == src.n_trainable() - 7 * 4
    for name in ("a_w", "a_v1", "b", "c", "d", "bias_scale_sum", "bias_scale_count"):
        assert torch.equal(getattr(off, name), getattr(src, name)), name
    zeroed = src.resized()
    with torch.no_grad():
        zeroed.a_v0.zero_()
    w_off, V_off, _ = _run(G.gcn_wmmse_protocol(off, net), net, air)
    w_zero, V_zero, _ = _run(G.gcn_wmmse_protocol(zeroed, net), net, air)
    w_src, _, _ = _run(G.gcn_wmmse_protocol(src, net), net, air)
    torch.testing.assert_close(w_off, w_zero, rtol=1e-12, atol=0)
    torch.testing.assert_close(V_off[-1], V_zero[-1], rtol=0, atol=1e-12 * float(V_zero[-1].abs().max()))
    assert float((w_off[-1] - w_src[-1]).abs().max()) > 1e-3        # the term matters for this draw
    on = off.resized(diag_loading=True)
    assert on.diag_loading and torch.equal(on.a_v0, torch.zeros(7, 4, dtype=torch.complex128))
    w_on, _, _ = _run(G.gcn_wmmse_protocol(on, net), net, air)
    torch.testing.assert_close(w_on, w_off, rtol=1e-12, atol=0)
    fresh_on, fresh_off = G.GCNWMMSEParams(seed=5), G.GCNWMMSEParams(seed=5, diag_loading=False)
    for name, t in fresh_off.state_dict().items():
        assert torch.equal(t, fresh_on.state_dict()[name]), name


def test_diag_loading_option_warm_starts_and_is_checked_at_inference(tmp_path):
    """``train.options`` diag_loading false drops the term from a checkpoint that has it (resized); inference
    with a diag_loading other than the checkpoint's is one OptionError line."""
    from dsim.learn import Learnable, save_checkpoint
    from dsim.registry import OptionError

    src = _random_params(seed=23)
    path = tmp_path / "ck.pt"
    save_checkpoint(path, Learnable(G.MODEL, src, G.MODEL.options(checkpoint="untrained")), 0, {})
    got = G.MODEL.learnable({"checkpoint": str(path), "diag_loading": False}).module
    want = src.resized(diag_loading=False)
    sd, wd = got.state_dict(), want.state_dict()
    assert sd.keys() == wd.keys() and all(torch.equal(sd[k], wd[k]) for k in sd)
    path2 = tmp_path / "off.pt"
    save_checkpoint(path2, Learnable(G.MODEL, got, G.MODEL.options(checkpoint="untrained")), 0, {})
    assert G.MODEL.load(str(path2)).hparams["diag_loading"] is False
    net, _ = multicell_network(base_channels(batch=1, seed=1))
    with pytest.raises(OptionError, match="^diag_loading: True but checkpoint .* allowed: False"):
        G.MODEL.build(G.MODEL.options(checkpoint=str(path2), diag_loading=True), net)


def test_nonneg_is_abs_with_gradient_one_at_zero():
    a = torch.tensor([-2.0, 0.0, 3.0], dtype=torch.float64, requires_grad=True)
    y = G.nonneg(a)
    assert torch.equal(y, a.detach().abs())
    y.sum().backward()
    assert a.grad.tolist() == [-1.0, 1.0, 1.0]


def test_train_options_warm_start_another_L_from_a_checkpoint(tmp_path):
    """``dsim train`` options {checkpoint: PATH, layers: L'} start from the checkpoint resized to L'; inference
    with another L than the checkpoint's stays an error."""
    from dsim.learn import Learnable, save_checkpoint
    from dsim.registry import OptionError

    src = _random_params(seed=14)
    path = tmp_path / "ck.pt"
    save_checkpoint(path, Learnable(G.MODEL, src, G.MODEL.options(checkpoint="untrained")), 0, {})
    for L in (6, 8):
        got = G.MODEL.learnable({"checkpoint": str(path), "layers": L, "init": "mrc"}).module
        want = src.resized(layers=L)
        assert got.layers == L
        sd, wd = got.state_dict(), want.state_dict()
        assert sd.keys() == wd.keys() and all(torch.equal(sd[k], wd[k]) for k in sd)
    got = G.MODEL.learnable({"checkpoint": str(path), "degree": 4, "features": 5}).module   # grown (same function)
    want = src.resized(degree=4, features=5)
    sd, wd = got.state_dict(), want.state_dict()
    assert sd.keys() == wd.keys() and all(torch.equal(sd[k], wd[k]) for k in sd)
    with pytest.raises(OptionError, match="degree"):
        G.MODEL.learnable({"checkpoint": str(path), "degree": 1})
    net, _ = multicell_network(base_channels(batch=1, seed=1))
    with pytest.raises(ValueError, match="layers"):
        G.MODEL.build(G.MODEL.options(checkpoint=str(path), layers=6), net)


@pytest.mark.parametrize("L", [6, 8])
@pytest.mark.parametrize("dl", [False, True])
def test_shipped_L6_L8_models(L, dl):
    """Tab. VIII's other rows: ``checkpoint: shipped:L<L>`` (no diagonal loading) and ``shipped:L<L>dl`` (with it)
    are committed (absence fails) and have L layers."""
    from dsim.registry import algorithm

    name = f"L{L}dl" if dl else f"L{L}"
    path = G.SHIPPED_MODELS[name]
    assert path.is_file(), f"shipped checkpoint {path} missing"
    m = G.MODEL.load(f"shipped:{name}")
    assert (m.layers, m.degree, m.features, m.init, m.diag_loading) == (L, 2, 4, "mrc", dl)
    assert m.n_trainable() == L * (19 if dl else 15) + (L - 1) * 16
    assert abs(float(m.b_s) - 0.5) < 1e-12  # the L = 7 model's b_S, kept by the warm start
    net, _ = multicell_network(base_channels(batch=1, seed=2))
    spec = algorithm("gcn_wmmse")
    assert spec.build(spec.options(checkpoint=f"shipped:{name}"), net).rounds == L


def _recipe(name: str) -> dict:
    import yaml

    return yaml.safe_load((Path(__file__).parents[1] / "scenarios" / name).read_text())


def test_shipped_L7_lineage_matches_the_recipes():
    """``shipped`` (L = 7) has no diagonal loading and is trained from scratch (scenarios/train_gcn_wmmse_L7_nodl.yaml);
    ``shipped:L7dl``, the L = 7 model shipped before it, is the L = 8 model cut to 7 layers and fine-tuned in three
    stages (scenarios/train_gcn_wmmse_L7_ft*.yaml); ``shipped:L7v1``, the first L = 7 model, is what the DT recipe
    and the L = 6 / 8 recipes with diagonal loading start from; ``shipped:L6`` is trained from scratch as ``shipped``,
    ``shipped:L8`` starts from ``shipped``.  The checkpoints' own training records (meta) equal the recipes'
    settings."""
    from dsim.learn import load_checkpoint

    for path in (G.SHIPPED_L7V1, G.SHIPPED_L7DL):
        assert path.is_file(), f"shipped checkpoint {path} missing"
    v1, dl, new = G.MODEL.load("shipped:L7v1"), G.MODEL.load("shipped:L7dl"), G.MODEL.load("shipped")
    assert v1.hparams == dl.hparams and v1.n_trainable() == dl.n_trainable() == 229 and dl.diag_loading
    assert new.hparams == dl.hparams | {"diag_loading": False} and new.n_trainable() == 201
    for m in (v1, dl, new):
        assert abs(float(m.b_s) - 0.5) < 1e-12
    assert not torch.equal(v1.a_v1, dl.a_v1) and not torch.equal(dl.a_v1, new.a_v1)
    # the shipped model: the no-loading recipe from scratch, its settings in the checkpoint's record
    meta, nodl = load_checkpoint(G.SHIPPED)["meta"], _recipe("train_gcn_wmmse_L7_nodl.yaml")
    assert nodl["train"]["options"]["checkpoint"] == "untrained" and nodl["train"]["options"]["diag_loading"] is False
    assert meta["seed"] == nodl["seed"] and load_checkpoint(G.SHIPPED)["step"] == nodl["train"]["steps"]
    for key in ("steps", "lr", "lr_decay_every", "lr_decay", "batch", "weight_decay", "clip", "layers_in_loss"):
        assert meta["train_options"][key] == nodl["train"][key], key
    assert meta["train_options"]["options"] == nodl["train"]["options"]
    # shipped:L6 from scratch as shipped with L = 6; shipped:L8 the shipped model warm-started into 8 layers
    starts = {6: nodl["train"]["options"] | {"layers": 6, "init_seed": 7}, 8: {"checkpoint": "shipped", "layers": 8}}
    for L, want in starts.items():
        rec, ck = _recipe(f"train_gcn_wmmse_L{L}_nodl.yaml"), load_checkpoint(G.SHIPPED_MODELS[f"L{L}"])
        assert rec["train"]["options"] == ck["meta"]["train_options"]["options"] == want
        assert ck["meta"]["seed"] == rec["seed"] and ck["step"] == rec["train"]["steps"]
        assert ck["meta"]["train_options"]["layers_in_loss"] == rec["train"]["layers_in_loss"] == [L]
    # the first L = 7 model is stage 4 of scenarios/train_gcn_wmmse*.yaml
    meta = load_checkpoint(G.SHIPPED_L7V1)["meta"]
    stage4 = _recipe("train_gcn_wmmse_stage4.yaml")
    assert meta["seed"] == stage4["seed"] and meta["train_options"]["steps"] == stage4["train"]["steps"]
    # the L = 6 / 8 models with diagonal loading and the DT recipe start from it, by name or by file
    for L in (6, 8):
        assert _recipe(f"train_gcn_wmmse_L{L}.yaml")["train"]["options"] == {"checkpoint": "shipped:L7v1",
                                                                            "layers": L, "init": "mrc"}
    dt_start = _recipe("train_gcn_wmmse_dt.yaml")["train"]["options"]["checkpoint"]
    assert (Path(__file__).parents[1] / dt_start).resolve() == G.SHIPPED_L7V1
    # shipped:L7dl: stage 1 starts from shipped:L8dl cut to 7 layers, each stage from the previous one's checkpoint,
    # and the file records the last stage's settings
    stages = [_recipe(f"train_gcn_wmmse_L7_ft{s}.yaml") for s in ("", "2", "3")]
    assert stages[0]["train"]["options"] == {"checkpoint": "shipped:L8dl", "layers": 7, "init": "mrc"}
    for prev, nxt in zip(stages, stages[1:]):
        assert nxt["train"]["options"]["checkpoint"] == f"{prev['output']}/checkpoint.pt"
    assert len({s["seed"] for s in stages}) == 3
    ck = load_checkpoint(G.SHIPPED_L7DL)
    last = stages[-1]["train"]
    assert ck["meta"]["seed"] == stages[-1]["seed"] and ck["step"] == last["steps"]
    for key in ("steps", "batch", "lr", "lr_decay_every", "lr_decay", "weight_decay", "clip", "layers_in_loss"):
        assert ck["meta"]["train_options"][key] == last[key], key
