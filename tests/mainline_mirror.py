"""Writes release directories of a mainline mirror in the formats kernel.ubuntu.com/mainline publishes.

Every format here is taken from ../shared/real-layouts.md (verbatim samples) and from the
scripts that write them in the Ubuntu kernel team's public kteam-tools repository,
`mainline-build/` (read at commit d70bdfca):

- `amd64/status`: the build's exit code alone, `echo "$rc" >"$result/status"` (cod-tip-build);
  `0` built, `1` setup failure, `2` build failure; `amd64/self-tests/status` the same for tests.
- flat `BUILT`: key/value lines, `Status: binary-headers 0`, `Status: amd64 0` … (real-layouts.md,
  "Build status"); files before Nov 2015 have no `Status:` lines.
- `CHECKSUMS`: the header, `# Checksums-Sha1:`, `#`, `# Checksums-Sha256:` blocks
  (cod-result-finalise; the v6.13 sample in real-layouts.md); old flat files title the version
  (`# Checksums for v4.14.120, …`), add a blank line before the SHA-256 block and list COMMIT.
  It covers the latest publication of a directory only. `CHECKSUMS.gpg` is `gpg -a -b` of it.
- `COMMIT`: the tag on one line and the sha on the next (mainline-build-sources reads
  `read commit; read sha1`); `CHANGES`: `git shortlog <previous tag>..<commit>` (cod-mainline-core),
  at the version's top directory.
- `HEADER.html` carries "Test amd64/build succeeded (rc=0, on=amd64, time=…, log=amd64/log)".
- Index pages: Apache 2.4 fancy indexes; the directory row below is the verbatim 2017 sample with
  the name and date substituted.

Values the code never reads (BUILT's Host/Start/End, HEADER.html's times) are placeholders.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

DIR_ROW = ('<tr><td valign="top"><img src="/icons/folder.gif" alt="[DIR]"></td><td><a href="{href}">{name}</a>'
           '</td><td align="right">{date}  </td><td align="right">  - </td><td>&nbsp;</td></tr>')
FILE_ROW = ('<tr><td valign="top"><img src="/icons/{icon}.gif" alt="{alt}"></td><td><a href="{href}">{name}</a>'
            '</td><td align="right">{date}  </td><td align="right">{size}</td><td>&nbsp;</td></tr>')
HEAD_ROWS = ('<tr><th valign="top"><img src="/icons/blank.gif" alt="[ICO]"></th><th><a href="?C=N;O=D">Name</a>'
             '</th><th><a href="?C=M;O=A">Last modified</a></th><th><a href="?C=S;O=A">Size</a></th>'
             '<th><a href="?C=D;O=A">Description</a></th></tr>\n<tr><th colspan="5"><hr></th></tr>\n'
             '<tr><td valign="top"><img src="/icons/back.gif" alt="[PARENTDIR]"></td><td><a href="/">'
             'Parent Directory</a></td><td>&nbsp;</td><td align="right">  - </td><td>&nbsp;</td></tr>')

Signer = Callable[[bytes], bytes]


@dataclass
class Build:
    """One publication of a release: its timestamp, its files, how it ended."""

    stamp: str  # the package version's timestamp, 202006082127
    debs: dict[str, bytes]  # every file of the publication (amd64 generic set and what sits beside)
    rc: int = 0  # the build's exit code (amd64/status, or BUILT's Status: amd64)
    layout: str = "per-arch"  # or "flat"
    status_lines: bool = True  # flat: BUILT has Status: lines (since Nov 2015)
    selftests_rc: int | None = None  # per-arch: amd64/self-tests/status


@dataclass
class Release:
    """A release directory: its name as published and what it holds."""

    name: str  # v5.7, v4.4.14-xenial
    builds: list[Build] = field(default_factory=list)
    checksums: bool = True  # False: published before March 2015
    signature: str = "good"  # "good", "bad" (a signature over other bytes), "absent"
    commit: tuple[str, str] | None = None  # (tag, sha)
    changes: str | None = None
    header: str | None = None  # HEADER.html text; None: generated from the builds
    date: str = "2020-06-10 11:33"  # the directory's "Last modified" on the top index


def index_page(directory: Path, title: str, dates: dict[str, str] | None = None) -> None:
    """Write `index.html` listing `directory` the way Apache's fancy index does."""
    dates = dates or {}
    rows = []
    for path in sorted(directory.iterdir()):
        if path.name == "index.html":
            continue
        name = path.name + ("/" if path.is_dir() else "")
        href = name.replace("+", "%2B")
        date = dates.get(name, "2020-06-10 11:33")
        if path.is_dir():
            rows.append(DIR_ROW.format(href=href, name=name, date=date))
        else:
            size = path.stat().st_size
            human = f"{size / 1048576:.0f}M" if size > 1048576 else f"{size / 1024:.1f}K" if size > 1024 else f"{size} "
            icon, alt = ("text", "[TXT]") if not name.endswith(".deb") else ("unknown", "[   ]")
            rows.append(FILE_ROW.format(icon=icon, alt=alt, href=href, name=name, date=date, size=human.rjust(4)))
    (directory / "index.html").write_text(
        '<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 3.2 Final//EN">\n<html>\n <head>\n'
        f"  <title>Index of {title}</title>\n </head>\n <body>\n<h1>Index of {title}</h1>\n  <table>\n"
        + HEAD_ROWS + "\n" + "\n".join(rows) + '\n<tr><th colspan="5"><hr></th></tr>\n</table>\n'
        "<address>Apache/2.4.18 (Ubuntu) Server at kernel.ubuntu.com Port 443</address>\n</body></html>\n")


