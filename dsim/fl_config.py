"""The ``dsim finetune`` YAML: top-level keys and the ``federated:`` section (DESIGN §13).

```yaml
seed: 0
precision: double
engine: {kind: ray}                   # local | ray (one actor per site + one for the server)
output: runs/federated
federated:
  algorithm: <a learnable protocol>   # any registered learnable algorithm
  options: {checkpoint: shipped}      # its options; the starting model (default: shipped; untrained: from init_seed)
  reference: {name: <algorithm>, restarts: 10, ...}   # the WSR the relative WSR divides by
  sites:
    - {name: uniform, scenario: {family: ..., ...}, samples: 100, eval_samples: 50, seed: 1,
       truncate: {<scenario key>: <smaller value>, ...}}     # training samples drawn with these keys
  strategies: [{strategy: fedavg}, {strategy: fedadam, eta: 0.01}]
  rounds: 10
  local_steps: 2
  local_lr: 0.001
  wire: float32                       # float64 | float32 | float16 | q<b>
  link: {latency_s: 0.02, bandwidth_bps: 1.0e6}
  compute_s: measured                 # or seconds per site per round
  faults: {message_loss: 0.0, crash: {<site name>: <round>}}
  compare: {transfer: true, alone: true, pooled: true}
```

Every user error is one line ``<file>: <key.path>: <problem; allowed>`` (:class:`dsim.config.ConfigError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from dsim import registry
from dsim.config import (
    ConfigError,
    EngineConfig,
    _apply_override,
    _parse_override,
    _path,
    _read_yaml,
    _scenario,
    _show,
    _validate,
)
from dsim.wire import check_policy

_CFG = ConfigDict(extra="forbid")


class SiteConfig(BaseModel):
    """One site: its scenario (any family), training samples (``samples``, drawn with ``seed`` and the
    scenario keys of ``truncate`` overridden, e.g. fewer antennas), held-out samples (``eval_samples``,
    drawn with ``eval_seed``, default seed + 1_000_000: never a training seed) on the full scenario."""

    model_config = _CFG
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    scenario: dict[str, Any]
    samples: int = Field(100, ge=1)
    eval_samples: int = Field(50, ge=1)
    seed: int = Field(1, ge=0)
    eval_seed: int | None = Field(None, ge=0)
    truncate: dict[str, Any] = Field(default_factory=dict)

    @property
    def held_out_seed(self) -> int:
        return self.eval_seed if self.eval_seed is not None else self.seed + 1_000_000


class StrategyConfig(BaseModel):
    """One strategy to compare, Flower's parameter names (:mod:`dsim.fl_strategies`)."""

    model_config = _CFG
    strategy: Literal["fedavg", "fedprox", "fedadam"] = "fedavg"
    label: str | None = Field(None, min_length=1)
    proximal_mu: float = Field(0.0, ge=0)
    eta: float = Field(1e-1, gt=0)
    beta_1: float = Field(0.9, ge=0, lt=1)
    beta_2: float = Field(0.99, ge=0, lt=1)
    tau: float = Field(1e-9, gt=0)
    fraction_fit: float = Field(1.0, gt=0, le=1)
    min_fit_clients: int = Field(1, ge=1)

    @property
    def name(self) -> str:
        return self.label or self.strategy


class ReferenceConfig(BaseModel):
    """The algorithm whose WSR on each site's held-out samples the relative WSR divides by (best of
    ``restarts`` runs per sample); its other keys are its options."""

    model_config = ConfigDict(extra="allow")
    name: str
    restarts: int = Field(1, ge=1)


class LinkSettings(BaseModel):
    """The ``fl`` link class of the SimPy clock: latency (s), bandwidth (bit/s), one shared medium or not."""

    model_config = _CFG
    latency_s: float = Field(0.02, ge=0)
    bandwidth_bps: float = Field(1e6, gt=0)
    shared: bool = False


