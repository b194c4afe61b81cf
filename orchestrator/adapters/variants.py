"""Patched kernel variants: a distro kernel with one or more of its *modules* rebuilt from a patch.

Offline, only fixed kernels can be downloaded, so a known-bad kernel (a positive control, or a
culprit-revert check) has to be manufactured honestly: take the distro's own kernel, its own
headers and its own source package, apply a patch (usually the revert of a fix), rebuild only the
modules that patch touches with the compiler the kernel was built with, and swap them into a copy
of the kernel's modules tree. vmlinuz is never rebuilt, so a patch touching built-in code is
refused rather than silently ignored.

The result is an ordinary UnpackedKernel at `kernels/<source>/<version>+<name>/` with spec
`<source>:<version>+<name>`, so the guest runtime and the bisection engine use it like any other
kernel; boot artefacts (the modules disk) are content-keyed there and follow automatically.

Only Debian kernels are supported so far (their headers, kbuild and source are all packages that
`apt-get download` can fetch).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

from orchestrator.adapters import config
from orchestrator.adapters.cache import sha256_file
from orchestrator.core.errors import KbisectError
from orchestrator.adapters.kernel import MANIFEST, UnpackedKernel

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SOURCE_EXTS = (".c", ".S")
MODULE_EXTS = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")
# Files depmod writes; they are regenerated for the variant instead of being shared with the base.
DEPMOD_OUTPUTS = {
    "modules.dep", "modules.dep.bin", "modules.alias", "modules.alias.bin", "modules.softdep",
    "modules.symbols", "modules.symbols.bin", "modules.builtin.bin", "modules.builtin.alias.bin",
    "modules.devname", "modules.weakdep",
}


# --------------------------------------------------------------------------------------------
# Pure helpers: patch parsing, Makefile/config analysis, compiler comparison
# --------------------------------------------------------------------------------------------


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


def touched_files(patch_text: str) -> list[TouchedFile]:
    """The files a unified diff (git or plain `diff -u`, a/ b/ prefixes) touches, in order.

    Needed before anything is downloaded: the touched paths decide which source files to
    extract, which modules to rebuild and whether the patch must be refused.
    """
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
        if line.startswith("GIT binary patch") or line.startswith("Binary files "):
            raise KbisectError("patch contains a binary diff; kbisect rebuilds modules from C sources only")
        if line.startswith("rename from ") or line.startswith("copy from "):
            raise KbisectError("patch renames or copies files; kbisect cannot rebuild modules from that")
        i += 1
    if not result:
        raise KbisectError("patch touches no files (expected a unified diff with a/ and b/ paths)")
    return list(result.values())


def parse_kconfig(text: str) -> dict[str, str]:
    """A kernel .config as {CONFIG_NAME: value}; `# CONFIG_X is not set` lines are left out."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$", line.strip())
        if m:
            value = m.group(2)
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            values[m.group(1)] = value
    return values


@dataclass(frozen=True)
class MakeAssignment:
    """One `<target>-<cond> [+:]= words` line of a kbuild Makefile, continuations joined."""

    target: str  # "obj", "ip_tunnel", "lib", "ccflags", "CFLAGS_foo.o" ...
    cond: str  # "y", "m", "objs", "$(CONFIG_X)" or "" for lines such as CFLAGS_foo.o
    words: tuple[str, ...]
    line: str


_ASSIGN_RE = re.compile(r"^([A-Za-z0-9_.]+?)-(y|m|objs|\$\((CONFIG_[A-Za-z0-9_]+)\))\s*(\+=|:=|=)\s*(.*)$")
_FLAGS_RE = re.compile(r"^((?:ccflags|asflags|subdir-ccflags)-(?:y|\$\(CONFIG_[A-Za-z0-9_]+\))|CFLAGS_[A-Za-z0-9_.-]+|AFLAGS_[A-Za-z0-9_.-]+|CFLAGS_REMOVE_[A-Za-z0-9_.-]+)\s*(\+=|:=|=)\s*(.*)$")


def _logical_lines(text: str) -> list[str]:
    out: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0] if not raw.lstrip().startswith("\t") else raw
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        if buf.strip():
            out.append(buf.strip())
        buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out


def parse_kbuild(text: str) -> tuple[list[MakeAssignment], list[str]]:
    """The object assignments and compiler-flag lines of a directory's Makefile/Kbuild.

    Deliberately small: kbisect only needs `obj-*`, composite `<module>-*` lists and flag
    lines; conditionals (ifeq/ifdef) are not evaluated, which is why the final decision is
    cross-checked against the modules the base kernel actually ships.
    """
    assigns: list[MakeAssignment] = []
    flags: list[str] = []
    for line in _logical_lines(text):
        m = _ASSIGN_RE.match(line)
        if m and not m.group(1).startswith(("ccflags", "asflags", "subdir-ccflags", "ldflags")):
            cond = m.group(2)
            assigns.append(MakeAssignment(m.group(1), cond, tuple(m.group(5).split()), line))
            continue
        if _FLAGS_RE.match(line):
            flags.append(line)
    return assigns, flags


_VAR_ASSIGN_RE = re.compile(r"^([A-Za-z0-9_.$()-]+?)\s*(\+=|:=|=)\s*(.*)$")
_VAR_REF_RE = re.compile(r"\$\(([A-Za-z0-9_.-]+)\)")


