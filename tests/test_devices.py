"""Devices (DESIGN §11): every tensor dsim creates takes its device from its inputs.

Without a GPU: the data stays on the CPU while the *default* device is ``meta``, so any tensor created
without an explicit device lands on ``meta`` and the first operation mixing it with CPU data fails (and
a random draw on the CPU generator without ``device="cpu"`` fails at once).  Every registered protocol
on the local engine (both families, faults and lossy wire policies on), every scenario generator and
the runner, one training step of every learnable protocol and an adaptation step run that way and must
equal a normal CPU run bit for bit.

With CUDA (``-m gpu`` tests, skipped without one): every protocol on ``engine.device: cuda`` equals the
CPU (float64, 1e-9 relative), and the Ray host-actor body runs on CUDA directly (without Ray).
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from dsim import registry
from dsim.engine.local import LocalEngine
from dsim.faults import FaultModel
from dsim.scenarios.build import build_scenario, generate_channels

#: small scenarios per family (a family not listed runs its defaults)
SCENARIOS: dict[str, list[dict[str, Any]]] = {
    "multicell": [
        {"family": "multicell", "n_bs": 3, "ues_per_bs": 2, "bs_antennas": 4, "ue_antennas": 2},
        {"family": "multicell", "layout": "hex", "n_bs": 2, "ues_per_bs": 2, "bs_antennas": 3, "ue_antennas": 2,
         "range_m": 120.0},
    ],
    "interference": [  # N_t = 1: the training-step tests train the default (power-control) wcgcn on them
        {"family": "interference", "layout": "d2d", "n_pairs": 5, "field_m": 200.0, "range_m": 120.0,
         "wmmse_csi": "range"},
        {"family": "interference", "layout": "gaussian", "n_pairs": 6, "snr_db": 10.0},
    ],
    "cellfree": [
        {"family": "cellfree", "n_aps": 3, "n_ues": 3, "ap_antennas": 2, "realizations": 6},
        {"family": "cellfree", "n_aps": 3, "n_ues": 3, "ap_antennas": 2, "realizations": 6, "csi": "mmse",
         "pilots": 2},
    ],
}
#: fast options per algorithm (several entries: several runs); an algorithm not listed runs its defaults
OPTIONS: dict[str, list[dict[str, Any]]] = {
    "wmmse": [{"init": "random"}, {"init": "mrc"}],
    "gcn_wmmse": [{"checkpoint": "untrained", "layers": 2}, {"checkpoint": "shipped"}, {"checkpoint": "shipped-dt"}],
    "wmmse_admm": [{"max_inner": 200}],
    "wcgcn": [{"checkpoint": "untrained"}, {"checkpoint": "shipped"}],
    "icgnn": [{"checkpoint": "untrained", "layers": 2}, {"adapt_steps": 1, "adapt_batch": 2}],
    "model_gnn": [{"checkpoint": "untrained", "hidden": [4, 6]}, {"checkpoint": "shipped"}],
    "vanilla_gnn": [{"checkpoint": "untrained", "hidden": [4, 6]}],
    "model_gnn_mc": [{"checkpoint": "untrained", "hidden": [4, 6]}, {"checkpoint": "shipped"}],
    "icgnn_cellular": [{"checkpoint": "untrained"}],  # untrained: N_t from the scenario (the shipped model has 16)
    "licgnn": [{"checkpoint": "untrained", "cg_steps": 2}],
    # untrained: N_t from the scenario (the shipped Ex1 models have 2); ENGNN-E and ENGNN-N
    "engnn": [{"checkpoint": "untrained", "layers": 2}, {"checkpoint": "untrained", "readout": "node"}],
}
#: small ENGNN-paper problems of the multicell family (Ex2: power over fixed ZF beams; Ex3: every BS serves every UE)
EX2_SMALL = {"family": "multicell", "layout": "field", "n_bs": 3, "ues_per_bs": 2, "bs_antennas": 4, "ue_antennas": 1,
             "field_m": 1000.0, "bs_separation_m": 300.0, "min_distance_m": 20.0, "disk_radius_m": 150.0,
             "pathloss": "exponent", "pathloss_ref_db": 30.5, "pathloss_exponent": 3.67}
EX3_SMALL = {"family": "multicell", "layout": "field", "serve": "all", "n_bs": 3, "n_ue": 2, "bs_antennas": 2,
             "ue_antennas": 1, "field_m": 1000.0, "bs_separation_m": 300.0, "pathloss": "exponent",
             "pathloss_ref_db": 30.5, "pathloss_exponent": 3.67}
#: algorithms that only run on their own problem's scenario (not on the family's scenarios above)
OWN_SCENARIO: dict[str, dict[str, Any]] = {"engnn_ex2": EX2_SMALL, "engnn_ex3": EX3_SMALL, "coop_wmmse": EX3_SMALL,
                                           "coop_gp": EX3_SMALL}
#: small model options of learnable algorithms for the training-step tests (default: the generic small dict)
LEARN_OPTIONS: dict[str, dict[str, Any]] = {
    "engnn": {"layers": 2, "d_edge": 4, "d_node": 3, "mlp_width": 5, "d_msg": 4},
    "engnn_ex2": {"d_edge": 4, "d_node": 3, "hidden": 5, "d_msg": 4},
    "engnn_ex3": {"layers": 2, "d_edge": 4, "d_node": 3, "hidden": 5, "d_msg": 4},
}
OPTIONS.update({"engnn_ex2": [{"checkpoint": "untrained"}, {"checkpoint": "shipped"}],
                "engnn_ex3": [{"checkpoint": "untrained"}, {"checkpoint": "shipped"}]})
#: per scenario index: (wire policy, message-loss probability, missing-link probability)
WIRES = [("q8", 0.3, 0.3), ("float32", 0.2, 0.0)]  # float16: tests/test_devices.py::test_wire_roundtrip_*
ROUNDS = 3  # rounds run per protocol (at most its own)
BATCH = 2


@contextlib.contextmanager
def default_device(device: str):
    """Make ``device`` torch's default device for the block (restored after)."""
    prev = torch.get_default_device()
    torch.set_default_device(device)
    try:
        yield
    finally:
        torch.set_default_device(prev)