class FLFaultsConfig(BaseModel):
    """Faults on ``fl`` links: Bernoulli message loss per message, sites that crash at a round (from then on
    silent), their seed (None: the run's)."""

    model_config = _CFG
    message_loss: float = Field(0.0, ge=0, lt=1)
    crash: dict[str, int] = Field(default_factory=dict)
    seed: int | None = Field(None, ge=0)


class CompareConfig(BaseModel):
    model_config = _CFG
    transfer: bool = True
    alone: bool = True
    pooled: bool = True


class FederatedConfig(BaseModel):
    """The ``federated:`` section (see the module docstring).  After validation ``options`` always holds
    ``checkpoint`` (the options model's default, 'shipped', where the YAML gives none): what every site, the
    server and the evaluation start from (:func:`dsim.federated.start_vector`)."""

    model_config = _CFG
    algorithm: str
    options: dict[str, Any] = Field(default_factory=dict)
    reference: ReferenceConfig
    sites: list[SiteConfig] = Field(min_length=1)
    strategies: list[StrategyConfig] = Field(default_factory=lambda: [StrategyConfig()], min_length=1)
    rounds: int = Field(10, ge=1)
    local_steps: int = Field(1, ge=1)
    local_lr: float = Field(1e-3, gt=0)
    local_optimizer: Literal["adam", "sgd"] = "adam"
    local_batch: int | None = Field(None, ge=1, description="samples per local step; None: all of the site's")
    wire: str = "float32"
    link: LinkSettings = Field(default_factory=LinkSettings)
    compute_s: float | Literal["measured"] = "measured"
    faults: FLFaultsConfig = Field(default_factory=FLFaultsConfig)
    compare: CompareConfig = Field(default_factory=CompareConfig)


