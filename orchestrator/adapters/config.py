"""Where kbisect keeps its state: everything lives under $KBISECT_HOME.

Every configured path is absolute: `resolve_paths` rewrites the variables once, at start (the
CLI's root group), and the readers below make a relative one absolute against the same current
directory. Why: a relative KBISECT_HOME was handed to `make -C TREE O=...`, and make, inside the
user's tree, wrote the build there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import MutableMapping

REPO_ROOT = Path(__file__).resolve().parents[2]  # orchestrator/adapters/config.py -> the repository

# the variables that name a path (adapters/sources/local.py reads KBISECT_LOCAL_DIR, the mainline
# source KBISECT_MAINLINE_KEYRING); a tool kbisect runs in another directory sees them absolute
PATH_VARIABLES = ("KBISECT_HOME", "KBISECT_RESULTS", "KBISECT_REPRODUCERS", "KBISECT_LOCAL_DIR",
                  "KBISECT_MAINLINE_KEYRING")


def resolve_paths(environ: MutableMapping[str, str] = os.environ) -> None:
    """Each path variable that is set made absolute against the current directory, once."""
    for name in PATH_VARIABLES:
        if environ.get(name):
            environ[name] = str(_absolute(environ[name]))


def _absolute(value: str | Path) -> Path:
    return Path(os.path.abspath(Path(value).expanduser()))


def _configured(name: str, default: Path) -> Path:
    return _absolute(os.environ.get(name) or default)


def home() -> Path:
    """The state root (downloads, unpacked kernels, images, results database)."""
    root = _configured("KBISECT_HOME", Path.home() / ".cache" / "kbisect")
    root.mkdir(parents=True, exist_ok=True)
    return root


def subdir(name: str) -> Path:
    path = home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def reproducers_dir() -> Path:
    return _configured("KBISECT_REPRODUCERS", REPO_ROOT / "reproducers")


def results_dir() -> Path:
    path = _configured("KBISECT_RESULTS", REPO_ROOT / "results")
    path.mkdir(parents=True, exist_ok=True)
    return path
