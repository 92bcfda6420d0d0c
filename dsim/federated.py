"""Federated fine-tuning across sites as a protocol on the engines (DESIGN §13).

Sites (a cell cluster, a cell-free deployment: any family) hold their own channel samples, which never
leave them.  One FL round is one communication round of the protocol :func:`fl_protocol` on a network of
roles ``server`` (1 agent) and ``site`` (S agents) with two edge sets on link class ``fl``:

1. ``broadcast`` (``server>site``): the server sends the global parameter vector x_t (P reals) to the
   sites it samples this round (``fraction_fit``, at least ``min_fit_clients``; Flower's rule).
2. ``fit`` (sites, local): a site that received x_t loads it and runs ``local_steps`` steps of the
   learnable protocol's own loss (:func:`dsim.learn.forward_loss`) on its training samples, plus FedProx's
   proximal term; its optimizer state stays with it across rounds (on the Ray engine each site is an actor
   that draws and holds its samples for the whole run).
3. ``upload`` (``site>server``): the site sends its vector y_c (P reals) and its example count n_c.
4. ``aggregate`` (server, local): with at least ``min_fit_clients`` updates received the strategy
   (:mod:`dsim.fl_strategies`) computes x_{t+1}; otherwise the round is skipped (x_{t+1} = x_t).

The parameter vector is the learnable's floating state (:func:`dsim.learn.get_flat`); the wire policy
(float64 | float32 | float16 | q<b>) sets its bytes and what the receiver sees.  Faults on ``fl`` links
(:class:`FLFaults`): Bernoulli message loss per message and sites that crash at a round; a site whose
message is lost, or that crashed, is left out of the aggregate.  The engines count a message on every
edge of a phase; an FL round addresses only its participants, so the ``fl`` ledger (:func:`fl_ledger`)
counts them from the same seeded plan the engines apply: per round and direction, bytes = participating
sites x the msgpack size of one message (P reals under the wire policy, plus msgpack's framing).

Comparisons in one run (:func:`finetune`): transfer only (the starting model), each site alone (local
fine-tuning on its own samples only), centralised fine-tuning on the pooled samples (the ledger charges
the upload of every site's -- possibly truncated -- channel samples and the model's download), and the
federated strategies.  Quality: each site's WSR on its held-out samples relative to a reference algorithm
(e.g. the best of several WMMSE runs) in percent, 100 * mean WSR / mean reference WSR, and their average.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from dsim import registry
from dsim.clock import ClockConfig, LinkSpec, MessageTrace, PhaseTrace, RoundClock
from dsim.config import ConfigError
from dsim.engine.base import Engine, LedgerRow
from dsim.evaluate import evaluate_rounds
from dsim.faults import FaultModel
from dsim.fl_config import FinetuneConfig
from dsim.fl_strategies import Strategy, proximal_term
from dsim.learn import (
    Learnable,
    forward_loss,
    get_flat,
    get_learnable,
    recalibrate_bn,
    scenario_sampler,
    set_flat,
)
from dsim.network import EdgeSet, Network
from dsim.protocol import AgentBlock, EdgeView, Field, Inbox, Local, Message, Output, Protocol
from dsim.results import jsonable, package_versions, write_csv
from dsim.scenarios.build import generate_channels
from dsim.wire import message_nbytes

Tensor = torch.Tensor

#: link class of federated traffic; roles of the FL network
LINK, SERVER, SITE = "fl", "server", "site"
DOWN, UP = "server>site", "site>server"
#: phase indices of the protocol (the fault plan keys on them)
PH_DOWN, PH_FIT, PH_UP, PH_AGG = 0, 1, 2, 3


# ============================================================================================ local training
def make_optimizer(module: torch.nn.Module, kind: str, lr: float) -> torch.optim.Optimizer:
    """The local optimizer of a site (or of the centralised run): Adam (default betas) or plain SGD."""
    params = [p for p in module.parameters() if p.requires_grad]
    return torch.optim.Adam(params, lr=lr) if kind == "adam" else torch.optim.SGD(params, lr=lr)


def local_train(learn: Learnable, data: list[tuple[Network, Any]], steps: int, opt: torch.optim.Optimizer,
                mu: float = 0.0) -> float:
    """``steps`` full-batch steps of ``learn``'s loss on ``data`` (one or more (net, air) sample batches; the
    loss is their average weighted by batch size), plus FedProx's (mu/2)||w - w_0||^2 around the weights at
    the call (mu > 0); then the batch-norm statistics (if any) are re-estimated on ``data`` at the new
    weights.  The one local-training routine of sites, the site-alone and the pooled runs.
    Returns the last step's loss (without the proximal term)."""
    module = learn.module
    module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    anchor = [p.detach().clone() for p in params] if mu > 0 else []
    total = sum(net.batch for net, _ in data)
    last = float("nan")
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = sum((net.batch / total) * forward_loss(learn, net, air)[0] for net, air in data)
        obj = loss + proximal_term(params, anchor, mu) if mu > 0 else loss
        obj.backward()
        opt.step()
        last = float(loss.detach())
    # batch-norm statistics at the new weights on these samples (precise BN; no batch norm: nothing), so
    # that evaluation in eval mode does not lag behind the weights (dsim.learn.recalibrate_bn)
    recalibrate_bn(learn, lambda _batch, i: data[i], list(range(len(data))), 0)
    return last


