"""Guest-supplied artefact names never choose where the host writes (issue 11, item 9).

The guest is the kernel under test; its SFTP server answers with whatever names it likes. A
fake SFTP client stands for it (the collaborator `fetch_tree` is given), serving a tree whose
names try to climb out of the probe directory."""

from __future__ import annotations

import stat
from dataclasses import dataclass
from pathlib import Path

from orchestrator.adapters.guest.ssh import fetch_tree, safe_name


@dataclass
class Attr:
    filename: str
    st_mode: int


class HostileSftp:
    """A remote tree as {dir: {name: bytes | None (a directory)}}; get() copies the bytes."""

    def __init__(self, tree: dict[str, dict[str, bytes | None]]) -> None:
        self.tree = tree

    def listdir_attr(self, path: str) -> list[Attr]:
        if path not in self.tree:
            raise FileNotFoundError(path)
        return [Attr(n, stat.S_IFDIR | 0o755 if v is None else stat.S_IFREG | 0o644)
                for n, v in self.tree[path].items()]

    def get(self, remote: str, local: str) -> None:
        files = {f"{d}/{n}": v for d, entries in self.tree.items() for n, v in entries.items()}
        data = files[remote]  # the raw name the guest listed: that is what the guest serves
        assert data is not None
        Path(local).write_bytes(data)


def test_safe_name_reduces_to_a_base_name():
    assert safe_name("../../etc/passwd") == "passwd"
    assert safe_name("/abs/evil") == "evil"
    assert safe_name("a\\..\\b") == "b"
    assert safe_name("..") is None and safe_name(".") is None and safe_name("dir/") is None
    assert safe_name("nul\x00name") == "nulname"
    assert safe_name("ok.txt") == "ok.txt"


def test_fetch_tree_writes_only_inside_the_probe_directory(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    probe = tmp_path / "probe" / "out"
    sftp = HostileSftp({
        "/root/repro/out": {
            "../../outside/planted": b"escape",
            "/abs/planted2": b"escape2",
            "..": None,
            "sub": None,
            "good.txt": b"fine",
        },
        "/root/repro/out/sub": {"../../../outside/deep": b"escape3", "inner.txt": b"inner"},
        "/root/repro/out/..": {"x": b"parent"},
    })
    got = fetch_tree(sftp, "/root/repro/out", probe)
    assert list(outside.iterdir()) == []
    names = sorted(p.relative_to(probe).as_posix() for p in got)
    assert names == ["good.txt", "planted", "planted2", "sub/deep", "sub/inner.txt"]
    for p in got:
        assert p.resolve().is_relative_to(probe.resolve())
    assert (probe / "planted").read_bytes() == b"escape"  # kept, but as a harmless base name


def test_fetch_tree_missing_remote_dir_gives_nothing(tmp_path):
    assert fetch_tree(HostileSftp({}), "/root/repro/out", tmp_path / "p") == []
    assert not (tmp_path / "p").exists()
