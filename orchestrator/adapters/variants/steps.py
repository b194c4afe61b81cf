"""One variant build as named steps over a small state: fetch the base, fetch its headers and
source, resolve the modules, apply the patch, compile, fit, assemble, adopt.

Each step reads what earlier steps left in `Build` and adds its own part, so a step can be read
(and replaced in a test) on its own. Nothing is written at the variant's final place until
`adopt`, which swaps the finished tree in with one rename.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, TextIO

from orchestrator.adapters import config
from orchestrator.adapters.kernel import MANIFEST, UnpackedKernel
from orchestrator.adapters.variants.kbuild import ModulePlan, kbuild_for, plan_module
from orchestrator.core.kconfig import parse_kconfig
from orchestrator.adapters.variants.moduletree import (DEPMOD_OUTPUTS, compress_like, copy_tree_hardlinked,
                                                       find_shipped_module, link_or_copy, modinfo_field,
                                                       modversions, run_depmod)
from orchestrator.adapters.variants.packages import Downloaded, PackageFetcher, debian_package_version
from orchestrator.adapters.variants.patches import TouchedFile, apply_patch
from orchestrator.adapters.progress import StepLog
from orchestrator.adapters.variants.sourcetree import extract_source_files
from orchestrator.adapters.fsutil import run_to_log, run_tool
from orchestrator.adapters.variants.toolchain import compiler_mismatch
from orchestrator.core import identity
from orchestrator.core.errors import KbisectError, VariantBuildError
from orchestrator.core.versions import KernelRef

BOOT_FILES = ("vmlinuz", "config", "System.map")
ModuleKey = tuple[str, str]  # (directory, module)


@dataclass(frozen=True)
class Request:
    """What to build, checked before anything is fetched: the patch's bytes are read once, so the
    hash recorded is the hash of what was applied even if the file is edited meanwhile."""

    base: KernelRef
    spec: KernelRef
    patch_name: str
    patch_bytes: bytes
    patch_sha256: str
    touched: tuple[TouchedFile, ...]
    dest: Path


@dataclass(frozen=True)
class BaseKernel:
    """The stock kernel and what the build needs to know about it."""

    kernel: UnpackedKernel
    kconfig: dict[str, str]
    cc: str
    cc_line: str
    package_version: str  # "6.1.190-1"

    @property
    def line(self) -> str:
        return ".".join(self.package_version.split(".")[:2])


@dataclass(frozen=True)
class BuildPackages:
    headers: list[Downloaded]  # flavour headers, their -common, linux-kbuild
    source: Downloaded  # linux-source-X.Y

    @property
    def all(self) -> list[Downloaded]:
        return [*self.headers, self.source]


@dataclass
class Build:
    """One build in progress; the steps after the downloads fill in the lists below."""

    request: Request
    base: BaseKernel
    debs: BuildPackages
    work: Path  # scratch, removed when the build ends
    staging: Path  # the variant being assembled beside its final place
    progress: StepLog
    started: float
    plans: list[ModulePlan] = field(default_factory=list)
    shipped: dict[ModuleKey, Path] = field(default_factory=dict)  # the base's module each plan replaces
    built: dict[ModuleKey, Path] = field(default_factory=dict)
    replacements: dict[str, Path] = field(default_factory=dict)  # modules-relative path -> final .ko*
    build_seconds: float = 0.0

    @property
    def headers_dir(self) -> Path:
        return self.work / "headers" / "usr" / "src" / f"linux-headers-{self.base.kernel.kver}"

    @property
    def tree(self) -> Path:
        return self.work / "src"

    @property
    def log(self) -> Path:
        return config.subdir("variants") / "logs" / f"{self.request.dest.name}.log"


# ---------------------------------------------------------------------------- before the workspace


def fetch_base(request: Request, fetch: Callable[[KernelRef], UnpackedKernel],
               compiler: Callable[[dict[str, str]], tuple[str, str]]) -> BaseKernel:
    """The stock kernel, refused when this host's compiler is not the one that built it."""
    kernel = fetch(request.base)
    if kernel.config is None:
        raise KbisectError(f"{request.base} has no kernel config; cannot tell built-in from module code")
    kconfig = parse_kconfig(kernel.config.read_text())
    cc, cc_line = compiler(kconfig)
    why = compiler_mismatch(kconfig.get("CONFIG_CC_VERSION_TEXT", ""), cc_line)
    if why:
        raise KbisectError(f"refusing to build {request.spec}: {why}")
    return BaseKernel(kernel, kconfig, cc, cc_line, debian_package_version(kernel))


