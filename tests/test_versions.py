"""Version parsing and ordering tables (pure, quick)."""

from __future__ import annotations

import json
import random

import pytest

from orchestrator.adapters.kernel import UnpackedKernel
from orchestrator.core.errors import KbisectError
from orchestrator.core.changelog import upstream_from_changelog, upstream_stable_from_changelog
from orchestrator.core.versions import (
    DebianKernel,
    KernelRef,
    KernelVersion,
    parse_debian_kernel,
    parse_debian_package_version,
    parse_debian_version,
    parse_mainline_dir,
    parse_mainline_package_version,
    parse_spec,
    parse_ubuntu_version,
    parse_version,
)

ORDERED = ["4.15", "5.2.21", "5.4", "5.4.41", "5.6", "5.6.17", "5.7-rc1", "5.7-rc7", "5.7", "5.7.1",
           "5.7.2", "5.8-rc1", "5.9", "5.10", "5.10.223", "6.0", "6.1", "6.1.53", "6.12-rc1", "6.12"]


def test_total_order_matches_release_history():
    parsed = [parse_version(v) for v in ORDERED]
    shuffled = parsed[:]
    random.Random(7).shuffle(shuffled)
    assert sorted(shuffled) == parsed
    assert [str(v) for v in sorted(shuffled)] == ORDERED


def test_issue_chain_pairwise():
    chain = ["5.6", "5.6.17", "5.7-rc1", "5.7-rc7", "5.7", "5.7.2", "5.8-rc1"]
    for a, b in zip(chain, chain[1:]):
        assert parse_version(a) < parse_version(b), (a, b)
        assert not parse_version(b) < parse_version(a)
    # numeric, not lexical: rc10 after rc9, 5.10 after 5.9
    assert parse_version("5.7-rc9") < parse_version("5.7-rc10")
    assert parse_version("5.9") < parse_version("5.10")


@pytest.mark.parametrize("text,expected", [
    ("4.15", "4.15"), ("v4.15", "4.15"), ("5.7-rc1", "5.7-rc1"), ("v5.7-rc4", "5.7-rc4"),
    ("5.4.41", "5.4.41"), ("6.0", "6.0"), ("5.4.0", "5.4"), (" 6.1 ", "6.1"),
])
def test_parse_and_str(text, expected):
    assert str(parse_version(text)) == expected


def test_lineage_and_base():
    assert parse_version("5.7").lineage == "mainline"
    assert parse_version("5.7-rc4").lineage == "mainline"
    assert parse_version("5.4.41").lineage == "stable-5.4"
    assert parse_version("5.4.41").base == KernelVersion(5, 4)
    assert parse_version("5.7-rc4").base == KernelVersion(5, 7)
    assert parse_version("5.7-rc4").is_rc and not parse_version("5.7").is_rc
    assert parse_version("6.0").mainline_dir == "v6.0"


@pytest.mark.parametrize("bad", ["", "5", "five.four", "5.4.x", "v5.7-rc", "5.4.1-rc1", "5.4-rc1-dontuse"])
def test_bad_versions_raise_one_line(bad):
    with pytest.raises(KbisectError) as info:
        parse_version(bad)
    assert "\n" not in str(info.value) and "kernel version" in str(info.value)


@pytest.mark.parametrize("name,expected", [
    ("v4.15/", "4.15"), ("v5.2.21", "5.2.21"), ("v5.7-rc1/", "5.7-rc1"), ("v6.0", "6.0"), ("v6.1/", "6.1"),
    # series-suffixed names are the release itself (real-layouts.md: v4.3-wily, v4.4.14-xenial ...)
    ("v4.4.10-xenial/", "4.4.10"), ("v4.2-rc1-unstable", "4.2-rc1"), ("v4.6-rc7-yakkety/", "4.6-rc7"),
    ("v3.16-utopic/", "3.16"),
    # side builds are not releases
    ("v4.4-rc2+cod1/", None), ("v4.4-rc2+cod1-wily/", None), ("v5.12-rc1-dontuse/", None),
    ("v4.4-notaseries/", None), ("daily/", None), ("drm-intel-next/", None), ("../", None), ("", None),
    ("v4.4.1-rc1/", None),
])
def test_mainline_dirs(name, expected):
    got = parse_mainline_dir(name)
    assert (str(got) if got else None) == expected


