"""Quick tier for the guest runtime: pure parts, no VM booted.

Domain XML rendering, verdict classification of an Observation (console text, exit codes, lost
sessions, boot failures), the probe session's steps against a fake VM and SSH guest, which
failures are typed as kernel trouble and which as the machine's, the CLI's exit-code mapping on
bad input, the initramfs writer and the recipe hash.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from orchestrator.adapters.guest import bootfiles, image, probe, session, ssh, vm
from orchestrator.app import policy
from orchestrator.core.bug import Bug, TracePolicy
from orchestrator.core.classify import Observation, classify
from orchestrator.core.errors import BootFailure, GuestInfra, InstallationError
from orchestrator.core.verdict import ProbeRecord, Verdict

QEMU_NS = "{http://libvirt.org/schemas/domain/qemu/1.0}"


def _render(**over):
    values = dict(
        name="kbisect-abc123-1",
        domain_type="qemu",
        owner=vm.Owner(home="/h", pid=4242, start=99, pidns="pid:[1]"),
        memory_mb=768,
        cpus=2,
        kernel="/k/vmlinuz",
        initrd="/k/initrd.img",
        cmdline="console=ttyS0 root=/dev/vda rw kbisect.key=ecdsa-sha2-nistp256:AAAA<&>",
        emulator="/usr/bin/qemu-system-x86_64",
        overlay="/r/overlay.qcow2",
        modules_disk="/k/modules.ext4",
        console_log="/r/console.log",
        ssh_port=40022,
    )
    values.update(over)
    return ET.fromstring(vm.render_domain_xml(**values))


def test_domain_xml_tcg_shape():
    dom = _render()
    assert dom.get("type") == "qemu"
    assert dom.findtext("name") == "kbisect-abc123-1"
    assert dom.find("os/type").get("machine") == "q35"
    assert dom.findtext("os/kernel") == "/k/vmlinuz"
    assert dom.findtext("os/initrd") == "/k/initrd.img"
    assert dom.findtext("os/cmdline").endswith("AAAA<&>")  # escaped in XML, intact when parsed
    assert dom.find("cpu/model").text == "qemu64"
    assert dom.findtext("memory") == "768" and dom.findtext("vcpu") == "2"
    assert dom.findtext("on_crash") == "preserve"
    assert dom.find("devices/panic").get("model") == "isa"
    disks = dom.findall("devices/disk")
    assert [d.find("target").get("dev") for d in disks] == ["vda", "vdb"]
    assert disks[0].find("source").get("file") == "/r/overlay.qcow2"
    assert disks[0].find("driver").get("type") == "qcow2"
    assert disks[1].find("readonly") is not None and disks[1].find("shareable") is not None
    assert dom.find("devices/serial").get("type") == "file"
    assert dom.find("devices/serial/source").get("path") == "/r/console.log"
    # No libvirt networking at all: only QEMU user networking, restricted, on 127.0.0.1.
    assert dom.find("devices/interface") is None
    args = [a.get("value") for a in dom.find(f"{QEMU_NS}commandline")]
    netdev = args[args.index("-netdev") + 1]
    assert "restrict=on" in netdev.split(",")
    assert "hostfwd=tcp:127.0.0.1:40022-:22" in netdev
    assert "4242 start 99" in dom.findtext("description")
    assert dom.find("seclabel") is None


def test_domain_xml_kvm_and_seclabel():
    dom = _render(domain_type="kvm", seclabel_user=0, seclabel_group=0)
    assert dom.get("type") == "kvm"
    assert dom.find("cpu").get("mode") == "host-passthrough"
    sec = dom.find("seclabel")
    assert sec.get("relabel") == "no" and sec.findtext("label") == "+0:+0"


def test_owner_regex_matches_description():
    desc = ET.tostring(_render()).decode()
    m = vm.OWNER_RE.search(desc)
    assert m and m.group(1) == "4242" and m.group(2) == "99"


PANIC_CONSOLE = """[    5.70] sysrq: Trigger a crash
[    5.71] Kernel panic - not syncing: sysrq triggered crash
[    5.72] CPU: 0 PID: 145 Comm: bash Not tainted 6.1.0-54-cloud-amd64 #1
[    5.73] Call Trace:
[    5.74]  panic+0x118/0x2f4
"""

WARN_CONSOLE = """[   7.1] ------------[ cut here ]------------
[   7.1] WARNING: CPU: 0 PID: 200 at net/ipv4/ip_gre.c:123 gre_xmit+0x10/0x20 [ip_gre]
[   7.2] Call Trace:
"""

BUG60 = Bug(id="b", dir=Path("/nonexistent"), timeout=60)
# a bug for which any kernel trace counts (`unrelated_traces: bad`): the tests of "the kernel's word
# wins" over exit codes and lost sessions (the default, skip on an unrelated trace, is core/classify's)
ANY_TRACE = Bug(id="b", dir=Path("/nonexistent"), timeout=60, unrelated_traces=TracePolicy.BAD)


def _ran(**over) -> Observation:
    """A booted guest whose reproducer ran (override what it printed / how it ended)."""
    return Observation(**{"booted": True, "stdout": "step\nall good\n\n", **over})


def test_classify_exit_codes_good_bad_skip():
    assert classify(_ran(exit_code=0), BUG60)[:2] == (Verdict.GOOD, "all good")
    assert classify(_ran(exit_code=1), BUG60)[:2] == (Verdict.BAD, "all good")
    assert classify(_ran(exit_code=125), BUG60)[:2] == (Verdict.SKIP, "all good")
    assert classify(_ran(exit_code=0, stdout=""), BUG60)[:2] == (Verdict.GOOD, "exit 0")
    v, reason, _ = classify(_ran(exit_code=3), BUG60)
    assert v is Verdict.SKIP and reason == "reproducer error: exit 3: all good"
    v, reason, _ = classify(_ran(exit_code=124), BUG60)
    assert v is Verdict.SKIP and reason == "reproducer timed out after 60s"
    v, reason, _ = classify(_ran(exit_code=None, timed_out=True), BUG60)
    assert v is Verdict.SKIP and reason == "reproducer timed out after 60s"


def test_classify_lost_session_is_skip_with_console_tail():
    obs = _ran(exit_code=None, lost="EOFError: connection closed", console_run="a\nb\nguest went quiet")
    v, reason, excerpt = classify(obs, BUG60)
    assert v is Verdict.SKIP and reason == "reproducer lost: EOFError: connection closed"
    assert excerpt.endswith("guest went quiet")
    v, reason, _ = classify(_ran(exit_code=None), BUG60)
    assert v is Verdict.SKIP and reason == "reproducer lost: no exit status"


def test_classify_kernel_word_wins_over_exit_0():
    v, reason, excerpt = classify(_ran(exit_code=0, console_run=PANIC_CONSOLE), ANY_TRACE)
    assert v is Verdict.BAD and reason == "kernel panic: Kernel panic - not syncing: sysrq triggered crash"
    assert "Call Trace" in excerpt
    v, reason, excerpt = classify(_ran(exit_code=0, console_run=WARN_CONSOLE), ANY_TRACE)
    assert v is Verdict.BAD and reason.startswith("kernel trace: WARNING: CPU: 0") and "cut here" in excerpt
    v, reason, _ = classify(_ran(exit_code=None, crashed=True), ANY_TRACE)
    assert v is Verdict.BAD and reason == "kernel panic: guest crashed"
    # Boot noise before the run does not count: only console_run is searched.
    assert classify(_ran(exit_code=0, console_boot=WARN_CONSOLE + PANIC_CONSOLE), ANY_TRACE).verdict is Verdict.GOOD


def test_classify_panic_during_upload_is_bad_not_lost():
    """The upload failed because the kernel panicked: the kernel's word wins over the lost session."""
    obs = Observation(booted=True, lost="upload failed: EOFError: eof", crashed=True, console_run=PANIC_CONSOLE)
    v, reason, excerpt = classify(obs, ANY_TRACE)
    assert v is Verdict.BAD and reason.startswith("kernel panic: Kernel panic - not syncing")
    assert "sysrq" in excerpt
    # The same failed upload without a kernel word is a skip naming the upload.
    v, reason, _ = classify(Observation(booted=True, lost="upload failed: EOFError: eof"), ANY_TRACE)
    assert v is Verdict.SKIP and reason == "reproducer lost: upload failed: EOFError: eof"


