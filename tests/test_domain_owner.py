"""Quick tier: a domain is touched only by its owner's home (no VM, a fake libvirt connection).

Two $KBISECT_HOMEs on one host share libvirt and the `kbisect-` name prefix. `kbisect gc` and the
reaper at the start of every run (adapters/guest/vm.py `gc`) must destroy only domains whose
<metadata> names their own home and whose owner is dead; `VM.destroy` after a failed start must
not destroy, by name, a domain someone else started under that name. The real-boot counterpart
is tests/test_two_homes_vm.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from orchestrator.adapters.guest import vm


def _dead_pid() -> int:
    """A pid no process can have: beyond the kernel's pid_max."""
    return int(Path("/proc/sys/kernel/pid_max").read_text()) + 1000


def _xml(name: str, owner: vm.Owner | None) -> str:
    """The domain XML kbisect renders (or, for `owner=None`, one without kbisect's metadata whose
    description still names a dead pid, as a domain of another tool or an older kbisect)."""
    if owner is None:
        return (f"<domain type='qemu'><name>{name}</name>"
                f"<description>kbisect probe VM (owner pid {_dead_pid()} start 1)</description></domain>")
    return vm.render_domain_xml(
        name=name, domain_type="qemu", owner=owner, memory_mb=512, cpus=1, kernel="/k/vmlinuz",
        initrd="/k/initrd.img", cmdline="console=ttyS0", emulator="/usr/bin/qemu-system-x86_64",
        overlay="/r/overlay.qcow2", modules_disk="/k/modules.ext4", console_log="/r/console.log", ssh_port=40022)


class FakeDomain:
    def __init__(self, name: str, xml: str) -> None:
        self._name, self._xml = name, xml
        self.destroyed = False

    def name(self) -> str:
        return self._name

    def XMLDesc(self, _flags: int) -> str:  # noqa: N802 (libvirt's naming)
        return self._xml

    def isPersistent(self) -> int:  # noqa: N802
        return 0

    def isActive(self) -> int:  # noqa: N802
        return int(not self.destroyed)

    def destroy(self) -> None:
        self.destroyed = True


class FakeConn:
    """listAllDomains and lookupByName over a fixed set of domains."""

    def __init__(self, domains: list[FakeDomain]) -> None:
        self.domains = {d.name(): d for d in domains}

    def listAllDomains(self, _flags: int) -> list[FakeDomain]:  # noqa: N802
        return list(self.domains.values())

    def lookupByName(self, name: str) -> FakeDomain:  # noqa: N802
        return self.domains[name]


def _owner(home: Path, pid: int, start: int | None = None, pidns: str | None = None) -> vm.Owner:
    return vm.Owner(home=vm.home_key(home), pid=pid, start=vm._proc_start(pid) if start is None else start,
                    pidns=vm.this_pidns() if pidns is None else pidns)


def test_gc_destroys_only_its_own_homes_dead_owners_domains(tmp_path):
    home_a, home_b = tmp_path / "home-a", tmp_path / "home-b"
    for home in (home_a, home_b):
        (home / "runs").mkdir(parents=True)
    me, dead = os.getpid(), _dead_pid()
    domains = {
        "own-dead": _owner(home_b, dead, start=1),
        "own-live": _owner(home_b, me),
        "other-home-dead": _owner(home_a, dead, start=1),
        "other-home-live": _owner(home_a, me),
        "own-dead-other-pidns": _owner(home_b, dead, start=1, pidns="pid:[4026599999]"),
        "no-metadata": None,
    }
    fakes = [FakeDomain(f"kbisect-{key}-1", _xml(f"kbisect-{key}-1", owner)) for key, owner in domains.items()]
    conn = FakeConn(fakes + [FakeDomain("someone-else", _xml("someone-else", _owner(home_b, dead, start=1)))])

    # home B spelled through a symlink is still home B (homes are compared resolved)
    (tmp_path / "link-b").symlink_to(home_b)
    removed = vm.gc(home=tmp_path / "link-b", conn=conn)

    destroyed = sorted(name for name, d in conn.domains.items() if d.destroyed)
    assert destroyed == ["kbisect-own-dead-1"], destroyed
    assert removed == ["domain kbisect-own-dead-1"]


def test_gc_of_one_home_leaves_another_homes_run_directories(tmp_path):
    """Home A's dead run directory (overlay, console) is A's gc's to remove, never B's."""
    home_a, home_b = tmp_path / "home-a", tmp_path / "home-b"
    dead_a = home_a / "runs" / "dead01"
    (dead_a / "vm-1").mkdir(parents=True)
    (dead_a / "state.json").write_text(json.dumps({"pid": _dead_pid(), "start": 1}))
    (dead_a / "vm-1" / "overlay.qcow2").write_bytes(b"x")
    (home_b / "runs").mkdir(parents=True)
    assert vm.gc(home=home_b, conn=FakeConn([])) == []
    assert (dead_a / "vm-1" / "overlay.qcow2").exists()
    assert vm.gc(home=home_a, conn=FakeConn([])) == [f"run dir {dead_a}"]


def test_a_run_directory_of_another_pid_namespace_is_kept(tmp_path):
    run_dir = tmp_path / "runs" / "ns0001"
    run_dir.mkdir(parents=True)
    (run_dir / "state.json").write_text(json.dumps({"pid": _dead_pid(), "start": 1, "pidns": "pid:[4026599999]"}))
    assert vm.run_owner_alive(run_dir) is True


def test_a_failed_start_never_destroys_another_owners_domain_of_the_same_name(tmp_path):
    """createXML refused because another home's live domain has this name: VM.destroy's
    destroy-by-name must leave that domain alone, and still destroy one of its own owner."""
    mine = _owner(tmp_path / "home-b", os.getpid())
    theirs = _owner(tmp_path / "home-a", os.getpid())
    other = FakeDomain("kbisect-abc123-1", _xml("kbisect-abc123-1", theirs))
    vm._destroy_by_name(FakeConn([other]), "kbisect-abc123-1", mine)
    assert not other.destroyed
    own = FakeDomain("kbisect-abc123-1", _xml("kbisect-abc123-1", mine))
    vm._destroy_by_name(FakeConn([own]), "kbisect-abc123-1", mine)
    assert own.destroyed


def test_the_rendered_owner_reads_back_from_the_domain_xml(tmp_path):
    owner = _owner(tmp_path / "home with 'quotes' & <odd> chars", os.getpid())
    assert vm.owner_of(_xml("kbisect-x-1", owner)) == owner
    assert vm.owner_of(_xml("kbisect-x-1", None)) is None
    assert vm.owner_of("<domain") is None