def make_variables(text: str, kconfig: dict[str, str]) -> dict[str, list[str]]:
    """Every simple variable a kbuild Makefile assigns, with `$(CONFIG_X)` in names substituted.

    Composite modules often list their objects through helper variables
    (`ip_vs-objs := ... $(ip_vs_proto-objs-y)` with `ip_vs_proto-objs-$(CONFIG_IP_VS_PROTO_TCP) += ...`);
    linking a module from its literal words alone leaves symbols undefined.
    """
    values: dict[str, list[str]] = {}
    for line in _logical_lines(text):
        m = _VAR_ASSIGN_RE.match(line)
        if not m or line.startswith(("ifeq", "ifneq", "ifdef", "ifndef", "include", "-include")):
            continue
        name = re.sub(r"\$\((CONFIG_[A-Za-z0-9_]+)\)", lambda c: kconfig.get(c.group(1), ""), m.group(1))
        if "$(" in name:
            continue
        words = m.group(3).split()
        values[name] = values.get(name, []) + words if m.group(2) == "+=" else words
    return values


def expand_words(words: list[str] | tuple[str, ...], variables: dict[str, list[str]], depth: int = 0) -> list[str]:
    """Words with `$(var)` references replaced by the variable's (recursively expanded) words."""
    out: list[str] = []
    for word in words:
        ref = _VAR_REF_RE.fullmatch(word)
        if ref and not ref.group(1).startswith("CONFIG_"):
            if depth < 8:
                out.extend(expand_words(variables.get(ref.group(1), []), variables, depth + 1))
            continue
        out.append(word)
    return out


def _cond_value(cond: str, kconfig: dict[str, str]) -> str:
    """What a kbuild condition expands to: "y", "m" or "" (not built)."""
    if cond in ("y", "m"):
        return cond
    if cond == "objs":
        return "y"
    m = re.match(r"^\$\((CONFIG_[A-Za-z0-9_]+)\)$", cond)
    if m:
        value = kconfig.get(m.group(1), "")
        return value if value in ("y", "m") else ""
    return ""


@dataclass
class ModulePlan:
    """One module to rebuild: where it lives and which objects it is linked from."""

    directory: str  # "net/ipv4"
    module: str  # "ip_tunnel"
    members: list[str]  # object files, "ip_tunnel.o" (relative to directory)
    condition: str  # e.g. "CONFIG_NET_IP_TUNNEL=m", for the record
    flag_lines: list[str] = field(default_factory=list)

    @property
    def sources(self) -> list[str]:
        return [m[:-2] for m in self.members]  # stems; .c or .S decided by what exists


def plan_module(directory: str, makefile_text: str, source_name: str, kconfig: dict[str, str]) -> ModulePlan:
    """Decide whether `<directory>/<source_name>` is compiled into a module or into vmlinux.

    Reads the directory's Makefile/Kbuild: `obj-$(CONFIG_X) += foo.o` makes foo a module when
    CONFIG_X=m and built-in when CONFIG_X=y; an object listed in a composite `<mod>-y`/`<mod>-objs`
    inherits the placement of `<mod>.o`. Built-in or unbuilt code is refused with one line,
    because replacing a module cannot change vmlinux.
    """
    obj = PurePosixPath(source_name).stem + ".o"
    where = f"{directory}/{source_name}"
    assigns, flags = parse_kbuild(makefile_text)
    obj_lines = [a for a in assigns if a.target == "obj"]
    lib_lines = [a for a in assigns if a.target == "lib"]

    def outer(target_obj: str) -> tuple[str, str] | None:
        """(placement, condition text) of target_obj in obj-* lines: placement y/m/''."""
        best: tuple[str, str] | None = None
        for a in obj_lines:
            if target_obj in a.words:
                value = _cond_value(a.cond, kconfig)
                cond_text = f"obj-{a.cond}" if a.cond in ("y", "m") else f"{a.cond[2:-1]}={kconfig.get(a.cond[2:-1], 'n')}"
                # Built-in wins over module: kbuild drops obj-m entries that are also obj-y.
                if value == "y" or best is None or (value == "m" and best[0] == ""):
                    best = (value, cond_text)
        return best

    placement = outer(obj)
    module = obj[:-2]
    members = [obj]
    if placement is None:
        # Not a direct object: look for a composite object that lists it.
        for a in assigns:
            if a.target in ("obj", "lib") or obj not in a.words:
                continue
            member_on = _cond_value(a.cond, kconfig) in ("y", "m")
            composite = outer(a.target + ".o")
            if composite is None:
                continue
            if not member_on:
                raise KbisectError(f"{where} is not compiled in this kernel ({a.cond[2:-1] if a.cond.startswith('$(') else a.cond} is not set)")
            placement = composite
            module = a.target
            members = []
            variables = make_variables(makefile_text, kconfig)
            for b in assigns:
                if b.target == module and _cond_value(b.cond, kconfig) in ("y", "m"):
                    members.extend(w for w in expand_words(b.words, variables)
                                   if w.endswith(".o") and w not in members)
            break
    if placement is None:
        if any(obj in a.words for a in lib_lines):
            raise KbisectError(f"{where} is built-in code (lib-y, linked into vmlinux); kbisect can only rebuild modules")
        raise KbisectError(f"cannot tell how {where} is built: {obj} is not in an obj-* or composite line of {directory}/Makefile")
    value, cond_text = placement
    if value == "y":
        raise KbisectError(f"{where} is built-in code ({cond_text}: compiled into vmlinux); kbisect can only rebuild modules")
    if value != "m":
        raise KbisectError(f"{where} is not compiled in this kernel ({cond_text})")
    relevant_flags = [
        f for f in flags
        if not re.match(r"^(CFLAGS|AFLAGS|CFLAGS_REMOVE)_", f)
        or any(re.match(rf"^(CFLAGS|AFLAGS|CFLAGS_REMOVE)_{re.escape(m)}\s", f) for m in members)
    ]
    return ModulePlan(directory, module, members, cond_text, relevant_flags)


