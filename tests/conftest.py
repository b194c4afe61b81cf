"""Shared test fixtures.

Tests that boot VMs or need real kernels share one content-keyed cache across runs
(KBISECT_TEST_CACHE, default ~/.cache/kbisect-test) so CI on the same machine reuses
images and kernels; they must still pass when that cache starts empty.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Mapping

import pytest


# Tests talk to 127.0.0.1 only. A test that forgets --mirror must fail fast on a closed local
# port, never reach the public mainline site or Launchpad.
os.environ.setdefault("KBISECT_MAINLINE_MIRROR", "http://127.0.0.1:9/mainline/")
os.environ.setdefault("KBISECT_UBUNTU_MIRROR", "http://127.0.0.1:9/ubuntu-mirror/")


@pytest.fixture(autouse=True)
def _results_in_tmp(tmp_path, monkeypatch) -> Path:
    """Reports, matrices and probe artefacts go to the test's own directory, never into the
    repository's results/ (config.results_dir reads KBISECT_RESULTS on every call). A test that
    wants its artefacts elsewhere sets KBISECT_RESULTS itself, which wins."""
    results = tmp_path / "kbisect-results"
    monkeypatch.setenv("KBISECT_RESULTS", str(results))
    return results


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


def vm_host_missing(euid: int | None = None, which: Callable[[str], str | None] = shutil.which) -> str | None:
    """Why this machine cannot boot test VMs, as a checked fact (None: it can)."""
    euid = os.geteuid() if euid is None else euid
    if euid != 0:
        return f"not root (euid {euid}): libvirt's qemu:///system needs root"
    missing = [tool for tool in ("virsh", "qemu-system-x86_64") if which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not on PATH (./setup.sh installs libvirt and QEMU)"
    return None


def in_ci(env: Mapping[str, str] = os.environ) -> bool:
    """CI says so in $CI (GitHub Actions, GitLab and most runners set CI=true)."""
    return env.get("CI", "").strip().lower() in ("1", "true", "yes")


def vm_host_outcome(reason: str | None, ci: bool) -> tuple[str, str] | None:
    """("fail" | "skip", message) for a machine that cannot boot VMs, None when it can."""
    if reason is None:
        return None
    if ci:
        return "fail", f"CI must run the VM tests, but {reason}"
    return "skip", reason


@pytest.fixture(scope="module")
def vm_host() -> None:
    """VM tests need root and libvirt. Outside CI a machine without them skips, naming what is
    missing; in CI (root, libvirt) the same fact is a failure, so a broken runner cannot pass
    the slow tier by skipping it."""
    outcome = vm_host_outcome(vm_host_missing(), in_ci())
    if outcome is not None:
        (pytest.fail if outcome[0] == "fail" else pytest.skip)(outcome[1])
