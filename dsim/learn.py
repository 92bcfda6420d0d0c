"""Learnable protocols (DESIGN §10): the machinery every learned protocol shares.

An algorithm module declares its learned protocol in a few lines, a :class:`LearnableSpec`: the
parameter module (a :class:`LearnedModule`, constructed from its hyper-parameters and a seed), its
options model (a :class:`LearnedOptions`), ``protocol(module, net, options) -> Protocol`` (its layers),
the shipped checkpoint and the training recipe that reproduces it, its loss and its training defaults
(the paper's). Everything else is here, once:

* options: ``checkpoint`` = 'shipped' (the packaged model; a spec with ``default_for`` picks it from the
  scenario) | 'shipped:<name>' (one of the spec's ``named`` models) or an alias of one | 'untrained'
  (seeded by ``init_seed``) | a path to a ``dsim train`` checkpoint; the hyper-parameters named in the
  options default to the checkpoint's and must match it (:meth:`LearnableSpec.make`); the names are
  resolved here only (:meth:`LearnableSpec.locate`), for inference, training and federated fine-tuning;
* checkpoints (:func:`save_checkpoint`, :func:`load_checkpoint`, :func:`export_checkpoint`) with a
  format version (:data:`FORMAT_VERSION`; a file without ``format_version`` is version 1);
* the loss: (16) :func:`normalized_loss` unless the spec brings its own; :func:`forward_loss`;
* adaptation of a trained model to the run's configuration (:class:`AdaptOptions`, :func:`adapt`,
  :func:`fine_tune`) and batch-norm statistics at fixed weights (:class:`BatchNormOptions`,
  :func:`recalibrate_bn`);
* ``registry`` glue: :meth:`LearnableSpec.build` (inference, the ``AlgorithmSpec.build``) and
  :meth:`LearnableSpec.learnable` (training, the ``AlgorithmSpec.learnable``).

Minibatch seeds: training step t draws seed ``s * 1_000_003 + t`` (t >= 1), validation ``s * 1_000_003 - 1``,
batch-norm calibration ``s * 1_000_003 - 1000 - i``; an adaptation run uses the same scheme with its own s.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from dsim.evaluate import evaluate_rounds
from dsim.network import Network
from dsim.protocol import AgentBlock, Protocol
from dsim.registry import OptionError, algorithm, algorithm_names
from dsim.registry import family as family_spec
from dsim.scenarios.build import build_scenario, generate_channels

Tensor = torch.Tensor
Sampler = Callable[[int, int], tuple[Any, Any]]  # (batch, seed) -> (net, air)
Loss = Callable[[dict[int, Tensor]], Tensor]      # {round: WSR (B,)} -> scalar

#: checkpoint format written by :func:`save_checkpoint`; files without the key are version 1
FORMAT_VERSION = 1
#: the ``checkpoint`` value of a packaged model ('shipped', 'shipped:<name>'; :meth:`LearnableSpec.locate`)
SHIPPED = "shipped"


# =============================================================================== parameters
class LearnedModule(nn.Module):
    """Base of a learned protocol's parameter set.

    A subclass is constructed as ``cls(**hparams, seed=seed)``: its ``__init__`` takes the keyword
    arguments named in :attr:`hparam_names` (their defaults are the untrained model's) and ``seed`` (the
    initialization), and stores each hyper-parameter as an attribute of the same name.
    """

    hparam_names: ClassVar[tuple[str, ...]] = ()
    #: hyper-parameters that do not shape the parameter set (e.g. how the protocol starts): options may
    #: change them when a checkpoint is loaded (to fine-tune a model under the new setting)
    free_hparams: ClassVar[tuple[str, ...]] = ()
    #: hyper-parameters that shape the parameter set but that options may change when a checkpoint is
    #: loaded: the loaded module is then warm-started into the new shape by :meth:`resized`
    resizable_hparams: ClassVar[tuple[str, ...]] = ()

    def resized(self, **hparams: Any) -> LearnedModule:
        """A new module with ``hparams`` (names of :attr:`resizable_hparams`) changed, its parameters and
        buffers initialized from this one's (a warm start; the subclass says how).  Only called for names in
        :attr:`resizable_hparams` (:meth:`LearnableSpec.read`), so a module that declares none never gets here;
        one that declares some must override this."""
        raise NotImplementedError(f"{type(self).__name__} declares resizable_hparams "
                                  f"{self.resizable_hparams} but does not override resized()")

    @classmethod
    def default_hparams(cls) -> dict[str, Any]:
        """The untrained model's hyper-parameters: the defaults of ``__init__``."""
        params = inspect.signature(cls.__init__).parameters
        return {k: params[k].default for k in cls.hparam_names}

    @property
    def hparams(self) -> dict[str, Any]:
        """What rebuilds this module from a checkpoint: {name: value} of :attr:`hparam_names`."""
        return {k: getattr(self, k) for k in self.hparam_names}

    def n_trainable(self) -> int:
        """Trainable parameters (:func:`count_parameters`)."""
        return count_parameters(self)

    def observe(self, net: Network) -> None:
        """Update running statistics (other than batch norm's) from a training batch; default: none."""


