"""Hostile kernel packages through every source: refused in one line, nothing written outside.

Each case is a kernel of two crafted .debs (the image, then the modules: every mainline, Debian
and Ubuntu kernel comes in two or three), built here byte by byte: `ar` around a control
tarball and a data tarball (data.tar.xz for the first package, data.tar.zst for the second), the
.deb format dpkg-deb(1) and deb(5) describe. The attacks are those of issue 11: a symlink
chain (`l1 -> ..`, `l2 -> l1/..`, …) written by the first package and used by the second,
absolute and relative symlink escapes, `..` and absolute member names, hardlinks to a host file
(by absolute name and through a chain), members written over or through an existing symlink,
device nodes and fifos, damaged members (a file where a directory was unpacked and the reverse),
setuid files, and a full disk.

The same packages go through each source the way its real service hands them over:
- `local:` a directory of .debs, every case through the CLI (`kbisect kernels fetch local:…`);
- mainline: a mirror on 127.0.0.1 (tests/mainline_mirror.py) whose CHECKSUMS match the crafted
  packages (a hostile mirror);
- ubuntu: the fake Launchpad and archive pool (tests/fake_launchpad.py);
  both through the CLI for the cases in END_TO_END, through `sources.fetch` (what the CLI
  calls) for the others, to keep the module quick;
- debian: the debian source obtains packages only through apt from the configured archive,
  and an archive signed by anything but the Debian keyring is refused by apt, so there is no
  offline way to feed it a crafted package. Its real `fetch` runs with a fake apt client (the
  `apt` collaborator: records, verified download) that hands the crafted .debs to the source,
  which checks their sums and gives them to unpack_debs; the error is read from the API.

Each refusal must be exactly one `kbisect: error:` line naming the package and the member, with
nothing created outside the kernel directory (a sentinel directory and a host file beside the
cache stay as they were), and nothing of it in the cache (no kernel directory, no `*.partial`,
no `.*.data.tar`). The module prints the figures for the README's Reliability table
(`pytest -s`).
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from orchestrator.core.errors import KbisectError
from tests.bisect_mirror import serve
from tests.fake_launchpad import FakeLaunchpad, Upload
from tests.mainline_mirror import Build, Release, write_release, write_top

REPO = Path(__file__).resolve().parent.parent
SECRET = b"host secret: must never be read into or written by an unpack\n"
FIGURES: Counter = Counter()


# ------------------------------------------------------------------------------ crafting .debs


@dataclass(frozen=True)
class Entry:
    """One tar member: kind is file, dir, sym, hard, chr, blk or fifo."""

    name: str
    kind: str = "file"
    data: bytes = b""
    link: str = ""
    mode: int = 0o644


_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE, "hard": tarfile.LNKTYPE,
          "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE, "fifo": tarfile.FIFOTYPE}


def _tar(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = _TYPES[e.kind]
            info.mode = 0o755 if e.kind == "dir" and e.mode == 0o644 else e.mode
            info.linkname = e.link
            if e.kind in ("chr", "blk"):
                info.devmajor, info.devminor = 1, 3
            info.size = len(e.data) if e.kind == "file" else 0
            tar.addfile(info, io.BytesIO(e.data) if e.kind == "file" else None)
    return buf.getvalue()


def _compress(data: bytes, how: str) -> bytes:
    if how == "xz":
        import lzma

        return lzma.compress(data)
    return subprocess.run(["zstd", "-q", "-c", "-3"], input=data, capture_output=True, check=True).stdout


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    """The common ar format (ar(5)): the global header, then 60-byte member headers, 2-aligned."""
    out = io.BytesIO()
    out.write(b"!<arch>\n")
    for name, data in members:
        out.write(f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode())
        out.write(data + (b"\n" if len(data) % 2 else b""))
    return out.getvalue()


def make_deb(package: str, version: str, entries: list[Entry], compression: str) -> bytes:
    control = f"Package: {package}\nVersion: {version}\nArchitecture: amd64\nMaintainer: t <t@example.invalid>\n" \
              "Description: crafted for kbisect tests\n"
    return _ar([("debian-binary", b"2.0\n"),
                ("control.tar.xz", _compress(_tar([Entry("./control", data=control.encode())]), "xz")),
                (f"data.tar.{compression}", _compress(_tar(entries), compression))])


# ------------------------------------------------------------------------------ the cases


@dataclass
class Where:
    """What a case needs to aim at: the kernel release, where the unpack's modules directory
    will be, and the host paths outside the cache."""

    kver: str
    modules: Path  # <kernels>/<source>/<version>.partial/modules, real path
    sentinel: Path  # a directory outside the cache that must stay as it is
    host_file: Path  # a host file that must stay as it is and never be read into the cache

    def m(self, rel: str) -> str:
        return f"./lib/modules/{self.kver}/{rel}"

    def chain_to_root(self) -> tuple[list[Entry], str]:
        """l1 -> .., l2 -> l1/.., … until the last one stands for `/` (from the modules dir)."""
        depth = len(self.modules.parts) - 1
        links = [Entry(self.m("l1"), "sym", link="..")]
        links += [Entry(self.m(f"l{i}"), "sym", link=f"l{i - 1}/..") for i in range(2, depth + 1)]
        return links, f"l{depth}"


Stages = tuple[list[Entry], list[Entry]]  # members of the first (image) and second (modules) package


def _chain_two_debs(w: Where) -> Stages:
    links, root = w.chain_to_root()
    return links, [Entry(w.m(f"{root}{w.sentinel}/planted"), data=b"planted through a symlink chain\n")]


def _late_link_leads_out(w: Where) -> Stages:
    # `a -> b/..` resolves inside while b does not exist; the second package's `b -> ..` makes
    # it lead out of the tree (only a check after all packages can see that).
    return [Entry(w.m("a"), "sym", link="b/..")], [Entry(w.m("b"), "sym", link="..")]


def _absolute_symlink(w: Where) -> Stages:
    return [Entry(w.m("evil"), "sym", link=str(w.sentinel))], [Entry(w.m("evil/planted"), data=b"x")]


def _relative_symlink(w: Where) -> Stages:
    up = os.path.relpath(w.sentinel, w.modules)
    return [Entry(w.m("evil"), "sym", link=up)], [Entry(w.m("evil/planted"), data=b"x")]


def _dotdot_member(w: Where) -> Stages:
    return [], [Entry(w.m("../" * 30 + str(w.sentinel).lstrip("/") + "/planted"), data=b"x")]


def _absolute_member(w: Where) -> Stages:
    return [], [Entry(str(w.sentinel / "planted"), data=b"x")]


def _hardlink_absolute(w: Where) -> Stages:
    return [], [Entry(w.m("kernel/stolen.ko"), "hard", link=str(w.host_file))]


def _hardlink_via_chain(w: Where) -> Stages:
    links, root = w.chain_to_root()
    return links, [Entry(w.m("kernel/stolen.ko"), "hard", link=w.m(f"{root}{w.host_file}"))]


def _hardlink_via_inside_symlink(w: Where) -> Stages:
    return [Entry(w.m("up"), "sym", link="..")], [Entry(w.m("kernel/stolen.ko"), "hard", link=w.m("up/vmlinuz"))]


def _over_symlink_to_host_file(w: Where) -> Stages:
    links, root = w.chain_to_root()
    return links + [Entry(w.m("modules.alias"), "sym", link=f"{root}{w.host_file}")], \
        [Entry(w.m("modules.alias"), data=b"OWNED\n")]


def _over_symlink_inside(w: Where) -> Stages:
    return [Entry(w.m("kernel/real.ko"), data=b"\x7fELF real"), Entry(w.m("link.ko"), "sym", link="kernel/real.ko")], \
        [Entry(w.m("link.ko"), data=b"written over a link\n")]


def _through_symlink_inside(w: Where) -> Stages:
    return [Entry(w.m("kernel/net/x.ko"), data=b"\x7fELF"), Entry(w.m("alias"), "sym", link="kernel/net")], \
        [Entry(w.m("alias/y.ko"), data=b"written through a link\n")]


def _char_device(w: Where) -> Stages:
    return [], [Entry(w.m("kernel/null"), "chr")]


def _block_device(w: Where) -> Stages:
    return [], [Entry("./dev/sda", "blk")]  # outside the layout: refused all the same, not ignored


def _fifo(w: Where) -> Stages:
    return [], [Entry("./run/kbisect.fifo", "fifo")]


def _file_then_directory(w: Where) -> Stages:
    return [Entry(w.m("kernel"), data=b"a file")], [Entry(w.m("kernel"), "dir"), Entry(w.m("kernel/x.ko"), data=b"x")]


def _directory_then_file(w: Where) -> Stages:
    return [Entry(w.m("kernel/net"), "dir")], [Entry(w.m("kernel/net"), data=b"a file where a directory is")]


def _symlink_loop(w: Where) -> Stages:
    return [Entry(w.m("loop-a"), "sym", link="loop-b")], [Entry(w.m("loop-b"), "sym", link="loop-a")]


def _setuid(w: Where) -> Stages:
    return [Entry(w.m("kernel/suid.ko"), data=b"\x7fELF", mode=0o4755)], \
        [Entry(w.m("kernel/sgid.ko"), data=b"\x7fELF", mode=0o2775), Entry(w.m("kernel/sticky.ko"), data=b"\x7fELF",
                                                                              mode=0o1777)]


@dataclass(frozen=True)
class Case:
    id: str
    stages: Callable[[Where], Stages]
    refused: str | None  # what the one error line says; None: unpacked, made harmless


CASES = [
    Case("symlink-chain-across-two-debs", _chain_two_debs, "leads outside the unpack"),
    Case("link-made-to-lead-out-by-a-later-deb", _late_link_leads_out, "leads outside the unpack"),
    Case("absolute-symlink-escape", _absolute_symlink, "absolute symlink"),
    Case("relative-symlink-escape", _relative_symlink, "leads outside the unpack"),
    Case("dotdot-member", _dotdot_member, "escape the target directory"),
    Case("absolute-member", _absolute_member, "escape the target directory"),
    Case("hardlink-to-host-file-absolute", _hardlink_absolute, "escape the target directory"),
    Case("hardlink-to-host-file-via-symlink-chain", _hardlink_via_chain, "leads outside the unpack"),
    Case("hardlink-through-a-symlink-inside", _hardlink_via_inside_symlink, "through the symlink"),
    Case("member-over-symlink-to-host-file", _over_symlink_to_host_file, "leads outside the unpack"),
    Case("member-over-existing-symlink", _over_symlink_inside, "over the symlink"),
    Case("member-through-existing-symlink", _through_symlink_inside, "through the symlink"),
    Case("character-device", _char_device, "a device node"),
    Case("block-device", _block_device, "a device node"),
    Case("fifo", _fifo, "a fifo"),
    Case("file-then-directory", _file_then_directory, "damaged package"),
    Case("directory-then-file", _directory_then_file, "damaged package"),
    Case("symlink-loop", _symlink_loop, "loops"),
    Case("setuid-setgid-sticky", _setuid, None),
]


def _legit(w: Where) -> Stages:
    """What real kernel packages hold: an in-tree modules link, `build`/`source` links into the
    build host, a hardlink inside the package."""
    return [Entry(w.m("kernel/drivers/net/veth.ko"), data=b"\x7fELF veth"),
            Entry(w.m("kernel/drivers/net/veth-again.ko"), "hard", link=w.m("kernel/drivers/net/veth.ko"))], \
        [Entry(w.m("modules.order"), data=b"kernel/drivers/net/veth.ko\n"),
         Entry(w.m("modules.order.link"), "sym", link="modules.order"),
         Entry(w.m("build"), "sym", link=f"/usr/src/linux-headers-{w.kver}"),
         Entry(w.m("source"), "sym", link="../../../usr/src/linux-source")]


# ------------------------------------------------------------------------------ the sources


@dataclass
class Kernel:
    """One kernel as a source names it: the spec, its cache directory, its two .debs' names."""

    spec: str
    version: str  # the cache directory's name
    kver: str
    names: tuple[str, str]


