"""Typed values (spec page 04-values, ``VAP-VAL``): XML codec on ``xml.etree`` and the JSON mapping.

Python representation (lossless, every wire type has exactly one Python type):

============================  =========================================
wire element                  Python value
============================  =========================================
``i4`` (``int``/``integer``)  ``int`` (signed 32-bit)
``double``                    ``float`` (finite)
``boolean``                   ``bool``
``string``                    ``str``
``base64``                    ``bytes``
``dateTime.iso8601``          timezone-aware ``datetime`` (UTC)
``list``                      ``list``
``struct``                    ``dict`` (``str`` keys, insertion order kept)
``nil``                       ``None``
``res``                       :class:`~vertebra_agent.resources.Resource`
``exception``                 :class:`VException`
============================  =========================================

Named values (the top-level children of ``<op>``, ``<data>`` and ``<final>``) are a ``dict``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from .resources import Resource, ResourceError

NS = "http://xmlschema.engineyard.com/agent/api"
MAX_DEPTH = 32
I4_MIN, I4_MAX = -(2**31), 2**31 - 1

__all__ = [
    "NS",
    "MAX_DEPTH",
    "BadValue",
    "VException",
    "encode_value",
    "decode_value",
    "encode_named",
    "decode_named",
    "to_json",
    "from_json",
    "loads_json",
]


class BadValue(ValueError):
    """A value that cannot be encoded or decoded (``condition="bad-value"`` on the wire)."""


@dataclass(frozen=True)
class VException:
    """The ``exception`` value: a class name and a public message (no backtrace in 1.0)."""

    class_: str
    message: str


def _q(local: str) -> str:
    return f"{{{NS}}}{local}"


_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
_DOUBLE_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
_DT_RE = re.compile(
    r"(?P<y>[0-9]{4})(?P<d1>-?)(?P<mo>[0-9]{2})(?P=d1)(?P<d>[0-9]{2})"
    r"T(?P<h>[0-9]{2}):(?P<mi>[0-9]{2}):(?P<s>[0-9]{2})"
    r"(?P<tz>Z|[+-][0-9]{2}:?[0-9]{2})?\Z"
)
_WS = " \t\r\n"

# ---------------------------------------------------------------------------------------------
# scalar text forms


def format_double(x: float) -> str:
    """Shortest decimal that round-trips [VAP-VAL-014]: ``0.25``, ``1e+20``, ``-0``, ``1``.

    Python's ``repr`` gives the shortest digits; integral values lose their ``.0`` and exponents
    lose leading zeros (``1e-07`` becomes ``1e-7``).
    """
    if not math.isfinite(x):
        raise BadValue(f"double must be finite, got {x!r}")  # [VAP-VAL-012]
    text = repr(float(x))
    mant, e, exp = text.partition("e")
    if mant.endswith(".0"):
        mant = mant[:-2]
    if e:
        sign = exp[0] if exp[0] in "+-" else "+"
        digits = exp.lstrip("+-").lstrip("0") or "0"
        return f"{mant}e{sign}{digits}"
    return mant


def format_datetime(t: _dt.datetime) -> str:
    """``YYYYMMDDTHH:MM:SS`` in UTC with a ``Z`` suffix; naive datetimes are taken as UTC."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    t = t.astimezone(_dt.timezone.utc)
    # Not strftime: its %Y does not zero-pad years below 1000 on every platform [VAP-VAL-024].
    return f"{t.year:04d}{t.month:02d}{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}Z"


