"""GPU benchmark (issue 8, DESIGN §11): the same code on CUDA and on this machine's CPU, side by side.

Workloads (each on data drawn once on the CPU, then moved to the device outside the timer):

1. ``wmmse``: WMMSE (random init, ``rounds`` iterations) on ``batch`` base-scenario realizations (Tab. II)
   on the local engine, then the WSR of the final decision;
2. ``gcn_wmmse_inference``: the shipped GCN-WMMSE (L = 7) on ``batch`` base-scenario realizations;
3. ``gcn_wmmse_train_step``: one training step (forward, loss (16), backward, clipping, AdamW) on a
   minibatch of ``train_batch`` realizations;
4. ``icgnn_inference``: the shipped ICGNN on ``icgnn_batch`` topologies of the cell-free base scenario
   (L = 7 APs, N = 2, K = 5, 100 Monte-Carlo draws), statistics, the layers and the sum-SE.

Each is timed ``reps`` times after a warm-up (best and mean, CUDA synchronized before the clock stops);
the CPU column uses all the host's cores (``torch.get_num_threads()``, or ``--threads``).  Prints one JSON
object: per workload the seconds per device and ``cpu_over_cuda`` (the speed-up).  Without CUDA only the
CPU column is measured and the JSON says so (``note``).

    python benchmarks/bench_gpu.py                       # the issue's sizes: 1000 x 100, batch 100
    python benchmarks/bench_gpu.py --batch 20 --rounds 5 --icgnn-batch 20 --reps 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dsim.engine.local import LocalEngine  # noqa: E402
from dsim.learn import forward_loss, get_learnable, scenario_sampler  # noqa: E402
from dsim.registry import algorithm  # noqa: E402

MULTICELL = {"family": "multicell"}  # Tab. II base scenario
CELLFREE = {"family": "cellfree"}    # ICGNN base: L = 7, N = 2, K = 5, 100 draws


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, reps: int, warmup: Callable[[], object] | None = None
          ) -> dict[str, float]:
    """Best and mean wall time of ``fn`` over ``reps`` runs after one warm-up (``warmup`` or ``fn``)."""
    (warmup or fn)()
    sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return {"best_s": min(times), "mean_s": sum(times) / len(times)}


def run_protocol(proto, net, air, rounds: int, wire: str, device: torch.device) -> float:
    """Run ``proto`` for ``rounds`` rounds on ``device``; the mean metric (WSR / sum-SE) of the last
    round's decision, evaluated on the device."""
    last: dict[str, torch.Tensor] = {}

    def on_round(k: int, decision: torch.Tensor) -> None:
        if k == rounds:
            last["m"] = air.evaluate(decision)[0]

    with torch.no_grad():
        LocalEngine(wire, device=device).run(proto, net, air, on_round=on_round, rounds=rounds)
    return float(last["m"].mean())


def bench_inference(name: str, options: dict, scn: dict, batch: int, wire: str, devices: list[torch.device],
                    reps: int, seed: int) -> dict:
    """Protocol ``name`` (built once per device: checkpoint loading is not timed) on ``batch`` draws."""
    net0, air0 = scenario_sampler(scn)(batch, seed)
    spec = algorithm(name)
    out: dict = {"batch": batch}
    for dev in devices:
        t0 = time.perf_counter()
        net, air = net0.to(dev), air0.to(dev)
        sync(dev)
        move = time.perf_counter() - t0
        proto = spec.build(spec.options(**options), net)
        metric: list[float] = []

        def once(proto=proto, net=net, air=air, dev=dev, metric=metric) -> None:
            metric.append(run_protocol(proto, net, air, proto.rounds, wire, dev))

        def warm(proto=proto, net=net, air=air, dev=dev) -> None:
            run_protocol(proto, net, air, min(2, proto.rounds), wire, dev)

        out[dev.type] = timed(once, dev, reps, warm) | {"to_device_s": move, "metric": metric[-1]}
    out["rounds"] = proto.rounds
    return out


def bench_train_step(batch: int, devices: list[torch.device], reps: int, seed: int) -> dict:
    sample = scenario_sampler(MULTICELL)
    batches = [sample(batch, seed + t) for t in range(reps + 1)]
    out: dict = {"batch": batch}
    for dev in devices:
        learn = get_learnable("gcn_wmmse", {"checkpoint": "untrained"})
        learn.module.to(dev).train()
        hp = learn.train_defaults
        opt = torch.optim.AdamW(learn.module.parameters(), lr=hp["lr"], betas=hp["betas"],
                                weight_decay=hp["weight_decay"])
        moved = [(n.to(dev), a.to(dev)) for n, a in batches]
        it = iter(moved)

        def step(learn=learn, opt=opt, it=it, hp=hp) -> None:
            net, air = next(it)
            opt.zero_grad(set_to_none=True)
            loss, _ = forward_loss(learn, net, air)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(learn.module.parameters(), hp["clip"])
            opt.step()

        out[dev.type] = timed(step, dev, reps)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=1000, help="realizations for WMMSE and GCN-WMMSE inference")
    ap.add_argument("--rounds", type=int, default=100, help="WMMSE iterations")
    ap.add_argument("--train-batch", type=int, default=100)
    ap.add_argument("--icgnn-batch", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--wire", default="float32", help="wire policy of the local engine (the run default)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's, all cores)")
    ap.add_argument("--only", default=None, help="comma-separated workloads to run")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")]
    has_cuda = torch.cuda.is_available()
    if has_cuda:
        devices.append(torch.device("cuda"))
    work = {
        "wmmse": lambda: bench_inference("wmmse", {"init": "random", "rounds": args.rounds}, MULTICELL, args.batch,
                                         args.wire, devices, args.reps, 7),
        "gcn_wmmse_inference": lambda: bench_inference("gcn_wmmse", {}, MULTICELL, args.batch, args.wire, devices,
                                                       args.reps, 8),
        "gcn_wmmse_train_step": lambda: bench_train_step(args.train_batch, devices, args.reps, 1000),
        "icgnn_inference": lambda: bench_inference("icgnn", {}, CELLFREE, args.icgnn_batch, args.wire, devices,
                                                   args.reps, 9),
    }
    only = set(args.only.split(",")) if args.only else set(work)
    res: dict = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads(),
                    "cuda": torch.cuda.get_device_name(0) if has_cuda else None, "torch": torch.__version__},
        "settings": {k: getattr(args, k) for k in ("batch", "rounds", "train_batch", "icgnn_batch", "reps", "wire")},
    }
    if not has_cuda:
        res["note"] = ("no CUDA on this machine: CPU column only; run this on a CUDA machine for the CUDA column "
                       "and the cpu_over_cuda ratios")
    for name, fn in work.items():
        if name not in only:
            continue
        r = fn()
        if has_cuda:
            r["cpu_over_cuda"] = r["cpu"]["best_s"] / r["cuda"]["best_s"]
        res[name] = r
        print(f"{name}: " + ", ".join(f"{d}: {r[d]['best_s']:.4g} s" for d in ("cpu", "cuda") if d in r),
              file=sys.stderr)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
