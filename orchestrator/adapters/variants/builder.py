"""Build a variant, or serve the cached one while it is still the build of its patch.

A variant is keyed by its patch's content: kernel.json records the sha256 of the patch bytes
it was built from, and a cached variant is served only while that matches the patch asked
for now. An edited patch (a reproducer's `controls/<name>.patch`, or another file given to
`kbisect kernels patch` under the same name) builds a new variant that replaces the stale one.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from orchestrator.adapters import cache, config, sources
from orchestrator.adapters.kernel import MANIFEST, UnpackedKernel
from orchestrator.adapters.variants.packages import DebianPackages, PackageFetcher
from orchestrator.adapters.variants.patches import check_patch_scope, touched_files
from orchestrator.adapters.progress import StepLog
from orchestrator.adapters.variants.steps import (Build, Request, adopt, fetch_base, fetch_packages, leftovers,
                                                  rebuild_modules, workspace)
from orchestrator.adapters.variants.toolchain import host_compiler
from orchestrator.core.errors import KbisectError
from orchestrator.core.versions import KernelRef, parse_spec


def variant_dir(spec: KernelRef) -> Path:
    """Where the variant `spec` lives: `kernels/<source>/<version>+<name>/`."""
    return cache.kernels_dir(spec.source) / spec.cache_name


def _patch_bytes(patch: Path) -> tuple[bytes, str]:
    """The patch's bytes and text; a missing or binary file is a one-line error."""
    if not patch.is_file():
        raise KbisectError(f"patch file {patch} does not exist")
    data = patch.read_bytes()
    try:
        return data, data.decode()
    except UnicodeDecodeError:
        raise KbisectError(f"patch file {patch} is not text") from None


def make_request(base_spec: str, patch: Path, name: str | None = None) -> Request:
    """Check the arguments and the patch before anything is fetched (refusals cost nothing)."""
    patch = Path(patch).resolve()
    data, text = _patch_bytes(patch)
    name = name or patch.name.removesuffix(".patch").removesuffix(".diff")
    base = parse_spec(base_spec)
    if base.variant:
        raise KbisectError(f"base {base_spec!r} is itself a variant; patch the stock kernel instead")
    spec = parse_spec(f"{base}+{name}")
    if spec.variant != name or spec.base_spec != base:
        raise KbisectError(f"bad variant name {name!r}: use letters, digits, '.', '_' and '-'")
    touched = tuple(touched_files(text))
    check_patch_scope(list(touched))
    if base.source != "debian":
        raise KbisectError(f"patched variants are only supported for debian kernels so far, not {base.source!r}")
    return Request(base, spec, patch.name, data, hashlib.sha256(data).hexdigest(), touched, variant_dir(spec))


def _load(dest: Path) -> UnpackedKernel | None:
    return UnpackedKernel.load(dest) if (dest / MANIFEST).exists() else None


def _current(request: Request) -> UnpackedKernel | None:
    """The cached variant if it was built from exactly this patch; a stale one is rebuilt."""
    kernel = _load(request.dest)
    return kernel if kernel is not None and kernel.patch_sha256 == request.patch_sha256 else None


def _clear_leftovers(dest: Path) -> None:
    """An unfinished `dest` (no manifest) and what killed builds left; a stale finished variant stays
    until its replacement is swapped in."""
    if dest.exists() and not (dest / MANIFEST).exists():
        shutil.rmtree(dest)
    for stale in leftovers(dest):
        shutil.rmtree(stale, ignore_errors=True)


def control_patches(name: str, root: Path) -> list[Path]:
    """`<root>/*/controls/<name>.patch`, the reproducers' control patches of that name."""
    return sorted(root.glob(f"*/controls/{name}.patch")) if root.is_dir() else []


def find_control_patch(name: str, root: Path | None = None) -> Path:
    """`reproducers/*/controls/<name>.patch`; none or several different ones is a one-line error."""
    root = root or config.reproducers_dir()
    found = control_patches(name, root)
    if not found:
        raise KbisectError(f"no variant named {name!r} is built and no control patch "
                           f"reproducers/*/controls/{name}.patch exists")
    if len({cache.sha256_file(p) for p in found}) > 1:
        raise KbisectError(f"control patch name {name!r} is ambiguous: "
                           f"{', '.join(str(p.relative_to(root)) for p in found)}")
    return found[0]


@dataclass
class VariantBuilder:
    """Builds patched variants; each way out to the world is a collaborator a test can replace."""

    fetch_base: Callable[[KernelRef], UnpackedKernel] = field(default=sources.fetch)
    packages: PackageFetcher = field(default_factory=DebianPackages)
    compiler: Callable[[dict[str, str]], tuple[str, str]] = field(default=host_compiler)
    make: Callable[[Build], None] = field(default=rebuild_modules)  # fills the staging tree
    reproducers: Path | None = None  # default: config.reproducers_dir() when asked

    def build_variant(self, base_spec: str, patch: Path, name: str | None = None) -> UnpackedKernel:
        """Build (or return the current cached) variant `<base_spec>+<name>` with `patch` applied to its modules."""
        request = make_request(base_spec, patch, name)
        current = _current(request)
        if current is not None:
            return current
        with cache.locked(config.subdir("variants") / "locks" / request.dest.name):
            current = _current(request)  # another process may have built it meanwhile
            if current is not None:
                return current
            _clear_leftovers(request.dest)
            return self._build(request)

    def build_on_demand(self, spec: str) -> UnpackedKernel:
        """`SOURCE:VERSION+NAME` from the reproducers' control patch NAME, built when missing or stale.

        Without a control patch of that name, a variant already built (by `kbisect kernels patch`
        from a file of the user's) is served as it is: there is no other patch to compare it with.
        """
        parsed = parse_spec(spec)
        if not parsed.variant:
            raise KbisectError(f"{spec!r} names no variant (+NAME)")
        root = self.reproducers or config.reproducers_dir()
        if not control_patches(parsed.variant, root):
            built = _load(variant_dir(parsed))
            if built is not None:
                return built
        patch = find_control_patch(parsed.variant, root)
        return self.build_variant(str(parsed.base_spec), patch, parsed.variant)

    def _build(self, request: Request) -> UnpackedKernel:
        progress, started = StepLog(), time.monotonic()
        base = fetch_base(request, self.fetch_base, self.compiler)
        debs = fetch_packages(base, self.packages, progress)
        with workspace(request.dest) as (work, staging):
            build = Build(request, base, debs, work, staging, progress, started)
            self.make(build)
            return adopt(build)


def build_variant(base_spec: str, patch: Path, name: str | None = None) -> UnpackedKernel:
    """`VariantBuilder().build_variant`: what `kbisect kernels patch` and `--verify-revert` call."""
    return VariantBuilder().build_variant(base_spec, patch, name)


def build_on_demand(spec: str) -> UnpackedKernel:
    """`VariantBuilder().build_on_demand`: the kernel provider's default for `+NAME` specs."""
    return VariantBuilder().build_on_demand(spec)
