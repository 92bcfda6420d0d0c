"""End to end: ``python -m dsim run | sample | train`` as a user calls them (subprocesses), exit codes,
the run directory, ``scenario: {file: ...}`` and one-line user errors (file and key, exit 2, no traceback)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import yaml

RUN = {"seed": 1, "precision": "double", "batch": 2, "scenario": {"family": "multicell", "ues_per_bs": 2},
       "algorithms": [{"name": "wmmse", "init": "mrc", "rounds": 2}, {"name": "mrc"}],
       "engine": {"kind": "local"}, "wire": {"dtype": "float64"}}
TRAIN = RUN | {"algorithms": [{"name": "mrc"}],
               "train": {"algorithm": "gcn_wmmse", "options": {"checkpoint": "untrained", "layers": 2},
                         "steps": 2, "batch": 2, "val_every": 2, "val_size": 2, "checkpoint_every": 2,
                         "progress": False}}


def dsim(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    return subprocess.run([sys.executable, "-m", "dsim", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def write(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_run_sample_and_run_on_the_channel_file(tmp_path):
    write(tmp_path / "cfg.yaml", RUN)
    r = dsim(tmp_path, "run", "cfg.yaml", "--out", "out", "--no-progress")
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    for name in ("config.yaml", "metrics.csv", "overhead.csv", "wsr.csv", "summary.json"):
        assert (out / name).is_file(), name
    assert [(m["algorithm"], m["round"]) for m in metrics(out)] == [
        ("wmmse", "0"), ("wmmse", "1"), ("wmmse", "2"), ("mrc", "0"), ("mrc", "1")]
    # sample the same scenario, then run on the file; the path is relative to the YAML's directory
    r = dsim(tmp_path, "sample", "cfg.yaml", "-o", "sub/chans.npz")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "sub" / "chans.npz").is_file()
    write(tmp_path / "sub" / "file.yaml", RUN | {"scenario": {"file": "chans.npz"}})
    r = dsim(tmp_path, "run", "sub/file.yaml", "--out", "out_file", "--no-progress")
    assert r.returncode == 0, r.stderr
    drop = ("sim_time_s",)  # identical channels, seed and algorithms: identical numbers
    strip = [{k: v for k, v in m.items() if k not in drop} for m in metrics(out)]
    assert [{k: v for k, v in m.items() if k not in drop} for m in metrics(tmp_path / "out_file")] == strip


def test_train_writes_a_checkpoint(tmp_path):
    write(tmp_path / "train.yaml", TRAIN)
    r = dsim(tmp_path, "train", "train.yaml", "--out", "tr")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "tr" / "checkpoint.pt").is_file()
    with open(tmp_path / "tr" / "train_log.csv", newline="") as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == [1, 2]


CASES = {
    "unknown scenario key": ("run", RUN | {"scenario": {"family": "multicell", "ues_per_cell": 2}},
                             "scenario.ues_per_cell"),
    "unknown algorithm": ("run", RUN | {"algorithms": [{"name": "wmmsee"}]}, "algorithms[0].name"),
    "bad value": ("run", RUN | {"batch": 0}, "batch"),
    "bad train key": ("train", TRAIN | {"train": {"algorithm": "gcn_wmmse", "stepz": 3}}, "train.stepz"),
    "bad train option": ("train", TRAIN | {"train": {"algorithm": "gcn_wmmse", "options": {"layerz": 2}}},
                         "train.options.layerz"),
    "missing channel file": ("run", RUN | {"scenario": {"file": "nowhere.npz"}}, "nowhere.npz"),
}


def test_user_errors_are_one_line_naming_file_and_key(tmp_path):
    """Exit 2, exactly one stderr line naming the YAML file and the key, no traceback (cases run side by side)."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    procs = {}
    for i, (case, (cmd, data, _)) in enumerate(CASES.items()):
        d = tmp_path / f"case{i}"
        write(d / "bad.yaml", data)
        procs[case] = subprocess.Popen([sys.executable, "-m", "dsim", cmd, "bad.yaml", "--out", "out"], cwd=d,
                                       env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    problems = []
    for case, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        lines = err.strip().splitlines()
        key = CASES[case][2]
        if proc.returncode != 2 or "Traceback" in err or len(lines) != 1 or not (
                "bad.yaml" in lines[0] and key in lines[0]):
            problems.append(f"{case}: exit {proc.returncode}, stderr: {err!r}")
    assert not problems, "\n".join(problems)


def test_unknown_shipped_checkpoint_fails_the_algorithm_with_one_line(tmp_path):
    """``checkpoint: shipped:nope``: the algorithm fails at build time (exit 1, the others' results written) and
    stderr is one line naming the protocol, the key and the allowed values (dsim.learn.LearnableSpec.locate)."""
    cfg = RUN | {"scenario": {"family": "interference", "layout": "d2d", "n_pairs": 4},
                 "algorithms": [{"name": "wcgcn", "checkpoint": "shipped:nope"}, {"name": "strongest"}]}
    write(tmp_path / "cfg.yaml", cfg)
    r = dsim(tmp_path, "run", "cfg.yaml", "--out", "out", "--no-progress")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    assert ("wcgcn: checkpoint 'shipped:nope' is not allowed; allowed: shipped, shipped:gauss_K10_0dB, "
            in lines[0]) and lines[0].endswith("shipped:d2d_bf, untrained or a path")
    assert {m["algorithm"] for m in metrics(tmp_path / "out")} == {"strongest"}