def _kernel(source: str, n: int) -> Kernel:
    if source == "local":
        kver = f"6.6.{n}-hostile"
        return Kernel(f"local:case{n}", f"case{n}", kver, (f"linux-image-{kver}_1_amd64.deb",
                                                           f"linux-modules-{kver}_1_amd64.deb"))
    if source == "mainline":
        abi = f"6.6.{n}-0606{n:02d}"
        pkgver = f"{abi}.202312011200"
        return Kernel(f"mainline:6.6.{n}", f"6.6.{n}", f"{abi}-generic",
                      (f"linux-image-unsigned-{abi}-generic_{pkgver}_amd64.deb",
                       f"linux-modules-{abi}-generic_{pkgver}_amd64.deb"))
    if source == "ubuntu":
        version = f"6.6.0-{n}.{n}"
        kver = f"6.6.0-{n}-generic"
        return Kernel(f"ubuntu:{version}", version, kver, (f"linux-image-unsigned-{kver}_{version}_amd64.deb",
                                                           f"linux-modules-{kver}_{version}_amd64.deb"))
    kver = f"6.1.0-{n}-cloud-amd64"
    return Kernel(f"debian:{kver}", kver, kver, (f"linux-binary-{kver}_6.1.{n}-1_amd64.deb",
                                                 f"linux-modules-{kver}_6.1.{n}-1_amd64.deb"))


