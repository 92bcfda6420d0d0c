"""Every shipped YAML under ``scenarios/`` validates against the current schema: a run config also with the
files its ``algorithms:`` read (packaged checkpoints), a finetune config through :func:`load_finetune`, a
training config without reading its ``train:`` files (a later stage names the checkpoint an earlier stage
writes under ``runs/``).  A schema change that strands a shipped file fails here, not in a user's first run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dsim.config import load_config
from dsim.fl_config import load_finetune

SCENARIOS = sorted((Path(__file__).resolve().parents[1] / "scenarios").glob("*.yaml"))


def test_the_glob_found_the_shipped_files() -> None:
    names = {p.name for p in SCENARIOS}
    assert {"cellfree.yaml", "multicell.yaml", "interference.yaml", "federated.yaml"} <= names, names


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: p.name)
def test_shipped_yaml_validates(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    if "federated" in data:
        cfg = load_finetune(path)
        assert cfg.federated.sites
    elif "train" in data:
        cfg = load_config(path)
        assert cfg.train is not None and cfg.train.algorithm
    else:
        cfg = load_config(path, reads=("algorithms",))
        assert cfg.algorithms
