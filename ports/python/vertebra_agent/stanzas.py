"""Decoding of whole Vertebra elements into plain payload dicts (the shape of
``fixtures/vectors``), with the condition a receiver reports when an element is malformed.

The lifecycle engine (:mod:`vertebra_agent.core`) applies the same rules; this module is the
single-element view used by the shared test vectors and by tools.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

from .resources import Resource, ResourceError
from .tokens import TokenError, parse_token
from .values import NS, BadValue, _local, decode_named, decode_value, parse_double, to_json

__all__ = ["StanzaError", "decode_stanza", "decode_op_result", "SCOPES", "parse_version"]

SCOPES = ("all", "single", "direct")  # [VAP-OPS-015]
_VERSION = re.compile(r"([0-9]+)\.([0-9]+)\Z")
_UINT = re.compile(r"[0-9]+\Z")
_ELEMENTS = ("op", "ack", "nack", "data", "final", "error", "cancel", "load")


class StanzaError(ValueError):
    """A malformed element: ``condition`` is what the receiver reports (spec/10-errors.md),
    ``token_usable`` says whether an op can still get an op result."""

    def __init__(self, condition: str, message: str, token_usable: bool | None = None):
        super().__init__(f"{condition}: {message}")
        self.condition = condition
        self.token_usable = token_usable


def parse_version(text: str | None) -> str | None:
    """``None`` for legacy; ``"1.0"`` for any 1.x [VAP-VER-003]; else unsupported [VAP-VER-004]."""
    if text is None:
        return None
    m = _VERSION.match(text)
    if not m or int(m.group(1)) != 1:
        raise StanzaError("unsupported-version", f"version {text!r}", True)
    return "1.0"


def _uint(el: ET.Element, attr: str, lo: int, hi: int | None, *, required: bool,
          condition: str = "bad-value", token_usable: bool | None = None) -> int | None:
    raw = el.get(attr)
    if raw is None:
        if required:
            raise StanzaError(condition, f"missing {attr}", token_usable)
        return None
    raw = raw.strip()
    if not _UINT.match(raw) or not lo <= int(raw) <= (hi if hi is not None else int(raw)):
        raise StanzaError(condition, f"bad {attr} {raw!r}", token_usable)
    return int(raw)


def _composite_token(el: ET.Element) -> str:
    """Every element after the op result carries T:S (two segments)."""
    token = el.get("token")
    try:
        if token is None or len(parse_token(token)) != 2:
            raise TokenError("not T:S")
    except TokenError:
        raise StanzaError("bad-request", f"token {token!r} is not T:S") from None
    return token


def _args(el: ET.Element, token_usable: bool | None = None) -> dict[str, Any]:
    try:
        return {k: to_json(v) for k, v in decode_named(el).items()}
    except BadValue as e:
        raise StanzaError("bad-value", str(e), token_usable) from None


def _decode_op(el: ET.Element) -> dict[str, Any]:
    token = el.get("token")
    try:
        if token is None:
            raise TokenError("missing")
        parse_token(token)
    except TokenError:
        raise StanzaError("bad-request", f"token {token!r}", False) from None  # [VAP-OPS-006]
    version = parse_version(el.get("version"))  # order of checks [VAP-OPS-084]
    legacy = version is None
    timeout = _uint(el, "timeout", 1, 86_400_000, required=not legacy, token_usable=True)
    try:
        op_type = Resource(el.get("type", ""))
    except ResourceError as e:
        raise StanzaError("bad-value", str(e), True) from None
    window = _uint(el, "window", 1, 64, required=False, token_usable=True)
    scope = el.get("scope")
    if scope is not None and scope not in SCOPES:
        raise StanzaError("bad-value", f"scope {scope!r}", True)
    out: dict[str, Any] = {"element": "op", "token": token, "type": str.__str__(op_type),
                           "version": version, "timeout": timeout, "scope": scope,
                           "window": window}
    if legacy:
        from .core import _decode_legacy  # noqa: PLC0415 - shared legacy rules

        try:
            values, keyless = _decode_legacy(el)
        except BadValue as e:
            raise StanzaError("bad-value", str(e), True) from None
        out["args"] = {k: to_json(v) for k, v in values.items()}
        if keyless:
            out["unkeyed_resources"] = [str.__str__(r) for r in keyless]
    else:
        out["args"] = _args(el, True)
    return out


def decode_stanza(el: ET.Element) -> dict[str, Any]:
    """Decode the Vertebra child of an IQ set (or the ``load`` of a presence)."""
    kind = _local(el.tag)
    if kind is None:
        raise StanzaError("service-unavailable", f"{el.tag} is not in {NS}")  # [VAP-TRN-011]
    if kind not in _ELEMENTS:
        raise StanzaError("bad-request", f"unknown element <{kind}>")  # [VAP-TRN-010]
    if kind == "op":
        return _decode_op(el)
    if kind == "load":
        value = el.get("value")
        if value is None:
            raise StanzaError("bad-value", "missing value")
        try:
            v = parse_double(value)
        except BadValue:
            raise StanzaError("bad-value", f"bad value {value!r}") from None
        if v < 0:
            raise StanzaError("bad-value", "negative load")
        return {"element": "load", "value": v,
                "inflight": _uint(el, "inflight", 0, None, required=True),
                "capacity": _uint(el, "capacity", 1, None, required=True),
                "interval": _uint(el, "interval", 100, 60_000, required=True)}
    token = _composite_token(el)
    if kind in ("ack", "cancel"):
        return {"element": kind, "token": token}
    if kind == "nack":
        reason = el.get("reason")
        if reason not in ("not-authorized", "authorization-unavailable"):
            reason = "not-authorized"  # [VAP-ERR-005]
        return {"element": "nack", "token": token, "reason": reason}
    if kind == "data":
        return {"element": "data", "token": token,
                "seq": _uint(el, "seq", 0, None, required=False), "args": _args(el)}
    if kind == "final":
        return {"element": "final", "token": token,
                "count": _uint(el, "count", 0, None, required=False), "args": _args(el)}
    # error: unknown type/condition kept [VAP-ERR-004]; none → None (reported "unspecified")
    reason = None
    for child in el:
        if child.get("name") == "reason" and _local(child.tag) == "string":
            reason = decode_value(child)
    return {"element": "error", "token": token, "type": el.get("type"),
            "condition": el.get("condition"), "reason": reason}


def decode_op_result(el: ET.Element | None, sent_token: str | None = None) -> dict[str, Any]:
    """The child of the IQ result answering an op [VAP-OPS-022] [VAP-OPS-023] [VAP-VER-015]."""
    if el is None or el.tag not in (f"{{{NS}}}op", "op", "{jabber:client}op"):
        raise StanzaError("bad-response", "the op result has no op child")
    token = el.get("token")
    try:
        if token is None or len(parse_token(token)) != 2:
            raise TokenError("not T:S")
    except TokenError:
        raise StanzaError("bad-response", f"op result token {token!r}") from None
    if sent_token is not None and not token.startswith(sent_token.split(":")[-1] + ":"):
        raise StanzaError("bad-response", "foreign token")
    return {"element": "op-result", "token": token, "ack": el.get("ack") == "true"}