def parse_datetime(text: str) -> _dt.datetime:
    """Basic or extended form, optional ``Z``/offset (none = UTC) [VAP-VAL-025]; surrounding
    whitespace ignored; no fractional or leap seconds, offsets within ±23:59, UTC years
    0001 … 9999 [VAP-VAL-026]."""
    text = text.strip(_WS)
    m = _DT_RE.match(text)
    if not m:
        raise BadValue(f"bad dateTime.iso8601 {text!r}")
    try:
        t = _dt.datetime(
            int(m["y"]), int(m["mo"]), int(m["d"]), int(m["h"]), int(m["mi"]), int(m["s"])
        )
    except ValueError as e:
        raise BadValue(f"bad dateTime.iso8601 {text!r}: {e}") from None
    tz = m["tz"]
    if tz is None or tz == "Z":  # no zone = UTC [VAP-VAL-025]
        off = _dt.timezone.utc
    else:
        sign = 1 if tz[0] == "+" else -1
        hh, mm = int(tz[1:3]), int(tz[-2:])
        if hh > 23 or mm > 59:
            raise BadValue(f"bad UTC offset in {text!r}")
        off = _dt.timezone(sign * _dt.timedelta(hours=hh, minutes=mm))
    try:
        return t.replace(tzinfo=off).astimezone(_dt.timezone.utc)
    except (OverflowError, ValueError):  # the UTC instant falls outside years 0001 … 9999
        raise BadValue(f"dateTime.iso8601 {text!r} is outside UTC years 0001 … 9999") from None


def parse_i4(text: str) -> int:
    text = text.strip(_WS)  # [VAP-VAL-009]
    if not _INT_RE.match(text):
        raise BadValue(f"bad i4 {text!r}")
    v = int(text)
    if not I4_MIN <= v <= I4_MAX:
        raise BadValue(f"i4 {text} out of the signed 32-bit range")
    return v


def parse_double(text: str) -> float:
    text = text.strip(_WS)  # [VAP-VAL-013]
    if not _DOUBLE_RE.match(text):
        raise BadValue(f"bad double {text!r}")
    v = float(text)
    if not math.isfinite(v):
        raise BadValue(f"double {text!r} is not finite")
    return v


def parse_boolean(text: str) -> bool:
    text = text.strip(_WS)  # [VAP-VAL-016]
    if text in ("1", "true"):
        return True
    if text in ("0", "false"):
        return False
    raise BadValue(f"bad boolean {text!r}")


def parse_base64(text: str) -> bytes:
    compact = "".join(text.split())
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadValue(f"bad base64: {e}") from None


# ---------------------------------------------------------------------------------------------
# XML encoding


def encode_value(value: Any, name: str | None = None, *, _depth: int = 1) -> ET.Element:
    """Encode one Python value as a typed-value element (in the Vertebra namespace)."""
    if _depth > MAX_DEPTH:
        raise BadValue(f"values nest deeper than {MAX_DEPTH}")
    if isinstance(value, bool):
        el = ET.Element(_q("boolean"))
        el.text = "1" if value else "0"
    elif isinstance(value, int):
        if not I4_MIN <= value <= I4_MAX:
            raise BadValue(f"integer {value} does not fit i4 (signed 32-bit)")
        el = ET.Element(_q("i4"))
        el.text = str(value)
    elif isinstance(value, float):
        el = ET.Element(_q("double"))
        el.text = format_double(value)
    elif isinstance(value, Resource):
        el = ET.Element(_q("res"))
        el.text = str.__str__(value)
    elif isinstance(value, str):
        el = ET.Element(_q("string"))
        el.text = value
    elif isinstance(value, (bytes, bytearray)):
        el = ET.Element(_q("base64"))
        el.text = base64.b64encode(bytes(value)).decode("ascii")
    elif isinstance(value, _dt.datetime):
        el = ET.Element(_q("dateTime.iso8601"))
        el.text = format_datetime(value)
    elif value is None:
        el = ET.Element(_q("nil"))
    elif isinstance(value, VException):
        el = ET.Element(_q("exception"))
        for key, text in (("class", value.class_), ("message", value.message)):
            el.append(encode_value(text, key, _depth=_depth + 1))
    elif isinstance(value, dict):
        el = ET.Element(_q("struct"))
        for key, item in value.items():
            if not isinstance(key, str):
                raise BadValue(f"struct keys must be strings, got {key!r}")
            el.append(encode_value(item, key, _depth=_depth + 1))
    elif isinstance(value, (list, tuple)):
        el = ET.Element(_q("list"))
        for item in value:
            el.append(encode_value(item, None, _depth=_depth + 1))
    else:
        raise BadValue(f"no Vertebra type for Python {type(value).__name__}")
    if name is not None:
        el.set("name", name)
    return el


