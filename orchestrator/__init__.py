"""kbisect: differential kernel-version bisection orchestrator."""

__version__ = "0.1.0"
