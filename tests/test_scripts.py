"""Every example and benchmark script starts the way the README runs it: ``python examples/NAME.py --help`` as a
fresh process, from a directory that is not the repository (no ``examples`` or ``benchmarks`` package on the path
unless the script puts the repository root there itself).  An import error in a script surfaces here, not on a
user's first run (``examples/icgnn_cellular_tables.py`` once failed with ``No module named 'examples'``)."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for d in ("examples", "benchmarks") for p in (ROOT / d).glob("*.py")
                 if 'if __name__ == "__main__"' in p.read_text())


def _help(path: Path, cwd: Path) -> tuple[Path, int, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(path), "--help"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    return path, proc.returncode, proc.stdout + proc.stderr


def test_every_script_starts_with_help(tmp_path: Path) -> None:
    assert len(SCRIPTS) >= 20, [p.name for p in SCRIPTS]  # the glob found the scripts
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda p: _help(p, tmp_path), SCRIPTS))
    failed = [f"{p.relative_to(ROOT)} (exit {rc}): {out.strip().splitlines()[-1] if out.strip() else ''}"
              for p, rc, out in results if rc != 0 or "usage:" not in out]
    assert not failed, "\n".join(failed)
