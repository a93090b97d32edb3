"""The conformance test profile (spec page 12-conformance-profile, ``VAP-TPF``).

Exposed only when the agent is started in test mode [VAP-SEC-027]; authorized like any other
op [VAP-SEC-028].
"""

from __future__ import annotations

import asyncio
from typing import Any

from .actor import Actor, Context, OpFailure, operation
from .core import ERROR_CONDITIONS  # the error conditions and their types [VAP-TPF-011]

__all__ = ["TestProfile"]


_MISSING = object()


def _arg(ctx: Context, name: str, kind: type, default: Any = _MISSING) -> Any:
    """A typed argument; missing or of the wrong type → bad-value [VAP-TPF-004]."""
    v = ctx.values.get(name, _MISSING)
    if v is _MISSING:
        if default is _MISSING:
            raise OpFailure("fatal", "bad-value", f"missing argument {name!r}")
        return default
    ok = isinstance(v, kind) and (kind is bool or not isinstance(v, bool))
    if not ok:
        raise OpFailure("fatal", "bad-value", f"argument {name!r} has the wrong type")
    return v


def _ranged(ctx: Context, name: str, lo: int, hi: int | None, default: Any = _MISSING) -> int:
    v = _arg(ctx, name, int, default)
    if v < lo or (hi is not None and v > hi):
        raise OpFailure("fatal", "bad-value", f"argument {name!r} out of range")
    return v


class TestProfile(Actor):
    """Operations under ``/vertebra/test/`` (advertised without scoping resources [VAP-TPF-005]).

    ``scoped = False``: a test op carrying top-level ``res`` values is still served, because
    ``echo`` must return every named value [VAP-TPF-006]; read literally, VAP-RES-014/016 would
    make it ``no-handler`` instead (SPEC-FINDINGS.md A3).
    """

    __test__ = False  # not a pytest test class
    scoped = False

    def __init__(self) -> None:
        self.counter = 0

    @operation("/vertebra/test/echo")
    async def echo(self, ctx: Context) -> dict[str, Any]:
        """All named values back, unchanged, in one chunk [VAP-TPF-006]."""
        return dict(ctx.values)

    @operation("/vertebra/test/stream")
    async def stream(self, ctx: Context) -> None:
        """``count`` chunks of ``index`` and, when ``size`` > 0, ``payload`` [VAP-TPF-007],
        window-bounded [VAP-TPF-008]; ``size`` is optional, default 0 (§12.2)."""
        count = _ranged(ctx, "count", 0, 10_000)
        size = _ranged(ctx, "size", 0, 60_000, 0)
        for i in range(count):
            chunk: dict[str, Any] = {"index": i}
            if size > 0:
                chunk["payload"] = "x" * size
            await ctx.send(chunk)

    @operation("/vertebra/test/sleep")
    async def sleep(self, ctx: Context) -> None:
        """Final without values after ``ms`` [VAP-TPF-009]; cancel/deadline interrupt [VAP-TPF-010]."""
        ms = _ranged(ctx, "ms", 0, None)
        await asyncio.sleep(ms / 1000.0)

    @operation("/vertebra/test/fail")
    async def fail(self, ctx: Context) -> None:
        """The error with the given condition and reason [VAP-TPF-011] [VAP-TPF-012]; ``reason``
        is optional (§12.2)."""
        condition = _arg(ctx, "condition", str)
        reason = _arg(ctx, "reason", str, "requested failure")
        etype = ERROR_CONDITIONS.get(condition)
        if etype is None:
            raise OpFailure("fatal", "bad-value", f"{condition!r} is not an error condition")
        raise OpFailure(etype, condition, reason)

    @operation("/vertebra/test/counter")
    async def count(self, ctx: Context) -> dict[str, Any]:
        """Increment (unless ``read``) and return ``value`` [VAP-TPF-013] [VAP-TPF-014]."""
        if not _arg(ctx, "read", bool, False):
            self.counter += 1
        return {"value": self.counter}

    @operation("/vertebra/test/set-load")
    async def set_load(self, ctx: Context) -> None:
        """Report ``value`` from now on [VAP-TPF-016]; final without values."""
        value = _arg(ctx, "value", float)
        if not value >= 0 or value != value or value in (float("inf"),):
            raise OpFailure("fatal", "bad-value", "load must be a finite double >= 0")
        ctx.set_load(value)