def encode_named(values: dict[str, Any] | None, parent: ET.Element) -> ET.Element:
    """Append named values as children of ``parent`` (``<op>``, ``<data>``, ``<final>``)."""
    for key, item in (values or {}).items():
        if not isinstance(key, str):
            raise BadValue(f"value names must be strings, got {key!r}")
        parent.append(encode_value(item, key))
    return parent


# ---------------------------------------------------------------------------------------------
# XML decoding


def _local(tag: Any) -> str | None:
    """Local name of an element in the Vertebra namespace, else None."""
    if not isinstance(tag, str):  # comments / processing instructions
        return None
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        return local if ns == NS else None
    return None


def _leaf_text(el: ET.Element, kind: str) -> str:
    if len(el):
        raise BadValue(f"<{kind}> must not contain child elements")
    return el.text or ""


def _container_children(el: ET.Element, kind: str) -> list[ET.Element]:
    if (el.text or "").strip(_WS):
        raise BadValue(f"<{kind}> must not contain text")
    for child in el:
        if (child.tail or "").strip(_WS):
            raise BadValue(f"<{kind}> must not contain text")
    return list(el)


def decode_value(el: ET.Element, *, _depth: int = 1) -> Any:
    """Decode one typed-value element.  Raises :class:`BadValue` on anything not allowed."""
    if _depth > MAX_DEPTH:
        raise BadValue(f"values nest deeper than {MAX_DEPTH}")
    kind = _local(el.tag)
    if kind is None:
        raise BadValue(f"unknown element {el.tag!r}")
    if kind in ("i4", "int", "integer"):
        return parse_i4(_leaf_text(el, kind))
    if kind == "double":
        return parse_double(_leaf_text(el, kind))
    if kind == "boolean":
        return parse_boolean(_leaf_text(el, kind))
    if kind == "string":
        return _leaf_text(el, kind)
    if kind == "base64":
        return parse_base64(_leaf_text(el, kind))
    if kind == "dateTime.iso8601":
        return parse_datetime(_leaf_text(el, kind))
    if kind == "nil":
        if _leaf_text(el, kind).strip(_WS):  # whitespace-only text is ignored [VAP-VAL-027]
            raise BadValue("<nil> must be empty")
        return None
    if kind == "res":
        try:
            return Resource(_leaf_text(el, kind))
        except ResourceError as e:
            raise BadValue(str(e)) from None
    if kind == "list":
        return [decode_value(c, _depth=_depth + 1) for c in _container_children(el, kind)]
    if kind == "struct":
        return _decode_named_children(_container_children(el, kind), kind, _depth + 1)
    if kind == "exception":
        # Members other than class and message are ignored whatever they hold; class and
        # message must each appear once, as strings [VAP-VAL-036] [VAP-VAL-038].
        found: dict[str, Any] = {}
        for child in _container_children(el, kind):
            name = child.get("name")
            if name not in ("class", "message"):
                continue
            if name in found:
                raise BadValue(f"<exception> member {name!r} repeated")
            found[name] = decode_value(child, _depth=_depth + 1)
        cls, msg = found.get("class"), found.get("message")
        if not isinstance(cls, str) or not isinstance(msg, str):
            raise BadValue("<exception> needs the strings 'class' and 'message'")
        return VException(cls, msg)
    raise BadValue(f"unknown value type <{kind}>")


