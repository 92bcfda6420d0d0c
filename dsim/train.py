"""``dsim train``: unsupervised training of a learnable protocol on the local engine.

Generic over a *learnable protocol* (:mod:`dsim.learn`): the registered algorithm ``train.algorithm``
provides ``AlgorithmSpec.learnable(options) -> Learnable`` (its parameter module, ``protocol(net)``
building a differentiable protocol from them, ``observe(net)`` for running statistics, ``hparams``, its
loss and ``calibrate``).  One training loop serves every such protocol; the fields of
:class:`TrainOptions` that belong to the model (lr, batch, steps, ...) default to the learnable's
``train_defaults`` (its paper's values).

Per step t:
* a fresh minibatch of ``batch`` scenario realizations, drawn with seed ``seed * 1_000_003 + t`` (so a
  resumed run sees exactly the batches of an uninterrupted one); with ``train_samples: n`` instead
  ``batch`` of a fixed training set of n realizations (:func:`dsim.learn.pool_sampler`, set drawn with
  seed ``seed * 1_000_003 - 2``, the choice with ``seed * 1_000_003 + t``); validation is always fresh;
* the protocol runs on the local engine (float64 wire: autograd flows through), the decision after
  every round in ``layers_in_loss`` (default {L}, the last) is evaluated on the air
  (:func:`dsim.evaluate.evaluate_rounds`) and the learnable's loss taken over them
  (:func:`dsim.learn.forward_loss`; default the normalized loss :func:`dsim.learn.normalized_loss`).
  The log reports ``loss`` = -mean WSR over the loss rounds (in the air's unit), the quantity maximized;
* AdamW (betas, weight decay) or RMSProp (``optimizer: rmsprop``, torch's defaults: smoothing 0.99,
  eps 1e-8; weight decay), gradient-norm clipping, lr multiplied by ``lr_decay`` every
  ``lr_decay_every`` steps;
* on ``device`` (cpu | cuda | auto): the module, the minibatches (drawn on the CPU as always, so a seed
  gives the same data everywhere) and the evaluation; checkpoints are saved on the CPU.
A non-finite loss or gradient raises :class:`TrainingDiverged` naming the step, after saving the last
good state to ``checkpoint.pt`` (never a silent skip).  Validation on a fixed set (seed
``seed * 1_000_003 - 1``) every ``val_every`` steps and at the last step, in eval mode, after the
learnable's ``calibrate(sample, seed)`` (e.g. re-estimating batch-norm statistics at the current
weights; so the final checkpoint is calibrated).  Outputs in ``out_dir``: ``checkpoint.pt`` (resumes
exactly; :func:`dsim.learn.save_checkpoint`), ``train_log.csv``, ``train_curve.png``; with ``keep_best``
also ``best.pt`` (the model at the best validation so far: early stopping chosen on validation data only).
A fixed training set may be augmented (``augment``): each minibatch passes through one of the scenario
family's transforms (``FamilySpec.augment``), drawn from the minibatch's seed.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import ConfigDict, Field

from dsim.devices import resolve_device
from dsim.evaluate import evaluate_rounds
from dsim.jit import compile_unavailable, compiling
from dsim.learn import (
    Learnable,
    Sampler,
    TrainingDiverged,
    batch_seed,
    forward_loss,
    freeze_norm,
    get_learnable,
    load_checkpoint,
    pool_sampler,
    save_checkpoint,
    scenario_sampler,
)
from dsim.registry import CrossChecked, OptionError
from dsim.results import write_csv

LOG_FIELDS = ("step", "lr", "loss", "train_wsr", "val_wsr", "grad_norm", "step_s")
#: the fields whose default is the learned model's (``Learnable.train_defaults``)
MODEL_FIELDS = ("steps", "batch", "lr", "lr_decay_every", "lr_decay", "betas", "weight_decay", "clip")


class TrainOptions(CrossChecked):
    """The YAML's top-level ``train:`` mapping.  Fields left None default to the learnable's
    ``train_defaults`` (:data:`MODEL_FIELDS`, filled by :func:`resolve_options`).  ``vary`` and
    ``train_samples`` exclude each other (:meth:`cross_errors`)."""

    model_config = ConfigDict(extra="forbid")
    algorithm: str = Field(description="registered name of the learnable protocol")
    options: dict[str, Any] = Field(default_factory=dict, description="its options (e.g. layers)")
    steps: int | None = Field(None, ge=0, description="training steps T")
    batch: int | None = Field(None, ge=1, description="fresh realizations per step |T_t|")
    lr: float | None = Field(None, gt=0)
    lr_decay_every: int | None = Field(None, ge=1, description="lr multiplied by lr_decay every this many steps")
    lr_decay: float | None = Field(None, gt=0)
    betas: tuple[float, float] | None = None
    weight_decay: float | None = Field(None, ge=0)
    clip: float | None = Field(None, gt=0, description="gradient-norm clipping value")
    optimizer: Literal["adamw", "rmsprop"] | None = Field(
        None, description="adamw (betas, weight_decay) | rmsprop (weight_decay); default: the model's, else adamw")
    layers_in_loss: list[int] | None = Field(None, description="rounds l in the loss set; default [L]")
    loss: Literal["model", "normalized", "mean_rate"] = Field(
        "model", description="model: the learnable's own loss (GCN-WMMSE: (16), normalized per sample); "
        "normalized: (16); mean_rate: the minibatch's mean rate (dsim.learn.mean_rate_loss)")
    val_every: int = Field(100, ge=1)
    val_size: int = Field(500, ge=1, description="fixed validation realizations")
    train_samples: int | None = Field(None, ge=1, description="a fixed training set of this many realizations "
                                      "(seed s * 1_000_003 - 2) that minibatches are drawn from; null: fresh "
                                      "realizations every step")
    augment: str = Field("none", description="none | the name of one of the scenario family's augmentations "
                         "(FamilySpec.augment, e.g. a symmetry of its problem) applied to every minibatch of the "
                         "fixed training set (needs train_samples), drawn from the minibatch's seed")
    resume_schedule: Literal["checkpoint", "config"] = Field(
        "checkpoint", description="on --resume, the lr decay: checkpoint (exactly the saved StepLR) | config (the "
        "saved StepLR with this file's lr_decay_every and lr_decay from the resumed step on; the lr itself "
        "continues from the checkpoint's)")
    resume_lr: float | None = Field(None, gt=0, description="on --resume, the lr from the resumed step on (the "
                                    "schedule then decays it as resume_schedule says); null: the checkpoint's lr")
    keep_best: bool = Field(False, description="also write best.pt: the state at the validation with the highest "
                            "validation WSR so far (early stopping by validation; checkpoint.pt stays the last)")
    seed: int | None = Field(None, description="training-data seed; default: the config's seed")
    checkpoint_every: int = Field(50, ge=1)
    threads: int | None = Field(None, ge=1, description="torch threads (default: torch's)")
    compile: bool = Field(False, description="run the model's compilable per-layer functions through "
                          "torch.compile (dsim.jit; needs a C++ compiler on the CPU, Triton on CUDA): faster "
                          "steps after a one-off compilation, results equal to eager up to float rounding")
    device: Literal["cpu", "cuda", "auto"] = Field(
        "cpu", description="where the module, the minibatches and the evaluation live (auto: cuda when "
        "available); minibatches are drawn on the CPU, checkpoints saved on the CPU")
    progress: bool = True
    freeze_norm: bool = Field(False, description="normalization layers keep their running statistics during "
                              "training (eval-mode normalization: what inference uses), e.g. to fine-tune "
                              "across configurations whose batch statistics differ")
    vary: dict[str, tuple[int | float, int | float] | tuple[float, float, Literal["log"]]
               | tuple[int | float, int | float, Literal["exp"], float]] | None = Field(
        None, description="scenario keys drawn afresh for every training minibatch, key: [low, high] "
        "(uniform; integers when both ends are integers), [low, high, log] (log-uniform, 0 < low) or "
        "[low, high, exp, mean] (exponential with that mean, rounded when both ends are integers, clipped "
        "to [low, high]); validation stays on the scenario as written")

    def cross_errors(self) -> list[tuple[str, str]]:
        """``vary`` with ``train_samples``: a fixed pool of realizations has one configuration; ``augment``
        without ``train_samples``: fresh minibatches need no augmentation."""
        errs = []
        if self.vary and self.train_samples is not None:
            errs.append(("vary", "cannot be combined with train.train_samples (a fixed pool has one configuration); "
                                 "allowed: one of them"))
        if self.augment != "none" and self.train_samples is None:
            errs.append(("augment", f"{self.augment!r} augments a fixed training set; allowed: none, or set "
                                    "train.train_samples"))
        return errs


def resolve_options(opts: TrainOptions, defaults: dict[str, Any]) -> TrainOptions:
    """``opts`` with every unset model field (:data:`MODEL_FIELDS`) taken from ``defaults``; a field that
    is set nowhere is an :class:`OptionError` at ``train.<field>``."""
    unset = [k for k in MODEL_FIELDS if getattr(opts, k) is None]
    missing = [k for k in unset if k not in defaults]
    if missing:
        raise OptionError(f"train.{missing[0]}", f"required key missing: {opts.algorithm!r} has no default for "
                                                 f"it; give train.{missing[0]}")
    update = {k: defaults[k] for k in unset}
    if opts.optimizer is None:
        update["optimizer"] = defaults.get("optimizer", "adamw")
    return opts.model_copy(update=update)


class CpuStepRMSprop(torch.optim.RMSprop):
    """torch's RMSprop with its step counters on the CPU, as AdamW keeps them: torch creates them on the
    default device (DESIGN §11: nothing may land there; the meta-device tests catch it)."""

    def _init_group(self, *args, **kwargs):  # noqa: ANN002, ANN003 - torch's private signature
        with torch.device("cpu"):
            return super()._init_group(*args, **kwargs)


def make_optimizer(params, opts: TrainOptions) -> torch.optim.Optimizer:
    """The optimizer of resolved ``opts``: AdamW (lr, betas, weight decay) or RMSProp (lr, weight decay)."""
    if opts.optimizer == "rmsprop":
        return CpuStepRMSprop(params, lr=opts.lr, weight_decay=opts.weight_decay)
    return torch.optim.AdamW(params, lr=opts.lr, betas=opts.betas, weight_decay=opts.weight_decay)


def validate(learn: Learnable, net, air) -> float:
    """Mean WSR at the last round of ``learn``'s protocol on a fixed validation set (net, air).

    Runs the module in eval mode (running statistics of normalization layers, none updated), then
    restores its mode."""
    module = learn.module
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            proto = learn.protocol(net)
            return float(evaluate_rounds(proto, net, air, [proto.rounds])[proto.rounds].mean())
    finally:
        module.train(was)


def _train_mode(module: torch.nn.Module, frozen_norm: bool) -> None:
    """``module`` in training mode; with ``frozen_norm`` its normalization layers stay in eval mode."""
    module.train()
    if frozen_norm:
        freeze_norm(module)


def best_val(log: list[dict]) -> float:
    """The highest validation WSR in ``log`` (-inf before the first validation)."""
    vals = [r["val_wsr"] for r in log if r.get("val_wsr") not in (None, "")]
    return max(vals, default=-math.inf)


def _write_log(path: Path, log: list[dict]) -> None:
    write_csv(path, LOG_FIELDS, ([row.get(k, "") for k in LOG_FIELDS] for row in log))


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
def _on_device(sample: Sampler, device: torch.device) -> Sampler:
    """``sample`` with its minibatches (net, air) moved to ``device``."""

    def moved(batch: int, seed: int) -> tuple[Any, Any]:
        net, air = sample(batch, seed)
        return net.to(device), air.to(device)

    return moved


def train(learn: Learnable, sample: Sampler, opts: TrainOptions, out_dir: Path, seed: int, resume: bool = False,
          meta: dict | None = None, val_sample: Sampler | None = None) -> Path:
    """Train ``learn`` on minibatches ``sample(batch, seed) -> (net, air)``; returns the checkpoint path.

    ``opts``' unset model fields come from ``learn.train_defaults``.  The module, the minibatches (moved
    from wherever ``sample`` draws them) and the evaluation live on ``opts.device``; checkpoints are
    written on the CPU.  ``val_sample`` (default ``sample``) draws the validation set."""
    opts = resolve_options(opts, learn.train_defaults)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ck_path = out_dir / "checkpoint.pt"
    if opts.threads:
        torch.set_num_threads(opts.threads)
    device = resolve_device(opts.device)
    val_sample = _on_device(val_sample or sample, device)
    sample = _on_device(sample, device)
    module = learn.module.to(device)
    opt = make_optimizer(module.parameters(), opts)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=opts.lr_decay_every, gamma=opts.lr_decay)
    log: list[dict] = []
    start = 0
    meta = dict(meta or {}) | {"train_options": opts.model_dump(mode="json"), "seed": seed}

    def save(step: int) -> None:
        save_checkpoint(ck_path, learn, step, meta, {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                                                     "log": log})

    if resume:
        if not ck_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {ck_path}")
        ck = load_checkpoint(ck_path)
        module.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        if opts.resume_schedule == "config":
            sched.step_size, sched.gamma = opts.lr_decay_every, opts.lr_decay
        if opts.resume_lr is not None:  # StepLR is chainable: it multiplies the group's lr in place
            for group in opt.param_groups:
                group["lr"] = opts.resume_lr
        start, log = int(ck["step"]), list(ck["log"])
    module.train()
    val_net, val_air = val_sample(opts.val_size, batch_seed(seed, -1))
    bar = None
    if opts.progress:
        from tqdm import tqdm

        bar = tqdm(total=opts.steps, initial=start, desc=f"train {opts.algorithm}", unit="step")
    step = done = start
    try:
        with compiling(opts.compile):  # train.compile: dsim.jit
            for step in range(start + 1, opts.steps + 1):
                t0 = time.perf_counter()
                _train_mode(module, opts.freeze_norm)
                net, air = sample(opts.batch, batch_seed(seed, step))
                opt.zero_grad(set_to_none=True)
                try:
                    loss, wsr = forward_loss(learn, net, air, opts.layers_in_loss, opts.loss)
                    loss.backward()
                except torch.linalg.LinAlgError as exc:  # NaN/inf reached a decomposition
                    save(step - 1)
                    msg = (f"linear-algebra failure (non-finite values?) at training step {step}: {exc}; "
                           f"last good state (step {step - 1}) saved to {ck_path}")
                    raise TrainingDiverged(msg) from exc
                grads = [p.grad for p in module.parameters() if p.grad is not None]
                gnorm = float(torch.nn.utils.clip_grad_norm_(module.parameters(), opts.clip))
                lval = float(loss.detach())
                finite = math.isfinite(lval) and math.isfinite(gnorm) and all(bool(torch.isfinite(g).all())
                                                                              for g in grads)
                if not finite:
                    save(step - 1)
                    raise TrainingDiverged(f"non-finite loss/gradient at training step {step} (loss {lval}, grad "
                                           f"norm {gnorm}); last good state (step {step - 1}) saved to {ck_path}")
                opt.step()
                sched.step()
                mean_wsr = torch.stack([w.detach() for w in wsr.values()]).mean()
                row = {"step": step, "lr": opt.param_groups[0]["lr"], "loss": -float(mean_wsr),
                       "train_wsr": float(wsr[max(wsr)].detach().mean()), "grad_norm": gnorm}
                if step % opts.val_every == 0 or step == opts.steps:
                    learn.calibrate(sample, seed)
                    row["val_wsr"] = validate(learn, val_net, val_air)
                    if opts.keep_best and row["val_wsr"] > best_val(log):
                        save_checkpoint(out_dir / "best.pt", learn, step, meta)
                row["step_s"] = time.perf_counter() - t0
                log.append(row)
                done = step
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(wsr=f"{row['train_wsr']:.2f}", val=f"{row.get('val_wsr', float('nan')):.2f}")
                if step % opts.checkpoint_every == 0 or step == opts.steps:
                    save(step)
                    _write_log(out_dir / "train_log.csv", log)
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM: keep the last finished step, then stop
        save(done)
        raise
    except OptionError:  # a configuration problem met during the steps: keep the steps finished before it
        if done > start:
            save(done)
        raise
    finally:
        if bar is not None:
            bar.close()
        if log:
            _write_log(out_dir / "train_log.csv", log)
            plot_curve(out_dir / "train_curve.png", log, val_air.unit)
    if not ck_path.exists() or step == start:
        save(step)
    return ck_path


# ------------------------------------------------------------------------------------------ config glue
def _get(obj: Any, key: str, default: Any = None) -> Any:
    return obj.get(key, default) if isinstance(obj, dict) else getattr(obj, key, default)


def train_main(cfg: Any, out_dir: Path, resume: bool = False) -> Path:
    """``dsim train``: train the config's ``train:`` section on its scenario; returns the checkpoint path.

    ``cfg`` is a :class:`dsim.config.RunConfig` or a plain dict with keys seed, precision, scenario, train
    (and ``source``, the config file's name).  Writes out_dir/checkpoint.pt, train_log.csv, train_curve.png.
    A configuration problem found only here (an :class:`OptionError`: options that do not match their
    checkpoint, a loss round past the protocol's last, ...) is a :class:`dsim.config.ConfigError` line
    ``<source>: <key>: <problem>``; any other error propagates as it is.
    """
    raw = _get(cfg, "train")
    if raw is None:
        raise ValueError("the config has no train: section")
    opts = raw if isinstance(raw, TrainOptions) else TrainOptions(**raw)
    seed = opts.seed if opts.seed is not None else int(_get(cfg, "seed", 0))
    precision = _get(cfg, "precision", "double")
    try:
        cross = opts.cross_errors()
        if cross:
            raise OptionError(f"train.{cross[0][0]}", cross[0][1])
        if opts.compile:
            why = compile_unavailable(resolve_device(opts.device))
            if why:
                raise OptionError("train.compile", f"torch.compile does not work here ({why}); allowed: false")
        try:
            learn = get_learnable(opts.algorithm, opts.options)
        except OptionError as exc:
            raise exc.within("train.options") from None
        scn = _get(cfg, "scenario")
        scn_dump = scn if isinstance(scn, dict) else scn.model_dump(mode="json")
        fresh = scenario_sampler(scn, precision)
        if opts.train_samples is not None:
            sample = pool_sampler(scn, opts.train_samples, batch_seed(seed, -2), precision, opts.augment)
        elif opts.vary:
            sample = scenario_sampler(scn, precision, vary=opts.vary)
        else:
            sample = fresh
        return train(learn, sample, opts, Path(out_dir), seed, resume=resume,
                     meta={"algorithm": opts.algorithm, "scenario": scn_dump, "precision": precision,
                           "vary": {k: list(v) for k, v in (opts.vary or {}).items()}}, val_sample=fresh)
    except OptionError as exc:
        from dsim.config import ConfigError

        raise ConfigError(f"{_get(cfg, 'source', '<dict>')}: {exc}") from None
