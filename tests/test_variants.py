"""Patched kernel variants: patch parsing, built-in vs module, refusals, the cache keyed by the
patch's bytes, and one real rebuild.

The quick tests need no network: builds go through a VariantBuilder given fakes for the base
kernel, the package archive, the compiler and the compile steps. The registry tests download
Debian's headers and source for 6.1.0-54-cloud-amd64 (~155 MB, cached in the shared test home)
and rebuild ip_tunnel.ko with 227adfb2b1df reverted, the gretap-ecn positive control.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from orchestrator.adapters import config, sources
from orchestrator.adapters.kernel import UnpackedKernel
from orchestrator.adapters.variants import VariantBuilder, build_variant, variant_dir
from orchestrator.adapters.variants.kbuild import kbuild_for, plan_module
from orchestrator.core.kconfig import parse_kconfig
from orchestrator.adapters.variants.moduletree import (DEPMOD_OUTPUTS, compress_like, copy_tree_hardlinked,
                                                       modinfo_field, run_depmod)
from orchestrator.adapters.variants.packages import DebianPackages, Downloaded, debian_package_version, nearest_version
from orchestrator.adapters.variants.patches import TouchedFile, apply_patch, check_patch_scope, touched_files
from orchestrator.adapters.progress import StepLog
from orchestrator.adapters.variants.steps import Build, leftovers, swap_in
from orchestrator.adapters.variants.toolchain import compiler_mismatch, host_compiler
from orchestrator.app.kernels import KernelProvider
from orchestrator.core import identity
from orchestrator.core.errors import KbisectError, VariantBuildError
from orchestrator.core.versions import KernelRef, parse_spec

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parent.parent
TEST_PATCH = DATA / "revert-227adfb2b1df.patch"
NET_IPV4_MAKEFILE = (DATA / "net-ipv4-Makefile").read_text()
BASE = "debian:6.1.0-54-cloud-amd64"
KVER = "6.1.0-54-cloud-amd64"

GIT_PATCH = """\
From 0000 Mon Sep 17 00:00:00 2001
Subject: [PATCH] two files

---
 drivers/net/veth.c | 2 +-
 net/ipv4/ip_gre.c  | 1 +
 2 files changed, 2 insertions(+), 1 deletion(-)

diff --git a/drivers/net/veth.c b/drivers/net/veth.c
index 1111111..2222222 100644
--- a/drivers/net/veth.c
+++ b/drivers/net/veth.c
@@ -1,3 +1,3 @@
 a
-b
+c
 d
diff --git a/net/ipv4/ip_gre.c b/net/ipv4/ip_gre.c
index 3333333..4444444 100644
--- a/net/ipv4/ip_gre.c
+++ b/net/ipv4/ip_gre.c
@@ -1,2 +1,3 @@
 a
+--- not a header, an added line starting with dashes
 b
