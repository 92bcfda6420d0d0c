"""Scenario YAML (+ command-line overrides) -> validated config objects (DESIGN.md section 5).

Every user error becomes one :class:`ConfigError` whose message names the file, the key path and what
is allowed, one line per problem, e.g.::

    scenarios/x.yaml: algorithms[1].rounds: must be an integer >= 1 (got -3)
    scenarios/x.yaml: engine.kind: 'rayy' is not allowed; allowed: local, ray

Validation uses pydantic v2 in strict JSON mode: a YAML document is JSON-like data, so integers are
accepted where numbers are expected and lists where tuples are, but a string is never accepted where a
number (or a bool) is.  YAML is read with YAML 1.2 number rules (``1e6``, ``1e-3`` and ``inf`` are
floats; PyYAML's YAML 1.1 rules would make them strings) and duplicate keys are errors.

Pipeline: read the YAML -> apply ``--set key.path=value`` overrides (checked against the schema) and
``--out`` / ``--engine`` -> validate the top level, the scenario (``file``, or the options model of the
registered family ``family``), every algorithm entry (the runner keys ``name``, ``label``, ``restarts``
plus the registered algorithm's options model) and the ``train:`` section -> :class:`RunConfig`.
Nothing here names a family or an algorithm: families, algorithms, roles and link classes (with their
clock defaults) come from :mod:`dsim.registry`.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from dsim import registry
from dsim.registry import CrossChecked
from dsim.results import jsonable
from dsim.scenarios.build import FileScenario, file_family
from dsim.scenarios.channel_file import ChannelFileError
from dsim.train import TrainOptions

WIRE_DTYPES = ("float64", "float32", "float16")
_QUANT = re.compile(r"^q([2-9]|1[0-6])$")
#: keys of an ``algorithms:`` entry the runner reads itself (the rest are the algorithm's options)
RUNNER_KEYS = ("name", "label", "restarts")


class ConfigError(Exception):
    """A user error in a scenario config; ``str(e)`` is the message (one line per problem).

    ``lines``: the problems, each ``'<file>: <key.path>: <what is wrong; what is allowed>'``.
    """

    def __init__(self, lines: str | Sequence[str]):
        self.lines = [lines] if isinstance(lines, str) else list(lines)
        super().__init__("\n".join(self.lines))


_CFG = ConfigDict(extra="forbid")


def _one_of(value: str, allowed: Sequence[str]) -> str:
    """``value`` when it is one of ``allowed``, else a ``value_not_allowed`` error listing them."""
    if value in allowed:
        return value
    raise PydanticCustomError("value_not_allowed", "{value} is not allowed; allowed: {allowed}",
                              {"value": repr(value), "allowed": ", ".join(allowed)})


def _link_name(value: str) -> str:
    """A registered link class (:func:`dsim.registry.link_classes`)."""
    return _one_of(value, list(registry.link_classes()))


def _role_name(value: str) -> str:
    """A registered agent role (:func:`dsim.registry.roles`)."""
    return _one_of(value, registry.roles())


LinkName = Annotated[str, AfterValidator(_link_name)]
RoleName = Annotated[str, AfterValidator(_role_name)]


# ==================================================================================== runtime models
class AlgorithmConfig(BaseModel):
    """One ``algorithms:`` entry: registry ``name``, unique ``label``, the runner's ``restarts`` (best of n
    random initialisations per realization; > 1 only for an algorithm whose spec has ``random_init``)
    and the validated ``options``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    label: str
    restarts: int = Field(1, ge=1)
    options: SerializeAsAny[BaseModel]


class EngineConfig(BaseModel):
    """``engine``: kind, the local engine's torch ``device`` (cpu | cuda | auto = cuda when available), Ray
    shards (None = one actor per agent), cluster address, GPUs per actor (the Ray engine's way onto GPUs),
    CPUs of an embedded Ray instance, actor placement over a cluster's nodes (``pack``: Ray's default;
    ``spread``), and ``compiled``: run each protocol's steady round as a Ray compiled graph (one execution
    over shared-memory channels instead of one task submission per actor call; same numbers and ledger)."""

    model_config = _CFG
    kind: Literal["local", "ray"] = "ray"
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    shards: int | None = Field(None, ge=1)
    address: str | None = None
    gpus: float = Field(0.0, ge=0)
    num_cpus: int | None = Field(None, ge=1)
    placement: Literal["pack", "spread"] = "pack"
    compiled: bool = False


def _check_wire_dtype(value: str) -> str:
    if _QUANT.match(value):
        return value
    return _one_of(value, [*WIRE_DTYPES, "q2 ... q16 (q<b>, 2<=b<=16)"])


class WireConfig(BaseModel):
    """``wire.dtype``: float64 | float32 | float16 | q<b> (uniform b-bit quantization, 2 <= b <= 16)."""

    model_config = _CFG
    dtype: Annotated[str, AfterValidator(_check_wire_dtype)] = "float32"


class LinkConfig(BaseModel):
    """One link class of the clock: latency (s), bandwidth (bit/s, may be inf), shared medium or not."""

    model_config = _CFG
    latency_s: float = Field(0.0, ge=0)
    bandwidth_bps: float = Field(1e6, gt=0)
    shared: bool = False


