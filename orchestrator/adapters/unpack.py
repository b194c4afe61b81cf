"""The unpacker: kernel .debs or a built tree into the UnpackedKernel layout, content-keyed.

Why this shape:
- unpacking reads the .debs with python-debian (no dpkg, no root) and refuses any member
  whose path would leave the target directory;
- the work happens in `<target>.partial` and is renamed into place, so an interrupted unpack is
  never mistaken for a finished one (the manifest is what marks it finished);
- every unpack records the kernel's content id (core.identity) in kernel.json, and an unpack
  whose target holds a kernel of another id replaces it: the same name, new bytes.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import subprocess
import tarfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from rich.progress import Progress

from orchestrator.adapters.cache import CHUNK, locked, sha256_file
from orchestrator.adapters.progress import transfer_bar
from orchestrator.adapters.kernel import MANIFEST, UnpackedKernel
from orchestrator.core import identity
from orchestrator.core.errors import KbisectError
from orchestrator.core.versions import KernelRef


# --------------------------------------------------------------------------- content ids

# What adopt_tree leaves out of a modules tree (links into the build host's source tree); the
# manifest leaves them out too, so a local tree and its adopted copy have the same id.
NOT_COPIED = ("build", "source")


def modules_manifest(modules: Path | None) -> list[identity.TreeFile]:
    """(relative path, size, sha256) of every file under `modules`; a symlink by its target."""
    if modules is None or not modules.is_dir():
        return []
    entries = []
    for dirpath, dirnames, filenames in os.walk(modules):
        dirnames[:] = [d for d in dirnames if d not in NOT_COPIED]  # os.walk descends into what is left
        here = Path(dirpath)
        for name in [*dirnames, *(f for f in filenames if f not in NOT_COPIED)]:
            path = here / name
            rel = path.relative_to(modules).as_posix()
            if path.is_symlink():  # links to directories come in dirnames and are not followed
                entries.append(identity.TreeFile(rel, 0, "->" + os.readlink(path)))
            elif path.is_file():
                entries.append(identity.TreeFile(rel, path.stat().st_size, sha256_file(path)))
    return entries


def tree_content_id(vmlinuz: Path, modules: Path | None) -> str:
    """The id of an unpacked tree (a missing vmlinuz hashes as "": such a kernel never boots)."""
    return identity.tree_id(sha256_file(vmlinuz) if vmlinuz.is_file() else "", modules_manifest(modules))


def recorded_package_sums(extra: dict) -> dict[str, str] | None:
    """name -> sha256 of the packages a kernel.json's `extra` names (`files` from a download,
    `sha256` from local .debs), or None when there are none or one has no published sum."""
    sums: dict[str, str] = {}
    for item in extra.get("files") or []:
        if not isinstance(item, dict) or not item.get("name") or not item.get("sha256"):
            return None
        sums[str(item["name"])] = str(item["sha256"]).lower()
    local = extra.get("sha256")
    if isinstance(local, dict):
        sums.update({str(k): str(v).lower() for k, v in local.items()})
    return sums or None


def content_id(kernel: UnpackedKernel) -> str:
    """The id of an unpacked kernel whose kernel.json has none: by its recorded package hashes
    when it has them (the id a fresh unpack would record), else by its tree."""
    sums = recorded_package_sums(kernel.extra)
    if sums:
        return identity.package_id(sums.items())
    return tree_content_id(kernel.vmlinuz, kernel.modules)


def _packages_id(debs: list[Path], extra: dict) -> str:
    """The id of the kernel `debs` unpack to: their recorded (already verified) sums, hashing
    only the packages that have none (an unverified mainline build)."""
    known = recorded_package_sums(extra) or {}
    return identity.package_id((d.name, known.get(d.name) or sha256_file(d)) for d in debs)


def _current(target: Path, want: str | None) -> UnpackedKernel | None:
    """The finished unpack at `target` if it is the kernel wanted (any, when `want` is None)."""
    if not (target / MANIFEST).exists():
        return None
    kernel = UnpackedKernel.load(target)
    return kernel if want is None or kernel.id == want else None




# --------------------------------------------------------------------------- unpacking


def zlib_error() -> type[Exception]:
    return zlib.error


def _safe_relpath(name: str, deb: Path) -> str:
    """The member's path relative to the package root; refuses anything that could escape."""
    raw = str(name)
    stripped = raw[2:] if raw.startswith("./") else raw
    if stripped in (".", ""):
        return ""
    parts = stripped.split("/")
    if raw.startswith("/") or ".." in parts or "\\" in raw or "\x00" in raw:
        raise KbisectError(f"{deb.name}: refusing member {raw!r}: it would escape the target directory")
    return posixpath.normpath(stripped)


