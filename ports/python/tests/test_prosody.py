"""End to end through a real Prosody: ``python -m vertebra_agent`` spawned with the spawn-contract
variables, called by a Python requester, authorized by a Python stand-in dispatcher."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import subprocess
import sys
import time

import pytest

import prosody
from vertebra_agent import Actor, Resource, VException, operation
from vertebra_agent.agent import Agent, Config
from vertebra_agent.values import NS

PORT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IN_CI = os.environ.get("CI") == "true"

if not prosody.available():
    if IN_CI:
        raise RuntimeError("prosody is not installed (required when CI=true)")
    pytest.skip("prosody not installed", allow_module_level=True)

USERS = {"agent": "agentpw", "dispatcher": "disppw", "ops": "opspw"}
AGENT = "agent@localhost/agent"
DISP = "dispatcher@localhost/dispatcher"
OPS = "ops@localhost/console"


class StandInDispatcher(Actor):
    scoped = False

    def __init__(self):
        self.log: list[tuple[str, dict]] = []
        self.deny_ops: set[str] = set()

    @operation("/security/authorize")
    async def authorize(self, ctx):
        self.log.append(("authorize", dict(ctx.values)))
        ok = str(ctx.values.get("operation")) not in self.deny_ops
        return {"response": "authorized" if ok else "notauthorized", "ttl": 0}

    @operation("/security/advertise")
    async def advertise(self, ctx):
        self.log.append(("advertise", dict(ctx.values)))
        return {"response": True}


@pytest.fixture(scope="module")
def server():
    p = prosody.Prosody(USERS).start()
    yield p
    p.stop()


def spawn_agent(server, **extra_env):
    env = dict(os.environ)
    env.update({
        "VERTEBRA_SERVER": server.server,
        "VERTEBRA_JID": AGENT,
        "VERTEBRA_PASSWORD": USERS["agent"],
        "VERTEBRA_DISPATCHER": DISP,
        "VERTEBRA_TEST_PROFILE": "1",
        "VERTEBRA_LOAD_INTERVAL_MS": "200",
        "PYTHONPATH": PORT_DIR,
    })
    env.update(extra_env)
    return subprocess.Popen([sys.executable, "-m", "vertebra_agent"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


async def until(pred, timeout=5.0, what="condition"):
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def scenario(server, proc):
    dispatcher_actor = StandInDispatcher()
    disp = Agent(Config(jid=DISP, password=USERS["dispatcher"], server=server.server,
                        authorize=False, advertise=False, report_load=False),
                 actors=[dispatcher_actor])
    loads: list[dict] = []

    def on_presence(pres):
        el = pres.xml.find(f"{{{NS}}}load")
        if el is not None and str(pres["from"]) == AGENT:
            loads.append(dict(el.attrib, to=str(pres["to"])))

    disp.client.add_event_handler("presence", on_presence)
    req = Agent(Config(jid=OPS, password=USERS["ops"], server=server.server,
                       dispatchers=[DISP], advertise=False, report_load=False))
    tasks = [asyncio.create_task(disp.run()), asyncio.create_task(req.run())]
    try:
        await asyncio.wait_for(disp.online.wait(), 10)
        await asyncio.wait_for(req.online.wait(), 10)

        # readiness: an answered ping [VAP-TPF-022]
        deadline = time.monotonic() + 15
        while True:
            try:
                await req.client.plugin["xep_0199"].send_ping(AGENT, timeout=1)
                break
            except Exception:  # noqa: BLE001
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.monotonic() < deadline, "agent never answered ping"
                await asyncio.sleep(0.1)

        info = await req.client.plugin["xep_0030"].get_info(jid=AGENT, timeout=5)
        features = set(info["disco_info"]["features"])
        identities = {(i[0], i[1]) for i in info["disco_info"]["identities"]}
        assert {"urn:vertebra:1.0", "urn:xmpp:ping", "http://jabber.org/protocol/disco#info",
                "urn:vertebra:1.0:test-profile", "urn:vertebra:1.0:cancel",
                "urn:vertebra:1.0:load"} <= features
        assert ("automation", "vertebra-agent") in identities

        await until(lambda: any(k == "advertise" for k, _ in dispatcher_actor.log),
                    what="advertise")
        adv = [v for k, v in dispatcher_actor.log if k == "advertise"][0]
        assert Resource("/vertebra/test/echo") in adv["operations"] and adv["ttl"] > 0

        values = {
            "n": -42, "x": 0.25, "ok": True, "s": "  a\tb\n ", "empty": "", "blob": b"\x00\x01\xff",
            "at": dt.datetime(2009, 3, 17, 12, tzinfo=dt.timezone.utc), "nothing": None,
            "l": [1, "two", [], Resource("/cluster/rd00")], "st": {"a": {"b": [None]}},
            "e": VException("GemNotFound", "no such gem"),
        }
        r = await req.call(AGENT, "/vertebra/test/echo", values)
        assert r.ok, r
        assert r.merged() == values
        assert any(k == "authorize" and v["from"] == OPS and v["to"] == AGENT
                   for k, v in dispatcher_actor.log)
        # a top-level res is echoed too (test ops serve any scope; SPEC-FINDINGS.md A3)
        r = await req.call(AGENT, "/vertebra/test/echo", {"where": Resource("/cluster/rd00/")})
        assert r.ok and r.merged() == {"where": Resource("/cluster/rd00")}

        r = await req.call(AGENT, "/vertebra/test/stream", {"count": 20, "size": 100}, window=4)
        assert r.ok and [c["index"] for c in r.chunks] == list(range(20))
        assert all(c["payload"] == "x" * 100 for c in r.chunks)

        t0 = time.monotonic()
        r = await req.call(AGENT, "/vertebra/test/sleep", {"ms": 10_000}, timeout_ms=300)
        assert r.outcome == "deadline-expired" and time.monotonic() - t0 < 2.5

        cancel = asyncio.Event()
        task = asyncio.create_task(req.call(AGENT, "/vertebra/test/sleep", {"ms": 10_000},
                                            cancel=cancel))
        await asyncio.sleep(0.3)
        cancel.set()
        r = await asyncio.wait_for(task, 5)
        assert r.outcome == "cancelled" and r.error_type == "cancel"

        dispatcher_actor.deny_ops.add("/vertebra/test/counter")
        assert (await req.call(AGENT, "/vertebra/test/counter")).outcome == "not-authorized"
        dispatcher_actor.deny_ops.clear()
        r = await req.call(AGENT, "/vertebra/test/counter", {"read": True})
        assert r.merged() == {"value": 0}

        assert (await req.call(AGENT, "/no/such/op")).outcome == "no-handler"

        r = await req.call(AGENT, "/vertebra/test/set-load", {"value": 0.5})
        assert r.ok
        await until(lambda: any(x["value"] == "0.5" for x in loads), what="load 0.5")
        last = [x for x in loads if x["value"] == "0.5"][-1]
        assert last["to"] == "dispatcher@localhost" and last["interval"] == "200"

        # SIGTERM: exit 0 within 5 s [VAP-TPF-024], withdrawing the advertisement first
        n_adv = sum(1 for k, _ in dispatcher_actor.log if k == "advertise")
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        while proc.poll() is None and time.monotonic() - t0 < 6:
            await asyncio.sleep(0.05)
        assert proc.returncode == 0, proc.stderr.read().decode()
        assert time.monotonic() - t0 < 5
        withdrawals = [v for k, v in dispatcher_actor.log[n_adv:] if k == "advertise"]
        assert withdrawals and withdrawals[-1]["ttl"] == 0
    finally:
        disp.stop()
        req.stop()
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)


def test_spawned_agent_through_prosody(server):
    proc = spawn_agent(server)
    try:
        asyncio.run(asyncio.wait_for(scenario(server, proc), 60))
        out = proc.stdout.read()
        assert out == b"", "the agent must log to stderr only [VAP-TPF-023]"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_bad_password_exits_nonzero_with_message(server):
    proc = spawn_agent(server, VERTEBRA_PASSWORD="wrong")
    try:
        rc = proc.wait(20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert rc != 0  # [VAP-TPF-025]
    assert proc.stderr.read().strip() != b""
