"""Unit tests of the operation lifecycle on the in-memory bus (responder and requester sides)."""

from __future__ import annotations

import asyncio
import functools
import xml.etree.ElementTree as ET

from bus import Bus, authorizer

from vertebra_agent import Actor, HandlerError, operation
from vertebra_agent.core import q
from vertebra_agent.testprofile import TestProfile
from vertebra_agent.tokens import new_token
from vertebra_agent.transport import Reply
from vertebra_agent.values import decode_named, encode_named

AGENT = "agent@example.net/agent"
REQ = "ops@example.net/console"
DISP = "dispatcher@example.net/dispatcher"


def async_test(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 30))

    return wrapper


def op(op_type: str, values: dict | None = None, *, token: str | None = None, timeout="10000",
       version="1.0", **attrs) -> ET.Element:
    el = ET.Element(q("op"), {"token": token or new_token(), "type": op_type})
    if version is not None:
        el.set("version", version)
    if timeout is not None:
        el.set("timeout", timeout)
    for k, v in attrs.items():
        el.set(k, v)
    encode_named(values or {}, el)
    return el


class Gems(Actor):
    resources = {"cluster": ["/cluster/rd00"]}

    def __init__(self):
        self.runs = 0

    @operation("/gem/list")
    async def list(self, ctx):
        self.runs += 1
        return {"gems": ["rails 2.3.2", "rack 1.0.0"]}

    @operation("/gem")
    async def gem(self, ctx):
        return {"generic": True}

    @operation("/gem/boom")
    async def boom(self, ctx):
        raise RuntimeError("secret path /srv/keys/.ssh/id_rsa")

    @operation("/gem/oops")
    async def oops(self, ctx):
        raise HandlerError("gem index unavailable")

    @operation("/gem/gen")
    async def gen(self, ctx):
        for i in range(3):
            yield {"i": i}


def setup(*, allow=True, ttl=0, dispatcher=True, **agent_kw):
    bus = Bus()
    calls: list = []
    if dispatcher:
        authorizer(bus, DISP, allow=allow, ttl=ttl, calls=calls)
    agent = bus.core(AGENT, dispatchers=[DISP], **agent_kw)
    gems = Gems()
    agent.add_actor(gems)
    agent.add_actor(TestProfile())
    req = bus.core(REQ, authorize=False)
    return bus, agent, req, gems, calls


# ---------------------------------------------------------------------------------------------
# responder, driven through the requester core


@async_test
async def test_call_roundtrip_with_authorization_and_fast_path_from_cache():
    bus, agent, req, gems, calls = setup(ttl=60)
    r = await req.call(AGENT, "/gem/list", {"cluster": __import__("vertebra_agent").Resource("/cluster/rd00")})
    assert r.ok, r
    assert r.merged() == {"gems": ["rails 2.3.2", "rack 1.0.0"]}
    auth = [c for c in calls if c[0] == "authorize"]
    assert len(auth) == 1
    args = auth[0][1]
    assert args["from"] == REQ and args["to"] == AGENT and args["operation"] == "/gem/list"
    assert args["resources"] == {"cluster": "/cluster/rd00"}
    # the second call is authorized from the cache: op result carries ack="true", no <ack>
    r2 = await req.call(AGENT, "/gem/list", {"cluster": __import__("vertebra_agent").Resource("/cluster/rd00")})
    assert r2.ok
    assert len([c for c in calls if c[0] == "authorize"]) == 1
    kinds = bus.nodes[REQ].kinds()
    assert kinds.count("ack") == 1, kinds


@async_test
async def test_stanza_sequence_seen_by_requester():
    bus, agent, req, gems, calls = setup()
    peer = bus.node("raw@example.net/r")
    peer.script = lambda seen: Reply.result()
    t = new_token()
    reply = await peer.send_raw(AGENT, op("/gem/gen", token=t))
    tok = reply.payload.get("token")
    assert tok.startswith(t + ":") and len(tok.split(":")[1]) == 32
    assert reply.payload.get("ack") is None
    await peer.wait_for(lambda r: any(s.kind in ("final", "error", "nack") for s in r))
    seen = peer.received
    assert [s.kind for s in seen] == ["ack", "data", "data", "data", "final"]
    assert [s.el.get("seq") for s in seen[1:4]] == ["0", "1", "2"]
    assert seen[-1].el.get("count") == "3"
    assert all(s.el.get("token") == tok for s in seen)
    assert len({s.iq_id for s in seen}) == len(seen)