# ============================================================================================ the FL protocol
@dataclass(frozen=True)
class SiteSpec:
    """What a site agent draws and trains on: its training scenario (truncation applied), sample count, seed."""

    name: str
    scenario: dict[str, Any]
    samples: int
    seed: int


@dataclass
class FLProgram:
    """Everything the agents of one federated run need (sent to the actors once; a few kilobytes)."""

    algorithm: str
    options: dict[str, Any]
    start: Tensor  # (P,) float64: the starting global vector
    sites: list[SiteSpec]
    strategy: Strategy
    min_fit_clients: int
    local_steps: int
    local_lr: float
    local_optimizer: str
    precision: str = "double"
    rounds: int = 1

    @property
    def size(self) -> int:
        return int(self.start.numel())


def fl_network(n_sites: int) -> Network:
    """The FL network: one ``server``, ``n_sites`` ``site`` agents, edges server->site s and site s->server
    with edge id s (link class ``fl``), batch 1 (one federation)."""
    S = int(n_sites)
    cpu = torch.device("cpu")  # the federation's own (tiny) data: on the CPU, whatever the default device
    ar = torch.arange(S, device=cpu)
    zero = torch.zeros(S, dtype=torch.int64, device=cpu)
    mask = torch.ones(1, S, dtype=torch.bool, device=cpu)
    edges = {DOWN: EdgeSet(DOWN, SERVER, SITE, LINK, zero, ar, mask),
             UP: EdgeSet(UP, SITE, SERVER, LINK, ar, zero, mask.clone())}
    local = {SERVER: {"present": torch.ones(1, 1, dtype=torch.float64, device=cpu)},
             SITE: {"present": torch.ones(1, S, dtype=torch.float64, device=cpu)}}
    return Network("federation", 1, {SERVER: 1, SITE: S}, edges, local, {"batch": 1, "seed": 0})


def _site_init(prog: FLProgram):
    def init(block: AgentBlock) -> None:
        held = []
        for i in block.ids.tolist():
            s = prog.sites[i]
            net, air = scenario_sampler(dict(s.scenario), prog.precision)(s.samples, s.seed)
            learn = get_learnable(prog.algorithm, prog.options)
            set_flat(learn.module, prog.start)
            learn.module.requires_grad_(True)
            held.append({"learn": learn, "data": [(net, air)],
                         "opt": make_optimizer(learn.module, prog.local_optimizer, prog.local_lr),
                         "examples": float(net.batch), "fit_s": 0.0})
        block.state["held"] = held
        block.state["update"] = prog.start.reshape(1, 1, -1).repeat(1, block.n, 1).to(block.device)
        block.state["examples"] = torch.tensor([[[h["examples"]] for h in held]], dtype=torch.float64,
                                               device=block.device)
    return init


def _server_init(prog: FLProgram):
    def init(block: AgentBlock) -> None:
        block.state["global"] = prog.start.reshape(1, 1, -1).clone().to(block.device)
        block.state["strategy"] = copy.deepcopy(prog.strategy)
        block.state["aggregated"] = []
    return init


