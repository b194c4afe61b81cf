"""Bad input, one line: every command fed hostile input ends in its documented exit code and a
single `kbisect: error:` line, never a traceback, and leaves no half-written file (issue 11).

Each case runs the real CLI as a subprocess (`python -m orchestrator`) with its own empty
$KBISECT_HOME and results directory, every mirror on 127.0.0.1 (a closed port, or a local server
that answers every GET with random bytes). Every case fails before anything is fetched from
outside or booted: the inputs are chosen so, and the options a command uses only at its end
(`--markdown`, `--repo`, the results directory) are checked up front by the code under test.

"Unreadable" is made the way that really fails as root (chmod 000 does not): a directory where
a file is expected, a fifo (reading it would block), /proc/self/mem (a regular file whose read
fails with EIO), a symlink loop. A full disk is a small tmpfs mounted by the test; a held lock is
the filelock the command needs, held by this process.

Exit codes are README's: 2 for bad input and unrecoverable failures, 128 for `kbisect run`'s
setup errors (so `git bisect run` stops rather than reading the commit as bad).
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pytest
from filelock import FileLock

from tests.localhttp import serve_handler

REPO = Path(__file__).resolve().parent.parent
CLOSED = "http://127.0.0.1:9/"  # nothing listens there: every request fails at once
KVER = "1.0.0-hostile"
LEFTOVER_SUFFIXES = (".tmp", ".part", ".partial")
LEFTOVER_MARKERS = (".kbisect-write-check.",)  # the write check's probe file
CASE_TIMEOUT = 60  # seconds; every case fails in well under one (a hang is a failure, not a wait)


# ------------------------------------------------------------------------------ hostile files


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    """An ar archive (the .deb container; ar(5): "!<arch>\\n", then 60-byte headers)."""
    out = [b"!<arch>\n"]
    for name, data in members:
        header = (name.encode().ljust(16) + b"0".ljust(12) + b"0".ljust(6) + b"0".ljust(6)
                  + b"100644".ljust(8) + str(len(data)).encode().ljust(10) + b"`\n")
        out.append(header + data + (b"\n" if len(data) % 2 else b""))
    return b"".join(out)


def _tar_gz(entries: list[tuple[str, str, bytes]]) -> bytes:
    """A gzip tarball of (name, kind "f" or "d", data) entries, in that order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            if kind == "d":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def crafted_deb(entries: list[tuple[str, str, bytes]]) -> bytes:
    """A .deb whose data.tar.gz holds exactly `entries` (dpkg-deb would refuse the odd ones)."""
    control = _tar_gz([("./control", "f", b"Package: linux-image-hostile\nVersion: 1\nArchitecture: amd64\n"
                                           b"Maintainer: t <t@example.invalid>\nDescription: test\n")])
    return _ar([("debian-binary", b"2.0\n"), ("control.tar.gz", control), ("data.tar.gz", _tar_gz(entries))])


def kernel_entries(marker: bytes = b"hostile") -> list[tuple[str, str, bytes]]:
    return [("./boot", "d", b""), (f"./boot/vmlinuz-{KVER}", "f", b"MZ fake bzImage " + marker),
            (f"./lib/modules/{KVER}/kernel/x.ko", "f", b"\x7fELF x")]


def local_tree(root: Path, name: str, vmlinuz: bytes) -> Path:
    """An installed-style local kernel: vmlinuz + lib/modules/<kver>/ (LocalSource's tree form)."""
    path = root / name
    (path / "lib" / "modules" / KVER / "kernel").mkdir(parents=True)
    (path / "vmlinuz").write_bytes(vmlinuz)
    (path / "lib" / "modules" / KVER / "kernel" / "x.ko").write_bytes(b"\x7fELF x")
    return path


@dataclass
class Inputs:
    """The hostile files and directories every case may point at (read-only for the cases)."""

    root: Path
    garbage: str  # a mirror on 127.0.0.1 answering every GET with random bytes

    def paths(self) -> dict[str, str]:
        """{bin}, {fifo}, ... in the case arguments."""
        r = self.root
        return {
            "bin": str(r / "binary.dat"), "empty": str(r / "empty.dat"), "trunc": str(r / "truncated.json"),
            "huge": str(r / "huge.dat"), "dir": str(r / "a-directory"), "fifo": str(r / "a-fifo"),
            "mem": "/proc/self/mem", "missing": str(r / "no" / "such" / "file"), "loop": str(r / "loop"),
            "list": str(r / "list.yaml"), "badverdict": str(r / "badverdict.yaml"),
            "local": str(r / "local"), "notgit": str(r / "not-a-repo"),
            "badbug": str(r / "bugs-binary" / "binbug"), "emptybug": str(r / "bugs-empty" / "emptybug"),
            "badcat": str(r / "bugs-binary"), "damagedkernel": str(r / "damaged-kernel"),
            "patch": str(REPO / "reproducers" / "gretap-ecn" / "controls" / "revert-227adfb2b1df.patch"),
            "garbage": self.garbage, "closed": CLOSED,
        }


