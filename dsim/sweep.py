"""``dsim sweep``: a config run over a grid of key values (DESIGN §12).

A *study* is a cartesian grid over config key paths (``faults.message_loss``, ``scenario.n_bs``,
``algorithms.0.rounds``, ``wire.dtype`` ...; any key ``--set`` accepts).  The grids come from the command
line (``--grid KEY.PATH=v1,v2,...``, repeatable: one study, the product of them) or, without ``--grid``,
from the config's ``sweep:`` section (study name -> {key path: [values]}, each study its own grid).
Every grid point is a full ``dsim run`` in its own directory::

    <output>/<study>/<key>=<value>[__<key>=<value>...]/   run directory (metrics.csv, summary.json; its
                                                            plots/ with --point-plots)
    <output>/sweep.csv                                      one row per point x algorithm
    <output>/plots/<study>__wsr_vs_<key>.png                final WSR vs each swept key, a line per algorithm

``sweep.csv`` columns: study, point, one column per swept key (empty where a study does not sweep it),
algorithm, status (ok | failed | error), wsr_mean, wsr_std (final WSR over realizations, the run's
unit), rounds, bytes_per_round (signaling bytes per realization and round), sim_time_per_round_s
(simulated time per round, s), error.  Every point's config is validated before the first one runs (a
bad key or value: one line, exit 2).  A point whose run fails writes ``error.txt`` in its directory and
the sweep goes on; a point that finished (``point.json`` with status ok or failed) is skipped when the
sweep is run again (a point that could not run at all is retried), so an interrupted sweep resumes where
it stopped.  Nothing here names a family or an algorithm.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

SWEEP_COLUMNS_HEAD = ("study", "point")
SWEEP_COLUMNS_TAIL = ("algorithm", "status", "wsr_mean", "wsr_std", "rounds", "bytes_per_round",
                      "sim_time_per_round_s", "error")
CLI_STUDY = "grid"


@dataclass(frozen=True)
class Point:
    """One grid point: its study, its values per key path (in the study's key order), its directory name."""

    study: str
    values: tuple[tuple[str, Any], ...]

    @property
    def name(self) -> str:
        return "__".join(f"{k}={_slug(v)}" for k, v in self.values)

    def overrides(self) -> list[str]:
        """``--set`` strings of the point (values as JSON, which YAML 1.2 reads back unchanged)."""
        return [f"{k}={json.dumps(v)}" for k, v in self.values]


def _slug(v: Any) -> str:
    s = json.dumps(v) if not isinstance(v, str) else v
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", s).strip("_") or "_"


def _split_values(text: str) -> list[str]:
    """'0,0.1,[1, 2],{a: 1}' -> ['0', '0.1', '[1, 2]', '{a: 1}']: commas inside brackets/braces kept."""
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [v.strip() for v in out]


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``--grid KEY.PATH=v1,v2,...`` strings -> {key path: [values]} (values parsed as YAML scalars / flow
    values); :class:`dsim.config.ConfigError` for a malformed item."""
    from dsim.config import ConfigError, _Loader

    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid {item}: expected KEY.PATH=V1,V2,... (e.g. --grid faults.message_loss=0,0.1)")
        key, raw = item.split("=", 1)
        key = key.strip()
        vals = _split_values(raw)
        if not key or any(v == "" for v in vals):
            raise ConfigError(f"--grid {item}: empty key or value; expected KEY.PATH=V1,V2,...")
        if key in grid:
            raise ConfigError(f"--grid {item}: key {key!r} given twice; give all its values in one --grid")
        try:
            grid[key] = [yaml.load(v, Loader=_Loader) for v in vals]
        except yaml.YAMLError as exc:
            raise ConfigError(f"--grid {item}: a value is not valid YAML ({exc.problem})") from None
    return grid


def grid_points(studies: dict[str, dict[str, list[Any]]]) -> list[Point]:
    """Every point of every study (cartesian product of each study's key values, in the given order)."""
    pts = []
    for study, grid in studies.items():
        keys = list(grid)
        for combo in itertools.product(*(grid[k] for k in keys)):
            pts.append(Point(study, tuple(zip(keys, combo))))
    return pts


def point_rows(point: Point, run_dir: Path) -> list[dict[str, Any]]:
    """sweep.csv rows of a point from its run directory's summary.json (or its error)."""
    base = {"study": point.study, "point": point.name, **dict(point.values)}
    state = _read_json(run_dir / "point.json") or {}
    summary = _read_json(run_dir / "summary.json")
    if summary is None:
        return [base | {"algorithm": "", "status": "error", "error": state.get("error", "not run")}]
    rows = []
    for label, s in summary.get("algorithms", {}).items():
        if "error" in s:
            rows.append(base | {"algorithm": label, "status": "failed", "error": s["error"]})
            continue
        rounds = int(s["rounds"])
        rows.append(base | {"algorithm": label, "status": "ok", "wsr_mean": s["final_wsr"]["mean"],
                            "wsr_std": s["final_wsr"]["std"], "rounds": rounds,
                            "bytes_per_round": s["bytes_per_round"],
                            "sim_time_per_round_s": s["sim_time_s"] / rounds if rounds else 0.0, "error": ""})
    return rows


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_sweep_csv(out: Path, points: list[Point], keys: list[str]) -> Path:
    rows = [r for p in points for r in point_rows(p, out / p.study / p.name)]
    path = out / "sweep.csv"
    tmp = path.with_name("sweep.csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=[*SWEEP_COLUMNS_HEAD, *keys, *SWEEP_COLUMNS_TAIL], lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else json.dumps(v) if isinstance(v, (list, dict)) else v)
                        for k, v in r.items()})
    tmp.replace(path)
    return path


def plot_sweep(out: Path, points: list[Point], studies: dict[str, dict[str, list[Any]]], unit: str) -> list[Path]:
    """One PNG per study and swept key: final WSR (mean ± std) vs the key's value, one line per algorithm
    (and per value of the study's other keys)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    (out / "plots").mkdir(parents=True, exist_ok=True)
    paths = []
    for study, grid in studies.items():
        rows = [r for p in points if p.study == study for r in point_rows(p, out / study / p.name)
                if r["status"] == "ok"]
        for key in grid:
            others = [k for k in grid if k != key]
            lines: dict[str, list[tuple[Any, float, float]]] = {}
            for r in rows:
                tag = r["algorithm"] + "".join(f", {k}={r[k]}" for k in others)
                lines.setdefault(tag, []).append((r[key], r["wsr_mean"], r["wsr_std"]))
            fig = Figure(figsize=(7.5, 4.6), dpi=110)
            FigureCanvasAgg(fig)
            ax = fig.add_subplot(1, 1, 1)
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in grid[key])
            order = {json.dumps(v): i for i, v in enumerate(grid[key])}
            for tag, pts in lines.items():
                pts.sort(key=lambda t: t[0] if numeric else order.get(json.dumps(t[0]), 0))
                x = [t[0] if numeric else order.get(json.dumps(t[0]), 0) for t in pts]
                y, e = np.array([t[1] for t in pts]), np.array([t[2] for t in pts])
                ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=tag)
            if not numeric:
                ax.set_xticks(range(len(grid[key])))
                ax.set_xticklabels([_slug(v) for v in grid[key]])
            ax.set_xlabel(key)
            ax.set_ylabel(f"final WSR [{unit}] (mean ± std over realizations)")
            ax.set_title(f"sweep {study}: WSR vs {key}")
            ax.grid(True, alpha=0.3)
            if lines:
                ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False)
            path = out / "plots" / f"{_slug(study)}__wsr_vs_{_slug(key)}.png"
            fig.savefig(path, format="png", bbox_inches="tight")
            paths.append(path)
    return paths


def sweep_main(config: str, grid_items: Sequence[str], overrides: Sequence[str] = (), *, out: str | None = None,
               engine: str | None = None, progress: bool = True, point_plots: bool = False) -> int:
    """``dsim sweep``: validate every point, run the ones not done, write sweep.csv and the plots.

    Returns the exit status: 0 when every point ran every algorithm, 1 when some point or algorithm
    failed (their errors are in sweep.csv and the points' error files).  ``point_plots``: also each point's
    run-directory plots (off by default: they cost more than a small point's run).  Config errors raise
    :class:`dsim.config.ConfigError` before anything runs."""
    from tqdm.auto import tqdm

    from dsim.config import ConfigError, load_config
    from dsim.results import prepare_out_dir
    from dsim.run import run

    base = load_config(config, overrides, out=out, engine=engine, reads=("algorithms",))
    studies = {CLI_STUDY: parse_grid(grid_items)} if grid_items else base.sweep
    if not studies:
        raise ConfigError(f"{config}: sweep: nothing to sweep; give --grid KEY.PATH=V1,V2,... or a `sweep:` "
                          "section (study name -> {key.path: [values]})")
    root = prepare_out_dir(base.output)
    points = grid_points(studies)
    cfgs = {}
    for p in points:  # every point is validated before the first runs
        try:
            cfgs[p] = load_config(config, [*overrides, *p.overrides()], out=str(root / p.study / p.name),
                                  engine=engine, reads=("algorithms",))
        except ConfigError as exc:
            raise ConfigError([f"{line} (sweep {p.study}, point {p.name})" for line in exc.lines]) from None
    keys = list(dict.fromkeys(k for g in studies.values() for k in g))
    unit = "nat/Hz"
    failed = 0
    bar = tqdm(points, desc="sweep", unit="point", disable=not progress)
    try:
        for p in bar:
            bar.set_postfix_str(f"{p.study}: {p.name}"[:60])
            run_dir = root / p.study / p.name
            state = _read_json(run_dir / "point.json")
            if state is not None and state.get("status") in ("ok", "failed"):
                failed += state["status"] != "ok"
                continue
            status, err = "ok", ""
            try:
                run(cfgs[p], progress=False, echo=lambda s: None, plots=point_plots)
            except RuntimeError as exc:  # some algorithms failed; the others are written
                status, err = "failed", str(exc)
            except Exception as exc:  # the point could not run at all: its error file, and go on
                status, err = "error", f"{type(exc).__name__}: {exc}"
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "error.txt").write_text(traceback.format_exc())
            failed += status != "ok"
            (run_dir / "point.json").write_text(json.dumps({"status": status, "error": err,
                                                            "values": dict(p.values)}, indent=1) + "\n")
            s = _read_json(run_dir / "summary.json")
            unit = s.get("unit", unit) if s else unit
            write_sweep_csv(root, points, keys)
    finally:
        bar.close()
        write_sweep_csv(root, points, keys)
        first = next((_read_json(root / p.study / p.name / "summary.json") for p in points
                      if (root / p.study / p.name / "summary.json").is_file()), None)
        unit = first.get("unit", unit) if first else unit
        plot_sweep(root, points, studies, unit)
    print(f"sweep: {len(points)} points ({failed} with failures), {root / 'sweep.csv'}", file=sys.stderr)
    return 1 if failed else 0