def fl_protocol(prog: FLProgram) -> Protocol:
    """The FL round as a protocol (module docstring); ``prog.rounds`` rounds; decision: the server's global
    vector (1, 1, P) after each round."""
    P = prog.size
    params = (Field("params", "real", (P,)),)
    update = (Field("params", "real", (P,)), Field("examples", "real", (1,)))

    def bcast_send(block: AgentBlock, ev: EdgeView) -> dict[str, Tensor]:
        return {"params": ev.gather_src(block.state["global"])}

    def bcast_recv(block: AgentBlock, inbox: Inbox) -> None:
        block.state["model"] = inbox["params"]                   # (1, n, P): one in-edge per site
        got = torch.zeros(1, block.n, dtype=torch.bool, device=block.device)
        got[:, inbox.edges.dst_local] = inbox.delivered
        block.state["got"] = got

    def fit(block: AgentBlock) -> None:
        for j, h in enumerate(block.state["held"]):
            if not bool(block.state["got"][0, j]):
                continue
            t0 = time.perf_counter()
            set_flat(h["learn"].module, block.state["model"][0, j])
            local_train(h["learn"], h["data"], prog.local_steps, h["opt"], prog.strategy.client_mu)
            block.state["update"][0, j] = get_flat(h["learn"].module).to(block.device)
            h["fit_s"] += time.perf_counter() - t0

    def up_send(block: AgentBlock, ev: EdgeView) -> dict[str, Tensor]:
        return {"params": ev.gather_src(block.state["update"]), "examples": ev.gather_src(block.state["examples"])}

    def up_recv(block: AgentBlock, inbox: Inbox) -> None:
        block.state["updates"], block.state["counts"] = inbox["params"], inbox["examples"]
        block.state["arrived"] = inbox.delivered

    def aggregate(block: AgentBlock) -> None:
        ok = block.state["arrived"][0]
        if int(ok.sum()) >= prog.min_fit_clients:
            x = block.state["global"][0, 0]
            new = block.state["strategy"].aggregate(x, block.state["updates"][0, ok], block.state["counts"][0, ok, 0])
            block.state["global"] = new.reshape(1, 1, -1)
            block.state["aggregated"].append(block.round)

    phases = [Message("broadcast", DOWN, params, bcast_send, bcast_recv, aggr="none"),
              Local("fit", SITE, fit),
              Message("upload", UP, update, up_send, up_recv, aggr="none"),
              Local("aggregate", SERVER, aggregate)]
    return Protocol("federated", (SERVER, SITE), {SERVER: _server_init(prog), SITE: _site_init(prog)}, phases,
                    prog.rounds, Output(SERVER, "global"), meta={"parameters": P})


# ============================================================================================ faults and plan
@dataclass(frozen=True)
class FLFaults(FaultModel):
    """The federated round plan and the faults on ``fl`` links, seeded, identical on every engine.

    selected:    (rounds + 1) rows of S bools: the sites the server samples in each round (row 0 unused).
    crash_round: per site, the round from which it is silent (0: never).
    Message loss (the base class's Bernoulli draw, per message) applies to both directions.
    """

    selected: tuple[tuple[bool, ...], ...] = ()
    crash_round: tuple[int, ...] = ()

    def _draw(self, rnd: int, phase: int) -> Tensor:
        S = len(self.crash_round)
        return FaultModel.delivered(self, rnd, phase, torch.arange(S, device="cpu"), 1, S)[0]

    def alive(self, rnd: int) -> Tensor:
        return torch.tensor([c == 0 or rnd < c for c in self.crash_round], dtype=torch.bool, device="cpu")

    def addressed(self, rnd: int) -> Tensor:
        """Sites the server sends the model to in round ``rnd`` (it does not know of crashes)."""
        return torch.tensor(self.selected[rnd], dtype=torch.bool, device="cpu")

    def got_model(self, rnd: int) -> Tensor:
        """Sites that receive the model (addressed, alive, not lost): they train and upload."""
        return self.addressed(rnd) & self.alive(rnd) & self._draw(rnd, PH_DOWN)

    def arrived(self, rnd: int) -> Tensor:
        """Sites whose update reaches the server."""
        return self.got_model(rnd) & self._draw(rnd, PH_UP)

    def delivered(self, rnd: int, phase: int, eids: Tensor, batch: int, n_edges: int) -> Tensor:
        if phase == PH_DOWN:
            ok = self.got_model(rnd)
        elif phase == PH_UP:
            ok = self.arrived(rnd)
        else:
            return FaultModel.delivered(self, rnd, phase, eids, batch, n_edges)
        return ok.to(eids.device).index_select(0, eids).reshape(1, -1).expand(batch, -1)


