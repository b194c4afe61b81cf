"""The ubuntu source against the fake Launchpad + archive on 127.0.0.1, and the local source.

The fake (tests/fake_launchpad.py) answers as the real services do: hashes only from a binary
publication's devel-only `binaryFileUrls(include_meta=true)`, paged collections, statuses.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from orchestrator.core.errors import KbisectError, UnavailableError
from orchestrator.adapters.sources import fetch, get_source
from orchestrator.adapters.sources.ubuntu import Endpoints, UbuntuSource
from tests.fake_launchpad import FakeLaunchpad, Upload, serve_launchpad
from tests.test_mirror import build_deb

REPO = Path(__file__).resolve().parent.parent
ENTRY_END = " -- Kernel <k@example.invalid>  Mon, 1 Jan 2020 00:00:00 +0000\n"


def _changelog(version: str, series: str, lines: list[str]) -> bytes:
    body = "".join(f"  * {line}\n" for line in lines)
    return gzip.compress(f"linux ({version}) {series}; urgency=medium\n\n{body}\n{ENTRY_END}".encode())


def _noise(version: str, kver: str) -> dict[str, bytes]:
    """Binaries of the upload kbisect must not pick: headers, another architecture."""
    return {f"linux-headers-{kver}_{version}_amd64.deb": b"headers, never fetched",
            f"linux-image-unsigned-{kver}_{version}_arm64.deb": b"arm64, never fetched"}


def _focal_debs(work: Path, version: str, upstream: str) -> dict[str, bytes]:
    """Image, modules and modules-extra of a focal upload (real .debs), plus noise."""
    kver = f"{version.rsplit('.', 1)[0]}-generic"
    changelog = _changelog(version, "focal", ["Focal update: v5.4.29 upstream stable release (LP: #1)",
                                              f"Focal update: v{upstream} upstream stable release (LP: #2) //"])
    debs = [
        build_deb(work, f"linux-image-unsigned-{kver}", version,
                  {f"boot/vmlinuz-{kver}": b"MZ ubuntu " + version.encode()}),
        build_deb(work, f"linux-modules-{kver}", version, {
            f"boot/config-{kver}": b"CONFIG_VETH=m\n",
            f"lib/modules/{kver}/kernel/drivers/net/veth.ko": b"\x7fELF veth",
            f"usr/share/doc/linux-modules-{kver}/changelog.Debian.gz": changelog}),
        build_deb(work, f"linux-modules-extra-{kver}", version, {
            f"lib/modules/{kver}/kernel/drivers/net/extra-thing.ko": b"\x7fELF extra"}),
    ]
    return {**{d.name: d.read_bytes() for d in debs}, **_noise(version, kver)}


def _xenial_debs(work: Path, version: str) -> dict[str, bytes]:
    """Xenial (4.4): linux-image-X-generic with a few modules, linux-image-extra-X-generic with most."""
    kver = f"{version.rsplit('.', 1)[0]}-generic"
    debs = [
        build_deb(work, f"linux-image-{kver}", version, {
            f"boot/vmlinuz-{kver}": b"MZ xenial " + version.encode(),
            f"boot/config-{kver}": b"CONFIG_VETH=m\n",
            f"lib/modules/{kver}/kernel/fs/ext4/ext4.ko": b"\x7fELF ext4",
            f"usr/share/doc/linux-image-{kver}/changelog.Debian.gz":
                _changelog(version, "xenial", ["Xenial update: v4.4.302 upstream stable release (LP: #9)"])}),
        build_deb(work, f"linux-image-extra-{kver}", version, {
            f"lib/modules/{kver}/kernel/drivers/net/veth.ko": b"\x7fELF veth (extra)"}),
    ]
    return {**{d.name: d.read_bytes() for d in debs}, **_noise(version, kver)}


def _bionic_debs(work: Path, version: str) -> dict[str, bytes]:
    """A bionic upload whose recent updates are unnumbered stable patchsets (history in .old.gz)."""
    kver = f"{version.rsplit('.', 1)[0]}-generic"
    doc = f"usr/share/doc/linux-modules-{kver}/"
    recent = _changelog(version, "bionic", [
        "Bionic update: upstream stable patchset 2020-01-13 (LP: #1859712)",
        "Bionic update: upstream stable patchset 2019-12-16 (LP: #1856702)"])
    older = gzip.compress(
        f"linux (4.15.0-72.81) bionic; urgency=medium\n\n"
        f"  * Bionic update: upstream stable patchset 2019-11-01 (LP: #3)\n\n{ENTRY_END}\n"
        f"linux (4.15.0-24.26) bionic; urgency=medium\n\n"
        f"  * Bionic update: v4.15.18 upstream stable release (LP: #4)\n\n{ENTRY_END}\n"
        f"linux (4.15.0-22.24) bionic; urgency=medium\n\n"
        f"  * Bionic update: v4.15.17 upstream stable release (LP: #5)\n\n{ENTRY_END}".encode())
    debs = [
        build_deb(work, f"linux-image-unsigned-{kver}", version, {f"boot/vmlinuz-{kver}": b"MZ bionic"}),
        build_deb(work, f"linux-modules-{kver}", version, {
            f"lib/modules/{kver}/kernel/drivers/net/veth.ko": b"\x7fELF veth",
            doc + "changelog.Debian.gz": recent, doc + "changelog.Debian.old.gz": older}),
    ]
    return {d.name: d.read_bytes() for d in debs}


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> FakeLaunchpad:
    work = tmp_path_factory.mktemp("ubuntu-debs")
    d26_30 = _focal_debs(work, "5.4.0-26.30", "5.4.30")
    d26_31 = _focal_debs(work, "5.4.0-26.31", "5.4.30")
    d77 = _focal_debs(work, "5.4.0-77.86", "5.4.119")
    d100 = _focal_debs(work, "5.4.0-100.113", "5.4.170")
    xenial = _xenial_debs(work, "4.4.0-210.242")
    bionic = _bionic_debs(work, "4.15.0-76.86")
    uploads = [
        Upload("5.4.0-26.30", pocket="Release", status="Published", debs=d26_30),
        Upload("5.4.0-26.30", pocket="Security", status="Superseded", debs=d26_30),
        Upload("5.4.0-26.31", pocket="Proposed", status="Deleted", debs=d26_31),  # pulled from -proposed
        Upload("5.4.0-77.86", pocket="Updates", status="Superseded", debs=d77),  # gone from the pool
        Upload("5.4.0-99.112", pocket="Proposed", status="Obsolete"),
        Upload("5.4.0-100.113", pocket="Updates", status="Published", debs=d100),  # pool copy tampered
        Upload("not-a-version", pocket="Release"),
        Upload("5.8.0-50.56~20.04.1", source="linux-hwe-5.8"),  # another source: exact_match keeps it out
        Upload("4.4.0-210.242", series="xenial", debs=xenial),
        Upload("4.15.0-76.86", series="bionic", debs=bionic),
    ]
    pool = {**d26_30, **d26_31, **xenial, **bionic}
    pool.update({name: data[:-10] + b"x" * 10 for name, data in d100.items()})
    return FakeLaunchpad(uploads, pool=pool, page_size=2)


@pytest.fixture(scope="module")
def launchpad(fake) -> str:
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    with fake.serve() as url:
        yield url


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KBISECT_HOME": str(home), "NO_PROXY": "127.0.0.1,localhost"}
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=120)


def _sha(fake: FakeLaunchpad, name: str) -> str:
    return hashlib.sha256(fake.librarian[name]).hexdigest()


def test_the_fake_answers_like_the_real_api(launchpad):
    """Guards the fake itself: it must never drift back to handing hashes to a source publication."""
    sources = f"{launchpad}api/devel/ubuntu/+archive/primary?ws.op=getPublishedSources&source_name=linux" \
              "&exact_match=true&version=5.4.0-77.86"
    source_pub = requests.get(sources, timeout=10).json()["entries"][0]["self_link"]
    with_meta = requests.get(f"{source_pub}?ws.op=binaryFileUrls&include_meta=true", timeout=10)
    assert with_meta.status_code == 400 and "include_meta" in with_meta.text
    plain = requests.get(f"{source_pub}?ws.op=binaryFileUrls", timeout=10).json()
    assert plain and all(isinstance(u, str) and "/launchpad/ubuntu/+archive/primary/+files/" in u for u in plain)
    # getPublishedBinaries hides a Superseded upload's binaries unless active_binaries_only=false
    assert requests.get(f"{source_pub}?ws.op=getPublishedBinaries", timeout=10).json()["entries"] == []
    page = requests.get(f"{source_pub}?ws.op=getPublishedBinaries&active_binaries_only=false", timeout=10).json()
    assert len(page["entries"]) == 2 and page["total_size"] == 5 and "next_collection_link" in page
    binary = page["entries"][0]["self_link"]
    meta = requests.get(f"{binary}?ws.op=binaryFileUrls&include_meta=true", timeout=10).json()
    assert set(meta[0]) == {"url", "size", "sha1", "sha256"}
    # binaryFileUrls on a binary publication exists only in devel
    old = binary.replace("/api/devel/", "/api/1.0/")
    assert requests.get(f"{old}?ws.op=binaryFileUrls&include_meta=true", timeout=10).status_code == 400
    # through kbisect's own HTTP layer an include_meta on a source publication is a one-line error
    from orchestrator.adapters import cache

    with pytest.raises(KbisectError, match="HTTP 400"):
        cache.http_get_json(f"{source_pub}?ws.op=binaryFileUrls&include_meta=true")


def test_ubuntu_list_statuses_and_paging(launchpad, fake, kbisect_home):
    fake.requests.clear()
    result = _cli(kbisect_home, "kernels", "list", "--source", "ubuntu", "--mirror", launchpad, "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["version"] for r in rows] == ["5.4.0-26.30", "5.4.0-26.31", "5.4.0-77.86", "5.4.0-99.112",
                                            "5.4.0-100.113"]
    by = {r["version"]: r for r in rows}
    assert by["5.4.0-26.30"]["pockets"] == ["Release", "Security"] and by["5.4.0-26.30"]["series"] == "focal"
    assert by["5.4.0-26.30"]["available"] and by["5.4.0-26.30"]["status"] == "Published"
    assert by["5.4.0-77.86"]["available"] and by["5.4.0-77.86"]["status"] == "Superseded"
    assert not by["5.4.0-26.31"]["available"] and by["5.4.0-26.31"]["reason"] == "Launchpad status Deleted"
    assert not by["5.4.0-99.112"]["available"] and by["5.4.0-99.112"]["reason"] == "Launchpad status Obsolete"
    # seven focal publications of linux, in pages of two: every page was followed, all on the devel API
    listing = [r for r in fake.requests if "getPublishedSources" in r]
    assert len(listing) == 4 and all(r.startswith("/api/devel/") for r in fake.requests)
    ranged = get_source("ubuntu", launchpad).list("5.4.0-26.31", "5.4.0-77.86")
    assert [e.version for e in ranged] == ["5.4.0-26.31", "5.4.0-77.86"]


def test_ubuntu_fetch_verifies_sha256_from_binary_publications(launchpad, fake, kbisect_home):
    fake.requests.clear()
    kernel = fetch("ubuntu:5.4.0-26.30", launchpad)
    assert kernel.kver == "5.4.0-26-generic"
    assert kernel.vmlinuz.read_bytes() == b"MZ ubuntu 5.4.0-26.30"
    assert (kernel.modules / "kernel/drivers/net/veth.ko").exists()
    assert (kernel.modules / "kernel/drivers/net/extra-thing.ko").exists()  # modules-extra too
    assert kernel.extra["upstream"] == "5.4.30"
    files = kernel.extra["files"]
    assert [f["package"] for f in files] == ["linux-image-unsigned-5.4.0-26-generic", "linux-modules-5.4.0-26-generic",
                                             "linux-modules-extra-5.4.0-26-generic"]
    assert all(f["url"] == f"{launchpad}ubuntu/pool/main/l/linux/{f['name']}" for f in files)
    assert all(f["sha256"] == _sha(fake, f["name"]) for f in files)
    assert all(f["mirrors"] == [f"{launchpad}launchpad/ubuntu/+archive/primary/+files/{f['name']}"] for f in files)
    # the hashes came the devel way, never from a source publication
    assert any("/+sourcepub/" in r and "getPublishedBinaries" in r and "active_binaries_only=false" in r
               for r in fake.requests)
    meta_calls = [r for r in fake.requests if "include_meta=true" in r]
    assert len(meta_calls) == 3 and all(r.startswith("/api/devel/") and "/+binarypub/" in r for r in meta_calls)
    assert not any("arm64" in r or "linux-headers" in r for r in fake.requests)


def test_ubuntu_tampered_pool_file_is_refused(launchpad, kbisect_home):
    result = _cli(kbisect_home, "kernels", "fetch", "ubuntu:5.4.0-100.113", "--mirror", launchpad)
    assert result.returncode != 0 and "sha256 mismatch" in result.stderr and result.stderr.count("\n") == 1
    assert not list((kbisect_home / "downloads" / "ubuntu").glob("*.deb"))
    assert not (kbisect_home / "kernels" / "ubuntu" / "5.4.0-100.113").exists()


def test_ubuntu_falls_back_to_launchpad_files_through_the_cli(launchpad, fake, kbisect_home):
    fake.requests.clear()
    result = _cli(kbisect_home, "kernels", "fetch", "ubuntu:5.4.0-77.86", "--mirror", launchpad)
    assert result.returncode == 0, result.stderr
    root = Path(result.stdout.strip())
    record = json.loads((root / "kernel.json").read_text())
    assert root == kbisect_home / "kernels" / "ubuntu" / "5.4.0-77.86"
    assert record["extra"]["upstream"] == "5.4.119" and (root / "vmlinuz").read_bytes().endswith(b"5.4.0-77.86")
    assert any(r.startswith("/launchpad/ubuntu/+archive/primary/+files/linux-modules-5.4.0-77-generic_")
               for r in fake.requests)


def test_ubuntu_deleted_and_obsolete_uploads_are_refused(launchpad, kbisect_home):
    with pytest.raises(UnavailableError, match="Launchpad status Deleted"):
        fetch("ubuntu:5.4.0-26.31", launchpad)
    result = _cli(kbisect_home, "kernels", "fetch", "ubuntu:5.4.0-99.112", "--mirror", launchpad)
    assert result.returncode != 0 and "Launchpad status Obsolete" in result.stderr
    assert result.stderr.count("\n") == 1
    with pytest.raises(UnavailableError, match="no upload"):
        fetch("ubuntu:5.4.0-999.999", launchpad)
    assert not list((kbisect_home / "downloads" / "ubuntu").glob("*.deb"))


def test_ubuntu_xenial_unpacks_linux_image_extra(launchpad, kbisect_home):
    kernel = fetch("ubuntu:4.4.0-210.242", launchpad)
    assert kernel.kver == "4.4.0-210-generic" and kernel.vmlinuz.read_bytes() == b"MZ xenial 4.4.0-210.242"
    assert (kernel.modules / "kernel/fs/ext4/ext4.ko").exists()  # from the image package
    assert (kernel.modules / "kernel/drivers/net/veth.ko").read_bytes() == b"\x7fELF veth (extra)"
    assert [f["package"] for f in kernel.extra["files"]] == ["linux-image-4.4.0-210-generic",
                                                             "linux-image-extra-4.4.0-210-generic"]
    assert kernel.extra["upstream"] == "4.4.302"


def test_ubuntu_upstream_patchsets_after_the_last_numbered_base(launchpad, kbisect_home):
    kernel = fetch("ubuntu:4.15.0-76.86", launchpad)
    assert kernel.extra["upstream"] == "4.15.18"
    assert kernel.extra["upstream_patchsets"] == 3 and kernel.extra["upstream_newest_patchset"] == "2020-01-13"
    assert kernel.extra["upstream_note"] == \
        "upstream base 4.15.18 plus 3 upstream stable patchsets (the newest 2020-01-13)"


def test_ubuntu_mirror_stands_for_all_three_hosts(monkeypatch):
    monkeypatch.setenv("KBISECT_UBUNTU_MIRROR", "http://127.0.0.1:9/m")
    ends = UbuntuSource().endpoints
    assert ends == Endpoints("http://127.0.0.1:9/m/api/devel/",
                             "http://127.0.0.1:9/m/launchpad/ubuntu/+archive/primary/+files/",
                             "http://127.0.0.1:9/m/ubuntu/")
    monkeypatch.setenv("KBISECT_UBUNTU_ARCHIVE", "http://127.0.0.1:9/archive")
    public = Endpoints.for_mirror(None)
    assert public.api.startswith("https://") and public.api.endswith("/devel/")
    assert public.files.endswith("/ubuntu/+archive/primary/+files/") and public.archive == "http://127.0.0.1:9/archive/"


def test_listing_only_fake_for_the_differential_tests(kbisect_home):
    with serve_launchpad({"focal": ["5.4.0-26.30", "5.4.0-33.37"], "jammy": ["5.15.0-25.25"]}) as url:
        assert [e.version for e in get_source("ubuntu", url).list()] == ["5.4.0-26.30", "5.4.0-33.37"]
        assert [e.version for e in UbuntuSource(url, series="jammy").list()] == ["5.15.0-25.25"]


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
    assert len(tree_kernel.id) == 64 and tree_kernel.id != deb_kernel.id

    failed = _cli(kbisect_home, "kernels", "fetch", "local:empty", "--mirror", str(local_dir))
    assert failed.returncode != 0 and failed.stderr.startswith("kbisect: error: local:empty:")


def test_a_rebuilt_local_tree_is_a_new_kernel(local_dir, kbisect_home):
    """`git bisect run kbisect run --kernel local:build`: the same name, a new build at every step."""
    first = fetch("local:tree-6.9", str(local_dir))
    marker = first.root / "served-from-cache"
    marker.write_text("")  # outside what boots: survives only while the copy is reused
    same = fetch("local:tree-6.9", str(local_dir))
    assert marker.exists() and same.id == first.id

    (local_dir / "tree-6.9" / "vmlinuz").write_bytes(b"MZ rebuilt tree")
    rebuilt = fetch("local:tree-6.9", str(local_dir))
    assert rebuilt.vmlinuz.read_bytes() == b"MZ rebuilt tree" and rebuilt.id != first.id
    assert not marker.exists() and json.loads((rebuilt.root / "kernel.json").read_text())["id"] == rebuilt.id

    (local_dir / "tree-6.9" / "usr/lib/modules/6.9.0-rc1+/kernel/net/veth.ko").write_bytes(b"\x7fELF veth v2")
    modules_changed = fetch("local:tree-6.9", str(local_dir))
    assert (modules_changed.modules / "kernel/net/veth.ko").read_bytes() == b"\x7fELF veth v2"
    assert modules_changed.id not in (first.id, rebuilt.id)

    # the CLI says which bytes it fetched
    result = _cli(kbisect_home, "kernels", "fetch", "local:tree-6.9", "--mirror", str(local_dir), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"spec": "local:tree-6.9", "id": modules_changed.id,
                                         "dir": str(modules_changed.root)}
    plain = _cli(kbisect_home, "kernels", "fetch", "local:tree-6.9", "--mirror", str(local_dir))
    assert plain.stdout.strip() == str(modules_changed.root)


def test_rebuilt_local_debs_are_a_new_kernel(local_dir, kbisect_home):
    first = fetch("local:my-6.6-build", str(local_dir))
    for deb in (local_dir / "my-6.6-build").glob("*.deb"):
        deb.unlink()
    build_deb(local_dir / "my-6.6-build", "linux-image-6.6.0-test", "6.6.0-2", {
        "boot/vmlinuz-6.6.0-test": b"MZ local deb, second build",
        "lib/modules/6.6.0-test/kernel/drivers/net/veth.ko": b"\x7fELF"})
    second = fetch("local:my-6.6-build", str(local_dir))
    assert second.vmlinuz.read_bytes() == b"MZ local deb, second build" and second.id != first.id


def test_a_local_directory_that_is_gone_is_unavailable_not_its_old_copy(local_dir, kbisect_home):
    import shutil

    fetch("local:tree-6.9", str(local_dir))
    shutil.rmtree(local_dir / "tree-6.9")  # a failed build step removed its output
    with pytest.raises(UnavailableError, match="no directory"):
        fetch("local:tree-6.9", str(local_dir))


def test_a_kernel_json_without_an_id_gets_the_id_a_fresh_unpack_records(local_dir, kbisect_home):
    """kernel.json from before content ids: the id is computed on load (from the recorded package
    hashes, else the tree) and written back; the cached copy is reused, not unpacked again."""
    from orchestrator.adapters.kernel import UnpackedKernel

    for spec in ("local:my-6.6-build", "local:tree-6.9"):
        kernel = fetch(spec, str(local_dir))
        manifest = kernel.root / "kernel.json"
        record = json.loads(manifest.read_text())
        del record["id"]
        manifest.write_text(json.dumps(record))
        (kernel.root / "served-from-cache").write_text("")
        assert UnpackedKernel.load(kernel.root).id == kernel.id
        assert json.loads(manifest.read_text())["id"] == kernel.id  # kept
        assert fetch(spec, str(local_dir)).id == kernel.id and (kernel.root / "served-from-cache").exists()


def test_a_rebuilt_local_kernel_is_probed_again(local_dir, kbisect_home):
    """Through the prober with the real kernel provider and a fake probe: the second build's
    probe is real, not the first build's stored verdict."""
    from orchestrator.adapters.catalog import resolve
    from orchestrator.adapters.store import Store
    from orchestrator.app.kernels import KernelProvider
    from orchestrator.app.prober import ResumingProbe
    from orchestrator.core.engine import Candidate
    from orchestrator.core.verdict import ProbeRecord, Verdict

    bug = resolve("gretap-ecn")
    provider = KernelProvider(str(local_dir))
    booted: list[bytes] = []

    def real(spec: str) -> ProbeRecord:
        booted.append(provider.get(spec).vmlinuz.read_bytes())
        return ProbeRecord(spec, bug.id, Verdict.GOOD, "fake", {"run": 1.0})

    def step() -> str:
        return ResumingProbe(bug, real, store=Store(), kernel_id=provider.kernel_id)(Candidate("local:tree-6.9")).origin

    assert step() == "probe"
    assert step() == "store"  # the same build: no boot
    (local_dir / "tree-6.9" / "vmlinuz").write_bytes(b"MZ rebuilt tree")
    assert step() == "probe" and booted == [b"MZ local tree", b"MZ rebuilt tree"]