def scenario_options(family: str) -> list[dict[str, Any]]:
    return SCENARIOS.get(family, [{"family": family}])


def build(scn: dict[str, Any], faults: FaultModel | None, seed: int = 5):
    family, ch = generate_channels(scn, BATCH, seed, "double")
    s = build_scenario(family, ch, faults, seed)
    s.net.info["scenario_config"] = dict(scn)  # what scenario_from_config sets (adaptation samples it)
    s.net.info["precision"] = "double"
    return s


def tensors(obj: Any) -> list[torch.Tensor]:
    """The tensors of a (nested) result, in a fixed order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [t for f in dataclasses.fields(obj) for t in tensors(getattr(obj, f.name))]
    if isinstance(obj, dict):
        return [t for k in obj for t in tensors(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in tensors(v)]
    return []


def run_protocols(family: str, k: int, device: str | None = None, wire: str | None = None,
                  own: dict[str, Any] | None = None) -> dict[str, Any]:
    """Scenario ``k`` of ``family`` (or the scenario ``own`` of :data:`OWN_SCENARIO`, with the wires of k) and
    every registered protocol that runs on it on the local engine (``device``): {what: result} with the
    channels, the network's local data and, per protocol run, every round's decision, WSR, per-user rate,
    power ratio and the ledger."""
    scn = own if own is not None else scenario_options(family)[k % len(scenario_options(family))]
    policy, loss, missing = WIRES[k % len(WIRES)]
    if family != "multicell":  # missing links are multicell's; a lost first-round statistics upload leaves
        # wmmse_admm's CPU without data (a singular QP), and so do statistics (~1e-12) under float16
        policy, loss, missing = ("q8", "float32")[k % 2], 0.0, 0.0
    faults = FaultModel(message_loss=loss, missing_links=missing, seed=11)
    s = build(scn, faults)
    out: dict[str, Any] = {"channels": s.channels, "local": s.net.local,
                           "masks": {n: e.mask for n, e in s.net.edges.items()}}
    for name in registry.algorithm_names(family):
        if OWN_SCENARIO.get(name) is not own:
            continue
        spec = registry.algorithm(name)
        for i, opts in enumerate(OPTIONS.get(name, [{}])):
            net, air = s.net, s.air
            if spec.random_init:  # best-of-n restarts run on the network repeated
                net, air = net.repeat(2), air.repeat(2)
            proto = spec.build(spec.options(**opts), net)
            res: list[Any] = []

            def on_round(r: int, d: torch.Tensor, air=air, res=res) -> None:
                wsr, per_user = air.evaluate(d)
                res.append((d, wsr, per_user, air.power_ratio(d)))

            engine = LocalEngine(wire or policy, faults, device=device)
            with torch.no_grad():
                trace = engine.run(proto, net, air, on_round=on_round, rounds=min(proto.rounds, ROUNDS))
            out[f"{name}#{i}"] = {"rounds": res, "ledger": [r.as_dict() for r in trace.ledger],
                                  "meta": {k2: v for k2, v in proto.meta.items() if k2 != "adapt_s"}}
    return out


def assert_identical(a: Any, b: Any, what: str = "") -> None:
    ta, tb = tensors(a), tensors(b)
    assert len(ta) == len(tb), what
    for x, y in zip(ta, tb):
        assert x.device.type == "cpu" and y.device.type == "cpu", f"{what}: result on {x.device} / {y.device}"
        assert x.dtype == y.dtype and x.shape == y.shape, what
        assert torch.equal(x, y), what


def strip(obj: Any) -> Any:
    """The non-tensor part of a result (ledgers, meta), tensors replaced by None."""
    if isinstance(obj, torch.Tensor):
        return None
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strip(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return strip({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    return obj


# ---------------------------------------------------------------------------------------- meta device
@pytest.mark.parametrize("family", registry.family_names())
@pytest.mark.parametrize("k", [0, 1])
def test_protocols_scenarios_meta_default_device(family: str, k: int) -> None:
    """Generation, network, air, every protocol (faults, lossy wire), evaluation: nothing lands on the
    default device, and the numbers are the CPU run's, bit for bit."""
    ref = run_protocols(family, k)
    with default_device("meta"):
        got = run_protocols(family, k)
    assert strip(got) == strip(ref)
    for key in ref:
        assert_identical(got[key], ref[key], f"{family}/{k}/{key}")


