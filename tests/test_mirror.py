"""The mainline source against generated mirrors served on 127.0.0.1.

The mirror holds real .deb files built here with dpkg-deb, in both layouts of
kernel.ubuntu.com/mainline (debs at the top with BUILT; amd64/ with status), plus the
awkward cases met in the field: a failed build, a never-built directory, a directory with
two builds, odd legacy directory names, a tampered package, a truncated transfer, a
"Gone" link, modules under /usr/lib/modules, and an old single linux-image package.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Iterator

import pytest

from orchestrator import cache
from orchestrator.errors import ChecksumError, KbisectError, UnavailableError
from orchestrator.kernel import UnpackedKernel
from orchestrator.sources import fetch, get_source
from orchestrator.versions import KernelVersion, parse_version

REPO = Path(__file__).resolve().parent.parent

# version -> how it is laid out on the generated mirror
LAYOUT = {
    "4.15": "old-single",  # one linux-image package carrying the modules
    "5.6": "old", "5.6.17": "old", "5.7-rc1": "old", "5.7-rc7": "old", "5.7": "old",
    "5.6.5": "old-failed",
    "5.7.2": "new", "5.8-rc1": "new",
    "5.9.9": "new-failed",
    "5.16": "new-two-builds",  # newest build wins, all files from it
    "5.17": "new-two-builds-newest-incomplete",  # newest lacks modules: the older complete build wins
    "6.0": "new-tampered",
    "6.1": "new-truncated",
    "6.2": "new-gone",
    "6.5.8": "never-built",
    "6.18.18": "new-usr",  # modules under /usr/lib/modules
}
ODD = ["v4.4-rc2+cod1", "v5.12-rc1-dontuse", "v4.4.10-xenial", "v4.2-rc1-unstable"]
AVAILABLE = {"4.15", "5.6", "5.6.17", "5.7-rc1", "5.7-rc7", "5.7", "5.7.2", "5.8-rc1", "5.16", "5.17",
             "6.0", "6.1", "6.2", "6.18.18"}
# tampered/truncated/gone are listed as available: only the download can tell.


def _abi(v: KernelVersion) -> str:
    return f"{v.major}.{v.minor}.{v.patch}-{v.major:02d}{v.minor:02d}{v.patch:02d}" + (f"rc{v.rc}" if v.rc else "")


def build_deb(workdir: Path, package: str, version: str, files: dict[str, bytes],
              symlinks: dict[str, str] | None = None, compression: str = "gzip") -> Path:
    """A real .deb built with dpkg-deb (gzip by default: fast) holding `files` (paths relative to /)."""
    root = workdir / f"{package}_{version}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: {version}\nArchitecture: amd64\nMaintainer: test <t@example.invalid>\n"
        f"Description: generated for kbisect tests\n")
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for rel, target in (symlinks or {}).items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, path)
    out = workdir / f"{package}_{version}_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", f"-Z{compression}", "-z1", "--build", str(root), str(out)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return out


def kernel_payload(kver: str, marker: str) -> tuple[dict[str, bytes], dict[str, bytes], dict[str, str]]:
    """(image files, modules files, module symlinks) of a tiny kernel whose vmlinuz names `marker`."""
    image = {f"boot/vmlinuz-{kver}": b"MZ fake bzImage " + marker.encode() + b"\n"}
    modules = {
        f"boot/config-{kver}": b"CONFIG_VETH=m\n",
        f"boot/System.map-{kver}": b"ffffffff81000000 T _text\n",
        f"lib/modules/{kver}/kernel/drivers/net/veth.ko": b"\x7fELF veth " + marker.encode(),
        f"lib/modules/{kver}/modules.order": b"kernel/drivers/net/veth.ko\n",
        f"usr/share/doc/linux-modules-{kver}/copyright": b"GPL-2\n",
    }
    links = {f"lib/modules/{kver}/build": f"/usr/src/linux-headers-{kver}",  # points into the build host
             f"lib/modules/{kver}/escape": "../../../../../etc/passwd",  # would leave the unpack
             f"lib/modules/{kver}/veth-link.ko": "kernel/drivers/net/veth.ko"}  # harmless, kept
    return image, modules, links


def _checksums(files: dict[str, bytes]) -> str:
    lines = ["# Checksums, check with the command below:", "#     shasum -c CHECKSUMS", "#", "# Checksums-Sha1:"]
    lines += [f"{hashlib.sha1(d).hexdigest()}  {n}" for n, d in sorted(files.items())]
    lines += ["#", "# Checksums-Sha256:"]
    lines += [f"{hashlib.sha256(d).hexdigest()}  {n}" for n, d in sorted(files.items())]
    return "\n".join(lines) + "\n"


def _write_index(directory: Path, top: bool = False) -> None:
    """An Apache-style listing: sort links, Parent Directory, then the entries."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in directory.iterdir() if p.name != "index.html")
    rows = ['<tr><th><a href="?C=N;O=D">Name</a></th><th><a href="?C=M;O=A">Last modified</a></th></tr>',
            '<tr><td><a href="/">Parent Directory</a></td></tr>']
    rows += [f'<tr><td><a href="{n.replace("+", "%2B")}">{n}</a></td><td>2020-06-10 11:33</td></tr>' for n in names]
    (directory / "index.html").write_text("<!DOCTYPE HTML>\n<html><head><title>Index of /mainline</title></head>"
                                          "<body><table>\n" + "\n".join(rows) + "\n</table></body></html>\n")


