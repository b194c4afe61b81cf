"""The probe VM's serial console as one trustworthy text: rotated parts read, lost parts noticed.

libvirt hands a `<serial type='file'>` log to virtlogd (qemu.conf `stdio_handler = "logd"`, the
default), and virtlogd rolls the file over at `max_size` (2 MiB by default, virtlogd.conf):
`console.log` is renamed to `console.log.0` (older parts shift to `.1`, `.2`, the oldest beyond
`max_backups`, 3 by default, is deleted) and a new `console.log` starts (libvirt
src/util/virrotatingfile.c, virRotatingFileWriterRollover). Rollover cannot be switched off per
domain (virtlogd.conf is host-wide; libvirt issue #85), so this reader follows the file it was
reading by its inode through the renames and reads every newer part after it, in order.

Text is lost only when the file it was reading is gone (rolled over past the backups between two
reads) or shrank (someone truncated it): each loss is remembered with the byte offset where the
gap is, so the probe can tell whether it hid part of the run (`lost_after`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

MAX_PARTS = 32  # rotated parts looked for (console.log.0 .. .31): far beyond virtlogd's default 3
_RETRIES = 4  # a rollover during one read is retried from the read's start
_TAIL_BYTES = 64  # the last bytes read from a file, compared to tell it from a rewrite or a reused inode


class Console(Protocol):
    """What the probe reads of a console: bytes seen so far, text from an offset, losses."""

    def size(self) -> int: ...

    def text(self, offset: int = 0) -> str: ...

    def lost_after(self, offset: int) -> str: ...


@dataclass
class Loss:
    """Console text that can no longer be read: the gap is at byte `offset` of the text."""

    offset: int
    why: str


@dataclass
class RotatingConsole:
    """A console log file that virtlogd may roll over; every call reads what is new first."""

    path: Path
    data: bytearray = field(default_factory=bytearray)
    losses: list[Loss] = field(default_factory=list)
    _ino: int | None = None  # the file read last (its inode), how far, and its last bytes
    _pos: int = 0
    _tail: bytes = b""
    _seen: set[int] = field(default_factory=set)  # inodes of every part read (to word a loss)

    # -- the Console protocol -------------------------------------------------------------------
    def size(self) -> int:
        self.poll()
        return len(self.data)

    def text(self, offset: int = 0) -> str:
        """Text from byte `offset` on (a kernel console prints ASCII, so bytes and characters agree)."""
        self.poll()
        return bytes(self.data[offset:]).decode("utf-8", errors="replace")

    def lost_after(self, offset: int) -> str:
        """Why text written after byte `offset` is missing, or "" when none is."""
        self.poll()
        return "; ".join(loss.why for loss in self.losses if loss.offset >= offset)

    # -- reading ------------------------------------------------------------------------------------
    def poll(self) -> None:
        """Read whatever was appended since the last call, following rollovers."""
        for attempt in range(_RETRIES):
            saved = (len(self.data), self._ino, self._pos, self._tail, len(self.losses))
            before = self._layout()
            self._read_new(before)
            if self._layout() == before or attempt == _RETRIES - 1:
                return
            # rolled over while reading: the names no longer mean what they meant; read again
            del self.data[saved[0]:]
            self._ino, self._pos, self._tail = saved[1], saved[2], saved[3]
            del self.losses[saved[4]:]

    def _parts(self) -> list[Path]:
        """Existing parts, oldest first: console.log.N ... console.log.0, console.log."""
        backups = [p for p in (self.path.with_name(f"{self.path.name}.{i}") for i in range(MAX_PARTS)) if p.exists()]
        return [*reversed(backups), *([self.path] if self.path.exists() else [])]

    def _layout(self) -> list[tuple[str, int]]:
        """(name, inode) of each part, oldest first: equal before and after a read means no
        rollover happened in between (sizes grow all the time and do not count)."""
        out = []
        for p in self._parts():
            try:
                out.append((p.name, p.stat().st_ino))
            except FileNotFoundError:
                continue
        return out

    def _read_new(self, layout: list[tuple[str, int]]) -> None:
        start, resume = self._where(layout)
        for k, (name, _ino) in enumerate(layout[start:]):
            self._read_part(self.path.with_name(name), resume=resume and k == 0)

    def _where(self, layout: list[tuple[str, int]]) -> tuple[int, bool]:
        """(index of the first part to read, whether it is the file read last, to go on at _pos).

        The file read last is found by its inode *and* by still holding the bytes read from it:
        a freed inode is soon reused for a new part, and a file rewritten in place keeps its inode.
        Parts are deleted oldest first, so when it is gone every part left is newer."""
        if self._ino is None or not layout:  # nothing read yet, or no file at all (nothing to lose)
            return 0, False
        for idx, (name, ino) in enumerate(layout):
            if ino == self._ino and self._continues(self.path.with_name(name)):
                return idx, True
        name, ino = layout[-1]
        unseen_backups = any(i not in self._seen for _n, i in layout[:-1])
        if name == self.path.name and ino == self._ino and not unseen_backups:
            size = self._size(self.path)
            self._lose(f"{name} shrank from {self._pos} to {size} bytes" if size < self._pos
                       else f"{name} was rewritten (it no longer holds the {self._pos} bytes read)")
            return len(layout) - 1, False
        self._lose(f"{self.path.name} rolled over past its backups between two reads")
        return 0, False

    def _continues(self, path: Path) -> bool:
        """`path` holds at least the bytes read from it, ending with the last ones read."""
        try:
            with open(path, "rb") as fh:
                if os.fstat(fh.fileno()).st_size < self._pos:
                    return False
                fh.seek(self._pos - len(self._tail))
                return fh.read(len(self._tail)) == self._tail
        except FileNotFoundError:
            return False

    @staticmethod
    def _size(path: Path) -> int:
        try:
            return path.stat().st_size
        except FileNotFoundError:
            return 0

    def _read_part(self, path: Path, resume: bool) -> None:
        try:
            fh = open(path, "rb")
        except FileNotFoundError:
            return
        with fh:
            if not resume:
                self._ino, self._pos, self._tail = os.fstat(fh.fileno()).st_ino, 0, b""
                self._seen.add(self._ino)
            fh.seek(self._pos)
            chunk = fh.read()
        self.data += chunk
        self._pos += len(chunk)
        self._tail = (self._tail + chunk)[-_TAIL_BYTES:]

    def _lose(self, why: str) -> None:
        self.losses.append(Loss(len(self.data), why))


@dataclass
class VMConsole:
    """A VM that serves its console itself (`console(offset)`, `console_size()`): the quick tests'
    fake domain. Only a shrink can be noticed here."""

    vm: object
    _seen: int = 0
    _lost: list[Loss] = field(default_factory=list)

    def size(self) -> int:
        n = self.vm.console_size()  # type: ignore[attr-defined]
        if n < self._seen:  # the text up to _seen changed under us: a gap ending there
            self._lost.append(Loss(self._seen, f"the console shrank from {self._seen} to {n} bytes"))
        self._seen = n
        return n

    def text(self, offset: int = 0) -> str:
        return self.vm.console(offset)  # type: ignore[attr-defined]

    def lost_after(self, offset: int) -> str:
        self.size()
        return "; ".join(loss.why for loss in self._lost if loss.offset >= offset)


def for_vm(vm: object) -> Console:
    """The reader for `vm`'s console: its log file when it has one (vm.VM), else its own methods."""
    path = getattr(vm, "console_log", None)
    if isinstance(path, Path) and path != Path():
        return RotatingConsole(path)
    return VMConsole(vm)