@async_test
async def test_no_handler_skips_authorization():
    bus, agent, req, gems, calls = setup()
    r = await req.call(AGENT, "/nothing/here")
    assert r.outcome == "no-handler" and r.error_type == "fatal"
    assert calls == []
    assert "ack" not in bus.nodes[REQ].kinds() and "nack" not in bus.nodes[REQ].kinds()


@async_test
async def test_handler_selection_by_path_and_scope():
    from vertebra_agent import Resource

    bus, agent, req, gems, calls = setup()
    assert (await req.call(AGENT, "/gem/other")).merged() == {"generic": True}  # ancestor /gem
    out = await req.call(AGENT, "/gem/list", {"cluster": Resource("/cluster/rd001")})
    assert out.outcome == "no-handler"  # rd001 is not rd00 segment-wise
    out = await req.call(AGENT, "/gem/list", {"cluster": Resource("/cluster")})
    assert out.ok  # ancestor matches
    out = await req.call(AGENT, "/gem/list", {"slice": Resource("/slice/0")})
    assert out.outcome == "no-handler"  # key not provided


@async_test
async def test_denied_gets_nack_and_does_no_work():
    bus, agent, req, gems, calls = setup(allow=False)
    r = await req.call(AGENT, "/gem/list")
    assert r.outcome == "not-authorized"
    assert gems.runs == 0
    r = await req.call(AGENT, "/vertebra/test/counter", {"read": True})
    assert r.outcome == "not-authorized"


@async_test
async def test_silent_dispatcher_means_authorization_unavailable():
    bus, agent, req, gems, calls = setup(dispatcher=False)
    silent = bus.node(DISP)
    silent.script = lambda seen: None  # never answers
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    r = await req.call(AGENT, "/gem/list")
    elapsed = loop.time() - t0
    assert r.outcome == "authorization-unavailable"
    assert 1.5 < elapsed < 4.0
    assert gems.runs == 0


@async_test
async def test_no_dispatcher_configured_nacks():
    bus = Bus()
    agent = bus.core(AGENT, dispatchers=[])
    agent.add_actor(Gems())
    req = bus.core(REQ, authorize=False)
    assert (await req.call(AGENT, "/gem/list")).outcome == "not-authorized"


@async_test
async def test_handler_failures_do_not_leak_internals():
    bus, agent, req, gems, calls = setup()
    r = await req.call(AGENT, "/gem/boom")
    assert r.outcome == "handler-failed" and r.error_type == "error"
    assert "/srv" not in r.reason and ".ssh" not in r.reason and "secret" not in r.reason
    r = await req.call(AGENT, "/gem/oops")
    assert r.outcome == "handler-failed" and r.reason == "gem index unavailable"


@async_test
async def test_stream_respects_window():
    bus, agent, req, gems, calls = setup()
    peer = bus.node("raw@example.net/r")
    gate = asyncio.Event()
    outstanding = {"now": 0, "max": 0}

    async def slow(seen):
        if seen.kind == "data":
            outstanding["now"] += 1
            outstanding["max"] = max(outstanding["max"], outstanding["now"])
            await gate.wait()
            outstanding["now"] -= 1
        return Reply.result()

    peer.script = slow
    await peer.send_raw(AGENT, op("/vertebra/test/stream", {"count": 10, "size": 3}, window="3"))
    await peer.wait_for(lambda r: sum(s.kind == "data" for s in r) >= 3)
    await asyncio.sleep(0.05)
    assert sum(s.kind == "data" for s in peer.received) == 3  # window full: no 4th
    assert "final" not in peer.kinds()
    gate.set()
    await peer.wait_for(lambda r: any(s.kind == "final" for s in r))
    data = [s for s in peer.received if s.kind == "data"]
    assert [int(s.el.get("seq")) for s in data] == list(range(10))
    assert [decode_named(s.el) for s in data][4] == {"index": 4, "payload": "xxx"}
    assert outstanding["max"] == 3
    final = peer.received[-1]
    assert final.kind == "final" and final.el.get("count") == "10"


