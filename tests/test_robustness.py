"""Robustness (issue 11): silent neighbours, faults, one-line errors, interrupts, no NaN in results."""

from __future__ import annotations

import pytest
import torch

from dsim.faults import FaultModel
from dsim.scenarios.multicell import multicell_network
from tests.conftest import base_channels
from tests.test_wmmse import run_local


@pytest.mark.parametrize("loss", [0.5, 0.9])
def test_wmmse_message_loss_never_below_its_initialisation(loss):
    """Probe: a lost U W left a zero beamformer (an absorbing state, WSR 0).  Now every realization ends at
    or above its own round-0 WSR, and every beamformer stays within its BS's budget."""
    ch = base_channels(batch=6, seed=21)
    f = FaultModel(message_loss=loss, seed=5)
    net, air = multicell_network(ch, f)
    Vs, _ = run_local("wmmse", net, air, faults=f, rounds=20)
    wsr = torch.stack([air.evaluate(V)[0] for V in Vs])
    assert bool((wsr[-1] >= wsr[0]).all()), (wsr[0], wsr[-1])
    assert bool((wsr > 0).all())
    for V in Vs:
        assert bool((air.power(V) <= ch.power_w * (1 + 1e-9)).all())


def test_wmmse_silent_rule_changes_nothing_without_faults():
    ch = base_channels(batch=2, seed=3)
    net, air = multicell_network(ch)
    a, _ = run_local("wmmse", net, air, rounds=4)
    f = FaultModel(message_loss=0.0, seed=1)
    b, _ = run_local("wmmse", *multicell_network(ch, f), rounds=4, faults=f)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------------------------------ one-line errors
import os  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from dsim.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _cfg(tmp_path: Path, **over) -> Path:
    data = {"seed": 0, "batch": 2, "scenario": {"family": "multicell", "layout": "triangle"},
            "algorithms": [{"name": "wmmse", "rounds": 2}, {"name": "zf"}], "engine": {"kind": "local"},
            "output": str(tmp_path / "run")} | over
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _one_line_exit2(capsys, argv, *needles):
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("dsim: error: ") and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


def _cellfree_file(tmp_path: Path) -> Path:
    from dsim.scenarios.cellfree import CellfreeScenario, generate_cellfree, save_cellfree

    g = torch.Generator().manual_seed(0)
    ch = generate_cellfree(CellfreeScenario(n_aps=3, ap_antennas=2, n_ues=2, realizations=4), 2, g,
                           torch.complex128)
    p = tmp_path / "cf.npz"
    save_cellfree(p, ch)
    return p


def _rewrite(src: Path, dst: Path, **changes) -> Path:
    d = dict(np.load(src))
    for k, v in changes.items():
        d[k] = v(d[k]) if callable(v) else v
    with open(dst, "wb") as f:
        np.savez(f, **d)
    return dst


def test_bad_output_paths_one_line(tmp_path, capsys):
    cfg = _cfg(tmp_path)
    (tmp_path / "afile").write_text("x")
    _one_line_exit2(capsys, ["run", str(cfg), "--out", str(tmp_path / "afile"), "--no-progress"],
                    "output:", "existing file")
    _one_line_exit2(capsys, ["run", str(cfg), "--out", "/proc/dsim-nowhere", "--no-progress"],
                    "output:", "cannot be written")
    _one_line_exit2(capsys, ["sample", str(cfg), "-o", str(tmp_path)], "--output-file", "is a directory")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["truncated", "empty", "npy_renamed"])
def test_corrupt_channel_files_one_line(tmp_path, capsys, kind):
    f = tmp_path / "ch.npz"
    if kind == "truncated":
        from dsim.scenarios.build import generate_channels, save_channels_file

        good = tmp_path / "good.npz"
        save_channels_file(*generate_channels({"family": "multicell"}, 2, 0, "double"), good)
        f.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "empty":
        f.write_bytes(b"")
    else:
        with open(f, "wb") as fh:
            np.save(fh, np.zeros(3))
    cfg = _cfg(tmp_path, scenario={"file": str(f)})
    _one_line_exit2(capsys, ["run", str(cfg), "--no-progress"], "scenario.file", str(f))


