"""The extension contract (DESIGN §10): a scenario family and an algorithm defined in THIS module, registered
at runtime, run through ``dsim.run.run`` on both engines into a run directory -- no edit of the core.

Toy family ``toy``: K point-to-point links with real power gains g_k (B, K), roles ``tx`` / ``rx``, link
classes ``toy_fb`` (rx -> its tx) and ``toy_bh`` (tx <-> tx).  Its air evaluates transmit powers p (B, K)
[W] by R = sum_k ln(1 + p_k g_k / sigma^2) [nat/Hz].

Toy algorithm ``toy_gossip`` (rounds r = 1..R):
  round 1 only: ``feedback``  rx k sends g_k to tx k (aggr='sum': one in-edge, the tx gets it in agent order);
  every round:  ``gossip``    each tx sends x_j to every other tx (aggr='mean': m_k = mean_{j != k} x_j);
                ``mix``       x_k <- (x_k + m_k) / 2,  p_k = P g_k / (g_k + x_k).
Initialisation: p = P; x^0 = g (``init: gain``) or x^0 ~ U(0, 1) (``init: random``, so the runner's
``restarts`` applies).  Closed form: x^r = M^r x^0 with M = (I + (J - I) / (K - 1)) / 2.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgpack
import numpy as np
import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field

from dsim import registry
from dsim.air import Air
from dsim.config import config_from_dict
from dsim.network import EdgeSet, Network
from dsim.protocol import AgentBlock, EdgeView, Inbox, Local, Message, Output, Protocol
from dsim.protocol import Field as MsgField
from dsim.registry import AlgorithmSpec, FamilySpec, LinkClass
from dsim.run import run


# ===================================================================================== the toy family
class ToyScenario(registry.CrossChecked):
    """``scenario: {family: toy, ...}``."""

    model_config = ConfigDict(extra="forbid")
    family: Literal["toy"] = "toy"
    n_links: int = Field(3, ge=2, description="K transmitter-receiver pairs")
    power_w: float = Field(1.0, gt=0, description="per-transmitter budget P [W]")
    noise_w: float = Field(0.1, gt=0, description="receiver noise sigma^2 [W]")


@dataclass
class ToyChannels:
    g: torch.Tensor  # (B, K) power gains
    power_w: float
    noise_w: float


class ToyAir(Air):
    unit = "nat/Hz"

    def __init__(self, ch: ToyChannels) -> None:
        self.ch = ch

    def evaluate(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rate = torch.log1p(p * self.ch.g / self.ch.noise_w)
        return rate.sum(-1), rate

    def power_ratio(self, p: torch.Tensor) -> torch.Tensor:
        return p / self.ch.power_w

    def repeat(self, n: int) -> ToyAir:
        return ToyAir(ToyChannels(self.ch.g.repeat(n, 1), self.ch.power_w, self.ch.noise_w))


def toy_generate(opts: ToyScenario, batch: int, generator: torch.Generator, dtype: torch.dtype) -> ToyChannels:
    g = 0.5 + torch.rand(batch, opts.n_links, generator=generator, dtype=torch.float64)
    return ToyChannels(g, opts.power_w, opts.noise_w)


def toy_build(ch: ToyChannels, faults, seed: int) -> tuple[Network, ToyAir]:
    B, K = ch.g.shape
    ks = torch.arange(K)
    src, dst = ks.repeat_interleave(K), ks.repeat(K)
    other = src != dst
    rev = ks.flip(0)  # feedback edges listed against agent order
    edges = {"rx>tx": EdgeSet("rx>tx", "rx", "tx", "toy_fb", rev, rev.clone(), torch.ones(B, K, dtype=torch.bool)),
             "tx>tx": EdgeSet("tx>tx", "tx", "tx", "toy_bh", src[other], dst[other],
                              torch.ones(B, K * (K - 1), dtype=torch.bool))}
    local = {"rx": {"g": ch.g.clone()}, "tx": {"power": torch.full((B, K), ch.power_w, dtype=torch.float64)}}
    info = {"family": "toy", "batch": B, "seed": seed, "n_links": K, "unit": "nat/Hz"}
    return Network("toy", B, {"tx": K, "rx": K}, edges, local, info), ToyAir(ch)


def toy_save(path, ch: ToyChannels) -> None:
    np.savez(path, family=np.array("toy"), g=ch.g.numpy(), power_w=np.array(ch.power_w), noise_w=np.array(ch.noise_w))


def toy_load(path, dtype: torch.dtype) -> ToyChannels:
    with np.load(path) as z:
        return ToyChannels(torch.from_numpy(z["g"]), float(z["power_w"]), float(z["noise_w"]))


TOY_FAMILY = FamilySpec("toy", ToyScenario, toy_generate, toy_build, toy_save, toy_load,
                        file_keys=("family", "g", "power_w", "noise_w"), roles=("tx", "rx"),
                        links=(LinkClass("toy_fb", 1e-3, 1e6), LinkClass("toy_bh", 2e-3, 1e6)),
                        unit="nat/Hz", summary="toy: K point-to-point links with real gains")


# ===================================================================================== the toy algorithm
class ToyGossipOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rounds: int = Field(4, ge=1)
    init: Literal["gain", "random"] = "gain"


RANDOM_SALT = 7


def toy_gossip(opts: ToyGossipOptions, net: Network) -> Protocol:
    random_init = opts.init == "random"  # plain values in the closures (shipped to Ray actors)

    def init_tx(block: AgentBlock) -> None:
        block.state["p"] = block.local["power"].clone()
        if random_init:  # drawn globally, sliced by agent ids: identical on every engine and sharding
            x0 = torch.rand(block.batch, block.info["n_links"], generator=block.generator(RANDOM_SALT),
                            dtype=torch.float64)
            block.state["x"] = x0.index_select(1, block.ids)

    def send_gain(block: AgentBlock, ev: EdgeView) -> dict[str, torch.Tensor]:
        return {"g": ev.gather_src(block.local["g"])}

    def recv_gain(block: AgentBlock, inbox: Inbox) -> None:
        block.state["g"] = inbox["g"]  # (B, n): aggregated onto agents
        if not random_init:
            block.state["x"] = inbox["g"].clone()

    def send_x(block: AgentBlock, ev: EdgeView) -> dict[str, torch.Tensor]:
        return {"x": ev.gather_src(block.state["x"])}

    def recv_x(block: AgentBlock, inbox: Inbox) -> None:
        block.state["m"] = inbox["x"]

    def mix(block: AgentBlock) -> None:
        x = 0.5 * (block.state["x"] + block.state["m"])
        g = block.state["g"]
        block.state["x"] = x
        block.state["p"] = block.local["power"] * g / (g + x)

    phases = [
        Message("feedback", "rx>tx", (MsgField("g", "real", ()),), send_gain, recv_gain, aggr="sum", when="first"),
        Message("gossip", "tx>tx", (MsgField("x", "real", ()),), send_x, recv_x, aggr="mean"),
        Local("mix", "tx", mix),
    ]
    return Protocol("toy_gossip", ("tx", "rx"), {"tx": init_tx}, phases, opts.rounds, Output("tx", "p"))


TOY_ALGORITHM = AlgorithmSpec("toy_gossip", ("toy",), ToyGossipOptions, toy_gossip,
                              "gossip averaging of link gains (test toy)", random_init=True)


# ===================================================================================== fixtures
@pytest.fixture(scope="module", autouse=True)
def toy_registered():
    """Register the toy family and algorithm for this module only; remove them afterwards."""
    registry.discover()
    registry.register_family(TOY_FAMILY)
    registry.register_algorithm(TOY_ALGORITHM)
    # Ray workers cannot import this test module: ship its functions by value
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    registry.FAMILIES.pop("toy", None)
    registry.ALGORITHMS.pop("toy_gossip", None)
    assert "toy" not in registry.family_names() and "toy_fb" not in registry.link_classes()
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


SEED, BATCH, K, ROUNDS, RESTARTS = 3, 4, 3, 4, 3


GAIN = {"name": "toy_gossip", "rounds": ROUNDS}
RANDOM = {"name": "toy_gossip", "label": "toy-random", "init": "random", "rounds": ROUNDS, "restarts": RESTARTS}


def _cfg(out: Path, engine: dict, scenario: dict | None = None, algorithms: tuple[dict, ...] = (GAIN, RANDOM)):
    return config_from_dict({
        "seed": SEED, "precision": "double", "batch": BATCH,
        "scenario": scenario or {"family": "toy", "n_links": K, "power_w": 2.0, "noise_w": 0.5},
        "algorithms": list(algorithms), "engine": engine, "wire": {"dtype": "float64"}, "output": str(out)},
        base_dir=out.parent)


def _read(run_dir: Path) -> dict:
    def rows(name):
        with open(run_dir / name, newline="") as f:
            return list(csv.DictReader(f))

    return {"metrics": rows("metrics.csv"), "overhead": rows("overhead.csv"), "wsr": rows("wsr.csv"),
            "summary": json.loads((run_dir / "summary.json").read_text())}


# ===================================================================================== closed form
def closed_form_wsr(g: np.ndarray, x0: np.ndarray, P: float, noise: float) -> np.ndarray:
    """(R+1, B) WSR after each round; round 0 = full power."""
    n = g.shape[1]
    M = 0.5 * (np.eye(n) + (np.ones((n, n)) - np.eye(n)) / (n - 1))
    out = [np.log1p(P * g / noise).sum(-1)]
    x = x0
    for _ in range(ROUNDS):
        x = x @ M.T
        out.append(np.log1p(P * g / (g + x) * g / noise).sum(-1))
    return np.array(out)


def _message_bytes(n_reals: int) -> int:
    """One message of one float64 field of n_reals, as msgpack encodes it: [bin]."""
    return len(msgpack.packb([np.zeros(n_reals, dtype=np.float64).tobytes()], use_bin_type=True))


# ===================================================================================== the tests
def _check_run_dir(run_dir: Path) -> dict:
    from dsim.scenarios.build import generate_channels

    cfg = _cfg(run_dir, {"kind": "local"})
    _, ch = generate_channels(cfg.scenario, BATCH, SEED, "double")
    g = ch.g.numpy()
    P, noise = 2.0, 0.5
    d = _read(run_dir)
    assert {p.name for p in run_dir.iterdir()} >= {"config.yaml", "metrics.csv", "overhead.csv", "wsr.csv",
                                                   "summary.json", "plots"}
    s = d["summary"]
    assert s["family"] == "toy" and s["unit"] == "nat/Hz" and s["seed"] == SEED

    if "toy_gossip" in s["algorithms"]:
        _check_gain_init(d, g, P, noise)
    if "toy-random" in s["algorithms"]:
        _check_random_init(d, g, P, noise)
    return d


def _check_gain_init(d: dict, g: np.ndarray, P: float, noise: float) -> None:
    """init: gain (x^0 = g): WSR per round and the ledger."""
    s = d["summary"]
    want = closed_form_wsr(g, g, P, noise)
    m = [r for r in d["metrics"] if r["algorithm"] == "toy_gossip"]
    assert [int(r["round"]) for r in m] == list(range(ROUNDS + 1))
    for r, row in enumerate(m):
        assert float(row["wsr_mean"]) == pytest.approx(want[r].mean(), rel=1e-12)
        assert float(row["wsr_min"]) == pytest.approx(want[r].min(), rel=1e-12)
        assert float(row["wsr_max"]) == pytest.approx(want[r].max(), rel=1e-12)
        assert float(row["wsr_std"]) == pytest.approx(want[r].std(), rel=1e-9, abs=1e-12)
    final = [float(r["wsr"]) for r in d["wsr"] if r["algorithm"] == "toy_gossip"]
    np.testing.assert_allclose(final, want[-1], rtol=1e-12)

    _check_ledger(d, "toy_gossip")
    a = s["algorithms"]["toy_gossip"]
    assert a["final_wsr"]["mean"] == pytest.approx(want[-1].mean(), rel=1e-12)
    assert a["max_power_ratio"] == pytest.approx(1.0)  # full power at the initialisation


def _check_ledger(d: dict, label: str) -> None:
    """Per realization: round 1 feedback (K messages on toy_fb) + gossip (K(K-1) on toy_bh), later rounds
    gossip only; one real per message, its bytes the msgpack size of one float64."""
    nb = _message_bytes(1)
    got = {(int(r["round"]), r["phase"]): (r["link"], float(r["messages"]), float(r["reals"]), float(r["bytes"]))
           for r in d["overhead"] if r["algorithm"] == label}
    exp = {(1, "feedback"): ("toy_fb", K, K, K * nb)}
    exp |= {(r, "gossip"): ("toy_bh", K * (K - 1), K * (K - 1), K * (K - 1) * nb) for r in range(1, ROUNDS + 1)}
    assert got == exp
    per_round = [K * (K - 1) * nb] * ROUNDS
    per_round[0] += K * nb
    m = [r for r in d["metrics"] if r["algorithm"] == label]
    np.testing.assert_array_equal([float(r["cum_bytes"]) for r in m], np.cumsum([0] + per_round))
    np.testing.assert_array_equal([float(r["cum_reals"]) for r in m], np.cumsum([0] + per_round) / nb)
    a = d["summary"]["algorithms"][label]
    assert a["rounds"] == ROUNDS and a["bytes_per_round"] == pytest.approx(sum(per_round) / ROUNDS)
    assert a["bytes_per_round_by_link"] == pytest.approx({"toy_fb": K * nb / ROUNDS,
                                                          "toy_bh": K * (K - 1) * nb})


def _check_random_init(d: dict, g: np.ndarray, P: float, noise: float) -> None:
    """init: random, best of RESTARTS: realization b of restart j is row b + B j of one global draw."""
    s = d["summary"]
    gen = torch.Generator().manual_seed(SEED * 1_000_003 + RANDOM_SALT)
    x0 = torch.rand(RESTARTS * BATCH, K, generator=gen, dtype=torch.float64).numpy()
    per_init = closed_form_wsr(np.tile(g, (RESTARTS, 1)), x0, P, noise).reshape(ROUNDS + 1, RESTARTS, BATCH)
    final = [float(r["wsr"]) for r in d["wsr"] if r["algorithm"] == "toy-random"]
    np.testing.assert_allclose(final, per_init[-1].max(axis=0), rtol=1e-12)
    assert s["algorithms"]["toy-random"]["restarts"] == RESTARTS
    m = [r for r in d["metrics"] if r["algorithm"] == "toy-random"]
    np.testing.assert_allclose([float(r["wsr_mean"]) for r in m], per_init.mean(axis=(1, 2)), rtol=1e-12)
    _check_ledger(d, "toy-random")


def _numbers(d: dict, label: str | None = None) -> dict:
    """Everything but wall-clock facts (of one algorithm when ``label`` is given)."""
    keep = (lambda lab: True) if label is None else (lambda lab: lab == label)
    algs = {k: {n: v for n, v in a.items() if not n.endswith("wall_s") and n not in ("wall_time_s", "build_s")}
            for k, a in d["summary"]["algorithms"].items() if keep(k)}
    return {name: [r for r in d[name] if keep(r["algorithm"])] for name in ("metrics", "overhead", "wsr")} | {
        "algorithms": algs}


def test_toy_family_and_protocol_run_on_both_engines(tmp_path, ray_session):
    """Both algorithms on the local engine; the random-init one (every phase, restarts) also on Ray with
    two actors per role: the same numbers and ledger."""
    assert "toy" in registry.family_names() and "toy_gossip" in registry.algorithm_names("toy")
    local = run(_cfg(tmp_path / "local", {"kind": "local"}), progress=False, echo=lambda *a: None)
    ray_dir = run(_cfg(tmp_path / "ray", {"kind": "ray", "shards": 2}, algorithms=(RANDOM,)), progress=False,
                  echo=lambda *a: None)
    a, b = _check_run_dir(Path(local)), _check_run_dir(Path(ray_dir))
    assert _numbers(a, "toy-random") == _numbers(b)
    assert b["summary"]["engine"] == "ray"


def test_toy_channel_file_round_trip(tmp_path):
    """``dsim sample``'s path: the family's save/load hooks; ``scenario: {file: ...}`` reproduces the run."""
    from dsim.scenarios.build import generate_channels, save_channels_file

    cfg = _cfg(tmp_path / "drawn", {"kind": "local"})
    family, ch = generate_channels(cfg.scenario, BATCH, SEED, "double")
    assert family == "toy"
    save_channels_file("toy", ch, tmp_path / "toy.npz")
    drawn = _read(run(cfg, progress=False, echo=lambda *a: None))
    file_dir = run(_cfg(tmp_path / "file", {"kind": "local"}, {"file": "toy.npz"}), progress=False,
                   echo=lambda *a: None)
    assert _numbers(_check_run_dir(Path(file_dir))) == _numbers(drawn)
