"""The shared language-neutral test vectors (``fixtures/vectors/*.json``) against the port."""

from __future__ import annotations

import glob
import json
import os
import xml.etree.ElementTree as ET

import pytest

from vertebra_agent.resources import Resource, ResourceError
from vertebra_agent.stanzas import StanzaError, decode_op_result, decode_stanza
from vertebra_agent.tokens import TokenError, parse_token, respond_token
from vertebra_agent.values import BadValue, decode_value, encode_value, loads_json, to_json

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
VECTORS = os.path.join(ROOT, "fixtures", "vectors")


def load_cases():
    cases = []
    for path in sorted(glob.glob(os.path.join(VECTORS, "*.json"))):
        if os.path.basename(path) == "schema.json":
            continue
        with open(path, encoding="utf-8") as fh:
            for case in json.load(fh)["cases"]:
                cases.append(case)
    return cases


CASES = load_cases()


def test_vectors_exist_and_ids_are_unique():
    assert len(CASES) >= 100, "fixtures/vectors is missing or nearly empty"
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids))


def same_xml(a: ET.Element, b: ET.Element) -> bool:
    """Equal after parsing: tag, attributes, text (None == ""), children in order."""
    return (a.tag == b.tag and a.attrib == b.attrib and (a.text or "") == (b.text or "")
            and len(a) == len(b) and all(same_xml(x, y) for x, y in zip(a, b)))


def json_equal(a, b) -> bool:
    """JSON equality where numbers compare by value and -0.0 == 0.0 is not enough for doubles."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def run_value(case):
    kind, expect = case["kind"], case["expect"]
    if kind == "value":
        value = decode_value(ET.fromstring(case["input"]))
    else:
        value = loads_json(case["input"])
    got = to_json(value)
    assert json_equal(got, expect["ok"]), (got, expect["ok"])
    if "canonical" in expect:
        emitted = encode_value(value)
        assert same_xml(emitted, ET.fromstring(expect["canonical"])), (
            ET.tostring(emitted), expect["canonical"])


def parse(text: str) -> ET.Element:
    """One XML element; input that is not well-formed XML (for example content after the root
    element) is a bad request, as the vectors' ``xml-syntax`` cases expect."""
    try:
        return ET.fromstring(text)
    except ET.ParseError as e:
        raise StanzaError("bad-request", f"xml-syntax: {e}") from None


def decode(case):
    kind, inp = case["kind"], case["input"]
    if kind in ("value", "json-value"):
        try:
            if kind == "value":
                return to_json(decode_value(parse(inp)))
            return to_json(loads_json(inp))
        except BadValue as e:
            raise StanzaError("bad-value", str(e)) from None
    if kind == "stanza":
        return decode_stanza(parse(inp))
    if kind == "op-result":
        return decode_op_result(parse(inp))
    if kind == "resource":
        try:
            r = Resource(inp)
        except ResourceError as e:
            raise StanzaError("bad-value", str(e)) from None
        return {"normalized": str.__str__(r), "segments": list(r.segments)}
    if kind == "resource-match":
        return Resource(inp["a"]).matches(inp["b"])
    if kind == "token":
        try:
            return {"segments": list(parse_token(inp))}
        except TokenError as e:
            raise StanzaError("bad-request", str(e)) from None
    if kind == "token-rotation":
        return respond_token(inp["token"], inp["s"])
    raise AssertionError(f"unknown vector kind {kind}")


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_vector(case):
    expect = case["expect"]
    if "error" in expect:
        with pytest.raises(StanzaError) as e:
            decode(case)
        assert e.value.condition == expect["condition"], str(e.value)
        if "token_usable" in expect:
            assert e.value.token_usable == expect["token_usable"]
        return
    if case["kind"] in ("value", "json-value"):
        run_value(case)
        return
    got = decode(case)
    assert json_equal(got, expect["ok"]), (got, expect["ok"])