class FakeApt:
    """The debian source's apt client, answering for crafted split packages (linux-image ->
    linux-binary + linux-modules, as sid's kernels are split): records with the packages'
    real sums, and `download` writing the crafted bytes where `apt-get download` would."""

    def __init__(self, kernel: Kernel, debs: dict[str, bytes]) -> None:
        self.kernel, self.debs = kernel, debs

    def ensure_updated(self, force: bool = False) -> None:
        pass

    def _record(self, package: str, name: str, depends: str = "") -> dict[str, str]:
        data = self.debs[name]
        return {"Package": package, "Version": name.split("_")[1], "Architecture": "amd64",
                "Filename": f"pool/main/l/linux-signed-amd64/{name}", "SHA256": hashlib.sha256(data).hexdigest(),
                "Size": str(len(data)), "Depends": depends}

    def show(self, packages: list[str]) -> list[dict[str, str]]:
        k = self.kernel.kver
        binary, modules = self.kernel.names
        known = {f"linux-image-{k}": self._record(f"linux-image-{k}", binary, f"linux-binary-{k}, linux-modules-{k}"),
                 f"linux-binary-{k}": self._record(f"linux-binary-{k}", binary),
                 f"linux-modules-{k}": self._record(f"linux-modules-{k}", modules)}
        return [known[p] for p in packages if p in known]

    def download(self, package: str, version: str, into: Path) -> Path:
        into.mkdir(parents=True, exist_ok=True)
        name = next(n for n in self.kernel.names if n.startswith(package + "_"))
        (into / name).write_bytes(self.debs[name])
        return into / name


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str