def checksums_text(files: dict[str, bytes], title: str | None = None) -> str:
    """CHECKSUMS as cod-result-finalise writes it; `title` gives the old flat form."""
    first = f"# Checksums for {title}, check with the command below:" if title else \
        "# Checksums, check with the command below:"
    lines = [first, "#     shasum -c CHECKSUMS", "#", "# Checksums-Sha1:"]
    lines += [f"{hashlib.sha1(d).hexdigest()}  {n}" for n, d in sorted(files.items())]
    lines += (["", "#"] if title else ["#"]) + ["# Checksums-Sha256:"]
    lines += [f"{hashlib.sha256(d).hexdigest()}  {n}" for n, d in sorted(files.items())]
    return "\n".join(lines) + "\n"


def built_text(rc: int, status_lines: bool) -> str:
    """BUILT in its key/value form (real-layouts.md); old files have no Status: lines."""
    lines = ["Release: bionic", "Host: build-host", "Start: 1591000000"]
    if status_lines:
        lines += ["Status: binary-headers 0", f"Status: amd64 {rc}", "Status: arm64 0", "Status: i386 0"]
    lines += ["Debian: bionic", "Configs: amd64/config.flavour.generic", "End: 1591003600"]
    return "\n".join(lines) + "\n"


def header_text(build: Build) -> str:
    verdict = "succeeded" if build.rc == 0 else "failed"
    if build.layout == "flat":
        return f"<p>Build for amd64 {verdict} (see BUILD.LOG.amd64):</p>\n"
    return f"<p>Test amd64/build {verdict} (rc={build.rc}, on=amd64, time=0:11:17, log=amd64/log)</p>\n"


def write_release(root: Path, release: Release, sign: Signer | None = None) -> Path:
    """Write one release directory under `root` (the mirror's `mainline/`)."""
    top = root / release.name
    top.mkdir(parents=True, exist_ok=True)
    for layout in ("flat", "per-arch"):
        builds = [b for b in release.builds if b.layout == layout]
        if builds:
            where = top if layout == "flat" else top / "amd64"
            _write_layout(where, release, builds, sign)
    if release.commit:
        (top / "COMMIT").write_text(f"{release.commit[0]}\n{release.commit[1]}\n")
    if release.changes is not None:
        (top / "CHANGES").write_text(release.changes)
    header = release.header if release.header is not None else \
        "".join(header_text(b) for b in release.builds[-1:])
    if header:
        (top / "HEADER.html").write_text(header)
    index_page(top, f"/mainline/{release.name}")
    return top


