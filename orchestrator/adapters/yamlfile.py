"""Reading a small YAML file a user hands kbisect (a reproducer's bug.yaml, a --verdicts file),
bounded in both ways a few KB can cost gigabytes.

`yaml.safe_load` refuses arbitrary objects, but not a "billion laughs" document: nine aliases of
nine aliases of ... compose into a small graph that anything walking the loaded value (a repr in
an error message, a flattening loop) expands into 9^9 items; PyYAML has no expansion limit (see
the "Billion laughs attack" article on Wikipedia for the shape). So the file is read only up to a
size bound, and the loader counts, at composition time, how many nodes its aliases stand for
(each alias costs the size of the whole subtree it repeats); past `MAX_ALIAS_NODES` the file is
refused before anything is constructed. An alias inside its own anchor (a cycle, which would
recurse without end in any walker) is refused too.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, SequenceNode

from orchestrator.core.errors import KbisectError

# Nodes that aliases may add to a document beyond those written in it. Real files use a few
# anchors (a repeated policy, a shared list); a bomb needs millions.
MAX_ALIAS_NODES = 100_000


class AliasBomb(ComposerError):
    """Aliases repeat more nodes than MAX_ALIAS_NODES, or one refers to a node containing it."""


class BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer keeps each composed node's expanded size (itself plus every node
    under it, aliases counted as the subtree they repeat) and the running cost of aliases."""

    max_alias_nodes = MAX_ALIAS_NODES

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._sizes: dict[int, int] = {}  # id(node) -> expanded size; nodes live as long as the loader
        self._alias_nodes = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        """PyYAML's compose_node (children come back through this method, so their sizes are
        known when their parent completes), with the alias budget charged before an alias is
        resolved."""
        if self.check_event(AliasEvent):
            self._charge_alias(self.peek_event())
            return super().compose_node(parent, index)
        node = super().compose_node(parent, index)
        self._sizes[id(node)] = 1 + sum(self._sizes.get(id(child), 1) for child in _children(node))
        return node

    def _charge_alias(self, event: AliasEvent) -> None:
        target = self.anchors.get(event.anchor)
        if target is None:
            return  # PyYAML raises its own "found undefined alias"
        size = self._sizes.get(id(target))
        if size is None:  # the anchored node is still being composed: the alias is inside it
            raise AliasBomb(None, None, f"alias *{event.anchor} refers to a node that contains it",
                            event.start_mark)
        self._alias_nodes += size
        if self._alias_nodes > self.max_alias_nodes:
            raise AliasBomb(None, None, f"aliases expand to more than {self.max_alias_nodes} nodes "
                                        "(a YAML bomb?)", event.start_mark)


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def read_text(source: Path, where: str, max_bytes: int) -> str:
    """The file as UTF-8 text, or one KbisectError starting with `where`: unreadable, not a
    regular file, larger than `max_bytes` (never read whole), binary, not UTF-8."""
    try:
        # O_NONBLOCK: a fifo must not block the open; then only regular files are read
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise KbisectError(f"{where}: no such file") from None
    except OSError as exc:
        raise KbisectError(f"{where}: cannot read: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise KbisectError(f"{where}: not a regular file (a directory, fifo, socket or device)")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            raw = fh.read(max_bytes + 1)
    except OSError as exc:
        raise KbisectError(f"{where}: cannot read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(raw) > max_bytes:
        raise KbisectError(f"{where}: larger than {max_bytes} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KbisectError(f"{where}: not UTF-8 text (byte {raw[exc.start]:#04x} at {exc.start}); "
                           "is it a binary file?") from None
    nul = text.find("\0")
    if nul >= 0:
        raise KbisectError(f"{where}: binary data (NUL character at {nul}), not YAML text")
    return text


def parse(text: str, where: str, expected: str = "valid YAML") -> object:
    """One YAML document through BoundedLoader, every way it can fail as one line `where: [line N]
    not <expected>: problem`: YAML errors, the bounds above, the ValueErrors PyYAML's
    constructors raise (a date like 2020-13-45, `!!int x`), deep nesting. The line never quotes
    the document's values."""
    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise KbisectError(f"{where}:{line} not {expected}: {problem}") from None
    except RecursionError:
        raise KbisectError(f"{where}: not {expected}: nested too deeply") from None
    except (ValueError, TypeError, AttributeError) as exc:  # PyYAML's constructors on bad scalars
        raise KbisectError(f"{where}: not {expected}: {type(exc).__name__}: {str(exc)[:200]}") from None
    finally:
        loader.dispose()


def load(source: Path, where: str, max_bytes: int, expected: str = "valid YAML") -> object:
    """read_text, then parse: a user's YAML file, bounded in size and in alias expansion."""
    return parse(read_text(source, where, max_bytes), where, expected)