def _cli(home: Path, *args: str) -> Outcome:
    env = {**os.environ, "KBISECT_HOME": str(home), "NO_PROXY": "127.0.0.1,localhost"}
    r = subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=REPO, env=env, text=True,
                       capture_output=True, timeout=120)
    return Outcome(r.returncode, r.stdout, r.stderr)


def _api(fetch: Callable[[], Path]) -> Outcome:
    """A source's fetch in this process, its KbisectError read as the CLI would print it
    (base.py: `kbisect: error: {message}`); any other exception fails the test with its traceback."""
    try:
        root = fetch()
    except KbisectError as exc:
        return Outcome(exc.exit_code, "", f"kbisect: error: {exc}\n")
    return Outcome(0, f"{root}\n", "")


@dataclass
class Mirrors:
    """One mainline mirror and one fake Launchpad for the module, each test adding its kernel
    (a server per test would cost its shutdown's half-second poll each time)."""

    mainline_root: Path
    mainline_url: str
    releases: list[Release]
    launchpad: FakeLaunchpad
    ubuntu_url: str


@pytest.fixture(scope="module")
def mirrors(tmp_path_factory) -> Mirrors:
    root = tmp_path_factory.mktemp("mainline-mirror")
    write_top(root, [])
    launchpad = FakeLaunchpad([])
    with serve(root) as mainline_url, launchpad.serve() as ubuntu_url:
        yield Mirrors(root, mainline_url, [], launchpad, ubuntu_url)


