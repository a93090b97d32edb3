"""The narrow interface between the protocol logic and an XMPP library.

:class:`~vertebra_agent.core.AgentCore` talks to the network only through a :class:`Transport`,
so the whole lifecycle can be unit-tested on an in-memory bus (``tests/bus.py``) and run for real
on slixmpp (:mod:`vertebra_agent.xmpp`).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Protocol

__all__ = ["IqError", "IqTimeout", "Reply", "Transport", "bare", "domain"]


class IqError(Exception):
    """The peer (or its server) answered an IQ set with an IQ error."""

    def __init__(self, etype: str, condition: str, text: str = ""):
        super().__init__(f"{etype}/{condition}" + (f": {text}" if text else ""))
        self.etype = etype
        self.condition = condition
        self.text = text


class IqTimeout(Exception):
    """No IQ response arrived within the per-IQ timeout."""


@dataclass(frozen=True)
class Reply:
    """The answer to one received IQ set/get: a result (optionally with a child) or an error."""

    payload: ET.Element | None = None
    etype: str | None = None  # set for an IQ error
    condition: str | None = None

    @property
    def is_error(self) -> bool:
        return self.etype is not None

    @staticmethod
    def result(payload: ET.Element | None = None) -> "Reply":
        return Reply(payload=payload)

    @staticmethod
    def error(etype: str, condition: str) -> "Reply":
        return Reply(etype=etype, condition=condition)


class Transport(Protocol):
    """What the agent needs from an XMPP session."""

    @property
    def jid(self) -> str:
        """Our own full JID."""

    def new_id(self) -> str:
        """A fresh IQ id, never reused toward the same peer within 300 s [VAP-OPS-069]."""

    async def send_set(
        self, to: str, payload: ET.Element, *, iq_id: str, timeout: float
    ) -> ET.Element | None:
        """Send an IQ set and wait for its answer.

        Returns the first child of the IQ result (or None).  Raises :class:`IqError` for an IQ
        error and :class:`IqTimeout` when ``timeout`` seconds pass.  Sending again with the same
        ``iq_id`` is a retransmission.
        """

    def send_presence(self, to: str, payload: ET.Element | None) -> None:
        """Send a directed available presence carrying ``payload``."""


def bare(jid: str) -> str:
    """The bare form ``local@domain`` of a JID (structure only; normalization is the library's)."""
    return jid.split("/", 1)[0]


def domain(jid: str) -> str:
    b = bare(jid)
    return b.split("@", 1)[1] if "@" in b else b