def _set_of_debs(work: Path, v: KernelVersion, stamp: str, *, single=False, usr=False, marker=None,
                 with_modules=True) -> dict[str, bytes]:
    abi = _abi(v)
    kver = f"{abi}-generic"
    pkgver = f"{abi}.{stamp}"
    image, modules, links = kernel_payload(kver, marker or f"{v} {stamp}")
    if usr:
        modules = {(k.replace("lib/modules/", "usr/lib/modules/", 1) if k.startswith("lib/") else k): d
                   for k, d in modules.items()}
        links = {k.replace("lib/modules/", "usr/lib/modules/", 1): t for k, t in links.items()}
    out: dict[str, bytes] = {}
    compression = "zstd" if usr else "gzip"  # recent builds: data.tar.zst and /usr/lib/modules
    if single:
        deb = build_deb(work, f"linux-image-{kver}", pkgver, {**image, **modules}, links)
        out[deb.name] = deb.read_bytes()
    else:
        deb = build_deb(work, f"linux-image-unsigned-{kver}", pkgver, image, compression=compression)
        out[deb.name] = deb.read_bytes()
        if with_modules:
            deb = build_deb(work, f"linux-modules-{kver}", pkgver, modules, links, compression=compression)
            out[deb.name] = deb.read_bytes()
    # other flavours and arches sit beside: never chosen, never downloaded
    out[f"linux-image-unsigned-{abi}-lowlatency_{pkgver}_amd64.deb"] = b"not a deb"
    out[f"linux-headers-{kver}_{pkgver}_amd64.deb"] = b"not a deb"
    out[f"linux-image-unsigned-{kver}_{pkgver}_arm64.deb"] = b"not a deb"
    return out


