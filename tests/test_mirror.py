"""The mainline source against generated mirrors in the real formats, served on 127.0.0.1.

The mirror (tests/mainline_mirror.py writes the formats, with their sources) holds real .deb
files built here with dpkg-deb in both layouts of kernel.ubuntu.com/mainline, and the cases met
in the field: exit codes 0/1/2 in amd64/status, a self-tests failure on a good build, flat
BUILT with and without Status: lines, a flat build rebuilt per-arch, suffixed-only releases and
an rc under two suffixes, two publications with CHECKSUMS for the latest only, no CHECKSUMS,
signatures good/bad/absent, a tampered package, a truncated transfer, a "Gone" link, modules
under /usr/lib/modules, and an old single linux-image package.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import subprocess
import sys
import tarfile
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Iterator

import pytest

from orchestrator.adapters import unpack
from orchestrator.core.errors import ChecksumError, KbisectError, SignatureError, UnavailableError
from orchestrator.adapters.kernel import UnpackedKernel
from orchestrator.adapters.sources import fetch, get_source
from orchestrator.core.versions import KernelVersion, parse_version
from tests.localhttp import serve_handler
from tests.mainline_mirror import Build, Release, SigningKey, write_release, write_top

REPO = Path(__file__).resolve().parent.parent

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
             f"lib/modules/{kver}/veth-link.ko": "kernel/drivers/net/veth.ko"}  # harmless, kept
    return image, modules, links


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


# The culprit planted in 5.7-rc5's CHANGES (a `git shortlog v5.7-rc4..v5.7-rc5` in the real form:
# "Author (N):" then indented subjects); gretap-ecn's keywords and paths must rank it first.
CHANGES_57RC5 = """Alexei Starovoitov (1):
      bpf: Fix map leak in HASH_OF_MAPS map

Eric Dumazet (2):
      tcp: fix SO_RCVLOWAT hangs with fat skbs
      net: fix a potential recursive NETDEV_FEAT_CHANGE

Linus Torvalds (1):
      Linux 5.7-rc5

Toke Hoiland-Jorgensen (1):
      tunnel: Propagate ECT(1) when decapsulating as recommended by RFC6040

Wolfram Sang (1):
      i2c: mux: demux-pinctrl: Fix an error handling path in 'i2c_demux_pinctrl_probe()'
"""
CHANGES_57RC4 = """Linus Torvalds (1):
      Linux 5.7-rc4

Paolo Abeni (1):
      mptcp: fix 'Attempt to release TCP socket in state' warnings
