"""Nothing produced between the loss of a session and the next login reaches the next session
[VAP-OPS-081]: slixmpp would keep such stanzas and send them after the next login, so the binding
refuses them while no session is up (an IQ set fails at once with IqTimeout, a presence is
dropped) and sends normally while one is."""

import asyncio
import time
import xml.etree.ElementTree as ET

import pytest

from vertebra_agent.transport import IqTimeout
from vertebra_agent.xmpp import VertebraClient

NS = "http://xmlschema.engineyard.com/agent/api"


def client():
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    c = VertebraClient("agent@localhost/agent", "pw")
    c.sent = []
    c.send = lambda data, use_filters=True: c.sent.append(data)
    return c, loop


def ack():
    return ET.Element(f"{{{NS}}}ack", {"token": "ab:cd"})


def test_sends_are_refused_without_a_session_and_pass_with_one():
    c, loop = client()
    assert not c.live
    t0 = time.monotonic()
    with pytest.raises(IqTimeout):
        loop.run_until_complete(c.send_set("r@localhost/x", ack(), iq_id="i1", timeout=5.0))
    assert time.monotonic() - t0 < 1.0, "refused at once, not after the timeout"
    c.send_presence_payload("d@localhost/d", None)
    assert c.sent == []

    loop.run_until_complete(c._on_session_start(None))
    assert c.live
    c.sent.clear()  # the initial presence
    c.send_presence_payload("d@localhost/d", None)
    assert len(c.sent) == 1
    with pytest.raises(IqTimeout):  # sent, but nobody answers within 50 ms
        loop.run_until_complete(c.send_set("r@localhost/x", ack(), iq_id="i2", timeout=0.05))
    assert len(c.sent) == 2 and c.sent[1]["id"] == "i2"

    c._on_disconnected(None)  # the session is lost
    assert not c.live and c.ended.is_set()
    with pytest.raises(IqTimeout):
        loop.run_until_complete(c.send_set("r@localhost/x", ack(), iq_id="i3", timeout=5.0))
    c.send_presence_payload("d@localhost/d", None)
    assert len(c.sent) == 2, "nothing produced for the lost session was handed to slixmpp"

    loop.run_until_complete(c._on_session_start(None))  # the next session
    assert c.live
    c._on_session_end(None)
    assert not c.live
    loop.close()
