"""Git narrowing over small synthetic histories built here (never a real kernel tree in CI)."""

from __future__ import annotations

import json

import pytest

from orchestrator.core.errors import KbisectError
from orchestrator.adapters.gitlog import find_candidates, map_upstream, merge_differential
from tests.gitlog_history import CULPRIT_SUBJECT, GRETAP_KEYWORDS, GRETAP_PATHS, build


@pytest.fixture(scope="module")
def hist(tmp_path_factory):
    return build(tmp_path_factory.mktemp("linux"))


@pytest.mark.parametrize("message,expected", [
    ("x\n\ncommit b723748750ece7d844cdf2f52c01d37f83387208 upstream.\n", "b723748750ece7d844cdf2f52c01d37f83387208"),
    ("x\n\n[ Upstream commit b723748750ec ]\n", "b723748750ec"),
    ("x\n(cherry picked from commit B723748750ECE7D8)\nSigned-off-by: a", "b723748750ece7d8"),
    ("x\n(backported from commit b723748750ece7d844 linux-next)\n", "b723748750ece7d844"),
    ("tunnel: fix\n\nSigned-off-by: someone\n", None),
])
def test_map_upstream_conventions(message, expected) -> None:
    assert map_upstream(message) == expected


def test_mainline_range_ranks_the_culprit_first_and_demotes_decoys(hist) -> None:
    cands = find_candidates(hist.path, "v5.4", "v5.7", GRETAP_KEYWORDS, GRETAP_PATHS)
    assert cands[0].sha == hist.culprit
    assert cands[0].subject == CULPRIT_SUBJECT
    assert any("Fixes:" in r and "relevant code" in r for r in cands[0].reasons)
    by_sha = {c.sha: c for c in cands}
    # every decoy was found (they all mention the words) but ranks below the culprit, demoted
    for decoy, why in ((hist.merge, "merge commit"), (hist.docs, "documentation only"),
                       (hist.arm64, "other architecture")):
        assert decoy in by_sha, why
        assert by_sha[decoy].score < cands[0].score
        assert any(why in r for r in by_sha[decoy].reasons), by_sha[decoy].reasons
    assert hist.unrelated not in by_sha  # neither a keyword nor a relevant path
    # the silent ip_tunnel change (path only, no keyword) is listed but below keyword hits
    silent = [c for c in cands if c.subject.startswith("ip_tunnel: use dev_sw_netstats")]
    assert silent and silent[0].score < cands[0].score
    assert all(c.upstream is None for c in cands)


def test_stable_range_maps_the_backport_to_the_upstream_culprit(hist) -> None:
    cands = find_candidates(hist.path, "v5.4.40", "v5.4.41", GRETAP_KEYWORDS, GRETAP_PATHS)
    assert cands[0].sha == hist.backport
    assert cands[0].upstream == hist.culprit
    assert any("backport of upstream" in r for r in cands[0].reasons)


def test_differential_intersection_ranks_first(hist) -> None:
    stable = find_candidates(hist.path, "v5.4.40", "v5.4.41", GRETAP_KEYWORDS, GRETAP_PATHS)
    upstream = find_candidates(hist.path, "v5.4", "v5.7", GRETAP_KEYWORDS, GRETAP_PATHS)
    merged = merge_differential(stable, upstream)
    assert merged[0].sha == hist.culprit and merged[0].range == "upstream"
    assert merged[0].backports == [hist.backport]
    assert merged[1].sha == hist.backport and merged[1].upstream == hist.culprit
    assert "in both ranges" in merged[0].reasons[0]
    assert all(c.score < merged[1].score for c in merged[2:])


def test_bad_repo_and_bad_revision_are_one_line_errors(tmp_path, hist) -> None:
    with pytest.raises(KbisectError, match="not a git repository"):
        find_candidates(tmp_path, "a", "b", ["x"], [])
    with pytest.raises(KbisectError, match="unknown revision 'v9.9'"):
        find_candidates(hist.path, "v5.4", "v9.9", ["x"], [])


