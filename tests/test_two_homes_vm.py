"""Two $KBISECT_HOMEs on one host (slow tier, one real boot): home B's `kbisect gc` and the
reaper every run starts with (probe._reap_stale) run again and again while home A probes.

A's probe must end with its real verdict, its domain, overlay and console untouched until it
tears them down itself, and B's gc and reaper must still remove B's own killed run (a domain
left without AUTODESTROY, and its run directory). Afterwards no domain of either home is left.
The quick counterpart, with a fake libvirt connection, is tests/test_domain_owner.py.

Only domains this test (or A's run it starts) created are ever destroyed here: other
developers' and CI's kbisect-* domains run on the same host.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.adapters.guest import vm

REPO = Path(__file__).resolve().parent.parent
URI = "qemu:///system"
KERNEL = "debian:6.1.0-54-cloud-amd64"  # the shared cache's kernel test_faults and test_probe boot

pytestmark = [pytest.mark.vm, pytest.mark.timeout(3600)]

REAP = "from orchestrator.adapters.guest import probe; probe._reap_stale(%r)" % URI


def _env(home: Path, results: Path) -> dict[str, str]:
    return dict(os.environ, KBISECT_HOME=str(home), KBISECT_RESULTS=str(results), PYTHONPATH=str(REPO),
                NO_PROXY="127.0.0.1,localhost")


def _kbisect(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator", *args]


def _domains(conn) -> dict[str, str]:
    """name -> XML of every kbisect domain on the URI (read only)."""
    import libvirt

    out = {}
    for dom in conn.listAllDomains(0):
        if dom.name().startswith(vm.PREFIX):
            try:
                out[dom.name()] = dom.XMLDesc(0)
            except libvirt.libvirtError:  # gone meanwhile
                pass
    return out


def _dead_owner(home: Path) -> vm.Owner:
    """The owner a SIGKILLed run of `home` leaves in its domain: a real pid and start time whose
    process has exited."""
    proc = subprocess.Popen(["sleep", "60"])
    start = vm._proc_start(proc.pid)
    proc.kill()
    proc.wait()
    return vm.Owner(home=vm.home_key(home), pid=proc.pid, start=start, pidns=vm.this_pidns())


def _killed_run(conn, home: Path, vmlinuz: Path) -> tuple[object, Path]:
    """What a SIGKILLed run of `home` leaves when its connection had no AUTODESTROY: the run
    directory (state.json, overlay, console) and its domain, here started paused (it costs no CPU;
    it is destroyed by gc as a running one is)."""
    import libvirt

    run_id = secrets.token_hex(3)
    run_dir = home / "runs" / run_id
    (run_dir / "vm-1").mkdir(parents=True)
    owner = _dead_owner(home)
    (run_dir / "state.json").write_text(json.dumps({"run_id": run_id, "pid": owner.pid, "start": owner.start,
                                                    "pidns": owner.pidns, "home": owner.home}))
    overlay, empty = run_dir / "vm-1" / "overlay.qcow2", run_dir / "vm-1" / "empty.img"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(overlay), "64M"], check=True)
    empty.write_bytes(b"\0" * (1 << 20))
    xml = vm.render_domain_xml(
        name=f"{vm.PREFIX}{run_id}-1", domain_type="qemu", owner=owner, memory_mb=128, cpus=1,
        kernel=str(vmlinuz), initrd=str(empty), cmdline="console=ttyS0", emulator=vm.VMConfig().emulator,
        overlay=str(overlay), modules_disk=str(empty), console_log=str(run_dir / "vm-1" / "console.log"),
        ssh_port=vm.free_port(), seclabel_user=os.getuid(), seclabel_group=os.getgid())
    return conn.createXML(xml, libvirt.VIR_DOMAIN_START_PAUSED), run_dir


def _disk_of(xml: str) -> Path:
    m = re.search(r"<source file='([^']+/overlay\.qcow2)'", xml)
    assert m, "no overlay in the domain XML"
    return Path(m.group(1))


def _b_step(cmd: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr


def test_another_homes_gc_and_reaper_leave_a_live_probe_alone(vm_host, shared_home, tmp_path):
    home_a, home_b = shared_home, tmp_path / "home-b"
    env_a, env_b = _env(home_a, tmp_path / "results-a"), _env(home_b, tmp_path / "results-b")
    home_b.mkdir()
    # the kernel comes from the shared cache (downloaded here on an empty one)
    subprocess.run(_kbisect("kernels", "fetch", KERNEL), env=env_a, cwd=REPO, capture_output=True, check=True,
                   timeout=1800)
    from orchestrator.adapters import sources

    vmlinuz = sources.fetch(KERNEL).vmlinuz
    repro = tmp_path / "two-homes"
    repro.mkdir()
    # a token of its own: no stored verdict can answer for this reproducer, the VM must boot
    (repro / "run.sh").write_text(f'echo "two-homes-start {secrets.token_hex(4)}"\nsleep 20\necho "two homes ok"\n')

    conn = vm.connect(URI)
    leftover = None
    a = None
    try:
        leftover, b_run = _killed_run(conn, home_b, vmlinuz)
        b_domain = leftover.name()
        with open(tmp_path / "a.err", "w") as a_err:
            a = subprocess.Popen(_kbisect("run", "--bug", str(repro), "--kernel", KERNEL, "--connect", URI, "--json"),
                                 env=env_a, cwd=REPO, stdout=subprocess.PIPE, stderr=a_err, text=True)
        a_domain, a_files, steps_while_live, steps_while_running = None, [], 0, 0
        reaped_first = False
        deadline = time.monotonic() + 1800
        while a.poll() is None:
            assert time.monotonic() < deadline, "A's probe did not finish"
            mine = {n: x for n, x in _domains(conn).items()
                    if (o := vm.owner_of(x)) is not None and o.pid == a.pid}
            if a_domain is None and mine:
                a_domain, xml = next(iter(mine.items()))
                owner = vm.owner_of(xml)  # what libvirt gives back: the metadata survived createXML
                assert owner.home == vm.home_key(home_a) and owner.start == vm._proc_start(a.pid), owner
                overlay = _disk_of(xml)
                a_files = [overlay, overlay.with_name("console.log")]
            if a_domain is None:
                time.sleep(0.5)
                continue
            # B's reaper first (it must take B's killed run), then B's gc, over and over
            out = _b_step([sys.executable, "-c", REAP], env_b) if not reaped_first else \
                _b_step(_kbisect("gc", "--connect", URI), env_b)
            reaped_first = True
            assert a_domain not in out and str(home_a) not in out, out
            live = a_domain in _domains(conn)
            if live:
                steps_while_live += 1
                missing = [str(p) for p in a_files if not p.exists()]
                # A's teardown destroys its domain before removing its files: files gone while the
                # domain still runs were removed by someone else
                assert not missing or a_domain not in _domains(conn), f"B removed A's live files: {missing}"
                if "two-homes-start" in (tmp_path / "a.err").read_text(errors="replace"):
                    steps_while_running += 1
            time.sleep(1.0)
        err = (tmp_path / "a.err").read_text(errors="replace")
        assert a.returncode == 0, err[-3000:]
        rec = json.loads(a.stdout.read())
        assert rec["verdict"] == "good" and rec["reason"] == "two homes ok", rec
        assert a_domain is not None and steps_while_live >= 2 and steps_while_running >= 1, \
            (steps_while_live, steps_while_running)
        # B's own killed run went (its reaper's or gc's work; any dead owner's home may do it)
        assert b_domain not in _domains(conn) and not b_run.exists()
        vm_deadline = time.monotonic() + 60  # libvirt reaps a destroyed domain asynchronously
        while a_domain in _domains(conn) and time.monotonic() < vm_deadline:
            time.sleep(0.5)
        assert a_domain not in _domains(conn), "A's domain outlived its run"
        leftover = None
    finally:
        if a is not None and a.poll() is None:
            a.send_signal(signal.SIGTERM)
            a.wait(timeout=300)
        if leftover is not None:  # our own paused domain only, by its handle
            import libvirt

            try:
                leftover.destroy()
            except libvirt.libvirtError:
                pass
        conn.close()
