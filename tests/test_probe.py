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


def _bug(tmp_path: Path, name: str, script: str, timeout: int = 60, signatures: list[str] | None = None) -> Bug:
    """A reproducer in tmp_path; `signatures` are its bug's own trace lines (core.bug)."""
    d = tmp_path / name
    d.mkdir()
    (d / "run.sh").write_text(script)
    return Bug(id=name, dir=d, timeout=timeout, signatures=list(signatures or []))


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
    """(path, sha256) of the current recipe's root image, None when it is not built."""
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


def _host_networks() -> tuple[list[str], list[str]]:
    """Every libvirt network on the URI (active or not, as `virsh net-list --all`) and every
    bridge on the host (`ip -j link show type bridge`): kbisect must create neither."""
    from orchestrator.adapters.guest import vm as vmmod

    conn = vmmod.connect(URI)
    try:
        networks = sorted(net.name() for net in conn.listAllNetworks(0))
    finally:
        conn.close()
    out = subprocess.run(["ip", "-j", "link", "show", "type", "bridge"], capture_output=True, text=True, check=True)
    bridges = sorted(link["ifname"] for link in json.loads(out.stdout or "[]"))
    return networks, bridges


@pytest.fixture(scope="module", autouse=True)
def _no_leaks(vm_host, shared_home):
    from orchestrator.adapters.guest import image

    # Built here, not by the module's first boot, so that even from an empty cache there is a
    # fingerprint to compare with at the end (the first probe would build it all the same).
    image.ensure(progress=False)
    before = _base_image_fingerprint()
    networks_before = _host_networks()
    assert before is not None
    yield
    from orchestrator.adapters.guest import vm as vmmod

    # Every VM wrote to its own overlay: the shared base image is byte-for-byte unchanged.
    assert _base_image_fingerprint() == before, "the base root image changed"
    # No libvirt network and no bridge appeared (QEMU user networking only).
    assert _host_networks() == networks_before, "a libvirt network or a host bridge was created"

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


# 5.10 and 6.1 boot with every reproducer in the sweep test (tests/test_shared_vm.py): 6.12 is the
# line no other real boot reaches
@pytest.mark.parametrize("line", ["6.12"])
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
    bug = _bug(tmp_path, "panic", "echo crashing now\nsync\necho c > /proc/sysrq-trigger\nsleep 3600\n",
               timeout=600, signatures=[r"sysrq triggered crash"])
    rec = _probe(KERNELS["6.1"], bug)
    assert rec.verdict is Verdict.BAD, rec.reason
    assert rec.reason.startswith("kernel panic:") and "sysrq" in rec.reason
    assert "Kernel panic - not syncing" in rec.console_excerpt
    # pvpanic ended the run: it did not last until the reproducer's 600 s timeout (the margin
    # is for a loaded host; a run that waited for the timeout would take 600 s and more)
    assert rec.phases["run"] < 300, rec.phases


def test_console_warning_during_run_is_bad(shared_home, tmp_path):
    """A kernel trace with the bug's signature on the console during the run wins over the
    reproducer's exit 0."""
    script = (
        "echo '<4>WARNING: CPU: 0 PID: 1 at net/core/dev.c:1 kbisect_test+0x0/0x10' > /dev/kmsg\n"
        "sleep 1\necho exiting 0\nexit 0\n"
    )
    rec = _probe(KERNELS["6.1"], _bug(tmp_path, "warn", script, signatures=[r"kbisect_test\+0x0"]))
    assert rec.verdict is Verdict.BAD, rec.reason
    assert rec.reason.startswith("kernel trace: WARNING: CPU: 0")
    assert "kbisect_test" in rec.console_excerpt


def test_exit_1_is_bad_with_last_line(shared_home, tmp_path):
    rec = _probe(KERNELS["6.1"], _bug(tmp_path, "exit1", "echo probing\necho 'ecn bit lost on decap'\nexit 1\n"))
    assert rec.verdict is Verdict.BAD and rec.reason == "ecn bit lost on decap"
    assert rec.console_excerpt == ""


