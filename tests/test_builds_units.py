"""Whole-kernel builds without a compiler: kconfig requirements, the guest fragment, source trees,
the build's name from its inputs, reversible patches, and bad input (issue 13). The real build
and boot are in tests/test_builds_vm.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from orchestrator.adapters import catalog
from orchestrator.adapters.builds import trees
from orchestrator.adapters.builds.kmake import BuildPlan, obj_dir
from orchestrator.app.build import BuildRequest, _patched, check_request, inputs_key
from orchestrator.core.errors import KbisectError
from orchestrator.core.kconfig import (GUEST_OFF, GUEST_OPTIONS, Requirement, config_diff, fragment_text,
                                       guest_fragment, parse_kconfig, unmet)

CONFIG = """\
CONFIG_VETH=m
CONFIG_NET_IPGRE=y
# CONFIG_VXLAN is not set
CONFIG_LOCALVERSION="-kb"
CONFIG_HZ=250
"""


@pytest.mark.parametrize("text, config, met", [
    ("CONFIG_VETH", CONFIG, True),  # a module will do
    ("CONFIG_NET_IPGRE", CONFIG, True),
    ("CONFIG_VETH=y", CONFIG, False),  # must be built in
    ("CONFIG_VETH=m", CONFIG, True),
    ("CONFIG_VXLAN", CONFIG, False),  # "is not set" is n
    ("CONFIG_VXLAN=n", CONFIG, True),
    ("CONFIG_MISSING", CONFIG, False),
    ("CONFIG_HZ=250", CONFIG, True),
    ("CONFIG_HZ=1000", CONFIG, False),
    ("CONFIG_LOCALVERSION=-kb", CONFIG, True),  # quotes are the .config's, not the value's
])
def test_requirements_read_the_resolved_config(text, config, met) -> None:
    assert Requirement.parse(text).met_by(parse_kconfig(config)) is met


@pytest.mark.parametrize("bad", ["VETH", "CONFIG_", "config_veth", "CONFIG_VETH = y", ""])
def test_a_malformed_requirement_is_refused(bad) -> None:
    with pytest.raises(ValueError):
        Requirement.parse(bad)


def test_unmet_names_what_it_has() -> None:
    got = unmet([Requirement.parse("CONFIG_VETH=y"), Requirement.parse("CONFIG_VXLAN")], parse_kconfig(CONFIG))
    assert got == ["CONFIG_VETH=y (have m)", "CONFIG_VXLAN (have n)"]


def test_the_guest_fragment_keeps_guest_options_built_in_and_turns_hardware_off() -> None:
    frag = guest_fragment([Requirement.parse("CONFIG_VIRTIO_NET"), Requirement.parse("CONFIG_VXLAN"),
                           Requirement.parse("CONFIG_SOUND=y")])
    assert frag["CONFIG_VIRTIO_NET"] == "y"  # the guest's need wins over "a module will do"
    assert frag["CONFIG_VXLAN"] == "m"
    assert frag["CONFIG_SOUND"] == "y"  # a reproducer's requirement wins over what the guest turns off
    assert frag["CONFIG_DRM"] == "n" and all(frag[k] == v for k, v in GUEST_OPTIONS.items())
    text = fragment_text(frag)
    assert "# CONFIG_DRM is not set\n" in text and "CONFIG_VXLAN=m\n" in text
    assert set(GUEST_OFF).isdisjoint(GUEST_OPTIONS)


def test_btf_brings_the_debug_info_choice_it_needs() -> None:
    frag = guest_fragment([Requirement.parse("CONFIG_DEBUG_INFO_BTF=y")])
    assert frag["CONFIG_DEBUG_INFO_BTF"] == "y" and frag["CONFIG_DEBUG_INFO_NONE"] == "n"
    assert frag["CONFIG_DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT"] == "y"
    assert "CONFIG_DEBUG_INFO_NONE" not in guest_fragment([Requirement.parse("CONFIG_VXLAN")])


def test_every_catalog_reproducer_declares_what_a_build_needs() -> None:
    for bug in catalog.all_bugs():
        names = {r.name for r in bug.kconfig}
        assert "CONFIG_VETH" in names, bug.id  # every reproducer joins namespaces with a veth pair
    gro = catalog.resolve("gro-inner-th")
    assert Requirement.parse("CONFIG_DEBUG_INFO_BTF=y") in gro.kconfig  # btf_offsets.py reads BTF


def test_config_diff_lists_changed_options() -> None:
    old, new = parse_kconfig(CONFIG), parse_kconfig(CONFIG.replace("CONFIG_VETH=m", "CONFIG_VETH=y")
                                                    + "CONFIG_VXLAN=m\n")
    assert config_diff(old, new) == [("CONFIG_VETH", "m", "y"), ("CONFIG_VXLAN", "n", "m")]


def _tree(root: Path, version=("6", "1", "190")) -> Path:
    root.mkdir(parents=True)
    (root / "Makefile").write_text(f"# SPDX\nVERSION = {version[0]}\nPATCHLEVEL = {version[1]}\n"
                                   f"SUBLEVEL = {version[2]}\nEXTRAVERSION =\nNAME = Curry Ramen\n")
    (root / "Kconfig").write_text("mainmenu \"Linux\"\n")
    (root / "net").mkdir()
    (root / "net" / "a.c").write_text("int a(void) { return 1; }\n")
    return root


def test_a_source_tree_is_known_by_its_makefile(tmp_path) -> None:
    tree = trees.from_dir(_tree(tmp_path / "linux"))
    assert (tree.version, tree.origin["kind"]) == ("6.1.190", "tree")
    with pytest.raises(KbisectError, match="not a Linux source tree"):
        trees.from_dir(tmp_path)


def test_a_build_is_named_by_its_inputs(tmp_path) -> None:
    tree = trees.from_dir(_tree(tmp_path / "linux"))
    patch = tmp_path / "p.patch"
    patch.write_text("x")
    base = BuildPlan(tree, "guest")
    same = BuildPlan(tree, "guest")
    other_config = BuildPlan(tree, "guest", requirements=[Requirement.parse("CONFIG_VXLAN")])
    patched = BuildPlan(tree, "guest", patches=[patch])
    assert inputs_key(base) == inputs_key(same) != inputs_key(other_config) != inputs_key(patched)
    # the build directory follows tree and config, not patches: a revert rebuilds incrementally
    assert obj_dir(base) == obj_dir(patched) != obj_dir(other_config)


def test_patches_are_applied_for_the_build_and_reversed_after(tmp_path) -> None:
    root = _tree(tmp_path / "linux")
    patch = tmp_path / "revert.patch"
    patch.write_text("--- a/net/a.c\n+++ b/net/a.c\n@@ -1 +1 @@\n-int a(void) { return 1; }\n"
                     "+int a(void) { return 2; }\n")
    before = (root / "net" / "a.c").read_text()
    from orchestrator.adapters.progress import StepLog

    with pytest.raises(RuntimeError):
        with _patched(root, [patch], StepLog()):
            assert "return 2" in (root / "net" / "a.c").read_text()
            raise RuntimeError("the build failed")
    assert (root / "net" / "a.c").read_text() == before  # reversed on the failure too


def test_a_git_revision_is_checked_out_in_kbisects_own_worktree(tmp_path, kbisect_home) -> None:
    repo = _tree(tmp_path / "clone")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@e"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "base"], check=True)
    (repo / "net" / "a.c").write_text("int a(void) { return 3; }\n")
    subprocess.run(git + ["commit", "-qam", "net: change a"], check=True)
    from orchestrator.adapters.progress import StepLog

    first = trees.from_git(repo, "HEAD~1", StepLog())
    assert "return 1" in (first.path / "net" / "a.c").read_text()
    assert first.path != repo and str(first.path).startswith(str(kbisect_home))
    second = trees.from_git(repo, "HEAD", StepLog())
    assert second.path == first.path and second.identity == first.identity  # one build directory
    assert second.origin["subject"] == "net: change a" and "return 3" in (second.path / "net" / "a.c").read_text()
    with pytest.raises(KbisectError, match="--rev nope"):
        trees.from_git(repo, "nope", StepLog())


@pytest.mark.parametrize("req, says", [
    (BuildRequest(), "exactly one source"),
    (BuildRequest(tree=Path("."), linux_source="6.1"), "exactly one source"),
    (BuildRequest(repo=Path(".")), "--repo needs --rev"),
    (BuildRequest(linux_source="6.1", config="base"), "--config base needs --base"),
    (BuildRequest(linux_source="6.1", config="/no/such/config"), "not guest, base, or a readable"),
    (BuildRequest(linux_source="6.1", patches=[Path("/no/such.patch")]), "--patch"),
])
def test_bad_requests_are_one_line(req, says) -> None:
    with pytest.raises(KbisectError, match=says.replace("-", r"\-")):
        check_request(req)


def test_a_bases_own_source_is_that_version_or_an_error(kbisect_home):
    """A whole-kernel control is built from its base's own source: the nearest linux-source apt
    has (what a module variant's headers may use) is refused, before anything is downloaded."""
    from orchestrator.adapters.progress import StepLog

    class Packages:
        downloaded: list[str] = []

        def pick(self, package: str, wanted: str) -> str:
            return "6.1.192-3"

        def download(self, package, version, progress):
            self.downloaded.append(version)
            raise AssertionError("downloaded")

    packages = Packages()
    with pytest.raises(KbisectError, match=r"linux-source-6.1 6.1.190-1 is not downloadable \(nearest: 6.1.192-3\)"):
        trees.debian_repo("6.1", packages, StepLog(), "6.1.190-1", exact=True)
    assert packages.downloaded == []