"""


def releases(work: Path) -> list[Release]:
    """Every case the mainline source must read right, in the real formats (tests/mainline_mirror.py)."""
    def v(label):
        return parse_version(label)

    def per_arch(label, stamp, rc=0, **kw):
        return Build(stamp, _set_of_debs(work, v(label), stamp, **kw) if rc == 0 else {}, rc=rc)

    def flat(label, stamp, rc=0, status_lines=True, **kw):
        return Build(stamp, _set_of_debs(work, v(label), stamp, **kw) if rc == 0 else {}, rc=rc, layout="flat",
                     status_lines=status_lines)

    sha = "1" * 40
    return [
        # flat, BUILT without Status: lines (before Nov 2015), no CHECKSUMS (before March 2015): unverifiable
        Release("v3.19-vivid", [flat("3.19", "201502082130", status_lines=False, single=True)], checksums=False),
        # flat, BUILT without Status: lines but with CHECKSUMS: judged by the files present
        Release("v4.3-wily", [flat("4.3", "201511020949", status_lines=False, single=True)]),
        # only a suffixed directory exists (plain names start around v4.4.15)
        Release("v4.4.14-xenial", [flat("4.4.14", "201606241712", single=True)]),
        # an rc under two suffixes: one stable choice (the newer series)
        Release("v4.6-rc7-wily", [flat("4.6-rc7", "201605081830", single=True, marker="4.6-rc7 wily")]),
        Release("v4.6-rc7-yakkety", [flat("4.6-rc7", "201605081831", single=True, marker="4.6-rc7 yakkety")]),
        Release("v4.15", [flat("4.15", "201801282030", single=True)],
                commit=("v4.15", "d8a5b80568a9cb66810e75b182018e9edb68e8ff")),
        Release("v5.6", [flat("5.6", "202003292030")]),
        Release("v5.6.5", [flat("5.6.5", "202004171532", rc=2)]),  # flat failure: Status: amd64 2
        Release("v5.6.17", [flat("5.6.17", "202006071932")]),
        Release("v5.7-rc1", [flat("5.7-rc1", "202004122030")]),
        Release("v5.7-rc4", [flat("5.7-rc4", "202005032030")], commit=("v5.7-rc4", "0e698dfa282211e414076f9dc7e83c1c288314fd"),
                changes=CHANGES_57RC4),
        Release("v5.7-rc5", [flat("5.7-rc5", "202005102030")], commit=("v5.7-rc5", "2ef96a5bb12be62ef75b5828c0aab838ebb29cb8"),
                changes=CHANGES_57RC5),
        Release("v5.7-rc7", [flat("5.7-rc7", "202005242030")]),
        # built flat, then rebuilt into amd64/: the newer, per-arch build is the one used
        Release("v5.7", [flat("5.7", "202005312130"), per_arch("5.7", "202006082127")]),
        Release("v5.7.2", [per_arch("5.7.2", "202006101934")], commit=("v5.7.2", sha)),
        # a good build whose self-tests failed: available, with a note
        Release("v5.8-rc1", [Build("202006142130", _set_of_debs(work, v("5.8-rc1"), "202006142130"), selftests_rc=2)]),
        Release("v5.9.9", [per_arch("5.9.9", "202011182033", rc=2)]),  # build failure
        Release("v5.9.11", [per_arch("5.9.11", "202011241631", rc=1)]),  # setup failure
        # two publications in amd64/: CHECKSUMS covers the latest only
        Release("v5.16", [per_arch("5.16", "202201091830"), per_arch("5.16", "202201092355")]),
        # the latest publication lacks its modules package: CHECKSUMS covers no complete build
        Release("v5.17", [per_arch("5.17", "202203201530"), per_arch("5.17", "202203202200", with_modules=False)]),
        Release("v6.0", [per_arch("6.0", "202210022231")]),  # tampered after publication
        Release("v6.1", [per_arch("6.1", "202212112331")]),  # truncated transfer
        Release("v6.2", [per_arch("6.2", "202302192231")]),  # modules link answers 410 Gone
        Release("v6.3", [per_arch("6.3", "202304232332")], signature="bad"),
        Release("v6.4", [per_arch("6.4", "202306252032")], signature="absent"),
        Release("v6.5.8", [], header=""),  # listed but never built
        Release("v6.18.18", [per_arch("6.18.18", "202603131234", usr=True)]),  # modules under /usr/lib/modules
        # not releases: never listed
        Release("v4.4-rc2+cod1-wily", [flat("4.4-rc2", "201512011200", single=True)]),
        Release("v5.12-rc1-dontuse", [per_arch("5.12-rc1", "202103012000")]),
    ]


AVAILABLE = {"4.3", "4.4.14", "4.6-rc7", "4.15", "5.6", "5.6.17", "5.7-rc1", "5.7-rc4", "5.7-rc5", "5.7-rc7",
             "5.7", "5.7.2", "5.8-rc1", "5.16", "6.0", "6.1", "6.2", "6.3", "6.4", "6.18.18"}
# tampered/truncated/gone are listed as available: only the download can tell; 6.3/6.4 only fail
# their signature check when a keyring is given.


def build_mirror(root: Path, sign=None) -> Path:
    """Generate the whole mirror under root (real .debs, CHECKSUMS, BUILT/status, index pages)."""
    work = root.parent / "debs"
    work.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    rels = releases(work)
    for release in rels:
        write_release(root, release, sign)
    tampered = next((root / "v6.0" / "amd64").glob("linux-image-unsigned-*-generic_*_amd64.deb"))
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    write_top(root, rels)
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
    with serve_handler(partial(MirrorHandler, directory=str(root)), "mainline/") as url:
        yield url


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory) -> SigningKey:
    return SigningKey(tmp_path_factory.mktemp("gnupg") / "home")


@pytest.fixture(scope="session")
def mirror(tmp_path_factory, signing_key) -> Iterator[str]:
    base = tmp_path_factory.mktemp("mirror")
    tree = build_mirror(base / "www" / "mainline", signing_key.sign)
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
    assert versions == ["3.19", "4.3", "4.4.14", "4.6-rc7", "4.15", "5.6", "5.6.5", "5.6.17", "5.7-rc1", "5.7-rc4",
                        "5.7-rc5", "5.7-rc7", "5.7", "5.7.2", "5.8-rc1", "5.9.9", "5.9.11", "5.16", "5.17", "6.0",
                        "6.1", "6.2", "6.3", "6.4", "6.5.8", "6.18.18"]
    by = {r["version"]: r for r in rows}
    assert {v for v, r in by.items() if r["available"]} == AVAILABLE
    assert all(r["source"] == "mainline" and r["reason"] is None for r in rows if r["available"])
    # each failure says which: exit code 2 is a build failure, 1 a setup failure, BUILT's Status: amd64 2
    assert by["5.9.9"]["reason"] == "amd64 build failed: build failure (amd64/status 2)"
    assert by["5.9.11"]["reason"] == "amd64 build failed: setup failure (amd64/status 1)"
    assert by["5.6.5"]["reason"] == "amd64 build failed: build failure (BUILT Status: amd64 2)"
    assert by["3.19"]["reason"].startswith("no CHECKSUMS: cannot verify")
    assert "CHECKSUMS covers no complete amd64 generic build" in by["5.17"]["reason"]
    assert by["6.5.8"]["reason"] and not by["6.5.8"]["files"]
    # a self-tests failure is a note on an available kernel, not a reason
    assert any("self-tests" in n for n in by["5.8-rc1"]["notes"])
    # suffixed releases are listed once, from one stable choice; side builds never
    assert by["4.4.14"]["dir"] == "v4.4.14-xenial" and by["4.6-rc7"]["dir"] == "v4.6-rc7-yakkety"
    assert versions.count("4.6-rc7") == 1
    assert not any(r["dir"].endswith(("cod1-wily", "dontuse")) for r in rows)
    assert "4.4-rc2" not in versions and "5.12-rc1" not in versions
    # BUILT without Status: lines, judged by the packages and CHECKSUMS present
    assert any("no Status: lines" in n for n in by["4.3"]["notes"])
    # files: amd64 generic only, with the published SHA-256, one build per directory
    names = [f["name"] for f in by["5.7.2"]["files"]]
    assert len(names) == 2 and all("-generic_" in n and n.endswith("_amd64.deb") for n in names)
    assert all(len(f["sha256"]) == 64 and f["url"].startswith(mirror) for f in by["5.7.2"]["files"])
    assert by["5.7.2"]["layout"] == "per-arch" and "/amd64/" in by["5.7.2"]["files"][0]["url"]
    assert by["5.7-rc7"]["layout"] == "flat" and "/amd64/" not in by["5.7-rc7"]["files"][0]["url"]
    # v5.7: flat build and per-arch rebuild in one directory: the rebuild, all files from it
    assert by["5.7"]["layout"] == "per-arch" and by["5.7"]["build"].endswith(".202006082127")
    assert all("202006082127" in f["name"] and "/amd64/" in f["url"] for f in by["5.7"]["files"])
    assert [f["name"].split("_")[0] for f in by["4.15"]["files"]] == ["linux-image-4.15.0-041500-generic"]
    assert {f["name"].rsplit("_", 2)[1].rsplit(".", 1)[1] for f in by["5.16"]["files"]} == {"202201092355"}
    assert by["5.7-rc1"]["lineage"] == "mainline"
    assert by["5.6.17"]["lineage"] == "stable-5.6"


def test_status_files_read_as_published():
    """The parsers against the exact file contents of real-layouts.md."""
    from orchestrator.adapters.sources.mainline_formats import arch_status, built_status, header_opinion, parse_commit

    assert arch_status("0\n").ok is True
    assert arch_status("2\n").reason == "amd64 build failed: build failure (amd64/status 2)"
    assert arch_status("Test amd64/build succeeded (rc=0, on=amd64)\n").ok is False  # not the real format
    built = ("Release: bionic\nHost: h\nStart: 1\nStatus: binary-headers 0\nStatus: amd64 0\n"
             "Status: arm64 0\nStatus: i386 0\nDebian: bionic\nConfigs: c\nEnd: 2\n")
    assert built_status(built).ok is True
    assert built_status(built.replace("amd64 0", "amd64 2")).ok is False
    assert built_status(built.replace("binary-headers 0", "binary-headers 1")).ok is False
    assert built_status("Release: wily\nHost: h\nStart: 1\nEnd: 2\n").ok is None  # before Nov 2015
    assert header_opinion("Test amd64/build succeeded (rc=0, on=amd64, time=0:11:17, log=amd64/log)").ok is True
    assert header_opinion("Test amd64/build failed (rc=2, on=amd64, time=0:05:01, log=amd64/log)").ok is False
    assert header_opinion("Test amd64/self-tests failed (rc=2, on=amd64)").ok is None
    # COMMIT: 49 bytes for v4.12.4 (real-layouts.md) = "v4.12.4\n" + 40-hex sha + "\n"
    sample = "v4.12.4\n" + "a" * 40 + "\n"
    assert len(sample) == 49 and parse_commit(sample) == {"commit": "a" * 40, "commit_label": "v4.12.4"}


def test_list_range_and_table(mirror, home):
    entries = get_source("mainline", mirror).list("5.7-rc1", "5.8-rc1")
    assert [e.version for e in entries] == ["5.7-rc1", "5.7-rc4", "5.7-rc5", "5.7-rc7", "5.7", "5.7.2", "5.8-rc1"]
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
    assert not (root / "usr").exists() and not (root / "boot").exists()
    assert kernel.extra["layout"] == "per-arch" and kernel.extra["upstream"] == "5.7.2"
    assert {f["name"] for f in kernel.extra["files"]} == {p.name for p in (home / "downloads" / "mainline").glob("*.deb")}
    # cached: a second fetch does not download again
    before = dict(MirrorHandler.hits)
    assert fetch("mainline:5.7.2", mirror).root == root
    assert {k: v for k, v in MirrorHandler.hits.items() if before.get(k) != v} == {}
    show = run_cli("kernels", "show", "mainline:5.7.2", home=home)
    assert show.returncode == 0 and "5.7.2-050702-generic" in show.stdout and "modules: 1 files" in show.stdout


def test_fetch_old_layout_and_single_image(mirror, home):
    old = fetch("5.7-rc7", mirror)  # bare version = mainline
    assert old.kver == "5.7.0-050700rc7-generic" and old.extra["layout"] == "flat"
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
    # CHECKSUMS covers the latest publication only: an older complete build cannot be verified
    with pytest.raises(UnavailableError, match="CHECKSUMS covers no complete amd64 generic build"):
        fetch("mainline:5.17", mirror)


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
    code = ("import sys; from orchestrator.adapters.sources import fetch; print(fetch('mainline:5.7', sys.argv[1]).root)")
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
        unpack.unpack_debs([deb], target, "local:evil")
    assert not target.exists() and not (home / "kernels" / "local" / "evil.partial").exists()
    assert not list(tmp_path.rglob("evil")) and not list(home.rglob("evil"))


def test_not_a_deb_is_one_line(tmp_path, home):
    bogus = tmp_path / "bogus.deb"
    bogus.write_bytes(b"this is not an ar archive")
    with pytest.raises(KbisectError) as info:
        unpack.unpack_debs([bogus], home / "kernels" / "local" / "bogus", "local:bogus")
    assert "bogus.deb" in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------ variants hook


def test_variant_spec_uses_prebuilt_dir_or_the_builder(home):
    """The kernel provider serves a built variant from the cache and builds a missing one; the
    sources alone refuse to (they know nothing of variants)."""
    from orchestrator.app.kernels import KernelProvider

    prebuilt = home / "kernels" / "mainline" / "5.4.41+revert-227adfb2b1df"
    prebuilt.mkdir(parents=True)
    (prebuilt / "vmlinuz").write_bytes(b"MZ")
    UnpackedKernel("mainline:5.4.41+revert-227adfb2b1df", prebuilt, "5.4.41-050441-generic").save()
    built = []
    provider = KernelProvider(build_variant=lambda spec: built.append(spec) or "built",
                              fetch_source=lambda spec, mirror: pytest.fail("no source fetch for a variant"))
    assert provider.get("mainline:5.4.41+revert-227adfb2b1df").root == prebuilt
    assert provider.get("debian:6.1.0-54-cloud-amd64+revert-abc") == "built"
    assert built == ["debian:6.1.0-54-cloud-amd64+revert-abc"]
    with pytest.raises(KbisectError, match="is not built"):
        fetch("debian:6.1.0-54-cloud-amd64+revert-abc")


def test_second_listing_reuses_good_builds_only(mirror, home):
    """Good builds come from the listing memo; failures are read again (they get rebuilt)."""
    source = get_source("mainline", mirror)
    first = source.list("5.6", "5.9.11")
    before = dict(MirrorHandler.hits)
    second = source.list("5.6", "5.9.11")
    reread = {k: v - before.get(k, 0) for k, v in MirrorHandler.hits.items() if v != before.get(k, 0)}
    assert [e.to_json() for e in first] == [e.to_json() for e in second]
    failed = [e.version for e in second if not e.available]
    assert failed == ["5.6.5", "5.9.9", "5.9.11"]
    # per failed directory: its page and status file again; nothing of the good ones
    assert reread.get("status") == 2 and reread.get("BUILT") == 1 and "CHECKSUMS" not in reread
    refreshed = get_source("mainline", mirror)
    refreshed.refresh = True
    before = dict(MirrorHandler.hits)
    refreshed.list("5.6", "5.9.11")
    assert MirrorHandler.hits.get("CHECKSUMS", 0) - before.get("CHECKSUMS", 0) >= 8  # --refresh reads all


def test_absolute_links_in_index_pages(tmp_path, home):
    """Index pages that link with absolute paths (`/mainline/v5.4/`) are read the same way."""
    from orchestrator.adapters.sources.mainline_formats import links

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
    kernel = unpack.unpack_debs(debs, home / "kernels" / "debian" / kver, f"debian:{kver}")
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


# ------------------------------------------------------------------------------ issue 9 cases


def test_suffixed_release_fetched_with_commit_and_changes(mirror, home):
    kernel = fetch("mainline:4.4.14", mirror)  # exists only as v4.4.14-xenial
    assert kernel.extra["dir"] == "v4.4.14-xenial" and kernel.kver == "4.4.14-040414-generic"
    rc5 = fetch("mainline:5.7-rc5", mirror)
    assert rc5.extra["commit"] == "2ef96a5bb12be62ef75b5828c0aab838ebb29cb8"
    assert rc5.extra["commit_label"] == "v5.7-rc5"
    assert "tunnel: Propagate ECT(1)" in (rc5.root / "CHANGES").read_text()
    assert (rc5.root / "COMMIT").read_text().startswith("v5.7-rc5\n")
    show = run_cli("kernels", "show", "mainline:5.7-rc5", home=home)
    assert show.returncode == 0 and "upstream commit: 2ef96a5bb12be62ef75b5828c0aab838ebb29cb8 (v5.7-rc5)" in show.stdout


def test_no_checksums_needs_allow_unverified(mirror, home):
    refused = run_cli("kernels", "fetch", "mainline:3.19", "--mirror", mirror, home=home)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "no CHECKSUMS: cannot verify" in refused.stderr and _leftovers(home) == []
    listed = run_cli("kernels", "list", "--source", "mainline", "--mirror", mirror, "--from", "3.19", "--to", "3.19",
                     "--json", "--allow-unverified", home=home)
    row = json.loads(listed.stdout)[0]
    assert row["available"] and row["unverified"] is True and row["files"][0]["sha256"] is None
    fetched = run_cli("kernels", "fetch", "mainline:3.19", "--mirror", mirror, "--allow-unverified", home=home)
    assert fetched.returncode == 0, fetched.stderr
    assert "kbisect: warning: mainline:3.19: no CHECKSUMS" in fetched.stderr
    kernel = UnpackedKernel.load(Path(fetched.stdout.strip()))
    assert kernel.extra["unverified"] is True
    show = run_cli("kernels", "show", "mainline:3.19", home=home)
    assert "UNVERIFIED" in show.stdout


def test_keyring_checks_the_signature_before_any_hash(mirror, home, signing_key, tmp_path):
    good = run_cli("kernels", "fetch", "mainline:5.7.2", "--mirror", mirror, "--keyring", str(signing_key.keyring),
                   home=home)
    assert good.returncode == 0, good.stderr
    assert UnpackedKernel.load(Path(good.stdout.strip())).extra["signature"] == "good"
    for version, words in (("6.3", "does not verify"), ("6.4", "CHECKSUMS.gpg missing")):
        bad = run_cli("kernels", "fetch", f"mainline:{version}", "--mirror", mirror, "--keyring",
                      str(signing_key.keyring), home=home)
        assert bad.returncode == 2 and bad.stdout == "" and bad.stderr.count("\n") == 1, bad.stderr
        assert bad.stderr.startswith(f"kbisect: error: mainline:{version}: ") and words in bad.stderr
        assert not (home / "kernels" / "mainline" / version).exists()
        assert not [p for p in _leftovers(home) if f"-{version.replace('.', '')}" in p or f"{version}.0-" in p]
    # another key: the good mirror's signature is not trusted either
    other = SigningKey(tmp_path / "other-gnupg")
    stranger = run_cli("kernels", "fetch", "mainline:5.8-rc1", "--mirror", mirror, "--keyring", str(other.keyring),
                       home=home)
    assert stranger.returncode == 2 and "does not verify" in stranger.stderr
    assert not (home / "kernels" / "mainline" / "5.8-rc1").exists()
    # the environment variable stands in for --keyring
    env_run = subprocess.run([sys.executable, "-m", "orchestrator", "kernels", "fetch", "mainline:6.3", "--mirror",
                              mirror], cwd=REPO, text=True, capture_output=True, timeout=120,
                             env={**os.environ, "KBISECT_HOME": str(home),
                                  "KBISECT_MAINLINE_KEYRING": str(signing_key.keyring)})
    assert env_run.returncode == 2 and "does not verify" in env_run.stderr
    missing = run_cli("kernels", "fetch", "mainline:5.7.2", "--mirror", mirror, "--keyring", "/nonexistent", home=home)
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1


def test_keyring_applies_to_a_kernel_already_in_the_cache(mirror, home, signing_key, tmp_path, monkeypatch):
    """Issue 19 item 4: a copy cached by a run without --keyring is not served to a run with one
    until its CHECKSUMS are verified with that keyring (recorded in its kernel.json); a copy
    whose signature does not verify is refused in one line, and a copy fetched unverified is
    served only with --allow-unverified."""
    monkeypatch.delenv("KBISECT_MAINLINE_KEYRING", raising=False)
    monkeypatch.delenv("KBISECT_ALLOW_UNVERIFIED", raising=False)
    plain = fetch("mainline:5.7.2", mirror)
    assert "signature" not in plain.extra and "keyring_sha256" not in plain.extra
    before = dict(MirrorHandler.hits)
    signed = fetch("mainline:5.7.2", mirror, keyring=signing_key.keyring)
    asked = {k: v - before.get(k, 0) for k, v in MirrorHandler.hits.items() if v != before.get(k, 0)}
    assert asked.get("CHECKSUMS.gpg") == 1 and not [k for k in asked if k.endswith(".deb")]  # same bytes: no download
    assert signed.root == plain.root and signed.id == plain.id
    assert signed.extra["signature"] == "good"
    assert UnpackedKernel.load(signed.root).extra["keyring_sha256"] == unpack.sha256_file(signing_key.keyring)
    before = dict(MirrorHandler.hits)  # verified with this keyring: served from the cache alone
    assert fetch("mainline:5.7.2", mirror, keyring=signing_key.keyring).extra["signature"] == "good"
    assert MirrorHandler.hits == before
    stranger = SigningKey(tmp_path / "stranger-gnupg")  # a keyring that never verified it: checked again
    with pytest.raises(SignatureError, match="does not verify"):
        fetch("mainline:5.7.2", mirror, keyring=stranger.keyring)
    # v6.3's CHECKSUMS.gpg does not verify: cached without a keyring, refused with one
    assert fetch("mainline:6.3", mirror).extra.get("signature") is None
    refused = run_cli("kernels", "fetch", "mainline:6.3", "--mirror", mirror, "--keyring", str(signing_key.keyring),
                      home=home)
    assert refused.returncode == 2 and refused.stdout == "" and refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith("kbisect: error: mainline:6.3: ") and "does not verify" in refused.stderr
    # fetched unverified (no CHECKSUMS): the cached copy needs --allow-unverified again
    assert fetch("mainline:3.19", mirror, allow_unverified=True).unverified
    with pytest.raises(UnavailableError, match="fetched unverified"):
        fetch("mainline:3.19", mirror)
    assert fetch("mainline:3.19", mirror, allow_unverified=True).unverified


def test_rebuilt_failure_and_republished_build_are_seen(tmp_path, home):
    """The service rebuilds failed builds and re-publishes builds with newer timestamps
    (real-layouts.md: 5.19.6 rebuilt; 6.4.6 .202307241739 -> .202308041557)."""
    import shutil

    root = tmp_path / "www" / "mainline"
    work = tmp_path / "debs"
    work.mkdir()

    def publish(failed: bool, stamp: str, date: str) -> None:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        rels = [Release("v5.19.6", [Build("202209051738", {}, rc=2)] if failed else
                        [Build("202209151402", _set_of_debs(work, parse_version("5.19.6"), "202209151402"))],
                        date="2022-09-05 17:38" if failed else "2022-09-15 14:02"),
                Release("v6.4.6", [Build(stamp, _set_of_debs(work, parse_version("6.4.6"), stamp))], date=date)]
        for release in rels:
            write_release(root, release)
        write_top(root, rels)

    publish(True, "202307241739", "2023-07-24 17:39")
    with serve(tmp_path / "www") as url:
        first = {e.version: e for e in get_source("mainline", url).list()}
        assert not first["5.19.6"].available and "build failure" in first["5.19.6"].reason
        assert first["6.4.6"].extra["build"].endswith(".202307241739")
        publish(False, "202308041557", "2023-08-04 15:57")
        second = {e.version: e for e in get_source("mainline", url).list()}
        assert second["5.19.6"].available
        assert second["6.4.6"].extra["build"].endswith(".202308041557")
        assert all("202308041557" in f.name for f in second["6.4.6"].files)
        kernel = fetch("mainline:6.4.6", url)
        assert kernel.vmlinuz.read_bytes().endswith(b"6.4.6 202308041557\n")


def test_candidates_from_changes_without_a_clone(mirror, home):
    """`candidates` over mainline versions with no --repo ranks the builds' CHANGES subjects."""
    result = run_cli("candidates", "--bug", "gretap-ecn", "--good", "5.7-rc4", "--bad", "5.7-rc5", "--mirror", mirror,
                     "--json", home=home)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    top = data["candidates"][0]
    assert top["subject"] == "tunnel: Propagate ECT(1) when decapsulating as recommended by RFC6040"
    assert top["build"] == "5.7-rc5" and top["author"] == "Toke Hoiland-Jorgensen" and top["sha"] is None
    assert data["basis"] == "changes-subjects" and "subjects only" in data["notes"][0]
    # 5.7-rc4's own CHANGES (what rc4 added) is outside 5.7-rc4..5.7-rc5
    assert all(c["build"] == "5.7-rc5" for c in data["candidates"])
    text = run_cli("candidates", "--bug", "gretap-ecn", "--good", "5.7-rc4", "--bad", "5.7-rc5", "--mirror", mirror,
                   home=home)
    assert text.returncode == 0 and "subjects only" in text.stderr and "Propagate ECT(1)" in text.stdout
    wrong = run_cli("candidates", "--bug", "gretap-ecn", "--good", "5.7-rc5", "--bad", "5.7-rc4", "--mirror", mirror,
                    home=home)
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1 and "not older" in wrong.stderr


def test_bisect_passes_verification_options_to_every_mainline_source(mirror, home, monkeypatch):
    """bisect sets KBISECT_ALLOW_UNVERIFIED / KBISECT_MAINLINE_KEYRING for its listing and every
    probe's fetch; a source built from the environment honours them, and a bad --keyring stops
    the command before anything is listed."""
    monkeypatch.setenv("KBISECT_ALLOW_UNVERIFIED", "1")
    entry = {e.version: e for e in get_source("mainline", mirror).list("3.19", "3.19")}["3.19"]
    assert entry.available and entry.extra["unverified"] is True
    monkeypatch.delenv("KBISECT_ALLOW_UNVERIFIED")
    assert not get_source("mainline", mirror).list("3.19", "3.19")[0].available
    bad = run_cli("bisect", "--bug", "gretap-ecn", "--good", "4.3", "--bad", "4.15", "--mirror", mirror,
                  "--keyring", "/nonexistent/ring.gpg", home=home)
    assert bad.returncode == 2 and bad.stderr == "kbisect: error: --keyring /nonexistent/ring.gpg: no such file\n"
