"""Shared test fixtures.

Tests that boot VMs or need real kernels share one content-keyed cache across runs
(KBISECT_TEST_CACHE, default ~/.cache/kbisect-test) so CI on the same machine reuses
images and kernels; they must still pass when that cache starts empty.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture()
def kbisect_home(tmp_path, monkeypatch) -> Path:
    """A private, empty $KBISECT_HOME for tests that must not see shared state."""
    home = tmp_path / "kbisect-home"
    home.mkdir()
    monkeypatch.setenv("KBISECT_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def shared_home() -> Path:
    """The shared content-keyed cache for real kernels and root images."""
    home = Path(os.environ.get("KBISECT_TEST_CACHE") or Path.home() / ".cache" / "kbisect-test")
    home.mkdir(parents=True, exist_ok=True)
    os.environ["KBISECT_HOME"] = str(home)
    return home
