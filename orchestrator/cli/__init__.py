"""Command line: `kbisect <group> <command>`.

Every module in this package registers its commands on the shared root group when
imported, so a new command family is one new file here and nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil

from orchestrator.cli.base import cli, main

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["cli", "main"]
