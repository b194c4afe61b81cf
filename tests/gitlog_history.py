"""A small synthetic kernel-like git history for the git-narrowing tests (never a real tree in CI).

Mainline: v5.4 → decoys (docs-only, arm64, unrelated, a silent ip_tunnel change) and the
real-style culprit on a side branch merged by a merge commit → v5.7. Stable: v5.4 → an unrelated
fix → v5.4.40 → the backport "commit <culprit> upstream." → v5.4.41.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import git

CULPRIT_SUBJECT = "tunnel: Propagate ECT(1) when decapsulating as recommended by RFC6040"
GRETAP_KEYWORDS = ["ECT", "ECN", "RFC6040", "decapsulat"]
GRETAP_PATHS = ["net/ipv4/ip_tunnel.c", "net/ipv4/ip_tunnel_core.c", "net/ipv4/ip_gre.c",
                "include/net/inet_ecn.h"]


@dataclass
class History:
    path: Path
    culprit: str
    backport: str
    fixed_target: str
    merge: str
    docs: str
    arm64: str
    unrelated: str


def _commit(repo: git.Repo, message: str, changes: dict[str, str], when: int) -> str:
    for rel, text in changes.items():
        full = Path(repo.working_dir) / rel
        full.parent.mkdir(parents=True, exist_ok=True)
        with open(full, "a") as fh:
            fh.write(text + "\n")
        repo.index.add([rel])
    date = f"{1580000000 + when * 3600} +0000"
    actor = git.Actor("Dev", "dev@example.invalid")
    return repo.index.commit(message, author=actor, committer=actor, author_date=date,
                             commit_date=date).hexsha


def build(root: Path) -> History:
    """Create the history under `root` and return the interesting shas."""
    os.environ.setdefault("GIT_CONFIG_NOSYSTEM", "1")
    repo = git.Repo.init(root, initial_branch="master")
    t = iter(range(1, 1000))
    _commit(repo, "Initial import", {p: "/* base */" for p in GRETAP_PATHS + [
        "Documentation/networking/ip-sysctl.rst", "arch/arm64/net/bpf_jit_comp.c",
        "drivers/net/dummy.c", "arch/x86/net/bpf_jit_comp.c"]}, next(t))
    fixed_target = _commit(repo, "tunnel: drop packet if ECN present with not-ECT\n\n"
                           "RFC 6040 says to drop CE over not-ECT.\n",
                           {"include/net/inet_ecn.h": "int drop;"}, next(t))
    repo.create_tag("v5.4")

    # stable branch, part 1
    stable = repo.create_head("linux-5.4.y", "v5.4")
    master = repo.heads.master
    stable.checkout()
    _commit(repo, "dummy: fix a leak on unregister\n\ncommit 1111111111111111111111111111111111111111 upstream.\n",
            {"drivers/net/dummy.c": "leak fix"}, next(t))
    repo.create_tag("v5.4.40")

    master.checkout()
    docs = _commit(repo, "Documentation: describe ECN and ECT(1) handling for tunnels\n\n"
                   "Explain RFC6040 decapsulation in ip-sysctl.rst.\n",
                   {"Documentation/networking/ip-sysctl.rst": "ECN docs"}, next(t))
    arm64 = _commit(repo, "arm64: bpf: preserve ECN bits (ECT) in JIT for tunnel decapsulation\n\n"
                    "Only arm64 is affected.\n", {"arch/arm64/net/bpf_jit_comp.c": "ecn"}, next(t))
    unrelated = _commit(repo, "dummy: add carrier toggling\n\nNothing to do with tunnels.\n",
                        {"drivers/net/dummy.c": "carrier"}, next(t))
    _commit(repo, "ip_tunnel: use dev_sw_netstats_rx_add\n\nConvert to the new helper.\n",
            {"net/ipv4/ip_tunnel.c": "stats"}, next(t))
    side = repo.create_head("tunnel-ecn", master.commit)
    side.checkout()
    culprit = _commit(repo, CULPRIT_SUBJECT + "\n\n"
                      "RFC 6040 recommends propagating an ECT(1) mark from an outer tunnel header\n"
                      "to the inner header if that inner header is already marked as ECT(0).\n\n"
                      f"Fixes: {fixed_target[:12]} (\"tunnel: drop packet if ECN present with not-ECT\")\n"
                      "Signed-off-by: Dev <dev@example.invalid>\n",
                      {"include/net/inet_ecn.h": "ect1", "net/ipv4/ip_tunnel_core.c": "ect1"}, next(t))
    master.checkout()
    _commit(repo, "net: core: unrelated cleanup\n", {"drivers/net/dummy.c": "cleanup"}, next(t))
    repo.create_tag("v5.7-rc3")  # the upstream last good of the replayed history (K = 4)
    base = repo.head.commit
    repo.git.merge("--no-ff", "--no-edit", "-m",
                   "Merge branch 'tunnel-ecn'\n\nToke says:\nThis series makes tunnels propagate ECT(1) on "
                   "decapsulation (RFC6040).\n", "tunnel-ecn",
                   env={"GIT_AUTHOR_DATE": "1590000000 +0000", "GIT_COMMITTER_DATE": "1590000000 +0000",
                        "GIT_AUTHOR_NAME": "Dev", "GIT_AUTHOR_EMAIL": "dev@example.invalid",
                        "GIT_COMMITTER_NAME": "Dev", "GIT_COMMITTER_EMAIL": "dev@example.invalid"})
    merge = repo.head.commit.hexsha
    assert repo.head.commit.parents[0] == base
    repo.create_tag("v5.7-rc4")
    repo.create_tag("v5.7")

    stable.checkout()
    backport = _commit(repo, CULPRIT_SUBJECT + "\n\n"
                       f"commit {culprit} upstream.\n\n"
                       "RFC 6040 recommends propagating an ECT(1) mark from an outer tunnel header\n"
                       "to the inner header if that inner header is already marked as ECT(0).\n\n"
                       f"Fixes: {fixed_target[:12]} (\"tunnel: drop packet if ECN present with not-ECT\")\n"
                       "Signed-off-by: Greg <greg@example.invalid>\n",
                       {"include/net/inet_ecn.h": "ect1", "net/ipv4/ip_tunnel_core.c": "ect1"}, next(t))
    _commit(repo, "Linux 5.4.41\n", {"drivers/net/dummy.c": "5.4.41"}, next(t))
    repo.create_tag("v5.4.41")
    master.checkout()
    return History(Path(root), culprit, backport, fixed_target, merge, docs, arm64, unrelated)
