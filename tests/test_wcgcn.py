"""WCGCN (MPGNN eq. (7)-(8)): exact properties -- permutation equivariance, the power constraint, the
layer against a dense-adjacency implementation written here, local engine == Ray engine (numbers and
ledger) -- and the shipped models' training recipes."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from dsim import registry
from dsim.engine.local import LocalEngine
from dsim.faults import FaultModel
from dsim.scenarios.build import build_scenario, generate_channels
from dsim.scenarios.interference import InterferenceChannels

PC = {"family": "interference", "layout": "d2d", "n_pairs": 12, "field_m": 300.0, "range_m": 150.0}
BF = {"family": "interference", "layout": "d2d", "n_pairs": 12, "tx_antennas": 2, "field_m": 300.0,
      "range_m": 150.0, "weights": "fixed"}


def scenario(scn: dict, batch: int = 3, seed: int = 21, faults: FaultModel | None = None):
    fam, ch = generate_channels(scn, batch, seed, "double")
    return ch, build_scenario(fam, ch, faults, 0)


#: beamforming variants (edge_feature, receiver_state): eq. (8) as printed, and the shipped model's
BF_VARIANTS = [("in", False), ("both", True)]


def trained_like(mode: str, n_t: int, seed: int = 3, edge_feature: str = "in", receiver_state: bool = False,
                 node_carry: str = "channel"):
    """An untrained module with observed feature scales (as a trained checkpoint has)."""
    from agents.wcgcn import WCGCNParams

    m = WCGCNParams(mode, n_t, 3, edge_feature, receiver_state, node_carry=node_carry, seed=seed)
    m.scale.copy_(torch.tensor([15.0, 6.0], dtype=torch.float64, device="cpu"))
    return m


def run(params, s, engine=None) -> tuple[dict[int, torch.Tensor], list]:
    from agents.wcgcn import wcgcn_protocol

    proto = wcgcn_protocol(params, s.net)
    out: dict[int, torch.Tensor] = {}
    trace = (engine or LocalEngine("float64")).run(proto, s.net, s.air, on_round=lambda r, d: out.__setitem__(r, d))
    return out, trace.ledger


def permuted(ch: InterferenceChannels, perm: torch.Tensor) -> InterferenceChannels:
    return replace(ch, H=ch.H[:, perm][:, :, perm], weights=ch.weights[:, perm],
                   inrange=ch.inrange[:, perm][:, :, perm], tx_xy=ch.tx_xy[:, perm], rx_xy=ch.rx_xy[:, perm])


CASES = [(PC, "pc", 1, "in", False)] + [(BF, "bf", 2, e, r) for e, r in BF_VARIANTS]
CASE_IDS = ["pc"] + [f"bf_{e}{'_rs' if r else ''}" for e, r in BF_VARIANTS]


@pytest.mark.parametrize("scn,mode,n_t,edge,rs", CASES, ids=CASE_IDS)
def test_permutation_equivariance_and_power(scn, mode, n_t, edge, rs) -> None:
    ch, s = scenario(scn)
    params = trained_like(mode, n_t, 3, edge, rs)
    with torch.no_grad():
        V, _ = run(params, s)
        perm = torch.randperm(ch.n_pairs, generator=torch.Generator().manual_seed(5))
        s2 = build_scenario("interference", permuted(ch, perm), None, 0)
        V2, _ = run(params, s2)
    for r in V:
        assert torch.allclose(V2[r], V[r][:, perm], rtol=1e-10, atol=1e-14), r
    p = (V[3].abs() ** 2).sum((-1, -2))  # ||v_k||^2
    assert bool((p <= ch.power_w[0] * (1 + 1e-12)).all())
    assert float(p.max()) > 1e-6 * float(ch.power_w[0])  # not trivially zero
    if mode == "bf":  # sigma(y) = y / max(||y||, 1): on the boundary exactly where ||y|| > 1
        from agents.wcgcn import ball
        y = 10.0 * torch.randn(1000, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        nrm = torch.linalg.vector_norm(ball(y), dim=-1)
        assert bool((nrm <= 1.0 + 1e-15).all()) and float((nrm - 1.0).abs().max()) < 1e-15
    assert torch.allclose(s.air.power_ratio(V[3]).max(), (p / ch.power_w[0]).max())


@pytest.mark.parametrize("scn,mode,n_t,edge,rs,carry", [c + ("channel",) for c in CASES]
                         + [(BF, "bf", 2, "out", False, "beam")], ids=CASE_IDS + ["bf_out_carry_beam"])
def test_layer_equals_dense_adjacency_implementation(scn, mode, n_t, edge, rs, carry) -> None:
    """Three layers computed with dense K x K feature arrays and a masked max (eq. (8)) = the protocol
    (``node_carry`` 'beam': the state keeps the previous beam instead of f(h_kk), the authors' code's update)."""
    from agents.wcgcn import as_complex, as_reals, ball, channel_feature

    ch, s = scenario(scn)
    params = trained_like(mode, n_t, 3, edge, rs, carry)
    s_own, s_edge = (float(v) for v in params.scale)
    P, nz = ch.power_w[0], ch.noise_w[0]
    c2 = P / nz
    K = ch.n_pairs
    h = ch.H[:, :, :, 0, :].conj()  # h[b, k, j] = h_jk (column), channel Tx j -> Rx k
    adj = ch.inrange & ~torch.eye(K, dtype=torch.bool)  # adj[b, i, j]: edge j -> i
    own = channel_feature(h.diagonal(dim1=1, dim2=2).transpose(1, 2), c2, s_own)
    E = channel_feature(h, c2, s_edge) * adj[..., None]  # E[b, i, j] = f(h_ji) at Rx i
    with torch.no_grad():
        if mode == "pc":
            x = torch.stack([own[..., 0].abs(), ch.weights, torch.ones_like(ch.weights)], -1)
        else:
            x = torch.cat([as_reals(torch.full_like(own, 2 ** -0.5)), as_reals(own)], -1)
        for _ in range(3):
            xj = x[:, None, :, :].expand(-1, K, -1, -1)  # [b, i, j] = x_j
            xi = x[:, :, None, :].expand(-1, -1, K, -1)  # [b, i, j] = x_i
            E_rev = E.transpose(1, 2)  # [b, i, j] = f(h_ij) as Rx j measured it (0 when Tx i is out of its range)
            if mode == "pc":
                e = torch.stack([E[..., 0].abs(), E.transpose(1, 2)[..., 0].abs()], -1)
            else:
                e = {"in": as_reals(E), "out": as_reals(E_rev),
                     "both": torch.cat([as_reals(E), as_reals(E_rev)], -1)}[edge]
            msg = params.mlp1(torch.cat([xj, e] + ([xi] if rs else []), -1))
            msg = torch.where(adj[..., None], msg, torch.full_like(msg, -torch.inf)).amax(2)
            msg = torch.where(torch.isinf(msg), torch.zeros_like(msg), msg)
            y = params.mlp2(torch.cat([x, msg], -1))
            if mode == "pc":
                x = torch.cat([x[..., :2], torch.sigmoid(y)], -1)
            else:
                x = torch.cat([ball(y), x[..., :2 * n_t] if carry == "beam" else x[..., 2 * n_t:]], -1)
        want = (x[..., 2] * P).sqrt() if mode == "pc" else P.sqrt() * as_complex(x[..., :2 * n_t])
        V, _ = run(params, s)
    got = V[3][..., 0] if mode == "bf" else V[3][..., 0, 0].real
    want = want if mode == "bf" else want
    assert torch.allclose(got, want.to(got.dtype), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("scn,mode,n_t,loss,edge,rs", [(PC, "pc", 1, 0.0, "in", False), (BF, "bf", 2, 0.3, "in", False),
                                                      (BF, "bf", 2, 0.3, "both", True)],
                         ids=["pc", "bf_lossy", "bf_both_rs_lossy"])
def test_local_equals_ray(scn, mode, n_t, loss, edge, rs, ray_session) -> None:
    from dsim.engine.ray import RayEngine

    faults = FaultModel(message_loss=loss, seed=4)
    _, s = scenario(scn, batch=2, faults=faults)
    params = trained_like(mode, n_t, 3, edge, rs)
    with torch.no_grad():
        V_loc, led_loc = run(params, s, LocalEngine("float64", faults))
        eng = RayEngine("float64", faults, shards=3)
        try:
            V_ray, led_ray = run(params, s, eng)
        finally:
            eng.close()
    for r in V_loc:
        assert torch.allclose(V_ray[r], V_loc[r], rtol=1e-9, atol=0), r
    assert [x.as_dict() for x in led_ray] == [x.as_dict() for x in led_loc]
    # ledger: one 'state' message per present pair edge and layer, 4 (pc) / 4 N_t (bf; + 2 N_t for the
    # reverse channel h_ij when the edge feature has it) reals each
    present = int(s.net.edges["pair"].mask.sum())
    rows = [x for x in led_loc if x.phase == "state"]
    assert len(rows) == 3 and all(x.link == "d2d" and x.messages == present for x in rows)
    per_edge = 4 if mode == "pc" else 4 * n_t + (2 * n_t if edge != "in" else 0)
    assert all(x.reals == present * per_edge for x in rows)


def test_registry_build_untrained_infers_mode_and_trains_one_step() -> None:
    from dsim.learn import forward_loss, get_learnable

    _, s = scenario(BF, batch=2)
    spec = registry.algorithm("wcgcn")
    proto = spec.build(spec.options(checkpoint="untrained"), s.net)
    assert proto.meta["mode"] == "bf" and proto.rounds == 3
    learn = get_learnable("wcgcn", {"mode": "bf", "tx_antennas": 2})
    loss, wsr = forward_loss(learn, s.net, s.air)
    loss.backward()
    assert float(learn.module.scale[0]) > 0  # observed from the first batch
    grads = [p.grad for p in learn.module.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert float(loss.detach()) == pytest.approx(-float(wsr[3].detach().mean()))


def test_beamforming_meta_default_device() -> None:
    """Generation, network and the beamforming protocol under the meta default device equal the CPU run
    bit for bit (the power-control case runs in tests/test_devices.py)."""
    from tests.test_devices import default_device

    def once() -> dict[int, torch.Tensor]:
        _, s = scenario(BF, batch=2)
        with torch.no_grad():
            return run(trained_like("bf", 2), s)[0]

    ref = once()
    with default_device("meta"):
        got = once()
    for r in ref:
        assert got[r].device.type == "cpu" and torch.equal(got[r], ref[r])


def test_aggregation_swap_changes_only_receivers_with_several_neighbours() -> None:
    """`aggr: sum | mean` (the robustness swap of eq. (7)'s MAX): after one layer, a receiver with at most one
    present in-edge gets the same output under max, sum and mean (one message: all three agree; none: 0),
    while receivers with several neighbours differ between max and sum."""
    from agents.wcgcn import WCGCNParams, wcgcn_protocol

    ch, s = scenario(PC | {"range_m": 60.0}, batch=2)
    params = WCGCNParams("pc", 1, 1, seed=4)
    params.scale.copy_(torch.tensor([15.0, 6.0], dtype=torch.float64, device="cpu"))
    out = {}
    with torch.no_grad():
        for aggr in ("max", "sum", "mean"):
            V: dict[int, torch.Tensor] = {}
            LocalEngine("float64").run(wcgcn_protocol(params, s.net, aggr), s.net, s.air, on_round=V.__setitem__)
            out[aggr] = V[1][..., 0, 0].abs()  # (B, K) sqrt(p_k)
    es = s.net.edges["pair"]
    deg = torch.zeros(ch.H.shape[0], ch.n_pairs, dtype=torch.long).index_add_(1, es.dst, es.mask.long())
    few, many = deg <= 1, deg >= 2
    assert bool(few.any()) and bool(many.any())
    for aggr in ("sum", "mean"):
        torch.testing.assert_close(out[aggr][few], out["max"][few], rtol=1e-12, atol=1e-15)
    assert float((out["sum"][many] - out["max"][many]).abs().max()) > 1e-6


@pytest.mark.parametrize("norm", ["mean", "std", "linear"])
def test_feature_norm_gives_unit_statistics_on_the_observed_batch(norm) -> None:
    """``feature_norm`` (agents/wcgcn.py docstring): after ``observe`` on a batch, the features of that batch
    have the documented unit statistic, for the direct links and the present edges separately: 'mean': the
    mean of ||f(h)|| is 1; 'std' and 'linear': the mean square of f's real components is 1."""
    from agents.wcgcn import WCGCNParams, as_reals, channel_feature

    _, s = scenario(BF, batch=4)
    m = WCGCNParams("bf", 2, 3, "out", feature_norm=norm, seed=0)
    m.observe(s.net)
    loc, es = s.net.local["bs"], s.net.edges["pair"]
    c2 = loc["p_max"] / loc["sigma2"]
    own = as_reals(channel_feature(loc["h_own"], c2, float(m.scale[0]), norm)).flatten(0, 1)  # (B K, 4)
    edge = as_reals(channel_feature(loc["H_rx"][:, es.dst, es.src], c2[:, es.dst], float(m.scale[1]), norm))[es.mask]
    for f in (own, edge):
        stat = torch.linalg.vector_norm(f, dim=-1).mean() if norm == "mean" else (f ** 2).mean()
        assert float(stat) == pytest.approx(1.0, rel=1e-9)
    if norm != "mean":  # the components are centred (uniform Rayleigh phase): the mean is small next to the std
        assert float(own.mean(0).abs().max()) < 0.5


def test_shipped_beamforming_model_follows_the_layout() -> None:
    """``checkpoint: shipped`` on N_t = 2: the layout mpgnn_code (the authors' code's channel) gets its own model,
    d2d the P.1411 one; both files exist and are 3-layer beamforming models with N_t = 2."""
    from agents.wcgcn import SHIPPED_MODELS, shipped_for
    from dsim.learn import load_checkpoint

    for layout, name in (("mpgnn_code", "mpgnn_code_bf"), ("d2d", "d2d_bf")):
        scn = BF | {"layout": layout}
        _, s = scenario(scn, batch=1)
        s.net.info["scenario_config"] = dict(scn)
        assert shipped_for(s.net) == name
        hp = load_checkpoint(SHIPPED_MODELS[name])["hparams"]
        assert (hp["mode"], hp["tx_antennas"], hp["layers"]) == ("bf", 2, 3)


def test_power_control_gradient_stays_finite_where_the_sigmoid_saturates() -> None:
    """float32 power control with a pre-activation far below -88.7 (where exp(-y) overflowed): p_k equals the
    closed form sigmoid(SIGMOID_FLOOR) > 0, and the gradient of sum sqrt(p_k) (what the beamformer uses) with
    respect to every weight is finite.  Before the floor: p = 0 and NaN gradients (a resumed Fig. 3 run stopped on
    one at step 14714).  Above the floor the output is the sigmoid (float64, 1e-15)."""
    import math

    from agents.wcgcn import SIGMOID_FLOOR, WCGCNParams, node_update

    params = WCGCNParams(mode="pc", layers=1).float()
    with torch.no_grad():
        params.mlp2.linear[-1].bias.fill_(-1e4)
    x, m = torch.rand(4, 7, 3), torch.rand(4, 7, 32)
    p = node_update(params, x, m)[..., 2]
    assert torch.allclose(p, torch.full_like(p, 1 / (1 + math.exp(-SIGMOID_FLOOR))), rtol=1e-6)
    p.sqrt().sum().backward()
    grads = [q.grad for q in params.parameters() if q.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
    params64 = WCGCNParams(mode="pc", layers=1)
    x64, m64 = x.double(), m.double()
    y = params64.mlp2(torch.cat([x64, m64], -1))
    assert float(y.detach().min()) > SIGMOID_FLOOR
    assert torch.allclose(node_update(params64, x64, m64)[..., 2:], torch.sigmoid(y), rtol=1e-15, atol=0)


def test_node_carry_defaults_to_the_channel_and_old_checkpoints_load_unchanged() -> None:
    """``node_carry``: shipped beamforming checkpoints written before the option (no such hyper-parameter, e.g.
    mpgnn_code_bf_v1) load as 'channel', as does the current mpgnn_code_bf (which stores it); asking 'beam' of
    them is an option error; power control ignores it; an unknown value is
    refused; 'beam' changes the outputs of the same weights (the state differs from layer 2 on)."""
    from agents.wcgcn import MODEL, WCGCNOptions, WCGCNParams
    from dsim.learn import load_checkpoint
    from dsim.registry import OptionError

    ck = load_checkpoint(MODEL.locate("shipped:mpgnn_code_bf_v1")[0])  # written before the option
    assert "node_carry" not in ck["hparams"]
    assert load_checkpoint(MODEL.locate("shipped:mpgnn_code_bf")[0])["hparams"]["node_carry"] == "channel"
    for name in ("mpgnn_code_bf_v1", "mpgnn_code_bf"):
        assert MODEL.make(WCGCNOptions(checkpoint=f"shipped:{name}")).node_carry == "channel"
        with pytest.raises(OptionError):
            MODEL.make(WCGCNOptions(checkpoint=f"shipped:{name}", node_carry="beam"))
    assert WCGCNParams("pc", 1, 3, node_carry="beam").node_carry == "channel"
    with pytest.raises(ValueError, match="node_carry"):
        WCGCNParams("bf", 2, 3, node_carry="memory")
    _, s = scenario(BF)
    a, b = trained_like("bf", 2, 3, "out"), trained_like("bf", 2, 3, "out", node_carry="beam")
    with torch.no_grad():
        Va, _ = run(a, s)
        Vb, _ = run(b, s)
    assert torch.equal(Va[1], Vb[1]) and not torch.allclose(Va[3], Vb[3])