@async_test
async def test_deadline_expired():
    bus, agent, req, gems, calls = setup()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    r = await req.call(AGENT, "/vertebra/test/sleep", {"ms": 5000}, timeout_ms=300)
    assert r.outcome == "deadline-expired" and r.error_type == "cancel"
    assert loop.time() - t0 < 2.0


@async_test
async def test_cancel_only_from_requester():
    bus, agent, req, gems, calls = setup()
    peer = bus.node("raw@example.net/r")
    peer.script = lambda seen: Reply.result()
    other = bus.node("other@example.net/x")
    reply = await peer.send_raw(AGENT, op("/vertebra/test/sleep", {"ms": 10000}))
    tok = reply.payload.get("token")
    await peer.wait_for(lambda r: "ack" in [s.kind for s in r])
    cancel = ET.Element(q("cancel"), {"token": tok})
    assert not (await other.send_raw(AGENT, cancel)).is_error  # answered, but ignored
    await asyncio.sleep(0.05)
    assert "error" not in peer.kinds()
    assert not (await peer.send_raw(AGENT, cancel)).is_error
    await peer.wait_for(lambda r: "error" in [s.kind for s in r], timeout=1.0)
    err = peer.received[-1].el
    assert (err.get("type"), err.get("condition")) == ("cancel", "cancelled")
    # a cancel for an op that no longer exists still gets an IQ result
    assert not (await peer.send_raw(AGENT, cancel)).is_error
    assert not (await peer.send_raw(AGENT, ET.Element(q("cancel"), {"token": "ab:cd"}))).is_error


@async_test
async def test_duplicate_op_is_answered_again_but_not_reprocessed():
    bus, agent, req, gems, calls = setup()
    peer = bus.node("raw@example.net/r")
    peer.script = lambda seen: Reply.result()
    el = op("/vertebra/test/counter")
    first = await peer.send_raw(AGENT, el, iq_id="dup1")
    second = await peer.send_raw(AGENT, el, iq_id="dup1")
    assert ET.tostring(first.payload) == ET.tostring(second.payload)
    await peer.wait_for(lambda r: "final" in [s.kind for s in r])
    await asyncio.sleep(0.05)
    assert [s.kind for s in peer.received].count("final") == 1
    r = await req.call(AGENT, "/vertebra/test/counter", {"read": True})
    assert r.merged() == {"value": 1}


@async_test
async def test_malformed_ops():
    bus, agent, req, gems, calls = setup()
    peer = bus.node("raw@example.net/r")
    peer.script = lambda seen: Reply.result()
    bad_token = await peer.send_raw(AGENT, op("/gem/list", token="a:b:c"))
    assert (bad_token.etype, bad_token.condition) == ("modify", "bad-request")
    bad_hex = await peer.send_raw(AGENT, op("/gem/list", token="xyz"))
    assert bad_hex.condition == "bad-request"
    unknown = await peer.send_raw(AGENT, ET.Element(q("result"), {"token": "ab"}))
    assert (unknown.etype, unknown.condition) == ("modify", "bad-request")

    async def outcome(el):
        reply = await peer.send_raw(AGENT, el)
        tok = reply.payload.get("token")
        await peer.wait_for(lambda r: any(s.el.get("token") == tok and s.kind in
                                          ("error", "final", "nack") for s in r))
        last = [s for s in peer.received if s.el.get("token") == tok][-1]
        return last.kind, last.el.get("type"), last.el.get("condition")

    assert await outcome(op("/gem/list", timeout=None)) == ("error", "fatal", "bad-value")
    assert await outcome(op("/gem/list", timeout="0")) == ("error", "fatal", "bad-value")
    assert await outcome(op("/gem/list", timeout="86400001")) == ("error", "fatal", "bad-value")
    assert await outcome(op("/gem/list", version="2.0")) == ("error", "fatal",
                                                            "unsupported-version")
    assert (await outcome(op("/gem/list", version="1.3")))[0] == "final"
    unnamed = op("/gem/list")
    ET.SubElement(unnamed, q("i4")).text = "1"
    assert await outcome(unnamed) == ("error", "fatal", "bad-value")
    foreign = op("/gem/list")
    ET.SubElement(foreign, "{urn:other}thing", {"name": "x"})
    assert await outcome(foreign) == ("error", "fatal", "bad-value")
    assert await outcome(op("/vertebra/test/stream", {"count": "3"})) == ("error", "fatal",
                                                                          "bad-value")
    assert await outcome(op("/vertebra/test/fail", {"condition": "cancelled", "reason": "r"})) == (
        "error", "cancel", "cancelled")
    assert await outcome(op("/vertebra/test/fail", {"condition": "nope", "reason": "r"})) == (
        "error", "fatal", "bad-value")


