"""Content ids (orchestrator.core.identity): pure rules over hashes the adapters computed."""

from __future__ import annotations

import pytest

from orchestrator.core.identity import TreeFile, package_id, tree_id, variant_id

A, B = "a" * 64, "b" * 64


def test_package_id_is_over_the_set_of_named_hashes() -> None:
    one = package_id([("linux-image.deb", A), ("linux-modules.deb", B)])
    assert one == package_id([("linux-modules.deb", B.upper()), ("linux-image.deb", A)])  # order, case
    assert one != package_id([("linux-image.deb", B), ("linux-modules.deb", A)])  # which file has which
    assert one != package_id([("linux-image.deb", A)])
    with pytest.raises(ValueError):
        package_id([])


def test_tree_id_follows_vmlinuz_and_every_module_entry() -> None:
    mods = [TreeFile("kernel/net/veth.ko", 10, A), TreeFile("modules.dep", 3, B)]
    base = tree_id(A, mods)
    assert base == tree_id(A, list(reversed(mods)))
    assert base != tree_id(B, mods)
    assert base != tree_id(A, [TreeFile("kernel/net/veth.ko", 11, A), mods[1]])
    assert base != tree_id(A, [TreeFile("kernel/net/other.ko", 10, A), mods[1]])
    assert base != tree_id(A, mods[:1])
    assert tree_id(A, []) != package_id([("vmlinuz", A)])  # the rules never collide


def test_variant_id_is_base_and_patch() -> None:
    base = package_id([("linux-image.deb", A)])
    assert variant_id(base, A) == variant_id(base, A.upper())
    assert variant_id(base, A) != variant_id(base, B) != base
    with pytest.raises(ValueError):
        variant_id("", A)