def build_mirror(root: Path) -> Path:
    """Generate the whole mirror under root (real .debs, CHECKSUMS, BUILT/status, index pages)."""
    work = root.parent / "debs"
    work.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    for i, (label, layout) in enumerate(LAYOUT.items()):
        v = parse_version(label)
        top = root / v.mainline_dir
        top.mkdir()
        stamp = f"20200{(i % 9) + 1}{(i % 28) + 1:02d}1133"
        if layout.startswith("old"):
            files = {} if layout == "old-failed" else _set_of_debs(work, v, stamp, single=(layout == "old-single"))
            for name, data in files.items():
                (top / name).write_bytes(data)
            (top / "CHECKSUMS").write_text(_checksums(files))
            verdict = "failed" if layout == "old-failed" else "succeeded"
            (top / "BUILT").write_text(f"Build for amd64 {verdict} (see BUILD.LOG.amd64):\n"
                                       + "".join(f"  {n}\n" for n in files))
            _write_index(top)
            continue
        if layout == "never-built":
            (top / "HEADER.html").write_text("not built\n")
            _write_index(top)
            continue
        where = top / "amd64"
        where.mkdir()
        if layout == "new-failed":
            files = {}
            (where / "log").write_text("make: *** [Makefile:1] Error 2\n")
        elif layout == "new-two-builds":
            files = {**_set_of_debs(work, v, "202201091830"), **_set_of_debs(work, v, "202201092355")}
        elif layout == "new-two-builds-newest-incomplete":
            files = {**_set_of_debs(work, v, "202203201530"),
                     **_set_of_debs(work, v, "202203202200", with_modules=False)}
        else:
            files = _set_of_debs(work, v, stamp, usr=(layout == "new-usr"))
        for name, data in files.items():
            (where / name).write_bytes(data)
        (where / "CHECKSUMS").write_text(_checksums(files))
        if layout == "new-tampered":
            image = next(n for n in files if n.startswith("linux-image-unsigned") and "-generic_" in n)
            data = bytearray(files[image])
            data[len(data) // 2] ^= 0xFF
            (where / image).write_bytes(bytes(data))
        status = "failed (rc=2" if layout == "new-failed" else "succeeded (rc=0"
        (where / "status").write_text(f"Test amd64/build {status}, on=amd64, time=0:11:17, log=amd64/log)\n"
                                      f"Test arm64/build failed (rc=2, on=arm64, time=0:01:02, log=arm64/log)\n")
        _write_index(where)
        _write_index(top)
    for name in ODD:
        (root / name).mkdir()
        (root / name / "CHECKSUMS").write_text("")
        _write_index(root / name)
    (root / "daily").mkdir()
    _write_index(root / "daily")
    _write_index(root, top=True)
    return root


class MirrorHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the tree; files named in `truncate` stop half-way, files in `gone` answer 410."""

    truncate: set[str] = set()
    gone: set[str] = set()
    tree: Path = Path("/nonexistent")
    hits: dict[str, int] = {}

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        name = self.path.rsplit("/", 1)[-1]
        MirrorHandler.hits[name] = MirrorHandler.hits.get(name, 0) + 1
        if name in self.gone:
            self.send_error(410, "Gone")
            return
        if name in self.truncate:
            data = Path(self.translate_path(self.path)).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()


@contextmanager
def serve(root: Path) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(MirrorHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/mainline/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def mirror(tmp_path_factory) -> Iterator[str]:
    base = tmp_path_factory.mktemp("mirror")
    tree = build_mirror(base / "www" / "mainline")
    MirrorHandler.tree = tree
    v61 = tree / "v6.1" / "amd64"
    MirrorHandler.truncate = {p.name for p in v61.glob("linux-image-unsigned-*-generic_*.deb")}
    v62 = tree / "v6.2" / "amd64"
    MirrorHandler.gone = {p.name for p in v62.glob("linux-modules-*.deb")}
    os.environ["NO_PROXY"] = "127.0.0.1,localhost"
    with serve(base / "www") as url:
        yield url


@pytest.fixture()
def home(kbisect_home) -> Path:
    return kbisect_home


def _leftovers(home: Path) -> list[str]:
    """Every file under downloads/ and kernels/ (what a failed fetch must not leave)."""
    found = []
    for sub in ("downloads", "kernels"):
        for path in (home / sub).rglob("*"):
            if path.is_file() and not path.name.endswith(".lock"):
                found.append(str(path.relative_to(home)))
    return found


def run_cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "KBISECT_HOME": str(home), "NO_PROXY": "127.0.0.1,localhost"}
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=REPO, env=env, text=True,
                          capture_output=True, timeout=120)


# ------------------------------------------------------------------------------ listing


def test_list_json_order_and_availability(mirror, home):
    result = run_cli("kernels", "list", "--source", "mainline", "--mirror", mirror, "--json", home=home)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)  # stdout is pure JSON: progress and notes went to stderr
    versions = [r["version"] for r in rows]
    assert versions == ["4.15", "5.6", "5.6.5", "5.6.17", "5.7-rc1", "5.7-rc7", "5.7", "5.7.2", "5.8-rc1",
                        "5.9.9", "5.16", "5.17", "6.0", "6.1", "6.2", "6.5.8", "6.18.18"]
    by = {r["version"]: r for r in rows}
    assert {v for v, r in by.items() if r["available"]} == AVAILABLE
    assert all(r["source"] == "mainline" and r["reason"] is None for r in rows if r["available"])
    assert "amd64 build failed" in by["5.9.9"]["reason"] and "rc=2" in by["5.9.9"]["reason"]
    assert "amd64 build failed" in by["5.6.5"]["reason"]
    assert by["6.5.8"]["reason"] and not by["6.5.8"]["files"]
    # odd legacy names and non-version directories are never listed
    assert not any("cod1" in v or "dontuse" in v or "xenial" in v for v in versions)
    # files: amd64 generic only, with the published SHA-256, one build per directory
    names = [f["name"] for f in by["5.7.2"]["files"]]
    assert len(names) == 2 and all("-generic_" in n and n.endswith("_amd64.deb") for n in names)
    assert all(len(f["sha256"]) == 64 and f["url"].startswith(mirror) for f in by["5.7.2"]["files"])
    assert "/amd64/" in by["5.7.2"]["files"][0]["url"] and "/amd64/" not in by["5.7"]["files"][0]["url"]
    assert [f["name"].split("_")[0] for f in by["4.15"]["files"]] == ["linux-image-4.15.0-041500-generic"]
    assert {f["name"].rsplit("_", 2)[1].rsplit(".", 1)[1] for f in by["5.16"]["files"]} == {"202201092355"}
    assert {f["name"].rsplit("_", 2)[1].rsplit(".", 1)[1] for f in by["5.17"]["files"]} == {"202203201530"}
    assert by["5.7-rc4" if "5.7-rc4" in by else "5.7-rc1"]["lineage"] == "mainline"
    assert by["5.6.17"]["lineage"] == "stable-5.6"


def test_list_range_and_table(mirror, home):
    entries = get_source("mainline", mirror).list("5.7-rc1", "5.8-rc1")
    assert [e.version for e in entries] == ["5.7-rc1", "5.7-rc7", "5.7", "5.7.2", "5.8-rc1"]
    result = run_cli("kernels", "list", "--source", "mainline", "--mirror", mirror, "--from", "5.9",
                     "--to", "5.17", home=home)
    assert result.returncode == 0, result.stderr
    assert "5.9.9" in result.stdout and "5.16" in result.stdout and "5.7.2" not in result.stdout
    assert "build failed" in result.stdout


def test_bad_range_is_one_line(mirror, home):
    result = run_cli("kernels", "list", "--source", "mainline", "--mirror", mirror, "--from", "five", home=home)
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "not a kernel version" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args,message", [
    (("kernels", "list", "--source", "nope"), "unknown kernel source 'nope'"),
    (("kernels", "fetch", "mainline:banana"), "not a mainline kernel version"),
    (("kernels", "fetch", ""), "empty kernel spec"),
    (("kernels", "show", "mainline:5.4"), "not in the cache"),
])
def test_bad_input_is_one_line(home, args, message):
    result = run_cli(*args, home=home)
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr


def test_unreachable_mirror_is_one_line(home):
    result = run_cli("kernels", "list", "--source", "mainline", "--mirror", "http://127.0.0.1:9/none/",
                     "--json", home=home)
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.strip().count("\n") == 0 and "cannot reach" in result.stderr


# ------------------------------------------------------------------------------ fetching


def test_fetch_new_layout_unpacks_the_kernel(mirror, home):
    result = run_cli("kernels", "fetch", "mainline:5.7.2", "--mirror", mirror, home=home)
    assert result.returncode == 0, result.stderr
    root = Path(result.stdout.strip())
    assert root == home / "kernels" / "mainline" / "5.7.2"
    kernel = UnpackedKernel.load(root)
    assert kernel.spec == "mainline:5.7.2" and kernel.kver == "5.7.2-050702-generic"
    assert kernel.vmlinuz.read_bytes().startswith(b"MZ fake bzImage 5.7.2")
    assert kernel.config is not None and kernel.system_map is not None
    assert (kernel.modules / "kernel/drivers/net/veth.ko").read_bytes().startswith(b"\x7fELF veth 5.7.2")
    assert (kernel.modules / "veth-link.ko").is_symlink()  # in-tree link kept
    assert not (kernel.modules / "build").exists() and not (kernel.modules / "build").is_symlink()
    assert not (kernel.modules / "escape").is_symlink()  # would leave the unpack: dropped
    assert not (root / "usr").exists() and not (root / "boot").exists()
    assert kernel.extra["layout"] == "new" and kernel.extra["upstream"] == "5.7.2"
    assert {f["name"] for f in kernel.extra["files"]} == {p.name for p in (home / "downloads" / "mainline").glob("*.deb")}
    # cached: a second fetch does not download again
    before = dict(MirrorHandler.hits)
    assert fetch("mainline:5.7.2", mirror).root == root
    assert {k: v for k, v in MirrorHandler.hits.items() if before.get(k) != v} == {}
    show = run_cli("kernels", "show", "mainline:5.7.2", home=home)
    assert show.returncode == 0 and "5.7.2-050702-generic" in show.stdout and "modules: 1 files" in show.stdout


def test_fetch_old_layout_and_single_image(mirror, home):
    old = fetch("5.7-rc7", mirror)  # bare version = mainline
    assert old.kver == "5.7.0-050700rc7-generic" and old.extra["layout"] == "old"
    assert (old.modules / "kernel/drivers/net/veth.ko").exists()
    single = fetch("mainline:v4.15", mirror)
    assert single.root.name == "4.15" and single.kver == "4.15.0-041500-generic"
    assert (single.modules / "kernel/drivers/net/veth.ko").read_bytes().endswith(b"4.15 " + single.extra["build"].rsplit(".", 1)[1].encode())
    assert len(single.extra["files"]) == 1


def test_fetch_usr_lib_modules(mirror, home):
    deb = next(p for p in (MirrorHandler.tree / "v6.18.18" / "amd64").glob("linux-modules-*.deb"))
    assert b"data.tar.zst" in deb.read_bytes()[:2000]
    kernel = fetch("mainline:6.18.18", mirror)
    assert (kernel.modules / "kernel/drivers/net/veth.ko").exists()
    assert (kernel.modules / "modules.order").exists() and kernel.config is not None


def test_two_builds_use_one_build(mirror, home):
    kernel = fetch("mainline:5.16", mirror)
    assert kernel.vmlinuz.read_bytes().endswith(b"5.16 202201092355\n")
    assert (kernel.modules / "kernel/drivers/net/veth.ko").read_bytes().endswith(b"202201092355")
    older = fetch("mainline:5.17", mirror)
    assert older.vmlinuz.read_bytes().endswith(b"202203201530\n")
    assert (older.modules / "kernel/drivers/net/veth.ko").read_bytes().endswith(b"202203201530")


def test_failed_and_missing_builds_are_refused(mirror, home):
    with pytest.raises(UnavailableError, match="amd64 build failed"):
        fetch("mainline:5.9.9", mirror)
    with pytest.raises(UnavailableError, match="no directory v5.5/"):
        fetch("mainline:5.5", mirror)
    result = run_cli("kernels", "fetch", "mainline:6.5.8", "--mirror", mirror, home=home)
    assert result.returncode != 0 and result.stdout == ""
    assert result.stderr.startswith("kbisect: error: mainline:6.5.8:") and result.stderr.count("\n") == 1
    assert _leftovers(home) == []


def test_tampered_deb_is_refused_and_not_kept(mirror, home):
    result = run_cli("kernels", "fetch", "mainline:6.0", "--mirror", mirror, home=home)
    assert result.returncode != 0 and result.stdout == ""
    line = result.stderr.strip()
    assert line.count("\n") == 0 and "sha256 mismatch" in line and "linux-image-unsigned-6.0.0" in line
    assert "Traceback" not in result.stderr
    assert not [p for p in _leftovers(home) if "linux-image-unsigned-6.0.0" in p]
    assert not (home / "kernels" / "mainline" / "6.0").exists()
    with pytest.raises(ChecksumError):
        fetch("mainline:6.0", mirror)


def test_truncated_download_is_refused_and_not_kept(mirror, home):
    with pytest.raises(ChecksumError) as info:
        fetch("mainline:6.1", mirror)
    message = str(info.value)
    assert "truncated" in message and "sha256" in message and "\n" not in message
    assert not [p for p in _leftovers(home) if "linux-image-unsigned-6.1.0" in p]
    assert not list((home / "downloads" / "mainline").glob(".*part"))


def test_gone_link_is_unavailable(mirror, home):
    with pytest.raises(UnavailableError, match="410"):
        fetch("mainline:6.2", mirror)
    assert not (home / "kernels" / "mainline" / "6.2").exists()


def test_corrupted_cache_entry_is_fetched_again(mirror, home):
    first = fetch("mainline:5.8-rc1", mirror)
    deb = next((home / "downloads" / "mainline").glob("linux-image-unsigned-5.8.0*generic*.deb"))
    good = deb.read_bytes()
    deb.write_bytes(b"garbage")
    import shutil

    shutil.rmtree(first.root)
    again = fetch("mainline:5.8-rc1", mirror)
    assert deb.read_bytes() == good and again.vmlinuz.exists()


def test_interrupted_unpack_is_redone(mirror, home):
    kernel = fetch("mainline:5.6.17", mirror)
    (kernel.root / "kernel.json").unlink()
    (kernel.root / "vmlinuz").unlink()
    again = fetch("mainline:5.6.17", mirror)
    assert again.vmlinuz.exists() and (again.root / "kernel.json").exists()


def test_concurrent_fetches_share_one_download(mirror, home):
    code = ("import sys; from orchestrator.sources import fetch; print(fetch('mainline:5.7', sys.argv[1]).root)")
    env = {**os.environ, "KBISECT_HOME": str(home)}
    procs = [subprocess.Popen([sys.executable, "-c", code, mirror], cwd=REPO, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert len({o[0].strip() for o in outs}) == 1
    image = next(n for n in MirrorHandler.hits if n.startswith("linux-image-unsigned-5.7.0-050700-generic"))
    assert MirrorHandler.hits[image] == 1


# ------------------------------------------------------------------------------ unpack safety


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    out.write(b"!<arch>\n")
    for name, data in members:
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
        out.write(header + data + (b"\n" if len(data) % 2 else b""))
    return out.getvalue()


def _tar_gz(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("evil", ["./lib/modules/1.0-1-generic/../../../../../evil", "../evil", "/etc/evil"])
def test_unpack_refuses_escaping_members(tmp_path, home, evil):
    deb = tmp_path / "evil.deb"
    deb.write_bytes(_ar([("debian-binary", b"2.0\n"),
                         ("control.tar.gz", _tar_gz([("./control", b"Package: evil\n")])),
                         ("data.tar.gz", _tar_gz([("./boot/vmlinuz-1.0-1-generic", b"MZ"), (evil, b"owned")]))]))
    target = home / "kernels" / "local" / "evil"
    with pytest.raises(KbisectError, match="escape the target directory"):
        cache.unpack_debs([deb], target, "local:evil")
    assert not target.exists() and not (home / "kernels" / "local" / "evil.partial").exists()
    assert not list(tmp_path.rglob("evil")) and not list(home.rglob("evil"))


def test_not_a_deb_is_one_line(tmp_path, home):
    bogus = tmp_path / "bogus.deb"
    bogus.write_bytes(b"this is not an ar archive")
    with pytest.raises(KbisectError) as info:
        cache.unpack_debs([bogus], home / "kernels" / "local" / "bogus", "local:bogus")
    assert "bogus.deb" in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------ variants hook


def test_variant_spec_uses_prebuilt_dir_or_hook(home, monkeypatch):
    prebuilt = home / "kernels" / "mainline" / "5.4.41+revert-227adfb2b1df"
    prebuilt.mkdir(parents=True)
    (prebuilt / "vmlinuz").write_bytes(b"MZ")
    UnpackedKernel("mainline:5.4.41+revert-227adfb2b1df", prebuilt, "5.4.41-050441-generic").save()
    assert fetch("mainline:5.4.41+revert-227adfb2b1df").root == prebuilt

    import types

    calls = []
    fake = types.ModuleType("orchestrator.variants")
    fake.build_on_demand = lambda spec: calls.append(spec) or "built"
    monkeypatch.setitem(sys.modules, "orchestrator.variants", fake)
    assert fetch("debian:6.1.0-54-cloud-amd64+revert-abc") == "built"
    assert calls == ["debian:6.1.0-54-cloud-amd64+revert-abc"]


def test_second_listing_reuses_settled_directories(mirror, home):
    source = get_source("mainline", mirror)
    first = source.list("5.6", "5.9.9")
    before = sum(v for k, v in MirrorHandler.hits.items() if k in ("CHECKSUMS", "status", "BUILT"))
    second = source.list("5.6", "5.9.9")
    after = sum(v for k, v in MirrorHandler.hits.items() if k in ("CHECKSUMS", "status", "BUILT"))
    assert [e.to_json() for e in first] == [e.to_json() for e in second]
    assert after == before  # settled entries (built or failed) come from the listing memo
    assert [e.version for e in second if not e.available] == ["5.6.5", "5.9.9"]


def test_absolute_links_in_index_pages(tmp_path, home):
    """Index pages that link with absolute paths (`/mainline/v5.4/`) are read the same way."""
    from orchestrator.sources.mainline import links

    page = ('<a href="?C=N;O=D">Name</a><a href="/">Parent Directory</a><a href="/mainline/v5.4/">v5.4/</a>'
            '<a href="v5.5/">v5.5/</a><a href="https://elsewhere.invalid/x/">x</a><a href="v4.4-rc2%2Bcod1/">odd</a>')
    assert links(page, "http://127.0.0.1:1/mainline/") == ["v5.4/", "v5.5/", "v4.4-rc2+cod1/"]


def test_unpack_split_debian_layout(tmp_path, home):
    """Newer Debian kernels ship vmlinuz/config/System.map inside /usr/lib/modules/<kver>/ across
    linux-binary-*, linux-modules-* and linux-base-* packages; the layout puts them at the top."""
    kver = "7.2.13+deb14-cloud-amd64"
    mod = f"usr/lib/modules/{kver}"
    debs = [build_deb(tmp_path, f"linux-binary-unsigned-{kver}", "7.2.13-1", {f"{mod}/vmlinuz.unsigned": b"MZ split"}),
            build_deb(tmp_path, f"linux-modules-{kver}", "7.2.13-1",
                      {f"{mod}/kernel/drivers/net/veth.ko.xz": b"\xfd7zXZ"}),
            build_deb(tmp_path, f"linux-base-{kver}", "7.2.13-1",
                      {f"{mod}/config": b"CONFIG_VETH=m\n", f"{mod}/System.map": b"placeholder\n",
                       f"{mod}/modules.order": b"kernel/drivers/net/veth.ko\n"})]
    kernel = cache.unpack_debs(debs, home / "kernels" / "debian" / kver, f"debian:{kver}")
    assert kernel.kver == kver and kernel.vmlinuz.read_bytes() == b"MZ split"
    assert kernel.config.read_text() == "CONFIG_VETH=m\n" and kernel.system_map is not None
    assert (kernel.modules / "kernel/drivers/net/veth.ko.xz").exists() and (kernel.modules / "modules.order").exists()
    assert not (kernel.modules / "vmlinuz.unsigned").exists() and not (kernel.modules / "config").exists()


def test_mirror_from_environment(mirror, home):
    """KBISECT_MAINLINE_MIRROR stands in for --mirror on every command; --mirror still wins."""
    env = {**os.environ, "KBISECT_HOME": str(home), "NO_PROXY": "127.0.0.1,localhost",
           "KBISECT_MAINLINE_MIRROR": mirror}
    r = subprocess.run([sys.executable, "-m", "orchestrator", "kernels", "list", "--source", "mainline", "--json"],
                       cwd=REPO, env=env, text=True, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "5.7.2" in [row["version"] for row in json.loads(r.stdout)]
    env["KBISECT_MAINLINE_MIRROR"] = "http://127.0.0.1:9/none/"
    r = subprocess.run([sys.executable, "-m", "orchestrator", "kernels", "list", "--source", "mainline",
                        "--mirror", mirror, "--json"], cwd=REPO, env=env, text=True, capture_output=True, timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout), r.stderr
