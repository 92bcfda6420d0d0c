"""Declarative aggregation (dsim.protocol): ``segment_reduce``, ``group_slots`` and ``Message(aggr=...)``
against brute-force Python loops over random edge sets and masks; ``block.round`` as phases see it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dsim.air import Air
from dsim.engine.local import LocalEngine
from dsim.faults import FaultModel
from dsim.network import EdgeSet, Network
from dsim.protocol import (
    AgentBlock,
    EdgeView,
    Field,
    Inbox,
    Local,
    Measure,
    Message,
    Output,
    Protocol,
    group_slots,
    segment_reduce,
)

SETTINGS = settings(max_examples=60, deadline=None, database=None)


# ------------------------------------------------------------------------------------------- references
class _PilotAir(Air):
    """Receivers measure the sum of what the transmitters send; a decision's utility is its sum."""

    def measure(self, name: str, signals: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"y": signals["s"].sum(1, keepdim=True).expand(-1, 2)}

    def evaluate(self, decision: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return decision.sum(1), decision

    def power_ratio(self, decision: torch.Tensor) -> torch.Tensor:
        return decision.abs()

    def repeat(self, n: int) -> _PilotAir:
        return self


def ref_reduce(x: np.ndarray, index: np.ndarray, n: int, how: str, dim: int, mask: np.ndarray | None
               ) -> np.ndarray:
    """out[..., j, ...] = how over {e : index[e] == j, mask[..., e] true} of x[..., e, ...]; no item -> 0."""
    xs = np.moveaxis(x, dim, 0)  # items first: (E, *lead, *tail)
    lead = x.shape[:dim]
    m = None if mask is None else np.broadcast_to(mask, x.shape[: dim + 1])
    out = np.zeros((n,) + xs.shape[1:], dtype=x.dtype)
    for j in range(n):
        for pos in np.ndindex(*lead):
            picked = [xs[(e,) + pos] for e in range(len(index))
                      if index[e] == j and (m is None or m[pos + (e,)])]
            if not picked:
                continue
            if how == "sum":
                val = sum(picked[1:], picked[0])
            elif how == "mean":
                val = sum(picked[1:], picked[0]) / len(picked)
            else:
                val = picked[0]
                for p in picked[1:]:
                    val = np.maximum(val, p)
            out[(j,) + pos] = val
    return np.moveaxis(out, 0, dim)


def ref_slots(index: list[int]) -> tuple[list[int], int]:
    """Position of each item among the earlier items with the same index; largest group (0 if none)."""
    slot = [sum(1 for f in range(e) if index[f] == index[e]) for e in range(len(index))]
    counts = [index.count(j) for j in set(index)]
    return slot, max(counts, default=0)


@st.composite
def reduce_case(draw):
    n = draw(st.integers(1, 5))
    E = draw(st.integers(0, 9))
    index = draw(st.lists(st.integers(0, n - 1), min_size=E, max_size=E))
    dim = draw(st.integers(0, 2))
    lead = tuple(draw(st.lists(st.integers(1, 3), min_size=dim, max_size=dim)))
    tail = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=2 - dim if dim < 2 else 1)))
    how = draw(st.sampled_from(["sum", "mean", "max"]))
    cplx = how != "max" and draw(st.booleans())
    masked = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    return n, index, dim, lead, tail, how, cplx, masked, seed


@SETTINGS
@given(reduce_case())
def test_segment_reduce_equals_brute_force(case):
    n, index, dim, lead, tail, how, cplx, masked, seed = case
    rng = np.random.default_rng(seed)
    shape = lead + (len(index),) + tail
    x = rng.standard_normal(shape)
    if cplx:
        x = x + 1j * rng.standard_normal(shape)
    # masks broadcast over the leading dims (one row shared by all) or are full
    mshape = (1,) * dim + (len(index),) if rng.random() < 0.3 else lead + (len(index),)
    mask = rng.random(mshape) < 0.6 if masked else None
    idx = torch.tensor(index, dtype=torch.int64)
    got = segment_reduce(torch.from_numpy(x), idx, n, how, dim=dim,
                         mask=None if mask is None else torch.from_numpy(mask))
    want = ref_reduce(x, np.array(index, dtype=np.int64), n, how, dim, mask)
    assert got.shape == want.shape and got.dtype == torch.from_numpy(x).dtype
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