def test_mainline_dir_preference():
    """The plain name beats every suffix; among suffixes the newest series wins."""
    from orchestrator.core.versions import parse_mainline_dir_name

    names = ["v4.6-rc7-wily", "v4.6-rc7-yakkety", "v4.6-rc7"]
    dirs = [parse_mainline_dir_name(n) for n in names]
    assert max(dirs, key=lambda d: d.preference).name == "v4.6-rc7"
    assert max(dirs[:2], key=lambda d: d.preference).name == "v4.6-rc7-yakkety"


def test_mainline_package_versions():
    a = parse_mainline_package_version("5.4.0-050400.201911242031")
    assert a.kernel == parse_version("5.4") and a.build == "201911242031" and a.kver_prefix == "5.4.0-050400"
    rc = parse_mainline_package_version("4.6.0-040600rc1.201603261930")
    assert str(rc.kernel) == "4.6-rc1" and rc.kver_prefix == "4.6.0-040600rc1"
    assert str(rc) == "4.6.0-040600rc1.201603261930"
    stable = parse_mainline_package_version("5.2.21-050221.201910111731")
    assert str(stable.kernel) == "5.2.21"
    # from patch level 100 the ABI field grows to seven digits (5.4.100 -> 0504100)
    hundred = parse_mainline_package_version("5.4.100-0504100.202102231731")
    assert str(hundred.kernel) == "5.4.100" and hundred.kver_prefix == "5.4.100-0504100"
    # two builds of one version order by their timestamp
    early = parse_mainline_package_version("5.16.0-051600.202201091830")
    late = parse_mainline_package_version("5.16.0-051600.202201092355")
    assert early < late and rc < a
    with pytest.raises(KbisectError):
        parse_mainline_package_version("5.4.0-26.30")


def test_ubuntu_versions():
    v = parse_ubuntu_version("5.4.0-26.30")
    assert (str(v.base), v.abi, v.upload, v.abi_name) == ("5.4", 26, "30", "5.4.0-26")
    assert str(v) == "5.4.0-26.30"
    order = ["4.15.0-20.21", "5.4.0-26.30", "5.4.0-26.31", "5.4.0-77.86", "5.4.0-100.113", "5.15.0-25.25"]
    parsed = [parse_ubuntu_version(x) for x in order]
    assert sorted(reversed(parsed)) == parsed
    # upstream stable base is carried but does not change identity
    known = parse_ubuntu_version("5.4.0-26.30", upstream="5.4.30")
    assert known.upstream == parse_version("5.4.30") and known == v
    assert parse_ubuntu_version("5.4.0-26.30~18.04.1") < parse_ubuntu_version("5.4.0-26.30")
    with pytest.raises(KbisectError):
        parse_ubuntu_version("5.4.41")


def test_upstream_from_changelog():
    text = ("linux (5.4.0-45.49) focal\n  * Focal update: v5.4.51 upstream stable release\n"
            "  * Focal update: v5.4.56 upstream stable release (LP: #1)\n")
    assert upstream_from_changelog(text) == parse_version("5.4.56")
    assert upstream_from_changelog("nothing here") is None


# Real wording (Focal/Jammy) plus the believed patchset wording (see versions.py).
BIONIC_CHANGELOG = """linux (4.15.0-76.86) bionic; urgency=medium

  * Bionic update: upstream stable patchset 2020-01-13 (LP: #1859712)
    - some fix
  * Bionic update: upstream stable patchset 2019-12-16 (LP: #1856702)

 -- Kernel <k@example.invalid>  Mon, 20 Jan 2020 00:00:00 +0000

linux (4.15.0-70.79) bionic; urgency=medium

  * Bionic update: upstream stable patchset 2019-11-01 (LP: #1)
  * Bionic update: upstream stable patchset 2020-01-13 (LP: #1859712)

 -- Kernel <k@example.invalid>  Mon, 11 Nov 2019 00:00:00 +0000

linux (4.15.0-24.26) bionic; urgency=medium

  * Bionic update: v4.15.18 upstream stable release (LP: #1)
  * Bionic update: upstream stable patchset 2018-06-10 (LP: #2)

 -- Kernel <k@example.invalid>  Mon, 18 Jun 2018 00:00:00 +0000

linux (4.15.0-20.21) bionic; urgency=medium

  * Bionic update: v4.15.17 upstream stable release (LP: #3) //
  * Bionic update: upstream stable patchset 2018-01-01 (LP: #4)

 -- Kernel <k@example.invalid>  Mon, 16 Apr 2018 00:00:00 +0000
"""


