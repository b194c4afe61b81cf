"""Quick tier for the guest runtime: pure parts, no VM booted.

Domain XML rendering, verdict classification from console text and exit codes, the CLI's
exit-code mapping on bad input, the initramfs writer and the recipe hash.
"""

from __future__ import annotations

import gzip
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from orchestrator.adapters.guest import bootfiles, image, probe, vm
from orchestrator.core.verdict import ProbeRecord, Verdict

QEMU_NS = "{http://libvirt.org/schemas/domain/qemu/1.0}"


def _render(**over):
    values = dict(
        name="kbisect-abc123-1",
        domain_type="qemu",
        owner_pid="4242 start 99",
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


def test_classify_exit_codes():
    ok = dict(booted=True, stdout="step\nall good\n\n", timeout=60)
    assert probe.classify(exit_code=0, **ok)[:2] == (Verdict.GOOD, "all good")
    assert probe.classify(exit_code=1, **ok)[:2] == (Verdict.BAD, "all good")
    assert probe.classify(exit_code=125, **ok)[:2] == (Verdict.SKIP, "all good")
    v, reason, _ = probe.classify(exit_code=3, **ok)
    assert v is Verdict.SKIP and "exit 3" in reason
    v, reason, _ = probe.classify(exit_code=124, **ok)
    assert v is Verdict.SKIP and "timed out after 60s" in reason
    v, reason, _ = probe.classify(exit_code=None, timed_out=True, **ok)
    assert v is Verdict.SKIP and "timed out" in reason
    v, reason, _ = probe.classify(exit_code=None, lost="EOFError", **ok)
    assert v is Verdict.SKIP and "EOFError" in reason


def test_classify_kernel_word_wins():
    v, reason, excerpt = probe.classify(booted=True, exit_code=0, stdout="fine", console_run=PANIC_CONSOLE)
    assert v is Verdict.BAD and "sysrq triggered crash" in reason and "Call Trace" in excerpt
    v, reason, excerpt = probe.classify(booted=True, exit_code=0, stdout="fine", console_run=WARN_CONSOLE)
    assert v is Verdict.BAD and reason.startswith("kernel trace: WARNING: CPU: 0") and "cut here" in excerpt
    v, reason, _ = probe.classify(booted=True, exit_code=None, crashed=True, console_run="")
    assert v is Verdict.BAD and "panic" in reason
    # Boot noise before the run does not count: the caller passes only post-run-start text.
    v, _, _ = probe.classify(booted=True, exit_code=0, stdout="fine", console_boot=WARN_CONSOLE, console_run="")
    assert v is Verdict.GOOD


def test_classify_boot_failure():
    v, reason, excerpt = probe.classify(booted=False, boot_reason="guest shutoff before ssh: x", console_boot="a\nb\nlast line")
    assert v is Verdict.SKIP and reason.startswith("boot failure") and excerpt.endswith("last line")


def test_aggregate():
    def rec(v):
        return ProbeRecord(kernel="k", bug="b", verdict=v, reason="")

    G, B, S = Verdict.GOOD, Verdict.BAD, Verdict.SKIP
    assert probe.aggregate([rec(G), rec(B)]) is B
    assert probe.aggregate([rec(G), rec(B)], bad_needed=2) is G
    assert probe.aggregate([rec(S), rec(S)]) is S
    assert probe.aggregate([rec(S), rec(G)]) is G


def test_cmdline_carries_key_and_root():
    line = probe.build_cmdline("kbisect.key=ecdsa-sha2-nistp256:AAAA")
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
    assert r.returncode == 2 and "Traceback" not in r.stderr


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
    vm._gc_run_dirs(include_live=False)
    assert not dead.exists()
    assert live.dir.exists()
    live.close()


def _fake_kernel(root, module_bytes: bytes):
    from orchestrator.adapters.kernel import UnpackedKernel

    (root / "modules" / "kernel" / "drivers" / "net").mkdir(parents=True)
    (root / "vmlinuz").write_bytes(b"\x00" * 64)
    (root / "modules" / "kernel" / "drivers" / "net" / "veth.ko").write_bytes(module_bytes)
    return UnpackedKernel(spec="local:test", root=root, kver="6.1.0-test")


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