def fetch_packages(base: BaseKernel, packages: PackageFetcher, progress: StepLog) -> BuildPackages:
    """The exact flavour headers, their -common and kbuild dependencies, and the source package."""
    headers_pkg = f"linux-headers-{base.kernel.kver}"
    headers_ver = packages.pick(headers_pkg, base.package_version)
    headers = [packages.download(headers_pkg, headers_ver, progress)]
    for dep in packages.depends(headers[0]):
        if (dep.startswith("linux-headers-") and "common" in dep) or dep.startswith("linux-kbuild-"):
            headers.append(packages.download(dep, packages.pick(dep, headers_ver), progress))
    if not any(d.package.startswith("linux-kbuild-") for d in headers):
        kbuild = f"linux-kbuild-{base.line}"
        headers.append(packages.download(kbuild, packages.pick(kbuild, headers_ver), progress))
    source_pkg = f"linux-source-{base.line}"
    source = packages.download(source_pkg, packages.pick(source_pkg, base.package_version), progress)
    return BuildPackages(headers, source)


@contextmanager
def workspace(dest: Path) -> Iterator[tuple[Path, Path]]:
    """(scratch directory, staging directory beside `dest`); both are gone when the build ends.

    Both names are fixed before anything is created and the `try` covers the mkdir itself: a
    SIGTERM that lands between creating the scratch directory and entering the `try` (as with
    mkdtemp) left it behind. The caller holds the variant's lock, so a same-named directory of
    a dead process with a reused pid can be cleared first.
    """
    work = config.subdir("variants") / f".{dest.name}.work-{os.getpid()}"
    staging = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    try:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        yield work, staging
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)


def leftovers(dest: Path) -> list[Path]:
    """What killed builds of `dest` may have left (their finally clauses never ran)."""
    return [*dest.parent.glob(f".{dest.name}.tmp-*"), *dest.parent.glob(f".{dest.name}.old-*"),
            *config.subdir("variants").glob(f".{dest.name}.work-*")]


# ---------------------------------------------------------------------------- in the workspace


def unpack_headers(build: Build) -> None:
    """Headers and kbuild unpacked; the flavour Makefile's absolute include repointed at them."""
    root = build.work / "headers"
    with build.progress.step("unpacking headers and kbuild"):
        for deb in build.debs.headers:
            run_tool(["dpkg-deb", "-x", str(deb.path), str(root)], f"unpacking {deb.path.name}")
        makefile = build.headers_dir / "Makefile"
        if not makefile.exists():
            raise KbisectError(f"{build.debs.headers[0].package} has no Makefile at "
                               f"usr/src/linux-headers-{build.base.kernel.kver}")
        text = re.sub(r"(?m)^(\s*include\s+)/usr/src/", rf"\g<1>{root}/usr/src/", makefile.read_text())
        makefile.write_text(text)


def extract_sources(build: Build) -> None:
    """Only the touched files (and their directories' build inputs) from the source package."""
    touched = build.request.touched
    directories = {str(PurePosixPath(t.path).parent) for t in touched}
    source = build.debs.source
    _top, extracted = extract_source_files(source.path, directories, {t.path for t in touched}, build.tree,
                                           build.progress)
    missing = [t.path for t in touched if t.path not in set(extracted)]
    if missing:
        raise VariantBuildError(f"{source.package} {source.version} has no {missing[0]}; the patch is for another tree")