def default_links() -> dict[str, dict[str, float]]:
    """Link class -> its clock defaults {latency_s (s), bandwidth_bps (bit/s)}, as the registered
    families declare them (:func:`dsim.registry.link_classes`)."""
    return {name: {"latency_s": lc.latency_s, "bandwidth_bps": lc.bandwidth_bps}
            for name, lc in registry.link_classes().items()}


def _default_links() -> dict[str, LinkConfig]:
    return {k: LinkConfig(**v) for k, v in default_links().items()}


def _compute_value(v: float | str) -> float | str:
    """A compute time: seconds >= 0, or 'measured'."""
    if (isinstance(v, str) and v != "measured") or (not isinstance(v, str) and not v >= 0):
        raise PydanticCustomError("compute_s", "must be a number of seconds >= 0 or 'measured'")
    return v if isinstance(v, str) else float(v)


class ClockSettings(BaseModel):
    """``clock``: link classes (every registered one, with its family's defaults, :func:`default_links`),
    compute time (s) of one local phase per role (a constant, or ``measured``), pilot symbol duration (s,
    default one LTE OFDM symbol) and air latency (s)."""

    model_config = _CFG
    links: dict[LinkName, LinkConfig] = Field(default_factory=_default_links)
    compute_s: dict[RoleName, Annotated[float | str, AfterValidator(_compute_value)]] = Field(
        default_factory=dict, description="seconds per local phase, or 'measured': the engine's wall time of "
        "the phase per round divided by realizations x agents of the role (amortized per agent)")
    air_symbol_s: float = Field(71.4e-6, ge=0)
    air_latency_s: float = Field(0.0, ge=0)
    coherence_s: float | None = Field(None, gt=0, allow_inf_nan=False, description="channel coherence time "
                                      "T_c (s): report the overhead-adjusted rate WSR_r x max(0, 1 - t_r / T_c)")

    @field_validator("links", mode="before")
    @classmethod
    def _fill_defaults(cls, v: Any) -> Any:
        """Every link class is present; fields a given class omits take that class's defaults."""
        if not isinstance(v, dict):
            return v
        out: dict[Any, Any] = {}
        for name, default in default_links().items():
            given = v.get(name, {})
            out[name] = {**default, **given} if isinstance(given, dict) else given
        return out | {k: x for k, x in v.items() if k not in out}