"""


# ------------------------------------------------------------------ patch parsing


def test_touched_files_of_the_gretap_revert():
    touched = touched_files(TEST_PATCH.read_text())
    assert [t.path for t in touched] == ["net/ipv4/ip_tunnel.c"]
    assert not touched[0].created and not touched[0].deleted


def test_touched_files_of_a_git_patch_with_two_files():
    assert [t.path for t in touched_files(GIT_PATCH)] == ["drivers/net/veth.c", "net/ipv4/ip_gre.c"]


def test_new_and_deleted_files_are_flagged_and_refused():
    text = "--- /dev/null\n+++ b/net/ipv4/new.c\n@@ -0,0 +1 @@\n+x\n"
    (t,) = touched_files(text)
    assert t.path == "net/ipv4/new.c" and t.created
    with pytest.raises(KbisectError, match="creates net/ipv4/new.c"):
        check_patch_scope([t])


@pytest.mark.parametrize(
    "text, message",
    [
        ("just some text\n", "touches no files"),
        ("--- a/../../etc/passwd\n+++ b/../../etc/passwd\n@@ -1 +1 @@\n-a\n+b\n", "leaves the source tree"),
        ("--- ip_tunnel.c\n+++ ip_tunnel.c\n@@ -1 +1 @@\n-a\n+b\n", "no leading directory"),
        ("diff --git a/x b/x\nGIT binary patch\nliteral 1\n", "binary"),
    ],
)
def test_malformed_patches_are_one_line_errors(text, message):
    with pytest.raises(KbisectError, match=message) as exc:
        touched_files(text)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    "path, message",
    [
        ("include/net/ip_tunnels.h", "header include/net/ip_tunnels.h"),
        ("net/ipv4/Makefile", "changes the build"),
        ("net/ipv4/Kconfig", "changes the build"),
        ("Documentation/networking/ip-sysctl.rst", "not a C or assembler source"),
    ],
)
def test_patch_scope_refusals(path, message):
    with pytest.raises(KbisectError, match=message):
        check_patch_scope([TouchedFile(path)])


# ------------------------------------------------------------------ built-in or module


def test_ip_tunnel_is_a_module_when_config_says_m():
    plan = plan_module("net/ipv4", NET_IPV4_MAKEFILE, "ip_tunnel.c", {"CONFIG_NET_IP_TUNNEL": "m"})
    assert (plan.directory, plan.module, plan.members) == ("net/ipv4", "ip_tunnel", ["ip_tunnel.o"])
    assert plan.condition == "CONFIG_NET_IP_TUNNEL=m"
    assert "obj-m += ip_tunnel.o" in kbuild_for([plan])


def test_ip_tunnel_built_in_is_refused():
    with pytest.raises(KbisectError, match=r"net/ipv4/ip_tunnel.c is built-in code \(CONFIG_NET_IP_TUNNEL=y"):
        plan_module("net/ipv4", NET_IPV4_MAKEFILE, "ip_tunnel.c", {"CONFIG_NET_IP_TUNNEL": "y"})


def test_ip_tunnel_not_configured_is_refused():
    with pytest.raises(KbisectError, match=r"not compiled in this kernel \(CONFIG_NET_IP_TUNNEL=n\)"):
        plan_module("net/ipv4", NET_IPV4_MAKEFILE, "ip_tunnel.c", {})


def test_obj_y_code_is_refused_as_vmlinux():
    # route.o sits in the multi-line obj-y list at the top of net/ipv4/Makefile.
    with pytest.raises(KbisectError, match=r"route.c is built-in code \(obj-y"):
        plan_module("net/ipv4", NET_IPV4_MAKEFILE, "route.c", {"CONFIG_NET_IP_TUNNEL": "m"})
    # ip_tunnel_core.o is on a continuation line of the same obj-y list.
    with pytest.raises(KbisectError, match="built-in"):
        plan_module("net/ipv4", NET_IPV4_MAKEFILE, "ip_tunnel_core.c", {"CONFIG_NET_IP_TUNNEL": "m"})


def test_real_config_decides_ip_gre_module():
    plan = plan_module("net/ipv4", NET_IPV4_MAKEFILE, "ip_gre.c", {"CONFIG_NET_IPGRE": "m"})
    assert plan.module == "ip_gre"


COMPOSITE = """\
# SPDX-License-Identifier: GPL-2.0
obj-$(CONFIG_FOO) += foo.o
obj-y += core.o
foo-y := foo_main.o foo_rx.o \\
	 foo_tx.o
foo-$(CONFIG_FOO_DEBUG) += foo_debug.o
foo-$(CONFIG_FOO_TRACE) += foo_trace.o
ccflags-y += -I$(src)/include
CFLAGS_foo_rx.o := -DRX
CFLAGS_core.o := -DCORE
obj-$(CONFIG_BAR) += bar.o
bar-objs := bar_a.o bar_b.o
"""


def test_composite_module_members_follow_config():
    cfg = {"CONFIG_FOO": "m", "CONFIG_FOO_DEBUG": "y"}
    plan = plan_module("drivers/foo", COMPOSITE, "foo_tx.c", cfg)
    assert plan.module == "foo"
    assert plan.members == ["foo_main.o", "foo_rx.o", "foo_tx.o", "foo_debug.o"]
    kbuild = kbuild_for([plan])
    assert "obj-m += foo.o" in kbuild
    assert "foo-y := foo_main.o foo_rx.o foo_tx.o foo_debug.o" in kbuild
    assert "CFLAGS_foo_rx.o := -DRX" in kbuild and "ccflags-y += -I$(src)/include" in kbuild
    assert "CFLAGS_core.o" not in kbuild  # flags of objects not rebuilt stay out
    assert "core.o" not in kbuild.replace("CFLAGS_core.o", "")


def test_composite_member_switched_off_is_refused():
    with pytest.raises(KbisectError, match=r"foo_trace.c is not compiled in this kernel \(CONFIG_FOO_TRACE"):
        plan_module("drivers/foo", COMPOSITE, "foo_trace.c", {"CONFIG_FOO": "m"})


def test_composite_of_a_built_in_driver_is_refused():
    with pytest.raises(KbisectError, match=r"drivers/foo/foo_rx.c is built-in code \(CONFIG_FOO=y"):
        plan_module("drivers/foo", COMPOSITE, "foo_rx.c", {"CONFIG_FOO": "y"})


def test_objs_style_composite():
    plan = plan_module("drivers/foo", COMPOSITE, "bar_b.c", {"CONFIG_BAR": "m"})
    assert plan.module == "bar" and plan.members == ["bar_a.o", "bar_b.o"]


IPVS_MAKEFILE = """\
# the shape of net/netfilter/ipvs/Makefile: members reached through helper variables
ip_vs_proto-objs-y :=
ip_vs_proto-objs-$(CONFIG_IP_VS_PROTO_TCP) += ip_vs_proto_tcp.o
ip_vs_proto-objs-$(CONFIG_IP_VS_PROTO_UDP) += ip_vs_proto_udp.o
ip_vs_proto-objs-$(CONFIG_IP_VS_PROTO_SCTP) += ip_vs_proto_sctp.o

