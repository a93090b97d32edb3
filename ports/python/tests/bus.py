"""An in-memory XMPP-ish bus for lifecycle unit tests (no server, no sockets).

Every payload is serialized and parsed again on the way, so the XML the core builds is what the
peer sees.  Delivery is asynchronous and FIFO, like a c2s stream.
"""

from __future__ import annotations

import asyncio
import itertools
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Callable

from vertebra_agent.core import AgentCore
from vertebra_agent.transport import IqError, IqTimeout, Reply

_ids = itertools.count(1)


def reparse(el: ET.Element) -> ET.Element:
    return ET.fromstring(ET.tostring(el))


@dataclass
class Seen:
    """One IQ set a node received."""

    frm: str
    iq_id: str
    el: ET.Element

    @property
    def kind(self) -> str:
        return self.el.tag.split("}")[-1]


class Bus:
    def __init__(self) -> None:
        self.nodes: dict[str, "Node"] = {}
        self.presences: list[tuple[str, str, ET.Element | None]] = []
        # every IQ that crossed the bus: (type, frm, to, id, payload or None, error or None)
        self.wire: list[tuple[str, str, str, str, ET.Element | None, tuple | None]] = []

    def node(self, jid: str) -> "Node":
        n = Node(self, jid)
        self.nodes[jid] = n
        return n

    def core(self, jid: str, **kw) -> AgentCore:
        n = self.node(jid)
        n.core = AgentCore(n, **kw)
        return n.core

    async def deliver(self, frm: str, to: str, iq_id: str, iq_type: str, el: ET.Element) -> Reply:
        target = self.nodes.get(to)
        self.wire.append((iq_type, frm, to, iq_id, reparse(el), None))
        await asyncio.sleep(0)  # asynchronous hop
        if target is None or not target.online:
            return Reply.error("cancel", "service-unavailable")
        reply = await target.receive(frm, iq_id, iq_type, reparse(el))
        if reply.is_error:
            self.wire.append(("error", to, frm, iq_id, None, (reply.etype, reply.condition)))
        else:
            payload = reparse(reply.payload) if reply.payload is not None else None
            self.wire.append(("result", to, frm, iq_id, payload, None))
        return reply

    def unavailable(self, jid: str) -> None:
        """``jid`` disconnects: everyone who got presence from it learns it (simplified)."""
        self.nodes[jid].online = False
        for n in self.nodes.values():
            if n.core is not None and n.jid != jid:
                n.core.peer_unavailable(jid)


class Node:
    """A transport endpoint; runs an AgentCore or a scripted handler."""

    def __init__(self, bus: Bus, jid: str):
        self.bus = bus
        self._jid = jid
        self.core: AgentCore | None = None
        self.online = True
        self.received: list[Seen] = []
        self.sent: list[tuple[str, str, ET.Element]] = []
        # scripted behaviour: return a Reply, or an awaitable of one, or None for "no answer"
        self.script: Callable[[Seen], object] | None = None
        self.arrived = asyncio.Event()

    @property
    def jid(self) -> str:
        return self._jid

    def new_id(self) -> str:
        return f"b{next(_ids)}"

    async def send_set(self, to: str, payload: ET.Element, *, iq_id: str, timeout: float):
        self.sent.append((to, iq_id, reparse(payload)))
        try:
            reply = await asyncio.wait_for(
                self.bus.deliver(self.jid, to, iq_id, "set", payload), timeout
            )
        except asyncio.TimeoutError:
            raise IqTimeout(f"{to} did not answer {iq_id}") from None
        if reply.is_error:
            raise IqError(reply.etype, reply.condition)
        return reparse(reply.payload) if reply.payload is not None else None

    async def send_raw(self, to: str, el: ET.Element, iq_id: str | None = None,
                       iq_type: str = "set") -> Reply:
        """Send as a scripted requester; returns the IQ answer."""
        return await self.bus.deliver(self.jid, to, iq_id or self.new_id(), iq_type, el)

    def send_presence(self, to: str, payload: ET.Element | None) -> None:
        self.bus.presences.append((self.jid, to, reparse(payload) if payload is not None else None))

    async def receive(self, frm: str, iq_id: str, iq_type: str, el: ET.Element) -> Reply:
        seen = Seen(frm, iq_id, el)
        self.received.append(seen)
        self.arrived.set()
        if self.script is not None:
            r = self.script(seen)
            if asyncio.iscoroutine(r) or isinstance(r, asyncio.Future):
                r = await r
            if r is None:
                await asyncio.Event().wait()  # never answers
            return r
        assert self.core is not None
        return self.core.handle_iq(frm, iq_id, iq_type, el)

    async def wait_for(self, pred: Callable[[list[Seen]], bool], timeout: float = 5.0) -> None:
        async def loop() -> None:
            while not pred(self.received):
                self.arrived.clear()
                await self.arrived.wait()

        await asyncio.wait_for(loop(), timeout)

    def kinds(self) -> list[str]:
        return [s.kind for s in self.received]


def authorizer(bus: Bus, jid: str = "dispatcher@example.net/dispatcher", *, allow=True, ttl=0,
               calls: list | None = None) -> AgentCore:
    """A dispatcher (itself an AgentCore with a local allow-all policy) that answers authorize
    and advertise."""
    from vertebra_agent.actor import Actor, operation

    log = calls if calls is not None else []

    class Dispatcher(Actor):
        scoped = False
        @operation("/security/authorize")
        async def authorize(self, ctx):
            log.append(("authorize", dict(ctx.values)))
            decision = allow(ctx.values) if callable(allow) else allow
            return {"response": "authorized" if decision else "notauthorized", "ttl": ttl}

        @operation("/security/advertise")
        async def advertise(self, ctx):
            log.append(("advertise", dict(ctx.values)))
            return {"response": True}

    core = bus.core(jid, authorize=False)
    core.add_actor(Dispatcher())
    return core


@dataclass
class Captured:
    items: list = field(default_factory=list)
