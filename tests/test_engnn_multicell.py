"""ENGNN paper Ex2 / Ex3 on the multicell family: zf_power against water-filling and an independent numpy
WMMSE, cooperative air against numpy, cooperative WMMSE monotone and within budget, gradient projection
feasible, ENGNN Ex2 / Ex3 permutation equivariance and exact power, local engine == Ray engine (numbers and
ledger), field layout geometry, bad options."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from dsim.engine.local import LocalEngine
from dsim.registry import algorithm
from dsim.scenarios.multicell import (
    MulticellChannels,
    MulticellScenario,
    generate_multicell,
    multicell_network,
)

PL = {"pathloss": "exponent", "pathloss_ref_db": 30.5, "pathloss_exponent": 3.67}
EX2 = {"layout": "field", "n_bs": 3, "ues_per_bs": 2, "bs_antennas": 4, "ue_antennas": 1, "field_m": 1000.0,
       "bs_separation_m": 300.0, "min_distance_m": 20.0, "disk_radius_m": 150.0, "bs_power_dbm": 33.0,
       "noise_dbm": -99.0, **PL}
EX3 = {"layout": "field", "serve": "all", "n_bs": 3, "n_ue": 2, "bs_antennas": 2, "ue_antennas": 1,
       "field_m": 1000.0, "bs_separation_m": 300.0, "bs_power_dbm": 33.0, "noise_dbm": -99.0, **PL}


def draw(batch: int, seed: int, **kw) -> MulticellChannels:
    return generate_multicell(MulticellScenario(**kw), batch, torch.Generator().manual_seed(seed))


def protocol(name: str, net, **opts):
    spec = algorithm(name)
    return spec.build(spec.options(**opts), net)


def run(proto, net, air, engine=None):
    out: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        trace = (engine or LocalEngine("float64")).run(proto, net, air, on_round=lambda r, d: out.__setitem__(r, d))
    return out, trace.ledger


# ------------------------------------------------------------------------------------------ scenario
def test_field_layout_geometry_and_options() -> None:
    ch = draw(64, 1, **EX2)
    d_bs = torch.cdist(ch.bs_xy, ch.bs_xy) + 1e9 * torch.eye(3, dtype=torch.float64)
    assert float(d_bs.min()) >= 300.0 and float(ch.bs_xy.min()) >= 0 and float(ch.bs_xy.max()) <= 1000.0
    d_serve = torch.linalg.vector_norm(ch.ue_xy - ch.bs_xy[:, ch.assign], dim=-1)
    assert float(d_serve.min()) >= 20.0 - 1e-9 and float(d_serve.max()) <= 150.0 + 1e-9
    co = draw(64, 2, **EX3)
    assert co.serve_all and co.H.shape == (64, 2, 3, 1, 2)
    assert float(co.ue_xy.min()) >= 0 and float(co.ue_xy.max()) <= 1000.0
    for kw, key in (({"serve": "all"}, "serve"), ({"layout": "field", "n_ue": 3}, "n_ue"),
                    ({"layout": "field", "serve": "all", "ue_antennas": 2}, "ue_antennas"),
                    ({"layout": "field", "n_bs": 30, "bs_separation_m": 900.0}, "bs_separation_m"),
                    ({"layout": "field", "serve": "all", "range_m": 100.0}, "range_m")):
        with pytest.raises(ValidationError, match=key):
            MulticellScenario(**kw)


@pytest.mark.parametrize("scn,alg,fragments", [
    ("{family: multicell, layout: hex, serve: all, ue_antennas: 1}", "{name: coop_wmmse}",
     ("scenario.serve", "allowed")),
    ("{family: multicell, layout: field, serve: all, n_ue: 2, ue_antennas: 1}", "{name: coop_wmmse, init: mrc}",
     ("init", "mrt")),
    ("{family: multicell, layout: field, ue_antennas: 1, min_distance_m: 600}", "{name: zf_power}",
     ("scenario.min_distance_m", "disk_radius_m")),
])
def test_bad_config_one_line_exit_2(tmp_path, capsys, scn: str, alg: str, fragments: tuple[str, ...]) -> None:
    from dsim.cli import main

    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"seed: 0\nbatch: 2\nscenario: {scn}\nalgorithms:\n  - {alg}\noutput: {tmp_path / 'out'}\n")
    assert main(["run", str(cfg)]) == 2
    lines = [x for x in capsys.readouterr().err.strip().splitlines() if x]
    assert len(lines) == 1 and "bad.yaml" in lines[0], lines
    assert all(f in lines[0] for f in fragments), lines[0]


# ------------------------------------------------------------------------------------------ zf_power
def unit_zf_numpy(H_rows: np.ndarray) -> np.ndarray:
    """Unit-norm ZF beams of one BS: H_rows (Q, M) rows h_q^H -> (M, Q) columns w_q, H_rows @ W diagonal."""
    W = np.linalg.pinv(H_rows)
    return W / np.linalg.norm(W, axis=0, keepdims=True)


def water_filling(g: np.ndarray, P: float) -> np.ndarray:
    """p_q = (nu - 1/g_q)^+ with sum p = P (g: SNR per unit power), by bisection on nu."""
    lo, hi = 0.0, P + float((1.0 / g).max())
    for _ in range(200):
        nu = 0.5 * (lo + hi)
        lo, hi = (nu, hi) if np.maximum(nu - 1.0 / g, 0).sum() < P else (lo, nu)
    return np.maximum(0.5 * (lo + hi) - 1.0 / g, 0)


def test_zf_power_single_cell_is_water_filling() -> None:
    """One BS, no inter-cell interference, ZF: the power problem is concave, its optimum water-filling; WMMSE
    over the fixed beams converges to it."""
    kw = EX2 | {"n_bs": 1, "ues_per_bs": 3, "bs_power_dbm": 10.0, "disk_radius_m": 400.0, "bs_separation_m": 0.0}
    ch = draw(3, 4, **kw)
    net, air = multicell_network(ch)
    out, _ = run(protocol("zf_power", net, rounds=400), net, air)
    P, s2 = float(ch.power_w[0]), float(ch.noise_w[0])
    for b in range(3):
        Hb = ch.H[b, :, 0, 0, :].numpy()                           # (Q, M) rows
        W = unit_zf_numpy(Hb)
        g = np.abs(np.diag(Hb @ W)) ** 2 / s2
        want = np.log1p(water_filling(g, P) * g).sum()
        got = float(air.evaluate(out[400])[0][b])
        assert got == pytest.approx(want, rel=1e-7)
        assert float(air.power(out[400])[b, 0]) <= P * (1 + 1e-12)


def numpy_zf_wmmse(ch: MulticellChannels, b: int, rounds: int) -> list[float]:
    """Scalar WMMSE over fixed unit ZF beams written here from (8)-(9) (Shi et al. 2011, SISO form):
    c_ji = h_{a(i) j}^H w_i; u_j = c_jj v_j / J_j; w_j = J_j / (J_j - |c_jj v_j|^2);
    v_i = w_i u_i conj(c_ii) / (sum_j w_j |u_j|^2 |c_ji|^2 + mu_b), mu_b by bisection on sum_{i in b} |v_i|^2 = P_b.
    Returns the sum rate (nat/Hz) after every round, round 0 = equal power."""
    H, assign = ch.H[b, :, :, 0, :].numpy(), ch.assign.numpy()           # (I, K, M)
    I, K = H.shape[:2]
    P, s2 = ch.power_w.numpy(), ch.noise_w.numpy()
    Wb = np.zeros((I, H.shape[-1]), dtype=complex)
    for k in range(K):
        mine = np.flatnonzero(assign == k)
        Wb[mine] = unit_zf_numpy(H[mine, k]).T
    c = np.einsum("jim,im->ji", H[:, assign], Wb)                          # c[j, i] = h_{a(i) j}^H w_i
    v = np.sqrt(P[assign] / np.bincount(assign)[assign]).astype(complex)
    out = []

    def rate(v: np.ndarray) -> float:
        g = np.abs(c * v[None, :]) ** 2
        J = g.sum(1) + s2
        return float(np.sum(np.log(J) - np.log(J - np.diag(g))))

    out.append(rate(v))
    for _ in range(rounds):
        J = (np.abs(c * v[None, :]) ** 2).sum(1) + s2
        own = np.diag(c) * v
        u = own / J
        w = J / (J - np.abs(own) ** 2)
        num = w * u * np.conj(np.diag(c))
        den = (w[:, None] * np.abs(u[:, None]) ** 2 * np.abs(c) ** 2).sum(0)
        new = np.zeros(I, dtype=complex)
        for k in range(K):
            mine = np.flatnonzero(assign == k)

            def used(mu: float, mine=mine, num=num, den=den) -> float:
                return float(np.sum(np.abs(num[mine] / (den[mine] + mu)) ** 2))

            mu = 0.0
            if used(0.0) > P[k]:
                lo, hi = 0.0, 1.0
                while used(hi) > P[k]:
                    hi *= 2
                for _ in range(200):
                    mid = 0.5 * (lo + hi)
                    lo, hi = (mid, hi) if used(mid) > P[k] else (lo, mid)
                mu = 0.5 * (lo + hi)
            new[mine] = num[mine] / (den[mine] + mu)
        v = new
        out.append(rate(v))
    return out


def test_zf_power_equals_numpy_wmmse_and_budget_exact() -> None:
    ch = draw(2, 5, **EX2)
    net, air = multicell_network(ch)
    out, _ = run(protocol("zf_power", net, rounds=15), net, air)
    for b in range(2):
        want = numpy_zf_wmmse(ch, b, 15)
        got = [float(air.evaluate(out[r])[0][b]) for r in range(16)]
        assert np.allclose(got, want, rtol=1e-9, atol=0)
        assert all(y >= x - 1e-9 * abs(x) for x, y in zip(got, got[1:]))   # monotone
    for r in out:
        assert float(air.power_ratio(out[r]).max()) <= 1 + 1e-12


# ------------------------------------------------------------------------------------------ cooperative
def test_coop_air_rates_equal_numpy() -> None:
    ch = draw(2, 6, **EX3)
    net, air = multicell_network(ch)
    gen = torch.Generator().manual_seed(0)
    V = torch.complex(torch.randn(2, 6, 2, 1, generator=gen, dtype=torch.float64),
                      torch.randn(2, 6, 2, 1, generator=gen, dtype=torch.float64))
    got = air.rates(V)
    for b in range(2):
        h = ch.H[b, :, :, 0, :].reshape(2, -1).numpy()                 # UE j's stacked row [h_1j^H ... h_Mj^H]
        v = V[b].reshape(2, 3 * 2).numpy()                              # stream i's stacked [v_1i; ...; v_Mi]
        s = h @ v.T                                                     # s[j, i]
        for j in range(2):
            sig = abs(s[j, j]) ** 2
            intf = sum(abs(s[j, i]) ** 2 for i in range(2) if i != j) + float(ch.noise_w[j])
            assert float(got[b, j]) == pytest.approx(math.log1p(sig / intf), rel=1e-12)
    pw = air.power(V)
    assert torch.allclose(pw, (V.abs() ** 2).sum((-1, -2)).reshape(2, 2, 3).sum(1))


def test_coop_rates_single_precision_at_high_sinr() -> None:
    """(14) in complex64 at SINR 1e6 ... 1e10: finite and equal to the float64 closed form (the former
    log J - log(J - |s_jj|^2) cancelled past ~1e7 and gave inf / NaN training losses)."""
    from dsim.scenarios.multicell import coop_rates

    for sinr in (1e6, 1e8, 1e10):
        S = torch.tensor([[[math.sqrt(sinr), 1e-3], [0.5, 1.0]]], dtype=torch.complex64)  # s[j, i]
        noise = torch.tensor([1.0, 1.0])
        got = coop_rates(S, noise)
        want = [math.log1p(sinr / (1e-6 + 1.0)), math.log1p(1.0 / (0.25 + 1.0))]
        assert torch.isfinite(got).all()
        assert got[0].tolist() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("init", ["mrt", "random"])
def test_coop_wmmse_monotone_and_within_budget(init: str) -> None:
    ch = draw(4, 7, **EX3)
    net, air = multicell_network(ch)
    out, _ = run(protocol("coop_wmmse", net, rounds=40, init=init), net, air)
    wsr = torch.stack([air.evaluate(out[r])[0] for r in range(41)])       # (41, B)
    assert bool((wsr[1:] >= wsr[:-1] - 1e-9 * wsr[:-1].abs()).all())
    assert bool((wsr[40] > wsr[0]).all())
    for r in out:
        assert float(air.power_ratio(out[r]).max()) <= 1 + 1e-9


def test_coop_gp_feasible_and_improves() -> None:
    ch = draw(4, 8, **EX3)
    net, air = multicell_network(ch)
    out, _ = run(protocol("coop_gp", net, rounds=60), net, air)
    for r in out:
        assert float(air.power_ratio(out[r]).max()) <= 1 + 1e-12
    assert float(air.evaluate(out[60])[0].mean()) > float(air.evaluate(out[0])[0].mean())


# ------------------------------------------------------------------------------------------ ENGNN
def engnn(name: str, net):
    return protocol(name, net, checkpoint="untrained", init_seed=3)


def relabel(ch: MulticellChannels, perm_ue: torch.Tensor, perm_bs: torch.Tensor) -> MulticellChannels:
    """UE i' = perm_ue[i'], BS k' = perm_bs[k'] of ``ch`` (serving map relabelled accordingly)."""
    inv_bs = torch.argsort(perm_bs)
    return MulticellChannels(H=ch.H[:, perm_ue][:, :, perm_bs], assign=inv_bs[ch.assign[perm_ue]],
                             power_w=ch.power_w[perm_bs], noise_w=ch.noise_w[perm_ue],
                             weights=ch.weights[perm_ue], inrange=ch.inrange[:, perm_ue][:, :, perm_bs],
                             serve_all=ch.serve_all)


def test_engnn_ex2_permutation_equivariant_and_power_exact() -> None:
    ch = draw(3, 9, **EX2)
    net, air = multicell_network(ch)
    V = run(engnn("engnn_ex2", net), net, air)[0][1]                   # (B, I, M, 1) per served UE
    assert torch.allclose(air.power(V), ch.power_w.expand(3, -1), rtol=1e-12, atol=0)
    perm_ue, perm_bs = torch.tensor([3, 0, 5, 1, 4, 2]), torch.tensor([2, 0, 1])
    ch2 = relabel(ch, perm_ue, perm_bs)
    net2, air2 = multicell_network(ch2)
    V2 = run(engnn("engnn_ex2", net2), net2, air2)[0][1]
    # the unit ZF beam of a UE is its BS's pseudo-inverse column: unique, so V itself is equivariant
    assert torch.allclose(V2, V[:, perm_ue], rtol=1e-10, atol=1e-14)
    assert torch.allclose(air2.evaluate(V2)[0], air.evaluate(V)[0], rtol=1e-12, atol=0)


def test_engnn_ex3_permutation_equivariant_and_power_exact() -> None:
    ch = draw(3, 10, **EX3 | {"n_ue": 3})
    net, air = multicell_network(ch)
    V = run(engnn("engnn_ex3", net), net, air)[0][2]                   # (B, I K, M, 1), edge i K + k
    assert torch.allclose(air.power(V), ch.power_w.expand(3, -1), rtol=1e-12, atol=0)
    perm_ue, perm_bs = torch.tensor([2, 0, 1]), torch.tensor([1, 2, 0])
    ch2 = relabel(ch, perm_ue, perm_bs)
    net2, air2 = multicell_network(ch2)
    V2 = run(engnn("engnn_ex3", net2), net2, air2)[0][2]
    want = V.reshape(3, 3, 3, 2, 1)[:, perm_ue][:, :, perm_bs]
    assert torch.allclose(V2.reshape(3, 3, 3, 2, 1), want, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name,scn,n_rounds", [("engnn_ex2", EX2, 1), ("engnn_ex3", EX3, 2), ("coop_wmmse", EX3, 3)])
def test_local_equals_ray_and_ledger(name: str, scn: dict, n_rounds: int, ray_session) -> None:
    from dsim.engine.ray import RayEngine

    ch = draw(2, 11, **scn)
    net, air = multicell_network(ch)
    opts = {"checkpoint": "untrained", "init_seed": 1} if name.startswith("engnn") else {"rounds": n_rounds}
    proto = protocol(name, net, **opts)
    V_loc, led_loc = run(proto, net, air)
    eng = RayEngine("float64", shards=2)
    try:
        V_ray, led_ray = run(protocol(name, net, **opts), net, air, eng)
    finally:
        eng.close()
    for r in V_loc:
        assert torch.allclose(V_ray[r], V_loc[r], rtol=1e-10, atol=1e-300), r
    assert [x.as_dict() for x in led_ray] == [x.as_dict() for x in led_loc]
    if name.startswith("engnn"):
        K, I = int(net.info["n_bs"]), int(net.info["n_ue"]) * net.batch   # per-realization edges x B
        p = proto.module
        U = 2 if name == "engnn_ex2" else 1
        tx = [x for x in led_loc if x.phase == "tx_edge"]
        rx = [x for x in led_loc if x.phase == "rx_reply"]
        assert len(tx) == len(rx) == n_rounds
        assert all(x.link == "dl" and x.messages == K * I for x in tx)
        assert all(x.link == "ul" and x.messages == K * I for x in rx)
        assert all(x.reals == K * I * (U * (p.d_node + p.d_edge) + (U if U > 1 else 0)) for x in tx)
        assert all(x.reals == K * I * (p.d_node + U * p.d_msg) for x in rx)


def test_engnn_training_step_changes_parameters() -> None:
    """One RMSProp step of the learnable (dsim train's machinery) changes the parameters and is finite."""
    from dsim.learn import forward_loss, get_learnable

    learn = get_learnable("engnn_ex3", {"init_seed": 0})
    ch = draw(8, 12, **EX3)
    net, air = multicell_network(ch)
    opt = torch.optim.RMSprop(learn.module.parameters(), lr=1e-3)
    loss, _ = forward_loss(learn, net, air)
    loss.backward()
    before = [p.detach().clone() for p in learn.module.parameters()]
    opt.step()
    assert math.isfinite(float(loss.detach()))
    assert any(not torch.equal(a, b) for a, b in zip(before, learn.module.parameters()))


# ------------------------------------------------------------------------------------------ Ex3 per-BS frame
def haar(n: int, size: int, seed: int) -> torch.Tensor:
    """``size`` Haar unitaries (size, n, n) complex128 (QR of a complex Gaussian, R's diagonal made positive)."""
    g = np.random.default_rng(seed)
    z = (g.standard_normal((size, n, n)) + 1j * g.standard_normal((size, n, n))) / math.sqrt(2)
    q, r = np.linalg.qr(z)
    d = np.diagonal(r, axis1=-2, axis2=-1)
    return torch.from_numpy(q * (d / np.abs(d))[..., None, :])


def numpy_frame(h: np.ndarray, kind: str) -> np.ndarray:
    """Independent reference of the per-BS frame: h (I, N) channels (columns h_k as rows) of one BS, I >= N,
    in general position -> U (N, N).  gram_schmidt: QR of the N strongest channels, R's diagonal made real
    positive; eigen: eigenvectors of sum_k h_k h_k^H, largest eigenvalue first, u_i^H h_k > 0 for the k of the
    largest |u_i^H h_k|."""
    strongest = np.argsort(-np.linalg.norm(h, axis=1), kind="stable")
    if kind == "gram_schmidt":
        q, r = np.linalg.qr(h[strongest[: h.shape[1]]].T)
        d = np.diagonal(r)
        return q * (d / np.abs(d))[None, :]
    _, u = np.linalg.eigh(h.T @ h.conj())
    u = u[:, ::-1]
    c = u.conj().T @ h.T                                                    # (N, I): u_i^H h_k
    a = c[np.arange(c.shape[0]), np.abs(c).argmax(1)]
    return u * (a / np.abs(a))[None, :]


@pytest.mark.parametrize("kind", ["gram_schmidt", "eigen"])
@pytest.mark.parametrize("n_ant,n_ue", [(2, 2), (2, 5), (3, 4)])
def test_coop_frame_is_unitary_equivariant_and_qr(n_ant: int, n_ue: int, kind: str) -> None:
    from agents.engnn_multicell import coop_frame

    g = torch.Generator().manual_seed(n_ant * 10 + n_ue)
    h = torch.randn(3, 4, n_ue, n_ant, dtype=torch.complex128, generator=g)
    h = h * torch.rand(3, 4, n_ue, 1, generator=g, dtype=torch.float64).to(h.dtype)    # distinct norms
    mask = torch.ones(3, 4, n_ue, dtype=torch.bool)
    U = coop_frame(h, mask, kind)
    eye = torch.eye(n_ant, dtype=U.dtype)
    assert torch.allclose(U.conj().transpose(-1, -2) @ U, eye.expand_as(U), rtol=0, atol=1e-12)
    ref = np.stack([[numpy_frame(h[b, m].numpy(), kind) for m in range(4)] for b in range(3)])
    assert np.allclose(U.numpy(), ref, rtol=0, atol=1e-10)
    Q = haar(n_ant, 12, 5).reshape(3, 4, n_ant, n_ant)
    U2 = coop_frame((Q[:, :, None] @ h[..., None])[..., 0], mask, kind)
    assert torch.allclose(U2, Q @ U, rtol=0, atol=1e-10)                   # U_m(Q_m h) = Q_m U_m(h)
    perm = torch.randperm(n_ue, generator=g)
    assert torch.allclose(coop_frame(h[:, :, perm], mask, kind), U, rtol=0, atol=1e-10)   # UE labels do not matter


@pytest.mark.parametrize("kind", ["gram_schmidt", "eigen"])
def test_coop_frame_degenerate_is_unitary(kind: str) -> None:
    """Fewer UEs in range than antennas, collinear channels, no UE at all: still a unitary frame."""
    from agents.engnn_multicell import coop_frame

    h = torch.randn(1, 3, 3, 3, dtype=torch.complex128, generator=torch.Generator().manual_seed(1))
    h[0, 1, 1] = 2j * h[0, 1, 0]                                            # collinear with UE 0
    mask = torch.ones(1, 3, 3, dtype=torch.bool)
    mask[0, 0, 1:] = False                                                  # one UE in range
    mask[0, 2] = False                                                      # none
    U = coop_frame(h, mask, kind)
    eye = torch.eye(3, dtype=U.dtype)
    assert torch.allclose(U.conj().transpose(-1, -2) @ U, eye.expand_as(U), rtol=0, atol=1e-12)
    u0 = h[0, 0, 0] / torch.linalg.vector_norm(h[0, 0, 0])                 # the one UE's direction first
    assert torch.allclose(U[0, 0, :, 0], u0, rtol=0, atol=1e-12)


def rotate_bs(ch: MulticellChannels, Q: torch.Tensor) -> MulticellChannels:
    """h_mk -> Q_m h_mk for every UE k: rows h^H -> h^H Q_m^H; Q (B, K, M, M)."""
    H = ch.H @ Q.conj().transpose(-1, -2)[:, None]
    return MulticellChannels(H=H, assign=ch.assign, power_w=ch.power_w, noise_w=ch.noise_w, weights=ch.weights,
                             inrange=ch.inrange, serve_all=ch.serve_all)


@pytest.mark.parametrize("kind", ["gram_schmidt", "eigen"])
@pytest.mark.parametrize("n_ant", [2, 3])
def test_engnn_ex3_frame_exactly_invariant_to_per_bs_unitaries(n_ant: int, kind: str) -> None:
    ch = draw(3, 13, **EX3 | {"n_ue": 3, "bs_antennas": n_ant})
    B, I, K = 3, 3, int(ch.H.shape[2])
    net, air = multicell_network(ch)
    Q = haar(n_ant, B * K, 6).reshape(B, K, n_ant, n_ant)
    ch2 = rotate_bs(ch, Q)
    net2, air2 = multicell_network(ch2)
    for frame in (kind, "none"):
        opts = {"checkpoint": "untrained", "init_seed": 3, "frame": frame}
        V = run(protocol("engnn_ex3", net, **opts), net, air)[0][2]
        V2 = run(protocol("engnn_ex3", net2, **opts), net2, air2)[0][2]
        assert torch.allclose(air.power(V), ch.power_w.expand(B, -1), rtol=1e-12, atol=0)
        assert torch.allclose(air2.power(V2), ch.power_w.expand(B, -1), rtol=1e-12, atol=0)
        r, r2 = air.evaluate(V)[0], air2.evaluate(V2)[0]
        if frame != "none":   # v_mk -> Q_m v_mk, the rates unchanged
            want = Q[:, None] @ V.reshape(B, I, K, n_ant, 1)
            assert torch.allclose(V2.reshape(B, I, K, n_ant, 1), want, rtol=0, atol=1e-10)
            assert torch.allclose(r2, r, rtol=1e-10, atol=0)
        else:       # the absolute-coordinate model is not invariant: the test can tell
            assert (r2 - r).abs().max() > 1e-6


@pytest.mark.parametrize("kind", ["gram_schmidt", "eigen"])
def test_engnn_ex3_frame_is_the_plain_model_on_frame_coordinates(kind: str) -> None:
    """frame: true = the same weights applied to the channels in each BS's frame (numpy_frame), the
    beamformers rotated back: v_mk = U_m v'_mk."""
    ch = draw(2, 14, **EX3 | {"n_ue": 4})
    net, air = multicell_network(ch)
    B, I, K, M = 2, 4, int(ch.H.shape[2]), 2
    h = ch.H[:, :, :, 0, :].conj().permute(0, 2, 1, 3).resolve_conj().numpy()            # (B, K, I, M) columns h_mk
    U = torch.from_numpy(np.stack([[numpy_frame(h[b, m], kind) for m in range(K)] for b in range(B)]))
    canon = rotate_bs(ch, U.conj().transpose(-1, -2))                      # c_mk = U_m^H h_mk
    net_c, air_c = multicell_network(canon)
    V = run(protocol("engnn_ex3", net, checkpoint="untrained", init_seed=4, frame=kind), net, air)[0][2]
    Vc = run(protocol("engnn_ex3", net_c, checkpoint="untrained", init_seed=4, frame="none"), net_c, air_c)[0][2]
    want = U[:, None] @ Vc.reshape(B, I, K, M, 1)
    assert torch.allclose(V.reshape(B, I, K, M, 1), want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", ["gram_schmidt", "eigen"])
def test_engnn_ex3_frame_permutation_equivariant(kind: str) -> None:
    ch = draw(3, 10, **EX3 | {"n_ue": 3})
    net, air = multicell_network(ch)
    opts = {"checkpoint": "untrained", "init_seed": 3, "frame": kind}
    V = run(protocol("engnn_ex3", net, **opts), net, air)[0][2]
    perm_ue, perm_bs = torch.tensor([2, 0, 1]), torch.tensor([1, 2, 0])
    ch2 = relabel(ch, perm_ue, perm_bs)
    net2, air2 = multicell_network(ch2)
    V2 = run(protocol("engnn_ex3", net2, **opts), net2, air2)[0][2]
    want = V.reshape(3, 3, 3, 2, 1)[:, perm_ue][:, :, perm_bs]
    assert torch.allclose(V2.reshape(3, 3, 3, 2, 1), want, rtol=1e-10, atol=1e-14)


def test_engnn_ex3_file_without_frame_loads_as_plain_and_can_be_fine_tuned_with_it(tmp_path) -> None:
    from agents.engnn_multicell import ENGNNEx3Params
    from dsim.learn import get_learnable

    plain = ENGNNEx3Params(layers=1, d_edge=4, d_node=4, hidden=8, d_msg=4, seed=2)
    hp = {k: v for k, v in plain.hparams.items() if k != "frame"}          # a file written before the option
    path = tmp_path / "old.pt"
    torch.save({"format_version": 1, "step": 0, "model": plain.state_dict(), "hparams": hp, "meta": {}}, path)
    ch = draw(2, 15, **EX3)
    net, air = multicell_network(ch)
    proto = protocol("engnn_ex3", net, checkpoint=str(path))
    assert proto.module.frame == "none"
    V = run(proto, net, air)[0][1]
    V_ref = run(protocol("engnn_ex3", net, checkpoint=str(path), frame="none"), net, air)[0][1]
    assert torch.equal(V, V_ref)
    warm = get_learnable("engnn_ex3", {"checkpoint": str(path), "frame": "eigen"}).module
    assert warm.frame == "eigen"
    assert all(torch.equal(a, b) for a, b in zip(warm.state_dict().values(), plain.state_dict().values()))
    with pytest.raises(ValueError, match="Ex3"):
        algorithm("engnn_ex2").learnable({"frame": "eigen"})
