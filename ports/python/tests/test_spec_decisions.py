"""The spec decisions taken on the port's findings (SPEC-FINDINGS.md B1–B5), checked directly."""

import datetime as dt
import sys
import xml.etree.ElementTree as ET

import pytest

from vertebra_agent.resources import Resource, ResourceError
from vertebra_agent.values import NS, BadValue, VException, decode_value, format_double


def el(body: str):
    return decode_value(ET.fromstring(body.replace(">", f' xmlns="{NS}">', 1)))


# B1: the canonical double form of spec §4.2 (table under "Doubles") [VAP-VAL-014]
CANONICAL = [
    (1.0, "1"),
    (0.25, "0.25"),
    (-42.42, "-42.42"),
    (0.1 + 0.2, "0.30000000000000004"),
    (0.0001, "0.0001"),
    (0.00001, "1e-5"),
    (1.5e-7, "1.5e-7"),
    (1e15, "1000000000000000"),
    (1e16, "1e+16"),
    (123456789012345678.0, "1.2345678901234568e+17"),
    (sys.float_info.max, "1.7976931348623157e+308"),
    (5e-324, "5e-324"),
    (-0.0, "-0"),
    (0.0, "0"),
    (100.0, "100"),
    (1059438285926254.25, "1059438285926254.2"),  # a tie: the even last digit
    (26363981746409.3125, "26363981746409.312"),  # a tie: the even last digit
]


@pytest.mark.parametrize("x,text", CANONICAL)
def test_canonical_double(x, text):
    assert format_double(x) == text
    assert float(text) == x


# B2: whitespace inside nil is ignored, anything else is content [VAP-VAL-027]
def test_nil_whitespace():
    assert el("<nil> \n\t</nil>") is None
    with pytest.raises(BadValue):
        el("<nil>x</nil>")
    with pytest.raises(BadValue):
        el("<nil><nil/></nil>")


# B3: exception members [VAP-VAL-036] [VAP-VAL-038]
def test_exception_members():
    ok = ('<exception><string name="class">C</string><string name="message">m</string>'
          '<list name="backtrace"><string>x</string></list><i4>7</i4><bogus name="b"/></exception>')
    assert el(ok) == VException("C", "m")
    for bad in [
        '<exception><string name="class">C</string></exception>',
        '<exception><i4 name="class">1</i4><string name="message">m</string></exception>',
        '<exception><string name="class">C</string><string name="class">D</string>'
        '<string name="message">m</string></exception>',
    ]:
        with pytest.raises(BadValue):
            el(bad)


# B4: date-times [VAP-VAL-025] [VAP-VAL-026]
def test_datetime_edges():
    utc = dt.timezone.utc
    assert el("<dateTime.iso8601> 20090317T12:00:00Z\n</dateTime.iso8601>") == dt.datetime(
        2009, 3, 17, 12, tzinfo=utc)
    assert el("<dateTime.iso8601>00010101T00:00:00Z</dateTime.iso8601>").year == 1
    for bad in ["20090317T12:00:00.5Z", "20090317T12:00:60Z", "20090317T12:00:00+24:00",
                "00000101T00:00:00Z", "00010101T00:30:00+01:00", "99991231T23:30:00-01:00"]:
        with pytest.raises(BadValue):
            el(f"<dateTime.iso8601>{bad}</dateTime.iso8601>")


# B5 and VAP-RES-018: white space, `//`, length
def test_resource_edges():
    for bad in ["//", "/gem//", " /gem", "/gem\u00a0", "/gem\u3000", "/a /", "/a\u00a0/",
                "/" + "x" * 4096]:
        with pytest.raises(ResourceError):
            Resource(bad)
    assert Resource("/" + "x" * 4095) == "/" + "x" * 4095
    assert Resource("/a\u00a0b") == "/a\u00a0b"  # inner white space is part of the segment