ip_vs-extra_objs-y :=
ip_vs-extra_objs-$(CONFIG_IP_VS_NFCT) += ip_vs_nfct.o

ip_vs-objs :=	ip_vs_conn.o ip_vs_core.o ip_vs_ctl.o ip_vs_sched.o	   \\
		ip_vs_xmit.o ip_vs_app.o ip_vs_sync.o	   		   \\
		ip_vs_est.o ip_vs_proto.o ip_vs_pe.o			   \\
		$(ip_vs_proto-objs-y) $(ip_vs-extra_objs-y)

obj-$(CONFIG_IP_VS) += ip_vs.o
obj-$(CONFIG_IP_VS_RR) += ip_vs_rr.o
"""


def test_composite_members_reached_through_variables_are_linked():
    cfg = {"CONFIG_IP_VS": "m", "CONFIG_IP_VS_PROTO_TCP": "y", "CONFIG_IP_VS_PROTO_UDP": "y",
           "CONFIG_IP_VS_NFCT": "y", "CONFIG_IP_VS_RR": "m"}
    plan = plan_module("net/netfilter/ipvs", IPVS_MAKEFILE, "ip_vs_xmit.c", cfg)
    assert plan.module == "ip_vs"
    assert plan.members[:10] == ["ip_vs_conn.o", "ip_vs_core.o", "ip_vs_ctl.o", "ip_vs_sched.o", "ip_vs_xmit.o",
                                 "ip_vs_app.o", "ip_vs_sync.o", "ip_vs_est.o", "ip_vs_proto.o", "ip_vs_pe.o"]
    # without these the link fails with "ip_vs_conn_drop_conntrack undefined" (ip_vs_nfct.o)
    assert plan.members[10:] == ["ip_vs_proto_tcp.o", "ip_vs_proto_udp.o", "ip_vs_nfct.o"]
    assert "ip_vs_proto_sctp.o" not in plan.members  # CONFIG_IP_VS_PROTO_SCTP unset
    assert "$(" not in kbuild_for([plan])


def test_unknown_object_is_refused():
    with pytest.raises(KbisectError, match="cannot tell how drivers/foo/nothere.c is built"):
        plan_module("drivers/foo", COMPOSITE, "nothere.c", {"CONFIG_FOO": "m"})


def test_parse_kconfig_unquotes_and_skips_unset():
    cfg = parse_kconfig(
        'CONFIG_CC_VERSION_TEXT="gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0"\n'
        "CONFIG_NET_IP_TUNNEL=m\n# CONFIG_FOO is not set\nCONFIG_HZ=250\n"
    )
    assert cfg == {"CONFIG_CC_VERSION_TEXT": "gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0",
                   "CONFIG_NET_IP_TUNNEL": "m", "CONFIG_HZ": "250"}


# ------------------------------------------------------------------ compiler


KERNEL_CC = "gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0"


def test_same_compiler_under_another_program_name_matches():
    assert compiler_mismatch(KERNEL_CC, "gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0") is None
    assert compiler_mismatch(KERNEL_CC, "gcc (Debian 12.2.0-14+deb12u1) 12.2.0") is None


@pytest.mark.parametrize(
    "host",
    [
        "gcc (Debian 12.2.0-14) 12.2.0",  # another distro build of the same release
        "gcc-13 (Debian 13.2.0-25) 13.2.0",
        "Debian clang version 14.0.6",
        "gcc (Ubuntu 9.4.0-1ubuntu1~20.04.2) 9.4.0",
    ],
)
def test_other_compilers_are_refused(host):
    why = compiler_mismatch(KERNEL_CC, host)
    assert why is not None and why.startswith("compiler mismatch") and "\n" not in why


def test_unknown_kernel_compiler_is_refused():
    assert "unknown" in compiler_mismatch("", "gcc (Debian 12.2.0-14+deb12u1) 12.2.0")


def test_host_compiler_matches_debian_6_1_kernels():
    """The host is Debian 12: its gcc-12 must be the one Debian's 6.1 kernels were built with."""
    if not shutil.which("gcc-12"):
        pytest.skip("gcc-12 not installed")
    cc, line = host_compiler({"CONFIG_CC_VERSION_TEXT": KERNEL_CC})
    assert cc == "gcc-12"
    assert line.startswith("gcc-12 (")


# ------------------------------------------------------------------ versions


