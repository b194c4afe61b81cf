"""Lineages and the mainline-vs-stable/distro differential, on top of the pure engine.

Bisection never mixes lineages: a stable point release (5.4.41) carries backports from later
mainline (5.7-rc), so it is not "between" 5.4 and 5.5. The lineages are:

* ``mainline``: X.Y releases and their release candidates;
* ``stable-X.Y``: X.Y.z, rooted at the mainline release X.Y (5.4.1 is built directly on 5.4,
  so 5.4 is the natural good anchor of stable-5.4);
* ``ubuntu:X.Y`` / ``debian:X.Y``: one distro series, its uploads in order.

The differential is the write-up's twist done automatically. The user says "good 4.15, bad 5.4";
mainline 5.4 turns out good, so the 5.4 the user ran was not mainline 5.4. kbisect then

(a) bisects the lineage of that base the user most plausibly ran (the distro series named with
    ``--distro``, else stable-5.4 up to its newest available release) to its first bad release;
(b) walks mainline forward from the base release by release until the bug appears, and bisects
    that release's rc's (v5.6 good .. v5.7 bad → v5.7-rcK);
(c) names the origin: ``mainline`` (regression between the given mainline ends),
    ``stable-backport`` (a stable or distro line got it by backporting a later mainline change),
    ``distro`` (only distro kernels show it: a distro-only patch), or ``stable-only`` (a stable
    line shows it but no mainline release after the base does: a stable-specific breakage).

Skips never decide anything. An origin is named only when the kernels that decide it were really
probed good or bad: a mainline release that was unavailable or skipped may be the very release that
went bad (a regression fixed by the next release looks like a gap followed by good releases), so
"no mainline release shows it" needs every release after the base probed good. When unavailable or
skipped kernels leave the answer open, the result says ``inconclusive``, ``origin`` stays None, the
kernels are listed in ``undecided`` and ``advice`` says how to decide them (``ADVICE``).

Everything here is pure: the kernel listings arrive as entries and the probe function is
injected, so the differential is tested with replayed verdicts on a generated mirror.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from orchestrator.core.engine import (
    ENDS_DISAGREE,
    FOUND,
    INCONCLUSIVE,
    NO_CANDIDATES,
    UNSTABLE,
    BisectResult,
    Candidate,
    Engine,
    ProbeFn,
)
from orchestrator.core.bug import RepeatPolicy
from orchestrator.core.errors import KbisectError
from orchestrator.core.verdict import Verdict
from orchestrator.core.versions import (
    KernelSpec,
    KernelVersion,
    parse_debian_kernel,
    parse_spec,
    parse_ubuntu_version,
    parse_version,
)

# Distro series names → the upstream base their kernels carry (for --distro ubuntu:focal).
DISTRO_SERIES = {
    "ubuntu": {"bionic": "4.15", "focal": "5.4", "jammy": "5.15", "noble": "6.8"},
    "debian": {"buster": "4.19", "bullseye": "5.10", "bookworm": "6.1", "trixie": "6.12"},
}
MAX_WALK = 40  # mainline releases walked forward from the base before giving up
ADVICE = ("to decide, try another --mirror, --allow-unverified for builds without CHECKSUMS, "
          "or give verdicts for the undecided kernels with --verdicts")


@dataclass
class Kernel:
    """One listed kernel with what the differential needs to know about it."""

    spec: str  # canonical "source:version"
    source: str
    label: str  # version as `kernels list` prints it
    version: Any  # KernelVersion | UbuntuVersion | DebianKernel | str (local)
    lineage: str  # mainline | stable-X.Y | ubuntu:X.Y | debian:X.Y[~debNN][/flavour] | local
    base: KernelVersion | None  # the mainline release X.Y it belongs to
    available: bool = True
    reason: str = ""
    variant: str | None = None  # a patched rebuild of `version` (kbisect kernels patch)

    @property
    def sort_key(self) -> Any:
        """Version order; a variant sorts right after the kernel it was built from."""
        key = getattr(self.version, "sort_key", self.version)
        return (key, 1 if self.variant else 0, self.variant or "")

    def candidate(self) -> Candidate:
        return Candidate(self.spec, self.label, self.available, self.reason)


def _parse(source: str, version: str) -> tuple[Any, str, KernelVersion | None]:
    """(parsed version, lineage, base) for a source's version string."""
    if source == "mainline":
        v = parse_version(version)
        return v, v.lineage, v.base
    if source == "ubuntu":
        u = parse_ubuntu_version(version)
        base = u.base.base
        return u, f"ubuntu:{base}", base
    if source == "debian":
        d = parse_debian_kernel(version)
        base = d.upstream.base
        return d, debian_lineage(d), base
    return version, source, None


def debian_lineage(d: Any) -> str:
    """One Debian lineage per base, build line and flavour: `debian:6.1` (bookworm's cloud-amd64
    kernels), `debian:6.1/amd64`, `debian:6.1~deb11/cloud-amd64` (the bullseye backport of the same
    6.1), `debian:6.12+deb12/...`. Builds of different suites or flavours are different kernels,
    not points between each other."""
    import re

    line = ""
    if d.abi is not None and d.abi.startswith("0."):
        line = "~" + d.abi.split(".")[1]  # 0.deb11.48 -> ~deb11
    elif d.abi is None and d.tag:
        m = re.match(r"\+(deb\d+|bpo)", d.tag)
        line = "+" + (m.group(1) if m else d.tag.lstrip("+"))
    flavour = d.flavour or "cloud-amd64"
    name = f"debian:{d.upstream.base}{line}"
    if flavour != "cloud-amd64" or line:
        name += f"/{flavour}"
    return name


