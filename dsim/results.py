"""Run directory: metrics, overhead ledger, final WSR, summary and plots (DESIGN.md §5).

A :class:`RunWriter` owns one run directory.  Every :meth:`RunWriter.add` (and :meth:`RunWriter.fail`)
rewrites all tables at once, so a run that dies later keeps everything computed so far::

    out_dir/config.yaml     the resolved configuration (yaml.safe_dump, keys in given order)
    out_dir/metrics.csv     algorithm,round,wsr_mean,wsr_std,wsr_min,wsr_max,sim_time_s,cum_reals,cum_bytes
    out_dir/overhead.csv    algorithm,round,phase,link,messages,reals,bytes
    out_dir/wsr.csv         algorithm,realization,wsr            (final WSR per realization)
    out_dir/summary.json    unit, seed, engine, family, versions, algorithms{label: stats | {error}}
    out_dir/plots/*.png     written by :meth:`RunWriter.plots`

Conventions.  WSR values are in the run's ``unit`` (the family's air states it: 'nat/Hz' or 'bit/s/Hz';
a sum spectral efficiency is the WSR with unit weights); the column names stay ``wsr_*``, the plots say
WSR and summary.json states the unit.  Statistics over realizations use the population standard
deviation (``np.std``, ddof = 0).
Signaling figures are per realization: ``cum_reals`` / ``cum_bytes`` and the ledger rows are means over
the batch.  Link class ``air`` (pilots; physics, not signaling, DESIGN.md §3) carries no reals or bytes
and is left out of the signaling totals; its pilot symbols per round are reported separately.
Floats are written with ``repr`` (shortest round-trip form), so values read back are bit-exact; NaN is
``nan`` in the CSVs and ``null`` in summary.json.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import torch
import yaml
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pydantic import BaseModel

UNITS = ("nat/Hz", "bit/s/Hz")
METRICS_COLUMNS = ("algorithm", "round", "wsr_mean", "wsr_std", "wsr_min", "wsr_max", "sim_time_s",
                   "cum_reals", "cum_bytes")
#: extra metrics.csv columns of a run with ``clock.coherence_s``: the overhead-adjusted rate (see
#: :func:`effective_factor`), mean and std over realizations
EFFECTIVE_COLUMNS = ("eff_wsr_mean", "eff_wsr_std")
OVERHEAD_COLUMNS = ("algorithm", "round", "phase", "link", "messages", "reals", "bytes")
WSR_COLUMNS = ("algorithm", "realization", "wsr")
LEDGER_KEYS = ("round", "phase", "link", "messages", "reals", "bytes")
AIR_LINK = "air"
VERSION_PACKAGES = ("torch", "numpy", "ray", "simpy", "msgpack")
_CORE_SUMMARY_KEYS = ("name", "rounds", "final_wsr", "reals_per_round", "bytes_per_round",
                      "reals_per_round_by_link", "bytes_per_round_by_link", "air_symbols_per_round",
                      "sim_time_s", "wall_time_s")


@dataclass
class AlgorithmResult:
    """Everything one algorithm entry of a run produced.

    R = number of communication rounds, B = realizations in the batch, I = UEs.

    label: the algorithm entry's label (default its name); unique within a run.
    name: the algorithm's registry name.
    wsr: (R+1, B) WSR per round (row 0 = initialisation) per realization, in the run's unit.
    sim_time_s: (R+1,) cumulative simulated time (s) at the end of each round, row 0 = 0.
    cum_reals: (R+1,) cumulative signaling reals per realization (mean over realizations).
    cum_bytes: (R+1,) cumulative signaling bytes per realization.
    ledger: rows {round, phase, link, messages, reals, bytes}, per realization (floats allowed).
    final: (B,) final WSR per realization (may differ from wsr[-1], e.g. best of restarts).
    wall_time_s: wall-clock time of the algorithm (s).
    per_user: (B, I) final per-UE rate in the run's unit, for CDF plots; None if not available.
    extra: further JSON-able entries for summary.json, e.g. {'restarts': 10} (the runner's facts, and the
        protocol's meta as ``protocol_<key>``).
    """

    label: str
    name: str
    wsr: np.ndarray
    sim_time_s: np.ndarray
    cum_reals: np.ndarray
    cum_bytes: np.ndarray
    ledger: list[dict]
    final: np.ndarray
    wall_time_s: float
    per_user: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    @property
    def rounds(self) -> int:
        """R, the number of communication rounds (rows of ``wsr`` minus the initialisation)."""
        return int(np.shape(self.wsr)[0]) - 1


def _float_array(x: Any, name: str, label: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if np.iscomplexobj(arr):
        raise ValueError(f"result {label!r}: {name} must be real, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def _checked(result: AlgorithmResult) -> AlgorithmResult:
    """A copy of ``result`` with float64 numpy arrays, shapes and ledger rows validated."""
    lab = result.label
    wsr = _float_array(result.wsr, "wsr", lab)
    if wsr.ndim != 2 or wsr.shape[0] < 1 or wsr.shape[1] < 1:
        raise ValueError(f"result {lab!r}: wsr must have shape (R+1, B) with R >= 0, B >= 1; got {wsr.shape}")
    n_rows, batch = wsr.shape
    per_round = {}
    for key in ("sim_time_s", "cum_reals", "cum_bytes"):
        arr = _float_array(getattr(result, key), key, lab)
        if arr.shape != (n_rows,):
            raise ValueError(f"result {lab!r}: {key} must have shape ({n_rows},), got {arr.shape}")
        per_round[key] = arr
    final = _float_array(result.final, "final", lab)
    if final.shape != (batch,):
        raise ValueError(f"result {lab!r}: final must have shape ({batch},), got {final.shape}")
    per_user = None
    if result.per_user is not None:
        per_user = _float_array(result.per_user, "per_user", lab)
        if per_user.ndim != 2 or per_user.shape[0] != batch:
            raise ValueError(f"result {lab!r}: per_user must have shape ({batch}, I), got {per_user.shape}")
    ledger = []
    for i, row in enumerate(result.ledger):
        missing = [k for k in LEDGER_KEYS if k not in row]
        if missing:
            raise ValueError(f"result {lab!r}: ledger row {i} lacks {missing}; rows need {list(LEDGER_KEYS)}")
        rnd = int(row["round"])
        if rnd != row["round"] or not 0 <= rnd < n_rows:
            raise ValueError(f"result {lab!r}: ledger row {i} has round {row['round']!r}, allowed 0..{n_rows - 1}")
        ledger.append({"round": rnd, "phase": str(row["phase"]), "link": str(row["link"]),
                       **{k: _number(row[k]) for k in ("messages", "reals", "bytes")}})
    clash = sorted(set(result.extra) & set(_CORE_SUMMARY_KEYS))
    if clash:
        raise ValueError(f"result {lab!r}: extra keys {clash} clash with summary.json's own keys")
    return AlgorithmResult(label=str(lab), name=str(result.name), wsr=wsr, final=final, ledger=ledger,
                           wall_time_s=float(result.wall_time_s), per_user=per_user, extra=dict(result.extra),
                           **per_round)


def _number(x: Any) -> int | float:
    """A ledger count as a Python int when integral-typed, else float."""
    if isinstance(x, (bool, np.bool_)):
        return int(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    return float(x)


def _fmt(x: Any) -> str:
    """CSV cell: ints as ints, floats in shortest round-trip form, NaN as 'nan'."""
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return repr(float(x))
    return str(x)


def jsonable(x: Any, *, finite: bool = True) -> Any:
    """Plain JSON data: mapping keys as strings, tuples as lists, pydantic models dumped, numpy arrays /
    scalars and torch tensors to Python, paths to str, any other object to its ``str``.

    ``finite``: non-finite floats become None (summary.json, strict JSON); False keeps them (a config's
    ``inf`` bandwidth, written with ``allow_nan``)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v, finite=finite) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v, finite=finite) for v in x]
    if isinstance(x, BaseModel):
        return jsonable(x.model_dump(), finite=finite)
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist(), finite=finite)
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) or not finite else None
    if x is None or isinstance(x, str):
        return x
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    return str(x)