def _makefile(build: Build, directory: str) -> Path:
    for name in ("Kbuild", "Makefile"):
        if (build.tree / directory / name).exists():
            return build.tree / directory / name
    raise KbisectError(f"{directory} has no Makefile in {build.debs.source.package}")


def resolve_modules(build: Build) -> None:
    """Which modules the touched files belong to, and the base's copy of each. Runs before the
    patch is applied, so a refusal describes the kernel's own layout."""
    for t in build.request.touched:
        directory = str(PurePosixPath(t.path).parent)
        plan = plan_module(directory, _makefile(build, directory).read_text(), PurePosixPath(t.path).name,
                           build.base.kconfig)
        if not any((p.directory, p.module) == (plan.directory, plan.module) for p in build.plans):
            build.plans.append(plan)
    for p in build.plans:
        ko = find_shipped_module(build.base.kernel.modules, p.directory, p.module)
        if ko is None:
            raise VariantBuildError(f"{build.request.base} ships no {p.directory}/{p.module}.ko to replace")
        build.shipped[(p.directory, p.module)] = ko


def patch_sources(build: Build) -> None:
    """The patch exactly as read (and hashed) when the build was requested."""
    patch = build.work / build.request.patch_name
    patch.write_bytes(build.request.patch_bytes)
    apply_patch(patch, build.tree)


def _make_directory(build: Build, directory: str, log: TextIO) -> None:
    """`make M=` for one source directory with a Kbuild naming only the modules being rebuilt."""
    plans = [p for p in build.plans if p.directory == directory]
    bdir = build.work / "build" / directory
    bdir.mkdir(parents=True, exist_ok=True)
    for f in (build.tree / directory).iterdir():
        if f.suffix in (".c", ".h", ".S") and f.is_file():
            shutil.copy2(f, bdir / f.name)
    (bdir / "Kbuild").write_text(kbuild_for(plans))
    # CC on the command line: the compiler just checked is the one that builds.
    cmd = ["make", "-C", str(build.headers_dir), f"M={bdir}", f"CC={build.base.cc}", f"-j{os.cpu_count() or 1}",
           "modules"]
    log.write("$ " + " ".join(cmd) + "\n")
    log.flush()
    if run_to_log(cmd, log) != 0:
        log.flush()
        errors = [line for line in build.log.read_text().splitlines() if "error" in line.lower()]
        raise VariantBuildError(f"building {directory} failed: {(errors or ['see log'])[0].strip()} (log: {build.log})")
    for p in plans:
        ko = bdir / f"{p.module}.ko"
        if not ko.exists():
            raise VariantBuildError(f"build of {p.module}.ko produced no module (log: {build.log})")
        build.built[(p.directory, p.module)] = ko


def compile_modules(build: Build) -> None:
    """Out-of-tree builds against the kernel's own headers, one M= directory per source directory."""
    build.log.parent.mkdir(parents=True, exist_ok=True)
    modules = ", ".join(p.module + ".ko" for p in build.plans)
    with build.progress.step(f"building {modules} with {build.base.cc}") as step, open(build.log, "w") as log:
        for directory in sorted({p.directory for p in build.plans}):
            _make_directory(build, directory, log)
    build.build_seconds = step.seconds


def fit_modules(build: Build) -> None:
    """Check each rebuilt module fits the kernel (vermagic, symbol CRCs); strip and compress it like the base."""
    for key, ko in build.built.items():
        stock = build.shipped[key]
        new_magic, old_magic = modinfo_field(ko, "vermagic"), modinfo_field(stock, "vermagic")
        if new_magic != old_magic:
            raise VariantBuildError(f"rebuilt {ko.name} has vermagic {new_magic!r}, the kernel wants {old_magic!r}")
        new_crcs, old_crcs = modversions(ko), modversions(stock)
        bad = sorted(s for s in set(new_crcs) & set(old_crcs) if new_crcs[s] != old_crcs[s])
        if bad:
            raise VariantBuildError(f"rebuilt {ko.name} expects other symbol versions than the kernel ({bad[0]}): "
                                    "headers do not match")
        run_tool(["strip", "--strip-debug", str(ko)], f"stripping {ko.name}")
        build.replacements[str(stock.relative_to(build.base.kernel.modules))] = compress_like(ko, stock)