def test_segment_reduce_empty_slots_are_zero_and_max_ignores_masked():
    x = torch.tensor([[-3.0, -1.0, 5.0, -7.0]])  # (B=1, E=4)
    idx = torch.tensor([0, 0, 2, 2])
    mask = torch.tensor([[True, True, False, True]])
    for how, want in (("sum", [-4.0, 0.0, -7.0]), ("mean", [-2.0, 0.0, -7.0]), ("max", [-1.0, 0.0, -7.0])):
        assert segment_reduce(x, idx, 3, how, mask=mask).tolist() == [want], how
    with pytest.raises(ValueError, match="aggregation"):
        segment_reduce(x, idx, 3, "min")


@SETTINGS
@given(st.integers(1, 6).flatmap(lambda n: st.tuples(st.just(n), st.lists(st.integers(0, n - 1), max_size=15))))
def test_group_slots_equals_brute_force(case):
    n, index = case
    slot, most = group_slots(torch.tensor(index, dtype=torch.int64), n)
    want_slot, want_most = ref_slots(index)
    assert slot.tolist() == want_slot and most == want_most


# ------------------------------------------------------------------------------------------- host level
FIELDS = (Field("v", "real", (2,)),)


def _net(n_a: int, n_b: int, src: list[int], dst: list[int], mask: np.ndarray) -> Network:
    B = mask.shape[0]
    es = EdgeSet("a>b", "a", "b", "ul", torch.tensor(src, dtype=torch.int64), torch.tensor(dst, dtype=torch.int64),
                 torch.from_numpy(mask))
    return Network("toy", B, {"a": n_a, "b": n_b}, {"a>b": es}, {}, {"batch": B, "seed": 5})


def _init_a(block: AgentBlock) -> None:
    block.state["x"] = torch.randn(block.batch, block.n, 2, generator=block.generator(1), dtype=torch.float64)


def _send(block: AgentBlock, ev: EdgeView) -> dict[str, torch.Tensor]:
    """Differs per edge and per round, so a stale (substituted) message is visible."""
    return {"v": ev.gather_src(block.state["x"]) * (1 + block.round) + 0.1 * ev.eid.to(torch.float64)[None, :, None]}


def _proto(aggr: str) -> Protocol:
    key = "raw" if aggr == "none" else "agg"

    def init_b(block: AgentBlock) -> None:
        n = block.edges["a>b"].size if aggr == "none" else block.n
        block.state[key] = torch.zeros(block.batch, n, 2, dtype=torch.float64)

    def receive(block: AgentBlock, inbox: Inbox) -> None:
        block.state[key] = inbox["v"]

    out = Output("b", key, "a>b" if aggr == "none" else "agents")
    return Protocol("agg-" + aggr, ("a", "b"), {"a": _init_a, "b": init_b},
                    [Message("m", "a>b", FIELDS, _send, receive, aggr=aggr)], 3, out)


def _decisions(proto: Protocol, net: Network, faults: FaultModel) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    LocalEngine("float64", faults).run(proto, net, _PilotAir(), on_round=lambda r, d: out.append(d))
    return out


@st.composite
def edge_case(draw):
    n_a, n_b = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    E = draw(st.integers(0, 8))
    src = draw(st.lists(st.integers(0, n_a - 1), min_size=E, max_size=E))
    dst = draw(st.lists(st.integers(0, n_b - 1), min_size=E, max_size=E))
    B = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    return n_a, n_b, src, dst, B, seed


