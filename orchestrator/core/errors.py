"""One exception type for every failure a user can act on.

The CLI turns a KbisectError into one line on stderr and a non-zero exit; anything
else is a bug and keeps its traceback.
"""


class KbisectError(Exception):
    """A failure worth one clear line to the user (bad input, unavailable build, bad checksum...)."""

    exit_code = 2


class UnavailableError(KbisectError):
    """The requested kernel exists in the listing but cannot be had (failed build, gone)."""


class ChecksumError(KbisectError):
    """A downloaded or cached file does not match its published checksum."""


class SignatureError(KbisectError):
    """A signed file does not verify against the keyring the user gave: nothing of it is trusted."""