def kbuild_for(plans: list[ModulePlan]) -> str:
    """The Kbuild file for one out-of-tree build directory: only the modules being rebuilt."""
    lines = ["# generated by kbisect: rebuild only the modules a patch touches"]
    seen_flags: set[str] = set()
    for p in plans:
        for f in p.flag_lines:
            if f not in seen_flags:
                lines.append(f)
                seen_flags.add(f)
    for p in plans:
        lines.append(f"obj-m += {p.module}.o")
        if p.members != [p.module + ".o"]:
            lines.append(f"{p.module}-y := {' '.join(p.members)}")
    return "\n".join(lines) + "\n"


def compiler_mismatch(kernel_cc_text: str, host_version_line: str) -> str | None:
    """Why the host compiler must not build modules for this kernel, or None when it matches.

    Compares CONFIG_CC_VERSION_TEXT ("gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0") with the first
    line of `<cc> --version`, ignoring only the program name (gcc vs gcc-12): the family and the
    exact version, including the distro build, must agree, since a module built by another
    compiler may use another ABI or miscompile against the kernel's expectations.
    """
    def norm(text: str) -> str:
        text = text.strip()
        return text.split(" ", 1)[1].strip() if " " in text else text

    def family(text: str) -> str:
        first = text.strip().split(" ", 1)[0]
        return "clang" if "clang" in first or "clang" in text else "gcc" if "gcc" in first else first

    if not kernel_cc_text.strip():
        return "the kernel config has no CONFIG_CC_VERSION_TEXT, so its compiler is unknown"
    if family(kernel_cc_text) != family(host_version_line) or norm(kernel_cc_text) != norm(host_version_line):
        return f"compiler mismatch: kernel built with {kernel_cc_text.strip()!r}, host has {host_version_line.strip()!r}"
    return None


def kernel_version_string(vmlinuz: Path) -> str | None:
    """The bzImage's embedded version string ("6.1.0-54-cloud-amd64 (...) #1 SMP ... Debian 6.1.190-1 (...)").

    Read from the x86 boot header's kernel_version pointer, so the package version is known even
    for a kernel unpacked by another source that recorded nothing about it.
    """
    try:
        with open(vmlinuz, "rb") as f:
            head = f.read(0x10000)
    except OSError:
        return None
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        return None
    off = struct.unpack_from("<H", head, 0x20E)[0] + 0x200
    if off >= len(head):
        return None
    return head[off : off + 256].split(b"\0", 1)[0].decode("ascii", "replace") or None


def debian_package_version(base: UnpackedKernel) -> str:
    """The Debian package version (6.1.190-1) the base kernel came from."""
    for key in ("package_version", "pkg_version", "deb_version", "debian_version", "version"):
        value = base.extra.get(key)
        if isinstance(value, str) and re.match(r"^\d+\.\d+(\.\d+)?-\S+$", value):
            return value
    text = kernel_version_string(base.vmlinuz) or ""
    m = re.search(r"Debian (\d+\.\d+(?:\.\d+)?-\S+)", text)
    if m:
        return m.group(1)
    raise KbisectError(f"cannot tell which Debian package {base.spec} came from (no package version recorded, none in vmlinuz)")


def _dpkg_key(version: str) -> tuple:
    """A sort key close to dpkg's for the versions kbisect meets (6.1.190-1, 6.1.192-2, 6.1.1~rc1-1)."""
    parts = re.split(r"([0-9]+)", version)
    key: list = []
    for p in parts:
        if p.isdigit():
            key.append((1, int(p)))
        elif p:
            key.extend((0 if ch == "~" else 2, ord(ch)) for ch in p)
    return tuple(key)


def nearest_version(wanted: str, available: Iterable[str]) -> str | None:
    """The available version closest to `wanted` on the same X.Y line: exact, else the nearest
    upstream sublevel, preferring newer on a tie (a newer kbuild of the same line was measured to work)."""
    line = ".".join(wanted.split(".")[:2])
    candidates = [v for v in set(available) if ".".join(v.split(".")[:2]) == line]
    if not candidates:
        return None
    if wanted in candidates:
        return wanted

    def sub(v: str) -> int:
        m = re.match(r"^\d+\.\d+\.(\d+)", v)
        return int(m.group(1)) if m else 0

    w = sub(wanted)
    return sorted(candidates, key=lambda v: (abs(sub(v) - w), 0 if sub(v) >= w else 1, tuple(-x[1] for x in _dpkg_key(v))))[0]


# --------------------------------------------------------------------------------------------
# Progress on stderr
# --------------------------------------------------------------------------------------------


def _console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


class _Progress:
    """Step-by-step progress on stderr; each step prints its duration so builds are measurable."""

    def __init__(self) -> None:
        self.console = _console()
        self.t0 = time.monotonic()

    def step(self, text: str) -> "_Step":
        return _Step(self, text)

    def note(self, text: str) -> None:
        self.console.print(f"[dim]variants:[/] {text}", soft_wrap=True)


class _Step:
    def __init__(self, progress: _Progress, text: str) -> None:
        self.progress, self.text = progress, text

    def __enter__(self) -> "_Step":
        self.start = time.monotonic()
        self.status = self.progress.console.status(f"{self.text} …")
        self.status.__enter__()
        return self

    def update(self, text: str) -> None:
        self.status.update(f"{self.text} … {text}")

    def __exit__(self, exc_type, exc, tb) -> None:
        self.status.__exit__(exc_type, exc, tb)
        self.seconds = time.monotonic() - self.start
        mark = "[green]done[/]" if exc_type is None else "[red]failed[/]"
        self.progress.console.print(f"[dim]variants:[/] {self.text}: {mark} ({self.seconds:.1f} s)", soft_wrap=True)


