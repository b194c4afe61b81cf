"""The reproducer record and its schema (pure): what a `bug.yaml` says, validated.

A reproducer directory holds `bug.yaml` and the scripts that run inside the guest; the
guest runs `cd /root/repro && timeout <timeout> bash <entry>` in a copy of the directory and
reads its exit code (0 good, 1 bad, 125 skip) and its last output line.

`bug.yaml` is validated on load against the schema below. A bisection is only as true as its
reproducer, so a malformed file is refused with one line naming the file and the field rather
than half-loaded: a typo in `repeat.runs` must not silently turn a flaky bug deterministic.

`signatures:` are regular expressions of the bug's own kernel trace (a function in the oops, a
BUG or WARNING line); a trace matching one is the bug's evidence. Any other trace is unrelated:
it makes the run a skip unless `unrelated_traces: bad` says that every trace counts (syzbot's
rule: count only crashes with the bug's own signature). The rules are in core/classify.py.
"""

from __future__ import annotations

import re
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.core.errors import KbisectError
from orchestrator.core.kconfig import Requirement
from orchestrator.core.textenum import TextEnum

ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
SHA_RE = re.compile(r"^[0-9a-f]{7,40}$")
VERDICTS = ("good", "bad", "skip")
# Debian lines `kbisect bugs verify` proves each reproducer on ("newest" = newest reachable kernel).
DEFAULT_LINES = ("5.10", "6.1", "6.12", "newest")


class TracePolicy(TextEnum):
    """What a kernel trace that matches none of the bug's signatures makes of a run."""

    SKIP = "skip"  # the kernel was unwell for another reason: no verdict either way
    BAD = "bad"  # the bug wants any trace to count (its failure has no stable signature)


@dataclass
class RepeatPolicy:
    """How many runs one verdict needs. Deterministic reproducers need one."""

    runs: int = 1
    bad_needed: int = 1  # bad runs out of `runs` for a BAD verdict
    flaky: bool = False


@dataclass
class Commit:
    """One upstream commit named in a bug's history (introducing or fixing it)."""

    sha: str
    subject: str = ""
    version: str = ""  # first tag containing it, e.g. "v5.7" ("(belief)" marks unconfirmed facts)
    note: str = ""


@dataclass
class KnownKernel:
    """A kernel whose verdict for this bug is known from the write-ups (a bisection anchor)."""

    kernel: str  # kernel spec or version, e.g. "mainline:5.4.41"
    verdict: str  # good / bad
    note: str = ""


@dataclass
class History:
    """What the write-ups and mailing lists say about when the bug came and went."""

    introduced: list[Commit] = field(default_factory=list)
    fixed: list[Commit] = field(default_factory=list)
    # series -> first stable release carrying the fix (or the breakage), e.g. {"fixed": {"5.4": "5.4.138"}}
    stable_backports: dict[str, dict[str, str]] = field(default_factory=dict)
    known: list[KnownKernel] = field(default_factory=list)
    note: str = ""


@dataclass
class Control:
    """A patch that makes a kernel known to be good show the bug (a positive control).

    The patched-variant builder names the variant after the patch file's stem, so
    `controls/revert-227adfb2b1df.patch` on `debian:6.1.0-54-cloud-amd64` is the kernel
    `debian:6.1.0-54-cloud-amd64+revert-227adfb2b1df`.
    """

    patch: str  # path relative to the reproducer directory
    base: str  # the line or kernel it applies to, e.g. "debian:6.1"
    note: str = ""
    expect: str = "bad"
    # "modules": the stock kernel with the patched modules rebuilt (the fix is in a module);
    # "kernel": the whole kernel built from the base's own Debian source with the guest config
    # and the patch (the fix is built in, so no module rebuild can revert it)
    build: str = "modules"

    @property
    def name(self) -> str:
        return Path(self.patch).stem


CONTROL_BUILDS = ("modules", "kernel")
# The variant name of a whole-kernel control's build without its patch (`debian:X+guest-build`):
# such a control differs from the stock kernel in its config too, so this build is proven good.
GUEST_BUILD = "guest-build"


@dataclass
class VerifyPlan:
    """What `kbisect bugs verify` probes to prove a reproducer both ways."""

    lines: list[str] = field(default_factory=lambda: list(DEFAULT_LINES))
    expect: dict[str, str] = field(default_factory=dict)  # line -> expected verdict (default good)
    bad_kernels: list[str] = field(default_factory=list)  # genuinely affected kernels, probed when reachable
    no_control: str = ""  # why no positive control can be built, said in the proof table