@async_test
async def test_refused_data_iq_abandons_the_op_at_once():
    """A data IQ answered with a non-retryable IQ error stops the op: the handler is cancelled
    and nothing follows, not even ``deadline-expired`` when the deadline passes later
    [VAP-OPS-085] [VAP-OPS-061]."""
    bus, agent, req, gems, calls = setup()
    peer = bus.node("raw@example.net/r")
    peer.script = lambda seen: (Reply.error("cancel", "not-allowed") if seen.kind == "data"
                                else Reply.result())
    started = asyncio.Event()
    stopped = asyncio.Event()

    class Slow(Actor):
        @operation("/slow")
        async def slow(self, ctx):
            started.set()
            try:
                await ctx.send({"i": 1})
                await asyncio.sleep(5)
            finally:
                stopped.set()

    agent.add_actor(Slow())
    await peer.send_raw(AGENT, op("/slow", timeout="400"))
    await peer.wait_for(lambda r: any(s.kind == "data" for s in r))
    await asyncio.wait_for(stopped.wait(), 1.0)  # the handler was stopped, not left sleeping
    await asyncio.sleep(0.6)  # past the 400 ms deadline
    kinds = peer.kinds()
    assert kinds[kinds.index("data") + 1:] == [], kinds


@async_test
async def test_profile_optional_arguments():
    """``stream`` without ``size`` sends no payload, ``fail`` without ``reason`` still ends with
    the condition [VAP-TPF-004] [VAP-TPF-007] [VAP-TPF-011] (SPEC-FINDINGS B11, B17)."""
    bus, agent, req, gems, calls = setup()
    r = await req.call(AGENT, "/vertebra/test/stream", {"count": 2})
    assert r.outcome == "final" and r.chunks == [{"index": 0}, {"index": 1}]
    r = await req.call(AGENT, "/vertebra/test/stream", {"count": 1, "size": 0})
    assert r.outcome == "final" and r.chunks == [{"index": 0}]
    r = await req.call(AGENT, "/vertebra/test/fail", {"condition": "handler-failed"})
    assert (r.outcome, r.error_type) == ("handler-failed", "error") and r.reason
    r = await req.call(AGENT, "/vertebra/test/fail", {"reason": "no condition"})
    assert r.outcome == "bad-value"


@async_test
async def test_legacy_op_gets_no_fast_path_and_keyless_resources_scope():
    bus, agent, req, gems, calls = setup(ttl=60)
    peer = bus.node("raw@example.net/r")
    peer.script = lambda seen: Reply.result()
    el = op("/gem/list", version=None, timeout=None)
    ET.SubElement(el, q("res")).text = "/cluster/rd00"
    ET.SubElement(el, q("string")).text = "ignored"
    for _ in range(2):
        reply = await peer.send_raw(AGENT, el)
        assert reply.payload.get("ack") is None
        tok = reply.payload.get("token")
        await peer.wait_for(lambda r: any(s.el.get("token") == tok and s.kind == "final"
                                          for s in r))
    assert peer.kinds().count("ack") == 2
    wrong = op("/gem/list", version=None, timeout=None)
    ET.SubElement(wrong, q("res")).text = "/elsewhere"
    tok = (await peer.send_raw(AGENT, wrong)).payload.get("token")
    await peer.wait_for(lambda r: any(s.el.get("token") == tok and s.kind == "error" for s in r))


