"""Git narrowing: from a version boundary to a ranked handful of commits.

Once bisection has pinned a range (`v5.7-rc3..v5.7-rc4`, or `v5.4.40..v5.4.41`), the write-up's
next step was `git log --grep=' ECT' v5.6..v5.7`. This module does that for every keyword of the
reproducer, over the range, restricted to the reproducer's paths, and ranks what it finds:

* keyword hits in the subject weigh more than hits in the body;
* overlap of the changed files with the reproducer's paths;
* a `Fixes:` tag pointing at a commit that touched relevant code (the culprit of gretap-ecn says
  `Fixes: eccc1bb8d4b4 ("tunnel: drop packet if ECN present with not-ECT")`);
* merges, documentation-only and other-architecture commits are demoted: they mention the words
  but cannot change what an x86 guest does.

Keyword hits outside the paths are still listed (with no path score) so that incomplete paths in
a bug.yaml do not hide the culprit, but they rank below anything that touches the paths.

Stable and distro commits name their upstream origin in a handful of conventional ways; those
are mapped to an `upstream` sha, and in a differential the candidates present in both the
stable/distro range and the upstream range rank first: that intersection is the backported
culprit the write-up found by hand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from orchestrator.core.errors import KbisectError, ReversedRange

UPSTREAM_PATTERNS = [
    re.compile(r"^\s*commit ([0-9a-f]{7,40}) upstream\.?", re.M | re.I),
    re.compile(r"\[\s*Upstream commit ([0-9a-f]{7,40})\s*\]", re.I),
    re.compile(r"\(cherry[ -]picked from commit ([0-9a-f]{7,40})[^)]*\)", re.I),
    re.compile(r"\(backported from commit ([0-9a-f]{7,40})[^)]*\)", re.I),
]
FIXES = re.compile(r"^\s*Fixes:\s*([0-9a-f]{7,40})(?:\s*\(\"?(.*?)\"?\))?\s*$", re.M | re.I)
OTHER_ARCHES = {"alpha", "arc", "arm", "arm64", "csky", "hexagon", "ia64", "loongarch", "m68k",
                "microblaze", "mips", "nios2", "openrisc", "parisc", "powerpc", "riscv", "s390",
                "sh", "sparc", "um", "xtensa"}

# weights (see module docstring for why each exists)
W_SUBJECT, W_BODY, W_PATH, W_ALL_RELEVANT, W_FIXES_PATH, W_FIXES_WORD = 5, 2, 4, 3, 3, 1
P_MERGE, P_DOCS, P_ARCH = 12, 10, 10
W_BOTH = 25


@dataclass
class Commit:
    """One candidate commit and why it ranks where it does."""

    sha: str
    subject: str
    score: float = 0.0
    reasons: list[str] = field(default_factory=list)
    upstream: str | None = None  # the mainline sha a stable/distro commit was taken from
    files: list[str] = field(default_factory=list)
    range: str = ""  # "upstream" or "stable" in a differential
    backports: list[str] = field(default_factory=list)  # stable/distro shas carrying this upstream commit

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"sha": self.sha, "subject": self.subject, "score": round(self.score, 2),
                                "reasons": list(self.reasons), "upstream": self.upstream}
        if self.range:
            data["range"] = self.range
        if self.backports:
            data["backports"] = list(self.backports)
        return data


def map_upstream(message: str) -> str | None:
    """The upstream sha a stable/distro commit message names, or None."""
    for pattern in UPSTREAM_PATTERNS:
        match = pattern.search(message)
        if match:
            return match.group(1).lower()
    return None


def _relevant(path: str, bug_paths: Iterable[str]) -> bool:
    """A changed file is relevant when it is one of the paths or lies under one of them."""
    for bp in bug_paths:
        bp = bp.rstrip("/")
        if path == bp or path.startswith(bp + "/"):
            return True
    return False


def _is_doc(path: str) -> bool:
    return path.startswith("Documentation/") or path.endswith((".rst", ".txt", ".md"))


def _arch(path: str) -> str | None:
    parts = path.split("/")
    if len(parts) > 1 and parts[0] == "arch":
        return parts[1]
    return None


def open_repo(repo_path: str | Path):
    """The GitPython Repo of a clone; KbisectError (one line) when it is none."""
    import git

    try:
        return git.Repo(str(repo_path))
    except (git.exc.NoSuchPathError, git.exc.InvalidGitRepositoryError):
        raise KbisectError(f"--repo {repo_path}: not a git repository") from None


def resolve_rev(repo, rev: str) -> str:
    """The full sha `rev` names in `repo`; KbisectError (one line) when it names nothing."""
    import git
    from gitdb.exc import BadObject

    try:
        return repo.commit(rev).hexsha
    except (git.exc.BadName, BadObject, ValueError, git.exc.GitCommandError):
        # the callers name the clone as the user gave it (--repo PATH): repo.working_dir may be
        # kbisect's own worktree of it, a path the user never typed
        raise KbisectError(f"unknown revision {rev!r} (no branch, tag or commit of that name)") from None


@dataclass(frozen=True)
class GraphCommit:
    """One commit of a bisected range: its parents (in or outside the range) and subject."""

    sha: str
    parents: tuple[str, ...]
    subject: str


def commit_graph(repo_path: str | Path, good: str, bad: str) -> tuple[str, list[GraphCommit], list[GraphCommit]]:
    """(the good end's sha, the commits of `bad ^good` parents first, the commits outside the
    range that are parents of one inside it: the good end and any side branch's fork point).

    The range is git bisect's own (`git rev-list bad --not good`), not the ancestry path: a side
    branch forked before the good end and merged after it is part of what changed. Two `git log`
    calls, not one read per commit."""
    repo = open_repo(repo_path)
    lo, hi = resolve_rev(repo, good), resolve_rev(repo, bad)
    if lo == hi:
        raise KbisectError(f"{good} and {bad} are the same commit: there is nothing to bisect")
    if not repo.is_ancestor(lo, hi):
        raise _no_range(repo, good, bad, lo, hi)
    inside = _graph_log(repo, "--topo-order", "--reverse", f"{lo}..{hi}")
    known = {c.sha for c in inside}
    outside = sorted({p for c in inside for p in c.parents if p not in known} | {lo})
    return lo, inside, _graph_log(repo, "--no-walk=unsorted", *outside)


def _no_range(repo, good: str, bad: str, lo: str, hi: str) -> KbisectError:
    """Why `good` is not an ancestor of `bad`, in words that say what to do: swapping the ends
    fixes only a reversed range (ReversedRange); unrelated histories and a side branch need
    other revisions."""
    if repo.is_ancestor(hi, lo):
        return ReversedRange(f"{good} is newer than {bad} ({bad} is an ancestor of it): the older revision of "
                             "the range must come first")
    bases = repo.merge_base(lo, hi)
    if not bases:
        return KbisectError(f"{good} and {bad} share no ancestry (unrelated histories): give two revisions of "
                            "one history, the older an ancestor of the newer")
    fork = bases[0].hexsha[:12]
    return KbisectError(f"{good} is not an ancestor of {bad}: they are on diverging branches that fork at {fork}, "
                        f"so swapping them will not help; give as the older end a revision {bad} contains "
                        f"(the fork point {fork}, or a tag before it)")


def _graph_log(repo, *args: str) -> list[GraphCommit]:
    out = repo.git.log("--format=%H%x00%P%x00%s", *args)
    rows = [line.split("\0", 2) for line in out.splitlines() if line]
    return [GraphCommit(sha, tuple(parents.split()), subject) for sha, parents, subject in rows]


def commits_touching(repo_path: str | Path, good: str, bad: str, paths: list[str]) -> set[str]:
    """Shas of good..bad (git bisect's range, as commit_graph lists it; merges left out) that
    change any of `paths`."""
    repo = open_repo(repo_path)
    rng = f"{resolve_rev(repo, good)}..{resolve_rev(repo, bad)}"
    out = repo.git.log("--format=%H", "--no-merges", rng, "--", *paths)
    return {line for line in out.splitlines() if line}


@dataclass(frozen=True)
class Revert:
    """What undoes one commit: the diff (applied with -p1 like any patch) and the files it touches."""

    sha: str
    diff: str
    files: list[str]
    merge: bool  # a merge is undone against its first parent (`git revert -m 1`): its whole branch


def revert_diff(repo_path: str | Path, rev: str) -> Revert:
    """The commit's first parent's tree against its own. For a merge that is `git revert -m 1`:
    everything the merged branch brought in is undone, which is what a merge found bad with
    good parents needs checked. A root commit has nothing to revert to (KbisectError)."""
    repo = open_repo(repo_path)
    sha = resolve_rev(repo, rev)
    commit = repo.commit(sha)
    if not commit.parents:
        raise KbisectError(f"{sha[:12]} is a root commit: there is nothing to revert it to")
    return Revert(sha, repo.git.diff(sha, commit.parents[0].hexsha) + "\n", _files(commit), len(commit.parents) > 1)


def _files(commit) -> list[str]:
    """Files changed against the first parent (the whole tree for a root commit)."""
    if commit.parents:
        diff = commit.parents[0].diff(commit)
        return sorted({d.b_path or d.a_path for d in diff})
    return sorted(commit.stats.files)


def _keyword_regex(word: str) -> re.Pattern[str]:
    """Keywords match at a word start; all-caps acronyms (ECT, ECN) match case-sensitively, so
    'ECT' does not hit "detect" or "connect" (the write-up grepped ' ECT' for the same reason)."""
    flags = 0 if word.isupper() else re.I
    return re.compile(r"(?<![A-Za-z0-9_])" + re.escape(word), flags)


def _git_grep_args(word: str) -> list[str]:
    """The same rule as `_keyword_regex`, in git's extended-regex dialect."""
    pattern = r"(^|[^A-Za-z0-9_])" + re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\1", word)
    return (["-E"] if word.isupper() else ["-E", "-i"]) + [f"--grep={pattern}"]


def _hits(word: str, text: str) -> int:
    return len(_keyword_regex(word).findall(text))


def score_commit(repo, commit, keywords: list[str], paths: list[str]) -> Commit:
    """Score one commit by the rules in the module docstring; every point has a reason."""
    import git  # GitPython: imported only by the commands that narrow

    message = commit.message
    subject, _, body = message.partition("\n")
    files = _files(commit)
    c = Commit(sha=commit.hexsha, subject=subject.strip(), files=files)

    for kw in keywords:
        s, b = _hits(kw, subject), _hits(kw, body)
        if s:
            c.score += W_SUBJECT
            c.reasons.append(f"keyword {kw!r} in subject")
        if b:
            c.score += W_BODY
            c.reasons.append(f"keyword {kw!r} in body")

    relevant = [f for f in files if _relevant(f, paths)]
    if relevant:
        c.score += W_PATH * min(len(relevant), 3)
        c.reasons.append("touches " + ", ".join(relevant[:4]))
        if len(relevant) == len(files):
            c.score += W_ALL_RELEVANT
            c.reasons.append("touches only relevant paths")

    for match in FIXES.finditer(body):
        ref, fixed_subject = match.group(1), match.group(2) or ""
        fixed_files: list[str] = []
        try:
            fixed_files = _files(repo.commit(ref))
        except Exception:  # the fixed commit may predate a shallow or synthetic history
            fixed_files = []
        if any(_relevant(f, paths) for f in fixed_files):
            c.score += W_FIXES_PATH
            c.reasons.append(f"Fixes: {ref[:12]} touched relevant code")
        elif any(_hits(kw, fixed_subject) for kw in keywords):
            c.score += W_FIXES_WORD
            c.reasons.append(f"Fixes: {ref[:12]} ({fixed_subject}) names a keyword")

    if len(commit.parents) > 1:
        c.score -= P_MERGE
        c.reasons.append("merge commit (demoted)")
    if files and all(_is_doc(f) for f in files):
        c.score -= P_DOCS
        c.reasons.append("documentation only (demoted)")
    arches = {_arch(f) for f in files}
    if files and None not in arches and arches & OTHER_ARCHES and "x86" not in arches:
        c.score -= P_ARCH
        c.reasons.append(f"other architecture only: {', '.join(sorted(a for a in arches if a))} (demoted)")

    up = map_upstream(body)
    if up:
        try:
            c.upstream = repo.commit(up).hexsha
        except (ValueError, git.exc.BadName, git.exc.GitCommandError):  # not in this clone: keep the short sha
            c.upstream = up
        c.reasons.append(f"backport of upstream {c.upstream[:12]}")
    return c


def find_candidates(repo_path: str | Path, good: str, bad: str, keywords: list[str],
                    paths: list[str], *, limit: int = 50) -> list[Commit]:
    """`git log --grep` per keyword over good..bad (merges included), restricted to the paths,
    plus keyword hits elsewhere and path-only commits as lower tiers; ranked best first."""
    repo = open_repo(repo_path)
    good_sha, bad_sha = resolve_rev(repo, good), resolve_rev(repo, bad)
    rng = f"{good_sha}..{bad_sha}"
    shas: dict[str, None] = {}

    def log(*args: str) -> list[str]:
        out = repo.git.log("--format=%H", "--full-history", *args)
        return [line for line in out.splitlines() if line]

    for kw in keywords:
        # tier 1: the rule, keyword and paths; tier 2: keyword anywhere (paths may be incomplete)
        if paths:
            shas.update(dict.fromkeys(log(*_git_grep_args(kw), rng, "--", *paths)))
        shas.update(dict.fromkeys(log(*_git_grep_args(kw), rng)))
    if paths:
        # tier 3: commits touching the paths whose message names no keyword (the bug may be silent)
        shas.update(dict.fromkeys(log("--no-merges", "-n", "200", rng, "--", *paths)))

    commits = [score_commit(repo, repo.commit(sha), keywords, paths) for sha in shas]
    commits.sort(key=lambda c: (-c.score, c.subject))
    return commits[:limit]


def merge_differential(stable: list[Commit], upstream: list[Commit]) -> list[Commit]:
    """One ranked list for a differential: upstream commits that the stable/distro range carries
    as a backport first (the culprit by intersection), each followed by its backports, then the
    rest of both ranges by score."""
    for c in stable:
        c.range = c.range or "stable"
    for c in upstream:
        c.range = c.range or "upstream"
    by_sha = {c.sha: c for c in upstream}

    def lookup(sha: str | None) -> Commit | None:
        if not sha:
            return None
        if sha in by_sha:
            return by_sha[sha]
        matches = [c for s, c in by_sha.items() if s.startswith(sha) or sha.startswith(s)]
        return matches[0] if len(matches) == 1 else None

    both: dict[str, list[Commit]] = {}
    for s in stable:
        u = lookup(s.upstream)
        if u is not None:
            s.upstream = u.sha
            both.setdefault(u.sha, []).append(s)
    head: list[Commit] = []
    for sha in sorted(both, key=lambda k: -by_sha[k].score):
        u = by_sha[sha]
        u.score += W_BOTH
        u.backports = [s.sha for s in both[sha]]
        u.reasons.insert(0, "in both ranges: carried by the stable/distro range as "
                         + ", ".join(s.sha[:12] for s in both[sha]))
        head.append(u)
        for s in both[sha]:
            s.score += W_BOTH
            s.reasons.insert(0, f"in both ranges: backport of {u.sha[:12]}")
            head.append(s)
    seen = {id(c) for c in head}
    rest = [c for c in upstream + stable if id(c) not in seen]
    rest.sort(key=lambda c: (-c.score, c.subject))
    return head + rest


# --------------------------------------------------------------------------- without a clone

_SHORTLOG_AUTHOR = re.compile(r"^(?P<author>\S.*?) \((?P<count>\d+)\):\s*$")


@dataclass(frozen=True)
class ShortlogEntry:
    """One subject of a `git shortlog` (a mainline build's CHANGES), with its author and build."""

    build: str  # the build whose CHANGES listed it: "5.7-rc5"
    author: str
    subject: str


def parse_shortlog(text: str, build: str) -> list[ShortlogEntry]:
    """`git shortlog A..B` output: "Author (N):" then the subjects indented, blank lines between."""
    entries: list[ShortlogEntry] = []
    author = ""
    for line in (text or "").splitlines():
        m = _SHORTLOG_AUTHOR.match(line)
        if m:
            author = m.group("author")
        elif line.strip() and line[:1].isspace() and author:
            entries.append(ShortlogEntry(build, author, line.strip()))
    return entries


def _path_words(paths: Iterable[str]) -> dict[str, str]:
    """Words a subject uses for a path: the file's stem and its directory (net/ipv4/ip_tunnel.c ->
    ip_tunnel, ipv4). Subjects name their subsystem by such prefixes ("ip_tunnel: ...")."""
    words: dict[str, str] = {}
    for path in paths:
        parts = [p for p in path.rstrip("/").split("/") if p]
        if not parts:
            continue
        stem = parts[-1].rsplit(".", 1)[0]
        for word in (stem, *parts[-2:-1]):
            if len(word) > 2 and word not in ("net", "include", "linux", "drivers", "core"):
                words.setdefault(word.lower(), path)
    return words


def score_subject(entry: ShortlogEntry, keywords: list[str], paths: list[str]) -> Commit:
    """The keyword and path rules of score_commit, on a subject alone (no body, files or Fixes:)."""
    c = Commit(sha="", subject=entry.subject)
    for kw in keywords:
        if _hits(kw, entry.subject):
            c.score += W_SUBJECT
            c.reasons.append(f"keyword {kw!r} in subject")
    prefix = entry.subject.split(":", 1)[0].lower() if ":" in entry.subject else ""
    named = [path for word, path in _path_words(paths).items()
             if re.search(r"(?<![a-z0-9_])" + re.escape(word) + r"(?![a-z0-9_])", prefix)]
    if named:
        c.score += W_PATH
        c.reasons.append(f"subject prefix {prefix!r} names {named[0]}")
    if entry.subject.startswith(("Merge ", "Linux ")):
        c.score -= P_MERGE
        c.reasons.append("merge or release commit (demoted)")
    if re.match(r"^(docs?|Documentation)\b", entry.subject, re.I):
        c.score -= P_DOCS
        c.reasons.append("documentation (demoted)")
    arch = re.match(r"^(?:arch/)?([a-z0-9]+)[:/]", entry.subject)
    if arch and arch.group(1) in OTHER_ARCHES:
        c.score -= P_ARCH
        c.reasons.append(f"other architecture: {arch.group(1)} (demoted)")
    return c


def rank_changes(changes: dict[str, str], keywords: list[str], paths: list[str], *,
                 limit: int = 50) -> list[tuple[Commit, ShortlogEntry]]:
    """Rank the subjects of several builds' CHANGES (build -> text): a first answer for users of
    prebuilt kernels who have no Linux clone. Only subjects that score are kept."""
    scored = [(score_subject(e, keywords, paths), e)
              for build, text in changes.items() for e in parse_shortlog(text, build)]
    scored = [item for item in scored if item[0].score > 0]
    scored.sort(key=lambda item: (-item[0].score, item[0].subject))
    return scored[:limit]
