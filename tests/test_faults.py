"""Every fault survived: SIGTERM and SIGKILL at each point where kbisect holds half-finished work.

For each point (download, unpack, image build, variant build, boot, run, store write) the command
is started in a subprocess and stopped the moment the point is *observed* (its staging file
appears, its domain appears in libvirt, its reproducer prints, its store write holds the lock),
never after a sleep:

- SIGTERM must be a clean stop: exit 143, one "kbisect: stopped by signal 15" line, no traceback,
  and nothing left behind even before `kbisect gc`;
- SIGKILL runs no cleanup at all: afterwards `kbisect gc` must remove what was left (and say so),
  libvirt's AUTODESTROY must already have taken the domain, and the same command run again must
  succeed (a resumed bisection repeating no finished probe).

The download and unpack points run against a local mainline mirror on 127.0.0.1 (tests/
mainline_mirror.py) whose packages can be served slowly; the unpack is held at its scratch file by
an `unzstd` shim on PATH that waits for a gate file. The store point drives a whole bisection with
fake probes (app.deps.provided, as tests/test_differential.py does) through the real Store. The
image and variant points build for real (root, mmdebstrap, apt); boot and run boot the 6.1 kernel
the shared test cache holds (5 boots in this file). The figures (kill points / leaked domains /
leaked files / repeated probes) are printed at the end of the module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import http.server
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import pytest

from tests.localhttp import serve_handler
from tests.mainline_mirror import Build, Release, write_release, write_top

REPO = Path(__file__).resolve().parent.parent
URI = "qemu:///system"
KERNEL = "debian:6.1.0-54-cloud-amd64"
BASE_VARIANT = "gretap-ecn/controls/revert-227adfb2b1df.patch"
STOPPED = "kbisect: stopped by signal 15"
OBSERVE = 900  # seconds to wait for a point to be reached (a cold cache downloads first)

pytestmark = [pytest.mark.timeout(3600)]


# -- the figures --------------------------------------------------------------------------

@dataclass
class Figures:
    points: set[str] = field(default_factory=set)  # points where both SIGTERM and SIGKILL were survived
    tried: set[str] = field(default_factory=set)
    leaked_domains: list[str] = field(default_factory=list)
    leaked_files: list[str] = field(default_factory=list)
    repeated_probes: int = 0

    def line(self) -> str:
        return (f"kill points {len(self.points)} (of {len(self.tried)} tried: {', '.join(sorted(self.tried))}) / "
                f"leaked domains {len(self.leaked_domains)} / leaked files {len(self.leaked_files)} / "
                f"repeated probes {self.repeated_probes}")


FIGURES = Figures()


@pytest.fixture(scope="module", autouse=True)
def _report_figures(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    text = "fault figures: " + FIGURES.line()
    if reporter is not None:
        reporter.write_line("")
        reporter.write_line(text)
    print(text, file=sys.stderr)


# -- running and stopping kbisect ---------------------------------------------------------

def _env(home: Path, results: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, KBISECT_HOME=str(home), KBISECT_RESULTS=str(results), PYTHONPATH=str(REPO),
               NO_PROXY="127.0.0.1,localhost")
    env.update(extra)
    return env


class Cmd:
    """One kbisect process, its stderr kept in a file (a pipe nobody reads could block it)."""

    def __init__(self, argv: list[str], env: dict[str, str], logs: Path, name: str) -> None:
        logs.mkdir(parents=True, exist_ok=True)
        self.err_path = logs / f"{name}.err"
        self.out_path = logs / f"{name}.out"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=out, stderr=err)
        self.pid = self.proc.pid

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def until(self, what: str, check: Callable[[], object], timeout: float = OBSERVE) -> object:
        """Poll `check` until it gives something true; the process ending first is a failure."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = check()
            if got:
                return got
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode} before {what}:\n{self.stderr[-3000:]}")
            time.sleep(0.02)
        self.proc.kill()
        raise AssertionError(f"{what} not observed in {timeout} s:\n{self.stderr[-3000:]}")

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=600)

    def kill(self) -> None:
        """SIGKILL the kbisect process only (as the OOM killer would); its orphaned children (apt,
        mmdebstrap, make, unzstd) are waited for, since gc rightly keeps what they still use."""
        children = _descendants(self.pid)
        self.proc.kill()
        self.proc.wait(timeout=60)
        deadline = time.monotonic() + 900
        while children and time.monotonic() < deadline:
            children = {p for p in children if Path(f"/proc/{p}").exists() and not _zombie(p)}
            time.sleep(0.1)
        assert not children, f"children of the killed kbisect still running: {children}"