@async_test
async def test_foreign_domain_is_nacked_before_handler_lookup():
    bus, agent, req, gems, calls = setup()
    stranger = bus.core("eve@evil.example/x", authorize=False)
    r = await stranger.call(AGENT, "/nothing")
    assert r.outcome == "not-authorized"


# ---------------------------------------------------------------------------------------------
# requester side against scripted responders


def scripted_responder(bus, jid, stanzas, ack_in_result=False):
    """A responder that answers the op and then sends ``stanzas`` (callables token -> element)."""
    node = bus.node(jid)

    async def run(seen):
        if seen.kind != "op":
            return Reply.result()
        tok = seen.el.get("token") + ":" + new_token()

        async def later():
            for make in stanzas:
                await node.send_set(seen.frm, make(tok), iq_id=node.new_id(), timeout=2)

        asyncio.get_running_loop().create_task(later())
        res = ET.Element(q("op"), {"token": tok})
        if ack_in_result:
            res.set("ack", "true")
        return Reply.result(res)

    node.script = run
    return node


def mk(kind, **attrs):
    def make(tok):
        el = ET.Element(q(kind), {"token": tok})
        values = attrs.pop("values", None) if "values" in attrs else None
        for k, v in attrs.items():
            el.set(k, v)
        encode_named(values, el)
        return el

    return make


@async_test
async def test_requester_detects_out_of_order_and_count_mismatch():
    bus = Bus()
    req = bus.core(REQ, authorize=False)
    scripted_responder(bus, "a@example.net/1", [mk("ack"), mk("data", seq="1"),
                                                 mk("final", count="1")])
    assert (await req.call("a@example.net/1", "/x")).outcome == "out-of-order"
    scripted_responder(bus, "a@example.net/2", [mk("ack"), mk("data", seq="0"),
                                                 mk("final", count="2")])
    assert (await req.call("a@example.net/2", "/x")).outcome == "out-of-order"


@async_test
async def test_requester_accepts_fast_path_with_values_on_final():
    bus = Bus()
    req = bus.core(REQ, authorize=False)
    scripted_responder(bus, "a@example.net/1",
                       [mk("final", count="1", values={"installed": 42})], ack_in_result=True)
    r = await req.call("a@example.net/1", "/x")
    assert r.ok and r.merged() == {"installed": 42}


@async_test
async def test_requester_outcomes_nack_error_gone_deadline():
    bus = Bus()
    req = bus.core(REQ, authorize=False)
    scripted_responder(bus, "a@example.net/1", [mk("nack", reason="weird")])
    assert (await req.call("a@example.net/1", "/x")).outcome == "not-authorized"
    scripted_responder(bus, "a@example.net/2", [mk("ack"), mk("error", type="error")])
    assert (await req.call("a@example.net/2", "/x")).outcome == "unspecified"
    assert (await req.call("nobody@example.net/1", "/x")).outcome == "responder-gone"
    scripted_responder(bus, "a@example.net/3", [mk("ack")])
    task = asyncio.get_running_loop().create_task(req.call("a@example.net/3", "/x",
                                                            timeout_ms=5000))
    await asyncio.sleep(0.1)
    bus.unavailable("a@example.net/3")
    assert (await task).outcome == "responder-gone"
    scripted_responder(bus, "a@example.net/4", [mk("ack")])
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    r = await req.call("a@example.net/4", "/x", timeout_ms=200)
    assert r.outcome == "deadline-expired"
    assert 2.0 <= loop.time() - t0 < 3.5  # deadline + 2 s grace
    rejecting = bus.node("a@example.net/5")
    rejecting.script = lambda seen: Reply.error("auth", "forbidden")
    assert (await req.call("a@example.net/5", "/x")).outcome == "rejected"


