"""``dsim train``: unsupervised training of a learnable protocol on the local engine (GCN-WMMSE Sec. III-C).

Generic over a *learnable protocol*: the module that registers algorithm ``name`` provides
``learnable(options: dict) -> Learnable`` (see :class:`agents.gcn_wmmse.Learnable`: an ``nn.Module`` of
parameters, ``protocol(net)`` building a differentiable protocol from them, ``observe(net)`` for running
statistics, ``hparams``).  One training loop serves every such protocol.

Per step t (all defaults from the paper's Tab. I):
* a fresh minibatch of ``batch`` scenario realizations, drawn with seed ``seed * 1_000_003 + t`` (so a
  resumed run sees exactly the batches of an uninterrupted one);
* the protocol runs on the local engine (float64 wire: autograd flows through), the decision after
  every round in ``layers_in_loss`` (default {L}, the last) is evaluated on the air;
* loss (16): J = -1/(|T||L|) sum_n sum_l R_n^(l) / |R_n^(l)|, the magnitude detached (per-sample
  normalization).  Its value is always -1; the log reports ``loss`` = -mean WSR over the loss layers
  (nat/Hz), the quantity being maximized.  A learnable may bring its own loss (``Learnable.loss``, e.g.
  ICGNN's (28) = -mean sum-SE in bit/s/Hz);
* AdamW (betas, weight decay), gradient-norm clipping, lr divided by 10 every ``lr_decay_every`` steps.
A non-finite loss or gradient raises :class:`TrainingDiverged` naming the step, after saving the last
good state to ``checkpoint.pt`` (never a silent skip).  Validation on a fixed set (seed
``seed * 1_000_003 - 1``) every ``val_every`` steps.  Outputs in ``out_dir``: ``checkpoint.pt`` (resumes
exactly), ``train_log.csv``, ``train_curve.png``.  Validation runs the module in eval mode, after the
learnable's optional ``calibrate(sample, seed)`` (e.g. re-estimating running statistics at the current
weights; the last step always validates, so the final checkpoint is calibrated).
:func:`fine_tune` reuses the same forward/loss (:func:`forward_loss`) for a few plain Adam steps without
checkpoints (adaptation of a trained model to a new configuration).
"""

from __future__ import annotations

import csv
import importlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

Tensor = torch.Tensor
Sampler = Callable[[int, int], tuple[Any, Any]]  # (batch, seed) -> (net, air)

LOG_FIELDS = ("step", "lr", "loss", "train_wsr", "val_wsr", "grad_norm", "step_s")


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient; the message names the step and the checkpoint kept."""


class TrainOptions(BaseModel):
    """The YAML's top-level ``train:`` mapping (defaults: GCN-WMMSE paper, Tab. I)."""

    model_config = ConfigDict(extra="forbid")
    algorithm: str = Field("gcn_wmmse", description="registered name of the learnable protocol")
    options: dict[str, Any] = Field(default_factory=dict, description="its options (e.g. layers, degree)")
    steps: int = Field(10_000, ge=0, description="training steps T")
    batch: int = Field(100, ge=1, description="fresh realizations per step |T_t|")
    lr: float = Field(0.01, gt=0)
    lr_decay_every: int = Field(2500, ge=1, description="lr divided by 10 every this many steps")
    lr_decay: float = Field(0.1, gt=0)
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = Field(1e-3, ge=0)
    clip: float = Field(1.0, gt=0, description="gradient-norm clipping value")
    layers_in_loss: list[int] | None = Field(None, description="rounds l in the loss set; default [L]")
    val_every: int = Field(100, ge=1)
    val_size: int = Field(500, ge=1, description="fixed validation realizations (paper: 1000)")
    seed: int | None = Field(None, description="training-data seed; default: the config's seed")
    checkpoint_every: int = Field(50, ge=1)
    threads: int | None = Field(None, ge=1, description="torch threads (default: torch's)")
    progress: bool = True


# ------------------------------------------------------------------------------------------ pieces
def get_learnable(name: str, options: dict[str, Any]):
    """The :class:`Learnable` of registered algorithm ``name`` (its module's ``learnable(options)``)."""
    from agents import registry

    spec = registry.get(name)
    mod = importlib.import_module(spec.build.__module__)
    if not hasattr(mod, "learnable"):
        raise ValueError(f"algorithm {name!r} is not learnable (its module has no `learnable`)")
    return mod.learnable(options)


