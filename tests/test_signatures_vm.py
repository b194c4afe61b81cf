"""Bug signatures on real boots (slow tier, `-m vm`, 2 boots of the stock Debian 6.1 cloud kernel).

The stock kernel prints a real WARNING from userspace here: the Debian cloud kernels have no
LKDTM (CONFIG_LKDTM is not set in their `config`) and no fault injection, but they load unsigned
modules (CONFIG_MODULE_SIG_FORCE is not set, no lockdown outside EFI Secure Boot, and the probe
boots the kernel directly). So the test builds its own module, `kbisect_warn.ko`, whose init calls
WARN(): compiled on this host against the kernel's own headers packages (linux-headers-<kver>, its
-common and linux-kbuild-6.1, fetched with apt like the variant builder's) by the compiler the
kernel names (gcc-12, checked as the variant builder checks it). insmod in the guest then makes
the kernel print a genuine `WARNING: CPU: 0 PID: … at …kbisect_warn.c:… kbisect_warn_init+…`
report with its call trace: no trace-shaped text is written to /dev/kmsg.

1. An ad-hoc reproducer directory (`--bug DIR` with its own bug.yaml) whose signature is
   gro-inner-th's, loading the module and exiting 0: the warning is unrelated, so SKIP
   "unrelated kernel trace: WARNING: …", with the trace in the record and on the console.
2. The same module with a signature that matches it, through the CLI (`kbisect run --bug DIR
   --json`), and the console log level lowered first (`dmesg -n 1`) so that only the dmesg
   saved after the run has the trace: BAD, naming the signature.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.core.verdict import Verdict

REPO = Path(__file__).resolve().parent.parent
KERNEL = "debian:6.1.0-54-cloud-amd64"
URI = "qemu:///system"

pytestmark = [pytest.mark.vm, pytest.mark.timeout(1800)]

MODULE_C = r"""
#include <linux/module.h>
#include <linux/bug.h>

static int __init kbisect_warn_init(void)
{
	WARN(1, "kbisect test warning\n");
	return 0;
}

static void __exit kbisect_warn_exit(void)
{
}