@async_test
async def test_retransmission_reuses_iq_id_on_wait_errors():
    bus = Bus()
    req = bus.core(REQ, authorize=False)
    node = scripted_responder(bus, "a@example.net/1", [mk("ack"), mk("final", count="0")])
    inner = node.script
    attempts = []

    async def flaky(seen):
        attempts.append(seen.iq_id)
        if len(attempts) < 3:
            return Reply.error("wait", "resource-constraint")
        return await inner(seen)

    node.script = flaky
    r = await req.call("a@example.net/1", "/x")
    assert r.ok
    assert len(attempts) == 3 and len(set(attempts)) == 1


@async_test
async def test_requester_answers_stray_stanzas():
    bus = Bus()
    req = bus.core(REQ, authorize=False)
    peer = bus.node("a@example.net/1")
    stray = ET.Element(q("final"), {"token": "ab:cd", "count": "0"})
    reply = await peer.send_raw(REQ, stray)
    assert not reply.is_error


# ---------------------------------------------------------------------------------------------
# load reporting and advertisement


@async_test
async def test_set_load_reports_to_dispatcher_bare_jid():
    bus, agent, req, gems, calls = setup()
    r = await req.call(AGENT, "/vertebra/test/set-load", {"value": 0.75})
    assert r.ok and r.chunks == []
    await asyncio.sleep(0.15)
    loads = [(to, p) for frm, to, p in bus.presences if frm == AGENT]
    assert loads, "no load report"
    to, p = loads[-1]
    assert to == "dispatcher@example.net"
    assert p.tag == q("load") and p.get("value") == "0.75"
    assert p.get("capacity") == "8" and p.get("interval") == "1000"
    assert p.get("inflight") == "0"


@async_test
async def test_advertise_payload():
    bus, agent, req, gems, calls = setup()
    assert await agent.advertise()
    (kind, args), = [c for c in calls if c[0] == "advertise"]
    assert "/gem/list" in args["operations"] and "/vertebra/test/echo" in args["operations"]
    assert args["resources"] == {"cluster": ["/cluster/rd00"]}
    assert args["ttl"] == 3600


@async_test
async def test_requester_holds_back_a_gap_inside_the_window():
    bus = Bus()
    req = bus.core(REQ, authorize=False)
    scripted_responder(bus, "a@example.net/1", [
        mk("ack"), mk("data", seq="1", values={"n": 1}), mk("data", seq="0", values={"n": 0}),
        mk("final", count="2")])
    r = await req.call("a@example.net/1", "/x")
    assert r.ok and r.chunks == [{"n": 0}, {"n": 1}]
    scripted_responder(bus, "a@example.net/2", [mk("ack"), mk("data", seq="0"),
                                                 mk("data", seq="0"), mk("final", count="2")])
    assert (await req.call("a@example.net/2", "/x")).outcome == "out-of-order"  # repeat
    scripted_responder(bus, "a@example.net/3", [mk("ack"), mk("data", seq="2"),
                                                 mk("final", count="1")])
    assert (await req.call("a@example.net/3", "/x", window=2)).outcome == "out-of-order"
    scripted_responder(bus, "a@example.net/4", [mk("ack"), mk("data"), mk("data"),
                                                 mk("final")])
    r = await req.call("a@example.net/4", "/x")  # legacy: no seq, no count
    assert r.ok and len(r.chunks) == 2


@async_test
async def test_handler_that_swallows_cancellation_still_ends_cancelled():
    class Stubborn(Actor):
        @operation("/stubborn")
        async def run(self, ctx):
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                return {"ignored": True}  # bad manners: must not turn into a final

    bus, agent, req, gems, calls = setup()
    agent.add_actor(Stubborn())
    cancel = asyncio.Event()
    task = asyncio.get_running_loop().create_task(req.call(AGENT, "/stubborn", cancel=cancel))
    await asyncio.sleep(0.05)
    cancel.set()
    r = await task
    assert r.outcome == "cancelled" and r.chunks == []