@pytest.mark.parametrize("key,value,needle", [
    ("bs_power_dbm", 1e6, "scenario.bs_power_dbm"),
    ("noise_dbm", float("nan"), "NaN is not allowed"),
    ("noise_dbm", float("inf"), "scenario.noise_dbm"),
    ("noise_dbm", float("-inf"), "scenario.noise_dbm"),
])
def test_non_finite_or_overflowing_settings_one_line(tmp_path, capsys, key, value, needle):
    cfg = _cfg(tmp_path, scenario={"family": "multicell", key: value})
    _one_line_exit2(capsys, ["run", str(cfg), "--no-progress"], needle)


@pytest.mark.parametrize("change,needle", [
    ({"h": lambda h: np.where(np.arange(h.size).reshape(h.shape) == 3, np.nan, h)}, "'h'"),
    ({"noise_w": np.array(0.0)}, "'noise_w'"),
    ({"beta": lambda b: -b}, "'beta'"),
    ({"beta": lambda b: np.full_like(b, np.inf)}, "'beta'"),
    ({"pilot_index": lambda p: p + 7}, "'pilot_index'"),
])
def test_corrupt_cellfree_files_one_line(tmp_path, capsys, change, needle):
    bad = _rewrite(_cellfree_file(tmp_path), tmp_path / "bad.npz", **change)
    cfg = _cfg(tmp_path, scenario={"file": str(bad)}, algorithms=[{"name": "equal"}])
    _one_line_exit2(capsys, ["run", str(cfg), "--no-progress"], needle, str(bad))


def test_cellfree_file_in_multicell_config_fails_at_validation(tmp_path, capsys):
    cfg = _cfg(tmp_path, scenario={"file": str(_cellfree_file(tmp_path))}, algorithms=[{"name": "wmmse"}])
    _one_line_exit2(capsys, ["run", str(cfg), "--no-progress"], "algorithms[0].name", "cellfree")
    assert not (tmp_path / "run").exists()


def test_train_without_train_section_and_no_progress(tmp_path, capsys):
    cfg = _cfg(tmp_path)
    _one_line_exit2(capsys, ["train", str(cfg), "--no-progress"], "train:", "required")


def test_huge_batch_is_refused_up_front(tmp_path, capsys):
    cfg = _cfg(tmp_path, batch=10**9)
    _one_line_exit2(capsys, ["run", str(cfg), "--no-progress"], "batch: 1000000000", "GB")
    assert not (tmp_path / "run").exists()


def test_no_nan_in_results_of_a_successful_run(tmp_path, capsys):
    cfg = _cfg(tmp_path, faults={"message_loss": 0.5, "missing_links": 0.3},
               algorithms=[{"name": "wmmse", "rounds": 3}, {"name": "zf"}, {"name": "rzf"}, {"name": "mrc"}])
    assert main(["run", str(cfg), "--no-progress"]) == 0
    for f in (tmp_path / "run").iterdir():
        if f.suffix in (".csv", ".json", ".yaml"):
            assert not re.search(r"\b(nan|-?inf(inity)?)\b", f.read_text().lower()), f


def test_non_finite_wsr_is_a_failure_not_a_result(tmp_path):
    """An algorithm whose decision turns non-finite is recorded as failed (exit 1), never written as NaN."""
    from dsim.config import config_from_dict
    from dsim.run import run

    cfg = config_from_dict(yaml.safe_load(_cfg(tmp_path).read_text()))
    import dsim.run as run_mod

    real = run_mod.run_algorithm

    def poisoned(alg, scn, *a, **k):
        scn.air.evaluate = (lambda ev: (lambda V: ev(V * float("nan"))))(scn.air.evaluate)
        return real(alg, scn, *a, **k)

    run_mod.run_algorithm = poisoned
    try:
        with pytest.raises(RuntimeError, match="non-finite"):
            run(cfg, progress=False, echo=lambda s: None)
    finally:
        run_mod.run_algorithm = real
    assert "nan" not in (tmp_path / "run" / "metrics.csv").read_text().lower()