_IN_MODULES_DIR = {"vmlinuz": "vmlinuz", "vmlinuz.unsigned": "vmlinuz", "config": "config",
                   "System.map": "System.map"}


def _map_member(rel: str) -> tuple[str, str | None] | None:
    """Where a package path lands in the UnpackedKernel layout, and the kver it names (or None: ignore)."""
    for prefix, target in (("boot/vmlinuz-", "vmlinuz"), ("boot/config-", "config"), ("boot/System.map-", "System.map")):
        if rel.startswith(prefix) and "/" not in rel[len(prefix):]:
            return target, rel[len(prefix):]
    for prefix in ("lib/modules/", "usr/lib/modules/"):
        if rel.startswith(prefix):
            rest = rel[len(prefix):]
            kver, _, inner = rest.partition("/")
            if not kver:
                return None
            # Newer Debian packages (linux-binary-*, linux-base-*) keep the image, config and
            # System.map inside the modules directory: they belong at the top of the layout.
            if inner in _IN_MODULES_DIR:
                return _IN_MODULES_DIR[inner], kver
            return ("modules/" + inner if inner else "modules"), kver
    return None


def _inside(root: Path, path: Path) -> bool:
    root_s = os.path.normpath(str(root))
    path_s = os.path.normpath(str(path))
    return path_s == root_s or path_s.startswith(root_s + os.sep)


def open_data(deb: Path, scratch: Path) -> tuple[tarfile.TarFile, Path | None]:
    """The data tarball of a .deb, read by python-debian.

    python-debian decompresses a data.tar.zst into memory (hundreds of MB for a generic
    kernel's modules); those are streamed through `unzstd` into a scratch file instead.
    Returns the tarfile and the scratch file to delete afterwards (or None).
    """
    from debian.arfile import ArError, ArFile
    from debian.debfile import DebError, DebFile

    try:
        archive = ArFile(str(deb))
        zst = [n for n in archive.getnames() if n.startswith("data.tar") and n.endswith(".zst")]
        if not zst:
            return DebFile(str(deb)).data.tgz(), None
        if shutil.which("unzstd") is None:
            raise KbisectError(f"{deb.name}: zstd-compressed package and no unzstd (install zstd)")
        member = archive.getmember(zst[0])
        scratch.mkdir(parents=True, exist_ok=True)
        tmp = scratch / f".{deb.name}.{os.getpid()}.data.tar"
        with open(tmp, "wb") as out:
            proc = subprocess.Popen(["unzstd", "-q", "-c"], stdin=subprocess.PIPE, stdout=out,
                                    stderr=subprocess.DEVNULL)
            assert proc.stdin is not None
            try:
                while chunk := member.read(CHUNK):
                    proc.stdin.write(chunk)
                proc.stdin.close()
            except BrokenPipeError:
                pass
            if proc.wait() != 0:
                tmp.unlink(missing_ok=True)
                raise KbisectError(f"{deb.name}: {zst[0]} does not decompress (damaged package)")
        try:
            return tarfile.open(tmp, "r:"), tmp
        except tarfile.TarError:
            tmp.unlink(missing_ok=True)
            raise
    except (ArError, DebError, OSError, tarfile.TarError, EOFError, ValueError, KeyError) as exc:
        raise KbisectError(f"{deb.name}: not a readable .deb "
                           f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def _extract_deb(deb: Path, into: Path, kvers: set[str], progress: Progress) -> None:
    data, scratch = open_data(deb, into.parent)
    try:
        _extract_members(deb, data, into, kvers, progress)
    finally:
        data.close()
        if scratch is not None:
            scratch.unlink(missing_ok=True)


def _extract_members(deb: Path, data: tarfile.TarFile, into: Path, kvers: set[str], progress: Progress) -> None:
    task = progress.add_task(f"unpack {deb.name}", total=None)
    links: list[tuple[Path, str]] = []
    hardlinks: list[tuple[Path, str]] = []
    try:
        for member in data:
            rel = _safe_relpath(member.name, deb)
            if not rel:
                continue
            mapped = _map_member(rel)
            if mapped is None:
                continue
            target_rel, kver = mapped
            if kver and not target_rel.startswith("modules") and not (member.isfile() or member.islnk()):
                continue
            target = into / target_rel
            if not _inside(into, target):
                raise KbisectError(f"{deb.name}: refusing member {member.name!r}: it would escape the target directory")
            if kver and (target_rel.startswith("modules") or target_rel == "vmlinuz"):
                kvers.add(kver)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                source = data.extractfile(member)
                assert source is not None
                with open(target, "wb") as out:
                    shutil.copyfileobj(source, out, CHUNK)
                os.chmod(target, (member.mode & 0o755) | stat.S_IRUSR | stat.S_IWUSR)
                progress.advance(task, member.size)
            elif member.issym():
                links.append((target, member.linkname))
            elif member.islnk():
                link_rel = _safe_relpath(member.linkname, deb)
                link_mapped = _map_member(link_rel)
                if link_mapped is not None:
                    hardlinks.append((target, link_mapped[0]))
            # devices, fifos: never part of a kernel package; ignored
    except (tarfile.TarError, EOFError, zlib_error()) as exc:
        raise KbisectError(f"{deb.name}: damaged archive ({exc})") from None
    for target, linked in hardlinks:
        source_path = into / linked
        if source_path.is_file() and _inside(into, source_path):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source_path, target)
    for target, linkname in links:
        # Keep symlinks that stay inside the unpack (modules.* links); drop the ones that
        # point into the build host (`build -> /usr/src/linux-headers-…`).
        resolved = Path(os.path.normpath(target.parent / linkname))
        if linkname.startswith("/") or not _inside(into, resolved):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists() and not target.is_symlink():
            os.symlink(linkname, target)


