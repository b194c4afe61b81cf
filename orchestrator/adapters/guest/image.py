"""The guest root image: built once from Debian packages, shared read-only by every VM.

The recipe lives in `images/` (package list, PID-1 init, sshd config). The image is cached
under `$KBISECT_HOME/images/<recipe hash>/` and rebuilt only when the recipe (or the apt
sources it is built from) changes. The build never needs loop mounts or a running guest:
mmdebstrap into a directory, `mkfs.ext4 -d` into a raw file, `qemu-img convert` to qcow2.
VMs only ever see the image as the backing file of their own overlay, so it is never written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.adapters import config
from orchestrator.adapters.cache import locked
from orchestrator.adapters.fsutil import in_use, reap_dead_owners
from orchestrator.adapters.progress import stage_bar
from orchestrator.core.errors import InstallationError, KbisectError

RECIPE_DIR = config.REPO_ROOT / "images"
RECIPE_FILES = ("packages.txt", "init", "sshd_config")
# Bump when the build procedure itself changes in a way that changes the image.
BUILD_VERSION = "1"
APT_SOURCES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))


@dataclass
class RootImage:
    """A finished root image: the qcow2 every overlay points at, and the guest's SSH host key."""

    path: Path
    recipe_hash: str
    host_key: str  # "ssh-ed25519 AAAA..." baked into the image; the host pins it
    meta: dict

    @property
    def dir(self) -> Path:
        return self.path.parent


