"""dsim/train.py: the loss lowers, resume is exact, a NaN is an error naming the step, outputs written."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from dsim.config import ConfigError
from dsim.learn import TrainingDiverged, batch_seed, get_learnable, scenario_sampler
from dsim.registry import OptionError
from dsim.scenarios.build import build_scenario, generate_channels
from dsim.scenarios.multicell import multicell_network
from dsim.train import TrainOptions, train, train_main, validate
from tests.conftest import base_channels


def sample(batch: int, seed: int):
    return multicell_network(base_channels(batch=batch, seed=seed))


def _opts(**kw) -> TrainOptions:
    base = dict(algorithm="gcn_wmmse", steps=4, batch=4, val_every=2, val_size=4, checkpoint_every=1,
                progress=False, options={"checkpoint": "untrained", "layers": 3})
    return TrainOptions(**(base | kw))


def test_short_training_lowers_the_loss(tmp_path):
    opts = _opts(steps=25, batch=8, val_every=25, val_size=16, checkpoint_every=25)
    learn = get_learnable("gcn_wmmse", opts.options)
    net, air = sample(16, 12345)
    before = validate(learn, net, air)
    train(learn, sample, opts, tmp_path, seed=0)
    after = validate(learn, net, air)
    assert after > before + 1.0  # mean WSR (nat/Hz) on held-out realizations; loss = -WSR


def test_resume_is_exact(tmp_path):
    full = get_learnable("gcn_wmmse", _opts().options)
    train(full, sample, _opts(steps=4), tmp_path / "a", seed=1)
    part = get_learnable("gcn_wmmse", _opts().options)
    train(part, sample, _opts(steps=2), tmp_path / "b", seed=1)
    resumed = get_learnable("gcn_wmmse", _opts().options)
    train(resumed, sample, _opts(steps=4), tmp_path / "b", seed=1, resume=True)
    for (n, a), (_, b) in zip(full.module.state_dict().items(), resumed.module.state_dict().items()):
        assert torch.equal(a, b), n
    la = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    lb = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    strip = [{k: v for k, v in r.items() if k != "step_s"} for r in la["log"]]
    assert strip == [{k: v for k, v in r.items() if k != "step_s"} for r in lb["log"]]
    assert torch.equal(la["optimizer"]["state"][0]["exp_avg"], lb["optimizer"]["state"][0]["exp_avg"])


def test_nan_is_an_error_naming_the_step_and_keeps_last_good_state(tmp_path):
    def bad_sample(batch: int, seed: int):
        net, air = sample(batch, seed)
        if seed == 7 * 1_000_003 + 3:  # the minibatch of step 3
            air.H = air.H * float("nan")
        return net, air

    learn = get_learnable("gcn_wmmse", _opts().options)
    with pytest.raises(TrainingDiverged, match="step 3"):
        train(learn, bad_sample, _opts(steps=5), tmp_path, seed=7)
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 2 and len(ck["log"]) == 2
    for v in ck["model"].values():
        assert bool(torch.isfinite(v).all())


def test_a_configuration_problem_during_the_steps_keeps_the_finished_ones(tmp_path):
    """An OptionError met at step 3 (e.g. a drawn configuration the family refuses): the error propagates as it is
    (train_main makes it a config line) and the checkpoint holds step 2, equal to an uninterrupted 2-step run."""
    def refusing(batch: int, seed: int):
        if seed == batch_seed(7, 3):
            raise OptionError("train.vary", "a drawn configuration is not a valid scenario")
        return sample(batch, seed)

    learn = get_learnable("gcn_wmmse", _opts().options)
    with pytest.raises(OptionError, match="train.vary"):
        train(learn, refusing, _opts(steps=5, checkpoint_every=10), tmp_path / "a", seed=7)
    ck = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    ref = get_learnable("gcn_wmmse", _opts().options)
    train(ref, sample, _opts(steps=2, checkpoint_every=10), tmp_path / "b", seed=7)
    want = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 2 and len(ck["log"]) == 2
    assert all(torch.equal(ck["model"][k], v) for k, v in want["model"].items())


def test_train_main_outputs_and_options(tmp_path):
    with pytest.raises(ValidationError):
        TrainOptions(algorithm="gcn_wmmse", bogus=1)
    scenario = {"family": "multicell", "layout": "triangle", "bs_distance_m": 200}
    cfg = {"seed": 0, "precision": "double", "scenario": scenario,
           "train": {"algorithm": "gcn_wmmse", "steps": 3, "batch": 4, "val_every": 3, "val_size": 4,
                     "progress": False, "layers_in_loss": [1, 2], "options": {"layers": 2}}}
    path = train_main(cfg, tmp_path)
    assert path == tmp_path / "checkpoint.pt"
    assert (tmp_path / "train_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((tmp_path / "train_log.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3] and [r["val_wsr"] for r in rows[:2]] == ["", ""]
    ck = torch.load(path, weights_only=True)
    assert ck["hparams"] == {"layers": 2, "degree": 2, "features": 4, "init": "mrc", "diag_loading": True}
    # the log is the checkpoint's (floats written exactly) ...
    for row, logged in zip(rows, ck["log"]):
        for key in ("lr", "loss", "train_wsr", "grad_norm"):
            assert float(row[key]) == logged[key], key
    # ... and the final validation WSR is recomputed here: the trained model on the validation draw
    learn = get_learnable("gcn_wmmse", {"checkpoint": str(path)})
    net, air = scenario_sampler(scenario)(4, batch_seed(0, -1))
    assert float(rows[-1]["val_wsr"]) == validate(learn, net, air)
    # configuration problems met at set-up: one ConfigError line naming the file and the key, nothing written
    cfg["source"] = "t.yaml"
    cfg["train"]["layers_in_loss"] = [3]
    with pytest.raises(ConfigError) as err:
        train_main(cfg, tmp_path / "bad")
    assert err.value.lines == ["t.yaml: train.layers_in_loss: rounds [3] outside 1..2; allowed: rounds 1 ... 2 of "
                               "gcn_wmmse"]
    assert not (tmp_path / "bad" / "checkpoint.pt").exists()
    # (layers, and a larger degree or features, may differ: gcn_wmmse grows the checkpoint, a warm start with the
    # same function, tests/test_gcn_wmmse.py; a smaller degree may not)
    cfg["train"] |= {"layers_in_loss": None, "options": {"checkpoint": str(path), "degree": 1}}
    with pytest.raises(ConfigError) as err:
        train_main(cfg, tmp_path / "bad")
    assert err.value.lines == ["t.yaml: train.options.degree: 1 but the checkpoint has degree=2; allowed: >= 2 (a "
                               "larger degree is grown from it with the same function) or leave degree out"]


def test_train_vary_draws_a_configuration_per_minibatch_and_rejects_bad_keys(tmp_path):
    """`train.vary`: each (batch, seed) has its own configuration, drawn from the seed (reproducible),
    inside the ranges; a key the family lacks is one config line naming it."""
    from dsim.config import ConfigError, config_from_dict
    from dsim.scenarios.multicell import MulticellScenario

    sample = scenario_sampler(MulticellScenario(layout="hex", n_bs=2), vary={"ues_per_bs": (1, 3),
                                                                            "bs_power_dbm": (20.0, 30.0)})
    seen = set()
    for seed in range(12):
        net, _ = sample(2, seed)
        n_ue = net.counts["ue"]
        assert n_ue in (2, 4, 6)
        seen.add(n_ue)
        net2, _ = sample(2, seed)
        assert net2.counts == net.counts and torch.equal(net2.local["bs"]["power"], net.local["bs"]["power"])
        p_dbm = 10 * torch.log10(net.local["bs"]["power"] * 1e3)
        assert bool(((p_dbm >= 20 - 1e-9) & (p_dbm <= 30 + 1e-9)).all())
    assert len(seen) > 1
    cfg = {"scenario": {"family": "multicell"}, "algorithms": [{"name": "mrc"}],
           "train": {"algorithm": "gcn_wmmse", "vary": {"n_uez": [1, 3]}}}
    with pytest.raises(ConfigError) as e:
        config_from_dict(cfg, "t.yaml")
    assert "train.vary.n_uez" in str(e.value) and "ues_per_bs" in str(e.value)


def test_train_vary_log_uniform_draws_and_rejects_bad_ranges():
    """`train.vary: {key: [low, high, log]}`: ln(value) is uniform on [ln low, ln high] (a 1-D
    Kolmogorov-Smirnov distance over 400 seeds below the 1 % critical value 1.63/sqrt(n)), reproducible per
    seed; a non-positive end or another third entry is one config line naming the key."""
    from dsim.config import ConfigError, config_from_dict

    sample = scenario_sampler({"family": "multicell", "layout": "triangle"},
                              vary={"bs_distance_m": (50.0, 800.0, "log")})
    spec = {"family": "multicell", "layout": "triangle"}
    n = 400
    u = []
    for seed in range(n):
        rng = np.random.default_rng([seed, 0x7661727])  # the sampler's draw for this seed, recomputed
        d = float(np.exp(rng.uniform(np.log(50.0), np.log(800.0))))
        u.append((np.log(d) - np.log(50.0)) / (np.log(800.0) - np.log(50.0)))
    u = np.sort(np.array(u))
    ks = np.max(np.maximum(np.arange(1, n + 1) / n - u, u - np.arange(n) / n))
    assert ks < 1.63 / np.sqrt(n)
    # the sampler applies exactly that draw: BS 0 and BS 1 of the triangle are d apart
    for seed in (0, 7):
        net, _ = sample(1, seed)
        rng = np.random.default_rng([seed, 0x7661727])
        d = float(np.exp(rng.uniform(np.log(50.0), np.log(800.0))))
        _, ch = generate_channels(spec | {"bs_distance_m": d}, 1, seed, "double")
        s = build_scenario("multicell", ch, None, seed)
        assert torch.equal(s.net.local["bs"]["H"], net.local["bs"]["H"])
    for bad in ([0.0, 800.0, "log"], [50.0, 800.0, "sqrt"]):
        cfg = {"scenario": {"family": "multicell"}, "algorithms": [{"name": "mrc"}],
               "train": {"algorithm": "gcn_wmmse", "vary": {"bs_distance_m": bad}}}
        with pytest.raises(ConfigError) as e:
            config_from_dict(cfg, "t.yaml")
        assert "bs_distance_m" in str(e.value)


def test_train_vary_exponential_matches_the_rounded_clipped_law():
    """`train.vary: {key: [low, high, exp, mean]}` on an integer key: P(K = k) is the closed form of
    round(Exp(mean)) clipped to [low, high]: 1 - e^{-(low+.5)/m} at low, e^{-(k-.5)/m} - e^{-(k+.5)/m} inside,
    e^{-(high-.5)/m} at high.  Pearson's chi-square over 1500 seeds is below the 0.1 % critical value (the
    seeds are fixed, so the test is deterministic); a bad mean or order is one config line naming the key."""
    from dsim.config import ConfigError, config_from_dict

    lo, hi, m, n = 2, 12, 4.0, 1500
    sample = scenario_sampler({"family": "multicell", "layout": "iid", "n_bs": 1, "bs_antennas": 2,
                               "ues_per_bs": 4}, vary={"ues_per_bs": (lo, hi, "exp", m)})
    counts = np.zeros(hi + 1)
    for seed in range(n):
        counts[sample(1, seed)[0].counts["ue"]] += 1
    ks = np.arange(lo, hi + 1)
    p = np.exp(-(ks - 0.5) / m) - np.exp(-(ks + 0.5) / m)
    p[0], p[-1] = 1 - np.exp(-(lo + 0.5) / m), np.exp(-(hi - 0.5) / m)
    assert abs(p.sum() - 1) < 1e-12
    chi2 = float((((counts[lo:] - n * p) ** 2) / (n * p)).sum())
    assert chi2 < 29.59, chi2  # chi-square, 10 degrees of freedom, 0.1 % upper quantile
    assert counts[:lo].sum() == 0
    for bad in ([2, 12, "exp", 0.0], [12, 2, "exp", 4.0], [2, 12, "exp"]):
        cfg = {"scenario": {"family": "multicell", "layout": "iid", "n_bs": 1}, "algorithms": [{"name": "mrc"}],
               "train": {"algorithm": "model_gnn", "vary": {"ues_per_bs": bad}}}
        with pytest.raises(ConfigError) as e:
            config_from_dict(cfg, "t.yaml")
        assert "ues_per_bs" in str(e.value)


def test_freeze_norm_keeps_running_statistics_and_trains_the_eval_mode_network(tmp_path):
    """`train.freeze_norm`: batch-norm running statistics are those of the start checkpoint after training
    (they are never updated), while the weights move; without it they change."""
    scenario = {"family": "cellfree", "n_aps": 4, "ap_antennas": 2, "n_ues": 3, "realizations": 10}
    base = {"algorithm": "icgnn", "options": {"checkpoint": "shipped", "bn_batches": 0}, "steps": 2,
            "batch": 4, "val_every": 2, "val_size": 2, "progress": False, "lr": 1e-2}
    start = torch.load(get_learnable("icgnn", {"checkpoint": "shipped"}).spec.shipped, weights_only=True)["model"]
    stats = [k for k in start if k.endswith("running_mean") or k.endswith("running_var")]
    assert stats
    for freeze in (True, False):
        out = tmp_path / str(freeze)
        ck = torch.load(train_main({"seed": 3, "scenario": scenario, "train": base | {"freeze_norm": freeze}}, out),
                        weights_only=True)["model"]
        same = all(torch.equal(ck[k], start[k]) for k in stats)
        assert same == freeze
        moved = [k for k in start if k not in stats and start[k].is_floating_point()
                 and not torch.equal(ck[k], start[k])]
        assert moved


def test_augment_needs_a_family_transform_and_a_fixed_set_and_keep_best_keeps_the_best_validation(tmp_path):
    """`train.augment`: a family without the named transform is one config line listing what it offers (at
    load time and in train_main); augment without train_samples is a cross-field error; with `keep_best`
    best.pt holds the state at the highest validation WSR of the log (chosen on validation data only)."""
    from dsim.config import config_from_dict

    bad = {"scenario": {"family": "multicell"}, "algorithms": [{"name": "mrc"}],
           "train": {"algorithm": "gcn_wmmse", "train_samples": 10, "augment": "subnetwork"}}
    with pytest.raises(ConfigError) as err:
        config_from_dict(bad, "t.yaml")
    assert err.value.lines == ["t.yaml: train.augment: the 'multicell' family provides no augmentation 'subnetwork'; "
                               "allowed: none, symmetry"]
    with pytest.raises(ConfigError) as err:
        train_main(bad | {"source": "t.yaml", "train": bad["train"] | {"steps": 1, "progress": False}}, tmp_path / "x")
    assert err.value.lines == ["t.yaml: train.augment: the 'multicell' family provides no augmentation 'subnetwork'; "
                               "allowed: none, symmetry"]
    with pytest.raises(ValidationError, match="augments a fixed training set"):
        TrainOptions(algorithm="gcn_wmmse", augment="symmetry")
    scenario = {"family": "interference", "layout": "engnn", "n_pairs": 4}
    cfg = {"seed": 3, "precision": "double", "scenario": scenario,
           "train": {"algorithm": "engnn", "options": {"checkpoint": "untrained", "tx_antennas": 2}, "steps": 6,
                     "batch": 3, "lr": 0.01, "train_samples": 3, "augment": "symmetry", "keep_best": True,
                     "val_every": 1, "val_size": 4, "progress": False}}
    path = train_main(cfg, tmp_path / "ok")
    ck, best = torch.load(path, weights_only=True), torch.load(tmp_path / "ok" / "best.pt", weights_only=True)
    vals = [r["val_wsr"] for r in ck["log"]]
    assert best["step"] == 1 + int(np.argmax(vals))
    learn = get_learnable("engnn", {"checkpoint": str(tmp_path / "ok" / "best.pt")})
    net, air = scenario_sampler(scenario)(4, batch_seed(3, -1))
    assert validate(learn, net, air) == max(vals)


def test_loss_choices_have_their_closed_form_gradients():
    """(16): dJ/dR_n = -1/(B |R_n|); mean_rate: dJ/dR_n = -1/|sum_m R_m|, the same for every sample."""
    from dsim.learn import LOSSES

    rates = torch.tensor([2.0, 5.0, 13.0], dtype=torch.float64)
    for name, want in (("normalized", -1.0 / (3 * rates)), ("mean_rate", torch.full((3,), -1.0 / 20.0,
                                                                                         dtype=torch.float64))):
        r = rates.clone().requires_grad_(True)
        value = LOSSES[name]({1: r})
        value.backward()
        assert float(value.detach()) == pytest.approx(-1.0, abs=1e-15)
        assert torch.allclose(r.grad, want.to(r.grad.dtype), rtol=0, atol=1e-15), name


def test_train_loss_option_changes_the_steps_and_rejects_unknown_names(tmp_path):
    runs = {}
    for name in ("model", "normalized", "mean_rate"):
        learn = get_learnable("gcn_wmmse", _opts().options)
        train(learn, sample, _opts(steps=2, loss=name), tmp_path / name, seed=3)
        runs[name] = learn.module.state_dict()
    # gcn_wmmse's own loss is (16): the same steps; the mean rate weighs samples differently: other steps
    assert all(torch.equal(runs["model"][k], v) for k, v in runs["normalized"].items())
    assert any(not torch.equal(runs["model"][k], v) for k, v in runs["mean_rate"].items())
    with pytest.raises(ValidationError):
        _opts(loss="bogus")


def _resume_by_option_and_by_hand(tmp_path, first_cfg, edit, option_cfg, hand_cfg) -> None:
    """Train ``first_cfg`` into a/, copy it to b/, ``edit`` b/'s checkpoint by hand, resume a/ with ``option_cfg``
    and b/ with ``hand_cfg``: the two resumed models must be bit-identical."""
    import shutil

    train(get_learnable("gcn_wmmse", _opts().options), sample, first_cfg, tmp_path / "a", seed=2)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    ck = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    edit(ck)
    torch.save(ck, tmp_path / "b" / "checkpoint.pt")
    by_option = get_learnable("gcn_wmmse", _opts().options)
    train(by_option, sample, option_cfg, tmp_path / "a", seed=2, resume=True)
    by_hand = get_learnable("gcn_wmmse", _opts().options)
    train(by_hand, sample, hand_cfg, tmp_path / "b", seed=2, resume=True)
    for (n, a), (_, b) in zip(by_option.module.state_dict().items(), by_hand.module.state_dict().items()):
        assert torch.equal(a, b), n


def test_resume_schedule_config_is_the_edited_checkpoint(tmp_path):
    """``resume_schedule: config`` equals resuming a checkpoint whose saved StepLR was edited by hand (step_size,
    gamma), and the lr follows lr_4 * gamma^(multiples of step_size in (4, t])."""
    def edit(ck: dict) -> None:
        ck["scheduler"].update(step_size=2, gamma=0.5)

    _resume_by_option_and_by_hand(
        tmp_path, _opts(steps=4, lr=1e-3, lr_decay_every=100, lr_decay=0.9), edit,
        _opts(steps=8, lr=1e-3, lr_decay_every=2, lr_decay=0.5, resume_schedule="config"),
        _opts(steps=8, lr=1e-3, lr_decay_every=100, lr_decay=0.9))
    la = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["log"]
    lb = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["log"]
    assert [r["lr"] for r in la] == [r["lr"] for r in lb]
    # logged lr of step t = the lr after t scheduler steps: 1e-3 to t = 4, then halved at t = 6 and t = 8
    assert [r["lr"] for r in la] == pytest.approx([1e-3] * 5 + [5e-4] * 2 + [2.5e-4], rel=1e-12)
    # the default keeps the saved schedule exactly (checked by test_resume_is_exact); a bad value is refused
    with pytest.raises(ValidationError):
        _opts(resume_schedule="yaml")


def test_resume_lr_is_the_edited_checkpoint(tmp_path):
    """``resume_lr`` equals resuming a checkpoint whose saved optimizer lr was edited by hand; the schedule then
    decays it (here with resume_schedule: config)."""
    def edit(ck: dict) -> None:
        for group in ck["optimizer"]["param_groups"]:
            group["lr"] = 3e-3
        ck["scheduler"].update(step_size=3, gamma=0.1)

    _resume_by_option_and_by_hand(
        tmp_path, _opts(steps=4, lr=1e-3, lr_decay_every=2, lr_decay=0.5), edit,
        _opts(steps=7, lr=1e-3, lr_decay_every=3, lr_decay=0.1, resume_schedule="config", resume_lr=3e-3),
        _opts(steps=7, lr=1e-3, lr_decay_every=2, lr_decay=0.5))
    la = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["log"]
    # steps 1-4: 1e-3, halved after 2; from the resume 3e-3, x0.1 at t = 6 (a multiple of 3)
    assert [r["lr"] for r in la] == pytest.approx([1e-3, 5e-4, 5e-4, 2.5e-4, 3e-3, 3e-4, 3e-4], rel=1e-12)
