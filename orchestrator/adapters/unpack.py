"""The unpacker: kernel .debs or a built tree into the UnpackedKernel layout, content-keyed.

Why this shape:
- unpacking reads the .debs with python-debian (no dpkg, no root) and refuses a package whole
  when a member could leave the target directory: an absolute or `..` path, a symlink or
  hardlink leading out (resolved through the links already written, by an earlier package of
  the same kernel too), a write through or over a symlink, a device node or a fifo;
- the work happens in `<target>.partial`, is fsynced, gets its manifest and is renamed into
  place, so an interrupted unpack (or one a power loss cut short) is never mistaken for a
  finished one (the manifest is what marks it finished);
- every unpack records the kernel's content id (core.identity) in kernel.json, and an unpack
  whose target holds a kernel of another id replaces it: the same name, new bytes.
"""

from __future__ import annotations

import io
import os
import posixpath
import shutil
import stat
import subprocess
import tarfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from rich.progress import Progress

from orchestrator.adapters.cache import CHUNK, locked, sha256_file
from orchestrator.adapters.fsutil import atomic_write, fsync_dir, fsync_tree
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


class _Refused(Exception):
    """Why one member may not be unpacked; the extractor adds the package and the member."""


# Symlinks dropped without being followed and without an error: the links a kernel package
# carries into its build host (`lib/modules/<kver>/build -> /usr/src/linux-headers-<kver>`).
_DROPPED_LINKS = tuple(f"modules/{name}" for name in NOT_COPIED)
MAX_HOPS = 40  # symlinks followed while resolving one path: Linux's MAXSYMLINKS


def _safe_relpath(name: str) -> str:
    """The member's path relative to the package root; refuses anything that could escape."""
    raw = str(name)
    stripped = raw[2:] if raw.startswith("./") else raw
    if stripped in (".", ""):
        return ""
    parts = stripped.split("/")
    if raw.startswith("/") or ".." in parts or "\\" in raw or "\x00" in raw:
        raise _Refused("it would escape the target directory")
    return posixpath.normpath(stripped)


def _kind(member: tarfile.TarInfo) -> str:
    if member.ischr() or member.isblk():
        return "a device node"
    if member.isfifo():
        return "a fifo"
    return f"an entry of tar type {member.type!r}"


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


def _within(root: str, path: str) -> bool:
    return path == root or path.startswith(root + os.sep)


