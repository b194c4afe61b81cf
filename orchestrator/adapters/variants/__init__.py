"""Patched kernel variants: a distro kernel with one or more of its *modules* rebuilt from a patch.

Offline, only fixed kernels can be downloaded, so a known-bad kernel (a positive control, or a
culprit-revert check) has to be manufactured honestly: take the distro's own kernel, its own
headers and its own source package, apply a patch (usually the revert of a fix), rebuild only the
modules that patch touches with the compiler the kernel was built with, and swap them into a copy
of the kernel's modules tree. vmlinuz is never rebuilt, so a patch touching built-in code is
refused rather than silently ignored.

The result is an ordinary UnpackedKernel at `kernels/<source>/<version>+<name>/` with spec
`<source>:<version>+<name>`, so the guest runtime and the bisection engine use it like any other
kernel; boot artefacts (the modules disk) are content-keyed there and follow automatically. It
records the sha256 of its patch, and is rebuilt (replaced in one step) when the patch changes.

Only Debian kernels are supported so far (their headers, kbuild and source are all packages that
`apt-get download` can fetch).

Modules: `patches` (what a diff touches, applying it), `kbuild` (config and Makefile rules, pure),
`packages` (Debian packages through the Debian source's apt client), `sourcetree` and `moduletree`
(the source extract and the variant's modules tree), `toolchain` (host tools, the compiler rule),
`steps` (one build as named steps), `builder` (cache, locking, control patches: the entry points).
"""

from orchestrator.adapters.variants.builder import (VariantBuilder, build_on_demand, build_variant,
                                                    find_control_patch, variant_dir)

__all__ = ["VariantBuilder", "build_on_demand", "build_variant", "find_control_patch", "variant_dir"]