def wsr_per_round(proto, net, air, rounds: list[int]) -> dict[int, Tensor]:
    """Run ``proto`` on the local engine (float64 wire) -> {round: WSR (B,)} for the requested rounds."""
    from dsim.engine.local import LocalEngine

    want, out = set(rounds), {}

    def on_round(r: int, V: Tensor) -> None:
        if r in want:
            out[r] = air.evaluate(V)[0]

    LocalEngine("float64").run(proto, net, air, on_round=on_round)
    return out


def normalized_loss(wsr: dict[int, Tensor]) -> Tensor:
    """Loss (16): mean over samples and layers of -R / |R| with |R| detached."""
    terms = [-(w / w.detach().abs().clamp_min(torch.finfo(w.dtype).tiny)) for w in wsr.values()]
    return torch.stack(terms).mean()


def _batch_seed(seed: int, step: int) -> int:
    return seed * 1_000_003 + step


def loss_of(learn) -> Callable[[dict[int, Tensor]], Tensor]:
    """The training loss of ``learn``: its own ``loss`` attribute when it has one (e.g. ICGNN's (28), -mean
    sum-SE), else the normalized loss (16)."""
    return getattr(learn, "loss", None) or normalized_loss


def forward_loss(learn, net, air, layers_in_loss: list[int] | None = None) -> tuple[Tensor, dict[int, Tensor]]:
    """One differentiable forward pass of ``learn`` on a minibatch: (loss, {round: WSR (B,)}).

    Calls ``learn.observe(net)`` first; the loss is taken at the rounds ``layers_in_loss`` (default: the last).
    """
    learn.observe(net)
    proto = learn.protocol(net)
    rounds = layers_in_loss or [proto.rounds]
    bad = [r for r in rounds if not 1 <= r <= proto.rounds]
    if bad:
        raise ValueError(f"train.layers_in_loss: rounds {bad} outside 1..{proto.rounds}")
    wsr = wsr_per_round(proto, net, air, rounds)
    return loss_of(learn)(wsr), wsr


def fine_tune(learn, sample: Sampler, steps: int, *, batch: int, seed: int, lr: float = 1e-3,
              betas: tuple[float, float] = (0.9, 0.999), clip: float | None = None,
              layers_in_loss: list[int] | None = None) -> dict[str, float]:
    """``steps`` plain Adam steps of ``learn``'s loss on fresh minibatches ``sample(batch, seed*1_000_003+t)``
    (t = 1..steps), no checkpoints or logs: the adaptation of a trained model to a new configuration
    (ICGNN Sec. V-B, "four gradient descents").  The module is left in the mode it was in.

    Returns {"steps", "samples" (realizations drawn), "wall_s" (sampling included), "loss_first",
    "loss_last"}.  A non-finite loss or gradient raises :class:`TrainingDiverged`.
    """
    t0 = time.perf_counter()
    module = learn.module
    opt = torch.optim.Adam(module.parameters(), lr=lr, betas=betas)
    losses = []
    for step in range(1, steps + 1):
        net, air = sample(batch, _batch_seed(seed, step))
        opt.zero_grad(set_to_none=True)
        loss, _ = forward_loss(learn, net, air, layers_in_loss)
        loss.backward()
        params = [p for p in module.parameters() if p.grad is not None]
        gnorm = (float(torch.nn.utils.clip_grad_norm_(params, clip)) if clip is not None
                 else float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))) if params
                 else 0.0)
        lval = float(loss.detach())
        if not (math.isfinite(lval) and math.isfinite(gnorm)):
            raise TrainingDiverged(f"non-finite loss/gradient at fine-tuning step {step} (loss {lval}, "
                                   f"grad norm {gnorm})")
        opt.step()
        losses.append(lval)
    return {"steps": steps, "samples": steps * batch, "wall_s": time.perf_counter() - t0,
            "loss_first": losses[0] if losses else float("nan"), "loss_last": losses[-1] if losses else float("nan")}


