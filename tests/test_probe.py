"""Real boots (slow tier, `-m vm`): kernels of three Debian lines, every verdict path, no leaks.

Kernels come through `orchestrator.sources.fetch` into the shared test cache, as does the root
image, so a second run boots straight away; from an empty cache the first test builds both.
Reproducers are written into tmp_path by each test and run through the same Python API the
bisection engine calls (`run_probe` / `run_probe_kernel`) or through the CLI.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.core.bug import Bug
from orchestrator.core.verdict import Verdict

REPO = Path(__file__).resolve().parent.parent
KERNELS = {
    "5.10": "debian:5.10.0-32-cloud-amd64",
    "6.1": "debian:6.1.0-54-cloud-amd64",
    "6.12": "debian:6.12.43+deb12-cloud-amd64",
}
URI = "qemu:///system"

pytestmark = [pytest.mark.vm, pytest.mark.timeout(900)]

GOOD_SH = """\
set -e
echo "kernel $(uname -r)"
modprobe veth
ip link add v0 type veth peer name v1
ip link add g0 type gretap local 10.0.2.15 remote 10.0.2.2
python3 -c 'import socket; print("python ok")'
mkdir -p out
uname -r > out/uname.txt
echo "ok on $(uname -r)"
"""


def _bug(tmp_path: Path, name: str, script: str, timeout: int = 60) -> Bug:
    d = tmp_path / name
    d.mkdir()
    (d / "run.sh").write_text(script)
    return Bug(id=name, dir=d, timeout=timeout)


def _domains() -> list[tuple[str, str]]:
    """(name, description) of every kbisect domain on the URI."""
    import libvirt

    from orchestrator.adapters.guest import vm

    conn = vm.connect(URI)
    try:
        out = []
        for dom in conn.listAllDomains(0):
            if dom.name().startswith(vm.PREFIX):
                try:
                    out.append((dom.name(), dom.XMLDesc(0)))
                except libvirt.libvirtError:
                    pass
        return out
    finally:
        conn.close()


def _ours_or_orphaned() -> list[str]:
    """kbisect domains owned by this process or by a dead one (other live runs on a shared host
    are not ours to judge)."""
    from orchestrator.adapters.guest import vm

    bad = []
    for name, desc in _domains():
        m = vm.OWNER_RE.search(desc)
        if not m or int(m.group(1)) == os.getpid() or not vm.owner_alive(int(m.group(1)), int(m.group(2))):
            bad.append(name)
    return bad


def _base_image_fingerprint() -> tuple[str, str] | None:
    import hashlib

    from orchestrator.adapters.guest import image

    img = image.cached()
    if img is None:
        return None
    h = hashlib.sha256()
    with open(img.path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return str(img.path), h.hexdigest()


@pytest.fixture(scope="module", autouse=True)
def _no_leaks(shared_home):
    before = _base_image_fingerprint()
    yield
    from orchestrator.adapters.guest import vm as vmmod

    # Every VM wrote to its own overlay: the shared base image is byte-for-byte unchanged.
    after = _base_image_fingerprint()
    if before is not None and after is not None and before[0] == after[0]:
        assert before == after, "the base root image changed"
    # No libvirt network was started (QEMU user networking only).
    conn = vmmod.connect(URI)
    try:
        assert "default" not in conn.listNetworks(), "a libvirt network is active"
    finally:
        conn.close()

    vmmod.wait_pending()  # probes hand libvirt's slow domain stop to a tracked thread
    assert _ours_or_orphaned() == [], "kbisect domains left behind"
    leftover = [p for p in (shared_home / "runs").glob("*/vm-*/overlay.qcow2")]
    assert all(vmmod.owner_alive(*_run_owner(p.parent.parent)) for p in leftover), leftover


def _run_owner(run_dir: Path) -> tuple[int, int | None]:
    st = json.loads((run_dir / "state.json").read_text())
    return int(st["pid"]), st.get("start")


def _kernel(spec: str):
    from orchestrator.adapters import sources

    return sources.fetch(spec)


def _probe(kernel_spec_or_obj, bug: Bug, **kw):
    from orchestrator.adapters.guest import probe
    from orchestrator.app import run

    kw.setdefault("uri", URI)
    kw.setdefault("progress", False)
    if isinstance(kernel_spec_or_obj, str):
        return run.run_probe(kernel_spec_or_obj, bug, **kw)
    return probe.run_probe_kernel(kernel_spec_or_obj, bug, **kw)


def _assert_phases(rec, with_run: bool = True) -> None:
    want = ["prepare", "boot", "teardown"] + (["upload", "run"] if with_run else [])
    for p in want:
        assert p in rec.phases and rec.phases[p] >= 0, (p, rec.phases)
    assert rec.phases["boot"] > 0


@pytest.mark.parametrize("line", ["5.10", "6.12"])
def test_debian_lines_boot_and_answer_good(shared_home, tmp_path, line):
    bug = _bug(tmp_path, f"good-{line}", GOOD_SH)
    rec = _probe(KERNELS[line], bug)
    kver = KERNELS[line].split(":", 1)[1]
    assert rec.verdict is Verdict.GOOD, (rec.reason, rec.output, rec.console_excerpt)
    assert rec.reason == f"ok on {kver}"
    assert "python ok" in rec.output
    _assert_phases(rec)
    names = {Path(a).name for a in rec.artefacts}
    assert {"console.log", "dmesg.txt", "uname.txt"} <= names
    uname = next(a for a in rec.artefacts if a.endswith("uname.txt"))
    assert Path(uname).read_text().strip() == kver


def test_cli_run_json_good_on_6_1(shared_home, tmp_path):
    """The issue's acceptance command, through the real CLI."""
    repro = tmp_path / "repro"
    repro.mkdir()
    (repro / "run.sh").write_text(GOOD_SH)
    env = dict(os.environ, KBISECT_HOME=str(shared_home))
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", "--bug", str(repro), "--kernel", KERNELS["6.1"], "--json"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rec = json.loads(r.stdout)
    assert rec["verdict"] == "good" and rec["kernel"] == KERNELS["6.1"]
    assert rec["reason"] == "ok on 6.1.0-54-cloud-amd64"
    assert set(rec["phases"]) >= {"prepare", "boot", "upload", "run", "teardown"}
    assert "GOOD" in r.stderr  # progress and verdict line go to stderr, JSON alone to stdout
    print(f"6.1 CLI probe: {time.monotonic() - t0:.1f}s phases {rec['phases']}")