@dataclass
class Bug:
    id: str
    dir: Path
    title: str = ""
    entry: str = "run.sh"
    timeout: int = 120  # seconds for one reproducer run inside the guest
    repeat: RepeatPolicy = field(default_factory=RepeatPolicy)
    isolate: bool = False
    keywords: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    modules: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)  # the whole bug.yaml as loaded
    summary: str = ""
    writeup: str = ""
    tools: list[str] = field(default_factory=list)
    history: History = field(default_factory=History)
    controls: list[Control] = field(default_factory=list)
    verify: VerifyPlan = field(default_factory=VerifyPlan)
    # regular expressions of the bug's own trace lines (searched in each trace's excerpt, one
    # line per ^...$); empty: no trace is the bug's, only the reproducer's exit code says bad
    signatures: list[str] = field(default_factory=list)
    unrelated_traces: TracePolicy = TracePolicy.SKIP
    # what a kernel built for this reproducer must have (core.kconfig.Requirement): `CONFIG_X`
    # (built in or a module) or `CONFIG_X=y|m|n|value`; a guest build checks them all
    kconfig: list[Requirement] = field(default_factory=list)
    # the write-up file `writeup` names, when it exists (resolved by the catalog loader, which
    # knows where the repository and the shared notes are)
    writeup_path: Path | None = None

    def control(self, name: str) -> Control | None:
        """The control patch whose stem is `name` (the `+NAME` of a variant spec)."""
        for ctl in self.controls:
            if ctl.name == name:
                return ctl
        return None


# --------------------------------------------------------------------------------------------
# Schema validation: small and explicit, so an error names the file and the dotted field.