def test_upstream_stable_patchsets_after_the_last_numbered_base():
    found = upstream_stable_from_changelog(BIONIC_CHANGELOG)
    assert found.base == parse_version("4.15.18")
    # counted once each, newest first; the one in the base's own upload counts, older ones do not
    assert found.patchsets == ("2020-01-13", "2019-12-16", "2019-11-01", "2018-06-10")
    assert found.note == "upstream base 4.15.18 plus 4 upstream stable patchsets (the newest 2020-01-13)"
    assert upstream_from_changelog(BIONIC_CHANGELOG) == parse_version("4.15.18")


def test_upstream_stable_numbered_only_and_edge_cases():
    focal = ("linux (5.4.0-205.225) focal; urgency=medium\n\n"
             "  * Focal update: v5.4.286 upstream stable release (LP: #2089558) //\n"
             "  * Focal update: v5.4.285 upstream stable release (LP: #2089557)\n")
    found = upstream_stable_from_changelog(focal)
    assert found.base == parse_version("5.4.286") and found.patchsets == () and found.note is None
    only = upstream_stable_from_changelog("  * Noble update: upstream stable patchset 2025-02-03 (LP: #1)\n")
    assert only.base is None and only.patchsets == ("2025-02-03",)
    assert only.note == "1 upstream stable patchset (the newest 2025-02-03); the changelog names no numbered upstream base"
    assert upstream_stable_from_changelog("nothing here") is None
    assert upstream_stable_from_changelog("") is None


def test_debian_abi_names():
    old = parse_debian_kernel("6.1.0-54-cloud-amd64")
    assert (str(old.upstream), old.abi, old.flavour, old.abi_name) == ("6.1", "54", "cloud-amd64", "6.1.0-54")
    assert str(old) == "6.1.0-54-cloud-amd64"
    new = parse_debian_kernel("6.12.94+deb13-cloud-amd64")
    assert (str(new.upstream), new.abi, new.tag, new.flavour) == ("6.12.94", None, "+deb13", "cloud-amd64")
    bare = parse_debian_kernel("6.12.94+deb13")
    assert bare.flavour is None and str(bare) == "6.12.94+deb13"
    assert str(parse_debian_kernel("6.1.0-0.deb11.48-amd64")) == "6.1.0-0.deb11.48-amd64"
    order = ["4.19.0-27-amd64", "5.10.0-30-cloud-amd64", "5.10.0-46-cloud-amd64", "6.1.0-9-cloud-amd64",
             "6.1.0-47-cloud-amd64", "6.1.0-0.deb11.48-cloud-amd64", "6.1.0-48-cloud-amd64", "6.1.0-54-cloud-amd64", "6.1.0-56-cloud-amd64", "6.12.43+deb12-cloud-amd64",
             "6.12.94+deb13-cloud-amd64", "6.12.100+deb13-cloud-amd64", "7.2.13+deb14-cloud-amd64"]
    parsed = [parse_debian_kernel(x) for x in order]
    assert sorted(reversed(parsed)) == parsed
    for bad in ["6.1.190-1", "linux-image-6.1.0-54-amd64", "6.1.0", "6.1.0-54-"]:
        with pytest.raises(KbisectError):
            parse_debian_kernel(bad)


def test_debian_package_versions():
    a = parse_debian_package_version("6.1.190-1")
    assert str(a.upstream) == "6.1.190"
    assert parse_debian_package_version("6.1.172-1") < a
    assert parse_debian_package_version("6.12.94-1~bpo12+1") < parse_debian_package_version("6.12.94-1")
    assert isinstance(parse_debian_version("6.1.0-54-cloud-amd64"), DebianKernel)
    assert isinstance(parse_debian_version("6.12.94+deb13"), DebianKernel)
    assert str(parse_debian_version("6.1.190-1")) == "6.1.190-1"
    with pytest.raises(KbisectError):
        parse_debian_version("bookworm")


