"""The dependency direction is a contract: cli -> app -> adapters -> core, and a pure core.

`lint-imports` (import-linter, configured in pyproject.toml) checks it in CI; these tests show
the check passes on the tree and fails on a deliberate violation, so it cannot rot into a no-op.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINT = Path(sys.executable).parent / "lint-imports"


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=300)


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    shutil.copytree(REPO / "orchestrator", root / "orchestrator", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def test_the_tree_keeps_the_contracts(tmp_path):
    result = _lint(_copy(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:]
    assert "2 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module,line,contract", [
    ("core/engine.py", "from orchestrator.adapters import store  # deliberate violation", "layers"),
    ("adapters/report.py", "from orchestrator.cli import base  # deliberate violation", "layers"),
    ("core/sweep.py", "import yaml  # deliberate violation", "the core is pure"),
])
def test_a_deliberate_violation_breaks_the_contract(tmp_path, module, line, contract):
    root = _copy(tmp_path)
    path = root / "orchestrator" / module
    path.write_text(path.read_text() + f"\n{line}\n")
    result = _lint(root)
    assert result.returncode != 0
    assert f"{contract}" in result.stdout and "BROKEN" in result.stdout