class StaleCsiConfig(BaseModel):
    """``faults.stale_csi``: Gauss–Markov aging of the CSI the nodes hold (:mod:`dsim.faults`): ``rho`` given,
    or Jakes' J0(2 pi doppler_hz delay_s) from the Doppler frequency (Hz) and the CSI's age (s)."""

    model_config = _CFG
    rho: float | None = Field(None, ge=-1, le=1)
    doppler_hz: float | None = Field(None, ge=0, allow_inf_nan=False)
    delay_s: float | None = Field(None, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_way(self) -> StaleCsiConfig:
        jakes = self.doppler_hz is not None or self.delay_s is not None
        msg = None
        if self.rho is not None and jakes:
            msg = "give either rho or doppler_hz + delay_s, not both"
        elif self.rho is None and (self.doppler_hz is None or self.delay_s is None):
            msg = "required key missing; allowed: rho (a number in [-1, 1]) or both doppler_hz (Hz) and delay_s (s)"
        if msg:
            raise PydanticCustomError("cross_field", "{message}", {"field": "rho", "message": msg})
        return self

    def resolved_rho(self) -> float:
        from dsim.faults import jakes_rho

        return float(self.rho) if self.rho is not None else jakes_rho(float(self.doppler_hz), float(self.delay_s))


class CrashConfig(BaseModel):
    """One ``faults.crash`` entry: agent ``agent`` (its id, e.g. 'ue3', 'bs0', 'cpu') goes down at ``round``
    (1-based): from then on it is silent, receives and computes nothing, its pilots and share of the decision
    frozen -- for good, or with ``restart: true`` for ``down_rounds`` rounds, after which it goes on from its
    state of the round before the crash.  On the Ray engine the hosting actor is really killed (and restarted
    by Ray); :mod:`dsim.engine.restart`."""

    model_config = _CFG
    agent: Annotated[str, Field(pattern=r"^[a-z_]+[0-9]*$")]
    round: int = Field(ge=1)
    restart: bool = False
    down_rounds: int = Field(1, ge=1, description="rounds the agent is down before it is back (restart: true)")

    @field_validator("agent")
    @classmethod
    def _known_role(cls, v: str) -> str:
        _role_name(v.rstrip("0123456789"))
        return v

    @model_validator(mode="after")
    def _down_needs_restart(self) -> CrashConfig:
        if "down_rounds" in self.model_fields_set and not self.restart:
            raise PydanticCustomError("cross_field", "{message}", {
                "field": "down_rounds", "message": "down_rounds needs restart: true (without a restart the agent "
                "stays down for good)"})
        return self

    def entry(self) -> tuple[str, int] | tuple[str, int, int]:
        """The :attr:`dsim.faults.FaultModel.crash` entry: (agent, round) or (agent, round, down rounds)."""
        return (self.agent, self.round, self.down_rounds) if self.restart else (self.agent, self.round)


class FaultsConfig(BaseModel):
    """``faults``: message loss and missing-link probabilities, stale CSI, the nodes' channel-estimation
    error variance (relative to each link's gain), random extra message latency and deadlines per link
    class or per message phase, their seed (None = the run's seed); :mod:`dsim.faults`."""

    model_config = _CFG
    message_loss: float = Field(0.0, ge=0, lt=1)
    missing_links: float = Field(0.0, ge=0, lt=1)
    stale_csi: StaleCsiConfig | None = None
    csi_error: float = Field(0.0, ge=0, allow_inf_nan=False)
    delay: dict[LinkName, Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(
        default_factory=dict, description="link class -> mean random extra latency of a message (s, exponential)")
    deadline_s: dict[LinkName, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict, description="link class -> deadline (s) after which a message is late (lost this "
        "round, delivered stale next round), for every message phase on that link")
    phase_deadline_s: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict, description="message phase name (of the run's algorithms, e.g. ul_uw) -> deadline "
        "(s) of that phase's messages, replacing its link class's")
    crash: list[CrashConfig] = Field(default_factory=list)
    seed: int | None = Field(None, ge=0)


class RunConfig(BaseModel):
    """A validated run configuration (what ``dsim run`` / ``sample`` / ``train`` consume).

    ``scenario``: the registered family's options model (``dsim.registry.family(name).options``) or a
    :class:`FileScenario`; ``train``: the validated ``train:`` section (its ``options`` kept as the raw
    mapping, checked against the learnable algorithm's options model); ``sweep``: study name -> {config
    key path -> values}, the grids ``dsim sweep`` runs when no ``--grid`` is given (``run`` ignores it)."""

    model_config = _CFG
    seed: int = Field(0, ge=0)
    precision: Literal["double", "single"] = "double"
    batch: int = Field(20, ge=1)
    scenario: SerializeAsAny[BaseModel]
    algorithms: list[AlgorithmConfig] = Field(min_length=1)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    wire: WireConfig = Field(default_factory=WireConfig)
    clock: ClockSettings = Field(default_factory=ClockSettings)
    faults: FaultsConfig = Field(default_factory=FaultsConfig)
    output: str
    train: TrainOptions | None = None
    sweep: dict[str, dict[str, list[Any]]] | None = None
    source: str = "<dict>"


class _TopLevel(BaseModel):
    """The top level before the scenario / algorithm / train entries are dispatched (raw mappings there)."""

    model_config = _CFG
    seed: int = Field(0, ge=0)
    precision: Literal["double", "single"] = "double"
    batch: int = Field(20, ge=1)
    scenario: dict[str, Any]
    algorithms: Annotated[list[dict[str, Any]], Field(min_length=1)]
    engine: EngineConfig = Field(default_factory=EngineConfig)
    wire: WireConfig = Field(default_factory=WireConfig)
    clock: ClockSettings = Field(default_factory=ClockSettings)
    faults: FaultsConfig = Field(default_factory=FaultsConfig)
    output: str | None = None
    train: dict[str, Any] | None = None
    sweep: dict[str, Annotated[dict[str, Annotated[list[Any], Field(min_length=1)]],
                               Field(min_length=1)]] | None = Field(None, min_length=1)


class _AlgorithmHead(BaseModel):
    """The runner's keys of an ``algorithms:`` entry (:data:`RUNNER_KEYS`)."""

    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1)
    label: str | None = Field(None, min_length=1)
    restarts: int = Field(1, ge=1)


# ==================================================================================== schema walking
def _unwrap(tp: Any, meta: list[Any]) -> tuple[Any, list[Any], bool]:
    """Strip Annotated / Optional: (bare type, constraint metadata, nullable)."""
    nullable = False
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            args = get_args(tp)
            for m in args[1:]:
                meta.extend(m.metadata if isinstance(m, FieldInfo) else [m])
            tp = args[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            nullable = nullable or len(args) < len(get_args(tp))
            if len(args) != 1:
                return tp, meta, nullable
            tp = args[0]
        else:
            return tp, meta, nullable


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _schema_at(root: Any, loc: Sequence[Any]) -> tuple[Any, list[Any], bool] | None:
    """(type, metadata, nullable) of the schema node at ``loc`` below ``root``; None if not known.

    pydantic's ``(key, '[key]')`` (a bad mapping key) addresses the mapping's key type."""
    tp, meta, nullable = _unwrap(root, [])
    loc = [p for i, p in enumerate(loc) if not (i + 1 < len(loc) and loc[i + 1] == "[key]")]
    for part in loc:
        if _is_model(tp):
            field = tp.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            tp, meta, nullable = _unwrap(field.annotation, list(field.metadata))
            continue
        origin, args = get_origin(tp), get_args(tp)
        if origin in (list, tuple) and args:
            tp, meta, nullable = _unwrap(args[0], [])
        elif origin is dict and args:
            tp, meta, nullable = _unwrap(args[0] if part == "[key]" else args[1], [])
        else:
            return None
    return tp, meta, nullable


def _fmt_num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def _describe(node: tuple[Any, list[Any], bool] | None) -> str | None:
    """'an integer >= 1', 'a number in [0, 1)', 'a number > 0 or null', ... for a scalar schema node."""
    if node is None:
        return None
    tp, meta, nullable = node
    kind = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp)
    if kind is None:
        return None
    lo = hi = None
    for m in meta:
        for attr, sym in (("ge", ">="), ("gt", ">")):
            if getattr(m, attr, None) is not None:
                lo = (sym, getattr(m, attr))
        for attr, sym in (("le", "<="), ("lt", "<")):
            if getattr(m, attr, None) is not None:
                hi = (sym, getattr(m, attr))
    if lo and hi:
        left, right = "[" if lo[0] == ">=" else "(", "]" if hi[0] == "<=" else ")"
        kind += f" in {left}{_fmt_num(lo[1])}, {_fmt_num(hi[1])}{right}"
    elif lo or hi:
        sym, val = lo or hi
        kind += f" {sym} {_fmt_num(val)}"
    return kind + (" or null" if nullable else "")


