"""Resource paths (spec page 05-resources, ``VAP-RES``).

A resource is a slash-separated path such as ``/cluster/rd00``.  :class:`Resource` is a ``str``
subclass holding the *normalized* form, so it can be used wherever a string is expected, while the
value codec still tells it apart from a plain ``string`` value.
"""

from __future__ import annotations

import unicodedata

__all__ = ["Resource", "ResourceError", "matches"]


class ResourceError(ValueError):
    """A resource path that is not valid (bad-value on the wire)."""


# Characters with the Unicode White_Space property [VAP-RES-008].
WHITE_SPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
# Longest path accepted, in UTF-8 bytes [VAP-RES-018] (a receiver MAY reject longer ones; the port
# does, like the Rust implementation, so both give the same answer).
MAX_RESOURCE_BYTES = 4096


def _is_control(ch: str) -> bool:
    # Unicode general category Cc: C0 and C1 control characters (and DEL).
    return unicodedata.category(ch) == "Cc"


class Resource(str):
    """A normalized resource path.

    Normalization: a leading ``/`` is required, one trailing ``/`` is removed, empty segments
    (``//``, also the path ``//`` itself) are rejected, ``/`` alone is the root (zero segments);
    leading or trailing Unicode White_Space and paths over 4096 UTF-8 bytes are rejected.  Segments may hold any Unicode
    character except ``/`` and control characters; comparison is case-sensitive.
    """

    __slots__ = ()

    def __new__(cls, text: str) -> "Resource":
        if isinstance(text, Resource):
            return text
        if not isinstance(text, str):
            raise ResourceError(f"resource must be a string, not {type(text).__name__}")
        if len(text.encode("utf-8", "surrogatepass")) > MAX_RESOURCE_BYTES:
            raise ResourceError("resource path longer than 4096 bytes")  # [VAP-RES-018]
        if text and (text[0] in WHITE_SPACE or text[-1] in WHITE_SPACE):
            raise ResourceError(f"resource {text!r} has surrounding whitespace")  # [VAP-RES-008]
        if not text.startswith("/"):
            raise ResourceError(f"resource {text!r} does not start with '/'")  # [VAP-RES-001]
        if text == "/":
            return super().__new__(cls, "/")
        body = text[1:-1] if text.endswith("/") else text[1:]  # [VAP-RES-003]
        if body and body[-1] in WHITE_SPACE:  # the normalized form counts too [VAP-RES-008]
            raise ResourceError(f"resource {text!r} normalizes to a path ending in whitespace")
        segments = body.split("/")
        for seg in segments:
            if seg == "":
                raise ResourceError(f"resource {text!r} has an empty segment")  # [VAP-RES-002]
            if any(_is_control(ch) for ch in seg):
                raise ResourceError(f"resource {text!r} contains a control character")  # [VAP-RES-005]
        return super().__new__(cls, "/" + "/".join(segments))

    @property
    def segments(self) -> tuple[str, ...]:
        if self == "/":
            return ()
        return tuple(str.__str__(self)[1:].split("/"))

    def is_prefix_of(self, other: "Resource | str") -> bool:
        """True when ``self``'s segments are a (not necessarily strict) prefix of ``other``'s."""
        mine, theirs = self.segments, Resource(other).segments
        return theirs[: len(mine)] == mine

    def matches(self, other: "Resource | str") -> bool:
        """``A`` matches ``B`` iff one is a segment-prefix of the other."""
        other = Resource(other)
        return self.is_prefix_of(other) or other.is_prefix_of(self)

    def __repr__(self) -> str:
        return f"Resource({str.__str__(self)!r})"


def matches(a: "Resource | str", b: "Resource | str") -> bool:
    """Module-level form of :meth:`Resource.matches`."""
    return Resource(a).matches(b)