def plan_faults(n_sites: int, rounds: int, fraction_fit: float, min_fit_clients: int, crash: dict[int, int],
                message_loss: float, seed: int) -> FLFaults:
    """The seeded plan: per round, Flower's client sampling -- max(int(S * fraction_fit), min_fit_clients)
    sites, a random permutation's first ones (generator seeded by (seed, round)) -- and the crash rounds."""
    S = n_sites
    m = min(S, max(int(S * fraction_fit), min_fit_clients))
    rows = [tuple([False] * S)]
    for r in range(1, rounds + 1):
        g = torch.Generator(device="cpu")
        g.manual_seed(seed * 1_000_003 + 7919 * r)
        pick = set(torch.randperm(S, generator=g, device="cpu")[:m].tolist())
        rows.append(tuple(i in pick for i in range(S)))
    return FLFaults(message_loss=message_loss, seed=seed, selected=tuple(rows),
                    crash_round=tuple(int(crash.get(i, 0)) for i in range(S)))


def fl_ledger(faults: FLFaults, rounds: int, P: int, wire: str) -> list[LedgerRow]:
    """The ``fl`` ledger of a federated run: per round, the broadcast to the addressed sites and the uploads
    of the sites that received the model (sent, possibly lost).  bytes = messages x msgpack size of one
    message under ``wire`` (:func:`dsim.wire.message_nbytes`)."""
    down = (Field("params", "real", (P,)),)
    up = (Field("params", "real", (P,)), Field("examples", "real", (1,)))
    nd, nu = message_nbytes(down, wire), message_nbytes(up, wire)
    rows = []
    for r in range(1, rounds + 1):
        a, g = int(faults.addressed(r).sum()), int(faults.got_model(r).sum())
        rows.append(LedgerRow(r, "broadcast", LINK, a, a * P, a * nd))
        rows.append(LedgerRow(r, "upload", LINK, g, g * (P + 1), g * nu))
    return rows


# ============================================================================================ evaluation
@dataclass
class HeldOut:
    """One site's held-out samples and the reference WSR on them (mean over samples, the rate unit)."""

    name: str
    net: Network
    air: Any
    reference: float
    unit: str


def reference_wsr(cfg: FinetuneConfig, net: Network, air: Any) -> float:
    """Mean over the samples of the reference algorithm's final WSR, best of ``restarts`` runs per sample."""
    ref = cfg.federated.reference
    spec = registry.algorithm(ref.name)
    opts = spec.options(**{k: v for k, v in ref.model_dump().items() if k not in ("name", "restarts")})
    n, a = (net.repeat(ref.restarts), air.repeat(ref.restarts)) if ref.restarts > 1 else (net, air)
    with torch.no_grad():
        proto = spec.build(opts, n)
        w = evaluate_rounds(proto, n, a, [proto.rounds])[proto.rounds]
    return float(w.reshape(ref.restarts, net.batch).max(0).values.mean())


def held_out(cfg: FinetuneConfig, progress: bool = False) -> list[HeldOut]:
    """Each site's held-out samples (full scenario, ``eval_seed``) and its reference WSR."""
    from tqdm.auto import tqdm

    out = []
    for s in tqdm(cfg.federated.sites, desc="reference", disable=not progress, leave=False):
        net, air = scenario_sampler(cfg.scenarios[s.name], cfg.precision)(s.eval_samples, s.held_out_seed)
        out.append(HeldOut(s.name, net, air, reference_wsr(cfg, net, air), str(net.info.get("unit", ""))))
    return out


class Evaluator:
    """Relative WSR [%] of a parameter vector on every site's held-out samples (the model in eval mode)."""

    def __init__(self, cfg: FinetuneConfig, sites: list[HeldOut]) -> None:
        fed = cfg.federated
        self.learn = get_learnable(fed.algorithm, fed.options)
        self.learn.module.eval().requires_grad_(False)
        self.sites = sites

    def __call__(self, vec: Tensor, only: int | None = None) -> list[float]:
        """Relative WSR [%] per site (or of site ``only`` alone, a one-element list)."""
        set_flat(self.learn.module, vec)
        out = []
        with torch.no_grad():
            for s in (self.sites if only is None else [self.sites[only]]):
                proto = self.learn.protocol(s.net)
                w = evaluate_rounds(proto, s.net, s.air, [proto.rounds])[proto.rounds]
                out.append(100.0 * float(w.mean()) / s.reference)
        return out