def test_hang_is_skip_after_timeout(shared_home, tmp_path):
    rec = _probe(KERNELS["6.1"], _bug(tmp_path, "hang", "echo hanging\nsleep 3600\n", timeout=8))
    assert rec.verdict is Verdict.SKIP and rec.reason == "reproducer timed out after 8s"
    # stopped by its 8 s timeout, not by the end of the hour-long sleep (generous for a loaded host)
    assert 8 <= rec.phases["run"] < 600, rec.phases


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
    rec = _probe(k, _bug(tmp_path, "never-runs", "exit 0\n"), boot_timeout=40)
    assert rec.verdict is Verdict.SKIP and rec.reason.startswith("boot failure"), rec.reason
    assert "upload" not in rec.phases and "run" not in rec.phases
    # gave up at the boot deadline instead of waiting forever (generous for a loaded host)
    assert rec.phases["boot"] < 40 + 300, rec.phases
    # the excerpt is what the console really held (its tail), kept as the console.log artefact
    from orchestrator.core.classify import tail

    console = next(Path(a) for a in rec.artefacts if Path(a).name == "console.log")
    text = console.read_text(errors="replace")
    assert rec.console_excerpt == tail(text), (rec.console_excerpt[-500:], text[-500:])
    print(f"corrupt kernel: {rec.reason}; console {len(text)} characters; phases {rec.phases}")
    if not text.strip():  # a kernel that never starts prints nothing (no earlyprintk): the reason says so
        assert "console" in rec.reason, rec.reason


def _wait_for_domain(prefix_pid: int, timeout: float = 600) -> str:
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
    """`kbisect run` as a terminal's foreground job: SIGINT at its default disposition even when
    the test suite itself was started in the background (a non-interactive shell's `&` ignores
    SIGINT in its children, and an ignored SIGINT stays ignored, so Ctrl-C would test nothing)."""
    env = dict(os.environ, KBISECT_HOME=str(shared_home))
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "run", "-q", "--bug", str(repro), "--kernel", KERNELS["6.1"]],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _start_sleepy_run(shared_home, tmp_path) -> subprocess.Popen:
    """`kbisect run` of a reproducer that never finishes, so the test decides how it ends."""
    repro = tmp_path / "sleepy"
    repro.mkdir()
    (repro / "run.sh").write_text("sleep 1000\n")
    return _start_run(shared_home, repro)


def _killed_run(shared_home, tmp_path) -> tuple[str, Path]:
    """The domain name and run directory of a SIGKILLed `kbisect run` (no cleanup of its own can
    run after SIGKILL: the run directory, overlay included, is left behind)."""
    proc = _start_sleepy_run(shared_home, tmp_path)
    try:
        name = _wait_for_domain(proc.pid)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    run_dir = shared_home / "runs" / re.match(r"kbisect-(\w+)-\d+", name).group(1)
    assert (run_dir / "state.json").is_file()  # really left behind
    return name, run_dir


def _survives(name: str, settle: float = 30.0) -> bool:
    """Whether the domain is still defined once libvirt had `settle` seconds to destroy it with its
    dead owner's connection (VIR_DOMAIN_START_AUTODESTROY, where the connection allows it)."""
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        if name not in [n for n, _ in _domains()]:
            return False
        time.sleep(0.5)
    return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_destroys_the_vm(shared_home, tmp_path, sig):
    """SIGTERM and Ctrl-C (SIGINT) mid-run: the VM is destroyed before the process exits."""
    proc = _start_sleepy_run(shared_home, tmp_path)
    try:
        name = _wait_for_domain(proc.pid)
        proc.send_signal(sig)
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read()
    assert rc == (143 if sig == signal.SIGTERM else 130), err  # 128 + SIGTERM; Ctrl-C's 130
    if sig == signal.SIGTERM:
        assert "kbisect: stopped by signal 15" in err
    assert name not in [n for n, _ in _domains()]


def test_kill9_leftover_is_reaped_by_gc(shared_home, tmp_path):
    name, run_dir = _killed_run(shared_home, tmp_path)
    survived = _survives(name)  # False when libvirt destroyed it with the dead owner's connection
    env = dict(os.environ, KBISECT_HOME=str(shared_home))
    r = subprocess.run([sys.executable, "-m", "orchestrator", "gc"], capture_output=True, text=True, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    items = [line.removeprefix("removed ") for line in lines if line.startswith("removed ")]
    # gc says what it removed, one line each, and a count that matches: the killed run's
    # directory (overlay, console), and its domain exactly when the domain outlived its owner.
    # (Another kbisect process on the same host could reap them first; CI runs one test
    # process, so there it cannot.)
    assert lines[-1] == f"gc: removed {len(items)} leftover(s)", r.stderr
    assert f"run dir {run_dir}" in items, r.stderr
    assert (f"domain {name}" in items) == survived, (survived, r.stderr)
    assert len(items) == len(set(items)), r.stderr
    assert name not in [n for n, _ in _domains()]
    assert not run_dir.exists()


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
    name, run_dir = _killed_run(shared_home, tmp_path)
    from orchestrator.adapters.guest import probe

    probe._reaped.clear()  # this test process may have reaped already; a new run always does
    rec = _probe(KERNELS["6.1"], _bug(tmp_path, "quick", "echo fine\n"))
    assert rec.verdict is Verdict.GOOD
    assert name not in [n for n, _ in _domains()]
    assert not run_dir.exists()  # the dead run's overlay went with it