def _decode_named_children(children: list[ET.Element], where: str, depth: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for child in children:
        name = child.get("name")
        if not name:  # [VAP-VAL-001] [VAP-VAL-003] [VAP-VAL-032]
            raise BadValue(f"unnamed value inside <{where}>")
        if name in out:
            raise BadValue(f"duplicate name {name!r} inside <{where}>")
        out[name] = decode_value(child, _depth=depth)
    return out


def decode_named(parent: ET.Element) -> dict[str, Any]:
    """Decode the named values that are the children of ``<op>``, ``<data>`` or ``<final>``."""
    return _decode_named_children(_container_children(parent, _local(parent.tag) or "?"),
                                  _local(parent.tag) or "?", 1)


# ---------------------------------------------------------------------------------------------
# JSON mapping (tagged, lossless)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise BadValue(f"duplicate JSON member {k!r}")  # like duplicate XML names
        out[k] = v
    return out


def loads_json(text: str) -> Any:
    """Parse JSON text of a tagged value, rejecting duplicate members [VAP-VAL-040]."""
    import json

    try:
        return from_json(json.loads(text, object_pairs_hook=_no_duplicates))
    except ValueError as e:  # JSONDecodeError is a ValueError; BadValue too
        if isinstance(e, BadValue):
            raise
        raise BadValue(f"bad JSON: {e}") from None


def to_json(value: Any) -> Any:
    """Python value → tagged JSON (``{"i4": 1}``, ``{"list": [...]}`` ...)."""
    if isinstance(value, bool):
        return {"boolean": value}
    if isinstance(value, int):
        return {"i4": value}
    if isinstance(value, float):
        return {"double": value}
    if isinstance(value, Resource):
        return {"res": str.__str__(value)}
    if isinstance(value, str):
        return {"string": value}
    if isinstance(value, (bytes, bytearray)):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        t = value.astimezone(_dt.timezone.utc)  # RFC 3339 in UTC [VAP-VAL-039]
        return {"dateTime": f"{t.year:04d}-{t.month:02d}-{t.day:02d}T"
                            f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}Z"}
    if value is None:
        return {"nil": None}
    if isinstance(value, VException):
        return {"exception": {"class": value.class_, "message": value.message}}
    if isinstance(value, dict):
        return {"struct": {k: to_json(v) for k, v in value.items()}}
    if isinstance(value, (list, tuple)):
        return {"list": [to_json(v) for v in value]}
    raise BadValue(f"no Vertebra type for Python {type(value).__name__}")


def from_json(obj: Any, *, _depth: int = 1) -> Any:
    """Tagged JSON → Python value (inverse of :func:`to_json`), same rules as XML [VAP-VAL-040]."""
    if _depth > MAX_DEPTH:
        raise BadValue(f"values nest deeper than {MAX_DEPTH}")
    if not isinstance(obj, dict) or len(obj) != 1:
        raise BadValue(f"a JSON value must be an object with one type tag, got {obj!r}")
    ((tag, v),) = obj.items()
    if tag == "i4":
        if isinstance(v, bool) or not isinstance(v, int) or not I4_MIN <= v <= I4_MAX:
            raise BadValue(f"bad i4 {v!r}")
        return v
    if tag == "double":
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise BadValue(f"bad double {v!r}")
        return float(v)
    if tag == "boolean":
        if not isinstance(v, bool):
            raise BadValue(f"bad boolean {v!r}")
        return v
    if tag == "string":
        if not isinstance(v, str):
            raise BadValue(f"bad string {v!r}")
        return v
    if tag == "base64":
        if not isinstance(v, str):
            raise BadValue(f"bad base64 {v!r}")
        return parse_base64(v)
    if tag in ("dateTime", "dateTime.iso8601"):
        if not isinstance(v, str):
            raise BadValue(f"bad dateTime {v!r}")
        return parse_datetime(v)
    if tag == "nil":
        if v is not None:
            raise BadValue("nil must be null")
        return None
    if tag == "res":
        try:
            return Resource(v)
        except ResourceError as e:
            raise BadValue(str(e)) from None
    if tag == "list":
        if not isinstance(v, list):
            raise BadValue("list must be an array")
        return [from_json(x, _depth=_depth + 1) for x in v]
    if tag == "struct":
        if not isinstance(v, dict):
            raise BadValue("struct must be an object")
        if any(k == "" for k in v):
            raise BadValue("struct member names must be non-empty")
        return {k: from_json(x, _depth=_depth + 1) for k, x in v.items()}
    if tag == "exception":
        if not isinstance(v, dict) or not {"class", "message"} <= set(v):
            raise BadValue("exception must be {class, message}")
        if not isinstance(v["class"], str) or not isinstance(v["message"], str):
            raise BadValue("exception class and message must be strings")
        return VException(v["class"], v["message"])
    raise BadValue(f"unknown type tag {tag!r}")
