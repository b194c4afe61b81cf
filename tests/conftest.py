"""Shared test fixtures.

Tests that boot VMs or need real kernels share one content-keyed cache across runs
(KBISECT_TEST_CACHE, default ~/.cache/kbisect-test) so CI on the same machine reuses
images and kernels; they must still pass when that cache starts empty.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


# Tests talk to 127.0.0.1 only. A test that forgets --mirror must fail fast on a closed local
# port, never reach the public mainline site or Launchpad.
os.environ.setdefault("KBISECT_MAINLINE_MIRROR", "http://127.0.0.1:9/mainline/")
os.environ.setdefault("KBISECT_UBUNTU_MIRROR", "http://127.0.0.1:9/ubuntu-mirror/")


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