# ------------------------------------------------------------------------------------ interrupts
def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start_long_run(tmp_path, **over) -> tuple[subprocess.Popen, Path]:
    """`dsim run` of ZF then a 100 000-round WMMSE in a subprocess; returns once ZF's results are on disk."""
    cfg = _cfg(tmp_path, algorithms=[{"name": "zf"}, {"name": "wmmse", "rounds": 100000}], **over)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", RAY_AUTH_MODE="disabled")
    proc = subprocess.Popen([sys.executable, "-m", "dsim", "run", str(cfg), "--no-progress"], cwd=str(ROOT),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.csv"
    t0 = time.time()
    while not (metrics.exists() and "zf" in metrics.read_text()) and time.time() - t0 < 90:
        time.sleep(0.2)
    return proc, metrics


@pytest.mark.slow
def test_sigterm_keeps_finished_results_local_engine(tmp_path):
    proc, metrics = _start_long_run(tmp_path)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("dsim: terminated (SIGTERM); results of the finished")
    assert "Traceback" not in err and "zf" in metrics.read_text()
    assert (tmp_path / "run" / "plots" / "wsr_vs_round.png").is_file()


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130)])
def test_interrupt_keeps_finished_results_and_leaves_no_ray_workers(tmp_path, sig, code):
    proc, metrics = _start_long_run(tmp_path, engine={"kind": "ray", "shards": 1, "num_cpus": 1})
    time.sleep(1.0)  # the second algorithm is running on the actors
    procs = _descendants(proc.pid)
    assert procs, "the run started no Ray processes"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("dsim: interrupted; results of the finished algorithms are in"), err
    assert "Traceback" not in err
    text = metrics.read_text()
    assert "zf" in text and "nan" not in text.lower()
    assert "interrupted" in (tmp_path / "run" / "summary.json").read_text()
    t1 = time.time()
    while any(_alive(p) for p in procs) and time.time() - t1 < 5:
        time.sleep(0.2)
    assert not [p for p in procs if _alive(p)], "Ray processes left behind"


