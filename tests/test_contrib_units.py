"""The nightly-sweep units in contrib/: the systemd service and timer, and the cron line.

`systemd-analyze verify` checks both units as systemd itself would load them (systemd-analyze(1));
it refuses a unit whose ExecStart binary is missing, so it is run on a copy rendered with this
checkout's own `.venv/bin/kbisect` in place of the documented /srv/kbisect path, which the shipped
files keep. The properties the sweep depends on (exit 1 is a success, oneshot, KillMode=mixed,
a persistent timer) are asserted on the shipped files, and the cron line is checked to run the
same command with the same environment as the service, and run for real in /bin/sh against a stub
kbisect to show what cron mails for each exit code and that flock keeps two nights apart.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import in_ci

REPO = Path(__file__).resolve().parents[1]
CONTRIB = REPO / "contrib"
SERVICE = CONTRIB / "kbisect-sweep.service"
TIMER = CONTRIB / "kbisect-sweep.timer"
CRON = CONTRIB / "kbisect-sweep.cron"
DOCUMENTED_CHECKOUT = "/srv/kbisect"
DOCUMENTED_KBISECT = f"{DOCUMENTED_CHECKOUT}/.venv/bin/kbisect"
# the console script setup.sh installs: sys.executable is .venv/bin/python in this suite
VENV_KBISECT = Path(sys.executable).parent / "kbisect"
SHELL_OPERATORS = {"||", "&&", ";", "|", "&"}


# --- a small unit-file reader ------------------------------------------------------------------

def read_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Sections of a systemd unit file as ordered (key, value) lists: keys such as Environment=
    repeat, which configparser would collapse. Comments start with # or ; and a trailing
    backslash continues a line (systemd.syntax(7))."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for raw in path.read_text().splitlines():
        line = (pending + raw.strip()) if pending else raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{path.name}: {line!r} before any [Section]"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r} is not Key=Value"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key}= set {len(found)} times: {found}"
    return found[0]


def environment(unit: dict[str, list[tuple[str, str]]]) -> dict[str, str]:
    """Environment= lines (each may hold several quoted A=B words) as one mapping."""
    env: dict[str, str] = {}
    for line in values(unit, "Service", "Environment"):
        for word in shlex.split(line):
            name, _, value = word.partition("=")
            env[name] = value
    return env


def seconds(span: str) -> float:
    """A systemd time span ("6h", "5min", "90s", "1h 30min") in seconds (systemd.time(7))."""
    units = {"h": 3600, "hr": 3600, "min": 60, "m": 60, "s": 1, "sec": 1}
    total = 0.0
    for word in span.split():
        number = word.rstrip("abcdefghijklmnopqrstuvwxyz")
        total += float(number) * units[word[len(number):] or "s"]
    return total


# --- the cron file -----------------------------------------------------------------------------

@dataclass(frozen=True)
class CronJob:
    schedule: list[str]
    user: str
    command: str
    env: dict[str, str]


def read_cron(path: Path) -> CronJob:
    """The one job of an /etc/cron.d file and the variables set before it (crontab(5))."""
    env: dict[str, str] = {}
    jobs: list[CronJob] = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        head = line.split(None, 1)[0]
        if "=" in head and not head[0].isdigit() and not head.startswith("*"):
            name, _, value = line.partition("=")
            env[name.strip()] = value.strip()
            continue
        fields = line.split(None, 6)
        assert len(fields) == 7, f"not an /etc/cron.d job (5 time fields, user, command): {line!r}"
        jobs.append(CronJob(fields[:5], fields[5], fields[6], dict(env)))
    assert len(jobs) == 1, f"{path.name}: {len(jobs)} jobs, expected one"
    return jobs[0]


def kbisect_argv(words: list[str]) -> list[str]:
    """The kbisect invocation inside a shell command: from the word naming the kbisect binary (not
    the checkout directory, also called kbisect) to the first redirection or shell operator."""
    start = next(i for i, w in enumerate(words) if w == "kbisect" or w.endswith("/bin/kbisect"))
    argv: list[str] = []
    for word in words[start:]:
        if word in SHELL_OPERATORS or word[:1] in "<>" or word[:2] in ("1>", "2>"):
            break
        argv.append(word)
    return argv


def cron_words(job: CronJob) -> list[str]:
    lexer = shlex.shlex(job.command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


# --- systemd-analyze ---------------------------------------------------------------------------

def systemd_analyze() -> str:
    """The tool's path; where it is missing, CI fails (it must check the units) and any other
    machine skips naming that fact."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        message = "systemd-analyze is not on PATH (Debian package systemd)"
        if in_ci():
            pytest.fail(f"CI must verify the contrib units, but {message}")
        pytest.skip(message)
    return tool


