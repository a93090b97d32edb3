"""Vertebra Agent Protocol 1.0 — a Python agent on slixmpp, written from ``spec/`` alone.

Write an actor in a few lines and run it::

    from vertebra_agent import Actor, operation

    class Gems(Actor):
        resources = {"cluster": ["/cluster/rd00"]}

        @operation("/gem/list")
        async def list(self, ctx):
            return {"gems": ["rails 2.3.2", "rack 1.0.0"]}

then ``python -m vertebra_agent --config agent.toml`` with ``actors = ["gems:Gems"]``.
"""

from .actor import Actor, Context, HandlerError, OpFailure, operation
from .core import AgentCore, CallResult
from .resources import Resource, ResourceError
from .values import NS, BadValue, VException

__all__ = [
    "Actor",
    "Agent",
    "AgentCore",
    "BadValue",
    "CallResult",
    "Config",
    "Context",
    "HandlerError",
    "NS",
    "OpFailure",
    "Resource",
    "ResourceError",
    "VException",
    "operation",
]


def __getattr__(name: str):
    # Agent and Config import slixmpp; load them lazily so the codec works without it.
    if name in ("Agent", "Config"):
        from . import agent

        return getattr(agent, name)
    raise AttributeError(name)
