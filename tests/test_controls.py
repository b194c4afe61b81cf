"""Quick tier (issue 13): variant specs to kernels on fakes. A module control goes to the module
rebuild; a `build: kernel` control (a built-in fix) is a whole kernel from the base's own Debian
source with the guest config and the revert; `+guest-build` is that build without a patch; a
built control is served again from its pointer without building, and an edited patch rebuilds."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from orchestrator.adapters import catalog
from orchestrator.app.build import BuildRequest
from orchestrator.app.controls import ControlBuilder, whole_kernel_control
from orchestrator.core.errors import KbisectError

BASE = "debian:6.1.0-57-cloud-amd64"


class World:
    """A catalog of copies of the real reproducers (their patches editable), fake builds and fetches."""

    def __init__(self, tmp_path: Path) -> None:
        import shutil

        root = tmp_path / "reproducers"
        shutil.copytree(catalog.resolve("rp-filter-lo").dir, root / "rp-filter-lo")
        shutil.copytree(catalog.resolve("gretap-ecn").dir, root / "gretap-ecn")
        self.bugs = [catalog.load(root / "rp-filter-lo"), catalog.load(root / "gretap-ecn")]
        self.builds: list[BuildRequest] = []
        self.modules: list[str] = []
        self.installed: set[str] = set()

    def build(self, req: BuildRequest):
        self.builds.append(req)
        name = f"local:6.1.192-guest-{len(self.builds)}"
        self.installed.add(name)
        return SimpleNamespace(spec=name)

    def fetch(self, spec: str):
        if spec == BASE:
            return SimpleNamespace(spec=spec, package_version="6.1.192-3")
        if spec in self.installed:
            return SimpleNamespace(spec=spec)
        raise KbisectError(f"no kernel {spec}")

    def builder(self) -> ControlBuilder:
        return ControlBuilder(catalog=lambda: self.bugs, build=self.build, fetch=self.fetch,
                              module_variant=lambda spec: self.modules.append(spec) or SimpleNamespace(spec=spec))


def test_the_catalog_marks_built_in_fixes_as_whole_kernel_controls():
    bugs = catalog.all_bugs()
    assert whole_kernel_control("revert-66f8209547cc", bugs)[0].id == "rp-filter-lo"
    assert whole_kernel_control("revert-d51c5907e980", bugs)[0].id == "gro-inner-th"
    assert whole_kernel_control("revert-227adfb2b1df", bugs) is None  # ip_tunnel is a module
    # every reproducer now has a positive control: no proof row is left without one
    assert all(bug.controls for bug in bugs)


def test_a_module_control_is_a_module_rebuild(tmp_path, kbisect_home):
    world = World(tmp_path)
    world.builder().get(f"{BASE}+revert-227adfb2b1df")
    assert world.modules == [f"{BASE}+revert-227adfb2b1df"] and not world.builds


def test_a_built_in_control_is_a_whole_kernel_from_the_bases_own_source(tmp_path, kbisect_home):
    world = World(tmp_path)
    kernel = world.builder().get(f"{BASE}+revert-66f8209547cc")
    (req,) = world.builds
    assert (req.linux_source, req.linux_source_version, req.exact_source, req.config) == ("6.1", "6.1.192-3", True,
                                                                                           "guest")
    assert [p.name for p in req.patches] == ["revert-66f8209547cc.patch"]
    assert {b.id for b in req.bugs} == {"rp-filter-lo", "gretap-ecn"}  # the whole catalog's requirements
    assert kernel.spec == "local:6.1.192-guest-1" and not world.modules

    # served again from the pointer: no second build
    assert world.builder().get(f"{BASE}+revert-66f8209547cc").spec == "local:6.1.192-guest-1"
    assert len(world.builds) == 1

    # an edited patch is another kernel
    patch = world.bugs[0].dir / "controls" / "revert-66f8209547cc.patch"
    patch.write_text(patch.read_text() + "\n")
    assert world.builder().get(f"{BASE}+revert-66f8209547cc").spec == "local:6.1.192-guest-2"

    # the build it points to is gone (gc): built again
    world.installed.clear()
    assert world.builder().get(f"{BASE}+revert-66f8209547cc").spec == "local:6.1.192-guest-3"


def test_guest_build_is_the_same_build_without_a_patch(tmp_path, kbisect_home):
    world = World(tmp_path)
    world.builder().get(f"{BASE}+guest-build")
    (req,) = world.builds
    assert req.patches == [] and req.linux_source_version == "6.1.192-3" and req.config == "guest"


def test_a_whole_kernel_variant_needs_a_debian_base(tmp_path, kbisect_home):
    world = World(tmp_path)
    with pytest.raises(KbisectError, match="must be a debian kernel"):
        world.builder().get("mainline:6.1+revert-66f8209547cc")
    assert not world.builds


def test_an_edited_kconfig_requirement_builds_the_control_anew(tmp_path, kbisect_home):
    from orchestrator.core.kconfig import Requirement

    world = World(tmp_path)
    world.builder().get(f"{BASE}+revert-66f8209547cc")
    world.bugs[1].kconfig.append(Requirement.parse("CONFIG_NET_SCH_FQ=m"))
    world.builder().get(f"{BASE}+revert-66f8209547cc")
    assert len(world.builds) == 2