# ------------------------------------------------------------------------------------ overhead-adjusted rate
def test_coherence_time_effective_rate_and_best_round(tmp_path):
    import csv
    import json

    cfg = _cfg(tmp_path, algorithms=[{"name": "wmmse", "rounds": 12}],
               clock={"coherence_s": 0.03, "links": {"ul": {"latency_s": 0.001, "bandwidth_bps": 1e6}}})
    assert main(["run", str(cfg), "--no-progress"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    eff = []
    for r in rows:
        t, w = float(r["sim_time_s"]), float(r["wsr_mean"])
        want = w * max(0.0, 1.0 - t / 0.03)
        assert float(r["eff_wsr_mean"]) == pytest.approx(want, rel=1e-12, abs=1e-12)
        eff.append(want)
    assert eff[-1] == 0.0 or float(rows[-1]["sim_time_s"]) < 0.03
    s = json.loads((tmp_path / "run" / "summary.json").read_text())["algorithms"]["wmmse"]["effective"]
    assert s["best_rounds"] == int(np.argmax(eff)) and 0 < s["best_rounds"] < 12
    assert s["best_effective_wsr"] == pytest.approx(max(eff), rel=1e-12)
    assert (tmp_path / "run" / "plots" / "effective_wsr_vs_round.png").is_file()


# ------------------------------------------------------------------------------------ stale / noisy CSI
def test_jakes_rho_matches_bessel_j0():
    from scipy.special import j0

    from dsim.faults import jakes_rho

    assert jakes_rho(0.0, 1.0) == 1.0
    for fd, tau in [(10.0, 1e-3), (100.0, 2e-3), (50.0, 2.404825557695773 / (2 * np.pi * 50.0)), (200.0, 0.01)]:
        assert jakes_rho(fd, tau) == pytest.approx(float(j0(2 * np.pi * fd * tau)), abs=1e-9)


def test_gauss_markov_aging_statistics():
    """held = H exactly (no estimation error); air = rho H + sqrt(1-rho^2) g^1/2 e: correlation rho, power kept."""
    ch = base_channels(batch=64, seed=4)
    H = ch.H
    held, air = FaultModel(csi_rho=0.9, seed=3).csi(H)
    assert torch.equal(held, H)
    g = (H.abs() ** 2).mean(dim=(-1, -2), keepdim=True)
    corr = (air * H.conj() / g).mean().real
    assert float(corr) == pytest.approx(0.9, abs=0.01)
    assert float(((air.abs() ** 2) / g).mean()) == pytest.approx(1.0, abs=0.02)
    held, air = FaultModel(csi_error=0.25, seed=3).csi(H)
    assert torch.equal(air, H)
    assert float((((held - H).abs() ** 2) / g).mean()) == pytest.approx(0.25, rel=0.03)


def test_no_csi_fault_is_exactly_fault_free():
    ch = base_channels(batch=2, seed=3)
    a, _ = run_local("zf", *multicell_network(ch))
    f = FaultModel(csi_rho=1.0, csi_error=0.0, seed=5)
    net, air = multicell_network(ch, f)
    b, _ = run_local("zf", net, air, faults=f)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert torch.equal(air.H, ch.H)


def test_rho_zero_makes_csi_useless_in_expectation():
    """rho = 0: the air's channel is independent of the BSs' CSI, so ZF's beamformer V_i is a random direction
    for it: E ||H_i,a(i) V_i||_F^2 = N g ||V_i||_F^2 (H's entries CN(0, g)).  With fresh CSI (rho = 1) ZF's
    useful gain is more than twice that."""
    ch = base_channels(batch=200, seed=8)
    I = ch.H.shape[1]
    idx = torch.arange(I)

    def gain_ratio(rho):
        f = FaultModel(csi_rho=rho, seed=2)
        net, air = multicell_network(ch, f)
        V = run_local("zf", net, air, faults=f)[0][-1]                      # (B, I, M, N)
        Hs = air.H[:, idx, ch.assign]                                       # (B, I, N, M) serving channels
        g = (ch.H[:, idx, ch.assign].abs() ** 2).mean(dim=(-1, -2))         # link gain as the BS measured it
        num = ((Hs @ V).abs() ** 2).sum(dim=(-1, -2))
        den = ch.H.shape[-2] * g * (V.abs() ** 2).sum(dim=(-1, -2))
        return float((num / den).mean())

    assert gain_ratio(0.0) == pytest.approx(1.0, abs=0.08)
    assert gain_ratio(1.0) > 2.0



def _interference(batch: int, seed: int, faults=None):
    from dsim.scenarios.interference import InterferenceScenario, generate_interference, interference_network

    ch = generate_interference(InterferenceScenario(layout="gaussian", n_pairs=3, tx_antennas=4), batch,
                               torch.Generator().manual_seed(seed), torch.complex128)
    return ch, *interference_network(ch, faults)


def test_interference_csi_faults():
    """The interference family takes stale / noisy CSI: no fault is exactly fault-free; rho = 0 makes the
    held CSI useless in expectation -- full-power MRT v_k = sqrt(P) h_kk / ||h_kk|| from the held h_kk gives
    E|h_kk,air^H v_k|^2 = g P (a random direction, g the per-antenna gain) against N_t g P with fresh CSI."""
    ch, net, air = _interference(2, 1)
    _, net0, air0 = _interference(2, 1, FaultModel(csi_rho=1.0, csi_error=0.0, seed=5))
    assert torch.equal(air0.H, air.H) and all(torch.equal(net0.local["bs"][k], v) for k, v in net.local["bs"].items())
    ch, _, _ = _interference(300, 2)

    def gain_ratio(rho, err=0.0):
        f = FaultModel(csi_rho=rho, csi_error=err, seed=2)
        _, net, air = _interference(300, 2, f)
        V = run_local("strongest", net, air, faults=f, fraction=1.0)[0][-1]  # (B, K, N_t, 1)
        own = torch.einsum("bkn,bkn->bk", air.H.diagonal(dim1=1, dim2=2).permute(0, 3, 1, 2)[:, :, 0], V[..., 0])
        g = (ch.H.diagonal(dim1=1, dim2=2).abs() ** 2).mean(dim=-2)[:, 0]  # (B, K) per-antenna gain, fresh
        return float((own.abs() ** 2 / (g * 1.0)).mean())

    assert gain_ratio(1.0) == pytest.approx(4.0, rel=0.15)  # N_t = 4: E||h||^2 / g
    assert gain_ratio(0.0) == pytest.approx(1.0, abs=0.12)
    assert 1.3 < gain_ratio(1.0, err=1.0) < 3.5  # an estimate as noisy as the channel loses part of the gain


def test_cellfree_csi_faults():
    """Cell-free takes stale / noisy CSI: no fault is exactly fault-free; with rho = 0 the channel the air
    evaluates is independent of the APs' estimates, so the coherent gain E{h_kl^H w_kl} of eq. (25) vanishes
    (|a_kl| / sqrt(beta_kl) within the Monte-Carlo error), while with fresh CSI it is large; csi_error adds
    error of relative variance csi_error (per link, beta_kl) to the estimates only."""
    from dsim.scenarios.cellfree import CellfreeScenario, cellfree_network, generate_cellfree

    ch = generate_cellfree(CellfreeScenario(n_aps=4, ap_antennas=4, n_ues=3, realizations=400), 2,
                           torch.Generator().manual_seed(3), torch.complex128)
    net, air = cellfree_network(ch)
    net0, air0 = cellfree_network(ch, FaultModel(csi_rho=1.0, csi_error=0.0, seed=1))
    assert torch.equal(air0.a, air.a) and torch.equal(air0.Bmat, air.Bmat)
    assert all(torch.equal(net0.local["ap"][k], v) for k, v in net.local["ap"].items())
    beta = ch.beta  # (B, K, L)

    def coherent(rho):
        _, air = cellfree_network(ch, FaultModel(csi_rho=rho, seed=4))
        return (air.a.abs() / beta.sqrt()).mean().item()

    fresh, useless = coherent(1.0), coherent(0.0)
    assert fresh > 1.0 and useless < 0.15 * fresh
    net_e, air_e = cellfree_network(ch, FaultModel(csi_error=0.5, seed=4))
    assert torch.equal(net_e.local["ap"]["h"], net.local["ap"]["h"])  # the channel itself is untouched
    d = net_e.local["ap"]["h_hat"] - net.local["ap"]["h_hat"]  # (B, L, S, K, N)
    rel = (d.abs() ** 2).mean(dim=(2, 4)) / beta.permute(0, 2, 1)
    assert float(rel.mean()) == pytest.approx(0.5, rel=0.05)


# ------------------------------------------------------------------------------------ delay and deadlines
def _deadline_setup(deadline, delay=None, batch=2):
    from dsim.clock import RoundClock
    from dsim.config import config_from_dict
    from dsim.registry import algorithm
    from dsim.run import clock_config, with_deadline_flights
    from dsim.scenarios.build import fault_model, scenario_from_config

    faults = ({"phase_deadline_s": deadline} if isinstance(deadline, dict) else {"deadline_s": {"ul": deadline}}) | (
        {"delay": {"ul": delay}} if delay else {})
    cfg = config_from_dict({"seed": 1, "batch": batch, "scenario": {"family": "multicell"},
                            "algorithms": [{"name": "wmmse", "rounds": 4}], "wire": {"dtype": "float64"},
                            "clock": {"links": {"ul": {"latency_s": 1e-3, "bandwidth_bps": 1e6}}},
                            "faults": faults, "output": "unused"})
    scn = scenario_from_config(cfg)
    spec = algorithm("wmmse")
    proto = spec.build(spec.options(rounds=4), scn.net)
    fm = with_deadline_flights(fault_model(cfg), proto, scn.net, "float64",
                               RoundClock(clock_config(cfg, with_delay=False)))
    return scn, proto, fm


def test_deadline_drops_exactly_the_messages_the_clock_says_are_late():
    """Triangle (3 BSs, 12 UEs, all in range), ul 1 ms + 1 Mbit/s.  Each UE hands its three U W U^H messages
    (to BS 0, 1, 2, in that order) and then its U W to one radio: flights are (k+1) t_x + 1 ms for BS k and
    3 t_x + t_y + 1 ms for U W (t = bytes * 8 / 1e6).  A deadline of 1 ms + 2.5 t_x makes exactly the
    messages to BS 2 and every U W late."""
    from dsim.protocol import Message
    from dsim.wire import message_nbytes

    ph = {p.name: p for p in _deadline_setup(1.0)[1].phases}
    tx = message_nbytes(ph["ul_uwu"].fields, "float64") * 8 / 1e6
    ty = message_nbytes(ph["ul_uw"].fields, "float64") * 8 / 1e6
    scn, proto, fm = _deadline_setup(1e-3 + 2.5 * tx)
    k_uwu = next(k for k, p in enumerate(proto.phases) if p.name == "ul_uwu")
    k_uw = next(k for k, p in enumerate(proto.phases) if p.name == "ul_uw")
    flights = fm.flights[k_uwu][0]
    want = torch.tensor([(k + 1) * tx + 1e-3 for _ in range(12) for k in range(3)], dtype=torch.float64)
    torch.testing.assert_close(flights, want.expand(2, -1), rtol=1e-12, atol=0)
    torch.testing.assert_close(fm.flights[k_uw][0], torch.full((2, 12), 3 * tx + ty + 1e-3, dtype=torch.float64),
                               rtol=1e-12, atol=0)
    eids = torch.arange(36)
    ok, late = fm.arrivals(1, k_uwu, eids, 2, 36)
    assert torch.equal(late, (eids % 3 == 2).expand(2, -1)) and torch.equal(ok, ~late)
    ok, late = fm.arrivals(1, k_uw, torch.arange(12), 2, 12)
    assert bool(late.all()) and not bool(ok.any())
    assert isinstance(proto.phases[k_uwu], Message)


def test_per_phase_deadline_applies_to_that_phase_only(tmp_path):
    """``phase_deadline_s: {ul_uw: d}`` with d = 1 ms + 2.5 t_x (the case above): every U W is late, no
    U W U^H is (their phase has no deadline, although BS 2's flight 1 ms + 3 t_x exceeds d); the simulated
    round waits at most d for a U W, and a phase name no algorithm has is one line, exit 2."""
    from dsim.clock import RoundClock
    from dsim.run import clock_config, round_time_s
    from dsim.wire import message_nbytes

    ph = {p.name: p for p in _deadline_setup(1.0)[1].phases}
    tx = message_nbytes(ph["ul_uwu"].fields, "float64") * 8 / 1e6
    d = 1e-3 + 2.5 * tx
    scn, proto, fm = _deadline_setup({"ul_uw": d})
    k_uwu = next(k for k, p in enumerate(proto.phases) if p.name == "ul_uwu")
    k_uw = next(k for k, p in enumerate(proto.phases) if p.name == "ul_uw")
    assert k_uwu not in fm.flights and fm.flights[k_uw][2] == d
    ok, late = fm.arrivals(1, k_uwu, torch.arange(36), 2, 36)
    assert bool(ok.all()) and not bool(late.any())
    ok, late = fm.arrivals(1, k_uw, torch.arange(12), 2, 12)
    assert bool(late.all()) and not bool(ok.any())

    from dsim.config import config_from_dict

    def cfg_with(deadline):
        return config_from_dict({"seed": 1, "batch": 2, "scenario": {"family": "multicell"},
                                 "algorithms": [{"name": "wmmse", "rounds": 4}], "wire": {"dtype": "float64"},
                                 "clock": {"links": {"ul": {"latency_s": 1e-3, "bandwidth_bps": 1e6}}},
                                 "faults": deadline, "output": "unused"})
    t_phase = round_time_s(proto, scn.net, "float64", RoundClock(clock_config(cfg_with({"phase_deadline_s":
                                                                                       {"ul_uw": d}}))))
    t_link = round_time_s(proto, scn.net, "float64", RoundClock(clock_config(cfg_with({"deadline_s": {"ul": d}}))))
    t_none = round_time_s(proto, scn.net, "float64", RoundClock(clock_config(cfg_with({}))))
    assert t_link <= t_phase < t_none  # the U W wait is cut in both; only the link deadline cuts U W U^H too

    cfg = tmp_path / "bad.yaml"
    cfg.write_text("seed: 1\nbatch: 2\nscenario: {family: multicell}\nalgorithms: [{name: wmmse, rounds: 2}]\n"
                   f"faults: {{phase_deadline_s: {{nope: 0.001}}}}\noutput: {tmp_path / 'out'}\n")
    proc = subprocess.run([sys.executable, "-m", "dsim", "run", str(cfg), "--no-progress"], capture_output=True,
                          text=True)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "faults.phase_deadline_s.nope" in lines[0] and "ul_uw" in lines[0], lines


def test_late_message_is_delivered_stale_next_round():
    """With the deadline above, BS 2's U W U^H of UE i in round r is the one UE i computed in round r - 1
    (0 in round 1); BSs 0 and 1 get round r's."""
    from dsim.engine.local import LocalEngine

    ph = {p.name: p for p in _deadline_setup(1.0)[1].phases}
    from dsim.wire import message_nbytes

    tx = message_nbytes(ph["ul_uwu"].fields, "float64") * 8 / 1e6
    scn, proto, fm = _deadline_setup(1e-3 + 2.5 * tx)
    eng = LocalEngine("float64", fm)
    snaps = []
    eng.run(proto, scn.net, scn.air, on_round=lambda r, V: snaps.append(
        (eng.block("ue").state.get("UWU"), eng.block("bs").state.get("X_in"))) if r else None)
    k_of = torch.arange(36) % 3
    i_of = torch.arange(36) // 3
    for r in range(1, len(snaps)):
        uwu_now, x_in = snaps[r]
        uwu_prev = snaps[r - 1][0]
        torch.testing.assert_close(x_in[:, k_of < 2], uwu_now[:, i_of[k_of < 2]], rtol=1e-15, atol=0)
        torch.testing.assert_close(x_in[:, k_of == 2], uwu_prev[:, i_of[k_of == 2]], rtol=1e-15, atol=0)
    assert not bool(snaps[0][1][:, k_of == 2].abs().max())


def test_delay_zero_and_infinite_deadline_are_fault_free(tmp_path):
    import json

    outs = []
    for faults in ({}, {"delay": {"ul": 0.0}}, {"deadline_s": {"ul": 1e9}}):
        cfg = _cfg(tmp_path, faults=faults, output=str(tmp_path / f"r{len(outs)}"))
        assert main(["run", str(cfg), "--no-progress"]) == 0
        outs.append(json.loads((tmp_path / f"r{len(outs)}" / "summary.json").read_text())["algorithms"]["wmmse"])
    for o in outs[1:]:
        assert o["final_wsr"] == outs[0]["final_wsr"] and o["sim_time_s"] == outs[0]["sim_time_s"]


def test_faults_local_equals_ray(ray_session):
    """Every fault at p > 0 -- message loss, missing links, stale and noisy CSI, random delay with a deadline --
    gives the same numbers and ledger on the Ray engine as on the local engine (one actor pool, two runs)."""
    from dsim.clock import ClockConfig, LinkSpec, RoundClock
    from dsim.engine.local import LocalEngine
    from dsim.engine.ray import RayEngine
    from dsim.registry import algorithm
    from dsim.run import with_deadline_flights

    ch = base_channels(batch=2, seed=6, n_bs=2, ues_per_bs=2, bs_antennas=4, layout="hex")
    spec = algorithm("wmmse")
    csi = FaultModel(message_loss=0.3, missing_links=0.2, csi_rho=0.8, csi_error=0.05, seed=9)
    net, air = multicell_network(ch, csi)
    proto = spec.build(spec.options(rounds=3), net)
    clock = RoundClock(ClockConfig(links={"ul": LinkSpec(1e-3, 1e6)}))
    late = FaultModel(message_loss=0.1, delay=(("ul", 5e-4),), deadline=(("ul", 2.0e-3),), seed=4)
    late = with_deadline_flights(late, proto, net, "float64", clock)
    ray_engine = RayEngine("float64", FaultModel(), shards=1)
    try:
        for fm in (csi, late):
            out = []
            for eng in (LocalEngine("float64", fm), ray_engine):
                eng.faults = fm
                dec = []
                trace = eng.run(proto, net, air, on_round=lambda r, V, d=dec: d.append(V))
                out.append((torch.stack(dec), trace.ledger))
            assert torch.equal(out[0][0], out[1][0]) and out[0][1] == out[1][1]
    finally:
        ray_engine.close()
    n_edges = net.edges["ue>bs"].size
    ok, lt = late.arrivals(2, 2, torch.arange(n_edges), 2, n_edges)
    assert 0 < int(lt.sum()) < lt.numel()  # the random delays make some, not all, messages late


# ------------------------------------------------------------------------------------ crash
def test_crash_silences_the_agent_and_freezes_its_decision():
    """bs1 crashes in round 3: its beamformers (decision rows of the UEs it serves) stay those of round 2;
    ue0 crashes in round 3: its serving BS never hears it again and keeps its round-2 beamformer; a crash
    after the last round is exactly fault-free."""
    ch = base_channels(batch=2, seed=3)
    clean, _ = run_local("wmmse", *multicell_network(ch), rounds=6)
    served = ch.assign == 1
    f = FaultModel(crash=(("bs1", 3),))
    Vs, _ = run_local("wmmse", *multicell_network(ch, f), rounds=6, faults=f)
    for r in range(3, 7):
        assert torch.equal(Vs[r][:, served], Vs[2][:, served])
    assert torch.equal(Vs[2], clean[2]) and not torch.equal(Vs[4][:, ~served], clean[4][:, ~served])
    f = FaultModel(crash=(("ue0", 3),))
    Vs, _ = run_local("wmmse", *multicell_network(ch, f), rounds=6, faults=f)
    for r in range(3, 7):  # the kept beamformer, at most scaled down by its BS's budget projection (15)
        for b in range(2):
            c = (Vs[r][b, 0] / Vs[2][b, 0]).flatten()
            assert float((c - c[0]).abs().max()) < 1e-9 and abs(float(c[0].imag)) < 1e-9
            assert 0 < float(c[0].real) <= 1 + 1e-12
    f = FaultModel(crash=(("bs0", 7), ("ue2", 9)))
    late, _ = run_local("wmmse", *multicell_network(ch, f), rounds=6, faults=f)
    assert all(torch.equal(a, b) for a, b in zip(clean, late))


def test_crash_local_equals_ray(ray_session):
    """WMMSE (pilots, both message directions) with message loss, bs1 down in rounds 2-3 and back (restart),
    ue0 down for good from round 3: the Ray engine really kills both actors (Ray restarts bs1's and it is
    restored from its snapshot; a stand-in holds ue0's) and equals the local engine's simulated crash bit for
    bit, ledger included.  bs1's beamformers in rounds 2-3 are those of round 1, then move again."""
    from dsim.engine.local import LocalEngine
    from dsim.engine.ray import RayEngine
    from dsim.registry import algorithm

    ch = base_channels(batch=2, seed=6, n_bs=2, ues_per_bs=2, bs_antennas=4, layout="hex")
    f = FaultModel(message_loss=0.2, crash=(("bs1", 2, 2), ("ue0", 3)), seed=2)
    net, air = multicell_network(ch, f)
    spec = algorithm("wmmse")
    proto = spec.build(spec.options(rounds=5), net)
    out = []
    ray_engine = RayEngine("float64", f, shards=1)
    for eng in (LocalEngine("float64", f), ray_engine):
        dec = []
        try:
            trace = eng.run(proto, net, air, on_round=lambda r, V, d=dec: d.append(V))
        finally:
            eng.close()
        out.append((torch.stack(dec), trace.ledger))
    assert torch.equal(out[0][0], out[1][0]) and out[0][1] == out[1][1]
    assert [(e.agents, e.round, e.restarted) for e in ray_engine.crash_log] == [(["bs1"], 2, True),
                                                                               (["ue0"], 3, False)]
    V, served = out[0][0], ch.assign == 1
    assert torch.equal(V[2][:, served], V[1][:, served]) and torch.equal(V[3][:, served], V[1][:, served])
    assert not torch.equal(V[5][:, served], V[1][:, served])


def test_interrupted_training_keeps_the_last_finished_step(tmp_path):
    """Ctrl-C in step 3 (while drawing its minibatch): the checkpoint holds step 2, with the state a run of
    exactly 2 steps ends in, and --resume could continue from it."""
    from dsim.learn import get_learnable
    from dsim.train import train
    from tests.test_train import _opts, sample

    def interrupted(batch: int, seed: int):
        if seed == 3 * 1_000_003 + 3:  # the minibatch of step 3
            raise KeyboardInterrupt
        return sample(batch, seed)

    learn = get_learnable("gcn_wmmse", _opts().options)
    with pytest.raises(KeyboardInterrupt):
        train(learn, interrupted, _opts(steps=5, checkpoint_every=5), tmp_path / "a", seed=3)
    two = get_learnable("gcn_wmmse", _opts().options)
    train(two, sample, _opts(steps=2, checkpoint_every=5), tmp_path / "b", seed=3)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert a["step"] == 2 and len(a["log"]) == 2
    for k, v in b["model"].items():
        assert torch.equal(a["model"][k], v), k
    assert (tmp_path / "a" / "train_log.csv").is_file()