def _through_source(source: str, kernel: Kernel, debs: dict[str, bytes], home: Path, work: Path,
                    mirrors: Mirrors | None = None, cli: bool = True) -> Outcome:
    """Hand `debs` to `source` the way its service would, and fetch `kernel` from it (through
    the CLI, or the source's API when `cli` is false: the same code without a new interpreter)."""
    from orchestrator.adapters.sources import fetch

    def run(mirror: str) -> Outcome:
        if cli:
            return _cli(home, "kernels", "fetch", kernel.spec, "--mirror", mirror)
        return _api(lambda: fetch(kernel.spec, mirror).root)

    if source == "local":
        where = work / "local" / kernel.version
        where.mkdir(parents=True)
        for name, data in debs.items():
            (where / name).write_bytes(data)
        return run(str(work / "local"))
    if source == "mainline":
        assert mirrors is not None
        release = Release(f"v{kernel.version}", [Build("202312011200", debs)])
        write_release(mirrors.mainline_root, release)  # CHECKSUMS that match the crafted packages
        mirrors.releases.append(release)
        write_top(mirrors.mainline_root, mirrors.releases)
        return run(mirrors.mainline_url)
    if source == "ubuntu":
        assert mirrors is not None
        mirrors.launchpad.uploads.append(Upload(kernel.version, debs=debs))
        mirrors.launchpad.pool.update(debs)
        return run(mirrors.ubuntu_url)
    from orchestrator.adapters.sources.debian import DebianSource

    assert os.environ["KBISECT_HOME"] == str(home)  # the scene's monkeypatch
    debian = DebianSource("http://127.0.0.1:9/debian/")
    debian.apt = FakeApt(kernel, debs)  # type: ignore[assignment]  # no offline archive apt would accept
    return _api(lambda: debian.fetch(kernel.version).root)


SOURCES = ["local", "mainline", "ubuntu", "debian"]
# Cases run through the CLI for the mirrors too (every case does for local:); the others
# through the source's API, which is what the CLI calls, to keep the module quick.
END_TO_END = {"symlink-chain-across-two-debs", "member-over-symlink-to-host-file", "character-device",
              "file-then-directory", "setuid-setgid-sticky"}


# ------------------------------------------------------------------------------ checks