def _allowed_keys(tp: Any) -> list[str]:
    if _is_model(tp):
        return [k for k in tp.model_fields if not (tp is RunConfig and k == "source")]
    return []


def _show(v: Any) -> str:
    s = repr(v) if isinstance(v, str) else ("a mapping" if isinstance(v, dict) else
                                           "a list" if isinstance(v, list) else
                                           ("true" if v else "false") if isinstance(v, bool) else
                                           "null" if v is None else str(v))
    return s if len(s) <= 60 else s[:57] + "..."


def _path(loc: Sequence[Any]) -> str:
    """('algorithms', 2, 'rounds') -> 'algorithms[2].rounds' (pydantic's '[key]' markers dropped)."""
    out = ""
    for part in loc:
        if part == "[key]":
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _unknown_key_msg(key: Any, allowed: Sequence[str]) -> str:
    msg = f"unknown key; allowed: {', '.join(sorted(allowed))}" if allowed else "unknown key"
    close = difflib.get_close_matches(str(key), list(allowed), n=1)
    return msg + (f" (did you mean {close[0]!r}?)" if close else "")


_TYPE_WORDS = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
    "bool_parsing": "true or false", "string_type": "a string", "dict_type": "a mapping",
    "model_type": "a mapping", "model_attributes_type": "a mapping", "list_type": "a list",
    "tuple_type": "a list",
}
_BOUND_TYPES = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")


def _error_lines(exc: ValidationError, root: Any, prefix: Sequence[Any] = (),
                 extra_allowed: Sequence[str] = ()) -> list[tuple[str, str]]:
    """pydantic errors -> [(key path, message)], with allowed values / keys / ranges from ``root``."""
    lines = []
    for err in exc.errors(include_url=False):
        loc, typ, ctx, got = tuple(err["loc"]), err["type"], err.get("ctx") or {}, err.get("input")
        if typ == "cross_field":
            loc = loc + (ctx["field"],)
            msg = err["msg"]
        elif typ == "extra_forbidden":
            parent = _schema_at(root, loc[:-1])
            msg = _unknown_key_msg(loc[-1], [*extra_allowed, *_allowed_keys(parent[0] if parent else None)])
        elif typ == "missing":
            desc = _describe(_schema_at(root, loc))
            msg = "required key missing" + (f"; allowed: {desc}" if desc else "")
        elif typ == "literal_error":
            node = _schema_at(root, loc)
            choices = get_args(node[0]) if node and get_origin(node[0]) is Literal else None
            allowed = ", ".join(map(str, choices)) if choices else ctx.get("expected", "")
            what = "key " if loc and loc[-1] == "[key]" else ""
            msg = f"{what}{_show(got)} is not allowed; allowed: {allowed}"
        elif typ in _TYPE_WORDS or typ in _BOUND_TYPES:
            desc = _describe(_schema_at(root, loc))
            msg = f"must be {desc or _TYPE_WORDS.get(typ) or err['msg']} (got {_show(got)})"
            if desc is None and typ in _BOUND_TYPES:
                msg = f"{err['msg']} (got {_show(got)})"
        elif typ == "too_short":
            n, got_n = ctx.get("min_length", 1), ctx.get("actual_length", 0)
            msg = "must not be empty" if n == 1 else f"must have at least {n} entries (got {got_n})"
        elif typ == "string_too_short":
            msg = "must not be empty"
        elif typ == "value_not_allowed":
            msg = ("key " if loc and loc[-1] == "[key]" else "") + err["msg"]
        else:
            msg = f"{err['msg']} (got {_show(got)})"
        lines.append((_path((*prefix, *loc)), msg))
    return lines


# ==================================================================================== YAML reading
class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats (1e6, 1e-3, inf) and duplicate keys as errors."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self.flatten_mapping(node)
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # unhashable key: the base class reports it
                break
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given on line {first})", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in rs if tag != "tag:yaml.org,2002:float"]
    for ch, rs in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?
                  |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
                  |[-+]?\.?(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789.iI"),
)


def _yaml_error(where: str, exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    pos = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    return f"{where}: {pos}invalid YAML: {problem}" + (f" ({context})" if context else "")


def _read_yaml(path: Path) -> Any:
    src = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{src}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{src}: is a directory, not a YAML file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{src}: not a text (UTF-8) file") from None
    except OSError as exc:
        raise ConfigError(f"{src}: cannot read: {exc.strerror or exc}") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(src, exc)) from None


