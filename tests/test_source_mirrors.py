"""Each kernel source is fetched from its own endpoint (issue 19 item 5).

A bisection's `--mirror` is the mainline mirror and `--distro-mirror` the distro sources'; its
listings always read them so, but every probe's fetch was handed the one `--mirror`, so an
`ubuntu:` kernel was asked of the mainline mirror. The world here is fakes passed into the kernel
provider and the bisection's deps (no VM, no network): what is checked is which base each
kernel's fetch was given.
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.adapters.catalog import resolve
from orchestrator.adapters.kernel import UnpackedKernel
from orchestrator.adapters.sources import Mirrors
from orchestrator.adapters.store import Store
from orchestrator.app.bisect import BisectDeps, BisectRequest, run_bisect
from orchestrator.app.kernels import KernelProvider
from orchestrator.core.verdict import ProbeRecord, Verdict
from orchestrator.core.versions import KernelRef
from tests.gretap_history import mainline_versions, verdict

MAINLINE = "http://127.0.0.1:9/mainline-mirror/"
DISTRO = "http://127.0.0.1:9/distro-mirror/"
FOCAL = [f"5.4.0-{abi}.{abi + 4}" for abi in range(26, 60)]  # 5.4.0-26.30 .. 5.4.0-59.63


class RecordingFetch:
    """A source fetch that records the base each spec was fetched from and returns a stub kernel."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bases: dict[str, set[str | None]] = {}

    def __call__(self, spec: KernelRef, mirror: str | None) -> UnpackedKernel:
        self.bases.setdefault(str(spec), set()).add(mirror)
        return UnpackedKernel(KernelRef.of(str(spec)).with_id("id-" + str(spec)), self.root, "5.4.0-fake")


def test_the_provider_gives_each_source_its_own_mirror(tmp_path) -> None:
    fetch = RecordingFetch(tmp_path)
    provider = KernelProvider(Mirrors.of_options(MAINLINE, DISTRO), fetch_source=fetch)
    for spec in ("mainline:5.7-rc4", "ubuntu:5.4.0-33.37", "debian:6.1.0-54-cloud-amd64", "local:tree"):
        provider.get(spec)
    assert fetch.bases == {"mainline:5.7-rc4": {MAINLINE}, "ubuntu:5.4.0-33.37": {DISTRO},
                           "debian:6.1.0-54-cloud-amd64": {DISTRO}, "local:tree": {None}}
    one = RecordingFetch(tmp_path)  # one kernel, one --mirror (`kbisect run`): that mirror, whatever the source
    KernelProvider("/some/dir", fetch_source=one).get("local:tree")
    assert one.bases == {"local:tree": {"/some/dir"}}


def test_a_bisection_fetches_ubuntu_kernels_from_the_distro_mirror(tmp_path, kbisect_home) -> None:
    """The differential of the write-up (ubuntu:focal took the 5.4.41 backport) with both mirrors
    set: every ubuntu kernel it probes is fetched from --distro-mirror, every mainline one from
    --mirror, both for its content id and for its boot."""
    fetch = RecordingFetch(tmp_path)
    listed: dict[str, str | None] = {}

    def list_kernels(source, mirror, *_rest):
        listed[source] = mirror
        return mainline_versions() if source == "mainline" else FOCAL

    def real_probe(bug, mirrors):
        provider = KernelProvider(mirrors, fetch_source=fetch)  # as the real probe fetches, minus the VM

        def probe(spec: str) -> ProbeRecord:
            provider.get(spec)
            label = spec.split(":", 1)[1]
            bad = int(label.split("-")[1].split(".")[0]) >= 33 if spec.startswith("ubuntu:") else verdict(label) == "bad"
            return ProbeRecord(spec, bug.id, Verdict.BAD if bad else Verdict.GOOD, "fake", {"run": 0.1})
        return probe

    deps = BisectDeps(list_kernels=list_kernels, real_probe=real_probe,
                      kernel_ids=lambda mirrors: KernelProvider(mirrors, fetch_source=fetch).kernel_id,
                      store=lambda: Store(kbisect_home / "results.db"))
    req = BisectRequest("4.15", "5.4", "ubuntu:focal", mirror=MAINLINE, distro_mirror=DISTRO, verify_runs=0)
    data = run_bisect(resolve("gretap-ecn"), req, deps)
    assert (data["lineage"], data["first_bad"]) == ("ubuntu:5.4", "5.4.0-33.37")
    assert listed == {"mainline": MAINLINE, "ubuntu": DISTRO}
    ubuntu = {spec: bases for spec, bases in fetch.bases.items() if spec.startswith("ubuntu:")}
    mainline = {spec: bases for spec, bases in fetch.bases.items() if spec.startswith("mainline:")}
    assert ubuntu and mainline  # the differential probed both lineages
    assert all(bases == {DISTRO} for bases in ubuntu.values()), ubuntu
    assert all(bases == {MAINLINE} for bases in mainline.values()), mainline
