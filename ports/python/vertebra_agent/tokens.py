"""Operation tokens (spec pages 03-operations and 09-security).

A requester token ``T`` and a responder token ``S`` are 32 lowercase hex characters from a CSPRNG.
The op result carries ``X:S`` where ``X`` is the last ``:`` segment of the incoming token.
"""

from __future__ import annotations

import re
import secrets

__all__ = ["TokenError", "new_token", "parse_token", "respond_token"]

_SEGMENT = re.compile(r"[0-9A-Fa-f]+\Z")


class TokenError(ValueError):
    """A malformed token."""


def new_token() -> str:
    """128 random bits as 32 lowercase hex characters."""
    return secrets.token_hex(16)


def parse_token(token: str) -> tuple[str, ...]:
    """Split a token into its 1 or 2 hex segments; reject anything else."""
    if not isinstance(token, str) or token == "":
        raise TokenError("empty token")
    parts = tuple(token.split(":"))
    if len(parts) > 2:
        raise TokenError(f"token {token!r} has more than 2 segments")
    for p in parts:
        if not _SEGMENT.match(p):
            raise TokenError(f"token {token!r} has a non-hex segment")
    return parts


def respond_token(incoming: str, responder_segment: str | None = None) -> str:
    """The composite ``X:S`` a responder puts in its op result."""
    parts = parse_token(incoming)
    return f"{parts[-1]}:{responder_segment or new_token()}"