def test_classify_boot_failure_is_skip_with_console_tail():
    obs = Observation(booted=False, boot_reason="guest shutoff before ssh: x", console_boot="a\nb\nlast line",
                      console_run=PANIC_CONSOLE)  # never booted: nothing counts as the run's
    v, reason, excerpt = classify(obs, BUG60)
    assert v is Verdict.SKIP and reason == "boot failure: guest shutoff before ssh: x"
    assert excerpt.endswith("last line")
    assert classify(Observation(booted=False), BUG60).reason == "boot failure"


def test_aggregate():
    def rec(v):
        return ProbeRecord(kernel="k", bug="b", verdict=v, reason="")

    G, B, S = Verdict.GOOD, Verdict.BAD, Verdict.SKIP
    assert probe.aggregate([rec(G), rec(B)]) is B
    assert probe.aggregate([rec(G), rec(B)], bad_needed=2) is G
    assert probe.aggregate([rec(S), rec(S)]) is S
    assert probe.aggregate([rec(S), rec(G)]) is G


def test_cmdline_carries_key_and_root():
    line = session.build_cmdline("kbisect.key=ecdsa-sha2-nistp256:AAAA")
    assert "root=/dev/vda" in line and "console=ttyS0" in line and line.endswith("kbisect.key=ecdsa-sha2-nistp256:AAAA")