# --------------------------------------------------------------------------------------------
# Debian packages
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _apt_options_for(home: str) -> tuple[str, ...]:
    return tuple(_apt_options_uncached())


def _apt_options() -> list[str]:
    """apt -o options that reach suites beyond the machine's own (computed once per $KBISECT_HOME:
    the Debian source refreshes its private package lists at most daily)."""
    return list(_apt_options_for(str(config.home())))


def _apt_options_uncached() -> list[str]:
    """From the Debian source's helper (its private sources list covers bullseye..sid and the
    security suites); plain apt when that helper is absent (bookworm packages need nothing extra)."""
    try:
        from orchestrator.adapters.sources import debian as deb_source
    except Exception:
        return []
    for name in ("apt_options", "apt_opts", "apt_args"):
        helper = getattr(deb_source, name, None)
        if callable(helper):
            try:
                opts = helper()
            except TypeError:
                continue
            except KbisectError:
                raise
            except Exception:
                return []
            return [str(o) for o in opts]
    return []


def _run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    """Run a tool; a failure is one KbisectError line naming `what` and the tool's last words."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    except FileNotFoundError:
        raise KbisectError(f"{what}: {cmd[0]} is not installed (run ./setup.sh)") from None
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        last = tail[-1] if tail else f"exit {proc.returncode}"
        raise KbisectError(f"{what} failed: {last}")
    return proc


def available_versions(package: str) -> list[str]:
    """Versions of a Debian package that apt can download (via `apt-cache madison`)."""
    proc = subprocess.run(["apt-cache", *_apt_options(), "madison", package], capture_output=True, text=True)
    versions = []
    for line in proc.stdout.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) >= 3 and parts[0] == package:
            versions.append(parts[1])
    return sorted(set(versions), key=_dpkg_key)


@dataclass
class Downloaded:
    package: str
    version: str
    path: Path
    size: int


def apt_download(package: str, version: str, progress: _Progress) -> Downloaded:
    """Download one package version into the variants download cache, once, atomically.

    apt-get writes into a private temporary directory that is renamed into place, so an
    interrupted download never leaves a truncated .deb where a later run would trust it.
    """
    from filelock import FileLock

    cache = config.subdir("variants") / "downloads"
    cache.mkdir(parents=True, exist_ok=True)
    safe_version = version.replace(":", "%3a")
    pattern = f"{package}_{safe_version}_*.deb"
    with FileLock(str(cache / f".{package}_{safe_version}.lock")):
        found = sorted(cache.glob(pattern))
        if found:
            return Downloaded(package, version, found[0], found[0].stat().st_size)
        tmp = Path(tempfile.mkdtemp(prefix=".dl-", dir=cache))
        try:
            os.chmod(tmp, 0o755)
            with progress.step(f"downloading {package} {version}") as step:
                proc = subprocess.Popen(
                    ["apt-get", *_apt_options(), "download", f"{package}={version}"],
                    cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                )
                while proc.poll() is None:
                    size = sum(p.stat().st_size for p in tmp.iterdir() if p.is_file())
                    step.update(f"{size / 1e6:.0f} MB")
                    time.sleep(0.3)
                err = proc.stderr.read() if proc.stderr else ""
                if proc.returncode != 0:
                    lines = [l for l in err.splitlines() if l.startswith("E:")] or err.splitlines() or ["?"]
                    raise KbisectError(f"apt-get download {package}={version} failed: {lines[-1]}")
            debs = sorted(tmp.glob("*.deb"))
            if len(debs) != 1:
                raise KbisectError(f"apt-get download {package}={version} produced {len(debs)} files")
            final = cache / debs[0].name
            os.replace(debs[0], final)
            size = final.stat().st_size
            progress.note(f"{package} {version}: {size / 1e6:.1f} MB")
            return Downloaded(package, version, final, size)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _deb_field(deb: Path, fieldname: str) -> str:
    return _run(["dpkg-deb", "-f", str(deb), fieldname], f"reading {deb.name}").stdout.strip()


def _depends_names(depends: str) -> list[str]:
    names = []
    for item in depends.split(","):
        alt = item.split("|")[0].strip()
        if alt:
            names.append(re.split(r"[\s(:]", alt, 1)[0])
    return names


# --------------------------------------------------------------------------------------------
# Source extraction
# --------------------------------------------------------------------------------------------


def extract_source_files(source_deb: Path, directories: set[str], files: set[str], dest: Path,
                         progress: _Progress) -> tuple[str, list[str]]:
    """Stream the source tarball out of the linux-source .deb and extract only what the build needs.

    Keeps: the touched files, and for each touched directory (not recursively) its Makefile/Kbuild,
    C/assembler sources and local headers, since a composite module needs its sibling objects and
    quoted includes. The 140 MB tarball is never written to disk.
    Returns (top directory name inside the tarball, extracted paths relative to the tree).
    """
    dest.mkdir(parents=True, exist_ok=True)
    extracted: list[str] = []
    top = ""
    deb_proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(source_deb)], stdout=subprocess.PIPE)
    try:
        assert deb_proc.stdout is not None
        with progress.step(f"extracting {len(files)} patched file(s) from {source_deb.name}") as step:
            with tarfile.open(fileobj=deb_proc.stdout, mode="r|") as outer:
                for member in outer:
                    if not re.match(r"^\.?/?usr/src/linux-source-[^/]+\.tar\.(xz|gz|bz2)$", member.name):
                        continue
                    inner_file = outer.extractfile(member)
                    if inner_file is None:
                        continue
                    suffix = member.name.rsplit(".", 1)[1]
                    seen = 0
                    with tarfile.open(fileobj=inner_file, mode=f"r|{suffix}") as inner:
                        for m in inner:
                            seen += 1
                            if seen % 5000 == 0:
                                step.update(f"{seen} entries scanned")
                            parts = m.name.lstrip("./").split("/", 1)
                            if len(parts) != 2:
                                continue
                            top, rel = parts[0], parts[1]
                            parent = str(PurePosixPath(rel).parent)
                            base = PurePosixPath(rel).name
                            keep = rel in files or (
                                parent in directories
                                and (base in ("Makefile", "Kbuild") or base.endswith((".c", ".h", ".S")))
                            )
                            if not keep or not m.isfile():
                                continue
                            target = dest / rel
                            target.parent.mkdir(parents=True, exist_ok=True)
                            src = inner.extractfile(m)
                            assert src is not None
                            with open(target, "wb") as out:
                                shutil.copyfileobj(src, out)
                            extracted.append(rel)
                    break
    finally:
        if deb_proc.stdout:
            deb_proc.stdout.close()
        deb_proc.wait()
    if not top:
        raise KbisectError(f"{source_deb.name} holds no linux-source tarball")
    return top, extracted


def apply_patch(patch: Path, tree: Path) -> None:
    """Apply with -p1 and no fuzz, so a patch that does not fit this source is refused, not bent."""
    if shutil.which("patch"):
        cmd = ["patch", "-p1", "--batch", "--forward", "--fuzz=0", "--no-backup-if-mismatch", "-d", str(tree), "-i", str(patch)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    else:
        env = dict(os.environ, GIT_CEILING_DIRECTORIES=str(tree.parent))
        proc = subprocess.run(["git", "apply", "-p1", str(patch)], cwd=tree, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        out = (proc.stdout + proc.stderr).strip().splitlines()
        bad = [l for l in out if "FAILED" in l or "error" in l.lower() or "can't find" in l.lower()]
        raise KbisectError(f"patch {patch.name} does not apply to this kernel's source: {(bad or out or ['?'])[0].strip()}")


# --------------------------------------------------------------------------------------------
# Module tree assembly
# --------------------------------------------------------------------------------------------


def find_shipped_module(modules: Path, directory: str, module: str) -> Path | None:
    """The base kernel's copy of `<directory>/<module>.ko*`, in any compression."""
    for ext in MODULE_EXTS:
        for cand in (modules / "kernel" / directory / f"{module}{ext}", modules / "updates" / directory / f"{module}{ext}"):
            if cand.exists():
                return cand
    return None