@dataclass
class Scene:
    home: Path
    work: Path
    sentinel: Path
    host_file: Path

    def where(self, source: str, kernel: Kernel) -> Where:
        modules = Path(os.path.realpath(self.home)) / "kernels" / source / f"{kernel.version}.partial" / "modules"
        return Where(kernel.kver, modules, Path(os.path.realpath(self.sentinel)),
                     Path(os.path.realpath(self.host_file)))

    def escapes(self) -> list[str]:
        """What an unpack did outside its kernel directory (empty: nothing)."""
        found = []
        if sorted(p.name for p in self.sentinel.iterdir()) != ["host-file"]:
            found.append(f"sentinel now holds {sorted(p.name for p in self.sentinel.iterdir())}")
        if self.host_file.read_bytes() != SECRET:
            found.append("the host file was changed")
        kernels = self.home / "kernels"
        for path in kernels.rglob("*"):
            if path.is_symlink():  # <kernels>/<source>/<version>/…: must resolve inside <version>
                kernel_dir = os.path.realpath(kernels.joinpath(*path.relative_to(kernels).parts[:2]))
                real = os.path.realpath(path)
                if not (real + "/").startswith(kernel_dir + "/"):
                    found.append(f"{path} leads to {real}")
            elif path.is_file() and SECRET in path.read_bytes():
                found.append(f"{path} holds the host file's bytes")
        for name in ("planted", "stolen.ko"):
            found += [str(p) for p in self.work.parent.rglob(name) if self.home not in p.parents]
        return found

    def leftovers(self, source: str) -> list[str]:
        """Anything of a refused kernel in the cache: its directory, staging, scratch files."""
        kernels = self.home / "kernels" / source
        left = [p.name for p in kernels.iterdir() if not p.name.endswith(".lock")] if kernels.is_dir() else []
        left += [str(p) for p in self.home.rglob("*.partial")]
        left += [str(p) for p in self.home.rglob(".*.data.tar")]
        return left


@pytest.fixture()
def scene(tmp_path, monkeypatch) -> Scene:
    home = tmp_path / "kbisect-home"
    home.mkdir()
    monkeypatch.setenv("KBISECT_HOME", str(home))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    sentinel = tmp_path / "outside"
    sentinel.mkdir()
    host_file = sentinel / "host-file"
    host_file.write_bytes(SECRET)
    return Scene(home, tmp_path / "work", sentinel, host_file)


@pytest.fixture(scope="module", autouse=True)
def reliability_figures():
    """Print the README Reliability figures once the module's cases have run."""
    yield
    if FIGURES["tried"]:
        print(f"\nReliability: hostile archives tried / refused / escapes: {FIGURES['tried']} / "
              f"{FIGURES['refused']} / {FIGURES['escapes']} (and {FIGURES['defused']} unpacked with their "
              f"setuid/setgid/sticky bits dropped; {FIGURES['cases']} cases x {len(SOURCES)} sources)")