module_init(kbisect_warn_init);
module_exit(kbisect_warn_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("kbisect test: a real WARN() from a module's init");
"""

BUG_YAML = {
    "title": "an ad-hoc reproducer whose kernel warns",
    "summary": "loads a module that calls WARN() and exits 0",
    "timeout": 60,
    "repeat": {"runs": 1},
    "keywords": ["test"],
    "paths": ["kernel/panic.c"],
    "history": {"fixed": [{"sha": "0123456789ab", "subject": "none", "version": "v0"}]},
    "verify": {"no_control": "a test reproducer"},
}


def _kconfig(path: Path) -> dict[str, str]:
    from orchestrator.core.kconfig import parse_kconfig

    return parse_kconfig(path.read_text())


@pytest.fixture(scope="module")
def kernel(vm_host, shared_home):
    from orchestrator.adapters import sources

    return sources.fetch(KERNEL)


@pytest.fixture(scope="module")
def warn_module(kernel, tmp_path_factory) -> Path:
    """kbisect_warn.ko, built against `kernel`'s own headers with its own compiler."""
    from orchestrator.adapters.progress import StepLog
    from orchestrator.adapters.variants.packages import DebianPackages, debian_package_version
    from orchestrator.adapters.variants.toolchain import compiler_mismatch, host_compiler

    kconfig = _kconfig(kernel.config)
    # The facts the docstring relies on, read from the kernel's own config.
    assert kconfig.get("CONFIG_MODULES") == "y" and "CONFIG_MODULE_SIG_FORCE" not in kconfig
    cc, cc_line = host_compiler(kconfig)
    assert compiler_mismatch(kconfig.get("CONFIG_CC_VERSION_TEXT", ""), cc_line) is None, cc_line
    packages, progress = DebianPackages(), StepLog()
    headers_pkg = f"linux-headers-{kernel.kver}"
    headers = [packages.download(headers_pkg, packages.pick(headers_pkg, debian_package_version(kernel)), progress)]
    for dep in packages.depends(headers[0]):
        if (dep.startswith("linux-headers-") and "common" in dep) or dep.startswith("linux-kbuild-"):
            headers.append(packages.download(dep, packages.pick(dep, headers[0].version), progress))
    work = tmp_path_factory.mktemp("warn-module")
    root = work / "headers"
    for deb in headers:
        subprocess.run(["dpkg-deb", "-x", str(deb.path), str(root)], check=True)
    tree = root / "usr" / "src" / f"linux-headers-{kernel.kver}"
    makefile = tree / "Makefile"  # its include names /usr/src/...-common: point it at the unpacked copy
    makefile.write_text(re.sub(r"(?m)^(\s*include\s+)/usr/src/", rf"\g<1>{root}/usr/src/", makefile.read_text()))
    src = work / "src"
    src.mkdir()
    (src / "kbisect_warn.c").write_text(MODULE_C)
    (src / "Kbuild").write_text("obj-m := kbisect_warn.o\n")
    proc = subprocess.run(["make", "-C", str(tree), f"M={src}", f"CC={cc}", "modules"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ko = src / "kbisect_warn.ko"
    magic = subprocess.run(["modinfo", "-F", "vermagic", str(ko)], capture_output=True, text=True, check=True)
    assert magic.stdout.split()[0] == kernel.kver
    return ko


# More than virtlogd's default max_size (2 MiB, virtlogd.conf): written to the serial port before
# the warning, it makes virtlogd roll console.log over during the run, so the warning lands in a
# newer part than the run's start.
FILLER_BYTES = 2_600_000
FILLER = f"head -c {FILLER_BYTES} /dev/zero | tr '\\0' '.' | fold -w 99 > /dev/ttyS0; sleep 2\n"


def _reproducer(tmp_path: Path, name: str, ko: Path, signatures: list[str], quiet_console: bool,
                filler: bool = False) -> Path:
    """An ad-hoc reproducer directory with its own bug.yaml (what `--bug DIR` loads)."""
    d = tmp_path / name
    d.mkdir()
    (d / "kbisect_warn.ko").write_bytes(ko.read_bytes())
    (d / "run.sh").write_text(
        ("dmesg -n 1\n" if quiet_console else "")
        + (FILLER if filler else "")
        + "insmod ./kbisect_warn.ko || { echo 'insmod failed'; exit 125; }\n"
        "sleep 1\necho 'module loaded, exiting 0'\nexit 0\n"
    )
    (d / "bug.yaml").write_text(yaml.safe_dump({"id": name, **BUG_YAML, "signatures": signatures}))
    return d


def test_unrelated_warning_is_skip_with_the_trace_recorded(kernel, warn_module, tmp_path):
    from orchestrator.adapters import catalog
    from orchestrator.adapters.guest import probe

    bug = catalog.resolve(str(_reproducer(tmp_path, "warns-unrelated", warn_module,
                                          [r"\bskb_gso_transport_seglen\b"], quiet_console=False, filler=True)))
    rec = probe.run_probe_kernel(kernel, bug, uri=URI, progress=False)
    assert rec.verdict is Verdict.SKIP, (rec.reason, rec.output)
    assert rec.reason.startswith("unrelated kernel trace: WARNING: CPU: "), rec.reason
    assert "kbisect_warn_init" in rec.reason
    assert "kbisect_warn_init" in rec.unrelated_trace and "Call Trace" in rec.unrelated_trace
    assert rec.signature == "" and "module loaded, exiting 0" in rec.output  # the reproducer said good
    console = next(Path(a) for a in rec.artefacts if a.endswith("console.log")).read_text()
    assert re.search(r"WARNING: CPU: \d+ PID: \d+ at .*kbisect_warn\.c", console)
    # virtlogd rolled the log over (no part exceeds max_size) and every part was read, in order:
    # boot, the filler, then the warning
    assert len(console) > 2 * 1024 * 1024 and console.count("." * 99) >= FILLER_BYTES // 100 - 1
    assert console.index("Linux version") < console.index("." * 99) < console.index("kbisect_warn_init")
    stored = json.loads((Path(rec.artefacts[0]).parent / "record.json").read_text())
    assert stored["unrelated_trace"] == rec.unrelated_trace
    print(f"unrelated warning: {rec.verdict.value}: {rec.reason} ({rec.seconds:.1f}s)")


def test_matching_warning_seen_only_in_dmesg_is_bad(kernel, warn_module, tmp_path, shared_home):
    d = _reproducer(tmp_path, "warns-matching", warn_module, [r"\bkbisect_warn_init\b"], quiet_console=True)
    env = dict(os.environ, KBISECT_HOME=str(shared_home))
    r = subprocess.run([sys.executable, "-m", "orchestrator", "run", "--bug", str(d), "--kernel", KERNEL, "--json",
                        "--quiet"], capture_output=True, text=True, env=env, cwd=REPO, timeout=1500)
    assert r.returncode == 1, r.stderr[-3000:]
    rec = json.loads(r.stdout)
    assert rec["verdict"] == "bad" and rec["signature"] == r"\bkbisect_warn_init\b", rec["reason"]
    assert rec["reason"].startswith("kernel trace: WARNING: CPU: ") and "kbisect_warn_init" in rec["reason"]
    names = {Path(a).name: Path(a) for a in rec["artefacts"]}
    # the console stayed quiet (log level 1): the verdict came from the dmesg saved after the run
    assert "kbisect_warn_init" not in names["console.log"].read_text()
    assert "kbisect_warn_init" in names["dmesg.txt"].read_text()
    assert "kbisect_warn_init" in rec["console_excerpt"]
    print(f"matching warning (dmesg only): {rec['verdict']}: {rec['reason']} ({rec['seconds']:.1f}s)")