# ==================================================================================== overrides
def _split_key(key: str) -> list[str | int]:
    """'algorithms.0.rounds' or 'algorithms[0].rounds' -> ['algorithms', 0, 'rounds']."""
    key = re.sub(r"\[(\d+)\]", r".\1", key.strip())
    parts: list[str | int] = []
    for p in key.split("."):
        parts.append(int(p) if p.isdigit() else p)
    return parts


def _registered_algorithm(name: Any) -> registry.AlgorithmSpec | None:
    """The registered algorithm ``name``; None when ``name`` names none (validation reports that)."""
    return registry.algorithm(name) if isinstance(name, str) and name in registry.algorithm_names() else None


def _runner_keys(spec: registry.AlgorithmSpec) -> tuple[str, ...]:
    """The runner keys an entry of ``spec`` may hold (``restarts`` only with a random initialisation)."""
    return RUNNER_KEYS if spec.random_init else tuple(k for k in RUNNER_KEYS if k != "restarts")


def _restarts_problem(name: str, family: str | None) -> str:
    """Why ``restarts`` is not allowed in an entry of algorithm ``name`` (no random initialisation)."""
    allow = [n for n in registry.algorithm_names(family) if registry.algorithm(n).random_init]
    return (f"not allowed for {name!r} (its initialisation is not random); "
            f"allowed for: {', '.join(allow) or 'no registered algorithm'}")


def _check_override(parts: list[str | int], data: dict[str, Any]) -> str | None:
    """None if ``parts`` names a key of the schema (given the data so far), else what is wrong.

    Three places have a schema that depends on the data: ``scenario`` (the channel file, or the options
    model of the registered family it names), an ``algorithms`` entry (the runner keys plus the options
    model of the algorithm it names) and ``train.options`` (the options model of ``train.algorithm``)."""
    tp: Any = RunConfig
    node: Any = data
    done: list[str | int] = []
    for part in parts:
        where = _path(done + [part]) if done else str(part)
        here = _path(done) if done else "the top level"
        if tp is Any:
            return None
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        child = node.get(part) if isinstance(node, dict) else (node[part] if in_list else None)
        if done == ["scenario"]:  # the scenario model depends on the data (file / family)
            scn = node if isinstance(node, dict) else {}
            family = scn.get("family")
            if "file" in scn or part == "file":
                tp = FileScenario
            elif isinstance(family, str) and family in registry.family_names():
                tp = registry.family(family).options
            else:
                keys = set(FileScenario.model_fields).union(
                    *(registry.family(f).options.model_fields for f in registry.family_names()))
                if part not in keys:
                    return f"{where}: unknown key; allowed: {', '.join(sorted(keys))}"
                return None
        entry = len(done) == 2 and done[0] == "algorithms"
        if entry or done == ["train", "options"]:  # the named algorithm's options (+ the runner keys)
            name = node.get("name") if entry and isinstance(node, dict) else (
                data["train"].get("algorithm") if not entry and isinstance(data.get("train"), dict) else None)
            spec = _registered_algorithm(name)
            if spec is None:
                return None  # the name is checked when validating
            runner = _runner_keys(spec) if entry else ()
            if entry and part == "restarts" and part not in runner:
                return f"{where}: {_restarts_problem(name, None)}"
            allowed = [*runner, *spec.options.model_fields]
            if part not in allowed:
                return f"{where}: unknown key; allowed: {', '.join(sorted(allowed))}"
            sub = _schema_at(_AlgorithmHead if part in runner else spec.options, [part])
            tp = sub[0] if sub else Any
        elif _is_model(tp):
            allowed = _allowed_keys(tp)
            if part not in allowed:
                return f"{where}: {_unknown_key_msg(part, allowed)}"
            tp = _schema_at(tp, [part])[0]
        elif get_origin(tp) is list:
            if not isinstance(part, int):
                return f"{where}: {here} is a list; use an index (e.g. {_path(done)}.0)"
            n = len(node) if isinstance(node, list) else 0
            if part >= n:
                return f"{where}: index out of range; {here} has {n} entries (allowed: 0 ... {n - 1})"
            tp = _unwrap(get_args(tp)[0], [])[0]
        elif get_origin(tp) is dict:
            ktp, vtp = get_args(tp)
            ktp, kmeta, _ = _unwrap(ktp, [])
            if get_origin(ktp) is Literal and part not in get_args(ktp):
                return f"{where}: {part!r} is not allowed; allowed: {', '.join(get_args(ktp))}"
            problem = _key_problem(kmeta, part)
            if problem:
                return f"{where}: {problem}"
            tp = _unwrap(vtp, [])[0]
        else:
            return f"{where}: {here} is a value, not a mapping"
        done.append(part)
        node = child
    return None


def _key_problem(meta: Sequence[Any], key: Any) -> str | None:
    """What the after-validators of a mapping's key type (e.g. :data:`LinkName`) say about ``key``."""
    for m in meta:
        if isinstance(m, AfterValidator):
            try:
                m.func(key)
            except PydanticCustomError as exc:
                return exc.message()
    return None