class _Checker:
    def __init__(self, source: Path) -> None:
        self.source = source

    def fail(self, where: str, msg: str) -> KbisectError:
        return KbisectError(f"{self.source}: field {where!r}: {msg}")

    def mapping(self, value: Any, where: str, allowed: set[str] | None,
                required: set[str] = frozenset()) -> dict:
        """A mapping whose keys are all in `allowed` (None: any key) and include `required`."""
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a mapping, got {type(value).__name__}")
        for key in value:
            if allowed is not None and (not isinstance(key, str) or key not in allowed):
                raise self.fail(f"{where}.{key}" if where else str(key),
                                f"unknown field (allowed: {', '.join(sorted(allowed))})")
        for key in sorted(required):
            if key not in value or value[key] in (None, ""):
                raise self.fail(f"{where}.{key}" if where else key, "required field is missing")
        return value

    def string(self, value: Any, where: str, pattern: re.Pattern | None = None, empty_ok: bool = True) -> str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # YAML reads `version: 5.10` as the number 5.1: refuse rather than guess.
            raise self.fail(where, f"{value!r} is a number; quote it (\"{value}\") so YAML keeps it as written")
        if not isinstance(value, str):
            raise self.fail(where, f"expected a string, got {type(value).__name__}")
        if "\0" in value:  # a YAML "\0" escape: no path, name or pattern holds one
            raise self.fail(where, "contains a NUL character")
        if not empty_ok and not value.strip():
            raise self.fail(where, "must not be empty")
        if pattern is not None and not pattern.match(value):
            raise self.fail(where, f"{value!r} does not match {pattern.pattern}")
        return value

    def integer(self, value: Any, where: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(where, f"expected an integer, got {type(value).__name__}")
        if not low <= value <= high:
            raise self.fail(where, f"{value} is out of range {low}..{high}")
        return value

    def boolean(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, f"expected true or false, got {reprlib.repr(value)}")  # never a whole list
        return value

    def strings(self, value: Any, where: str, empty_ok: bool = True) -> list[str]:
        if not isinstance(value, list):
            raise self.fail(where, f"expected a list, got {type(value).__name__}")
        out = [self.string(v, f"{where}[{i}]", empty_ok=False) for i, v in enumerate(value)]
        if not empty_ok and not out:
            raise self.fail(where, "must not be empty")
        return out

    def verdict(self, value: Any, where: str, choices: tuple[str, ...] = ("good", "bad")) -> str:
        value = self.string(value, where)
        if value not in choices:
            raise self.fail(where, f"{value!r} is not one of {', '.join(choices)}")
        return value


TOP_FIELDS = {"id", "title", "summary", "writeup", "entry", "timeout", "repeat", "isolate", "keywords",
              "paths", "modules", "tools", "history", "controls", "verify", "signatures", "unrelated_traces",
              "kconfig"}
TOP_REQUIRED = {"id", "title", "summary", "keywords", "paths", "history", "timeout", "repeat"}


def _commits(chk: _Checker, value: Any, where: str) -> list[Commit]:
    if not isinstance(value, list):
        raise chk.fail(where, f"expected a list of commits, got {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        w = f"{where}[{i}]"
        item = chk.mapping(item, w, {"sha", "subject", "version", "note"}, {"sha"})
        out.append(Commit(
            sha=chk.string(item["sha"], f"{w}.sha", SHA_RE),
            subject=chk.string(item.get("subject", ""), f"{w}.subject"),
            version=chk.string(item.get("version", ""), f"{w}.version"),
            note=chk.string(item.get("note", ""), f"{w}.note"),
        ))
    return out


def _history(chk: _Checker, value: Any) -> History:
    value = chk.mapping(value, "history", {"introduced", "fixed", "stable_backports", "known", "note"}, {"fixed"})
    backports: dict[str, dict[str, str]] = {}
    raw = chk.mapping(value.get("stable_backports", {}) or {}, "history.stable_backports", {"fixed", "introduced"})
    for kind, series in raw.items():
        series = chk.mapping(series or {}, f"history.stable_backports.{kind}", None)
        for k in series:
            chk.string(k, f"history.stable_backports.{kind}.{k}", empty_ok=False)
        backports[kind] = {k: chk.string(v, f"history.stable_backports.{kind}.{k}", empty_ok=False)
                           for k, v in series.items()}
    known = []
    raw_known = value.get("known", []) or []
    if not isinstance(raw_known, list):
        raise chk.fail("history.known", "expected a list")
    for i, item in enumerate(raw_known):
        w = f"history.known[{i}]"
        item = chk.mapping(item, w, {"kernel", "verdict", "note"}, {"kernel", "verdict"})
        known.append(KnownKernel(kernel=chk.string(item["kernel"], f"{w}.kernel", empty_ok=False),
                                 verdict=chk.verdict(item["verdict"], f"{w}.verdict"),
                                 note=chk.string(item.get("note", ""), f"{w}.note")))
    return History(
        introduced=_commits(chk, value.get("introduced", []) or [], "history.introduced"),
        fixed=_commits(chk, value["fixed"], "history.fixed"),
        stable_backports=backports,
        known=known,
        note=chk.string(value.get("note", ""), "history.note"),
    )


def _repeat(chk: _Checker, value: Any) -> RepeatPolicy:
    value = chk.mapping(value, "repeat", {"runs", "bad_needed", "flaky"}, {"runs"})
    runs = chk.integer(value["runs"], "repeat.runs", 1, 100)
    bad_needed = chk.integer(value.get("bad_needed", 1), "repeat.bad_needed", 1, runs)
    flaky = chk.boolean(value.get("flaky", runs > 1), "repeat.flaky")
    if runs > 1 and not flaky:
        raise chk.fail("repeat.flaky", "runs > 1 means the reproducer is flaky: say flaky: true")
    return RepeatPolicy(runs=runs, bad_needed=bad_needed, flaky=flaky)


def _controls(chk: _Checker, value: Any, root: Path) -> list[Control]:
    if not isinstance(value, list):
        raise chk.fail("controls", f"expected a list, got {type(value).__name__}")
    out = []
    for i, item in enumerate(value):
        w = f"controls[{i}]"
        item = chk.mapping(item, w, {"patch", "base", "note", "expect", "build"}, {"patch", "base"})
        patch = chk.string(item["patch"], f"{w}.patch", empty_ok=False)
        if not patch.endswith(".patch") or Path(patch).is_absolute() or ".." in Path(patch).parts:
            raise chk.fail(f"{w}.patch", f"{patch!r} must be a relative path to a .patch file inside the reproducer")
        if not (root / patch).is_file():
            raise chk.fail(f"{w}.patch", f"{patch} does not exist in {root}")
        ctl = Control(patch=patch, base=chk.string(item["base"], f"{w}.base", empty_ok=False),
                      note=chk.string(item.get("note", ""), f"{w}.note"),
                      expect=chk.verdict(item.get("expect", "bad"), f"{w}.expect"),
                      build=chk.string(item.get("build", "modules"), f"{w}.build", empty_ok=False))
        if ctl.build not in CONTROL_BUILDS:
            raise chk.fail(f"{w}.build", f"{ctl.build!r} is not one of {', '.join(CONTROL_BUILDS)}")
        if any(c.name == ctl.name for c in out):
            raise chk.fail(f"{w}.patch", f"two controls share the variant name {ctl.name!r}")
        out.append(ctl)
    return out


def _verify(chk: _Checker, value: Any) -> VerifyPlan:
    value = chk.mapping(value, "verify", {"lines", "expect", "bad_kernels", "no_control"})
    lines = chk.strings(value.get("lines", list(DEFAULT_LINES)), "verify.lines")
    expect_raw = chk.mapping(value.get("expect", {}) or {}, "verify.expect", None)
    expect = {chk.string(k, f"verify.expect.{k}"): chk.verdict(v, f"verify.expect.{k}") for k, v in expect_raw.items()}
    for line in expect:
        if line not in lines:
            raise chk.fail(f"verify.expect.{line}", f"line {line!r} is not in verify.lines")
    return VerifyPlan(lines=lines, expect=expect,
                      bad_kernels=chk.strings(value.get("bad_kernels", []) or [], "verify.bad_kernels"),
                      no_control=chk.string(value.get("no_control", ""), "verify.no_control"))


def _signatures(chk: _Checker, value: Any) -> list[str]:
    """Each a valid regular expression that cannot match nothing (an empty match would make every
    trace the bug's: that is `unrelated_traces: bad`, said openly)."""
    patterns = chk.strings(value, "signatures")
    for i, pattern in enumerate(patterns):
        try:
            compiled = re.compile(pattern, re.MULTILINE)
        except re.error as exc:
            raise chk.fail(f"signatures[{i}]", f"{pattern!r} is not a valid regular expression: {exc}") from None
        if compiled.search("") is not None:
            raise chk.fail(f"signatures[{i}]", f"{pattern!r} matches an empty string, so any trace; "
                                                "say unrelated_traces: bad instead")
    return patterns


def _kconfig(chk: _Checker, value: Any) -> list[Requirement]:
    out = []
    for i, text in enumerate(chk.strings(value, "kconfig")):
        try:
            out.append(Requirement.parse(text))
        except ValueError as exc:
            raise chk.fail(f"kconfig[{i}]", str(exc)) from None
    return out


def _trace_policy(chk: _Checker, value: Any) -> TracePolicy:
    word = chk.verdict(value, "unrelated_traces", choices=tuple(p.value for p in TracePolicy))
    return TracePolicy(word)


def parse(data: Any, root: Path, source: Path | None = None) -> Bug:
    """Validate one loaded bug.yaml and build its Bug. Raises KbisectError naming file and field."""
    source = source or root / "bug.yaml"
    chk = _Checker(source)
    if not isinstance(data, dict):
        raise KbisectError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    chk.mapping(data, "", TOP_FIELDS, TOP_REQUIRED)
    bug_id = chk.string(data["id"], "id", ID_RE)
    if bug_id != root.name:
        raise chk.fail("id", f"{bug_id!r} differs from the directory name {root.name!r}")
    entry = chk.string(data.get("entry", "run.sh"), "entry", empty_ok=False)
    if Path(entry).is_absolute() or ".." in Path(entry).parts:
        raise chk.fail("entry", f"{entry!r} must be a path inside the reproducer directory")
    if not (root / entry).is_file():
        raise chk.fail("entry", f"{entry} does not exist in {root}")
    controls = _controls(chk, data.get("controls", []) or [], root)
    verify = _verify(chk, data.get("verify", {}) or {})
    if not controls and not verify.bad_kernels and not verify.no_control:
        raise chk.fail("verify.no_control", "no controls and no bad_kernels: say why no positive control exists")
    return Bug(
        id=bug_id,
        dir=root.resolve(),
        title=chk.string(data["title"], "title", empty_ok=False),
        summary=chk.string(data["summary"], "summary", empty_ok=False).strip(),
        writeup=chk.string(data.get("writeup", ""), "writeup"),
        entry=entry,
        timeout=chk.integer(data["timeout"], "timeout", 5, 3600),
        repeat=_repeat(chk, data["repeat"]),
        isolate=chk.boolean(data.get("isolate", False), "isolate"),
        keywords=chk.strings(data["keywords"], "keywords", empty_ok=False),
        paths=chk.strings(data["paths"], "paths", empty_ok=False),
        modules=chk.strings(data.get("modules", []) or [], "modules"),
        tools=chk.strings(data.get("tools", []) or [], "tools"),
        history=_history(chk, data["history"]),
        controls=controls,
        verify=verify,
        signatures=_signatures(chk, data.get("signatures", []) or []),
        unrelated_traces=_trace_policy(chk, data.get("unrelated_traces", TracePolicy.SKIP.value)),
        kconfig=_kconfig(chk, data.get("kconfig", []) or []),
        data=data,
    )


