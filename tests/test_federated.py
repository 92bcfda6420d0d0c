"""Federated fine-tuning (dsim.federated): exact equalities with centralised training, the fl ledger, the
strategies' formulas, faults and the local == Ray contract."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
import torch

from dsim.config import ConfigError
from dsim.federated import (
    fl_network,
    local_train,
    make_engine,
    make_optimizer,
    run_federated,
    site_specs,
    start_vector,
)
from dsim.fl_config import finetune_from_dict
from dsim.fl_strategies import Strategy, proximal_term
from dsim.learn import get_flat, get_learnable, scenario_sampler, set_flat

SCN = {"family": "multicell", "ues_per_bs": 1, "bs_antennas": 3, "ue_antennas": 2}


def cfg_of(sites, strategies=None, rounds=3, local_steps=1, wire="float64", engine="local", faults=None, **fed):
    """A validated finetune config of GCN-WMMSE; ``options`` default {checkpoint: untrained} (a small start that
    trains visibly; the YAML's default start is the shipped model)."""
    fed = {"options": {"checkpoint": "untrained"}} | fed
    d = {"seed": 0, "engine": {"kind": engine}, "output": "unused",
         "federated": {"algorithm": "gcn_wmmse", "reference": {"name": "wmmse", "rounds": 5},
                       "sites": sites, "strategies": strategies or [{"strategy": "fedavg"}], "rounds": rounds,
                       "local_steps": local_steps, "local_lr": 0.01, "wire": wire, **fed}}
    if faults:
        d["federated"]["faults"] = faults
    return finetune_from_dict(d)


def site(name, seed, samples=4, **scn):
    return {"name": name, "scenario": {**SCN, **scn}, "samples": samples, "eval_samples": 2, "seed": seed}


def fed_vectors(cfg, k=0):
    """The global vector after every round (round 0 = start) of strategy k on the local engine, and the result."""
    engine = make_engine(cfg)
    res, vecs, trace = run_federated(cfg, k, engine, fl_network(len(cfg.federated.sites)), None, start_vector(cfg))
    return vecs, res, trace


def centralised(cfg, site_index, steps_per_round):
    """Plain local training of one site's samples (the same routine, no engine), vector after every round."""
    fed = cfg.federated
    spec = site_specs(cfg)[site_index]
    learn = get_learnable(fed.algorithm, fed.options)
    learn.module.requires_grad_(True)
    data = [scenario_sampler(spec.scenario)(spec.samples, spec.seed)]
    opt = make_optimizer(learn.module, fed.local_optimizer, fed.local_lr)
    out = [get_flat(learn.module)]
    for _ in range(fed.rounds):
        local_train(learn, data, steps_per_round, opt)
        out.append(get_flat(learn.module))
    return out


def test_fedavg_one_site_one_step_equals_centralised():
    cfg = cfg_of([site("a", 3)], rounds=3, local_steps=1)
    vecs, _, _ = fed_vectors(cfg)
    ref = centralised(cfg, 0, 1)
    assert len(vecs) == 4
    for v, w in zip(vecs, ref):
        assert torch.equal(v, w)
    assert not torch.equal(vecs[-1], vecs[0])  # it trained


def test_fedavg_identical_sites_equal_one_site():
    one = fed_vectors(cfg_of([site("a", 5)], local_steps=2))[0]
    two = fed_vectors(cfg_of([site("a", 5), site("b", 5)], local_steps=2))[0]
    for v, w in zip(one, two):
        assert torch.equal(v, w)


def test_fl_ledger_bytes_per_round_and_float16_halves():
    sites = [site("a", 1), site("b", 2), site("c", 3)]
    out = {}
    for wire in ("float32", "float16"):
        cfg = cfg_of(sites, rounds=2, wire=wire)
        vecs, res, trace = fed_vectors(cfg)
        P = res.extra["parameters"]
        assert P == get_flat(get_learnable("gcn_wmmse", {}).module).numel()
        width = {"float32": 4, "float16": 2}[wire]
        down = len(msgpack.packb([bytes(width * P)], use_bin_type=True))        # one message: P reals
        up = len(msgpack.packb([bytes(width * P), bytes(width)], use_bin_type=True))  # + example count
        for r in (1, 2):
            rows = {row.phase: row for row in res.ledger if row.round == r}
            assert rows["broadcast"].bytes == 3 * down and rows["upload"].bytes == 3 * up
            assert rows["broadcast"].messages == rows["upload"].messages == 3
        # the engine's own ledger agrees when every site takes part
        eng = [(r.round, r.phase, r.link, r.messages, r.bytes) for r in trace.ledger if r.link == "fl"]
        assert eng == [(r.round, r.phase, r.link, r.messages, r.bytes) for r in res.ledger]
        out[wire] = (res.ledger, vecs)
    b32 = sum(r.bytes for r in out["float32"][0])
    b16 = sum(r.bytes for r in out["float16"][0])
    assert b16 < 0.51 * b32  # the payload halves exactly (checked per row above); msgpack framing is a few bytes
    # float16 still trains: its vectors follow float32's closely and move away from the start
    v32, v16 = out["float32"][1], out["float16"][1]
    moved = float((v32[-1] - v32[0]).norm())
    assert moved > 0 and float((v16[-1] - v32[-1]).norm()) < 0.05 * moved + 1e-3 * float(v32[0].norm())


def test_fedadam_matches_closed_form():
    x = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    st = Strategy("fedadam", eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)
    ups = [torch.tensor([[2.0, -1.0, 0.0], [0.0, -3.0, 1.0]], dtype=torch.float64),
           torch.tensor([[1.5, 0.0, 0.5]], dtype=torch.float64)]
    ns = [torch.tensor([1.0, 3.0]), torch.tensor([5.0])]
    m = v = np.zeros(3)
    xn = x.numpy().copy()
    for t, (u, n) in enumerate(zip(ups, ns), start=1):
        avg = (n.numpy()[:, None] * u.numpy()).sum(0) / n.numpy().sum()
        d = avg - xn
        m = 0.9 * m + 0.1 * d
        v = 0.99 * v + 0.01 * d * d
        xn = xn + 0.1 * math.sqrt(1 - 0.99 ** t) / (1 - 0.9 ** t) * m / (np.sqrt(v) + 1e-3)
        x = st.aggregate(x, u, n)
        np.testing.assert_allclose(x.numpy(), xn, rtol=1e-13)
    fedavg = Strategy("fedavg").aggregate(x, ups[0], ns[0])
    np.testing.assert_allclose(fedavg.numpy(), [0.5, -2.5, 0.75], rtol=1e-15)


def test_fedprox_term_and_effect():
    p = [torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([1 + 1j], dtype=torch.complex128)]
    a = [torch.tensor([0.0, 0.0], dtype=torch.float64), torch.tensor([0j], dtype=torch.complex128)]
    assert float(proximal_term(p, a, 0.5)) == pytest.approx(0.25 * (1 + 4 + 2))
    # a strong proximal pull keeps the local models (and so the aggregate) nearer the start than FedAvg
    sites = [site("a", 1), site("b", 2, bs_power_dbm=20)]
    avg = fed_vectors(cfg_of(sites, local_steps=3))[0]
    prox = fed_vectors(cfg_of(sites, [{"strategy": "fedprox", "proximal_mu": 1e4}], local_steps=3))[0]
    assert float((prox[-1] - prox[0]).norm()) < float((avg[-1] - avg[0]).norm())


def test_crash_and_min_fit_clients():
    sites = [site("a", 1), site("b", 2), site("c", 3)]
    # c crashed from round 1: FedAvg over a and b only, which equals a federation of a and b
    crashed = fed_vectors(cfg_of(sites, faults={"crash": {"c": 1}}))
    pair = fed_vectors(cfg_of(sites[:2]))[0]
    for v, w in zip(crashed[0], pair):
        assert torch.allclose(v, w, rtol=1e-12, atol=0)
    rows = {(r.round, r.phase): r.messages for r in crashed[1].ledger}
    assert rows[(1, "broadcast")] == 3 and rows[(1, "upload")] == 2  # the server addressed c; c sent nothing
    # three updates needed but c crashes at round 2: round 1 aggregates, rounds 2 and 3 do not happen
    vecs, res, _ = fed_vectors(cfg_of(sites, [{"strategy": "fedavg", "min_fit_clients": 3}],
                                      faults={"crash": {"c": 2}}))
    assert res.extra["aggregated_rounds"] == [1]
    assert not torch.equal(vecs[1], vecs[0]) and torch.equal(vecs[2], vecs[1]) and torch.equal(vecs[3], vecs[1])


def test_message_loss_leaves_sites_out():
    sites = [site("a", 1), site("b", 2), site("c", 3)]
    cfg = cfg_of(sites, [{"strategy": "fedavg", "min_fit_clients": 2}], rounds=4,
                 faults={"message_loss": 0.4, "seed": 3})
    vecs, res, _ = fed_vectors(cfg)
    for r in range(1, 5):
        if r in res.extra["aggregated_rounds"]:
            assert not torch.equal(vecs[r], vecs[r - 1])
        else:
            assert torch.equal(vecs[r], vecs[r - 1])
    # this seed loses enough messages to skip some rounds and not others
    assert 0 < len(res.extra["aggregated_rounds"]) < 4
    # the ledger counts the uploads sent (the sites that got the model), lost or not
    ups = [r.messages for r in res.ledger if r.phase == "upload"]
    assert any(u < 3 for u in ups)


def test_partial_participation_counts():
    sites = [site(n, i) for i, n in enumerate("abcd")]
    cfg = cfg_of(sites, [{"strategy": "fedavg", "fraction_fit": 0.5, "min_fit_clients": 1}], rounds=2)
    _, res, _ = fed_vectors(cfg)
    assert all(r.messages == 2 for r in res.ledger)


def test_local_equals_ray(ray_session):
    sites = [site("a", 1), site("b", 2, bs_power_dbm=20)]
    strategies = [{"strategy": "fedadam", "eta": 0.01}]
    loc = fed_vectors(cfg_of(sites, strategies, rounds=2, wire="float32"))
    cfg = cfg_of(sites, strategies, rounds=2, wire="float32", engine="ray")
    engine = make_engine(cfg)
    try:
        ray = run_federated(cfg, 0, engine, fl_network(2), None, start_vector(cfg))
        sent = engine.sent_bytes()
    finally:
        engine.close()
    for v, w in zip(loc[0], ray[1]):
        assert torch.allclose(v, w, rtol=1e-9, atol=1e-12)
    assert loc[1].ledger == ray[0].ledger
    strip = [(r.round, r.phase, r.link, r.messages, r.reals, r.bytes) for r in loc[2].ledger]
    assert strip == [(r.round, r.phase, r.link, r.messages, r.reals, r.bytes) for r in ray[2].ledger]
    assert sent["broadcast"] + sent["upload"] == sum(r.bytes for r in ray[0].ledger)


def test_flat_vector_round_trip():
    learn = get_learnable("icgnn", {})
    v = get_flat(learn.module)
    other = get_learnable("icgnn", {"checkpoint": "untrained"})
    set_flat(other.module, v)
    assert torch.equal(get_flat(other.module), v)
    with pytest.raises(ValueError):
        set_flat(other.module, v[:-1])


def test_config_errors_name_key():
    with pytest.raises(ConfigError, match=r"federated.sites\[0\].truncate.antennas: not a scenario key"):
        cfg_of([{**site("a", 1), "truncate": {"antennas": 3}}])
    with pytest.raises(ConfigError, match=r"federated.faults.crash.zz: no such site; allowed: a"):
        cfg_of([site("a", 1)], faults={"crash": {"zz": 2}})
    with pytest.raises(ConfigError, match=r"federated.strategies\[0\].min_fit_clients: must be <= the number"):
        cfg_of([site("a", 1)], [{"strategy": "fedavg", "min_fit_clients": 2}])


def test_hotspot_layout_places_ues_in_the_disk():
    from dsim.scenarios.multicell import MulticellScenario, generate_multicell

    R, centre = 25.0, (90.0, 40.0)
    o = MulticellScenario(hotspot_radius_m=R, hotspot_xy_m=centre, hotspot_fraction=0.5)
    ch = generate_multicell(o, 4000, torch.Generator().manual_seed(1))
    base = generate_multicell(MulticellScenario(), 4000, torch.Generator().manual_seed(1))
    inside = torch.arange(12) % 4 < 2                       # the first 2 of every BS's 4 UEs
    r = (ch.ue_xy[:, inside] - torch.tensor(centre, dtype=torch.float64)).norm(dim=-1)
    assert float(r.max()) <= R
    # uniform in area: E[r^2] = R^2 / 2 (standard error ~ R^2 / sqrt(12 * 4000 * 2))
    assert float((r ** 2).mean()) == pytest.approx(R * R / 2, rel=0.01)
    # the other UEs keep the layout's positions (the hotspot draws come after the layout's)
    assert torch.equal(ch.ue_xy[:, ~inside], base.ue_xy[:, ~inside])


def test_cli_finetune_writes_run_dir_and_reports_bad_keys(tmp_path, capsys):
    import csv
    import json

    import yaml

    from dsim.cli import main

    cfg = {"seed": 0, "engine": {"kind": "local"}, "output": str(tmp_path / "run"),
           "federated": {"algorithm": "gcn_wmmse", "reference": {"name": "wmmse", "rounds": 3},
                         "sites": [site("a", 1), site("b", 2, bs_power_dbm=20)], "rounds": 2,
                         "strategies": [{"strategy": "fedavg"}, {"strategy": "fedadam", "eta": 0.01}]}}
    path = tmp_path / "fl.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["finetune", str(path), "--no-progress"]) == 0
    run = tmp_path / "run"
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    methods = {r["method"] for r in rows}
    assert methods == {"transfer", "alone", "pooled", "fl-fedavg", "fl-fedadam"}
    avg = [r for r in rows if r["method"] == "fl-fedavg" and r["site"] == "average"]
    assert [int(r["round"]) for r in avg] == [0, 1, 2]
    assert float(avg[0]["rel_wsr_pct"]) == pytest.approx(
        float(next(r for r in rows if r["method"] == "transfer" and r["site"] == "average")["rel_wsr_pct"]))
    summary = json.loads((run / "summary.json").read_text())
    pooled = summary["methods"]["pooled"]
    # each site uploads its 4 samples: H (4, I=3, K=3, N=2, M=3) complex, positions (4, 3, 2) x 2, and the
    # per-BS / per-UE power, noise and weight vectors (3 each): 489 reals as float32, one message per site
    reals = 4 * 3 * 3 * 2 * 3 * 2 + 2 * 4 * 3 * 2 + 3 * 3
    assert pooled["sample_upload_bytes"] == 2 * len(msgpack.packb([bytes(4 * reals)], use_bin_type=True))
    assert summary["methods"]["fl-fedavg"]["fl_bytes"] > 0
    assert (run / "plots" / "rel_wsr_vs_round.png").is_file() and (run / "plots" / "rel_wsr_vs_bytes.png").is_file()
    capsys.readouterr()
    cfg["federated"]["sites"][0]["truncate"] = {"ue_antenas": 1}
    path.write_text(yaml.safe_dump(cfg))
    assert main(["finetune", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "federated.sites[0].truncate.ue_antenas: not a scenario key" in err[0]
    assert str(path) in err[0]


def test_meta_default_device():
    """DESIGN §11: with the default device ``meta`` the FL round (sites drawing their samples, local training,
    aggregation, FedAdam state) and the hotspot generator create nothing on it: bit-identical to a CPU run."""
    from dsim.scenarios.multicell import MulticellScenario, generate_multicell

    sites = [site("a", 1, hotspot_radius_m=20.0), site("b", 2)]
    cfg = cfg_of(sites, [{"strategy": "fedadam", "eta": 0.01}], rounds=2, wire="float16")
    ref = fed_vectors(cfg)[0]
    opts = MulticellScenario(hotspot_radius_m=15.0, hotspot_fraction=0.5)
    h_ref = generate_multicell(opts, 3, torch.Generator().manual_seed(4)).H
    torch.set_default_device("meta")
    try:
        got = fed_vectors(cfg)[0]
        h = generate_multicell(opts, 3, torch.Generator().manual_seed(4)).H
    finally:
        torch.set_default_device(None)
    assert all(torch.equal(v, w) for v, w in zip(got, ref))
    assert torch.equal(h, h_ref)


def test_start_vector_resolves_named_checkpoints_as_inference_does():
    """The federated start goes through LearnableSpec.locate: 'shipped', 'shipped:dt' and its alias 'shipped-dt'
    are the packaged files; an unknown name is the one-line error of the protocol's checkpoint key."""
    from agents import gcn_wmmse as G

    for ck, path in (("shipped", G.SHIPPED), ("shipped:dt", G.SHIPPED_DT), ("shipped-dt", G.SHIPPED_DT)):
        v = start_vector(cfg_of([site("a", 1)], options={"checkpoint": ck}))
        assert torch.equal(v, get_flat(G.MODEL.load(path))), ck
    # an unknown name is refused when the config is validated, one line naming the key
    with pytest.raises(ConfigError) as err:
        cfg_of([site("a", 1)], options={"checkpoint": "shipped:nope"})
    assert err.value.lines == ["<dict>: federated.options.checkpoint: 'shipped:nope' is not allowed; allowed: "
                               "shipped, shipped:dt, shipped:L6, shipped:L8, shipped:L7v1, shipped:L7dl, shipped:L6dl, "
                               "shipped:L8dl, shipped-dt, untrained or a path"]


def test_default_start_is_the_shipped_model():
    """``federated.options`` without a checkpoint: fine-tuning starts from the shipped model, parameter for
    parameter (the file's state dict, read here without dsim's checkpoint resolution)."""
    from agents import gcn_wmmse as G

    for options in ({}, {"init_seed": 3}):
        cfg = cfg_of([site("a", 1)], options=options)
        assert cfg.federated.options["checkpoint"] == "shipped"
        v = start_vector(cfg)
        ck = torch.load(G.SHIPPED, map_location="cpu", weights_only=True)
        module = G.MODEL.module(**ck["hparams"])
        set_flat(module, v)
        floats = {k: t for k, t in ck["model"].items() if t.is_floating_point() or t.is_complex()}
        assert floats and sum(t.numel() * (2 if t.is_complex() else 1) for t in floats.values()) == v.numel()
        for k, t in floats.items():
            assert torch.equal(module.state_dict()[k], t), k
    untrained = start_vector(cfg_of([site("a", 1)]))
    assert untrained.numel() != v.numel() or not torch.equal(untrained, v)
    # options that do not match the start checkpoint: one line at federated.options.<key> (not layers, nor a
    # larger degree or features: those are warm starts with the same function, GCNWMMSEParams.resized)
    with pytest.raises(ConfigError) as err:
        start_vector(cfg_of([site("a", 1)], options={"degree": 1}))
    assert err.value.lines == ["<dict>: federated.options.degree: 1 but the checkpoint has degree=2; allowed: >= 2 "
                               "(a larger degree is grown from it with the same function) or leave degree out"]
