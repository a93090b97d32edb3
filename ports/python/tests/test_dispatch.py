"""Requester dispatch (discover, single, all) on the in-memory bus."""

from __future__ import annotations

import pytest
from bus import Bus
from test_lifecycle import async_test

from vertebra_agent import Actor, Resource, operation
from vertebra_agent.call import parse_arg
from vertebra_agent.dispatch import DispatchFailure, call_all, call_single, discover
from vertebra_agent.values import BadValue

DISP = "dispatcher@example.net/dispatcher"
REQ = "ops@example.net/console"


class Worker(Actor):
    resources = {"cluster": ["/c"]}

    def __init__(self, behaviour: str):
        self.behaviour = behaviour
        self.calls = 0

    @operation("/job")
    async def job(self, ctx):
        self.calls += 1
        if self.behaviour == "fail":
            raise RuntimeError("boom")
        return {"x": ctx.values.get("x", 0) + 1}


def build(behaviours: dict[str, str], *, discover_ok=True, seen=None):
    bus = Bus()
    order = list(behaviours)

    class Dispatcher(Actor):
        scoped = False

        @operation("/security/discover")
        async def disc(self, ctx):
            if seen is not None:
                seen.append(dict(ctx.values))
            if not discover_ok:
                raise RuntimeError("down")
            return {"jids": list(order), "loads": [0.1 * i for i in range(len(order))]}

        @operation("/security/authorize")
        async def auth(self, ctx):
            return {"response": "authorized", "ttl": 0}

    d = bus.core(DISP, authorize=False)
    d.add_actor(Dispatcher())
    workers = {}
    for jid, b in behaviours.items():
        if b == "absent":
            continue
        core = bus.core(jid, dispatchers=[DISP])
        workers[jid] = Worker(b)
        if b != "nohandler":
            core.add_actor(workers[jid])
    return bus, bus.core(REQ, authorize=False), workers


@async_test
async def test_single_skips_candidates_that_never_started_work():
    seen = []
    bus, req, workers = build({"a@example.net/1": "absent", "b@example.net/1": "nohandler",
                               "c@example.net/1": "ok", "d@example.net/1": "ok"}, seen=seen)
    jid, r = await call_single(req, DISP, "/job", {"x": 1, "cluster": Resource("/c/1")})
    assert jid == "c@example.net/1" and r.merged() == {"x": 2}
    assert workers["d@example.net/1"].calls == 0
    assert seen[0]["operation"] == "/job" and seen[0]["resources"] == {"cluster": "/c/1"}


@async_test
async def test_single_does_not_retry_after_ack():
    bus, req, workers = build({"a@example.net/1": "fail", "b@example.net/1": "ok"})
    jid, r = await call_single(req, DISP, "/job")
    assert jid == "a@example.net/1" and r.outcome == "handler-failed" and r.acked
    assert workers["b@example.net/1"].calls == 0


@async_test
async def test_all_gathers_every_outcome_in_discover_order_and_reduces():
    bus, req, workers = build({"a@example.net/1": "ok", "b@example.net/1": "fail",
                               "c@example.net/1": "absent", "d@example.net/1": "ok"})
    g = await call_all(req, DISP, "/job", {"x": 1},
                       reduce=lambda ok: sum(r.merged()["x"] for _, r in ok))
    assert [j for j, _ in g.outcomes] == ["a@example.net/1", "b@example.net/1",
                                          "c@example.net/1", "d@example.net/1"]
    assert [r.outcome for _, r in g.outcomes] == ["final", "handler-failed", "responder-gone",
                                                  "final"]
    assert g.reduced == 4 and len(g.failures) == 2


@async_test
async def test_no_capable_agent_and_dispatcher_unavailable_are_distinct():
    bus, req, _ = build({})
    with pytest.raises(DispatchFailure) as e:
        await call_single(req, DISP, "/job")
    assert e.value.outcome == "no-capable-agent"
    bus, req, _ = build({"a@example.net/1": "ok"}, discover_ok=False)
    with pytest.raises(DispatchFailure) as e:
        await discover(req, DISP, "/job")
    assert e.value.outcome == "dispatcher-unavailable"


def test_cli_argument_syntax():
    assert parse_arg("x=i4:5") == ("x", 5)
    assert parse_arg("s=hello") == ("s", "hello")
    assert parse_arg("r=res:/a/b/") == ("r", Resource("/a/b"))
    assert parse_arg('l=json:{"list":[{"nil":null}]}') == ("l", [None])
    assert parse_arg("t=string:a:b") == ("t", "a:b")
    with pytest.raises(BadValue):
        parse_arg("x=i4:five")