def make_inputs(root: Path, garbage: str) -> Inputs:
    root.mkdir(parents=True, exist_ok=True)
    (root / "binary.dat").write_bytes(bytes([0x98, 0xff, 0x00, 0xfe]) + os.urandom(4092))
    (root / "empty.dat").write_bytes(b"")
    (root / "truncated.json").write_text('{"mainline:5.4": "ba')
    with open(root / "huge.dat", "wb") as out:  # sparse: 256 MiB that take no disk
        out.truncate(256 << 20)
    (root / "a-directory").mkdir()
    os.mkfifo(root / "a-fifo")
    os.symlink("loop", root / "loop")
    (root / "list.yaml").write_text("- mainline:5.4\n- bad\n")
    (root / "badverdict.yaml").write_text("mainline:5.4: maybe\n")
    (root / "not-a-repo").mkdir()
    for catalog, name, data in (("bugs-binary", "binbug", (root / "binary.dat").read_bytes()),
                                ("bugs-empty", "emptybug", b"")):
        (root / catalog / name).mkdir(parents=True)
        (root / catalog / name / "bug.yaml").write_bytes(data)
        (root / catalog / name / "run.sh").write_text("exit 0\n")
    # a kernel directory the user points at, whose kernel.json is empty (outside the cache)
    (root / "damaged-kernel").mkdir()
    (root / "damaged-kernel" / "kernel.json").write_bytes(b"")
    (root / "damaged-kernel" / "vmlinuz").write_bytes(b"MZ")
    local = root / "local"
    local.mkdir()
    local_tree(local, "good", b"MZ fake bzImage good")
    local_tree(local, "big", os.urandom(600 << 10))  # more than the small tmpfs holds
    for name, data in (("bindeb", os.urandom(8192)), ("emptydeb", b""),
                       ("truncdeb", crafted_deb(kernel_entries())[:300]),
                       ("dupmember", crafted_deb(kernel_entries() + [(f"./lib/modules/{KVER}/kernel/x.ko/inner", "f", b"x")])),
                       ("filethendir", crafted_deb([(f"./lib/modules/{KVER}/kernel", "f", b"a file"),
                                                    (f"./lib/modules/{KVER}/kernel", "d", b"")] + kernel_entries()))):
        (local / name).mkdir()
        (local / name / f"linux-image-{KVER}_1_amd64.deb").write_bytes(data)
    (local / "nokernel").mkdir()
    (local / "nokernel" / "README").write_text("no kernel here\n")
    return Inputs(root, garbage)


# ------------------------------------------------------------------------------ the cases


@dataclass
class Ctx:
    """One case's world: its own home, results and output directories, and its environment."""

    home: Path
    results: Path
    out: Path
    inputs: Inputs
    env: dict[str, str]
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    watched: list[Path] = field(default_factory=list)  # output paths that must be left as they were
    stdout_path: str | None = None  # where the command's stdout goes (default: a pipe)


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]  # "{name}" is replaced from Inputs.paths() and {home}/{out}/{results}
    says: str  # a fragment of the error line: the right failure, not just any
    code: int = 2
    setup: Callable[[Ctx], None] | None = None