@pytest.mark.parametrize("own", [EX2_SMALL, EX3_SMALL], ids=["ex2", "ex3"])
@pytest.mark.parametrize("k", [0, 1])
def test_own_scenario_protocols_meta_default_device(own: dict[str, Any], k: int) -> None:
    """As above for the protocols of :data:`OWN_SCENARIO` on their own scenario (ENGNN Ex2 / Ex3, the
    cooperative baselines), with scenario k's wire and faults."""
    ref = run_protocols("multicell", k, own=own)
    with default_device("meta"):
        got = run_protocols("multicell", k, own=own)
    assert strip(got) == strip(ref)
    for key in ref:
        assert_identical(got[key], ref[key], f"own/{k}/{key}")


def test_channel_files_meta_default_device(tmp_path: Path) -> None:
    """Channel files load on the CPU whatever the default device is."""
    from dsim.scenarios.build import load_channels_file, save_channels_file

    for family in registry.family_names():
        family, ch = generate_channels(scenario_options(family)[0], BATCH, 2, "double")
        path = save_channels_file(family, ch, tmp_path / f"{family}.npz")
        with default_device("meta"):
            fam, got = load_channels_file(path, "double")
        assert fam == family
        assert_identical(got, load_channels_file(path, "double")[1], family)


def run_config(tmp_path: Path, name: str) -> dict[str, Any]:
    """A whole ``dsim run`` (runner, restarts, clock, writer) on the local engine, its CSV outputs."""
    from dsim.config import config_from_dict
    from dsim.run import run

    cfg = config_from_dict({
        "seed": 4, "batch": BATCH, "output": str(tmp_path / name), "engine": {"kind": "local"},
        "wire": {"dtype": "q8"}, "faults": {"message_loss": 0.2},
        "scenario": SCENARIOS["multicell"][0],
        "algorithms": [{"name": "wmmse", "rounds": 2, "restarts": 2}, {"name": "rzf"}],
    })
    out = run(cfg, progress=False, echo=lambda s: None)
    return {f: (out / f).read_text() for f in ("metrics.csv", "wsr.csv", "overhead.csv")}