def kbisect(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator", *args]


def _ppid_map() -> dict[int, int]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            out[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def _descendants(pid: int) -> set[int]:
    parents = _ppid_map()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _assert_clean_stop(cmd: Cmd, rc: int) -> None:
    err = cmd.stderr
    assert rc == 143, f"SIGTERM gave exit {rc}, not 143:\n{err[-3000:]}"
    assert err.count("stopped by signal") == 1 and STOPPED in err, err[-3000:]
    assert "Traceback" not in err, err[-3000:]


def _gc(env: dict[str, str]) -> list[str]:
    proc = subprocess.run(kbisect("gc", "--connect", URI), env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert re.search(r"\bremoved (\d+)\b", lines[-1]), lines  # the total, `removed 0` when nothing
    return lines


def _rerun(argv: list[str], env: dict[str, str], logs: Path, name: str) -> Cmd:
    cmd = Cmd(argv, env, logs, name)
    rc = cmd.proc.wait(timeout=3600)
    assert rc == 0, f"the same command again failed (exit {rc}):\n{cmd.stderr[-3000:]}"
    return cmd


# -- what must not be left -------------------------------------------------------------------

_STAGING = re.compile(r"(\.part|\.partial|\.data\.tar|\.tmp)$|\.(work|dl|tmp|old)-|^\.apt-|\.build-")


# Directories whose entries are checked by name but never entered: kernel source trees, build
# directories, git worktrees, test histories and ccache hold tens of thousands of files whose
# names carry numbers (sound/isa/cs423x, wpcm450...) that a pid can equal; kbisect never puts
# a process's staging inside them, only beside them.
_OPAQUE_PARENTS = {"src", "worktrees", "obj", "test-repos", "ccache"}


def _walk(top: Path):
    for root, dirs, files in os.walk(top):
        here = Path(root)
        for name in dirs + files:
            yield here / name
        if here.name in _OPAQUE_PARENTS:  # its entries were yielded; their contents are not staging
            dirs[:] = []
            continue
        dirs[:] = [d for d in dirs if d not in ("modules", "lists") and not os.path.ismount(os.path.join(root, d))]


def leftovers(home: Path, pid: int, targets: tuple[Path, ...] = (), private: bool = False) -> list[str]:
    """Staging of the process `pid` under `home`: anything named with its pid, its run directory,
    and for each target (a kernel or variant directory) its `.partial`, a copy without kernel.json
    and its variant workspace. In a private home every staging-looking name counts."""
    token = re.compile(rf"(?<!\d){pid}(?!\d)")
    found = []
    for path in _walk(home):
        if path.name.endswith(".lock"):
            continue
        if token.search(path.name) or (private and _STAGING.search(path.name)):
            found.append(str(path))
    for state in (home / "runs").glob("*/state.json"):
        try:
            if json.loads(state.read_text()).get("pid") == pid:
                found.append(str(state.parent))
        except (OSError, ValueError):
            found.append(str(state))
    for target in targets:
        if target.with_name(target.name + ".partial").exists():
            found.append(str(target) + ".partial")
        if target.exists() and not (target / "kernel.json").exists():
            found.append(f"{target} (no kernel.json)")
        found += [str(p) for p in (home / "variants").glob(f".{target.name}.work-*")]
    return sorted(set(found))


def _orphans_gone(path: Path, limit: float = 180.0) -> None:
    """Wait until no process has files under `path`: gc leaves a dead owner's staging alone while
    an orphan of it (mmdebstrap's apt, make's gcc) still writes there. Tools run under setpriv's
    parent-death signal (fsutil.dies_with_us), so the direct child dies with kbisect and only its
    own children can linger, briefly: the wait is bounded and a hang fails the test."""
    from orchestrator.adapters.fsutil import in_use

    deadline = time.monotonic() + limit
    while in_use(path):
        assert time.monotonic() < deadline, f"processes still use {path} {limit:.0f}s after the kill"
        time.sleep(0.5)


def _no_leftovers(home: Path, pid: int, when: str, **kw) -> None:
    left = leftovers(home, pid, **kw)
    FIGURES.leaked_files += left
    assert not left, f"left behind {when}: {left}"


# -- libvirt --------------------------------------------------------------------------------

def _domains() -> dict[str, int | None]:
    """kbisect domains on the URI and their owner pid."""
    import libvirt

    from orchestrator.adapters.guest import vm

    conn = vm.connect(URI)
    try:
        out = {}
        for dom in conn.listAllDomains(0):
            if dom.name().startswith(vm.PREFIX):
                try:
                    m = vm.OWNER_RE.search(dom.XMLDesc(0))
                except libvirt.libvirtError:
                    continue
                out[dom.name()] = int(m.group(1)) if m else None
        return out
    finally:
        conn.close()


def _domain_of(pid: int) -> str | None:
    return next((name for name, owner in _domains().items() if owner == pid), None)


def _port_of(name: str) -> int:
    """The 127.0.0.1 port QEMU forwards to the guest's SSH (the domain XML's hostfwd)."""
    out = subprocess.run(["virsh", "-c", URI, "dumpxml", name], capture_output=True, text=True).stdout
    m = re.search(r"hostfwd=tcp:127\.0\.0\.1:(\d+)-:22", out)
    assert m, f"no port forward in {name}'s XML"
    return int(m.group(1))


def _port_free(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _gone(name: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if name not in _domains():
            return True
        time.sleep(0.5)
    return False


def _no_domain(name: str, port: int, when: str, timeout: float) -> None:
    """The domain is gone (within `timeout`: libvirt reaps asynchronously) and its port is free."""
    if not _gone(name, timeout):
        FIGURES.leaked_domains.append(name)
        subprocess.run(["virsh", "-c", URI, "destroy", name], capture_output=True)
        raise AssertionError(f"domain {name} still there {when}")
    assert _port_free(port), f"port {port} of {name} still bound {when}"


# -- a local mainline mirror that can serve slowly ------------------------------------------------

MAINLINE = "5.7.2"
KVER = "5.7.2-050702-generic"


def _mirror_tree(www: Path, work: Path) -> None:
    """v5.7.2 per-arch, zstd packages (data.tar.zst, /usr/lib/modules, as recent builds are); the
    image carries 3 MiB of incompressible bytes so that a throttled download lasts."""
    from tests.test_mirror import build_deb

    stamp, pkgver = "202006101234", "5.7.2-050702.202006101234"
    vmlinuz = b"MZ fake bzImage fault\n" + os.urandom(3 << 20)
    image = build_deb(work, f"linux-image-unsigned-{KVER}", pkgver, {f"boot/vmlinuz-{KVER}": vmlinuz},
                      compression="zstd")
    modules = build_deb(work, f"linux-modules-{KVER}", pkgver, {
        f"boot/config-{KVER}": b"CONFIG_VETH=m\n",
        f"usr/lib/modules/{KVER}/kernel/drivers/net/veth.ko": b"\x7fELF veth fault",
        f"usr/lib/modules/{KVER}/modules.order": b"kernel/drivers/net/veth.ko\n"}, compression="zstd")
    release = Release("v5.7.2", [Build(stamp, {image.name: image.read_bytes(), modules.name: modules.read_bytes()})])
    root = www / "mainline"
    write_release(root, release)
    write_top(root, [release])


class _Throttled(http.server.SimpleHTTPRequestHandler):
    """Serves the tree; while the server's `slow` event is set, .deb bodies trickle (4 KiB / 50 ms)."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if not (self.server.slow.is_set() and self.path.endswith(".deb")):
            super().do_GET()
            return
        data = Path(self.translate_path(self.path)).read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            for start in range(0, len(data), 4096):
                self.wfile.write(data[start:start + 4096])
                self.wfile.flush()
                time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):  # the client was stopped: what this is for
            pass


@pytest.fixture(scope="module")
def slow_mirror(tmp_path_factory):
    base = tmp_path_factory.mktemp("fault-mirror")
    _mirror_tree(base / "www", base / "debs")
    slow = threading.Event()
    with serve_handler(partial(_Throttled, directory=str(base / "www")), "mainline/", slow=slow) as url:
        yield url, slow


def _unzstd_shim(directory: Path, gate: Path) -> Path:
    """An `unzstd` that waits for `gate` (or its parent's death) before running the real one, so an
    unpack is held with its scratch file and staging directory in place."""
    real = shutil.which("unzstd")
    assert real, "unzstd is installed by setup.sh"
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "unzstd"
    shim.write_text("#!/bin/sh\n# tests/test_faults.py: hold the unpack until the test opens the gate\n"
                    f'while [ ! -e "{gate}" ] && kill -0 "$PPID" 2>/dev/null; do sleep 0.05; done\n'
                    f'exec "{real}" "$@"\n')
    shim.chmod(0o755)
    return directory


def _fetch_argv(url: str) -> list[str]:
    return kbisect("kernels", "fetch", f"mainline:{MAINLINE}", "--mirror", url)


def _glob(directory: Path, pattern: str) -> Callable[[], list[Path]]:
    return lambda: sorted(directory.glob(pattern)) if directory.is_dir() else []


# -- download and unpack ----------------------------------------------------------------------

def test_download_killed(slow_mirror, tmp_path):
    url, slow = slow_mirror
    home, results, logs = tmp_path / "home", tmp_path / "results", tmp_path / "logs"
    env = _env(home, results)
    downloads = home / "downloads" / "mainline"
    target = home / "kernels" / "mainline" / MAINLINE
    FIGURES.tried.add("download")
    slow.set()
    try:
        term = Cmd(_fetch_argv(url), env, logs, "term")
        term.until("a .part download", _glob(downloads, ".*.part"))
        _assert_clean_stop(term, term.terminate())
        _no_leftovers(home, term.pid, "by a SIGTERMed download", targets=(target,), private=True)

        killed = Cmd(_fetch_argv(url), env, logs, "kill")
        part = killed.until("a .part download", _glob(downloads, f".*.{killed.pid}.part"))[0]
        killed.kill()
        assert part.exists()  # SIGKILL ran no cleanup: this is gc's to remove
    finally:
        slow.clear()
    report = _gc(env)
    assert any(str(part) in line for line in report), report
    _no_leftovers(home, killed.pid, "after SIGKILL and gc", targets=(target,), private=True)
    done = _rerun(_fetch_argv(url), env, logs, "rerun")
    assert Path(done.stdout.strip()) == target and (target / "kernel.json").is_file()
    FIGURES.points.add("download")


def test_unpack_killed(slow_mirror, tmp_path):
    url, _slow = slow_mirror
    home, results, logs = tmp_path / "home", tmp_path / "results", tmp_path / "logs"
    gate = tmp_path / "gate-open"
    env = _env(home, results, PATH=f"{_unzstd_shim(tmp_path / 'shim', gate)}:{os.environ['PATH']}")
    kernels = home / "kernels" / "mainline"
    target = kernels / MAINLINE
    FIGURES.tried.add("unpack")

    term = Cmd(_fetch_argv(url), env, logs, "term")
    term.until("the unpack's scratch file", _glob(kernels, ".*.data.tar"))
    assert target.with_name(MAINLINE + ".partial").is_dir()
    _assert_clean_stop(term, term.terminate())
    _no_leftovers(home, term.pid, "by a SIGTERMed unpack", targets=(target,), private=True)

    killed = Cmd(_fetch_argv(url), env, logs, "kill")
    scratch = killed.until("the unpack's scratch file", _glob(kernels, f".*.{killed.pid}.data.tar"))[0]
    killed.kill()
    assert scratch.exists() and target.with_name(MAINLINE + ".partial").is_dir()  # left for gc
    report = _gc(env)
    assert any(str(scratch) in line for line in report) and any(".partial" in line for line in report), report
    _no_leftovers(home, killed.pid, "after SIGKILL and gc", targets=(target,), private=True)
    gate.touch()
    done = _rerun(_fetch_argv(url), env, logs, "rerun")
    assert Path(done.stdout.strip()) == target and (target / "kernel.json").is_file()
    FIGURES.points.add("unpack")


# -- store write: a bisection killed while its store holds the write lock -----------------------

HOLDING = """
import sys, time
from pathlib import Path
from orchestrator.adapters.store import Store
from orchestrator.app.bisect import BisectDeps
from orchestrator.app.deps import provided
from orchestrator.core.verdict import ProbeRecord, Verdict
from tests.gretap_history import verdict

calls, hold_at, marker = open(sys.argv[1], "a"), int(sys.argv[2]), Path(sys.argv[3])


class HoldingStore(Store):
    \"\"\"The real store, whose `hold_at`-th write stops inside its transaction with the write lock.\"\"\"

    writes = 0

    def put(self, *args, **kw):
        HoldingStore.writes += 1
        if HoldingStore.writes == hold_at:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute("UPDATE probes SET reason = reason || ''")
            marker.write_text("holding the write lock")
            time.sleep(3600)
        super().put(*args, **kw)


def real_probe(bug, mirror):
    def probe(spec):
        calls.write(spec + "\\n")
        calls.flush()
        return ProbeRecord(spec, bug.id, Verdict(verdict(spec.split(":", 1)[1])), "simulated boot", {"run": 0.01})
    return probe


from orchestrator.cli import main

with provided(BisectDeps(real_probe=real_probe, kernel_ids=lambda mirror: lambda spec: "id-" + spec,
                         store=HoldingStore)):
    main(sys.argv[4:])
"""


def _rows(db: Path) -> dict[tuple[str, int], float]:
    con = sqlite3.connect(db)
    try:
        return {(k, s): t for k, s, t in con.execute("SELECT kernel, seq, stored_at FROM probes")}
    finally:
        con.close()


def _integrity(db: Path) -> str:
    con = sqlite3.connect(db)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def _repeated(before: dict, after: dict, calls: list[str], in_flight: int = 0) -> int:
    """Finished probes done again: stored rows rewritten, or more probe calls than new rows (but
    the `in_flight` probe a killed attempt ran and never stored: redoing that one is right)."""
    rewritten = sum(1 for key, stamp in before.items() if after.get(key) != stamp)
    return rewritten + max(0, len(calls) - in_flight - (len(after) - len(before)))


def test_store_write_killed(tmp_path):
    from tests.bisect_mirror import build_mirror, serve
    from tests.gretap_history import UNAVAILABLE, mainline_versions, verdict

    home, results, logs = tmp_path / "home", tmp_path / "results", tmp_path / "logs"
    env = _env(home, results)
    db = home / "results.db"
    script = tmp_path / "holding.py"
    script.write_text(HOLDING)
    vfile = tmp_path / "verdicts.yaml"
    vfile.write_text("".join(f'"mainline:{v}": {verdict(v)}\n' for v in mainline_versions()
                             if "-rc" not in v and v.count(".") == 1))
    FIGURES.tried.add("store write")
    root = build_mirror(tmp_path / "mirror" / "mainline", mainline_versions(), UNAVAILABLE)
    with serve(root) as url:
        args = ["bisect", "--bug", "gretap-ecn", "--good", "4.15", "--bad", "5.4", "--mirror", url,
                "--verdicts", str(vfile), "--json"]

        def attempt(name: str, hold_at: int) -> tuple[Cmd, Path, Path]:
            calls, marker = logs / f"{name}.calls", logs / f"{name}.holding"
            logs.mkdir(parents=True, exist_ok=True)
            calls.touch()
            return Cmd([sys.executable, str(script), str(calls), str(hold_at), str(marker), *args], env, logs,
                       name), calls, marker

        term, calls1, marker = attempt("term", 4)
        term.until("the store holding its write lock", marker.exists, timeout=300)
        _assert_clean_stop(term, term.terminate())
        assert _integrity(db) == "ok"
        after_term = _rows(db)
        # four probes ran; the 4th was in its uncommitted write: rolled back, not half-stored
        assert (len(after_term), len(calls1.read_text().split())) == (3, 4)
        FIGURES.repeated_probes += _repeated({}, after_term, calls1.read_text().split(), in_flight=1)
        _no_leftovers(home, term.pid, "by a SIGTERMed store write", private=True)

        killed, calls2, marker = attempt("kill", 4)
        killed.until("the store holding its write lock", marker.exists, timeout=300)
        killed.kill()
        assert _integrity(db) == "ok"
        before = _rows(db)
        repeated = _repeated(after_term, before, calls2.read_text().split(), in_flight=1)
        FIGURES.repeated_probes += repeated
        assert repeated == 0, "the resumed (then killed) bisection repeated a finished probe"
        _gc(env)
        _no_leftovers(home, killed.pid, "after SIGKILL and gc", private=True)

        calls3 = logs / "rerun.calls"
        rerun = _rerun([sys.executable, str(script), str(calls3), "0", str(logs / "never"), *args], env, logs,
                       "rerun")
        data = json.loads(rerun.stdout)
        assert (data["first_bad"], data["origin"]) == ("5.4.41", "stable-backport")
        after = _rows(db)
        repeated = _repeated(before, after, calls3.read_text().split())
        FIGURES.repeated_probes += repeated
        assert repeated == 0, "a resumed bisection repeated a finished probe"
        assert len(before) > len(after_term) and data["counts"]["store"] >= len(before)
    FIGURES.points.add("store write")


# -- image build (root, mmdebstrap, the machine's apt sources) --------------------------------------

def _builds(images: Path, pid: int) -> Callable[[], list[Path]]:
    return _glob(images, f"*.build-{pid}")


@pytest.mark.vm  # the slow tier: a real root image build (~2 minutes)
@pytest.mark.registry
def test_image_build_killed(vm_host, tmp_path):
    """mmdebstrap needs root, as the VM tests do (conftest.vm_host: a failure in CI, a named skip
    elsewhere)."""
    home, results, logs = tmp_path / "home", tmp_path / "results", tmp_path / "logs"
    env = _env(home, results)
    images = home / "images"
    FIGURES.tried.add("image build")

    term = Cmd(kbisect("image", "build"), env, logs, "term")
    term.until("the image's staging directory", _builds(images, term.pid))
    _assert_clean_stop(term, term.terminate())
    _no_leftovers(home, term.pid, "by a SIGTERMed image build", private=True)

    killed = Cmd(kbisect("image", "build"), env, logs, "kill")
    staging = killed.until("the image's staging directory", _builds(images, killed.pid))[0]
    killed.kill()
    _orphans_gone(staging)
    report = _gc(env)
    assert any(str(staging) in line for line in report), report
    _no_leftovers(home, killed.pid, "after SIGKILL and gc", private=True)
    assert not [m for m in Path("/proc/self/mountinfo").read_text().splitlines() if str(home) in m]
    done = _rerun(kbisect("image", "build"), env, logs, "rerun")
    assert Path(done.stdout.strip()).is_file()
    FIGURES.points.add("image build")


# -- variant build (the shared cache's base kernel and packages) ------------------------------------

@pytest.mark.vm  # the slow tier: a real module build
@pytest.mark.registry
def test_variant_build_killed(vm_host, shared_home, tmp_path):
    """`kbisect kernels patch` under a name no other test uses, so it always builds; the result is
    removed afterwards so the next run builds (and can be killed) again."""
    name = "fault-kill"
    dest = shared_home / "kernels" / "debian" / f"{KERNEL.split(':', 1)[1]}+{name}"
    patch = REPO / "reproducers" / BASE_VARIANT
    argv = kbisect("kernels", "patch", "--base", KERNEL, "--patch", str(patch), "--name", name)
    env = _env(shared_home, tmp_path / "results")
    logs = tmp_path / "logs"
    work = _glob(shared_home / "variants", f".{dest.name}.work-*")
    shutil.rmtree(dest, ignore_errors=True)
    FIGURES.tried.add("variant build")
    try:
        term = Cmd(argv, env, logs, "term")
        term.until("the variant's workspace", work)
        _assert_clean_stop(term, term.terminate())
        _no_leftovers(shared_home, term.pid, "by a SIGTERMed variant build", targets=(dest,))

        killed = Cmd(argv, env, logs, "kill")
        staging = killed.until("the variant's workspace", work)[0]
        killed.kill()
        assert staging.exists()
        _orphans_gone(staging)
        report = _gc(env)
        assert any(str(staging) in line for line in report), report
        _no_leftovers(shared_home, killed.pid, "after SIGKILL and gc", targets=(dest,))
        _rerun(argv, env, logs, "rerun")
        assert (dest / "kernel.json").is_file()
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    FIGURES.points.add("variant build")


# -- boot and run (5 boots of the shared cache's 6.1 kernel) ---------------------------------------

RUN_SH = 'echo "fault-first-line"\nsleep 15\necho "fault ok"\n'


@pytest.mark.vm
def test_boot_and_run_killed(vm_host, shared_home, tmp_path):
    """Kill at the boot (the domain appears) and at the run (the reproducer's first line): the
    domain is gone at once after SIGTERM, and after SIGKILL before gc (AUTODESTROY); gc removes
    the run directory; the same command then succeeds."""
    repro = tmp_path / "fault-repro"
    repro.mkdir()
    (repro / "run.sh").write_text(RUN_SH)
    argv = kbisect("run", "--bug", str(repro), "--kernel", KERNEL, "--connect", URI)
    env = _env(shared_home, tmp_path / "results")
    logs = tmp_path / "logs"
    # the kernel and image come from the shared cache (fetched here on an empty one, before any kill)
    subprocess.run(kbisect("kernels", "fetch", KERNEL), env=env, cwd=REPO, capture_output=True, check=True,
                   timeout=1800)
    points = {
        "boot": lambda cmd: _domain_of(cmd.pid),
        "run": lambda cmd: "fault-first-line" in cmd.stderr and _domain_of(cmd.pid),
    }
    for point, reached in points.items():
        FIGURES.tried.add(point)
        term = Cmd(argv, env, logs, f"{point}-term")
        name = term.until(f"the {point}", lambda: reached(term))
        port = _port_of(name)
        _assert_clean_stop(term, term.terminate())
        _no_domain(name, port, f"after SIGTERM at the {point}", timeout=30)
        _no_leftovers(shared_home, term.pid, f"by a SIGTERM at the {point}")

        killed = Cmd(argv, env, logs, f"{point}-kill")
        name = killed.until(f"the {point}", lambda: reached(killed))
        port = _port_of(name)
        killed.kill()
        _no_domain(name, port, f"after SIGKILL at the {point}, before gc (AUTODESTROY)", timeout=120)
        _gc(env)  # (another kbisect starting meanwhile may have reaped the run directory first)
        _no_leftovers(shared_home, killed.pid, f"after SIGKILL at the {point} and gc")
    done = _rerun(argv, env, logs, "rerun")
    assert "fault ok" in done.stderr
    FIGURES.points.update(points)