def test_nearest_version_prefers_exact_then_closest_same_line():
    assert nearest_version("6.1.190-1", ["6.1.176-1", "6.1.190-1", "6.1.192-2"]) == "6.1.190-1"
    assert nearest_version("6.1.190-1", ["6.1.176-1", "6.1.192-2"]) == "6.1.192-2"
    assert nearest_version("6.1.190-1", ["6.1.188-1", "6.1.192-2"]) == "6.1.192-2"  # tie: newer
    assert nearest_version("6.1.190-1", ["6.12.57-1", "5.10.223-1"]) is None


def test_package_version_read_from_the_bzimage_header(tmp_path):
    blob = bytearray(0x600)
    blob[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", blob, 0x20E, 0x300)
    text = b"6.1.0-54-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC Debian 6.1.190-1 (2026-10-16)\0"
    blob[0x500 : 0x500 + len(text)] = text
    (tmp_path / "vmlinuz").write_bytes(bytes(blob))
    kernel = UnpackedKernel(ref=BASE, root=tmp_path, kver=KVER)
    assert debian_package_version(kernel) == "6.1.190-1"
    kernel.extra["package_version"] = "6.1.188-1"
    assert debian_package_version(kernel) == "6.1.188-1"


SMALL_SOURCE = "int a;\nint b;\nint c;\nint d;\nint e;\n"
SMALL_PATCH = "--- a/net/x.c\n+++ b/net/x.c\n@@ -1,5 +1,5 @@\n int a;\n int b;\n-int c;\n+long c;\n int d;\n int e;\n"


@pytest.mark.parametrize("tool", ["patch", "git"])
def test_apply_patch_with_patch_or_git(tmp_path, tool):
    if tool == "patch" and not shutil.which("patch"):
        pytest.skip("patch not installed")
    use_patch_tool = tool == "patch"  # a machine without the patch tool falls back to git apply
    tree = tmp_path / "src"
    (tree / "net").mkdir(parents=True)
    (tree / "net/x.c").write_text(SMALL_SOURCE)
    patch = tmp_path / "p.patch"
    patch.write_text(SMALL_PATCH)
    apply_patch(patch, tree, use_patch_tool)
    assert (tree / "net/x.c").read_text() == SMALL_SOURCE.replace("int c;", "long c;")
    (tree / "net/x.c").write_text(SMALL_SOURCE.replace("int c;", "char c;"))  # another tree: must not apply
    with pytest.raises(KbisectError, match="does not apply to this kernel's source"):
        apply_patch(patch, tree, use_patch_tool)


# ------------------------------------------------------------------ module tree helpers


def test_compress_like_matches_the_base_compression(tmp_path):
    payload = os.urandom(4096)
    for ext, tool in ((".ko.xz", ["xz", "-dc"]), (".ko.zst", ["zstd", "-dc"]), (".ko.gz", ["gzip", "-dc"])):
        ko = tmp_path / f"m{ext.replace('.', '_')}.ko"
        ko.write_bytes(payload)
        out = compress_like(ko, Path("stock" + ext))
        assert out.name == ko.name + ext[3:] and not ko.exists()
        assert subprocess.run([*tool, str(out)], capture_output=True, check=True).stdout == payload
    plain = tmp_path / "p.ko"
    plain.write_bytes(payload)
    assert compress_like(plain, Path("stock.ko")) == plain


def test_hardlinked_copy_shares_unchanged_files_only(tmp_path):
    src = tmp_path / "base"
    (src / "kernel/net").mkdir(parents=True)
    (src / "kernel/net/a.ko").write_bytes(b"a")
    (src / "kernel/net/b.ko").write_bytes(b"b")
    (src / "modules.dep").write_text("stale\n")
    (src / "build").symlink_to("/usr/src/linux-headers-x")
    dst = tmp_path / "variant"
    n = copy_tree_hardlinked(src, dst, skip=lambda rel: rel == "kernel/net/b.ko" or rel in DEPMOD_OUTPUTS)
    assert n == 1
    assert (dst / "kernel/net/a.ko").stat().st_ino == (src / "kernel/net/a.ko").stat().st_ino
    assert not (dst / "kernel/net/b.ko").exists() and not (dst / "modules.dep").exists()
    assert os.readlink(dst / "build") == "/usr/src/linux-headers-x"


def test_depmod_writes_into_the_variant_tree(tmp_path):
    modules = tmp_path / "modules"
    (modules / "kernel").mkdir(parents=True)
    (modules / "modules.order").write_text("")
    (modules / "modules.builtin").write_text("")
    run_depmod(modules, "9.9.9-test", None)
    assert (modules / "modules.dep").exists()


# ------------------------------------------------------------------ builds through injected fakes


BASE_ID = "b" * 64
VARIANT = "revert-227adfb2b1df"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fake_base(home: Path, cc_text: str = KERNEL_CC, ip_tunnel: str = "m") -> UnpackedKernel:
    root = home / "kernels" / "debian" / KVER
    (root / "modules" / "kernel" / "net" / "ipv4").mkdir(parents=True)
    (root / "vmlinuz").write_bytes(b"not a kernel")
    (root / "config").write_text(f'CONFIG_CC_VERSION_TEXT="{cc_text}"\nCONFIG_NET_IP_TUNNEL={ip_tunnel}\n')
    kernel = UnpackedKernel(ref=KernelRef.of(BASE).with_id(BASE_ID), root=root, kver=KVER, extra={"package_version": "6.1.190-1"})
    kernel.save()
    return kernel


class FakeArchive:
    """A package archive that has every package at the version asked for (tiny stand-in .debs)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.downloaded: list[str] = []

    def pick(self, package: str, wanted: str) -> str:
        return wanted

    def download(self, package: str, version: str, progress) -> Downloaded:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"{package}_{version}_all.deb"
        path.write_bytes(b"a .deb")
        self.downloaded.append(package)
        return Downloaded(package, version, path, path.stat().st_size)

    def depends(self, deb: Downloaded) -> list[str]:
        return []


class NoArchive:
    """An archive the test says must not be asked."""

    def pick(self, package: str, wanted: str) -> str:
        pytest.fail(f"asked the archive for {package}")

    def download(self, package: str, version: str, progress) -> Downloaded:
        pytest.fail(f"downloaded {package}")

    def depends(self, deb: Downloaded) -> list[str]:
        pytest.fail("read a package's dependencies")


class FakeMake:
    """The compile steps: a staging tree whose vmlinuz holds the patch it was built from."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.patches: list[str] = []
        self.fail = fail

    def __call__(self, build: Build) -> None:
        self.patches.append(build.request.patch_sha256)
        build.staging.mkdir(parents=True)
        (build.staging / "vmlinuz").write_bytes(build.request.patch_bytes)
        (build.staging / "modules").mkdir()
        if self.fail is not None:
            raise self.fail
        build.replacements["kernel/net/ipv4/ip_tunnel.ko"] = build.staging / "modules" / "ip_tunnel.ko"


def _builder(home: Path, make: FakeMake | None = None, reproducers: Path | None = None,
             **collaborators) -> VariantBuilder:
    """A builder whose world is fakes: the base kernel at `home`, a fake archive, the kernel's own compiler."""
    root = home / "kernels" / "debian" / KVER
    kernel = UnpackedKernel.load(root) if root.exists() else _fake_base(home)
    defaults = dict(fetch_base=lambda spec: kernel, packages=FakeArchive(home / "archive"),
                    compiler=lambda kconfig: ("gcc-12", KERNEL_CC), make=make or FakeMake(), reproducers=reproducers)
    return VariantBuilder(**{**defaults, **collaborators})


def _controls(tmp_path: Path, name: str = VARIANT) -> Path:
    """A reproducers tree with one control patch `name`; returns the patch's path."""
    control = tmp_path / "reproducers" / "gretap-ecn" / "controls" / f"{name}.patch"
    control.parent.mkdir(parents=True)
    shutil.copy(TEST_PATCH, control)
    return control


def _cached_variant(name: str, patch_sha256: str, vmlinuz: bytes = b"an earlier build") -> Path:
    """A variant in the cache as an earlier build left it."""
    spec = parse_spec(f"{BASE}+{name}")
    dest = variant_dir(spec)
    (dest / "modules").mkdir(parents=True)
    (dest / "vmlinuz").write_bytes(vmlinuz)
    UnpackedKernel(ref=spec.with_id("e" * 64), root=dest, kver=KVER, extra={"patch_sha256": patch_sha256}).save()
    return dest


def test_compiler_mismatch_refused_before_any_download(kbisect_home):
    kernel = _fake_base(kbisect_home, cc_text="gcc-13 (Debian 13.2.0-25) 13.2.0")
    builder = _builder(kbisect_home, fetch_base=lambda spec: kernel, packages=NoArchive(),
                       compiler=lambda kconfig: ("gcc", "gcc (Debian 12.2.0-14+deb12u1) 12.2.0"))
    with pytest.raises(KbisectError, match=r"refusing to build debian:6.1.0-54-cloud-amd64\+revert-227adfb2b1df: compiler mismatch"):
        builder.build_variant(BASE, TEST_PATCH)
    assert not variant_dir(parse_spec(f"{BASE}+{VARIANT}")).exists()
    leftovers_ = [p.name for p in (kbisect_home / "kernels" / "debian").iterdir()]
    assert leftovers_ == [KVER]  # nothing half-written
    assert not list((kbisect_home / "variants").glob(".*work*"))


def test_header_patch_refused_without_fetching(kbisect_home, tmp_path):
    builder = _builder(kbisect_home, fetch_base=lambda spec: pytest.fail("fetched a base for a refused patch"),
                       packages=NoArchive())
    patch = tmp_path / "hdr.patch"
    patch.write_text("--- a/include/net/ip_tunnels.h\n+++ b/include/net/ip_tunnels.h\n@@ -1 +1 @@\n-a\n+b\n")
    with pytest.raises(KbisectError, match="header include/net/ip_tunnels.h"):
        builder.build_variant(BASE, patch)


@pytest.mark.parametrize(
    "base, name, message",
    [
        (BASE, "bad name!", "bad variant name"),
        (BASE + "+other", None, "itself a variant"),
        ("mainline:5.4.41", None, "only supported for debian kernels"),
    ],
)
def test_bad_arguments_are_refused(kbisect_home, base, name, message):
    with pytest.raises(KbisectError, match=message):
        build_variant(base, TEST_PATCH, name)


def test_a_build_records_its_patch_and_identity(kbisect_home):
    archive = FakeArchive(kbisect_home / "archive")
    variant = _builder(kbisect_home, packages=archive).build_variant(BASE, TEST_PATCH)
    dest = variant_dir(parse_spec(f"{BASE}+{VARIANT}"))
    assert variant.spec == f"{BASE}+{VARIANT}" and variant.root == dest
    assert variant.extra["patch_sha256"] == _sha(TEST_PATCH) and variant.extra["patch"] == TEST_PATCH.name
    assert variant.id == identity.variant_id(BASE_ID, _sha(TEST_PATCH))
    on_disk = json.loads((dest / "kernel.json").read_text())
    assert on_disk["root"] == str(dest) and on_disk["extra"] == variant.extra and on_disk["id"] == variant.id
    assert archive.downloaded == ["linux-headers-" + KVER, "linux-kbuild-6.1", "linux-source-6.1"]
    assert variant.extra["source_package"] == "linux-source-6.1=6.1.190-1" and variant.extra["source_exact"]
    assert not leftovers(dest)


def test_cached_variant_is_returned_without_building(kbisect_home):
    dest = _cached_variant(VARIANT, _sha(TEST_PATCH))
    builder = _builder(kbisect_home, fetch_base=lambda spec: pytest.fail("rebuilt a cached variant"),
                       packages=NoArchive())
    assert builder.build_variant(BASE, TEST_PATCH).root == dest


def test_cached_variant_from_another_patch_is_rebuilt(kbisect_home):
    dest = _cached_variant(VARIANT, "0" * 64)
    make = FakeMake()
    variant = _builder(kbisect_home, make=make).build_variant(BASE, TEST_PATCH)
    assert make.patches == [_sha(TEST_PATCH)]
    assert variant.root == dest and UnpackedKernel.load(dest).extra["patch_sha256"] == _sha(TEST_PATCH)
    assert (dest / "vmlinuz").read_bytes() == TEST_PATCH.read_bytes()  # the new tree, not the stale one


def test_an_edited_control_patch_rebuilds_the_variant(kbisect_home, tmp_path):
    """Editing reproducers/<id>/controls/<name>.patch must not boot the variant built from its old bytes."""
    control = _controls(tmp_path)
    dest = _cached_variant(VARIANT, _sha(control))
    make = FakeMake()
    provider = KernelProvider(build_variant=_builder(kbisect_home, make, tmp_path / "reproducers").build_on_demand,
                              fetch_source=lambda spec, mirror: pytest.fail("a variant is not a source's kernel"))
    spec = f"{BASE}+{VARIANT}"
    assert provider.get(spec).root == dest and make.patches == []  # unchanged patch: the cached build

    control.write_text("Revert it, with a reworded description.\n\n" + TEST_PATCH.read_text())
    kernel = provider.get(spec)
    assert make.patches == [_sha(control)]
    assert kernel.root == dest and kernel.extra["patch_sha256"] == _sha(control)
    assert kernel.id == identity.variant_id(BASE_ID, _sha(control))
    assert (dest / "vmlinuz").read_bytes() == control.read_bytes()  # the directory now holds the new build
    assert UnpackedKernel.load(dest).extra["patch_sha256"] == _sha(control)
    assert not leftovers(dest)
    assert provider.get(spec).id == kernel.id and len(make.patches) == 1  # and that build is served from now on


def test_a_failed_rebuild_leaves_the_stale_variant_whole(kbisect_home, tmp_path):
    """Nothing is written at the variant's place before the new tree is complete; the next run retries."""
    control = _controls(tmp_path)
    dest = _cached_variant(VARIANT, "0" * 64)
    before = (dest / "kernel.json").read_bytes()
    make = FakeMake(fail=VariantBuildError("building net/ipv4 failed: error: boom"))
    builder = _builder(kbisect_home, make, tmp_path / "reproducers")
    with pytest.raises(VariantBuildError, match="boom"):
        builder.build_on_demand(f"{BASE}+{VARIANT}")
    assert (dest / "kernel.json").read_bytes() == before and (dest / "vmlinuz").read_bytes() == b"an earlier build"
    assert not leftovers(dest)
    make.fail = None
    assert builder.build_on_demand(f"{BASE}+{VARIANT}").extra["patch_sha256"] == _sha(control)


def test_swap_in_replaces_a_tree_in_one_step(tmp_path):
    dest, staging = tmp_path / "v", tmp_path / ".v.tmp-1"
    (dest / "modules").mkdir(parents=True)
    (dest / "old").write_text("stale")
    staging.mkdir()
    (staging / "new").write_text("fresh")
    swap_in(staging, dest)
    assert sorted(p.name for p in dest.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]  # the stale tree is gone, nothing aside


def test_leftovers_of_a_killed_build_are_cleared_before_building(kbisect_home):
    dest = variant_dir(parse_spec(f"{BASE}+{VARIANT}"))
    dest.mkdir(parents=True)  # renamed in but no manifest: cannot be trusted
    (dest / "vmlinuz").write_bytes(b"half")
    tmp = dest.parent / f".{dest.name}.tmp-99999"
    old = dest.parent / f".{dest.name}.old-99999"
    work = config.subdir("variants") / f".{dest.name}.work-abc"
    for path in (tmp, old, work):
        path.mkdir()
    seen = []
    kernel = _fake_base(kbisect_home)

    def fetch_base(spec):
        seen.append([p.exists() for p in (dest, tmp, old, work)])
        return kernel

    _builder(kbisect_home, fetch_base=fetch_base).build_variant(BASE, TEST_PATCH)
    assert seen == [[False, False, False, False]]
    assert not leftovers(dest)


def test_build_on_demand_without_a_control_patch(kbisect_home, tmp_path):
    builder = _builder(kbisect_home, reproducers=tmp_path / "reproducers")
    with pytest.raises(KbisectError, match=r"no control patch reproducers/\*/controls/revert-nothing.patch"):
        builder.build_on_demand(BASE + "+revert-nothing")


def test_build_on_demand_finds_the_control_patch(kbisect_home, tmp_path):
    control = _controls(tmp_path, "revert-x")
    variant = _builder(kbisect_home, reproducers=tmp_path / "reproducers").build_on_demand(BASE + "+revert-x")
    assert variant.spec == BASE + "+revert-x"
    assert variant.extra["patch"] == "revert-x.patch" and variant.extra["patch_sha256"] == _sha(control)
    assert variant.extra["variant_of"] == BASE


def test_build_on_demand_serves_a_variant_built_from_a_users_patch(kbisect_home, tmp_path):
    """`kbisect kernels patch --name mine`: no control patch named mine, so the build stands as it is."""
    dest = _cached_variant("mine", "1" * 64)
    builder = _builder(kbisect_home, make=FakeMake(), reproducers=tmp_path / "reproducers", packages=NoArchive())
    assert builder.build_on_demand(BASE + "+mine").root == dest


def test_packages_come_through_the_debian_sources_apt_client(kbisect_home, tmp_path):
    """Versions from the apt client's records, the nearest of the line when the exact one is gone,
    and each .deb downloaded once into the variants' cache."""

    class FakeApt:
        def __init__(self) -> None:
            self.updates = 0
            self.downloads: list[str] = []

        def ensure_updated(self) -> None:
            self.updates += 1

        def show(self, packages: list[str]) -> list[dict[str, str]]:
            return [{"Package": p, "Version": v, "Filename": f"pool/{p}_{v}.deb"}
                    for p in packages for v in ("6.1.188-1", "6.1.192-2")]

        def download(self, package: str, version: str, into: Path, tick=None) -> Path:
            self.downloads.append(package)
            deb = into / f"{package}_{version}_all.deb"
            deb.write_bytes(b"deb")
            return deb

    apt = FakeApt()
    packages = DebianPackages(apt, tmp_path / "downloads")
    assert packages.pick("linux-source-6.1", "6.1.192-2") == "6.1.192-2"
    assert packages.pick("linux-source-6.1", "6.1.190-1") == "6.1.192-2"
    with pytest.raises(KbisectError, match="no linux-source-6.1 of the 6.12 line"):
        packages.pick("linux-source-6.1", "6.12.57-1")
    progress = StepLog(Console(file=io.StringIO()))
    first = packages.download("linux-source-6.1", "6.1.192-2", progress)
    again = packages.download("linux-source-6.1", "6.1.192-2", progress)
    assert first == again and first.path.parent == tmp_path / "downloads" and first.size == 3
    assert apt.downloads == ["linux-source-6.1"] and apt.updates == 1
    assert not [p for p in (tmp_path / "downloads").iterdir() if p.name.startswith(".dl-")]


def test_cli_refusal_is_one_line(kbisect_home, tmp_path):
    patch = tmp_path / "hdr.patch"
    patch.write_text("--- a/include/net/ip_tunnels.h\n+++ b/include/net/ip_tunnels.h\n@@ -1 +1 @@\n-a\n+b\n")
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "kernels", "patch", "--base", BASE, "--patch", str(patch)],
        capture_output=True, text=True, cwd=REPO, env=dict(os.environ, KBISECT_HOME=str(kbisect_home)),
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "header include/net/ip_tunnels.h" in proc.stderr
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------ the real thing