def compress_like(ko: Path, like: Path) -> Path:
    """Compress a freshly built module the way the base ships its modules (xz/zstd/gzip/none)."""
    name = like.name
    if name.endswith(".ko"):
        return ko
    if name.endswith(".ko.xz"):
        _run(["xz", "--check=crc32", "--lzma2=dict=1MiB", "-f", str(ko)], f"compressing {ko.name}")
        return ko.with_name(ko.name + ".xz")
    if name.endswith(".ko.zst"):
        _run(["zstd", "-q", "-f", "--rm", "-T0", str(ko)], f"compressing {ko.name}")
        return ko.with_name(ko.name + ".zst")
    if name.endswith(".ko.gz"):
        _run(["gzip", "-9nf", str(ko)], f"compressing {ko.name}")
        return ko.with_name(ko.name + ".gz")
    raise KbisectError(f"unknown module compression for {like}")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def copy_tree_hardlinked(src: Path, dst: Path, skip: Callable[[str], bool]) -> int:
    """Copy a modules tree sharing unchanged files with the base by hard links (cheap: the
    cloud tree is ~90 MB, generic ~380 MB). Symlinks are copied as symlinks. Returns file count."""
    count = 0
    for dirpath, dirnames, filenames in os.walk(src):
        rel_dir = os.path.relpath(dirpath, src)
        out_dir = dst if rel_dir == "." else dst / rel_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in list(dirnames):
            full = Path(dirpath) / name
            if full.is_symlink():
                os.symlink(os.readlink(full), out_dir / name)
                dirnames.remove(name)
        for name in filenames:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if skip(rel):
                continue
            full = Path(dirpath) / name
            if full.is_symlink():
                os.symlink(os.readlink(full), out_dir / name)
            else:
                _link_or_copy(full, out_dir / name)
                count += 1
    return count


def modinfo_field(ko: Path, name: str) -> str:
    return _run(["modinfo", "-F", name, str(ko)], f"modinfo {ko.name}").stdout.strip()


def modversions(ko: Path) -> dict[str, str]:
    """{symbol: CRC} a module expects from the kernel (empty without CONFIG_MODVERSIONS)."""
    proc = subprocess.run(["modprobe", "--dump-modversions", str(ko)], capture_output=True, text=True)
    result = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            result[parts[1]] = parts[0]
    return result


def run_depmod(modules: Path, kver: str, system_map: Path | None) -> None:
    """depmod -b over a throw-away root whose lib/modules/<kver> points at the variant's tree."""
    with tempfile.TemporaryDirectory(prefix="kbisect-depmod-") as tmp:
        for sub in ("lib/modules", "usr/lib/modules"):
            d = Path(tmp) / sub
            d.mkdir(parents=True)
            os.symlink(modules.resolve(), d / kver)
        cmd = ["depmod", "-b", tmp]
        if system_map is not None:
            cmd += ["-F", str(system_map)]
        _run(cmd + [kver], "depmod")
    if not (modules / "modules.dep").exists():
        raise KbisectError(f"depmod wrote no modules.dep into {modules}")


# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    source: str
    version: str
    variant: str | None


def _parse_spec(text: str) -> _Spec:
    """SOURCE:VERSION[+NAME], through the sources engineer's parser when it exists."""
    try:
        from orchestrator.core.versions import parse_spec
    except Exception:
        parse_spec = None
    if parse_spec is not None:
        spec = parse_spec(text)
        return _Spec(str(spec.source), str(spec.version), getattr(spec, "variant", None) or None)
    m = re.match(r"^([a-z][a-z0-9_-]*):([^+\s/]+)(?:\+([^\s/]+))?$", text.strip())
    if not m:
        raise KbisectError(f"bad kernel spec {text!r}: expected SOURCE:VERSION[+NAME]")
    return _Spec(m.group(1), m.group(2), m.group(3))


def _fetch_base(spec: str) -> UnpackedKernel:
    """The unpacked base kernel, from the sources layer (or an existing unpack while it is absent)."""
    try:
        from orchestrator.adapters.sources import fetch
    except ImportError:
        fetch = None
    if fetch is not None:
        return fetch(spec)
    s = _parse_spec(spec)
    root = config.subdir("kernels") / s.source / s.version
    return UnpackedKernel.load(root)


# --------------------------------------------------------------------------------------------
# The build
# --------------------------------------------------------------------------------------------


def variant_dir(source: str, version: str, name: str) -> Path:
    return config.subdir("kernels") / source / f"{version}+{name}"


def _check_patch_scope(touched: list[TouchedFile]) -> None:
    """Refuse, before any download, patches kbisect cannot turn into module rebuilds."""
    for t in touched:
        if t.created or t.deleted:
            raise KbisectError(f"patch {'creates' if t.created else 'deletes'} {t.path}; kbisect only rebuilds modules from changed sources")
        name = PurePosixPath(t.path).name
        if name in ("Makefile", "Kbuild") or name.startswith("Kconfig"):
            raise KbisectError(f"patch changes the build ({t.path}); kbisect can only rebuild existing modules")
        if name.endswith(".h"):
            raise KbisectError(f"patch touches header {t.path}; kbisect cannot tell which objects (possibly vmlinux) include it")
        if not name.endswith(SOURCE_EXTS):
            raise KbisectError(f"patch touches {t.path}, which is not a C or assembler source")


def host_compiler(kconfig: dict[str, str], headers_vars: str = "") -> tuple[str, str]:
    """(compiler command, its `--version` first line) for the compiler this kernel names."""
    cc_text = kconfig.get("CONFIG_CC_VERSION_TEXT", "")
    wanted = cc_text.split(" ", 1)[0] if cc_text else ""
    m = re.search(r"^CC\s*=.*?(\S*(?:gcc|clang)[\w.-]*)\s*$", headers_vars, re.M)
    candidates = [c for c in (wanted, m.group(1).replace("$(CROSS_COMPILE)", "") if m else "", "gcc") if c]
    for cc in candidates:
        path = shutil.which(cc)
        if path:
            proc = subprocess.run([path, "--version"], capture_output=True, text=True)
            if proc.returncode == 0 and proc.stdout:
                return cc, proc.stdout.splitlines()[0]
    raise KbisectError(f"no compiler found for this kernel (wanted {wanted or 'gcc'}; run ./setup.sh)")