# ============================================================================================ runs
@dataclass
class MethodResult:
    """One compared method: relative WSR per round (R+1, S) (round 0 = the start), cumulative fl bytes and
    simulated time per round (R+1,), its ledger rows and facts."""

    label: str
    rel: np.ndarray
    cum_bytes: np.ndarray
    sim_time_s: np.ndarray
    ledger: list[LedgerRow]
    extra: dict[str, Any]


def start_vector(cfg: FinetuneConfig) -> Tensor:
    """The starting global vector ``(P,)``: the configured checkpoint of the learnable (``federated.options``;
    validation fills in the default, the shipped model, :class:`dsim.fl_config.FederatedConfig`).  Options that
    do not match that checkpoint are a :class:`dsim.config.ConfigError` line at ``federated.options.<key>``."""
    try:
        return get_flat(get_learnable(cfg.federated.algorithm, cfg.federated.options).module)
    except registry.OptionError as exc:
        raise ConfigError(f"{cfg.source}: {exc.within('federated.options')}") from None


def site_specs(cfg: FinetuneConfig) -> list[SiteSpec]:
    return [SiteSpec(s.name, jsonable(cfg.train_scenarios[s.name], finite=False), s.samples, s.seed)
            for s in cfg.federated.sites]


def _clock(cfg: FinetuneConfig, compute_s: float) -> RoundClock:
    ln = cfg.federated.link
    return RoundClock(ClockConfig(links={LINK: LinkSpec(ln.latency_s, ln.bandwidth_bps, ln.shared)},
                                  compute_s={SITE: compute_s}))


def round_time_s(clock: RoundClock, faults: FLFaults, rnd: int, P: int, wire: str) -> float:
    """SimPy time of FL round ``rnd``: broadcast to the addressed sites, local fits, uploads, aggregation."""
    down = message_nbytes((Field("params", "real", (P,)),), wire)
    up = message_nbytes((Field("params", "real", (P,)), Field("examples", "real", (1,))), wire)
    addr, got = faults.addressed(rnd).tolist(), faults.got_model(rnd).tolist()
    sites = [f"{SITE}{i}" for i in range(len(addr))]
    phases = [PhaseTrace("broadcast", "message", ("server0", *sites),
                         messages=tuple(MessageTrace("server0", sites[i], LINK, down)
                                        for i, a in enumerate(addr) if a)),
              PhaseTrace("fit", "local", tuple(s for s, g in zip(sites, got) if g)),
              PhaseTrace("upload", "message", ("server0", *sites),
                         messages=tuple(MessageTrace(sites[i], "server0", LINK, up) for i, g in enumerate(got) if g)),
              PhaseTrace("aggregate", "local", ("server0",))]
    return clock.round_time(phases).total_s


def make_engine(cfg: FinetuneConfig) -> Engine:
    """The configured engine (Ray: one actor per site and one for the server) with the federated wire."""
    e, wire = cfg.engine, cfg.federated.wire
    if e.kind == "ray":
        from dsim.engine.ray import RayEngine

        return RayEngine(wire, shards=e.shards, address=e.address, gpus=e.gpus, num_cpus=e.num_cpus,
                         placement=e.placement, compiled=e.compiled)
    from dsim.engine.local import LocalEngine

    return LocalEngine(wire, device=None if e.device == "cpu" else e.device)