def test_initramfs_cpio_is_valid(tmp_path):
    data = gzip.decompress(bootfiles._initramfs([]))
    (tmp_path / "i.cpio").write_bytes(data)
    listing = subprocess.run(["cpio", "-itv"], input=data, capture_output=True).stdout.decode()
    assert "dev/console" in listing and "bin/busybox" in listing and " init" in listing
    assert listing.splitlines()[[l.endswith("dev/console") for l in listing.splitlines()].index(True)].startswith("c")


def test_recipe_hash_changes_with_recipe(tmp_path, monkeypatch):
    for name in image.RECIPE_FILES:
        (tmp_path / name).write_bytes((image.RECIPE_DIR / name).read_bytes())
    h1 = image.recipe_hash(tmp_path)
    assert h1 == image.recipe_hash(tmp_path)
    with open(tmp_path / "packages.txt", "a") as fh:
        fh.write("strace\n")
    assert image.recipe_hash(tmp_path) != h1
    assert "strace" in image.packages(tmp_path)
    assert "openssh-server" in image.packages(tmp_path)


def test_host_suite_from_deb822(tmp_path):
    src = tmp_path / "x.sources"
    src.write_text("Types: deb\nURIs: http://example.invalid/debian\nSuites: trixie trixie-updates\nComponents: main\n")
    assert image.host_suite([src]) == "trixie"
    lst = tmp_path / "y.list"
    lst.write_text("# c\ndeb [arch=amd64] http://example.invalid/debian bookworm main\n")
    assert image.host_suite([lst]) == "bookworm"


def _kbisect(*args, env_home):
    import os

    env = dict(os.environ, KBISECT_HOME=str(env_home))
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], capture_output=True, text=True, env=env)


def test_cli_run_bad_input_is_one_line(kbisect_home, tmp_path):
    r = _kbisect("run", "--bug", str(tmp_path / "nope"), "--kernel", "debian:6.1.0-54-cloud-amd64", env_home=kbisect_home)
    assert r.returncode == 128, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    repro = tmp_path / "repro"
    repro.mkdir()
    (repro / "run.sh").write_text("exit 0\n")
    r = _kbisect("run", "--bug", str(repro), "--kernel", "not-a-spec", env_home=kbisect_home)
    assert r.returncode == 128 and "SOURCE:VERSION" in r.stderr and "Traceback" not in r.stderr
    r = _kbisect("run", "--bug", str(repro), "--kernel", "x:y", "--accel", "warp", env_home=kbisect_home)
    # a usage error too stops a `git bisect run` (128), never reads as "bad" (cli/guest.py BisectRunCommand)
    assert r.returncode == 128 and "Traceback" not in r.stderr


def test_accel_override_needs_no_probe(kbisect_home):
    from orchestrator.adapters.guest import accel
    from orchestrator.core.errors import KbisectError

    assert accel.resolve("tcg") == "tcg"
    assert accel.resolve("kvm") == "kvm"
    with pytest.raises(KbisectError):
        accel.resolve("warp")
    assert not (kbisect_home / "accel.json").exists()


def test_gc_keeps_live_and_reaps_dead_run_dirs(kbisect_home):
    """Run directories (overlays) of a dead owner are reaped; ours are kept."""
    import json

    live = vm.Run()
    dead = kbisect_home / "runs" / "dead01"
    dead.mkdir(parents=True)
    (dead / "state.json").write_text(json.dumps({"pid": 2**22 + 17, "start": 1}))
    (dead / "vm-1").mkdir()
    (dead / "vm-1" / "overlay.qcow2").write_text("x")
    # gc() also talks to libvirt for domains; the directory part is its own helper.
    vm._gc_run_dirs()
    assert not dead.exists()
    assert live.dir.exists()
    live.close()