def build_variant(base_spec: str, patch: Path, name: str | None = None) -> UnpackedKernel:
    """Build (or return the cached) variant `<base_spec>+<name>` with `patch` applied to its modules.

    The bisection engine calls this for `--verify-revert`; `build_on_demand` calls it for control
    patches shipped with reproducers. Cached by name; a cached variant built from a different
    patch is refused rather than silently reused.
    """
    patch = Path(patch).resolve()
    if not patch.is_file():
        raise KbisectError(f"patch file {patch} does not exist")
    name = name or patch.name.removesuffix(".patch").removesuffix(".diff")
    if not NAME_RE.match(name):
        raise KbisectError(f"bad variant name {name!r}: use letters, digits, '.', '_' and '-'")
    base = _parse_spec(base_spec)
    if base.variant:
        raise KbisectError(f"base {base_spec!r} is itself a variant; patch the stock kernel instead")
    try:
        patch_text = patch.read_text()
    except UnicodeDecodeError:
        raise KbisectError(f"patch file {patch} is not text") from None
    patch_sha = hashlib.sha256(patch_text.encode()).hexdigest()
    spec = f"{base.source}:{base.version}+{name}"
    dest = variant_dir(base.source, base.version, name)

    cached = _cached(dest, spec, patch_sha)
    if cached is not None:
        return cached
    touched = touched_files(patch_text)
    _check_patch_scope(touched)
    if base.source != "debian":
        raise KbisectError(f"patched variants are only supported for debian kernels so far, not {base.source!r}")

    from filelock import FileLock

    locks = config.subdir("variants") / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with FileLock(str(locks / f"{base.source}_{base.version}+{name}.lock")):
        cached = _cached(dest, spec, patch_sha)
        if cached is not None:
            return cached
        if dest.exists():  # an interrupted build that got as far as the rename cannot exist; stale anyway
            shutil.rmtree(dest)
        # Leftovers of a build that was killed outright (the finally clauses never ran).
        for stale in [*dest.parent.glob(f".{dest.name}.tmp-*"), *config.subdir("variants").glob(f".{dest.name}.work-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        return _build(base_spec, base, spec, dest, patch, patch_text, patch_sha, touched)


def _cached(dest: Path, spec: str, patch_sha: str) -> UnpackedKernel | None:
    if not (dest / MANIFEST).exists():
        return None
    kernel = UnpackedKernel.load(dest)
    if kernel.extra.get("patch_sha256") != patch_sha:
        raise KbisectError(
            f"variant {spec} is already cached from a different patch; give this one another --name "
            f"(or remove {dest})"
        )
    return kernel


def _build(base_spec: str, base: _Spec, spec: str, dest: Path, patch: Path, patch_text: str,
           patch_sha: str, touched: list[TouchedFile]) -> UnpackedKernel:
    progress = _Progress()
    started = time.monotonic()
    kernel = _fetch_base(base_spec)
    if kernel.config is None:
        raise KbisectError(f"{base_spec} has no kernel config; cannot tell built-in from module code")
    kconfig = parse_kconfig(kernel.config.read_text())
    cc, cc_line = host_compiler(kconfig)
    why = compiler_mismatch(kconfig.get("CONFIG_CC_VERSION_TEXT", ""), cc_line)
    if why:
        raise KbisectError(f"refusing to build {spec}: {why}")
    pkg_version = debian_package_version(kernel)
    line = ".".join(pkg_version.split(".")[:2])

    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.work-", dir=config.subdir("variants")))
    tmp_dest = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    try:
        # 1. headers (exact flavour package), their -common and kbuild dependencies, and the source.
        headers_pkg = f"linux-headers-{kernel.kver}"
        headers_ver = _pick(headers_pkg, pkg_version)
        downloads = [apt_download(headers_pkg, headers_ver, progress)]
        for dep in _depends_names(_deb_field(downloads[0].path, "Depends")):
            if dep.startswith("linux-headers-") and "common" in dep:
                downloads.append(apt_download(dep, _pick(dep, headers_ver), progress))
            elif dep.startswith("linux-kbuild-"):
                downloads.append(apt_download(dep, _pick(dep, headers_ver), progress))
        if not any(d.package.startswith("linux-kbuild-") for d in downloads):
            kb = f"linux-kbuild-{line}"
            downloads.append(apt_download(kb, _pick(kb, headers_ver), progress))
        src_pkg = f"linux-source-{line}"
        src = apt_download(src_pkg, _pick(src_pkg, pkg_version), progress)
        downloads.append(src)

        # 2. unpack headers + kbuild; repoint the flavour Makefile's absolute include.
        hroot = work / "headers"
        with progress.step("unpacking headers and kbuild"):
            for d in downloads:
                if d is not src:
                    _run(["dpkg-deb", "-x", str(d.path), str(hroot)], f"unpacking {d.path.name}")
            hdir = hroot / "usr" / "src" / f"linux-headers-{kernel.kver}"
            if not (hdir / "Makefile").exists():
                raise KbisectError(f"{headers_pkg} has no Makefile at usr/src/linux-headers-{kernel.kver}")
            mk = (hdir / "Makefile").read_text()
            (hdir / "Makefile").write_text(re.sub(r"(?m)^(\s*include\s+)/usr/src/", rf"\g<1>{hroot}/usr/src/", mk))
            vars_text = (hdir / ".kernelvariables").read_text() if (hdir / ".kernelvariables").exists() else ""

        # 3. only the touched files (and their directories' build inputs) from the source.
        directories = {str(PurePosixPath(t.path).parent) for t in touched}
        tree = work / "src"
        _top, extracted = extract_source_files(src.path, directories, {t.path for t in touched}, tree, progress)
        missing = [t.path for t in touched if t.path not in extracted]
        if missing:
            raise KbisectError(f"{src_pkg} {src.version} has no {missing[0]}; the patch is for another tree")

        # 4. built-in or module? (before patching, so the refusal names the kernel's own layout)
        plans: list[ModulePlan] = []
        for t in touched:
            directory = str(PurePosixPath(t.path).parent)
            mkfile = tree / directory / "Kbuild"
            if not mkfile.exists():
                mkfile = tree / directory / "Makefile"
            if not mkfile.exists():
                raise KbisectError(f"{directory} has no Makefile in {src_pkg}")
            plan = plan_module(directory, mkfile.read_text(), PurePosixPath(t.path).name, kconfig)
            if not any(p.directory == plan.directory and p.module == plan.module for p in plans):
                plans.append(plan)
        shipped = {}
        for p in plans:
            ko = find_shipped_module(kernel.modules, p.directory, p.module)
            if ko is None:
                raise KbisectError(f"{base_spec} ships no {p.directory}/{p.module}.ko to replace")
            shipped[(p.directory, p.module)] = ko

        apply_patch(patch, tree)

        # 5. out-of-tree build, one M= directory per source directory.
        built: dict[tuple[str, str], Path] = {}
        log_path = config.subdir("variants") / "logs" / f"{dest.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with progress.step(f"building {', '.join(p.module + '.ko' for p in plans)} with {cc}") as step, open(log_path, "w") as log:
            for directory in sorted({p.directory for p in plans}):
                dplans = [p for p in plans if p.directory == directory]
                bdir = work / "build" / directory
                bdir.mkdir(parents=True, exist_ok=True)
                for f in (tree / directory).iterdir():
                    if f.suffix in (".c", ".h", ".S") and f.is_file():
                        shutil.copy2(f, bdir / f.name)
                (bdir / "Kbuild").write_text(kbuild_for(dplans))
                # CC on the command line: the compiler just checked is the one that builds.
                cmd = ["make", "-C", str(hdir), f"M={bdir}", f"CC={cc}", f"-j{os.cpu_count() or 1}", "modules"]
                log.write("$ " + " ".join(cmd) + "\n")
                log.flush()
                proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
                if proc.returncode != 0:
                    log.flush()
                    errors = [l for l in log_path.read_text().splitlines() if "error" in l.lower()]
                    raise KbisectError(f"building {directory} failed: {(errors or ['see log'])[0].strip()} (log: {log_path})")
                for p in dplans:
                    ko = bdir / f"{p.module}.ko"
                    if not ko.exists():
                        raise KbisectError(f"build of {p.module}.ko produced no module (log: {log_path})")
                    built[(p.directory, p.module)] = ko
        build_seconds = step.seconds

        # 6. check the rebuilt modules fit the kernel, strip and compress like the base.
        replacements: dict[str, Path] = {}
        for key, ko in built.items():
            stock = shipped[key]
            if modinfo_field(ko, "vermagic") != modinfo_field(stock, "vermagic"):
                raise KbisectError(f"rebuilt {ko.name} has vermagic {modinfo_field(ko, 'vermagic')!r}, the kernel wants {modinfo_field(stock, 'vermagic')!r}")
            new_crcs, old_crcs = modversions(ko), modversions(stock)
            bad = sorted(s for s in set(new_crcs) & set(old_crcs) if new_crcs[s] != old_crcs[s])
            if bad:
                raise KbisectError(f"rebuilt {ko.name} expects other symbol versions than the kernel ({bad[0]}): headers do not match")
            _run(["strip", "--strip-debug", str(ko)], f"stripping {ko.name}")
            final = compress_like(ko, stock)
            replacements[str(stock.relative_to(kernel.modules))] = final

        # 7. assemble the variant beside its final place and rename it in at the end.
        with progress.step("assembling modules tree and running depmod"):
            tmp_dest.mkdir(parents=True)
            for fname in ("vmlinuz", "config", "System.map"):
                if (kernel.root / fname).exists():
                    _link_or_copy(kernel.root / fname, tmp_dest / fname)
            copy_tree_hardlinked(kernel.modules, tmp_dest / "modules",
                                 skip=lambda rel: rel in replacements or rel in DEPMOD_OUTPUTS)
            for rel, path in replacements.items():
                shutil.copy2(path, tmp_dest / "modules" / rel)
            run_depmod(tmp_dest / "modules", kernel.kver, (tmp_dest / "System.map") if (tmp_dest / "System.map").exists() else None)

        extra = {
            "variant_of": kernel.spec,
            "variant_name": spec.rsplit("+", 1)[1],
            "patch": patch.name,
            "patch_sha256": patch_sha,
            "touched_files": [t.path for t in touched],
            "rebuilt_modules": sorted(replacements),
            "base_package_version": pkg_version,
            "source_package": f"{src_pkg}={src.version}",
            "source_exact": src.version == pkg_version,
            "packages": {d.package: d.version for d in downloads},
            "download_bytes": sum(d.size for d in downloads),
            "compiler": cc_line,
            "kernel_compiler": kconfig.get("CONFIG_CC_VERSION_TEXT", ""),
            "build_seconds": round(build_seconds, 1),
            "total_seconds": round(time.monotonic() - started, 1),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if src.version != pkg_version:
            progress.note(f"source {src_pkg} {pkg_version} not in the archive; used {src.version} (recorded)")
        result = UnpackedKernel(spec=spec, root=dest, kver=kernel.kver, extra=extra)
        record = asdict(result)
        record["root"] = str(dest)
        (tmp_dest / MANIFEST).write_text(json.dumps(record, indent=2, sort_keys=True))  # written last
        os.rename(tmp_dest, dest)
        progress.note(f"built {spec} in {extra['total_seconds']} s ({', '.join(replacements)})")
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if tmp_dest.exists():
            shutil.rmtree(tmp_dest, ignore_errors=True)


def _pick(package: str, wanted: str) -> str:
    """Exact version when the archive has it; else (same X.Y line) the nearest, recorded by the caller."""
    versions = available_versions(package)
    if not versions:
        raise KbisectError(f"no version of {package} is downloadable (apt-get update, or its suite is not configured)")
    if wanted in versions:
        return wanted
    choice = nearest_version(wanted, versions)
    if choice is None:
        raise KbisectError(f"no {package} of the {'.'.join(wanted.split('.')[:2])} line is downloadable (have {', '.join(versions)})")
    return choice


def find_control_patch(name: str) -> Path:
    """`reproducers/*/controls/<name>.patch`; none or several different ones is a one-line error."""
    root = config.reproducers_dir()
    found = sorted(root.glob(f"*/controls/{name}.patch")) if root.is_dir() else []
    if not found:
        raise KbisectError(f"no variant named {name!r} is built and no control patch reproducers/*/controls/{name}.patch exists")
    if len({sha256_file(p) for p in found}) > 1:
        raise KbisectError(f"control patch name {name!r} is ambiguous: {', '.join(str(p.relative_to(root)) for p in found)}")
    return found[0]


def build_on_demand(spec: str) -> UnpackedKernel:
    """Build `SOURCE:VERSION+NAME` from the reproducer control patch named NAME (sources.fetch calls this)."""
    s = _parse_spec(spec)
    if not s.variant:
        raise KbisectError(f"{spec!r} names no variant (+NAME)")
    patch = find_control_patch(s.variant)
    return build_variant(f"{s.source}:{s.version}", patch, s.variant)
