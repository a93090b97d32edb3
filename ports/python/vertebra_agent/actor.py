"""The user-facing actor API.

An actor is a class whose methods, decorated with :func:`operation`, serve operation paths::

    from vertebra_agent import Actor, operation

    class Gems(Actor):
        resources = {"cluster": ["/cluster/rd00"]}

        @operation("/gem/list")
        async def list(self, ctx):
            return {"gems": ["rails 2.3.2", "rack 1.0.0"]}

A handler receives a :class:`Context`.  It may ``await ctx.send({...})`` any number of times to
stream data chunks, and/or return a ``dict`` (sent as the last chunk).  An async-generator
handler streams each ``yield``-ed dict.  Raising :class:`HandlerError` ends the op with
``handler-failed`` and the error's public message; any other exception ends it with
``handler-failed`` and a generic reason (no internals leak, [VAP-OPS-050]).
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from .resources import Resource

__all__ = ["Actor", "Context", "HandlerError", "OpFailure", "operation", "Handler"]

Handler = Callable[["Context"], Any]


class HandlerError(Exception):
    """A handler failure whose message is public (it travels as the error's reason)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.public_message = message


class OpFailure(Exception):
    """End the op with ``<error condition>`` of the errors table; the type is the table's
    (an unknown condition becomes ``handler-failed``) [VAP-ERR-001]."""

    def __init__(self, etype: str, condition: str, reason: str):
        super().__init__(f"{etype}/{condition}: {reason}")
        self.etype = etype
        self.condition = condition
        self.reason = reason


@dataclass
class Context:
    """What a handler knows about the op it serves, and how it streams results."""

    requester: str
    token: str
    operation: Resource
    values: dict[str, Any]
    resources: dict[str, list[Resource]]
    deadline: float  # event-loop time (``asyncio.get_running_loop().time()``)
    _send: Callable[[dict[str, Any]], Awaitable[None]] = field(repr=False, default=None)
    _set_load: Callable[[float], None] | None = field(repr=False, default=None)

    async def send(self, values: dict[str, Any]) -> None:
        """Stream one data chunk; waits while the requester's window is full."""
        await self._send(values)

    def remaining(self) -> float:
        """Seconds left until the op deadline."""
        return max(0.0, self.deadline - asyncio.get_running_loop().time())

    def set_load(self, value: float) -> None:
        """Report ``value`` as this agent's load from now on (the ``set-load`` test op)."""
        if self._set_load is not None:
            self._set_load(value)


def operation(path: str) -> Callable[[Handler], Handler]:
    """Mark an actor method as the handler of operation ``path``."""

    res = Resource(path)

    def mark(fn: Handler) -> Handler:
        fn.__vertebra_operation__ = res
        return fn

    return mark


class Actor:
    """Base class for actors: collects the :func:`operation`-marked methods."""

    #: keyed scoping resources this actor serves, e.g. ``{"cluster": ["/cluster/rd00"]}``
    resources: dict[str, list[str]] = {}
    #: False = serve every op of its paths whatever its ``res`` arguments (e.g. a dispatcher,
    #: whose ops carry ``<res name="operation">`` as an argument, not as a scope)
    scoped: bool = True

    def operations(self) -> dict[Resource, Handler]:
        ops: dict[Resource, Handler] = {}
        for name, member in inspect.getmembers(type(self)):
            path = getattr(member, "__vertebra_operation__", None)
            if path is not None:
                ops[path] = getattr(self, name)
        return ops