def test_runner_meta_default_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``dsim run`` end to end (restarts, clock, writer) under the meta default device: same files."""
    import dsim.results

    monkeypatch.setattr(dsim.results.RunWriter, "plots", lambda self: None)  # matplotlib: not under test
    ref = run_config(tmp_path, "cpu")
    with default_device("meta"):
        got = run_config(tmp_path, "meta")
    assert got == ref


def train_once(name: str, tmp: Path) -> dict[str, torch.Tensor]:
    """One training step (+ validation, calibration, checkpoint) of learnable ``name``: the checkpoint."""
    from dsim.learn import get_learnable, load_checkpoint, scenario_sampler
    from dsim.train import TrainOptions, train

    spec = registry.algorithm(name)
    scn = OWN_SCENARIO.get(name) or scenario_options(spec.families[0])[0]
    small = {"layers": 2, "bn_batches": 1, "bn_batch": 2, "hidden": [4, 6], "antennas": scn.get("bs_antennas")}
    opts = LEARN_OPTIONS.get(name) or {k: v for k, v in small.items() if k in spec.options.model_fields}
    learn = get_learnable(name, opts)
    sample = scenario_sampler(scn, "double")
    topts = TrainOptions(algorithm=name, options=opts, steps=1, batch=BATCH, val_size=BATCH, val_every=1,
                         progress=False)
    ck = load_checkpoint(train(learn, sample, topts, tmp, seed=3))
    return {"model": ck["model"], "log": [{k: v for k, v in r.items() if k != "step_s"} for r in ck["log"]]}


@pytest.mark.parametrize("name", registry.algorithm_names(learnable=True))
def test_training_step_meta_default_device(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A training step (forward, loss, backward, AdamW, validation, batch-norm calibration, checkpoint)
    of every learnable protocol under the meta default device equals the CPU run bit for bit."""
    import dsim.train

    monkeypatch.setattr(dsim.train, "plot_curve", lambda *a, **k: None)  # matplotlib: not under test
    ref = train_once(name, tmp_path / "cpu")
    with default_device("meta"):
        got = train_once(name, tmp_path / "meta")
    assert strip(got) == strip(ref)
    assert_identical(got, ref, name)


@pytest.mark.parametrize("name", registry.algorithm_names(learnable=True))
def test_forward_backward_meta_default_device(name: str) -> None:
    """dsim.learn.forward_loss + backward: the loss and every gradient equal the CPU's bit for bit."""
    from dsim.learn import forward_loss, get_learnable, scenario_sampler

    spec = registry.algorithm(name)
    scn = OWN_SCENARIO.get(name) or scenario_options(spec.families[0])[-1]
    small = {"layers": 2, "hidden": [4, 6], "antennas": scn.get("bs_antennas")}
    opts = LEARN_OPTIONS.get(name) or {k: v for k, v in small.items() if k in spec.options.model_fields}
    sample = scenario_sampler(scn, "double")

    def step() -> list[torch.Tensor]:
        learn = get_learnable(name, opts)
        learn.module.train()
        net, air = sample(BATCH, 9)
        loss, wsr = forward_loss(learn, net, air)
        loss.backward()
        return [loss.detach(), *[w.detach() for w in wsr.values()],
                *[p.grad for p in learn.module.parameters() if p.grad is not None]]

    ref = step()
    with default_device("meta"):
        got = step()
    assert_identical(got, ref, name)