def current_layer(block: AgentBlock, layers: int, name: str) -> int:
    """The layer l (1-based) an unrolled / GNN protocol with ``layers`` layers runs now: the round
    ``block.round``; ``RuntimeError`` naming protocol ``name`` past its last layer."""
    if block.round > layers:
        raise RuntimeError(f"{name} has {layers} layers; round {block.round} asked for")
    return block.round


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module``; a complex one counts once (as the papers count them)."""
    return sum(p.numel() for p in module.parameters())


class LearnedOptions(BaseModel):
    """Options every learned protocol has (its options model subclasses this one).

    checkpoint: 'shipped' (the packaged model), 'shipped:<name>' (a named packaged model of the protocol),
    'untrained' (initialized from ``init_seed``) or a path to a ``dsim train`` checkpoint
    (:meth:`LearnableSpec.locate`).
    """

    model_config = ConfigDict(extra="forbid")
    checkpoint: str = "shipped"
    init_seed: int = Field(0, description="seed of the untrained initialization")


class AdaptOptions(LearnedOptions):
    """Adaptation before inference (:func:`adapt`): ``adapt_steps`` Adam steps of the protocol's loss on
    fresh samples of the run's own scenario configuration (batch ``adapt_batch``, lr ``adapt_lr``, seed
    ``adapt_seed``; default: derived from the run seed, distinct from it), changing the parameters named by
    ``adapt_params`` (default all: :func:`adapted_parameters`)."""

    adapt_steps: int = Field(0, ge=0, description="gradient steps of the loss on the target configuration")
    adapt_batch: int = Field(100, ge=1, description="topologies per adaptation step")
    adapt_lr: float = Field(1e-3, gt=0)
    adapt_seed: int | None = Field(None, description="seed of the adaptation samples; default from the run's")
    adapt_norm: Literal["batch", "frozen"] | None = Field(
        None, description="normalization layers during adaptation: batch statistics, then re-estimated "
        "(batch) | running statistics kept (frozen); default: as the checkpoint was trained (train.freeze_norm)")
    adapt_params: Literal["all", "norm", "last"] = Field(
        "all", description="parameters the adaptation steps change: all | norm (the normalization layers' "
        "affine scale and shift) | last (the module's last linear layer, in registration order)")


class BatchNormOptions(LearnedOptions):
    """Batch-norm statistics of a training run, re-estimated at the current weights before every
    validation (:meth:`Learnable.calibrate`, so the final checkpoint is calibrated)."""

    bn_batches: int = Field(10, ge=0, description="training: minibatches of the batch-norm calibration before "
                            "each validation (and so of the final checkpoint); 0: none")
    bn_batch: int = Field(100, ge=1, description="training: topologies per calibration minibatch")


# =============================================================================== loss
def normalized_loss(wsr: dict[int, Tensor]) -> Tensor:
    """The default loss, normalized per sample:
    J = -1/(|T||L|) sum_n sum_l R_n^(l) / |R_n^(l)|, mean over samples n and loss rounds l, the magnitude
    |R| detached (J's value is always -1; its gradient weighs every sample's rate equally)."""
    terms = [-(w / w.detach().abs().clamp_min(torch.finfo(w.dtype).tiny)) for w in wsr.values()]
    return torch.stack(terms).mean()


def mean_rate_loss(wsr: dict[int, Tensor]) -> Tensor:
    """The plain mean rate as a loss, scaled per minibatch:
    J = -1/|L| sum_l (sum_n R_n^(l)) / |sum_n R_n^(l)|, the magnitude detached (J's value is always -1 like
    (16)'s, so clipping values carry over; its gradient is that of the mean rate over the minibatch, each
    sample weighed by its own rate rather than equally as in (16))."""
    terms = []
    for w in wsr.values():
        total = w.sum()
        terms.append(-(total / total.detach().abs().clamp_min(torch.finfo(w.dtype).tiny)))
    return torch.stack(terms).mean()


#: ``train.loss``: ``model`` (the learnable's own, ``LearnableSpec.loss``), or one of these
LOSSES: dict[str, Loss] = {"normalized": normalized_loss, "mean_rate": mean_rate_loss}


def batch_seed(seed: int, step: int) -> int:
    """Seed of minibatch ``step`` of a run with seed ``seed``: ``seed * 1_000_003 + step``."""
    return seed * 1_000_003 + step


def calibration_seeds(seed: int, n: int) -> list[int]:
    """Minibatch seeds of the batch-norm calibration of a training run with seed ``seed``: s * 1_000_003
    - 1000 - i, never a training (s * 1_000_003 + t, t >= 1) or validation (s * 1_000_003 - 1) minibatch."""
    return [batch_seed(seed, -1000 - i) for i in range(n)]


# =============================================================================== declaration
@dataclass(frozen=True)
class LearnableSpec:
    """The declaration of a learned protocol (what its algorithm module provides).

    name:           the registered algorithm name (error messages, checkpoint meta).
    module:         the :class:`LearnedModule` subclass of its parameters.
    options:        its options model (a :class:`LearnedOptions`; hyper-parameter fields named as in
                    ``module.hparam_names``, None = the checkpoint's).
    protocol:       ``protocol(module, net, options) -> Protocol`` using the module's current parameters
                    (differentiable on the local engine).
    shipped:        path of the packaged checkpoint ('shipped'; without a network to pick by, the default).
    recipe:         the training YAML that reproduces it (named when a checkpoint is missing).
    train_defaults: defaults of the model's :class:`dsim.train.TrainOptions` fields (lr, batch, ...).
    loss:           training loss over {round: WSR (B,)}; default (16).
    named:          further packaged checkpoints by name: ``checkpoint: shipped:<name>``.
    aliases:        other spellings of a named one, {spelling: name} (e.g. {'shipped-dt': 'dt'}).
    default_for:    ``default_for(net) -> name`` (a key of ``named``): the model 'shipped' means on ``net``
                    (e.g. the one trained for its size); None: always ``shipped``.
    recipes:        the training YAML of a named checkpoint, {name: recipe}, where it is not ``recipe``.
    """

    name: str
    module: type[LearnedModule]
    options: type[LearnedOptions]
    protocol: Callable[[Any, Network, Any], Protocol]
    shipped: Path
    recipe: str
    train_defaults: dict[str, Any] = field(default_factory=dict)
    loss: Loss = normalized_loss
    named: dict[str, Path] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    default_for: Callable[[Network], str] | None = None
    recipes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted((set(self.aliases.values()) | set(self.recipes)) - set(self.named))
        if unknown:
            raise ValueError(f"{self.name}: aliases / recipes name no model of `named`: {unknown}")
        spelled = [a for a in self.aliases if not a.startswith(SHIPPED) or a.startswith(f"{SHIPPED}:")]
        if spelled:
            raise ValueError(f"{self.name}: aliases must start with {SHIPPED!r} and not be 'shipped:<name>': {spelled}")

    def shipped_refs(self) -> list[str]:
        """Every value of the ``checkpoint`` option that names a packaged model: 'shipped', 'shipped:<name>'
        for each of :attr:`named`, then the :attr:`aliases`."""
        return [SHIPPED, *(f"{SHIPPED}:{n}" for n in self.named), *self.aliases]

    def checkpoint_problem(self, ref: str | Path, files: bool = True) -> str | None:
        """What is wrong with ``checkpoint: ref``, or None: a value starting with 'shipped' that names no packaged
        model (:meth:`shipped_refs`), or (``files``) a path with no file there (relative: from the current
        directory, as :meth:`read` opens it).  One message, ending with the allowed values; config validation
        reports it (:meth:`check`), :meth:`locate` raises it."""
        ref = str(ref)
        allowed = f"allowed: {', '.join(self.shipped_refs())}, untrained or a path"
        if ref == "untrained" or ref in self.shipped_refs():
            return None
        if ref.startswith(SHIPPED):
            return f"{ref!r} is not allowed; {allowed}"
        path = Path(ref)
        if files and not path.is_file():
            where = " (a relative path is read from the current directory)" if not path.is_absolute() else ""
            return f"no such checkpoint file {ref!r}: {path.absolute()}{where}; {allowed}"
        return None

    def check(self, opts: LearnedOptions, files: bool = True) -> list[tuple[str, str]]:
        """``AlgorithmSpec.check``: [('checkpoint', problem)] when the ``checkpoint`` option names no packaged
        model, or (``files``: the command reads it now) is a path with no file (:meth:`checkpoint_problem`);
        else []."""
        problem = self.checkpoint_problem(opts.checkpoint, files)
        return [("checkpoint", problem)] if problem else []

    def locate(self, ref: str | Path, net: Network | None = None) -> tuple[Path, str]:
        """(file, training recipe) of checkpoint ``ref``: 'shipped' is :attr:`shipped`, or with ``net`` and a
        :attr:`default_for` hook the named model it picks; 'shipped:<name>' and the aliases are :attr:`named`
        models; any other value starting with 'shipped' is a ``ValueError`` of one line naming the protocol,
        the key and the allowed values (a path starting so: write it ./shipped...); anything else is a path."""
        ref = str(ref)
        if not ref.startswith(SHIPPED):
            return Path(ref), self.recipe
        if ref == SHIPPED:
            if net is None or self.default_for is None:
                return self.shipped, self.recipe
            name = self.default_for(net)
        else:
            if ref not in self.shipped_refs():
                raise ValueError(f"{self.name}: checkpoint {self.checkpoint_problem(ref)}")
            name = self.aliases.get(ref, ref.removeprefix(f"{SHIPPED}:"))
        return self.named[name], self.recipes.get(name, self.recipe)

    def read(self, ref: str | Path, net: Network | None = None) -> dict[str, Any]:
        """The checkpoint ``ref`` (:meth:`locate`; ``net``: the network 'shipped' is for) as a dict; a
        missing file says how to train one."""
        path, recipe = self.locate(ref, net)
        if not path.exists():
            raise FileNotFoundError(f"{self.name} checkpoint {path} not found (train one: python -m dsim train "
                                    f"{recipe})")
        return load_checkpoint(path)

    def load(self, ref: str | Path, net: Network | None = None) -> LearnedModule:
        """The module of checkpoint ``ref`` (:meth:`read`)."""
        ck = self.read(ref, net)
        module = self.module(**ck["hparams"])
        module.load_state_dict(ck["model"])
        module.trained_with = dict((ck.get("meta") or {}).get("train_options") or {})
        return module

    def make(self, opts: LearnedOptions, net: Network | None = None, resize: bool = False) -> LearnedModule:
        """The module per ``opts``: untrained (hyper-parameters from the options, else the defaults) or
        loaded (:meth:`load`; ``net``: the network a 'shipped' default is picked for, None: training), each
        hyper-parameter given in the options checked against the checkpoint's (an :class:`OptionError` at the
        option's key when they differ); with ``resize`` (what training starts from: :meth:`learnable`) those
        in ``resizable_hparams`` may differ: the loaded module is then warm-started into the asked shape
        (:meth:`LearnedModule.resized`).  Inference (:meth:`build`) never resizes a checkpoint."""
        want = {k: getattr(opts, k) for k in self.module.hparam_names}
        if opts.checkpoint == "untrained":
            hp = self.module.default_hparams() | {k: v for k, v in want.items() if v is not None}
            return self.module(**hp, seed=opts.init_seed)
        module = self.load(opts.checkpoint, net)
        new = {k: v for k, v in want.items()
               if resize and v is not None and k in self.module.resizable_hparams and module.hparams.get(k) != v}
        if new:
            trained_with = module.trained_with
            module = module.resized(**new)
            module.trained_with = trained_with
        for k, v in want.items():
            have = module.hparams.get(k)
            if v is not None and have != v and k in self.module.free_hparams:
                setattr(module, k, v)
            elif v is not None and have != v:
                raise OptionError(k, f"{v} but checkpoint {opts.checkpoint!r} of {self.name} has {k}={have}; "
                                     f"allowed: {have} or leave {k} out (the checkpoint's)")
        return module

    def learnable(self, options: dict[str, Any]) -> Learnable:
        """``AlgorithmSpec.learnable``: the trainable protocol of the YAML options (default: untrained; a
        checkpoint name resolved by :meth:`locate` without a network, so 'shipped' is :attr:`shipped`): what
        ``dsim train``, :func:`export_checkpoint` and federated fine-tuning (:mod:`dsim.federated`, whose validated
        options always name their checkpoint: 'shipped' by default) start from; a resizable hyper-parameter
        (e.g. an unrolled network's ``layers``) other than the checkpoint's warm-starts from it (:meth:`make`)."""
        opts = self.options(**({"checkpoint": "untrained"} | dict(options)))
        return Learnable(self, self.make(opts, resize=True), opts)

    def build(self, opts: LearnedOptions, net: Network) -> Protocol:
        """``AlgorithmSpec.build``: the protocol for inference (module in eval mode, no gradients), after
        ``adapt_steps`` adaptation steps when the options have them (their facts go to ``meta``)."""
        learn = Learnable(self, self.make(opts, net), opts)
        learn.module.to(net.device).eval().requires_grad_(False)  # adaptation and inference run where net is
        meta: dict[str, Any] = {}
        if isinstance(opts, AdaptOptions):
            meta = {"adapt_steps": 0, "adapt_samples": 0, "adapt_s": 0.0}
            if opts.adapt_steps > 0:
                meta |= adapt(learn, net, opts)
        proto = learn.protocol(net)
        proto.meta.update(meta)
        return proto


@dataclass
class Learnable:
    """A learned protocol with its parameters: what training, adaptation and inference use.

    spec:    its declaration; module: the parameters; options: the validated algorithm options.
    """

    spec: LearnableSpec
    module: LearnedModule
    options: LearnedOptions

    def protocol(self, net: Network) -> Protocol:
        """The protocol using the module's current parameters (autograd flows on the local engine); its
        ``module`` is this module (engines move it to the device the protocol runs on)."""
        proto = self.spec.protocol(self.module, net, self.options)
        if proto.module is None:
            proto.module = self.module
        return proto

    def observe(self, net: Network) -> None:
        """Update the module's running statistics from a training batch (called before its forward)."""
        self.module.observe(net)

    @property
    def hparams(self) -> dict[str, Any]:
        return self.module.hparams

    @property
    def loss(self) -> Loss:
        return self.spec.loss

    @property
    def train_defaults(self) -> dict[str, Any]:
        return dict(self.spec.train_defaults)

    def calibrate(self, sample: Sampler, seed: int) -> None:
        """Before a validation of a training run with seed ``seed``: re-estimate the batch-norm statistics
        at the current weights (:func:`recalibrate_bn` on :func:`calibration_seeds`) when the options ask
        for it (:class:`BatchNormOptions`); otherwise nothing."""
        if isinstance(self.options, BatchNormOptions) and self.options.bn_batches > 0:
            recalibrate_bn(self, sample, calibration_seeds(seed, self.options.bn_batches), self.options.bn_batch)


def get_learnable(name: str, options: dict[str, Any]) -> Learnable:
    """The :class:`Learnable` of registered algorithm ``name`` with YAML ``options``; ``ValueError`` naming
    the learnable algorithms if ``name`` is not one."""
    spec = algorithm(name)
    if spec.learnable is None:
        raise ValueError(f"algorithm {name!r} is not learnable; learnable: "
                         f"{', '.join(algorithm_names(learnable=True))}")
    return spec.learnable(options)


# =============================================================================== checkpoints
def save_checkpoint(path: Path, learn: Learnable, step: int, meta: dict[str, Any],
                    training: dict[str, Any] | None = None) -> None:
    """Atomic write of a checkpoint: format_version, step, model (state dict), hparams, then ``training``'s
    entries (optimizer, scheduler, log: what resumes a run exactly) and meta.  Every tensor is saved on the
    CPU, so the file loads on any machine."""
    ck = {"format_version": FORMAT_VERSION, "step": step, "model": learn.module.state_dict(),
          "hparams": dict(learn.hparams)} | dict(training or {}) | {"meta": meta}
    ck = to_cpu(ck)
    tmp = path.with_suffix(".tmp")
    torch.save(ck, tmp)
    tmp.replace(path)


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in it (nested dicts, lists, tuples) moved to the CPU."""
    if isinstance(obj, Tensor):
        return obj.detach().cpu() if obj.device.type != "cpu" else obj
    if isinstance(obj, dict):
        return type(obj)((k, to_cpu(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint file as a dict (tensors on the CPU); ``ValueError`` if its format is newer than
    :data:`FORMAT_VERSION` (a file without ``format_version`` is version 1)."""
    ck = torch.load(path, map_location="cpu", weights_only=True)
    version = int(ck.get("format_version", 1))
    if version > FORMAT_VERSION:
        raise ValueError(f"checkpoint {path}: format version {version}; this dsim reads up to {FORMAT_VERSION}")
    return ck


def export_checkpoint(src: str | Path, dst: str | Path, recalibrate: bool = False, bn_batches: int = 10,
                      bn_batch: int = 100) -> Path:
    """The shipped-model file from a ``dsim train`` checkpoint: format_version, step, model (with its
    batch-norm statistics), hparams and meta; no optimizer state or log.  ``recalibrate``: re-estimate the
    batch-norm statistics as the training run's final :meth:`Learnable.calibrate` does (same seeds), for
    checkpoints written without it."""
    ck = load_checkpoint(src)
    out = {"format_version": FORMAT_VERSION} | {k: ck[k] for k in ("step", "model", "hparams", "meta") if k in ck}
    if recalibrate:
        meta = ck["meta"]
        learn = get_learnable(meta["algorithm"], {"checkpoint": str(src)})
        sample = scenario_sampler(dict(meta["scenario"]), meta.get("precision", "double"))
        recalibrate_bn(learn, sample, calibration_seeds(int(meta.get("seed", 0)), bn_batches), bn_batch)
        out["model"] = learn.module.state_dict()
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, dst)
    return dst


# =============================================================================== forward, fine-tuning
def scenario_sampler(scenario: Any, precision: str = "double", device: torch.device | str | None = None,
                     vary: dict[str, tuple] | None = None) -> Sampler:
    """(batch, seed) -> (net, air) of fresh draws of a scenario (the family's options model or a mapping
    with a ``family`` key), fault-free, the network seeded with the draw's seed.  Drawn on the CPU (same
    numbers on every device), then moved to ``device`` (None: left on the CPU).

    ``vary``: {scenario key: (low, high)}: each call first draws these keys uniformly from the draw's seed
    (integers, inclusive, when both ends are integers), so every minibatch has its own configuration;
    (low, high, 'log'): log-uniform, exp U(ln low, ln high) (low > 0; for quantities spanning decades,
    e.g. a distance); (low, high, 'exp', mean): x ~ Exp(mean) (density e^{-x/mean}/mean), rounded to the
    nearest integer when both ends are integers, then clipped to [low, high] (the ends keep the clipped
    mass; e.g. the Model-GNN paper's K ~ Exp(mean 4), rounded, >= 2).  A key or range the family does not
    accept is an :class:`OptionError` at ``train.vary.<key>`` (raised here, before any draw).
    """
    if vary:
        for key, rng_spec in vary.items():
            lo, hi, *how = rng_spec
            log_ok = how == ["log"] and lo > 0 and hi > 0
            exp_ok = len(how) == 2 and how[0] == "exp" and isinstance(how[1], (int, float)) and how[1] > 0
            if how and not (log_ok or exp_ok) or not lo <= hi:
                raise OptionError(f"train.vary.{key}", f"{list(rng_spec)} not allowed; allowed: [low, high], "
                                  "[low, high, log] with 0 < low, or [low, high, exp, mean] with mean > 0 "
                                  "(low <= high)")
            for v in (lo, hi):
                _with(scenario, {key: v}, f"train.vary.{key}")

    def draw_one(rng: np.random.Generator, lo: float, hi: float, *how: Any) -> int | float:
        integer = isinstance(lo, int) and isinstance(hi, int)
        if how and how[0] == "exp":
            x = rng.exponential(float(how[1]))
            return int(min(max(round(x), lo), hi)) if integer else float(min(max(x, lo), hi))
        if how:
            return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
        if integer:
            return int(rng.integers(lo, hi + 1))
        return float(rng.uniform(lo, hi))

    def sample(batch: int, seed: int) -> tuple[Any, Any]:
        scn = scenario
        if vary:
            rng = np.random.default_rng([seed % 2**63, 0x7661727])
            draw = {k: draw_one(rng, *spec) for k, spec in vary.items()}
            scn = _with(scenario, draw, "train.vary")
        family, ch = generate_channels(scn, batch, seed, precision)
        s = build_scenario(family, ch, None, seed)
        if device is None:
            return s.net, s.air
        return s.net.to(device), s.air.to(device)

    return sample


def _with(scenario: Any, values: dict[str, Any], where: str) -> Any:
    """``scenario`` (options model or mapping) with ``values`` set, validated by the family's model; an
    :class:`OptionError` at key ``where`` if it does not accept them."""
    if isinstance(scenario, dict):
        return scenario | values
    data = scenario.model_dump()
    unknown = [k for k in values if k not in data]
    if unknown:
        raise OptionError(where, f"{unknown[0]!r} is not a key of scenario family {data.get('family')!r}; "
                                 f"allowed: {', '.join(sorted(data))}")
    try:
        return type(scenario).model_validate(data | values)
    except Exception as exc:  # pydantic ValidationError: one line
        first = str(exc).splitlines()[:3]
        raise OptionError(where, f"{values} is not a valid scenario: {' '.join(first[1:])}") from None


def augmentation(family: str, augment: str) -> Callable[..., Any] | None:
    """The family's augmentation named ``augment`` (``FamilySpec.augment``), None for 'none'; a name the family
    does not provide is an :class:`OptionError` at ``train.augment`` listing the allowed ones."""
    if augment == "none":
        return None
    offered = family_spec(family).augment
    if augment not in offered:
        raise OptionError("train.augment", f"the {family!r} family provides no augmentation {augment!r}; "
                                           f"allowed: {', '.join(['none', *sorted(offered)])}")
    return offered[augment]


def pool_sampler(scenario: Any, size: int, seed: int, precision: str = "double", augment: str = "none") -> Sampler:
    """(batch, seed) -> (net, air) of minibatches drawn from ONE fixed pool of ``size`` realizations (a
    finite training set, e.g. "1000 training samples"): the pool is drawn once with ``seed``; minibatch
    ``s`` takes ``batch`` distinct realizations (``batch`` >= size: the whole pool) chosen by a CPU
    generator seeded with ``s``.  The family's channels must have ``subset(idx)`` (else an :class:`OptionError`
    at ``train.train_samples``).

    ``augment``: 'none', or the name of one of the family's augmentations (``FamilySpec.augment``): the chosen
    realizations are then passed through ``transform(channels, generator)`` with the same generator, right
    after the choice, so minibatch ``s`` is a function of ``s`` alone (reproducible, resumable).  A name the
    family does not provide is an :class:`OptionError` at ``train.augment`` (raised here, before any draw)."""
    name = scenario.get("family") if isinstance(scenario, Mapping) else getattr(scenario, "family", None)
    transform = augmentation(str(name), augment)
    fam, pool = generate_channels(scenario, size, seed, precision)
    if not hasattr(pool, "subset"):
        raise OptionError("train.train_samples", f"the {fam!r} family's channels have no subset(); "
                                                 "allowed: null (fresh minibatches)")

    def sample(batch: int, s: int) -> tuple[Any, Any]:
        g = torch.Generator(device="cpu")
        g.manual_seed(s)
        idx = torch.randperm(size, generator=g, device="cpu")[: min(batch, size)].sort().values
        ch = pool.subset(idx)
        if transform is not None:
            ch = transform(ch, g)
        sc = build_scenario(fam, ch, None, s)
        return sc.net, sc.air

    return sample


def forward_loss(learn: Learnable, net: Network, air, layers_in_loss: list[int] | None = None,
                 loss: str = "model") -> tuple[Tensor, dict[int, Tensor]]:
    """One differentiable forward pass of ``learn`` on a minibatch: (loss, {round: WSR (B,)}).

    Calls ``learn.observe(net)`` first; the loss is taken at the rounds ``layers_in_loss`` (default: the last;
    a round outside 1..rounds is an :class:`OptionError` at ``train.layers_in_loss``).  ``loss``: ``model``
    (the learnable's own) or a key of :data:`LOSSES`.
    Runs on ``net``'s device (the module is moved there).
    """
    learn.module.to(net.device)
    learn.observe(net)
    proto = learn.protocol(net)
    rounds = layers_in_loss or [proto.rounds]
    bad = [r for r in rounds if not 1 <= r <= proto.rounds]
    if bad:
        raise OptionError("train.layers_in_loss", f"rounds {bad} outside 1..{proto.rounds}; allowed: rounds "
                                                  f"1 ... {proto.rounds} of {learn.spec.name}")
    if loss != "model" and loss not in LOSSES:
        raise OptionError("train.loss", f"unknown loss {loss!r}; allowed: model, {', '.join(LOSSES)}")
    wsr = evaluate_rounds(proto, net, air, rounds)
    return (learn.loss if loss == "model" else LOSSES[loss])(wsr), wsr


class TrainingDiverged(RuntimeError):
    """A non-finite loss or gradient; the message names the step (and the checkpoint kept, in training)."""


def fine_tune(learn: Learnable, sample: Sampler, steps: int, *, batch: int, seed: int, lr: float = 1e-3,
              betas: tuple[float, float] = (0.9, 0.999), clip: float | None = None,
              layers_in_loss: list[int] | None = None) -> dict[str, float]:
    """``steps`` plain Adam steps of ``learn``'s loss on fresh minibatches ``sample(batch, batch_seed(seed, t))``
    (t = 1..steps), no checkpoints or logs: the adaptation of a trained model to a new configuration
    (e.g. "four gradient descents" on the target configuration).  The module is left in the mode it was in.

    Returns {"steps", "samples" (realizations drawn), "wall_s" (sampling included), "loss_first",
    "loss_last"}.  A non-finite loss or gradient raises :class:`TrainingDiverged`.
    """
    t0 = time.perf_counter()
    module = learn.module
    opt = torch.optim.Adam(module.parameters(), lr=lr, betas=betas)
    losses = []
    for step in range(1, steps + 1):
        net, air = sample(batch, batch_seed(seed, step))
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


def freeze_norm(module: nn.Module) -> None:
    """Put ``module``'s normalization layers in eval mode (running statistics used, never updated)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def recalibrate_bn(learn: Learnable, sample: Sampler, seeds: list[int], batch: int) -> None:
    """"Precise BN": set every batch-norm layer's running statistics to the plain average of its batch
    statistics over the minibatches ``sample(batch, seed)`` for ``seeds``, at fixed weights (train-mode
    forward passes of the protocol without gradient; the module's mode is restored).  No batch norm: nothing.

    Why: during training the running statistics (momentum 0.1) lag behind the weights that the optimizer
    keeps moving; the lag alone cost a GNN power allocation ~0.7 bit/s/Hz at inference (eval mode)
    against the same weights with batch statistics.
    """
    module = learn.module
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved, was = [m.momentum for m in norms], module.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    module.train()
    try:
        with torch.no_grad():
            for seed in seeds:
                net, air = sample(batch, seed)
                proto = learn.protocol(net)
                evaluate_rounds(proto, net, air, [proto.rounds])
    finally:
        for m, mom in zip(norms, saved):
            m.momentum = mom
        module.train(was)


def adapted_parameters(module: nn.Module, which: str) -> list[nn.Parameter]:
    """The parameters adaptation changes (:attr:`AdaptOptions.adapt_params`): 'all' | 'norm' (weight and bias
    of every normalization layer: batch / layer / group / instance norm) | 'last' (the last ``nn.Linear`` in
    ``module.modules()`` order).  ``ValueError`` when the module has none of the kind asked for."""
    if which == "all":
        return list(module.parameters())
    kinds = ((nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm) if which == "norm" else (nn.Linear,))
    mods = [m for m in module.modules() if isinstance(m, kinds)]
    if which == "last":
        mods = mods[-1:]
    params = [p for m in mods for p in m.parameters(recurse=False)]
    if not params:
        raise ValueError(f"adapt_params: {which!r}, but the model has no such parameters")
    return params


def adapt(learn: Learnable, net: Network, opts: AdaptOptions) -> dict[str, Any]:
    """``opts.adapt_steps`` Adam steps of ``learn``'s loss on fresh samples of ``net``'s scenario configuration.

    The samples: :func:`scenario_sampler` on ``net.info["scenario_config"]`` (set by
    ``dsim.scenarios.build.scenario_from_config``), seed ``adapt_seed`` (default: run seed * 1_000_003 +
    999_983; minibatch t uses adapt_seed * 1_000_003 + t), so never the evaluated topologies.  The steps
    run as in training (:func:`fine_tune`, batch norm in training mode: batch statistics), on ``net``'s
    device (the samples are drawn on the CPU and moved there, the module is there already); then the
    batch-norm running statistics are re-estimated at the adapted weights on the same minibatches
    (:func:`recalibrate_bn`, no further samples).  Like training, this is an offline, central computation
    on simulated samples of the target configuration; the agents then run the adapted model (eval mode).
    Returns the meta entries adapt_steps, adapt_samples (topologies drawn), adapt_s (wall time, sampling
    included), adapt_seed, adapt_loss_first/last (the loss of the first/last minibatch).
    """
    scn = net.info.get("scenario_config")
    if scn is None:
        raise ValueError(f"{learn.spec.name}: adapt_steps needs a drawn scenario (scenario.family ...), not a "
                         "channel file: the adaptation samples fresh topologies of the same configuration")
    seed = opts.adapt_seed if opts.adapt_seed is not None else batch_seed(int(net.info.get("seed", 0)), 999_983)
    sample = scenario_sampler(dict(scn), net.info.get("precision", "double"), net.device)
    t0 = time.perf_counter()
    module = learn.module.to(net.device)
    norm = opts.adapt_norm or ("frozen" if getattr(module, "trained_with", {}).get("freeze_norm") else "batch")
    # The minibatches are kept only where the batch-norm recalibration reuses them; with frozen statistics
    # each one is dropped after its step.  Measured on the main job's configuration (16 APs, 8 UEs, 100
    # topologies x 100 draws per minibatch, ~60 MB each): 30 steps peaked at 3.4 GB when all were kept, 1.6 GB
    # now; 300 kept steps ran a 24 GiB machine out of memory, now they peak at 1.6 GB.
    drawn: dict[int, tuple[Any, Any]] = {}

    def sample_once(batch: int, s: int) -> tuple[Any, Any]:
        if s in drawn:
            return drawn[s]
        out = sample(batch, s)
        if norm == "batch":
            drawn[s] = out
        return out

    module.train()
    if norm == "frozen":
        freeze_norm(module)
    for p in adapted_parameters(module, opts.adapt_params):
        p.requires_grad_(True)
    try:
        res = fine_tune(learn, sample_once, opts.adapt_steps, batch=opts.adapt_batch, seed=seed, lr=opts.adapt_lr)
    finally:
        module.requires_grad_(False)
    if norm == "batch":
        recalibrate_bn(learn, sample_once, list(drawn), opts.adapt_batch)
    module.eval()
    return {"adapt_steps": opts.adapt_steps, "adapt_samples": int(res["samples"]),
            "adapt_s": round(time.perf_counter() - t0, 6), "adapt_seed": seed,
            "adapt_loss_first": res["loss_first"], "adapt_loss_last": res["loss_last"]}


# =============================================================================== flat parameter vectors
def state_names(module: nn.Module) -> list[str]:
    """Names of the floating-point entries of ``module.state_dict()`` (parameters and floating buffers such as
    batch-norm or running-mean statistics), in state-dict order: what :func:`get_flat` exchanges.  Integer
    buffers (batch-norm's ``num_batches_tracked``) are left out."""
    return [k for k, v in module.state_dict().items() if v.is_floating_point() or v.is_complex()]


def flat_size(module: nn.Module) -> int:
    """Reals in :func:`get_flat`'s vector: a real entry counts its elements, a complex one twice."""
    sd = module.state_dict()
    return sum(sd[k].numel() * (2 if sd[k].is_complex() else 1) for k in state_names(module))


def get_flat(module: nn.Module) -> Tensor:
    """The module's floating state (:func:`state_names`) as one float64 vector ``(P,)`` of reals (complex
    entries as interleaved real/imaginary parts, :func:`torch.view_as_real`), detached, on the CPU: the
    parameter vector a federated client uploads."""
    sd = module.state_dict()
    parts = [(torch.view_as_real(sd[k]) if sd[k].is_complex() else sd[k]).detach().reshape(-1).to("cpu", torch.float64)
             for k in state_names(module)]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def set_flat(module: nn.Module, vec: Tensor) -> None:
    """Inverse of :func:`get_flat`: copy the reals of ``vec`` ``(P,)`` into the module's floating state, each
    entry keeping its dtype and device; ``ValueError`` if the length is not :func:`flat_size`."""
    sd = module.state_dict()
    names = state_names(module)
    need = sum(sd[k].numel() * (2 if sd[k].is_complex() else 1) for k in names)
    if vec.numel() != need:
        raise ValueError(f"parameter vector has {vec.numel()} reals; the module holds {need}")
    vec = vec.detach().reshape(-1)
    at = 0
    with torch.no_grad():
        for k in names:
            t = sd[k]
            n = t.numel() * (2 if t.is_complex() else 1)
            chunk = vec[at:at + n].to(t.device)
            if t.is_complex():
                t.copy_(torch.view_as_complex(chunk.to(t.real.dtype).reshape(*t.shape, 2).clone()))
            else:
                t.copy_(chunk.to(t.dtype).reshape(t.shape))
            at += n
