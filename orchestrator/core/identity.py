"""A kernel's content id: one hash of what boots, so verdicts follow bytes, not names.

A name (`local:build`, `debian:6.1.0-54-cloud-amd64`) can stand for different bytes over time (a
rebuilt local tree, a re-uploaded package); a verdict answers a question about bytes. Three rules,
each over hashes the adapters computed (this module reads no file):

- packages: the verified sha256 of each package file, sorted by file name (what a download
  already checked, so nothing is hashed again);
- tree: the vmlinuz bytes and a manifest of the modules tree (relative path, size, sha256 of
  each file; a symlink by its target text), for kernels that arrive unpacked;
- variant: the base kernel's id and the patch bytes' hash (the rebuilt modules follow from both).

Each rule hashes a canonical JSON document that starts with its own tag, so two rules never
give the same id for different inputs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class TreeFile:
    """One entry of a modules-tree manifest: a file (size, sha256) or a symlink (its target)."""

    path: str  # relative to the modules directory, '/'-separated
    size: int  # bytes; 0 for a symlink
    sha256: str  # hex digest of the file; for a symlink "->" + the link text


def _digest(tag: str, body: object) -> str:
    text = json.dumps([tag, body], separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def package_id(files: Iterable[tuple[str, str]]) -> str:
    """The id of a kernel unpacked from packages: (file name, sha256) pairs, in any order."""
    pairs = sorted((name, sha.lower()) for name, sha in files)
    if not pairs:
        raise ValueError("a kernel from packages needs at least one package hash")
    return _digest("kbisect-packages-v1", pairs)


def tree_id(vmlinuz_sha256: str, modules: Iterable[TreeFile]) -> str:
    """The id of an unpacked tree: the image's hash and the modules manifest, in any order."""
    manifest = sorted((f.path, f.size, f.sha256) for f in modules)
    return _digest("kbisect-tree-v1", {"vmlinuz": vmlinuz_sha256.lower(), "modules": manifest})


def variant_id(base_id: str, patch_sha256: str) -> str:
    """The id of a patched variant: its base's id and the patch bytes' hash."""
    if not base_id:
        raise ValueError("a variant's id needs its base kernel's id")
    return _digest("kbisect-variant-v1", {"base": base_id, "patch": patch_sha256.lower()})