@settings(max_examples=25, deadline=None, database=None)
@given(edge_case(), st.sampled_from(["sum", "mean", "max"]), st.sampled_from([0.0, 0.4]))
def test_host_aggregation_equals_manual_reduce_of_the_inbox(case, how, loss):
    """Message(aggr=how) hands each receiver the reduction over its present in-edges of exactly the
    per-edge inbox an aggr='none' phase sees (after lost-message substitution); no in-edge -> 0."""
    n_a, n_b, src, dst, B, seed = case
    mask = np.random.default_rng(seed).random((B, len(src))) < 0.7
    net = _net(n_a, n_b, src, dst, mask)
    faults = FaultModel(message_loss=loss, seed=seed % 1000)
    raw = _decisions(_proto("none"), net, faults)
    agg = _decisions(_proto(how), net, faults)
    for r in range(1, 4):
        want = ref_reduce(raw[r].numpy(), np.array(dst, dtype=np.int64), n_b, how, 1, mask)
        np.testing.assert_allclose(agg[r].numpy(), want, rtol=1e-12, atol=1e-12)


def test_sum_over_single_in_edge_is_agent_order():
    """One in-edge per receiver, edges listed out of receiver order: 'sum' gives each agent its message."""
    net = _net(3, 3, [0, 1, 2], [2, 0, 1], np.ones((2, 3), dtype=bool))
    raw, agg = _decisions(_proto("none"), net, FaultModel()), _decisions(_proto("sum"), net, FaultModel())
    order = torch.tensor([1, 2, 0])  # receiver j's edge
    torch.testing.assert_close(agg[-1], raw[-1][:, order], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------- block.round
def _log(block: AgentBlock, tag: str) -> None:
    block.state.setdefault("log", []).append((tag, block.round))


def test_block_round_is_zero_at_init_and_r_in_round_r():
    net = _net(1, 2, [0, 0], [0, 1], np.ones((1, 2), dtype=bool))

    def init(block: AgentBlock) -> None:
        _log(block, "init")
        block.state["d"] = torch.zeros(1, block.n)

    def transmit(block: AgentBlock) -> dict[str, torch.Tensor]:
        _log(block, "transmit")
        return {"s": torch.ones(1, block.n)}

    def send(block: AgentBlock, ev: EdgeView) -> dict[str, torch.Tensor]:
        _log(block, "send")
        return {"v": torch.zeros(1, ev.size, 2, dtype=torch.float64)}

    phases = [
        Measure("pilots", "a", "b", transmit, "agents", "pilots", lambda b, m: _log(b, "measured"), lambda i: 1),
        Local("think", "b", lambda b: _log(b, "compute")),
        Message("m", "a>b", FIELDS, send, lambda b, inbox: _log(b, "receive"), when="last"),
    ]
    proto = Protocol("rounds", ("a", "b"), {"a": init, "b": init}, phases, 3, Output("b", "d"))
    eng = LocalEngine("float64")
    eng.run(proto, net, _PilotAir())
    a, b = eng.block("a").state["log"], eng.block("b").state["log"]
    assert a == [("init", 0)] + [("transmit", r) for r in (1, 2)] + [("transmit", 3), ("send", 3)]
    assert b == [("init", 0)] + [x for r in (1, 2, 3) for x in (("measured", r), ("compute", r))] + [("receive", 3)]


@settings(max_examples=20, deadline=None, database=None)
@given(edge_case(), st.sampled_from(["sum", "mean", "max"]))
def test_silent_exclude_reduces_over_the_messages_that_arrived(case, how):
    """silent='exclude': the receiver's aggregate is the reduction over its in-edges that are present AND
    whose message of this round arrived (the fault model's own draw), i.e. lost messages count as absent."""
    n_a, n_b, src, dst, B, seed = case
    mask = np.random.default_rng(seed).random((B, len(src))) < 0.8
    net = _net(n_a, n_b, src, dst, mask)
    faults = FaultModel(message_loss=0.4, seed=seed % 1000)
    raw = _decisions(_proto("none"), net, FaultModel())  # fresh messages every round
    proto = _proto(how)
    proto.phases[0].silent = "exclude"
    agg = _decisions(proto, net, faults)
    eids = torch.arange(len(src))
    for r in range(1, 4):
        ok = faults.delivered(r, 0, eids, B, len(src)).numpy()
        want = ref_reduce(raw[r].numpy(), np.array(dst, dtype=np.int64), n_b, how, 1, mask & ok)
        np.testing.assert_allclose(agg[r].numpy(), want, rtol=1e-12, atol=1e-12)
