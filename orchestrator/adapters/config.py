"""Where kbisect keeps its state: everything lives under $KBISECT_HOME."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # orchestrator/adapters/config.py -> the repository


def home() -> Path:
    """The state root (downloads, unpacked kernels, images, results database)."""
    root = Path(os.environ.get("KBISECT_HOME") or Path.home() / ".cache" / "kbisect")
    root.mkdir(parents=True, exist_ok=True)
    return root


def subdir(name: str) -> Path:
    path = home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def reproducers_dir() -> Path:
    return Path(os.environ.get("KBISECT_REPRODUCERS") or REPO_ROOT / "reproducers")


def results_dir() -> Path:
    path = Path(os.environ.get("KBISECT_RESULTS") or REPO_ROOT / "results")
    path.mkdir(parents=True, exist_ok=True)
    return path
