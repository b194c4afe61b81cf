"""Variant specs (`SOURCE:VERSION+NAME`) to kernels: module rebuilds, and whole-kernel controls.

A positive control whose fix is in a module is the stock kernel with that module rebuilt
(adapters.variants). A fix in built-in code (gro-inner-th's tcp/udp GRO hooks, rp-filter-lo's
fib_frontend.c) cannot be reverted that way, so a control the catalog marks `build: kernel` is
a whole kernel built from the base's own Debian source (linux-source-X.Y at the base's exact
package version) with kbisect's guest config and the revert applied. It differs from the stock
kernel in its config too, so `+guest-build` names the same build without the patch: the proof
table probes it as well, and a BAD that only the config caused cannot pass for the fix's.

The build is a `local:` kernel (app.build); a small pointer file per variant spec remembers
which one, with the patch's sha256, so serving it again costs no apt or git work, and an
edited patch builds anew (as a module variant does).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from orchestrator.adapters import cache, catalog, config, variants
from orchestrator.adapters.fsutil import atomic_write
from orchestrator.adapters.kernel import UnpackedKernel
from orchestrator.adapters.variants.packages import debian_package_version
from orchestrator.app.build import BuildRequest, build_kernel
from orchestrator.app.kernels import fetch_kernel
from orchestrator.core.bug import GUEST_BUILD, Bug, Control
from orchestrator.core.errors import KbisectError
from orchestrator.core.versions import KernelRef, parse_spec

def whole_kernel_control(name: str, bugs: list[Bug]) -> tuple[Bug, Control] | None:
    """The catalog's `build: kernel` control named `name`, with its bug; None if there is none."""
    for bug in bugs:
        for ctl in bug.controls:
            if ctl.name == name and ctl.build == "kernel":
                return bug, ctl
    return None


@dataclass
class ControlBuilder:
    """`get(spec)` for variant specs; every way out to the world is a collaborator."""

    catalog: Callable[[], list[Bug]] = field(default=catalog.all_bugs)
    build: Callable[[BuildRequest], UnpackedKernel] = field(default=build_kernel)
    fetch: Callable[[str], UnpackedKernel] = field(default=fetch_kernel)
    module_variant: Callable[[str], UnpackedKernel] = field(default=variants.build_on_demand)

    def get(self, spec: str) -> UnpackedKernel:
        parsed = parse_spec(spec)
        if not parsed.variant:
            raise KbisectError(f"{spec!r} names no variant (+NAME)")
        bugs = self.catalog()
        if parsed.variant == GUEST_BUILD:
            return self.whole_kernel(parsed, None, bugs)
        found = whole_kernel_control(parsed.variant, bugs)
        if found is None:
            return self.module_variant(spec)
        bug, ctl = found
        return self.whole_kernel(parsed, bug.dir / ctl.patch, bugs)

    def whole_kernel(self, spec: KernelRef, patch: Path | None, bugs: list[Bug]) -> UnpackedKernel:
        """`spec`'s base rebuilt from its own Debian source with the guest config (meeting every
        catalog reproducer's kconfig, so all whole-kernel controls share one build directory)."""
        base_spec = spec.base_spec
        if base_spec.source != "debian":
            raise KbisectError(f"{spec}: a whole-kernel variant is built from Debian's linux-source, "
                               f"so its base must be a debian kernel, not {base_spec.source!r}")
        patch_sha = cache.sha256_file(patch) if patch else ""
        requirements = sorted({str(r) for bug in bugs for r in bug.kconfig})
        pointer = pointer_path(spec)
        served = self._served(pointer, patch_sha, requirements)
        if served is not None:
            return served
        base = self.fetch(str(base_spec))
        version = debian_package_version(base)
        line = ".".join(version.split(".")[:2])
        kernel = self.build(BuildRequest(linux_source=line, linux_source_version=version, exact_source=True,
                                         config="guest", patches=[patch] if patch else [], bugs=bugs))
        atomic_write(pointer, json.dumps({"spec": str(spec), "local": kernel.spec, "patch_sha256": patch_sha,
                                          "requirements": requirements, "source_version": version}, indent=1) + "\n")
        return kernel

    def _served(self, pointer: Path, patch_sha: str, requirements: list[str]) -> UnpackedKernel | None:
        """The build the pointer names, while it exists and was made from this patch for these
        requirements (a reproducer's edited `kconfig:` is another config: built anew)."""
        try:
            record = json.loads(pointer.read_text())
        except (OSError, ValueError):
            return None
        if record.get("requirements") != requirements:
            return None
        if record.get("patch_sha256") != patch_sha or not re.fullmatch(r"local:[\w.\-]+", record.get("local", "")):
            return None
        try:
            return self.fetch(record["local"])
        except KbisectError:
            return None  # removed by gc or by hand: build it again


def pointer_path(spec: KernelRef) -> Path:
    path = config.subdir("variants") / "whole" / f"{spec.source}-{spec.cache_name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def build_on_demand(spec: str) -> UnpackedKernel:
    """The kernel provider's default for `+NAME` specs."""
    return ControlBuilder().get(spec)
