"""The ubuntu source against a fake Launchpad + archive on 127.0.0.1, and the local source."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from orchestrator.errors import UnavailableError
from orchestrator.sources import fetch, get_source
from tests.test_mirror import build_deb

REPO = Path(__file__).resolve().parent.parent
# (version, pocket, where the pool has it)
UPLOADS = [("5.4.0-77.86", "Updates", "files-only"), ("5.4.0-26.30", "Release", "pool"),
           ("5.4.0-26.30", "Security", "pool"), ("5.4.0-100.113", "Updates", "tampered"),
           ("5.4.0-26.31", "Proposed", "pool"), ("not-a-version", "Release", "pool")]


def _ubuntu_debs(work: Path, version: str, upstream: str) -> dict[str, bytes]:
    abi = version.rsplit(".", 1)[0]
    kver = f"{abi}-generic"
    changelog = gzip.compress(
        f"linux ({version}) focal; urgency=medium\n\n  * Focal update: v5.4.29 upstream stable release\n"
        f"  * Focal update: v{upstream} upstream stable release (LP: #1)\n\n"
        f" -- Kernel <k@example.invalid>  Mon, 1 Jan 2020 00:00:00 +0000\n".encode())
    debs = [
        build_deb(work, f"linux-image-unsigned-{kver}", version, {f"boot/vmlinuz-{kver}": b"MZ ubuntu " + version.encode()}),
        build_deb(work, f"linux-modules-{kver}", version, {
            f"boot/config-{kver}": b"CONFIG_VETH=m\n",
            f"lib/modules/{kver}/kernel/drivers/net/veth.ko": b"\x7fELF veth",
            f"usr/share/doc/linux-modules-{kver}/changelog.Debian.gz": changelog}),
        build_deb(work, f"linux-modules-extra-{kver}", version, {
            f"lib/modules/{kver}/kernel/drivers/net/extra-thing.ko": b"\x7fELF extra"}),
    ]
    return {d.name: d.read_bytes() for d in debs}


class FakeLaunchpad(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    pool: dict[str, bytes] = {}
    published: dict[str, list[dict]] = {}  # version -> binaries meta

    def log_message(self, *args) -> None:
        pass

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        base = f"http://127.0.0.1:{self.server.server_address[1]}/"
        path = parts.path
        if path == "/api/1.0/ubuntu/+archive/primary" and query.get("ws.op") == "getPublishedSources":
            assert query["source_name"] == "linux" and query["exact_match"] == "true"
            rows = [{"source_package_name": "linux", "source_package_version": v, "pocket": p,
                     "status": "Published", "self_link": f"{base}api/1.0/ubuntu/+archive/primary/+sourcepub/{i}"}
                    for i, (v, p, _) in enumerate(UPLOADS)]
            if "version" in query:
                rows = [r for r in rows if r["source_package_version"] == query["version"]]
            elif query.get("distro_series") != f"{base}api/1.0/ubuntu/focal":
                rows = []
            start = int(query.get("ws.start", "0"))
            page = {"start": start, "total_size": len(rows), "entries": rows[start:start + 3]}
            if start + 3 < len(rows):
                nxt = dict(query, **{"ws.start": str(start + 3)})
                page["next_collection_link"] = f"{base}api/1.0/ubuntu/+archive/primary?" + \
                    "&".join(f"{k}={v}" for k, v in nxt.items())
            self._send(200, json.dumps(page).encode())
        elif path.startswith("/api/1.0/ubuntu/+archive/primary/+sourcepub/") and query.get("ws.op") == "binaryFileUrls":
            version = UPLOADS[int(path.rsplit("/", 1)[1])][0]
            meta = [{"url": f"{base}ubuntu/+archive/primary/+files/{name}", "size": len(data),
                     "sha1": hashlib.sha1(data).hexdigest(), "sha256": hashlib.sha256(data).hexdigest()}
                    for name, data in self.files.items() if f"_{version}_" in name]
            self._send(200, json.dumps(meta).encode())
        elif path.startswith("/ubuntu/+archive/primary/+files/"):
            name = path.rsplit("/", 1)[1]
            self._send(200, self.files[name], "application/octet-stream") if name in self.files else \
                self._send(404, b"nope", "text/plain")
        elif path.startswith("/ubuntu/pool/main/l/linux/"):
            name = path.rsplit("/", 1)[1]
            if name in self.pool:
                self._send(200, self.pool[name], "application/octet-stream")
            else:
                self._send(404, b"not in the archive any more", "text/plain")
        else:
            self._send(404, b"{}")


@pytest.fixture(scope="module")
def launchpad(tmp_path_factory):
    work = tmp_path_factory.mktemp("ubuntu-debs")
    files: dict[str, bytes] = {}
    pool: dict[str, bytes] = {}
    for version, upstream, where in [("5.4.0-26.30", "5.4.30", "pool"), ("5.4.0-77.86", "5.4.119", "files-only"),
                                     ("5.4.0-100.113", "5.4.170", "tampered"), ("5.4.0-26.31", "5.4.30", "pool")]:
        debs = _ubuntu_debs(work, version, upstream)
        files.update(debs)
        if where == "pool":
            pool.update(debs)
        elif where == "tampered":
            for name, data in debs.items():
                pool[name] = data[:-10] + b"x" * 10  # the archive copy differs from what Launchpad publishes
    FakeLaunchpad.files, FakeLaunchpad.pool = files, pool
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeLaunchpad)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KBISECT_HOME": str(home), "NO_PROXY": "127.0.0.1,localhost"}
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=120)


def test_ubuntu_list_orders_uploads(launchpad, kbisect_home):
    result = _cli(kbisect_home, "kernels", "list", "--source", "ubuntu", "--mirror", launchpad, "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["version"] for r in rows] == ["5.4.0-26.30", "5.4.0-26.31", "5.4.0-77.86", "5.4.0-100.113"]
    by = {r["version"]: r for r in rows}
    assert by["5.4.0-26.30"]["pockets"] == ["Release", "Security"] and by["5.4.0-26.30"]["series"] == "focal"
    ranged = get_source("ubuntu", launchpad).list("5.4.0-26.31", "5.4.0-77.86")
    assert [e.version for e in ranged] == ["5.4.0-26.31", "5.4.0-77.86"]


def test_ubuntu_fetch_from_pool_records_upstream(launchpad, kbisect_home):
    kernel = fetch("ubuntu:5.4.0-26.30", launchpad)
    assert kernel.kver == "5.4.0-26-generic"
    assert kernel.vmlinuz.read_bytes() == b"MZ ubuntu 5.4.0-26.30"
    assert (kernel.modules / "kernel/drivers/net/veth.ko").exists()
    assert (kernel.modules / "kernel/drivers/net/extra-thing.ko").exists()  # modules-extra too
    assert kernel.extra["upstream"] == "5.4.30"
    assert all(f["url"].startswith(launchpad + "ubuntu/pool/") for f in kernel.extra["files"])


def test_ubuntu_falls_back_to_launchpad_files(launchpad, kbisect_home):
    kernel = fetch("ubuntu:5.4.0-77.86", launchpad)
    assert kernel.extra["upstream"] == "5.4.119" and kernel.vmlinuz.read_bytes().endswith(b"5.4.0-77.86")


def test_ubuntu_tampered_pool_file_is_refused(launchpad, kbisect_home):
    result = _cli(kbisect_home, "kernels", "fetch", "ubuntu:5.4.0-100.113", "--mirror", launchpad)
    assert result.returncode != 0 and "sha256 mismatch" in result.stderr and result.stderr.count("\n") == 1
    assert not list((kbisect_home / "downloads" / "ubuntu").glob("*.deb"))
    with pytest.raises(UnavailableError, match="no upload"):
        fetch("ubuntu:5.4.0-999.999", launchpad)


# ------------------------------------------------------------------------------ local


@pytest.fixture()
def local_dir(tmp_path) -> Path:
    root = tmp_path / "builds"
    debs = root / "my-6.6-build"
    debs.mkdir(parents=True)
    build_deb(debs, "linux-image-6.6.0-test", "6.6.0-1", {
        "boot/vmlinuz-6.6.0-test": b"MZ local deb",
        "boot/config-6.6.0-test": b"CONFIG_VETH=y\n",
        "lib/modules/6.6.0-test/kernel/drivers/net/veth.ko": b"\x7fELF"})
    tree = root / "tree-6.9"
    (tree / "usr/lib/modules/6.9.0-rc1+/kernel/net").mkdir(parents=True)
    (tree / "usr/lib/modules/6.9.0-rc1+/kernel/net/veth.ko").write_bytes(b"\x7fELF tree")
    (tree / "usr/lib/modules/6.9.0-rc1+/build").symlink_to("/nonexistent/src")
    (tree / "vmlinuz").write_bytes(b"MZ local tree")
    (tree / ".config").write_text("CONFIG_VETH=m\n")
    (root / "empty").mkdir()
    return root


def test_local_list_and_fetch(local_dir, kbisect_home):
    result = _cli(kbisect_home, "kernels", "list", "--source", "local", "--mirror", str(local_dir), "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["version"]: r for r in json.loads(result.stdout)}
    assert set(rows) == {"my-6.6-build", "tree-6.9", "empty"}
    assert rows["my-6.6-build"]["available"] and rows["tree-6.9"]["available"]
    assert not rows["empty"]["available"] and "vmlinuz" in rows["empty"]["reason"]

    deb_kernel = fetch("local:my-6.6-build", str(local_dir))
    assert deb_kernel.kver == "6.6.0-test" and deb_kernel.vmlinuz.read_bytes() == b"MZ local deb"
    assert len(next(iter(deb_kernel.extra["sha256"].values()))) == 64

    tree_kernel = fetch("local:tree-6.9", str(local_dir))
    assert tree_kernel.kver == "6.9.0-rc1+" and tree_kernel.config.read_text() == "CONFIG_VETH=m\n"
    assert (tree_kernel.modules / "kernel/net/veth.ko").read_bytes() == b"\x7fELF tree"
    assert not (tree_kernel.modules / "build").is_symlink()
    # the cache holds copies: the build directory can change without altering what was tested
    (local_dir / "tree-6.9" / "vmlinuz").write_bytes(b"rebuilt")
    assert fetch("local:tree-6.9", str(local_dir)).vmlinuz.read_bytes() == b"MZ local tree"

    failed = _cli(kbisect_home, "kernels", "fetch", "local:empty", "--mirror", str(local_dir))
    assert failed.returncode != 0 and failed.stderr.startswith("kbisect: error: local:empty:")