class _Tree:
    """The staging directory every member of every package of one kernel is written into.

    Each path is reached component by component with lstat, never through a symlink: a link
    an earlier member or an earlier package wrote (`l1 -> ..`, `l2 -> l1/..`) can neither lead
    a later write out of the tree nor be written over. A symlink is created only when its
    target, resolved through the links already in the tree, stays inside it; `audit` checks
    every link again once all packages are in, since a link created later can change where an
    earlier one leads.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(os.path.realpath(root))
        self.links: dict[str, str] = {}  # layout path -> "package: member" that made it

    # -- reaching paths

    def _walk(self, rel: str, create: bool) -> Path:
        """The real path of `rel`, its parent directories created (or checked) without
        following any symlink; the last component is not looked at."""
        parts = rel.split("/")
        here = self.root
        for i, part in enumerate(parts[:-1]):
            here = here / part
            try:
                st = os.lstat(here)
            except FileNotFoundError:
                if not create:
                    raise _Refused(f"{'/'.join(parts[:i + 1])} is not in the package") from None
                os.mkdir(here, 0o755)
                continue
            if stat.S_ISLNK(st.st_mode):
                raise _Refused(f"its path goes through the symlink {'/'.join(parts[:i + 1])}")
            if not stat.S_ISDIR(st.st_mode):
                raise _Refused(f"damaged package: {'/'.join(parts[:i + 1])} is a file, not a directory")
        real_parent = os.path.realpath(here)
        if real_parent != str(here) or not _within(str(self.root), real_parent):
            raise _Refused(f"its directory resolves to {real_parent}, outside the unpack")
        return here / parts[-1]

    def _free(self, rel: str, want: str) -> tuple[Path, os.stat_result | None]:
        """Where a new `want` ("file", "directory", "symlink") goes, and what is there already.
        A symlink is never written over; a file and a directory never replace each other."""
        path = self._walk(rel, create=True)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return path, None
        if stat.S_ISLNK(st.st_mode) and want != "symlink":
            raise _Refused(f"it would be written over the symlink {rel}")
        if stat.S_ISDIR(st.st_mode) and want != "directory":
            raise _Refused(f"damaged package: a {want} where a directory ({rel}) was unpacked")
        if stat.S_ISREG(st.st_mode) and want != "file":
            raise _Refused(f"damaged package: a {want} where a file ({rel}) was unpacked")
        return path, st

    def resolve(self, where: str, target: str) -> str:
        """`target` (a symlink's text) resolved from the directory `where`, through the links in
        the tree; refuses the moment it leaves the tree. Paths not written (yet) resolve by name."""
        parts = [p for p in where.split("/") if p]
        pending = list(reversed(target.split("/")))
        hops = 0
        while pending:
            name = pending.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if not parts:
                    raise _Refused(f"the symlink to {target!r} leads outside the unpack")
                parts.pop()
                continue
            candidate = self.root.joinpath(*parts, name)
            try:
                st = os.lstat(candidate)
            except (FileNotFoundError, NotADirectoryError):
                parts.append(name)
                continue
            if not stat.S_ISLNK(st.st_mode):
                parts.append(name)
                continue
            hops += 1
            link = os.readlink(candidate)
            if hops > MAX_HOPS or link.startswith("/"):
                raise _Refused(f"the symlink to {target!r} " + ("loops" if hops > MAX_HOPS else
                                                                 "leads outside the unpack"))
            pending.extend(reversed(link.split("/")))
        return "/".join(parts)

    # -- writing

    def mkdir(self, rel: str) -> None:
        path, st = self._free(rel, "directory")
        if st is None:
            os.mkdir(path, 0o755)

    def write(self, rel: str, source: BinaryIO, mode: int) -> None:
        """A regular file; setuid, setgid, sticky and group/other write bits are dropped."""
        path, _ = self._free(rel, "file")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(source, out, CHUNK)
            os.fchmod(out.fileno(), (mode & 0o755) | stat.S_IRUSR | stat.S_IWUSR)

    def copy(self, src_rel: str, rel: str) -> None:
        """A hardlink inside the package, unpacked as a copy of the file it names."""
        if src_rel == rel:
            return
        src = self._walk(src_rel, create=False)
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            raise _Refused(f"hardlink to {src_rel}, which the package does not hold") from None
        if not stat.S_ISREG(st.st_mode):
            raise _Refused(f"hardlink to {src_rel}, which is not a regular file")
        with open(os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as source:
            self.write(rel, source, st.st_mode)

    def symlink(self, rel: str, target: str, origin: str) -> None:
        if rel in _DROPPED_LINKS:
            return  # into the build host: not followed, not kept
        if rel == "modules":
            raise _Refused("the modules directory is a symlink")
        if not target or "\x00" in target:
            raise _Refused("a symlink without a target")
        if target.startswith("/"):
            raise _Refused(f"absolute symlink to {target!r}")
        self.resolve(posixpath.dirname(rel), target)
        path, st = self._free(rel, "symlink")
        if st is not None:
            if os.readlink(path) == target:
                return  # the same link in two packages
            raise _Refused(f"it would replace the symlink {rel} -> {os.readlink(path)!r}")
        os.symlink(target, path)
        self.links[rel] = origin

    def audit(self, origin: str) -> None:
        """Every symlink in the tree, now that all packages are in, still resolves inside it
        (`origin` names the source of links this tree did not create itself: a copied tree)."""
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in [*dirnames, *filenames]:
                path = Path(dirpath) / name
                if not path.is_symlink():
                    continue
                rel = path.relative_to(self.root).as_posix()
                where = self.links.get(rel, f"{origin}: {rel}")
                try:
                    link = os.readlink(path)
                    if link.startswith("/"):
                        raise _Refused(f"absolute symlink to {link!r}")
                    self.resolve(posixpath.dirname(rel), link)
                except _Refused as why:
                    raise KbisectError(f"{where}: refused: {why}") from None


def _member_origin(deb: Path, member: tarfile.TarInfo) -> str:
    return f"{deb.name}: member {str(member.name)!r}"


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
        member = archive.getmember(zst[0])
    except (ArError, DebError, OSError, tarfile.TarError, EOFError, ValueError, KeyError) as exc:
        raise KbisectError(f"{deb.name}: not a readable .deb "
                           f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if shutil.which("unzstd") is None:
        raise KbisectError(f"{deb.name}: zstd-compressed package and no unzstd (install zstd)")
    tmp = scratch / f".{deb.name}.{os.getpid()}.data.tar"
    try:
        scratch.mkdir(parents=True, exist_ok=True)
        _unzstd(deb, zst[0], member, tmp)
        return tarfile.open(tmp, "r:"), tmp
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise KbisectError(f"{deb.name}: cannot decompress {zst[0]} into {scratch}: "
                           f"{exc.strerror or exc}") from None
    except (tarfile.TarError, EOFError) as exc:
        tmp.unlink(missing_ok=True)
        raise KbisectError(f"{deb.name}: {zst[0]} is not a tar archive ({exc})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _unzstd(deb: Path, name: str, member: BinaryIO, tmp: Path) -> None:
    """Stream an ar member through `unzstd` into `tmp`; unzstd's own last words say why it
    failed (a damaged stream, or "No space left on device" writing the scratch file)."""
    with open(tmp, "wb") as out:
        proc = subprocess.Popen(["unzstd", "-q", "-c"], stdin=subprocess.PIPE, stdout=out,
                                stderr=subprocess.PIPE)
        assert proc.stdin is not None and proc.stderr is not None
        try:
            while chunk := member.read(CHUNK):
                proc.stdin.write(chunk)
            proc.stdin.close()
        except BrokenPipeError:
            pass
        words = proc.stderr.read().decode("utf-8", "replace").strip().splitlines()
        if proc.wait() != 0:
            raise KbisectError(f"{deb.name}: {name} does not decompress "
                               f"({words[-1].strip() if words else 'damaged package'})")


def _extract_deb(deb: Path, tree: _Tree, kvers: set[str], progress: Progress) -> None:
    data, scratch = open_data(deb, tree.root.parent)
    try:
        _extract_members(deb, data, tree, kvers, progress)
    except OSError as exc:  # a full disk, a directory we may not write: this machine's trouble
        raise KbisectError(f"{deb.name}: cannot unpack into {tree.root.parent}: {exc.strerror or exc}") from None
    finally:
        data.close()
        if scratch is not None:
            scratch.unlink(missing_ok=True)


def _extract_members(deb: Path, data: tarfile.TarFile, tree: _Tree, kvers: set[str], progress: Progress) -> None:
    task = progress.add_task(f"unpack {deb.name}", total=None)
    try:
        for member in data:
            try:
                _extract_member(deb, data, member, tree, kvers)
            except _Refused as why:
                raise KbisectError(f"{_member_origin(deb, member)}: refused: {why}") from None
            if member.isfile():
                progress.advance(task, member.size)
    except (tarfile.TarError, EOFError, zlib_error()) as exc:
        raise KbisectError(f"{deb.name}: damaged archive ({exc})") from None


def _extract_member(deb: Path, data: tarfile.TarFile, member: tarfile.TarInfo, tree: _Tree,
                    kvers: set[str]) -> None:
    """One member into the tree: where it lands in the layout, or nowhere (docs, firmware)."""
    if not (member.isdir() or member.isfile() or member.issym() or member.islnk()):
        raise _Refused(f"{_kind(member)} in a kernel package")  # never part of one
    rel = _safe_relpath(member.name)
    mapped = _map_member(rel) if rel else None
    if mapped is None:
        return
    target_rel, kver = mapped
    if kver and not target_rel.startswith("modules") and not (member.isfile() or member.islnk()):
        return  # boot/vmlinuz-* as a link or a directory: not the image
    if kver and (target_rel.startswith("modules") or target_rel == "vmlinuz"):
        kvers.add(kver)
    if member.isdir():
        tree.mkdir(target_rel)
    elif member.isfile():
        source = data.extractfile(member)
        assert source is not None
        tree.write(target_rel, source, member.mode)
    elif member.issym():
        tree.symlink(target_rel, member.linkname, _member_origin(deb, member))
    else:
        linked = _map_member(_safe_relpath(member.linkname))
        if linked is not None:  # a hardlink to a file left out (a doc) brings nothing
            tree.copy(linked[0], target_rel)


@contextmanager
def _staged(target: Path, manifest: Callable[[], str]) -> Iterator[Path]:
    """Build in an empty `<target>.partial`, renamed to `target` only when the body succeeds.

    A `target` without a manifest is an interrupted earlier attempt (callers checked the
    manifest under the lock) and is removed first; a failed body leaves nothing behind. The
    tree is fsynced and then the manifest (`manifest()`, asked once the body is done) written
    into it before the one rename, so kernel.json never stands over data a power loss can take.
    """
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    if target.exists():
        shutil.rmtree(target)
    partial.mkdir(parents=True)
    try:
        yield partial
        fsync_tree(partial)
        atomic_write(partial / MANIFEST, manifest())
        os.replace(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    fsync_dir(target.parent)


def _machine_trouble(spec: str, target: Path, exc: OSError) -> KbisectError:
    """An OSError while unpacking (a full disk, no permission) as one line."""
    return KbisectError(f"{spec}: cannot unpack into {target.parent}: {exc.strerror or exc}")


def unpack_debs(debs: list[Path], target: Path, spec: str, extra: dict | None = None,
                files: dict[str, bytes] | None = None) -> UnpackedKernel:
    """Unpack kernel .debs into the UnpackedKernel layout at `target`; kernel.json is written last.

    `files` are small published files kept beside the kernel (a mainline build's COMMIT and
    CHANGES), written into the same staging directory so they arrive with it or not at all.

    The work happens in `<target>.partial` and is renamed into place, so an interrupted
    unpack is never mistaken for a finished one (the manifest is what marks it finished). A
    finished unpack is reused only if it came from the same package bytes (same content id).
    A package that tries to write outside the tree, through or over a symlink, or holds device
    nodes or fifos, is refused whole: one line naming the package and the member.
    """
    target = Path(target)
    debs = [Path(d) for d in debs]
    kernel_id = _packages_id(debs, dict(extra or {}))
    kvers: set[str] = set()

    def record() -> UnpackedKernel:
        return UnpackedKernel(KernelRef.of(spec).with_id(kernel_id), target, next(iter(kvers)), dict(extra or {}))

    try:
        with locked(target):
            done = _current(target, kernel_id)
            if done is not None:
                return done
            with _staged(target, lambda: record().manifest()) as partial:
                tree = _Tree(partial)
                with transfer_bar() as bar:
                    for deb in debs:
                        _extract_deb(deb, tree, kvers, bar)
                tree.audit(spec)
                if not (partial / "vmlinuz").is_file() or (partial / "vmlinuz").is_symlink():
                    raise KbisectError(f"{spec}: no boot/vmlinuz-* in {', '.join(d.name for d in debs)}")
                if len(kvers) > 1:
                    raise KbisectError(f"{spec}: packages disagree on the kernel release ({', '.join(sorted(kvers))})")
                try:
                    tree.mkdir("modules")
                    for name, data in (files or {}).items():
                        tree.write(Path(name).name, io.BytesIO(data), 0o644)
                except _Refused as why:
                    raise KbisectError(f"{spec}: {why}") from None
            return record()
    except OSError as exc:
        raise _machine_trouble(spec, target, exc) from None


def adopt_tree(src: Path, target: Path, spec: str, kver: str, extra: dict | None = None,
               expect: str | None = None) -> UnpackedKernel:
    """Copy an already-unpacked tree (local builds: vmlinuz + lib/modules/<kver>) into the layout.

    `expect` is the content id the caller sees in `src` now: a finished copy of another id is
    replaced (None: any finished copy is reused). The recorded id is computed from the copy, the
    bytes that will boot, so a tree that changed while it was copied is caught next time."""
    target = Path(target)
    kernel_id = ""

    def record() -> UnpackedKernel:
        return UnpackedKernel(KernelRef.of(spec).with_id(kernel_id), target, kver, dict(extra or {}))

    try:
        with locked(target):
            done = _current(target, expect)
            if done is not None:
                return done
            with _staged(target, lambda: record().manifest()) as partial:
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
                _Tree(partial).audit(spec)  # a link out of the tree is refused here as in a package
                kernel_id = tree_content_id(partial / "vmlinuz", partial / "modules")
            return record()
    except OSError as exc:
        raise _machine_trouble(spec, target, exc) from None
