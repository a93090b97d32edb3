"""Requester-side dispatch (spec page 08-dispatch, ``VAP-DSP``): discover, single, all."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable

from .core import AgentCore, CallResult
from .resources import Resource

__all__ = ["Gathered", "discover", "call_single", "call_all", "DispatchFailure"]

# outcomes after which `single` may try the next candidate, if the op was not acked [VAP-DSP-009]
_TRY_NEXT = {"not-authorized", "authorization-unavailable", "no-handler", "overloaded",
             "responder-gone"}


class DispatchFailure(Exception):
    """``no-capable-agent`` or ``dispatcher-unavailable`` [VAP-DSP-005] [VAP-DSP-006]."""

    def __init__(self, outcome: str, reason: str = ""):
        super().__init__(f"{outcome}: {reason}" if reason else outcome)
        self.outcome = outcome
        self.reason = reason


def _scoping(values: dict[str, Any] | None) -> dict[str, Resource]:
    return {k: v for k, v in (values or {}).items() if isinstance(v, Resource)}


def _remaining_ms(loop, deadline: float) -> int:
    return int((deadline - loop.time()) * 1000)


async def discover(core: AgentCore, dispatcher: str, operation: str,
                   resources: dict[str, Resource] | None = None, *, limit: int | None = None,
                   timeout_ms: int = 5000) -> list[tuple[str, float | None]]:
    """Agents able to serve ``operation``, least loaded first (``[(jid, load or None)]``)."""
    args: dict[str, Any] = {"operation": Resource(operation)}
    if resources:
        args["resources"] = dict(resources)
    if limit is not None:
        args["limit"] = limit
    r = await core.call(dispatcher, "/security/discover", args, timeout_ms=timeout_ms)
    if not r.ok:
        raise DispatchFailure("dispatcher-unavailable", f"{r.outcome} {r.reason}".strip())
    answer = r.merged()
    jids, loads = answer.get("jids"), answer.get("loads")
    if not isinstance(jids, list) or not isinstance(loads, list) or len(jids) != len(loads):
        raise DispatchFailure("dispatcher-unavailable", "malformed discover answer")
    return [(str(j), l if isinstance(l, float) else None) for j, l in zip(jids, loads)]


async def call_single(core: AgentCore, dispatcher: str, operation: str,
                      values: dict[str, Any] | None = None, *, timeout_ms: int = 10_000
                      ) -> tuple[str, CallResult]:
    """Least-loaded first; next candidate only if the previous never started work."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_ms / 1000.0  # [VAP-DSP-001]
    candidates = await discover(core, dispatcher, operation, _scoping(values),
                                timeout_ms=max(1, timeout_ms))
    if not candidates:
        raise DispatchFailure("no-capable-agent", f"no agent can do {operation}")
    last: tuple[str, CallResult] | None = None
    for jid, _load in candidates:  # [VAP-DSP-008]
        left = _remaining_ms(loop, deadline)
        if left < 1:
            break  # [VAP-DSP-011]
        r = await core.call(jid, operation, values, timeout_ms=left, scope="single")
        if r.ok:
            return jid, r
        last = (jid, r)
        if r.acked or r.outcome not in _TRY_NEXT:  # [VAP-DSP-009] [VAP-DSP-010]
            break
    if last is None:
        return candidates[0][0], CallResult("deadline-expired")
    return last


@dataclass
class Gathered:
    """Per-agent outcomes in discover order [VAP-DSP-014], and an optional reduced value."""

    outcomes: list[tuple[str, CallResult]] = field(default_factory=list)
    reduced: Any = None

    @property
    def failures(self) -> list[tuple[str, CallResult]]:
        return [(j, r) for j, r in self.outcomes if not r.ok]


async def call_all(core: AgentCore, dispatcher: str, operation: str,
                   values: dict[str, Any] | None = None, *, timeout_ms: int = 10_000,
                   reduce: Callable[[list[tuple[str, CallResult]]], Any] | None = None
                   ) -> Gathered:
    """Fan out to every capable agent, gather every outcome, optionally reduce."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_ms / 1000.0
    candidates = await discover(core, dispatcher, operation, _scoping(values),
                                timeout_ms=max(1, timeout_ms))
    if not candidates:
        raise DispatchFailure("no-capable-agent", f"no agent can do {operation}")
    gate = asyncio.Semaphore(64)  # [VAP-DSP-013]

    async def one(jid: str) -> CallResult:
        async with gate:
            left = _remaining_ms(loop, deadline)
            if left < 1:
                return CallResult("deadline-expired")
            return await core.call(jid, operation, values, timeout_ms=left, scope="all")

    tasks = [loop.create_task(one(j)) for j, _ in candidates]
    done, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time()))
    for t in pending:  # [VAP-DSP-016]
        t.cancel()
    g = Gathered()
    for (jid, _), t in zip(candidates, tasks):
        if t in done and not t.cancelled() and t.exception() is None:
            g.outcomes.append((jid, t.result()))
        else:
            g.outcomes.append((jid, CallResult("deadline-expired")))  # never dropped [VAP-DSP-015]
    if reduce is not None:  # [VAP-DSP-017] [VAP-DSP-018] failures stay in outcomes
        g.reduced = reduce([(j, r) for j, r in g.outcomes if r.ok])
    return g