def assemble(build: Build) -> None:
    """The variant's tree in staging: the base's boot files and modules, the rebuilt ones swapped in."""
    kernel, staging = build.base.kernel, build.staging
    with build.progress.step("assembling modules tree and running depmod"):
        staging.mkdir(parents=True)
        for name in BOOT_FILES:
            if (kernel.root / name).exists():
                link_or_copy(kernel.root / name, staging / name)
        copy_tree_hardlinked(kernel.modules, staging / "modules",
                             skip=lambda rel: rel in build.replacements or rel in DEPMOD_OUTPUTS)
        for rel, path in build.replacements.items():
            shutil.copy2(path, staging / "modules" / rel)
        system_map = staging / "System.map"
        run_depmod(staging / "modules", kernel.kver, system_map if system_map.exists() else None)


def rebuild_modules(build: Build) -> None:
    """Every step between the downloads and adoption, in order: the variant's tree ends in staging."""
    for step in (unpack_headers, extract_sources, resolve_modules, patch_sources, compile_modules, fit_modules,
                 assemble):
        step(build)


# ---------------------------------------------------------------------------- adoption


def record(build: Build) -> dict:
    """The variant's facts for kernel.json; `patch_sha256` is what decides whether it is still current."""
    request, base, debs = build.request, build.base, build.debs
    return {
        "variant_of": base.kernel.spec,
        "variant_name": request.spec.variant,
        "patch": request.patch_name,
        "patch_sha256": request.patch_sha256,
        "touched_files": [t.path for t in request.touched],
        "rebuilt_modules": sorted(build.replacements),
        "base_package_version": base.package_version,
        "source_package": f"{debs.source.package}={debs.source.version}",
        "source_exact": debs.source.version == base.package_version,
        "packages": {d.package: d.version for d in debs.all},
        "download_bytes": sum(d.size for d in debs.all),
        "compiler": base.cc_line,
        "kernel_compiler": base.kconfig.get("CONFIG_CC_VERSION_TEXT", ""),
        "build_seconds": round(build.build_seconds, 1),
        "total_seconds": round(time.monotonic() - build.started, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one step (renameat2 RENAME_EXCHANGE); False where unsupported."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)  # glibc >= 2.28 has it
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # the filesystem cannot exchange
        return False
    raise OSError(code, os.strerror(code), str(b))


def swap_in(staging: Path, dest: Path) -> None:
    """Put the finished tree at `dest`, replacing a stale variant there: readers see the old tree or
    the new one. Without exchange support the old one is renamed aside first (a moment with no
    variant, which readers treat as not built and wait for under the build lock)."""
    if not dest.exists():
        os.rename(staging, dest)
        return
    if _exchange(staging, dest):
        shutil.rmtree(staging)  # now the stale variant
        return
    old = dest.parent / f".{dest.name}.old-{os.getpid()}"
    os.rename(dest, old)
    os.rename(staging, dest)
    shutil.rmtree(old)


def adopt(build: Build) -> UnpackedKernel:
    """kernel.json written last into staging, then the tree swapped in at the variant's place."""
    request = build.request
    ref = request.spec.with_id(identity.variant_id(build.base.kernel.id, request.patch_sha256))
    result = UnpackedKernel(ref, request.dest, build.base.kernel.kver, record(build))
    (build.staging / MANIFEST).write_text(result.manifest())
    swap_in(build.staging, request.dest)
    if not result.extra["source_exact"]:
        build.progress.note(f"source {build.debs.source.package} {build.base.package_version} not in the archive; "
                            f"used {build.debs.source.version} (recorded)")
    build.progress.note(f"built {request.spec} in {result.extra['total_seconds']} s "
                        f"({', '.join(build.replacements)})")
    return result