def render(tmp_path: Path, service_text: str | None = None) -> tuple[Path, Path]:
    """The two units in `tmp_path`, the service pointed at this checkout's kbisect."""
    text = SERVICE.read_text() if service_text is None else service_text
    assert DOCUMENTED_KBISECT in text
    text = text.replace(DOCUMENTED_KBISECT, str(VENV_KBISECT))
    text = text.replace(f"WorkingDirectory={DOCUMENTED_CHECKOUT}", f"WorkingDirectory={REPO}")
    service = tmp_path / SERVICE.name
    service.write_text(text)
    timer = tmp_path / TIMER.name
    shutil.copyfile(TIMER, timer)
    return service, timer


def verify(tool: str, *units: Path) -> list[str]:
    """What `systemd-analyze verify` says about these units: its exit status counts only hard
    errors, while an unknown key or an unparsable value is a warning line naming the file and
    the unit is loaded without it, so those lines are problems too."""
    proc = subprocess.run([tool, "verify", *map(str, units)], capture_output=True, text=True, timeout=120)
    names = [u.name for u in units] + [str(u.parent) for u in units]
    said = [line for line in (proc.stdout + proc.stderr).splitlines() if any(n in line for n in names)]
    if proc.returncode != 0:
        said.append(f"exit {proc.returncode}: {proc.stderr.strip()}")
    return said


def test_venv_kbisect_exists() -> None:
    assert VENV_KBISECT.is_file() and os.access(VENV_KBISECT, os.X_OK), f"{VENV_KBISECT} (./setup.sh makes it)"


def test_systemd_analyze_verify_accepts_both_units(tmp_path: Path) -> None:
    tool = systemd_analyze()
    service, timer = render(tmp_path)
    assert verify(tool, service, timer) == []


def test_systemd_analyze_verify_catches_a_broken_service(tmp_path: Path) -> None:
    """The verify check above can fail: a misspelt key, and a binary that is not there."""
    tool = systemd_analyze()
    broken = SERVICE.read_text().replace("\n[Service]\n", "\n[Service]\nKilMode=mixed\n", 1)
    assert "KilMode" in broken
    service, timer = render(tmp_path, broken)
    assert any("KilMode" in line for line in verify(tool, service, timer))
    missing = tmp_path / "missing"
    missing.mkdir()
    shutil.copyfile(SERVICE, missing / SERVICE.name)  # the shipped path: no /srv/kbisect here
    shutil.copyfile(TIMER, missing / TIMER.name)
    if not Path(DOCUMENTED_KBISECT).exists():
        assert verify(tool, missing / SERVICE.name, missing / TIMER.name) != []


