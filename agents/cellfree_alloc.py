"""Cell-free power allocation protocols: ``equal``, ``lsf`` (AP-local) and ``wmmse_admm`` (at the CPU).

Decision: powers p (B, L, K) [W] held by the APs (AP l's row: p_kl for every UE k), evaluated by the
SE bound (23)–(24) of the ICGNN paper (bit/s/Hz).  The math lives in ``agents.cellfree_power`` (the
allocations) and ``dsim.scenarios.cellfree`` (precoders, statistics, SE); this module only says who
computes what and what travels.

* ``equal`` / ``lsf``: one local round at every AP, no fronthaul (DESIGN §7 formulas).
* ``wmmse_admm`` (Chakraborty et al. 2021): round 1 -- every AP uploads its statistics over ``fh``
  (E{h_kl^H w̄_il}: K x K complex, E{|h_kl^H w̄_il|^2}: K x K real = 3K^2 reals); every round the CPU
  runs one outer WMMSE iteration (closed-form receiver and weight, inner ADMM with per-AP ball
  projection run to convergence) and sends each AP its K powers over ``fh``.  Round 0 = equal power,
  the algorithm's initial point.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from agents.cellfree_power import WmmseAdmmState, equal_power, lsf_power, wmmse_admm_init, wmmse_admm_step
from dsim.protocol import AgentBlock, EdgeView, Inbox, Local, Message, Output, Protocol
from dsim.protocol import Field as MsgField
from dsim.registry import AlgorithmSpec, register_algorithm
from dsim.scenarios.cellfree import combine_statistics

Tensor = torch.Tensor


def ap_local_statistics(block: AgentBlock) -> tuple[Tensor, Tensor]:
    """An AP's Monte-Carlo statistics of eq. (25) from its own channels and L-MMSE precoders (22): (mean,
    second) (B, n, K, K) each -- local data of the AP (the family computes them once per scenario with
    :func:`dsim.scenarios.cellfree.ap_statistics`)."""
    return block.local["mean"], block.local["second"]


def equal_ap(block: AgentBlock) -> Tensor:
    """Equal power (:func:`agents.cellfree_power.equal_power`) for the block's APs, AP-major -> (B, n, K)."""
    P = block.local["power"]  # (B, n)
    return equal_power(block.batch, block.info["n_ues"], P).transpose(1, 2).contiguous()


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _zero_init(block: AgentBlock) -> None:
    block.state["p"] = torch.zeros(block.batch, block.n, block.info["n_ues"], dtype=block.info["real_dtype"],
                                   device=block.device)


def build_equal(opts: NoOptions, net) -> Protocol:
    def alloc(block: AgentBlock) -> None:
        block.state["p"] = equal_ap(block)

    return Protocol("equal", ("ap",), {"ap": _zero_init}, [Local("ap_alloc", "ap", alloc)], 1,
                    Output("ap", "p"), unit="bit/s/Hz")


def build_lsf(opts: NoOptions, net) -> Protocol:
    def alloc(block: AgentBlock) -> None:
        beta = block.local["beta"].transpose(1, 2)  # (B, K, n)
        block.state["p"] = lsf_power(beta, block.local["power"]).transpose(1, 2).contiguous()

    return Protocol("lsf", ("ap",), {"ap": _zero_init}, [Local("ap_alloc", "ap", alloc)], 1,
                    Output("ap", "p"), unit="bit/s/Hz")


class WmmseAdmmOptions(BaseModel):
    """YAML options of ``name: wmmse_admm``."""

    model_config = ConfigDict(extra="forbid")
    rounds: int = Field(100, ge=1, description="outer WMMSE iterations = rounds")
    inner_tol: float | None = Field(None, gt=0, description="relative primal/dual residual tolerance of the "
                                    "inner ADMM; default 1e-9 in double, 1e-5 in single precision")
    max_inner: int = Field(5000, ge=1)
    rho: float | None = Field(None, gt=0, description="ADMM penalty; default relative to the scale of A_k")


def build_wmmse_admm(opts: WmmseAdmmOptions, net) -> Protocol:
    K = int(net.info["n_ues"])
    tau_c, tau_d = int(net.info["tau_c"]), int(net.info["tau_d"])

    def init_ap(block: AgentBlock) -> None:
        block.state["mean"], block.state["second"] = ap_local_statistics(block)
        block.state["p"] = equal_ap(block)

    def send_stats(block: AgentBlock, ev: EdgeView) -> dict[str, Tensor]:
        return {"mean": ev.gather_src(block.state["mean"]), "second": ev.gather_src(block.state["second"])}

    def recv_stats(block: AgentBlock, inbox: Inbox) -> None:
        block.state["mean_in"], block.state["second_in"] = inbox["mean"], inbox["second"]

    def cpu_step(block: AgentBlock) -> None:
        noise, power = block.local["noise"][:, 0], block.local["power"][:, 0]
        if "admm" not in block.state:
            a, Bm = combine_statistics(block.state["mean_in"], block.state["second_in"])
            block.state["a"], block.state["Bmat"] = a, Bm
            block.state["admm"] = wmmse_admm_init(a, Bm, noise, power, None, tau_c=tau_c, tau_d=tau_d)
        st: WmmseAdmmState = block.state["admm"]
        block.state["admm"] = wmmse_admm_step(st, block.state["a"], block.state["Bmat"], noise, power, None,
                                              inner_tol=opts.inner_tol, max_inner=opts.max_inner, rho=opts.rho,
                                              tau_c=tau_c, tau_d=tau_d)

    def send_powers(block: AgentBlock, ev: EdgeView) -> dict[str, Tensor]:
        p = block.state["admm"].p  # (B, K, L)
        return {"p": p.transpose(1, 2).index_select(1, ev.dst)}

    def recv_powers(block: AgentBlock, inbox: Inbox) -> None:
        block.state["p"] = inbox["p"]  # aggr="sum" over each AP's single in-edge: (B, n, K) in agent order

    phases = [
        Message("fh_stats", "ap>cpu", (MsgField("mean", "complex", (K, K)), MsgField("second", "real", (K, K))),
                send_stats, recv_stats, when="first"),
        Local("cpu_wmmse_admm", "cpu", cpu_step),
        Message("fh_powers", "cpu>ap", (MsgField("p", "real", (K,)),), send_powers, recv_powers, aggr="sum"),
    ]
    return Protocol("wmmse_admm", ("ap", "cpu"), {"ap": init_ap}, phases, opts.rounds, Output("ap", "p"),
                    unit="bit/s/Hz")


register_algorithm(AlgorithmSpec("equal", ("cellfree",), NoOptions, build_equal,
                                 "equal power p_kl = P_t/K at every AP"))
register_algorithm(AlgorithmSpec("lsf", ("cellfree",), NoOptions, build_lsf,
                                 "large-scale-fading power p_kl = P_t sqrt(beta_kl) / sum_i sqrt(beta_il)"))
register_algorithm(AlgorithmSpec("wmmse_admm", ("cellfree",), WmmseAdmmOptions, build_wmmse_admm,
                                 "WMMSE-ADMM (Chakraborty et al. 2021) at the CPU from the APs' fronthaul statistics"))
