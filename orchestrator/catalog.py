"""The reproducer catalog: `--bug ID` (or a directory path) resolves to a Bug.

A reproducer directory holds `bug.yaml` and the scripts that run inside the guest; the
guest runs `bash <entry>` in a copy of the directory and reads its exit code
(0 good, 1 bad, 125 skip).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from orchestrator import config
from orchestrator.errors import KbisectError


@dataclass
class RepeatPolicy:
    """How many runs one verdict needs. Deterministic reproducers need one."""

    runs: int = 1
    bad_needed: int = 1  # bad runs out of `runs` for a BAD verdict
    flaky: bool = False


@dataclass
class Bug:
    id: str
    dir: Path
    title: str = ""
    entry: str = "run.sh"
    timeout: int = 120  # seconds for one reproducer run inside the guest
    repeat: RepeatPolicy = field(default_factory=RepeatPolicy)
    isolate: bool = False
    keywords: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)  # the whole bug.yaml as loaded


def resolve(bug: str) -> Bug:
    """A catalog id (`gretap-ecn`) or a path to a reproducer directory."""
    path = Path(bug)
    if not (path.is_dir() and (path / "run.sh").exists() or (path / "bug.yaml").exists()):
        path = config.reproducers_dir() / bug
    if not path.is_dir():
        raise KbisectError(f"unknown bug {bug!r}: no reproducer directory of that name or path")
    if (path / "bug.yaml").exists():
        return load(path)
    entry = path / "run.sh"
    if not entry.exists():
        raise KbisectError(f"{path} has neither bug.yaml nor run.sh")
    return Bug(id=path.name, dir=path.resolve())


def load(path: Path) -> Bug:
    """Load and validate `<path>/bug.yaml` (schema validation is the catalog's job)."""
    import yaml

    data = yaml.safe_load((path / "bug.yaml").read_text()) or {}
    if not isinstance(data, dict):
        raise KbisectError(f"{path / 'bug.yaml'}: expected a mapping")
    return Bug(
        id=str(data.get("id", path.name)),
        dir=path.resolve(),
        title=str(data.get("title", "")),
        entry=str(data.get("entry", "run.sh")),
        timeout=int(data.get("timeout", 120)),
        isolate=bool(data.get("isolate", False)),
        keywords=list(data.get("keywords", [])),
        paths=list(data.get("paths", [])),
        modules=list(data.get("modules", [])),
        data=data,
    )