def _apply_override(data: dict[str, Any], parts: list[str | int], value: Any) -> str | None:
    """Set ``data[parts...] = value`` creating mappings on the way; None on success, else the problem."""
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            node = node[part]  # index checked by _check_override
            continue
        cur = node.get(part)
        if cur is None:
            node[part] = cur = {}
        if not isinstance(cur, (dict, list)) or (isinstance(cur, list) and not isinstance(nxt, int)):
            return f"{_path(parts[: i + 1])} is {_show(cur)} in the file, not a mapping"
        node = cur
    node[parts[-1]] = value
    return None


def _parse_override(item: str) -> tuple[list[str | int], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item}: expected KEY.PATH=VALUE (e.g. --set algorithms.0.rounds=10)")
    key, raw = item.split("=", 1)
    parts = _split_key(key)
    if not key.strip() or any(p == "" for p in parts):
        raise ConfigError(f"--set {item}: empty key path; expected KEY.PATH=VALUE")
    try:
        value = yaml.load(raw, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(f"--set {item}", exc)) from None
    return parts, value


# ==================================================================================== validation
def _validate(model: type[BaseModel], data: Any, prefix: Sequence[Any], errors: list[tuple[str, str]],
              extra_allowed: Sequence[str] = (), check: Callable[[Any, bool], list[tuple[str, str]]] | None = None,
              files: bool = False) -> BaseModel | None:
    """Strict JSON-mode validation of ``data`` by ``model``; errors appended with the key path prefix.

    Then the model's cross-field rules (:class:`dsim.registry.CrossChecked`) and ``check(obj, files) -> [(field,
    problem)]`` (an algorithm's :attr:`dsim.registry.AlgorithmSpec.check`: e.g. a checkpoint name is a packaged
    model; with ``files``, that a checkpoint file exists)."""
    try:
        obj = model.model_validate_json(json.dumps(jsonable(data, finite=False), allow_nan=True), strict=True,
                                        context={"defer_cross": True})
    except ValidationError as exc:
        errors.extend(_error_lines(exc, model, prefix, extra_allowed))
        return None
    cross = obj.cross_errors() if isinstance(obj, CrossChecked) else []
    cross += check(obj, files) if check is not None else []
    errors.extend((_path((*prefix, field)), msg) for field, msg in cross)
    return None if cross else obj


def _scenario(raw: dict[str, Any], base_dir: Path, errors: list[tuple[str, str]]) -> BaseModel | None:
    """``scenario:``: a channel file (resolved against ``base_dir``) or the options of a registered family."""
    if "file" in raw:
        scn = _validate(FileScenario, raw, ["scenario"], errors)
        if scn is None:
            return None
        path = Path(os.path.expanduser(scn.file))
        path = Path(os.path.abspath(path if path.is_absolute() else base_dir / path))
        if not path.is_file():
            rel = not Path(scn.file).is_absolute()
            where = " (a relative path is read from the YAML file's directory)" if rel else ""
            errors.append(("scenario.file", f"no such channel file {scn.file!r}: {path}{where}"))
            return None
        return FileScenario(file=str(path))
    family = raw.get("family")
    families = registry.family_names()
    if family is None:
        errors.append(("scenario.family", f"required key missing; allowed: {', '.join(families)} "
                                          "(or give scenario.file: a channel file)"))
        return None
    if not isinstance(family, str) or family not in families:
        errors.append(("scenario.family", f"{_show(family)} is not allowed; allowed: {', '.join(families)}"))
        return None
    return _validate(registry.family(family).options, raw, ["scenario"], errors)


def _family_check(where: str, name: str, spec: registry.AlgorithmSpec, family: str | None,
                  errors: list[tuple[str, str]], *, learnable: bool = False) -> None:
    """An error at ``where`` when algorithm ``name`` does not run on the scenario's ``family`` (if known)."""
    if family is not None and family not in spec.families:
        names = ", ".join(registry.algorithm_names(family, learnable=learnable))
        kind = "learnable ones" if learnable else "allowed"
        errors.append((where, f"{name!r} does not run on family {family!r}; {kind} for {family}: {names}"))


def _algorithms(raw: list[dict[str, Any]], family: str | None, errors: list[tuple[str, str]],
                files: bool = False) -> list[AlgorithmConfig]:
    """``algorithms:`` entries: the runner keys (:data:`RUNNER_KEYS`) + the registered algorithm's options
    (``files``: the files they name must exist, :attr:`dsim.registry.AlgorithmSpec.check`)."""
    out: list[AlgorithmConfig] = []
    first_of: dict[str, int] = {}
    all_names = ", ".join(registry.algorithm_names())
    for i, entry in enumerate(raw):
        pre = ["algorithms", i]
        if "name" not in entry:
            errors.append((f"algorithms[{i}].name", f"required key missing; allowed: {all_names}"))
            continue
        head = _validate(_AlgorithmHead, entry, pre, errors)
        if head is None:
            continue
        spec = _registered_algorithm(head.name)
        if spec is None:
            errors.append((f"algorithms[{i}].name", f"unknown algorithm {head.name!r}; allowed: {all_names}"))
            continue
        _family_check(f"algorithms[{i}].name", head.name, spec, family, errors)
        runner = _runner_keys(spec)
        if "restarts" in entry and "restarts" not in runner:
            errors.append((f"algorithms[{i}].restarts", _restarts_problem(head.name, family)))
        opts = {k: v for k, v in entry.items() if k not in RUNNER_KEYS}
        options = _validate(spec.options, opts, pre, errors, extra_allowed=runner, check=spec.check, files=files)
        label = head.label if head.label is not None else head.name
        if label in first_of:
            why = "" if head.label else ", the label defaults to the name"
            errors.append((f"algorithms[{i}].label",
                           f"duplicate label {label!r} (also algorithms[{first_of[label]}]{why}); "
                           "labels must be unique: give each entry its own label"))
        first_of.setdefault(label, i)
        if options is not None:
            out.append(AlgorithmConfig(name=head.name, label=label, restarts=head.restarts, options=options))
    return out