def run_federated(cfg: FinetuneConfig, strategy_index: int, engine: Engine, net: Network, evaluate: Evaluator | None,
                  start: Tensor, progress: bool = False) -> tuple[MethodResult, list[Tensor], Any]:
    """One federated strategy on ``engine``: (its result, the global vector after every round, the engine's
    trace).  ``evaluate`` None: no evaluation (rel stays empty)."""
    from tqdm.auto import tqdm

    fed = cfg.federated
    st = fed.strategies[strategy_index]
    names = [s.name for s in fed.sites]
    S, R = len(names), fed.rounds
    strategy = Strategy(st.strategy, st.proximal_mu, st.eta, st.beta_1, st.beta_2, st.tau)
    prog = FLProgram(fed.algorithm, dict(fed.options), start, site_specs(cfg), strategy, st.min_fit_clients,
                     fed.local_steps, fed.local_lr, fed.local_optimizer, cfg.precision, R)
    seed = fed.faults.seed if fed.faults.seed is not None else cfg.seed
    faults = plan_faults(S, R, st.fraction_fit, st.min_fit_clients,
                         {names.index(k): v for k, v in fed.faults.crash.items()}, fed.faults.message_loss, seed)
    engine.faults = faults
    vectors: list[Tensor] = []
    rel: list[list[float]] = []
    bar = tqdm(total=R, desc=st.name, unit="round", disable=not progress, leave=False)

    def on_round(r: int, decision: Tensor) -> None:
        v = decision.reshape(-1).detach().to("cpu", torch.float64).clone()
        vectors.append(v)
        if evaluate is not None:
            rel.append(evaluate(v))
        if r:
            bar.update(1)

    t0 = time.perf_counter()
    trace = engine.run(fl_protocol(prog), net, None, on_round=on_round)
    wall = time.perf_counter() - t0
    bar.close()
    P = prog.size
    ledger = fl_ledger(faults, R, P, fed.wire)
    per = np.zeros(R + 1)
    for row in ledger:
        per[row.round] += row.bytes
    if fed.compute_s == "measured":
        per_site = trace.phase_wall_s.get("fit", 0.0) / R / (S if engine.kind == "local" else 1)
    else:
        per_site = float(fed.compute_s)
    clock = _clock(cfg, per_site)
    times = np.cumsum([0.0] + [round_time_s(clock, faults, r, P, fed.wire) for r in range(1, R + 1)])
    aggregated = [r for r in range(1, R + 1) if int(faults.arrived(r).sum()) >= st.min_fit_clients]
    res = MethodResult(f"fl-{st.name}", np.array(rel) if rel else np.zeros((0, S)), np.cumsum(per), times, ledger,
                       {"parameters": P, "wall_s": round(wall, 3), "site_compute_s": per_site,
                        "aggregated_rounds": aggregated, "strategy": jsonable(st)})
    return res, vectors, trace


def run_alone(cfg: FinetuneConfig, evaluate: Evaluator, start: Tensor, progress: bool = False) -> MethodResult:
    """Each site fine-tunes alone on its own samples (the same local routine, rounds x local_steps steps);
    relative WSR on its own held-out samples after every local_steps steps.  No fl bytes."""
    from tqdm.auto import tqdm

    fed = cfg.federated
    S, R = len(fed.sites), fed.rounds
    rel = np.zeros((R + 1, S))
    rel[0] = evaluate(start)
    walls = []
    for i, spec in enumerate(tqdm(site_specs(cfg), desc="alone", disable=not progress, leave=False)):
        learn = get_learnable(fed.algorithm, fed.options)
        set_flat(learn.module, start)
        learn.module.requires_grad_(True)
        data = [scenario_sampler(dict(spec.scenario), cfg.precision)(spec.samples, spec.seed)]
        opt = make_optimizer(learn.module, fed.local_optimizer, fed.local_lr)
        t0 = time.perf_counter()
        for r in range(1, R + 1):
            local_train(learn, data, fed.local_steps, opt)
            rel[r, i] = evaluate(get_flat(learn.module), only=i)[0]
        walls.append(time.perf_counter() - t0)
    per_round = float(np.mean(walls)) / R
    return MethodResult("alone", rel, np.zeros(R + 1), np.arange(R + 1) * per_round, [],
                        {"note": "each site on its own samples only, evaluated on its own held-out samples"})


def channel_reals(channels: Any) -> int:
    """Reals of a family's channel samples (every floating tensor; complex entries count twice): what
    uploading them to a central trainer costs."""
    total = 0
    for f in dataclasses.fields(channels):
        t = getattr(channels, f.name)
        if isinstance(t, Tensor) and (t.is_floating_point() or t.is_complex()):
            total += t.numel() * (2 if t.is_complex() else 1)
    return total


