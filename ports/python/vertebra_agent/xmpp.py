"""slixmpp binding: an XMPP client session that feeds :class:`~vertebra_agent.core.AgentCore`."""

from __future__ import annotations

import asyncio
import importlib
import logging
import types
import xml.etree.ElementTree as ET
from xml.sax.saxutils import quoteattr

import slixmpp
from slixmpp import JID
from slixmpp.exceptions import IqError as SlixIqError
from slixmpp.exceptions import IqTimeout as SlixIqTimeout
from slixmpp.jid import InvalidJID
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher.base import MatcherBase

from .transport import IqError, IqTimeout, Reply
from .values import NS

log = logging.getLogger("vertebra_agent.xmpp")

__all__ = ["VertebraClient"]

FEATURE_BASE = "urn:vertebra:1.0"
FEATURE_CANCEL = "urn:vertebra:1.0:cancel"
FEATURE_LOAD = "urn:vertebra:1.0:load"
FEATURE_TEST_PROFILE = "urn:vertebra:1.0:test-profile"


def _install_cr_escape() -> None:
    """slixmpp's serializer leaves ``\\r`` raw; XML parsers would turn it into ``\\n``.

    [VAP-VAL-019] requires ``&#13;``.  slixmpp's ``tostring`` looks ``escape`` up as a module
    global, so wrapping it fixes every stanza this process sends.
    """
    _tostring = importlib.import_module("slixmpp.xmlstream.tostring")
    original = _tostring.escape
    if getattr(original, "__vertebra_cr__", False):
        return

    def escape(text: str, use_cdata: bool = False) -> str:
        return original(text, use_cdata).replace("\r", "&#13;")

    escape.__vertebra_cr__ = True
    _tostring.escape = escape


_install_cr_escape()


class _VertebraIq(MatcherBase):
    """IQ get/set whose (first) child element is in the Vertebra namespace."""

    def __init__(self) -> None:
        super().__init__(None)

    def match(self, stanza) -> bool:
        if stanza.name != "iq" or stanza["type"] not in ("get", "set"):
            return False
        return len(stanza.xml) > 0 and str(stanza.xml[0].tag).startswith("{%s}" % NS)


def _service_unavailable(stanza) -> None:
    """[VAP-TRN-011]: an IQ get/set nobody understands gets service-unavailable."""
    if stanza["type"] in ("get", "set"):
        reply = stanza.reply()
        reply["type"] = "error"
        reply["error"]["type"] = "cancel"
        reply["error"]["condition"] = "service-unavailable"
        reply.send()