def _train(raw: dict[str, Any], family: str | None, errors: list[tuple[str, str]],
           files: bool = False) -> TrainOptions | None:
    """``train:``: :class:`dsim.train.TrainOptions`, ``algorithm`` a registered learnable algorithm (running
    on ``family`` when known) and ``options`` valid for its options model (kept as the raw mapping; ``files``:
    the files they name must exist)."""
    own: list[tuple[str, str]] = []
    head = _validate(TrainOptions, raw, ["train"], own)
    # the algorithm is checked against the registry below (with the allowed names), not by pydantic
    errors.extend(e for e in own if e[0] != "train.algorithm")
    learnable = registry.algorithm_names(learnable=True)
    name = raw.get("algorithm")
    if "algorithm" not in raw:
        errors.append(("train.algorithm", f"required key missing; allowed: {', '.join(learnable)}"))
        return None
    if not isinstance(name, str) or name not in learnable:
        errors.append(("train.algorithm", f"{_show(name)} is not allowed; allowed (learnable algorithms): "
                                          f"{', '.join(learnable)}"))
        return None
    spec = registry.algorithm(name)
    _family_check("train.algorithm", name, spec, family, errors, learnable=True)
    options = raw.get("options", {})
    if isinstance(options, dict) and _validate(spec.options, options, ["train", "options"], errors,
                                               check=spec.check, files=files) is None:
        return None
    return head if isinstance(head, TrainOptions) else None


def _default_output(source: str) -> str:
    stem = Path(source).stem if not source.startswith("<") else "run"
    return f"runs/{stem or 'run'}"


def _nan_paths(node: Any, loc: tuple[Any, ...] = ()) -> list[str]:
    """Key paths of every NaN number in a YAML document (NaN is never a valid setting)."""
    if isinstance(node, float) and math.isnan(node):
        return [_path(loc)]
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _nan_paths(v, (*loc, k))]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _nan_paths(v, (*loc, i))]
    return []


def _file_family(raw_scn: dict[str, Any], scn: BaseModel | None, errors: list[tuple[str, str]]) -> str | None:
    """The family of a valid ``scenario.file`` (read from the file, so that algorithms are checked against
    it at validation); an unreadable or foreign file is a ``scenario.file`` error."""
    if not isinstance(scn, FileScenario):
        return None
    try:
        return file_family(scn.file)
    except ChannelFileError as exc:
        errors.append(("scenario.file", str(exc)))
        return None


#: the sections whose files (e.g. a learned protocol's checkpoint) a command reads: ``reads`` of :func:`load_config`
READ_SECTIONS = ("algorithms", "train")


def _build(data: Any, source: str, base_dir: Path, origins: dict[str, str],
           reads: Sequence[str] = ()) -> RunConfig:
    unknown = sorted(set(reads) - set(READ_SECTIONS))
    if unknown:  # a caller's mistake, not the user's
        raise ValueError(f"reads: {unknown} are not sections; allowed: {', '.join(READ_SECTIONS)}")
    if data is None:
        raise ConfigError(f"{source}: the file is empty; expected a mapping with at least "
                          "`scenario` and `algorithms`")
    if not isinstance(data, dict):
        keys = ", ".join(_allowed_keys(RunConfig))
        got = _show(data) if isinstance(data, list) else f"{type(data).__name__} {_show(data)}"
        raise ConfigError(f"{source}: the top level must be a mapping of keys ({keys}), got {got}")
    errors: list[tuple[str, str]] = [(p, "NaN is not allowed; allowed: a finite number") for p in _nan_paths(data)]
    top = _validate(_TopLevel, data, [], errors)
    scn = None
    if isinstance(data.get("scenario"), dict):
        scn = _scenario(data["scenario"], base_dir, errors)
    raw_scn = data.get("scenario") if isinstance(data.get("scenario"), dict) else {}
    family = raw_scn.get("family") if "file" not in raw_scn else _file_family(raw_scn, scn, errors)
    family = family if isinstance(family, str) and family in registry.family_names() else None
    algs: list[AlgorithmConfig] = []
    raw_algs = data.get("algorithms")
    if isinstance(raw_algs, list) and raw_algs and all(isinstance(a, dict) for a in raw_algs):
        algs = _algorithms(raw_algs, family, errors, files="algorithms" in reads)
    elif isinstance(raw_algs, list) and not raw_algs:
        errors = [(p, m + f"; allowed names: {', '.join(registry.algorithm_names())}" if p == "algorithms" else m)
                  for p, m in errors]
    train = _train(data["train"], family, errors, "train" in reads) if isinstance(data.get("train"), dict) else None
    if train is not None and train.vary and scn is not None and not isinstance(scn, FileScenario):
        from dsim.learn import scenario_sampler

        try:
            scenario_sampler(scn, vary=train.vary)
        except registry.OptionError as exc:
            errors.append((exc.key, exc.problem))
    if train is not None and train.augment != "none" and family is not None:
        from dsim.learn import augmentation

        try:
            augmentation(family, train.augment)
        except registry.OptionError as exc:
            errors.append((exc.key, exc.problem))
    if errors:
        lines, first = [], {}
        for path, msg in errors:  # one line per key path: the first problem found there
            first.setdefault(path, msg)
        for path, msg in first.items():
            origin = next((o for k, o in origins.items()
                           if path == k or path.startswith(k + ".") or path.startswith(k + "[")), None)
            lines.append(f"{source}: {path}: {msg}" + (f" (from {origin})" if origin else ""))
        raise ConfigError(lines)
    assert top is not None and scn is not None
    return RunConfig(seed=top.seed, precision=top.precision, batch=top.batch, scenario=scn, algorithms=algs,
                     engine=top.engine, wire=top.wire, clock=top.clock, faults=top.faults,
                     output=top.output if top.output is not None else _default_output(source),
                     train=train, sweep=top.sweep, source=source)