def _debs(kernel: Kernel, stages: Stages) -> dict[str, bytes]:
    first, second = stages
    image = [Entry(f"./boot/vmlinuz-{kernel.kver}", data=b"MZ crafted image\n"), *first]
    pkg = [n.split("_")[0] for n in kernel.names]
    return {kernel.names[0]: make_deb(pkg[0], kernel.names[0].split("_")[1], image, "xz"),
            kernel.names[1]: make_deb(pkg[1], kernel.names[1].split("_")[1], second, "zst")}


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_package_is_refused_in_one_line(scene, mirrors, source, case):
    n = CASES.index(case) + 1
    kernel = _kernel(source, n)
    debs = _debs(kernel, case.stages(scene.where(source, kernel)))
    result = _through_source(source, kernel, debs, scene.home, scene.work, mirrors,
                             cli=source == "local" or case.id in END_TO_END)
    escapes = scene.escapes()
    FIGURES["tried"] += 1
    FIGURES["escapes"] += bool(escapes)
    FIGURES["cases"] = len(CASES)
    assert not escapes, escapes
    assert "Traceback" not in result.stderr, result.stderr
    if case.refused is None:
        assert result.returncode == 0, result.stderr
        root = Path(result.stdout.strip())
        modes = {p.name: p.stat().st_mode for p in (root / "modules" / "kernel").iterdir()}
        assert set(modes) == {"suid.ko", "sgid.ko", "sticky.ko"}
        assert all(m & 0o7000 == 0 for m in modes.values()), {k: oct(m) for k, m in modes.items()}
        assert modes["suid.ko"] & 0o755 == 0o755  # the other bits as packaged
        FIGURES["defused"] += 1
        return
    assert result.returncode == 2 and result.stdout == "", (result.returncode, result.stdout, result.stderr)
    assert result.stderr.startswith("kbisect: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert case.refused in result.stderr, result.stderr
    assert ".deb: member '" in result.stderr, "the line names the package and the member"
    assert not scene.leftovers(source), scene.leftovers(source)
    FIGURES["refused"] += 1


@pytest.mark.parametrize("source", SOURCES)
def test_a_legitimate_kernel_still_unpacks(scene, mirrors, source):
    """The control: the same packaging, the same sources, nothing hostile: unpacked, with the
    in-tree link kept, the `build`/`source` links dropped and the hardlink copied."""
    kernel = _kernel(source, 99)
    result = _through_source(source, kernel, _debs(kernel, _legit(scene.where(source, kernel))),
                             scene.home, scene.work, mirrors)
    assert result.returncode == 0, result.stderr
    root = Path(result.stdout.strip())
    assert root == scene.home / "kernels" / source / kernel.version and (root / "kernel.json").is_file()
    modules = root / "modules"
    assert os.readlink(modules / "modules.order.link") == "modules.order"
    assert not (modules / "build").is_symlink() and not (modules / "source").is_symlink()
    copy = modules / "kernel/drivers/net/veth-again.ko"
    assert copy.read_bytes() == b"\x7fELF veth" and not copy.is_symlink()
    assert copy.stat().st_ino != (modules / "kernel/drivers/net/veth.ko").stat().st_ino
    assert not scene.escapes() and not list(scene.home.rglob("*.partial"))


# ------------------------------------------------------------------------------ a full disk


@pytest.fixture()
def small_tmpfs(tmp_path) -> Path:
    """A 1 MiB tmpfs, mounted for the test and unmounted after it."""
    if os.geteuid() != 0:
        pytest.skip("not root, cannot mount tmpfs")
    mnt = tmp_path / "full"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True, capture_output=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


@pytest.mark.parametrize("compression", ["xz", "zst"])
def test_full_disk_is_one_line_and_leaves_nothing(small_tmpfs, tmp_path, compression):
    """KBISECT_HOME on a 1 MiB tmpfs and a 2 MiB module: ENOSPC while writing the module (xz) or
    while decompressing the data.tar.zst into its scratch file (zst)."""
    home = small_tmpfs / "home"
    kernel = _kernel("local", 0)
    big = os.urandom(2 << 20)  # incompressible: the package is as large as what it unpacks to
    debs = {kernel.names[0]: make_deb("linux-image-x", "1", [Entry(f"./boot/vmlinuz-{kernel.kver}", data=b"MZ")], "xz"),
            kernel.names[1]: make_deb("linux-modules-x", "1",
                                      [Entry(f"./lib/modules/{kernel.kver}/kernel/big.ko", data=big)], compression)}
    result = _through_source("local", kernel, debs, home, tmp_path / "work")
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.startswith("kbisect: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr and "No space left on device" in result.stderr, result.stderr
    assert kernel.names[1] in result.stderr
    kernels = home / "kernels" / "local"
    assert sorted(p.name for p in kernels.iterdir()) == [f"{kernel.version}.lock"]
    assert not [p for p in home.rglob("*") if p.is_file() and p.stat().st_size > 0]
    assert os.statvfs(small_tmpfs).f_bfree == os.statvfs(small_tmpfs).f_blocks  # every block given back


def test_a_read_only_cache_is_one_line(small_tmpfs, tmp_path):
    """An unpack this machine cannot write at all (the cache's filesystem read-only: root cannot
    be denied by permissions, so EROFS stands in for EACCES) is one line, not a traceback."""
    home = small_tmpfs / "home"
    (home / "kernels" / "local").mkdir(parents=True)
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True, capture_output=True)
    kernel = _kernel("local", 0)
    result = _through_source("local", kernel, _debs(kernel, ([], [Entry(f"./lib/modules/{kernel.kver}/x.ko",
                                                                          data=b"\x7fELF")])), home, tmp_path / "work")
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.startswith("kbisect: error: ") and str(home / "kernels" / "local") in result.stderr
    assert result.stderr.count("\n") == 1 and "Read-only file system" in result.stderr, result.stderr
    assert sorted(p.name for p in (home / "kernels" / "local").iterdir()) == []
