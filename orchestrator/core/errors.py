"""Typed failures, and which of them concern one kernel rather than the whole run.

The CLI turns a KbisectError into one line on stderr and a non-zero exit; anything else is a bug
and keeps its traceback. Whether a failure skips the kernel or aborts the run is decided in one
place (orchestrator.app.policy) from these types alone, so a bisection, a sweep and a proof run
treat the same failure the same way (syzkaller's instance errors work the same way).
"""


class KbisectError(Exception):
    """A failure worth one clear line to the user (bad input, unavailable build, bad checksum...)."""

    exit_code = 2


class ReversedRange(KbisectError):
    """A range whose newer end was given as its older one: swapping the two ends fixes it (the
    caller says which option is the older end)."""


class KernelTrouble(KbisectError):
    """Trouble that concerns this kernel only: the kernel is a skip, the run goes on with others."""


class UnavailableError(KernelTrouble):
    """The requested kernel exists in the listing but cannot be had (failed build, gone)."""


class SourceUnreachable(KernelTrouble):
    """The kernel's mirror did not answer: this kernel is undecided, another mirror may have it."""


class ChecksumError(KernelTrouble):
    """A downloaded or cached file does not match its published checksum."""


class VariantBuildError(KernelTrouble):
    """A patched variant cannot be built (the patch does not apply, the build fails)."""


class BuiltInCode(KbisectError):
    """A patch touches code linked into vmlinux: rebuilding modules cannot honour it, a whole
    kernel build can (a revert check switches to one)."""


class BuildFailed(KernelTrouble):
    """make (or a patch) failed for this source: a commit bisection skips the commit, as
    `git bisect skip` does."""


class ConfigUnmet(BuildFailed):
    """The resolved .config of this source cannot meet a requirement (an option that does not
    exist yet at this commit, or whose dependency is off): a fact about this one commit, so a
    commit bisection skips it as it skips one that does not build; a single build stops."""


class BootFailure(KernelTrouble):
    """The kernel did not boot to SSH in its guest."""


class GuestInfra(KernelTrouble):
    """The guest booted but the probe could not run in it (upload, SSH session lost)."""


class InstallationError(KbisectError):
    """Trouble with this machine (no libvirt, no root image, no tool): every kernel would fail
    the same way, so the run stops."""


class SignatureError(KbisectError):
    """A signed file does not verify against the keyring the user gave: nothing of it is trusted."""