def test_panic_is_bad_with_excerpt(shared_home, tmp_path):
    bug = _bug(tmp_path, "panic", "echo crashing now\nsync\necho c > /proc/sysrq-trigger\nsleep 60\n")
    t0 = time.monotonic()
    rec = _probe(KERNELS["6.1"], bug)
    assert rec.verdict is Verdict.BAD, rec.reason
    assert rec.reason.startswith("kernel panic:") and "sysrq" in rec.reason
    assert "Kernel panic - not syncing" in rec.console_excerpt
    assert rec.phases["run"] < 20  # pvpanic ends the run at once, not at the 60 s timeout
    assert time.monotonic() - t0 < 120


def test_console_warning_during_run_is_bad(shared_home, tmp_path):
    """A kernel trace on the console during the run wins over the reproducer's exit 0."""
    script = (
        "echo '<4>WARNING: CPU: 0 PID: 1 at net/core/dev.c:1 kbisect_test+0x0/0x10' > /dev/kmsg\n"
        "sleep 1\necho exiting 0\nexit 0\n"
    )
    rec = _probe(KERNELS["6.1"], _bug(tmp_path, "warn", script))
    assert rec.verdict is Verdict.BAD, rec.reason
    assert rec.reason.startswith("kernel trace: WARNING: CPU: 0")
    assert "kbisect_test" in rec.console_excerpt


def test_exit_1_is_bad_with_last_line(shared_home, tmp_path):
    rec = _probe(KERNELS["6.1"], _bug(tmp_path, "exit1", "echo probing\necho 'ecn bit lost on decap'\nexit 1\n"))
    assert rec.verdict is Verdict.BAD and rec.reason == "ecn bit lost on decap"
    assert rec.console_excerpt == ""


def test_hang_is_skip_after_timeout(shared_home, tmp_path):
    rec = _probe(KERNELS["6.1"], _bug(tmp_path, "hang", "echo hanging\nsleep 1000\n", timeout=8))
    assert rec.verdict is Verdict.SKIP and rec.reason == "reproducer timed out after 8s"
    assert 8 <= rec.phases["run"] < 8 + 35


