"""Whole-kernel builds without a compiler: kconfig requirements, the guest fragment, source trees,
the build's name from its inputs, reversible patches, and bad input (issue 13). The real build
and boot are in tests/test_builds_vm.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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


def test_an_override_replaces_a_requirement_and_keeps_what_it_implied(tmp_path) -> None:
    """`kernels build --kconfig CONFIG_DEBUG_INFO_BTF=n` over the catalog (issue 19): BTF is off
    and checked off, and the DWARF debug info gro-inner-th's BTF requirement brought stays, so
    every object is compiled with the same flags (before: no way to say it; the catalog's config
    always had BTF, and gro-inner-th's config alone has no debug info at all)."""
    catalog_reqs = sorted({r for bug in catalog.all_bugs() for r in bug.kconfig}, key=str)
    off = Requirement.parse("CONFIG_DEBUG_INFO_BTF=n")
    tree = trees.from_dir(_tree(tmp_path / "linux"))
    with_btf = BuildPlan(tree, "guest", requirements=catalog_reqs)
    without = BuildPlan(tree, "guest", requirements=catalog_reqs, overrides=[off])
    frag = without.fragment()
    assert frag["CONFIG_DEBUG_INFO_BTF"] == "n"
    assert {k: v for k, v in frag.items() if k != "CONFIG_DEBUG_INFO_BTF"} == \
        {k: v for k, v in with_btf.fragment().items() if k != "CONFIG_DEBUG_INFO_BTF"}
    assert frag["CONFIG_DEBUG_INFO_NONE"] == "n" and frag["CONFIG_DEBUG_INFO_DWARF_TOOLCHAIN_DEFAULT"] == "y"
    checked = without.checked()
    assert off in checked and Requirement.parse("CONFIG_DEBUG_INFO_BTF=y") not in checked
    assert len(checked) == len(with_btf.checked())
    # another config: another build directory and another name
    assert obj_dir(without) != obj_dir(with_btf) and inputs_key(without) != inputs_key(with_btf)


def test_an_override_is_appended_to_a_given_config(tmp_path) -> None:
    tree = trees.from_dir(_tree(tmp_path / "linux"))
    plain = BuildPlan(tree, "file", CONFIG)
    plan = BuildPlan(tree, "file", CONFIG, [Requirement.parse("CONFIG_VETH")],
                     overrides=[Requirement.parse("CONFIG_VETH=n")])
    assert plain.config_text() == CONFIG
    assert parse_kconfig(plan.config_text())["CONFIG_HZ"] == "250"
    assert plan.config_text().endswith("# CONFIG_VETH is not set\n")
    assert plan.checked() == [Requirement.parse("CONFIG_VETH=n")]
    assert plan.config_key() != plain.config_key()


@pytest.mark.parametrize("req, says", [
    (BuildRequest(linux_source="6.1", kconfig=[Requirement.parse("CONFIG_VIRTIO_BLK=n")]),
     "--kconfig CONFIG_VIRTIO_BLK=n: kbisect's guest needs CONFIG_VIRTIO_BLK=y"),
    (BuildRequest(linux_source="6.1", kconfig=[Requirement.parse("CONFIG_VIRTIO_BLK")]),
     "guest needs CONFIG_VIRTIO_BLK=y"),  # a module would be undone by the fragment
])
def test_an_override_may_not_take_the_guests_needs(req, says) -> None:
    with pytest.raises(KbisectError, match=says):
        check_request(req)
    check_request(BuildRequest(linux_source="6.1", kconfig=[Requirement.parse("CONFIG_VIRTIO_BLK=y")]))


def test_a_malformed_override_is_one_line(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "kernels", "build", "--linux-source", "6.1",
                           "--kconfig", "DEBUG_INFO_BTF=n"], cwd=Path(__file__).resolve().parent.parent,
                          env={**os.environ, "KBISECT_HOME": str(tmp_path)}, capture_output=True, text=True)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["kbisect: error: --kconfig: 'DEBUG_INFO_BTF=n' is not CONFIG_NAME "
                                                "or CONFIG_NAME=VALUE"]


@pytest.mark.skipif(shutil.which("ccache") is None or shutil.which("gcc") is None, reason="no ccache/gcc")
def test_two_build_directories_share_ccache_entries(tmp_path, kbisect_home) -> None:
    """The same source compiled with -g in two build directories whose generated config header
    differs in an option the file does not use (the catalog's config and the same without BTF)
    is served from the cache the second time. Before: ccache hashed the working directory (its
    default with -g), so every object of the second build directory was compiled again."""
    from orchestrator.adapters.builds import kmake

    src = tmp_path / "src" / "t.c"
    src.parent.mkdir()
    src.write_text('#include <generated/autoconf.h>\nint f(void) { return CONFIG_HZ; }\n')
    env = kmake._env()
    for obj, extra in (("obj-a", "#define CONFIG_DEBUG_INFO_BTF 1\n"), ("obj-b", "")):
        gen = tmp_path / obj / "include" / "generated"
        gen.mkdir(parents=True)
        (gen / "autoconf.h").write_text("#define CONFIG_HZ 250\n" + extra)
        subprocess.run(["ccache", "gcc", "-g", "-I./include", "-c", str(src), "-o", "t.o"], cwd=tmp_path / obj,
                       env=env, check=True)
    stats = subprocess.run(["ccache", "--print-stats"], env=env, capture_output=True, text=True, check=True).stdout
    counts = dict(line.split("\t", 1) for line in stats.splitlines() if "\t" in line)
    assert (counts.get("preprocessed_cache_hit"), counts.get("cache_miss")) == ("1", "1"), stats