def _fake_kernel(root, module_bytes: bytes):
    from orchestrator.adapters.kernel import UnpackedKernel

    (root / "modules" / "kernel" / "drivers" / "net").mkdir(parents=True)
    (root / "vmlinuz").write_bytes(b"\x00" * 64)
    (root / "modules" / "kernel" / "drivers" / "net" / "veth.ko").write_bytes(module_bytes)
    return UnpackedKernel(ref="local:test", root=root, kver="6.1.0-test")


def test_cache_key_follows_module_bytes_not_size(kbisect_home, tmp_path):
    """A rebuilt module of the same size must get its own modules disk."""
    base = _fake_kernel(tmp_path / "base", b"A" * 4096)
    variant = _fake_kernel(tmp_path / "variant", b"B" * 4096)
    same = _fake_kernel(tmp_path / "same", b"A" * 4096)
    assert bootfiles.cache_key(base) != bootfiles.cache_key(variant)
    assert bootfiles.cache_key(base) == bootfiles.cache_key(same)


def test_cache_key_memo_notices_rewrite_in_place(kbisect_home, tmp_path):
    import os

    k = _fake_kernel(tmp_path / "k", b"A" * 4096)
    before = bootfiles.cache_key(k)
    assert bootfiles.cache_key(k) == before  # memoised, same answer
    ko = k.modules / "kernel" / "drivers" / "net" / "veth.ko"
    st = ko.stat()
    ko.write_bytes(b"C" * 4096)
    os.utime(ko, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert bootfiles.cache_key(k) != before


# -- ProbeSession against fakes (no libvirt, no SSH) ----------------------------------------

class FakeVM:
    """A domain whose state and console the test scripts; records how it was destroyed."""

    def __init__(self, console: str = "", state: str = "running") -> None:
        self.name, self.port = "kbisect-fake-1", 40022
        self.text, self.st = console, state
        self.started = False
        self.destroyed: list[bool] = []  # background flags of destroy() calls

    def start(self) -> None:
        self.started = True

    def state(self) -> str:
        return self.st

    def console(self, offset: int = 0) -> str:
        return self.text[offset:]

    def console_size(self) -> int:
        return len(self.text)

    def destroy(self, background: bool = False) -> None:
        self.destroyed.append(background)


class FakeGuest:
    """An SSH session: `on_upload` / `on_run` script what happens when the probe uses it."""

    def __init__(self, dom: FakeVM, on_upload=None, on_run=None) -> None:
        self.dom, self.on_upload, self.on_run = dom, on_upload, on_run
        self.uploaded: list[tuple[Path, str]] = []
        self.closed = False

    def upload_dir(self, local: Path, remote: str) -> int:
        if self.on_upload:
            self.on_upload(self.dom)
        self.uploaded.append((local, remote))
        return 1

    def mkdirs(self, path: str) -> None:
        pass

    def run(self, command, timeout, on_output=None, should_abort=None) -> ssh.RunResult:
        return self.on_run(self, command, on_output, should_abort)

    def fetch_dir(self, remote: str, local: Path) -> list[Path]:
        local.mkdir(parents=True, exist_ok=True)
        (local / "capture.pcap").write_bytes(b"pcap")
        return [local / "capture.pcap"]

    def get(self, remote: str, local: Path) -> None:
        local.write_text("dmesg text\n")

    def close(self) -> None:
        self.closed = True


def _exit(code: int, stdout: str = ""):
    def on_run(guest, command, on_output, should_abort):
        for line in stdout.splitlines():
            on_output("stdout", line)
        return ssh.RunResult(exit_code=code, stdout=stdout, stderr="", timed_out=False, aborted=None, seconds=0.1)
    return on_run


def _session(tmp_path, dom: FakeVM, connect, **kw) -> session.ProbeSession:
    machine = session.Machine(vm=dom, accel="tcg", connect=connect)
    bug = Bug(id="fake", dir=tmp_path, timeout=60)
    return session.ProbeSession(bug, lambda: machine, tmp_path / "probe", upload_dirs=[tmp_path], **kw)


def _probe_steps(s: session.ProbeSession, background: bool = True) -> Observation:
    """What run_probe_kernel does with a session."""
    try:
        s.prepare()
        if s.boot() and s.upload():
            s.run()
            s.collect()
    finally:
        s.teardown(background=background)
    return s.observation


def test_session_good_run_collects_artefacts_and_tears_down(tmp_path):
    dom = FakeVM(console="boot noise WARNING: at boot\n")
    guest = FakeGuest(dom, on_run=_exit(0, "step\nok on fake\n"))
    lines = []
    obs = _probe_steps(_session(tmp_path, dom, lambda port, deadline, blocker: guest,
                                on_output=lambda which, line: lines.append(line)))
    assert obs.booted and dom.started and obs.exit_code == 0 and lines == ["step", "ok on fake"]
    assert list(obs.phases) == ["prepare", "boot", "upload", "run", "collect", "teardown"]
    names = [Path(a).name for a in obs.artefacts]
    assert names == ["console.log", "capture.pcap", "dmesg.txt"]  # console first
    assert obs.console_boot == "boot noise WARNING: at boot\n" and obs.console_run == ""
    assert guest.closed and dom.destroyed == [True]
    assert classify(obs, BUG60)[:2] == (Verdict.GOOD, "ok on fake")


def test_session_boot_failure_is_observed_not_raised(tmp_path):
    """The guest's initramfs fails: the blocker's reason is the boot failure; no upload, no run."""
    dom = FakeVM(console="Linux version 6.1\nkbisect-initramfs: FAILED: cannot mount /dev/vda\n")

    def connect(port, deadline, blocker):
        why = blocker()
        raise ssh.SSHUnavailable(why or "no SSH banner before the boot timeout")

    obs = _probe_steps(_session(tmp_path, dom, connect))
    assert not obs.booted and obs.boot_reason == "kbisect-initramfs: FAILED: cannot mount /dev/vda"
    assert "upload" not in obs.phases and "run" not in obs.phases and "teardown" in obs.phases
    assert dom.destroyed == [True]
    v, reason, excerpt = classify(obs, BUG60)
    assert v is Verdict.SKIP and reason == "boot failure: kbisect-initramfs: FAILED: cannot mount /dev/vda"
    assert excerpt.endswith("cannot mount /dev/vda")


def test_session_panic_during_upload_is_bad(tmp_path):
    """The console offset is taken before the upload, so a panic while uploading counts."""
    dom = FakeVM(console="booted fine\n")

    def panic(dom):
        dom.text += PANIC_CONSOLE
        dom.st = "crashed"
        raise GuestInfra("EOFError: ")

    obs = _probe_steps(_session(tmp_path, dom, lambda *a: FakeGuest(dom, on_upload=panic)))
    assert obs.lost == "upload failed: EOFError: " and obs.crashed
    assert "run" not in obs.phases and "collect" not in obs.phases
    assert obs.console_run == PANIC_CONSOLE
    v, reason, _ = classify(obs, ANY_TRACE)
    assert v is Verdict.BAD and reason == "kernel panic: Kernel panic - not syncing: sysrq triggered crash"


def test_session_lost_mid_run_is_skip(tmp_path):
    dom = FakeVM()

    def drop(guest, command, on_output, should_abort):
        raise GuestInfra("EOFError: connection reset")

    obs = _probe_steps(_session(tmp_path, dom, lambda *a: FakeGuest(dom, on_run=drop)))
    assert obs.lost == "EOFError: connection reset" and obs.exit_code is None
    assert classify(obs, BUG60)[:2] == (Verdict.SKIP, "reproducer lost: EOFError: connection reset")


def test_session_stops_waiting_on_a_panic_during_the_run(tmp_path):
    """should_abort sees a panic written after the run started (not one from before)."""
    dom = FakeVM(console="old Kernel panic - not syncing: from a previous life\n")

    def panics(guest, command, on_output, should_abort):
        assert should_abort() is None  # console before the run does not count
        guest.dom.text += PANIC_CONSOLE
        why = should_abort()
        return ssh.RunResult(exit_code=None, stdout="", stderr="", timed_out=False, aborted=why, seconds=1)

    guest = FakeGuest(dom, on_run=panics)
    obs = _probe_steps(_session(tmp_path, dom, lambda *a: guest))
    assert obs.lost == "kernel panic on console"
    assert [Path(a).name for a in obs.artefacts] == ["console.log"]  # no artefacts from an aborted run
    v, reason, _ = classify(obs, ANY_TRACE)
    assert v is Verdict.BAD and "sysrq triggered crash" in reason


def test_session_teardown_after_interrupt_destroys_now(tmp_path):
    dom = FakeVM()

    def interrupted(guest, command, on_output, should_abort):
        raise KeyboardInterrupt

    s = _session(tmp_path, dom, lambda *a: FakeGuest(dom, on_run=interrupted))
    with pytest.raises(KeyboardInterrupt):
        _probe_steps(s, background=False)
    assert dom.destroyed == [False]
    assert (tmp_path / "probe" / "console.log").exists()


# -- typed errors: which failures skip a kernel and which stop the run ------------------------

def test_guest_trouble_is_kernel_trouble():
    assert issubclass(ssh.SSHUnavailable, BootFailure) and issubclass(vm.BootError, BootFailure)
    with pytest.raises(GuestInfra, match="^EOFError: gone$"):
        with ssh.session_lost():
            raise EOFError("gone")
    with pytest.raises(GuestInfra, match="^upload failed: PermissionError"):
        with ssh.session_lost("upload failed: "):
            raise PermissionError("unreadable")
    assert policy.decide(ssh.SSHUnavailable("x")) is policy.Decision.SKIP


def test_libvirt_unreachable_is_installation_error():
    with pytest.raises(InstallationError, match="cannot connect to libvirt"):
        vm.connect("qemu+unix:///session?socket=/nonexistent/kbisect-test.sock")
    assert policy.decide(InstallationError("x")) is policy.Decision.ABORT


def test_reap_stale_still_raises_when_libvirt_is_unreachable():
    """Best-effort reaping must not hide an unreachable libvirt (every probe would fail)."""
    uri = "qemu+unix:///session?socket=/nonexistent/kbisect-test-reap.sock"
    probe._reaped.discard(uri)
    with pytest.raises(InstallationError):
        probe._reap_stale(uri)


def test_missing_vmlinuz_is_boot_failure(kbisect_home, tmp_path):
    from orchestrator.adapters.kernel import UnpackedKernel

    (tmp_path / "k").mkdir()
    with pytest.raises(BootFailure, match="no vmlinuz"):
        bootfiles.cache_key(UnpackedKernel(ref="local:novmlinuz", root=tmp_path / "k", kver="6.1.0-test"))


# -- run ids, autodestroy, gc of dead owners' leftovers (no libvirt) ------------------------

def _dead_pid() -> int:
    """A pid no process can have: beyond the kernel's pid_max."""
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1000


def test_run_ids_are_claimed_exclusively(kbisect_home):
    """Two runs drawing the same random id get two directories; a taken explicit id is refused."""
    ids = iter(["aaaaaa", "aaaaaa", "bbbbbb"])
    first = vm.Run(new_id=lambda: next(ids))
    second = vm.Run(new_id=lambda: next(ids))
    assert (first.id, second.id) == ("aaaaaa", "bbbbbb")
    assert first.dir != second.dir and (first.dir / "state.json").is_file()
    with pytest.raises(InstallationError, match="already in use"):
        vm.Run(run_id="aaaaaa")
    with pytest.raises(InstallationError, match="no free run id"):
        vm.Run(new_id=lambda: "aaaaaa")
    first.close()
    second.close()


def _libvirt_error(code: int, message: str):
    """A libvirtError as the binding raises it: (code, domain, message, ...) in `err`."""
    import libvirt

    exc = libvirt.libvirtError.__new__(libvirt.libvirtError)
    Exception.__init__(exc, message)
    exc.err = (code, 10, message, 2, None, None, None, 0, 0)
    return exc


class _FakeConn:
    """createXML recording its flags; refuses AUTODESTROY like a driver without it when told."""

    def __init__(self, refuse: tuple[int, str] | None = None) -> None:
        self.flags: list[int] = []
        self.refuse = refuse

    def createXML(self, xml: str, flags: int):  # noqa: N802 (libvirt's naming)
        self.flags.append(flags)
        if flags and self.refuse:
            raise _libvirt_error(*self.refuse)
        return ("dom", flags)


def test_domains_start_with_autodestroy_and_fall_back_once():
    import libvirt

    vm._no_autodestroy.clear()
    ok = _FakeConn()
    assert vm.create_domain(ok, "<domain/>", "qemu:///system") == ("dom", libvirt.VIR_DOMAIN_START_AUTODESTROY)
    # virCheckFlags' answer (libvirt src/internal.h): VIR_ERR_INVALID_ARG, "unsupported flags (0x2) ..."
    old = _FakeConn(refuse=(libvirt.VIR_ERR_INVALID_ARG, "unsupported flags (0x2) in function qemuDomainCreateXML"))
    uri = "qemu+unix:///session?socket=/old.sock"
    assert vm.create_domain(old, "<domain/>", uri) == ("dom", 0)
    assert vm.create_domain(old, "<domain/>", uri) == ("dom", 0)
    assert old.flags == [libvirt.VIR_DOMAIN_START_AUTODESTROY, 0, 0]  # asked once, then remembered
    other = _FakeConn(refuse=(libvirt.VIR_ERR_INTERNAL_ERROR, "internal error: process exited while connecting to monitor"))
    with pytest.raises(libvirt.libvirtError):
        vm.create_domain(other, "<domain/>", "qemu:///other")
    assert "qemu:///other" not in vm._no_autodestroy and "qemu:///system" not in vm._no_autodestroy
    vm._no_autodestroy.clear()


def _leftover_tree(home: Path, pid: int) -> dict[str, Path]:
    """One of each leftover kind `kbisect gc` knows, owned by `pid` (names as their writers make them)."""
    from orchestrator.adapters.kernel import MANIFEST

    kernels, downloads = home / "kernels" / "mainline", home / "downloads" / "mainline"
    paths = {
        "part": downloads / f".linux-image-{pid}_amd64.deb.{pid}.part",
        "apt": home / "downloads" / "debian" / f".apt-{pid}",
        "data_tar": kernels / f".linux-modules-{pid}.deb.{pid}.data.tar",
        "tmp": home / "kernels" / "debian" / "6.1.0-54-cloud-amd64" / f".{MANIFEST}.{pid}.140001.tmp",
        "variant_tmp": home / "kernels" / "debian" / f".6.1.0-54-cloud-amd64+rev{pid}.tmp-{pid}",
        "variant_old": home / "kernels" / "debian" / f".6.1.0-54-cloud-amd64+rev{pid}.old-{pid}",
        "image_build": home / "images" / f"0123456789abcdef.build-{pid}",
        "build_tmp": home / "local" / f".6.1.192-guest-{pid}.tmp-{pid}",
        "source_tmp": home / "builds" / "src" / f".linux-source-6.1_6.1.192-{pid}.tmp-{pid}",
    }
    for key, path in paths.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if key in ("apt", "variant_tmp", "variant_old", "image_build", "build_tmp", "source_tmp"):
            (path / "sub").mkdir(parents=True)
            (path / "sub" / "f").write_bytes(b"x" * 10)
        else:
            path.write_bytes(b"x" * 10)
    (home / "kernels" / "debian" / "6.1.0-54-cloud-amd64" / MANIFEST).write_text("{}")
    return paths


def test_gc_removes_dead_owners_leftovers_and_keeps_live_ones(kbisect_home, tmp_path):
    from filelock import FileLock

    from orchestrator.app import gc

    dead = _leftover_tree(kbisect_home, _dead_pid())
    live = _leftover_tree(kbisect_home, os.getpid())
    kernels = kbisect_home / "kernels" / "mainline"
    # staging that only exists under its lock: one whose lock is free, one held right now
    for name in ("5.7.2", "5.7.3"):
        (kernels / f"{name}.partial" / "modules").mkdir(parents=True)
    (kernels / "5.8").mkdir()  # renamed into place, killed before kernel.json
    (kernels / "5.8" / "vmlinuz").write_bytes(b"MZ")
    (kbisect_home / "variants" / ".6.1.0-54-cloud-amd64+x.work-ab12cd").mkdir(parents=True)
    results = tmp_path / "results"
    (results / "bisect-1").mkdir(parents=True)
    (results / "bisect-1" / f".report.html.{_dead_pid()}.77.tmp").write_text("<html")
    # a dead owner's directory a live process still works in (an orphaned mmdebstrap): kept
    busy = kbisect_home / "images" / f"fedcba9876543210.build-{_dead_pid() + 1}"
    busy.mkdir(parents=True)
    child = subprocess.Popen(["sleep", "60"], cwd=busy)
    try:
        with FileLock(str(kernels / "5.7.3.lock")):
            removed = gc.collect(domains=lambda uri: ["domain kbisect-dead-1"],
                                 builds=lambda: [p for p in [dead["image_build"], busy] if _reap(p)],
                                 leftovers=gc.Leftovers(kbisect_home, results))
        assert busy.exists()
    finally:
        child.kill()
        child.wait()
    text = "\n".join(removed)
    assert removed[0] == "domain kbisect-dead-1"
    for key in ("part", "apt", "data_tar", "tmp", "variant_tmp", "variant_old", "image_build", "build_tmp",
                "source_tmp"):
        assert not dead[key].exists() and str(dead[key]) in text, key
        assert live[key].exists(), key  # a live owner's work is never touched
    assert not (kernels / "5.7.2.partial").exists() and (kernels / "5.7.3.partial").exists()
    assert not (kernels / "5.8").exists() and "no kernel.json" in text
    assert not (kbisect_home / "variants" / ".6.1.0-54-cloud-amd64+x.work-ab12cd").exists()
    assert not list(results.rglob("*.tmp"))
    assert (kbisect_home / "kernels" / "debian" / "6.1.0-54-cloud-amd64" / "kernel.json").exists()
    assert len(removed) == 14, removed
    # the lock is free now: its staging goes next time; then nothing is left to remove
    def again() -> list[str]:
        return gc.collect(domains=lambda uri: [], builds=lambda: [], leftovers=gc.Leftovers(kbisect_home, results))

    assert again() == [f"killed unpack's staging {kernels / '5.7.3.partial'}"]
    assert again() == []


def _reap(path: Path) -> bool:
    """What image.gc_builds does for one build directory (fsutil.reap_dead_owners)."""
    from orchestrator.adapters import fsutil

    return bool(fsutil.reap_dead_owners(path.parent, path.name, fsutil.remove_path))


def test_lock_held_sees_another_holder_and_a_dead_one(tmp_path):
    from filelock import FileLock

    from orchestrator.adapters import fsutil

    lock = tmp_path / "x.lock"
    assert not fsutil.lock_held(lock)  # no file: nobody
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom filelock import FileLock\n"
                               f"l = FileLock({str(lock)!r}); l.acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert fsutil.lock_held(lock)
    finally:
        holder.kill()
        holder.wait()
    assert not fsutil.lock_held(lock)  # the kernel dropped a killed holder's lock
    with FileLock(str(lock)):
        assert fsutil.lock_held(lock)


def test_a_shared_session_runs_two_reproducers_each_with_its_own_console_part_and_files(tmp_path):
    """One guest, two reproducers: the second's upload first clears the first's directory, each
    run's console part is its own (the first's trace is not the second's), each probe directory
    gets its console.log, and the domain is destroyed once, at the end."""
    dom = FakeVM(console="boot\n")
    commands: list[str] = []

    def on_run(guest, command, on_output, should_abort):
        commands.append(command)
        if "rm -rf" in command:
            return ssh.RunResult(exit_code=0, stdout="", stderr="", timed_out=False, aborted=None, seconds=0.0)
        n = sum("bash" in c for c in commands)
        dom.text += f"run {n} says hello\n" + ("WARNING: CPU: 0 PID: 7 at first\n" if n == 1 else "")
        return _exit(0, f"ok {n}\n")(guest, command, on_output, should_abort)

    guest = FakeGuest(dom, on_run=on_run)
    s = _session(tmp_path, dom, lambda port, deadline, blocker: guest, on_output=lambda which, line: None)
    s.prepare()
    assert s.boot() and s.upload()
    s.run()
    s.collect()
    s.finish_run()
    first = s.observation
    second_dir = tmp_path / "probe2"
    s.next_run(Bug(id="fake2", dir=tmp_path, timeout=60), second_dir, upload_dirs=[tmp_path])
    assert s.upload()
    s.run()
    s.collect()
    s.teardown()
    second = s.observation
    assert first is not second and second.booted and dom.destroyed == [True]
    assert first.console_run == "run 1 says hello\nWARNING: CPU: 0 PID: 7 at first\n"
    assert second.console_run == "run 2 says hello\n" and "WARNING" in second.console_boot
    assert commands[1].startswith("rm -rf /root/repro ")  # before the second upload, not the first
    assert sum("rm -rf" in c for c in commands) == 1
    assert (tmp_path / "probe" / "console.log").read_text().endswith("at first\n")
    assert (second_dir / "console.log").read_text().endswith("run 2 says hello\n")
    assert classify(first, BUG60).verdict is Verdict.SKIP and classify(second, BUG60)[:2] == (Verdict.GOOD, "ok 2")
    assert list(second.phases) == ["upload", "run", "collect", "teardown"]
