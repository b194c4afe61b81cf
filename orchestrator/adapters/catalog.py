"""The reproducer catalog on disk: `reproducers/<id>/bug.yaml` loaded (PyYAML) and validated by
the pure schema in orchestrator.core.bug, plus where the shared guest helpers live."""

from __future__ import annotations

from pathlib import Path

from orchestrator.adapters import config
from orchestrator.core.bug import ID_RE, Bug, parse
from orchestrator.core.errors import KbisectError


def writeup_path(bug: Bug) -> Path | None:
    """The write-up file, when `writeup` names one that exists.

    Written relative to the repository root (`../shared/seeds/…`, the shared notes beside the
    repo) or to the reproducer directory; a bare name (a URL, a title) resolves to None.
    """
    if not bug.writeup:
        return None
    path = Path(bug.writeup)
    candidates = [path] if path.is_absolute() else [config.REPO_ROOT / path, bug.dir / path]
    for cand in candidates:
        if cand.is_file():
            return cand.resolve()
    return None


# A bug.yaml is a page of text; anything far larger is not one (and is not read whole).
MAX_BUG_YAML_BYTES = 1 << 20


def load(path: Path) -> Bug:
    """Load and validate `<path>/bug.yaml`: any damage (binary, empty, truncated, malformed, an
    alias bomb) is one KbisectError naming the file."""
    from orchestrator.adapters import yamlfile  # PyYAML only when a file is read, not at startup

    path = Path(path)
    source = path / "bug.yaml"
    data = yamlfile.load(source, str(source), MAX_BUG_YAML_BYTES)
    if data is None:
        raise KbisectError(f"{source}: empty file")
    bug = parse(data, path, source)
    bug.writeup_path = writeup_path(bug)
    return bug


def resolve(bug: str) -> Bug:
    """A catalog id (`gretap-ecn`) or a path to a reproducer directory.

    A directory with only a `run.sh` (an ad-hoc reproducer) is accepted with defaults, so a user
    can bisect a script without writing a catalog entry first. Those defaults have no
    `signatures:`, so a kernel trace during its run is unrelated (a skip); a bug.yaml beside the
    script with `signatures:` (or `unrelated_traces: bad`) makes traces count.
    """
    path = Path(bug)
    candidate = config.reproducers_dir() / bug
    if ID_RE.match(bug) and candidate.is_dir():
        path = candidate  # a catalog id wins over a same-named directory in the cwd
    if not path.is_dir():
        known = ", ".join(ids()) or "none"
        raise KbisectError(f"unknown bug {bug!r}: no reproducer directory of that name or path (known: {known})")
    if (path / "bug.yaml").exists():
        return load(path)
    entry = path / "run.sh"
    if not entry.exists():
        raise KbisectError(f"{path} has neither bug.yaml nor run.sh")
    return Bug(id=path.name, dir=path.resolve())


def lib_dir() -> Path | None:
    """Helpers every reproducer gets beside its own files in the guest (common.sh, packet.py).

    Shared by upload rather than copied into each directory, so a fix reaches every reproducer;
    ad-hoc reproducer directories (`--bug DIR`) get them too.
    """
    path = config.reproducers_dir() / "lib"
    return path if path.is_dir() else None


def guest_dirs(bug: Bug) -> list[Path]:
    """What lands in the guest's reproducer directory, in upload order (later wins)."""
    lib = lib_dir()
    return ([lib] if lib is not None else []) + [Path(bug.dir)]


def ids() -> list[str]:
    """Ids of every catalog entry (directories holding a bug.yaml), sorted."""
    root = config.reproducers_dir()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "bug.yaml").is_file())


def all_bugs() -> list[Bug]:
    """Every catalog entry, loaded and validated (the first bad file raises)."""
    return [load(config.reproducers_dir() / name) for name in ids()]
