"""How a command finds its use case's collaborators: the real ones, unless a test provided fakes.

Each use case takes a deps dataclass (`SweepDeps`, `BisectDeps`, `VerifyDeps`) whose defaults are
the real world; tests of a use case pass fakes straight in. A test that drives the whole command
through `main([...])` (to check exit codes, stderr and JSON) cannot reach that argument, so the
CLI asks `current(SweepDeps)` and the test wraps the call in `with provided(SweepDeps(...)):`.
The fakes are typed and scoped to that block (a context variable, reset on exit): nothing is
monkeypatched and nothing leaks into the next test.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator, TypeVar

T = TypeVar("T")

_PROVIDED: ContextVar[tuple[object, ...]] = ContextVar("kbisect_provided_deps", default=())


@contextmanager
def provided(*deps: object) -> Iterator[None]:
    """Inside this block, `current(type(d))` is `d` for each of `deps`."""
    token = _PROVIDED.set(_PROVIDED.get() + deps)
    try:
        yield
    finally:
        _PROVIDED.reset(token)


def current(kind: type[T]) -> T:
    """The innermost provided `kind`, else `kind()`: its defaults are the real collaborators."""
    for dep in reversed(_PROVIDED.get()):
        if isinstance(dep, kind):
            return dep
    return kind()