def run_pooled(cfg: FinetuneConfig, evaluate: Evaluator, start: Tensor, progress: bool = False) -> MethodResult:
    """Centralised fine-tuning on the pooled training samples of all sites (the loss averaged over them),
    rounds x local_steps steps.  Ledger (link ``fl``, round 0): every site uploads its (truncated) channel
    samples as one message; after training the model goes to every site (round R)."""
    from tqdm.auto import tqdm

    fed = cfg.federated
    S, R = len(fed.sites), fed.rounds
    learn = get_learnable(fed.algorithm, fed.options)
    set_flat(learn.module, start)
    learn.module.requires_grad_(True)
    data, up_rows = [], []
    for spec in site_specs(cfg):
        family, ch = generate_channels(dict(spec.scenario), spec.samples, spec.seed, cfg.precision)
        data.append(scenario_sampler(dict(spec.scenario), cfg.precision)(spec.samples, spec.seed))
        up_rows.append(message_nbytes((Field("channels", "real", (channel_reals(ch),)),), fed.wire))
    P = int(start.numel())
    nd = message_nbytes((Field("params", "real", (P,)),), fed.wire)
    opt = make_optimizer(learn.module, fed.local_optimizer, fed.local_lr)
    rel = np.zeros((R + 1, S))
    rel[0] = evaluate(start)
    t0 = time.perf_counter()
    for r in tqdm(range(1, R + 1), desc="pooled", disable=not progress, leave=False):
        local_train(learn, data, fed.local_steps, opt)
        rel[r] = evaluate(get_flat(learn.module))
    wall = time.perf_counter() - t0
    up = sum(up_rows)
    ledger = [LedgerRow(0, "sample_upload", LINK, S, 0, up), LedgerRow(R, "model_download", LINK, S, S * P, S * nd)]
    cum = np.full(R + 1, float(up))
    cum[-1] += S * nd
    ln = fed.link
    upload_s = sum(ln.latency_s + 8 * b / ln.bandwidth_bps for b in up_rows) if ln.shared else \
        max(ln.latency_s + 8 * b / ln.bandwidth_bps for b in up_rows)
    times = upload_s + np.arange(R + 1) * wall / R
    times[-1] += ln.latency_s + 8 * (S * nd if ln.shared else nd) / ln.bandwidth_bps
    return MethodResult("pooled", rel, cum, times, ledger,
                        {"sample_upload_bytes": int(up), "model_download_bytes": int(S * nd), "wall_s": round(wall, 3)})


def run_transfer(cfg: FinetuneConfig, evaluate: Evaluator, start: Tensor) -> MethodResult:
    R = cfg.federated.rounds
    rel = np.repeat(np.array([evaluate(start)]), R + 1, axis=0)
    return MethodResult("transfer", rel, np.zeros(R + 1), np.zeros(R + 1), [], {})


# ============================================================================================ run directory
def _plots(out: Path, results: list[MethodResult]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "plots").mkdir(parents=True, exist_ok=True)
    for xname, fname in (("round", "rel_wsr_vs_round.png"), ("bytes", "rel_wsr_vs_bytes.png")):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for k, res in enumerate(results):
            y = res.rel.mean(axis=1)
            if xname == "bytes" and not res.cum_bytes.any():  # no fl traffic: its final quality as a level
                ax.axhline(y[-1], ls="--", lw=1, color=f"C{k}", label=f"{res.label} (no fl bytes)")
                continue
            x = np.arange(len(y)) if xname == "round" else np.maximum(res.cum_bytes, 1.0)
            ax.plot(x, y, marker="o", ms=3, color=f"C{k}", label=res.label)
        if xname == "bytes":
            ax.set_xscale("log")
        ax.set_xlabel("FL round" if xname == "round" else "cumulative fl bytes")
        ax.set_ylabel("relative WSR [%], average over sites")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "plots" / fname, dpi=120)
        plt.close(fig)


def resolved(cfg: FinetuneConfig) -> dict[str, Any]:
    """The resolved configuration (defaults filled, overrides applied), valid input of ``dsim finetune``."""
    return {"seed": cfg.seed, "precision": cfg.precision, "engine": jsonable(cfg.engine, finite=False),
            "output": cfg.output, "federated": cfg.federated.model_dump(mode="json")}