# ==================================================================================== public API
def config_from_dict(data: dict[str, Any], source: str = "<dict>", *, base_dir: str | Path | None = None,
                     reads: Sequence[str] = ()) -> RunConfig:
    """Validate a config mapping (as read from YAML) -> :class:`RunConfig`; :class:`ConfigError` if invalid.

    ``source`` names the config in messages and gives the default output ``runs/<stem>``;
    ``base_dir``: directory a relative ``scenario.file`` is resolved against (default: the directory of
    ``source`` when it is a file path, else the current directory); ``reads``: as in :func:`load_config`.
    """
    if base_dir is None:
        base_dir = Path(source).parent if not source.startswith("<") else Path.cwd()
    return _build(data, source, Path(base_dir), {}, reads)


def load_config(path: str | Path, overrides: Sequence[str] = (), *, out: str | None = None,
                engine: str | None = None, reads: Sequence[str] = ()) -> RunConfig:
    """Read a scenario YAML, apply overrides, validate -> :class:`RunConfig`.

    overrides: ``'key.path=value'`` strings (``--set``); the value is parsed as a YAML scalar / flow
    value ('3', '1e-3', 'true', '[1, 2]', '{a: 1}'); list entries by index ('algorithms.0.rounds=5').
    ``out`` replaces ``output``; ``engine`` replaces ``engine.kind``.  Every user error (missing or
    unreadable file, YAML syntax, unknown override path, schema violation) raises :class:`ConfigError`.

    ``reads``: the sections (:data:`READ_SECTIONS`) the caller is about to use, whose files must exist now:
    ``algorithms`` (``dsim run``, ``sweep``), ``train`` (``dsim train``).  A checkpoint a section names is
    always checked to be a packaged model or a path; its file only when the section is read (a training
    YAML's ``algorithms:`` may name the checkpoint its own training writes).
    """
    path = Path(path)
    source = str(path)
    data = _read_yaml(path)
    origins: dict[str, str] = {}
    if isinstance(data, dict):
        for item in overrides:
            parts, value = _parse_override(item)
            problem = _check_override(parts, data) or _apply_override(data, parts, value)
            if problem:
                raise ConfigError(f"--set {item}: {problem}")
            origins[_path(parts)] = f"--set {item}"
        if out is not None:
            data["output"] = out
            origins["output"] = f"--out {out}"
        if engine is not None:
            if data.get("engine") is None:
                data["engine"] = {}
            if isinstance(data["engine"], dict):
                data["engine"]["kind"] = engine
                origins["engine.kind"] = f"--engine {engine}"
    return _build(data, source, path.parent, origins, reads)


def resolved_dict(cfg: RunConfig) -> dict[str, Any]:
    """The fully resolved config (defaults filled) as plain Python data, YAML-dumpable and valid input
    of :func:`config_from_dict` (the ``source`` is not included; ``restarts`` only where it is not 1)."""
    algs = [{"name": a.name, "label": a.label, **({"restarts": a.restarts} if a.restarts != 1 else {}),
             **jsonable(a.options, finite=False)} for a in cfg.algorithms]
    return {
        "seed": cfg.seed,
        "precision": cfg.precision,
        "batch": cfg.batch,
        "scenario": jsonable(cfg.scenario, finite=False),
        "algorithms": algs,
        "engine": jsonable(cfg.engine, finite=False),
        "wire": jsonable(cfg.wire, finite=False),
        "clock": jsonable(cfg.clock, finite=False),
        "faults": jsonable(cfg.faults, finite=False),
        "output": cfg.output,
        "train": jsonable(cfg.train, finite=False),
    }