def test_candidates_command_json(hist, kbisect_home) -> None:
    """The catalog's real gretap-ecn keywords and paths, on the synthetic history."""
    from click.testing import CliRunner

    from orchestrator.cli import cli

    result = CliRunner().invoke(cli, ["candidates", "--repo", str(hist.path), "--good", "v5.4.40",
                                      "--bad", "v5.4.41", "--bug", "gretap-ecn", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    top = data["candidates"][0]
    assert set(top) >= {"sha", "subject", "score", "reasons", "upstream"}
    assert top["sha"] == hist.backport and top["upstream"] == hist.culprit
    assert top["subject"] == CULPRIT_SUBJECT
    # with the upstream range given too, the intersection comes first
    result = CliRunner().invoke(cli, ["candidates", "--repo", str(hist.path), "--good", "v5.4.40",
                                      "--bad", "v5.4.41", "--upstream-good", "v5.4", "--upstream-bad",
                                      "v5.7", "--bug", "gretap-ecn", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["candidates"][0]["sha"] == hist.culprit
    assert data["candidates"][1]["upstream"] == hist.culprit


def test_candidates_resolve_mainline_versions_through_commit_files(hist, kbisect_home, tmp_path) -> None:
    """With --mirror, `--good 5.4.40` is the commit the 5.4.40 build's COMMIT names, not a guessed tag
    (the clone has no tag called 5.4.40, so a guess would fail)."""
    import git
    from click.testing import CliRunner

    from orchestrator.cli import cli
    from tests.mainline_mirror import Build, Release, abi, placeholder_debs, write_release, write_top
    from tests.test_mirror import serve

    repo = git.Repo(hist.path)
    root = tmp_path / "www" / "mainline"
    rels = []
    for label, (major, minor, patch) in (("5.4.40", (5, 4, 40)), ("5.4.41", (5, 4, 41))):
        stamp = "202005141133"
        rels.append(Release(f"v{label}", [Build(stamp, placeholder_debs(abi(major, minor, patch, None), stamp))],
                            commit=(f"v{label}", repo.commit(f"v{label}").hexsha)))
        write_release(root, rels[-1])
    write_top(root, rels)
    args = ["candidates", "--repo", str(hist.path), "--good", "5.4.40", "--bad", "5.4.41", "--bug", "gretap-ecn",
            "--json"]
    guessed = CliRunner().invoke(cli, args)
    assert isinstance(guessed.exception, KbisectError) and "unknown revision '5.4.40'" in str(guessed.exception)
    with serve(tmp_path / "www") as url:
        result = CliRunner().invoke(cli, [*args, "--mirror", url])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["candidates"][0]["sha"] == hist.backport


def test_shortlog_subjects_are_scored_by_the_same_rules() -> None:
    from orchestrator.adapters.gitlog import parse_shortlog, rank_changes

    text = ("Alice Example (2):\n      tunnel: Propagate ECT(1) when decapsulating as recommended by RFC6040\n"
            "      docs: describe ECN\n\nBob Example (1):\n      ip_tunnel: fix a silent thing\n\n"
            "Carol Example (1):\n      arm64: ECN for nobody\n")
    entries = parse_shortlog(text, "5.7-rc5")
    assert [(e.author, e.build) for e in entries][:1] == [("Alice Example", "5.7-rc5")] and len(entries) == 4
    ranked = rank_changes({"5.7-rc5": text}, GRETAP_KEYWORDS, GRETAP_PATHS)
    subjects = [c.subject for c, _ in ranked]
    assert subjects[0] == CULPRIT_SUBJECT
    # a subsystem prefix naming a bug path scores without any keyword; docs and other arches rank below
    assert "ip_tunnel: fix a silent thing" in subjects
    assert subjects.index("ip_tunnel: fix a silent thing") < subjects.index("docs: describe ECN") \
        if "docs: describe ECN" in subjects else True
    assert "arm64: ECN for nobody" not in subjects[:2]