def make_kernel(source: str, version: str, available: bool = True, reason: str = "",
                variant: str | None = None) -> Kernel:
    v, lineage, base = _parse(source, str(version))
    label = str(v) + (f"+{variant}" if variant else "")
    return Kernel(f"{source}:{label}", source, label, v, lineage, base, available, reason, variant)


def _source_of(lineage: str) -> str:
    if lineage == "mainline" or lineage.startswith("stable-"):
        return "mainline"
    return lineage.split(":", 1)[0]


def canonical(spec: str) -> str:
    """Canonical `source:version[+variant]` text for any spec a user may type (`v5.7-rc5`,
    `mainline:5.7-rc5`); used to match --verdicts keys with candidates."""
    try:
        return str(parse_spec(spec))
    except KbisectError:
        return spec.strip()


class KernelIndex:
    """All listed kernels, grouped by lineage and ordered; the differential asks it questions.

    `loaders` maps a source name to a function returning its kernels, called the first time a
    lineage of that source is needed: a Debian-only bisection never lists the mainline mirror."""

    def __init__(self, kernels: Iterable[Kernel] = (),
                 loaders: dict[str, Callable[[], Iterable[Kernel]]] | None = None) -> None:
        self.by_spec: dict[str, Kernel] = {}
        self.lineages: dict[str, list[Kernel]] = {}
        self.loaders = dict(loaders or {})
        self.add(kernels)

    def add(self, kernels: Iterable[Kernel]) -> None:
        for k in kernels:
            if k.spec not in self.by_spec:
                self.by_spec[k.spec] = k
                self.lineages.setdefault(k.lineage, []).append(k)
        for lst in self.lineages.values():
            lst.sort(key=lambda k: k.sort_key)

    def _load(self, source: str) -> None:
        loader = self.loaders.pop(source, None)
        if loader is not None:
            self.add(loader())

    def get(self, spec: str) -> Kernel | None:
        key = canonical(spec)
        if key not in self.by_spec:
            self._load(key.split(":", 1)[0])
        return self.by_spec.get(key)

    def lineage(self, name: str) -> list[Kernel]:
        self._load(_source_of(name))
        return list(self.lineages.get(name, []))

    def between(self, name: str, lo: Kernel, hi: Kernel) -> list[Kernel]:
        """Kernels of one lineage from lo to hi inclusive."""
        return [k for k in self.lineage(name) if lo.sort_key <= k.sort_key <= hi.sort_key]

    def mainline_release(self, base: KernelVersion) -> Kernel | None:
        return self.get(f"mainline:{base}")

    def releases_after(self, base: KernelVersion) -> list[Kernel]:
        """Mainline X.Y releases (no rc's) newer than base, oldest first."""
        return [k for k in self.lineage("mainline")
                if not k.version.is_rc and k.version > base]

    def release_window(self, prev: Kernel, release: Kernel) -> list[Kernel]:
        """prev release, the rc's of `release`, `release`: the range where it went bad."""
        return [k for k in self.lineage("mainline") if prev.sort_key <= k.sort_key <= release.sort_key]

    def stable_line(self, base: KernelVersion, upto: Kernel | None = None) -> list[Kernel]:
        """The mainline release X.Y (the root) followed by X.Y.z, up to `upto` if given."""
        line = self.lineage(f"stable-{base}")
        if upto is not None:
            line = [k for k in line if k.sort_key <= upto.sort_key]
        root = self.mainline_release(base)
        return ([root] if root else []) + line

    def distro_line(self, distro: str, base: KernelVersion) -> list[Kernel]:
        source = distro.split(":", 1)[0]
        return self.lineage(f"{source}:{base}")


def distro_lineage(distro: str) -> tuple[str, KernelVersion]:
    """`ubuntu:focal` / `debian:bookworm` / `ubuntu:5.4` → (source, base)."""
    source, _, series = distro.partition(":")
    source = source.strip().lower()
    if source not in DISTRO_SERIES or not series:
        raise KbisectError(f"--distro {distro!r}: expected ubuntu:SERIES or debian:SERIES (e.g. ubuntu:focal)")
    base_text = DISTRO_SERIES[source].get(series.strip().lower(), series.strip())
    try:
        base = parse_version(base_text).base
    except KbisectError:
        known = ", ".join(sorted(DISTRO_SERIES[source]))
        raise KbisectError(f"--distro {distro!r}: unknown series (known: {known}, or a base like {source}:5.4)") from None
    return source, base


@dataclass
class Stage:
    """One engine run inside the differential, kept for the report."""

    name: str  # "given range", "stable/distro lineage", "mainline walk", "upstream rc's"
    result: BisectResult | None = None
    walk: list[tuple[str, str]] = field(default_factory=list)  # (label, verdict) for the walk

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name}
        if self.result is not None:
            r = self.result.to_json()
            r.pop("probes", None)
            data.update(r)
        if self.walk:
            data["walk"] = [{"kernel": k, "verdict": v} for k, v in self.walk]
        return data