def _functions(ko: Path) -> dict[str, list[str]]:
    """Disassembly per function with addresses removed, so unchanged code compares equal."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-r", str(ko)], capture_output=True, text=True, check=True).stdout
    funcs: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        m = re.match(r"^[0-9a-f]+ <([^>]+)>:", line)
        if m:
            current = funcs.setdefault(m.group(1), [])
            continue
        if current is not None and line.strip():
            line = re.sub(r"^\s*[0-9a-f]+:\s*", "", line.rstrip())
            current.append(re.sub(r"\b[0-9a-f]+ <", "<", line))
    return funcs


def _check_variant(stock: UnpackedKernel, variant: UnpackedKernel) -> None:
    rel = Path("kernel/net/ipv4/ip_tunnel.ko")
    new_ko, old_ko = variant.modules / rel, stock.modules / rel
    assert new_ko.read_bytes() != old_ko.read_bytes()
    assert new_ko.stat().st_ino != old_ko.stat().st_ino  # replaced, not a link into the base
    vermagic = lambda ko: modinfo_field(ko, "vermagic")  # noqa: E731
    assert vermagic(new_ko) == vermagic(old_ko) and vermagic(new_ko).startswith(KVER + " ")
    # Same compiler, same flags: every function but the patched receive path compiles to the
    # same code as Debian's own build; ip_tunnel_rcv (where the revert sits) does not.
    new_f, old_f = _functions(new_ko), _functions(old_ko)
    assert set(new_f) == set(old_f)
    assert new_f["ip_tunnel_rcv"] != old_f["ip_tunnel_rcv"]
    same = [f for f in old_f if new_f[f] == old_f[f]]
    assert len(same) >= len(old_f) - 4, sorted(set(old_f) - set(same))
    assert "ip_tunnel_lookup" in same
    # stripped of debug info like Debian's modules
    sections = subprocess.run(["objdump", "-h", str(new_ko)], capture_output=True, text=True, check=True).stdout
    assert ".debug_info" not in sections
    # depmod ran on the variant: modules.dep exists and knows the rebuilt module and its users
    dep = (variant.modules / "modules.dep").read_text()
    assert "kernel/net/ipv4/ip_tunnel.ko:" in dep
    assert re.search(r"^kernel/net/ipv4/ip_gre.ko:.*kernel/net/ipv4/ip_tunnel.ko", dep, re.M)
    # unchanged modules are shared with the base by hard links; the boot files are there
    gre = Path("kernel/net/ipv4/ip_gre.ko")
    assert (variant.modules / gre).stat().st_ino == (stock.modules / gre).stat().st_ino
    assert variant.vmlinuz.read_bytes() == stock.vmlinuz.read_bytes()
    assert variant.config is not None and variant.system_map is not None
    manifest = json.loads((variant.root / "kernel.json").read_text())
    assert manifest["kver"] == KVER and manifest["root"] == str(variant.root)
    extra = variant.extra
    assert extra["variant_of"] == BASE and extra["rebuilt_modules"] == [str(rel)]
    assert extra["source_package"].startswith("linux-source-6.1=")
    assert extra["compiler"].endswith(extra["kernel_compiler"].split(" ", 1)[1])
    assert len(extra["patch_sha256"]) == 64


@pytest.mark.registry
@pytest.mark.timeout(1800)
def test_real_gretap_ecn_control_variant(shared_home):
    stock = sources.fetch(BASE)
    variant = build_variant(BASE, TEST_PATCH, "test-revert-227adfb2b1df")
    assert variant.spec == BASE + "+test-revert-227adfb2b1df"
    assert variant.root == shared_home / "kernels" / "debian" / f"{KVER}+test-revert-227adfb2b1df"
    assert UnpackedKernel.load(variant.root).spec == variant.spec
    _check_variant(stock, variant)
    # a second call is a cache hit
    assert build_variant(BASE, TEST_PATCH, "test-revert-227adfb2b1df").extra == variant.extra


@pytest.mark.registry
@pytest.mark.timeout(1800)
def test_real_control_patch_from_the_catalog_builds_on_demand(shared_home):
    control = REPO / "reproducers" / "gretap-ecn" / "controls" / "revert-227adfb2b1df.patch"
    if not control.exists():
        pytest.skip("reproducers/gretap-ecn/controls/revert-227adfb2b1df.patch not shipped yet")
    stock = sources.fetch(BASE)
    variant = VariantBuilder(reproducers=REPO / "reproducers").build_on_demand(BASE + "+revert-227adfb2b1df")
    assert variant.spec == BASE + "+revert-227adfb2b1df"
    assert variant.extra["patch_sha256"] == _sha(control)
    _check_variant(stock, variant)