class FinetuneConfig(BaseModel):
    """A validated ``dsim finetune`` configuration; ``scenarios``: each site's family options model and its
    training variant (``truncate`` applied)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    seed: int = Field(0, ge=0)
    precision: Literal["double", "single"] = "double"
    engine: EngineConfig = Field(default_factory=EngineConfig)
    output: str = "runs/federated"
    federated: FederatedConfig
    source: str = "<dict>"
    scenarios: dict[str, Any] = Field(default_factory=dict)
    train_scenarios: dict[str, Any] = Field(default_factory=dict)


class _Top(BaseModel):
    model_config = _CFG
    seed: int = Field(0, ge=0)
    precision: Literal["double", "single"] = "double"
    engine: EngineConfig = Field(default_factory=EngineConfig)
    output: str | None = None
    federated: dict[str, Any]


def finetune_from_dict(data: Any, source: str = "<dict>", base_dir: Path | None = None) -> FinetuneConfig:
    """Validate a finetune mapping -> :class:`FinetuneConfig`; :class:`ConfigError` (one line per problem)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with a `federated:` section")
    base = base_dir or (Path(source).parent if not source.startswith("<") else Path.cwd())
    errors: list[tuple[str, str]] = []
    top = _validate(_Top, data, [], errors)
    fed = None
    if top is not None:
        fed = _validate(FederatedConfig, top.federated, ["federated"], errors)
    scenarios: dict[str, Any] = {}
    train_scenarios: dict[str, Any] = {}
    if fed is not None:
        learnable = registry.algorithm_names(learnable=True)
        if fed.algorithm not in learnable:
            errors.append(("federated.algorithm", f"{_show(fed.algorithm)} is not allowed; allowed (learnable "
                                                  f"algorithms): {', '.join(learnable)}"))
        else:
            spec = registry.algorithm(fed.algorithm)
            opts = _validate(spec.options, fed.options, ["federated", "options"], errors, check=spec.check,
                             files=True)
            start = getattr(opts, "checkpoint", None)
            if start is not None:  # fine-tuning starts from the options model's default checkpoint: the shipped one
                fed = fed.model_copy(update={"options": fed.options | {"checkpoint": start}})
        if fed.reference.name not in registry.algorithm_names():
            errors.append(("federated.reference.name", f"{_show(fed.reference.name)} is not allowed; allowed: "
                                                       f"{', '.join(registry.algorithm_names())}"))
        else:
            ref = registry.algorithm(fed.reference.name)
            extra = {k: v for k, v in fed.reference.model_dump().items() if k not in ("name", "restarts")}
            _validate(ref.options, extra, ["federated", "reference"], errors, check=ref.check, files=True)
            if fed.reference.restarts > 1 and not ref.random_init:
                errors.append(("federated.reference.restarts", f"{fed.reference.name!r} has no random "
                                                               "initialisation; allowed: 1"))
        try:
            check_policy(fed.wire)
        except ValueError as exc:
            errors.append(("federated.wire", str(exc)))
        names = [s.name for s in fed.sites]
        for i, s in enumerate(fed.sites):
            where = f"federated.sites[{i}]"
            if names.count(s.name) > 1:
                errors.append((f"{where}.name", f"{s.name!r} is used by more than one site; names must differ"))
            own: list[tuple[str, str]] = []
            scn = _scenario(s.scenario, base, own)
            errors.extend((f"{where}.{p}", m) for p, m in own)
            if scn is None:
                continue
            if not hasattr(scn, "family"):
                errors.append((f"{where}.scenario.file", "a site draws its samples; give scenario.family"))
                continue
            own = []
            bad = sorted(set(s.truncate) - set(type(scn).model_fields) | ({"family"} & set(s.truncate)))
            if bad:
                errors.append((f"{where}.truncate.{bad[0]}", f"not a scenario key; allowed: "
                               f"{', '.join(k for k in type(scn).model_fields if k != 'family')}"))
                continue
            tr = _scenario({**s.scenario, **s.truncate}, base, own)
            errors.extend((f"{where}.truncate.{p.split('.', 1)[-1]}", m) for p, m in own)
            scenarios[s.name], train_scenarios[s.name] = scn, tr
        for name in fed.faults.crash:
            if name not in names:
                errors.append((f"federated.faults.crash.{name}", f"no such site; allowed: {', '.join(names)}"))
        for i, st in enumerate(fed.strategies):
            if st.min_fit_clients > len(fed.sites):
                errors.append((f"federated.strategies[{i}].min_fit_clients",
                               f"must be <= the number of sites ({len(fed.sites)}) (got {st.min_fit_clients})"))
        labels = [st.name for st in fed.strategies]
        if len(set(labels)) < len(labels):
            errors.append(("federated.strategies", "two strategies share a label; give each a distinct `label`"))
    if errors:
        raise ConfigError([f"{source}: {p}: {m}" for p, m in dict.fromkeys(errors)])
    assert top is not None and fed is not None
    stem = Path(source).stem if not source.startswith("<") else "federated"
    return FinetuneConfig(seed=top.seed, precision=top.precision, engine=top.engine,
                          output=top.output or f"runs/{stem}",
                          federated=fed, source=source, scenarios=scenarios, train_scenarios=train_scenarios)


def load_finetune(path: str | Path, overrides: list[str] | tuple[str, ...] = (), *, out: str | None = None,
                  engine: str | None = None) -> FinetuneConfig:
    """Read a finetune YAML, apply ``--set`` overrides, ``--out`` and ``--engine`` -> :class:`FinetuneConfig`."""
    path = Path(path)
    data = _read_yaml(path)
    if isinstance(data, dict):
        for item in overrides:
            parts, value = _parse_override(item)
            problem = _apply_override(data, parts, value)
            if problem:
                raise ConfigError(f"--set {item}: {problem} ({_path(parts)})")
        if out is not None:
            data["output"] = out
        if engine is not None:
            eng = data.setdefault("engine", {}) or {}
            data["engine"] = {**eng, "kind": engine}
    return finetune_from_dict(data, str(path), path.parent)