@dataclass
class Undecided:
    """A kernel whose verdict the answer needed but never got (why the result is not `found`)."""

    kernel: str  # label, as `kernels list` prints it
    spec: str
    why: str  # unavailable | skip | not listed | not walked
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.kernel} ({self.why}{': ' + self.reason if self.reason else ''})"

    def to_json(self) -> dict[str, str]:
        return {"kernel": self.kernel, "spec": self.spec, "why": self.why, "reason": self.reason}


@dataclass
class Walk:
    """What the mainline walk saw: the newest good release before the first bad one, and the
    releases that could not speak (gaps: unavailable or skipped; unwalked: past `max_walk`)."""

    last_good: Kernel
    first_bad: Kernel | None = None
    good: list[Kernel] = field(default_factory=list)
    gaps: list[Kernel] = field(default_factory=list)
    unwalked: list[Kernel] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Every listed release after the base, up to the newest, was probed good."""
        return self.first_bad is None and bool(self.good) and not self.gaps and not self.unwalked


@dataclass
class BadEnd:
    """The bad-end search over a line: the line cut at the chosen bad end, and what it skipped."""

    line: list[Kernel]
    newest: Kernel
    skipped: list[Kernel] = field(default_factory=list)


@dataclass
class DiffResult:
    """What the user asked for: where it broke, in which lineage, and where it came from."""

    bug: str
    status: str
    lineage: str | None = None
    last_good: str | None = None
    first_bad: str | None = None
    origin: str | None = None
    carrier: str | None = None  # for stable-backport: "stable" or "distro"
    stable_last_good: str | None = None  # with --distro: the stable line behind the distro kernel
    stable_first_bad: str | None = None
    upstream_last_good: str | None = None
    upstream_first_bad: str | None = None
    suspects: list[str] = field(default_factory=list)
    upstream_suspects: list[str] = field(default_factory=list)
    confidence: float = 0.0
    stopped: str = ""
    notes: list[str] = field(default_factory=list)
    undecided: list[Undecided] = field(default_factory=list)  # kernels the answer is missing
    origin_undecided: str = ""  # why no origin is named, when one would have been
    advice: str = ""  # what to do about `undecided`
    stages: list[Stage] = field(default_factory=list)
    probes: list[Any] = field(default_factory=list)  # bisect.Probe, every one in order

    @property
    def flagged(self) -> bool:
        from orchestrator.core.engine import CONFIDENCE_THRESHOLD

        return self.confidence < CONFIDENCE_THRESHOLD

    def git_ranges(self) -> dict[str, tuple[str, str]]:
        """Version ranges for git narrowing: {"range": (good, bad), "upstream": (good, bad)}."""
        out: dict[str, tuple[str, str]] = {}
        if self.last_good and self.first_bad:
            out["range"] = (self.last_good, self.first_bad)
        if self.upstream_last_good and self.upstream_first_bad:
            out["upstream"] = (self.upstream_last_good, self.upstream_first_bad)
        return out

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "bug": self.bug,
            "status": self.status,
            "lineage": self.lineage,
            "last_good": self.last_good,
            "first_bad": self.first_bad,
            "origin": self.origin,
        }
        if self.origin and self.origin != "mainline":
            data["upstream_last_good"] = self.upstream_last_good
            data["upstream_first_bad"] = self.upstream_first_bad
        if self.carrier:
            data["carrier"] = self.carrier
        if self.stable_first_bad:
            data["stable_last_good"] = self.stable_last_good
            data["stable_first_bad"] = self.stable_first_bad
        if self.suspects:
            data["suspects"] = self.suspects
        if self.upstream_suspects:
            data["upstream_suspects"] = self.upstream_suspects
        data.update({
            "confidence": round(self.confidence, 4),
            "flagged": self.flagged,
            "stopped": self.stopped,
            "notes": self.notes,
            "undecided": [u.to_json() for u in self.undecided],
        })
        if self.advice:
            data["advice"] = self.advice
        data.update({
            "stages": [s.to_json() for s in self.stages],
            "probes": [p.to_json() for p in self.probes],
        })
        return data


class Differential:
    """Run the whole decision procedure for one `kbisect bisect` invocation."""

    def __init__(self, bug: str, index: KernelIndex, probe: ProbeFn, *,
                 policy: RepeatPolicy | None = None, verify: int = 3,
                 on_probe: Callable | None = None, on_event: Callable[[str], None] | None = None,
                 max_walk: int = MAX_WALK) -> None:
        self.bug = bug
        self.index = index
        self.probe = probe
        self.policy = policy or RepeatPolicy()
        self.verify = verify
        self.on_probe = on_probe
        self.on_event = on_event or (lambda m: None)
        self.max_walk = max_walk
        self.known: dict[str, Verdict] = {}
        self.res = DiffResult(bug=bug, status="")

    # -- helpers --------------------------------------------------------------------------
    def _engine(self, name: str, kernels: Sequence[Kernel], lineage: str) -> BisectResult:
        self.on_event(f"[{name}] {lineage}: {kernels[0].label} .. {kernels[-1].label} ({len(kernels)} kernels)"
                      if kernels else f"[{name}] {lineage}: no kernels")
        engine = Engine([k.candidate() for k in kernels], self.probe, policy=self.policy, lineage=lineage,
                        verify=self.verify, on_probe=self.on_probe, on_event=self.on_event, known=self.known)
        result = engine.run()
        self.known.update(engine.verdicts)
        self.res.probes.extend(result.probes)
        self.res.stages.append(Stage(name, result))
        if result.status == INCONCLUSIVE:
            # suspects end with the oldest kernel probed bad; the ones before it never spoke
            self._undecide(k for k in map(self._kernel, result.suspects[:-1]) if k is not None)
        return result

    def _kernel(self, cand: Candidate) -> Kernel | None:
        return self.index.by_spec.get(cand.spec)

    def _undecide(self, kernels: Iterable[Kernel], why: str = "", reason: str = "") -> None:
        """Record kernels the answer needed but could not get a verdict for (once each)."""
        seen = {u.spec for u in self.res.undecided}
        for k in kernels:
            if k.spec in seen:
                continue
            seen.add(k.spec)
            if why:
                self.res.undecided.append(Undecided(k.label, k.spec, why, reason))
            elif not k.available:
                self.res.undecided.append(Undecided(k.label, k.spec, "unavailable", k.reason))
            else:
                self.res.undecided.append(Undecided(k.label, k.spec, "skip", self._skip_reason(k)))

    def _skip_reason(self, kernel: Kernel) -> str:
        """The reason the probe gave for its skip (the first run that gave one)."""
        for p in self.res.probes:
            if p.kernel == kernel.spec and p.verdict is Verdict.SKIP and "known" not in p.origins:
                return p.reason or "the probe said skip"
        return "the probe said skip"

    def _judge(self, kernel: Kernel, stage: Stage) -> Verdict:
        """One verdict outside a bisection (ends of the differential, the mainline walk). An
        unavailable kernel is never probed: it is a skip, recorded as unavailable."""
        if kernel.spec in self.known:
            return self.known[kernel.spec]
        if not kernel.available:
            stage.walk.append((kernel.label, "unavailable"))
            return Verdict.SKIP
        engine = Engine([kernel.candidate()], self.probe, policy=self.policy, lineage=kernel.lineage,
                        verify=0, on_probe=self.on_probe)
        probe = engine.judge(kernel.candidate(), "walk")
        self.known[kernel.spec] = probe.verdict
        self.res.probes.append(probe)
        stage.walk.append((kernel.label, probe.verdict.value))
        return probe.verdict

    def _resolve(self, text: str, role: str) -> Kernel:
        spec = parse_spec(text)
        if spec.variant:
            k = self.index.get(str(spec))
            if k is None:
                raise KbisectError(f"--{role} {text}: variant kernels are not in any listing")
            return k
        k = self.index.get(str(spec))
        if k is None:
            raise KbisectError(f"--{role} {text}: {spec} is not in the {spec.source} listing")
        return k

    # -- the procedure --------------------------------------------------------------------
    def run(self, good: str, bad: str, distro: str | None = None) -> DiffResult:
        g, b = self._resolve(good, "good"), self._resolve(bad, "bad")
        if g.lineage == b.lineage and not g.sort_key < b.sort_key:
            raise KbisectError(f"--good {g.label} is not older than --bad {b.label}")
        res = self.res
        if distro:
            distro_lineage(distro)  # validate early: one clear line

        if g.lineage == b.lineage:
            given = self.index.between(g.lineage, g, b)
            r = self._engine("given range", given, g.lineage)
            if r.status in (FOUND, INCONCLUSIVE, UNSTABLE):
                self._take(r, g.lineage)
                if g.lineage == "mainline":
                    res.origin = "mainline"
                    return self._finish([r])
                fb = self.index.get(r.first_bad.spec) if r.first_bad else None
                lg = self.index.get(r.last_good.spec) if r.last_good else None
                if fb is not None and lg is not None and fb.variant and str(fb.version) == str(lg.version) \
                        and not lg.variant:
                    res.origin = "variant"
                    res.notes.append(f"first bad {fb.label} is {lg.label} rebuilt with the patch "
                                     f"{fb.variant!r}: that patch is the whole difference, so no upstream "
                                     "search is needed")
                    return self._finish([r])
                # a stable/distro range: find where mainline got it (step b)
                return self._upstream(b.base, [r], carrier=self._carrier(g.lineage))
            moved = self._moved_over(r, given)
            self._undecide(moved)
            if r.status == ENDS_DISAGREE and r.disagreeing_end == "good":
                end = r.good_end.label if r.good_end else g.label
                if moved:
                    return self._stop(r, f"--good {g.label} could not be tested and the next testable kernel, {end}, "
                                         "is already bad: the first bad is it or an untested kernel before it")
                return self._stop(r, f"good end {end} is already bad: "
                                     "the regression is older than the range; give an older --good")
            if r.status == ENDS_DISAGREE and r.disagreeing_end == "bad" and b.lineage == "mainline":
                seen = (f"mainline {b.label} is good" if not moved else
                        f"mainline {b.label} could not be tested and {r.bad_end.label if r.bad_end else '?'} "
                        f"before it is good")
                res.notes.append(
                    f"{seen}, so the bad {b.label} the user ran was {'probably ' if moved else ''}not "
                    f"mainline {b.label}: "
                    f"it was a stable or distro kernel built on {b.label}. Taking the "
                    + (f"{distro} series" if distro else f"newest available stable-{b.base} release")
                    + " as the bad kernel and comparing lineages (write-up's case).")
                return self._differential(b.base, distro, None, [r])
            return self._stop(r, r.stopped)

        # different lineages: the bad end is a stable/distro kernel (or the good end is)
        if b.base is None:
            raise KbisectError(f"--bad {b.label}: cannot tell which mainline release it is built on")
        root = self.index.mainline_release(b.base)
        walk = Stage("base check")
        res.stages.append(walk)
        if root is not None and root.available and g.lineage == "mainline" and g.sort_key < root.sort_key:
            verdict = self._judge(root, walk)
            if verdict is Verdict.BAD:
                res.notes.append(f"mainline {root.label} (the base of {b.label}) is already bad: "
                                 f"the regression is in mainline; bisecting mainline {g.label}..{root.label}")
                r = self._engine("mainline", self.index.between("mainline", g, root), "mainline")
                if r.status in (FOUND, INCONCLUSIVE, UNSTABLE):
                    self._take(r, "mainline")
                    res.origin = "mainline"
                    return self._finish([r])
                return self._stop(r, r.stopped)
            if verdict is Verdict.GOOD:
                res.notes.append(f"mainline {root.label} (the base of {b.label}) is good: "
                                 f"bisecting the {b.lineage} lineage, then finding where mainline went bad")
            else:
                res.notes.append(f"mainline {root.label} (the base of {b.label}) could not be tested: "
                                 f"bisecting the {b.lineage} lineage, but whether mainline had it already stays open")
        if b.lineage.startswith("stable-") or (distro is None and b.source in ("ubuntu", "debian")):
            return self._differential(b.base, None if b.lineage.startswith("stable-") else f"{b.source}:{b.base}",
                                      b, [])
        return self._differential(b.base, distro, b, [])

    def _carrier(self, lineage: str) -> str:
        return "stable" if lineage.startswith("stable-") else "distro"

    @staticmethod
    def _moved_over(r: BisectResult, kernels: Sequence[Kernel], pick: BadEnd | None = None) -> list[Kernel]:
        """The untestable kernels the engine stepped over at the end that disagreed. The end the
        user named may be any of them, so the disagreement is not established: it stays open.
        With a picked bad end (`pick`), the unavailable kernels past the newest available one are
        no such end: the newest available kernel stood in for "the line" from the start."""
        if r.status != ENDS_DISAGREE:
            return []
        end = r.good_end if r.disagreeing_end == "good" else r.bad_end
        specs = [k.spec for k in kernels]
        if end is None or end.spec not in specs:
            return []
        i = specs.index(end.spec)
        if r.disagreeing_end == "good":
            return list(kernels[:i])
        return [k for k in kernels[i + 1:] if pick is None or k.sort_key <= pick.newest.sort_key]

    def _differential(self, base: KernelVersion, distro: str | None, bad: Kernel | None,
                      done: list[BisectResult]) -> DiffResult:
        """(a) bisect the lineage of `base` the user ran; (b) find where mainline got it."""
        res = self.res
        if distro:
            source, dbase = distro_lineage(distro)
            if dbase != base:
                res.notes.append(f"--distro {distro} carries {dbase}, not {base}: using its series anyway")
                base_for_line = dbase
            else:
                base_for_line = base
            lineage = f"{source}:{base_for_line}"
            line = self.index.distro_line(distro, base_for_line)
            if bad is not None and bad.lineage == lineage:
                line = [k for k in line if k.sort_key <= bad.sort_key]
        else:
            line = self.index.stable_line(base, bad if bad is not None and bad.lineage.startswith("stable-") else None)
            lineage = f"stable-{base}"
        available = [k for k in line if k.available]
        if len(available) < 2:
            res.status = NO_CANDIDATES
            res.stopped = f"the {lineage} lineage has fewer than two available kernels: nothing to compare"
            return self._finish(done)
        pick = self._pick_bad_end(line, lineage) if bad is None else None
        if pick is not None:
            line = pick.line
        r = self._engine("lineage of the bad kernel", line, lineage)
        if r.status in (ENDS_DISAGREE, NO_CANDIDATES):
            moved = self._moved_over(r, line, pick)
            self._undecide(moved + (pick.skipped if pick and r.disagreeing_end == "bad" else []))
            if r.disagreeing_end == "bad":
                msg = (f"no kernel of {lineage} up to {r.bad_end.label if r.bad_end else '?'} shows the bug either; "
                       "cannot tell which kernel was bad"
                       + ("" if distro else " (if the bad kernel was a distro build, pass --distro ubuntu:SERIES)"))
            elif r.disagreeing_end == "good":
                msg = (f"the oldest kernel of {lineage} ({r.good_end.label if r.good_end else '?'}) is already bad: "
                       "the distro carried it from its first upload")
                if distro:
                    # the whole series is bad: still compare with mainline to name the origin
                    self._whole_series_bad(r, lineage, moved, msg)
                    return self._upstream(base, done + [r], carrier="distro", allow_partial=True)
            else:
                msg = r.stopped
            return self._stop(r, msg)
        self._take(r, lineage)
        carrier: str | None = self._carrier(lineage)
        if distro and r.status in (FOUND, INCONCLUSIVE, UNSTABLE):
            carrier, stable = self._stable_behind_distro(base)
            if stable is not None:
                done = done + [stable]
        return self._upstream(base, done + [r], carrier=carrier)

    def _whole_series_bad(self, r: BisectResult, lineage: str, moved: list[Kernel], msg: str) -> None:
        """The distro series is bad from its oldest testable upload. If older uploads could not be
        tested, the first bad is that upload or one of them: inconclusive, not a guess."""
        res = self.res
        res.lineage = lineage
        res.notes.append(msg)
        oldest = r.good_end.label if r.good_end else None
        if moved:
            res.status = INCONCLUSIVE
            res.suspects = [k.label for k in moved] + ([oldest] if oldest else [])
            res.notes.append("first bad could be any of " + ", ".join(res.suspects))
        else:
            res.first_bad = oldest

    def _stable_behind_distro(self, base: KernelVersion) -> tuple[str | None, BisectResult | None]:
        """Did the distro get it through a stable update? (The write-up's Ubuntu kernel had taken
        stable 5.4.41.) If the stable line of the same base shows the bug, bisect it too and
        report its first bad release beside the distro's; else the distro took it on its own.

        Returns the carrier and the stable bisection to count in the result. The carrier is
        "stable" when the stable line was probed bad, "distro" only when it was really probed good
        (`_line_clean`), and None when unavailable or skipped kernels left it undecided: then the
        distro may have taken the change itself or through stable, and the result does not say which."""
        res = self.res
        line = self.index.stable_line(base)
        if len([k for k in line if k.available]) < 2:
            self._undecide(k for k in line if not k.available)
            res.notes.append(f"stable-{base} has fewer than two available kernels: cannot tell whether the distro "
                             "got it via stable or took it itself")
            return None, None
        saved = (res.lineage, res.last_good, res.first_bad, list(res.suspects))
        pick = self._pick_bad_end(line, f"stable-{base}")
        r = self._engine("stable line behind the distro", pick.line, f"stable-{base}")
        res.lineage, res.last_good, res.first_bad, res.suspects = saved
        if r.status in (FOUND, UNSTABLE, INCONCLUSIVE):
            return "stable", self._stable_shows(base, r)
        if r.status == ENDS_DISAGREE and r.disagreeing_end == "good" and r.good_end is not None:
            self._undecide(self._moved_over(r, pick.line))
            res.stable_first_bad = r.good_end.label
            res.notes.append(f"stable-{base} is bad from its oldest testable kernel, {r.good_end.label}: "
                             "the distro took it with a stable update")
            return "stable", None
        if self._line_clean(r, pick):
            res.notes.append(f"stable-{base} does not show it ({r.stopped}): the distro took the change itself")
            return "distro", None
        untested = pick.skipped + self._moved_over(r, pick.line, pick)
        self._undecide(untested)
        res.notes.append(f"stable-{base} is undecided ({r.stopped}; untested: "
                         + (", ".join(k.label for k in untested) or "its ends")
                         + "): cannot tell whether the distro got it with a stable update or on its own")
        return None, None

    def _stable_shows(self, base: KernelVersion, r: BisectResult) -> BisectResult:
        """The stable line is bad at its bad end: report where it went bad, or the suspects."""
        res = self.res
        res.stable_last_good = r.last_good.label if r.last_good else None
        if r.first_bad is not None:
            res.stable_first_bad = r.first_bad.label
            res.notes.append(f"stable-{base} shows it too, from {r.first_bad.label}: the distro took it "
                             "with a stable update")
        else:
            res.notes.append(f"stable-{base} shows it too ({r.stopped}): the distro took it with a stable update")
        return r

    @staticmethod
    def _line_clean(r: BisectResult, pick: BadEnd) -> bool:
        """May "this line does not show it" be said? Only when the line's newest release and every
        sampled release were probed good: the engine's bad end is the newest available kernel
        (not a neighbour it fell back to) and the bad-end search met no skip. A skipped sample
        may be exactly the bad window (gretap-ecn: 5.4.41 .. 5.4.137)."""
        return (r.status == ENDS_DISAGREE and r.disagreeing_end == "bad" and not pick.skipped
                and r.bad_end is not None and r.bad_end.spec == pick.newest.spec)

    def _pick_bad_end(self, line: list[Kernel], lineage: str, samples: int = 8) -> BadEnd:
        """The user named only a base ("bad 5.4"): which kernel of its line did they run?

        The newest available release is the first guess (what an up-to-date machine runs). If
        that one is good the bug may since have been fixed in the line (gretap-ecn: 5.4.41 bad,
        5.4.138 good again), so up to `samples` evenly spaced releases are probed, oldest first,
        and the first bad one becomes the bad end. Bisecting from the line's root to that kernel
        then finds the first bad release. If no sample is bad the line is returned unchanged and
        the engine reports the disagreement. A skipped newest release is sampled past like a good
        one; every skip is returned, so an unheard line is never mistaken for a good one."""
        available = [k for k in line if k.available]
        newest = available[-1]
        out = BadEnd(line, newest)
        stage = Stage("bad-end search")
        self.res.stages.append(stage)
        verdict = self._judge(newest, stage)
        if verdict is Verdict.BAD:
            self.res.notes.append(f"bad end of {lineage}: newest available release, {newest.label}")
            out.line = [x for x in line if x.sort_key <= newest.sort_key]
            return out
        if verdict is Verdict.SKIP:
            out.skipped.append(newest)
        inner = available[1:-1]
        if not inner:
            return out
        step = max(1, len(inner) // samples)
        picks = inner[step - 1::step][:samples]
        for k in picks:
            verdict = self._judge(k, stage)
            if verdict is Verdict.BAD:
                self.res.notes.append(
                    f"newest {lineage} release {newest.label} is "
                    + ("skipped" if newest in out.skipped else "good (fixed since?)")
                    + f"; sampled the line and took {k.label}, the oldest bad sample, as the bad end")
                out.line = [x for x in line if x.sort_key <= k.sort_key]
                return out
            if verdict is Verdict.SKIP:
                out.skipped.append(k)
        good = len(picks) + 1 - len(out.skipped)
        self.res.notes.append(f"newest {lineage} release {newest.label} and {len(picks)} sampled releases: "
                              f"{good} good" + (f", {len(out.skipped)} skipped" if out.skipped else ""))
        return out

    def _upstream(self, base: KernelVersion | None, done: list[BisectResult], *, carrier: str | None,
                  allow_partial: bool = False) -> DiffResult:
        """Walk mainline releases forward from `base` to the first bad one; bisect its rc's.

        `carrier` is the line that carries the change ("stable" or "distro"), None when the
        stable line behind a distro kernel was left undecided."""
        res = self.res
        if base is None:
            res.origin = None
            return self._finish(done)
        stage = Stage("mainline walk")
        res.stages.append(stage)
        prev = self.index.mainline_release(base)
        if prev is None:
            res.undecided.append(Undecided(str(base), f"mainline:{base}", "not listed"))
            return self._origin_open(done, f"mainline {base} is not listed: cannot tell whether mainline "
                                           "had it already")
        verdict = self._judge(prev, stage)
        if verdict is Verdict.BAD:
            # should not happen after the checks above; say so rather than guess
            res.notes.append(f"mainline {prev.label} is bad: the regression is in mainline, not a backport")
            res.origin = "mainline"
            return self._finish(done)
        if verdict is not Verdict.GOOD:
            self._undecide([prev])
            return self._origin_open(done, f"mainline {prev.label} could not be tested: cannot tell whether "
                                           "mainline had it already (origin mainline) or got it later")
        self.on_event(f"[mainline walk] forward from {prev.label}")
        walk = self._walk(base, prev, stage)
        if walk.first_bad is None:
            return self._no_bad_release(base, walk, done, carrier)
        return self._upstream_window(walk.last_good, walk.first_bad, done, carrier)

    def _walk(self, base: KernelVersion, prev: Kernel, stage: Stage) -> Walk:
        """Judge mainline releases after `base`, oldest first, up to the first bad one.

        An unavailable or skipped release is stepped over but never counted as good: it is kept
        as a gap, because it may be the first bad release (the bug may be fixed by the next
        release, as gretap-ecn was by 5.14). Past `max_walk` releases the rest are unwalked."""
        walk = Walk(prev)
        releases = self.index.releases_after(base)
        for i, rel in enumerate(releases):
            if i >= self.max_walk:
                walk.unwalked = releases[i:]
                self.res.notes.append(f"stopped walking mainline after {self.max_walk} releases")
                break
            verdict = self._judge(rel, stage)
            if verdict is Verdict.GOOD:
                walk.last_good = rel
                walk.good.append(rel)
            elif verdict is Verdict.BAD:
                walk.first_bad = rel
                break
            else:
                walk.gaps.append(rel)
        return walk

    def _no_bad_release(self, base: KernelVersion, walk: Walk, done: list[BisectResult],
                        carrier: str | None) -> DiffResult:
        """No walked mainline release is bad. Is that "stable-only" / "distro"?

        Those origins claim that mainline never got the change, so the rule is strict: every
        mainline release listed after the base, up to the newest listed one, was probed GOOD;
        no release was unavailable or skipped and the walk did not stop at `max_walk`. With
        --distro the carrier must be decided too (stable-only vs distro). Anything less leaves
        the origin open: inconclusive, origin None, the gaps listed as undecided."""
        res = self.res
        if walk.complete and carrier is not None:
            res.origin = "distro" if carrier == "distro" else "stable-only"
            res.notes.append(
                f"no mainline release after {base} up to {walk.last_good.label} shows the bug "
                f"({len(walk.good)} releases, all probed good): "
                + ("a distro-only patch" if carrier == "distro" else
                   "a stable-specific breakage (or a mainline bug fixed before its release)"))
            return self._finish(done)
        self._undecide(walk.gaps)
        self._undecide(walk.unwalked, "not walked", f"beyond the walk limit of {self.max_walk} releases")
        if walk.complete:
            why = (f"no mainline release after {base} shows the bug, but whether stable-{base} does is "
                   "undecided: distro or stable-only")
        elif not (walk.good or walk.gaps):
            why = f"no mainline release after {base} is listed: nothing shows whether mainline ever got it"
        else:
            open_ = walk.gaps + walk.unwalked
            why = (f"no mainline release after {base} was probed bad, but {len(open_)} could not be tested "
                   f"({', '.join(k.label for k in open_[:6])}{', ...' if len(open_) > 6 else ''}) "
                   "and any of them may be the first bad one")
        return self._origin_open(done, why)

    def _upstream_window(self, prev: Kernel, release: Kernel, done: list[BisectResult],
                         carrier: str | None) -> DiffResult:
        """prev release probed good, `release` probed bad: the origin is a backport of a later
        mainline change; bisect the rc's between them for the upstream range."""
        res = self.res
        r = self._engine("upstream rc's", self.index.release_window(prev, release), "mainline")
        res.origin = "stable-backport"
        res.carrier = carrier
        if r.status in (FOUND, UNSTABLE):
            res.upstream_last_good = r.last_good.label if r.last_good else None
            res.upstream_first_bad = r.first_bad.label if r.first_bad else None
        elif r.status == INCONCLUSIVE:
            res.upstream_last_good = r.last_good.label if r.last_good else None
            res.upstream_suspects = [c.label for c in r.suspects]
            res.upstream_first_bad = r.suspects[-1].label if r.suspects else None
            res.notes.append("upstream boundary " + r.stopped)
        else:
            res.upstream_last_good, res.upstream_first_bad = prev.label, release.label
            res.notes.append(f"upstream rc bisection did not settle ({r.stopped}); "
                             f"upstream range is the release pair {prev.label}..{release.label}")
        got = res.first_bad or ("one of " + ", ".join(res.suspects) if res.suspects else "?")
        via = f"via the {carrier} line" if carrier else "via a line left undecided (stable or the distro itself)"
        res.notes.append(f"mainline went bad between {res.upstream_last_good} and {res.upstream_first_bad}; "
                         f"{res.lineage} got it at {got}: origin stable-backport {via}")
        return self._finish(done + [r])

    # -- result assembly ------------------------------------------------------------------
    def _take(self, r: BisectResult, lineage: str) -> None:
        res = self.res
        res.lineage = lineage
        res.last_good = r.last_good.label if r.last_good else None
        res.first_bad = r.first_bad.label if r.first_bad else None
        if r.status == INCONCLUSIVE:
            res.suspects = [c.label for c in r.suspects]
            res.notes.append(r.stopped)
        res.notes.extend(n for n in r.notes if n not in res.notes)

    def _origin_open(self, done: list[BisectResult], why: str) -> DiffResult:
        """Untested kernels would decide the origin: name none, say why and what to do."""
        res = self.res
        res.status = INCONCLUSIVE
        res.origin = None
        res.carrier = None
        res.origin_undecided = why
        res.notes.append(f"origin undecided: {why}")
        return self._finish(done)

    def _stop(self, r: BisectResult, why: str) -> DiffResult:
        """Stop at an engine result. A disagreement that untested kernels could explain (an end
        moved past unavailable or skipped kernels, a skipped sample) is not established: it is
        reported as inconclusive, with those kernels."""
        res = self.res
        res.status = INCONCLUSIVE if r.status == ENDS_DISAGREE and res.undecided else r.status
        res.stopped = why
        res.notes.append(why)
        res.confidence = r.confidence
        if res.undecided:
            res.stopped += f"; untested: {', '.join(u.kernel for u in res.undecided)}"
            res.advice = ADVICE
            res.notes.append(ADVICE)
        return res

    def _finish(self, results: list[BisectResult]) -> DiffResult:
        res = self.res
        statuses = [r.status for r in results]
        if not res.status:
            if any(s == UNSTABLE for s in statuses):
                res.status = UNSTABLE
            elif any(s == INCONCLUSIVE for s in statuses):
                res.status = INCONCLUSIVE
            elif res.first_bad:
                res.status = FOUND
            else:
                res.status = NO_CANDIDATES
        res.confidence = functools.reduce(lambda a, r: a * r.confidence, results, 1.0) if results else 0.0
        if res.undecided:
            res.advice = ADVICE
            res.notes.append(f"undecided: {', '.join(str(u) for u in res.undecided)}; {ADVICE}")
        if not res.stopped:
            res.stopped = self._summary_line() or (results[-1].stopped if results else "nothing to bisect")
        return res

    def _summary_line(self) -> str:
        """The one-line answer: boundary, origin (or why it is open), upstream range."""
        res = self.res
        parts = []
        if res.first_bad:
            parts.append(f"{res.lineage}: {res.last_good} good, {res.first_bad} bad")
        elif res.suspects:
            parts.append(f"{res.lineage}: {res.last_good} good, first bad one of {', '.join(res.suspects)}")
        if res.origin:
            parts.append(f"origin {res.origin}")
        elif res.origin_undecided:
            parts.append(f"origin undecided: {res.origin_undecided}")
        if res.upstream_first_bad:
            parts.append(f"upstream {res.upstream_last_good} good, {res.upstream_first_bad} bad")
        if res.undecided:
            parts.append(ADVICE)
        return "; ".join(parts)
