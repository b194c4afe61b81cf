"""Any kernel spec to an unpacked kernel: a directory, a source's kernel, or a patched variant.

The provider composes the kernel sources and the variant builder, so the sources know nothing of
variants (a variant is built from a source's kernel; the builder fetches its base through them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from orchestrator.adapters import sources
from orchestrator.adapters.sources import Mirrors
from orchestrator.adapters.kernel import UnpackedKernel, refetch_damaged
from orchestrator.core.errors import KbisectError
from orchestrator.core.versions import KernelRef, parse_spec


def _fetch_source(spec: KernelRef, mirror: str | None) -> UnpackedKernel:
    return sources.fetch(spec, mirror)


def _build_variant(spec: str) -> UnpackedKernel:
    # imported here: app.controls builds whole kernels through app.build, which fetches through us
    from orchestrator.app.controls import build_on_demand

    return build_on_demand(spec)


@dataclass
class KernelProvider:
    """`get(spec)` for every use case; tests pass fakes for the collaborators.

    `mirror` is one base for whatever source a spec names (`kbisect run --mirror`, one kernel),
    or a `Mirrors` giving each source its own (a bisection, whose kernels come from several)."""

    mirror: str | Mirrors | None = None
    fetch_source: Callable[[KernelRef, str | None], UnpackedKernel] = field(default=_fetch_source)
    build_variant: Callable[[str], UnpackedKernel] = field(default=_build_variant)
    cached: Callable[[KernelRef], UnpackedKernel | None] = field(default=sources.cached)

    def get(self, spec: str) -> UnpackedKernel:
        """The unpacked kernel `spec` names. A damaged kernel.json met on the way (an unpack cut
        short by a power loss) is removed by the loader and the kernel unpacked again at once."""
        return refetch_damaged(lambda: self._get(spec))

    def _get(self, spec: str) -> UnpackedKernel:
        path = Path(spec)
        if "/" in spec and path.is_dir():
            return UnpackedKernel.load(path)
        if ":" not in spec:
            raise KbisectError(f"kernel must be SOURCE:VERSION (e.g. debian:6.1.0-54-cloud-amd64) or an unpacked "
                               f"kernel directory, not {spec!r}")
        parsed = parse_spec(spec)
        if parsed.variant:
            # A variant built from a patch is served by the builder, which serves the cached build
            # only while its recorded patch_sha256 matches the patch now (an edited patch rebuilds).
            # One without a recorded patch was placed by hand: there is nothing to compare it with.
            done = self.cached(parsed)
            if done is not None and not done.patch_sha256:
                return done
            return self.build_variant(str(parsed))
        return self.fetch_source(parsed, self.mirror_for(parsed.source))

    def mirror_for(self, source: str) -> str | None:
        """The base `source`'s kernels are fetched from."""
        return self.mirror.for_source(source) if isinstance(self.mirror, Mirrors) else self.mirror

    def kernel_id(self, spec: str) -> str:
        """The content id of what `spec` boots now (core.identity): what stored verdicts are
        keyed by. A cached kernel answers from its kernel.json (a `local:` one after re-hashing
        its directory); a kernel never fetched is fetched, as its probe would do anyway."""
        return self.get(spec).id


def fetch_kernel(spec: str, mirror: str | Mirrors | None = None) -> UnpackedKernel:
    """The kernel `spec` names, fetched or built as needed."""
    return KernelProvider(mirror).get(spec)