@contextmanager
def tmpfs(path: Path, size: str, inodes: int) -> Iterator[Path]:
    """A small tmpfs at `path`, unmounted afterwards (root only; checked by the callers)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},nr_inodes={inodes},mode=0755", "tmpfs", str(path)],
                   check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False, capture_output=True)


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip(f"mounting a tmpfs needs root (euid {os.geteuid()})")


def _mount(ctx: Ctx, name: str, size: str, inodes: int) -> Path:
    _need_root()
    manager = tmpfs(ctx.out.parent / name, size, inodes)
    mounted = manager.__enter__()
    ctx.cleanups.append(lambda: manager.__exit__(None, None, None))
    return mounted


def _fill(disk: Path) -> None:
    """Use up a tmpfs: every inode, then every block."""
    n = 0
    while True:
        try:
            (disk / f"inode-{n}").touch()
        except OSError:
            break
        n += 1
    try:
        with open(disk / "inode-0", "wb") as out:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
    except OSError:
        pass


def small_home(ctx: Ctx) -> None:
    """KBISECT_HOME on a 256 KiB tmpfs: a 600 KiB vmlinuz cannot be copied in."""
    disk = _mount(ctx, "small-disk", "256k", 1024)
    ctx.env["KBISECT_HOME"] = str(disk)
    ctx.watched.append(disk / "kernels" / "local" / "big")


def full_home(ctx: Ctx) -> None:
    """KBISECT_HOME on a tmpfs with no inode and no block left."""
    disk = _mount(ctx, "full-disk", "128k", 16)
    (disk / "home").mkdir()
    _fill(disk)
    ctx.env["KBISECT_HOME"] = str(disk / "home")


def full_results(ctx: Ctx) -> None:
    disk = _mount(ctx, "full-results", "128k", 16)
    (disk / "results").mkdir()
    _fill(disk)
    ctx.env["KBISECT_RESULTS"] = str(disk / "results")


def full_markdown(ctx: Ctx) -> None:
    disk = _mount(ctx, "full-md", "128k", 16)
    _fill(disk)
    ctx.env["MD"] = str(disk / "proof.md")
    ctx.watched.append(disk / "proof.md")


def blocks_full_markdown(ctx: Ctx) -> None:
    """Inodes left but no block: the write check passes, the table itself cannot be written; the
    earlier table at that path must survive whole."""
    disk = _mount(ctx, "blocks-full-md", "128k", 1024)
    (disk / "proof.md").write_text("| an earlier table |\n")
    try:
        with open(disk / "filler", "wb") as out:
            while True:
                out.write(b"\0" * 4096)
                out.flush()
    except OSError:
        pass
    ctx.env["MD"] = str(disk / "proof.md")
    ctx.watched.append(disk / "proof.md")


def results_is_a_file(ctx: Ctx) -> None:
    path = ctx.out / "results-file"
    path.write_text("not a directory\n")
    ctx.env["KBISECT_RESULTS"] = str(path)
    ctx.watched.append(path)


def home_is_a_file(ctx: Ctx) -> None:
    path = ctx.out / "home-file"
    path.write_text("not a directory\n")
    ctx.env["KBISECT_HOME"] = str(path)
    ctx.watched.append(path)


def binary_results_db(ctx: Ctx) -> None:
    (ctx.home / "results.db").write_bytes(Path(ctx.inputs.paths()["bin"]).read_bytes())
    ctx.watched.append(ctx.home / "results.db")


def directory_results_db(ctx: Ctx) -> None:
    (ctx.home / "results.db").mkdir()


def held_unpack_lock(ctx: Ctx) -> None:
    """Hold the lock `kernels fetch local:good` unpacks under (cache.locked: `<target>.lock`)."""
    lock = ctx.home / "kernels" / "local" / "good.lock"
    lock.parent.mkdir(parents=True)
    held = FileLock(str(lock))
    held.acquire()
    ctx.cleanups.append(held.release)
    ctx.env["KBISECT_LOCK_TIMEOUT"] = "0.5"


def bad_lock_timeout(ctx: Ctx) -> None:
    ctx.env["KBISECT_LOCK_TIMEOUT"] = "soon"


def catalog_binary(ctx: Ctx) -> None:
    ctx.env["KBISECT_REPRODUCERS"] = ctx.inputs.paths()["badcat"]


def catalog_missing(ctx: Ctx) -> None:
    ctx.env["KBISECT_REPRODUCERS"] = str(ctx.out / "no-catalog")


def markdown_exists(ctx: Ctx) -> None:
    """An earlier table at the --markdown path: a failed run must leave it as it was."""
    path = ctx.out / "proof.md"
    path.write_text("| an earlier table |\n")
    ctx.watched.append(path)


def stdout_full(ctx: Ctx) -> None:
    ctx.stdout_path = "/dev/full"


def watch_missing_md(ctx: Ctx) -> None:
    ctx.watched.append(ctx.out / "missing" / "x.md")


B = ("bisect", "--bug", "gretap-ecn", "--good", "4.15", "--bad", "5.4", "--mirror", "{closed}")
R = ("run", "--bug", "gretap-ecn")
V = ("bugs", "verify", "gretap-ecn")
F = ("kernels", "fetch")
P = ("kernels", "patch", "--base", "debian:6.1.0-54-cloud-amd64")

CASES: list[Case] = [
    # bisect: every file option, every spec, the directories it writes into at its end
    Case("bisect-verdicts-binary", B + ("--verdicts", "{bin}"), "not UTF-8"),
    Case("bisect-verdicts-empty", B + ("--verdicts", "{empty}"), "expected an object"),
    Case("bisect-verdicts-truncated", B + ("--verdicts", "{trunc}"), "not YAML or JSON"),
    Case("bisect-verdicts-huge", B + ("--verdicts", "{huge}"), "more than the"),
    Case("bisect-verdicts-directory", B + ("--verdicts", "{dir}"), "a directory"),
    Case("bisect-verdicts-fifo", B + ("--verdicts", "{fifo}"), "not a regular file"),
    Case("bisect-verdicts-unreadable", B + ("--verdicts", "{mem}"), "cannot read"),
    Case("bisect-verdicts-symlink-loop", B + ("--verdicts", "{loop}"), "symbolic links"),
    Case("bisect-verdicts-missing", B + ("--verdicts", "{missing}"), "no such file"),
    Case("bisect-verdicts-a-list", B + ("--verdicts", "{list}"), "expected an object"),
    Case("bisect-verdicts-bad-verdict", B + ("--verdicts", "{badverdict}"), "maybe"),
    Case("bisect-good-malformed", ("bisect", "--bug", "gretap-ecn", "--good", "5.x.y", "--bad", "5.4"),
         "--good: not a mainline kernel version"),
    Case("bisect-good-newline", ("bisect", "--bug", "gretap-ecn", "--good", "4.15\nkbisect: error: fake", "--bad", "5.4"),
         "--good"),
    Case("bisect-bad-empty", ("bisect", "--bug", "gretap-ecn", "--good", "4.15", "--bad", ""), "--bad: empty kernel spec"),
    Case("bisect-good-huge", ("bisect", "--bug", "gretap-ecn", "--good", "9" * 100_000, "--bad", "5.4"), "--good"),
    Case("bisect-bad-unknown-source", ("bisect", "--bug", "gretap-ecn", "--good", "4.15", "--bad", "nope:5.4"),
         "unknown kernel source"),
    Case("bisect-repo-missing", B + ("--repo", "{missing}"), "no such directory"),
    Case("bisect-repo-not-git", B + ("--repo", "{notgit}"), "not a git repository"),
    Case("bisect-keyring-directory", B + ("--keyring", "{dir}"), "is a directory"),
    Case("bisect-keyring-fifo", B + ("--keyring", "{fifo}"), "not a regular file"),
    Case("bisect-keyring-missing", B + ("--keyring", "{missing}"), "no such file"),
    Case("bisect-keyring-huge", B + ("--keyring", "{huge}"), "more than the"),
    Case("bisect-keyring-unreadable", B + ("--keyring", "{mem}"), "cannot read"),
    Case("bisect-bug-missing", ("bisect", "--bug", "{missing}", "--good", "4.15", "--bad", "5.4"), "unknown bug"),
    Case("bisect-bug-binary-yaml", ("bisect", "--bug", "{badbug}", "--good", "4.15", "--bad", "5.4"), "bug.yaml"),
    Case("bisect-bug-empty-yaml", ("bisect", "--bug", "{emptybug}", "--good", "4.15", "--bad", "5.4"), "empty file"),
    Case("bisect-distro-bogus", B + ("--distro", "ubuntu:nope"), "nope"),
    Case("bisect-verify-revert-no-repo", B + ("--verify-revert",), "--verify-revert needs --repo"),
    Case("bisect-results-is-a-file", B, "results directory", setup=results_is_a_file),
    Case("bisect-results-full-disk", B, "No space left", setup=full_results),
    Case("bisect-home-full-disk", B, "results database", setup=full_home),
    Case("bisect-results-db-binary", B, "results database", setup=binary_results_db),
    Case("bisect-mirror-garbage", ("bisect", "--bug", "gretap-ecn", "--good", "5.6", "--bad", "5.7", "--mirror", "{garbage}"),
         "not in the mainline listing"),
    Case("bisect-mirror-not-a-url", ("bisect", "--bug", "gretap-ecn", "--good", "5.6", "--bad", "5.7", "--mirror", "nowhere"),
         "cannot reach"),
    Case("bisect-verify-runs-bad", B + ("--verify", "-1"), "--verify"),
    # run: a setup error stops `git bisect run` (128), a usage error included
    Case("run-kernel-garbage", R + ("--kernel", "garbage"), "SOURCE:VERSION", code=128),
    Case("run-kernel-empty", R + ("--kernel", ""), "SOURCE:VERSION", code=128),
    Case("run-kernel-damaged-dir", R + ("--kernel", "{damagedkernel}"), "damaged (empty)", code=128),
    Case("run-repeat-zero", R + ("--kernel", "debian:6.1.0-54-cloud-amd64", "--repeat", "0"), "--repeat", code=128),
    Case("run-memory-not-a-number", R + ("--kernel", "debian:6.1.0-54-cloud-amd64", "--memory", "lots"), "--memory",
         code=128),
    Case("run-bug-missing", ("run", "--bug", "{missing}", "--kernel", "debian:6.1.0-54-cloud-amd64"), "unknown bug",
         code=128),
    Case("run-bug-binary-yaml", ("run", "--bug", "{badbug}", "--kernel", "debian:6.1.0-54-cloud-amd64"), "bug.yaml",
         code=128),
    # candidates
    Case("candidates-repo-not-git", ("candidates", "--bug", "gretap-ecn", "--good", "v5.6", "--bad", "v5.7",
                                     "--repo", "{notgit}"), "not a git repository"),
    Case("candidates-range-backwards", ("candidates", "--bug", "gretap-ecn", "--good", "5.7", "--bad", "5.6"),
         "is not older than"),
    Case("candidates-limit-zero", ("candidates", "--bug", "gretap-ecn", "--good", "5.6", "--bad", "5.7", "--limit", "0"),
         "--limit"),
    Case("candidates-mirror-garbage", ("candidates", "--bug", "gretap-ecn", "--good", "5.6", "--bad", "5.7",
                                       "--mirror", "{garbage}"), "no CHANGES"),
    Case("candidates-bug-binary-yaml", ("candidates", "--bug", "{badbug}", "--good", "5.6", "--bad", "5.7"), "bug.yaml"),
    # bugs list / show / verify
    Case("bugs-show-missing", ("bugs", "show", "no-such-bug"), "unknown bug"),
    Case("bugs-show-binary-yaml", ("bugs", "show", "{badbug}"), "bug.yaml"),
    Case("bugs-list-binary-catalog", ("bugs", "list"), "bug.yaml", setup=catalog_binary),
    Case("bugs-list-missing-catalog", ("bugs", "list"), "no such directory", setup=catalog_missing),
    Case("bugs-list-stdout-full", ("bugs", "list", "--json"), "No space left", setup=stdout_full),
    Case("verify-markdown-missing-dir", V + ("--kernel", "local:nope", "--markdown", "{out}/missing/x.md"),
         "no directory", setup=watch_missing_md),
    Case("verify-markdown-fifo", V + ("--kernel", "local:nope", "--markdown", "{fifo}"), "not a regular file"),
    Case("verify-markdown-directory", V + ("--kernel", "local:nope", "--markdown", "{dir}"), "is a directory"),
    Case("verify-markdown-full-disk", V + ("--plan", "--kernel", "local:nope", "--markdown", "{env:MD}"),
         "No space left", setup=full_markdown),
    Case("verify-markdown-blocks-full", V + ("--plan", "--kernel", "local:nope", "--markdown", "{env:MD}"),
         "cannot write: No space left", setup=blocks_full_markdown),
    Case("verify-kernel-garbage", V + ("--plan", "--kernel", "garbage", "--markdown", "{out}/proof.md"), "--kernel",
         setup=markdown_exists),
    Case("verify-bug-missing", ("bugs", "verify", "no-such-bug", "--plan"), "unknown bug"),
    # kernels list / fetch / show / patch
    Case("kernels-list-source-bogus", ("kernels", "list", "--source", "bogus"), "unknown kernel source"),
    Case("kernels-list-local-missing", ("kernels", "list", "--source", "local", "--mirror", "{missing}"), "does not exist"),
    Case("kernels-list-mirror-not-a-url", ("kernels", "list", "--mirror", "not a url"), "cannot reach"),
    Case("kernels-list-mirror-closed", ("kernels", "list", "--mirror", "{closed}"), "cannot reach"),
    Case("kernels-list-ubuntu-garbage", ("kernels", "list", "--source", "ubuntu", "--mirror", "{garbage}"), "not JSON"),
    Case("kernels-list-from-garbage", ("kernels", "list", "--from", "garbage"), "not a kernel version"),
    Case("kernels-list-keyring-fifo", ("kernels", "list", "--mirror", "{garbage}", "--keyring", "{fifo}"),
         "not a regular file"),
    Case("kernels-list-keyring-not-mainline", ("kernels", "list", "--source", "local", "--keyring", "{bin}"),
         "mainline source only"),
    Case("kernels-fetch-garbage-spec", F + ("mainline:5.x",), "not a mainline kernel version"),
    Case("kernels-fetch-mirror-garbage", F + ("mainline:5.7", "--mirror", "{garbage}"), "no directory v5.7/"),
    Case("kernels-fetch-local-escape", F + ("local:../../etc", "--mirror", "{local}"), "not a local kernel version"),
    Case("kernels-fetch-local-binary-deb", F + ("local:bindeb", "--mirror", "{local}"), "not a readable .deb"),
    Case("kernels-fetch-local-empty-deb", F + ("local:emptydeb", "--mirror", "{local}"), "not a readable .deb"),
    Case("kernels-fetch-local-truncated-deb", F + ("local:truncdeb", "--mirror", "{local}"), "linux-image"),
    Case("kernels-fetch-local-member-under-file", F + ("local:dupmember", "--mirror", "{local}"), "linux-image"),
    Case("kernels-fetch-local-file-then-dir", F + ("local:filethendir", "--mirror", "{local}"), "linux-image"),
    Case("kernels-fetch-local-no-kernel", F + ("local:nokernel", "--mirror", "{local}"), "neither .debs nor a vmlinuz"),
    Case("kernels-fetch-local-missing-dir", F + ("local:good", "--mirror", "{missing}"), "no directory"),
    Case("kernels-fetch-small-disk", F + ("local:big", "--mirror", "{local}"), "No space left", setup=small_home),
    Case("kernels-fetch-full-disk", F + ("local:good", "--mirror", "{local}"), "No space left", setup=full_home),
    Case("kernels-fetch-lock-held", F + ("local:good", "--mirror", "{local}"), "is held by pid {pid}",
         setup=held_unpack_lock),
    Case("kernels-fetch-lock-timeout-bad", F + ("local:good", "--mirror", "{local}"), "KBISECT_LOCK_TIMEOUT",
         setup=bad_lock_timeout),
    Case("kernels-fetch-keyring-not-mainline", F + ("local:good", "--mirror", "{local}", "--keyring", "{bin}"),
         "mainline source only"),
    Case("kernels-show-bad-source", ("kernels", "show", "garbage:1"), "unknown kernel source"),
    Case("kernels-show-not-cached", ("kernels", "show", "mainline:5.7"), "not in the cache"),
    Case("kernels-patch-binary", P + ("--patch", "{bin}"), "not UTF-8"),
    Case("kernels-patch-empty", P + ("--patch", "{empty}"), "patch"),
    Case("kernels-patch-huge", P + ("--patch", "{huge}"), "more than the"),
    Case("kernels-patch-fifo", P + ("--patch", "{fifo}"), "not a regular file"),
    Case("kernels-patch-directory", P + ("--patch", "{dir}"), "a directory"),
    Case("kernels-patch-base-garbage", ("kernels", "patch", "--base", "debian:", "--patch", "{patch}"), "--base"),
    Case("kernels-patch-name-escape", P + ("--patch", "{patch}", "--name", "../../x"), "bad variant name"),
    # sweep
    Case("sweep-line-bogus", ("sweep", "--line", "bogus"), "--line 'bogus'"),
    Case("sweep-jobs-zero", ("sweep", "--jobs", "0"), "--jobs"),
    Case("sweep-jobs-word", ("sweep", "--jobs", "many"), "--jobs"),
    Case("build-no-source", ("kernels", "build"), "give exactly one source"),
    Case("build-two-sources", ("kernels", "build", "--tree", "{dir}", "--linux-source", "6.1"), "exactly one source"),
    Case("build-rev-without-repo", ("kernels", "build", "--rev", "HEAD", "--linux-source", "6.1"), "--rev needs --repo"),
    Case("build-repo-without-rev", ("kernels", "build", "--repo", "{dir}"), "--repo needs --rev"),
    Case("build-tree-not-linux", ("kernels", "build", "--tree", "{dir}"), "not a Linux source tree"),
    Case("build-tree-missing", ("kernels", "build", "--tree", "{dir}/nope"), "no such directory"),
    Case("build-config-binary", ("kernels", "build", "--linux-source", "6.1", "--config", "{bin}"), "--config"),
    Case("build-config-fifo", ("kernels", "build", "--linux-source", "6.1", "--config", "{fifo}"), "--config"),
    Case("build-patch-binary", ("kernels", "build", "--linux-source", "6.1", "--patch", "{bin}"), "--patch"),
    Case("build-base-without-spec", ("kernels", "build", "--linux-source", "6.1", "--config", "base"),
         "--config base needs --base"),
    Case("build-line-bogus", ("kernels", "build", "--linux-source", "six"), "expected a kernel line"),
    Case("build-bug-missing", ("kernels", "build", "--linux-source", "6.1", "--bug", "no-such-bug"), "unknown bug"),
    Case("sweep-bug-missing", ("sweep", "--bug", "no-such-bug"), "unknown bug"),
    Case("sweep-kernel-garbage", ("sweep", "--kernel", "garbage"), "not a mainline kernel version"),
    Case("sweep-results-is-a-file", ("sweep", "--bug", "gretap-ecn", "--line", "6.1"), "results directory",
         setup=results_is_a_file),
    Case("sweep-options-before-history", ("sweep", "--json", "history"), "takes its own options"),
    Case("sweep-history-db-binary", ("sweep", "history"), "results database", setup=binary_results_db),
    Case("sweep-history-db-directory", ("sweep", "history"), "results database", setup=directory_results_db),
    Case("sweep-history-full-disk", ("sweep", "history"), "results database", setup=full_home),
    # housekeeping, and what every command shares
    Case("gc-connect-bogus", ("gc", "--connect", "nosuchdriver:///"), "cannot connect to libvirt"),
    Case("image-info-home-is-a-file", ("image", "info"), "not a directory", setup=home_is_a_file),
    Case("kernels-show-home-is-a-file", ("kernels", "show"), "not a directory", setup=home_is_a_file),
    Case("unknown-command", ("nosuch",), "No such command"),
    Case("unknown-option", ("kernels", "list", "--frobnicate"), "No such option"),
]


# ------------------------------------------------------------------------------ running them


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    errors: list[str]  # the `kbisect: error:` lines
    traceback: bool
    leftovers: list[str]
    changed: list[str]  # watched paths that were created or changed


def _garbage_handler():
    class Garbage(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = os.urandom(2048)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    return Garbage


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Iterator[Inputs]:
    with serve_handler(_garbage_handler()) as url:
        yield make_inputs(tmp_path_factory.mktemp("hostile-inputs"), url)


def _snapshot(paths: list[Path]) -> dict[Path, bytes | str | None]:
    state: dict[Path, bytes | str | None] = {}
    for path in paths:
        if path.is_dir():
            state[path] = "dir:" + ",".join(sorted(p.name for p in path.iterdir()))
        elif path.is_file():
            state[path] = path.read_bytes()
        else:
            state[path] = None
    return state


def _leftovers(roots: list[Path]) -> list[str]:
    found = []
    for root in roots:
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                if name.endswith(LEFTOVER_SUFFIXES) or any(m in name for m in LEFTOVER_MARKERS):
                    found.append(os.path.join(dirpath, name))
    return found


def _argv(case: Case, ctx: Ctx) -> list[str]:
    values = {**ctx.inputs.paths(), "home": str(ctx.home), "out": str(ctx.out), "results": str(ctx.results)}
    out = []
    for arg in case.argv:
        if arg.startswith("{env:"):
            out.append(ctx.env[arg[5:-1]])
        elif "{" in arg and "}" in arg and len(arg) < 200:
            out.append(arg.format(**values))
        else:
            out.append(arg)
    return out


def run_case(case: Case, inputs: Inputs, base: Path) -> Outcome:
    home, results, out = base / "home", base / "results", base / "out"
    for d in (home, results, out):
        d.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBISECT_")}
    env.update(KBISECT_HOME=str(home), KBISECT_RESULTS=str(results), KBISECT_LOCAL_DIR=str(out / "local"),
               KBISECT_MAINLINE_MIRROR=CLOSED + "mainline/", KBISECT_UBUNTU_MIRROR=CLOSED + "ubuntu/",
               KBISECT_DEBIAN_MIRROR=CLOSED + "debian/", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
               KBISECT_LOCK_TIMEOUT="5", COLUMNS="200")
    ctx = Ctx(home, results, out, inputs, env)
    try:
        if case.setup is not None:
            case.setup(ctx)
        watched = list(ctx.watched)
        before = _snapshot(watched)
        argv = _argv(case, ctx)
        stdout = open(ctx.stdout_path, "w") if ctx.stdout_path else subprocess.PIPE
        try:
            proc = subprocess.run([sys.executable, "-m", "orchestrator", *argv], cwd=REPO, env=ctx.env,
                                  stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE,
                                  timeout=CASE_TIMEOUT)
        except subprocess.TimeoutExpired as exc:  # a command that blocks (on a fifo, a lock) fails its case
            proc = subprocess.CompletedProcess(exc.cmd, -1, exc.stdout or b"",
                                               (exc.stderr or b"") + f"\n<timed out after {CASE_TIMEOUT} s>".encode())
        finally:
            if ctx.stdout_path:
                stdout.close()
        after = _snapshot(watched)
        roots = [home, results, out, Path(ctx.env["KBISECT_HOME"]), Path(ctx.env["KBISECT_RESULTS"])]
        leftovers = _leftovers([r for r in roots if r.is_dir()])
    finally:
        for cleanup in reversed(ctx.cleanups):
            cleanup()
    text_out = (proc.stdout or b"").decode(errors="replace")
    text_err = proc.stderr.decode(errors="replace")
    errors = [line for line in text_err.splitlines() if line.startswith("kbisect: error:")]
    return Outcome(proc.returncode, text_out, text_err, errors,
                   "Traceback" in text_out or "Traceback" in text_err, leftovers,
                   [str(p) for p in watched if before[p] != after[p]])


_OUTCOMES: dict[str, Outcome] = {}


def outcome_of(case: Case, inputs: Inputs, tmp_path_factory) -> Outcome:
    """Each case runs once per session, whether its own test or the figures asked first."""
    if case.id not in _OUTCOMES:
        _OUTCOMES[case.id] = run_case(case, inputs, tmp_path_factory.mktemp(case.id[:40]))
    return _OUTCOMES[case.id]


def check(case: Case, got: Outcome) -> list[str]:
    """What is wrong with one outcome (empty: the case passed)."""
    problems = []
    if got.traceback:
        problems.append("a traceback")
    if got.code != case.code:
        problems.append(f"exit {got.code}, expected {case.code}")
    if len(got.errors) != 1:
        problems.append(f"{len(got.errors)} `kbisect: error:` lines, expected exactly one")
    says = case.says.replace("{pid}", str(os.getpid()))
    if got.errors and says and says not in got.errors[0]:
        problems.append(f"the error line does not say {says!r}")
    if got.leftovers:
        problems.append(f"left behind: {got.leftovers}")
    if got.changed:
        problems.append(f"output created or changed: {got.changed}")
    return problems


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input_is_one_line(case: Case, inputs, tmp_path_factory) -> None:
    got = outcome_of(case, inputs, tmp_path_factory)
    problems = check(case, got)
    assert not problems, f"{case.id}: {'; '.join(problems)}\nstderr:\n{got.stderr[-3000:]}"
    assert "\n" not in got.errors[0] and len(got.errors[0]) <= 2100


def test_figures_hostile_inputs_and_tracebacks(inputs, tmp_path_factory) -> None:
    """The README's figure: hostile CLI inputs tried / tracebacks (goal >= 40 / 0)."""
    outcomes = {c.id: outcome_of(c, inputs, tmp_path_factory) for c in CASES}
    tracebacks = sorted(i for i, o in outcomes.items() if o.traceback)
    failing = sorted(c.id for c in CASES if check(c, outcomes[c.id]))
    tried = len(CASES)  # the damaged kernel.json tests below come on top (they must end in exit 0)
    print(f"hostile CLI inputs tried: {tried} / tracebacks: {len(tracebacks)} "
          f"(cases not yet one clean line: {len(failing)})")
    if tracebacks:
        print("tracebacks in: " + ", ".join(tracebacks))
    assert tried >= 40
    assert not tracebacks, tracebacks


