"""KVM or TCG: decided by trying, once per machine, and cached.

The presence of /dev/kvm proves nothing: on some hosts it exists and answers the API-version
ioctl, yet `-cpu host` makes QEMU assert and `-cpu qemu64` hangs the guest in the host kernel.
So we boot a real kernel with our initramfs (which prints a marker and powers off when the
command line says `kbisect.accelprobe`) under KVM with a short timeout; only if the marker
appears do we use KVM. The answer is cached in `$KBISECT_HOME/accel.json`, keyed by the host
kernel, the QEMU binary and the CPU model, so a host upgrade re-tests.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

from orchestrator.adapters.fsutil import atomic_write
from orchestrator.adapters import config
from orchestrator.core.errors import InstallationError, KbisectError

CHOICES = ("auto", "kvm", "tcg")
QEMU = "qemu-system-x86_64"
PROBE_TIMEOUT = 15.0  # a working KVM boots to the initramfs marker in ~1-2 s


def _cache_path() -> Path:
    return config.home() / "accel.json"


def _machine_key() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    qemu = ""
    for d in os.environ.get("PATH", "").split(":"):
        p = Path(d) / QEMU
        if p.exists():
            qemu = f"{p}:{p.stat().st_mtime_ns}"
            break
    return f"{platform.release()}|{qemu}|{cpu}"


def resolve(choice: str | None, vmlinuz: Path | None = None, initrd: Path | None = None) -> str:
    """'kvm' or 'tcg' for a user choice ('auto'/None tries KVM once, then remembers)."""
    choice = (choice or os.environ.get("KBISECT_ACCEL") or "auto").lower()
    if choice not in CHOICES:
        raise KbisectError(f"--accel must be one of {', '.join(CHOICES)}, not {choice!r}")
    if choice != "auto":
        return choice
    key = _machine_key()
    path = _cache_path()
    try:
        cached = json.loads(path.read_text())
        if cached.get("key") == key and cached.get("accel") in ("kvm", "tcg"):
            return cached["accel"]
    except (OSError, ValueError):
        pass
    if vmlinuz is None or initrd is None:
        # Nothing to try with: do not cache a guess.
        return "tcg" if not os.path.exists("/dev/kvm") else "kvm"
    ok, detail = kvm_works(vmlinuz, initrd)
    accel = "kvm" if ok else "tcg"
    atomic_write(path, json.dumps({"key": key, "accel": accel, "detail": detail, "tested_at": time.time()}, indent=2))
    return accel


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the orchestrator dies (Ctrl-C, kill -9) mid-test."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):  # no glibc (musl) or no prctl: the timeout still kills it
        pass


def kvm_works(vmlinuz: Path, initrd: Path, timeout: float = PROBE_TIMEOUT) -> tuple[bool, str]:
    """Boot `vmlinuz` + our initramfs under KVM; True only if the guest reached the marker."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm missing or not accessible"
    with tempfile.TemporaryDirectory(prefix="kbisect-accel-") as tmp:
        log = Path(tmp) / "console.log"
        cmd = [
            QEMU, "-machine", "q35,accel=kvm", "-cpu", "host", "-m", "256", "-smp", "1",
            "-display", "none", "-no-reboot", "-nodefaults", "-serial", f"file:{log}",
            "-kernel", str(vmlinuz), "-initrd", str(initrd),
            "-append", "console=ttyS0 panic=-1 kbisect.accelprobe",
        ]
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    preexec_fn=_die_with_parent)
        except FileNotFoundError:
            raise InstallationError(f"{QEMU} is not installed (run ./setup.sh)") from None
        try:
            while time.monotonic() - t0 < timeout:
                if log.exists() and b"kbisect-accel-ok" in log.read_bytes():
                    return True, f"marker after {time.monotonic() - t0:.1f}s"
                if proc.poll() is not None:
                    err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
                    if log.exists() and b"kbisect-accel-ok" in log.read_bytes():
                        return True, f"marker after {time.monotonic() - t0:.1f}s"
                    return False, f"qemu exited {proc.returncode}: {err[-200:]}"
                time.sleep(0.2)
            return False, f"no marker within {timeout:.0f}s (guest hangs under KVM)"
        finally:
            if proc.poll() is None:
                proc.kill()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
