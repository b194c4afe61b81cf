"""The pure core: versions and lineages, verdicts, the bug record, the bisection engine, the
differential, sweep flagging and line picking. Standard library only (an import-linter contract
in pyproject.toml enforces it), so every decision kbisect makes is testable without I/O."""
