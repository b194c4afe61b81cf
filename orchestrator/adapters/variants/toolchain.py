"""The host tools a variant build runs, and the one rule about its compiler: the kernel's own.

A module built by another compiler may use another ABI or miscompile against the kernel's
expectations, so the host compiler must match CONFIG_CC_VERSION_TEXT exactly.
"""

from __future__ import annotations

import shutil
import subprocess

from orchestrator.core.errors import KbisectError


def _without_program(text: str) -> str:
    text = text.strip()
    return text.split(" ", 1)[1].strip() if " " in text else text


def _family(text: str) -> str:
    first = text.strip().split(" ", 1)[0]
    return "clang" if "clang" in first or "clang" in text else "gcc" if "gcc" in first else first


def compiler_mismatch(kernel_cc_text: str, host_version_line: str) -> str | None:
    """Why the host compiler must not build modules for this kernel, or None when it matches.

    Compares CONFIG_CC_VERSION_TEXT ("gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0") with the first
    line of `<cc> --version`, ignoring only the program name (gcc vs gcc-12): the family and the
    exact version, including the distro build, must agree.
    """
    if not kernel_cc_text.strip():
        return "the kernel config has no CONFIG_CC_VERSION_TEXT, so its compiler is unknown"
    if (_family(kernel_cc_text) != _family(host_version_line)
            or _without_program(kernel_cc_text) != _without_program(host_version_line)):
        return f"compiler mismatch: kernel built with {kernel_cc_text.strip()!r}, host has {host_version_line.strip()!r}"
    return None


def host_compiler(kconfig: dict[str, str]) -> tuple[str, str]:
    """(compiler command, its `--version` first line) for the compiler this kernel names, else gcc."""
    cc_text = kconfig.get("CONFIG_CC_VERSION_TEXT", "")
    wanted = cc_text.split(" ", 1)[0] if cc_text else ""
    for cc in dict.fromkeys(c for c in (wanted, "gcc") if c):
        path = shutil.which(cc)
        if path:
            proc = subprocess.run([path, "--version"], capture_output=True, text=True)
            if proc.returncode == 0 and proc.stdout:
                return cc, proc.stdout.splitlines()[0]
    raise KbisectError(f"no compiler found for this kernel (wanted {wanted or 'gcc'}; run ./setup.sh)")