def test_engnn_layout_meta_default_device() -> None:
    """The interference family's ``engnn`` layout (ENGNN paper Ex1 channel model), the shipped ENGNN model
    and WMMSE on it under the meta default device: the CPU run's numbers, bit for bit."""
    scn = {"family": "interference", "layout": "engnn", "n_pairs": 4}

    def once() -> list[torch.Tensor]:
        s = build(scn, None)
        out: list[torch.Tensor] = [s.channels.H, s.channels.tx_xy, s.channels.rx_xy]
        for name, opts in (("engnn", {"checkpoint": "shipped"}), ("wmmse", {"rounds": 2})):
            spec = registry.algorithm(name)
            proto = spec.build(spec.options(**opts), s.net)
            with torch.no_grad():
                LocalEngine("float32").run(proto, s.net, s.air, on_round=lambda r, d: out.append(d))
        return out

    ref = once()
    with default_device("meta"):
        got = once()
    assert_identical(got, ref, "engnn layout")


@pytest.mark.parametrize("policy", ["float64", "float32", "float16", "q8", "q3"])
def test_wire_roundtrip_meta_default_device(policy: str) -> None:
    """The wire's numeric round trip (torch only, any device) under the meta default device equals the
    CPU's, and a float policy equals numpy's ``astype`` round trip bit for bit (float64 and float32 data)."""
    import numpy as np

    from dsim.protocol import Field
    from dsim.wire import from_reals, roundtrip, roundtrip_reals, to_reals

    g = torch.Generator().manual_seed(1)
    scale = torch.exp(4 * torch.randn(3, 5, 1, 1, generator=g, dtype=torch.float64))
    x = torch.complex(torch.randn(3, 5, 4, 4, generator=g, dtype=torch.float64),
                      torch.randn(3, 5, 4, 4, generator=g, dtype=torch.float64)) * scale
    herm = x @ x.mH
    fields = (Field("h", "hermitian", (4, 4)), Field("c", "complex", (4, 4)), Field("r", "real", (4,)))
    for dt in (torch.float64, torch.float32):
        cdt = torch.complex128 if dt == torch.float64 else torch.complex64
        payload = {"h": herm.to(cdt), "c": x.to(cdt), "r": x.real[..., 0].to(dt)}
        ref = roundtrip(payload, fields, policy)
        with default_device("meta"):
            got = roundtrip(payload, fields, policy)
        assert_identical(got, ref, f"{policy}/{dt}")
        if policy.startswith("float"):
            for f in fields:
                r = to_reals(payload[f.name], f)
                want = torch.from_numpy(r.numpy().astype(getattr(np, policy))).to(r.dtype)
                assert torch.equal(roundtrip_reals(r, policy).contiguous().view(torch.uint8),
                                   want.contiguous().view(torch.uint8))
                assert torch.equal(from_reals(want, f, cdt).to(ref[f.name].dtype), ref[f.name])


# ---------------------------------------------------------------------------------------- CUDA
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def close(a: Any, b: Any, what: str, rtol: float = 1e-9) -> None:
    ta, tb = tensors(a), tensors(b)
    assert len(ta) == len(tb), what
    for x, y in zip(ta, tb):
        x, y = x.cpu(), y.cpu()
        if x.dtype == torch.bool or not (x.is_floating_point() or x.is_complex()):
            assert torch.equal(x, y), what
        else:
            scale = y.abs().max().clamp_min(1e-300)
            assert float((x - y).abs().max() / scale) <= rtol, what


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("family", registry.family_names())
def test_protocols_cuda_equal_cpu(family: str) -> None:
    """Every protocol with ``engine.device: cuda`` (float64 wire, no faults' randomness differences:
    fault draws are CPU generators) equals the CPU run to 1e-9 relative; results come back to the air's
    device (the CPU here)."""
    for k in range(len(scenario_options(family))):
        ref = run_protocols(family, k, wire="float64")
        got = run_protocols(family, k, device="cuda", wire="float64")
        assert strip(got) == strip(ref)
        for key in ref:
            close(got[key], ref[key], f"{family}/{k}/{key}")


