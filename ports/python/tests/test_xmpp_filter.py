"""The slixmpp binding keeps stanzas with malformed JIDs away from slixmpp (fuzz finding
fixtures/traces/findings/python-jid-bidi-resource.json): IQ get/set gets jid-malformed, the session
survives [VAP-TRN-006] [VAP-TRN-025]."""

import asyncio
import xml.etree.ElementTree as ET

from vertebra_agent.xmpp import VertebraClient

BAD = "requester@localhost/\u202e\u200br\u00e9source"


def client():
    asyncio.set_event_loop(asyncio.new_event_loop())
    c = VertebraClient("agent@localhost/agent", "pw")
    c.sent = []
    c.send_raw = c.sent.append
    return c


def test_malformed_from_is_answered_and_dropped():
    c = client()
    iq = ET.Element("{jabber:client}iq", {"type": "set", "id": "f1", "from": BAD,
                                          "to": "agent@localhost/agent"})
    out = c.incoming_filter(iq)
    assert out.tag == "{urn:vertebra:python-port}ignored"
    assert len(c.sent) == 1 and "jid-malformed" in c.sent[0] and "id=\"f1\"" in c.sent[0]
    assert ET.fromstring(c.sent[0].replace("<iq", "<iq xmlns='jabber:client'", 1)).get("to") == BAD


def test_malformed_presence_is_dropped_silently_and_good_stanzas_pass():
    c = client()
    pres = ET.Element("{jabber:client}presence", {"from": BAD, "type": "unavailable"})
    assert c.incoming_filter(pres).tag == "{urn:vertebra:python-port}ignored"
    assert c.sent == []
    ok = ET.Element("{jabber:client}iq", {"type": "get", "id": "p", "from": "a@b/c"})
    assert c.incoming_filter(ok) is ok