def write_run(cfg: FinetuneConfig, out: Path, results: list[MethodResult], sites: list[HeldOut]) -> None:
    """config.yaml (:func:`resolved`), metrics.csv (method, round, site, rel_wsr_pct, cum_fl_bytes,
    sim_time_s; site 'average' too), overhead.csv (method, round, phase, link, messages, reals, bytes),
    summary.json, plots/."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(resolved(cfg), sort_keys=False))
    names = [s.name for s in sites]
    rows = []
    for res in results:
        for r in range(res.rel.shape[0]):
            for i, n in enumerate(names):
                rows.append((res.label, r, n, round(float(res.rel[r, i]), 6), int(res.cum_bytes[r]),
                             round(float(res.sim_time_s[r]), 6)))
            rows.append((res.label, r, "average", round(float(res.rel[r].mean()), 6), int(res.cum_bytes[r]),
                         round(float(res.sim_time_s[r]), 6)))
    write_csv(out / "metrics.csv", ["method", "round", "site", "rel_wsr_pct", "cum_fl_bytes", "sim_time_s"], rows)
    write_csv(out / "overhead.csv", ["method", "round", "phase", "link", "messages", "reals", "bytes"],
              [(res.label, row.round, row.phase, row.link, row.messages, row.reals, row.bytes)
               for res in results for row in res.ledger])
    summary = {"unit": "relative WSR in % of the reference's mean WSR on each site's held-out samples",
               "reference": jsonable(cfg.federated.reference),
               "sites": {s.name: {"reference_wsr": s.reference, "rate_unit": s.unit,
                                  "held_out_samples": s.net.batch} for s in sites},
               "methods": {res.label: {"final_rel_wsr_pct": {n: float(res.rel[-1, i]) for i, n in enumerate(names)},
                                       "final_rel_wsr_avg_pct": float(res.rel[-1].mean()),
                                       "fl_bytes": int(res.cum_bytes[-1]), "sim_time_s": float(res.sim_time_s[-1]),
                                       **jsonable(res.extra)} for res in results},
               "seed": cfg.seed, "engine": cfg.engine.kind, "wire": cfg.federated.wire,
               "versions": package_versions()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _plots(out, results)


def finetune(cfg: FinetuneConfig, progress: bool = True) -> list[MethodResult]:
    """``dsim finetune``: held-out samples and reference per site, then the comparisons and the federated
    strategies; writes the run directory ``cfg.output``; returns the results."""
    fed = cfg.federated
    start = start_vector(cfg)
    sites = held_out(cfg, progress)
    evaluate = Evaluator(cfg, sites)
    results: list[MethodResult] = []
    try:
        if fed.compare.transfer:
            results.append(run_transfer(cfg, evaluate, start))
        if fed.compare.alone:
            results.append(run_alone(cfg, evaluate, start, progress))
        if fed.compare.pooled:
            results.append(run_pooled(cfg, evaluate, start, progress))
        engine = make_engine(cfg)
        net = fl_network(len(fed.sites))
        try:
            for k in range(len(fed.strategies)):
                results.append(run_federated(cfg, k, engine, net, evaluate, start, progress)[0])
        finally:
            engine.close()
    finally:  # an interrupt or a failure keeps the methods already finished
        if results:
            write_run(cfg, Path(cfg.output), results, sites)
    return results


def finetune_main(path: str, overrides: list[str], out: str | None, engine: str | None, progress: bool) -> int:
    """``python -m dsim finetune CONFIG``: validate (a :class:`dsim.config.ConfigError` propagates to the CLI's
    one-line report), run, print one line per method and the run directory."""
    from dsim.fl_config import load_finetune

    cfg = load_finetune(path, overrides, out=out, engine=engine)
    results = finetune(cfg, progress)
    print("\n".join(summary_lines(results)))
    print(f"run directory: {cfg.output}")
    return 0


def summary_lines(results: list[MethodResult]) -> list[str]:
    """One line per method: final average relative WSR, fl bytes, simulated time."""
    return [f"{r.label:>16}: {r.rel[-1].mean():7.2f} % avg rel. WSR "
            f"({', '.join(f'{x:.2f}' for x in r.rel[-1])}), fl bytes {int(r.cum_bytes[-1]):,}, "
            f"sim time {r.sim_time_s[-1]:.3g} s" for r in results]


__all__ = ["FLFaults", "FLProgram", "MethodResult", "finetune", "fl_ledger", "fl_network", "fl_protocol",
           "local_train", "plan_faults", "run_federated"]