def packages(recipe_dir: Path = RECIPE_DIR) -> list[str]:
    """The package list without comments and blanks."""
    out: list[str] = []
    for line in (recipe_dir / "packages.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line)
    return out


def _apt_source_files() -> list[Path]:
    """The machine's own apt sources: the image comes from the archive this host already uses."""
    files: list[Path] = []
    main, parts = APT_SOURCES
    if main.is_file() and _has_entries(main.read_text()):
        files.append(main)
    if parts.is_dir():
        for p in sorted(parts.iterdir()):
            if p.suffix in (".list", ".sources") and p.is_file() and _has_entries(p.read_text()):
                files.append(p)
    return files


def _has_entries(text: str) -> bool:
    return any(
        line.strip() and not line.lstrip().startswith("#") for line in text.splitlines()
    )


def host_suite(files: list[Path] | None = None) -> str:
    """The Debian suite the host's apt points at (first suite of the first deb entry)."""
    for path in files if files is not None else _apt_source_files():
        text = path.read_text()
        if path.suffix == ".sources":
            for block in re.split(r"\n\s*\n", text):
                fields = dict(
                    (m.group(1).lower(), m.group(2).strip())
                    for m in re.finditer(r"^([A-Za-z-]+):\s*(.*)$", block, re.M)
                )
                if "deb" in fields.get("types", "").split() and fields.get("suites"):
                    suite = fields["suites"].split()[0]
                    if "-" not in suite:
                        return suite
        else:
            for line in text.splitlines():
                parts = line.split("#", 1)[0].split()
                if len(parts) >= 3 and parts[0] == "deb":
                    rest = [p for p in parts[1:] if not p.startswith("[")]
                    if len(rest) >= 2 and "-" not in rest[1]:
                        return rest[1]
    raise InstallationError("cannot find a Debian suite in the machine's apt sources")


def recipe_hash(recipe_dir: Path = RECIPE_DIR) -> str:
    """Content hash of everything that decides the image's contents."""
    h = hashlib.sha256()
    h.update(f"build={BUILD_VERSION}\n".encode())
    for name in RECIPE_FILES:
        h.update(name.encode() + b"\0" + (recipe_dir / name).read_bytes() + b"\0")
    for src in _apt_source_files():
        h.update(src.read_bytes())
    return h.hexdigest()[:16]


def image_dir(rhash: str | None = None) -> Path:
    return config.subdir("images") / (rhash or recipe_hash())


def cached() -> RootImage | None:
    """The finished image for the current recipe, or None."""
    d = image_dir()
    meta_path = d / "image.json"
    if not meta_path.exists() or not (d / "root.qcow2").exists():
        return None
    meta = json.loads(meta_path.read_text())
    return RootImage(path=d / "root.qcow2", recipe_hash=d.name, host_key=meta["host_key"], meta=meta)


def ensure(progress: bool = True) -> RootImage:
    """The root image for the current recipe, building it (under a lock) on first use."""

    img = cached()
    if img:
        return img
    rhash = recipe_hash()
    with locked(config.subdir("images") / rhash):
        img = cached()  # another process may have built it while we waited
        if img:
            return img
        return build(rhash, progress=progress)


def rebuild(progress: bool = True) -> RootImage:
    """`image build --force`: a new image for the current recipe, never pulled from under a VM.

    A running VM reads the base through its overlay (and its SSH session was pinned to the
    image's host key), so a rebuild while any live overlay names the base is refused with one
    line. The new image is built aside and swapped in at the end; if a VM started meanwhile,
    the old image is kept as `<hash>.old-<pid>` until `kbisect gc` finds it unused."""

    rhash = recipe_hash()
    final = image_dir(rhash)
    with locked(config.subdir("images") / rhash):
        users = overlays_using(final / "root.qcow2")
        if users:
            raise KbisectError(f"image build --force: {len(users)} running VM overlay(s) use {final / 'root.qcow2'} "
                               f"(first: {users[0]}); stop those runs (or wait for them) and try again")
        return build(rhash, progress=progress, replace=True)


# qcow2 header (QEMU docs/interop/qcow2.txt): magic "QFI\xfb", then at byte 8 the backing file
# name's offset (big-endian u64) and at byte 16 its length (u32).
QCOW2_MAGIC = b"QFI\xfb"


def backing_file(qcow2: Path) -> str | None:
    """The backing file a qcow2 overlay names, read from its header (None: none, or not qcow2)."""
    try:
        with open(qcow2, "rb") as fh:
            header = fh.read(20)
            if len(header) < 20 or header[:4] != QCOW2_MAGIC:
                return None
            offset, size = int.from_bytes(header[8:16], "big"), int.from_bytes(header[16:20], "big")
            if not offset or not 0 < size <= 4096:
                return None
            fh.seek(offset)
            return fh.read(size).decode("utf-8", "replace")
    except OSError:
        return None


def overlays_using(base: Path) -> list[Path]:
    """Overlays of live runs (their owner process alive) whose backing file is `base`."""
    from orchestrator.adapters.guest.vm import run_owner_alive

    want = os.path.realpath(base)
    found = []
    for state in config.subdir("runs").glob("*/state.json"):
        if run_owner_alive(state.parent) is False:  # unreadable: a run still writing it, alive
            continue
        for overlay in state.parent.glob("*/*.qcow2"):
            named = backing_file(overlay)
            if named and os.path.realpath(named) == want:
                found.append(overlay)
    return found


def _run(cmd: list[str], what: str, log: Path) -> None:
    with open(log, "ab") as fh:
        fh.write(("\n$ " + " ".join(cmd) + "\n").encode())
        fh.flush()
        try:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        except FileNotFoundError as exc:
            raise InstallationError(f"{what}: {cmd[0]} is not installed (run ./setup.sh)") from exc
        try:
            proc.wait()
        except BaseException:
            # Interrupted: let the tool clean up after itself (mmdebstrap unmounts its chroot
            # on SIGTERM) before we remove the tree; SIGKILL only if it will not stop.
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            raise
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise InstallationError(f"{what} failed (exit {proc.returncode}; log {log}): " + " | ".join(tail))


def _mmdebstrap_cmd(pkgs: list[str], suite: str, tree: Path, sources: list[Path]) -> list[str]:
    """The root filesystem from Debian packages, without docs, manuals and locales."""
    return [
        "mmdebstrap",
        "--mode=root",
        "--variant=minbase",
        "--include=" + ",".join(pkgs),
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        "--customize-hook=rm -f $1/etc/ssh/ssh_host_rsa_key* $1/etc/ssh/ssh_host_ecdsa_key*",
        suite,
        str(tree),
        *[str(s) for s in sources],
    ]


def _ext4_image(work: Path, tree: Path, log: Path) -> Path:
    """`tree` as a raw ext4 image, with headroom for each overlay's pcaps and logs."""
    raw = work / "root.raw"
    size_mb = int(_du_bytes(tree) * 1.25 / 2**20) + 1024
    mkfs = ["mkfs.ext4", "-q", "-F", "-L", "kbisect-root", "-b", "4096", "-N", "131072"]
    try:
        _run(mkfs + ["-O", "^orphan_file", "-d", str(tree), str(raw), f"{size_mb}M"], "mkfs.ext4", log)
    except InstallationError:  # older e2fsprogs do not know orphan_file (and never set it)
        _run(mkfs + ["-d", str(tree), str(raw), f"{size_mb}M"], "mkfs.ext4", log)
    return raw


def build(rhash: str | None = None, progress: bool = True, replace: bool = False) -> RootImage:
    """Build the image for the recipe in `images/` (caller holds the lock); `replace`: a
    finished image of this recipe may exist and is swapped out (see `rebuild`)."""
    if os.geteuid() != 0:
        raise InstallationError("building the root image needs root (mmdebstrap, device nodes)")
    rhash = rhash or recipe_hash()
    final = image_dir(rhash)
    work = config.subdir("images") / f"{rhash}.build-{os.getpid()}"
    t0 = time.monotonic()
    try:  # the mkdir too: a stop between creating the staging and entering the try would leave it
        safe_rmtree(work)
        work.mkdir(parents=True)
        suite, pkgs, host_key = _build_into(work, progress)
        meta = {
            "recipe_hash": rhash,
            "suite": suite,
            "packages": pkgs,
            "host_key": host_key,
            "size_bytes": (work / "root.qcow2").stat().st_size,
            "build_seconds": round(time.monotonic() - t0, 1),
            "built_at": time.time(),
        }
        (work / "image.json").write_text(json.dumps(meta, indent=2))
        os.chmod(work / "root.qcow2", 0o444)  # the base is never written, by anyone
        _retire(final)
        work.rename(final)
    except BaseException as exc:
        (work / "root.raw").unlink(missing_ok=True)
        if not isinstance(exc, Exception):  # stopped (SIGTERM, Ctrl-C): nothing is left;
            safe_rmtree(work)  # a failure keeps its build.log for the user (gc removes it)
        raise
    return RootImage(path=final / "root.qcow2", recipe_hash=rhash, host_key=host_key, meta=meta)


def _build_into(work: Path, progress: bool) -> tuple[str, list[str], str]:
    """mmdebstrap the recipe into `work/tree` and make `work/root.qcow2` of it; (suite,
    packages, the guest's SSH host key)."""
    tree = work / "tree"
    log = work / "build.log"
    sources = _apt_source_files()
    if not sources:
        raise InstallationError("the machine's apt has no sources configured; cannot build the root image")
    suite = host_suite(sources)
    pkgs = packages()
    steps = [
        "mmdebstrap: download and install Debian packages",
        "install init and sshd config",
        "mkfs.ext4 -d",
        "qemu-img convert to qcow2",
    ]
    with stage_bar(progress) as bar:
        task = bar.add_task(steps[0], total=len(steps))
        try:
            _run(_mmdebstrap_cmd(pkgs, suite, tree, sources), "mmdebstrap", log)
            bar.update(task, advance=1, description=steps[1])

            host_key = _install_recipe(tree, log)
            bar.update(task, advance=1, description=steps[2])

            raw = _ext4_image(work, tree, log)
            bar.update(task, advance=1, description=steps[3])

            _run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(work / "root.qcow2")], "qemu-img convert", log)
            raw.unlink()
            bar.update(task, advance=1, description="done")
        finally:
            safe_rmtree(tree)
    return suite, pkgs, host_key


