"""A fake `apt-get` for tests that need apt to misbehave: `update` writes one (empty) Packages
list where apt's -o Dir::State::Lists= option points (so kbisect's check that the archive was
reached passes), and `download` runs the shell given by the test."""

from __future__ import annotations


def apt_get(download: str, who: str) -> str:
    """The script's text; `download` is the shell run for `apt-get download` (it must exit)."""
    return f"""#!/bin/sh
# {who}: `update` writes one (empty) Packages list; `download` is the test's own
lists=""
for a in "$@"; do case "$a" in Dir::State::Lists=*) lists="${{a#Dir::State::Lists=}}" ;; esac; done
for a in "$@"; do
  case "$a" in
    update) mkdir -p "$lists" && : > "$lists/fake_dists_bookworm_main_binary-amd64_Packages"; exit 0 ;;
    download)
{download}
      ;;
  esac
done
exit 0
"""