def test_timer_calendar_is_nightly() -> None:
    tool = systemd_analyze()
    calendar = one(read_unit(TIMER), "Timer", "OnCalendar")
    proc = subprocess.run([tool, "calendar", "--iterations=2", calendar], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    normalized = next(line.split(":", 1)[1].strip() for line in proc.stdout.splitlines()
                      if line.strip().startswith("Normalized form:"))
    date, _, clock = normalized.partition(" ")
    assert date == "*-*-*", f"not every day: {normalized}"
    assert "*" not in clock and "," not in clock, f"more than once a day: {normalized}"


# --- the properties the sweep depends on -------------------------------------------------------

def test_service_is_a_oneshot_running_the_documented_sweep() -> None:
    unit = read_unit(SERVICE)
    assert one(unit, "Service", "Type") == "oneshot"
    argv = shlex.split(one(unit, "Service", "ExecStart"))
    assert argv[:2] == [DOCUMENTED_KBISECT, "sweep"]
    assert one(unit, "Service", "WorkingDirectory") == DOCUMENTED_CHECKOUT
    env = environment(unit)
    assert {"KBISECT_HOME", "KBISECT_RESULTS"} <= env.keys()
    assert all(Path(env[k]).is_absolute() for k in ("KBISECT_HOME", "KBISECT_RESULTS"))
    assert "Install" not in unit, "the timer starts the service; enabling it alone would run it at boot"


def test_service_exit_codes_match_the_sweep() -> None:
    """Exit 1 (a regression found) and 143 (a clean SIGTERM stop) are successes; 2 and 3 (no cell
    decided) are failures. The codes are the CLI's own constants."""
    from orchestrator.cli.sweep import EXIT_NOTHING_DECIDED, EXIT_REGRESSION
    from orchestrator.core.errors import KbisectError

    codes = " ".join(values(read_unit(SERVICE), "Service", "SuccessExitStatus")).split()
    assert str(EXIT_REGRESSION) in codes
    assert str(128 + 15) in codes
    assert str(EXIT_NOTHING_DECIDED) not in codes and str(KbisectError.exit_code) not in codes


def test_service_stops_through_kbisect() -> None:
    unit = read_unit(SERVICE)
    assert one(unit, "Service", "KillMode") == "mixed"
    assert values(unit, "Service", "KillSignal") in ([], ["SIGTERM"])
    assert 60 <= seconds(one(unit, "Service", "TimeoutStopSec")) <= 3600
    # a whole catalog under TCG, with a first night's downloads and builds, takes hours
    assert seconds(one(unit, "Service", "TimeoutStartSec")) >= 3 * 3600
    assert int(one(unit, "Service", "Nice")) > 0
    assert one(unit, "Service", "IOSchedulingClass") in ("best-effort", "idle")


def test_timer_is_persistent_and_spread() -> None:
    unit = read_unit(TIMER)
    assert one(unit, "Timer", "Persistent") == "true"
    assert seconds(one(unit, "Timer", "RandomizedDelaySec")) > 0
    assert one(unit, "Timer", "Unit") == SERVICE.name
    assert one(unit, "Install", "WantedBy") == "timers.target"


def test_service_command_is_accepted_by_kbisect() -> None:
    """The sweep options in ExecStart parse with the installed CLI (`--help` after them stops
    before anything runs; an unknown option or a bad value is exit 2)."""
    argv = shlex.split(one(read_unit(SERVICE), "Service", "ExecStart"))
    proc = subprocess.run([str(VENV_KBISECT), *argv[1:], "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    bad = subprocess.run([str(VENV_KBISECT), *argv[1:], "--no-such-option", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2


# --- the cron line -----------------------------------------------------------------------------

def test_cron_runs_the_service_command_with_its_environment() -> None:
    unit = read_unit(SERVICE)
    job = read_cron(CRON)
    words = cron_words(job)
    assert kbisect_argv(words) == shlex.split(one(unit, "Service", "ExecStart"))
    for name, value in environment(unit).items():
        assert job.env.get(name) == value, f"cron {name}={job.env.get(name)} but the service has {value}"
    assert words[:3] == ["cd", one(unit, "Service", "WorkingDirectory"), "&&"]
    assert job.user == "root"
    assert "%" not in job.command, "cron turns % into a newline"
    assert "sbin" in job.env.get("PATH", ""), "mkfs.ext4 and friends live in sbin; cron's PATH lacks it"


def test_cron_line_is_nightly_under_flock() -> None:
    job = read_cron(CRON)
    minute, hour, *rest = job.schedule
    assert minute.isdigit() and hour.isdigit() and rest == ["*", "*", "*"]
    words = cron_words(job)
    flock = words.index("flock")
    assert "-n" in words[flock:words.index(kbisect_argv(words)[0])]


def _run_cron_command(tmp_path: Path, exit_code: int) -> subprocess.CompletedProcess:
    """The cron job's command in /bin/sh, as cron runs it, with kbisect replaced by a stub that
    records its arguments and exits `exit_code`, and the lock and log moved into `tmp_path`."""
    checkout = tmp_path / "checkout"
    (checkout / ".venv" / "bin").mkdir(parents=True, exist_ok=True)
    stub = checkout / ".venv" / "bin" / "kbisect"
    stub.write_text(f'#!/bin/sh\necho "args: $*"\necho "home: $KBISECT_HOME"\nexit {exit_code}\n')
    stub.chmod(0o755)
    job = read_cron(CRON)
    command = (job.command.replace(DOCUMENTED_CHECKOUT, str(checkout))
               .replace("/run/lock/", f"{tmp_path}/").replace("/var/log/", f"{tmp_path}/"))
    assert str(stub) in command
    return subprocess.run([job.env.get("SHELL", "/bin/sh"), "-c", command], capture_output=True, text=True,
                          env=job.env, timeout=60)


def test_cron_is_silent_on_a_quiet_night_and_mails_one_line_otherwise(tmp_path: Path) -> None:
    if shutil.which("flock", path=read_cron(CRON).env.get("PATH")) is None:
        pytest.fail("flock (util-linux) is not on PATH: the cron line needs it")
    quiet = _run_cron_command(tmp_path, 0)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    log = (tmp_path / "kbisect-sweep.log").read_text()
    assert f"args: {' '.join(kbisect_argv(cron_words(read_cron(CRON)))[1:])}\n" in log
    assert f"home: {environment(read_unit(SERVICE))['KBISECT_HOME']}\n" in log
    for code in (1, 2, 3):
        night = _run_cron_command(tmp_path, code)
        lines = night.stdout.splitlines()
        assert len(lines) == 1 and f"exit {code} " in lines[0], night.stdout
        assert night.stderr == ""


def test_cron_skips_a_night_while_the_previous_sweep_holds_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / "kbisect-sweep.lock"
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # the previous night's sweep, still running
        night = _run_cron_command(tmp_path, 0)
    assert "exit 75 " in night.stdout
    assert not (tmp_path / "kbisect-sweep.log").exists() or "args:" not in (tmp_path / "kbisect-sweep.log").read_text()