def _write_layout(where: Path, release: Release, builds: list[Build], sign: Signer | None) -> None:
    where.mkdir(parents=True, exist_ok=True)
    for build in builds:
        for name, data in build.debs.items():
            (where / name).write_bytes(data)
    latest = builds[-1]
    if release.checksums:
        covered = dict(latest.debs)
        flat_title = None
        if latest.layout == "flat" and release.commit:
            covered["COMMIT"] = f"{release.commit[0]}\n{release.commit[1]}\n".encode()
            flat_title = release.name
        text = checksums_text(covered, flat_title).encode()
        (where / "CHECKSUMS").write_bytes(text)
        if sign is not None and release.signature != "absent":
            signed = text if release.signature == "good" else text + b"# tampered\n"
            (where / "CHECKSUMS.gpg").write_bytes(sign(signed))
    if latest.layout == "flat":
        (where / "BUILT").write_text(built_text(latest.rc, latest.status_lines))
        return
    (where / "status").write_text(f"{latest.rc}\n")
    (where / "log").write_text("build log\n")
    if latest.selftests_rc is not None:
        (where / "self-tests").mkdir(exist_ok=True)
        (where / "self-tests" / "status").write_text(f"{latest.selftests_rc}\n")
        index_page(where / "self-tests", f"/mainline/{release.name}/amd64/self-tests")
    index_page(where, f"/mainline/{release.name}/amd64")


def write_top(root: Path, releases: list[Release], others: tuple[str, ...] = ("daily", "drm-intel-next")) -> None:
    """The top index: every release directory with its date, and non-release directories beside."""
    for name in others:
        (root / name).mkdir(parents=True, exist_ok=True)
        index_page(root / name, f"/mainline/{name}")
    index_page(root, "/mainline", {f"{r.name}/": r.date for r in releases})


def abi(major: int, minor: int, patch: int, rc: int | None) -> str:
    """The ABI field of a mainline package version (5.4.143 -> 0504143; 5.7-rc4 -> 050700rc4)."""
    field_ = f"{major:02d}{minor:02d}{patch:02d}" + (f"rc{rc}" if rc else "")
    return f"{major}.{minor}.{patch}-{field_}"


def placeholder_debs(kabi: str, stamp: str, single: bool = False) -> dict[str, bytes]:
    """Tiny stand-ins for the amd64 generic set (for listings whose kernels are never booted)."""
    pkgver = f"{kabi}.{stamp}"
    if single:
        names = [f"linux-image-{kabi}-generic_{pkgver}_amd64.deb"]
    else:
        names = [f"linux-image-unsigned-{kabi}-generic_{pkgver}_amd64.deb",
                 f"linux-modules-{kabi}-generic_{pkgver}_amd64.deb"]
    names.append(f"linux-headers-{kabi}_{pkgver}_all.deb")
    return {n: f"placeholder {n}\n".encode() for n in names}


class SigningKey:
    """A signing key made for the tests in a private GnuPG home (never the user's)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._gpg("--quick-gen-key", "kbisect test key <test@example.invalid>", "ed25519", "sign", "never")
        self.keyring = home / "trusted.gpg"
        self.keyring.write_bytes(self._gpg("--export"))

    def _gpg(self, *args: str, data: bytes | None = None) -> bytes:
        proc = subprocess.run(["gpg", "--homedir", str(self.home), "--batch", "--yes", "--passphrase", "",
                               "--pinentry-mode", "loopback", *args], input=data, capture_output=True, check=True)
        return proc.stdout

    def sign(self, data: bytes) -> bytes:
        """A detached ASCII signature, as `gpg -a -b --sign` makes CHECKSUMS.gpg."""
        return self._gpg("-a", "-b", "--sign", data=data)