class VertebraClient(slixmpp.ClientXMPP):
    """One XMPP session; implements the :class:`~vertebra_agent.transport.Transport` protocol."""

    def __init__(self, jid: str, password: str, *, identity_name: str = "vertebra agent",
                 test_profile: bool = False):
        super().__init__(jid, password, plugin_config={
            "feature_mechanisms": {"unencrypted_plain": True, "unencrypted_scram": True},
        })
        self.core = None  # set by the Agent before connecting
        self.enable_starttls = False
        self.enable_direct_tls = False
        self.enable_plaintext = True
        self.register_plugin("xep_0030")
        self.register_plugin("xep_0199", {"keepalive": False})
        disco = self.plugin["xep_0030"]
        disco.add_identity(category="automation", itype="vertebra-agent", name=identity_name)
        for feature in (FEATURE_BASE, FEATURE_CANCEL, FEATURE_LOAD):  # [VAP-TRN-022]
            disco.add_feature(feature)
        if test_profile:  # [VAP-TRN-024]
            disco.add_feature(FEATURE_TEST_PROFILE)
        self.register_handler(Callback("vertebra", _VertebraIq(), self._on_vertebra_iq))
        self.add_filter("in", self._route_unhandled)
        self.add_event_handler("presence_unavailable", self._on_unavailable)
        self.online = asyncio.Event()
        self.ended = asyncio.Event()
        # Whether a session is up. slixmpp keeps whatever is sent between the loss of a session
        # and the next one and sends it after the next login; Vertebra stanzas produced in that
        # gap belong to the lost session and must not reach the new one [VAP-OPS-081], so they
        # are refused here instead (send_set raises IqTimeout at once, presences are dropped).
        self.live = False
        self.add_event_handler("session_start", self._on_session_start)
        self.add_event_handler("session_end", self._on_session_end)
        self.add_event_handler("disconnected", self._on_disconnected)
        self.add_event_handler("connection_failed", self._on_failed)
        self.add_event_handler("failed_all_auth", self._on_failed)

    # -- Transport ---------------------------------------------------------------------------

    async def send_set(self, to: str, payload: ET.Element, *, iq_id: str, timeout: float):
        if not self.live:
            # no answer can come: the session this was meant for is gone [VAP-OPS-081]
            raise IqTimeout(f"no session to send to {to} on")
        iq = self.Iq()
        iq["type"] = "set"
        iq["to"] = to
        iq["id"] = iq_id
        iq.xml.append(payload)
        try:
            res = await iq.send(timeout=max(0.001, timeout))
        except SlixIqError as e:
            err = e.iq["error"]
            raise IqError(err["type"] or "cancel", err["condition"] or "undefined-condition",
                          err["text"] or "") from None
        except SlixIqTimeout:
            raise IqTimeout(f"no answer from {to} within {timeout:.3f}s") from None
        return res.xml[0] if len(res.xml) else None

    def send_presence_payload(self, to: str, payload: ET.Element | None) -> None:
        if not self.live:
            log.debug("no session: presence to %s dropped", to)  # [VAP-OPS-081]
            return
        pres = self.make_presence(pto=to)
        if payload is not None:
            pres.xml.append(payload)
        pres.send()

    def vertebra_transport(self):
        """The :class:`~vertebra_agent.transport.Transport` view of this session."""
        client = self

        class _T:
            jid = property(lambda _self: str(client.boundjid.full))

            def new_id(_self):
                return client.new_id()

            async def send_set(_self, to, payload, *, iq_id, timeout):
                return await client.send_set(to, payload, iq_id=iq_id, timeout=timeout)

            def send_presence(_self, to, payload):
                client.send_presence_payload(to, payload)

        return _T()

    # -- incoming ----------------------------------------------------------------------------

    def incoming_filter(self, xml: ET.Element) -> ET.Element:
        """Keep stanzas whose ``from``/``to`` is not a valid JID (RFC 7622) away from slixmpp.

        slixmpp parses those attributes lazily and raises ``InvalidJID`` deep inside its stanza
        code, which ends the whole session (found by the fuzzer: a resource holding U+202E
        U+200B, fixtures/traces/findings/python-jid-bidi-resource.json). Such an IQ get/set is
        answered here with ``jid-malformed`` written as raw XML [VAP-TRN-006]; the stanza is
        replaced by an element no handler matches, so the session and pings go on
        [VAP-TRN-025]."""
        bad = None
        for attr in ("from", "to"):
            value = xml.get(attr)
            if value:
                try:
                    JID(value)
                except InvalidJID:
                    bad = attr
                    break
        if bad is None:
            return xml
        log.info("ignoring a stanza with a malformed %s JID", bad)
        if xml.tag == "{jabber:client}iq" and xml.get("type") in ("get", "set"):
            attrs = " type='error'"
            if xml.get("id") is not None:
                attrs += f" id={quoteattr(xml.get('id'))}"
            if xml.get("from"):
                attrs += f" to={quoteattr(xml.get('from'))}"
            self.send_raw(
                f"<iq{attrs}><error type='modify'><jid-malformed "
                "xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
            )
        return ET.Element("{urn:vertebra:python-port}ignored")

    def _route_unhandled(self, stanza):
        if stanza.name == "iq":
            stanza.unhandled = types.MethodType(_service_unavailable, stanza)
        return stanza

    def _on_vertebra_iq(self, iq) -> None:
        if self.core is None:
            _service_unavailable(iq)
            return
        frm = str(JID(iq["from"]).full) if iq["from"] else self.boundjid.domain
        child = iq.xml[0]
        try:
            reply: Reply = self.core.handle_iq_children(frm, iq["id"], iq["type"], list(iq.xml))
        except Exception:  # noqa: BLE001 - always answer [VAP-TRN-006]
            log.exception("internal error handling %s", child.tag)
            reply = Reply.error("wait", "internal-server-error")
        out = iq.reply(clear=True)
        if reply.is_error:
            out["type"] = "error"
            out["error"]["type"] = reply.etype
            out["error"]["condition"] = reply.condition
        elif reply.payload is not None:
            out.xml.append(reply.payload)
        out.send()

    def _on_unavailable(self, pres) -> None:
        if self.core is not None and pres["from"]:
            self.core.peer_unavailable(str(JID(pres["from"]).full))

    async def _on_session_start(self, _event) -> None:
        self.live = True
        self.send_presence()  # initial available presence [VAP-TRN-003]
        self.online.set()

    def _on_session_end(self, _event) -> None:
        self.live = False

    def _on_disconnected(self, _event) -> None:
        self.live = False
        if self.core is not None:
            self.core.abort_all()  # [VAP-OPS-081]
        self.ended.set()

    def _on_failed(self, _event) -> None:
        self.ended.set()