@pytest.mark.gpu
@cuda
def test_runner_cuda_device(tmp_path: Path) -> None:
    """``engine: {kind: local, device: cuda}`` through the runner: numbers equal the CPU run (1e-9 rel)."""
    import csv

    from dsim.config import config_from_dict
    from dsim.run import run

    def once(device: str) -> list[list[str]]:
        cfg = config_from_dict({"seed": 4, "batch": BATCH, "output": str(tmp_path / device),
                                "engine": {"kind": "local", "device": device}, "wire": {"dtype": "float64"},
                                "scenario": SCENARIOS["multicell"][0],
                                "algorithms": [{"name": "wmmse", "rounds": 3}, {"name": "gcn_wmmse"}]})
        with open(run(cfg, progress=False, echo=lambda s: None) / "wsr.csv") as f:
            return list(csv.reader(f))

    ref, got = once("cpu"), once("cuda")
    assert got[0] == ref[0] and len(got) == len(ref)
    for a, b in zip(got[1:], ref[1:]):
        for x, y in zip(a, b):
            try:
                fx, fy = float(x), float(y)
            except ValueError:
                assert x == y
                continue
            assert abs(fx - fy) <= 1e-9 * max(abs(fy), 1e-300)


@pytest.mark.gpu
@cuda
def test_training_cuda(tmp_path: Path) -> None:
    """``train.device: cuda``: a training step equals the CPU's (1e-9 rel); the checkpoint is on the CPU."""
    from dsim.learn import get_learnable, load_checkpoint, scenario_sampler
    from dsim.train import TrainOptions, train

    out = {}
    for device in ("cpu", "cuda"):
        learn = get_learnable("gcn_wmmse", {"layers": 2})
        sample = scenario_sampler(SCENARIOS["multicell"][0], "double")
        topts = TrainOptions(algorithm="gcn_wmmse", options={"layers": 2}, steps=2, batch=BATCH, val_size=BATCH,
                             val_every=1, progress=False, device=device)
        ck = torch.load(train(learn, sample, topts, tmp_path / device, seed=3), map_location="meta",
                        weights_only=True)
        assert all(t.device.type == "meta" for t in tensors(ck["model"]))  # loadable without CUDA
        out[device] = load_checkpoint(tmp_path / device / "checkpoint.pt")["model"]
    close(out["cuda"], out["cpu"], "gcn_wmmse checkpoint")