@pytest.mark.parametrize("text,source,version,variant,canonical", [
    ("4.15", "mainline", "4.15", None, "mainline:4.15"),
    ("v4.15", "mainline", "4.15", None, "mainline:4.15"),
    ("mainline:5.7-rc4", "mainline", "5.7-rc4", None, "mainline:5.7-rc4"),
    ("mainline:5.4.41+revert-227adfb2b1df", "mainline", "5.4.41", "revert-227adfb2b1df",
     "mainline:5.4.41+revert-227adfb2b1df"),
    ("debian:6.1.0-54-cloud-amd64", "debian", "6.1.0-54-cloud-amd64", None, "debian:6.1.0-54-cloud-amd64"),
    ("debian:6.12.94+deb13-cloud-amd64", "debian", "6.12.94+deb13-cloud-amd64", None,
     "debian:6.12.94+deb13-cloud-amd64"),
    ("debian:6.12.94+deb13-cloud-amd64+revert-abc", "debian", "6.12.94+deb13-cloud-amd64", "revert-abc",
     "debian:6.12.94+deb13-cloud-amd64+revert-abc"),
    ("ubuntu:5.4.0-26.30", "ubuntu", "5.4.0-26.30", None, "ubuntu:5.4.0-26.30"),
    ("local:my-build", "local", "my-build", None, "local:my-build"),
    ("local:6.9.0-rc1+", "local", "6.9.0-rc1+", None, "local:6.9.0-rc1+"),
    ("local:my-build+revert-abc", "local", "my-build", "revert-abc", "local:my-build+revert-abc"),
])
def test_specs_round_trip(text, source, version, variant, canonical):
    spec = parse_spec(text)
    assert (spec.source, spec.version, spec.variant) == (source, version, variant)
    assert str(spec) == canonical
    assert parse_spec(str(spec)) == spec
    assert spec.base_spec == KernelRef(source, version)


@pytest.mark.parametrize("bad", ["", "nosuch:5.4", "mainline:banana", "debian:6.1", "5.4+bad/name",
                                 "ubuntu:5.4.41", "local:../x"])
def test_bad_specs_one_line(bad):
    with pytest.raises(KbisectError) as info:
        parse_spec(bad)
    assert "\n" not in str(info.value)


def test_kernel_ref_is_the_spec_plus_an_id():
    ref = parse_spec("debian:6.12.94+deb13-cloud-amd64+revert-abc")
    assert str(ref) == ref.spec == "debian:6.12.94+deb13-cloud-amd64+revert-abc"
    assert parse_spec(str(ref)) == ref and ref.id is None
    known = ref.with_id("a" * 64)
    assert known.id == "a" * 64 and str(known) == str(ref)  # the id never shows in the spec
    assert known != ref and known == ref.with_id("a" * 64)  # other bytes under one name: another kernel
    assert known.with_id("") == ref  # "" (kernel.json before ids) means unknown
    assert known.base_spec == KernelRef("debian", "6.12.94+deb13-cloud-amd64")  # the variant's id goes too
    assert {known: 1}[ref.with_id("a" * 64)] == 1  # frozen: usable as a key


@pytest.mark.parametrize("text", ["mainline:5.7-rc4", "local:6.9.0-rc1+", "mainline:k3", "test:corrupt-6.1",
                                  "mainline:v5.7", "5.4"])
def test_kernel_ref_of_keeps_recorded_specs_verbatim(text):
    assert str(KernelRef.of(text)) == text


def test_kernel_ref_of_parses_canonical_specs():
    assert KernelRef.of("mainline:5.4.41+revert-x") == KernelRef("mainline", "5.4.41", "revert-x")


def test_unpacked_kernel_json_round_trip_keeps_spec_and_id(tmp_path):
    ref = parse_spec("mainline:5.4.41+revert-227adfb2b1df").with_id("b" * 64)
    UnpackedKernel(ref, tmp_path, "5.4.41-050441-generic", {"patch_sha256": "c" * 64}).save()
    record = json.loads((tmp_path / "kernel.json").read_text())
    assert (record["spec"], record["id"]) == ("mainline:5.4.41+revert-227adfb2b1df", "b" * 64)
    assert sorted(record) == ["extra", "id", "kver", "root", "spec"]  # the file's keys as every release wrote them
    loaded = UnpackedKernel.load(tmp_path)
    assert loaded.ref == ref and (loaded.spec, loaded.id) == (str(ref), "b" * 64)
    assert loaded.patch_sha256 == "c" * 64 and loaded.kver == "5.4.41-050441-generic"
