"""The 2008 captures in ``fixtures/legacy/``: the port never crashes on them — every Vertebra
element either decodes or is refused with a spec condition, and a port agent answers every op
IQ among them exactly once (op result or IQ error)."""

from __future__ import annotations

import glob
import os
import xml.etree.ElementTree as ET

import pytest
from bus import Bus
from test_lifecycle import async_test

from vertebra_agent.stanzas import StanzaError, decode_stanza
from vertebra_agent.values import NS

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
CAPTURES = sorted(glob.glob(os.path.join(ROOT, "fixtures", "legacy", "era-*.xml")))
CONDITIONS = {"bad-value", "bad-request", "service-unavailable", "unsupported-version"}


def test_captures_exist():
    assert len(CAPTURES) >= 20


@pytest.mark.parametrize("path", CAPTURES, ids=[os.path.basename(p) for p in CAPTURES])
@async_test
async def test_capture_is_decoded_or_refused(path):
    stanza = ET.parse(path).getroot()
    children = list(stanza)
    for child in children:
        try:
            decode_stanza(child)
        except StanzaError as e:
            assert e.condition in CONDITIONS, e
    local = stanza.tag.split("}")[-1]
    if local == "iq" and stanza.get("type") in ("get", "set") and children:
        # an agent at the capture's "to" answers it once, without raising
        bus = Bus()
        core = bus.core(stanza.get("to") or "agent@example.net/agent", authorize=False)
        reply = core.handle_iq_children(stanza.get("from") or "peer@example.net/x",
                                        stanza.get("id") or "0", stanza.get("type"), children)
        first = children[0]
        if first.tag == f"{{{NS}}}op" and not reply.is_error:
            assert reply.payload is not None and reply.payload.get("token")