def _retire(final: Path) -> None:
    """Move a finished image out of the way of its replacement: removed now if no live
    overlay uses it, else kept as `<hash>.old-<pid>` for `gc_builds` to remove once unused."""
    if not final.exists():
        return
    if overlays_using(final / "root.qcow2"):
        final.rename(final.with_name(f"{final.name}.old-{os.getpid()}"))
    else:
        shutil.rmtree(final, ignore_errors=True)


def _install_recipe(tree: Path, log: Path) -> str:
    """Put the init and sshd config into the tree; return the guest's public host key."""
    sbin = tree / "usr" / "sbin" if (tree / "sbin").is_symlink() else tree / "sbin"
    shutil.copy(RECIPE_DIR / "init", sbin / "kbisect-init")
    os.chmod(sbin / "kbisect-init", 0o755)
    shutil.copy(RECIPE_DIR / "sshd_config", tree / "etc" / "ssh" / "sshd_config")
    # /lib is usually a symlink to usr/lib: the modules disk is mounted on usr/lib/modules.
    (tree / "usr" / "lib" / "modules").mkdir(parents=True, exist_ok=True)
    (tree / "root" / "repro").mkdir(parents=True, exist_ok=True)
    (tree / "root" / ".ssh").mkdir(mode=0o700, exist_ok=True)
    (tree / "etc" / "hostname").write_text("kbisect\n")
    (tree / "etc" / "hosts").write_text("127.0.0.1 localhost kbisect\n::1 localhost\n")
    (tree / "etc" / "resolv.conf").unlink(missing_ok=True)
    (tree / "etc" / "resolv.conf").write_text("")
    key = tree / "etc" / "ssh" / "ssh_host_ed25519_key"
    if not key.exists():
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], "ssh-keygen", log)
    parts = (key.with_suffix(".pub")).read_text().split()
    return f"{parts[0]} {parts[1]}"