def _yamlable(x: Any) -> Any:
    """Config data yaml.safe_dump accepts: tuples to lists, numpy to Python, paths to str."""
    if isinstance(x, dict):
        return {_yamlable(k): _yamlable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_yamlable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _yamlable(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    return x


class OutputError(Exception):
    """An output path (run directory, checkpoint directory, channel file) that cannot be written; one line."""


def prepare_out_dir(path: str | Path, key: str = "output") -> Path:
    """Create the directory ``path`` (and ``path/plots``) and check that a file can be written in it.

    Raises :class:`OutputError` naming ``key`` and the path (an existing file, a read-only or missing
    parent, ...) before any work is done."""
    path = Path(path)
    try:
        (path / "plots").mkdir(parents=True, exist_ok=True)
        probe = path / ".dsim-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        what = "is an existing file" if path.is_file() else f"cannot be written ({why}: {exc.filename})"
        raise OutputError(f"{key}: {str(path)!r} {what}; give a directory that can be created and written "
                          "(--out DIR)") from None
    return path


def check_out_file(path: str | Path, key: str = "--output-file") -> Path:
    """A file path that can be written: not a directory, its parent creatable.  :class:`OutputError` else."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{key}: {str(path)!r} is a directory; give a file name (e.g. {path / 'channels.npz'})")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{key}: cannot create the directory of {str(path)!r} ({exc.strerror})") from None
    if not os.access(path.parent, os.W_OK):
        raise OutputError(f"{key}: the directory of {str(path)!r} is not writable")
    return path


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(path: Path | str, obj: Any) -> None:
    """``obj`` as indented JSON at ``path``, written atomically (a ``.tmp`` file, then a rename): a reader, or a
    run interrupted while writing, sees the previous complete file or the new one, never half of one.  Scripts
    that build results row by row call it after every row, so an interrupted run keeps what it computed."""
    _write_atomic(Path(path), json.dumps(jsonable(obj, finite=False), indent=1))


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_fmt(v) for v in row])
    os.replace(tmp, path)


def package_versions() -> dict[str, str | None]:
    """python, dsim ('dev' when not installed as a distribution) and the packages in VERSION_PACKAGES
    (None when not installed); read from package metadata, nothing is imported."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    try:
        out["dsim"] = metadata.version("dsim")
    except metadata.PackageNotFoundError:
        out["dsim"] = "dev"
    for pkg in VERSION_PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def wsr_stats(values: np.ndarray) -> dict[str, float]:
    """mean, std (ddof = 0), min, max, median of a 1-D array of WSRs."""
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(np.mean(v)), "std": float(np.std(v)), "min": float(np.min(v)),
            "max": float(np.max(v)), "median": float(np.median(v))}


def per_round_signaling(result: AlgorithmResult) -> dict[str, Any]:
    """Signaling per round, means over rounds 1..R of per-round totals (per realization).

    Rounds with no ledger row count as zero; round-0 (initialisation) rows are left out; link class
    'air' is not signaling.  Returns reals_per_round, bytes_per_round, {link: value} for both, and
    air_symbols_per_round (pilot symbols, the 'air' rows' messages).  All 0 when R = 0.
    """
    rounds = result.rounds
    reals: dict[str, float] = {}
    nbytes: dict[str, float] = {}
    air = 0.0
    for row in result.ledger:
        if row["round"] < 1:
            continue
        if row["link"] == AIR_LINK:
            air += float(row["messages"])
            continue
        reals[row["link"]] = reals.get(row["link"], 0.0) + float(row["reals"])
        nbytes[row["link"]] = nbytes.get(row["link"], 0.0) + float(row["bytes"])
    div = float(max(rounds, 1))
    reals_by = {k: v / div for k, v in sorted(reals.items())}
    bytes_by = {k: v / div for k, v in sorted(nbytes.items())}
    return {"reals_per_round": sum(reals.values()) / div, "bytes_per_round": sum(nbytes.values()) / div,
            "reals_per_round_by_link": reals_by, "bytes_per_round_by_link": bytes_by,
            "air_symbols_per_round": air / div}


def effective_factor(sim_time_s: np.ndarray, coherence_s: float) -> np.ndarray:
    """max(0, 1 - t_r / T_c) per round: the share of a coherence time T_c [s] left for data once the
    signaling of rounds 1..r has taken t_r [s] of simulated time (``sim_time_s``, (R+1,), t_0 = 0)."""
    return np.maximum(0.0, 1.0 - np.asarray(sim_time_s, dtype=np.float64) / float(coherence_s))


def effective_summary(result: AlgorithmResult, coherence_s: float) -> dict[str, Any]:
    """summary.json's overhead-adjusted entries: the round count r* that maximizes the mean effective
    rate WSR_r x max(0, 1 - t_r / T_c) (round 0 = stop at the initialisation), that rate, and T_c."""
    eff = result.wsr.mean(axis=1) * effective_factor(result.sim_time_s, coherence_s)
    best = int(np.argmax(eff))
    return {"coherence_s": float(coherence_s), "best_rounds": best, "best_effective_wsr": float(eff[best]),
            "final_effective_wsr": float(eff[-1])}


def algorithm_summary(result: AlgorithmResult, coherence_s: float | None = None) -> dict[str, Any]:
    """summary.json's entry for one result (see the module docstring); with ``coherence_s`` also the
    overhead-adjusted entries of :func:`effective_summary`."""
    eff = {"effective": effective_summary(result, coherence_s)} if coherence_s else {}
    return {"name": result.name, "rounds": result.rounds, "final_wsr": wsr_stats(result.final),
            **per_round_signaling(result), "sim_time_s": float(result.sim_time_s[-1]),
            "wall_time_s": float(result.wall_time_s), **eff, **result.extra}


class RunWriter:
    """Writes one run directory (DESIGN.md §5); see the module docstring for the files.

    out_dir: created with out_dir/plots.  config: the resolved configuration, written to config.yaml.
    unit: 'nat/Hz' or 'bit/s/Hz'.  seed, engine ('local' | 'ray'), family (scenario family) go to
    summary.json; family also titles the plots.  coherence_s: the channel coherence time T_c [s]; when
    given, metrics.csv has the overhead-adjusted rate (:data:`EFFECTIVE_COLUMNS`), summary.json each
    algorithm's best round count, and plots/effective_wsr_vs_round.png shows it.
    """

    def __init__(self, out_dir: Path, config: dict, *, unit: str, seed: int, engine: str, family: str,
                 metric: str = "WSR", coherence_s: float | None = None) -> None:
        self.coherence_s = coherence_s
        if unit not in UNITS:
            raise ValueError(f"RunWriter: unit {unit!r} not allowed; allowed: {list(UNITS)}")
        self.out_dir = Path(out_dir)
        self.plot_dir = self.out_dir / "plots"
        self.unit = unit
        self.metric = metric
        self.seed = int(seed)
        self.engine = str(engine)
        self.family = str(family)
        self.results: list[AlgorithmResult] = []
        self.errors: dict[str, str] = {}
        self._order: list[str] = []  # labels of results and failures in the order they came
        prepare_out_dir(self.out_dir)
        text = yaml.safe_dump(_yamlable(config), sort_keys=False, allow_unicode=True)
        _write_atomic(self.out_dir / "config.yaml", text)

    # -- recording ---------------------------------------------------------------------------------
    def _claim(self, label: str) -> None:
        if label in self._order:
            raise ValueError(f"RunWriter: algorithm label {label!r} already recorded; labels must be unique")
        self._order.append(label)

    def add(self, result: AlgorithmResult) -> None:
        """Record a finished algorithm and rewrite metrics.csv, overhead.csv, wsr.csv, summary.json."""
        checked = _checked(result)
        self._claim(checked.label)
        self.results.append(checked)
        self._write_tables()

    def fail(self, label: str, error: str) -> None:
        """Record a failed algorithm as {'error': error} in summary.json and rewrite the tables."""
        self._claim(str(label))
        self.errors[str(label)] = str(error)
        self._write_tables()

    # -- tables ------------------------------------------------------------------------------------
    def _write_tables(self) -> None:
        self._write_metrics()
        write_csv(self.out_dir / "overhead.csv", OVERHEAD_COLUMNS,
                   ((r.label, *(row[k] for k in LEDGER_KEYS)) for r in self.results for row in r.ledger))
        write_csv(self.out_dir / "wsr.csv", WSR_COLUMNS,
                   ((r.label, b, w) for r in self.results for b, w in enumerate(r.final)))
        _write_atomic(self.out_dir / "summary.json", json.dumps(self.summary(), indent=2, allow_nan=False) + "\n")

    def _write_metrics(self) -> None:
        rows = []
        for r in self.results:
            w = r.wsr
            cols = (w.mean(axis=1), w.std(axis=1), w.min(axis=1), w.max(axis=1), r.sim_time_s, r.cum_reals,
                    r.cum_bytes)
            if self.coherence_s:
                f = effective_factor(r.sim_time_s, self.coherence_s)
                cols = (*cols, w.mean(axis=1) * f, w.std(axis=1) * f)
            rows.extend((r.label, t, *(c[t] for c in cols)) for t in range(w.shape[0]))
        columns = METRICS_COLUMNS + (EFFECTIVE_COLUMNS if self.coherence_s else ())
        write_csv(self.out_dir / "metrics.csv", columns, rows)

    def summary(self) -> dict[str, Any]:
        """The content of summary.json (plain JSON data, non-finite numbers as None)."""
        by_label = {r.label: r for r in self.results}
        algorithms = {lab: (algorithm_summary(by_label[lab], self.coherence_s) if lab in by_label
                            else {"error": self.errors[lab]})
                      for lab in self._order}
        return jsonable({"unit": self.unit, "seed": self.seed, "engine": self.engine, "family": self.family,
                         "versions": package_versions(), "algorithms": algorithms})

    def summary_table(self) -> str:
        """One-screen text table: label, final WSR mean±std [unit], rounds, reals/round, bytes/round,
        simulated time (s), wall time (s); failed algorithms with their error."""
        final = f"final {self.metric} [{self.unit}]"
        head = (f"{'algorithm':<22} {final:>22} {'rounds':>6} {'reals/rnd':>10} "
                f"{'bytes/rnd':>10} {'sim time s':>11} {'wall s':>9}")
        lines = [head, "-" * len(head)]
        by_label = {r.label: r for r in self.results}
        for lab in self._order:
            if lab not in by_label:
                err = " ".join(self.errors[lab].split())
                lines.append(f"{lab[:22]:<22} FAILED: {err[:len(head) - 31]}")
                continue
            r = by_label[lab]
            st = wsr_stats(r.final)
            sig = per_round_signaling(r)
            wsr = f"{st['mean']:.3f} ± {st['std']:.3f}"
            lines.append(f"{lab[:22]:<22} {wsr:>22} {r.rounds:>6d} {sig['reals_per_round']:>10.6g} "
                         f"{sig['bytes_per_round']:>10.6g} {float(r.sim_time_s[-1]):>11.4g} "
                         f"{r.wall_time_s:>9.3g}")
        # a learned protocol adapted at build time (dsim.learn: meta adapt_steps, adapt_samples, adapt_s,
        # recorded by the runner as protocol_* extra keys): its adaptation is not in the wall time
        notes = [f"{r.label}: adapted with {r.extra['protocol_adapt_steps']} gradient steps on "
                 f"{r.extra.get('protocol_adapt_samples', '?')} target samples in "
                 f"{float(r.extra.get('protocol_adapt_s', float('nan'))):.3g} s (not in wall s)"
                 for r in self.results if r.extra.get("protocol_adapt_steps")]
        return "\n".join(lines + notes)

    # -- plots -------------------------------------------------------------------------------------
    def plots(self) -> list[Path]:
        """Write the PNGs into out_dir/plots and return their paths (none when nothing was added)."""
        if not self.results:
            return []
        paths = [self._plot_curves("round", "wsr_vs_round.png", "round (0 = initialisation)"),
                 self._plot_curves("bytes", "wsr_vs_bytes.png", "cumulative signaling [bytes per realization]"),
                 self._plot_curves("time", "wsr_vs_time.png", "simulated time [s]"),
                 self._plot_final()]
        if any(r.per_user is not None for r in self.results):
            paths.append(self._plot_cdf())
        if self.coherence_s:
            paths.append(self._plot_effective())
        return paths

    def _plot_effective(self) -> Path:
        """Overhead-adjusted rate WSR_r x max(0, 1 - t_r / T_c) (mean over realizations) against the round,
        the best round count of each algorithm marked."""
        fig, ax = self._new_axes(f"overhead-adjusted {self.metric} (coherence {self.coherence_s:g} s)")
        colors = self._colors()
        for r in self.results:
            eff = r.wsr.mean(axis=1) * effective_factor(r.sim_time_s, self.coherence_s)
            best = int(np.argmax(eff))
            ax.plot(np.arange(eff.size), eff, color=colors[r.label], marker="." if eff.size <= 30 else None,
                    label=f"{r.label} (best: {best} rounds)")
            ax.plot([best], [eff[best]], marker="*", markersize=12, color=colors[r.label], linestyle="none")
        ax.set_xlabel("round (0 = initialisation)")
        ax.set_ylabel(f"{self.metric} x max(0, 1 - t_r / T_c) [{self.unit}]")
        return self._save(fig, ax, "effective_wsr_vs_round.png")

    def _colors(self) -> dict[str, Any]:
        cmap = matplotlib.colormaps["tab10"]
        return {r.label: cmap(i % 10) for i, r in enumerate(self.results)}

    def _new_axes(self, title: str) -> tuple[Figure, Axes]:
        fig = Figure(figsize=(8.0, 4.8), dpi=110)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        ax.set_title(f"{self.family}: {title}")
        ax.grid(True, alpha=0.3)
        return fig, ax

    def _save(self, fig: Figure, ax: Axes, name: str, legend: bool = True) -> Path:
        if legend and ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False)
        path = self.plot_dir / name
        fig.savefig(path, format="png", bbox_inches="tight")
        return path

    def _plot_curves(self, xkind: str, name: str, xlabel: str) -> Path:
        """Mean WSR over realizations with a ±std band against round, cumulative bytes or simulated time.
        A result with 0 rounds, or whose x never leaves 0 (no signaling / no simulated time), is a dashed
        horizontal line at its final mean WSR, its label saying why.  Bytes and time use a log x axis when
        their positive values span >= 2 decades
        (then x = 0 points, e.g. the initialisation, are not drawn)."""
        m = self.metric
        title = {"round": f"{m} vs round", "bytes": f"{m} vs cumulative signaling", "time": f"{m} vs simulated time"}
        fig, ax = self._new_axes(title[xkind])
        colors = self._colors()
        xs = {r.label: (np.arange(r.wsr.shape[0], dtype=np.float64) if xkind == "round"
                        else r.cum_bytes if xkind == "bytes" else r.sim_time_s) for r in self.results}
        pos = np.concatenate([x[x > 0] for x in xs.values()])
        log = xkind != "round" and pos.size > 0 and pos.max() / pos.min() >= 100.0
        flat_tag = {"round": "", "bytes": " (no signaling)", "time": " (no simulated time)"}[xkind]
        for r in self.results:
            x = xs[r.label]
            mean, std = r.wsr.mean(axis=1), r.wsr.std(axis=1)
            if r.rounds == 0 or not np.any(x > 0):
                ax.axhline(float(np.mean(r.final)), color=colors[r.label], linestyle="--",
                           label=f"{r.label}{' (0 rounds)' if r.rounds == 0 else flat_tag}")
                continue
            keep = x > 0 if log else np.ones_like(x, dtype=bool)
            ax.plot(x[keep], mean[keep], color=colors[r.label], marker="." if keep.sum() <= 30 else None,
                    label=r.label)
            ax.fill_between(x[keep], (mean - std)[keep], (mean + std)[keep], color=colors[r.label], alpha=0.2,
                            linewidth=0)
        if log:
            ax.set_xscale("log")
            if any(np.any(xs[r.label] <= 0) and r.rounds > 0 and np.any(xs[r.label] > 0) for r in self.results):
                xlabel += "; points at 0 not shown"
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{self.metric} [{self.unit}] (mean ± std)")
        return self._save(fig, ax, name)

    def _plot_final(self) -> Path:
        """Box plot of the final WSR per realization, one box per algorithm, mean as a marker."""
        fig, ax = self._new_axes(f"final {self.metric} per realization")
        colors = self._colors()
        data = [r.final for r in self.results]
        pos = np.arange(1, len(data) + 1)
        box = ax.boxplot(data, positions=pos, widths=0.6, patch_artist=True, showfliers=True)
        for patch, r in zip(box["boxes"], self.results):
            patch.set_facecolor(colors[r.label])
            patch.set_alpha(0.5)
        ax.plot(pos, [float(np.mean(d)) for d in data], linestyle="none", marker="D", color="black",
                label="mean")
        ax.set_xticks(pos)
        ax.set_xticklabels([r.label for r in self.results], rotation=30 if len(data) > 4 else 0,
                           ha="right" if len(data) > 4 else "center")
        ax.set_xlabel("algorithm")
        ax.set_ylabel(f"final {self.metric} [{self.unit}]")
        return self._save(fig, ax, "final_wsr.png")

    def _plot_cdf(self) -> Path:
        """Empirical CDF of the final per-UE rate, pooled over realizations and UEs, per algorithm."""
        fig, ax = self._new_axes("CDF of per-UE rate")
        colors = self._colors()
        for r in self.results:
            if r.per_user is None:
                continue
            v = np.sort(r.per_user.ravel())
            ax.step(v, np.arange(1, v.size + 1) / v.size, where="post", color=colors[r.label], label=r.label)
        ax.set_xlabel(f"per-UE rate [{self.unit}]")
        ax.set_ylabel("CDF")
        ax.set_ylim(0.0, 1.0)
        return self._save(fig, ax, "per_user_cdf.png")


def load_metrics(run_dir: Path | str) -> dict[str, dict[str, np.ndarray]]:
    """Read run_dir/metrics.csv back: {algorithm label: {column: (R+1,) array}} for every column but
    'algorithm'; 'round' is int64, the others float64; rows in file order (round 0 first)."""
    path = Path(run_dir) / "metrics.csv"
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        if tuple(header) not in (METRICS_COLUMNS, METRICS_COLUMNS + EFFECTIVE_COLUMNS):
            raise ValueError(f"{path}: header {header} is not {list(METRICS_COLUMNS)} (+ {list(EFFECTIVE_COLUMNS)})")
        cols: dict[str, dict[str, list[str]]] = {}
        for row in reader:
            entry = cols.setdefault(row[0], {c: [] for c in header[1:]})
            for c, v in zip(header[1:], row[1:]):
                entry[c].append(v)
    return {lab: {c: np.array(v, dtype=np.int64 if c == "round" else np.float64) for c, v in entry.items()}
            for lab, entry in cols.items()}
