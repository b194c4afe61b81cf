"""The debian source against Debian's real archive (through apt-get, the ordinary client).

Needs the package registry; the download and the unpack are cached in the shared test
cache (`shared_home`), so reruns only re-list.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.adapters.kernel import UnpackedKernel
from orchestrator.adapters.sources import fetch, get_source
from orchestrator.adapters.sources.debian import machine_repos, sources_list
from orchestrator.core.versions import parse_debian_kernel

pytestmark = pytest.mark.registry

REPO = Path(__file__).resolve().parent.parent
PREFERRED = "6.1.0-54-cloud-amd64"


def _etc_apt_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(Path("/etc/apt").rglob("*")):
        if path.is_file():
            digest.update(str(path).encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def listing(shared_home):
    before = _etc_apt_digest()
    entries = get_source("debian").list()
    assert _etc_apt_digest() == before, "the machine's own apt configuration must never change"
    return entries


def test_private_sources_reuse_the_machines_mirror():
    text = sources_list(machine_repos())
    uris = {line.split()[-3] for line in text.splitlines()}
    machine_uris = {repo.uri for repo in machine_repos()}
    assert uris <= machine_uris  # no host of our own: only what this machine already uses
    for suite in ("bullseye", "bookworm", "bookworm-backports", "trixie", "sid"):
        assert any(line.split()[-2] == suite for line in text.splitlines())


def test_list_is_ascending_with_both_flavours(listing):
    names = [e.version for e in listing]
    assert names == [str(k) for k in sorted(parse_debian_kernel(n) for n in names)]
    flavours = {parse_debian_kernel(n).flavour for n in names}
    assert flavours == {"cloud-amd64", "amd64"}
    assert all(e.available and e.files[0].sha256 and len(e.files[0].sha256) == 64 for e in listing)
    series = {str(parse_debian_kernel(n).upstream.base) for n in names}
    assert {"5.10", "6.1", "6.12"} <= series


def test_cli_list_json_on_a_series(shared_home):
    env = {**os.environ, "KBISECT_HOME": str(shared_home)}
    result = subprocess.run([sys.executable, "-m", "orchestrator", "kernels", "list", "--source", "debian",
                             "--from", "6.1", "--to", "6.1", "--json"], cwd=REPO, env=env, text=True,
                            capture_output=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows and all(r["version"].startswith("6.1.0-") and r["source"] == "debian" for r in rows)
    assert all(r["upstream"].startswith("6.1.") for r in rows)


def test_fetch_real_cloud_kernel(listing, shared_home):
    clouds = [e.version for e in listing if e.version.endswith("-cloud-amd64") and e.version.startswith("6.1.0-")]
    version = PREFERRED if PREFERRED in clouds else clouds[-1]
    kernel = fetch(f"debian:{version}")
    assert kernel.root == shared_home / "kernels" / "debian" / version
    assert kernel.kver == version
    assert kernel.vmlinuz.stat().st_size > 4_000_000
    assert kernel.config is not None and "CONFIG_VETH=m" in kernel.config.read_text()
    assert list(kernel.modules.rglob("veth.ko*"))
    assert UnpackedKernel.load(kernel.root).kver == version
    entry = next(e for e in listing if e.version == version)
    assert entry.extra["package_version"].startswith(entry.extra["upstream"] + "-")
    # a spec without flavour means the default (cloud) flavour, served from the cache
    short = version.removesuffix("-cloud-amd64")
    assert fetch(f"debian:{short}").root == kernel.root


def test_unknown_abi_is_one_line(shared_home):
    env = {**os.environ, "KBISECT_HOME": str(shared_home)}
    result = subprocess.run([sys.executable, "-m", "orchestrator", "kernels", "fetch", "debian:6.1.0-999-cloud-amd64"],
                            cwd=REPO, env=env, text=True, capture_output=True, timeout=600)
    assert result.returncode != 0 and result.stdout == ""
    assert "no package linux-image-6.1.0-999-cloud-amd64" in result.stderr
    assert "Traceback" not in result.stderr


def test_damaged_cached_package_is_fetched_again(listing, kbisect_home):
    """In a private, empty home: fetch, damage the cached .deb, fetch again: apt's copy is re-verified."""
    import shutil

    version = next(e.version for e in reversed(listing) if e.version.endswith("-cloud-amd64")
                   and e.version.startswith("6.1.0-") and "deb11" not in e.version)
    first = fetch(f"debian:{version}")
    debs = list((kbisect_home / "downloads" / "debian").glob("*.deb"))
    assert len(debs) == 1 and not list((kbisect_home / "downloads" / "debian").glob(".apt-*"))
    good = hashlib.sha256(debs[0].read_bytes()).hexdigest()
    assert good == next(e for e in listing if e.version == version).files[0].sha256
    debs[0].write_bytes(b"damaged")
    shutil.rmtree(first.root)
    again = fetch(f"debian:{version}")
    assert hashlib.sha256(debs[0].read_bytes()).hexdigest() == good
    assert list(again.modules.rglob("veth.ko*"))


def test_fetch_newest_cloud_kernel(listing, shared_home):
    """The newest kernel (sid's split linux-binary/linux-modules/linux-base packages today) unpacks too."""
    newest = [e for e in listing if e.version.endswith("-cloud-amd64")][-1]
    kernel = fetch(newest.spec)
    assert kernel.kver == newest.version and kernel.vmlinuz.read_bytes()[0x202:0x206] == b"HdrS"
    assert kernel.config is not None and list(kernel.modules.rglob("veth.ko*"))