def _mounts_below(path: Path) -> list[str]:
    """Mount points at or below `path` (deepest first), from /proc/self/mountinfo."""
    root = os.path.realpath(path)
    found = []
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            mp = line.split()[4].encode().decode("unicode_escape")
            if mp == root or mp.startswith(root + "/"):
                found.append(mp)
    except OSError:
        pass
    return sorted(found, key=len, reverse=True)


def safe_rmtree(path: Path) -> None:
    """Remove a build tree, first detaching anything still mounted inside it.

    mmdebstrap mounts proc/sys/dev pieces inside the chroot while it runs; if it is killed, a
    plain rmtree would walk into those mounts (the host's /dev, /sys)."""
    for mp in _mounts_below(path):
        subprocess.run(["umount", "-l", mp], capture_output=True)
    if _mounts_below(path):
        raise InstallationError(f"{path} still has mounts inside; not removing it")
    shutil.rmtree(path, ignore_errors=True)


def _du_bytes(path: Path) -> int:
    total = 0
    for root, dirs, files in os.walk(path):
        for name in files + dirs:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            total += st.st_blocks * 512 if st.st_blocks else st.st_size
    return total


def gc_builds() -> list[Path]:
    """Remove half-finished builds of dead processes (a killed `image build`), and images a
    rebuild replaced once no live overlay uses them."""
    images = config.subdir("images")
    removed = reap_dead_owners(images, "*.build-*", safe_rmtree)
    for old in images.glob("*.old-*"):
        # A retired image is named by no overlay any more (the new image took its path): it is in
        # use exactly while a QEMU process still holds it open.
        if not in_use(old / "root.qcow2"):
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old)
    return removed


if __name__ == "__main__":  # pragma: no cover - manual use
    print(ensure().path, file=sys.stderr)
