"""The patch a variant is built from: which files it touches, whether kbisect can honour it, applying it.

The touched paths decide, before anything is downloaded, which source files to extract, which
modules to rebuild and whether the patch must be refused.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from orchestrator.core.errors import KbisectError, VariantBuildError

SOURCE_EXTS = (".c", ".S")


@dataclass(frozen=True)
class TouchedFile:
    """One file a unified diff changes, as a path relative to the tree root (after -p1)."""

    path: str
    created: bool = False
    deleted: bool = False


def _strip_diff_path(raw: str) -> str | None:
    """`a/net/ipv4/x.c\t2021-01-01 ...` -> `net/ipv4/x.c`; /dev/null -> None."""
    raw = raw.split("\t", 1)[0].strip()
    if raw.startswith('"') and raw.endswith('"'):
        raw = raw[1:-1]
    if raw == "/dev/null":
        return None
    parts = PurePosixPath(raw).parts
    if len(parts) < 2:
        raise KbisectError(f"patch path {raw!r} has no leading directory to strip (kbisect applies patches with -p1)")
    rel = PurePosixPath(*parts[1:])
    if rel.is_absolute() or ".." in rel.parts:
        raise KbisectError(f"patch path {raw!r} leaves the source tree")
    return str(rel)


def _refuse_unsupported(line: str) -> None:
    if line.startswith("GIT binary patch") or line.startswith("Binary files "):
        raise KbisectError("patch contains a binary diff; kbisect rebuilds modules from C sources only")
    if line.startswith("rename from ") or line.startswith("copy from "):
        raise KbisectError("patch renames or copies files; kbisect cannot rebuild modules from that")


def touched_files(patch_text: str) -> list[TouchedFile]:
    """The files a unified diff (git or plain `diff -u`, a/ b/ prefixes) touches, in order."""
    result: dict[str, TouchedFile] = {}
    lines = patch_text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            old = _strip_diff_path(line[4:])
            new = _strip_diff_path(lines[i + 1][4:])
            path = new or old
            if path is None:
                raise KbisectError("patch has a file header with /dev/null on both sides")
            if i + 2 >= len(lines) or not lines[i + 2].startswith("@@"):
                raise KbisectError(f"patch header for {path} is not followed by a hunk (@@)")
            result.setdefault(path, TouchedFile(path, created=old is None, deleted=new is None))
            i += 2
            continue
        _refuse_unsupported(line)
        i += 1
    if not result:
        raise KbisectError("patch touches no files (expected a unified diff with a/ and b/ paths)")
    return list(result.values())


def check_patch_scope(touched: list[TouchedFile]) -> None:
    """Refuse, before any download, patches kbisect cannot turn into module rebuilds."""
    for t in touched:
        if t.created or t.deleted:
            raise KbisectError(f"patch {'creates' if t.created else 'deletes'} {t.path}; "
                               "kbisect only rebuilds modules from changed sources")
        name = PurePosixPath(t.path).name
        if name in ("Makefile", "Kbuild") or name.startswith("Kconfig"):
            raise KbisectError(f"patch changes the build ({t.path}); kbisect can only rebuild existing modules")
        if name.endswith(".h"):
            raise KbisectError(f"patch touches header {t.path}; kbisect cannot tell which objects "
                               "(possibly vmlinux) include it")
        if not name.endswith(SOURCE_EXTS):
            raise KbisectError(f"patch touches {t.path}, which is not a C or assembler source")


def apply_patch(patch: Path, tree: Path, use_patch_tool: bool | None = None, reverse: bool = False) -> None:
    """Apply with -p1 and no fuzz, so a patch that does not fit this source is refused, not bent.

    All or nothing: `patch` is run with --dry-run first and only a patch whose every hunk fits is
    applied (a patch failing part-way would leave the tree half-patched, and the next build of a
    user's tree would include it silently); no .rej or .orig is ever written. `git apply`, used
    when `patch` is not installed (None: look), is atomic itself. A relative `patch` is the
    caller's (the current directory's), not one inside `tree`.
    `reverse` takes an applied patch back out (a whole-kernel build leaves a shared tree as found).
    """
    patch = Path(patch).expanduser().absolute()
    if use_patch_tool is None:
        use_patch_tool = shutil.which("patch") is not None
    if use_patch_tool:
        # --reject-file=-: rejects are discarded, never written beside the file (GNU patch(1))
        cmd = ["patch", "-p1", "--batch", "--reverse" if reverse else "--forward", "--fuzz=0",
               "--no-backup-if-mismatch", "--reject-file=-", "-d", str(tree), "-i", str(patch)]
        proc = subprocess.run(cmd + ["--dry-run"], capture_output=True, text=True)
        if proc.returncode == 0:
            proc = subprocess.run(cmd, capture_output=True, text=True)
    else:
        env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(tree.parent))
        proc = subprocess.run(["git", "apply", "-p1", *(["-R"] if reverse else []), str(patch)], cwd=tree,
                              capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).strip().splitlines()
        bad = [line for line in out if "FAILED" in line or "error" in line.lower() or "can't find" in line.lower()]
        raise VariantBuildError(f"patch {patch.name} does not apply to this kernel's source: "
                                f"{(bad or out or ['?'])[0].strip()}")


def reverse_patch(patch: Path, tree: Path) -> None:
    """Take `patch` (applied by apply_patch) back out of `tree`."""
    apply_patch(patch, tree, reverse=True)