def test_corrupt_vmlinuz_is_boot_failure(shared_home, tmp_path):
    from orchestrator.adapters.kernel import UnpackedKernel

    good = _kernel(KERNELS["6.1"])
    root = tmp_path / "corrupt"
    root.mkdir()
    data = good.vmlinuz.read_bytes()
    # Keep the bzImage header so QEMU loads it; destroy the compressed payload.
    (root / "vmlinuz").write_bytes(data[:0x4000] + os.urandom(len(data) - 0x4000))
    shutil.copytree(good.modules, root / "modules", copy_function=os.link)
    k = UnpackedKernel(ref="test:corrupt-6.1", root=root, kver=good.kver)
    k.save()
    t0 = time.monotonic()
    rec = _probe(k, _bug(tmp_path, "never-runs", "exit 0\n"), boot_timeout=40)
    elapsed = time.monotonic() - t0
    assert rec.verdict is Verdict.SKIP and rec.reason.startswith("boot failure"), rec.reason
    assert "upload" not in rec.phases and "run" not in rec.phases
    assert elapsed < 40 + 30, elapsed
    assert rec.console_excerpt is not None


def _wait_for_domain(prefix_pid: int, timeout: float = 120) -> str:
    from orchestrator.adapters.guest import vm

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, desc in _domains():
            m = vm.OWNER_RE.search(desc)
            if m and int(m.group(1)) == prefix_pid:
                return name
        time.sleep(0.5)
    raise AssertionError("no domain appeared")


def _start_run(shared_home: Path, repro: Path) -> subprocess.Popen:
    env = dict(os.environ, KBISECT_HOME=str(shared_home))
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", "-q", "--bug", str(repro), "--kernel", KERNELS["6.1"]],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )


def _start_sleepy_run(shared_home, tmp_path) -> subprocess.Popen:
    """`kbisect run` of a reproducer that never finishes, so the test decides how it ends."""
    repro = tmp_path / "sleepy"
    repro.mkdir()
    (repro / "run.sh").write_text("sleep 1000\n")
    return _start_run(shared_home, repro)


def _domain_of_killed_run(shared_home, tmp_path) -> str:
    """The domain a SIGKILLed `kbisect run` left behind (no cleanup can run after SIGKILL)."""
    proc = _start_sleepy_run(shared_home, tmp_path)
    try:
        name = _wait_for_domain(proc.pid)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert name in [n for n, _ in _domains()]  # really left behind
    return name


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_destroys_the_vm(shared_home, tmp_path, sig):
    """SIGTERM and Ctrl-C (SIGINT) mid-run: the VM is destroyed before the process exits."""
    proc = _start_sleepy_run(shared_home, tmp_path)
    try:
        name = _wait_for_domain(proc.pid)
        proc.send_signal(sig)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 130, proc.stderr.read()
    assert name not in [n for n, _ in _domains()]


def test_kill9_leftover_is_reaped_by_gc(shared_home, tmp_path):
    name = _domain_of_killed_run(shared_home, tmp_path)
    env = dict(os.environ, KBISECT_HOME=str(shared_home))
    r = subprocess.run([sys.executable, "-m", "orchestrator", "gc"], capture_output=True, text=True, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr
    # On a shared host another kbisect run starting meanwhile may reap it first (same rule).
    assert f"domain {name}" in r.stderr or "removed" in r.stderr
    assert name not in [n for n, _ in _domains()]
    run_id = re.match(r"kbisect-(\w+)-\d+", name).group(1)
    assert not (shared_home / "runs" / run_id).exists()


def test_cli_repeat_aggregates_and_exits_bad(shared_home, tmp_path):
    """`--repeat 2`: two fresh VMs, both verdict records printed, exit 1 as git bisect wants."""
    repro = tmp_path / "always-bad"
    repro.mkdir()
    (repro / "run.sh").write_text("echo 'still broken'\nexit 1\n")
    env = dict(os.environ, KBISECT_HOME=str(shared_home))
    r = subprocess.run(
        [sys.executable, "-m", "orchestrator", "run", "-q", "--bug", str(repro), "--kernel", KERNELS["6.1"],
         "--repeat", "2", "--json", "--memory", "768", "--cpus", "2", "--accel", "tcg"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=900,
    )
    assert r.returncode == 1, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["verdict"] == "bad" and len(out["probes"]) == 2
    assert all(p["verdict"] == "bad" and p["reason"] == "still broken" for p in out["probes"])


def test_new_run_reaps_stale_domain_of_dead_process(shared_home, tmp_path):
    """A killed orchestrator's VM is destroyed by the next probe, without `kbisect gc`."""
    name = _domain_of_killed_run(shared_home, tmp_path)
    from orchestrator.adapters.guest import probe

    probe._reaped.clear()  # this test process may have reaped already; a new run always does
    rec = _probe(KERNELS["6.1"], _bug(tmp_path, "quick", "echo fine\n"))
    assert rec.verdict is Verdict.GOOD
    assert name not in [n for n, _ in _domains()]
