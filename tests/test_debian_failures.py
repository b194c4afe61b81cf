"""The Debian archive's failures get the right answer and exit code (issue 20, "Wrong answers").

- An archive that cannot be reached: `apt-get update` exits 0 having fetched no list at all
  ("W: Failed to fetch … Could not connect"), so `kernels list --source debian` printed
  "debian kernels (0)" with exit 0 and `kernels fetch` said the kernel does not exist. Now both
  say the archive was unreachable, exit 2. Real apt-get, pointed at a closed port on 127.0.0.1.
- `apt-get download` refused (403): a KbisectError aborted a whole sweep (exit 2) and made
  `kbisect run` exit 128; it is now this kernel's trouble (SourceUnreachable): a skip cell, and
  `run` exits 125 as for any kernel that cannot be had. Fake apt-get/apt-cache on PATH (the real
  Apt class runs them) list one kernel and refuse its download.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fake_apt import apt_get

REPO = Path(__file__).resolve().parent.parent
CLOSED = "http://127.0.0.1:9/debian"  # nothing listens there
KERNEL = "6.1.0-54-cloud-amd64"

# `download` is refused, as apt says it when the archive answers 403
APT_GET = apt_get("""      echo "E: Failed to fetch http://127.0.0.1:9/debian/pool/main/l/x.deb  403  Forbidden" >&2
      exit 100""", "tests/test_debian_failures.py")

# apt-cache show's record form (deb822 paragraphs), one unsigned image package
APT_CACHE = f"""#!/bin/sh
# tests/test_debian_failures.py: one kernel, {KERNEL}, in apt's lists
for a in "$@"; do
  case "$a" in
    pkgnames) echo linux-image-{KERNEL}-unsigned; exit 0 ;;
    show)
      for p in "$@"; do
        if [ "$p" = linux-image-{KERNEL}-unsigned ]; then
          printf 'Package: linux-image-{KERNEL}-unsigned\\nVersion: 6.1.190-1\\nArchitecture: amd64\\n'
          printf 'Filename: pool/main/l/linux/linux-image-{KERNEL}-unsigned_6.1.190-1_amd64.deb\\n'
          printf 'Size: 100\\nSHA256: %064d\\n\\n' 0
        fi
      done
      exit 0 ;;
  esac
done
exit 0
"""


def kbisect(tmp: Path, *args: str, fake_apt: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBISECT_")}
    if fake_apt:
        bin_dir = tmp / "bin"
        bin_dir.mkdir(exist_ok=True)
        for name, text in (("apt-get", APT_GET), ("apt-cache", APT_CACHE)):
            (bin_dir / name).write_text(text)
            (bin_dir / name).chmod(0o755)
        env["PATH"] = f"{bin_dir}:{env.get('PATH', '')}"
    env.update(KBISECT_HOME=str(tmp / "home"), KBISECT_RESULTS=str(tmp / "results"), KBISECT_DEBIAN_MIRROR=CLOSED,
               KBISECT_MAINLINE_MIRROR="http://127.0.0.1:9/", KBISECT_UBUNTU_MIRROR="http://127.0.0.1:9/",
               COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "orchestrator", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("kbisect: error:")]


need_apt = pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt-get")


@need_apt
def test_list_with_the_archive_unreachable_says_so(tmp_path):
    proc = kbisect(tmp_path, "kernels", "list", "--source", "debian", fake_apt=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "debian kernels (0)" not in proc.stdout and "Traceback" not in proc.stderr
    (line,) = error_lines(proc)
    assert f"the Debian archive at {CLOSED} was unreachable" in line and "Could not connect" in line


@need_apt
def test_fetch_with_the_archive_unreachable_does_not_say_the_kernel_is_missing(tmp_path):
    proc = kbisect(tmp_path, "kernels", "fetch", f"debian:{KERNEL}", fake_apt=False)
    assert proc.returncode == 2
    (line,) = error_lines(proc)
    assert "was unreachable" in line and "no package linux-image" not in line


def test_run_skips_a_kernel_whose_download_is_refused(tmp_path):
    """`git bisect run` reads 125 as skip; 128 (before) stopped the whole bisection."""
    proc = kbisect(tmp_path, "run", "--bug", "gretap-ecn", "--kernel", f"debian:{KERNEL}", fake_apt=True)
    assert proc.returncode == 125, proc.stderr
    assert error_lines(proc) == []
    assert f"kbisect: skip: apt-get download linux-image-{KERNEL}-unsigned=6.1.190-1 failed" in proc.stderr
    assert "403" in proc.stderr


def test_sweep_gets_a_skip_cell_for_a_refused_download(tmp_path):
    """Before: the sweep stopped with exit 2 at this kernel; now its cell is a skip with the
    reason, and a sweep whose every cell skipped exits 3 (README)."""
    proc = kbisect(tmp_path, "sweep", "--bug", "gretap-ecn", "--line", "6.1", "--json", fake_apt=True)
    assert proc.returncode == 3, proc.stderr
    assert error_lines(proc) == []
    (cell,) = json.loads(proc.stdout)["cells"]
    assert cell["kernel"] == f"debian:{KERNEL}" and cell["verdict"] == "skip"
    assert "apt-get download" in cell["reason"] and "403" in cell["reason"]
    downloads = tmp_path / "home" / "downloads" / "debian"
    assert sorted(p.name for p in downloads.iterdir() if not p.name.endswith(".lock")) == []


def test_sweep_refuses_a_line_the_listing_does_not_have(tmp_path):
    """`--line 9.99` (a typo) was a column of "no reachable kernel" and exit 0; the listing here
    has 6.1 only."""
    proc = kbisect(tmp_path, "sweep", "--bug", "gretap-ecn", "--line", "9.99", "--plan", fake_apt=True)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert error_lines(proc) == ["kbisect: error: --line 9.99: the debian listing has no kernel of that line "
                                 "(its newest line is 6.1)"]
    kept = kbisect(tmp_path, "sweep", "--bug", "gretap-ecn", "--line", "6.1", "--plan", fake_apt=True)
    assert kept.returncode == 0 and f"debian:{KERNEL}" in kept.stdout, kept.stdout + kept.stderr