# ------------------------------------------------------------------------------ damaged kernel.json

# A kernel.json is written last and atomically, but a power loss (or a disk that lies) can leave
# it empty or cut short. It marks no finished unpack: the kernel is unpacked again, once.
DAMAGES = {
    "empty": b"",
    "truncated": b'{"spec": "local:good", "id": "',
    "binary": bytes([0x98, 0xff, 0x00]) * 100,
    "a-list": b"[1, 2, 3]",
    "no-kver": b'{"spec": "local:good", "id": "x", "root": "/", "extra": {}}',
}


def _kbisect(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBISECT_")}
    env.update(KBISECT_HOME=str(home), KBISECT_MAINLINE_MIRROR=CLOSED, KBISECT_UBUNTU_MIRROR=CLOSED,
               KBISECT_DEBIAN_MIRROR=CLOSED, KBISECT_RESULTS=str(home / "results"))
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def _fetch(home: Path, local: str) -> subprocess.CompletedProcess:
    return _kbisect(home, "kernels", "fetch", "local:good", "--mirror", local, "--json")


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_kernel_json_is_unpacked_again_once(damage: str, inputs, tmp_path) -> None:
    home = tmp_path / "home"
    local = inputs.paths()["local"]
    first = _fetch(home, local)
    assert first.returncode == 0, first.stderr
    record = json.loads(first.stdout)
    manifest = Path(record["dir"]) / "kernel.json"
    manifest.write_bytes(DAMAGES[damage])

    again = _fetch(home, local)
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr and "kbisect: error:" not in again.stderr
    assert "damaged" in again.stderr  # said once, as a note
    assert json.loads(again.stdout) == record  # the same bytes: the same content id, the same place
    assert json.loads(manifest.read_text())["id"] == record["id"]  # a whole manifest again
    unpacked = (Path(record["dir"]) / "vmlinuz").stat().st_ino

    third = _fetch(home, local)  # the repair is not repeated
    assert third.returncode == 0 and "damaged" not in third.stderr, third.stderr
    assert (Path(record["dir"]) / "vmlinuz").stat().st_ino == unpacked  # not unpacked a third time
    assert _leftovers([home]) == []


def test_damaged_kernel_json_is_not_cached_for_show(inputs, tmp_path) -> None:
    """`kernels show` reads the cache only: a damaged record is no cached kernel, said so, and
    removed, so the next fetch unpacks instead of failing on it."""
    home = tmp_path / "home"
    local = inputs.paths()["local"]
    first = _fetch(home, local)
    manifest = Path(json.loads(first.stdout)["dir"]) / "kernel.json"
    manifest.write_bytes(b"")
    shown = _kbisect(home, "kernels", "show", "local:good")
    assert shown.returncode == 2 and "Traceback" not in shown.stderr
    assert [ln for ln in shown.stderr.splitlines() if ln.startswith("kbisect: error:")] == [
        "kbisect: error: local:good is not in the cache (kbisect kernels fetch local:good)"]
    assert not manifest.exists()
    listed = _kbisect(home, "kernels", "show", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == []


def test_damaged_kernel_json_outside_the_cache_is_left_alone(inputs, tmp_path_factory) -> None:
    """A kernel directory the user points at is theirs: `run --kernel DIR` reports its damaged
    kernel.json (exit 128, one line) and leaves the file where it is."""
    case = next(c for c in CASES if c.id == "run-kernel-damaged-dir")
    got = outcome_of(case, inputs, tmp_path_factory)
    assert not check(case, got), got.stderr
    assert "remove it and unpack the kernel again" in got.errors[0]
    assert (Path(inputs.paths()["damagedkernel"]) / "kernel.json").read_bytes() == b""


def test_provider_unpacks_again_after_a_damaged_manifest(kbisect_home) -> None:
    """The kernel provider (every bisection, sweep and run fetches through it) meets a damaged
    kernel.json in the cache: the loader removes it, the provider fetches once more, and that
    fetch finds an interrupted unpack and redoes it. A second damage is not retried forever."""
    from orchestrator.adapters.kernel import DamagedManifest, UnpackedKernel
    from orchestrator.app.kernels import KernelProvider
    from orchestrator.core.versions import KernelRef

    root = kbisect_home / "kernels" / "local" / "x"
    root.mkdir(parents=True)
    (root / "kernel.json").write_bytes(b'{"spec": "local:x", "kv')
    calls: list[str] = []

    def fetch_source(ref, mirror):  # what a source does: reuse a finished unpack, else unpack
        calls.append(str(ref))
        if (root / "kernel.json").exists():
            return UnpackedKernel.load(root)
        kernel = UnpackedKernel(KernelRef.of("local:x").with_id("id-1"), root, KVER)
        kernel.save()
        return kernel

    got = KernelProvider(fetch_source=fetch_source).get("local:x")
    assert (got.id, calls) == ("id-1", ["local:x", "local:x"])
    assert UnpackedKernel.load(root).id == "id-1"

    def always_damaged(ref, mirror):
        (root / "kernel.json").write_bytes(b"")
        return UnpackedKernel.load(root)

    with pytest.raises(DamagedManifest, match="damaged \\(empty\\)"):
        KernelProvider(fetch_source=always_damaged).get("local:x")