@contextmanager
def _staged(target: Path) -> Iterator[Path]:
    """Build in an empty `<target>.partial`, renamed to `target` only when the body succeeds.

    A `target` without a manifest is an interrupted earlier attempt (callers checked the
    manifest under the lock) and is removed first; a failed body leaves nothing behind.
    """
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    if target.exists():
        shutil.rmtree(target)
    partial.mkdir(parents=True)
    try:
        yield partial
        os.replace(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def unpack_debs(debs: list[Path], target: Path, spec: str, extra: dict | None = None,
                files: dict[str, bytes] | None = None) -> UnpackedKernel:
    """Unpack kernel .debs into the UnpackedKernel layout at `target`; kernel.json is written last.

    `files` are small published files kept beside the kernel (a mainline build's COMMIT and
    CHANGES), written into the same staging directory so they arrive with it or not at all.

    The work happens in `<target>.partial` and is renamed into place, so an interrupted
    unpack is never mistaken for a finished one (the manifest is what marks it finished). A
    finished unpack is reused only if it came from the same package bytes (same content id).
    """
    target = Path(target)
    debs = [Path(d) for d in debs]
    kernel_id = _packages_id(debs, dict(extra or {}))
    with locked(target):
        done = _current(target, kernel_id)
        if done is not None:
            return done
        kvers: set[str] = set()
        with _staged(target) as partial:
            with transfer_bar() as bar:
                for deb in debs:
                    _extract_deb(Path(deb), partial, kvers, bar)
            if not (partial / "vmlinuz").is_file():
                raise KbisectError(f"{spec}: no boot/vmlinuz-* in {', '.join(Path(d).name for d in debs)}")
            if len(kvers) > 1:
                raise KbisectError(f"{spec}: packages disagree on the kernel release ({', '.join(sorted(kvers))})")
            (partial / "modules").mkdir(exist_ok=True)
            for name, data in (files or {}).items():
                (partial / Path(name).name).write_bytes(data)
            kver = next(iter(kvers))
        kernel = UnpackedKernel(KernelRef.of(spec).with_id(kernel_id), target, kver, dict(extra or {}))
        kernel.save()
        return kernel


def adopt_tree(src: Path, target: Path, spec: str, kver: str, extra: dict | None = None,
               expect: str | None = None) -> UnpackedKernel:
    """Copy an already-unpacked tree (local builds: vmlinuz + lib/modules/<kver>) into the layout.

    `expect` is the content id the caller sees in `src` now: a finished copy of another id is
    replaced (None: any finished copy is reused). The recorded id is computed from the copy, the
    bytes that will boot, so a tree that changed while it was copied is caught next time."""
    target = Path(target)
    with locked(target):
        done = _current(target, expect)
        if done is not None:
            return done
        with _staged(target) as partial:
            shutil.copy2(src / "vmlinuz", partial / "vmlinuz")
            for name in ("config", "System.map"):
                if (src / name).is_file():
                    shutil.copy2(src / name, partial / name)
            modules = src / "modules"
            if modules.is_dir():
                shutil.copytree(modules, partial / "modules", symlinks=True,
                                ignore=shutil.ignore_patterns(*NOT_COPIED))
            else:
                (partial / "modules").mkdir()
            kernel_id = tree_content_id(partial / "vmlinuz", partial / "modules")
        kernel = UnpackedKernel(KernelRef.of(spec).with_id(kernel_id), target, kver, dict(extra or {}))
        kernel.save()
        return kernel
