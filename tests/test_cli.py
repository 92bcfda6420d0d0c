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
    """A training YAML's ``algorithms:`` may name the checkpoint its training writes: ``train`` does not read it
    (it validates), ``run`` does (exit 2 before the training, then runs the trained model)."""
    trained = {"name": "gcn_wmmse", "label": "trained", "checkpoint": "tr/checkpoint.pt"}
    write(tmp_path / "train.yaml", TRAIN | {"algorithms": [trained, {"name": "mrc"}]})
    r = dsim(tmp_path, "run", "train.yaml", "--out", "out", "--no-progress")
    assert r.returncode == 2 and "algorithms[0].checkpoint: no such checkpoint file 'tr/checkpoint.pt'" in r.stderr
    r = dsim(tmp_path, "train", "train.yaml", "--out", "tr")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "tr" / "checkpoint.pt").is_file()
    with open(tmp_path / "tr" / "train_log.csv", newline="") as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == [1, 2]
    r = dsim(tmp_path, "run", "train.yaml", "--out", "out", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert [m["round"] for m in metrics(tmp_path / "out") if m["algorithm"] == "trained"] == ["0", "1", "2"]


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


def _allowed(name: str) -> str:
    from dsim.learn import get_learnable

    refs = get_learnable(name, {"checkpoint": "untrained"}).spec.shipped_refs()
    return f"allowed: {', '.join(refs)}, untrained or a path"


D2D = RUN | {"scenario": {"family": "interference", "layout": "d2d", "n_pairs": 4}}
FT = {"seed": 0, "engine": {"kind": "local"},
      "federated": {"algorithm": "gcn_wmmse", "reference": {"name": "wmmse", "rounds": 2},
                    "sites": [{"name": "a", "scenario": {"family": "multicell", "ues_per_bs": 1, "bs_antennas": 3,
                                                         "ue_antennas": 2}, "samples": 2, "eval_samples": 2}],
                    "rounds": 1, "compare": {"transfer": True, "alone": False, "pooled": False}}}
T_OPTS = TRAIN["train"]


def _ft(**options):
    return FT | {"federated": FT["federated"] | {"options": options}}


def _gone(d: Path) -> str:
    return (f"no such checkpoint file 'gone.pt': {d / 'gone.pt'} (a relative path is read from the current "
            f"directory); {_allowed('gcn_wmmse')}")


#: case -> (command, config, extra arguments, the one stderr line after 'dsim: error: bad.yaml: ' (d: the cwd))
CHECKPOINT_CASES = {
    "run, unknown name": ("run", D2D | {"algorithms": [{"name": "strongest"},
                                                       {"name": "wcgcn", "checkpoint": "shipped:nope"}]}, [],
                          lambda d: f"algorithms[1].checkpoint: 'shipped:nope' is not allowed; {_allowed('wcgcn')}"),
    "run, missing path": ("run", RUN | {"algorithms": [{"name": "gcn_wmmse", "checkpoint": "gone.pt"}]}, [],
                          lambda d: f"algorithms[0].checkpoint: {_gone(d)}"),
    "train, unknown name": ("train", TRAIN | {"train": T_OPTS | {"options": {"checkpoint": "shipped-xx"}}}, [],
                            lambda d: f"train.options.checkpoint: 'shipped-xx' is not allowed; "
                                      f"{_allowed('gcn_wmmse')}"),
    "train, missing path": ("train", TRAIN | {"train": T_OPTS | {"options": {"checkpoint": "gone.pt"}}}, [],
                            lambda d: f"train.options.checkpoint: {_gone(d)}"),
    "sweep, unknown name": ("sweep", RUN | {"algorithms": [{"name": "gcn_wmmse", "checkpoint": "shipped:x"}]},
                            ["--grid", "batch=1,2"],
                            lambda d: f"algorithms[0].checkpoint: 'shipped:x' is not allowed; {_allowed('gcn_wmmse')}"),
    "finetune, unknown name": ("finetune", _ft(checkpoint="shipped:nope"), [],
                               lambda d: f"federated.options.checkpoint: 'shipped:nope' is not allowed; "
                                         f"{_allowed('gcn_wmmse')}"),
    "finetune, missing path": ("finetune", _ft(checkpoint="gone.pt"), [],
                               lambda d: f"federated.options.checkpoint: {_gone(d)}"),
    # configuration problems that training / fine-tuning meet at set-up
    "train, vary with train_samples": (
        "train", TRAIN | {"train": T_OPTS | {"train_samples": 4, "vary": {"ues_per_bs": [1, 2]}}}, [],
        lambda d: "train.vary: cannot be combined with train.train_samples (a fixed pool has one configuration); "
                  "allowed: one of them"),
    "train, loss round past the last": (
        "train", TRAIN | {"train": T_OPTS | {"layers_in_loss": [3]}}, [],
        lambda d: "train.layers_in_loss: rounds [3] outside 1..2; allowed: rounds 1 ... 2 of gcn_wmmse"),
    "train, options unlike the checkpoint": (
        "train", TRAIN | {"train": T_OPTS | {"options": {"checkpoint": "shipped", "degree": 1}}}, [],
        lambda d: "train.options.degree: 1 but the checkpoint has degree=2; allowed: >= 2 (a larger degree is "
                  "grown from it with the same function) or leave degree out"),
    "finetune, options unlike the default start": (
        "finetune", _ft(degree=1), [],
        lambda d: "federated.options.degree: 1 but the checkpoint has degree=2; allowed: >= 2 (a larger degree "
                  "is grown from it with the same function) or leave degree out"),
}


def test_bad_checkpoint_and_training_setup_are_one_line_exit_2(tmp_path):
    """A bad ``checkpoint`` (unknown packaged name, no such file) of run / train / finetune, and a configuration
    problem training or fine-tuning meets at set-up: exit 2, exactly one stderr line naming the file, the key and
    the allowed values, no traceback, nothing written (cases run side by side)."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    procs = {}
    for i, (case, (cmd, data, extra, _)) in enumerate(CHECKPOINT_CASES.items()):
        d = tmp_path / f"case{i}"
        write(d / "bad.yaml", data)
        procs[case] = (d, subprocess.Popen([sys.executable, "-m", "dsim", cmd, "bad.yaml", "--out", "out",
                                            "--no-progress", *extra], cwd=d, env=env, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True))
    problems = []
    for case, (d, proc) in procs.items():
        _, err = proc.communicate(timeout=300)
        want = f"dsim: error: bad.yaml: {CHECKPOINT_CASES[case][3](d)}"
        if proc.returncode != 2 or err.strip().splitlines() != [want]:
            problems.append(f"{case}: exit {proc.returncode}, stderr: {err!r}, wanted {want!r}")
        written = [p.name for p in (d / "out").rglob("*") if p.is_file()] if (d / "out").exists() else []
        if written:
            problems.append(f"{case}: wrote {written}")
    assert not problems, "\n".join(problems)


def test_resume_without_a_checkpoint_is_one_line(tmp_path):
    write(tmp_path / "train.yaml", TRAIN)
    r = dsim(tmp_path, "train", "train.yaml", "--out", "tr", "--resume")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "dsim: error: --resume: no checkpoint 'tr/checkpoint.pt' to resume; allowed: the output directory of an "
        "earlier `dsim train` of this config (or leave --resume out to start afresh)"], r.stderr


def test_an_algorithm_failing_at_build_keeps_the_others_results(tmp_path):
    """A failure only building the protocol on the scenario finds (options unlike the shipped checkpoint): the
    algorithm fails (exit 1, one stderr line naming it and the key), the others' results are written."""
    cfg = RUN | {"algorithms": [{"name": "gcn_wmmse", "layers": 3}, {"name": "mrc"}]}
    write(tmp_path / "cfg.yaml", cfg)
    r = dsim(tmp_path, "run", "cfg.yaml", "--out", "out", "--no-progress")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    assert "gcn_wmmse" in lines[0] and "layers: 3 but checkpoint 'shipped' of gcn_wmmse has layers=7" in lines[0]
    assert {m["algorithm"] for m in metrics(tmp_path / "out")} == {"mrc"}
