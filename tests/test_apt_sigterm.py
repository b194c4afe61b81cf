"""SIGTERM during an apt download stops kbisect at once, as Ctrl-C does (issue 20).

`apt-get download` used to be waited for in a worker thread: SIGTERM (raised as an exception in
the main thread, cli/base.py) reaches only kbisect, not apt, so the stop waited for the download
to end (up to two minutes measured), while Ctrl-C stopped at once because the terminal sends
SIGINT to apt too. Now apt runs in kbisect's main thread in its own process group
(fsutil.run_ticking), killed whole when the exception comes.

The test runs the real CLI, `kbisect kernels build --linux-source 6.1`, with fake `apt-get` and
`apt-cache` first on PATH: apt-cache shows one linux-source-6.1 version, and `apt-get download`
writes a partial file in its working directory, then sleeps two minutes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.fake_apt import apt_get

REPO = Path(__file__).resolve().parent.parent

# `download` leaves a partial file, says its pid, and sleeps (until killed)
APT_GET = apt_get("""      printf partial > linux-source-6.1_6.1.192-3_all.deb.partial
      echo $$ > "$FAKE_APT_MARK.tmp" && mv "$FAKE_APT_MARK.tmp" "$FAKE_APT_MARK"
      sleep 120
      exit 0""", "tests/test_apt_sigterm.py")

APT_CACHE = """#!/bin/sh
# tests/test_apt_sigterm.py: one downloadable linux-source-6.1 (apt-cache show's record form)
for a in "$@"; do
  case "$a" in
    show) printf 'Package: linux-source-6.1\\nVersion: 6.1.192-3\\n'
          printf 'Filename: pool/main/l/linux/linux-source-6.1_6.1.192-3_all.deb\\n\\n'; exit 0 ;;
  esac
done
exit 0
"""


def _fake_apt(bin_dir: Path) -> None:
    bin_dir.mkdir(parents=True)
    for name, text in (("apt-get", APT_GET), ("apt-cache", APT_CACHE)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_sigterm_during_apt_download_stops_at_once_and_leaves_nothing(tmp_path):
    _fake_apt(tmp_path / "bin")
    home, mark = tmp_path / "home", tmp_path / "apt-download-started"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KBISECT_")}
    env.update(PATH=f"{tmp_path / 'bin'}:{env.get('PATH', '')}", KBISECT_HOME=str(home),
               KBISECT_RESULTS=str(tmp_path / "results"), KBISECT_DEBIAN_MIRROR="http://127.0.0.1:9/debian",
               FAKE_APT_MARK=str(mark))
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator", "kernels", "build", "--linux-source", "6.1"],
                            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not mark.exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "apt-get download never started"
            time.sleep(0.1)
        apt_pid = int(mark.read_text())
        time.sleep(0.5)  # well inside the download
        proc.send_signal(signal.SIGTERM)
        began = time.monotonic()
        _out, err = proc.communicate(timeout=20)
        took = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert took < 5, f"took {took:.1f} s to stop"  # before: until apt-get's two minutes were over
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "kbisect: stopped by signal 15" in err and "Traceback" not in err
    assert not _alive(apt_pid), "apt-get download still runs"
    downloads = home / "variants" / "downloads"
    left = sorted(p.name for p in downloads.iterdir() if not p.name.endswith(".lock"))
    assert left == []  # no .dl-* directory, no partial .deb