def validate(learn, net, air) -> float:
    """Mean WSR at the last round of ``learn``'s protocol on a fixed validation set (net, air).

    Runs the module in eval mode (running statistics of normalization layers, none updated), then
    restores its mode."""
    module = getattr(learn, "module", None)
    was = module.training if module is not None else False
    if module is not None:
        module.eval()
    try:
        with torch.no_grad():
            proto = learn.protocol(net)
            return float(wsr_per_round(proto, net, air, [proto.rounds])[proto.rounds].mean())
    finally:
        if module is not None:
            module.train(was)


# ------------------------------------------------------------------------------------------ checkpoints
def save_checkpoint(path: Path, learn, opt, sched, step: int, log: list[dict], meta: dict) -> None:
    """Atomic write of everything needed to resume exactly (and to load the model for inference)."""
    ck = {"step": step, "model": learn.module.state_dict(), "hparams": dict(learn.hparams),
          "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "log": log, "meta": meta}
    tmp = path.with_suffix(".tmp")
    torch.save(ck, tmp)
    tmp.replace(path)


def read_checkpoint(path: str | Path, shipped: Path, algorithm: str, train_config: str) -> dict[str, Any]:
    """A checkpoint file as a dict (``hparams``, ``model``, ...); ``path`` 'shipped' means ``shipped``.

    A missing file is a ``FileNotFoundError`` that says how to produce one.
    """
    path = shipped if str(path) == "shipped" else Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{algorithm} checkpoint {path} not found (train one: python -m dsim train "
                                f"{train_config})")
    return torch.load(path, map_location="cpu", weights_only=True)


def _write_log(path: Path, log: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        w.writeheader()
        for row in log:
            w.writerow({k: row.get(k, "") for k in LOG_FIELDS})


def plot_curve(path: Path, log: list[dict], unit: str = "nat/Hz") -> None:
    """Training WSR (moving average over 50 steps) and validation WSR vs step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in log]
    tr = [r["train_wsr"] for r in log]
    k = 50
    ma = [sum(tr[max(0, i - k + 1): i + 1]) / len(tr[max(0, i - k + 1): i + 1]) for i in range(len(tr))]
    val = [(r["step"], r["val_wsr"]) for r in log if r.get("val_wsr") not in (None, "")]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(steps, tr, color="0.8", lw=0.6, label="train (minibatch)")
    ax.plot(steps, ma, color="C0", label=f"train ({k}-step mean)")
    if val:
        ax.plot([v[0] for v in val], [v[1] for v in val], "o-", color="C3", ms=3, label="validation")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"mean WSR at the last layer [{unit}]")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ the loop
def train(learn, sample: Sampler, opts: TrainOptions, out_dir: Path, seed: int, resume: bool = False,
          meta: dict | None = None) -> Path:
    """Train ``learn`` on minibatches ``sample(batch, seed) -> (net, air)``; returns the checkpoint path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ck_path = out_dir / "checkpoint.pt"
    if opts.threads:
        torch.set_num_threads(opts.threads)
    module = learn.module
    opt = torch.optim.AdamW(module.parameters(), lr=opts.lr, betas=opts.betas, weight_decay=opts.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=opts.lr_decay_every, gamma=opts.lr_decay)
    log: list[dict] = []
    start = 0
    meta = dict(meta or {}) | {"train_options": opts.model_dump(mode="json"), "seed": seed}
    if resume:
        if not ck_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ck_path}")
        ck = torch.load(ck_path, map_location="cpu", weights_only=True)
        module.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        start, log = int(ck["step"]), list(ck["log"])
    module.train()
    val_net, val_air = sample(opts.val_size, _batch_seed(seed, -1))
    bar = None
    if opts.progress:
        from tqdm import tqdm

        bar = tqdm(total=opts.steps, initial=start, desc=f"train {opts.algorithm}", unit="step")
    step = start
    try:
        for step in range(start + 1, opts.steps + 1):
            t0 = time.perf_counter()
            net, air = sample(opts.batch, _batch_seed(seed, step))
            opt.zero_grad(set_to_none=True)
            try:
                loss, wsr = forward_loss(learn, net, air, opts.layers_in_loss)
                loss.backward()
            except torch.linalg.LinAlgError as exc:  # NaN/inf reached a decomposition
                save_checkpoint(ck_path, learn, opt, sched, step - 1, log, meta)
                msg = (f"linear-algebra failure (non-finite values?) at training step {step}: {exc}; "
                       f"last good state (step {step - 1}) saved to {ck_path}")
                raise TrainingDiverged(msg) from exc
            grads = [p.grad for p in module.parameters() if p.grad is not None]
            gnorm = float(torch.nn.utils.clip_grad_norm_(module.parameters(), opts.clip))
            lval = float(loss.detach())
            finite = math.isfinite(lval) and math.isfinite(gnorm) and all(bool(torch.isfinite(g).all())
                                                                          for g in grads)
            if not finite:
                save_checkpoint(ck_path, learn, opt, sched, step - 1, log, meta)
                raise TrainingDiverged(f"non-finite loss/gradient at training step {step} (loss {lval}, grad "
                                       f"norm {gnorm}); last good state (step {step - 1}) saved to {ck_path}")
            opt.step()
            sched.step()
            mean_wsr = torch.stack([w.detach() for w in wsr.values()]).mean()
            row = {"step": step, "lr": opt.param_groups[0]["lr"], "loss": -float(mean_wsr),
                   "train_wsr": float(wsr[max(wsr)].detach().mean()), "grad_norm": gnorm}
            if step % opts.val_every == 0 or step == opts.steps:
                if getattr(learn, "calibrate", None) is not None:  # e.g. re-estimate batch-norm statistics
                    learn.calibrate(sample, seed)
                row["val_wsr"] = validate(learn, val_net, val_air)
            row["step_s"] = time.perf_counter() - t0
            log.append(row)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(wsr=f"{row['train_wsr']:.2f}", val=f"{row.get('val_wsr', float('nan')):.2f}")
            if step % opts.checkpoint_every == 0 or step == opts.steps:
                save_checkpoint(ck_path, learn, opt, sched, step, log, meta)
                _write_log(out_dir / "train_log.csv", log)
    finally:
        if bar is not None:
            bar.close()
        if log:
            _write_log(out_dir / "train_log.csv", log)
            plot_curve(out_dir / "train_curve.png", log, getattr(val_air, "unit", "nat/Hz"))
    if not ck_path.exists() or step == start:
        save_checkpoint(ck_path, learn, opt, sched, step, log, meta)
    return ck_path


# ------------------------------------------------------------------------------------------ config glue
def _get(obj: Any, key: str, default: Any = None) -> Any:
    return obj.get(key, default) if isinstance(obj, dict) else getattr(obj, key, default)


def scenario_sampler(scenario: Any, precision: str = "double") -> Sampler:
    """(batch, seed) -> (net, air) for a scenario config (pydantic model or plain dict with ``family``)."""
    from types import SimpleNamespace

    from dsim.scenarios.build import build_scenario, generate_channels

    scn = SimpleNamespace(**scenario) if isinstance(scenario, dict) else scenario

    def sample(batch: int, seed: int):
        family, ch = generate_channels(scn, batch, seed, precision)
        s = build_scenario(family, ch, None, seed)
        return s.net, s.air

    return sample


def train_main(cfg: Any, out_dir: Path, resume: bool = False) -> Path:
    """``dsim train``: train the config's ``train:`` section on its scenario; returns the checkpoint path.

    ``cfg`` is a :class:`dsim.config.RunConfig` or a plain dict with keys seed, precision, scenario, train.
    Writes out_dir/checkpoint.pt, train_log.csv, train_curve.png.
    """
    opts = TrainOptions(**(_get(cfg, "train") or {}))
    seed = opts.seed if opts.seed is not None else int(_get(cfg, "seed", 0))
    precision = _get(cfg, "precision", "double")
    learn = get_learnable(opts.algorithm, opts.options)
    sample = scenario_sampler(_get(cfg, "scenario"), precision)
    scn = _get(cfg, "scenario")
    scn_dump = scn if isinstance(scn, dict) else scn.model_dump(mode="json")
    return train(learn, sample, opts, Path(out_dir), seed, resume=resume,
                 meta={"algorithm": opts.algorithm, "scenario": scn_dump, "precision": precision})