def host_actor_run(family: str, device: str, shards: int = 2) -> list[Any]:
    """Drive ``dsim.engine.ray.HostActorImpl`` objects directly (no Ray), one step per call, as the Ray
    engine does (``run_steps``): per protocol, the decisions after every round (on the CPU) and their WSR."""
    import numpy as np

    from dsim.engine.base import Engine
    from dsim.engine.ray import HostActorImpl
    from dsim.network import Network
    from dsim.protocol import Local, Measure, Message, runs_in

    def cpu(x: Any) -> Any:  # the actors may return numpy arrays (the Ray engine converts them back)
        if isinstance(x, np.ndarray):
            return torch.as_tensor(x, device="cpu")
        if isinstance(x, dict):
            return {k: cpu(v) for k, v in x.items()}
        if isinstance(x, tuple):
            return tuple(cpu(v) for v in x)
        return x

    def call(actor: Any, step: tuple, *bundles: bytes) -> list[Any]:
        res = actor.run_steps([step], *bundles)
        return [cpu(r) for r in res[:-1]] if isinstance(res, tuple) else []

    s = build(scenario_options(family)[0], None)
    net, air = s.net, s.air
    out = []
    threads, prev = torch.get_num_threads(), torch.get_default_device()
    try:
        for name in registry.algorithm_names(family):
            if name in OWN_SCENARIO:  # run on their own scenario by test_own_scenario_protocols_meta_default_device
                continue
            spec = registry.algorithm(name)
            proto = spec.build(spec.options(**OPTIONS.get(name, [{}])[0]), net)
            parts = {r: [t for t in torch.tensor_split(torch.arange(n, device="cpu"), min(shards, n)) if t.numel()]
                     for r, n in net.counts.items()}
            owners = {}
            for role, ids_list in parts.items():
                owners[role] = torch.empty(net.counts[role], dtype=torch.int64, device="cpu")
                for a, ids in enumerate(ids_list):
                    owners[role][ids] = a
            actors: dict[str, list[Any]] = {}
            for role, ids_list in parts.items():
                actors[role] = []
                for ids in ids_list:
                    mine = {k: v.index_select(1, ids) for k, v in net.local.get(role, {}).items()}
                    lite = Network(net.family, net.batch, net.counts, net.edges, {role: mine}, dict(net.info))
                    actors[role].append(HostActorImpl(lite, role, ids, owners, device))
            for acts in actors.values():
                for a in acts:
                    a.configure(proto, 1, FaultModel(), "float64")
                    call(a, ("init",))

            def decision(actors=actors, role=proto.output.role) -> torch.Tensor:
                return Engine.assemble([call(a, ("output",))[0] for a in actors[role]])

            res = [decision()]
            rounds = min(proto.rounds, ROUNDS)
            for r in range(1, rounds + 1):
                for k, ph in enumerate(proto.phases):
                    if not runs_in(ph, r, rounds):
                        continue
                    if isinstance(ph, Measure):
                        got = [call(a, ("transmit", k, r))[0] for a in actors[ph.transmitter]]
                        sig = {n: Engine.assemble([(g[0], g[1][n]) for g in got]) for n in got[0][1]}
                        meas = air.measure(ph.observe, sig)
                        for a, ids in zip(actors[ph.receiver], parts[ph.receiver]):
                            mine = {n: v.index_select(1, ids).numpy() for n, v in meas.items()}  # as the engine
                            call(a, ("measured", k, r, mine))
                    elif isinstance(ph, Message):
                        dst = actors[net.edges[ph.edges].dst_role]
                        sent = [call(a, ("send", k, r, len(dst))) for a in actors[net.edges[ph.edges].src_role]]
                        for j, a in enumerate(dst):
                            call(a, ("deliver", k, r, 0, len(sent)), *[b[j] for b in sent])
                    elif isinstance(ph, Local):
                        for a in actors[ph.role]:
                            call(a, ("compute", k, r))
                res.append(decision())
            out.append((name, res, [air.evaluate(d)[0] for d in res]))
    finally:
        torch.set_num_threads(threads)
        torch.set_default_device(prev)
    return out


def test_host_actor_body_driver_cpu() -> None:
    """The in-process driver of the actor body (used on CUDA below) reproduces the local engine on the CPU."""
    family = registry.family_names()[0]
    got = host_actor_run(family, "cpu")
    s = build(scenario_options(family)[0], None)
    for name, res, _ in got:
        spec = registry.algorithm(name)
        proto = spec.build(spec.options(**OPTIONS.get(name, [{}])[0]), s.net)
        ref: list[torch.Tensor] = []
        with torch.no_grad():
            LocalEngine("float64").run(proto, s.net, s.air, on_round=lambda r, d, ref=ref: ref.append(d),
                                       rounds=min(proto.rounds, ROUNDS))
        assert_identical(res, ref, name)


@pytest.mark.parametrize("family", registry.family_names())
def test_host_actor_body_meta_default_device(family: str) -> None:
    """The Ray engine's actor body (CPU actors, driven directly) under the meta default device: the
    decisions equal the normal run's bit for bit."""
    ref = host_actor_run(family, "cpu")
    with default_device("meta"):
        got = host_actor_run(family, "cpu")
    assert [g[0] for g in got] == [r[0] for r in ref]
    assert_identical([g[1:] for g in got], [r[1:] for r in ref], family)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("family", registry.family_names())
def test_host_actor_body_on_cuda(family: str) -> None:
    """The Ray engine's actor body (``HostActorImpl``) with ``device='cuda'``, used directly (Ray cannot be
    carried to the GPU machine): every protocol's decisions equal the CPU actors' to 1e-9 relative."""
    ref = host_actor_run(family, "cpu")
    got = host_actor_run(family, "cuda")
    assert [g[0] for g in got] == [r[0] for r in ref]
    for g, r in zip(got, ref):
        close(g[1:], r[1:], f"{family}/{g[0]}")
